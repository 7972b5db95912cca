"""The value-and-gradient pass in NumPy and SciPy, for small calls.

Numba compiles the fused value-and-gradient kernel on its first call in a
process whose cache does not hold it (about 3 s on a 2-core machine), while
a script's first few calls need milliseconds of work. Calls small enough
(:mod:`emdtree._tiers` decides, from their size only) run here:

* phi, the subtree sums of ``p - q``, in the working dtype and in the order of
  the kernels' sweep (:func:`subtree_sums`), so with the kernels' bits;
* EMD^rho = sum_i w_i |phi_i|^rho, summed in float64;
* the gradient ``A^T c`` (``A`` the sparse incidence of nodes over the bins
  below them, ``A[i, k] = 1`` if bin ``k`` is in the subtree of node ``i``)
  with ``c_i = rho w_i sign(phi_i) |phi_i|^(rho - 1)``
  (``sign(0) = 0``, and 0 at ``phi = 0`` for any rho), minus its mean over the
  bins.

On a chain (bin ``k`` at position ``k``) ``A`` is triangular and the products
are cumulative sums. Everything after phi is computed in float64 and rounded
once to the working dtype, so the results agree with the kernels to the
working dtype's rounding. The pass also returns the statistics the kernels gather for the
input checks: float64 row totals and the least entry.
"""

from __future__ import annotations

import numpy as np

from ._inputs import Rows
from ._tree import Tree

# Trees whose incidence holds more than this many entries per node (deep trees
# that are not chains, where A is nearly dense) are left to the kernels.
MAX_MEAN_DEPTH = 64


def incidence_size(tree: Tree) -> int:
    """Entries of ``A``: the number of (bin, ancestor-or-self) pairs."""
    lay = tree.layout
    return int(lay.depth[lay.bin_position].sum()) + tree.n_bins


def suits(tree: Tree) -> bool:
    """Whether this pass is cheap for ``tree``: a chain, or a tree of moderate depth."""
    return tree._is_canonical_chain or incidence_size(tree) <= MAX_MEAN_DEPTH * tree.n_nodes


def _incidence(tree: Tree):
    """``A`` as CSR, rows in layout positions, cached on the tree."""
    cached = tree.__dict__.get("_cold_incidence")
    if cached is not None:
        return cached
    import scipy.sparse

    lay = tree.layout
    nodes, bins = [], []
    at = lay.bin_position.copy()
    k = np.arange(tree.n_bins, dtype=np.int64)
    while at.size:  # one step up the tree per pass; the root's parent is -1
        nodes.append(at)
        bins.append(k)
        up = lay.parent[at]
        keep = up >= 0
        at, k = up[keep], k[keep]
    nodes, bins = np.concatenate(nodes), np.concatenate(bins)
    a = scipy.sparse.csr_matrix((np.ones(nodes.size), (nodes, bins)), shape=(tree.n_nodes, tree.n_bins))
    tree.__dict__["_cold_incidence"] = a
    return a


def _differences(rows: Rows, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``p - q`` per row in the working dtype, as the kernels form it, the row totals
    (rows, 2, float64) and the least entry."""
    (p, q), n_rows = rows.arrays, rows.n_rows
    totals = np.empty((n_rows, 2), dtype=np.float64)
    totals[:, 0] = np.broadcast_to(p.sum(axis=1, dtype=np.float64), (n_rows,))
    totals[:, 1] = np.broadcast_to(q.sum(axis=1, dtype=np.float64), (n_rows,))
    low = np.array([min(p.min(initial=np.inf), q.min(initial=np.inf))], dtype=np.float64)
    d = np.broadcast_to(p - q, (n_rows, p.shape[1])).copy()
    if labels.shape[0]:
        d[np.arange(n_rows), labels] -= d.dtype.type(1.0)
    return d, totals, low


# Siblings summed one after the other in one step, rather than one step per sibling rank.
_WIDE = 16


def _sum_plan(tree: Tree) -> tuple[np.ndarray, list]:
    """The steps of :func:`subtree_sums`, cached on the tree: the rows of the layout
    positions in the kernels' sweep order, and per depth (deepest first) the
    children to add into their parents, rank by rank among siblings."""
    cached = tree.__dict__.get("_cold_sum_plan")
    if cached is not None:
        return cached
    from ._layout import sweep_order

    lay = tree.layout
    order = sweep_order(lay)
    n = lay.parent.shape[0]
    depth = np.empty(n, dtype=np.int64)
    depth[order.row] = lay.depth
    rows = np.arange(n, dtype=np.int64)
    steps = []
    for level in range(int(depth.max(initial=0)), 0, -1):
        child = rows[(depth == level) & (order.parent >= 0)]  # ascending: the sweep's order
        par = order.parent[child]
        by = np.argsort(par, kind="stable")
        child, par = child[by], par[by]
        starts = np.flatnonzero(np.r_[True, par[1:] != par[:-1]])
        counts = np.diff(np.r_[starts, child.size])
        rank = np.arange(child.size) - np.repeat(starts, counts)
        wide = np.repeat(counts > _WIDE, counts)
        for r in range(int(min(_WIDE, counts.max(initial=0)))):
            pick = (rank == r) & ~wide
            if pick.any():
                steps.append((child[pick], par[pick]))
        for s, c in zip(starts[counts > _WIDE], counts[counts > _WIDE]):
            steps.append((child[s:s + c], int(par[s])))
    plan = (order.row, steps)
    tree.__dict__["_cold_sum_plan"] = plan
    return plan


def subtree_sums(tree: Tree, d: np.ndarray) -> np.ndarray:
    """phi in layout positions, (n_nodes, rows), from the differences ``d`` (rows, n_bins).

    Summed in ``d``'s dtype and in the order of the kernels' ascending sweep:
    a node's own difference, then its children's phi one after the other in
    the sweep's order, so that phi has the kernels' bits and an exact
    cancellation leaves the same exact 0 (where ``sign(0) = 0`` decides the
    gradient for ``rho = 1``).
    """
    if tree._is_canonical_chain:  # phi_k = phi_(k-1) + d_k, as the chain kernel
        return np.cumsum(d, axis=1).T
    row, steps = _sum_plan(tree)
    lay = tree.layout
    phi = np.zeros((tree.n_nodes, d.shape[0]), dtype=d.dtype)
    phi[row[lay.bin_position]] = d.T
    for child, par in steps:
        if isinstance(par, int):  # many siblings: one running sum, in order
            phi[par] = np.cumsum(np.concatenate([phi[par][None], phi[child]]), axis=0)[-1]
        else:
            phi[par] += phi[child]
    return phi[row]


def value_grad(
    rows: Rows, rho: float, want_grad: bool, labels: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """EMD^rho per row, the projected gradient (or an empty array), row totals and the least entry.

    The same contract as the fused kernel in :func:`emdtree._driver.value_grad`.
    """
    tree, dtype = rows.tree, rows.dtype
    d, totals, low = _differences(rows, labels)
    lay = tree.layout
    chain = tree._is_canonical_chain
    # phi in layout positions, one column per row: in the working dtype, with the kernels' bits;
    # what follows from it in float64
    phi = subtree_sums(tree, d).astype(np.float64)
    w = lay.weight[:, None]
    a = np.abs(phi)
    with np.errstate(over="ignore", invalid="ignore"):  # an overflow shows in the result check
        if rho == 1.0:
            terms = w * a
        elif rho == 2.0:
            terms = w * (a * a)
        else:
            terms = w * a ** rho
        value = terms.sum(axis=0).astype(dtype)
        if not want_grad:
            return value, np.empty(0, dtype=dtype), totals, low
        if rho == 1.0:
            c = w * np.sign(phi)
        elif rho == 2.0:
            c = (2.0 * w) * phi
        else:
            nz = a > 0
            c = np.zeros_like(phi)
            c[nz] = (rho * np.broadcast_to(w, phi.shape)[nz]) * np.sign(phi[nz]) * a[nz] ** (rho - 1.0)
        if chain:
            # sum over the ancestors-or-self of bin k: positions k..n-1
            g = np.cumsum(c[::-1], axis=0)[::-1].T
        else:
            g = (_incidence(tree).T @ c).T
        g = g - g.mean(axis=1, keepdims=True)
    return value, np.ascontiguousarray(g, dtype=dtype).reshape(-1), totals, low


# ----------------------------------------------------------------------------- all pairs


def row_totals(x: np.ndarray, totals: np.ndarray) -> int:
    """:func:`emdtree._kernels.checks.row_totals` in NumPy: the same return value and totals."""
    with np.errstate(over="ignore", invalid="ignore"):
        totals[:] = x.sum(axis=1, dtype=np.float64)  # every total, invalid entries or not
        bad = ~((x >= 0) & (x < np.inf))
        if bad.any():
            return int(np.flatnonzero(bad.reshape(-1))[0])
    return -1 if np.isfinite(totals).all() else -2


def phi_columns(tree: Tree, x: np.ndarray, positions: np.ndarray, out: np.ndarray) -> None:
    """phi of the rows of ``x`` (rows, n_bins) at the layout ``positions``, into ``out`` (rows, positions)."""
    if tree._is_canonical_chain:
        out[:] = np.cumsum(x, axis=1, dtype=np.float64)[:, positions]
    else:
        out[:] = (_incidence(tree)[positions] @ x.T.astype(np.float64)).T


def pair_sums(a: np.ndarray, b: np.ndarray | None, rho: float, condensed: bool, out: np.ndarray) -> None:
    """``sum_k |a_ik - b_jk|^rho`` for all pairs with SciPy, summed in float64, into ``out``.

    ``b`` None: the pairs of ``a`` with itself, as a condensed vector or a flat
    square matrix (exactly symmetric, zero diagonal), as ``out`` is sized.
    """
    from scipy.spatial import distance

    metric, kwargs = ("cityblock", {}) if rho == 1.0 else ("sqeuclidean", {}) if rho == 2.0 else \
        ("minkowski", {"p": rho})
    a = a.astype(np.float64, copy=False)
    with np.errstate(over="ignore", invalid="ignore"):  # an overflow shows in the result check
        if b is None:
            d = distance.pdist(a, metric, **kwargs)
            if metric == "minkowski":
                d **= rho
            out[:] = d if condensed else distance.squareform(d, checks=False).reshape(-1)
        else:
            d = distance.cdist(a, b.astype(np.float64, copy=False), metric, **kwargs)
            if metric == "minkowski":
                d **= rho
            out[:] = d.reshape(-1)
