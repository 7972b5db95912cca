"""Numba CPU kernels for phi, EMD^rho, its gradient and Hessian-vector products.

All kernels work on a tree's post-order :class:`~emdtree._layout.Layout`
(``parent[j] > j``, root last) and on 2-D C-contiguous float32 or float64
arrays of shape ``(rows, n_bins)``. They do no validation.

Layout of the work. Per sample the algorithm is two sweeps over the nodes, an
ascending one that accumulates the subtree sums phi (paper eq. 5/8) and a
descending one that accumulates, for every node, the sum over its ancestors of
``d(w_i |phi_i|^rho)/d(phi_i)`` (paper eq. 9/10). Done one sample at a time,
each node visit is a dependent load-add-store and the sweeps are bound by
latency. Instead the kernels take ``BLOCK`` samples at once and transpose them
into a node-major scratch buffer ``buf[node * BLOCK + s]``; every node visit is
then ``BLOCK`` independent lanes that LLVM vectorises, the scratch buffer of
one block stays in the L1/L2 cache, and the input and output are each read or
written once, row by row.

Inputs ``p`` and ``q`` may have a single row that is broadcast against the
other's rows: ``p_step`` / ``q_step`` are 1 for a full array and 0 for a
broadcast row.

``mode`` selects the power: 1 (exact EMD, rho = 1), 2 (the relaxed EMD^2) or
0 (any other rho > 1). The modes are separate loops because a general ``pow``
costs several times the rest of the sweep. ``consts`` holds the scalars in the
working dtype, ``[rho, rho - 1, rho * (rho - 1), rho - 2]``, so that float32
kernels never promote to float64.

Sums over nodes (the value and the mean of the gradient) are accumulated in the
working dtype in chunks of ``CHUNK`` nodes and the chunks are added in float64:
the rounding error then grows with ``CHUNK + n_nodes / CHUNK`` instead of
``n_nodes``.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

BLOCK = 32
CHUNK = 64

MODE_GENERAL = 0
MODE_ONE = 1
MODE_TWO = 2


@njit(cache=True, inline="always")
def _load_diff(p, q, p_step, q_step, r0, n_valid, bin_position, buf):  # pragma: no cover
    """buf[bin node, s] = p[r0 + s] - q[r0 + s]; padding lanes get 0."""
    n_bins = bin_position.shape[0]
    zero = buf[0] - buf[0]
    for k in range(n_bins):
        base = bin_position[k] * BLOCK
        for s in range(n_valid):
            r = r0 + s
            buf[base + s] = p[r * p_step, k] - q[r * q_step, k]
        for s in range(n_valid, BLOCK):
            buf[base + s] = zero


@njit(cache=True, inline="always")
def _zero_rows(rows, buf):  # pragma: no cover
    zero = buf[0] - buf[0]
    for i in range(rows.shape[0]):
        base = rows[i] * BLOCK
        for s in range(BLOCK):
            buf[base + s] = zero


@njit(cache=True)
def _accumulate_up(buf, parent):  # pragma: no cover
    """Ascending sweep: replace every node's mass by its subtree sum (phi, eq. 8)."""
    n = parent.shape[0]
    for j in range(n - 1):
        a = j * BLOCK
        b = parent[j] * BLOCK
        for s in range(BLOCK):
            buf[b + s] += buf[a + s]


@njit(cache=True)
def _sweep_up(buf, parent, weight, mode, consts, acc, total):  # pragma: no cover
    """Ascending sweep: subtree sums in place; total[s] = sum_j w_j |phi_j|^rho."""
    n = parent.shape[0]
    rho = consts[0]
    zero = consts[0] - consts[0]
    for s in range(BLOCK):
        acc[s] = zero
        total[s] = 0.0
    for j in range(n - 1):
        a = j * BLOCK
        b = parent[j] * BLOCK
        w = weight[j]
        if mode == MODE_TWO:
            for s in range(BLOCK):
                v = buf[a + s]
                acc[s] += w * (v * v)
                buf[b + s] += v
        elif mode == MODE_ONE:
            for s in range(BLOCK):
                v = buf[a + s]
                acc[s] += w * abs(v)
                buf[b + s] += v
        else:
            for s in range(BLOCK):
                v = buf[a + s]
                acc[s] += w * abs(v) ** rho
                buf[b + s] += v
        if (j + 1) % CHUNK == 0:
            for s in range(BLOCK):
                total[s] += acc[s]
                acc[s] = zero
    for s in range(BLOCK):
        total[s] += acc[s]


@njit(cache=True)
def _sweep_down(buf, parent, weight, bins_below, mode, consts, acc, total):  # pragma: no cover
    """Descending sweep: buf[j] <- sum over ancestors-or-self i of j of c_i, with
    c_i = d(w_i |phi_i|^rho)/d(phi_i); total[s] = sum_k buf[bin k] (for the mean)."""
    n = parent.shape[0]
    rho = consts[0]
    rho_m1 = consts[1]
    zero = consts[0] - consts[0]
    root = (n - 1) * BLOCK
    for s in range(BLOCK):
        buf[root + s] = zero
        acc[s] = zero
        total[s] = 0.0
    for step in range(n - 1):
        j = n - 2 - step
        a = j * BLOCK
        b = parent[j] * BLOCK
        w = weight[j]
        nb = bins_below[j]
        if mode == MODE_TWO:
            w2 = w + w
            for s in range(BLOCK):
                c = w2 * buf[a + s]
                buf[a + s] = buf[b + s] + c
                acc[s] += nb * c
        elif mode == MODE_ONE:
            for s in range(BLOCK):
                c = w * np.sign(buf[a + s])  # subgradient, sign(0) = 0
                buf[a + s] = buf[b + s] + c
                acc[s] += nb * c
        else:
            # rho > 1 here, so |phi|^(rho - 1) is finite and 0 at phi = 0
            wr = rho * w
            for s in range(BLOCK):
                v = buf[a + s]
                c = wr * np.sign(v) * abs(v) ** rho_m1
                buf[a + s] = buf[b + s] + c
                acc[s] += nb * c
        if (step + 1) % CHUNK == 0:
            for s in range(BLOCK):
                total[s] += acc[s]
                acc[s] = zero
    for s in range(BLOCK):
        total[s] += acc[s]


@njit(cache=True)
def _value_grad_blocks(
    blk0, blk1, p, q, p_step, q_step, n_rows, parent, weight, bin_position, non_bin, bins_below,
    mode, consts, want_grad, value, grad,
):  # pragma: no cover
    n_nodes = parent.shape[0]
    n_bins = bin_position.shape[0]
    buf = np.empty(n_nodes * BLOCK, dtype=consts.dtype)
    acc = np.empty(BLOCK, dtype=consts.dtype)
    total = np.empty(BLOCK, dtype=np.float64)
    mean = np.empty(BLOCK, dtype=consts.dtype)
    _zero_rows(non_bin, buf)
    for blk in range(blk0, blk1):
        r0 = blk * BLOCK
        n_valid = min(BLOCK, n_rows - r0)
        if blk > blk0:
            _zero_rows(non_bin, buf)
        _load_diff(p, q, p_step, q_step, r0, n_valid, bin_position, buf)
        _sweep_up(buf, parent, weight, mode, consts, acc, total)
        for s in range(n_valid):
            value[r0 + s] = total[s]
        if want_grad:
            _sweep_down(buf, parent, weight, bins_below, mode, consts, acc, total)
            for s in range(BLOCK):
                mean[s] = total[s] / n_bins
            for k in range(n_bins):
                base = bin_position[k] * BLOCK
                for s in range(n_valid):
                    grad[r0 + s, k] = buf[base + s] - mean[s]


@njit(cache=True)
def value_grad_serial(
    p, q, p_step, q_step, n_rows, parent, weight, bin_position, non_bin, bins_below,
    mode, consts, want_grad, value, grad,
):  # pragma: no cover
    """EMD^rho (into ``value``) and its projected gradient (into ``grad``) on one thread."""
    n_blocks = (n_rows + BLOCK - 1) // BLOCK
    _value_grad_blocks(
        0, n_blocks, p, q, p_step, q_step, n_rows, parent, weight, bin_position, non_bin,
        bins_below, mode, consts, want_grad, value, grad,
    )


@njit(cache=True, parallel=True)
def value_grad_parallel(
    p, q, p_step, q_step, n_rows, parent, weight, bin_position, non_bin, bins_below,
    mode, consts, want_grad, value, grad, n_threads,
):  # pragma: no cover
    """As :func:`value_grad_serial`, with contiguous runs of blocks across threads."""
    n_blocks = (n_rows + BLOCK - 1) // BLOCK
    n_parts = min(n_blocks, n_threads)
    for part in prange(n_parts):
        blk0 = part * n_blocks // n_parts
        blk1 = (part + 1) * n_blocks // n_parts
        _value_grad_blocks(
            blk0, blk1, p, q, p_step, q_step, n_rows, parent, weight, bin_position, non_bin,
            bins_below, mode, consts, want_grad, value, grad,
        )


@njit(cache=True)
def _phi_blocks(blk0, blk1, p, q, p_step, q_step, n_rows, parent, bin_position, non_bin, out):  # pragma: no cover
    n_nodes = parent.shape[0]
    buf = np.empty(n_nodes * BLOCK, dtype=out.dtype)
    for blk in range(blk0, blk1):
        r0 = blk * BLOCK
        n_valid = min(BLOCK, n_rows - r0)
        _zero_rows(non_bin, buf)
        _load_diff(p, q, p_step, q_step, r0, n_valid, bin_position, buf)
        _accumulate_up(buf, parent)
        for j in range(n_nodes):
            base = j * BLOCK
            for s in range(n_valid):
                out[r0 + s, j] = buf[base + s]


@njit(cache=True, parallel=True)
def phi_parallel(p, q, p_step, q_step, n_rows, parent, bin_position, non_bin, out, n_threads):  # pragma: no cover
    """Subtree mass differences in layout positions: ``out[r, j] = phi`` at position ``j``."""
    n_blocks = (n_rows + BLOCK - 1) // BLOCK
    n_parts = min(n_blocks, n_threads)
    for part in prange(n_parts):
        _phi_blocks(
            part * n_blocks // n_parts, (part + 1) * n_blocks // n_parts,
            p, q, p_step, q_step, n_rows, parent, bin_position, non_bin, out,
        )


@njit(cache=True)
def _hvp_blocks(
    blk0, blk1, p, q, v, p_step, q_step, v_step, n_rows, parent, weight, bin_position, non_bin,
    bins_below, mode, consts, out,
):  # pragma: no cover
    n_nodes = parent.shape[0]
    n_bins = bin_position.shape[0]
    dt = consts.dtype
    phi = np.empty(n_nodes * BLOCK, dtype=dt)
    psi = np.empty(n_nodes * BLOCK, dtype=dt)
    acc = np.empty(BLOCK, dtype=dt)
    total = np.empty(BLOCK, dtype=np.float64)
    mean = np.empty(BLOCK, dtype=dt)
    zero = consts[0] - consts[0]
    rho_rho_m1 = consts[2]
    rho_m2 = consts[3]
    for blk in range(blk0, blk1):
        r0 = blk * BLOCK
        n_valid = min(BLOCK, n_rows - r0)
        # u = P v: the projection of v onto mass-conserving directions
        for s in range(BLOCK):
            acc[s] = zero
        for k in range(n_bins):
            for s in range(n_valid):
                acc[s] += v[(r0 + s) * v_step, k]
        for s in range(BLOCK):
            mean[s] = acc[s] / n_bins
        _zero_rows(non_bin, psi)
        for k in range(n_bins):
            base = bin_position[k] * BLOCK
            for s in range(n_valid):
                psi[base + s] = v[(r0 + s) * v_step, k] - mean[s]
            for s in range(n_valid, BLOCK):
                psi[base + s] = zero
        _accumulate_up(psi, parent)
        if mode != MODE_TWO:
            _zero_rows(non_bin, phi)
            _load_diff(p, q, p_step, q_step, r0, n_valid, bin_position, phi)
            _accumulate_up(phi, parent)
        # descending sweep of t_i = h_i psi_i with h_i = rho (rho-1) w_i |phi_i|^(rho-2)
        root = (n_nodes - 1) * BLOCK
        for s in range(BLOCK):
            psi[root + s] = zero
            acc[s] = zero
            total[s] = 0.0
        for step in range(n_nodes - 1):
            j = n_nodes - 2 - step
            a = j * BLOCK
            b = parent[j] * BLOCK
            w = weight[j]
            nb = bins_below[j]
            if mode == MODE_TWO:
                h = w + w
                for s in range(BLOCK):
                    t = h * psi[a + s]
                    psi[a + s] = psi[b + s] + t
                    acc[s] += nb * t
            else:
                wr = rho_rho_m1 * w
                for s in range(BLOCK):
                    d = psi[a + s]
                    # a direction that leaves phi_i unchanged adds nothing, even where
                    # |phi_i|^(rho-2) is infinite (phi_i = 0, rho < 2)
                    t = wr * abs(phi[a + s]) ** rho_m2 * d if d != zero else zero
                    psi[a + s] = psi[b + s] + t
                    acc[s] += nb * t
            if (step + 1) % CHUNK == 0:
                for s in range(BLOCK):
                    total[s] += acc[s]
                    acc[s] = zero
        for s in range(BLOCK):
            mean[s] = (total[s] + acc[s]) / n_bins
        for k in range(n_bins):
            base = bin_position[k] * BLOCK
            for s in range(n_valid):
                out[r0 + s, k] = psi[base + s] - mean[s]


@njit(cache=True, parallel=True)
def hvp_parallel(
    p, q, v, p_step, q_step, v_step, n_rows, parent, weight, bin_position, non_bin, bins_below,
    mode, consts, out, n_threads,
):  # pragma: no cover
    """Projected Hessian-vector product ``P H P v`` of EMD^rho, for rho > 1."""
    n_blocks = (n_rows + BLOCK - 1) // BLOCK
    n_parts = min(n_blocks, n_threads)
    for part in prange(n_parts):
        _hvp_blocks(
            part * n_blocks // n_parts, (part + 1) * n_blocks // n_parts,
            p, q, v, p_step, q_step, v_step, n_rows, parent, weight, bin_position, non_bin,
            bins_below, mode, consts, out,
        )
