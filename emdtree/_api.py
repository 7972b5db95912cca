"""Public NumPy API: EMD^rho on a tree, its gradient, Hessian and phi.

Notation (Martinez et al., section 3-4): for node ``i`` with edge cost ``w_i``
to its parent, ``phi_i`` is the total of ``p - q`` over the bins in the subtree
of ``i`` and

    EMD^rho(p, q) = sum over non-root i of w_i |phi_i|^rho.

``rho = 1`` is the exact EMD (Wasserstein-1 under the tree's path metric);
``rho = 2`` is the paper's relaxed, smooth loss.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .engine import dispatch as _dispatch, driver as _driver, normalize as _normalize
from .engine.inputs import Rows, check_rho, prepare, restore_bins, restore_scalar
from .trees.tree import Tree

__all__ = ["emd", "emd_grad", "emd_value_and_grad", "phi", "emd_hvp", "emd_hessian"]

def emd(
    p: Any,
    q: Any,
    tree: Tree | None = None,
    rho: float = 1.0,
    axis: int = -1,
    *,
    normalize: str | None = None,
    check_inputs: bool = True,
) -> np.ndarray:
    """Earth Mover's Distance (``rho=1``) or its relaxation EMD^rho on a tree.

    ``EMD^rho(p, q) = sum_i w_i |phi_i|^rho`` over the non-root nodes ``i``,
    where ``phi_i`` is the mass of ``p - q`` in the subtree of ``i`` and
    ``w_i`` the cost of the edge above it (paper eq. 4 and 7).

    Parameters
    ----------
    p, q : array_like, shape (..., n_bins, ...)
        Non-negative masses with equal totals along ``axis``. The other
        dimensions broadcast, so a batch can be compared with one target.
    tree : Tree, optional
        Ground space; default: a chain with unit spacing (ordinal bins).
    rho : float, default 1.0
        Exponent, >= 1. ``1`` is the exact EMD (Wasserstein-1 under the
        tree's path metric); ``2`` is the smooth loss of the paper.
    axis : int, default -1
        The bin axis.
    normalize : {None, "l1", "softmax"}, optional
        ``"l1"`` divides ``p`` and ``q`` by their totals first, so that
        histograms of counts can be compared as distributions.
        ``"softmax"`` takes ``p`` as logits and compares ``softmax(p)``
        (along ``axis``, shifted by the row maximum so that it cannot
        overflow) with ``q``, which must then be a distribution (summing to
        1), as the framework losses do. Logits may be ``-inf`` (probability
        0) but not NaN or ``+inf``. Derivatives are then taken with respect
        to the logits.
    check_inputs : bool, default True
        Check that masses are finite, non-negative and have equal totals.
        ``False`` skips these checks (shapes are always checked).

    Returns
    -------
    ndarray or NumPy scalar, shape (...)
        One value per pair; float32 for float32 inputs, else float64.

    Raises
    ------
    ValueError
        For a bin axis that does not match the tree, shapes that do not
        broadcast, NaN, infinite or negative masses, or unequal totals.

    See Also
    --------
    emd_grad, emd_value_and_grad, Tree.distance_matrix

    Examples
    --------
    >>> import numpy as np, emdtree
    >>> p = np.array([0.5, 0.5, 0.0, 0.0])
    >>> q = np.array([0.0, 0.0, 0.5, 0.5])
    >>> float(emdtree.emd(p, q))  # every unit of mass moves 2 bins
    2.0
    >>> float(emdtree.emd(p, q, rho=2))  # 0.5**2 + 1**2 + 0.5**2
    1.5
    >>> tree = emdtree.Tree.from_nested({"cat": None, "tiger": None, "vehicle": ["starship"]})
    >>> float(emdtree.emd([1, 0, 0], [0, 1, 0], tree)), float(emdtree.emd([1, 0, 0], [0, 0, 1], tree))
    (2.0, 3.0)
    >>> round(float(emdtree.emd([0.0, 0.0, 0.0], [1, 0, 0], tree, normalize="softmax")), 12)  # (2 + 3) / 3
    1.666666666667
    """
    if not _dispatch.is_host(p, q):
        host = _dispatch.torch_cpu({"p": p, "q": q})
        if host is not None:
            return _dispatch.torch_back(emd(*host, tree, rho, axis, normalize=normalize,
                                            check_inputs=check_inputs))
        return _dispatch.value_grad(p, q, tree, rho, axis, normalize, check_inputs, want_grad=False)
    rho = check_rho(rho)
    rows = prepare({"p": p, "q": q}, tree, axis, check_inputs, normalize, defer=True)
    value, _ = _driver.value_grad(rows, rho, want_grad=False, check=check_inputs and normalize is None)
    return restore_scalar(value, rows)


def emd_value_and_grad(
    p: Any,
    q: Any,
    tree: Tree | None = None,
    rho: float = 1.0,
    axis: int = -1,
    *,
    normalize: str | None = None,
    check_inputs: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """EMD^rho and its dirt-conserving gradient with respect to ``p``, in one pass.

    The gradient for bin ``k`` is the sum, over the ancestors-or-self ``i`` of
    its node, of ``rho w_i sign(phi_i) |phi_i|^(rho - 1)`` (paper eq. 9-10),
    minus its mean over the bins: it sums to zero, so a step along it moves
    mass without creating any. For ``rho = 1`` it is the subgradient with
    ``sign(0) = 0``.

    Parameters
    ----------
    p, q, tree, rho, axis, normalize, check_inputs
        As in :func:`emd`. With ``normalize="l1"`` the gradient is that of
        the normalised loss with respect to the raw ``p``; with
        ``normalize="softmax"``, with respect to the logits ``p``:
        ``s * (g - <g, s>)`` for ``s = softmax(p)`` and ``g`` the gradient
        with respect to ``s`` (it sums to zero too).

    Returns
    -------
    value : ndarray or NumPy scalar, shape (...)
    grad : ndarray, shape of the broadcast inputs
        Gradient with respect to ``p`` (the gradient with respect to ``q``
        is its negative).

    Examples
    --------
    >>> import numpy as np, emdtree
    >>> value, grad = emdtree.emd_value_and_grad([0.5, 0.5, 0.0], [0.0, 0.5, 0.5], rho=2)
    >>> float(value)
    0.5
    >>> grad
    array([ 1.,  0., -1.])
    >>> _, grad = emdtree.emd_value_and_grad([0.0, 0.0, 0.0], [0.0, 0.0, 1.0], normalize="softmax")
    >>> grad.round(6)  # lower the first logit, raise the last
    array([ 0.333333,  0.      , -0.333333])
    """
    if not _dispatch.is_host(p, q):
        host = _dispatch.torch_cpu({"p": p, "q": q})
        if host is not None:
            return _dispatch.torch_back(emd_value_and_grad(*host, tree, rho, axis, normalize=normalize,
                                                           check_inputs=check_inputs))
        return _dispatch.value_grad(p, q, tree, rho, axis, normalize, check_inputs, want_grad=True)
    rho = check_rho(rho)
    rows = prepare({"p": p, "q": q}, tree, axis, check_inputs, normalize, defer=True)
    value, grad = _driver.value_grad(rows, rho, want_grad=True, check=check_inputs and normalize is None)
    if normalize is not None:
        grad = _driver.normalized_grad(grad, rows)
    return restore_scalar(value, rows), restore_bins(grad, rows)


def emd_grad(
    p: Any,
    q: Any,
    tree: Tree | None = None,
    rho: float = 1.0,
    axis: int = -1,
    *,
    normalize: str | None = None,
    check_inputs: bool = True,
) -> np.ndarray:
    """Dirt-conserving gradient of EMD^rho with respect to ``p``.

    See :func:`emd_value_and_grad`, which computes the value in the same pass.

    Parameters
    ----------
    p, q, tree, rho, axis, normalize, check_inputs
        As in :func:`emd`.

    Returns
    -------
    ndarray, shape of the broadcast inputs
        Sums to zero along ``axis``.

    Examples
    --------
    >>> import emdtree
    >>> emdtree.emd_grad([1.0, 0.0, 0.0], [0.0, 0.0, 1.0], rho=1)
    array([ 1.,  0., -1.])
    """
    return emd_value_and_grad(
        p, q, tree, rho, axis, normalize=normalize, check_inputs=check_inputs
    )[1]


def phi(
    p: Any,
    q: Any,
    tree: Tree | None = None,
    axis: int = -1,
    *,
    normalize: str | None = None,
    check_inputs: bool = True,
) -> np.ndarray:
    """Mass of ``p - q`` in the subtree of every node (paper eq. 8).

    On a chain this is the cumulative sum of ``p - q``; at the root it is
    ``sum(p) - sum(q)`` (zero for balanced masses).

    Parameters
    ----------
    p, q : array_like, shape (..., n_bins, ...)
        Masses with equal totals along ``axis``, as in :func:`emd`.
    tree, axis, normalize, check_inputs
        As in :func:`emd`.

    Returns
    -------
    ndarray, shape (..., n_nodes, ...)
        The node axis replaces the bin axis; nodes in the tree's numbering.

    Examples
    --------
    >>> import emdtree
    >>> emdtree.phi([0.25, 0.25, 0.5], [0.5, 0.25, 0.25])
    array([-0.25, -0.25,  0.  ])
    """
    if not _dispatch.is_host(p, q):
        host = _dispatch.torch_cpu({"p": p, "q": q})
        if host is not None:
            return _dispatch.torch_back(phi(*host, tree, axis, normalize=normalize,
                                            check_inputs=check_inputs))
        return _dispatch.phi(p, q, tree, axis, normalize, check_inputs)
    rows = prepare({"p": p, "q": q}, tree, axis, check_inputs, normalize)
    return restore_bins(_driver.phi(rows, node_order=True), rows)


def emd_hvp(
    p: Any,
    q: Any,
    v: Any,
    tree: Tree | None = None,
    rho: float = 2.0,
    axis: int = -1,
    *,
    normalize: str | None = None,
    check_inputs: bool = True,
) -> np.ndarray:
    """Hessian-vector product of EMD^rho in mass-conserving coordinates.

    Returns ``P H P v`` where ``H = A^T diag(h) A`` is the Hessian of
    EMD^rho with respect to ``p`` (``A[i, k] = 1`` when bin ``k`` lies under
    node ``i``; ``h_i = rho (rho - 1) w_i |phi_i|^(rho - 2)``) and
    ``P = I - 11^T / n_bins``. For a mass-conserving ``v`` (summing to zero)
    it is the directional derivative of :func:`emd_grad` along ``v``.

    For ``rho = 2`` the Hessian is constant (paper eq. 12); for ``rho = 1``
    it is zero wherever it exists. For ``1 < rho < 2`` it is infinite where
    some ``phi_i = 0`` and ``v`` changes ``phi_i``: the result is then not
    finite.

    Parameters
    ----------
    p, q : array_like, shape (..., n_bins, ...)
        As in :func:`emd`.
    v : array_like, shape (..., n_bins, ...)
        Direction; broadcasts with ``p`` and ``q``.
    tree
        As in :func:`emd`.
    rho : float, default 2.0
        Exponent, >= 1.
    axis
        As in :func:`emd`.
    normalize : {None, "l1", "softmax"}, optional
        As in :func:`emd`. With a normalisation the result is the exact
        Hessian of the normalised loss with respect to the raw ``p`` (the
        logits for ``"softmax"``) times ``v``, for any ``v``: the chain
        rule through the Jacobian of the normalisation and its second
        derivative, without the projection ``P``. For ``"softmax"`` it
        is finite and generally non-zero at ``rho = 1`` too.
    check_inputs
        As in :func:`emd`.

    Returns
    -------
    ndarray, shape of the broadcast inputs

    Examples
    --------
    >>> import numpy as np, emdtree
    >>> p, q = np.array([0.6, 0.4, 0.0]), np.array([0.0, 0.4, 0.6])
    >>> emdtree.emd_hvp(p, q, np.array([1.0, 0.0, -1.0]))
    array([ 2.,  0., -2.])
    """
    if not _dispatch.is_host(p, q, v):
        host = _dispatch.torch_cpu({"p": p, "q": q, "v": v})
        if host is not None:
            return _dispatch.torch_back(emd_hvp(*host, tree, rho, axis, normalize=normalize,
                                                check_inputs=check_inputs))
        return _dispatch.hvp(p, q, v, tree, rho, axis, check_inputs, normalize=normalize)
    rho = check_rho(rho)
    rows = prepare({"p": p, "q": q, "v": v}, tree, axis, check_inputs, normalize)
    if normalize is None:
        return restore_bins(_driver.hvp(rows, rho, project_out=True), rows)
    a, v_rows = rows.arrays[0], rows.arrays[2]
    total = _total(rows)
    w = _normalize.direction(np, normalize, v_rows, a, total)
    hw = _driver.hvp(rows._replace(arrays=rows.arrays[:2] + (_rows_of(w, rows),),
                                   steps=rows.steps[:2] + (_step_of(w, rows),)), rho, project_out=True)
    g = _grad_of_normalized(rows, rho)
    out = _normalize.hvp(np, normalize, hw, v_rows, g, a, total)
    out = out if out.shape == hw.shape else np.broadcast_to(out, hw.shape)  # hw has a row per sample
    return restore_bins(np.array(out, dtype=rows.dtype), rows)


def _total(rows: Rows) -> np.ndarray | None:
    """Row totals of ``p`` before ``normalize="l1"``, as a (rows, 1) column."""
    if rows.normalize != "l1":
        return None
    return rows.totals[0].astype(rows.dtype).reshape(-1, 1)


def _rows_of(x: np.ndarray, rows: Rows) -> np.ndarray:
    out = np.ascontiguousarray(x, dtype=rows.dtype)
    out.flags.writeable = False
    return out


def _step_of(x: np.ndarray, rows: Rows) -> int:
    return 1 if x.shape[0] == rows.n_rows and rows.n_rows != 1 else 0


def _grad_of_normalized(rows: Rows, rho: float) -> np.ndarray:
    """Gradient of EMD^rho with respect to the normalised ``p``, (rows, n_bins)."""
    pq = rows._replace(arrays=rows.arrays[:2], steps=rows.steps[:2])
    return _driver.value_grad(pq, rho, want_grad=True, check=False)[1]


def emd_hessian(
    p: Any,
    q: Any,
    tree: Tree | None = None,
    rho: float = 2.0,
    axis: int = -1,
    *,
    normalize: str | None = None,
    check_inputs: bool = True,
) -> np.ndarray:
    """Dense Hessian of EMD^rho in mass-conserving coordinates, ``P H P``.

    ``H[k, l]`` is the sum of ``h_i = rho (rho - 1) w_i |phi_i|^(rho - 2)``
    over the common ancestors-or-self ``i`` of bins ``k`` and ``l``; ``P``
    removes the row and column means, so every row sums to zero. See
    :func:`emd_hvp` for the conventions at ``rho = 1`` and ``phi_i = 0``.

    Paper eq. 12 gives the Hessian of EMD^2 as this sum without the
    projection; the projected form is what finite differences of the
    dirt-conserving gradient along mass-conserving directions reproduce.

    Parameters
    ----------
    p, q, tree
        As in :func:`emd`.
    rho : float, default 2.0
        Exponent, >= 1.
    axis
        As in :func:`emd`.
    normalize : {None, "l1", "softmax"}, optional
        As in :func:`emd_hvp`: the exact Hessian with respect to the raw
        ``p`` (the logits for ``"softmax"``; its rows sum to zero, since
        adding a constant to the logits changes nothing).
    check_inputs
        As in :func:`emd`.

    Returns
    -------
    ndarray, shape (..., n_bins, n_bins)
        The batch dimensions of the broadcast inputs, then two bin axes.

    Examples
    --------
    >>> import emdtree
    >>> emdtree.emd_hessian([0.5, 0.5], [0.5, 0.5])
    array([[ 0.5, -0.5],
           [-0.5,  0.5]])
    >>> emdtree.emd_hessian([0.0, 0.0], [0.5, 0.5], normalize="softmax")  # J H J, J = diag(s) - s s^T
    array([[ 0.125, -0.125],
           [-0.125,  0.125]])
    """
    if not _dispatch.is_host(p, q):
        host = _dispatch.torch_cpu({"p": p, "q": q})
        if host is not None:
            return _dispatch.torch_back(emd_hessian(*host, tree, rho, axis, normalize=normalize,
                                                    check_inputs=check_inputs))
        return _dispatch.hessian(p, q, tree, rho, axis, check_inputs, normalize=normalize)
    rho = check_rho(rho)
    rows = prepare({"p": p, "q": q}, tree, axis, check_inputs, normalize)
    out = _driver.hessian(rows, rho)
    n = rows.tree.n_bins
    if normalize is not None:
        a = np.broadcast_to(rows.arrays[0], (rows.n_rows, n)).astype(np.float64)
        total = _total(rows)
        g = _grad_of_normalized(rows, rho).astype(np.float64)
        total = None if total is None else total.astype(np.float64)
        out = _normalize.hessian(np, normalize, out, g, a, total)
    out = out.astype(rows.dtype, copy=False).reshape(rows.batch_shape + (n, n))
    return out
