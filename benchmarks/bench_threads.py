"""Serial against parallel CPU kernel for EMD^2 value + gradient, by batch size.

emdtree runs its value/gradient kernel on several Numba threads only when
``batch x n_nodes >= emdtree.engine.driver.PARALLEL_MIN_WORK`` (and the batch spans
more than one block of rows). This script forces each path in turn by
setting that threshold to 0 (always parallel) or to a huge number (always
serial), and times ``emdtree.emd_value_and_grad(p, q, tree, rho=2)`` through
the public API for a range of batch sizes on the ImageNet WordNet tree and a
1000-bin chain. The two paths are timed alternately, call by call, so that
both see the same load on a shared machine.

The result is what ``PARALLEL_MIN_WORK`` should be set from: the work
(batch x n_nodes) above which the parallel kernel is reliably faster.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

import emdtree
from emdtree.engine import driver as _driver
from emdtree.datasets import imagenet_wordnet

from _common import (Timer, as_dtype, fmt_ms, kernel_path, machine_info, num_threads, print_machine,
                     print_table, random_rows, softmax_rows, write_json)

BATCHES = [1, 8, 32, 64, 128, 256, 512, 2048]
ALWAYS_SERIAL = 1 << 62


def forced(threshold: int, call):
    """``call`` with ``PARALLEL_MIN_WORK`` set to ``threshold`` for its duration."""

    def run():
        old = _driver.PARALLEL_MIN_WORK
        _driver.PARALLEL_MIN_WORK = threshold
        try:
            return call()
        finally:
            _driver.PARALLEL_MIN_WORK = old

    return run


def crossover(rows: list[dict], margin: float) -> tuple[int | None, int | None]:
    """``(win, lose)``: parallel beats serial by ``margin`` at every work >= ``win``; ``lose`` is the
    largest work below that where it does not (``None`` when there is no such batch)."""
    win = lose = None
    for r in sorted(rows, key=lambda r: r["work"], reverse=True):
        faster = r["serial"]["median_ms"] >= (1 + margin) * r["parallel"]["median_ms"]
        if r["parallel_path"] == "parallel" and faster:
            win = r["work"]
        else:
            lose = r["work"]
            break
    return win, lose


def print_rows(tree_name, tree, mode, rows) -> None:
    print()
    print(f"== {tree_name}: {tree.n_nodes} nodes, {tree.n_bins} bins; {mode} "
          f"(ms: median [p10-p90]; ratio = serial median / parallel median)")
    table = []
    for r in rows:
        s, par = r["serial"], r["parallel"]
        path = r["parallel_path"] + ("" if r["parallel_path"] == "parallel" else " (forced path not taken)")
        table.append([str(r["batch"]), f"{r['work']:,}",
                      f"{fmt_ms(s['median_ms'])} [{fmt_ms(s['p10_ms'])}-{fmt_ms(s['p90_ms'])}]",
                      f"{fmt_ms(par['median_ms'])} [{fmt_ms(par['p10_ms'])}-{fmt_ms(par['p90_ms'])}]",
                      f"{s['median_ms'] / par['median_ms']:.2f}", str(s["n_samples"]), path])
    print_table(["batch", "work", "serial ms", "parallel ms", "ratio", "samples", "'parallel' ran"],
                table, right={0, 1, 2, 3, 4, 5})


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer samples (about 20 s)")
    ap.add_argument("--json", metavar="PATH", help="also write the results and machine info as JSON")
    ap.add_argument("--repeat", type=int, default=None,
                    help="samples per measurement (default 200, --quick 30)")
    ap.add_argument("--max-seconds", type=float, default=None,
                    help="time budget of one measurement; slow ones get fewer samples "
                         "(default 2, --quick 0.4)")
    ap.add_argument("--threads", type=int, default=2, help="Numba threads of the parallel kernel (default 2)")
    ap.add_argument("--batches", type=int, nargs="+", default=BATCHES, metavar="B",
                    help=f"batch sizes (default {' '.join(map(str, BATCHES))})")
    ap.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    ap.add_argument("--check-inputs", action="store_true",
                    help="time with emdtree's input checks (default: check_inputs=False, kernels only)")
    ap.add_argument("--pause-ms", type=float, nargs="+", default=[0.0, 5.0], metavar="MS",
                    help="one full measurement per value: sleep this long before every timed call, as other "
                         "work in a training loop lets Numba's worker threads go idle (default: 0 5, i.e. "
                         "back-to-back calls, then 5 ms pauses)")
    ap.add_argument("--margin", type=float, default=0.05,
                    help="parallel must be this much faster (fraction of the serial time) to count "
                         "(default 0.05)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, seconds: checks the script runs")
    args = ap.parse_args(argv)
    if args.smoke:
        args.quick, args.repeat, args.max_seconds, args.batches, args.pause_ms = True, 3, 0.05, [8, 64], [0.0]
    if args.threads < 1 or any(b < 1 for b in args.batches):
        ap.error("--threads and --batches must be at least 1")
    if any(x < 0 for x in args.pause_ms):
        ap.error("--pause-ms must not be negative")
    repeat = args.repeat or (30 if args.quick else 200)
    max_s = args.max_seconds if args.max_seconds is not None else (0.4 if args.quick else 2.0)

    import numba

    n_threads = min(args.threads, numba.config.NUMBA_NUM_THREADS)
    dtype = np.dtype(args.dtype)
    start = time.perf_counter()
    info = machine_info()
    print_machine(info)
    print(f"EMD^2 value+grad ({args.dtype}, check_inputs={args.check_inputs}), serial kernel vs "
          f"parallel kernel on {n_threads} Numba threads; p = softmax of N(0, 2^2) logits, "
          f"q = random distributions; current PARALLEL_MIN_WORK = {_driver.PARALLEL_MIN_WORK:,}")
    trees = [("ImageNet WordNet", imagenet_wordnet()), ("chain(1000)", emdtree.Tree.chain(1000))]
    results, suggestions = [], []
    rng = np.random.default_rng(args.seed)
    inputs = {(name, b): (as_dtype(softmax_rows(rng, b, tree.n_bins), dtype),
                          as_dtype(random_rows(rng, b, tree.n_bins), dtype))
              for name, tree in trees for b in args.batches}
    with num_threads(n_threads):
        for pause in args.pause_ms:
            timer = Timer(repeat, min_sample_s=0.0, max_total_s=max_s, min_repeats=5, pause_s=pause / 1e3)
            mode = f"sleep {pause:g} ms before each call" if pause else "back-to-back calls"
            for tree_name, tree in trees:
                rows = []
                for batch in args.batches:
                    p, q = inputs[tree_name, batch]

                    def call(p=p, q=q, tree=tree):
                        return emdtree.emd_value_and_grad(p, q, tree, rho=2, check_inputs=args.check_inputs)

                    fns = {"serial": forced(ALWAYS_SERIAL, call), "parallel": forced(0, call)}
                    timed = timer.run(fns)
                    paths = {name: kernel_path(fn) for name, fn in fns.items()}
                    rows.append({"tree": tree_name, "n_nodes": tree.n_nodes, "batch": batch,
                                 "work": batch * tree.n_nodes, "threads": n_threads, "pause_ms": pause,
                                 "serial_path": paths["serial"], "parallel_path": paths["parallel"], **timed})
                results += rows
                win, lose = crossover(rows, args.margin)
                suggestions.append({"tree": tree_name, "pause_ms": pause, "parallel_wins_from_work": win,
                                    "parallel_loses_at_work": lose})
                print_rows(tree_name, tree, mode, rows)

    print()
    for s in suggestions:
        mode = f"pause {s['pause_ms']:g} ms" if s["pause_ms"] else "back-to-back"
        where = f"{s['tree']}, {mode}"
        win, lose = s["parallel_wins_from_work"], s["parallel_loses_at_work"]
        if win is None:
            print(f"{where}: parallel is not {args.margin:.0%} faster at the largest batch")
        else:
            print(f"{where}: parallel is at least {args.margin:.0%} faster at every work >= {win:,}"
                  + (f", not at {lose:,}" if lose is not None else ""))
    wins = [s["parallel_wins_from_work"] for s in suggestions]
    loses = [s["parallel_loses_at_work"] or 0 for s in suggestions]
    if wins and None not in wins:
        print(f"A threshold that holds in every case lies in ({max(loses):,}, {max(wins):,}] "
              f"(PARALLEL_MIN_WORK is now {_driver.PARALLEL_MIN_WORK:,})")
    else:
        print(f"No threshold within the batches tried holds in every case "
              f"(PARALLEL_MIN_WORK is now {_driver.PARALLEL_MIN_WORK:,})")
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    print(f"Total {time.perf_counter() - start:.0f} s; load average now {load}.")
    if args.json:
        write_json(args.json, {
            "benchmark": "bench_threads", "machine": info,
            "config": {"dtype": args.dtype, "threads": n_threads, "batches": args.batches, "repeat": repeat,
                       "max_seconds": max_s, "check_inputs": args.check_inputs, "pause_ms": args.pause_ms,
                       "margin": args.margin, "seed": args.seed, "quick": args.quick,
                       "parallel_min_work": _driver.PARALLEL_MIN_WORK},
            "results": results, "crossover": suggestions,
        })
    return 0


if __name__ == "__main__":
    sys.exit(main())
