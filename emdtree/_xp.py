"""Array-API implementation of phi, EMD^rho, its gradient, HVP and Hessian.

Arrays that are neither NumPy nor on a CUDA device (JAX, array-api-strict,
...) are computed here with functions of the Array API standard (2023.12)
only, in their own namespace, dtype and device, with no Python branch on
array values: ``jax.jit`` traces these functions and ``jax.grad``
differentiates them. The public API has already validated the inputs, moved
the bin axis last and broadcast the batch: every function takes 2-D arrays
of shape ``(rows, n_bins)`` and one real floating dtype.

Formulation. The CPU kernels sweep the post-order layout node by node
(:mod:`emdtree._layout`); here the same sums are whole-array operations:

* phi (paper eq. 8). The subtree of layout position ``j`` is the range
  ``[j - size_j + 1, j]``, so with ``C`` the prefix sum of the masses in
  layout order, ``phi_j = C[j + 1] - C[j - size_j + 1]``: one cumulative
  sum and one take.
* Sums over ancestors-or-self (the gradient, eq. 9-10; the HVP; the
  Hessian's ``D[lca(k, l)]``) by pointer doubling: with ``s_0 = c`` and
  ``a_0 = parent``, ``s_{t+1} = s_t + s_t[a_t]`` and ``a_{t+1} = a_t[a_t]``;
  after ``ceil(log2(depth + 1))`` steps ``s`` holds the sum over all
  ancestors-or-self. Each entry is a balanced sum of at most ``depth`` terms,
  so there is no cancellation; 4 takes for the ImageNet tree (depth 13), 10
  for a chain of 1000 bins. A difference array over the ranges (the
  alternative) needs the sums of ``c`` over nodes sharing a range start,
  themselves prefix differences, and cancels like phi below.

Accuracy. ``C`` grows to the total mass while phi may be small, so a plain
prefix difference has an error of about ``eps * max |C|`` where a sweep has
``eps * (|phi_j| + mass below j)``. The prefix sum is compensated: the
rounding of every step, ``r_k = x_k - (C[k + 1] - C[k])``, is recovered
elementwise (exactly, up to ``eps |x_k|``) and summed in a second prefix sum
``E``; ``phi_j = (C[j+1] - C[lo]) + (E[j+1] - E[lo])``. This holds for any
scan order of ``cumulative_sum``. Measured on the ImageNet tree (1371 nodes,
1000 bins), float32 in JAX against float64, 512 softmax predictions (logits
drawn from N(0, 9)) against one-hot or smooth (softmax) targets; worst row,
relative error ``|err| / |value|`` and ``max |err| / max |grad|``::

                            plain prefix   compensated (used)   float32 kernels
    value  one-hot  rho=1     2.2e-07        1.6e-07              2.2e-07
    grad   one-hot  rho=1     3.3e-01        7.2e-08              6.4e-08
    value  smooth   rho=2     5.5e-07        2.3e-07              4.7e-07
    grad   smooth   rho=2     8.0e-07        2.4e-07              4.3e-07
    grad   one-hot  rho=1.5   1.4e-04        2.8e-06              1.4e-05
    grad   smooth   rho=1.5   9.1e-05        3.1e-06              8.0e-06

With a plain prefix the rounding of ``C`` flips the sign of small phi (the
rho = 1 gradient) and swamps ``|phi|^(rho-1)`` near 0. In float64 it is
needed too: a plain prefix was 6.6e-13 from the kernels (gradient,
rho = 1.5, ImageNet), the compensated one 2e-14. Blocked prefix sums (cumsum
within blocks of 32 positions, compensated sums of the block totals) were
1.6x faster in JAX on a CPU but leave an error of ``eps`` times the mass of
a block, which still flips signs: 0.13 (gradient, rho = 1) and 6e-5
(rho = 1.5). ``tests/test_xp.py`` asserts 3e-6 (value and gradient, rho = 1
and 2) and 3e-5 (rho = 1.5) on this tree in float32, and 1e-12 against the
kernels in float64. The value is summed by ``xp.sum`` in the working dtype.

Speed. On a CPU, XLA's ``cumulative_sum`` dominates: one value and gradient
of 512 rows on the ImageNet tree took 21-26 ms (fastest of 50, jitted JAX,
float32, 2 busy shared cores) against 1.4-1.7 ms for the Numba kernels, and
8-10 ms with a plain prefix; the second prefix is the price of the accuracy
above. NumPy and CPU torch arrays go to the kernels; this module serves the
other namespaces and devices.
"""

from __future__ import annotations

import sys
from typing import Any, NamedTuple

import numpy as np
from array_api_compat import device as _device

from ._tree import Tree

__all__ = ["phi", "value_grad", "hvp", "hessian"]


class _Plan(NamedTuple):
    """Index and weight arrays of a tree for the whole-array formulation (NumPy)."""

    gather: np.ndarray  # (n,) column of the zero-padded bin row at each position
    start: np.ndarray  # (n - 1,) first position of the subtree of each non-root position
    node_hi: np.ndarray  # (n,) j + 1 for the position j of each node (node order)
    node_lo: np.ndarray  # (n,) first position of its subtree
    jumps: tuple[np.ndarray, ...]  # doubling tables a_0 .. a_{T-2}, each (n,)
    last_bins: np.ndarray  # (n_bins,) a_{T-1} at the bin positions
    last_all: np.ndarray  # (n,) a_{T-1}
    bin_position: np.ndarray  # (n_bins,)
    weight: np.ndarray  # (n - 1,) float64 edge costs of the non-root positions
    curv_weight: np.ndarray  # (n - 1,) the same, 0 on edges with all bins (or none) below


def _doubling(parent: np.ndarray, depth: int) -> list[np.ndarray]:
    """Tables ``a_t`` (``a_t[j]`` the ``2^t``-th ancestor of ``j``, the root its own), ``2^T > depth``."""
    a = parent.copy()
    a[-1] = parent.shape[0] - 1
    tables = []
    while (1 << len(tables)) <= depth:
        tables.append(a)
        a = a[a]
    return tables


def _plan(tree: Tree) -> _Plan:
    """The tree's plan, computed once and kept on the tree."""
    plan = tree.__dict__.get("_xp_plan")
    if plan is not None:
        return plan
    lay = tree.layout
    n, n_bins = tree.n_nodes, tree.n_bins
    idx = np.int32 if n + n_bins < 2**31 else np.int64
    start = np.arange(n) - lay.size + 1
    gather = np.where(lay.bin_at >= 0, lay.bin_at, n_bins)
    tables = _doubling(lay.parent, tree.depth)
    last = tables[-1] if tables else np.full(n, n - 1)
    below = lay.bins_below[:-1]
    weight = np.asarray(lay.weight[:-1], dtype=np.float64)
    plan = _Plan(
        gather=gather.astype(idx),
        start=start[:-1].astype(idx),
        node_hi=(lay.position + 1).astype(idx),
        node_lo=start[lay.position].astype(idx),
        jumps=tuple(t.astype(idx) for t in tables[:-1]),
        last_bins=last[lay.bin_position].astype(idx),
        last_all=last.astype(idx),
        bin_position=lay.bin_position.astype(idx),
        weight=weight,
        curv_weight=np.where((below > 0) & (below < n_bins), weight, 0.0),
    )
    tree.__dict__["_xp_plan"] = plan
    return plan


def _is_traced(x: Any) -> bool:
    """True for a JAX tracer: arrays made during a trace must not outlive it."""
    jax = sys.modules.get("jax")
    return jax is not None and isinstance(x, jax.core.Tracer)


def _arrays(xp: Any, tree: Tree, like: Any) -> _Plan:
    """The plan as arrays of ``xp`` on the device of ``like``, floats in its dtype.

    Kept on the tree per namespace, dtype and device, except inside a JAX
    trace (where they are tracers, and become constants of the compiled code).
    """
    dev = _device(like)
    key = (xp.__name__, str(like.dtype), repr(dev))
    cache = tree.__dict__.setdefault("_xp_arrays", {})
    if key in cache:
        return cache[key]
    real = np.float32 if like.dtype == xp.float32 else np.float64
    plan = _plan(tree)
    big = plan.weight.max(initial=0.0)
    if big > np.finfo(real).max:
        raise ValueError(
            f"the tree has an edge cost of {big:g}, beyond the {np.dtype(real).name} range: "
            "pass float64 masses"
        )

    def convert(a: np.ndarray) -> Any:
        return xp.asarray(a.astype(real) if a.dtype.kind == "f" else a, device=dev)

    out = _Plan(*(tuple(convert(t) for t in f) if isinstance(f, tuple) else convert(f) for f in plan))
    if not _is_traced(out.gather):
        cache[key] = out
    return out


# --------------------------------------------------------------------------- #
# The two sums
# --------------------------------------------------------------------------- #

def _layout_rows(xp: Any, d: Any, arr: _Plan) -> Any:
    """(rows, n_bins) bin values -> (rows, n) in layout positions, zero off the bins."""
    zero = xp.zeros((d.shape[0], 1), dtype=d.dtype, device=_device(d))
    return xp.take(xp.concat([d, zero], axis=1), arr.gather, axis=1)


def _prefix(xp: Any, x: Any) -> tuple[Any, Any]:
    """Compensated prefix sum of the rows of x: (C, E), each (rows, n + 1).

    ``C + E`` is the prefix sum; ``E`` sums the rounding of each step of
    ``C``, so a difference of two prefixes does not inherit the rounding of
    the whole prefix (module docstring).
    """
    c = xp.cumulative_sum(x, axis=1, include_initial=True)
    r = x - (c[:, 1:] - c[:, :-1])
    return c, xp.cumulative_sum(r, axis=1, include_initial=True)


def _range(xp: Any, ce: tuple[Any, Any], hi: Any | None, lo: Any) -> Any:
    """Sums of x over the positions ``lo <= k < hi`` from its compensated prefix.

    ``hi=None`` stands for ``1 .. n - 1``: the subtrees of the non-root positions.
    """
    c, e = ce
    if hi is None:
        n = c.shape[1] - 1
        c_hi, e_hi = c[:, 1:n], e[:, 1:n]
    else:
        c_hi, e_hi = xp.take(c, hi, axis=1), xp.take(e, hi, axis=1)
    return (c_hi - xp.take(c, lo, axis=1)) + (e_hi - xp.take(e, lo, axis=1))


def _subtree(xp: Any, d: Any, arr: _Plan) -> Any:
    """phi of the bin values d at the non-root positions, (rows, n - 1)."""
    return _range(xp, _prefix(xp, _layout_rows(xp, d, arr)), None, arr.start)


def _ancestors(xp: Any, c: Any, arr: _Plan, at_bins: bool) -> Any:
    """Sum of c over the ancestors-or-self of each bin (or each position).

    ``c`` is (rows, n - 1) on the non-root positions; the root adds nothing.
    """
    zero = xp.zeros((c.shape[0], 1), dtype=c.dtype, device=_device(c))
    s = xp.concat([c, zero], axis=1)  # the root, last, doubles as the end of every path
    for a in arr.jumps:
        s = s + xp.take(s, a, axis=1)
    last = arr.last_bins if at_bins else arr.last_all
    here = xp.take(s, arr.bin_position, axis=1) if at_bins else s
    return here + xp.take(s, last, axis=1)


def _center(xp: Any, g: Any) -> Any:
    return g - xp.mean(g, axis=1, keepdims=True)


# --------------------------------------------------------------------------- #
# Public entry points for the dispatch layer
# --------------------------------------------------------------------------- #

def phi(xp: Any, p: Any, q: Any, tree: Tree) -> Any:
    """phi of every row, (rows, n_nodes), in the tree's node numbering."""
    arr = _arrays(xp, tree, p)
    ce = _prefix(xp, _layout_rows(xp, p - q, arr))
    return _range(xp, ce, arr.node_hi, arr.node_lo)


def value_grad(xp: Any, p: Any, q: Any, tree: Tree, rho: float, want_grad: bool) -> tuple[Any, Any | None]:
    """EMD^rho of every row, (rows,), and its projected gradient, (rows, n_bins) or None.

    The same numbers as :func:`emdtree.emd_value_and_grad`: the gradient is
    the sum over ancestors-or-self of ``rho w sign(phi) |phi|^(rho-1)``
    (paper eq. 9-10, ``sign(0) = 0``) minus its mean over the bins.
    """
    arr = _arrays(xp, tree, p)
    f = _subtree(xp, p - q, arr)  # phi at the non-root positions
    w = arr.weight
    if rho == 1.0:
        sign = xp.sign(f)
        # |phi| written as phi sign(phi): automatic differentiation then gives
        # sign(0) = 0, as the kernels do, where the derivative of abs at 0 is 1
        value = xp.sum(w * (f * sign), axis=1)
        slope = w * sign
    elif rho == 2.0:
        value = xp.sum(w * (f * f), axis=1)
        slope = (w + w) * f
    else:
        a = xp.abs(f)
        # a ** rho rather than a * a ** (rho - 1), whose derivative is 0 * inf at
        # phi = 0; a ** (rho - 1) is finite and 0 there (rho > 1)
        value = xp.sum(w * a**rho, axis=1)
        slope = (rho * w) * xp.sign(f) * a ** (rho - 1.0)
    if not want_grad:
        return value, None
    return value, _center(xp, _ancestors(xp, slope, arr, at_bins=True))


def _curvature(xp: Any, p: Any, q: Any, arr: _Plan, rho: float) -> Any:
    """``|phi|^(rho-2)`` at each non-root position, (rows, n - 1), for rho not 1 or 2.

    Infinite at phi = 0 for rho < 2, without evaluating ``0 ** negative``
    (a warning in NumPy-backed namespaces).
    """
    a = xp.abs(_subtree(xp, p - q, arr))
    if rho > 2.0:
        return a ** (rho - 2.0)
    zero = a == 0
    one, inf = (_scalar(xp, value, a) for value in (1.0, xp.inf))
    return xp.where(zero, inf, xp.where(zero, one, a) ** (rho - 2.0))


def _scalar(xp: Any, value: float, like: Any) -> Any:
    """A 0-d array (``where`` takes no Python scalars in the 2023.12 standard)."""
    return xp.full((), value, dtype=like.dtype, device=_device(like))


def hvp(xp: Any, p: Any, q: Any, v: Any, tree: Tree, rho: float, project_out: bool) -> Any:
    """``P H P v`` (``H P v`` without ``project_out``) for every row, (rows, n_bins).

    As the CPU kernels: edges with all bins (or none) below are dropped (P
    removes them); a direction that leaves phi_i unchanged adds nothing even
    where ``|phi_i|^(rho-2)`` is infinite; zero for ``rho = 1``.
    """
    if rho == 1.0:
        return xp.zeros(v.shape, dtype=v.dtype, device=_device(v))
    arr = _arrays(xp, tree, v)
    psi = _subtree(xp, _center(xp, v), arr)
    if rho == 2.0:
        cw = arr.curv_weight
        t = (cw + cw) * psi
    else:
        wr = (rho * (rho - 1.0)) * arr.curv_weight
        # select before multiplying: 0 * inf would be NaN (and a warning)
        keep = (psi != 0.0) & (wr != 0.0)
        t = (wr * psi) * xp.where(keep, _curvature(xp, p, q, arr, rho), _scalar(xp, 0.0, psi))
    out = _ancestors(xp, t, arr, at_bins=True)
    return _center(xp, out) if project_out else out


def _lca(tree: Tree) -> np.ndarray:
    """Layout position of the lowest common ancestor of every pair of bins, (n_bins * n_bins,).

    In post-order the lca of positions a <= b is the first ancestor-or-self
    ``i`` of ``b`` whose subtree starts at or before ``a``; found by binary
    lifting over the doubling tables.
    """
    cached = tree.__dict__.get("_xp_lca")
    if cached is not None:
        return cached
    lay = tree.layout
    n = tree.n_nodes
    idx = np.int32 if n < 2**31 else np.int64  # n_bins^2 pairs: keep them small
    start = (np.arange(n) - lay.size + 1).astype(idx)
    pos = lay.bin_position.astype(idx)
    low = np.minimum(pos[:, None], pos[None, :]).ravel()
    node = np.maximum(pos[:, None], pos[None, :]).ravel()
    top = node
    found = start[node] <= low
    for a in reversed(_doubling(lay.parent, tree.depth)):  # climb while the subtree still starts after low
        up = a.astype(idx)[node]
        node = np.where(start[up] > low, up, node)
    parent = np.where(lay.parent < 0, n - 1, lay.parent).astype(idx)
    lca = np.where(found, top, parent[node])
    tree.__dict__["_xp_lca"] = lca
    return lca


def hessian(xp: Any, p: Any, q: Any, tree: Tree, rho: float) -> Any:
    """Projected dense Hessians ``P H P``, (rows, n_bins, n_bins), in the input dtype.

    ``H[k, l]`` is the sum of ``h_i = rho (rho-1) w_i |phi_i|^(rho-2)`` over
    the common ancestors-or-self of bins ``k`` and ``l``, i.e. ``D[lca(k, l)]``
    with ``D`` the sums of ``h`` over ancestors-or-self (paper eq. 12 for
    rho = 2, where ``h`` and ``H`` are constant).
    """
    rows, n_bins = p.shape
    if rho == 1.0:
        return xp.zeros((rows, n_bins, n_bins), dtype=p.dtype, device=_device(p))
    arr = _arrays(xp, tree, p)
    cw = arr.curv_weight
    if rho == 2.0:
        h = xp.reshape(cw + cw, (1, -1))
    else:
        wr = (rho * (rho - 1.0)) * cw
        # infinite at phi = 0 for rho < 2, as the CPU kernels (no Hessian there)
        h = wr * xp.where(wr != 0.0, _curvature(xp, p, q, arr, rho), _scalar(xp, 0.0, p))
    depth_sum = _ancestors(xp, h, arr, at_bins=False)
    lca = xp.asarray(_lca(tree), device=_device(p))
    full = xp.reshape(xp.take(depth_sum, lca, axis=1), (h.shape[0], n_bins, n_bins))
    mean = xp.mean(full, axis=2)  # symmetric: row means = column means
    grand = xp.mean(mean, axis=1)
    out = full - mean[:, :, None] - mean[:, None, :] + grand[:, None, None]
    if out.shape[0] != rows:
        out = xp.broadcast_to(out, (rows, n_bins, n_bins))
    return out
