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
