"""Few samples: the row-at-a-time kernel against the 32-lane blocked kernel.

For batches of 1 to 32 samples on the ImageNet tree and on random trees of
2e4 and 2e5 nodes, times ``emdtree.kernels.rows.value_grad_rows`` and
``emdtree.kernels.cpu.value_grad_serial`` (EMD^2 value and gradient, one
thread) side by side, and prints the ratio. ``emdtree.engine.driver.ROW_KERNEL_MAX`` is
set from this table: below it, left-over samples go through the row kernel.

    python benchmarks/bench_rows.py [--quick] [--json PATH]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys

import numpy as np

import emdtree
from emdtree.engine import driver as _driver
from emdtree.kernels import cpu, rows

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
from trees import random_tree  # noqa: E402

from _common import Timer, machine_info, print_machine, print_table  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="ImageNet and the 2e4-node tree only")
    parser.add_argument("--json", default=None)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, seconds: checks the script runs")
    args = parser.parse_args()
    args.quick = args.quick or args.smoke
    info = machine_info()
    print_machine(info)
    trees = {"imagenet": emdtree.datasets.imagenet_wordnet()}
    for n in (2_000,) if args.smoke else (20_000,) if args.quick else (20_000, 200_000):
        trees[f"random {n}"] = emdtree.Tree.from_parents(*random_tree(np.random.default_rng(1), n))
    rng = np.random.default_rng(0)
    timer = Timer(repeats=3 if args.smoke else 5 if args.quick else 15,
                  max_total_s=0.05 if args.smoke else 2.0)
    table, results = [], []
    for name, tree in trees.items():
        for dtype in (np.float32, np.float64):
            parent, weight, bin_pos, non_bin = _driver.sweep_arrays(tree, np.dtype(dtype))
            consts = _driver.consts_of(2.0, np.dtype(dtype))
            for batch in (1, 2, 4, 8, 16, 32):
                p = rng.random((batch, tree.n_bins)).astype(dtype)
                q = rng.random((batch, tree.n_bins)).astype(dtype)
                p /= p.sum(1, keepdims=True)
                q /= q.sum(1, keepdims=True)
                pf, qf = p.ravel(), q.ravel()
                value = np.empty(batch, dtype)
                grad = np.empty(batch * tree.n_bins, dtype)
                totals = np.empty((batch, 2))
                low_b = np.empty((batch + cpu.BLOCK - 1) // cpu.BLOCK, dtype)
                low_r = np.empty(batch)
                no_labels = np.zeros(0, np.int64)
                common = (pf, qf, 1, 1, no_labels, batch, parent, weight, bin_pos, non_bin, 2, consts, True,
                          value, grad, totals)
                t = timer.run({
                    "blocked": functools.partial(cpu.value_grad_serial, *common, low_b),
                    "rows": functools.partial(rows.value_grad_rows, *common, low_r),
                })
                b, r = t["blocked"]["median_ms"], t["rows"]["median_ms"]
                results.append({"tree": name, "dtype": np.dtype(dtype).name, "batch": batch,
                                "blocked_ms": b, "rows_ms": r})
                table.append([name, np.dtype(dtype).name, str(batch),
                              f"{b:.3f}", f"{r:.3f}", f"{b / r:.2f}"])
    headers = ["tree", "dtype", "batch", "blocked ms", "rows ms", "blocked / rows"]
    print_table(headers, table, right={2, 3, 4, 5})
    print("emdtree sends left-over samples to the row kernel below "
          f"ROW_KERNEL_MAX = {_driver.ROW_KERNEL_MAX}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump({"machine": info, "results": results}, fh, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
