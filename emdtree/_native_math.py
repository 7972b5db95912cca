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
    a bin, whose phi is their bin's value (no sum needed), and the other,
    *inner* positions, which keep the post-order (the root last). Sums run
    over the inner positions only: 371 of the 1371 nodes of the ImageNet
    tree. Leaves are addressed through their bins, so that the caller's bin
    order needs no permutation.
    """

    n_inner: int  # inner positions, the root included (last)
    up: np.ndarray  # (n_bins,) inner index of each bin's parent (a leaf) or of its own node (inner)
    tables: tuple[np.ndarray, ...]  # doubling tables a_0 .. a_{T-1} of the inner tree, each (n_inner,)
    bin_weight: np.ndarray  # (n_bins, 1) float64 cost of each leaf bin's edge; 0 for inner bins
    inner_weight: np.ndarray  # (n_inner - 1, 1) float64 edge costs of the non-root inner positions
    bin_curv_weight: np.ndarray  # the same, 0 on edges with all bins (or none) below
    inner_curv_weight: np.ndarray


def plan(tree: Tree) -> Plan:
    """The node-major plan of ``tree``, computed once and kept on the tree (as
    :mod:`emdtree._xp` keeps its own)."""
    cached = tree.__dict__.get("_native_plan")
    if cached is not None:
        return cached
    lay = tree.layout
    n, n_bins = tree.n_nodes, tree.n_bins
    is_leaf = (lay.size == 1) & (lay.bin_at >= 0)
    is_leaf[-1] = False  # the root is inner, even alone
    inner = np.flatnonzero(~is_leaf)
    inner_index = np.full(n, -1, dtype=np.int64)
    inner_index[inner] = np.arange(inner.size)
    inner_parent = inner_index[lay.parent[inner]]  # -1 at the root (last)
    depth = int(lay.depth[inner].max(initial=0))
    tables = _xp._doubling(inner_parent, depth) or [np.full(inner.size, inner.size - 1)]
    node = lay.bin_position  # position of each bin
    leaf_bin = is_leaf[node]
    up = np.where(leaf_bin, inner_index[lay.parent[node]], inner_index[node])
    weight = np.asarray(lay.weight, dtype=np.float64)
    below = lay.bins_below
    curv = np.where((below > 0) & (below < n_bins), weight, 0.0)
    idx = np.int32 if n + n_bins < 2**31 else np.int64
    out = Plan(
        n_inner=int(inner.size),
        up=up.astype(idx),
        tables=tuple(t.astype(idx) for t in tables),
        bin_weight=np.where(leaf_bin, weight[node], 0.0)[:, None],
        inner_weight=weight[inner][:-1, None],
        bin_curv_weight=np.where(leaf_bin, curv[node], 0.0)[:, None],
        inner_curv_weight=curv[inner][:-1, None],
    )
    tree.__dict__["_native_plan"] = out
    return out


def _subtree(ops: Ops, d: Any, pl: Plan) -> Any:
    """phi of the bin values ``d`` (n_bins, rows) at the non-root inner positions,
    (n_inner - 1, rows); at a leaf, phi is its bin's value."""
    x = ops.segment_sum(d, pl.up, pl.n_inner)  # leaves into their parents, inner bins into their nodes
    for a in reversed(pl.tables):
        x = x + ops.segment_sum(x, a, pl.n_inner)
    return x[:-1]


def _ancestors(ops: Ops, at_bins: Any, inner: Any, pl: Plan) -> Any:
    """Sums over the ancestors-or-self of every bin, (n_bins, rows), of values at the
    leaf bins, (n_bins, rows) (0 at inner bins), and at the non-root inner positions,
    (n_inner - 1, rows)."""
    s = ops.zero_row(inner)  # the root, last, adds nothing and ends every path
    for a in pl.tables:
        s = s + ops.take(s, a)
    return at_bins + ops.take(s, pl.up)


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
    inner = _subtree(ops, d, pl)
    value_b, slope_b = _edges(ops, d, ops.constant(pl.bin_weight, d), rho)
    value_i, slope_i = _edges(ops, inner, ops.constant(pl.inner_weight, d), rho)
    value = value_b + value_i
    if not want_grad:
        return value, None
    g = _ancestors(ops, slope_b, slope_i, pl)
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
    psi_b = v - ops.mean0(v)
    psi_i = _subtree(ops, psi_b, pl)
    cw_b, cw_i = ops.constant(pl.bin_curv_weight, v), ops.constant(pl.inner_curv_weight, v)
    if rho == 2.0:
        t_b, t_i = (cw_b + cw_b) * psi_b, (cw_i + cw_i) * psi_i
    else:
        t_b = _curvature_times(ops, psi_b, d, cw_b, rho)
        t_i = _curvature_times(ops, psi_i, _subtree(ops, d, pl), cw_i, rho)
    out = _ancestors(ops, t_b, t_i, pl)
    return out - ops.mean0(out)
