"""Time to the first result in a new Python process, cold and warm.

Numba compiles each kernel on its first call and caches the machine code on
disk (``cache=True``): next to the installed package when that is writable,
else in ``NUMBA_CACHE_DIR`` or the user's cache folder. This script starts
fresh interpreters that import emdtree and compute one EMD^2 value and
gradient on the ImageNet tree and on a chain, and reports how long each took.
The first process may compile; the following ones should load from the cache.

    python benchmarks/bench_startup.py [--runs 3] [--cache-dir DIR] [--json PATH]

``--cache-dir`` points Numba at an empty folder so that the first run is
truly cold (otherwise the package's existing cache is used).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

CHILD = r"""
import time
t0 = time.perf_counter()
import numpy as np
import emdtree
t1 = time.perf_counter()
tree = emdtree.datasets.imagenet_wordnet()
p = np.full((4, tree.n_bins), 1.0 / tree.n_bins, dtype=np.float32)
q = np.zeros_like(p); q[:, 0] = 1.0
emdtree.emd_value_and_grad(p, q, tree, rho=2)
t2 = time.perf_counter()
emdtree.emd_value_and_grad(np.eye(10)[:4], np.eye(10)[4:8], rho=1)
t3 = time.perf_counter()
print(f"{t1 - t0:.4f} {t2 - t1:.4f} {t3 - t2:.4f}")
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--cache-dir", default=None, help="NUMBA_CACHE_DIR for the child processes")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    env = dict(os.environ)
    if args.cache_dir:
        env["NUMBA_CACHE_DIR"] = args.cache_dir
    rows = []
    print(f"{'run':>3}  {'wall s':>7}  {'import s':>8}  {'tree result s':>13}  {'chain result s':>14}")
    for run in range(1, args.runs + 1):
        start = time.perf_counter()
        out = subprocess.run(
            [sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, check=True
        )
        wall = time.perf_counter() - start
        imp, tree_s, chain_s = (float(x) for x in out.stdout.split())
        rows.append({"run": run, "wall_s": wall, "import_s": imp, "tree_first_result_s": tree_s,
                     "chain_first_result_s": chain_s})
        print(f"{run:>3}  {wall:7.3f}  {imp:8.3f}  {tree_s:13.3f}  {chain_s:14.3f}")
    print("wall = whole interpreter; a result = import + load tree + first EMD^2 value and gradient")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump({"runs": rows, "python": sys.version, "cache_dir": args.cache_dir}, fh, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
