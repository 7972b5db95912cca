"""The implementation of :mod:`emdtree.metrics`, documented there."""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .exactsum import ExactSum
from ..engine import tiers as _tiers
from ..trees.hierarchy import Hierarchy, hierarchy
from .chunks import chunk_emd, ranks
from .inputs import (
    check_chunk_size,
    check_distance,
    check_k,
    check_labels_shape,
    check_scores,
    check_target,
    chunks,
    host,
    is_dask,
    labels_in_range,
    no_nan,
)
from ..trees.tree import Tree

__all__ = [
    "EMDMetric",
    "HierarchicalMetrics",
    "average_hierarchical_distance_at_k",
    "mean_emd",
    "mistake_severity",
    "report",
    "topk_accuracy",
]

# ----------------------------------------------------------------------------- ranking


def _ranks(scores: np.ndarray, labels: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The rank of each label and the ``k`` best classes of a chunk, as :func:`ranks`.

    The first calls of a process run NumPy code instead of the ranking kernel, as
    value-and-gradient calls do (:mod:`emdtree.engine.tiers`: the same work count,
    rows x bins here, and ``EMDTREE_JIT``), so that an evaluation of a few batches
    does not wait for the kernel's compilation. Both give the same integers.
    """
    if _tiers.use_numpy(scores.shape[0] * scores.shape[1]):
        return _numpy_ranks(scores, labels, k)
    return ranks(scores, labels, k)


def _numpy_ranks(scores: np.ndarray, labels: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """:func:`ranks` in NumPy: classes by decreasing score, equal scores by increasing
    index (:mod:`emdtree.kernels.ranking`); scores are compared in the kernel's dtype."""
    dtype = np.float32 if scores.dtype.kind == "f" and scores.dtype.itemsize <= 4 else np.float64
    x = np.asarray(scores, dtype=dtype)
    y = np.asarray(labels, dtype=np.int64)
    m, n = x.shape
    own = x[np.arange(m), y][:, None]
    col = np.arange(n)
    rank = np.count_nonzero((x > own) | ((x == own) & (col < y[:, None])), axis=1).astype(np.int64)
    if k == 0:
        return rank, np.empty((m, 0), dtype=np.int64)
    kth = np.partition(x, n - k, axis=1)[:, n - k, None]  # the k-th best score of each row
    above = x > kth
    ties = x == kth
    room = k - np.count_nonzero(above, axis=1)[:, None]  # the ties that fit, lowest indices first
    chosen = above | (ties & (np.cumsum(ties, axis=1) <= room))
    top = np.nonzero(chosen)[1].reshape(m, k)  # k per row, by increasing index
    order = np.argsort(-np.take_along_axis(x, top, axis=1), axis=1, kind="stable")
    return rank, np.take_along_axis(top, order, axis=1).astype(np.int64, copy=False)


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
        Predicted distributions (non-negative rows summing to 1), any
        non-negative rows with ``normalize="l1"``, or logits with
        ``normalize="softmax"``.
    target : array_like, shape (n_samples, n_bins) or (n_samples,)
        Target distributions, or integer class indices (bin order), which
        stand for one-hot distributions.
    tree : Tree, optional
        Ground space; default: a unit-spacing chain.
    rho : float, default 1.0
        Exponent of :func:`emdtree.emd`.
    normalize : {None, "l1", "softmax"}, optional
        As in :func:`emdtree.emd`: ``"l1"`` rescales the rows of ``pred``
        (and of distribution targets), ``"softmax"`` turns the logits in
        ``pred`` into probabilities (targets must then be class indices or
        distributions).
    chunk_size : int, optional
        Rows per chunk; default: about 4 million entries per chunk. Dask
        arrays are reduced on the active scheduler, one task per block
        (``chunk_size`` rechunks them), equal to the in-memory result.

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
    >>> logits = np.log(pred + 1e-300)
    >>> round(metrics.mean_emd(logits, [0, 2], tree, normalize="softmax"), 12)
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
        True class indices (bin order).
    tree : Tree
        The class hierarchy; its bins are the classes.
    distance : {"path", "lca_height", "lca_subtree_height"}, default "path"
        The tree's path metric, or Bertinetto et al.'s ``H - depth(LCA)``,
        or the height of the LCA's subtree (see the module notes and
        :meth:`Tree.distance_matrix`).
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
        True class indices (bin order).
    tree : Tree
        The class hierarchy; its bins are the classes.
    k : int
        ``1 <= k <= n_bins``.
    distance : {"path", "lca_height", "lca_subtree_height"}, default "path"
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
    of the result. The mean EMD compares distributions with one-hot labels:
    pass logits with ``normalize="softmax"``, non-negative scores with
    ``normalize="l1"``, or distributions as they are. Accuracies and
    hierarchical distances rank the scores as given (a softmax does not
    change the ranking).

    Parameters
    ----------
    pred : array_like, shape (n_samples, n_bins)
        Predicted distributions over the classes, or scores (see above).
    labels : array_like of int, shape (n_samples,)
        True class indices (bin order).
    tree : Tree
        The class hierarchy; its bins are the classes.
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
        Metric name -> value; the keys are listed under
        :class:`HierarchicalMetrics`.

    Examples
    --------
    >>> from emdtree import Tree, metrics
    >>> tree = Tree.from_nested({"cat": None, "tiger": None, "vehicle": ["car"]})
    >>> pred = [[0.2, 0.7, 0.1], [0.1, 0.2, 0.7], [0.1, 0.1, 0.8]]
    >>> r = metrics.report(pred, [0, 0, 2], tree, ks=(1, 2))
    >>> r["accuracy@1"], r["accuracy@2"], r["mistake_severity"]
    (0.3333333333333333, 0.6666666666666666, 2.5)
    >>> logits = [[2.0, 3.0, 0.0], [0.0, 1.0, 3.0], [0.0, 0.0, 4.0]]
    >>> r = metrics.report(logits, [0, 0, 2], tree, ks=(1,), normalize="softmax")
    >>> r["mistake_severity"], round(r["mean_emd"], 4)
    (2.5, 1.4606)
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
        Exponent of :func:`emdtree.emd`.
    normalize : {None, "l1", "softmax"}, optional
        As in :func:`mean_emd`.
    chunk_size : int, optional
        Rows per chunk; see :func:`mean_emd`.

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
        from ..engine.inputs import check_rho

        if tree is not None and not isinstance(tree, Tree):
            raise TypeError(f"tree must be an emdtree.Tree or None, got {type(tree).__name__}")
        from ..engine.normalize import check_normalize

        normalize = check_normalize(normalize)
        if chunk_size is not None:
            check_chunk_size(chunk_size)
        self.tree = tree
        self.rho = check_rho(rho)
        self.normalize = normalize
        self.chunk_size = chunk_size
        self.n_bins: int | None = None if tree is None else tree.n_bins
        self.reset()

    def reset(self) -> None:
        """Forget all samples.

        Examples
        --------
        >>> from emdtree.metrics import EMDMetric
        >>> metric = EMDMetric().update([[1.0, 0.0]], [1])
        >>> metric.reset()
        >>> metric.n_samples, metric.compute()
        (0, nan)
        """
        self.n_samples = 0
        self._sum = ExactSum()

    def update(self, pred: Any, target: Any, *, progress: Callable[[int], Any] | None = None) -> EMDMetric:
        """Add a batch: ``pred`` (n, n_bins) and ``target`` (n, n_bins) or class indices (n,).

        Parameters
        ----------
        pred : array_like, shape (n, n_bins)
            Predicted distributions, as in :func:`mean_emd`.
        target : array_like, shape (n, n_bins) or (n,)
            Target distributions or integer class indices.
        progress : callable, optional
            Called with the number of rows of each chunk once it is done
            (e.g. a progress bar's ``update``).

        Returns
        -------
        EMDMetric
            The accumulator itself, so that calls chain.

        Examples
        --------
        >>> from emdtree.metrics import EMDMetric
        >>> EMDMetric().update([[0.5, 0.5, 0.0]], [2]).compute()  # 0.5 * 2 + 0.5 * 1
        1.5
        """
        pred, target = host(pred, "pred"), host(target, "target")
        check_scores(pred)
        is_labels = check_target(pred, target)
        n_bins = pred.shape[1]
        if self.n_bins is not None and n_bins != self.n_bins:
            what = "the tree has" if self.tree is not None else "earlier batches had"
            raise ValueError(f"pred has {n_bins} bins (columns) but {what} {self.n_bins} bins")
        self.n_bins = n_bins
        if is_dask(pred) or is_dask(target):  # partial states computed where the blocks are
            from .dask import update_dask

            update_dask(self, pred, target, is_labels, progress)
            return self
        for start, (p, t) in chunks([pred, target], self.chunk_size):
            self._add_chunk(p, t, start, is_labels)
            if progress is not None:
                progress(p.shape[0])
        return self

    def _add_chunk(self, p: np.ndarray, t: np.ndarray, start: int, is_labels: bool) -> None:
        """Add one chunk of host rows that start at row ``start``."""
        if is_labels:
            labels_in_range(t, start, self.n_bins, "target")
        self._sum.add_values(chunk_emd(p, t, is_labels, start, self.tree, self.rho, self.normalize))
        self.n_samples += p.shape[0]

    def _empty(self) -> EMDMetric:
        """An empty accumulator with these settings (sharing the immutable tree)."""
        out = EMDMetric(self.tree, self.rho, normalize=self.normalize, chunk_size=self.chunk_size)
        out.n_bins = self.n_bins
        return out

    def _settings(self) -> tuple:
        """What two accumulators must share for their states to merge."""
        return (self.rho, self.normalize, self.n_bins, id(self.tree))

    def merge(self, other: EMDMetric) -> EMDMetric:
        """Add the samples of another accumulator with the same settings.

        Parameters
        ----------
        other : EMDMetric
            An accumulator with the same tree, ``rho`` and ``normalize``
            (e.g. of another worker); it is left unchanged.

        Returns
        -------
        EMDMetric
            The accumulator itself, now holding the samples of both.

        Examples
        --------
        >>> from emdtree.metrics import EMDMetric
        >>> a = EMDMetric().update([[1.0, 0.0, 0.0]], [2])
        >>> b = EMDMetric().update([[0.0, 1.0, 0.0]], [2])
        >>> a.merge(b).compute()  # (2 + 1) / 2
        1.5
        """
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
        """Mean EMD^rho over the samples seen; ``nan`` before any.

        Returns
        -------
        float
            The mean over all samples added so far.

        Examples
        --------
        >>> from emdtree.metrics import EMDMetric
        >>> metric = EMDMetric()
        >>> metric.compute()
        nan
        >>> metric.update([[0.0, 1.0]], [0]).compute()
        1.0
        """
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
        The k of the top-k accuracies and hierarchical distances.
    rho : float, default 1.0
        Exponent of the mean EMD.
    per_class : bool, default False
        Also compute the metrics of each true class.
    normalize : {None, "l1", "softmax"}, optional
        As in :func:`mean_emd`, for the mean EMD: ``"softmax"`` for logits.
    distance : {"path", "lca_height", "lca_subtree_height"}, default "path"
        See :func:`mistake_severity`.
    emd : bool, default True
        Include the mean EMD (``pred`` must then hold distributions, or
        scores that ``normalize`` turns into distributions).
    chunk_size : int, optional
        Rows per chunk; see :func:`mean_emd`.

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
        ks = tuple(check_k(k, None if tree is None else tree.n_bins) for k in ks)
        self.ks = tuple(dict.fromkeys(ks))
        self.tree = tree
        self.per_class = bool(per_class)
        self.distance = check_distance(distance)
        self.want_emd = bool(emd) and tree is not None
        self._emd = EMDMetric(tree, rho, normalize=normalize, chunk_size=chunk_size)
        self.chunk_size = chunk_size
        self.reset()

    def reset(self) -> None:
        """Forget all samples.

        Examples
        --------
        >>> from emdtree.metrics import HierarchicalMetrics
        >>> acc = HierarchicalMetrics(None, ks=(1,)).update([[0.9, 0.1]], [0])
        >>> acc.reset()
        >>> acc.compute()
        {'n_samples': 0, 'accuracy@1': nan, 'n_mistakes': 0}
        """
        self._emd.reset()
        self.n_samples = 0
        self.n_bins = None if self.tree is None else self.tree.n_bins
        self._correct = {k: 0 for k in self.ks}
        self._mistakes = 0
        self._severity = ExactSum()
        self._hdist = {k: ExactSum() for k in self.ks}
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

        Parameters
        ----------
        pred : array_like, shape (n, n_bins)
            Scores (distributions if the mean EMD is computed, unless
            ``normalize`` makes them so).
        labels : array_like of int, shape (n,)
            True class indices.
        progress : callable, optional
            As in :meth:`EMDMetric.update`.

        Returns
        -------
        HierarchicalMetrics
            The accumulator itself, so that calls chain.

        Examples
        --------
        >>> from emdtree.metrics import HierarchicalMetrics
        >>> acc = HierarchicalMetrics(None, ks=(1,))
        >>> acc.update([[0.9, 0.1], [0.8, 0.2]], [0, 1]).compute()["accuracy@1"]
        0.5
        """
        pred, labels = host(pred, "pred"), host(labels, "labels")
        check_scores(pred)
        check_labels_shape(labels, pred.shape[0])
        n_bins = pred.shape[1]
        if self.n_bins is not None and n_bins != self.n_bins:
            what = "the tree has" if self.tree is not None else "earlier batches had"
            raise ValueError(f"pred has {n_bins} bins (columns) but {what} {self.n_bins} bins")
        if max(self.ks) > n_bins:
            raise ValueError(f"k = {max(self.ks)} must be between 1 and the number of bins ({n_bins})")
        self.n_bins = n_bins
        if is_dask(pred) or is_dask(labels):  # partial states computed where the blocks are
            from .dask import update_dask

            update_dask(self, pred, labels, True, progress)
            return self
        tables = hierarchy(self.tree) if self.tree is not None else None
        for start, (scores, y) in chunks([pred, labels], self.chunk_size):
            self._add_chunk(scores, y, start, True, tables)
            if progress is not None:
                progress(scores.shape[0])
        return self

    def _add_chunk(self, scores: np.ndarray, y: np.ndarray, start: int, is_labels: bool = True,
                   tables: Hierarchy | None = None) -> None:
        """Add one chunk of host rows that start at row ``start`` (``y`` holds class indices)."""
        no_nan(scores, start)
        labels_in_range(y, start, self.n_bins)
        if tables is None and self.tree is not None:
            tables = hierarchy(self.tree)
        self._update_chunk(scores, y, start, tables)

    def _empty(self) -> HierarchicalMetrics:
        """An empty accumulator with these settings (sharing the immutable tree)."""
        out = HierarchicalMetrics(self.tree, ks=self.ks, rho=self._emd.rho, per_class=self.per_class,
                                  normalize=self._emd.normalize, distance=self.distance, emd=self.want_emd,
                                  chunk_size=self.chunk_size)
        out.n_bins = self.n_bins
        out._emd.n_bins = self._emd.n_bins
        return out

    def _settings(self) -> tuple:
        """What two accumulators must share for their states to merge."""
        return (self.ks, self.per_class, self.distance, self.want_emd, self._emd.rho, self._emd.normalize,
                self.n_bins, id(self.tree))

    def _update_chunk(self, scores: np.ndarray, y: np.ndarray, start: int, tables: Hierarchy | None) -> None:
        rank, top = _ranks(scores, y, max(self.ks) if tables is not None else 0)
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
        if tables is not None:
            dist = tables.distance(top, np.broadcast_to(y[:, None], top.shape), self.distance)
            self._severity.add_values(dist[wrong, 0])
            if classes is not None:
                classes["severity"] += np.bincount(y[wrong], dist[wrong, 0], minlength=self.n_bins)
            for k in self.ks:
                per_sample = dist[:, :k].sum(axis=1)
                self._hdist[k].add_values(per_sample)
                if classes is not None:
                    classes[f"hdist@{k}"] += np.bincount(y, per_sample, minlength=self.n_bins)
        if self.want_emd:
            values = chunk_emd(scores, y, True, start, self.tree, self._emd.rho, self._emd.normalize)
            self._emd._sum.add_values(values)
            self._emd.n_samples += values.shape[0]
            if classes is not None:
                classes["emd"] += np.bincount(y, values, minlength=self.n_bins)
        self.n_samples += scores.shape[0]

    def merge(self, other: HierarchicalMetrics) -> HierarchicalMetrics:
        """Add the samples of another accumulator with the same settings.

        Parameters
        ----------
        other : HierarchicalMetrics
            An accumulator with the same tree, ``ks``, ``distance``,
            ``per_class`` and ``emd`` settings; it is left unchanged.

        Returns
        -------
        HierarchicalMetrics
            The accumulator itself, now holding the samples of both.

        Examples
        --------
        >>> from emdtree.metrics import HierarchicalMetrics
        >>> a = HierarchicalMetrics(None, ks=(1,)).update([[0.9, 0.1]], [0])
        >>> b = HierarchicalMetrics(None, ks=(1,)).update([[0.9, 0.1]], [1])
        >>> a.merge(b).compute()
        {'n_samples': 2, 'accuracy@1': 0.5, 'n_mistakes': 1}
        """
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
        """The metrics over the samples seen (``nan`` where undefined).

        Returns
        -------
        dict
            Metric name -> value; the keys are listed in the class
            description.

        Examples
        --------
        >>> from emdtree import Tree
        >>> from emdtree.metrics import HierarchicalMetrics
        >>> tree = Tree.from_nested({"cat": None, "tiger": None})
        >>> r = HierarchicalMetrics(tree, ks=(1,)).update([[0.3, 0.7]], [0]).compute()
        >>> r["accuracy@1"], r["mistake_severity"], round(r["mean_emd"], 6)  # 0.7 moves 2
        (0.0, 2.0, 1.4)
        """
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
