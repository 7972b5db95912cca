"""Distance matrices: emdtree.pairwise against scikit-bio's weighted unnormalised UniFrac.

On a random 10,000-tip binary tree (branch lengths uniform(0, 1)) and sparse
integer Poisson counts (200 and 1,000 samples by default) the script times,
each in its own subprocess (Numba's threading layer slows other OpenMP code
in the same process, and each library gets a fresh interpreter):

* ``emdtree.pairwise(counts, tree=tree, normalize="l1")``, float64 and
  float32 counts, on 1 and 2 Numba threads (``n_threads``; the results must
  be the same bits on both);
* ``skbio.diversity.beta_diversity("weighted_unifrac", ..., normalized=False,
  engine="numba")`` on 1 and 2 threads (``numba.set_num_threads``);
* the same with ``engine="cython"`` (scikit-bio's default engine without
  Numba), on the first ``--cython-samples`` samples only, extrapolated to
  all pairs by the number of pairs and labelled so.

Every worker times the call alone (the tree and the table are read and the
kernels compiled before), on 1 and 2 threads alternately in the same process
(so that a change in the load of a shared machine weighs on both alike; the
ratio of the two medians is the gain of the second thread), takes the median
of ``--repeat`` calls per thread count, and writes the condensed distances,
which the parent compares with scikit-bio's numba engine (float64 emdtree rows
must agree to 1e-9 relative; a larger difference is printed as MISMATCH and
the script exits with status 1).

Run ``python benchmarks/bench_pairwise.py --help`` for the options.
"""

from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "OMP_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from _common import fmt_ms, machine_info, print_machine, print_table, random_binary_tree, write_json  # noqa: E402

TOLERANCE = {"float64": 1e-9, "float32": 1e-4}


# ----------------------------------------------------------------------------- inputs

def make_inputs(folder: str, n_tips: int, n_samples: int, rate: float, seed: int) -> dict:
    """Write tree.nwk and counts.npy (n_samples x n_tips int64) into ``folder``."""
    import emdtree

    rng = np.random.default_rng(seed)
    parents, lengths = random_binary_tree(rng, n_tips)
    names = [f"T{i}" for i in range(n_tips)]
    tree = emdtree.Tree.from_parents(parents, lengths, bins=np.arange(n_tips), names=names)
    with open(os.path.join(folder, "tree.nwk"), "w", encoding="utf-8") as fh:
        fh.write(tree.to_newick())
    counts = rng.poisson(rate, size=(n_samples, n_tips)).astype(np.int64)
    counts[np.arange(n_samples), rng.integers(0, n_tips, n_samples)] += 1  # no empty sample
    np.save(os.path.join(folder, "counts.npy"), counts)
    return {"n_tips": n_tips, "n_nodes": tree.n_nodes, "density": float((counts > 0).mean()),
            "mean_total": float(counts.sum(1).mean())}


# ----------------------------------------------------------------------------- workers

def worker(args) -> None:
    """Time one library in this process on each thread count, alternating; write times and distances."""
    counts = np.load(os.path.join(args.folder, "counts.npy"))[: args.n]
    newick = os.path.join(args.folder, "tree.nwk")
    threads = [int(t) for t in args.threads.split(",")]
    import numba

    if args.worker == "emdtree":
        import emdtree

        tree = emdtree.Tree.from_newick(newick)
        order = emdtree.io.match_features([f"T{i}" for i in range(counts.shape[1])], tree)
        X = np.zeros((counts.shape[0], tree.n_bins), dtype=args.dtype)
        X[:, order] = counts

        def run(n_threads):
            return emdtree.pairwise(X, tree=tree, normalize="l1", condensed=True, n_threads=n_threads)

        def run_small(n_threads):
            return emdtree.pairwise(X[:40], tree=tree, normalize="l1", n_threads=n_threads)

        info = {"emdtree": emdtree.__version__}
    else:
        import skbio
        from skbio.diversity import beta_diversity

        sk_tree = skbio.TreeNode.read(newick)
        taxa = [f"T{i}" for i in range(counts.shape[1])]
        ids = [f"s{i}" for i in range(counts.shape[0])]
        engine = args.worker.split("-")[1]

        def run(n_threads):
            numba.set_num_threads(n_threads)
            dm = beta_diversity("weighted_unifrac", counts, ids, taxa=taxa, tree=sk_tree, normalized=False,
                                engine=engine)
            return dm.condensed_form()

        def run_small(n_threads):
            numba.set_num_threads(n_threads)
            beta_diversity("weighted_unifrac", counts[:40], ids[:40], taxa=taxa, tree=sk_tree,
                           normalized=False, engine=engine)

        info = {"skbio": skbio.__version__}
    for t in threads:
        run_small(t)  # compile, or load the compiled kernels
    times: dict[str, list[float]] = {str(t): [] for t in threads}
    cores: dict[str, list[float]] = {str(t): [] for t in threads}
    outs = {}
    for r in range(args.repeat):
        # alternating thread counts, the order reversed every round: a load that drifts weighs on all alike
        for t in threads if r % 2 == 0 else threads[::-1]:
            c0, t0 = time.process_time(), time.perf_counter()
            outs[t] = run(t)
            wall = time.perf_counter() - t0
            times[str(t)].append(wall)
            cores[str(t)].append((time.process_time() - c0) / wall)
    same = all(np.array_equal(outs[t], outs[threads[0]]) for t in threads)
    np.save(args.out + ".npy", np.asarray(outs[threads[0]], dtype=np.float64))
    with open(args.out + ".json", "w", encoding="utf-8") as fh:
        json.dump({"times_s": times, "cores": cores, "identical_across_threads": bool(same), **info}, fh)


def launch(folder: str, name: str, samples: int, threads: list[int], dtype: str, repeat: int) -> dict:
    out = os.path.join(folder, f"{name}-{samples}-{dtype}")
    env = dict(os.environ, NUMBA_NUM_THREADS=str(max(threads)))
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", name, "--folder", folder, "--n",
           str(samples), "--threads", ",".join(map(str, threads)), "--dtype", dtype, "--repeat", str(repeat),
           "--out", out]
    subprocess.run(cmd, check=True, env=env)
    with open(out + ".json", encoding="utf-8") as fh:
        result = json.load(fh)
    result["distances"] = np.load(out + ".npy")
    return result


def rel_diff(a: np.ndarray, ref: np.ndarray) -> float:
    scale = np.maximum(np.abs(ref), np.finfo(float).tiny)
    return float(np.max(np.abs(a - ref) / scale, initial=0.0))


def uptime() -> str:
    try:
        with open("/proc/loadavg", encoding="utf-8") as fh:
            return "load average " + ", ".join(fh.read().split()[:3])
    except OSError:
        return "load average unknown"


# ----------------------------------------------------------------------------- main

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="200 samples only, fewer repeats (about 1 min)")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, seconds: checks the script runs")
    ap.add_argument("--json", metavar="PATH", help="also write the results and machine info as JSON")
    ap.add_argument("--samples", type=int, nargs="+", default=None, help="sample counts (default 200 1000)")
    ap.add_argument("--tips", type=int, default=None, help="tips of the random tree (default 10000)")
    ap.add_argument("--rate", type=float, default=0.1,
                    help="Poisson rate of every count (default 0.1: about 10%% of the counts are nonzero)")
    ap.add_argument("--cython-samples", type=int, default=None,
                    help="samples for scikit-bio's cython engine, extrapolated "
                         "(default 100; 60 with --quick)")
    ap.add_argument("--repeat", type=int, default=None,
                    help="timed calls per emdtree configuration and thread count (default 5)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--folder", help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--threads", default="1", help=argparse.SUPPRESS)
    ap.add_argument("--dtype", default="float64", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    try:
        import skbio  # noqa: F401
    except ImportError:
        print("bench_pairwise: nothing to compare: scikit-bio is not installed")
        return 0

    if args.smoke:
        args.quick, args.samples, args.tips, args.repeat, args.cython_samples = True, [30], 300, 1, 10
    tips = args.tips or 10_000
    sizes = args.samples or ([200] if args.quick else [200, 1000])
    repeat = args.repeat or (3 if args.quick else 5)
    n_cython = args.cython_samples or (60 if args.quick else 100)
    info = machine_info()
    print_machine(info)
    rows, records, failed = [], [], []
    with tempfile.TemporaryDirectory() as folder:
        data = make_inputs(folder, tips, max(sizes), args.rate, args.seed)
        print(f"tree: {data['n_tips']} tips, {data['n_nodes']} nodes, random binary, lengths uniform(0, 1); "
              f"counts Poisson({args.rate}): {100 * data['density']:.1f}% nonzero, "
              f"mean total {data['mean_total']:.0f}")
        print("each library runs in its own process, on 1 and 2 threads alternately (median of the calls)")
        for n in sizes:
            pairs = n * (n - 1) // 2
            results = {}
            print(f"{n} samples: {uptime()} at the start", flush=True)
            # scikit-bio's numba engine is the reference for agreement and for the ratios
            sk = launch(folder, "skbio-numba", n, [1, 2], "float64", 1 if n > 500 and not args.quick else 3)
            for t in (1, 2):
                results[("skbio numba", t, "float64")] = sk
            for dtype in ("float64",) if args.smoke else ("float64", "float32"):
                res = launch(folder, "emdtree", n, [1, 2], dtype, repeat)
                for t in (1, 2):
                    results[("emdtree", t, dtype)] = res
                if not res["identical_across_threads"]:
                    failed.append(f"emdtree {dtype}, {n} samples: 1 and 2 threads give different bits")
            # the cython engine is scikit-bio's own code, not this script's: a smoke run leaves it out
            cy = None if args.smoke else launch(folder, "skbio-cython", min(n, n_cython), [1], "float64", 1)
            print(f"{n} samples: {uptime()} at the end", flush=True)
            ref = sk["distances"]
            base = {t: float(np.median(sk["times_s"][str(t)])) for t in (1, 2)}
            for (name, threads, dtype), res in results.items():
                times = res["times_s"][str(threads)]
                med = float(np.median(times))
                one = float(np.median(res["times_s"]["1"]))
                diff = rel_diff(res["distances"], ref)
                ok = diff <= TOLERANCE[dtype]
                if not ok:
                    failed.append(f"{name} {dtype} {threads} threads, {n} samples: {diff:.2e}")
                used = float(np.median(res["cores"][str(threads)]))
                rows.append([str(n), name, dtype, str(threads), fmt_ms(1e3 * med),
                             f"{base[1] / med:.2f}", f"{base[threads] / med:.2f}", f"{one / med:.2f}",
                             f"{used:.2f}", f"{diff:.1e}",
                             f"{len(times)} calls" + ("" if ok else " MISMATCH")])
                records.append({"samples": n, "method": name, "dtype": dtype, "threads": threads,
                                "median_s": med, "times_s": times, "speedup_over_1_thread": one / med,
                                "cores_used": res["cores"][str(threads)], "max_rel_diff": diff})
            if cy is None:
                continue
            n_cy = min(n, n_cython)
            cy_pairs = n_cy * (n_cy - 1) // 2
            cy_med = float(np.median(cy["times_s"]["1"])) * pairs / cy_pairs
            sub = subset(ref, n, n_cy)
            diff = rel_diff(cy["distances"], sub)
            rows.append([str(n), "skbio cython (default)", "float64", "1", fmt_ms(1e3 * cy_med),
                         f"{base[1] / cy_med:.2f}", f"{base[1] / cy_med:.2f}", "-", "-", f"{diff:.1e}",
                         f"extrapolated from {n_cy} samples ({cy_pairs} pairs)"])
            records.append({"samples": n, "method": "skbio cython", "dtype": "float64", "threads": 1,
                            "median_s": cy_med, "extrapolated_from_samples": n_cy,
                            "times_s": cy["times_s"]["1"], "max_rel_diff": diff})
    print()
    print_table(["samples", "method", "dtype", "thr", "median ms", "x vs numba 1 thr", "x vs numba same thr",
                 "x vs 1 thr", "cores", "max rel diff", "notes"], rows, right={0, 3, 4, 5, 6, 7, 8, 9})
    print("\nx vs numba: scikit-bio numba engine median / this median (above 1: faster than scikit-bio's "
          "numba engine); x vs 1 thr: the same library's 1-thread median / this median, from calls "
          "alternating with it in one process; cores: median CPU time / wall time of the calls (on a "
          "shared machine a second thread gains only what the scheduler gives it: below 2 the cores were "
          "busy); max rel diff: against scikit-bio's numba engine on the same pairs.")
    if args.json:
        write_json(args.json, {"machine": info, "inputs": {**data, "rate": args.rate, "seed": args.seed},
                               "results": records})
    if failed:
        print("MISMATCH:", *failed, sep="\n  ")
        return 1
    return 0


def subset(condensed: np.ndarray, n: int, k: int) -> np.ndarray:
    """The condensed distances among the first ``k`` of ``n`` samples."""
    from scipy.spatial.distance import squareform

    return squareform(squareform(condensed)[:k, :k], checks=False)


if __name__ == "__main__":
    sys.exit(main())
