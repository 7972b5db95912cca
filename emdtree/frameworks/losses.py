"""Framework-free core of the training losses in :mod:`emdtree.torch`,
:mod:`emdtree.tensorflow` and :mod:`emdtree.jax`.

The adapters move the bin axis last, flatten the batch to ``(rows, n_bins)``
and call the two NumPy entry points here: :func:`value_grad` (EMD^rho per row
and its dirt-conserving gradient with respect to the prediction, in one kernel
pass) and :func:`hvp` (``P H P v``, the derivative of that gradient along
``v``, for second derivatives in either direction: ``P H P`` is symmetric).
A target is either a distribution per row or an integer class index per row.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import threading
import weakref
from typing import Any

import numpy as np

from ..engine import driver as _driver
from ..engine.inputs import check_rho, prepare
from ..engine.labels import label_rows
from ..trees.tree import Tree

from ..engine import semantics
from ..engine.semantics import NORMALIZE, batch_entry, check_normalize, check_raw, label_error  # noqa: F401
from ..engine.semantics import check_rho as check_rho_value  # noqa: F401 - the adapters' name

REDUCTIONS = ("mean", "sum", "none")

_LOSS_NAMES = ("input", "target")

# ----------------------------------------------------------------------------- argument checks


def check_reduction(reduction: Any) -> str:
    """``"mean"``, ``"sum"`` or ``"none"``."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    return reduction


def check_tree(tree: Any, n_bins: int) -> int:
    """The token of ``tree`` (see :func:`tree_token`), checked against the number of bins."""
    if tree is None:
        return 0
    if not isinstance(tree, Tree):
        raise TypeError(f"tree must be an emdtree.Tree or None, got {type(tree).__name__}")
    if tree.n_bins != n_bins:
        raise ValueError(f"the bin axis has length {n_bins} but the tree has {tree.n_bins} bins")
    return tree_token(tree)


def check_axis(axis: Any, ndim: int, name: str = "input") -> int:
    """The bin axis as a non-negative index into an array of ``ndim`` dimensions."""
    return semantics.check_axis(axis, ndim, name)


def check_target_shape(input_shape: tuple, target_shape: tuple, ax: int, labels: bool) -> None:
    """A distribution target has the input's shape; class indices its batch shape."""
    input_shape, target_shape = tuple(input_shape), tuple(target_shape)
    if labels:
        want = input_shape[:ax] + input_shape[ax + 1:]
        if target_shape != want:
            raise ValueError(
                f"target holds class indices, so its shape must be the input's shape without the "
                f"bin axis {ax}: expected {want}, got {target_shape}"
            )
    elif target_shape != input_shape:
        raise ValueError(f"target has shape {target_shape} but input has shape {input_shape}: "
                         "a distribution target must have the input's shape")


# ----------------------------------------------------------------------------- trees as integers

# Framework ops take plain integers, not Python objects: a tree is passed to them
# as a token into this registry. Equal trees share a token while one of them is
# alive; 0 stands for None (the unit chain of however many bins the input has).
# The registry holds weak references only, so a tree the user drops is freed
# (trees can be large: a 20,000-node tree with its layout takes about 2 MB). An
# op that runs later (a backward pass, a compiled function) keeps the tree it
# needs alive itself, through tree_of.
_LOCK = threading.RLock()
_TOKENS: weakref.WeakKeyDictionary[Tree, int] = weakref.WeakKeyDictionary()  # a live tree of each token
_TREES: dict[int, list[weakref.ref[Tree]]] = {}  # token -> the live trees that carry it
_NEXT = itertools.count(1)


def tree_token(tree: Tree | None) -> int:
    """A positive integer standing for ``tree`` (0 for ``None``), kept on the tree."""
    if tree is None:
        return 0
    token = tree._loss_token
    if token:
        return token
    with _LOCK:
        token = _TOKENS.get(tree)  # an equal tree's token, found by value
        if token is None:
            token = next(_NEXT)
            _TOKENS[tree] = token
        _TREES.setdefault(token, []).append(weakref.ref(tree, functools.partial(_forget, token)))
        object.__setattr__(tree, "_loss_token", token)
    return token


def _forget(token: int, ref: weakref.ref) -> None:
    with _LOCK:
        refs = _TREES.get(token)
        if refs is None:
            return
        with contextlib.suppress(ValueError):
            refs.remove(ref)
        if not refs:
            del _TREES[token]


def tree_of(token: int) -> Tree | None:
    """Inverse of :func:`tree_token`: a live tree that carries ``token``."""
    if token == 0:
        return None
    with _LOCK:
        for ref in _TREES.get(token, ()):
            tree = ref()
            if tree is not None:
                return tree
    raise RuntimeError("the tree of this EMD loss no longer exists: keep a reference to the Tree while "
                       "the loss and its gradient are in use")


# ----------------------------------------------------------------------------- inputs to normalise


def check_normalizable(x: np.ndarray, normalize: str, axis: int, name: str = "input") -> None:
    """A ValueError naming the entry or sample of the raw ``x`` that ``normalize`` cannot handle.

    The adapters normalise with framework operations before the kernels see
    the masses: a ``+inf`` logit under ``"softmax"`` or a sample without mass
    under ``"l1"`` would reach them as NaN, and the kernels' message would
    then blame a NaN that the caller never passed. The rules are those of
    :func:`emdtree.engine.semantics.check_raw` (``-inf`` logits mask classes).
    """
    check_raw(x, normalize, axis, name)


# ----------------------------------------------------------------------------- targets


def is_labels(dtype: np.dtype) -> bool:
    """Whether a target of this dtype holds class indices."""
    return np.dtype(dtype).kind in "iu"


def check_labels(labels: np.ndarray, n_bins: int, batch_shape: tuple[int, ...] | None = None,
                 name: str = "target") -> np.ndarray:
    """Class indices as int64, or a ValueError naming the first one outside ``[0, n_bins)``."""
    flat = np.asarray(labels).reshape(-1)
    error = label_error(flat, n_bins, batch_entry(name, batch_shape, flat.size))
    if error is not None:
        raise ValueError(error)
    # a fresh writable copy: read-only indices (from a JAX buffer, say) would
    # compile another specialisation of the kernels
    return np.array(flat, dtype=np.int64)


def float_labels(labels: np.ndarray, n_bins: int, name: str = "target") -> np.ndarray:
    """Class indices handed over as floats (Keras often does) as int64.

    Raises a ValueError naming the first label that is not a whole number in
    ``[0, n_bins)``: truncating 0.4, -0.9 or NaN to a class would train on
    the wrong class silently.
    """
    flat = np.asarray(labels).reshape(-1)
    error = label_error(flat, n_bins, batch_entry(name, None, flat.size))
    if error is not None:
        raise ValueError(error)
    return flat.astype(np.int64)


def one_hot(labels: np.ndarray, n_bins: int, dtype: np.dtype) -> np.ndarray:
    """Rows of zeros with a one at each (checked) class index, ``(rows, n_bins)``."""
    out = np.zeros((labels.shape[0], n_bins), dtype=dtype)
    out[np.arange(labels.shape[0]), labels] = 1
    return out


def _target_rows(target: np.ndarray, n_bins: int, dtype: np.dtype, name: str) -> np.ndarray:
    """Distribution rows of a target: class indices become one-hot rows."""
    if is_labels(target.dtype):
        return one_hot(check_labels(target, n_bins, None, name), n_bins, dtype)
    if target.dtype.kind != "f":
        raise TypeError(f"{name} must hold probabilities (floating point) or class indices (integers), "
                        f"got dtype {target.dtype}")
    return target


# ----------------------------------------------------------------------------- entry points


def value_grad(
    p: np.ndarray,
    target: np.ndarray,
    tree: Tree | None,
    rho: float,
    want_grad: bool,
    check: bool = True,
    batch_shape: tuple[int, ...] | None = None,
    names: tuple[str, str] = _LOSS_NAMES,
    applied: str | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """EMD^rho of each row and, with ``want_grad``, its dirt-conserving gradient.

    Parameters
    ----------
    p : ndarray, shape (rows, n_bins)
        Predicted distributions, float32 or float64.
    target : ndarray, shape (rows, n_bins), (1, n_bins) or (rows,)
        Target distributions, or integer class indices.
    tree, rho
        As in :func:`emdtree.emd`; ``tree`` may also be a token of
        :func:`tree_token`.
    want_grad : bool
        Also return the gradient with respect to ``p`` (that with respect to
        a distribution target is its negative).
    check : bool
        Validate masses (finite, non-negative, equal totals) and indices.
    batch_shape : tuple of int, optional
        The caller's batch shape, to name a bad class index in its terms.
    names : (str, str)
        The caller's names of ``p`` and ``target``, for error messages.
    applied : {None, "l1", "softmax"}, optional
        The normalisation the adapter has already applied to ``p``: a
        distribution target must then sum to 1, and the message says so.

    Returns
    -------
    value : ndarray, shape (rows,)
    grad : ndarray, shape (rows, n_bins), or None
        In ``p``'s dtype.
    """
    if isinstance(tree, int):
        tree = tree_of(tree)
    rho = check_rho(rho)
    n_bins = p.shape[-1]
    target = np.asarray(target)
    if is_labels(target.dtype):
        # the kernels read the class indices directly: no one-hot rows
        labels = check_labels(target, n_bins, batch_shape, names[1])
        rows = label_rows(prepare({names[0]: p}, tree, -1, check, masses=names[:1], defer=True), names)
        value, grad = _driver.value_grad(rows, rho, want_grad=want_grad, check=check, labels=labels)
    else:
        q = _target_rows(target, n_bins, p.dtype, names[1])
        rows = prepare({names[0]: p, names[1]: q}, tree, -1, check, masses=names, defer=True, applied=applied)
        value, grad = _driver.value_grad(rows, rho, want_grad=want_grad, check=check)
    value = value.astype(p.dtype, copy=False)
    return value, (None if grad is None else grad.astype(p.dtype, copy=False))


def hvp(
    p: np.ndarray,
    target: np.ndarray,
    v: np.ndarray,
    tree: Tree | None,
    rho: float,
) -> np.ndarray:
    """``P H P v`` for each row: the derivative of the dirt-conserving gradient of
    :func:`value_grad` along ``v``, as :func:`emdtree.emd_hvp`.

    ``H`` is the Hessian of EMD^rho (constant for ``rho = 2``, paper eq. 12)
    and ``P = I - 11^T / n_bins``. ``P H P`` is symmetric, so the same
    product serves forward (a JVP of the gradient) and reverse mode (its
    transposed Jacobian). Shapes as in :func:`value_grad`, ``v`` like ``p``;
    no validation (the forward pass did it).
    """
    if isinstance(tree, int):
        tree = tree_of(tree)
    n_bins = p.shape[-1]
    q = _target_rows(np.asarray(target), n_bins, p.dtype, "target")
    rows = prepare({"p": p, "q": q, "v": v}, tree, -1, False, masses=("p", "q"))
    return _driver.hvp(rows, float(rho), project_out=True).astype(p.dtype, copy=False)
