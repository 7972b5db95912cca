"""Time emdtree.metrics on the ImageNet WordNet tree (1000 classes).

Side by side, in one run and on the same arrays:

* the EMD between predictions and integer class labels: labels passed to the
  kernels as indices (what the metrics do on a tree) against one-hot target
  rows, built per call and prebuilt, in float32 and float64;
* tree distances for many (label, prediction) pairs: lowest common ancestors
  by binary lifting (what the metrics use) against a lookup in the dense
  1000 x 1000 distance matrix, precomputed and built per call;
* ``metrics.report`` (top-1/top-5 accuracy, mistake severity, hierarchical
  distance@1/@5, mean EMD) against its parts and a NumPy baseline that sorts
  every row and looks distances up in the dense matrix;
* the same report from a memory-mapped ``.npy`` file in chunks.

    python benchmarks/bench_metrics.py [--quick] [--samples N] [--json PATH]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

import numpy as np

import emdtree
from emdtree import metrics
from emdtree.trees.hierarchy import Hierarchy, hierarchy
from emdtree.engine.labels import value_grad_labels
from emdtree.datasets import imagenet_wordnet

from _common import Timer, fmt_ms, machine_info, print_machine, print_table, softmax_rows, write_json


def one_hot(labels: np.ndarray, n_bins: int, dtype) -> np.ndarray:
    q = np.zeros((labels.shape[0], n_bins), dtype=dtype)
    q[np.arange(labels.shape[0]), labels] = 1
    return q


def numpy_report(pred, labels, tree, D, ks=(1, 5)):
    """Straightforward NumPy: full argsort of every row, dense distance lookups."""
    order = np.argsort(-pred, axis=1, kind="stable")[:, :max(ks)]
    d = D[labels[:, None], order]
    out = {}
    for k in ks:
        out[f"accuracy@{k}"] = float(np.mean((order[:, :k] == labels[:, None]).any(axis=1)))
        out[f"hierarchical_distance@{k}"] = float(d[:, :k].mean())
    wrong = order[:, 0] != labels
    out["mistake_severity"] = float(d[wrong, 0].mean())
    out["mean_emd"] = float(np.mean(emdtree.emd(pred, one_hot(labels, pred.shape[1], pred.dtype), tree)))
    return out


def table(results: dict, base_name: str, ratio: str) -> None:
    base = results[base_name]["median_ms"]
    print_table(["method", "median ms", "p10", "p90", ratio],
                [[k, fmt_ms(v["median_ms"]), fmt_ms(v["p10_ms"]), fmt_ms(v["p90_ms"]),
                  f"{v['median_ms'] / base:.2f}"] for k, v in results.items()], right={1, 2, 3, 4})
    print()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer samples and repeats")
    parser.add_argument("--samples", type=int, default=None, help="predictions (default 20000, quick 4000)")
    parser.add_argument("--json", metavar="PATH", help="write the results as JSON")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, seconds: checks the script runs")
    args = parser.parse_args(argv)
    if args.smoke:
        args.quick, args.samples = True, args.samples or 200
    m = args.samples or (4000 if args.quick else 20000)
    repeats = 3 if args.smoke else 5 if args.quick else 15
    failures = []

    tree = imagenet_wordnet()
    n = tree.n_bins
    rng = np.random.default_rng(0)
    pred64 = softmax_rows(rng, m, n, scale=3.0)
    pred = pred64.astype(np.float32)
    pred /= pred.sum(axis=1, keepdims=True, dtype=np.float64).astype(np.float32)
    labels = rng.integers(0, n, m)
    D = tree.distance_matrix()
    info = machine_info()
    print_machine(info)
    print(f"ImageNet tree: {n} classes; {m} predictions")
    print()

    # --- EMD to class labels: indices against one-hot rows
    labels_emd = {}
    for p in (pred, pred64):
        name = p.dtype.name
        prebuilt = one_hot(labels, n, p.dtype)
        by_index = value_grad_labels(p, labels, tree, 1.0, want_grad=False)[0]
        equal = np.array_equal(by_index, emdtree.emd(p, prebuilt, tree, 1.0))
        if not equal:
            failures.append(f"{name}: labels and one-hot targets give different EMD values")
        timer = Timer(repeats, max_total_s=4.0)
        labels_emd[name] = timer.run({
            "labels as indices (value_grad_labels)": lambda p=p: value_grad_labels(p, labels, tree, 1.0,
                                                                                   want_grad=False),
            "one-hot rows built + emdtree.emd": lambda p=p: emdtree.emd(p, one_hot(labels, n, p.dtype), tree,
                                                                        1.0),
            "one-hot rows prebuilt, emdtree.emd": lambda p=p, q=prebuilt: emdtree.emd(p, q, tree, 1.0),
            "metrics.mean_emd(pred, labels)": lambda p=p: metrics.mean_emd(p, labels, tree),
        })
        del prebuilt
        print(f"EMD (rho=1) to {m} class labels, {name}; values bitwise equal: "
              f"{'yes' if equal else 'NO'}")
        table(labels_emd[name], "labels as indices (value_grad_labels)", "x labels")

    # --- tree distances for 5 m pairs (the top-5 of every prediction)
    a = np.repeat(labels, 5)
    b = rng.integers(0, n, a.size)
    h = hierarchy(tree)
    if not np.array_equal(h.distance(a, b, "path"), D[a, b]):
        failures.append("LCA distances differ from the distance matrix")
    timer = Timer(repeats)
    dist = timer.run({
        "LCA by binary lifting (metrics)": lambda: h.distance(a, b, "path"),
        "dense matrix lookup, matrix cached": lambda: D[a, b],
        "dense matrix built + lookup": lambda: tree.distance_matrix()[a, b],
        "build: LCA tables (once per tree)": lambda: Hierarchy(tree),
        "build: dense distance matrix": lambda: tree.distance_matrix(),
    })
    print(f"Tree distances for {a.size} pairs")
    table(dist, "LCA by binary lifting (metrics)", "x LCA")

    # --- the report and its parts
    ours = metrics.report(pred, labels, tree)
    theirs = numpy_report(pred, labels, tree, D)
    for key, value in theirs.items():
        if not abs(ours[key] - value) <= 1e-6 * max(1.0, abs(value)):
            failures.append(f"report[{key!r}] = {ours[key]!r}, NumPy baseline {value!r}")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "pred.npy")
        np.save(path, pred)
        mapped = np.load(path, mmap_mode="r")
        chunk = max(1, m // 8)
        timer = Timer(repeats, max_total_s=4.0)
        rep = timer.run({
            "metrics.report (ks 1, 5; mean EMD)": lambda: metrics.report(pred, labels, tree),
            f"metrics.report, memmap, chunks of {chunk}": lambda x=mapped: metrics.report(x, labels, tree,
                                                                                           chunk_size=chunk),
            "NumPy: argsort rows + dense lookups + emd": lambda: numpy_report(pred, labels, tree, D),
            "part: topk_accuracy k=5": lambda: metrics.topk_accuracy(pred, labels, 5),
            "part: hierarchical distance@5": lambda: metrics.average_hierarchical_distance_at_k(pred, labels,
                                                                                               tree, 5),
            "part: mean_emd (class labels)": lambda: metrics.mean_emd(pred, labels, tree),
        })
        del mapped
    print(f"Evaluation of {m} predictions, float32")
    table(rep, "metrics.report (ks 1, 5; mean EMD)", "x report")

    if args.json:
        write_json(args.json, {"machine": info, "samples": m, "labels_emd": labels_emd, "distances": dist,
                               "report": rep, "failures": failures})
    for failure in failures:
        print("MISMATCH:", failure)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
