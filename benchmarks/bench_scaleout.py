"""Distance matrices on a dask.distributed cluster, written to Zarr.

Inputs: a random 10,000-tip binary tree (branch lengths uniform(0, 1)) and
sparse counts: each sample has ``--features`` (default 300) tips with
geometric counts, stored as a Zarr table chunked by blocks of samples.

Two parts, each configuration in its own subprocess (fresh interpreter, so
that its peak resident memory is its own):

1. Overhead, on ``--fit-samples`` samples (a size whose matrix fits in
   memory), in the order in-memory, cluster, cluster, in-memory so that a
   load that drifts weighs on both: in-memory ``emdtree.pairwise`` on 1 and 2 Numba threads (the
   counts already in memory, the matrix returned), against Zarr table ->
   lazy ``emdtree.pairwise`` -> Zarr store on a ``LocalCluster`` of 1 and 2
   one-thread worker processes. Compared per pair: microseconds per pair and
   the ratio of the cluster to the in-memory run with as many cores.
2. Scale: ``--samples`` samples (default 20,000: 200 million pairs) to Zarr
   on 1 and 2 workers: wall time (cluster start apart), per-pair cost, peak
   resident memory of the client and of each worker.

Every dask run checks a few rows of its Zarr output against the in-memory
``pairwise`` of those rows (relative 1e-12). The machine's load average is
printed before and after each run: on a shared machine the figures are only
as good as the cores were free.

Run ``python benchmarks/bench_scaleout.py --help`` for the options.
"""

from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "OMP_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from _common import machine_info, print_machine, print_table, random_binary_tree, write_json  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


# ----------------------------------------------------------------------------- inputs

def make_inputs(folder: str, n_tips: int, n_samples: int, features: int, block: int, seed: int) -> dict:
    """tree.json and table.zarr (counts int32 (n_samples, n_tips), chunked by ``block`` samples)."""
    import zarr

    import emdtree

    rng = np.random.default_rng(seed)
    parents, lengths = random_binary_tree(rng, n_tips)
    tree = emdtree.Tree.from_parents(parents, lengths, bins=np.arange(n_tips),
                                     names=[f"T{i}" for i in range(n_tips)])
    tree.save(os.path.join(folder, "tree.json"))
    group = zarr.open_group(os.path.join(folder, "table.zarr"), mode="w")
    counts = group.create_array("counts", shape=(n_samples, n_tips), chunks=(block, n_tips), dtype=np.int32)
    for r0 in range(0, n_samples, block):
        r1 = min(r0 + block, n_samples)
        rows = np.zeros((r1 - r0, n_tips), dtype=np.int32)
        for r in range(r1 - r0):
            rows[r, rng.choice(n_tips, features, replace=False)] = rng.geometric(0.2, features)
        counts[r0:r1] = rows
    return {"n_tips": n_tips, "n_nodes": tree.n_nodes, "n_samples": n_samples,
            "features_per_sample": features}


# ----------------------------------------------------------------------------- workers (subprocesses)

def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # kilobytes on Linux


def run_in_memory(folder: str, n: int, threads: int, repeat: int) -> dict:
    import zarr

    import emdtree

    tree = emdtree.Tree.load(os.path.join(folder, "tree.json"))
    X = zarr.open_group(os.path.join(folder, "table.zarr"), mode="r")["counts"][:n]
    emdtree.pairwise(X[:64], tree=tree, normalize="l1", n_threads=threads)  # compile / load the cache
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        emdtree.pairwise(X, tree=tree, normalize="l1", n_threads=threads)
        times.append(time.perf_counter() - t0)
    return {"seconds": float(np.median(times)), "all_seconds": times, "client_peak_mb": _peak_rss_mb()}


def _worker_peak_mb() -> float:
    import resource as res

    return res.getrusage(res.RUSAGE_SELF).ru_maxrss / 1024.0


def run_cluster(folder: str, n: int, workers: int, block: int, repeat: int) -> dict:
    import logging

    import dask.array as da
    import distributed
    import zarr

    import emdtree

    tree = emdtree.Tree.load(os.path.join(folder, "tree.json"))
    X = da.from_zarr(os.path.join(folder, "table.zarr"), component="counts")[:n]
    # compile or load the one-thread kernels into Numba's cache before the workers start
    emdtree.pairwise(da.from_array(np.eye(4)), normalize="l1").compute(scheduler="sync")
    t0 = time.perf_counter()
    cluster = distributed.LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                       dashboard_address=None, silence_logs=logging.ERROR)
    client = distributed.Client(cluster)
    client.wait_for_workers(workers)
    # each worker imports emdtree and loads the kernels once: part of the start, not of the work
    warm = emdtree.pairwise(X[:8 * workers], tree=tree, normalize="l1", block_size=4)
    client.compute(warm).result()
    start_s = time.perf_counter() - t0
    times = []
    try:
        for k in range(repeat):
            out = os.path.join(folder, f"d-{n}-{workers}-{k}.zarr")
            t0 = time.perf_counter()
            D = emdtree.pairwise(X, tree=tree, normalize="l1", block_size=block)
            da.to_zarr(D, out, overwrite=True)
            times.append(time.perf_counter() - t0)
        worker_peaks = sorted(client.run(_worker_peak_mb).values())
    finally:
        client.close()
        cluster.close()
    client_peak = _peak_rss_mb()  # before the check below, which reads samples into this process
    stored = zarr.open_array(out, mode="r")
    rng = np.random.default_rng(n)
    rows = np.unique(np.concatenate([[0, n - 1], rng.integers(0, n, 6)]))
    cols = np.unique(np.concatenate([[0, n - 1], rng.integers(0, n, 200)]))
    counts = zarr.open_group(os.path.join(folder, "table.zarr"), mode="r")["counts"]
    want = emdtree.pairwise(counts.get_orthogonal_selection((rows, slice(None))),
                            counts.get_orthogonal_selection((cols, slice(None))), tree=tree, normalize="l1")
    err = float(np.max(np.abs(stored.get_orthogonal_selection((rows, cols)) - want)
                       / np.maximum(np.abs(want), 1e-300)))
    for k in range(repeat):
        import shutil

        shutil.rmtree(os.path.join(folder, f"d-{n}-{workers}-{k}.zarr"), ignore_errors=True)
    return {"seconds": float(np.median(times)), "all_seconds": times, "cluster_start_s": start_s,
            "client_peak_mb": client_peak, "worker_peak_mb": worker_peaks, "max_rel_err": err}


def child(kind: str, folder: str, n: int, cores: int, block: int, repeat: int, out: str) -> dict:
    """Run one configuration in a fresh interpreter; its result as a dict."""
    env = dict(os.environ, NUMBA_NUM_THREADS=str(max(cores, 1)))
    load_before = os.getloadavg()[0]
    cmd = [sys.executable, __file__, "--_child", kind, folder, *map(str, (n, cores, block, repeat)), out]
    subprocess.run(cmd, check=True, env=env, cwd=HERE)
    with open(out, encoding="utf-8") as fh:
        result = json.load(fh)
    result.update(kind=kind, n=n, cores=cores, pairs=n * (n - 1) // 2, load_before=load_before,
                  load_after=os.getloadavg()[0])
    result["us_per_pair"] = result["seconds"] / result["pairs"] * 1e6
    return result


def combine(first: dict, second: dict) -> dict:
    """Two runs of one configuration as one: the median of all their timings, the larger peaks."""
    out = dict(first)
    out["all_seconds"] = first["all_seconds"] + second["all_seconds"]
    out["seconds"] = float(np.median(out["all_seconds"]))
    out["us_per_pair"] = out["seconds"] / out["pairs"] * 1e6
    out["client_peak_mb"] = max(first["client_peak_mb"], second["client_peak_mb"])
    if "worker_peak_mb" in first:
        out["worker_peak_mb"] = [max(a, b) for a, b in zip(first["worker_peak_mb"], second["worker_peak_mb"])]
        out["max_rel_err"] = max(first["max_rel_err"], second["max_rel_err"])
    out["load_after"] = second["load_after"]
    return out


# ----------------------------------------------------------------------------- main

def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--_child":
        kind, folder, n, cores, block, repeat, out = sys.argv[2:9]
        if kind == "memory":
            result = run_in_memory(folder, int(n), int(cores), int(repeat))
        else:
            result = run_cluster(folder, int(n), int(cores), int(block), int(repeat))
        with open(out, "w", encoding="utf-8") as fh:
            json.dump(result, fh)
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=20_000,
                        help="samples of the scale part (default 20000)")
    parser.add_argument("--fit-samples", type=int, default=3_000,
                        help="samples of the overhead part, in memory and on the cluster (default 3000)")
    parser.add_argument("--tips", type=int, default=10_000, help="tips of the tree (default 10000)")
    parser.add_argument("--features", type=int, default=300, help="tips with counts per sample (default 300)")
    parser.add_argument("--block", type=int, default=512,
                        help="samples per block of the matrix (default 512)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="cluster sizes (default 1 2)")
    parser.add_argument("--scale-workers", type=int, nargs="+",
                        help="cluster sizes of the scale part (default: --workers)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of the overhead part, median (default 3)")
    parser.add_argument("--skip-scale", action="store_true", help="run the overhead part only")
    parser.add_argument("--skip-overhead", action="store_true", help="run the scale part only")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", metavar="FILE", help="write the results as JSON")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny sizes, one worker, overhead part only: checks the script runs")
    args = parser.parse_args()
    if args.smoke:
        args.samples, args.fit_samples, args.tips, args.features, args.block = 300, 200, 500, 30, 100
        args.workers, args.scale_workers, args.repeat, args.skip_scale = [1], [1], 1, True
    try:
        import dask  # noqa: F401
        import distributed  # noqa: F401
        import zarr  # noqa: F401
    except ImportError as exc:
        print(f"bench_scaleout: nothing to measure: {exc.name} is not installed")
        return 0

    info = machine_info()
    print_machine(info)
    results: dict = {"machine": info, "args": vars(args)}
    with tempfile.TemporaryDirectory(prefix="emdtree-scaleout-") as folder:
        n_table = max(0 if args.skip_overhead else args.fit_samples, 0 if args.skip_scale else args.samples)
        t0 = time.perf_counter()
        results["inputs"] = make_inputs(folder, args.tips, n_table, args.features, args.block, args.seed)
        print(f"inputs: {results['inputs']} written in {time.perf_counter() - t0:.1f} s\n")
        scratch = os.path.join(folder, "result.json")

        rows = []
        overhead = []
        for cores in [] if args.skip_overhead else args.workers:
            # A B B A: a load that drifts during the runs weighs on both alike
            runs = [child(kind, folder, args.fit_samples, cores, args.block, args.repeat, scratch)
                    for kind in ("memory", "cluster", "cluster", "memory")]
            mem, dsk = combine(runs[0], runs[3]), combine(runs[1], runs[2])
            overhead += [mem, dsk]
            ratio = dsk["us_per_pair"] / mem["us_per_pair"]
            dsk["ratio_to_memory"] = ratio
            for r in (mem, dsk):
                what = f"in memory, {cores} thread(s)" if r is mem else f"Zarr -> Zarr, {cores} worker(s)"
                rows.append([what, f"{r['n']:,}", f"{r['seconds']:.2f}", f"{r['us_per_pair']:.3f}",
                             "" if r is mem else f"{ratio:.2f}x", f"{r['client_peak_mb']:.0f}",
                             " ".join(f"{m:.0f}" for m in r.get("worker_peak_mb", [])),
                             f"{r['load_before']:.1f}/{r['load_after']:.1f}"])
        results["overhead"] = overhead
        if overhead:
            n_fit = args.fit_samples
            print(f"Overhead on {n_fit:,} samples ({n_fit * (n_fit - 1) // 2:,} pairs), "
                  f"median of {2 * args.repeat} (runs in the order memory, cluster, cluster, memory):")
            headers = ["run", "samples", "seconds", "us/pair", "vs memory", "client MB", "worker MB", "load"]
            print_table(headers, rows, right={1, 2, 3, 4, 5, 6})

        if not args.skip_scale:
            rows = []
            scale = []
            for workers in args.scale_workers or args.workers:
                r = child("cluster", folder, args.samples, workers, args.block, 1, scratch)
                scale.append(r)
                rows.append([f"Zarr -> Zarr, {workers} worker(s)", f"{r['n']:,}", f"{r['pairs']:,}",
                             f"{r['seconds']:.1f}", f"{r['cluster_start_s']:.1f}", f"{r['us_per_pair']:.3f}",
                             f"{r['client_peak_mb']:.0f}", " ".join(f"{m:.0f}" for m in r["worker_peak_mb"]),
                             f"{r['max_rel_err']:.1e}", f"{r['load_before']:.1f}/{r['load_after']:.1f}"])
            results["scale"] = scale
            print(f"\nScale: {args.samples:,} samples to Zarr, blocks of {args.block} samples:")
            print_table(["run", "samples", "pairs", "seconds", "start s", "us/pair", "client MB", "worker MB",
                         "max rel err", "load"], rows, right=set(range(1, 9)))
    if args.json:
        write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
