"""Row-at-a-time kernels, for a few samples on any tree.

The blocked kernels of :mod:`emdtree.kernels.cpu` fill ``BLOCK`` lanes per
node; with a handful of samples most lanes are empty work, and on a large tree
their ``n_nodes x BLOCK`` scratch buffer no longer fits in cache. Here each
sample is swept on its own over a scratch row of ``n_nodes`` entries: the
ascending sweep is a chain of dependent adds (latency-bound, a few ns a node)
but touches ``BLOCK`` times less memory. Same arguments and outputs as
:func:`emdtree.kernels.cpu.value_grad_serial` (``low`` has one entry per row).
"""

from __future__ import annotations

import numpy as np
from .jit import njit

from .cpu import MODE_ONE, MODE_TWO


@njit(cache=True)
def _load_row(pf, qf, po, qo, bin_position, non_bin, buf):  # pragma: no cover
    """buf[bin node] = p - q, zero elsewhere; returns (sum p, sum q, min(0, p, q))."""
    for i in range(non_bin.shape[0]):
        buf[non_bin[i]] = 0.0
    sp = 0.0
    sq = 0.0
    lo = 0.0
    for k in range(bin_position.shape[0]):
        a = pf[po + k]
        b = qf[qo + k]
        sp += a
        sq += b
        lo = min(lo, min(a, b))
        buf[bin_position[k]] = a - b
    return sp, sq, lo


@njit(cache=True)
def value_grad_rows(
    pf, qf, p_step, q_step, labels, n_rows, parent, weight, bin_position, non_bin,
    mode, consts, want_grad, value, gradf, totals, low,
):  # pragma: no cover
    """EMD^rho and its projected gradient, one sample at a time."""
    n = parent.shape[0]
    n_bins = bin_position.shape[0]
    rho = consts[0]
    rho_m1 = consts[1]
    zero = consts[0] - consts[0]
    buf = np.empty(n, dtype=consts.dtype)
    for r in range(n_rows):
        sp, sq, lo = _load_row(pf, qf, r * p_step * n_bins, r * q_step * n_bins, bin_position, non_bin, buf)
        if labels.shape[0]:
            buf[bin_position[labels[r]]] -= 1.0
            sq += 1.0
        totals[r, 0] = sp
        totals[r, 1] = sq
        low[r] = lo
        # ascending sweep: phi, and the value in float64 (one sample: no lanes to keep busy)
        val = 0.0
        for j in range(n - 1):
            v = buf[j]
            buf[parent[j]] += v
            if mode == MODE_TWO:
                val += weight[j] * (v * v)
            elif mode == MODE_ONE:
                val += weight[j] * abs(v)
            else:
                val += weight[j] * abs(v) ** rho
        value[r] = val
        if not want_grad:
            continue
        # descending sweep: the gradient before projection (eq. 9-10)
        buf[n - 1] = zero
        for step in range(n - 1):
            j = n - 2 - step
            v = buf[j]
            w = weight[j]
            if mode == MODE_TWO:
                c = (w + w) * v
            elif mode == MODE_ONE:
                c = w * np.sign(v)
            else:
                c = rho * w * np.sign(v) * abs(v) ** rho_m1
            buf[j] = buf[parent[j]] + c
        total = 0.0
        for k in range(n_bins):
            total += buf[bin_position[k]]
        mean = total / n_bins
        off = r * n_bins
        for k in range(n_bins):
            gradf[off + k] = buf[bin_position[k]] - mean


@njit(cache=True)
def phi_rows(
    pf, qf, p_step, q_step, n_rows, parent, bin_position, non_bin, out_position, outf,
):  # pragma: no cover
    """Subtree mass differences, one sample at a time; as :func:`emdtree.kernels.cpu.phi_serial`."""
    n = parent.shape[0]
    n_bins = bin_position.shape[0]
    buf = np.empty(n, dtype=outf.dtype)
    for r in range(n_rows):
        _load_row(pf, qf, r * p_step * n_bins, r * q_step * n_bins, bin_position, non_bin, buf)
        for j in range(n - 1):
            buf[parent[j]] += buf[j]
        off = r * n
        for col in range(n):
            outf[off + col] = buf[out_position[col]]


@njit(cache=True)
def hvp_rows(
    pf, qf, vf, p_step, q_step, v_step, n_rows, parent, weight, bin_position, non_bin, bins_below,
    mode, consts, project_out, outf,
):  # pragma: no cover
    """``P H P v`` (or ``H P v``), one sample at a time; as :func:`emdtree.kernels.cpu.hvp_serial`."""
    n = parent.shape[0]
    n_bins = bin_position.shape[0]
    zero = consts[0] - consts[0]
    rho_rho_m1 = consts[2]
    rho_m2 = consts[3]
    phi = np.empty(n, dtype=consts.dtype)
    psi = np.empty(n, dtype=consts.dtype)
    for r in range(n_rows):
        vo = r * v_step * n_bins
        total = 0.0
        for k in range(n_bins):
            total += vf[vo + k]
        mean_v = total / n_bins
        for i in range(non_bin.shape[0]):
            psi[non_bin[i]] = zero
        for k in range(n_bins):
            psi[bin_position[k]] = vf[vo + k] - mean_v  # u = P v
        for j in range(n - 1):
            psi[parent[j]] += psi[j]
        if mode != MODE_TWO:
            _load_row(pf, qf, r * p_step * n_bins, r * q_step * n_bins, bin_position, non_bin, phi)
            for j in range(n - 1):
                phi[parent[j]] += phi[j]
        psi[n - 1] = zero
        for step in range(n - 1):
            j = n - 2 - step
            nb = bins_below[j]
            # edges with all bins (or none) below: dropped, as in the blocked kernel
            w = weight[j] if 0 < nb < n_bins else zero
            d = psi[j]
            if mode == MODE_TWO:
                t = (w + w) * d
            else:
                wr = rho_rho_m1 * w
                t = wr * abs(phi[j]) ** rho_m2 * d if (d != zero and wr != zero) else zero
            psi[j] = psi[parent[j]] + t
        mean = 0.0
        if project_out:
            for k in range(n_bins):
                mean += psi[bin_position[k]]
            mean /= n_bins
        off = r * n_bins
        for k in range(n_bins):
            outf[off + k] = psi[bin_position[k]] - mean
