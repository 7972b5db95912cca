"""Whole-row vector operations on the node-major scratch buffer.

The sweeps read one row of ``BLOCK`` lanes (one node, ``BLOCK`` samples) and
update another row of the *same* buffer (its parent). LLVM cannot prove that
the two rows do not overlap, so a plain Numba loop over the lanes stays scalar.
These intrinsics state the operation on ``<BLOCK x float>`` vectors directly:
each is a handful of vector loads, arithmetic and stores, inlined into the
calling kernel. Offsets are element indices of the first lane of a row.

``acc`` arguments are separate arrays of ``BLOCK``-lane rows that accumulate a
per-sample sum (the value, or the mean of the gradient).
"""

from __future__ import annotations

import numba
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from .lanes import BLOCK, VECTOR_BYTES


def _row(context, builder, arrty, arr, offset):
    """Pointer to ``arr.data + offset`` and the vector type of one row."""
    ary = context.make_array(arrty)(context, builder, arr)
    elem = context.get_data_type(arrty.dtype)
    vty = ir.VectorType(elem, BLOCK)
    ptr = builder.gep(ary.data, [offset], inbounds=True)
    return builder.bitcast(ptr, vty.as_pointer()), vty


def _load(builder, ptr, vty):
    return builder.load(ptr, align=4)


def _splat_n(builder, value, vty, lanes):
    """A vector of ``lanes`` copies of the scalar ``value``."""
    vec = builder.insert_element(ir.Constant(vty, ir.Undefined), value, ir.Constant(ir.IntType(32), 0))
    mask = ir.Constant(ir.VectorType(ir.IntType(32), lanes), [0] * lanes)
    return builder.shuffle_vector(vec, ir.Constant(vty, ir.Undefined), mask)


def _splat(builder, value, vty):
    return _splat_n(builder, value, vty, BLOCK)


def _call(builder, name, vty, *args):
    """Call the LLVM vector intrinsic ``llvm.<name>.v<lanes>f<bits>``."""
    bits = 32 if isinstance(vty.element, ir.FloatType) else 64
    fnty = ir.FunctionType(vty, [vty] * len(args))
    fn = cgutils.get_or_insert_function(builder.module, fnty, f"llvm.{name}.v{vty.count}f{bits}")
    return builder.call(fn, list(args))


def _check(buf, acc=None):
    ok = isinstance(buf, types.Array) and buf.ndim == 1 and buf.dtype in (types.float32, types.float64)
    if acc is not None:
        ok = ok and isinstance(acc, types.Array) and acc.dtype == buf.dtype
    if not ok:
        raise TypeError("row intrinsics take 1-D float32/float64 arrays of one dtype")


@intrinsic
def row_add(typingctx, buf, dst, src):
    """buf[dst:dst+BLOCK] += buf[src:src+BLOCK]."""
    _check(buf)
    sig = types.void(buf, types.intp, types.intp)

    def codegen(context, builder, signature, args):
        arr, d, s = args
        pd, vty = _row(context, builder, signature.args[0], arr, d)
        ps, _ = _row(context, builder, signature.args[0], arr, s)
        builder.store(builder.fadd(_load(builder, pd, vty), _load(builder, ps, vty)), pd, align=4)
        return context.get_dummy_value()

    return sig, codegen


def _make_up(power):
    def row_up(typingctx, buf, src, dst, w, acc, acc_row):
        _check(buf, acc)
        sig = types.void(buf, types.intp, types.intp, buf.dtype, acc, types.intp)

        def codegen(context, builder, signature, args):
            arr, s, d, wv, accv, ar = args
            ps, vty = _row(context, builder, signature.args[0], arr, s)
            pd, _ = _row(context, builder, signature.args[0], arr, d)
            pa, _ = _row(context, builder, signature.args[4], accv, ar)
            v = _load(builder, ps, vty)
            if power == 2:
                f = builder.fmul(v, v)
            else:
                f = _call(builder, "fabs", vty, v)
            a = builder.fadd(_load(builder, pa, vty), builder.fmul(_splat(builder, wv, vty), f))
            builder.store(a, pa, align=4)
            builder.store(builder.fadd(_load(builder, pd, vty), v), pd, align=4)
            return context.get_dummy_value()

        return sig, codegen

    row_up.__name__ = row_up.__qualname__ = f"row_up_{power}"
    row_up.__doc__ = (
        f"v = buf[src row]; acc[acc row] += w * |v|^{power}; buf[dst row] += v (ascending sweep)."
    )
    return intrinsic(row_up)


def _make_down(kind):
    def row_down(typingctx, buf, row, par, w):
        _check(buf)
        sig = types.void(buf, types.intp, types.intp, buf.dtype)

        def codegen(context, builder, signature, args):
            arr, r, pr, wv = args
            pr_ptr, vty = _row(context, builder, signature.args[0], arr, r)
            pp_ptr, _ = _row(context, builder, signature.args[0], arr, pr)
            v = _load(builder, pr_ptr, vty)
            wvec = _splat(builder, wv, vty)
            if kind == "linear":
                c = builder.fmul(wvec, v)
            else:
                # w * sign(v) with sign(0) = 0: copysign(w, v), zeroed where v == 0
                cs = _call(builder, "copysign", vty, wvec, v)
                zero = ir.Constant(vty, [0.0] * BLOCK)
                c = builder.select(builder.fcmp_unordered("==", v, zero), zero, cs)
            builder.store(builder.fadd(_load(builder, pp_ptr, vty), c), pr_ptr, align=4)
            return context.get_dummy_value()

        return sig, codegen

    row_down.__name__ = row_down.__qualname__ = f"row_down_{kind}"
    row_down.__doc__ = (
        "Descending step: buf[row] = buf[par] + w * "
        + ("buf[row]." if kind == "linear" else "sign(buf[row]), with sign(0) = 0.")
    )
    return intrinsic(row_down)


@intrinsic
def row_accumulate(typingctx, acc, acc_row, buf, src):
    """acc[acc_row:acc_row+BLOCK] += buf[src:src+BLOCK], with ``acc`` in float64."""
    _check(buf)
    if not (isinstance(acc, types.Array) and acc.dtype == types.float64):
        raise TypeError("row_accumulate accumulates into a float64 array")
    sig = types.void(acc, types.intp, buf, types.intp)

    def codegen(context, builder, signature, args):
        accv, ar, arr, s = args
        pa, aty = _row(context, builder, signature.args[0], accv, ar)
        ps, vty = _row(context, builder, signature.args[2], arr, s)
        v = _load(builder, ps, vty)
        if vty != aty:
            v = builder.fpext(v, aty)
        builder.store(builder.fadd(_load(builder, pa, aty), v), pa, align=4)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def row_axpy(typingctx, buf, row, alpha, vec):
    """buf[row:row+BLOCK] += alpha * vec[:BLOCK]."""
    _check(buf, vec)
    sig = types.void(buf, types.intp, buf.dtype, vec)

    def codegen(context, builder, signature, args):
        arr, r, a, v = args
        pr, vty = _row(context, builder, signature.args[0], arr, r)
        pv, _ = _row(context, builder, signature.args[3], v, ir.Constant(r.type, 0))
        x = builder.fmul(_splat(builder, a, vty), _load(builder, pv, vty))
        builder.store(builder.fadd(_load(builder, pr, vty), x), pr, align=4)
        return context.get_dummy_value()

    return sig, codegen


row_up_sq = _make_up(2)
row_up_abs = _make_up(1)
row_down_linear = _make_down("linear")
row_down_sign = _make_down("sign")


# ---------------------------------------------------------------------------- tile transposes
#
# Moving between the caller's sample-major rows and the node-major buffer is a
# transpose. A tile of TILE x TILE entries (TILE = VECTOR_BYTES / itemsize: one
# vector register per row, zmm with AVX-512, ymm with AVX2) is loaded row by row,
# transposed in registers by log2(TILE) rounds of interleaving shuffles, and
# stored column by column. Its TILE rows and the shuffles' results fit the 16
# (AVX2) or 32 (AVX-512) vector registers; tiles of wider vectors than the
# machine's would spill.

STATS_BYTES = 64  # tile_stats reads 64 bytes per step on every machine: a reduction, no transpose


def tile_lanes(dtype) -> int:
    """Lanes of one tile row, one vector register: VECTOR_BYTES / itemsize (16 float32
    lanes with AVX-512, 8 with AVX2, 4 with 128-bit vectors)."""
    return VECTOR_BYTES // (4 if dtype == types.float32 else 8)


def stats_lanes(dtype) -> int:
    """Lanes of one :func:`tile_stats` step: 16 for float32, 8 for float64."""
    return STATS_BYTES // (4 if dtype == types.float32 else 8)


def _vec(context, builder, arrty, arr, offset, lanes):
    ary = context.make_array(arrty)(context, builder, arr)
    vty = ir.VectorType(context.get_data_type(arrty.dtype), lanes)
    ptr = builder.gep(ary.data, [offset], inbounds=True)
    return builder.bitcast(ptr, vty.as_pointer()), vty


def _item(context, builder, arrty, arr, index):
    ary = context.make_array(arrty)(context, builder, arr)
    return builder.load(builder.gep(ary.data, [index], inbounds=True))


def _transpose(builder, rows):
    """Transpose m vectors of m lanes (m a power of two) by interleaving rounds."""
    m = len(rows)
    h = m // 2
    i32 = ir.IntType(32)
    lo = ir.Constant(ir.VectorType(i32, m), [x for i in range(h) for x in (i, m + i)])
    hi = ir.Constant(ir.VectorType(i32, m), [x for i in range(h, m) for x in (i, m + i)])
    v = list(rows)
    for _ in range(m.bit_length() - 1):
        nxt = []
        for i in range(h):
            nxt.append(builder.shuffle_vector(v[i], v[i + h], lo))
            nxt.append(builder.shuffle_vector(v[i], v[i + h], hi))
        v = nxt
    return v


def _min(builder, a, b):
    return builder.select(builder.fcmp_ordered("<", a, b), a, b)


@intrinsic
def tile_in(
    typingctx, buf, pf, qf, p_off, p_stride, q_off, q_stride, k0, bin_position, s0, sums_p, sums_q, low,
):
    """Load a tile of p - q into the node-major buffer, with its checks.

    For i, j < m (m = tile_lanes): ``buf[bin_position[k0 + j] * BLOCK + s0 + i]
    = pf[p_off + i * p_stride + k0 + j] - qf[...]``; the row-partial sums of p
    and q go to ``sums_p/sums_q[(s0 + i) * m:(s0 + i + 1) * m]`` and the lane-wise
    minimum of every entry read to ``low[:m]``.
    """
    _check(buf)
    m = tile_lanes(buf.dtype)
    intp = types.intp
    sig = types.void(buf, pf, qf, intp, intp, intp, intp, intp, bin_position, intp, sums_p, sums_q, low)

    def codegen(context, builder, signature, args):
        (abuf, apf, aqf, p_off, p_stride, q_off, q_stride, k0, abp, s0, asp, asq, alow) = args
        t = signature.args
        low_ptr, vty = _vec(context, builder, t[12], alow, ir.Constant(ir.IntType(64), 0), m)
        low_v = builder.load(low_ptr, align=4)
        diffs = []
        for i in range(m):
            ii = ir.Constant(p_off.type, i)
            po = builder.add(builder.add(p_off, builder.mul(ii, p_stride)), k0)
            qo = builder.add(builder.add(q_off, builder.mul(ii, q_stride)), k0)
            a = builder.load(_vec(context, builder, t[1], apf, po, m)[0], align=4)
            b = builder.load(_vec(context, builder, t[2], aqf, qo, m)[0], align=4)
            so = builder.mul(builder.add(s0, ii), ir.Constant(s0.type, m))
            sp = _vec(context, builder, t[10], asp, so, m)[0]
            sq = _vec(context, builder, t[11], asq, so, m)[0]
            builder.store(builder.fadd(builder.load(sp, align=4), a), sp, align=4)
            builder.store(builder.fadd(builder.load(sq, align=4), b), sq, align=4)
            low_v = _min(builder, _min(builder, low_v, a), b)
            diffs.append(builder.fsub(a, b))
        builder.store(low_v, low_ptr, align=4)
        for j, col in enumerate(_transpose(builder, diffs)):
            node = _item(context, builder, t[8], abp, builder.add(k0, ir.Constant(k0.type, j)))
            off = builder.add(builder.mul(node, ir.Constant(node.type, BLOCK)), s0)
            builder.store(col, _vec(context, builder, t[0], abuf, off, m)[0], align=4)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def tile_out(typingctx, buf, outf, o_off, o_stride, k0, bin_position, s0, mean):
    """Store a tile of the node-major buffer, minus a per-sample mean, to rows.

    ``outf[o_off + i * o_stride + k0 + j] = buf[bin_position[k0 + j] * BLOCK + s0 + i]
    - mean[s0 + i]`` for i, j < m.
    """
    _check(buf)
    m = tile_lanes(buf.dtype)
    intp = types.intp
    sig = types.void(buf, outf, intp, intp, intp, bin_position, intp, mean)

    def codegen(context, builder, signature, args):
        abuf, aout, o_off, o_stride, k0, abp, s0, amean = args
        t = signature.args
        mean_v = builder.load(_vec(context, builder, t[7], amean, s0, m)[0], align=4)
        cols = []
        for j in range(m):
            node = _item(context, builder, t[5], abp, builder.add(k0, ir.Constant(k0.type, j)))
            off = builder.add(builder.mul(node, ir.Constant(node.type, BLOCK)), s0)
            col = builder.load(_vec(context, builder, t[0], abuf, off, m)[0], align=4)
            cols.append(builder.fsub(col, mean_v))
        for i, row in enumerate(_transpose(builder, cols)):
            ii = ir.Constant(o_off.type, i)
            oo = builder.add(builder.add(o_off, builder.mul(ii, o_stride)), k0)
            builder.store(row, _vec(context, builder, t[1], aout, oo, m)[0], align=4)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def tile_stats(typingctx, xf, off, n_tiles, out):
    """Sum and minimum of ``xf[off:off + n_tiles * m]`` (m = stats_lanes) with vector
    lanes: ``out[0] += sum`` (accumulated in float64 lanes, so a float32 row cannot
    overflow), ``out[1] = min(out[1], x)``. A NaN or infinite entry makes the sum
    non-finite."""
    if not (isinstance(xf, types.Array) and xf.dtype in (types.float32, types.float64)):
        raise TypeError("tile_stats takes a float32/float64 array")
    m = stats_lanes(xf.dtype)
    sig = types.void(xf, types.intp, types.intp, out)

    def codegen(context, builder, signature, args):
        ax, off, n_tiles, aout = args
        t = signature.args
        ety = context.get_data_type(t[0].dtype)
        dbl = ir.DoubleType()
        vty = ir.VectorType(ety, m)
        dvty = ir.VectorType(dbl, m)
        total = cgutils.alloca_once_value(builder, ir.Constant(dvty, [0.0] * m))
        low = cgutils.alloca_once_value(builder, ir.Constant(vty, [0.0] * m))
        with cgutils.for_range(builder, n_tiles) as loop:
            k0 = builder.add(off, builder.mul(loop.index, ir.Constant(loop.index.type, m)))
            x = builder.load(_vec(context, builder, t[0], ax, k0, m)[0], align=4)
            x64 = x if ety == dbl else builder.fpext(x, dvty)
            builder.store(builder.fadd(builder.load(total), x64), total)
            builder.store(_min(builder, builder.load(low), x), low)
        out_ary = context.make_array(t[3])(context, builder, aout)
        p_sum = builder.gep(out_ary.data, [ir.Constant(off.type, 0)], inbounds=True)
        p_low = builder.gep(out_ary.data, [ir.Constant(off.type, 1)], inbounds=True)
        acc = builder.load(p_sum)
        lo = builder.load(p_low)
        tv, lv = builder.load(total), builder.load(low)
        for i in range(m):
            idx = ir.Constant(ir.IntType(32), i)
            a = builder.extract_element(tv, idx)
            b = builder.extract_element(lv, idx)
            if ety != dbl:
                b = builder.fpext(b, dbl)
            acc = builder.fadd(acc, a)
            lo = _min(builder, lo, b)
        builder.store(acc, p_sum)
        builder.store(lo, p_low)
        return context.get_dummy_value()

    return sig, codegen


if numba.config.DISABLE_JIT:  # NUMBA_DISABLE_JIT=1: the kernels run as Python, intrinsics cannot
    from .pure import (  # noqa: E402,F811
        row_accumulate, row_add, row_axpy, row_down_linear, row_down_sign, row_up_abs, row_up_sq, tile_in,
        tile_out, tile_stats,
    )


__all__ = [
    "BLOCK", "VECTOR_BYTES", "row_add", "row_accumulate", "row_axpy", "row_up_sq", "row_up_abs",
    "row_down_linear", "row_down_sign", "tile_lanes", "stats_lanes", "tile_in", "tile_out", "tile_stats",
]
