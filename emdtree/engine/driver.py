"""Drivers: choose and launch the kernels for prepared rows.

Between the public API (which validates and reshapes) and the kernels (which
take flat arrays and do no checks), this module decides which kernel runs:
the chain fast path, the 32-sample blocked kernel, the one-sample-at-a-time
kernel for a few rows, and whether to spread blocks across threads. Each rule
is set by a measurement in ``benchmarks/``.
"""

from __future__ import annotations

import os

import numpy as np

from . import normalize as _normalize, tiers as _tiers
from .inputs import Rows, check_kernel_stats, check_label_stats, check_result
from ..kernels import chain, cpu, dense
from ..kernels import rows as rows_kernel
from .threads import parallel_launch, usable_threads
from ..trees.tree import Tree
from . import backends, reference
from .plan import plan_of

# Work (rows x nodes) from which the kernels run across Numba's threads. Measured
# with benchmarks/bench_threads.py on a 2-core machine shared with other work:
# one thread takes about 1 ns per row and node (ImageNet tree, float32); two
# threads halve that when the second core is idle, but a busy second core was
# seen to add 5-8 ms to a parallel call whatever its size. At 16M the serial
# time (~16 ms) is large enough that the parallel call is never slower, and up
# to 1.9x faster when the core is free. Override with EMDTREE_PARALLEL_MIN_WORK.
PARALLEL_MIN_WORK = int(os.environ.get("EMDTREE_PARALLEL_MIN_WORK", 16_000_000))

# Fewer samples than this (alone, or left over after full blocks) are swept one at
# a time: measured break-even against a 32-lane block is 8 samples on the ImageNet
# tree and 8-16 on trees of 2e4-2e5 nodes, where the block's buffer leaves the cache.
ROW_KERNEL_MAX = 8


def mode_of(rho: float) -> int:
    """Kernel mode for the exponent: 1, 2, or 0 for any other rho."""
    if rho == 1.0:
        return cpu.MODE_ONE
    if rho == 2.0:
        return cpu.MODE_TWO
    return cpu.MODE_GENERAL


_CONSTS: dict[tuple[float, str], np.ndarray] = {}


def consts_of(rho: float, dtype: np.dtype) -> np.ndarray:
    """The kernels' scalars in the working dtype: [rho, rho - 1, rho (rho - 1), rho - 2].

    The kernels only read them: the arrays of rho 1 and 2 are made once per dtype
    and shared by every call.
    """
    key = (rho, np.dtype(dtype).char)
    consts = _CONSTS.get(key)
    if consts is None:
        consts = np.array([rho, rho - 1.0, rho * (rho - 1.0), rho - 2.0], dtype=dtype)
        if rho in (1.0, 2.0):
            _CONSTS[key] = consts
    return consts


def kernel_arrays(tree: Tree, dtype: np.dtype) -> tuple[np.ndarray, ...]:
    """Layout arrays in the kernels' argument order, converted once per dtype (the tree's plan)."""
    return plan_of(tree).kernel_arrays(dtype)


def sweep_arrays(tree: Tree, dtype: np.dtype) -> tuple[np.ndarray, ...]:
    """``(parent, weight, bin_position, non_bin)`` of the tree's
    :class:`~emdtree.trees.layout.SweepOrder` for the value-and-gradient kernels,
    converted once per dtype (the tree's plan)."""
    return plan_of(tree).sweep_arrays(dtype)


def numpy_value_grad(
    rows: Rows, rho: float, want_grad: bool, labels: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The NumPy pass, for kernels not compiled yet (:mod:`emdtree.engine.tiers` decides).

    The reference math (:mod:`emdtree.engine.reference`) in NumPy and SciPy:
    phi formed as the kernels form it (:func:`~emdtree.engine.backends.subtree_sums_as_kernels`,
    so exact zeros and ``sign(0) = 0`` agree), the rest summed in float64 and
    rounded once to the working dtype, so the results agree with the kernels to
    the working dtype's rounding. Returns, as the
    fused kernel: EMD^rho per row, the flat projected gradient (or an empty
    array), the float64 row totals (rows, 2) and the least entry, (1,).
    """
    (p, q), n_rows = rows.arrays, rows.n_rows
    dtype = rows.dtype
    totals = np.empty((n_rows, 2), dtype=np.float64)
    totals[:, 0] = np.broadcast_to(p.sum(axis=1, dtype=np.float64), (n_rows,))
    totals[:, 1] = np.broadcast_to(q.sum(axis=1, dtype=np.float64), (n_rows,))
    low = np.array([min(p.min(initial=np.inf), q.min(initial=np.inf))], dtype=np.float64)
    # p - q in the working dtype, as the kernels form it, and phi in the kernels' order
    # (exact zeros where theirs are); what follows from them in float64
    d = np.broadcast_to(p - q, (n_rows, p.shape[1])).copy()
    if labels.shape[0]:
        d[np.arange(n_rows), labels] -= d.dtype.type(1.0)
    plan = plan_of(rows.tree)
    inner = backends.subtree_sums_as_kernels(plan, d).astype(np.float64)
    d64 = np.asfortranarray(d.T, dtype=np.float64)  # node-major, (n_bins, rows): each row's bins together
    with np.errstate(over="ignore", invalid="ignore"):  # an overflow shows in the result check
        value, grad = reference.value_grad(backends.numpy_ops, d64, plan, rho, want_grad, inner=inner)
    value = value.astype(dtype)
    if grad is None:
        return value, np.empty(0, dtype=dtype), totals, low
    # rounded and transposed to the rows in one ufunc pass into a Fortran-ordered array:
    # 0.7 ms for (1000, 512) where np.ascontiguousarray(grad.T, dtype) took 3.6 ms
    out = np.empty(grad.shape, dtype=dtype, order="F")
    np.positive(grad, out=out, casting="same_kind")
    return value, out.T.reshape(-1), totals, low


def launch(serial, parallel, rows: Rows, *args) -> None:
    """Run a kernel on one thread, or across Numba's threads for large enough work."""
    if rows.n_rows > cpu.BLOCK and rows.n_rows * rows.tree.n_nodes >= PARALLEL_MIN_WORK:
        n_threads = usable_threads()
        if n_threads > 1:
            with parallel_launch(n_threads):
                parallel(*args, n_threads)
            return
    serial(*args)


_NO_LABELS = np.zeros(0, dtype=np.int64)


def value_grad(
    rows: Rows, rho: float, want_grad: bool, check: bool, labels: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """Run the fused kernel; validate p and q from the statistics it gathers.

    With ``labels`` (int64, one bin per row) the target of row r is a unit mass on
    bin ``labels[r]`` and ``q`` must be a broadcast row of zeros.
    """
    (p, q), (ps, qs) = rows.arrays, rows.steps
    tree, dtype, n_rows = rows.tree, rows.dtype, rows.n_rows
    # the sweep order, not the post-order layout: samples then move between the rows and
    # the scratch buffer in bin order (benchmarks/bench_scaling.py); also checks the
    # edge costs against the dtype's range, for the NumPy pass too
    parent, weight, bin_pos, non_bin = sweep_arrays(tree, dtype)
    n_bins = tree.n_bins
    mode = mode_of(rho)
    labels = _NO_LABELS if labels is None else labels
    if n_rows and _tiers.use_numpy(n_rows * tree.n_nodes) and plan_of(tree).suits_numpy_pass():
        value, grad, totals, low = numpy_value_grad(rows, rho, want_grad, labels)
        compiled = False
    else:
        value = np.empty(n_rows, dtype=dtype)
        grad = np.empty(n_rows * n_bins if want_grad else 0, dtype=dtype)
        totals = np.empty((n_rows, 2), dtype=np.float64)
        pf, qf = p.reshape(-1), q.reshape(-1)
        if tree._is_canonical_chain and mode != cpu.MODE_GENERAL and not labels.shape[0]:
            low = np.empty(n_rows, dtype=np.float64)
            launch(chain.chain_value_grad_serial, chain.chain_value_grad_parallel, rows,
                   pf, qf, ps, qs, n_rows, kernel_arrays(tree, dtype)[1], mode, want_grad, value, grad,
                   totals, low)
        else:
            consts = consts_of(rho, dtype)
            # full blocks of BLOCK samples through the blocked kernel, a few left-over
            # samples one at a time (benchmarks/bench_rows.py)
            n_blocked = n_rows if n_rows % cpu.BLOCK >= ROW_KERNEL_MAX else n_rows - n_rows % cpu.BLOCK
            low = None
            if n_blocked:
                low = np.empty((n_blocked + cpu.BLOCK - 1) // cpu.BLOCK, dtype=dtype)
                launch(cpu.value_grad_serial, cpu.value_grad_parallel, rows,
                       pf, qf, ps, qs, labels, n_blocked, parent, weight, bin_pos, non_bin,
                       mode, consts, want_grad, value, grad, totals, low)
            if n_blocked < n_rows:
                k = n_blocked * n_bins
                rest = slice(n_blocked, None)
                rest_low = np.empty(n_rows - n_blocked, dtype=np.float64)
                rows_kernel.value_grad_rows(
                    pf[k * ps:], qf[k * qs:], ps, qs, labels[n_blocked:] if labels.shape[0] else labels,
                    n_rows - n_blocked, parent, weight, bin_pos, non_bin, mode, consts, want_grad,
                    value[rest], grad[k if want_grad else 0:], totals[rest], rest_low,
                )
                low = rest_low if low is None else np.concatenate((low, rest_low))
            if low is None:  # no rows
                low = np.zeros(0, dtype=dtype)
        compiled = True
    if check:
        # finite masses, so a value that is not finite is |phi|^rho overflowing; with
        # rho other than 1 and 2 the gradient's rho |phi|^(rho - 1) can overflow alone
        checked_grad = grad if want_grad and mode == cpu.MODE_GENERAL else None
        if labels.shape[0]:
            check_label_stats(rows, totals, low)
            check_result(rows, rho, value,
                         None if checked_grad is None else checked_grad.reshape(n_rows, n_bins))
        else:
            check_kernel_stats(rows, rho, totals, low, value, checked_grad, compiled)
    return value, (grad.reshape(n_rows, n_bins) if want_grad else None)


def normalized_grad(grad: np.ndarray, rows: Rows) -> np.ndarray:
    """Chain rule through the normalisation of ``p`` (``rows.normalize``): with
    ``a`` the normalised rows, ``(g - <g, a>) / S`` for ``"l1"`` and
    ``a * (g - <g, a>)`` (with respect to the logits) for ``"softmax"``."""
    a = rows.arrays[0]
    if rows.normalize == "softmax":
        return _normalize.grad(np, "softmax", grad, a, None)
    inner = np.einsum("rk,rk->r", grad, np.broadcast_to(a, grad.shape))
    return (grad - inner[:, None]) / rows.totals[0].astype(grad.dtype)[:, None]


def phi(rows: Rows, node_order: bool) -> np.ndarray:
    """phi of every row, (n_rows, n_nodes), in node order or in layout positions."""
    (pa, qa), (ps, qs) = rows.arrays, rows.steps
    parent, _, bin_pos, non_bin, _ = kernel_arrays(rows.tree, rows.dtype)
    n_nodes = rows.tree.n_nodes
    columns = rows.tree.layout.position if node_order else np.arange(n_nodes, dtype=np.int64)
    out = np.empty(rows.n_rows * n_nodes, dtype=rows.dtype)
    args = (pa.reshape(-1), qa.reshape(-1), ps, qs, rows.n_rows, parent, bin_pos, non_bin, columns, out)
    if rows.n_rows < ROW_KERNEL_MAX:
        rows_kernel.phi_rows(*args)
    else:
        launch(cpu.phi_serial, cpu.phi_parallel, rows, *args)
    return out.reshape(rows.n_rows, n_nodes)


def hvp(rows: Rows, rho: float, project_out: bool) -> np.ndarray:
    """``P H P v`` (or ``H P v``, the transposed Jacobian of the projected gradient
    applied to ``v``, for reverse-mode second derivatives) as (n_rows, n_bins)."""
    out = np.zeros(rows.n_rows * rows.tree.n_bins, dtype=rows.dtype)
    if rho != 1.0:
        (pa, qa, va), (ps, qs, vs) = rows.arrays, rows.steps
        parent, weight, bin_pos, non_bin, below = kernel_arrays(rows.tree, rows.dtype)
        args = (pa.reshape(-1), qa.reshape(-1), va.reshape(-1), ps, qs, vs, rows.n_rows, parent, weight,
                bin_pos, non_bin, below, mode_of(rho), consts_of(rho, rows.dtype), project_out, out)
        if rows.n_rows < ROW_KERNEL_MAX:
            rows_kernel.hvp_rows(*args)
        else:
            launch(cpu.hvp_serial, cpu.hvp_parallel, rows, *args)
    return out.reshape(rows.n_rows, rows.tree.n_bins)


def hessian(rows: Rows, rho: float) -> np.ndarray:
    """Projected dense Hessians, (n_rows, n_bins, n_bins), float64."""
    tree_, n = rows.tree, rows.tree.n_bins
    lay = tree_.layout
    out = np.zeros((rows.n_rows, n, n), dtype=np.float64)
    if rho != 1.0:
        mode = mode_of(rho)
        if mode == cpu.MODE_TWO:
            # constant (paper eq. 12): one matrix, copied to every sample
            phi_pos = np.zeros((1, tree_.n_nodes), dtype=np.float64)
            single = np.empty((1, n, n), dtype=np.float64)
            dense.hessian_batch_serial(phi_pos, lay.weight, lay.bins_below, lay.parent, lay.size, lay.bin_at,
                                       lay.bin_position, mode, rho, single)
            out[:] = single
        else:
            phi_pos = phi(rows, node_order=False)
            args = (phi_pos, lay.weight, lay.bins_below, lay.parent, lay.size, lay.bin_at, lay.bin_position,
                    mode, rho, out)
            n_threads = usable_threads()
            if rows.n_rows > 1 and rows.n_rows * n * n >= PARALLEL_MIN_WORK and n_threads > 1:
                with parallel_launch(n_threads):
                    dense.hessian_batch(*args)
            else:
                dense.hessian_batch_serial(*args)
    return out
