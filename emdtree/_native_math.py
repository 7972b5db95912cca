"""EMD^rho, its gradient and Hessian-vector product as gathers and segment sums.

The training losses of :mod:`emdtree.tensorflow` and :mod:`emdtree.jax` run
this formulation in the framework's own operations when the kernels cannot
be called (under XLA, on accelerators, on arrays sharded over devices). It
is written once here against a small table of operations (:class:`Ops`)
that each framework fills in.

Layout. Arrays are *node-major*: ``(positions, rows)``, the batch last, so
that every gather and segment sum moves whole contiguous rows of the batch
(on a CPU, XLA gathers rows of 512 floats about 3x faster than it gathers
columns, and scatters them 7x faster).

Sums. With the pointer-doubling tables ``a_0 .. a_{T-1}`` of the post-order
layout (``a_t[j]`` the ``2^t``-th ancestor of ``j``, the root its own, ``2^T
> depth``; :func:`emdtree._xp._doubling`), the sum of ``c`` over the
ancestors-or-self of every position is ``A c = M_{T-1} ... M_0 c`` with
``M_t = I + G_t`` and ``G_t`` the gather by ``a_t`` (the root holds 0). The
subtree sums phi (paper eq. 8) are its transpose, ``A^T x = M_0^T ...
M_{T-1}^T x``, and ``M_t^T x = x + segment_sum(x, a_t)``: T segment sums,
each entry a balanced sum of at most ``size_j`` terms, so a small phi is not
swamped by the rounding of large prefixes (there is no prefix sum here, and
none of the cancellation that :mod:`emdtree._xp` compensates). The gradient
(eq. 9-10) and the Hessian-vector product are sums over ancestors: T
gathers. T is 4 for the ImageNet tree (depth 13), 10 for a chain of 1000
bins.
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
    """Index and weight arrays of a tree for node-major arrays (NumPy)."""

    n_nodes: int
    gather: np.ndarray  # (n,) bin row (n_bins: the zero row) at each position
    tables: tuple[np.ndarray, ...]  # a_0 .. a_{T-1}, each (n,)
    bin_position: np.ndarray  # (n_bins,)
    weight: np.ndarray  # (n - 1, 1) float64 edge costs of the non-root positions
    curv_weight: np.ndarray  # (n - 1, 1) the same, 0 on edges with all bins (or none) below


def plan(tree: Tree) -> Plan:
    """The node-major plan of ``tree`` (built from the tree's Array-API plan, which the tree keeps)."""
    base = _xp._plan(tree)
    return Plan(
        n_nodes=tree.n_nodes,
        gather=base.gather,
        tables=base.jumps + (base.last_all,),
        bin_position=base.bin_position,
        weight=base.weight[:, None],
        curv_weight=base.curv_weight[:, None],
    )


def _layout(ops: Ops, d: Any, pl: Plan) -> Any:
    """(n_bins, rows) bin values -> (n, rows) at the layout positions, 0 off the bins."""
    return ops.take(ops.zero_row(d), pl.gather)


def _subtree(ops: Ops, d: Any, pl: Plan) -> Any:
    """phi of the bin values ``d`` (n_bins, rows) at the non-root positions, (n - 1, rows)."""
    x = _layout(ops, d, pl)
    for a in reversed(pl.tables):
        x = x + ops.segment_sum(x, a, pl.n_nodes)
    return x[:-1]


def _ancestors(ops: Ops, c: Any, pl: Plan) -> Any:
    """Sums of ``c`` (n - 1, rows) over the ancestors-or-self of every bin, (n_bins, rows)."""
    s = ops.zero_row(c)  # the root, last, adds nothing and ends every path
    for a in pl.tables:
        s = s + ops.take(s, a)
    return ops.take(s, pl.bin_position)


def value_grad(ops: Ops, d: Any, pl: Plan, rho: float, want_grad: bool) -> tuple[Any, Any | None]:
    """EMD^rho of every column of ``d = p - q`` (n_bins, rows), and its dirt-conserving gradient.

    Returns the values, (rows,), and the gradient, (n_bins, rows): the sum over
    ancestors-or-self of ``rho w sign(phi) |phi|^(rho-1)`` (paper eq. 9-10,
    ``sign(0) = 0``) minus its mean over the bins, as the kernels compute it.
    """
    f = _subtree(ops, d, pl)
    w = ops.constant(pl.weight, f)
    if rho == 2.0:
        value = ops.sum0(w * (f * f))
        slope = (w + w) * f
    elif rho == 1.0:
        value = ops.sum0(w * ops.abs(f))
        slope = w * ops.sign(f)
    else:
        a = ops.abs(f)
        value = ops.sum0(w * a**rho)
        slope = (rho * w) * ops.sign(f) * a ** (rho - 1.0)
    if not want_grad:
        return value, None
    g = _ancestors(ops, slope, pl)
    return value, g - ops.mean0(g)


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
    psi = _subtree(ops, v - ops.mean0(v), pl)
    cw = ops.constant(pl.curv_weight, psi)
    if rho == 2.0:
        t = (cw + cw) * psi
    else:
        a = ops.abs(_subtree(ops, d, pl))
        wr = (rho * (rho - 1.0)) * cw
        zero = psi * 0
        if rho > 2.0:
            t = wr * psi * a ** (rho - 2.0)
        else:
            # |phi|^(rho-2) is infinite at phi = 0: select before multiplying (0 * inf is NaN)
            keep = (psi != 0) & (wr != 0)
            curv = ops.where(a == 0, zero + np.inf, ops.where(a == 0, zero + 1, a) ** (rho - 2.0))
            t = ops.where(keep, wr * psi * ops.where(keep, curv, zero), zero)
    out = _ancestors(ops, t, pl)
    return out - ops.mean0(out)
