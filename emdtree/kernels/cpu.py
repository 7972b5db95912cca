"""Numba CPU kernels for phi, EMD^rho, its gradient and Hessian-vector products.

All kernels work on a topological numbering of the tree's nodes
(``parent[j] > j``, root last): the post-order :class:`~emdtree.trees.layout.Layout`,
or for the value and gradient the :func:`~emdtree.trees.layout.sweep_order`, which
puts the bins of the leaves first and in bin order so that samples move
between the caller's rows and the scratch buffer in order. They take 2-D
C-contiguous float32 or float64 arrays of shape ``(rows, n_bins)`` and do no
validation.

Layout of the work. Per sample the algorithm is two sweeps over the nodes, an
ascending one that accumulates the subtree sums phi (paper eq. 5/8) and a
descending one that accumulates, for every node, the sum over its ancestors of
``d(w_i |phi_i|^rho)/d(phi_i)`` (paper eq. 9/10). Done one sample at a time,
each node visit is a dependent load-add-store and the sweeps are bound by
latency. Instead the kernels take ``BLOCK`` samples at once and transpose them
into a node-major scratch buffer ``buf[node * BLOCK + s]``; every node visit is
then ``BLOCK`` independent lanes, stated as vector operations in
:mod:`emdtree.kernels.simd`; the scratch buffer of one block stays in the
L1/L2 cache, and the input and output are each read or written once, in square
tiles transposed in registers, one vector register per tile row (16 float32
lanes with AVX-512, 8 with AVX2: :func:`emdtree.kernels.lanes.vector_bytes`).

Inputs ``p`` and ``q`` may have a single row that is broadcast against the
other's rows: ``p_step`` / ``q_step`` are 1 for a full array and 0 for a
broadcast row.

``mode`` selects the power: 1 (exact EMD, rho = 1), 2 (the relaxed EMD^2) or
0 (any other rho > 1). The modes are separate loops because a general ``pow``
costs several times the rest of the sweep. ``consts`` holds the scalars in the
working dtype, ``[rho, rho - 1, rho * (rho - 1), rho - 2]``, so that float32
kernels never promote to float64.

The value is accumulated in the working dtype in chunks of ``CHUNK`` nodes and
the chunks are added in float64: the rounding error then grows with
``CHUNK + n_nodes / CHUNK`` instead of ``n_nodes``. The mean that projects the
gradient is summed in float64 from the entries that are stored.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from .jit import njit
from .simd import (
    BLOCK,
    VECTOR_BYTES,
    row_accumulate,
    row_add,
    row_axpy,
    row_down_linear,
    row_down_sign,
    row_up_abs,
    row_up_sq,
    tile_in,
    tile_out,
)

CHUNK = 64

MODE_GENERAL = 0
MODE_ONE = 1
MODE_TWO = 2


ACC_ROWS = 4  # independent accumulator rows, so consecutive nodes do not wait on each other


@njit(cache=True)
def _load_diff(
    pf, qf, p_stride, q_stride, r0, n_valid, k_start, bin_position, buf, sums_p, sums_q, low,
):  # pragma: no cover
    """Scalar path of :func:`tile_in` for bins ``k_start:`` (and partial blocks)."""
    n_bins = bin_position.shape[0]
    m = VECTOR_BYTES // buf.itemsize
    lo = low[0]
    for k in range(k_start, n_bins):
        base = bin_position[k] * BLOCK
        for s in range(n_valid):
            a = pf[(r0 + s) * p_stride + k]
            b = qf[(r0 + s) * q_stride + k]
            sums_p[s * m] += a
            sums_q[s * m] += b
            lo = min(lo, min(a, b))
            buf[base + s] = a - b
        for s in range(n_valid, BLOCK):
            buf[base + s] = 0.0
    low[0] = lo


@njit(cache=True)
def _load_block(
    pf, qf, p_stride, q_stride, r0, n_valid, bin_position, non_bin, buf, sums_p, sums_q, low,
):  # pragma: no cover
    """buf[bin node, s] = p[r0 + s] - q[r0 + s], zero elsewhere; row sums and minimum on the way."""
    n_bins = bin_position.shape[0]
    m = VECTOR_BYTES // buf.itemsize
    sums_p[:] = 0.0
    sums_q[:] = 0.0
    low[:] = 0.0
    _zero_rows(non_bin, buf)
    k_start = 0
    if n_valid == BLOCK:
        k_start = n_bins - n_bins % m
        for s0 in range(0, BLOCK, m):
            for k0 in range(0, k_start, m):
                tile_in(buf, pf, qf, (r0 + s0) * p_stride, p_stride, (r0 + s0) * q_stride, q_stride,
                        k0, bin_position, s0, sums_p, sums_q, low)
    _load_diff(pf, qf, p_stride, q_stride, r0, n_valid, k_start, bin_position, buf, sums_p, sums_q, low)


@njit(cache=True)
def _store_block(buf, outf, r0, n_valid, bin_position, mean):  # pragma: no cover
    """out[r0 + s, k] = buf[bin node k, s] - mean[s]."""
    n_bins = bin_position.shape[0]
    m = VECTOR_BYTES // buf.itemsize
    k_start = 0
    if n_valid == BLOCK:
        k_start = n_bins - n_bins % m
        for s0 in range(0, BLOCK, m):
            for k0 in range(0, k_start, m):
                tile_out(buf, outf, (r0 + s0) * n_bins, n_bins, k0, bin_position, s0, mean)
    for k in range(k_start, n_bins):
        base = bin_position[k] * BLOCK
        for s in range(n_valid):
            outf[(r0 + s) * n_bins + k] = buf[base + s] - mean[s]


@njit(cache=True, inline="always")
def _zero_rows(rows, buf):  # pragma: no cover
    for i in range(rows.shape[0]):
        base = rows[i] * BLOCK
        for s in range(BLOCK):
            buf[base + s] = 0.0


@njit(cache=True)
def _accumulate_up(buf, parent):  # pragma: no cover
    """Ascending sweep: replace every node's mass by its subtree sum (phi, eq. 8)."""
    for j in range(parent.shape[0] - 1):
        row_add(buf, parent[j] * BLOCK, j * BLOCK)


@njit(cache=True)
def _flush(acc, total):  # pragma: no cover
    """total[s] += sum of the accumulator rows at lane s (in float64); zero them."""
    for s in range(BLOCK):
        t = 0.0
        for r in range(ACC_ROWS):
            t += acc[r * BLOCK + s]
            acc[r * BLOCK + s] = 0.0
        total[s] += t


@njit(cache=True)
def _sweep_up(buf, parent, weight, mode, consts, acc, total):  # pragma: no cover
    """Ascending sweep: subtree sums in place; total[s] = sum_j w_j |phi_j|^rho."""
    n = parent.shape[0]
    rho = consts[0]
    acc[:] = 0.0
    total[:] = 0.0
    for j in range(n - 1):
        a = j * BLOCK
        b = parent[j] * BLOCK
        r = (j % ACC_ROWS) * BLOCK
        if mode == MODE_TWO:
            row_up_sq(buf, a, b, weight[j], acc, r)
        elif mode == MODE_ONE:
            row_up_abs(buf, a, b, weight[j], acc, r)
        else:
            w = weight[j]
            for s in range(BLOCK):
                v = buf[a + s]
                acc[r + s] += w * abs(v) ** rho
                buf[b + s] += v
        if (j + 1) % CHUNK == 0:
            _flush(acc, total)
    _flush(acc, total)


@njit(cache=True)
def _sweep_down(buf, parent, weight, mode, consts, vacc, vtotal, acc64, n_lead):  # pragma: no cover
    """Descending sweep: buf[j] <- sum over ancestors-or-self i of j of c_i, with
    c_i = d(w_i |phi_i|^rho)/d(phi_i): the gradient before projection (eq. 9-10).

    For a general rho the value is accumulated here too, into ``vtotal``, from
    the same ``|phi|^(rho - 1)``: one ``pow`` per node and sample instead of two.
    The rows of nodes ``j < n_lead`` (bin j on node j) are added to the float64
    rows ``acc64`` for the gradient's mean as they are stored, while they are in
    registers (:func:`_bin_mean` adds the other bins).
    """
    n = parent.shape[0]
    rho = consts[0]
    rho_m1 = consts[1]
    zero = consts[0] - consts[0]
    root = (n - 1) * BLOCK
    for s in range(BLOCK):
        buf[root + s] = zero
    vacc[:] = zero
    vtotal[:] = 0.0
    acc64[:] = 0.0
    for step in range(n - 1):
        j = n - 2 - step
        a = j * BLOCK
        b = parent[j] * BLOCK
        w = weight[j]
        if mode == MODE_TWO:
            row_down_linear(buf, a, b, w + w)
            if j < n_lead:
                row_accumulate(acc64, (j % ACC_ROWS) * BLOCK, buf, a)
        elif mode == MODE_ONE:
            row_down_sign(buf, a, b, w)  # subgradient, sign(0) = 0
            if j < n_lead:
                row_accumulate(acc64, (j % ACC_ROWS) * BLOCK, buf, a)
        else:
            # rho > 1 here, so |phi|^(rho - 1) is finite and 0 at phi = 0
            wr = rho * w
            r = (step % ACC_ROWS) * BLOCK
            for s in range(BLOCK):
                v = buf[a + s]
                f = abs(v) ** rho_m1
                vacc[r + s] += w * (abs(v) * f)
                buf[a + s] = buf[b + s] + wr * np.sign(v) * f
            if j < n_lead:
                row_accumulate(acc64, (j % ACC_ROWS) * BLOCK, buf, a)
            if (step + 1) % CHUNK == 0:
                _flush(vacc, vtotal)
    _flush(vacc, vtotal)


@njit(cache=True, inline="always")
def _leading_bins(bin_position):  # pragma: no cover
    """How many bins k, from 0, sit on node k (in the sweep order, the bins of leaves
    come first and in bin order: usually all of them)."""
    n_lead = 0
    while n_lead < bin_position.shape[0] and bin_position[n_lead] == n_lead:
        n_lead += 1
    return n_lead


@njit(cache=True)
def _bin_mean(buf, bin_position, acc64, mean, k_start=0):  # pragma: no cover
    """mean[s] = average over the bins of buf[bin node, s], summed in float64.

    Summed from the very values that are stored, so that the projected gradient
    sums to zero up to the rounding of its own entries and of the mean. With
    ``k_start``, bins ``:k_start`` are already summed into ``acc64`` (by
    :func:`_sweep_down`); else ``acc64`` is reset here.
    """
    n_bins = bin_position.shape[0]
    if k_start == 0:
        acc64[:] = 0.0
    for k in range(k_start, n_bins):
        row_accumulate(acc64, (k % ACC_ROWS) * BLOCK, buf, bin_position[k] * BLOCK)
    for s in range(BLOCK):
        t = 0.0
        for r in range(ACC_ROWS):
            t += acc64[r * BLOCK + s]
        mean[s] = t / n_bins


@njit(cache=True)
def _value_grad_blocks(
    blk0, blk1, pf, qf, p_step, q_step, labels, n_rows, parent, weight, bin_position, non_bin,
    mode, consts, want_grad, value, gradf, totals, low,
):  # pragma: no cover
    n_nodes = parent.shape[0]
    n_bins = bin_position.shape[0]
    dt = consts.dtype
    m = VECTOR_BYTES // pf.itemsize
    buf = np.empty(n_nodes * BLOCK, dtype=dt)
    acc = np.empty(ACC_ROWS * BLOCK, dtype=dt)
    vacc = np.empty(ACC_ROWS * BLOCK, dtype=dt)
    acc64 = np.empty(ACC_ROWS * BLOCK, dtype=np.float64)
    total = np.empty(BLOCK, dtype=np.float64)
    vtotal = np.empty(BLOCK, dtype=np.float64)
    mean = np.empty(BLOCK, dtype=dt)
    sums_p = np.empty(BLOCK * m, dtype=dt)
    sums_q = np.empty(BLOCK * m, dtype=dt)
    low_lanes = np.empty(m, dtype=dt)
    n_lead = _leading_bins(bin_position)
    for blk in range(blk0, blk1):
        r0 = blk * BLOCK
        n_valid = min(BLOCK, n_rows - r0)
        _load_block(pf, qf, p_step * n_bins, q_step * n_bins, r0, n_valid, bin_position, non_bin, buf,
                    sums_p, sums_q, low_lanes)
        if labels.shape[0]:
            # q is a zero row here: the target's unit mass sits on each sample's label bin
            for s in range(n_valid):
                buf[bin_position[labels[r0 + s]] * BLOCK + s] -= 1.0
                sums_q[s * m] += 1.0
        for s in range(n_valid):
            tp = 0.0
            tq = 0.0
            for i in range(m):
                tp += sums_p[s * m + i]
                tq += sums_q[s * m + i]
            totals[r0 + s, 0] = tp
            totals[r0 + s, 1] = tq
        lo = low_lanes[0]
        for i in range(m):
            lo = min(lo, low_lanes[i])
        low[blk] = lo
        if want_grad and mode == MODE_GENERAL:
            # the value comes with the gradient's pow in the descending sweep
            _accumulate_up(buf, parent)
            _sweep_down(buf, parent, weight, mode, consts, vacc, vtotal, acc64, n_lead)
            for s in range(n_valid):
                value[r0 + s] = vtotal[s]
        else:
            _sweep_up(buf, parent, weight, mode, consts, acc, total)
            for s in range(n_valid):
                value[r0 + s] = total[s]
            if want_grad:
                _sweep_down(buf, parent, weight, mode, consts, vacc, vtotal, acc64, n_lead)
        if want_grad:
            _bin_mean(buf, bin_position, acc64, mean, n_lead)
            _store_block(buf, gradf, r0, n_valid, bin_position, mean)


_VG_DOC = """EMD^rho and its projected gradient for ``n_rows`` samples.

    ``pf``/``qf`` are the flattened (rows, n_bins) inputs with ``p_step``/``q_step``
    1 (full) or 0 (one broadcast row). ``labels`` (int64) is empty, or holds one
    bin index per sample and then stands for a one-hot ``q`` (unit mass on that
    bin) on top of ``qf``, which is then a broadcast row of zeros. Outputs: ``value`` (n_rows,), ``gradf``
    (n_rows * n_bins,) when ``want_grad``, ``totals`` (n_rows, 2) float64 row sums
    of p and q, and ``low`` (n_blocks,) the smallest entry of p or q read in each
    block (or 0): the caller validates the inputs from these at no extra pass.
    """


@njit(cache=True)
def value_grad_serial(
    pf, qf, p_step, q_step, labels, n_rows, parent, weight, bin_position, non_bin,
    mode, consts, want_grad, value, gradf, totals, low,
):  # pragma: no cover
    n_blocks = (n_rows + BLOCK - 1) // BLOCK
    _value_grad_blocks(
        0, n_blocks, pf, qf, p_step, q_step, labels, n_rows, parent, weight, bin_position, non_bin,
        mode, consts, want_grad, value, gradf, totals, low,
    )


@njit(cache=True, parallel=True)
def value_grad_parallel(
    pf, qf, p_step, q_step, labels, n_rows, parent, weight, bin_position, non_bin,
    mode, consts, want_grad, value, gradf, totals, low, n_threads,
):  # pragma: no cover
    n_blocks = (n_rows + BLOCK - 1) // BLOCK
    n_parts = min(n_blocks, n_threads)
    for part in prange(n_parts):
        _value_grad_blocks(
            part * n_blocks // n_parts, (part + 1) * n_blocks // n_parts,
            pf, qf, p_step, q_step, labels, n_rows, parent, weight, bin_position, non_bin,
            mode, consts, want_grad, value, gradf, totals, low,
        )


value_grad_serial.__doc__ = _VG_DOC
value_grad_parallel.__doc__ = _VG_DOC + "\n    Contiguous runs of blocks go to ``n_threads`` threads.\n"


@njit(cache=True)
def _phi_blocks(
    blk0, blk1, pf, qf, p_step, q_step, n_rows, parent, bin_position, non_bin, out_position, outf,
):  # pragma: no cover
    n_nodes = parent.shape[0]
    n_bins = bin_position.shape[0]
    dt = outf.dtype
    m = VECTOR_BYTES // pf.itemsize
    buf = np.empty(n_nodes * BLOCK, dtype=dt)
    sums_p = np.empty(BLOCK * m, dtype=dt)
    sums_q = np.empty(BLOCK * m, dtype=dt)
    low = np.empty(m, dtype=dt)
    zeros = np.zeros(BLOCK, dtype=dt)
    for blk in range(blk0, blk1):
        r0 = blk * BLOCK
        n_valid = min(BLOCK, n_rows - r0)
        _load_block(pf, qf, p_step * n_bins, q_step * n_bins, r0, n_valid, bin_position, non_bin, buf,
                    sums_p, sums_q, low)
        _accumulate_up(buf, parent)
        # column c of the output row is the node at position out_position[c]
        _store_block(buf, outf, r0, n_valid, out_position, zeros)


@njit(cache=True)
def phi_serial(
    pf, qf, p_step, q_step, n_rows, parent, bin_position, non_bin, out_position, outf,
):  # pragma: no cover
    """Subtree mass differences: ``outf[r * n + c]`` = phi at position ``out_position[c]``
    (the layout's ``position`` gives node order, ``arange`` layout order)."""
    _phi_blocks(0, (n_rows + BLOCK - 1) // BLOCK, pf, qf, p_step, q_step, n_rows, parent, bin_position,
                non_bin, out_position, outf)


@njit(cache=True, parallel=True)
def phi_parallel(
    pf, qf, p_step, q_step, n_rows, parent, bin_position, non_bin, out_position, outf, n_threads,
):  # pragma: no cover
    """As :func:`phi_serial`, with contiguous runs of blocks across threads."""
    n_blocks = (n_rows + BLOCK - 1) // BLOCK
    n_parts = min(n_blocks, n_threads)
    for part in prange(n_parts):
        _phi_blocks(
            part * n_blocks // n_parts, (part + 1) * n_blocks // n_parts,
            pf, qf, p_step, q_step, n_rows, parent, bin_position, non_bin, out_position, outf,
        )


@njit(cache=True)
def _hvp_blocks(
    blk0, blk1, pf, qf, vf, p_step, q_step, v_step, n_rows, parent, weight, bin_position, non_bin,
    bins_below, mode, consts, project_out, outf,
):  # pragma: no cover
    n_nodes = parent.shape[0]
    n_bins = bin_position.shape[0]
    dt = consts.dtype
    m = VECTOR_BYTES // pf.itemsize
    phi = np.empty(n_nodes * BLOCK, dtype=dt)
    psi = np.empty(n_nodes * BLOCK, dtype=dt)
    acc64 = np.empty(ACC_ROWS * BLOCK, dtype=np.float64)
    mean = np.empty(BLOCK, dtype=dt)
    sums_p = np.empty(BLOCK * m, dtype=dt)
    sums_q = np.empty(BLOCK * m, dtype=dt)
    low = np.empty(m, dtype=dt)
    zero = consts[0] - consts[0]
    one = consts[1] - consts[3]  # (rho - 1) - (rho - 2)
    rho_rho_m1 = consts[2]
    rho_m2 = consts[3]
    zero_row = np.zeros(n_bins, dtype=dt)
    for blk in range(blk0, blk1):
        r0 = blk * BLOCK
        n_valid = min(BLOCK, n_rows - r0)
        # u = P v, the projection of v onto mass-conserving directions: load v as
        # "v - 0" (a zero row read with stride 0), which also gives its row sums
        _load_block(vf, zero_row, v_step * n_bins, 0, r0, n_valid, bin_position, non_bin, psi,
                    sums_p, sums_q, low)
        for s in range(BLOCK):
            t = 0.0
            for i in range(m):
                t += sums_p[s * m + i]
            mean[s] = -t / n_bins
        for k in range(n_bins):
            row_axpy(psi, bin_position[k] * BLOCK, one, mean)
        _accumulate_up(psi, parent)
        if mode != MODE_TWO:
            _load_block(pf, qf, p_step * n_bins, q_step * n_bins, r0, n_valid, bin_position, non_bin, phi,
                        sums_p, sums_q, low)
            _accumulate_up(phi, parent)
        # descending sweep of t_i = h_i psi_i with h_i = rho (rho-1) w_i |phi_i|^(rho-2)
        root = (n_nodes - 1) * BLOCK
        for s in range(BLOCK):
            psi[root + s] = zero
        for step in range(n_nodes - 1):
            j = n_nodes - 2 - step
            a = j * BLOCK
            b = parent[j] * BLOCK
            nb = bins_below[j]
            # An edge with all bins (or none) below it has phi_i = sum(p) - sum(q) and a
            # mass-conserving direction never changes it: its term vanishes under P, and is
            # dropped here because its curvature can be infinite (phi_i = 0, rho < 2).
            w = weight[j] if 0 < nb < n_bins else zero
            if mode == MODE_TWO:
                row_down_linear(psi, a, b, w + w)
            else:
                wr = rho_rho_m1 * w
                for s in range(BLOCK):
                    d = psi[a + s]
                    # a direction that leaves phi_i unchanged adds nothing, even where
                    # |phi_i|^(rho-2) is infinite (phi_i = 0, rho < 2)
                    t = wr * abs(phi[a + s]) ** rho_m2 * d if (d != zero and wr != zero) else zero
                    psi[a + s] = psi[b + s] + t
        if project_out:
            _bin_mean(psi, bin_position, acc64, mean)
        else:
            mean[:] = 0.0
        _store_block(psi, outf, r0, n_valid, bin_position, mean)


@njit(cache=True)
def hvp_serial(
    pf, qf, vf, p_step, q_step, v_step, n_rows, parent, weight, bin_position, non_bin, bins_below,
    mode, consts, project_out, outf,
):  # pragma: no cover
    """Hessian-vector product ``P H P v`` (``H P v`` without ``project_out``) of EMD^rho, rho > 1.

    ``H P v`` is the product with the transposed Jacobian of the projected
    gradient, ``(P H)^T v``: what a reverse-mode second derivative needs.
    """
    _hvp_blocks(
        0, (n_rows + BLOCK - 1) // BLOCK, pf, qf, vf, p_step, q_step, v_step, n_rows, parent, weight,
        bin_position, non_bin, bins_below, mode, consts, project_out, outf,
    )


@njit(cache=True, parallel=True)
def hvp_parallel(
    pf, qf, vf, p_step, q_step, v_step, n_rows, parent, weight, bin_position, non_bin, bins_below,
    mode, consts, project_out, outf, n_threads,
):  # pragma: no cover
    """Projected Hessian-vector product ``P H P v`` of EMD^rho, for rho > 1."""
    n_blocks = (n_rows + BLOCK - 1) // BLOCK
    n_parts = min(n_blocks, n_threads)
    for part in prange(n_parts):
        _hvp_blocks(
            part * n_blocks // n_parts, (part + 1) * n_blocks // n_parts,
            pf, qf, vf, p_step, q_step, v_step, n_rows, parent, weight, bin_position, non_bin,
            bins_below, mode, consts, project_out, outf,
        )
