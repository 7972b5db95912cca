"""Public NumPy API: EMD^rho on a tree, its gradient, Hessian and phi.

Notation (Martinez et al., section 3-4): for node ``i`` with edge cost ``w_i``
to its parent, ``phi_i`` is the total of ``p - q`` over the bins in the subtree
of ``i`` and

    EMD^rho(p, q) = sum over non-root i of w_i |phi_i|^rho.

``rho = 1`` is the exact EMD (Wasserstein-1 under the tree's path metric);
``rho = 2`` is the paper's relaxed, smooth loss.
"""

from __future__ import annotations

import os
from typing import Any

import numba
import numpy as np

from ._inputs import Rows, check_rho, check_stats, prepare, restore_bins, restore_scalar
from ._kernels import chain, cpu, dense
from ._kernels import rows as rows_kernel
from ._tree import Tree

__all__ = ["emd", "emd_grad", "emd_value_and_grad", "phi", "emd_hvp", "emd_hessian"]

# Work (rows x nodes) from which the kernels run across Numba's threads. Measured
# with benchmarks/bench_threads.py on a 2-core machine shared with other work:
# one thread takes about 1 ns per row and node (ImageNet tree, float32); two
# threads halve that when the second core is idle, but a busy second core was
# seen to add 5-8 ms to a parallel call whatever its size. At 16M the serial
# time (~16 ms) is large enough that the parallel call is never slower, and up
# to 1.9x faster when the core is free. Override with EMDTREE_PARALLEL_MIN_WORK.
PARALLEL_MIN_WORK = int(os.environ.get("EMDTREE_PARALLEL_MIN_WORK", 16_000_000))

# Fewer samples than this (alone, or left over after full blocks) are swept one at
# a time: measured break-even against a 32-lane block is 8 samples on the ImageNet
# tree and 8-16 on trees of 2e4-2e5 nodes, where the block's buffer leaves the cache.
ROW_KERNEL_MAX = 8


def _mode(rho: float) -> int:
    if rho == 1.0:
        return cpu.MODE_ONE
    if rho == 2.0:
        return cpu.MODE_TWO
    return cpu.MODE_GENERAL


def _consts(rho: float, dtype: np.dtype) -> np.ndarray:
    return np.array([rho, rho - 1.0, rho * (rho - 1.0), rho - 2.0], dtype=dtype)


def _kernel_arrays(tree: Tree, dtype: np.dtype) -> tuple[np.ndarray, ...]:
    """Layout arrays in the kernels' argument order, converted once per dtype."""
    cache = tree.__dict__.setdefault("_kernel_arrays", {})
    key = np.dtype(dtype).str
    if key not in cache:
        lay = tree.layout
        cache[key] = (
            lay.parent,
            np.ascontiguousarray(lay.weight, dtype=dtype),
            lay.bin_position,
            np.flatnonzero(lay.bin_at < 0).astype(np.int64),
            np.ascontiguousarray(lay.bins_below, dtype=dtype),
        )
    return cache[key]


def _launch(serial, parallel, rows: Rows, *args) -> None:
    """Run a kernel on one thread, or across Numba's threads for large enough work."""
    if rows.n_rows > cpu.BLOCK and rows.n_rows * rows.tree.n_nodes >= PARALLEL_MIN_WORK:
        n_threads = numba.get_num_threads()
        if n_threads > 1:
            parallel(*args, n_threads)
            return
    serial(*args)


def _value_grad(
    rows: Rows, rho: float, want_grad: bool, check: bool
) -> tuple[np.ndarray, np.ndarray | None]:
    """Run the fused kernel; validate p and q from the statistics it gathers."""
    (p, q), (ps, qs) = rows.arrays, rows.steps
    parent, weight, bin_pos, non_bin, _ = _kernel_arrays(rows.tree, rows.dtype)
    n_rows, n_bins = rows.n_rows, rows.tree.n_bins
    value = np.empty(n_rows, dtype=rows.dtype)
    grad = np.empty(n_rows * n_bins if want_grad else 0, dtype=rows.dtype)
    totals = np.empty((n_rows, 2), dtype=np.float64)
    mode = _mode(rho)
    consts = _consts(rho, rows.dtype)
    pf, qf = p.reshape(-1), q.reshape(-1)
    if rows.tree._is_canonical_chain and mode != cpu.MODE_GENERAL:
        low = np.empty(n_rows, dtype=np.float64)
        _launch(chain.chain_value_grad_serial, chain.chain_value_grad_parallel, rows,
                pf, qf, ps, qs, n_rows, weight, mode, want_grad, value, grad, totals, low)
    else:
        # full blocks of BLOCK samples through the blocked kernel, a few left-over
        # samples one at a time (benchmarks/bench_rows.py)
        n_blocked = n_rows if n_rows % cpu.BLOCK >= ROW_KERNEL_MAX else n_rows - n_rows % cpu.BLOCK
        low = np.empty((n_blocked + cpu.BLOCK - 1) // cpu.BLOCK + n_rows - n_blocked, dtype=np.float64)
        if n_blocked:
            low_blocks = np.empty((n_blocked + cpu.BLOCK - 1) // cpu.BLOCK, dtype=rows.dtype)
            _launch(cpu.value_grad_serial, cpu.value_grad_parallel, rows,
                    pf, qf, ps, qs, n_blocked, parent, weight, bin_pos, non_bin,
                    mode, consts, want_grad, value, grad, totals, low_blocks)
            low[:low_blocks.shape[0]] = low_blocks
        if n_blocked < n_rows:
            k = n_blocked * n_bins
            rest = slice(n_blocked, None)
            rows_kernel.value_grad_rows(
                pf[k * ps:], qf[k * qs:], ps, qs, n_rows - n_blocked, parent, weight, bin_pos, non_bin,
                mode, consts, want_grad, value[rest], grad[k if want_grad else 0:], totals[rest],
                low[low.shape[0] - (n_rows - n_blocked):],
            )
    if check:
        check_stats(rows, totals, low)
    return value, (grad.reshape(n_rows, n_bins) if want_grad else None)


def _normalized_grad(grad: np.ndarray, rows: Rows) -> np.ndarray:
    """Chain rule through p -> p / sum(p): (g - <g, p/S>) / S for each row."""
    p_unit, total = rows.arrays[0], rows.totals[0]
    inner = np.einsum("rk,rk->r", grad, np.broadcast_to(p_unit, grad.shape))
    return (grad - inner[:, None]) / total.astype(grad.dtype)[:, None]


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
    normalize : {None, "l1"}, optional
        ``"l1"`` divides ``p`` and ``q`` by their totals first, so that
        histograms of counts can be compared as distributions.
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
    """
    rho = check_rho(rho)
    rows = prepare({"p": p, "q": q}, tree, axis, check_inputs, normalize, defer=True)
    value, _ = _value_grad(rows, rho, want_grad=False, check=check_inputs and normalize is None)
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
        the normalised loss with respect to the raw ``p``.

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
    """
    rho = check_rho(rho)
    rows = prepare({"p": p, "q": q}, tree, axis, check_inputs, normalize, defer=True)
    value, grad = _value_grad(rows, rho, want_grad=True, check=check_inputs and normalize is None)
    if normalize is not None:
        grad = _normalized_grad(grad, rows)
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
    rows = prepare({"p": p, "q": q}, tree, axis, check_inputs, normalize)
    return restore_bins(_phi(rows, node_order=True), rows)


def _phi(rows: Rows, node_order: bool) -> np.ndarray:
    """phi of every row, (n_rows, n_nodes), in node order or in layout positions."""
    (pa, qa), (ps, qs) = rows.arrays, rows.steps
    parent, _, bin_pos, non_bin, _ = _kernel_arrays(rows.tree, rows.dtype)
    n_nodes = rows.tree.n_nodes
    columns = rows.tree.layout.position if node_order else np.arange(n_nodes, dtype=np.int64)
    out = np.empty(rows.n_rows * n_nodes, dtype=rows.dtype)
    args = (pa.reshape(-1), qa.reshape(-1), ps, qs, rows.n_rows, parent, bin_pos, non_bin, columns, out)
    if rows.n_rows < ROW_KERNEL_MAX:
        rows_kernel.phi_rows(*args)
    else:
        _launch(cpu.phi_serial, cpu.phi_parallel, rows, *args)
    return out.reshape(rows.n_rows, n_nodes)


def emd_hvp(
    p: Any,
    q: Any,
    v: Any,
    tree: Tree | None = None,
    rho: float = 2.0,
    axis: int = -1,
    *,
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
    tree, axis, check_inputs
        As in :func:`emd`.
    rho : float, default 2.0
        Exponent, >= 1.

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
    rho = check_rho(rho)
    rows = prepare({"p": p, "q": q, "v": v}, tree, axis, check_inputs)
    return restore_bins(_hvp(rows, rho, project_out=True), rows)


def _hvp(rows: Rows, rho: float, project_out: bool) -> np.ndarray:
    """``P H P v`` (or ``H P v``, the transposed Jacobian of the projected gradient
    applied to ``v``, for reverse-mode second derivatives) as (n_rows, n_bins)."""
    out = np.zeros(rows.n_rows * rows.tree.n_bins, dtype=rows.dtype)
    if rho != 1.0:
        (pa, qa, va), (ps, qs, vs) = rows.arrays, rows.steps
        parent, weight, bin_pos, non_bin, below = _kernel_arrays(rows.tree, rows.dtype)
        _launch(
            cpu.hvp_serial, cpu.hvp_parallel, rows,
            pa.reshape(-1), qa.reshape(-1), va.reshape(-1), ps, qs, vs, rows.n_rows, parent, weight,
            bin_pos, non_bin, below, _mode(rho), _consts(rho, rows.dtype), project_out, out,
        )
    return out.reshape(rows.n_rows, rows.tree.n_bins)


def emd_hessian(
    p: Any,
    q: Any,
    tree: Tree | None = None,
    rho: float = 2.0,
    axis: int = -1,
    *,
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
    """
    rho = check_rho(rho)
    rows = prepare({"p": p, "q": q}, tree, axis, check_inputs)
    tree_, n = rows.tree, rows.tree.n_bins
    lay = tree_.layout
    out = np.zeros((rows.n_rows, n, n), dtype=np.float64)
    if rho != 1.0:
        mode = _mode(rho)
        if mode == cpu.MODE_TWO:
            # constant (paper eq. 12): one matrix, copied to every sample
            phi_pos = np.zeros((1, tree_.n_nodes), dtype=np.float64)
            single = np.empty((1, n, n), dtype=np.float64)
            dense.hessian_batch_serial(phi_pos, lay.weight, lay.bins_below, lay.parent, lay.size, lay.bin_at,
                                       lay.bin_position, mode, rho, single)
            out[:] = single
        else:
            phi_pos = _phi(rows, node_order=False)
            big = rows.n_rows > 1 and rows.n_rows * n * n >= PARALLEL_MIN_WORK
            fill = dense.hessian_batch if big and numba.get_num_threads() > 1 else dense.hessian_batch_serial
            fill(phi_pos, lay.weight, lay.bins_below, lay.parent, lay.size, lay.bin_at, lay.bin_position,
                 mode, rho, out)
    out = out.astype(rows.dtype, copy=False).reshape(rows.batch_shape + (n, n))
    return out
