"""A framework's training step before and after one parallel emdtree call.

emdtree shares the process with the framework that trains the model. This
script measures whether its parallel kernels leave that framework as fast as
they found it: a small PyTorch MLP's cross-entropy training step (forward,
backward, SGD update), timed step by step with ``torch.set_num_threads(T)``
for T = 1 and 2, then one :func:`emdtree.metrics.report` whose kernels take
their parallel path (``EMDTREE_PARALLEL_MIN_WORK=0``), then the same steps
again. The ratio is the median step after over the median step before.
Then an interleaved loop, as in training with an emdtree loss or metric on
the side: one :func:`emdtree.emd_value_and_grad` (ImageNet tree, batch 512,
float32, parallel path), one timed step, repeated; its ratio is the median of
those steps over the median step before.

Each case runs in a fresh interpreter, since Numba's threading layer starts
once per process:

* ``numba starts layer``: Numba's layer started the way earlier emdtree versions
  started it (``numba.get_num_threads()``), which reset the OpenMP thread
  count that PyTorch shares with Numba's OpenMP layer;
* ``omp``: emdtree starting Numba's OpenMP layer itself (the thread count
  kept; ``NUMBA_THREADING_LAYER=omp``); ``emdtree's choice``: no layer named,
  so emdtree starts the workqueue (TBB where installed) since torch's OpenMP
  runtime is loaded. In these three cases emdtree asked for 2 threads
  (``EMDTREE_NUM_THREADS=2``), so that it runs in parallel even when torch has 1;
* ``sized to host``: no thread setting; emdtree sizes its kernels to what
  torch leaves.

A shared machine makes single steps noisy: compare medians, and rerun.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

from _common import fmt_ms, machine_info, print_machine, print_table, write_json

CASES = {
    "numba starts layer": {"EMDTREE_NUM_THREADS": "2", "_START": "numba"},
    "omp": {"EMDTREE_NUM_THREADS": "2", "NUMBA_THREADING_LAYER": "omp"},
    "emdtree's choice": {"EMDTREE_NUM_THREADS": "2"},
    "sized to host": {},
}


def child(torch_threads: int, steps: int, rows: int, start: str) -> dict:
    """Runs in the fresh interpreter: one case, printed as JSON."""
    import torch

    torch.set_num_threads(torch_threads)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(256, 512), torch.nn.ReLU(), torch.nn.Linear(512, 512),
                                torch.nn.ReLU(), torch.nn.Linear(512, 100))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(256, 256), torch.randint(0, 100, (256,))

    def step():
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()

    def timed(n):
        out = []
        for _ in range(n):
            t0 = time.perf_counter()
            step()
            out.append((time.perf_counter() - t0) * 1e3)
        return out

    import emdtree
    from emdtree import metrics
    from emdtree.datasets import imagenet_wordnet
    from emdtree.engine.threads import usable_threads

    tree = imagenet_wordnet()
    rng = np.random.default_rng(0)
    pred = rng.random((rows, tree.n_bins)).astype(np.float32)
    labels = rng.integers(0, tree.n_bins, rows)
    # load or compile the one-thread kernels; on one thread, Numba's threading layer stays unstarted
    asked = os.environ.pop("EMDTREE_NUM_THREADS", None)
    os.environ["EMDTREE_NUM_THREADS"] = "1"
    metrics.report(pred[:64], labels[:64], tree, normalize="l1")
    if asked is None:
        del os.environ["EMDTREE_NUM_THREADS"]
    else:
        os.environ["EMDTREE_NUM_THREADS"] = asked

    timed(steps // 2)  # warm up
    before = timed(steps)
    torch_before = torch.get_num_threads()
    if start == "numba":
        import numba

        numba.get_num_threads()  # Numba starts its layer itself, as earlier versions let it
    planned = usable_threads()
    t0 = time.perf_counter()
    metrics.report(pred, labels, tree, normalize="l1")
    report_ms = (time.perf_counter() - t0) * 1e3
    torch_after = torch.get_num_threads()
    after = timed(steps)
    p = rng.random((512, tree.n_bins)).astype(np.float32)
    p /= p.sum(axis=1, keepdims=True)
    q = np.zeros_like(p)
    q[np.arange(512), rng.integers(0, tree.n_bins, 512)] = 1
    interleaved, emd_ms = [], []
    for _ in range(steps):
        t0 = time.perf_counter()
        emdtree.emd_value_and_grad(p, q, tree, rho=2)
        t1 = time.perf_counter()
        step()
        interleaved.append((time.perf_counter() - t1) * 1e3)
        emd_ms.append((t1 - t0) * 1e3)
    import numba

    try:
        layer = numba.threading_layer()
    except ValueError:
        layer = "not started"
    return {"before_ms": before, "after_ms": after, "torch_before": torch_before, "torch_after": torch_after,
            "emdtree_threads": planned, "layer": layer, "report_ms": report_ms,
            "interleaved_ms": interleaved, "emd_ms": emd_ms, "emdtree": emdtree.__version__}


def run_case(name: str, torch_threads: int, steps: int, rows: int) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("EMDTREE_NUM_THREADS", "NUMBA_THREADING_LAYER", "NUMBA_NUM_THREADS")}
    extra = dict(CASES[name])
    start = extra.pop("_START", "emdtree")
    env.update(extra, EMDTREE_PARALLEL_MIN_WORK="0", EMDTREE_JIT="eager")
    cmd = [sys.executable, os.path.abspath(__file__), "--child", str(torch_threads), str(steps), str(rows),
           start]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    if out.returncode != 0:
        raise RuntimeError(f"case {name!r}, torch {torch_threads}: {out.stderr[-2000:]}")
    r = json.loads(out.stdout.strip().splitlines()[-1])
    r.update(case=name, torch_threads=torch_threads,
             before_median_ms=float(np.median(r["before_ms"])),
             after_median_ms=float(np.median(r["after_ms"])),
             after_first10_median_ms=float(np.median(r["after_ms"][:10])))
    r["ratio"] = r["after_median_ms"] / r["before_median_ms"]
    r["interleaved_ratio"] = float(np.median(r["interleaved_ms"])) / r["before_median_ms"]
    r["emd_median_ms"] = float(np.median(r["emd_ms"]))
    return r


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--child":
        print(json.dumps(child(int(argv[1]), int(argv[2]), int(argv[3]), argv[4])))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=60, help="timed steps before and after (default 60)")
    ap.add_argument("--rows", type=int, default=1000, help="rows of the metrics.report call (default 1000)")
    ap.add_argument("--repeat", type=int, default=3, help="fresh processes per case (default 3)")
    ap.add_argument("--torch-threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES), metavar="CASE")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, one torch setting, two cases (seconds)")
    ap.add_argument("--json", metavar="PATH", help="also write the results and machine info as JSON")
    args = ap.parse_args(argv)
    if args.smoke:
        args.steps, args.rows, args.torch_threads, args.repeat = 6, 200, [1], 1
        if args.cases == list(CASES):  # a child that starts the layer itself, one that leaves it to emdtree
            args.cases = ["numba starts layer", "sized to host"]
    info = machine_info()
    print_machine(info)
    print(f"MLP 256-512-512-100, batch 256, cross-entropy + SGD step; one metrics.report on {args.rows} rows "
          f"of the ImageNet tree (parallel path) between {args.steps} timed steps before and after")
    results, table = [], []
    for t in args.torch_threads:
        runs = {name: [] for name in args.cases}
        for _ in range(args.repeat):  # the cases in turn, so that each sees the same load
            for name in args.cases:
                r = run_case(name, t, args.steps, args.rows)
                results.append(r)
                runs[name].append(r)
        for name, rs in runs.items():
            last = rs[-1]
            ratios = [r["ratio"] for r in rs]
            table.append([str(t), name, last["layer"], str(last["emdtree_threads"]),
                          ", ".join(f"{r['torch_before']}->{r['torch_after']}" for r in rs),
                          fmt_ms(float(np.median([r["before_median_ms"] for r in rs]))),
                          fmt_ms(float(np.median([r["after_median_ms"] for r in rs]))),
                          fmt_ms(float(np.median([r["after_first10_median_ms"] for r in rs]))),
                          " ".join(f"{x:.2f}" for x in ratios), f"{np.median(ratios):.2f}",
                          " ".join(f"{r['interleaved_ratio']:.2f}" for r in rs),
                          f"{np.median([r['interleaved_ratio'] for r in rs]):.2f}",
                          fmt_ms(float(np.median([r["emd_median_ms"] for r in rs])))])
    print()
    print(f"(ms: median over runs of each run's median step; after/before: each run's ratio, then their "
          f"median; {args.repeat} runs per case)")
    print_table(["torch", "case", "layer", "emdtree thr", "torch threads", "step before", "step after",
                 "first 10 after", "after/before by run", "median", "interleaved/before by run", "median",
                 "emd ms"], table, right={0, 3, 5, 6, 7, 9, 11, 12})
    if args.json:
        write_json(args.json, {"machine": info, "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
