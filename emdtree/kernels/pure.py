"""Plain-Python stand-ins for the vector intrinsics, used under ``NUMBA_DISABLE_JIT=1``.

Numba's intrinsics generate LLVM IR and cannot run as Python; with the JIT
disabled (how Numba code is debugged) the kernels run as Python functions and
call these instead: the same contracts, entry by entry, without the vector
registers. Results agree with the compiled kernels to rounding.
"""

from __future__ import annotations

import numpy as np

from .lanes import BLOCK, CHAIN_BYTES, VECTOR_BYTES


def row_add(buf, dst, src):
    buf[dst:dst + BLOCK] += buf[src:src + BLOCK]


def _row_up(power):
    def row_up(buf, src, dst, w, acc, acc_row):
        v = buf[src:src + BLOCK].copy()
        f = v * v if power == 2 else np.abs(v)
        acc[acc_row:acc_row + BLOCK] += w * f
        buf[dst:dst + BLOCK] += v

    return row_up


def _row_down(kind):
    def row_down(buf, row, par, w):
        v = buf[row:row + BLOCK]
        c = w * v if kind == "linear" else w * np.sign(v)
        buf[row:row + BLOCK] = buf[par:par + BLOCK] + c

    return row_down


def row_accumulate(acc, acc_row, buf, src):
    acc[acc_row:acc_row + BLOCK] += buf[src:src + BLOCK]


def row_axpy(buf, row, alpha, vec):
    buf[row:row + BLOCK] += alpha * vec[:BLOCK]


row_up_sq, row_up_abs = _row_up(2), _row_up(1)
row_down_linear, row_down_sign = _row_down("linear"), _row_down("sign")


def tile_in(buf, pf, qf, p_off, p_stride, q_off, q_stride, k0, bin_position, s0, sums_p, sums_q, low):
    m = VECTOR_BYTES // buf.itemsize
    for i in range(m):
        a = pf[p_off + i * p_stride + k0:p_off + i * p_stride + k0 + m]
        b = qf[q_off + i * q_stride + k0:q_off + i * q_stride + k0 + m]
        sums_p[(s0 + i) * m:(s0 + i + 1) * m] += a
        sums_q[(s0 + i) * m:(s0 + i + 1) * m] += b
        low[:m] = np.minimum(np.minimum(low[:m], a), b)
        buf[bin_position[k0:k0 + m] * BLOCK + s0 + i] = a - b


def tile_out(buf, outf, o_off, o_stride, k0, bin_position, s0, mean):
    m = VECTOR_BYTES // buf.itemsize
    for i in range(m):
        o = o_off + i * o_stride + k0
        outf[o:o + m] = buf[bin_position[k0:k0 + m] * BLOCK + s0 + i] - mean[s0 + i]


def tile_stats(xf, off, n_tiles, out):
    m = 64 // xf.itemsize  # STATS_BYTES
    x = xf[off:off + n_tiles * m]
    out[0] += x.sum(dtype=np.float64)
    out[1] = min(out[1], 0.0, float(x.min(initial=0.0)))


def _chain_up(power):
    def chain_up(pf, qf, p_off, q_off, n_tiles, weight, scratch, out):
        n = n_tiles * (CHAIN_BYTES // pf.itemsize)
        a, b = pf[p_off:p_off + n], qf[q_off:q_off + n]
        phi = np.zeros(n, dtype=pf.dtype)
        acc = pf.dtype.type(0)
        for k in range(n):  # bin after bin, as the kernels
            acc = acc + (a[k] - b[k])
            phi[k] = acc
        w = weight[:n]
        if power == 2:
            out[0] = float((w * (phi * phi)).sum(dtype=np.float64))
            scratch[:n] = (w + w) * phi
        else:
            out[0] = float((w * np.abs(phi)).sum(dtype=np.float64))
            scratch[:n] = w * np.sign(phi)
        out[1] = float(phi[-1]) if n else 0.0
        out[2] = float(a.sum(dtype=np.float64))
        out[3] = float(b.sum(dtype=np.float64))
        out[4] = min(0.0, float(a.min(initial=0.0)), float(b.min(initial=0.0)))

    return chain_up


chain_up_sq, chain_up_abs = _chain_up(2), _chain_up(1)


def chain_down(scratch, gradf, g_off, n_tiles, carry_in, tail_sum, n_bins):
    n = n_tiles * (CHAIN_BYTES // scratch.itemsize)
    g = np.cumsum(scratch[:n][::-1].astype(np.float64))[::-1] + carry_in
    gradf[g_off:g_off + n] = g
    mean = (float(gradf[g_off:g_off + n].astype(np.float64).sum()) + tail_sum) / n_bins
    gradf[g_off:g_off + n_bins] -= gradf.dtype.type(mean)
