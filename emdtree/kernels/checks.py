"""One-pass input statistics: row totals and the first invalid entry."""

from __future__ import annotations

import numpy as np
from .jit import njit

from .simd import tile_stats


@njit(cache=True)
def row_totals(x, totals):  # pragma: no cover
    """Row sums of a 2-D C-contiguous array into ``totals`` (float64).

    Returns the flat index of the first entry that is NaN, infinite or
    negative, -2 when the entries are fine but a row's sum overflows, or -1
    when every entry is a finite non-negative number. Every total is written,
    invalid entries or not (a row with a NaN has a NaN total, an overflowing
    row's total is ``inf``), so a caller that does not check never reads unset
    memory. The
    rows are read in vector tiles; only a row whose sum is not finite or whose
    minimum is negative is read again, entry by entry, to find the culprit.
    """
    n_rows, n_cols = x.shape
    flat = x.reshape(-1)
    m = 64 // x.itemsize
    n_tiles = n_cols // m
    stats = np.zeros(2, dtype=np.float64)
    first = -1
    overflow = False
    for r in range(n_rows):
        off = r * n_cols
        stats[0] = 0.0
        stats[1] = 0.0
        tile_stats(flat, off, n_tiles, stats)
        total = stats[0]
        low = stats[1]
        for k in range(n_tiles * m, n_cols):
            v = np.float64(flat[off + k])
            total += v
            low = min(low, v)
        if first < 0 and not (low >= 0.0 and np.isfinite(total)):
            for k in range(n_cols):
                v = flat[off + k]
                if not (v >= 0.0 and v < np.inf):
                    first = off + k
                    break
            if first < 0:
                overflow = True
        totals[r] = total
    if first >= 0:
        return first
    return -2 if overflow else -1


@njit(cache=True)
def stats_pass(totals, low, value, grad, tol, big):  # pragma: no cover
    """Whether a value-and-gradient kernel's statistics show valid inputs and a finite result.

    ``totals`` (rows, 2) holds the float64 totals of p and q, ``low`` the
    least entries the kernel saw (clamped at 0), ``value`` and ``grad`` its
    outputs (``grad`` empty when it need not be checked). True only when the
    masses are non-negative, the totals finite, non-negative, agreeing to
    ``tol`` (relative) and summing to at most ``big / 2``, and the outputs
    finite: then the full checks (``emdtree.engine.inputs.check_stats`` and
    ``check_result``) cannot fail, and False leaves the decision, and the
    message, to them. The tolerance test is theirs, in the same float64
    operations; the sum is bounded by half the dtype's range so that its
    order of summation cannot matter.
    """
    for i in range(low.shape[0]):
        if not low[i] >= 0.0:
            return False
    total = 0.0
    for r in range(totals.shape[0]):
        a = totals[r, 0]
        b = totals[r, 1]
        if not (a >= 0.0 and b >= 0.0 and a < np.inf and b < np.inf):
            return False
        total += a + b
        if abs(a - b) > tol * max(abs(a), abs(b)):
            return False
    if not total <= 0.5 * big:
        return False
    for i in range(value.shape[0]):
        if not np.isfinite(value[i]):
            return False
    for i in range(grad.shape[0]):
        if not np.isfinite(grad[i]):
            return False
    return True
