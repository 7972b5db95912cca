"""EMD^rho, its gradient and Hessian-vector product as gathers and segment sums.

The training losses of :mod:`emdtree.tensorflow` and :mod:`emdtree.jax` run
this formulation in the framework's own operations when the kernels cannot
be called (under XLA, on accelerators, on arrays sharded over devices). It
is written once here against a small table of operations (:class:`Ops`)
that each framework fills in.

Layout. Arrays are *node-major*: ``(positions, rows)``, the batch last, so
that every gather and segment sum moves whole contiguous rows of the batch
(on a CPU, XLA gathers rows of 512 floats about 3x faster than it gathers
columns, and scatters them 7x faster). The leaves that carry a bin need no
sum (their phi is the bin's value); the sums run over the other, *inner*
positions only (:class:`Plan`).

Sums. With the pointer-doubling tables ``a_0 .. a_{T-1}`` of the inner
positions in post-order (``a_t[j]`` the ``2^t``-th ancestor of ``j``, the
root its own, ``2^T > depth``; :func:`emdtree._xp._doubling`), the sum of
``c`` over the ancestors-or-self of every position is ``A c = M_{T-1} ...
M_0 c`` with ``M_t = I + G_t`` and ``G_t`` the gather by ``a_t`` (the root
holds 0). The subtree sums phi (paper eq. 8) are its transpose, ``A^T x =
M_0^T ... M_{T-1}^T x``, and ``M_t^T x = x + segment_sum(x, a_t)``, after
one segment sum of the leaves into their parents: each entry a balanced sum
of at most ``size_j`` terms, so a small phi is not swamped by the rounding
of large prefixes (there is no prefix sum here, and none of the cancellation
that :mod:`emdtree._xp` compensates). The gradient (eq. 9-10) and the
Hessian-vector product are sums over ancestors: T gathers, and one more for
the leaves. For the ImageNet tree T = 4 over 371 inner positions (of 1371);
for a chain of 1000 bins T = 10.

Speed. On a CPU (one thread, ImageNet tree, batch 512, float32) the sums
take about 1.5 ms of a value and gradient; XLA adds about as much again
fusing the two transposes between the caller's ``(rows, n_bins)`` and the
node-major layout into elementwise loops (``benchmarks/bench_losses_native.py``).
On one CPU device the kernels are faster, and the adapters use them there.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import numpy as np

from . import _xp
from ._tree import Tree

__all__ = ["Ops", "Plan", "plan", "value_grad", "hvp"]


class Ops(NamedTuple):
    """The framework operations the formulation needs (all on node-major arrays)."""

    take: Callable[[Any, Any], Any]  # rows of x at the given indices
    segment_sum: Callable[[Any, Any, int], Any]  # sums of the rows of x by segment
    zero_row: Callable[[Any], Any]  # x with a row of zeros appended
    sum0: Callable[[Any], Any]  # sum over the rows
    mean0: Callable[[Any], Any]  # mean over the rows, keeping the axis
    abs: Callable[[Any], Any]
    sign: Callable[[Any], Any]
    where: Callable[[Any, Any, Any], Any]
    constant: Callable[[np.ndarray, Any], Any]  # a NumPy array as a constant of x's dtype


class Plan(NamedTuple):
    """Index and weight arrays of a tree for node-major arrays (NumPy).

    The positions of the post-order layout split into the *leaves* that carry
    a bin (``L``, whose phi is their bin's value: no sum needed) and the
    other, *inner* positions (``I``, the root last), which keep the
    post-order. Sums run over ``I`` only: 371 of the 1371 nodes of the
    ImageNet tree.
    """

    n_inner: int  # |I|, the root included (last)
    leaf_bins: np.ndarray | None  # (|L|,) bin of each leaf; None when they are the bins 0 .. n_bins - 1
    leaf_parent: np.ndarray  # (|L|,) inner index of each leaf's parent
    inner_bins: np.ndarray | None  # (|I|,) bin of each inner position (n_bins: none); None if no inner bins
    tables: tuple[np.ndarray, ...]  # doubling tables a_0 .. a_{T-1} of the inner tree, each (|I|,)
    up: np.ndarray  # (n_bins,) inner index of each bin's node, or of its parent for a leaf
    own: np.ndarray | None  # (n_bins,) leaf index of each bin (|L|: not a leaf); None with leaf_bins None
    leaf_weight: np.ndarray  # (|L|, 1) float64 edge costs
    inner_weight: np.ndarray  # (|I| - 1, 1) float64 edge costs of the non-root inner positions
    leaf_curv_weight: np.ndarray  # the same, 0 on edges with all bins (or none) below
    inner_curv_weight: np.ndarray


def plan(tree: Tree) -> Plan:
    """The node-major plan of ``tree``, computed once and kept on the tree (as :mod:`emdtree._xp` keeps its own)."""
    cached = tree.__dict__.get("_native_plan")
    if cached is not None:
        return cached
    lay = tree.layout
    n, n_bins = tree.n_nodes, tree.n_bins
    is_leaf = (lay.size == 1) & (lay.bin_at >= 0)
    is_leaf[-1] = False  # the root is inner, even alone
    leaves, inner = np.flatnonzero(is_leaf), np.flatnonzero(~is_leaf)
    inner_index = np.full(n, -1, dtype=np.int64)
    inner_index[inner] = np.arange(inner.size)
    inner_parent = inner_index[lay.parent[inner]]  # -1 at the root (last)
    depth = int(lay.depth[inner].max(initial=0))
    tables = _xp._doubling(inner_parent, depth) or [np.full(inner.size, inner.size - 1)]
    leaf_bins = lay.bin_at[leaves]
    identity = leaf_bins.size == n_bins and bool(np.all(leaf_bins == np.arange(n_bins)))
    node = lay.bin_position  # position of each bin
    up = np.where(is_leaf[node], inner_index[lay.parent[node]], inner_index[node])
    own = np.full(n_bins, leaves.size, dtype=np.int64)
    own[leaf_bins] = np.arange(leaves.size)
    inner_bins = np.where(lay.bin_at[inner] >= 0, lay.bin_at[inner], n_bins)
    weight = np.asarray(lay.weight, dtype=np.float64)
    below = lay.bins_below
    curv = np.where((below > 0) & (below < n_bins), weight, 0.0)
    idx = np.int32 if n + n_bins < 2**31 else np.int64
    out = Plan(
        n_inner=int(inner.size),
        leaf_bins=None if identity else leaf_bins.astype(idx),
        leaf_parent=inner_index[lay.parent[leaves]].astype(idx),
        inner_bins=inner_bins.astype(idx) if np.any(inner_bins < n_bins) else None,
        tables=tuple(t.astype(idx) for t in tables),
        up=up.astype(idx),
        own=None if identity else own.astype(idx),
        leaf_weight=weight[leaves][:, None],
        inner_weight=weight[inner][:-1, None],
        leaf_curv_weight=curv[leaves][:, None],
        inner_curv_weight=curv[inner][:-1, None],
    )
    tree.__dict__["_native_plan"] = out
    return out


def _subtree(ops: Ops, d: Any, pl: Plan) -> tuple[Any, Any]:
    """phi of the bin values ``d`` (n_bins, rows): at the leaves, (|L|, rows), and
    at the non-root inner positions, (|I| - 1, rows)."""
    leaf = d if pl.leaf_bins is None else ops.take(d, pl.leaf_bins)
    x = ops.segment_sum(leaf, pl.leaf_parent, pl.n_inner)
    if pl.inner_bins is not None:
        x = x + ops.take(ops.zero_row(d), pl.inner_bins)
    for a in reversed(pl.tables):
        x = x + ops.segment_sum(x, a, pl.n_inner)
    return leaf, x[:-1]


def _ancestors(ops: Ops, leaf: Any, inner: Any, pl: Plan) -> Any:
    """Sums over the ancestors-or-self of every bin, (n_bins, rows), of values at the
    leaves, (|L|, rows), and at the non-root inner positions, (|I| - 1, rows)."""
    s = ops.zero_row(inner)  # the root, last, adds nothing and ends every path
    for a in pl.tables:
        s = s + ops.take(s, a)
    up = ops.take(s, pl.up)
    if pl.own is None:
        return leaf + up
    return ops.take(ops.zero_row(leaf), pl.own) + up


def _edges(ops: Ops, f: Any, w: Any, rho: float) -> tuple[Any, Any]:
    """``sum w |f|^rho`` over the rows of ``f`` and the slope ``rho w sign(f) |f|^(rho-1)``."""
    if rho == 2.0:
        return ops.sum0(w * (f * f)), (w + w) * f
    if rho == 1.0:
        return ops.sum0(w * ops.abs(f)), w * ops.sign(f)
    a = ops.abs(f)
    return ops.sum0(w * a**rho), (rho * w) * ops.sign(f) * a ** (rho - 1.0)


def value_grad(ops: Ops, d: Any, pl: Plan, rho: float, want_grad: bool) -> tuple[Any, Any | None]:
    """EMD^rho of every column of ``d = p - q`` (n_bins, rows), and its dirt-conserving gradient.

    Returns the values, (rows,), and the gradient, (n_bins, rows): the sum over
    ancestors-or-self of ``rho w sign(phi) |phi|^(rho-1)`` (paper eq. 9-10,
    ``sign(0) = 0``) minus its mean over the bins, as the kernels compute it.
    """
    leaf, inner = _subtree(ops, d, pl)
    value_l, slope_l = _edges(ops, leaf, ops.constant(pl.leaf_weight, d), rho)
    value_i, slope_i = _edges(ops, inner, ops.constant(pl.inner_weight, d), rho)
    value = value_l + value_i
    if not want_grad:
        return value, None
    g = _ancestors(ops, slope_l, slope_i, pl)
    return value, g - ops.mean0(g)


def _curvature_times(ops: Ops, psi: Any, phi: Any, cw: Any, rho: float) -> Any:
    """``rho (rho-1) cw |phi|^(rho-2) psi`` for rho not 1 or 2, 0 where psi or cw is 0.

    ``|phi|^(rho-2)`` is infinite at phi = 0 for rho < 2: select before
    multiplying (0 * inf is NaN).
    """
    a = ops.abs(phi)
    wr = (rho * (rho - 1.0)) * cw
    if rho > 2.0:
        return wr * psi * a ** (rho - 2.0)
    zero = psi * 0
    keep = (psi != 0) & (wr != 0)
    curv = ops.where(a == 0, zero + np.inf, ops.where(a == 0, zero + 1, a) ** (rho - 2.0))
    return ops.where(keep, wr * psi * ops.where(keep, curv, zero), zero)


def hvp(ops: Ops, d: Any, v: Any, pl: Plan, rho: float) -> Any:
    """``P H P v`` for every column, (n_bins, rows): the derivative of the gradient along ``v``.

    ``d = p - q`` and ``v`` are (n_bins, rows). As the kernels
    (:func:`emdtree.emd_hvp`): ``H`` sums ``rho (rho-1) w_i |phi_i|^(rho-2)``
    over the edges common to both bins' paths (paper eq. 12 for rho = 2);
    edges with all bins (or none) below are dropped, as ``P`` removes them;
    a direction that leaves ``phi_i`` unchanged adds nothing even where
    ``|phi_i|^(rho-2)`` is infinite; zero for rho = 1.
    """
    if rho == 1.0:
        return v * 0
    psi_l, psi_i = _subtree(ops, v - ops.mean0(v), pl)
    cw_l, cw_i = ops.constant(pl.leaf_curv_weight, v), ops.constant(pl.inner_curv_weight, v)
    if rho == 2.0:
        t_l, t_i = (cw_l + cw_l) * psi_l, (cw_i + cw_i) * psi_i
    else:
        phi_l, phi_i = _subtree(ops, d, pl)
        t_l = _curvature_times(ops, psi_l, phi_l, cw_l, rho)
        t_i = _curvature_times(ops, psi_i, phi_i, cw_i, rho)
    out = _ancestors(ops, t_l, t_i, pl)
    return out - ops.mean0(out)
