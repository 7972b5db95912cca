"""Dense bins x bins matrices: the projected Hessian and the path metric.

Both are "sum of a per-edge quantity h over the common ancestors of two bins":
with ``D_j`` the sum of ``h`` over the path from the root to position ``j``,
``M[k, l] = D[lca(k, l)]``. Row ``k`` is filled by walking from bin ``k`` to the
root: bins in the subtree of the current node ``a`` but not in that of the
child we came from have ``lca = a``, and in post-order both subtrees are
contiguous ranges, so a row costs O(n_nodes) whatever the depth.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numba import prange

from .jit import njit


@njit(cache=True)
def _depth_sum(h, parent):  # pragma: no cover
    """Sum of h over the path from the root (last position) to each position."""
    n = parent.shape[0]
    depth_sum = np.empty(n, dtype=np.float64)
    depth_sum[n - 1] = 0.0
    for step in range(n - 1):
        j = n - 2 - step
        depth_sum[j] = depth_sum[parent[j]] + h[j]
    return depth_sum


@njit(cache=True)
def _lca_values(value, parent, size, bin_at, bin_position, out):  # pragma: no cover
    """out[k, l] = value at the lowest common ancestor-or-self of bins k and l."""
    for k in range(bin_position.shape[0]):
        cur = bin_position[k]
        lo = cur - size[cur] + 1
        val = value[cur]
        for x in range(lo, cur + 1):
            b = bin_at[x]
            if b >= 0:
                out[k, b] = val
        while parent[cur] >= 0:
            par = parent[cur]
            plo = par - size[par] + 1
            val = value[par]
            for x in range(plo, lo):
                b = bin_at[x]
                if b >= 0:
                    out[k, b] = val
            for x in range(cur + 1, par + 1):
                b = bin_at[x]
                if b >= 0:
                    out[k, b] = val
            lo = plo
            cur = par


@njit(cache=True)
def _lca_fill(h, parent, size, bin_at, bin_position, out):  # pragma: no cover
    """out[k, l] = sum of h over the common ancestors-or-self of bins k and l."""
    _lca_values(_depth_sum(h, parent), parent, size, bin_at, bin_position, out)


@njit(cache=True)
def _project(out):  # pragma: no cover
    """out <- P out P with P = I - 11^T/n (symmetric input)."""
    n = out.shape[0]
    mean = np.zeros(n, dtype=np.float64)
    for k in range(n):
        acc = 0.0
        for col in range(n):
            acc += out[k, col]
        mean[k] = acc / n
    grand = 0.0
    for k in range(n):
        grand += mean[k]
    grand /= n
    for k in range(n):
        for col in range(n):
            out[k, col] = out[k, col] - mean[k] - mean[col] + grand


@njit(cache=True)
def _hessian_one(
    phi_row, weight, bins_below, parent, size, bin_at, bin_position, mode, rho, out,
):  # pragma: no cover
    n = parent.shape[0]
    n_bins = bin_position.shape[0]
    h = np.zeros(n, dtype=np.float64)
    for j in range(n - 1):
        if not 0 < bins_below[j] < n_bins:
            # all bins (or none) below: P removes the term, whose curvature may be infinite
            continue
        if mode == 2:
            h[j] = 2.0 * weight[j]
        elif weight[j] != 0.0:
            # |phi|^(rho-2) is infinite at phi = 0 for rho < 2: the Hessian does not exist there
            h[j] = rho * (rho - 1.0) * weight[j] * abs(np.float64(phi_row[j])) ** (rho - 2.0)
    _lca_fill(h, parent, size, bin_at, bin_position, out)
    _project(out)


# Paper eq. 12 writes the Hessian of EMD^2 as H[k, l] = 2 * (sum of w over the common
# ancestors of k and l), without the projection. Finite differences of the
# dirt-conserving gradient (the one the paper trains with) along mass-conserving
# directions give P H P instead, and they are what we follow: P H P is symmetric, its
# rows sum to zero, and it agrees with those differences (tests/test_api.py). The
# unprojected H is recovered by dropping _project.
@njit(cache=True, parallel=True)
def hessian_batch(
    phi, weight, bins_below, parent, size, bin_at, bin_position, mode, rho, out,
):  # pragma: no cover
    """Projected Hessians ``P A^T diag(h) A P`` for each row of ``phi``.

    ``phi`` has shape (rows, n_nodes) in layout positions (unused for mode 2);
    ``out`` has shape (rows, n_bins, n_bins), float64.
    """
    for r in prange(out.shape[0]):
        _hessian_one(phi[r], weight, bins_below, parent, size, bin_at, bin_position, mode, rho, out[r])


@njit(cache=True)
def hessian_batch_serial(
    phi, weight, bins_below, parent, size, bin_at, bin_position, mode, rho, out,
):  # pragma: no cover
    """As :func:`hessian_batch` on one thread."""
    for r in range(out.shape[0]):
        _hessian_one(phi[r], weight, bins_below, parent, size, bin_at, bin_position, mode, rho, out[r])


@njit(cache=True)
def _distance_fill(weight, parent, size, bin_at, bin_position, out):  # pragma: no cover
    _lca_fill(weight, parent, size, bin_at, bin_position, out)
    depth_sum = _depth_sum(weight, parent)
    m = bin_position.shape[0]
    for k in range(m):
        dk = depth_sum[bin_position[k]]
        for col in range(m):
            out[k, col] = dk + depth_sum[bin_position[col]] - 2.0 * out[k, col]
        out[k, k] = 0.0


def distance_matrix(layout: Any, n_bins: int) -> np.ndarray:
    """Bins x bins path metric of a tree layout (an ``emdtree.trees.layout.Layout``), float64."""
    out = np.empty((n_bins, n_bins), dtype=np.float64)
    _distance_fill(layout.weight, layout.parent, layout.size, layout.bin_at, layout.bin_position, out)
    return out


def lca_matrix(layout: Any, value: np.ndarray) -> np.ndarray:
    """Bins x bins matrix of ``value`` (one float64 per layout position) at the
    lowest common ancestor of each pair; the diagonal is 0."""
    n_bins = layout.bin_position.shape[0]
    out = np.empty((n_bins, n_bins), dtype=np.float64)
    _lca_values(np.ascontiguousarray(value, dtype=np.float64), layout.parent, layout.size, layout.bin_at,
                layout.bin_position, out)
    np.fill_diagonal(out, 0.0)
    return out
