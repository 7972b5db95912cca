"""How the cost of EMD^2 value + gradient grows with the size of the tree.

Random trees of 1e3, 1e4 and 1e5 leaves (one bin per leaf, half as many
internal nodes, every node under a uniformly random earlier one), batches of
64 and 512 random distributions, float32 and float64, one Numba thread. For
each case the script times, round-robin in one run:

* ``library``: ``emdtree.emd_value_and_grad(p, q, tree, rho=2)``;
* ``post-order``: the blocked kernel ``emdtree.kernels.cpu.value_grad_serial``
  on the tree's post-order layout (bins scattered over the scratch buffer);
* ``sweep order``: the same kernel on :func:`emdtree.trees.layout.sweep_order`
  (the arrays the library passes): simple bins first, in bin order;
* ``floor``: ``np.subtract(p, q, out=g)``, one read of both inputs and one
  write of the gradient, the memory traffic no method can avoid.

It prints nanoseconds per leaf and sample and, per column, the ratio to the
1e3-leaf case of the same batch and dtype (1.0 is linear scaling). The
floor's own ratio shows how much of the growth is the inputs and outputs
leaving the caches.

    python benchmarks/bench_scaling.py [--quick] [--json PATH]
"""

from __future__ import annotations

import argparse
import functools
import os
import sys

import numpy as np

import emdtree
from emdtree.engine import driver as _driver
from emdtree.kernels import cpu

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import Timer, machine_info, num_threads, print_machine, print_table, write_json  # noqa: E402

SIZES = (1_000, 10_000, 100_000)


def random_tree(rng: np.random.Generator, n_leaves: int) -> emdtree.Tree:
    """``n_leaves`` leaves carrying the bins under ``n_leaves // 2`` internal nodes."""
    n_internal = max(1, n_leaves // 2)
    parents = np.empty(n_internal + n_leaves, dtype=np.int64)
    parents[0] = -1
    parents[1:n_internal] = (rng.random(n_internal - 1) * np.arange(1, n_internal)).astype(np.int64)
    parents[n_internal:] = rng.integers(0, n_internal, n_leaves)
    weights = rng.uniform(0.1, 1.0, parents.size)
    weights[0] = 0.0
    return emdtree.Tree.from_parents(parents, weights, np.arange(n_internal, n_internal + n_leaves))


def kernel_call(arrays, p, q, grad):
    batch = p.shape[0]
    dtype = p.dtype
    consts = _driver.consts_of(2.0, dtype)
    low = np.empty((batch + cpu.BLOCK - 1) // cpu.BLOCK, dtype)
    return functools.partial(
        cpu.value_grad_serial, p.ravel(), q.ravel(), 1, 1, np.zeros(0, np.int64), batch, *arrays,
        _driver.mode_of(2.0), consts, True, np.empty(batch, dtype), grad.ravel(), np.empty((batch, 2)), low,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="batch 64 only, fewer repeats")
    parser.add_argument("--json", default=None, help="write the results to this path")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, seconds: checks the script runs")
    args = parser.parse_args()
    info = machine_info()
    print_machine(info)
    batches = (8,) if args.smoke else (64,) if args.quick else (64, 512)
    timer = Timer(repeats=5 if args.quick else 11,
                  max_total_s=0.05 if args.smoke else 1.0 if args.quick else 3.0)
    rng = np.random.default_rng(0)
    sizes = SIZES[:2] if args.smoke else SIZES
    trees = {n: random_tree(np.random.default_rng(n), n) for n in sizes}
    columns = ("library", "post-order", "sweep order", "floor")
    results, table = [], []
    with num_threads(1):
        for batch in batches:
            for dtype in (np.float32, np.float64):
                base = {}
                for n, tree in trees.items():
                    p = rng.random((batch, n)).astype(dtype)
                    q = rng.random((batch, n)).astype(dtype)
                    p /= p.sum(1, keepdims=True)
                    q /= q.sum(1, keepdims=True)
                    g = np.empty_like(p)
                    post_order = _driver.kernel_arrays(tree, np.dtype(dtype))[:4]
                    sweep = _driver.sweep_arrays(tree, np.dtype(dtype))
                    fns = {
                        "library": functools.partial(emdtree.emd_value_and_grad, p, q, tree, rho=2),
                        "post-order": kernel_call(post_order, p, q, g),
                        "sweep order": kernel_call(sweep, p, q, g),
                        "floor": functools.partial(np.subtract, p, q, out=g),
                    }
                    timed = timer.run(fns)
                    ns = {k: timed[k]["median_ms"] * 1e6 / (batch * n) for k in columns}
                    if n == sizes[0]:
                        base = ns
                    ratio = {k: ns[k] / base[k] for k in columns}
                    results.append({"leaves": n, "nodes": tree.n_nodes, "batch": batch,
                                    "dtype": np.dtype(dtype).name, "ns_per_leaf_sample": ns,
                                    "ratio_to_smallest": ratio, "timings": timed})
                    table.append([f"{n:.0e}", str(batch), np.dtype(dtype).name]
                                 + [f"{ns[k]:.2f} ({ratio[k]:.2f}x)" for k in columns])
                    del p, q, g, fns
    print("ns per leaf and sample, median (ratio to the 1e3-leaf case); one thread")
    print_table(["leaves", "batch", "dtype", *columns], table, right=set(range(1, 3 + len(columns))))
    if args.json:
        write_json(args.json, {"machine": info, "results": results})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
