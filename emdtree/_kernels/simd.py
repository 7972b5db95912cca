"""Whole-row vector operations on the node-major scratch buffer.

The sweeps read one row of ``BLOCK`` lanes (one node, ``BLOCK`` samples) and
update another row of the *same* buffer (its parent). LLVM cannot prove that
the two rows do not overlap, so a plain Numba loop over the lanes stays scalar.
These intrinsics state the operation on ``<BLOCK x float>`` vectors directly:
each is a handful of vector loads, arithmetic and stores, inlined into the
calling kernel. Offsets are element indices of the first lane of a row.

``acc`` arguments are separate ``BLOCK``-lane arrays that accumulate a per-sample
sum (the value, or the mean of the gradient).
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

BLOCK = 32


def _row(context, builder, arrty, arr, offset):
    """Pointer to ``arr.data + offset`` and the vector type of one row."""
    ary = context.make_array(arrty)(context, builder, arr)
    elem = context.get_data_type(arrty.dtype)
    vty = ir.VectorType(elem, BLOCK)
    ptr = builder.gep(ary.data, [offset], inbounds=True)
    return builder.bitcast(ptr, vty.as_pointer()), vty


def _load(builder, ptr, vty):
    return builder.load(ptr, align=4)


def _splat(builder, value, vty):
    vec = builder.insert_element(ir.Constant(vty, ir.Undefined), value, ir.Constant(ir.IntType(32), 0))
    return builder.shuffle_vector(vec, ir.Constant(vty, ir.Undefined), ir.Constant(ir.VectorType(ir.IntType(32), BLOCK), [0] * BLOCK))


def _call(builder, name, vty, *args):
    """Call the LLVM vector intrinsic ``llvm.<name>.v<BLOCK>f<bits>``."""
    bits = 32 if isinstance(vty.element, ir.FloatType) else 64
    fnty = ir.FunctionType(vty, [vty] * len(args))
    fn = cgutils.get_or_insert_function(builder.module, fnty, f"llvm.{name}.v{BLOCK}f{bits}")
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
    def row_up(typingctx, buf, src, dst, w, acc):
        _check(buf, acc)
        sig = types.void(buf, types.intp, types.intp, buf.dtype, acc)

        def codegen(context, builder, signature, args):
            arr, s, d, wv, accv = args
            ps, vty = _row(context, builder, signature.args[0], arr, s)
            pd, _ = _row(context, builder, signature.args[0], arr, d)
            pa, _ = _row(context, builder, signature.args[4], accv, ir.Constant(ir.IntType(64), 0))
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
        f"v = buf[src row]; acc += w * |v|^{power}; buf[dst row] += v (ascending sweep with the value)."
    )
    return intrinsic(row_up)


def _make_down(kind):
    def row_down(typingctx, buf, row, par, w, nb, acc):
        _check(buf, acc)
        sig = types.void(buf, types.intp, types.intp, buf.dtype, buf.dtype, acc)

        def codegen(context, builder, signature, args):
            arr, r, pr, wv, nbv, accv = args
            pr_ptr, vty = _row(context, builder, signature.args[0], arr, r)
            pp_ptr, _ = _row(context, builder, signature.args[0], arr, pr)
            pa, _ = _row(context, builder, signature.args[5], accv, ir.Constant(ir.IntType(64), 0))
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
            a = builder.fadd(_load(builder, pa, vty), builder.fmul(_splat(builder, nbv, vty), c))
            builder.store(a, pa, align=4)
            return context.get_dummy_value()

        return sig, codegen

    row_down.__name__ = row_down.__qualname__ = f"row_down_{kind}"
    row_down.__doc__ = (
        "Descending step: c = w * " + ("buf[row]" if kind == "linear" else "sign(buf[row])")
        + "; buf[row] = buf[par] + c; acc += nb * c."
    )
    return intrinsic(row_down)


row_up_sq = _make_up(2)
row_up_abs = _make_up(1)
row_down_linear = _make_down("linear")
row_down_sign = _make_down("sign")

__all__ = ["BLOCK", "row_add", "row_up_sq", "row_up_abs", "row_down_linear", "row_down_sign"]
