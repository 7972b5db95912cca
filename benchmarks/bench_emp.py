"""Weighted UniFrac at the scale of the Earth Microbiome Project, Zarr table to Zarr matrix on Dask.

The EMP release that Striped UniFrac was measured on has 27,751 samples
(McDonald et al. 2018). This script builds a table of that size on a
generated tree and computes weighted unnormalised UniFrac (``rho=1``,
``normalize="l1"``) between every pair of samples with ``emdtree.pairwise``
on dask arrays, written to a Zarr store, on a ``LocalCluster``:

* the tree: a random binary tree of ``--tips`` tips (default 100,000;
  branch lengths uniform(0, 1)), saved as tree.json;
* the table: EMP-like counts. Samples come from ``--environments``
  environments; each environment favours a few clades of 200 to 20,000 tips
  (Dirichlet weights), so samples of one environment share tips and
  clades, as real communities do. Each sample observes between
  ``--min-tips`` and ``--max-tips`` tips (log-uniform): 90% drawn in its
  environment's clades, 10% anywhere; counts are heavy-tailed
  (``ceil(lognormal(0, 1.5))``). Written to Zarr by blocks of samples
  (int32, never the whole table in memory: 27,751 x 100,000 dense is 11 GB);
* the run: the Zarr table as a dask array, ``emdtree.pairwise`` (its sparse
  route: each sample's transformed row is stored on the ancestors of its
  tips only), the matrix written with ``dask.array.to_zarr``. Wall time
  (cluster start apart), pairs per second, the CPU seconds of the workers
  (on a shared machine the wall time counts other programs' turns too), peak
  resident memory of each worker and of the client (each configuration in a
  fresh interpreter);
* the check: a random set of rows and columns of the stored matrix against
  the in-memory ``emdtree.pairwise`` of those samples with the dense route
  forced (relative error).

Modes: the default is the full run (27,751 samples); ``--quick`` takes 3,000
samples, ``--smoke`` 200 samples on a 2,000-tip tree (seconds).
``--compare-layouts`` first times 2 one-thread workers against 1 worker of 2
threads on ``--layout-samples`` samples. ``--crossover`` measures the
in-memory sparse and dense routes on one thread against the density of the
transformed rows (what sets ``emdtree.distances.sparse_rows.SPARSE_MAX_DENSITY``).

Run ``python benchmarks/bench_emp.py --help`` for the options.
"""

from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "OMP_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from _common import machine_info, print_machine, print_table, random_binary_tree, write_json  # noqa: E402
from bench_scaleout import _peak_rss_mb, _worker_peak_mb  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
EMP_SAMPLES = 27_751


# ----------------------------------------------------------------------------- inputs

def make_tree(rng: np.random.Generator, n_tips: int):
    import emdtree

    parents, lengths = random_binary_tree(rng, n_tips)
    return emdtree.Tree.from_parents(parents, lengths, bins=np.arange(n_tips),
                                     names=[f"T{i}" for i in range(n_tips)])


class Communities:
    """EMP-like samples on a tree: environments that favour clades, heavy-tailed counts."""

    def __init__(self, rng: np.random.Generator, tree, n_environments: int, tips: tuple[int, int]) -> None:
        lay = tree.layout
        self.rng = rng
        self.n_tips = tree.n_bins
        self.tips = tips
        # tips in post-order: the tips of a clade are one run of them
        is_tip = lay.bin_at >= 0
        self.tip_order = lay.bin_at[is_tip]
        before = np.concatenate([[0], np.cumsum(is_tip)])
        first = np.arange(tree.n_nodes) - lay.size + 1
        self.start, self.stop = before[first], before[np.arange(tree.n_nodes) + 1]
        n_below = self.stop - self.start
        small = tips[1] // 10 if tips[1] // 10 > 20 else 20
        candidates = np.flatnonzero((n_below >= min(small, self.n_tips // 20 + 1))
                                    & (n_below <= max(self.n_tips // 5, small)))
        self.environments = []
        for _ in range(n_environments):
            clades = rng.choice(candidates, int(rng.integers(3, 11)), replace=False)
            self.environments.append((clades, rng.dirichlet(np.full(clades.size, 0.7))))

    def sample(self) -> tuple[np.ndarray, np.ndarray]:
        """Observed tips (sorted) and their counts of one sample."""
        rng = self.rng
        lo, hi = self.tips
        k = int(np.exp(rng.uniform(np.log(lo), np.log(hi))))
        clades, weights = self.environments[int(rng.integers(len(self.environments)))]
        weights = rng.dirichlet(weights * 20 + 0.05)  # this sample's own mix
        per_clade = rng.multinomial(int(0.9 * k), weights)
        picks = [rng.integers(0, self.n_tips, k - per_clade.sum())]
        for c, m in zip(clades, per_clade):
            size = self.stop[c] - self.start[c]
            if m:
                picks.append(self.tip_order[self.start[c] + rng.choice(size, min(m, size), replace=False)])
        tips = np.unique(np.concatenate(picks))
        counts = np.ceil(rng.lognormal(0.0, 1.5, tips.size)).astype(np.int32)
        return tips, counts


def make_inputs(folder: str, n_tips: int, n_samples: int, n_environments: int, tips: tuple[int, int],
                block: int, seed: int) -> dict:
    """tree.json and table.zarr (``counts`` int32 (n_samples, n_tips), chunked by ``block`` samples)."""
    import zarr

    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    tree = make_tree(rng, n_tips)
    tree.save(os.path.join(folder, "tree.json"))
    tree_s = time.perf_counter() - t0
    source = Communities(rng, tree, n_environments, tips)
    group = zarr.open_group(os.path.join(folder, "table.zarr"), mode="w")
    counts = group.create_array("counts", shape=(n_samples, n_tips), chunks=(block, n_tips), dtype=np.int32)
    observed = np.empty(n_samples, dtype=np.int64)
    for r0 in range(0, n_samples, block):
        r1 = min(r0 + block, n_samples)
        rows = np.zeros((r1 - r0, n_tips), dtype=np.int32)
        for r in range(r1 - r0):
            t, c = source.sample()
            rows[r, t] = c
            observed[r0 + r] = t.size
        counts[r0:r1] = rows
    return {"n_tips": n_tips, "n_nodes": tree.n_nodes, "n_samples": n_samples, "environments": n_environments,
            "tips_per_sample": {"min": int(observed.min()), "median": float(np.median(observed)),
                                "mean": float(observed.mean()), "max": int(observed.max())},
            "tree_s": tree_s, "table_s": time.perf_counter() - t0 - tree_s}


def sparse_of(X: np.ndarray, tree):
    """The sparse transformed rows of ``X`` (rho = 1, proportions), however dense."""
    from emdtree.distances import sparse_rows
    from emdtree.distances.rows import _columns

    positions, scale = _columns(tree, 1.0)
    limit, sparse_rows.INPUT_MAX_DENSITY = sparse_rows.INPUT_MAX_DENSITY, 2.0
    try:
        ptr, idx, val, totals = sparse_rows.masses(X)
    finally:
        sparse_rows.INPUT_MAX_DENSITY = limit
    return sparse_rows.build(ptr, idx, val, totals, tree, sparse_rows.column_of(tree, positions), scale,
                             np.dtype(np.float64))


def row_stats(folder: str, n: int) -> dict:
    """Stored entries of the sparse transformed rows of the first ``n`` samples."""
    import zarr

    import emdtree

    tree = emdtree.Tree.load(os.path.join(folder, "tree.json"))
    X = zarr.open_group(os.path.join(folder, "table.zarr"), mode="r")["counts"][:n]
    rows = sparse_of(X, tree)
    sizes = np.diff(rows.ptr)
    return {"columns": rows.n_cols, "support_mean": float(sizes.mean()),
            "support_median": float(np.median(sizes)), "support_max": int(sizes.max()),
            "density": rows.density()}


# ----------------------------------------------------------------------------- runs (subprocesses)

def _cpu_s() -> float:
    """CPU seconds (user and system) of the calling process so far."""
    import resource as res

    usage = res.getrusage(res.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_cluster(folder: str, n: int, workers: int, threads: int, block: int, n_check: int) -> dict:
    import logging

    import dask.array as da
    import distributed
    import zarr

    import emdtree
    from emdtree.distances import sparse_rows

    tree = emdtree.Tree.load(os.path.join(folder, "tree.json"))
    X = da.from_zarr(os.path.join(folder, "table.zarr"), component="counts")[:n]
    # compile or load the kernels into Numba's cache before the workers start
    emdtree.pairwise(X[:16], tree=tree, normalize="l1", block_size=8).compute(scheduler="sync")
    t0 = time.perf_counter()
    cluster = distributed.LocalCluster(n_workers=workers, threads_per_worker=threads, processes=True,
                                       dashboard_address=None, silence_logs=logging.ERROR)
    client = distributed.Client(cluster)
    client.wait_for_workers(workers)
    warm = emdtree.pairwise(X[:16 * workers * threads], tree=tree, normalize="l1", block_size=8)
    client.compute(warm).result()
    start_s = time.perf_counter() - t0
    warm_cpu = client.run(_cpu_s)
    out = os.path.join(folder, f"d-{n}-{workers}x{threads}.zarr")
    load_before = os.getloadavg()
    try:
        t0 = time.perf_counter()
        D = emdtree.pairwise(X, tree=tree, normalize="l1", block_size=block)
        da.to_zarr(D, out, overwrite=True)
        seconds = time.perf_counter() - t0
        worker_peaks = sorted(client.run(_worker_peak_mb).values())
        worker_cpu = client.run(_cpu_s)
    finally:
        client.close()
        cluster.close()
    load_after = os.getloadavg()
    client_peak = _peak_rss_mb()  # before the check, which reads samples into this process
    # the check: random rows and columns against the in-memory matrix on the dense route
    stored = zarr.open_array(out, mode="r")
    rng = np.random.default_rng(n)
    rows = np.unique(np.concatenate([[0, n - 1], rng.integers(0, n, max(n_check // 50, 2))]))
    cols = np.unique(np.concatenate([[0, n - 1], rng.integers(0, n, 50)]))
    counts = zarr.open_group(os.path.join(folder, "table.zarr"), mode="r")["counts"]
    a = counts.get_orthogonal_selection((rows, slice(None)))
    b = counts.get_orthogonal_selection((cols, slice(None)))
    sparse_rows.SPARSE_MAX_DENSITY = -1.0
    want = emdtree.pairwise(a, b, tree=tree, normalize="l1")
    got = stored.get_orthogonal_selection((rows, cols))
    same = rows[:, None] == cols[None, :]
    err = float(np.max(np.where(same, np.abs(got), np.abs(got - want) / np.maximum(np.abs(want), 1e-300))))
    full = stored[:2, :]
    shutil.rmtree(out, ignore_errors=True)
    pairs = n * (n - 1) // 2
    return {"seconds": seconds, "cluster_start_s": start_s, "client_peak_mb": client_peak,
            "worker_peak_mb": worker_peaks,
            "worker_cpu_s": [worker_cpu[w] - warm_cpu[w] for w in sorted(worker_cpu)],
            "max_rel_err": err, "checked_entries": int(got.size),
            "first_rows_finite": bool(np.isfinite(full).all()), "pairs": pairs,
            "pairs_per_s": pairs / seconds, "us_per_pair_core": seconds * workers * threads / pairs * 1e6,
            "load_before": list(load_before), "load_after": list(load_after)}


def run_crossover(folder: str, n: int, repeat: int) -> dict:
    """In-memory sparse and dense routes on one thread, for samples of increasing density."""
    import emdtree
    from emdtree.distances import sparse_rows

    rng = np.random.default_rng(1)
    n_tips = 10_000
    tree = make_tree(rng, n_tips)
    results = []
    for lo, hi in ((5, 20), (20, 60), (60, 200), (200, 600), (600, 2000), (2000, 5000)):
        source = Communities(rng, tree, 10, (lo, hi))
        X = np.zeros((n, n_tips))
        for r in range(n):
            t, c = source.sample()
            X[r, t] = c
        times = {}
        for route, density in (("sparse", 2.0), ("dense", -1.0)):
            sparse_rows.SPARSE_MAX_DENSITY = sparse_rows.INPUT_MAX_DENSITY = density
            emdtree.pairwise(X[:8], tree=tree, normalize="l1", n_threads=1)
            runs = []
            for _ in range(repeat):
                t0 = time.perf_counter()
                emdtree.pairwise(X, tree=tree, normalize="l1", n_threads=1)
                runs.append(time.perf_counter() - t0)
            times[route] = float(np.median(runs))
        rows = sparse_of(X, tree)
        results.append({"tips": [lo, hi], "input_density": float(np.count_nonzero(X) / X.size),
                        "row_density": rows.density(), **times, "ratio": times["dense"] / times["sparse"]})
    return {"n": n, "n_tips": n_tips, "rows": results}


def child(kind: str, params: dict, scratch: str) -> dict:
    """One run in a fresh interpreter (its peak resident memory its own)."""
    with open(scratch, "w", encoding="utf-8") as fh:
        json.dump(params, fh)
    env = dict(os.environ, NUMBA_NUM_THREADS=str(max(params.get("threads", 1), 1)))
    subprocess.run([sys.executable, __file__, "--_child", kind, scratch], check=True, env=env, cwd=HERE)
    with open(scratch, encoding="utf-8") as fh:
        return json.load(fh)


def _child_main(kind: str, scratch: str) -> int:
    with open(scratch, encoding="utf-8") as fh:
        p = json.load(fh)
    if kind == "cluster":
        result = run_cluster(p["folder"], p["n"], p["workers"], p["threads"], p["block"], p["check"])
    else:
        result = run_crossover(p["folder"], p["n"], p["repeat"])
    with open(scratch, "w", encoding="utf-8") as fh:
        json.dump(result, fh)
    return 0


# ----------------------------------------------------------------------------- main

def _layouts(text: str) -> list[tuple[int, int]]:
    workers, threads = text.lower().split("x")
    return [(int(workers), int(threads))]


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--_child":
        return _child_main(sys.argv[2], sys.argv[3])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="3,000 samples")
    mode.add_argument("--smoke", action="store_true", help="200 samples on a 2,000-tip tree (seconds)")
    parser.add_argument("--samples", type=int, help=f"samples (default {EMP_SAMPLES}, the EMP release)")
    parser.add_argument("--tips", type=int, help="tips of the tree (default 100000)")
    parser.add_argument("--min-tips", type=int, help="fewest observed tips per sample (default 300)")
    parser.add_argument("--max-tips", type=int, help="most observed tips per sample (default 3000)")
    parser.add_argument("--environments", type=int, default=40, help="environments (default 40)")
    parser.add_argument("--block", type=int, help="samples per block of the matrix (default 1024)")
    parser.add_argument("--layout", type=_layouts, default=[(2, 1)],
                        help="WORKERSxTHREADS of the cluster (default 2x1: two one-thread workers)")
    parser.add_argument("--compare-layouts", action="store_true",
                        help="first time 2x1 against 1x2 on --layout-samples samples")
    parser.add_argument("--layout-samples", type=int, default=3000)
    parser.add_argument("--crossover", action="store_true",
                        help="only measure the in-memory sparse and dense routes against the row density")
    parser.add_argument("--check", type=int, default=2000, help="entries checked (about; default 2000)")
    parser.add_argument("--keep", metavar="DIR", help="write the inputs to DIR and keep them")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", metavar="FILE", help="write the results as JSON")
    args = parser.parse_args()
    smoke = args.smoke
    n = args.samples or (200 if smoke else 3000 if args.quick else EMP_SAMPLES)
    n_tips = args.tips or (2000 if smoke else 100_000)
    tips = (args.min_tips or (20 if smoke else 300), args.max_tips or (200 if smoke else 3000))
    block = args.block or (64 if smoke else 1024)

    info = machine_info()
    print_machine(info)
    results: dict = {"machine": info, "args": {k: v for k, v in vars(args).items() if k != "layout"},
                     "samples": n, "tips": n_tips, "tips_per_sample": tips, "block": block}
    folder = args.keep or tempfile.mkdtemp(prefix="emdtree-emp-")
    os.makedirs(folder, exist_ok=True)
    scratch = os.path.join(folder, "result.json")
    try:
        if args.crossover:
            params = {"folder": folder, "n": 100 if smoke else 600, "repeat": 1 if smoke else 3}
            r = child("crossover", params, scratch)
            results["crossover"] = r
            print(f"\nIn-memory routes on one thread, {r['n']} samples, {r['n_tips']:,}-tip tree "
                  "(seconds, median):")
            print_table(["tips per sample", "input density", "row density", "sparse s", "dense s",
                         "dense/sparse"],
                        [[f"{x['tips'][0]}-{x['tips'][1]}", f"{x['input_density']:.4f}",
                          f"{x['row_density']:.4f}", f"{x['sparse']:.3f}", f"{x['dense']:.3f}",
                          f"{x['ratio']:.2f}"] for x in r["rows"]], right=set(range(1, 6)))
        else:
            n_table = max(n, args.layout_samples if args.compare_layouts else 0)
            t0 = time.perf_counter()
            results["inputs"] = make_inputs(folder, n_tips, n_table, args.environments, tips, block,
                                            args.seed)
            results["rows"] = row_stats(folder, min(n_table, 500))
            print(f"inputs ({time.perf_counter() - t0:.1f} s): {results['inputs']}")
            print(f"transformed rows (first 500 samples): {results['rows']}\n")
            layouts = [(2, 1), (1, 2)] if args.compare_layouts else []
            table = []
            runs = []
            for size, (workers, threads) in [(args.layout_samples, lay) for lay in layouts] + \
                    [(n, lay) for lay in args.layout]:
                print(f"uptime before: {os.getloadavg()}", flush=True)
                r = child("cluster", {"folder": folder, "n": size, "workers": workers, "threads": threads,
                                      "block": block, "check": args.check}, scratch)
                r.update(n=size, workers=workers, threads=threads)
                runs.append(r)
                print(f"uptime after: {os.getloadavg()}", flush=True)
                table.append([f"{workers} worker(s) x {threads} thread(s)", f"{size:,}", f"{r['pairs']:,}",
                              f"{r['seconds']:.1f}", f"{r['cluster_start_s']:.1f}",
                              f"{r['pairs_per_s'] / 1e6:.2f}",
                              f"{r['us_per_pair_core']:.2f}", f"{sum(r['worker_cpu_s']):.0f}",
                              f"{r['client_peak_mb']:.0f}",
                              " ".join(f"{m:.0f}" for m in r["worker_peak_mb"]), f"{r['max_rel_err']:.1e}",
                              f"{r['load_before'][0]:.1f}/{r['load_after'][0]:.1f}"])
            results["runs"] = runs
            print(f"\nWeighted UniFrac, Zarr table -> Zarr matrix, blocks of {block} samples, float64:")
            print_table(["cluster", "samples", "pairs", "seconds", "start s", "Mpairs/s", "core-us/pair",
                         "worker CPU s", "client MB", "worker MB", "max rel err", "load"], table,
                        right=set(range(1, 11)))
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
    if args.json:
        write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
