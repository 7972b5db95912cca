"""One-thread twins of the all-pairs kernels, for one block of a blocked matrix.

A blocked distance matrix (:mod:`emdtree._pairwise_dask`) is computed by many
tasks at once, in threads or processes of a task scheduler that already keeps
every core busy; a parallel region per task would oversubscribe the cores,
and concurrent launches from several threads are not safe under every Numba
threading layer. These kernels run the same super tiles as
:func:`emdtree._kernels.pairwise.pair_sums` (same tiles, same order of
summation within a pair, hence the same values) on the calling thread only,
and release the GIL, so that the threads of one worker process compute
blocks side by side while sharing one copy of the transformed samples.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .pairwise import CHUNK, MODE_ONE_MIN, OUT_RECT, SUPER, _finish_min, _items, _single, _store, _super_tile


@njit(cache=True, nogil=True)
def pair_sums_serial(a, b, n_a, n_b, n_cols, out_kind, mode, rho, sum_a, sum_b, tau, out):  # pragma: no cover
    """:func:`emdtree._kernels.pairwise.pair_sums` on the calling thread only."""
    square = out_kind != OUT_RECT
    items = _items(n_a, n_b, square)
    acc = np.empty(SUPER * SUPER, dtype=np.float64)
    for t in range(items.shape[0]):
        i0, j0 = items[t, 0], items[t, 1]
        _super_tile(a, b, n_a, n_b, n_cols, i0, j0, square, mode, rho, acc)
        if mode == MODE_ONE_MIN:
            _finish_min(acc, a, b, n_a, n_b, n_cols, i0, j0, square, sum_a, sum_b, tau, rho)
        _store(acc, out, n_a, n_b, i0, j0, out_kind)


@njit(cache=True, nogil=True)
def listed_pairs_serial(a, b, n_cols, rows, cols, mode, rho, out):  # pragma: no cover
    """:func:`emdtree._kernels.pairwise.listed_pairs` on the calling thread only."""
    for t in range(rows.shape[0]):
        v = 0.0
        for k0 in range(0, n_cols, CHUNK):
            v += _single(a, b, rows[t] * n_cols, cols[t] * n_cols, k0, min(k0 + CHUNK, n_cols), mode, rho)
        out[t] = v
