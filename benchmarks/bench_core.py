"""Time EMD^2 value + gradient on the ImageNet WordNet tree and on a 1000-bin chain.

For a batch of softmax-like predictions ``p`` and targets ``q`` (random
distributions or one-hot rows) the script times, in one run and on the same
arrays:

* the floor ``np.subtract(p, q, out=g)``: one read of both inputs and one
  write of a gradient-sized array;
* ``emdtree.emd_value_and_grad(p, q, tree, rho=2)``, also with
  ``check_inputs=False``, the value alone (``emdtree.emd``) and ``rho=1``;
* the same math written with NumPy and a ``scipy.sparse`` ancestor matrix,
  which also checks emdtree's values and gradients;
* POT's exact ``ot.emd2`` and entropic ``ot.sinkhorn2`` with the tree's
  distance matrix, one pair at a time, on a few pairs and extrapolated to
  the batch.

Run ``python benchmarks/bench_core.py --help`` for the options and
``benchmarks/README.md`` for what the columns mean.
"""

from __future__ import annotations

import os

# One BLAS thread (used only by POT's Sinkhorn here) unless the caller sets it:
# BLAS threads that compete with other work for a few cores can slow
# ot.sinkhorn2 down many times over and make its timings meaningless.
for _var in ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402

import numpy as np  # noqa: E402
import scipy.sparse  # noqa: E402

import emdtree  # noqa: E402
from emdtree.datasets import imagenet_wordnet  # noqa: E402

from _common import (  # noqa: E402
    Timer, as_dtype, fmt_ms, kernel_path, machine_info, num_threads, one_hot_rows, print_machine, print_table,
    random_rows, softmax_rows, write_json,
)

try:
    import ot
except ImportError:  # POT is optional
    ot = None

# Largest relative difference to the float64 sparse reference that counts as agreement.
TOLERANCE = {np.dtype(np.float32): 1e-4, np.dtype(np.float64): 1e-10}


class SparseEMD:
    """EMD^rho with NumPy and a sparse ancestor matrix: the straightforward implementation.

    ``A[i, k] = 1`` when bin ``k`` lies in the subtree of node ``i``, so
    ``phi = (p - q) @ A.T`` and the gradient is ``(rho w sign(phi) |phi|^(rho-1)) @ A``
    minus its mean over the bins.
    """

    def __init__(self, tree: emdtree.Tree, dtype) -> None:
        rows, cols = [], []
        node = np.asarray(tree.bins, dtype=np.int64).copy()
        bins = np.arange(tree.n_bins)
        while bins.size:  # walk every bin up to the root, one level per step
            rows.append(node)
            cols.append(bins)
            node = tree.parents[node]
            keep = node >= 0
            node, bins = node[keep], bins[keep]
        rows, cols = np.concatenate(rows), np.concatenate(cols)
        self.A = scipy.sparse.csr_matrix((np.ones(rows.size, dtype=dtype), (rows, cols)),
                                         shape=(tree.n_nodes, tree.n_bins))
        self.w = np.asarray(tree.weights, dtype=dtype)  # zero at the root

    def value_and_grad(self, p, q, rho=2):
        A, w = self.A, self.w
        phi = (p - q) @ A.T
        if rho == 2:
            value = (w * phi**2).sum(1)
            grad = (2 * w * phi) @ A
        else:
            a = np.abs(phi)
            value = (w * a**rho).sum(1)
            grad = (rho * w * np.sign(phi) * a ** (rho - 1)) @ A
        grad -= grad.mean(1, keepdims=True)
        return value, grad


def rel_diff(value, grad, ref_value, ref_grad) -> tuple[float, float]:
    """Largest relative difference of the values, and of the gradients.

    Gradient differences are relative to the largest entry of each reference row.
    """
    ref_value = ref_value.astype(np.float64)
    dv = np.abs(value.astype(np.float64) - ref_value) / np.maximum(np.abs(ref_value), np.finfo(float).tiny)
    out = [float(dv.max())]
    if grad is not None:
        scale = np.maximum(np.abs(ref_grad).max(axis=1), np.finfo(float).tiny)
        out.append(float((np.abs(grad.astype(np.float64) - ref_grad).max(axis=1) / scale).max()))
    else:
        out.append(float("nan"))
    return out[0], out[1]


def make_inputs(rng, batch, n_bins, targets):
    p = softmax_rows(rng, batch, n_bins)
    q = one_hot_rows(rng, batch, n_bins) if targets == "onehot" else random_rows(rng, batch, n_bins)
    return p, q


def _solve_once(solve, a, b) -> tuple[float, float, bool]:
    """``(seconds, value, ok)`` of one POT call; not ok when it warned of numerical errors."""
    with warnings.catch_warnings(record=True) as caught, \
            np.errstate(under="ignore", divide="warn", over="warn", invalid="warn"):
        warnings.simplefilter("always")
        t0 = time.perf_counter()
        value = float(solve(a, b))
        elapsed = time.perf_counter() - t0
    return elapsed, value, not caught and bool(np.isfinite(value))


def time_pot(p, q, M, ref, batch, n_pairs):
    """Per-pair POT timings (float64) on the first ``n_pairs`` pairs, extrapolated to ``batch``."""
    results = []
    idx = range(min(n_pairs, p.shape[0]))
    for name, solve in [
        ("POT ot.emd2 (exact, per pair)", lambda a, b: ot.emd2(a, b, M)),
        ("POT ot.sinkhorn2 reg=1/3, 100 it (per pair)",
         lambda a, b: ot.sinkhorn2(a, b, M, reg=1 / 3, numItermax=100)),
    ]:
        _solve_once(solve, p[0], q[0])  # warm up
        runs = [_solve_once(solve, p[i], q[i]) for i in idx]
        times = [t for t, _, _ in runs]
        values = [v for _, v, _ in runs]
        n_failed = sum(not ok for _, _, ok in runs)
        values = np.array(values)
        dev = (values - ref[: len(values)]) / ref[: len(values)]
        per_pair = float(np.median(times)) * 1e3
        results.append({
            "method": name,
            "median_ms": per_pair * batch,
            "p10_ms": float(np.percentile(times, 10)) * 1e3 * batch,
            "p90_ms": float(np.percentile(times, 90)) * 1e3 * batch,
            "per_pair_ms": per_pair,
            "n_pairs_timed": len(times),
            "extrapolated": True,
            "rel_dev_from_emd_rho1": [float(np.min(dev)), float(np.max(dev))],
            "n_numerical_errors": n_failed,
        })
    return results


def run_case(tree_name, tree, dtype, args, thread_counts, rng_seed, pot_pairs):
    dtype = np.dtype(dtype)
    rng = np.random.default_rng(rng_seed)
    p64, q64 = make_inputs(rng, args.batch, tree.n_bins, args.targets)
    p, q = as_dtype(p64, dtype), as_dtype(q64, dtype)
    g = np.empty_like(p)
    sparse = SparseEMD(tree, dtype)
    results, problems = [], []

    # Correctness: emdtree against the sparse implementation in float64.
    ref = SparseEMD(tree, np.float64)
    pr, qr = p.astype(np.float64), q.astype(np.float64)
    ref_v2, ref_g2 = ref.value_and_grad(pr, qr, rho=2)
    ref_v1, ref_g1 = ref.value_and_grad(pr, qr, rho=1)
    vg, value = emdtree.emd_value_and_grad, emdtree.emd
    checks = {
        "emdtree value+grad rho=2": rel_diff(*vg(p, q, tree, rho=2), ref_v2, ref_g2),
        "emdtree value+grad rho=2, check_inputs=False":
            rel_diff(*vg(p, q, tree, rho=2, check_inputs=False), ref_v2, ref_g2),
        "emdtree value only (emd) rho=2": rel_diff(value(p, q, tree, rho=2), None, ref_v2, None),
        "emdtree value only (emd) rho=2, check_inputs=False":
            rel_diff(value(p, q, tree, rho=2, check_inputs=False), None, ref_v2, None),
        "emdtree value+grad rho=1": rel_diff(*vg(p, q, tree, rho=1), ref_v1, ref_g1),
        "numpy+scipy.sparse value+grad rho=2": rel_diff(*sparse.value_and_grad(p, q), ref_v2, ref_g2),
    }
    # rho=1 gradients differ legitimately where some phi_i is exactly zero
    # (subgradient): one-hot targets make that common, so only values count there.
    for name, (dv, dg) in checks.items():
        worst = dv if "rho=1" in name else np.nanmax([dv, dg])
        if worst > TOLERANCE[dtype]:
            problems.append(f"{tree_name} {dtype} {name}: relative difference {worst:.2e} "
                            "to the float64 reference")

    emd_fns = {
        "emdtree value+grad rho=2": lambda: emdtree.emd_value_and_grad(p, q, tree, rho=2),
        "emdtree value+grad rho=2, check_inputs=False":
            lambda: emdtree.emd_value_and_grad(p, q, tree, rho=2, check_inputs=False),
        "emdtree value only (emd) rho=2": lambda: emdtree.emd(p, q, tree, rho=2),
        "emdtree value only (emd) rho=2, check_inputs=False":
            lambda: emdtree.emd(p, q, tree, rho=2, check_inputs=False),
        "emdtree value+grad rho=1": lambda: emdtree.emd_value_and_grad(p, q, tree, rho=1),
    }
    floor = {"floor np.subtract(p, q, out=g)": lambda: np.subtract(p, q, out=g)}
    timer = Timer(args.repeat, min_sample_s=args.min_sample_ms / 1e3, max_total_s=args.max_seconds)
    for i, n in enumerate(thread_counts):
        with num_threads(n):
            fns = dict(floor, **emd_fns)
            if i == 0:  # NumPy/SciPy do not use Numba's threads: time them once
                fns["numpy+scipy.sparse value+grad rho=2"] = lambda: sparse.value_and_grad(p, q)
            timed = timer.run(fns)
            paths = {name: kernel_path(fn) for name, fn in emd_fns.items()}
        base = timed["floor np.subtract(p, q, out=g)"]["median_ms"]
        for name, t in timed.items():
            check = checks.get(name)
            results.append(dict(
                tree=tree_name, dtype=str(dtype), threads=n, uses_numba_threads=name.startswith("emdtree"),
                method=name, ratio_to_floor=t["median_ms"] / base, kernel=paths.get(name, ""),
                max_rel_diff_value=None if check is None else check[0],
                max_rel_diff_grad=None if check is None or np.isnan(check[1]) else check[1],
                extrapolated=False, **t))

    if ot is not None and dtype == np.float64 and pot_pairs > 0:
        M = tree.distance_matrix()
        base = next(r["median_ms"] for r in results if r["method"].startswith("floor"))
        ref_emd = emdtree.emd(p64[:pot_pairs], q64[:pot_pairs], tree, rho=1)
        for r in time_pot(p64, q64, M, ref_emd, args.batch, pot_pairs):
            if r["method"].startswith("POT ot.emd2"):
                worst = float(np.max(np.abs(r["rel_dev_from_emd_rho1"])))
                if not worst <= 1e-9:
                    problems.append(f"{tree_name}: ot.emd2 differs from emdtree rho=1 by {worst:.2e}")
            results.append(dict(tree=tree_name, dtype=str(dtype), threads=1, uses_numba_threads=False,
                                kernel="", ratio_to_floor=r["median_ms"] / base, **r))
    return results, problems


def print_results(tree_name, tree, results, args):
    print()
    targets = "one-hot targets" if args.targets == "onehot" else "random distributions (uniform, normalised)"
    print(f"== {tree_name}: {tree.n_nodes} nodes, {tree.n_bins} bins, depth {tree.depth}; "
          f"batch {args.batch}; p = softmax of N(0, 2^2) logits, q = {targets}")
    rows = []
    for r in results:
        if r["extrapolated"]:
            lo, hi = r["rel_dev_from_emd_rho1"]
            if r["method"].startswith("POT ot.emd2"):
                note = f"{r['per_pair_ms']:.1f} ms/pair x {args.batch}, from {r['n_pairs_timed']} pairs; " \
                       f"value vs emdtree rho=1: {max(abs(lo), abs(hi)):.1e}"
            else:
                dev = f"deviation from EMD {lo:+.1%}..{hi:+.1%}"
                if r["n_numerical_errors"]:
                    dev += f" (POT reported numerical errors in {r['n_numerical_errors']} pairs)"
                note = (f"{r['per_pair_ms']:.1f} ms/pair x {args.batch}, from {r['n_pairs_timed']} pairs; "
                        f"{dev}")
        else:
            parts = []
            if r["max_rel_diff_value"] is not None:
                parts.append(f"value {r['max_rel_diff_value']:.1e}")
            if r["max_rel_diff_grad"] is not None:
                parts.append(f"grad {r['max_rel_diff_grad']:.1e}")
            note = ("max rel diff to float64 sparse: " + ", ".join(parts)) if parts else ""
        threads = str(r["threads"]) if r["uses_numba_threads"] else "-"
        rows.append([r["dtype"], threads, r["method"], fmt_ms(r["median_ms"]),
                     f"{fmt_ms(r['p10_ms'])}-{fmt_ms(r['p90_ms'])}", f"{r['ratio_to_floor']:.1f}",
                     r["kernel"], note])
    print_table(["dtype", "thr", "method", "median ms", "p10-p90 ms", "x floor", "kernel", "notes"],
                rows, right={1, 3, 4, 5})


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer repeats and POT pairs (about 20 s)")
    ap.add_argument("--json", metavar="PATH", help="also write the results and machine info as JSON")
    ap.add_argument("--repeat", type=int, default=None,
                    help="samples per measurement (default 40, --quick 15)")
    ap.add_argument("--threads", choices=["1", "2", "all"], default="all",
                    help="Numba threads for emdtree: 1, 2, or 'all' = 1 and then every core Numba may use "
                         "(default)")
    ap.add_argument("--batch", type=int, default=512, help="rows per batch (default 512)")
    ap.add_argument("--targets", choices=["random", "onehot"], default="random",
                    help="q: random distributions (default) or one-hot targets")
    ap.add_argument("--pot-pairs", type=int, default=None,
                    help="pairs timed with POT (default 8, --quick 2; 0 skips POT)")
    ap.add_argument("--min-sample-ms", type=float, default=None,
                    help="fast calls are repeated within one sample until it lasts this long "
                         "(default 5, --quick 2)")
    ap.add_argument("--max-seconds", type=float, default=None,
                    help="time budget of one slow measurement; it gets fewer samples "
                         "(default 3, --quick 0.6)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, seconds: checks the script runs")
    args = ap.parse_args(argv)
    if args.smoke:
        args.quick, args.batch, args.repeat, args.pot_pairs, args.max_seconds = True, 16, 3, 1, 0.05
    if args.batch < 1:
        ap.error("--batch must be at least 1")
    q = args.quick
    args.repeat = args.repeat or (15 if q else 40)
    args.min_sample_ms = args.min_sample_ms if args.min_sample_ms is not None else (2.0 if q else 5.0)
    args.max_seconds = args.max_seconds if args.max_seconds is not None else (0.6 if q else 3.0)
    pot_pairs = args.pot_pairs if args.pot_pairs is not None else (2 if q else 8)

    import numba

    max_threads = numba.config.NUMBA_NUM_THREADS
    if args.threads == "all":
        thread_counts = sorted({1, max_threads})
    else:
        thread_counts = [min(int(args.threads), max_threads)]

    start = time.perf_counter()
    info = machine_info()
    print_machine(info)  # with the vector ISA the kernels are compiled for
    try:
        from emdtree.engine import driver as _driver
        threshold = getattr(_driver, "PARALLEL_MIN_WORK", None)
    except ImportError:
        threshold = None
    print(f"EMD^2 value+grad, batch {args.batch}; emdtree with Numba threads {thread_counts}"
          + (f"; parallel kernel from batch x n_nodes >= {threshold:,}" if threshold is not None else ""))
    if ot is None:
        print("POT is not installed: its rows are skipped")
    else:
        print(f"BLAS threads for POT: OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS')}")

    trees = [("ImageNet WordNet", imagenet_wordnet()), ("chain(1000)", emdtree.Tree.chain(1000))]
    all_results, problems = [], []
    for k, (tree_name, tree) in enumerate(trees):
        tree_results = []
        for dtype in (np.float32, np.float64):
            res, prob = run_case(tree_name, tree, dtype, args, thread_counts, args.seed + k, pot_pairs)
            tree_results += res
            problems += prob
        print_results(tree_name, tree, tree_results, args)
        all_results += tree_results

    print()
    print(f"x floor = median time / median time of np.subtract(p, q, out=g) in the same dtype and run. "
          f"POT rows: float64, per pair, extrapolated to the batch. "
          f"Total {time.perf_counter() - start:.0f} s.")
    for msg in problems:
        print("MISMATCH:", msg)
    if args.json:
        write_json(args.json, {
            "benchmark": "bench_core", "machine": info,
            "config": {"batch": args.batch, "targets": args.targets, "repeat": args.repeat,
                       "threads": thread_counts, "quick": args.quick, "pot_pairs": pot_pairs,
                       "min_sample_ms": args.min_sample_ms, "max_seconds": args.max_seconds,
                       "seed": args.seed, "parallel_min_work": threshold,
                       "openblas_num_threads": os.environ.get("OPENBLAS_NUM_THREADS")},
            "results": all_results, "problems": problems,
        })
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
