"""Chain fast path: EMD^rho and its gradient on ordinal bins, row by row.

On a chain (bin ``k`` on node ``k``, parent ``k + 1``) phi is the prefix sum of
``p - q`` and the gradient before projection is the suffix sum of
``c_k = d(w_k |phi_k|^rho)/d(phi_k)``. Both are scans along the row, so the
chain needs no transpose into a node-major buffer: each row is read in tiles
of at most 256 bits (``lanes.CHAIN_BYTES``: 8 float32 lanes with AVX2 and with
AVX-512, where the 512-bit scan measured slower, 4 with 128-bit vectors), scanned inside the register by
``log2(lanes)`` shift-and-add steps, and offset by the running total of the
previous tiles. Only that carry is a dependency between tiles. For ``rho = 1``
phi is instead summed bin after bin (``phi_k = phi_(k-1) + (p_k - q_k)`` in
the working dtype), the order of the tree kernels, so that phi is the same
bits on both paths and an exact cancellation (neighbours swapped between p and
q) leaves phi exactly 0, where ``sign(0) = 0``: about 1.7x the time of the
scan for float32, 1.3x for float64.

Per row, one ascending pass computes phi, the value and ``c`` (kept in a
row-sized scratch buffer); one descending pass writes the gradient and sums
it in float64, and a last pass over the (cached) row subtracts its mean. The
modes of :mod:`emdtree.kernels.cpu` apply: this path serves ``rho = 1`` and
``rho = 2``.
"""

from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba import prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from .jit import njit
from .lanes import CHAIN_BYTES
from .simd import _call, _splat_n, tile_lanes


def _scan(builder, x, m, reverse):
    """Inclusive prefix (or suffix, with ``reverse``) sum of the lanes of ``x``."""
    zero = ir.Constant(x.type, [0.0] * m)
    i32 = ir.IntType(32)
    s = 1
    while s < m:
        if reverse:  # lane i takes lane i + s
            mask = [i + s if i + s < m else m for i in range(m)]
        else:  # lane i takes lane i - s
            mask = [i - s if i >= s else m for i in range(m)]
        shifted = builder.shuffle_vector(x, zero, ir.Constant(ir.VectorType(i32, m), mask))
        x = builder.fadd(x, shifted)
        s *= 2
    return x


def _running_sum(builder, d, m, carry):
    """phi of the tile's bins from their differences ``d``: ``phi_k = phi_(k-1) + d_k``,
    one bin after the other from ``carry``, as the tree kernels sum a node into its
    parent. (A log-step scan would be faster, but would round differently: exact
    cancellations, such as neighbours swapped between p and q, would leave rounding
    noise where phi is 0, and flip sign(phi) for rho = 1.) Returns phi and its last lane."""
    i32 = ir.IntType(32)
    phi = ir.Constant(d.type, ir.Undefined)
    acc = carry
    for i in range(m):
        acc = builder.fadd(acc, builder.extract_element(d, ir.Constant(i32, i)))
        phi = builder.insert_element(phi, acc, ir.Constant(i32, i))
    return phi, acc


def _ptr(context, builder, arrty, arr, offset, vty):
    ary = context.make_array(arrty)(context, builder, arr)
    return builder.bitcast(builder.gep(ary.data, [offset], inbounds=True), vty.as_pointer())


def _make_up(power):
    def chain_up(typingctx, pf, qf, p_off, q_off, n_tiles, weight, scratch, out):
        if pf.dtype not in (types.float32, types.float64) or out.dtype != types.float64:
            raise TypeError("chain_up takes float32/float64 rows and a float64 out")
        m = CHAIN_BYTES // (4 if pf.dtype == types.float32 else 8)
        sig = types.void(pf, qf, types.intp, types.intp, types.intp, weight, scratch, out)

        def codegen(context, builder, signature, args):
            i32 = ir.IntType(32)
            apf, aqf, p_off, q_off, n_tiles, aw, asc, aout = args
            t = signature.args
            ety = context.get_data_type(t[0].dtype)
            vty = ir.VectorType(ety, m)
            zero = ir.Constant(vty, [0.0] * m)
            carry = cgutils.alloca_once_value(builder, zero)
            value = cgutils.alloca_once_value(builder, zero)
            sum_p = cgutils.alloca_once_value(builder, zero)
            sum_q = cgutils.alloca_once_value(builder, zero)
            low = cgutils.alloca_once_value(builder, zero)
            with cgutils.for_range(builder, n_tiles) as loop:
                k0 = builder.mul(loop.index, ir.Constant(loop.index.type, m))
                a = builder.load(_ptr(context, builder, t[0], apf, builder.add(p_off, k0), vty), align=4)
                b = builder.load(_ptr(context, builder, t[1], aqf, builder.add(q_off, k0), vty), align=4)
                w = builder.load(_ptr(context, builder, t[5], aw, k0, vty), align=4)
                builder.store(builder.fadd(builder.load(sum_p), a), sum_p)
                builder.store(builder.fadd(builder.load(sum_q), b), sum_q)
                lo = builder.load(low)
                lo = builder.select(builder.fcmp_ordered("<", a, lo), a, lo)
                builder.store(builder.select(builder.fcmp_ordered("<", b, lo), b, lo), low)
                if power == 2:  # c = 2 w phi: rounding of phi is rounding of the result, scan in log steps
                    scan = _scan(builder, builder.fsub(a, b), m, False)
                    prev = builder.load(carry)
                    phi = builder.fadd(scan, prev)
                    # the next carry is phi's last lane, carry + the tile's sum: the same
                    # rounding, added as a vector so that the chain from tile to tile is one add
                    tile_sum = builder.extract_element(scan, ir.Constant(i32, m - 1))
                    tile_sum = _splat_n(builder, tile_sum, vty, m)
                    builder.store(builder.fadd(tile_sum, prev), carry)
                else:  # c = w sign(phi): phi summed bin after bin, as in the tree kernels
                    first = builder.extract_element(builder.load(carry), ir.Constant(i32, 0))
                    phi, last = _running_sum(builder, builder.fsub(a, b), m, first)
                    builder.store(_splat_n(builder, last, vty, m), carry)
                if power == 2:
                    f = builder.fmul(phi, phi)
                    c = builder.fmul(builder.fadd(w, w), phi)
                else:
                    f = _call(builder, "fabs", vty, phi)
                    cs = _call(builder, "copysign", vty, w, phi)
                    c = builder.select(builder.fcmp_unordered("==", phi, zero), zero, cs)
                builder.store(builder.fadd(builder.load(value), builder.fmul(w, f)), value)
                builder.store(c, _ptr(context, builder, t[6], asc, k0, vty), align=4)
            # lanes reduced in float64: out = [value, phi at the last tiled bin, sum(p),
            # sum(q), min(0, p, q)]
            dbl = ir.DoubleType()
            for slot, vec in enumerate((builder.load(value), None, builder.load(sum_p),
                                        builder.load(sum_q), builder.load(low))):
                if vec is None:
                    continue
                acc = ir.Constant(dbl, 0.0)
                for i in range(m):
                    lane = builder.extract_element(vec, ir.Constant(ir.IntType(32), i))
                    lane = lane if ety == dbl else builder.fpext(lane, dbl)
                    if slot == 4:
                        acc = builder.select(builder.fcmp_ordered("<", lane, acc), lane, acc)
                    else:
                        acc = builder.fadd(acc, lane)
                builder.store(acc, _ptr(context, builder, t[7], aout, ir.Constant(p_off.type, slot), dbl))
            last = builder.extract_element(builder.load(carry), ir.Constant(ir.IntType(32), 0))
            last = last if ety == dbl else builder.fpext(last, dbl)
            builder.store(last, _ptr(context, builder, t[7], aout, ir.Constant(p_off.type, 1), dbl))
            return context.get_dummy_value()

        return sig, codegen

    chain_up.__name__ = chain_up.__qualname__ = f"chain_up_{power}"
    return intrinsic(chain_up)


@intrinsic
def chain_down(typingctx, scratch, gradf, g_off, n_tiles, carry_in, tail_sum, n_bins):
    """Descending pass over the tiled bins: g[k] = sum_{i >= k} c_i, then the
    projection: every g[k] of the row (tail included) minus their mean.

    The mean is the average of the stored values themselves (``tail_sum``
    holds those of the untiled tail), so the row sums to zero up to the
    rounding of its entries.
    """
    m = CHAIN_BYTES // (4 if scratch.dtype == types.float32 else 8)
    sig = types.void(scratch, gradf, types.intp, types.intp, types.float64, types.float64, types.intp)

    def codegen(context, builder, signature, args):
        asc, ag, g_off, n_tiles, carry_in, tail_sum, n_bins = args
        t = signature.args
        ety = context.get_data_type(t[0].dtype)
        dbl = ir.DoubleType()
        vty = ir.VectorType(ety, m)
        if ety != dbl:
            carry_in = builder.fptrunc(carry_in, ety)
        carry = cgutils.alloca_once_value(builder, _splat_n(builder, carry_in, vty, m))
        dvty = ir.VectorType(dbl, m)
        total = cgutils.alloca_once_value(builder, ir.Constant(dvty, [0.0] * m))
        with cgutils.for_range(builder, n_tiles) as loop:
            tile = builder.sub(builder.sub(n_tiles, loop.index), ir.Constant(n_tiles.type, 1))
            k0 = builder.mul(tile, ir.Constant(tile.type, m))
            c = builder.load(_ptr(context, builder, t[0], asc, k0, vty), align=4)
            scan = _scan(builder, c, m, True)
            prev = builder.load(carry)
            g = builder.fadd(scan, prev)
            # the next carry, g's first lane, as a vector add off the scan (as in chain_up)
            first = builder.extract_element(scan, ir.Constant(ir.IntType(32), 0))
            builder.store(builder.fadd(_splat_n(builder, first, vty, m), prev), carry)
            g64 = g if ety == dbl else builder.fpext(g, dvty)
            builder.store(builder.fadd(builder.load(total), g64), total)
            builder.store(g, _ptr(context, builder, t[1], ag, builder.add(g_off, k0), vty), align=4)
        acc = tail_sum
        vec = builder.load(total)
        for i in range(m):
            acc = builder.fadd(acc, builder.extract_element(vec, ir.Constant(ir.IntType(32), i)))
        mean = builder.fdiv(acc, builder.sitofp(n_bins, dbl))
        mean = mean if ety == dbl else builder.fptrunc(mean, ety)
        mean_v = _splat_n(builder, mean, vty, m)
        with cgutils.for_range(builder, n_tiles) as loop:
            ptr = _ptr(context, builder, t[1], ag, builder.add(g_off, builder.mul(loop.index,
                       ir.Constant(loop.index.type, m))), vty)
            builder.store(builder.fsub(builder.load(ptr, align=4), mean_v), ptr, align=4)
        tail = builder.mul(n_tiles, ir.Constant(n_tiles.type, m))
        with cgutils.for_range(builder, builder.sub(n_bins, tail)) as loop:
            ary = context.make_array(t[1])(context, builder, ag)
            ptr = builder.gep(ary.data, [builder.add(builder.add(g_off, tail), loop.index)], inbounds=True)
            builder.store(builder.fsub(builder.load(ptr), mean), ptr)
        return context.get_dummy_value()

    return sig, codegen


chain_up_sq = _make_up(2)
chain_up_abs = _make_up(1)


if numba.config.DISABLE_JIT:  # NUMBA_DISABLE_JIT=1: the kernels run as Python, intrinsics cannot
    from .pure import chain_up_sq, chain_up_abs, chain_down


@njit(cache=True)
def _chain_rows(
    r0, r1, pf, qf, p_step, q_step, weight, mode, want_grad, value, gradf, totals, low,
):  # pragma: no cover
    n = weight.shape[0]
    m = CHAIN_BYTES // pf.itemsize
    n_tiles = n // m
    tail = n_tiles * m
    scratch = np.empty(n, dtype=pf.dtype)
    ph = np.zeros(1, dtype=pf.dtype)
    out = np.zeros(5, dtype=np.float64)
    for r in range(r0, r1):
        po = r * p_step * n
        qo = r * q_step * n
        if mode == 2:
            chain_up_sq(pf, qf, po, qo, n_tiles, weight, scratch, out)
        else:
            chain_up_abs(pf, qf, po, qo, n_tiles, weight, scratch, out)
        val = out[0]
        ph[0] = out[1] if n_tiles > 0 else 0.0  # phi in the working dtype, as in the tiles
        sp = out[2]
        sq = out[3]
        lo = out[4]
        for k in range(tail, n):
            a = np.float64(pf[po + k])
            b = np.float64(qf[qo + k])
            sp += a
            sq += b
            lo = min(lo, min(a, b))
            ph[0] = ph[0] + (pf[po + k] - qf[qo + k])
            phi = np.float64(ph[0])
            w = np.float64(weight[k])
            if mode == 2:
                val += w * phi * phi
                scratch[k] = 2.0 * w * phi
            else:
                val += w * abs(phi)
                scratch[k] = w * np.sign(phi)
        value[r] = val
        totals[r, 0] = sp
        totals[r, 1] = sq
        low[r] = lo
        if want_grad:
            g = 0.0
            tail_sum = 0.0
            for k in range(n - 1, tail - 1, -1):
                g += scratch[k]
                gradf[r * n + k] = g
                tail_sum += gradf[r * n + k]  # the stored (rounded) value
            chain_down(scratch, gradf, r * n, n_tiles, g, tail_sum, n)


@njit(cache=True)
def chain_value_grad_serial(
    pf, qf, p_step, q_step, n_rows, weight, mode, want_grad, value, gradf, totals, low,
):  # pragma: no cover
    """EMD^rho (rho = 1 or 2) and its projected gradient on a canonical chain.

    Arguments as :func:`emdtree.kernels.cpu.value_grad_serial`, except that
    ``low`` holds one entry per row.
    """
    _chain_rows(0, n_rows, pf, qf, p_step, q_step, weight, mode, want_grad, value, gradf, totals, low)


@njit(cache=True, parallel=True)
def chain_value_grad_parallel(
    pf, qf, p_step, q_step, n_rows, weight, mode, want_grad, value, gradf, totals, low, n_threads,
):  # pragma: no cover
    """As :func:`chain_value_grad_serial`, with contiguous runs of rows across threads."""
    n_parts = min(n_rows, n_threads)
    for part in prange(n_parts):
        _chain_rows(part * n_rows // n_parts, (part + 1) * n_rows // n_parts,
                    pf, qf, p_step, q_step, weight, mode, want_grad, value, gradf, totals, low)
