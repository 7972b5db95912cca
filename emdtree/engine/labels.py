"""EMD^rho between predictions and integer class labels.

A label is a unit mass on one bin. The kernels take it as an index: they
subtract 1 at the label's bin while they load the predictions, so no one-hot
array is ever built, whatever the number of classes.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import driver as _driver
from .inputs import Rows, check_labels, check_rho, prepare, restore_bins, restore_scalar
from ..trees.tree import Tree


def label_rows(rows: Rows, names: tuple[str, str] = ("p", "q")) -> Rows:
    """Rows of predictions with, as ``q``, the broadcast row of zeros that the
    kernels' label path expects (they subtract 1 at each label's bin)."""
    n_bins = rows.tree.n_bins
    zeros = np.zeros((1, n_bins), dtype=rows.dtype)
    zeros.flags.writeable = False
    return rows._replace(arrays=(rows.arrays[0], zeros), steps=(rows.steps[0], 0), names=names,
                         shapes=rows.shapes + ((n_bins,),), totals=rows.totals + (None,))


def value_grad_labels(
    p: Any,
    labels: Any,
    tree: Tree | None = None,
    rho: float = 2.0,
    want_grad: bool = True,
    axis: int = -1,
    *,
    normalize: str | None = None,
    check_inputs: bool = True,
) -> tuple[Any, Any]:
    """EMD^rho between ``p`` and one-hot targets given by class index, and its gradient.

    Parameters
    ----------
    p : array_like, shape (..., n_bins, ...)
        Predicted masses; each sample must sum to 1 (or pass ``normalize="l1"``).
    labels : array_like of int, shape (...)
        The class (bin) index of each sample: ``p``'s shape without the bin axis.
    tree, rho, axis, normalize, check_inputs
        As in :func:`emdtree.emd`. Labels are always range-checked.
    want_grad : bool, default True
        Also return the dirt-conserving gradient with respect to ``p``.

    Returns
    -------
    value : ndarray or NumPy scalar, shape (...)
    grad : ndarray shaped like ``p``, or None
    """
    rho = check_rho(rho)
    rows = prepare({"p": p}, tree, axis, check_inputs, normalize, masses=("p",), defer=True)
    flat = check_labels(labels, rows.batch_shape, rows.tree.n_bins, rows.shapes[0])
    rows = label_rows(rows)
    value, grad = _driver.value_grad(rows, rho, want_grad, check=check_inputs and normalize is None,
                                     labels=flat)
    if grad is None:
        return restore_scalar(value, rows), None
    if normalize is not None:
        grad = _driver.normalized_grad(grad, rows)
    return restore_scalar(value, rows), restore_bins(grad, rows)
