"""The paper's Table 1: gradient time of the Sinkhorn distance against EMD^2.

One batch (default 512) of softmax predictions ``p`` and smooth softmax targets
``q`` on the ImageNet WordNet tree (1000 bins), in float64 and float32:

* ``emdtree.sinkhorn(p, q, tree, lam, n_iter, method, return_grad=True)`` for
  10, 100 and 1000 iterations, both methods (``"caffe"``: the paper's
  Algorithm 1 as written; ``"log"``: the log-domain iterations);
* ``emdtree.emd_value_and_grad(p, q, tree, rho=2)``.

Sinkhorn's time is linear in the number of iterations. Counts that would take
too long are extrapolated from two measured counts (``T(n) = T(a) + (n - a)
(T(b) - T(a)) / (b - a)``) and marked as such. The paper's numbers (Caffe, CPU
and GPU) are printed alongside, with the speed-up of EMD^2 over Sinkhorn at 100
iterations. Timings are interleaved round-robin so that the load of a shared
machine affects all methods alike.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

import emdtree
from emdtree.datasets import imagenet_wordnet

from _common import as_dtype, fmt_ms, machine_info, print_machine, print_table, softmax_rows, write_json

# Martinez et al., Table 1: one batch of ImageNet, 100 Sinkhorn iterations, milliseconds.
PAPER = {"sinkhorn_100": {"cpu": 7510.0, "gpu": 88.9}, "emd2": {"cpu": 126.0, "gpu": 25.0}}
ITERATIONS = (10, 100, 1000)


def interleaved(fns: dict, repeats: int, max_seconds: float) -> dict[str, list[float]]:
    """Seconds per call of each callable, sampled round-robin (order rotated every round).

    A callable stops being sampled once it has ``repeats`` samples or has used
    ``max_seconds`` (but never with fewer than 2 samples).
    """
    samples: dict[str, list[float]] = {k: [] for k in fns}
    names = list(fns)
    for r in range(repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            if len(samples[name]) >= 2 and sum(samples[name]) > max_seconds:
                continue
            t0 = time.perf_counter()
            fns[name]()
            samples[name].append(time.perf_counter() - t0)
    return samples


def status(res) -> str:
    """``ok``, or what went wrong in a Sinkhorn result."""
    value_ok = bool(np.all(np.isfinite(res.value)))
    grad_ok = res.grad is None or bool(np.all(np.isfinite(res.grad)))
    if value_ok and grad_ok:
        return "ok"
    return f"non-finite {'value' if not value_ok else ''}{'+' if not (value_ok or grad_ok) else ''}" \
           f"{'grad' if not grad_ok else ''} in {int(np.sum(~np.isfinite(res.value)))} pairs"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="measure 2 and 10 iterations and extrapolate 100 and 1000 (under a minute)")
    ap.add_argument("--json", metavar="PATH", help="write every number to PATH")
    ap.add_argument("--rst", metavar="PATH", help="write the table as reStructuredText to PATH")
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--lam", type=float, default=10.0, help="Sinkhorn's lambda (POT's reg = 1 / lambda)")
    ap.add_argument("--repeat", type=int, default=None, help="samples per measurement (default 5, --quick 3)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, seconds: checks the script runs")
    args = ap.parse_args(argv)
    if args.smoke:
        args.quick, args.batch, args.repeat = True, 8, 1
    repeats = args.repeat or (3 if args.quick else 5)
    measured = (2, 10) if args.quick else (10, 100)
    max_seconds = 1.0 if args.smoke else 6.0 if args.quick else 40.0

    info = machine_info()
    print_machine(info)
    tree = imagenet_wordnet()
    rng = np.random.default_rng(args.seed)
    p64 = softmax_rows(rng, args.batch, tree.n_bins, scale=2.0)
    q64 = softmax_rows(rng, args.batch, tree.n_bins, scale=3.0)  # smooth, non-degenerate targets
    exact = emdtree.emd(p64, q64, tree)
    gpu = _cuda_available()
    print(f"ImageNet WordNet tree ({tree.n_nodes} nodes, {tree.n_bins} bins), batch {args.batch}, "
          f"lambda {args.lam:g} (POT reg {1 / args.lam:.4g}), softmax targets; "
          f"GPU: {'torch CUDA available (not timed by this script)' if gpu else 'none (CPU only)'}")

    start = time.perf_counter()
    rows, results = [], []
    for dtype in (np.float64, np.float32):
        p, q = as_dtype(p64, dtype), as_dtype(q64, dtype)
        emdtree.emd_value_and_grad(p, q, tree, rho=2)  # compile or load Numba's cache

        def run_emd(p=p, q=q):
            for _ in range(10):
                emdtree.emd_value_and_grad(p, q, tree, rho=2)

        fns = {"emd2": run_emd}
        for method in ("caffe", "log"):
            for n in measured:
                fns[f"{method}/{n}"] = (lambda m=method, n=n, p=p, q=q:
                                        emdtree.sinkhorn(p, q, tree, lam=args.lam, n_iter=n, method=m,
                                                         return_grad=True))
        samples = interleaved(fns, repeats, max_seconds)
        t_emd = float(np.median(samples["emd2"])) / 10 * 1e3
        entry = {"dtype": np.dtype(dtype).name, "emd2_ms": t_emd, "emd2_samples": len(samples["emd2"]),
                 "sinkhorn": []}
        for method in ("caffe", "log"):
            t = {n: float(np.median(samples[f"{method}/{n}"])) * 1e3 for n in measured}
            a, b = measured
            per_iter = (t[b] - t[a]) / (b - a)
            res = emdtree.sinkhorn(p, q, tree, lam=args.lam, n_iter=measured[-1], method=method,
                                   return_grad=True)
            ratio = np.asarray(res.value, dtype=np.float64) / exact
            for n in ITERATIONS:
                how = "measured" if n in t else f"extrapolated from {a} and {b}"
                ms = t[n] if n in t else t[a] + (n - a) * per_iter
                entry["sinkhorn"].append({
                    "method": method, "n_iter": n, "median_ms": ms, "how": how,
                    "n_samples": len(samples[f"{method}/{n}"]) if n in t else 0,
                    "speedup_emd2": ms / t_emd,
                })
            entry[f"{method}_ms_per_iteration"] = per_iter
            entry[f"{method}_status_at_{measured[-1]}"] = status(res)
            entry[f"{method}_sd_over_emd_median_at_{measured[-1]}"] = float(np.nanmedian(ratio))
        results.append(entry)

    headers = ["dtype", "method", "iterations", "median ms", "how", "x EMD^2 time", "paper (CPU / GPU)"]
    for e in results:
        rows.append([e["dtype"], "emdtree EMD^2 value+grad", "-", fmt_ms(e["emd2_ms"]), "measured", "1",
                     f"{PAPER['emd2']['cpu']:g} / {PAPER['emd2']['gpu']:g} ms"])
        for s in e["sinkhorn"]:
            paper = (f"{PAPER['sinkhorn_100']['cpu']:g} / {PAPER['sinkhorn_100']['gpu']:g} ms"
                     if s["n_iter"] == 100 and s["method"] == "caffe" else "")
            rows.append([e["dtype"], f"Sinkhorn {s['method']}", str(s["n_iter"]), fmt_ms(s["median_ms"]),
                         s["how"], f"{s['speedup_emd2']:.0f}", paper])
    print()
    print_table(headers, rows, right={2, 3, 5})
    paper_ratio = PAPER["sinkhorn_100"]["cpu"] / PAPER["emd2"]["cpu"]
    print(f"\nPaper (CPU): Sinkhorn 100 it / EMD^2 = {paper_ratio:.0f}x. "
          f"Here at 100 iterations: " + ", ".join(
              f"{e['dtype']} {s['method']} {s['speedup_emd2']:.0f}x" for e in results for s in e["sinkhorn"]
              if s["n_iter"] == 100))
    for e in results:
        for m in ("caffe", "log"):
            print(f"{e['dtype']} {m}: {e[f'{m}_ms_per_iteration']:.1f} ms per iteration, "
                  f"after {measured[-1]} iterations {e[f'{m}_status_at_{measured[-1]}']}, "
                  f"median SD / EMD {e[f'{m}_sd_over_emd_median_at_{measured[-1]}']:.3f}")
    print(f"Total {time.perf_counter() - start:.0f} s.")
    config = {"batch": args.batch, "lam": args.lam, "quick": args.quick, "repeat": repeats,
              "measured_iterations": list(measured), "seed": args.seed, "targets": "softmax (scale 3)",
              "predictions": "softmax (scale 2)", "gpu": gpu}
    if args.json:
        write_json(args.json, {"benchmark": "bench_table1", "machine": info, "config": config,
                               "paper_ms": PAPER, "results": results})
    if args.rst:
        from run_all import write_rst

        write_rst(args.rst, headers, rows)
    return 0


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


if __name__ == "__main__":
    sys.exit(main())
