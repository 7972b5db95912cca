"""Per-call cost of the NumPy API around the value-and-gradient kernels.

EMD^2 value and gradient through ``emdtree.emd_value_and_grad(p, q, tree, rho=2)``
(float32, one-hot ``q``, batch 512 by default, kernels compiled) on the ImageNet
tree and a 1000-bin chain, timed interleaved against:

* the floor ``np.subtract(p, q, out=g)``: one read of both inputs and one write
  of the gradient, the least any implementation must do;
* the bare kernel: the compiled serial kernel that the call runs (the blocked
  kernel on a tree, the chain kernel on a chain), given inputs prepared and
  outputs allocated once;
* the driver: :func:`emdtree.engine.driver.value_grad` on rows prepared once
  (the kernel, its allocations and the input checks, without the argument
  handling of the public function).

Times are the calling thread's CPU time (``time.thread_time``), so that other
work on a shared machine counts as little as it can; each sample is a run of
calls long enough to time, samples of the callables alternate, and the table
gives medians with ratios to the floor. The public call minus the bare kernel
is the per-call overhead of the Python layers.

    python benchmarks/bench_overhead.py                 # about 30 s
    python benchmarks/bench_overhead.py --smoke         # a few seconds
    NUMBA_CPU_NAME=haswell NUMBA_CPU_FEATURES=+avx2 python benchmarks/bench_overhead.py   # AVX2 code
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("EMDTREE_JIT", "eager")  # every call runs the compiled kernels

import argparse  # noqa: E402
import time  # noqa: E402
from typing import Callable  # noqa: E402

import numpy as np  # noqa: E402

from _common import (fmt_ms, machine_info, one_hot_rows, print_machine, print_table,  # noqa: E402
                     softmax_rows, write_json)


def inputs(tree, batch: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Softmax rows ``p`` (each rescaled in float32 to total 1) and one-hot ``q``, float32."""
    rng = np.random.default_rng(seed)
    p = softmax_rows(rng, batch, tree.n_bins).astype(np.float32)
    p /= p.sum(axis=1, keepdims=True, dtype=np.float64).astype(np.float32)
    q = one_hot_rows(rng, batch, tree.n_bins).astype(np.float32)
    return p, q


def bare_kernel(tree, p: np.ndarray, q: np.ndarray, rho: float) -> Callable[[], object]:
    """The serial kernel that ``emd_value_and_grad`` runs, on inputs prepared and outputs allocated once."""
    from emdtree.engine import driver, inputs as inputs_
    from emdtree.kernels import chain, cpu

    rows = inputs_.prepare({"p": p, "q": q}, tree, -1, True, None, defer=True)
    (pa, qa), (ps, qs) = rows.arrays, rows.steps
    pf, qf = pa.reshape(-1), qa.reshape(-1)
    n_rows, n_bins, dtype = rows.n_rows, tree.n_bins, rows.dtype
    mode = driver.mode_of(rho)
    value = np.empty(n_rows, dtype=dtype)
    grad = np.empty(n_rows * n_bins, dtype=dtype)
    totals = np.empty((n_rows, 2), dtype=np.float64)
    if tree._is_canonical_chain:
        weight = driver.kernel_arrays(tree, dtype)[1]
        low = np.empty(n_rows, dtype=np.float64)
        return lambda: chain.chain_value_grad_serial(pf, qf, ps, qs, n_rows, weight, mode, True, value, grad,
                                                     totals, low)
    if n_rows % cpu.BLOCK:
        raise SystemExit(f"--batch must be a multiple of {cpu.BLOCK} (the blocked kernel alone)")
    parent, weight, bin_pos, non_bin = driver.sweep_arrays(tree, dtype)
    consts = driver.consts_of(rho, dtype)
    labels = np.zeros(0, dtype=np.int64)
    low = np.empty(n_rows // cpu.BLOCK, dtype=dtype)
    return lambda: cpu.value_grad_serial(pf, qf, ps, qs, labels, n_rows, parent, weight, bin_pos, non_bin,
                                         mode, consts, True, value, grad, totals, low)


def driver_call(tree, p: np.ndarray, q: np.ndarray, rho: float) -> Callable[[], object]:
    """``driver.value_grad`` with its checks, on rows prepared once."""
    from emdtree.engine import driver, inputs as inputs_

    rows = inputs_.prepare({"p": p, "q": q}, tree, -1, True, None, defer=True)
    return lambda: driver.value_grad(rows, rho, want_grad=True, check=True)


def interleaved(fns: dict[str, Callable[[], object]], samples: int, min_sample_s: float) -> dict[str, list]:
    """Thread CPU seconds per call: ``samples`` samples of each callable, in rotating order."""
    plan = {}
    for name, fn in fns.items():
        for _ in range(3):  # compile or load from the cache, warm the caches
            fn()
        t0 = time.thread_time()
        fn()
        once = max(time.thread_time() - t0, 1e-6)
        plan[name] = max(1, int(np.ceil(min_sample_s / once)))
    out: dict[str, list] = {name: [] for name in fns}
    names = list(fns)
    for r in range(samples):
        for name in names[r % len(names):] + names[:r % len(names)]:
            fn, inner = fns[name], plan[name]
            t0 = time.thread_time()
            for _ in range(inner):
                fn()
            out[name].append((time.thread_time() - t0) / inner)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--smoke", action="store_true", help="small batch, few samples: a few seconds")
    ap.add_argument("--batch", type=int, default=512, help="rows per batch (default 512; a multiple of 32)")
    ap.add_argument("--samples", type=int, default=None, help="samples per callable (default 40, smoke 3)")
    ap.add_argument("--min-sample-ms", type=float, default=None, help="least CPU time of one sample "
                    "(default 5 ms, smoke 1 ms)")
    ap.add_argument("--cases", default="tree,chain",
                    help="comma-separated: tree (ImageNet), chain (1000 bins)")
    ap.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import emdtree
    from emdtree.datasets import imagenet_wordnet
    from emdtree.kernels import lanes

    batch = 64 if args.smoke else args.batch
    samples = args.samples or (3 if args.smoke else 40)
    min_sample_s = (args.min_sample_ms or (1.0 if args.smoke else 5.0)) * 1e-3
    rho = 2.0
    trees = {"tree": ("ImageNet tree", imagenet_wordnet),
             "chain": ("1000-bin chain", lambda: emdtree.Tree.chain(1000))}
    info = machine_info()
    print_machine(info)
    print(f"emdtree imported from {os.path.dirname(emdtree.__file__)}")
    print(f"batch {batch}, float32, one-hot q, rho = 2, thread CPU time, medians of {samples} interleaved "
          f"samples")
    results = []
    for case in args.cases.split(","):
        label, make = trees[case]
        tree = make()
        p, q = inputs(tree, batch, args.seed)
        g = np.empty_like(p)
        fns = {
            "floor np.subtract(p, q, out=g)": lambda: np.subtract(p, q, out=g),
            "emd_value_and_grad(p, q, tree, rho=2)": lambda: emdtree.emd_value_and_grad(p, q, tree, rho=2),
            "driver.value_grad (rows prepared)": driver_call(tree, p, q, rho),
            "bare kernel": bare_kernel(tree, p, q, rho),
        }
        times = interleaved(fns, samples, min_sample_s)
        med = {name: float(np.median(t)) * 1e3 for name, t in times.items()}
        floor_ms = med["floor np.subtract(p, q, out=g)"]
        for name in fns:
            results.append(dict(case=case, tree=label, method=name, median_ms=med[name],
                                p10_ms=float(np.percentile(times[name], 10)) * 1e3,
                                p90_ms=float(np.percentile(times[name], 90)) * 1e3,
                                ratio_to_floor=med[name] / floor_ms))
        overhead = med["emd_value_and_grad(p, q, tree, rho=2)"] - med["bare kernel"]
        results.append(dict(case=case, tree=label, method="overhead (public call - bare kernel)",
                            median_ms=overhead, ratio_to_floor=overhead / floor_ms))
    print()
    print_table(["case", "method", "median ms", "p10-p90 ms", "x floor"],
                [[r["tree"], r["method"], fmt_ms(r["median_ms"]),
                  f"{fmt_ms(r['p10_ms'])}-{fmt_ms(r['p90_ms'])}" if "p10_ms" in r else "",
                  f"{r['ratio_to_floor']:.2f}"] for r in results], right={2, 3, 4})
    if args.json:
        write_json(args.json, {"machine": info, "vector_isa": lanes.vector_isa(), "batch": batch,
                               "samples": samples, "results": results})


if __name__ == "__main__":
    main()
