"""``emdtree demo``: the tree EMD and hierarchical metrics on the ImageNet class tree."""

from __future__ import annotations

import time
from typing import Sequence, TextIO

import numpy as np

# Classes compared with the first one in the demo, from near to far in the tree.
DEMO_CLASSES = [
    "tabby, tabby cat",
    "tiger cat",
    "Egyptian cat",
    "golden retriever",
    "tiger, Panthera tigris",
    "airliner",
]
DEMO_ACCURACY = 0.7  # chance that a generated prediction is right
DEMO_TOP = 0.75  # probability a generated prediction puts on its top-1 class
# Head start of the true class in the logits that spread the rest of a generated prediction:
# a trained classifier often ranks the true class second when it is wrong, and without it
# top-5 would equal top-1 (the true class among the 4 runners-up out of 999 by chance only).
DEMO_RUNNER_UP = 2.5


def _short(name: str) -> str:
    """First lemma of a WordNet name: 'tabby, tabby cat' -> 'tabby'."""
    return name.split(", ")[0]


def _class_index(tree, name: str) -> int:
    hits = [k for k, n in enumerate(tree.names) if n == name]
    if len(hits) != 1:
        raise LookupError(f"class {name!r} is not (exactly once) in the ImageNet tree")
    return hits[0]


def _path_to_root(tree, node: int) -> list[int]:
    path = [int(node)]
    while tree.parents[path[-1]] >= 0:
        path.append(int(tree.parents[path[-1]]))
    return path


def _meeting_point(tree, a: int, b: int) -> tuple[int, float]:
    """Lowest common ancestor of bins ``a`` and ``b`` and the length of the path between them."""
    up_a, up_b = _path_to_root(tree, tree.bins[a]), _path_to_root(tree, tree.bins[b])
    on_b = set(up_b)
    lca = next(n for n in up_a if n in on_b)
    w = tree.weights
    below_lca = up_a[: up_a.index(lca)] + up_b[: up_b.index(lca)]
    length = sum(float(w[n]) for n in below_lca)
    return lca, length


def _table(headers: list[str], rows: list[list[str]], right: Sequence[int] = ()) -> list[str]:
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]

    def line(cells):
        return "  ".join(c.rjust(w) if i in right else c.ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    return [line(headers), line(["-" * w for w in widths])] + [line(r) for r in rows]


def _predictions(rng, labels, predicted, n_bins):
    """Probabilities with DEMO_TOP on the predicted class and the rest spread by a random
    softmax in which the true class has a head start of DEMO_RUNNER_UP."""
    logits = rng.standard_normal((labels.size, n_bins))
    logits[np.arange(labels.size), labels] += DEMO_RUNNER_UP
    rest = np.exp(logits - logits.max(axis=1, keepdims=True))
    rest /= rest.sum(axis=1, keepdims=True)
    p = (1.0 - DEMO_TOP) * rest
    p[np.arange(labels.size), predicted] += DEMO_TOP
    return p


def run(args, out: TextIO) -> None:
    import emdtree
    from emdtree.datasets import imagenet_wordnet

    tree = imagenet_wordnet()
    n = tree.n_bins
    root = tree.node_names[tree.root]
    print(f"emdtree {emdtree.__version__}: Earth Mover's Distance on a tree of classes", file=out)
    print(file=out)
    w = np.delete(np.asarray(tree.weights), tree.root)
    costs = "every edge costs 1" if np.all(w == 1) else f"edge costs {w.min():g} to {w.max():g}"
    print(f"ImageNet WordNet tree: {tree.n_nodes} nodes, {n} bins (the ILSVRC-2012 classes in class-index",
          file=out)
    print(f"order), depth {tree.depth}, root '{_short(root)}', {costs}.", file=out)
    print(file=out)

    # 1. One-hot distributions: the EMD is the length of the path between the two classes.
    idx = [_class_index(tree, name) for name in DEMO_CLASSES]
    a = idx[0]
    eye = np.eye(n)
    rows = []
    for b in idx:
        lca, length = _meeting_point(tree, a, b)
        e1 = float(emdtree.emd(eye[a], eye[b], tree))
        e2 = float(emdtree.emd(eye[a], eye[b], tree, rho=2))
        rows.append([_short(tree.names[a]), _short(tree.names[b]), f"{length:g}", f"{e1:g}", f"{e2:g}",
                     _short(tree.node_names[lca])])
    print("All mass on one class against all mass on another: the EMD is the length of the tree path",
          file=out)
    print("between them (and EMD^2 equals it when every edge costs 1). Top-1 accuracy and cross-entropy",
          file=out)
    print("count all of these mistakes the same.", file=out)
    print(file=out)
    for line in _table(["true class", "predicted", "tree path", "EMD", "EMD^2", "paths meet at"], rows,
                       right=(2, 3, 4)):
        print("  " + line, file=out)
    print(file=out)

    # 2. Two classifiers with the same top-1 accuracy, mistakes near the true class or anywhere.
    rng = np.random.default_rng(args.seed)
    m = args.batch
    labels = rng.integers(0, n, m)
    correct = rng.random(m) < DEMO_ACCURACY
    wrong = np.flatnonzero(~correct)
    # tree distances from the true class of each wrong prediction to every class, through the
    # LCA tables that the metrics use (the dense matrix would compile a kernel for this only)
    from emdtree.trees.hierarchy import hierarchy

    D = hierarchy(tree).distance(np.repeat(labels[wrong, None], n, axis=1),
                                 np.broadcast_to(np.arange(n), (wrong.size, n)), "path")
    D[np.arange(wrong.size), labels[wrong]] = np.inf
    near = labels.copy()
    anywhere = labels.copy()
    for row, i in enumerate(wrong):
        y = labels[i]
        near[i] = rng.choice(np.flatnonzero(D[row] == D[row].min()))
        other = rng.integers(0, n - 1)
        anywhere[i] = other + (other >= y)
    targets = np.zeros((m, n))
    targets[np.arange(m), labels] = 1.0
    models = [("good: mistakes go to the nearest classes", near),
              ("bad: mistakes go to any class", anywhere)]
    from emdtree.evaluation import metrics

    rows = []
    p_good = None
    for name, predicted in models:
        p = _predictions(np.random.default_rng(args.seed + 1), labels, predicted, n)
        p_good = p if p_good is None else p_good
        r = metrics.report(p, labels, tree, ks=(1, 5))
        e2 = metrics.mean_emd(p, labels, tree, rho=2)
        severity = f"{r['mistake_severity']:.2f}" if r["n_mistakes"] else "-"
        rows.append([name, f"{r['accuracy@1']:.1%}", f"{r['accuracy@5']:.1%}", severity,
                     f"{r['hierarchical_distance@5']:.2f}", f"{r['mean_emd']:.3f}", f"{e2:.3f}"])
    print(f"Two generated classifiers on a batch of {m} images (seed {args.seed}). Both are right on the",
          file=out)
    print(f"same images; each prediction puts {DEMO_TOP:g} on its top-1 class and spreads "
          f"{1 - DEMO_TOP:g} over all classes,", file=out)
    print("favouring the true class as trained classifiers do (so top-5 is above top-1).", file=out)
    print("The EMD compares a prediction with the one-hot true class. After Bertinetto et al. (2020),",
          file=out)
    print("'severity' is the mean tree distance between the true and the predicted class over the wrong",
          file=out)
    print("predictions and 'dist@5' the mean distance from the true class to the 5 best-scored classes",
          file=out)
    print("(emdtree.metrics.report).", file=out)
    print(file=out)
    for line in _table(["model", "top-1", "top-5", "severity", "dist@5", "mean EMD", "mean EMD^2"], rows,
                       right=(1, 2, 3, 4, 5, 6)):
        print("  " + line, file=out)
    print(file=out)
    print("Same accuracy, different EMD: the tree EMD rewards mistakes that stay close to the truth.",
          file=out)
    print(file=out)

    # 3. Speed of the loss: value and gradient of EMD^2 for the batch in float32.
    import numba

    from emdtree.engine import tiers as _tiers
    from emdtree.engine.plan import plan_of

    p32, q32 = p_good.astype(np.float32), targets.astype(np.float32)
    # the timed calls stay on the path of the first call: a process's first calls run NumPy
    # code up to a budget of work, and timing more of them would bring a kernel's compilation
    work = m * tree.n_nodes
    numpy_path = _tiers.would_use_numpy(work) and plan_of(tree).suits_numpy_pass()
    t0 = time.perf_counter()
    emdtree.emd_value_and_grad(p32, q32, tree, rho=2)  # may load or compile the kernel
    first = time.perf_counter() - t0
    times = []
    budget = time.perf_counter() + 0.5
    while (len(times) < 50 and (len(times) < 5 or time.perf_counter() < budget)
           and (not numpy_path or _tiers.would_use_numpy(work))):
        t0 = time.perf_counter()
        emdtree.emd_value_and_grad(p32, q32, tree, rho=2)
        times.append(time.perf_counter() - t0)
    times = times or [first]
    ms = np.median(times) * 1e3
    print(f"EMD^2 value and gradient for the batch of {m} (float32): {ms:.2f} ms", file=out)
    if not numpy_path:
        threads = numba.get_num_threads()
        print(f"(median of {len(times)} calls, compiled kernel, up to {threads} Numba threads).", file=out)
    else:
        print(f"(median of {len(times)} calls of the NumPy code that small calls run, so that they need no",
              file=out)
        print("kernel compilation; EMDTREE_JIT=eager runs the compiled kernel: see 'First calls' in the",
              file=out)
        print("README.)", file=out)
