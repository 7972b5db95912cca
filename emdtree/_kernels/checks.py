"""One-pass input statistics: row totals and the first invalid entry."""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True)
def row_totals(x, totals):  # pragma: no cover
    """Row sums of a 2-D array into ``totals`` (float64, pairwise per 8 lanes).

    Returns the flat index of the first entry that is NaN, infinite or
    negative, or -1 when every entry is a finite non-negative number.
    """
    n_rows, n_cols = x.shape
    lanes = np.zeros(8, dtype=np.float64)
    for r in range(n_rows):
        for i in range(8):
            lanes[i] = 0.0
        bad = False
        main = n_cols - n_cols % 8
        for k in range(0, main, 8):
            for i in range(8):
                v = x[r, k + i]
                lanes[i] += v
                bad |= not (v >= 0.0 and v < np.inf)
        for k in range(main, n_cols):
            v = x[r, k]
            lanes[k - main] += v
            bad |= not (v >= 0.0 and v < np.inf)
        if bad:
            for k in range(n_cols):
                v = x[r, k]
                if not (v >= 0.0 and v < np.inf):
                    return r * n_cols + k
        totals[r] = ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3])) + (
            (lanes[4] + lanes[5]) + (lanes[6] + lanes[7])
        )
    return -1
