"""emdtree side by side with POT and SciPy: time per pair, time per batch, agreement.

Chains of 100, 1,000 and 10,000 bins at positions ``linspace(0, 1, n)`` and
random trees of 10^3, 10^4 and 10^5 leaves (random attachment, half as many
internal nodes as leaves, edge costs uniform in [0.1, 1]); masses are softmax
rows. In one run, on the same arrays:

* ``emdtree.emd(p, q, tree)`` on the whole batch (the exact EMD);
* ``ot.wasserstein_1d(x, x, p.T, q.T)`` on the whole batch (chains only);
* ``scipy.stats.wasserstein_distance(x, x, p_i, q_i)``, one pair per call (chains);
* ``ot.emd2(p_i, q_i, M)`` with ``M`` the path metric, one pair per call (up to
  1,000 bins; beyond, ``M`` alone takes 800 MB and the solver minutes per pair);
* ``ot.sinkhorn2(p_i, q_i, M, reg=1/lambda, numItermax=100)``, one pair per call,
  and ``emdtree.sinkhorn(p, q, M, lambda, n_iter=100)`` on the batch (up to
  1,000 bins).

Per-pair methods are timed on a subset of the pairs and extrapolated to the
batch (the table says so). Agreement is the largest relative difference to
``emdtree.emd`` (exact methods) or to ``emdtree.sinkhorn`` (``ot.sinkhorn2``,
same iterations). On trees the time per pair divided by the number of leaves
shows whether emdtree's cost grows linearly.
"""

from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):  # see bench_core.py
    os.environ.setdefault(_var, "1")
for _framework in ("PYTORCH", "JAX", "TENSORFLOW", "CUPY"):  # POT's NumPy backend is all that is used
    os.environ.setdefault(f"POT_BACKEND_DISABLE_{_framework}", "1")

import argparse  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402

import numpy as np  # noqa: E402
import scipy.stats  # noqa: E402

import emdtree  # noqa: E402

from _common import Timer, fmt_ms, machine_info, print_machine, print_table, softmax_rows, write_json  # noqa: E402

try:
    import ot
except ImportError:  # POT is optional
    ot = None

LAM = 50.0  # Sinkhorn's lambda; distances are at most 1 on the chains, a few units on the trees


def random_tree(rng: np.random.Generator, n_leaves: int) -> emdtree.Tree:
    n_internal = max(1, n_leaves // 2)
    parents = np.empty(n_internal + n_leaves, dtype=np.int64)
    parents[0] = -1
    parents[1:n_internal] = [rng.integers(0, i) for i in range(1, n_internal)]
    parents[n_internal:] = rng.integers(0, n_internal, n_leaves)
    weights = rng.uniform(0.1, 1.0, parents.size)
    weights[0] = 0.0
    bins = np.arange(n_internal, n_internal + n_leaves)
    return emdtree.Tree.from_parents(parents, weights, bins)


def per_pair(fn, p, q, n_pairs):
    """Median seconds per call over the first ``n_pairs`` pairs, and the values."""
    fn(p[0], q[0])  # warm up
    times, values = [], []
    for i in range(min(n_pairs, p.shape[0])):
        t0 = time.perf_counter()
        values.append(float(fn(p[i], q[i])))
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), np.array(values)


def rel(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)[: np.size(a)]
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-300)))


def case(kind: str, n: int, batch: int, args, rng) -> list[dict]:
    if kind == "chain":
        tree = emdtree.Tree.chain(n, spacing=1.0 / (n - 1))
        x = np.linspace(0.0, 1.0, n)
    else:
        tree = random_tree(rng, n)
    p = softmax_rows(rng, batch, n)
    q = softmax_rows(rng, batch, n)
    ref = emdtree.emd(p, q, tree)
    timer = Timer(repeats=args.repeat, min_sample_s=2e-3, max_total_s=args.max_seconds)
    fast = {"emdtree.emd (batch)": lambda: emdtree.emd(p, q, tree),
            "emdtree.emd (one pair per call)": lambda: emdtree.emd(p[0], q[0], tree)}
    if kind == "chain" and ot is not None:
        xs = np.broadcast_to(x[:, None], (n, batch))
        fast["ot.wasserstein_1d (batch)"] = lambda: ot.wasserstein_1d(xs, xs, p.T, q.T, p=1)
    timed = timer.run(fast)
    out = []
    for name, t in timed.items():
        one = name.endswith("(one pair per call)")
        values = (emdtree.emd(p, q, tree) if name.startswith("emdtree")
                  else ot.wasserstein_1d(xs, xs, p.T, q.T, p=1))
        own = name.startswith("emdtree")
        out.append({"method": name, "per_pair_ms": t["median_ms"] / (1 if one else batch),
                    "measured_pairs": 1 if one else batch, "one_pair_per_call": one,
                    "extrapolated": False, "max_rel_diff": None if own else rel(values, ref),
                    "reference": None if own else "emdtree.emd"})
    slow = []
    if kind == "chain":
        slow.append(("scipy wasserstein_distance (per pair)",
                     lambda a, b: scipy.stats.wasserstein_distance(x, x, a, b), "emdtree.emd"))
    M = tree.distance_matrix() if n <= 1000 else None
    if ot is not None and M is not None:
        slow.append(("ot.emd2 (per pair)", lambda a, b: ot.emd2(a, b, M), "emdtree.emd"))
    sink = None
    if M is not None:
        t0 = time.perf_counter()
        sink = emdtree.sinkhorn(p, q, M, lam=LAM, n_iter=100)
        t_sink = time.perf_counter() - t0
        out.append({"method": "emdtree.sinkhorn log, 100 it (batch, one call)",
                    "per_pair_ms": t_sink * 1e3 / batch, "measured_pairs": batch, "extrapolated": False,
                    "max_rel_diff": None, "reference": None,
                    "sd_over_emd_median": float(np.median(sink.value / ref))})
        if ot is not None:
            slow.append(("ot.sinkhorn2, 100 it (per pair)",
                         lambda a, b: ot.sinkhorn2(a, b, M, reg=1 / LAM, numItermax=100, stopThr=0.0),
                         "emdtree.sinkhorn"))
    for name, fn, against in slow:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sec, values = per_pair(fn, p, q, args.pairs)
        target = ref if against == "emdtree.emd" else sink.value
        out.append({"method": name, "per_pair_ms": sec * 1e3,
                    "measured_pairs": len(values), "extrapolated": True, "max_rel_diff": rel(values, target),
                    "reference": against})
    for r in out:
        r.update({"kind": kind, "n_bins": n, "n_nodes": tree.n_nodes, "batch": batch})
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="batch 64, 3 pairs for per-pair methods")
    ap.add_argument("--json", metavar="PATH", help="write every number to PATH")
    ap.add_argument("--rst", metavar="PATH", help="write the table as reStructuredText to PATH")
    ap.add_argument("--batch", type=int, default=512, help="pairs per batch (the table reports this batch)")
    ap.add_argument("--pairs", type=int, default=None,
                    help="pairs timed for per-pair methods (default 10, quick 3)")
    ap.add_argument("--repeat", type=int, default=None)
    ap.add_argument("--max-seconds", type=float, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, seconds: checks the script runs")
    args = ap.parse_args(argv)
    if args.smoke:
        args.quick, args.pairs, args.repeat, args.max_seconds = True, 1, 3, 0.05
    args.pairs = args.pairs or (3 if args.quick else 10)
    args.repeat = args.repeat or (5 if args.quick else 15)
    args.max_seconds = args.max_seconds or (0.5 if args.quick else 2.0)
    measured_batch = 8 if args.smoke else 64 if args.quick else args.batch

    info = machine_info()
    print_machine(info)
    if ot is None:
        print("POT is not installed: its rows are skipped")
    rng = np.random.default_rng(args.seed)
    start = time.perf_counter()
    results = []
    for kind, sizes in (("chain", (100, 1000, 10000)), ("tree", (1000, 10000, 100000))):
        for n in sizes:
            results += case(kind, n, measured_batch, args, rng)
            print(f"  {kind} {n}: done ({time.perf_counter() - start:.0f} s)", flush=True)

    scale = args.batch / measured_batch
    headers = ["space", "bins", "method", "per pair ms", f"batch {args.batch} ms", "how", "max rel diff",
               "x emdtree"]
    rows = []
    base = {(r["kind"], r["n_bins"]): r["per_pair_ms"]
            for r in results if r["method"] == "emdtree.emd (batch)"}
    for r in results:
        how = (f"{r['measured_pairs']} pairs timed, x{args.batch / r['measured_pairs']:.0f}"
               if r["extrapolated"] or r.get("one_pair_per_call")
               else (f"batch {measured_batch} timed, x{scale:g}" if scale != 1 else "timed"))
        diff = "(reference)" if r["max_rel_diff"] is None else f"{r['max_rel_diff']:.1e} vs {r['reference']}"
        if "sd_over_emd_median" in r:
            diff = f"SD/EMD {r['sd_over_emd_median']:.3f}"
        r["speedup_of_emdtree"] = r["per_pair_ms"] / base[(r["kind"], r["n_bins"])]
        rows.append([f"{r['kind']}", f"{r['n_bins']:,}", r["method"], fmt_ms(r["per_pair_ms"]),
                     fmt_ms(r["per_pair_ms"] * args.batch), how, diff, f"{r['speedup_of_emdtree']:.0f}"])
    print()
    print_table(headers, rows, right={1, 3, 4, 7})
    per_leaf = {}
    for label, method in (("batch", "emdtree.emd (batch)"),
                          ("one pair per call", "emdtree.emd (one pair per call)")):
        per_leaf[label] = {r["n_bins"]: r["per_pair_ms"] * 1e6 / r["n_bins"] for r in results
                           if r["kind"] == "tree" and r["method"] == method}
        sizes = sorted(per_leaf[label])
        print(f"\nemdtree.emd on random trees ({label}), time per pair per leaf: "
              + ", ".join(f"{n:,} leaves {per_leaf[label][n]:.2f} ns" for n in sizes)
              + f"; ratio {sizes[-1]:,} / {sizes[0]:,} leaves = "
                f"{per_leaf[label][sizes[-1]] / per_leaf[label][sizes[0]]:.2f} (1 = linear)")
    print(f"x emdtree = time per pair / emdtree.emd's time per pair on the same space. Total "
          f"{time.perf_counter() - start:.0f} s.")
    config = {"batch": args.batch, "measured_batch": measured_batch, "pairs": args.pairs, "lam": LAM,
              "quick": args.quick, "seed": args.seed, "masses": "softmax rows (scale 2)",
              "openblas_num_threads": os.environ.get("OPENBLAS_NUM_THREADS")}
    if args.json:
        write_json(args.json, {"benchmark": "bench_peers", "machine": info, "config": config,
                               "results": results, "tree_ns_per_leaf_per_pair": per_leaf})
    if args.rst:
        from run_all import write_rst

        write_rst(args.rst, headers, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
