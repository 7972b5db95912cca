"""Numba kernels for all-pairs EMD^rho between rows of transformed phi.

The driver (:mod:`emdtree.distances.pairwise`) turns each sample into one row ``x``
with ``x_k = w_k^(1/rho) phi_k`` over the nodes ``k`` that can contribute, so
that for two samples ``EMD^rho = sum_k |x_k - y_k|^rho`` (paper eq. 7). These
kernels evaluate that sum for every requested pair.

Layout of the work. One pair costs one pass over ``n_cols`` columns with one
load of each operand per column, so a pair-at-a-time loop is bound by memory
traffic. Instead the rows are taken in *super tiles* of ``SUPER`` x
``SUPER`` sample pairs and the columns in chunks of ``CHUNK``: the
``2 SUPER`` row chunks of one step (``2 * 64 * 512 * 8`` bytes = 512 KiB in
float64) stay in the L2 cache, and inside them a 4 x 4 *micro tile* keeps
four rows of ``x`` and four of ``y`` in registers, so each loaded value
serves four pairs (3 x 3 in super tiles of 66 where the code has 16 vector
registers, as with AVX2: see ``MICRO``). The column loop of a micro tile is a sum of independent
lanes that LLVM vectorises (``fastmath`` reassociation is allowed for these
sums only: one compiled micro tile serves the serial and the parallel kernel).
The pairs outside micro tiles, the row sums and the direct sums go through
:func:`_single`, whose eight lanes are written out: it is compiled for several
argument types (a parallel loop's index is unsigned), and with reassociation
each compilation could choose its own order. Chunk sums are formed in the
working dtype and added to float64 accumulators, so the rounding error grows
with ``CHUNK + n_cols / CHUNK``.

Work items are super tiles (for a square matrix only those on or above the
diagonal); in the parallel kernel each thread takes the next one as it finishes
one (an atomic counter), so the threads finish together even when one of them
shares its core with another process.
"""

from __future__ import annotations

import numpy as np
from numba import prange, types
from numba.extending import intrinsic

from .jit import njit
from .lanes import vector_bytes


def _vector_registers() -> int:
    """Vector registers of the code Numba generates here: 32 with AVX-512 and on 64-bit ARM,
    else 16 (AVX2, AVX, SSE). Follows ``NUMBA_CPU_NAME`` and ``NUMBA_CPU_FEATURES``, as
    :func:`emdtree.kernels.lanes.vector_bytes` does."""
    import platform

    if platform.machine().lower() in ("arm64", "aarch64"):
        return 32
    return 32 if vector_bytes() == 64 else 16


# The micro tile as large as the registers allow: 4 x 4 pairs (16 accumulators and 8
# operands) with 32 vector registers, 3 x 3 (9 and 6) with 16, where 4 x 4 spills
# (measured on AVX2 code: about 1.5x faster per term).
MICRO = 4 if _vector_registers() >= 32 else 3  # rows of x (and of y) per register micro tile
SUPER = 16 * MICRO + (0 if MICRO == 4 else 18)  # rows of x (and of y) per super tile: 64 or 66
CHUNK = 512  # columns per chunk

MODE_GENERAL = 0
MODE_ONE = 1
MODE_TWO = 2
# rho = 1 as sum_k |x_k - y_k| = sum x + sum y - 2 sum_k min(x_k, y_k): one vector
# operation per pair and column less (min, add instead of sub, abs, add); pairs where
# the difference cancels are summed again directly (see _finish_min)
MODE_ONE_MIN = 3

# reassociation only: it lets the lane sums vectorise; no assumptions on NaN or infinities
_FM = {"reassoc", "nsz", "contract"}


@njit(cache=True, fastmath=_FM)
def _micro(a, b, ia, ib, stride_a, stride_b, k0, k1, mode, rho, acc, acc_off, acc_stride):  # pragma: no cover
    """Add the 4 x 4 pair sums over columns ``k0:k1`` to ``acc``."""
    z = a[0] - a[0]
    s00 = s01 = s02 = s03 = z
    s10 = s11 = s12 = s13 = z
    s20 = s21 = s22 = s23 = z
    s30 = s31 = s32 = s33 = z
    # row views from column k0, indexed from 0: LLVM then sees non-negative indices
    # and loads whole vectors (an offset index keeps Numba's wraparound and gathers)
    n = k1 - k0
    a0 = a[ia + k0:ia + k1]
    a1 = a[ia + stride_a + k0:ia + stride_a + k1]
    a2 = a[ia + 2 * stride_a + k0:ia + 2 * stride_a + k1]
    a3 = a[ia + 3 * stride_a + k0:ia + 3 * stride_a + k1]
    b0 = b[ib + k0:ib + k1]
    b1 = b[ib + stride_b + k0:ib + stride_b + k1]
    b2 = b[ib + 2 * stride_b + k0:ib + 2 * stride_b + k1]
    b3 = b[ib + 3 * stride_b + k0:ib + 3 * stride_b + k1]
    if mode == MODE_ONE:
        for k in range(n):
            x0, x1, x2, x3 = a0[k], a1[k], a2[k], a3[k]
            y0, y1, y2, y3 = b0[k], b1[k], b2[k], b3[k]
            s00 += abs(x0 - y0)
            s01 += abs(x0 - y1)
            s02 += abs(x0 - y2)
            s03 += abs(x0 - y3)
            s10 += abs(x1 - y0)
            s11 += abs(x1 - y1)
            s12 += abs(x1 - y2)
            s13 += abs(x1 - y3)
            s20 += abs(x2 - y0)
            s21 += abs(x2 - y1)
            s22 += abs(x2 - y2)
            s23 += abs(x2 - y3)
            s30 += abs(x3 - y0)
            s31 += abs(x3 - y1)
            s32 += abs(x3 - y2)
            s33 += abs(x3 - y3)
    elif mode == MODE_ONE_MIN:
        for k in range(n):
            x0, x1, x2, x3 = a0[k], a1[k], a2[k], a3[k]
            y0, y1, y2, y3 = b0[k], b1[k], b2[k], b3[k]
            s00 += min(x0, y0)
            s01 += min(x0, y1)
            s02 += min(x0, y2)
            s03 += min(x0, y3)
            s10 += min(x1, y0)
            s11 += min(x1, y1)
            s12 += min(x1, y2)
            s13 += min(x1, y3)
            s20 += min(x2, y0)
            s21 += min(x2, y1)
            s22 += min(x2, y2)
            s23 += min(x2, y3)
            s30 += min(x3, y0)
            s31 += min(x3, y1)
            s32 += min(x3, y2)
            s33 += min(x3, y3)
    elif mode == MODE_TWO:
        for k in range(n):
            x0, x1, x2, x3 = a0[k], a1[k], a2[k], a3[k]
            y0, y1, y2, y3 = b0[k], b1[k], b2[k], b3[k]
            d = x0 - y0
            s00 += d * d
            d = x0 - y1
            s01 += d * d
            d = x0 - y2
            s02 += d * d
            d = x0 - y3
            s03 += d * d
            d = x1 - y0
            s10 += d * d
            d = x1 - y1
            s11 += d * d
            d = x1 - y2
            s12 += d * d
            d = x1 - y3
            s13 += d * d
            d = x2 - y0
            s20 += d * d
            d = x2 - y1
            s21 += d * d
            d = x2 - y2
            s22 += d * d
            d = x2 - y3
            s23 += d * d
            d = x3 - y0
            s30 += d * d
            d = x3 - y1
            s31 += d * d
            d = x3 - y2
            s32 += d * d
            d = x3 - y3
            s33 += d * d
    else:
        for k in range(n):
            x0, x1, x2, x3 = a0[k], a1[k], a2[k], a3[k]
            y0, y1, y2, y3 = b0[k], b1[k], b2[k], b3[k]
            s00 += abs(x0 - y0) ** rho
            s01 += abs(x0 - y1) ** rho
            s02 += abs(x0 - y2) ** rho
            s03 += abs(x0 - y3) ** rho
            s10 += abs(x1 - y0) ** rho
            s11 += abs(x1 - y1) ** rho
            s12 += abs(x1 - y2) ** rho
            s13 += abs(x1 - y3) ** rho
            s20 += abs(x2 - y0) ** rho
            s21 += abs(x2 - y1) ** rho
            s22 += abs(x2 - y2) ** rho
            s23 += abs(x2 - y3) ** rho
            s30 += abs(x3 - y0) ** rho
            s31 += abs(x3 - y1) ** rho
            s32 += abs(x3 - y2) ** rho
            s33 += abs(x3 - y3) ** rho
    r = acc_off
    acc[r] += s00
    acc[r + 1] += s01
    acc[r + 2] += s02
    acc[r + 3] += s03
    r += acc_stride
    acc[r] += s10
    acc[r + 1] += s11
    acc[r + 2] += s12
    acc[r + 3] += s13
    r += acc_stride
    acc[r] += s20
    acc[r + 1] += s21
    acc[r + 2] += s22
    acc[r + 3] += s23
    r += acc_stride
    acc[r] += s30
    acc[r + 1] += s31
    acc[r + 2] += s32
    acc[r + 3] += s33


@njit(cache=True, fastmath=_FM)
def _micro3(
    a, b, ia, ib, stride_a, stride_b, k0, k1, mode, rho, acc, acc_off, acc_stride,
):  # pragma: no cover
    """:func:`_micro` for a 3 x 3 micro tile: 9 accumulators and 6 operands fit the 16
    vector registers of AVX2 (4 x 4 needs 24 and spills there)."""
    z = a[0] - a[0]
    s00 = s01 = s02 = z
    s10 = s11 = s12 = z
    s20 = s21 = s22 = z
    n = k1 - k0
    a0 = a[ia + k0:ia + k1]
    a1 = a[ia + stride_a + k0:ia + stride_a + k1]
    a2 = a[ia + 2 * stride_a + k0:ia + 2 * stride_a + k1]
    b0 = b[ib + k0:ib + k1]
    b1 = b[ib + stride_b + k0:ib + stride_b + k1]
    b2 = b[ib + 2 * stride_b + k0:ib + 2 * stride_b + k1]
    if mode == MODE_ONE:
        for k in range(n):
            x0, x1, x2 = a0[k], a1[k], a2[k]
            y0, y1, y2 = b0[k], b1[k], b2[k]
            s00 += abs(x0 - y0)
            s01 += abs(x0 - y1)
            s02 += abs(x0 - y2)
            s10 += abs(x1 - y0)
            s11 += abs(x1 - y1)
            s12 += abs(x1 - y2)
            s20 += abs(x2 - y0)
            s21 += abs(x2 - y1)
            s22 += abs(x2 - y2)
    elif mode == MODE_ONE_MIN:
        for k in range(n):
            x0, x1, x2 = a0[k], a1[k], a2[k]
            y0, y1, y2 = b0[k], b1[k], b2[k]
            s00 += min(x0, y0)
            s01 += min(x0, y1)
            s02 += min(x0, y2)
            s10 += min(x1, y0)
            s11 += min(x1, y1)
            s12 += min(x1, y2)
            s20 += min(x2, y0)
            s21 += min(x2, y1)
            s22 += min(x2, y2)
    elif mode == MODE_TWO:
        for k in range(n):
            x0, x1, x2 = a0[k], a1[k], a2[k]
            y0, y1, y2 = b0[k], b1[k], b2[k]
            d = x0 - y0
            s00 += d * d
            d = x0 - y1
            s01 += d * d
            d = x0 - y2
            s02 += d * d
            d = x1 - y0
            s10 += d * d
            d = x1 - y1
            s11 += d * d
            d = x1 - y2
            s12 += d * d
            d = x2 - y0
            s20 += d * d
            d = x2 - y1
            s21 += d * d
            d = x2 - y2
            s22 += d * d
    else:
        for k in range(n):
            x0, x1, x2 = a0[k], a1[k], a2[k]
            y0, y1, y2 = b0[k], b1[k], b2[k]
            s00 += abs(x0 - y0) ** rho
            s01 += abs(x0 - y1) ** rho
            s02 += abs(x0 - y2) ** rho
            s10 += abs(x1 - y0) ** rho
            s11 += abs(x1 - y1) ** rho
            s12 += abs(x1 - y2) ** rho
            s20 += abs(x2 - y0) ** rho
            s21 += abs(x2 - y1) ** rho
            s22 += abs(x2 - y2) ** rho
    r = acc_off
    acc[r] += s00
    acc[r + 1] += s01
    acc[r + 2] += s02
    r += acc_stride
    acc[r] += s10
    acc[r + 1] += s11
    acc[r + 2] += s12
    r += acc_stride
    acc[r] += s20
    acc[r + 1] += s21
    acc[r + 2] += s22


@njit(cache=True)
def _term(x, y, mode, rho):  # pragma: no cover
    """The summand of one column: ``|x - y|``, ``min(x, y)``, ``(x - y)^2`` or ``|x - y|^rho``."""
    if mode == MODE_ONE:
        return abs(x - y)
    if mode == MODE_ONE_MIN:
        return min(x, y)
    d = x - y
    if mode == MODE_TWO:
        return d * d
    return abs(d) ** rho


@njit(cache=True)
def _single(a, b, ia, ib, k0, k1, mode, rho):  # pragma: no cover
    """One pair's sum over columns ``k0:k1`` (rows left over from the micro tiles, row
    sums, the direct sums of :func:`_finish_min`).

    Eight lanes written out, in an order fixed here rather than by ``fastmath``: the
    same bits wherever LLVM inlines it and however it vectorises it (with ``fastmath``
    the serial and the parallel kernels summed the last row of a matrix in different
    orders, depending on which kernels a process had compiled first).
    """
    z = a[0] - a[0]
    s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = z
    x = a[ia + k0:ia + k1]
    y = b[ib + k0:ib + k1]
    n = k1 - k0
    m = n - n % 8
    for k in range(0, m, 8):
        s0 += _term(x[k], y[k], mode, rho)
        s1 += _term(x[k + 1], y[k + 1], mode, rho)
        s2 += _term(x[k + 2], y[k + 2], mode, rho)
        s3 += _term(x[k + 3], y[k + 3], mode, rho)
        s4 += _term(x[k + 4], y[k + 4], mode, rho)
        s5 += _term(x[k + 5], y[k + 5], mode, rho)
        s6 += _term(x[k + 6], y[k + 6], mode, rho)
        s7 += _term(x[k + 7], y[k + 7], mode, rho)
    for k in range(m, n):
        s0 += _term(x[k], y[k], mode, rho)
    return ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7))


@njit(cache=True)
def _super_tile(a, b, n_a, n_b, n_cols, i0, j0, square, mode, rho, acc):  # pragma: no cover
    """Sums of the pairs (i0 + r, j0 + c), r, c < SUPER, into acc[r * SUPER + c] (float64);
    with ``square``, on a diagonal super tile only pairs r < c are needed."""
    ni = min(SUPER, n_a - i0)
    nj = min(SUPER, n_b - j0)
    acc[:] = 0.0
    for k0 in range(0, n_cols, CHUNK):
        k1 = min(k0 + CHUNK, n_cols)
        for r in range(0, ni, MICRO):
            # on a diagonal super tile only micro tiles that reach above the diagonal
            c_start = (r // MICRO) * MICRO if square and i0 == j0 else 0
            for c in range(c_start, nj, MICRO):
                if r + MICRO <= ni and c + MICRO <= nj and MICRO == 4:
                    _micro(a, b, (i0 + r) * n_cols, (j0 + c) * n_cols, n_cols, n_cols, k0, k1,
                           mode, rho, acc, r * SUPER + c, SUPER)
                elif r + MICRO <= ni and c + MICRO <= nj:
                    _micro3(a, b, (i0 + r) * n_cols, (j0 + c) * n_cols, n_cols, n_cols, k0, k1,
                            mode, rho, acc, r * SUPER + c, SUPER)
                else:
                    for rr in range(r, min(r + MICRO, ni)):
                        for cc in range(c, min(c + MICRO, nj)):
                            acc[rr * SUPER + cc] += _single(a, b, (i0 + rr) * n_cols, (j0 + cc) * n_cols,
                                                            k0, k1, mode, rho)


@njit(cache=True)
def _finish_min(acc, a, b, n_a, n_b, n_cols, i0, j0, square, sum_a, sum_b, tau, rho):  # pragma: no cover
    """Turn the min sums of a super tile into distances: ``S_i + S_j - 2 M_ij``.

    Its rounding error is a few ``eps (S_i + S_j)``; where the distance is below
    ``tau (S_i + S_j)`` it would lose too many digits, and the pair is summed
    again as ``sum_k |x_k - y_k|`` (identical samples then get exactly 0).
    """
    ni = min(SUPER, n_a - i0)
    nj = min(SUPER, n_b - j0)
    for r in range(ni):
        i = i0 + r
        for c in range(nj):
            j = j0 + c
            if square and i >= j:
                continue
            total = sum_a[i] + sum_b[j]
            v = total - 2.0 * acc[r * SUPER + c]
            if not v > tau * total:
                v = 0.0
                for k0 in range(0, n_cols, CHUNK):
                    v += _single(a, b, i * n_cols, j * n_cols, k0, min(k0 + CHUNK, n_cols), MODE_ONE, rho)
            acc[r * SUPER + c] = v


OUT_RECT = 0  # out[i * n_b + j] for every pair
OUT_SQUARE = 1  # out[i * n + j] and out[j * n + i] for i < j
OUT_CONDENSED = 2  # scipy's condensed order: pairs i < j row by row


@njit(cache=True)
def _store(acc, out, n_a, n_b, i0, j0, out_kind):  # pragma: no cover
    """Write the pairs of one super tile into ``out`` (see the ``OUT_*`` layouts)."""
    ni = min(SUPER, n_a - i0)
    nj = min(SUPER, n_b - j0)
    for r in range(ni):
        i = i0 + r
        # first condensed index of row i, minus the j it stands for
        base = i * n_b - i * (i + 1) // 2 - i - 1
        for c in range(nj):
            j = j0 + c
            v = acc[r * SUPER + c]
            if out_kind == OUT_RECT:
                out[i * n_b + j] = v
            elif i < j:
                if out_kind == OUT_SQUARE:
                    out[i * n_b + j] = v
                    out[j * n_b + i] = v
                else:
                    out[base + j] = v


@njit(cache=True)
def _items(n_a, n_b, square):  # pragma: no cover
    """Super tiles as (i0, j0) rows, upper triangle only for a square output."""
    ta = (n_a + SUPER - 1) // SUPER
    tb = (n_b + SUPER - 1) // SUPER
    count = ta * (ta + 1) // 2 if square else ta * tb
    items = np.empty((count, 2), dtype=np.int64)
    n = 0
    for ti in range(ta):
        for tj in range(ti if square else 0, tb):
            items[n, 0] = ti * SUPER
            items[n, 1] = tj * SUPER
            n += 1
    return items


@njit(cache=True)
def _pair_items(
    a, b, n_a, n_b, n_cols, items, t0, t1, out_kind, mode, rho, sum_a, sum_b, tau, out, acc,
):  # pragma: no cover
    """The super tiles ``items[t0:t1]`` of :func:`pair_sums`, with ``acc`` as scratch."""
    square = out_kind != OUT_RECT
    for t in range(t0, t1):
        i0, j0 = items[t, 0], items[t, 1]
        _super_tile(a, b, n_a, n_b, n_cols, i0, j0, square, mode, rho, acc)
        if mode == MODE_ONE_MIN:
            _finish_min(acc, a, b, n_a, n_b, n_cols, i0, j0, square, sum_a, sum_b, tau, rho)
        _store(acc, out, n_a, n_b, i0, j0, out_kind)


_PAIR_SUMS_DOC = """``D[i, j] = sum_k |a[i, k] - b[j, k]|^rho`` for all pairs, into ``out``.

    ``a`` and ``b`` are flat C-ordered (n_a, n_cols) and (n_b, n_cols) arrays of
    one dtype, ``out`` a flat array laid out as ``out_kind`` says. For
    :data:`OUT_SQUARE` and :data:`OUT_CONDENSED` (``b`` is ``a``) only ``i < j``
    is computed; the diagonal of a square output is left untouched. ``mode`` is :data:`MODE_ONE`,
    :data:`MODE_TWO`, :data:`MODE_GENERAL` (which alone uses ``rho``) or
    :data:`MODE_ONE_MIN`, which needs the float64 row sums ``sum_a``, ``sum_b``
    of non-negative rows and the cancellation threshold ``tau``.
    """


@njit(cache=True, nogil=True)
def pair_sums_serial(a, b, n_a, n_b, n_cols, out_kind, mode, rho, sum_a, sum_b, tau, out):  # pragma: no cover
    items = _items(n_a, n_b, out_kind != OUT_RECT)
    acc = np.empty(SUPER * SUPER, dtype=np.float64)
    _pair_items(a, b, n_a, n_b, n_cols, items, 0, items.shape[0], out_kind, mode, rho, sum_a, sum_b, tau,
                out, acc)


@intrinsic
def _take(typingctx, counter):  # pragma: no cover
    """``counter[0] += 1`` as one atomic operation; the value before. Threads that share
    ``counter`` each get every value once."""
    if not (isinstance(counter, types.Array) and counter.dtype == types.int64):
        return None

    def codegen(context, builder, signature, args):
        ary = context.make_array(signature.args[0])(context, builder, args[0])
        return builder.atomic_rmw("add", ary.data, context.get_constant(types.int64, 1), "monotonic")

    return types.int64(counter), codegen


@njit(cache=True, parallel=True)
def pair_sums(
    a, b, n_a, n_b, n_cols, out_kind, mode, rho, sum_a, sum_b, tau, out, n_threads,
):  # pragma: no cover
    items = _items(n_a, n_b, out_kind != OUT_RECT)
    n_items = items.shape[0]
    taken = np.zeros(1, dtype=np.int64)
    # every thread takes the next super tile when it is done with one: a thread that
    # another process slows down, or that got the cheaper diagonal tiles, then computes
    # fewer of them, and the threads finish together
    for _ in prange(n_threads):
        acc = np.empty(SUPER * SUPER, dtype=np.float64)
        t = _take(taken)
        while t < n_items:
            _pair_items(a, b, n_a, n_b, n_cols, items, t, t + 1, out_kind, mode, rho, sum_a, sum_b, tau, out,
                        acc)
            t = _take(taken)


@njit(cache=True)
def _row_sum(a, i, n_cols):  # pragma: no cover
    """``sum_k a[i, k]`` in float64, summed chunk by chunk as the pair sums are."""
    s = 0.0
    for k0 in range(0, n_cols, CHUNK):
        s += _single(a, a, i * n_cols, i * n_cols, k0, min(k0 + CHUNK, n_cols), MODE_ONE_MIN, 1.0)
    return s


@njit(cache=True, nogil=True)
def row_sums_serial(a, n_rows, n_cols, out):  # pragma: no cover
    """``out[i] = sum_k a[i, k]`` (float64) for the flat C-ordered (n_rows, n_cols) ``a``:
    the row sums :data:`MODE_ONE_MIN` needs (``min(x, x) = x``)."""
    for i in range(n_rows):
        out[i] = _row_sum(a, i, n_cols)


@njit(cache=True, parallel=True)
def row_sums(a, n_rows, n_cols, out):  # pragma: no cover
    """As :func:`row_sums_serial`, across Numba's threads (the same sums)."""
    for i in prange(n_rows):
        out[i] = _row_sum(a, i, n_cols)


pair_sums_serial.__doc__ = _PAIR_SUMS_DOC + (
    "\n    On the calling thread, without the GIL: the blocks of a blocked matrix\n"
    "    (:mod:`emdtree.distances.pairwise_dask`) run side by side in a worker's threads.\n")
pair_sums.__doc__ = _PAIR_SUMS_DOC + (
    "\n    On ``n_threads`` of Numba's threads, each taking the next super tile as it\n"
    "    finishes one; each pair is summed as by :func:`pair_sums_serial`, so the result\n"
    "    does not depend on the threads or on which thread took which tile.\n")


@njit(cache=True)
def _listed_one(a, b, n_cols, i, j, mode, rho):  # pragma: no cover
    v = 0.0
    for k0 in range(0, n_cols, CHUNK):
        v += _single(a, b, i * n_cols, j * n_cols, k0, min(k0 + CHUNK, n_cols), mode, rho)
    return v


@njit(cache=True, nogil=True)
def listed_pairs_serial(a, b, n_cols, rows, cols, mode, rho, out):  # pragma: no cover
    """``out[t] = sum_k |a[rows[t], k] - b[cols[t], k]|^rho`` (float64) for listed pairs,
    on the calling thread, without the GIL."""
    for t in range(rows.shape[0]):
        out[t] = _listed_one(a, b, n_cols, rows[t], cols[t], mode, rho)


@njit(cache=True, parallel=True)
def listed_pairs(a, b, n_cols, rows, cols, mode, rho, out):  # pragma: no cover
    """As :func:`listed_pairs_serial`, across Numba's threads."""
    for t in prange(rows.shape[0]):
        out[t] = _listed_one(a, b, n_cols, rows[t], cols[t], mode, rho)
