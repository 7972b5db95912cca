"""The value-and-gradient pass in NumPy and SciPy, for kernels not compiled yet.

Numba compiles the fused value-and-gradient kernel on its first call in a
process whose cache does not hold it (about 3 s on a 2-core machine), while
a script's first few calls need milliseconds of work. Until the kernel is
worth compiling (:mod:`emdtree._tiers` decides), those calls run here:

* phi = A (p - q), with ``A`` the sparse incidence of nodes over the bins
  below them (``A[i, k] = 1`` if bin ``k`` is in the subtree of node ``i``);
* EMD^rho = sum_i w_i |phi_i|^rho, summed in float64;
* the gradient ``A^T c`` with ``c_i = rho w_i sign(phi_i) |phi_i|^(rho - 1)``
  (``sign(0) = 0``, and 0 at ``phi = 0`` for any rho), minus its mean over the
  bins.

On a chain (bin ``k`` at position ``k``) ``A`` is triangular and the products
are cumulative sums. Everything is computed in float64 and rounded once to the
working dtype, so the results agree with the kernels to the working dtype's
rounding. The pass also returns the statistics the kernels gather for the
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
    """``p - q`` per row in float64, the row totals (rows, 2) and the least entry."""
    (p, q), n_rows = rows.arrays, rows.n_rows
    p64 = np.broadcast_to(p.astype(np.float64), (n_rows, p.shape[1]))
    q64 = np.broadcast_to(q.astype(np.float64), (n_rows, q.shape[1]))
    totals = np.empty((n_rows, 2), dtype=np.float64)
    totals[:, 0] = p64.sum(axis=1)
    totals[:, 1] = q64.sum(axis=1)
    low = np.array([min(p.min(initial=np.inf), q.min(initial=np.inf))], dtype=np.float64)
    d = p64 - q64
    if labels.shape[0]:
        d[np.arange(n_rows), labels] -= 1.0
    return d, totals, low


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
    # phi in layout positions, one column per row
    phi = np.cumsum(d, axis=1).T if chain else _incidence(tree) @ d.T
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
