"""What the evaluation metrics compute on one chunk of rows: the EMD of each
row to its target, and the rank of each label with the best classes."""

from __future__ import annotations

import numpy as np

from ..engine import driver as _driver
from .._api import emd
from ..kernels.ranking import rank_top_k, rank_top_k_parallel
from ..engine.labels import value_grad_labels
from ..engine.semantics import float_eps, narrow_float
from .inputs import explain_masses
from ..engine.threads import parallel_launch, usable_threads
from ..trees.tree import Tree


def chunk_emd(pred: np.ndarray, target: np.ndarray, is_labels: bool, start: int, tree: Tree | None,
              rho: float, normalize: str | None) -> np.ndarray:
    """EMD^rho of each row of a chunk as float64, ``(n_rows,)``; ``target`` holds
    class indices if ``is_labels``, else distributions. Errors name rows of the
    whole input."""
    dtype = np.float32 if pred.dtype == np.float32 and (is_labels or target.dtype == np.float32) \
        else np.float64
    try:
        if is_labels and _labels_direct(pred.dtype, tree, rho):
            value, _ = value_grad_labels(pred, target, tree, rho, want_grad=False, normalize=normalize)
        else:
            q = _one_hot(target, pred.shape[1], dtype) if is_labels else target
            value = emd(pred, q, tree, rho, normalize=normalize)
    except ValueError:
        eps = max(float(np.finfo(dtype).eps), float_eps(pred.dtype))
        explain_masses(pred, None if is_labels else np.asarray(target), start, eps, normalize)
        raise
    return np.asarray(value, dtype=np.float64).reshape(-1)


def _labels_direct(pred_dtype: np.dtype, tree: Tree | None, rho: float) -> bool:
    """Whether labels go to the kernels as indices rather than as one-hot rows.

    Both give bitwise the same values, except where one-hot targets would run
    in a different kernel or precision: float16 scores (the label path would
    work in float32, one-hot targets in float64), and a unit-spacing chain
    (``tree=None`` or an equivalent tree) at rho 1 or 2, where one-hot targets
    take the chain kernel, whose float32 error is about a third of the tree
    kernel's on a 1000-bin chain.
    """
    if pred_dtype not in (np.float32, np.float64) and (pred_dtype.kind == "f" or narrow_float(pred_dtype)):
        return False
    if rho in (1.0, 2.0) and (tree is None or tree._is_canonical_chain):
        return False
    return True


def _one_hot(labels: np.ndarray, n_bins: int, dtype: np.dtype) -> np.ndarray:
    out = np.zeros((labels.shape[0], n_bins), dtype=dtype)
    out[np.arange(labels.shape[0]), labels] = 1
    return out


def ranks(scores: np.ndarray, labels: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``(rank of each label, (m, k) best classes)`` of a chunk, through the kernel."""
    narrow = narrow_float(scores.dtype) or (scores.dtype.kind == "f" and scores.dtype.itemsize <= 4)
    dtype = np.float32 if narrow else np.float64
    x = np.ascontiguousarray(scores, dtype=dtype).view()
    y = np.ascontiguousarray(labels, dtype=np.int64).view()
    x.flags.writeable = y.flags.writeable = False  # one specialisation whatever the caller's flags
    top = np.empty((x.shape[0], k), dtype=np.int64)
    rank = np.empty(x.shape[0], dtype=np.int64)
    n_threads = usable_threads()
    if x.size >= _driver.PARALLEL_MIN_WORK and n_threads > 1:
        with parallel_launch(n_threads):
            rank_top_k_parallel(x, y, top, rank)
    else:
        rank_top_k(x, y, top, rank)
    return rank, top
