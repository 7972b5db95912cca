"""Evaluation metrics for classifiers whose classes are the bins of a tree.

Besides the mean EMD between predictions and targets, this module computes the
hierarchical metrics of Bertinetto et al., "Making Better Mistakes: Leveraging
Class Hierarchies with Deep Networks" (CVPR 2020):

* the *mistake severity*: the mean tree distance between the top-1 prediction
  and the true class over the misclassified samples;
* the *average hierarchical distance at k*: the mean, over all samples, of the
  mean tree distance between the true class and each of the k highest-scored
  classes (a correct class counts 0).

Tree distances are the path metric of :meth:`Tree.distance_matrix` (the cost
of moving a unit of mass between two bins, so that the EMD between one-hot
distributions is the distance between their classes), or, with
``distance="lca_height"``, the height of the lowest common ancestor used by
Bertinetto et al.: the longest path from it down to a bin. On a tree whose
bins are leaves at one depth with unit edges the path metric is twice the
LCA height. Neither needs the ``n_bins x n_bins`` distance matrix: distances
come from lowest common ancestors, found by binary lifting on the tree's
post-order layout.

Inputs are NumPy arrays or anything :func:`numpy.asarray` takes (CPU torch
tensors included); large and memory-mapped arrays are read in row chunks and
dask arrays block by block, so memory stays bounded. Ranking ties are broken
towards the lower bin index, as :func:`numpy.argmax` does.

The accumulators :class:`EMDMetric` and :class:`HierarchicalMetrics` stream
the same quantities over batches and merge across workers.
"""

from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
from numba import njit, prange

from ._api import emd
from ._tree import Tree

__all__ = [
    "EMDMetric",
    "HierarchicalMetrics",
    "average_hierarchical_distance_at_k",
    "mean_emd",
    "mistake_severity",
    "report",
    "topk_accuracy",
]

_CHUNK_ELEMENTS = 1 << 22  # default chunk: about 4 million scores (32 MB of float64)
_DISTANCES = ("path", "lca_height")


# ----------------------------------------------------------------------------- tree distances

class _Hierarchy:
    """Distances between bins through their lowest common ancestor (LCA).

    In the post-order layout every ancestor of a position has a larger
    position, and the subtree of position ``j`` is ``[j - size[j] + 1, j]``.
    So for bin positions ``a < b`` the LCA is the lowest ancestor of ``a``
    whose position is at least ``b``, found by binary lifting in
    ``ceil(log2(depth + 1))`` vectorised steps.
    """

    def __init__(self, tree: Tree) -> None:
        lay = tree.layout
        n = tree.n_nodes
        parent = lay.parent.copy()
        parent[-1] = n - 1  # the root is its own parent: lifting stops there
        levels = max(1, math.ceil(math.log2(tree.depth + 1)))
        up = [parent]
        for _ in range(levels - 1):
            up.append(up[-1][up[-1]])
        self.up = up
        self.bin_position = lay.bin_position
        # Length of the path to the root and the largest such length among the
        # bins below, level by level so that each sum follows its path.
        by_depth = np.argsort(lay.depth, kind="stable")
        starts = np.searchsorted(lay.depth[by_depth], np.arange(tree.depth + 2))
        to_root = np.zeros(n)
        for d in range(1, tree.depth + 1):
            at = by_depth[starts[d]:starts[d + 1]]
            to_root[at] = to_root[parent[at]] + lay.weight[at]
        lowest_bin = np.full(n, -np.inf)
        lowest_bin[lay.bin_position] = to_root[lay.bin_position]
        for d in range(tree.depth, 0, -1):
            at = by_depth[starts[d]:starts[d + 1]]
            np.maximum.at(lowest_bin, parent[at], lowest_bin[at])
        self.to_root = to_root
        self.height = lowest_bin - to_root  # -inf where no bin is below

    def lca(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Position of the LCA of the nodes at positions ``a`` and ``b``."""
        lo, hi = np.minimum(a, b), np.maximum(a, b)
        x = lo
        for up in reversed(self.up):
            step = up[x]
            x = np.where(step < hi, step, x)
        return np.where(lo == hi, lo, self.up[0][x])

    def distance(self, bins_a: np.ndarray, bins_b: np.ndarray, kind: str) -> np.ndarray:
        """Tree distance between bins ``bins_a`` and ``bins_b`` (equal shapes), float64."""
        a, b = self.bin_position[bins_a], self.bin_position[bins_b]
        top = self.lca(a, b)
        if kind == "path":
            return self.to_root[a] + self.to_root[b] - 2.0 * self.to_root[top]
        return np.where(a == b, 0.0, self.height[top])


@functools.lru_cache(maxsize=8)
def _hierarchy(tree: Tree) -> _Hierarchy:
    return _Hierarchy(tree)


# ----------------------------------------------------------------------------- exact sums

class _ExactSum:
    """Running sum kept as non-overlapping partials (Shewchuk; the algorithm of
    :func:`math.fsum`), so that the order of additions and merges does not
    change the result."""

    __slots__ = ("partials",)

    def __init__(self) -> None:
        self.partials: list[float] = []

    def add(self, x: float) -> None:
        kept = []
        for y in self.partials:
            if abs(x) < abs(y):
                x, y = y, x
            hi = x + y
            lo = y - (hi - x)
            if lo:
                kept.append(lo)
            x = hi
        kept.append(x)
        self.partials = kept

    def add_values(self, values: np.ndarray) -> None:
        # math.fsum rounds the chunk's sum once; the partials then add it exactly
        if values.size:
            self.add(math.fsum(np.asarray(values, dtype=np.float64).ravel().tolist()))

    def merge(self, other: _ExactSum) -> None:
        for x in other.partials:
            self.add(x)

    @property
    def value(self) -> float:
        return math.fsum(self.partials)


# ----------------------------------------------------------------------------- inputs

def _host(x: Any) -> Any:
    """Torch tensors (also those that require grad or live on a GPU) to NumPy;
    dask arrays stay lazy; anything else through :func:`numpy.asarray`."""
    if _is_dask(x):
        return x
    if type(x).__module__.startswith("torch") and hasattr(x, "detach"):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _is_dask(x: Any) -> bool:
    return type(x).__module__.startswith("dask") and hasattr(x, "blocks")


def _check_scores(pred: Any, name: str = "pred") -> None:
    if pred.ndim != 2:
        raise ValueError(f"{name} must have shape (n_samples, n_bins), got shape {tuple(pred.shape)}")
    if np.dtype(pred.dtype).kind not in "biuf":
        raise TypeError(f"{name} must hold real numbers, got dtype {pred.dtype}")
    if pred.shape[1] == 0:
        raise ValueError(f"{name} has no bins (shape {tuple(pred.shape)})")


def _check_labels_shape(labels: Any, n_samples: int, name: str = "labels") -> None:
    if np.dtype(labels.dtype).kind not in "iu":
        raise TypeError(f"{name} must hold integer class indices, got dtype {labels.dtype}")
    if labels.shape != (n_samples,):
        raise ValueError(
            f"{name} must have shape (n_samples,) = ({n_samples},) to match pred, got shape "
            f"{tuple(labels.shape)}"
        )


def _check_target(pred: Any, target: Any) -> bool:
    """Validate the target's shape; True for class indices, False for distributions."""
    if np.dtype(target.dtype).kind in "iu" and target.ndim == 1:
        _check_labels_shape(target, pred.shape[0], "target")
        return True
    if target.shape != pred.shape:
        raise ValueError(
            f"target must be class indices of shape ({pred.shape[0]},) or distributions of pred's shape "
            f"{tuple(pred.shape)}, got shape {tuple(target.shape)}"
        )
    if np.dtype(target.dtype).kind not in "biuf":
        raise TypeError(f"target must hold real numbers, got dtype {target.dtype}")
    return False


def _check_k(k: Any, n_bins: int | None) -> int:
    if isinstance(k, (bool, np.bool_)) or not isinstance(k, (numbers.Integral, np.integer)):
        raise TypeError(f"k must be a positive integer, got {k!r}")
    if k < 1:
        raise ValueError(f"k must be a positive integer, got {int(k)}")
    if n_bins is not None and k > n_bins:
        raise ValueError(f"k = {int(k)} must be between 1 and the number of bins ({n_bins})")
    return int(k)


def _check_distance(distance: str) -> str:
    if distance not in _DISTANCES:
        raise ValueError(f"distance must be one of {', '.join(map(repr, _DISTANCES))}, got {distance!r}")
    return distance


def _chunks(arrays: Sequence[Any], chunk_size: int | None) -> Iterator[tuple[int, list[np.ndarray]]]:
    """``(first row, [row chunk of each array])`` over the rows of 2-D scores and
    their 1-D or 2-D companions; dask arrays are computed one block at a time."""
    n_rows, n_bins = arrays[0].shape
    if any(_is_dask(a) for a in arrays):
        import dask
        import dask.array as da

        if chunk_size is not None:
            rows = _check_chunk_size(chunk_size)
            lead = da.asarray(arrays[0]).rechunk({0: rows, 1: -1})
        else:
            lead = da.asarray(arrays[0]).rechunk({1: -1})
        lazy = [lead] + [da.asarray(a).rechunk({0: lead.chunks[0]} | ({1: -1} if a.ndim == 2 else {}))
                         for a in arrays[1:]]
        start = 0
        for i in range(lead.numblocks[0]):
            blocks = dask.compute(*(a.blocks[i] for a in lazy))
            yield start, [np.asarray(b) for b in blocks]
            start += blocks[0].shape[0]
        return
    rows = _check_chunk_size(chunk_size) if chunk_size is not None else max(1, _CHUNK_ELEMENTS // n_bins)
    for start in range(0, n_rows, rows):
        yield start, [np.asarray(a[start:start + rows]) for a in arrays]


def _check_chunk_size(chunk_size: Any) -> int:
    if isinstance(chunk_size, (bool, np.bool_)) or not isinstance(chunk_size, (numbers.Integral, np.integer)):
        raise TypeError(f"chunk_size must be a positive integer or None, got {chunk_size!r}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer or None, got {chunk_size}")
    return int(chunk_size)


def _no_nan(chunk: np.ndarray, start: int, name: str = "pred") -> None:
    if chunk.size and chunk.dtype.kind == "f" and np.isnan(chunk.min()):
        r, c = np.argwhere(np.isnan(chunk))[0]
        raise ValueError(f"{name}[{start + r}, {c}] is NaN: scores must not be NaN")


def _labels_in_range(labels: np.ndarray, start: int, n_bins: int, name: str = "labels") -> None:
    bad = np.flatnonzero((labels < 0) | (labels >= n_bins))
    if bad.size:
        i = int(bad[0])
        raise ValueError(
            f"{name}[{start + i}] = {int(labels[i])} is out of range: class indices must be in "
            f"[0, {n_bins - 1}] for {n_bins} bins"
        )


def _explain_masses(pred: np.ndarray, target: np.ndarray | None, start: int, tol_eps: float,
                    normalize: str | None) -> None:
    """Raise a ValueError that names the row (in the whole input) of an invalid
    mass; for a chunk the EMD kernels rejected. ``target=None``: one-hot labels."""
    for name, a in (("pred", pred), ("target", target)):
        if a is None:
            continue
        bad = (~np.isfinite(a) | (a < 0)) if a.dtype.kind == "f" else a < 0
        if bad.any():
            r, c = np.argwhere(bad)[0]
            what = "not finite" if not np.isfinite(a[r, c]) else "negative"
            raise ValueError(
                f"{name}[{start + r}, {c}] = {a[r, c].item()!r} is {what}: the EMD needs non-negative masses "
                "(probabilities, not logits)"
            )
    sp = pred.sum(axis=1, dtype=np.float64)
    sq = np.ones_like(sp) if target is None else target.sum(axis=1, dtype=np.float64)
    if normalize is not None:
        for name, totals in (("pred", sp), ("target", sq)):
            zero = np.flatnonzero(totals <= 0)
            if zero.size:
                raise ValueError(f"{name}[{start + int(zero[0])}] has zero total mass: cannot normalize")
        return
    tol = max(pred.shape[1], 64) * tol_eps * np.maximum(np.abs(sp), np.abs(sq))
    off = np.flatnonzero(np.abs(sp - sq) > tol)
    if off.size:
        r = int(off[0])
        if target is None:
            raise ValueError(
                f"pred[{start + r}] sums to {float(sp[r])!r}, not 1: the EMD to a class compares "
                "distributions; pass normalize='l1' to rescale the rows"
            )
        raise ValueError(
            f"pred[{start + r}] and target[{start + r}] have different total mass ({float(sp[r])!r} and "
            f"{float(sq[r])!r}); pass normalize='l1' to compare them as distributions"
        )


def _one_hot(labels: np.ndarray, n_bins: int, dtype: np.dtype) -> np.ndarray:
    out = np.zeros((labels.shape[0], n_bins), dtype=dtype)
    out[np.arange(labels.shape[0]), labels] = 1
    return out


def _chunk_emd(pred: np.ndarray, target: np.ndarray, is_labels: bool, start: int, tree: Tree | None,
               rho: float, normalize: str | None) -> np.ndarray:
    """EMD^rho of each row of a chunk; errors name rows of the whole input."""
    dtype = np.float32 if pred.dtype == np.float32 and (is_labels or target.dtype == np.float32) \
        else np.float64
    q = _one_hot(target, pred.shape[1], dtype) if is_labels else target
    try:
        return np.asarray(emd(pred, q, tree, rho, normalize=normalize), dtype=np.float64).reshape(-1)
    except ValueError as exc:
        eps = float(np.finfo(dtype).eps)
        _explain_masses(pred, None if is_labels else np.asarray(target), start, eps, normalize)
        raise exc


# ----------------------------------------------------------------------------- ranking kernel

@njit(cache=True)
def _insert(row, best, filled, j):  # pragma: no cover - compiled
    """Put class ``j`` into the sorted list ``best`` of the ``filled`` best classes so far
    (the last one drops out when the list is full); returns the new length."""
    k = best.shape[0]
    s = row[j]
    pos = filled if filled < k else k - 1
    while pos > 0 and row[best[pos - 1]] < s:  # equal scores: the earlier, lower index stays ahead
        best[pos] = best[pos - 1]
        pos -= 1
    best[pos] = j
    return min(filled + 1, k)


@njit(cache=True, parallel=True)
def _rank_top_k(scores, labels, top, rank):  # pragma: no cover - compiled
    """The rank of each row's label and its ``k`` best classes.

    ``rank[r]`` counts the classes ranked before the label (a higher score,
    or an equal score and a lower index); ``top[r]`` receives the indices of
    the ``k = top.shape[1]`` best classes, best first, ties to the lower
    index. Scores must not be NaN. A block of 16 scores is read one by one
    only when one of them beats the current k-th best, which a single
    fixed-length loop tests; for 1000 random scores and ``k = 5`` about 15 of
    the 63 blocks of a row are.
    """
    m, n = scores.shape
    k = top.shape[1]
    for r in prange(m):
        row = scores[r]
        y = labels[r]
        own = row[y]
        before = 0
        for j in range(n):
            s = row[j]
            before += (s > own) | ((s == own) & (j < y))
        rank[r] = before
        if k == 0:
            continue
        best = top[r]
        filled = 0
        for j in range(k):
            filled = _insert(row, best, filled, j)
        kth = row[best[k - 1]]
        for b in range(k // 16, n // 16 + 1):
            lo, hi = max(16 * b, k), min(16 * b + 16, n)
            beats = 0
            if hi - lo == 16:  # a full block: a fixed-length loop that LLVM can vectorise
                for i in range(16):
                    beats += row[lo + i] > kth
            else:
                beats = 1
            if beats:
                for j in range(lo, hi):
                    if row[j] > kth:
                        _insert(row, best, k, j)
                        kth = row[best[k - 1]]


def _ranks(scores: np.ndarray, labels: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``(rank of each label, (m, k) best classes)`` of a chunk, through the kernel."""
    dtype = np.float32 if scores.dtype.kind == "f" and scores.dtype.itemsize <= 4 else np.float64
    x = np.ascontiguousarray(scores, dtype=dtype).view()
    y = np.ascontiguousarray(labels, dtype=np.int64).view()
    x.flags.writeable = y.flags.writeable = False  # one specialisation whatever the caller's flags
    top = np.empty((x.shape[0], k), dtype=np.int64)
    rank = np.empty(x.shape[0], dtype=np.int64)
    _rank_top_k(x, y, top, rank)
    return rank, top


# ----------------------------------------------------------------------------- functions

def mean_emd(
    pred: Any,
    target: Any,
    tree: Tree | None = None,
    rho: float = 1.0,
    *,
    normalize: str | None = None,
    chunk_size: int | None = None,
) -> float:
    """Mean EMD^rho between predicted distributions and targets.

    Parameters
    ----------
    pred : array_like, shape (n_samples, n_bins)
        Predicted distributions (non-negative rows summing to 1, or any
        non-negative rows with ``normalize="l1"``).
    target : array_like, shape (n_samples, n_bins) or (n_samples,)
        Target distributions, or integer class indices (bin order), which
        stand for one-hot distributions.
    tree : Tree, optional
        Ground space; default: a unit-spacing chain.
    rho : float, default 1.0
        Exponent of :func:`emdtree.emd`.
    normalize : {None, "l1"}, optional
        As in :func:`emdtree.emd`.
    chunk_size : int, optional
        Rows per chunk; default: about 4 million entries per chunk. Dask
        arrays are processed block by block (``chunk_size`` rechunks them).

    Returns
    -------
    float
        ``nan`` for zero samples. Each chunk is computed in the precision of
        the inputs (float32 stays float32) and summed exactly in float64.

    Examples
    --------
    >>> import numpy as np
    >>> from emdtree import Tree, metrics
    >>> tree = Tree.from_nested({"cat": None, "tiger": None, "vehicle": ["car"]})
    >>> pred = np.array([[0.5, 0.5, 0.0], [0.0, 0.0, 1.0]])
    >>> metrics.mean_emd(pred, [0, 2], tree)  # (0.5 * 2 + 0) / 2
    0.5
    """
    metric = EMDMetric(tree, rho, normalize=normalize, chunk_size=chunk_size)
    return metric.update(pred, target).compute()


def topk_accuracy(pred: Any, labels: Any, k: int = 1, *, chunk_size: int | None = None) -> float:
    """Fraction of samples whose class is among the ``k`` highest scores.

    Classes are ranked by decreasing score; equal scores are ranked by
    increasing bin index (so top-1 is :func:`numpy.argmax`). A label tied
    with the k-th score therefore counts as found only if its index is low
    enough: the rule is deterministic, neither optimistic nor pessimistic.

    Parameters
    ----------
    pred : array_like, shape (n_samples, n_bins)
        Scores: probabilities or logits.
    labels : array_like of int, shape (n_samples,)
        True class indices.
    k : int, default 1
        ``1 <= k <= n_bins``.
    chunk_size : int, optional
        Rows per chunk (see :func:`mean_emd`).

    Returns
    -------
    float
        ``nan`` for zero samples.

    Examples
    --------
    >>> from emdtree import metrics
    >>> pred = [[0.1, 0.6, 0.3], [0.5, 0.2, 0.3], [0.4, 0.4, 0.2]]
    >>> metrics.topk_accuracy(pred, [2, 0, 1], k=1)  # row 3: tie goes to class 0
    0.3333333333333333
    >>> metrics.topk_accuracy(pred, [2, 0, 1], k=2)
    1.0
    """
    result = HierarchicalMetrics(None, ks=(k,), emd=False, chunk_size=chunk_size)
    return result.update(pred, labels).compute()[f"accuracy@{k}"]


def mistake_severity(pred: Any, labels: Any, tree: Tree, *, distance: str = "path",
                     chunk_size: int | None = None) -> float:
    """Mean tree distance between the top-1 prediction and the true class,
    over the misclassified samples (Bertinetto et al., 2020).

    Parameters
    ----------
    pred : array_like, shape (n_samples, n_bins)
        Scores: probabilities or logits. Ties go to the lower bin index.
    labels : array_like of int, shape (n_samples,)
    tree : Tree
    distance : {"path", "lca_height"}, default "path"
        The tree's path metric (:meth:`Tree.distance_matrix`), or the height
        of the lowest common ancestor (see the module notes).
    chunk_size : int, optional
        Rows per chunk (see :func:`mean_emd`).

    Returns
    -------
    float
        ``nan`` when no sample is misclassified: the mean over an empty set
        of mistakes is undefined (read it together with the accuracy).

    Examples
    --------
    >>> from emdtree import Tree, metrics
    >>> tree = Tree.from_nested({"cat": None, "tiger": None, "vehicle": ["car"]})
    >>> pred = [[0.2, 0.7, 0.1], [0.1, 0.2, 0.7], [0.1, 0.1, 0.8]]
    >>> metrics.mistake_severity(pred, [0, 0, 2], tree)  # (2 + 3) / 2
    2.5
    """
    result = HierarchicalMetrics(tree, ks=(1,), emd=False, distance=distance, chunk_size=chunk_size)
    return result.update(pred, labels).compute()["mistake_severity"]


def average_hierarchical_distance_at_k(pred: Any, labels: Any, tree: Tree, k: int, *,
                                       distance: str = "path",
                                       chunk_size: int | None = None) -> float:
    """Mean over samples of the mean tree distance between the true class and
    each of the ``k`` highest-scored classes (Bertinetto et al., 2020).

    A correct class among the top k contributes 0; unlike
    :func:`mistake_severity` every sample counts.

    Parameters
    ----------
    pred : array_like, shape (n_samples, n_bins)
        Scores: probabilities or logits. Ties go to the lower bin index.
    labels : array_like of int, shape (n_samples,)
    tree : Tree
    k : int
        ``1 <= k <= n_bins``.
    distance : {"path", "lca_height"}, default "path"
        See :func:`mistake_severity`.
    chunk_size : int, optional
        Rows per chunk (see :func:`mean_emd`).

    Returns
    -------
    float
        ``nan`` for zero samples.

    Examples
    --------
    >>> from emdtree import Tree, metrics
    >>> tree = Tree.from_nested({"cat": None, "tiger": None, "vehicle": ["car"]})
    >>> pred = [[0.2, 0.7, 0.1], [0.1, 0.2, 0.7]]
    >>> metrics.average_hierarchical_distance_at_k(pred, [0, 0], tree, k=2)  # ((2 + 0) + (3 + 2)) / 4
    1.75
    """
    result = HierarchicalMetrics(tree, ks=(k,), emd=False, distance=distance, chunk_size=chunk_size)
    return result.update(pred, labels).compute()[f"hierarchical_distance@{k}"]


def report(
    pred: Any,
    labels: Any,
    tree: Tree,
    *,
    ks: Sequence[int] = (1, 5),
    rho: float = 1.0,
    per_class: bool = False,
    normalize: str | None = None,
    distance: str = "path",
    chunk_size: int | None = None,
    progress: Callable[[int], Any] | None = None,
) -> dict[str, Any]:
    """Top-k accuracies, mistake severity, hierarchical distances and mean EMD.

    One pass over the data; see :class:`HierarchicalMetrics` for the keys
    of the result. ``pred`` must hold distributions (the mean EMD compares
    them with one-hot labels): apply a softmax to logits first, or pass
    ``normalize="l1"`` for non-negative scores.

    Parameters
    ----------
    pred : array_like, shape (n_samples, n_bins)
    labels : array_like of int, shape (n_samples,)
    tree : Tree
    ks : sequence of int, default (1, 5)
        The k of the top-k accuracies and hierarchical distances; each
        ``<= n_bins``.
    rho : float, default 1.0
        Exponent of the mean EMD.
    per_class : bool, default False
        Also return the metrics of each true class under ``"per_class"``.
    normalize, distance, chunk_size
        As in :func:`mean_emd` and :func:`mistake_severity`.
    progress : callable, optional
        Called with the number of rows of each chunk once it is done.

    Returns
    -------
    dict

    Examples
    --------
    >>> from emdtree import Tree, metrics
    >>> tree = Tree.from_nested({"cat": None, "tiger": None, "vehicle": ["car"]})
    >>> pred = [[0.2, 0.7, 0.1], [0.1, 0.2, 0.7], [0.1, 0.1, 0.8]]
    >>> r = metrics.report(pred, [0, 0, 2], tree, ks=(1, 2))
    >>> r["accuracy@1"], r["accuracy@2"], r["mistake_severity"]
    (0.3333333333333333, 0.6666666666666666, 2.5)
    """
    acc = HierarchicalMetrics(tree, ks=ks, rho=rho, per_class=per_class, normalize=normalize,
                              distance=distance, chunk_size=chunk_size)
    return acc.update(pred, labels, progress=progress).compute()


# ----------------------------------------------------------------------------- accumulators

class EMDMetric:
    """Streaming mean of EMD^rho between predictions and targets.

    ``update`` takes batches as :func:`mean_emd` does; ``compute`` returns
    the mean so far. Accumulators of several workers combine with ``merge``
    (they pickle), and the result does not depend on how the samples were
    split: each batch is summed with :func:`math.fsum` and the batch sums
    are added exactly.

    Parameters
    ----------
    tree : Tree, optional
        Ground space; default: a unit-spacing chain of as many bins as the
        first batch has.
    rho : float, default 1.0
    normalize : {None, "l1"}, optional
    chunk_size : int, optional
        See :func:`mean_emd`.

    Attributes
    ----------
    n_samples : int
        Samples seen so far.

    Examples
    --------
    >>> import numpy as np
    >>> from emdtree.metrics import EMDMetric
    >>> metric = EMDMetric(rho=1.0)
    >>> _ = metric.update(np.array([[1.0, 0.0, 0.0]]), np.array([2]))
    >>> _ = metric.update(np.array([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]), np.array([2, 2]))
    >>> metric.n_samples, metric.compute()  # (2 + 1 + 0) / 3
    (3, 1.0)
    """

    def __init__(self, tree: Tree | None = None, rho: float = 1.0, *, normalize: str | None = None,
                 chunk_size: int | None = None) -> None:
        from ._inputs import check_rho

        if tree is not None and not isinstance(tree, Tree):
            raise TypeError(f"tree must be an emdtree.Tree or None, got {type(tree).__name__}")
        if normalize is not None and normalize != "l1":
            raise ValueError(f"normalize must be None or 'l1', got {normalize!r}")
        if chunk_size is not None:
            _check_chunk_size(chunk_size)
        self.tree = tree
        self.rho = check_rho(rho)
        self.normalize = normalize
        self.chunk_size = chunk_size
        self.n_bins: int | None = None if tree is None else tree.n_bins
        self.reset()

    def reset(self) -> None:
        """Forget all samples."""
        self.n_samples = 0
        self._sum = _ExactSum()

    def update(self, pred: Any, target: Any, *, progress: Callable[[int], Any] | None = None) -> EMDMetric:
        """Add a batch: ``pred`` (n, n_bins) and ``target`` (n, n_bins) or class indices (n,).

        ``progress``, if given, is called with the number of rows of each
        chunk once it is done (e.g. a progress bar's ``update``).
        """
        pred, target = _host(pred), _host(target)
        _check_scores(pred)
        is_labels = _check_target(pred, target)
        n_bins = pred.shape[1]
        if self.n_bins is not None and n_bins != self.n_bins:
            what = "the tree has" if self.tree is not None else "earlier batches had"
            raise ValueError(f"pred has {n_bins} bins (columns) but {what} {self.n_bins} bins")
        self.n_bins = n_bins
        for start, (p, t) in _chunks([pred, target], self.chunk_size):
            if is_labels:
                _labels_in_range(t, start, n_bins, "target")
            self._sum.add_values(_chunk_emd(p, t, is_labels, start, self.tree, self.rho, self.normalize))
            self.n_samples += p.shape[0]
            if progress is not None:
                progress(p.shape[0])
        return self

    def merge(self, other: EMDMetric) -> EMDMetric:
        """Add the samples of another accumulator with the same settings."""
        if not isinstance(other, EMDMetric):
            raise TypeError(f"can only merge another EMDMetric, got {type(other).__name__}")
        same = (self.tree == other.tree if self.tree is not None and other.tree is not None
                else self.tree is other.tree)
        if not same or self.rho != other.rho or self.normalize != other.normalize:
            raise ValueError("cannot merge EMDMetric accumulators with different tree, rho or normalize")
        if None not in (self.n_bins, other.n_bins) and self.n_bins != other.n_bins:
            raise ValueError(f"cannot merge accumulators over {self.n_bins} and {other.n_bins} bins")
        self.n_bins = self.n_bins if self.n_bins is not None else other.n_bins
        self.n_samples += other.n_samples
        self._sum.merge(other._sum)
        return self

    def compute(self) -> float:
        """Mean EMD^rho over the samples seen; ``nan`` before any."""
        return self._sum.value / self.n_samples if self.n_samples else math.nan

    def __repr__(self) -> str:
        return f"EMDMetric(rho={self.rho:g}, n_samples={self.n_samples})"


class HierarchicalMetrics:
    """Streaming :func:`report`: accuracies, mistake severity, hierarchical
    distances and mean EMD over batches of scores and labels.

    ``compute`` returns a dict with

    ``n_samples``, ``n_mistakes``
        Samples seen, and those whose top-1 class is wrong.
    ``accuracy@k``
        :func:`topk_accuracy` for each ``k`` in ``ks``.
    ``mistake_severity``
        :func:`mistake_severity` (``nan`` without mistakes).
    ``hierarchical_distance@k``
        :func:`average_hierarchical_distance_at_k` for each ``k``.
    ``mean_emd``
        :func:`mean_emd` against one-hot labels (if ``emd``).
    ``per_class``
        With ``per_class=True``: a dict of columns, one entry per bin —
        ``class`` (index), ``name`` (the tree's bin name or None),
        ``n_samples`` and each of the metrics above over the samples of that
        true class (``nan`` where a class has no samples).

    Counts are integers and the overall sums exact (see :class:`EMDMetric`);
    per-class sums are float64.

    Parameters
    ----------
    tree : Tree or None
        Needed for the distances and the EMD; ``None`` computes accuracies
        only.
    ks : sequence of int, default (1, 5)
    rho : float, default 1.0
    per_class : bool, default False
    normalize : {None, "l1"}, optional
    distance : {"path", "lca_height"}, default "path"
    emd : bool, default True
        Include the mean EMD (``pred`` must then hold distributions).
    chunk_size : int, optional

    Examples
    --------
    >>> from emdtree import Tree
    >>> from emdtree.metrics import HierarchicalMetrics
    >>> tree = Tree.from_nested({"cat": None, "tiger": None, "vehicle": ["car"]})
    >>> acc = HierarchicalMetrics(tree, ks=(1, 2))
    >>> _ = acc.update([[0.2, 0.7, 0.1]], [0]).update([[0.1, 0.2, 0.7], [0.1, 0.1, 0.8]], [0, 2])
    >>> r = acc.compute()
    >>> r["n_mistakes"], r["hierarchical_distance@2"], round(r["mean_emd"], 6)
    (2, 1.6666666666666667, 1.6)
    """

    def __init__(self, tree: Tree | None, *, ks: Sequence[int] = (1, 5), rho: float = 1.0,
                 per_class: bool = False, normalize: str | None = None, distance: str = "path",
                 emd: bool = True, chunk_size: int | None = None) -> None:
        if tree is not None and not isinstance(tree, Tree):
            raise TypeError(f"tree must be an emdtree.Tree, got {type(tree).__name__}")
        if isinstance(ks, (numbers.Integral, np.integer)):
            ks = (ks,)
        ks = tuple(ks)
        if not ks:
            raise ValueError("ks is empty: give at least one k")
        ks = tuple(_check_k(k, None if tree is None else tree.n_bins) for k in ks)
        self.ks = tuple(dict.fromkeys(ks))
        self.tree = tree
        self.per_class = bool(per_class)
        self.distance = _check_distance(distance)
        self.want_emd = bool(emd) and tree is not None
        self._emd = EMDMetric(tree, rho, normalize=normalize, chunk_size=chunk_size)
        self.chunk_size = chunk_size
        self.reset()

    def reset(self) -> None:
        """Forget all samples."""
        self._emd.reset()
        self.n_samples = 0
        self.n_bins = None if self.tree is None else self.tree.n_bins
        self._correct = {k: 0 for k in self.ks}
        self._mistakes = 0
        self._severity = _ExactSum()
        self._hdist = {k: _ExactSum() for k in self.ks}
        self._classes: dict[str, np.ndarray] | None = None

    def _class_arrays(self, n_bins: int) -> dict[str, np.ndarray]:
        if self._classes is None:
            names = ["n_samples", "n_mistakes"] + [f"correct@{k}" for k in self.ks]
            arrays = {name: np.zeros(n_bins, dtype=np.int64) for name in names}
            floats = ["severity", "emd"] + [f"hdist@{k}" for k in self.ks]
            arrays.update({name: np.zeros(n_bins) for name in floats})
            self._classes = arrays
        return self._classes

    def update(self, pred: Any, labels: Any, *,
               progress: Callable[[int], Any] | None = None) -> HierarchicalMetrics:
        """Add a batch: scores ``pred`` (n, n_bins) and class indices ``labels`` (n,).

        ``progress`` as in :meth:`EMDMetric.update`.
        """
        pred, labels = _host(pred), _host(labels)
        _check_scores(pred)
        _check_labels_shape(labels, pred.shape[0])
        n_bins = pred.shape[1]
        if self.n_bins is not None and n_bins != self.n_bins:
            what = "the tree has" if self.tree is not None else "earlier batches had"
            raise ValueError(f"pred has {n_bins} bins (columns) but {what} {self.n_bins} bins")
        if max(self.ks) > n_bins:
            raise ValueError(f"k = {max(self.ks)} must be between 1 and the number of bins ({n_bins})")
        self.n_bins = n_bins
        hierarchy = _hierarchy(self.tree) if self.tree is not None else None
        for start, (scores, y) in _chunks([pred, labels], self.chunk_size):
            _no_nan(scores, start)
            _labels_in_range(y, start, n_bins)
            self._update_chunk(scores, y, start, hierarchy)
            if progress is not None:
                progress(scores.shape[0])
        return self

    def _update_chunk(self, scores: np.ndarray, y: np.ndarray, start: int, hierarchy) -> None:
        rank, top = _ranks(scores, y, max(self.ks) if hierarchy is not None else 0)
        classes = self._class_arrays(self.n_bins) if self.per_class else None
        if classes is not None:
            classes["n_samples"] += np.bincount(y, minlength=self.n_bins)
        for k in self.ks:
            hit = rank < k
            self._correct[k] += int(np.count_nonzero(hit))
            if classes is not None:
                classes[f"correct@{k}"] += np.bincount(y[hit], minlength=self.n_bins)
        wrong = rank > 0
        self._mistakes += int(np.count_nonzero(wrong))
        if classes is not None:
            classes["n_mistakes"] += np.bincount(y[wrong], minlength=self.n_bins)
        if hierarchy is not None:
            dist = hierarchy.distance(top, np.broadcast_to(y[:, None], top.shape), self.distance)
            self._severity.add_values(dist[wrong, 0])
            if classes is not None:
                classes["severity"] += np.bincount(y[wrong], dist[wrong, 0], minlength=self.n_bins)
            for k in self.ks:
                per_sample = dist[:, :k].sum(axis=1)
                self._hdist[k].add_values(per_sample)
                if classes is not None:
                    classes[f"hdist@{k}"] += np.bincount(y, per_sample, minlength=self.n_bins)
        if self.want_emd:
            values = _chunk_emd(scores, y, True, start, self.tree, self._emd.rho, self._emd.normalize)
            self._emd._sum.add_values(values)
            self._emd.n_samples += values.shape[0]
            if classes is not None:
                classes["emd"] += np.bincount(y, values, minlength=self.n_bins)
        self.n_samples += scores.shape[0]

    def merge(self, other: HierarchicalMetrics) -> HierarchicalMetrics:
        """Add the samples of another accumulator with the same settings."""
        if not isinstance(other, HierarchicalMetrics):
            raise TypeError(f"can only merge another HierarchicalMetrics, got {type(other).__name__}")
        if (self.ks != other.ks or self.per_class != other.per_class or self.distance != other.distance
                or self.want_emd != other.want_emd or self.tree != other.tree):
            raise ValueError("cannot merge HierarchicalMetrics with different tree, ks, distance, "
                             "per_class or emd settings")
        if None not in (self.n_bins, other.n_bins) and self.n_bins != other.n_bins:
            raise ValueError(f"cannot merge accumulators over {self.n_bins} and {other.n_bins} bins")
        self._emd.merge(other._emd)
        self.n_bins = self.n_bins if self.n_bins is not None else other.n_bins
        self.n_samples += other.n_samples
        self._mistakes += other._mistakes
        self._severity.merge(other._severity)
        for k in self.ks:
            self._correct[k] += other._correct[k]
            self._hdist[k].merge(other._hdist[k])
        if other._classes is not None:
            mine = self._class_arrays(other.n_bins)
            for name, values in other._classes.items():
                mine[name] += values
        return self

    def compute(self) -> dict[str, Any]:
        """The metrics over the samples seen (``nan`` where undefined)."""
        n = self.n_samples
        out: dict[str, Any] = {"n_samples": n}
        for k in self.ks:
            out[f"accuracy@{k}"] = self._correct[k] / n if n else math.nan
        out["n_mistakes"] = self._mistakes
        if self.tree is not None:
            out["mistake_severity"] = self._severity.value / self._mistakes if self._mistakes else math.nan
            for k in self.ks:
                out[f"hierarchical_distance@{k}"] = self._hdist[k].value / (n * k) if n else math.nan
        if self.want_emd:
            out["mean_emd"] = self._emd.compute()
        if self.per_class:
            out["per_class"] = self._per_class()
        return out

    def _per_class(self) -> dict[str, list]:
        n_bins = self.n_bins or 0
        c = self._class_arrays(n_bins)
        count = c["n_samples"]
        with np.errstate(divide="ignore", invalid="ignore"):
            cols: dict[str, np.ndarray] = {"n_samples": count}
            for k in self.ks:
                cols[f"accuracy@{k}"] = c[f"correct@{k}"] / count
            cols["n_mistakes"] = c["n_mistakes"]
            if self.tree is not None:
                cols["mistake_severity"] = c["severity"] / c["n_mistakes"]
                for k in self.ks:
                    cols[f"hierarchical_distance@{k}"] = c[f"hdist@{k}"] / (count * k)
            if self.want_emd:
                cols["mean_emd"] = c["emd"] / count
        names = list(self.tree.names) if self.tree is not None and self.tree.names is not None \
            else [None] * n_bins
        out: dict[str, list] = {"class": list(range(n_bins)), "name": names}
        out.update({key: values.tolist() for key, values in cols.items()})
        return out

    def __repr__(self) -> str:
        return f"HierarchicalMetrics(ks={self.ks}, n_samples={self.n_samples})"
