"""Numba kernel: the rank of each row's label and its k best classes.

Classes are ranked by decreasing score, equal scores by increasing index (so
that the best class is :func:`numpy.argmax`). Scores must not be NaN.
"""

from numba import prange

from .jit import njit


@njit(cache=True)
def insert(row, best, filled, j):  # pragma: no cover - compiled
    """Put class ``j`` into the sorted list ``best`` of the ``filled`` best classes so far
    (the last one drops out when the list is full); returns the new length."""
    k = best.shape[0]
    s = row[j]
    pos = filled if filled < k else k - 1
    while pos > 0 and row[best[pos - 1]] < s:  # equal scores: the earlier, lower index stays ahead
        best[pos] = best[pos - 1]
        pos -= 1
    best[pos] = j
    return min(filled + 1, k)


@njit(cache=True)
def _rank_row(scores, labels, top, rank, r):  # pragma: no cover - compiled
    """Row ``r`` of :func:`rank_top_k`."""
    n = scores.shape[1]
    k = top.shape[1]
    row = scores[r]
    y = labels[r]
    own = row[y]
    before = 0
    for j in range(n):
        s = row[j]
        before += (s > own) | ((s == own) & (j < y))
    rank[r] = before
    if k == 0:
        return
    best = top[r]
    filled = 0
    for j in range(k):
        filled = insert(row, best, filled, j)
    kth = row[best[k - 1]]
    for b in range(k // 16, n // 16 + 1):
        lo, hi = max(16 * b, k), min(16 * b + 16, n)
        beats = 0
        if hi - lo == 16:  # a full block: a fixed-length loop that LLVM can vectorise
            for i in range(16):
                beats += row[lo + i] > kth
        else:
            beats = 1
        if beats:
            for j in range(lo, hi):
                if row[j] > kth:
                    insert(row, best, k, j)
                    kth = row[best[k - 1]]


@njit(cache=True)
def rank_top_k(scores, labels, top, rank):  # pragma: no cover - compiled
    """The rank of each row's label and its ``k`` best classes.

    ``rank[r]`` counts the classes ranked before the label (a higher score,
    or an equal score and a lower index); ``top[r]`` receives the indices of
    the ``k = top.shape[1]`` best classes, best first, ties to the lower
    index. A block of 16 scores is read one by one only when one of them
    beats the current k-th best, which a single fixed-length loop tests; for
    1000 random scores and ``k = 5`` about 15 of the 63 blocks of a row are.
    """
    for r in range(scores.shape[0]):
        _rank_row(scores, labels, top, rank, r)


@njit(cache=True, parallel=True)
def rank_top_k_parallel(scores, labels, top, rank):  # pragma: no cover - compiled
    """As :func:`rank_top_k`, rows spread across Numba's threads."""
    for r in prange(scores.shape[0]):
        _rank_row(scores, labels, top, rank, r)
