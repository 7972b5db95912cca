"""The reference math: phi, EMD^rho, its gradient, Hessian-vector product and Hessian.

Written once, with Array-API operations and a small table of what the
standard lacks (:class:`Ops`, filled per library in
:mod:`emdtree.engine.backends`), it serves the NumPy first-call pass, the
Array-API door (JAX, array-api-strict and other namespaces), and the
framework-native losses (JAX under XLA, TensorFlow graphs). The Numba and
CUDA kernels are measured specialisations of the same sums.

Layout. Arrays are *node-major*: ``(positions, rows)``, the batch last, so
that every gather and segment sum moves whole contiguous rows of the batch
(on a CPU, XLA gathers rows of 512 floats about 3x faster than it gathers
columns, and scatters them 7x faster). The leaves that carry a bin need no
sum (their phi is the bin's value); the sums run over the other, *inner*
positions only (:class:`~emdtree.engine.plan.NodeMajor`). For row-major
callers, :func:`value_grad_rows` keeps only the tree sums node-major: the
framework-native losses, whose inputs and gradients are row-major, so pay
two plain transposes (under XLA on a CPU, a transpose fused with arithmetic
costs about 2.5x a plain one).

Sums. With the pointer-doubling tables ``a_0 .. a_{T-1}`` of the inner
positions in post-order (``a_t[j]`` the ``2^t``-th ancestor of ``j``, the
root its own, ``2^T > depth``), the sum of ``c`` over the ancestors-or-self
of every position is ``A c = M_{T-1} ... M_0 c`` with ``M_t = I + G_t`` and
``G_t`` the gather by ``a_t`` (the root holds 0). The subtree sums phi
(paper eq. 8) are its transpose, ``A^T x = M_0^T ... M_{T-1}^T x``, and
``M_t^T x = x + segment_sum(x, a_t)``, after one segment sum of the leaves
into their parents: each entry a balanced sum of at most ``size_j`` terms,
so a small phi is not swamped by the rounding of large prefixes (a prefix
sum over the layout, the other whole-array formulation, flips the sign of
small phi in float32: a gradient error of 0.33 at rho = 1 on the ImageNet
tree). For the ImageNet tree T = 4 over 371 inner positions (of 1371); for
a chain of 1000 bins T = 10. A library may replace the two sums
(``Ops.subtree``, ``Ops.ancestors``): NumPy uses SciPy sparse products and,
on a chain, cumulative sums, in float64.

Conventions, as the kernels: the gradient is dirt-conserving (the sum over
ancestors-or-self of ``rho w sign(phi) |phi|^(rho-1)``, paper eq. 9-10,
minus its mean over the bins) with ``sign(0) = 0``; its derivative is
``P H P`` with ``P = I - 11^T/n``; no ``0 * inf`` is formed at ``phi = 0``.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import numpy as np

from .plan import TreePlan

__all__ = ["Ops", "phi", "value_grad", "value_grad_rows", "hvp", "hessian"]


class Ops(NamedTuple):
    """What the formulation needs beyond element-wise arithmetic, per library.

    All arrays are node-major. ``index(plan, name, like)`` gives the plan's
    index array ``name`` (a field of :class:`~emdtree.engine.plan.NodeMajor`,
    or ``"hessian_index"``) in the form ``take`` expects, ``segments(plan,
    name, like)`` in the form ``segment_sum`` expects; both may cache in the
    plan (:meth:`~emdtree.engine.plan.TreePlan.converted`).
    """

    take: Callable[[Any, Any], Any]  # rows of x at the given indices
    segment_sum: Callable[[Any, Any, int], Any]  # (x, segments, n): sums of the rows of x by segment
    concat0: Callable[[list], Any]  # arrays stacked along the rows
    zero_row: Callable[[Any], Any]  # x with a row of zeros appended
    reshape: Callable[[Any, tuple], Any]
    sum0: Callable[[Any], Any]  # sum over the rows
    mean0: Callable[[Any], Any]  # mean over the rows, keeping the axis
    abs: Callable[[Any], Any]
    sign: Callable[[Any], Any]
    where: Callable[[Any, Any, Any], Any]
    constant: Callable[[np.ndarray, Any], Any]  # a NumPy array as a constant of x's dtype and device
    index: Callable[[TreePlan, str, Any], Any]
    segments: Callable[[TreePlan, str, Any], Any]
    # (x (n_bins, rows), plan) -> subtree sums at every inner position, (n_inner, rows)
    subtree: Callable[[Any, TreePlan], Any] | None = None
    # (s (n_inner, rows), plan) -> sums of s over the ancestors-or-self of every inner position;
    # may overwrite s
    ancestors: Callable[[Any, TreePlan], Any] | None = None
    # For the row-major entry (value_grad_rows): a 2-D transpose, the sum and the mean over the
    # last axis (keeping it for the mean); None: that entry runs node-major between two transposes
    # (or, without a transpose, is not offered)
    transpose: Callable[[Any], Any] | None = None
    sum1: Callable[[Any], Any] | None = None
    mean1: Callable[[Any], Any] | None = None
    # x itself, computed once: a compiler that fuses a chain of gathers into each of its uses
    # recomputes every step for every element of the use (XLA: 16 reads per element of the
    # ancestors' sums of the ImageNet tree where one is needed); None: nothing to do
    materialize: Callable[[Any], Any] | None = None
    # (at_bins, s, plan) -> the sums over the ancestors-or-self of every bin, (n_bins, rows), from
    # the values at the bin rows and the inner sums s (n_inner, rows) (_ancestors); may overwrite s
    bins_from: Callable[[Any, Any, TreePlan], Any] | None = None


def _subtree(ops: Ops, d: Any, plan: TreePlan) -> Any:
    """Subtree sums of the bin values ``d`` (n_bins, rows) at the inner positions, (n_inner, rows),
    the last (the root's) not to be used; at a leaf, phi is its bin's value."""
    if ops.subtree is not None:
        return ops.subtree(d, plan)
    n_inner = plan.node_major.n_inner
    x = ops.segment_sum(d, ops.segments(plan, "up", d), n_inner)  # leaves into parents, inner bins own
    for a in reversed(ops.segments(plan, "tables", d)):
        x = x + ops.segment_sum(x, a, n_inner)
    return x


def _bin_rows(ops: Ops, x: Any, plan: TreePlan) -> Any:
    """The bin rows of ``x`` (n_bins, rows): all of them, or the leaf bins only
    (:class:`~emdtree.engine.plan.NodeMajor`), where the bins' own edges are."""
    if plan.node_major.leaf_bins is None:
        return x
    return ops.take(x, ops.index(plan, "leaf_bins", x))


def _ancestors(ops: Ops, at_bins: Any, inner: Any, plan: TreePlan) -> tuple[Any, Any]:
    """Sums over the ancestors-or-self of every bin, (n_bins, rows), of values at the
    bin rows (0 at inner bins) and at the non-root inner positions, (n_inner - 1, rows);
    and the sums at every inner position, (n_inner, rows)."""
    s = _ancestor_sums(ops, inner, plan)
    if ops.bins_from is not None:
        return ops.bins_from(at_bins, s, plan), s
    above = ops.take(s, ops.index(plan, "up", s))
    if plan.node_major.leaf_bins is None:
        return at_bins + above, s
    return above + ops.take(ops.zero_row(at_bins), ops.index(plan, "leaf_slot", s)), s


def _ancestor_sums(ops: Ops, inner: Any, plan: TreePlan) -> Any:
    """Sums over the ancestors-or-self of every inner position, (n_inner, rows), of values at
    the non-root inner positions, (n_inner - 1, rows)."""
    s = ops.zero_row(inner)  # the root, last, adds nothing and ends every path
    if ops.ancestors is not None:
        s = ops.ancestors(s, plan)
    else:
        for a in ops.index(plan, "tables", s):
            s = s + ops.take(s, a)
    return s if ops.materialize is None else ops.materialize(s)


def _edges(ops: Ops, f: Any, w: Any, rho: float, total: Callable | None = None) -> tuple[Any, Any]:
    """``sum w |f|^rho`` over the rows of ``f`` (over its last axis with ``total=ops.sum1``)
    and the slope ``rho w sign(f) |f|^(rho-1)``."""
    total = ops.sum0 if total is None else total
    if rho == 2.0:
        return total(w * (f * f)), (w + w) * f
    if rho == 1.0:
        sign = ops.sign(f)
        # |f| written as f sign(f): automatic differentiation then gives sign(0) = 0,
        # as the kernels do, where the derivative of abs at 0 may be 1
        return total(w * (f * sign)), w * sign
    a = ops.abs(f)
    # a ** rho rather than a * a ** (rho - 1), whose derivative is 0 * inf at f = 0;
    # a ** (rho - 1) is finite and 0 there (rho > 1)
    return total(w * a**rho), (rho * w) * ops.sign(f) * a ** (rho - 1.0)


def phi(ops: Ops, d: Any, plan: TreePlan, source: Any = None) -> Any:
    """phi of the bin values ``d = p - q`` (n_bins, rows) at every node, (n_nodes, rows), node order.

    ``source`` (rows of ``[bins; inner]``, in the form of ``ops.index``) picks
    other positions, for example ``plan.node_major.position_source[positions]``.
    """
    # the doubling steps add the root to itself (a_t maps it to itself): its phi,
    # the total of d, is summed alone
    total = ops.reshape(ops.sum0(d), (1, -1))
    every = ops.concat0([d, _subtree(ops, d, plan)[:-1, ...], total])
    return ops.take(every, ops.index(plan, "node_source", d) if source is None else source)


def value_grad(ops: Ops, d: Any, plan: TreePlan, rho: float, want_grad: bool,
               inner: Any = None) -> tuple[Any, Any | None]:
    """EMD^rho of every column of ``d = p - q`` (n_bins, rows), and its dirt-conserving gradient.

    Returns the values, (rows,), and the gradient, (n_bins, rows) (None
    without ``want_grad``): the sum over ancestors-or-self of
    ``rho w sign(phi) |phi|^(rho-1)`` (paper eq. 9-10, ``sign(0) = 0``) minus
    its mean over the bins, as the kernels compute it. ``inner``: phi at the
    inner positions, (n_inner, rows), where the caller has formed it (the
    NumPy pass, in the kernels' order).
    """
    nm = plan.node_major
    inner = (_subtree(ops, d, plan) if inner is None else inner)[:-1, ...]
    value_b, slope_b = _edges(ops, _bin_rows(ops, d, plan), ops.constant(nm.bin_weight, d), rho)
    value_i, slope_i = _edges(ops, inner, ops.constant(nm.inner_weight, d), rho)
    value = value_b + value_i
    if not want_grad:
        return value, None
    g, _ = _ancestors(ops, slope_b, slope_i, plan)
    return value, g - ops.mean0(g)


def value_grad_rows(ops: Ops, d: Any, plan: TreePlan, rho: float, want_grad: bool,
                    project: bool = True) -> tuple[Any, Any | None]:
    """:func:`value_grad` of row-major differences ``d = p - q`` (rows, n_bins): the values,
    (rows,), and the gradient, (rows, n_bins) (without ``project``, its mean over the
    bins is taken out).

    Only the tree sums run node-major: the bins' own edges, the gradient's
    sum and its mean are element-wise and row-wise over ``d``, so that one
    transpose of ``d`` goes in and one of the ancestors' sums (``n_bins`` rows
    gathered from ``n_inner``) comes out, each a plain copy that a compiler
    does not fuse with arithmetic (XLA on a CPU: a transposing fusion is
    about 2.5x slower than the copy). Where the bin rows are the leaf bins
    only (:class:`~emdtree.engine.plan.NodeMajor`: a chain), or the library
    has no row-wise operations, :func:`value_grad` runs between transposes.
    Needs ``ops.transpose``.
    """
    nm = plan.node_major
    if nm.leaf_bins is not None or ops.sum1 is None:
        value, grad = value_grad(ops, ops.transpose(d), plan, rho, want_grad)
        return value, (None if grad is None else ops.transpose(grad))
    inner = _subtree(ops, ops.transpose(d), plan)[:-1, ...]
    bin_weight = ops.reshape(ops.constant(nm.bin_weight, d), (1, -1))
    value_b, slope_b = _edges(ops, d, bin_weight, rho, ops.sum1)
    value_i, slope_i = _edges(ops, inner, ops.constant(nm.inner_weight, d), rho)
    value = value_b + value_i
    if not want_grad:
        return value, None
    s = _ancestor_sums(ops, slope_i, plan)
    g = slope_b + ops.transpose(ops.take(s, ops.index(plan, "up", s)))
    return value, (g - ops.mean1(g) if project else g)


def _curvature(ops: Ops, phi_: Any, cw: Any, rho: float) -> Any:
    """``rho (rho-1) cw |phi|^(rho-2)`` for rho not 1 or 2: infinite at phi = 0 for rho < 2,
    without evaluating ``0 ** negative``; 0 where ``cw`` is 0."""
    a = ops.abs(phi_)
    wr = (rho * (rho - 1.0)) * cw
    zero = a * 0
    if rho > 2.0:
        return wr * a ** (rho - 2.0)
    curv = ops.where(a == 0, zero + np.inf, ops.where(a == 0, zero + 1, a) ** (rho - 2.0))
    return ops.where(wr != 0, wr * ops.where(wr != 0, curv, zero), zero)


def _curvature_times(ops: Ops, psi: Any, phi_: Any, cw: Any, rho: float) -> Any:
    """``rho (rho-1) cw |phi|^(rho-2) psi``, 0 where psi or cw is 0 (0 * inf is NaN)."""
    if rho > 2.0:
        return _curvature(ops, phi_, cw, rho) * psi
    zero = psi * 0
    keep = (psi != 0) & ((zero + cw) != 0)
    return ops.where(keep, psi * ops.where(keep, _curvature(ops, phi_, cw, rho), zero), zero)


def hvp(ops: Ops, d: Any, v: Any, plan: TreePlan, rho: float, project_out: bool = True) -> Any:
    """``P H P v`` for every column, (n_bins, rows): the derivative of the gradient along ``v``.

    ``d = p - q`` and ``v`` are (n_bins, rows). As the kernels
    (:func:`emdtree.emd_hvp`): ``H`` sums ``rho (rho-1) w_i |phi_i|^(rho-2)``
    over the edges common to both bins' paths (paper eq. 12 for rho = 2);
    edges with all bins (or none) below are dropped, as ``P`` removes them;
    a direction that leaves ``phi_i`` unchanged adds nothing even where
    ``|phi_i|^(rho-2)`` is infinite; zero for rho = 1. Without
    ``project_out``, ``H P v`` (the transposed Jacobian of the gradient).
    """
    if rho == 1.0:
        return v * 0
    nm = plan.node_major
    psi_b = v - ops.mean0(v)
    psi_i = _subtree(ops, psi_b, plan)[:-1, ...]
    cw_b, cw_i = ops.constant(nm.bin_curv_weight, v), ops.constant(nm.inner_curv_weight, v)
    if rho == 2.0:
        t_b, t_i = (cw_b + cw_b) * _bin_rows(ops, psi_b, plan), (cw_i + cw_i) * psi_i
    else:
        t_b = _curvature_times(ops, _bin_rows(ops, psi_b, plan), _bin_rows(ops, d, plan), cw_b, rho)
        t_i = _curvature_times(ops, psi_i, _subtree(ops, d, plan)[:-1, ...], cw_i, rho)
    out, _ = _ancestors(ops, t_b, t_i, plan)
    return out - ops.mean0(out) if project_out else out


def hessian(ops: Ops, d: Any, plan: TreePlan, rho: float) -> Any:
    """Projected dense Hessians ``P H P``, (n_bins, n_bins, rows) (one column for rho = 2).

    ``H[k, l]`` is the sum of ``h_i = rho (rho-1) w_i |phi_i|^(rho-2)`` over
    the common ancestors-or-self of bins ``k`` and ``l``: ``D[lca(k, l)]``
    with ``D`` the sums of ``h`` over ancestors-or-self (paper eq. 12 for
    rho = 2, where ``h`` and ``H`` are constant). Infinite entries where
    ``phi = 0`` for rho < 2, as ``|phi|^(rho-2)``.
    """
    nm = plan.node_major
    n_bins = d.shape[0]
    cw_b, cw_i = ops.constant(nm.bin_curv_weight, d), ops.constant(nm.inner_curv_weight, d)
    if rho == 1.0:
        h_b, h_i = cw_b * 0, cw_i * 0
    elif rho == 2.0:
        h_b, h_i = cw_b + cw_b, cw_i + cw_i
    else:
        h_b = _curvature(ops, _bin_rows(ops, d, plan), cw_b, rho)
        h_i = _curvature(ops, _subtree(ops, d, plan)[:-1, ...], cw_i, rho)
    at_bins, s = _ancestors(ops, h_b, h_i, plan)
    every = ops.concat0([at_bins, s])
    full = ops.reshape(ops.take(every, ops.index(plan, "hessian_index", d)), (n_bins, n_bins, -1))
    cols = ops.mean0(full)  # (1, n_bins, rows); H is symmetric: the row means are the same
    grand = ops.mean0(ops.reshape(cols, (n_bins, -1)))
    return full - cols - ops.reshape(cols, (n_bins, 1, -1)) + grand
