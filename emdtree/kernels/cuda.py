"""CUDA kernels (numba-cuda) for phi, EMD^rho, its gradient and Hessian-vector products.

Design
------
One thread block sweeps one sample (row) at a time; a grid-stride loop hands
a block further rows when the grid is smaller than the batch. The per-node
work of a sample is replaced by two block-wide prefix sums over the tree's
post-order layout (:mod:`emdtree.trees.layout`), so the cost does not depend on the
tree's depth or fan-out: a chain of 10^4 nodes, a star of 10^4 leaves and the
ImageNet hierarchy all take ``O(n_nodes / threads + log2(threads))`` steps.

* Up-sweep (phi, paper eq. 8). Place ``p - q`` at the bins' positions and
  take the inclusive prefix sum ``C`` over positions. The subtree of position
  ``j`` is the range ``[start_j, j]``, so ``phi_j = C[j] - C[start_j - 1]``.
* Down-sweep (gradient, eq. 9-10; Hessian-vector product, eq. 12). The sum
  of ``c_i`` over the ancestors-or-self ``i`` of a node is a prefix sum over
  an Euler tour of the tree: ``+c_i`` when the tour enters ``i`` and ``-c_i``
  when it leaves, so that the running sum at the entry of ``j`` is the sum
  over the nodes open at that point, the path from the root to ``j``. In
  post-order positions the tour's slots are ``enter_j = 2 start_j + depth_j``
  and ``exit_j = 2 j + 1 + depth_j`` (a permutation of ``0 .. 2 n - 1``).

A level-by-level sweep (one ``syncthreads`` per tree level, children summed
by their parent) would also do, and match the CPU's order of additions, but
costs ``depth`` barriers (10^4 on a deep chain) and leaves one thread to sum
all the children of a wide node (10^5 on a star).

Accuracy. Both prefix sums run in float64 for both dtypes, and ``p - q`` is
formed in float64 (exactly, for float32 masses). In a running sum over the
mass differences the partial sums are bounded by the total mass, and for
float32 masses (24-bit significands within ~30 binades of each other) the
float64 sums are exact, so float32 phi is correctly rounded; the Euler-tour
running sums are themselves path sums of ``c``, bounded by the gradient.
Differencing two float64 prefixes loses nothing a float32 result can see
(a float32 prefix would lose ``eps32 * total`` absolutely, the whole of a
small subtree's phi). phi, and the per-node terms that follow from it, are
rounded to the working dtype once; ``c`` and ``w |phi|^rho`` are computed in
it (float32 ``pow`` stays float32); the direction's subtree sums in the
Hessian-vector product stay float64 into the product; the value and the
gradient's mean are block reductions in float64. float32 results are then
within a few units in the last place of float64 ones, closer than the CPU
kernels' float32 sweeps. H100-class GPUs run float64 at half the float32 rate;
on consumer GPUs (1/64) the float64 sums would weigh more.

Non-finite values would leak through a running sum into unrelated nodes
(``+inf`` at a tour entry and ``-inf`` at its exit leave NaN for everything
after). They are kept out of the sums (0 in their slot) and a block-wide flag
sends the rare sample through a second pass in which each bin walks up to the
root and adds the non-finite terms on its path: the results then carry
``inf`` and NaN exactly where the CPU kernels' sequential sweeps put them
(non-finite masses; the ``HVP`` at ``phi_i = 0`` for ``1 < rho < 2``).

Memory. A sample needs ``2 n + 2 threads + 2`` float64 slots (the prefix
sums, the block's partial sums, two flags) and ``n`` slots of the working dtype
(phi, then the per-node terms). With at most 48 KiB of dynamic shared memory
per block (the limit without an opt-in that numba-cuda does not expose) that
holds trees up to ~2,200 nodes in float32 and ~1,850 in float64: ImageNet
(1,371 nodes, 256 threads) takes 31.5 KiB in float32, 37 KiB in float64.
Larger trees use the same device functions on rows of a global-memory scratch
array, one row per block, with the grid capped by a scratch budget.
Registers: ptxas (sm_90, CUDA 13) gives the kernels 72-95 registers
unbounded; they are capped at 64 (0-28 bytes of spills, L1-resident), so
that 4 blocks of 256 threads share an SM's register file (and 4 x 31.5 KiB
its shared memory).

Expected figures (H100, ImageNet tree, float32, value and gradient; from the
counts, not measured): a sample is ~55 barriers and ~80 dependent
shared-memory steps per thread, ~6,000 cycles (~3.5 us) for one block, with 4
blocks interleaved per SM; 512 samples fit in one wave (132 SMs x 4 blocks),
~10 us of kernel time; 8,192 samples are ~60 samples per SM at ~1,500 cycles
each plus 100 MB of reads and writes, ~50-70 us. ``benchmarks/bench_gpu.py``
measures them.

Conventions match the CPU kernels (:mod:`emdtree.kernels.cpu`): the root's
edge is excluded; ``sign(0) = 0`` for the rho = 1 subgradient (and for NaN,
as in the blocked kernels); for a general rho the value comes with the
gradient from ``|phi| * |phi|^(rho - 1)`` (one ``pow``), else from
``|phi|^rho``; in the Hessian-vector product, edges with all bins (or none)
below them are dropped and a zero direction contributes zero even where
``|phi|^(rho - 2)`` is infinite.

Argument conventions: ``p``, ``q``, ``v`` and the outputs are flattened
C-contiguous ``(rows, n_bins)`` device arrays; row ``r`` of ``p`` starts at
``r * p_step`` (``p_step`` is ``n_bins``, or 0 for a single broadcast row).
``index`` is the int32 array of :func:`emdtree.engine.cuda.tree_index`
(six blocks of ``n_nodes`` entries, at the offsets below), ``weight`` the edge
costs in the working dtype, ``below`` the float64 count of bins below each
position. ``buf`` (float64) and ``bufd`` (working dtype, from offset ``pd``)
are the sample's scratch, in shared or global memory.
"""

from __future__ import annotations

import math

from numba import cuda, float32, float64

from .cpu import MODE_ONE, MODE_TWO
from .jit import relocate_cuda_cache

# offsets of the blocks of the packed index array, in multiples of n_nodes
START = 0  # first position of each position's subtree
ENTER = 1  # Euler-tour slot where the tour enters each position
EXIT = 2  # ... and where it leaves it
PARENT = 3  # parent position, -1 at the root
POSITION = 4  # position of each node (node order -> layout)
BINS = 5  # bin positions (n_bins entries), then the non-bin positions


# --------------------------------------------------------------------------- #
# Block-wide building blocks
# --------------------------------------------------------------------------- #

@cuda.jit(device=True)
def _block_scan(buf, length, pt, counts, tid, tpb):  # pragma: no cover - device code
    """Inclusive prefix sum of ``buf[0:length]`` (float64) by the whole block.

    Each thread scans a contiguous chunk (an odd stride, so the float64 reads
    of a half-warp fall in distinct shared-memory banks), the chunk totals are
    scanned in ``buf[pt:pt + tpb]`` (Hillis-Steele, ``log2(tpb)`` steps) and
    each chunk adds the total of the chunks before it.

    With ``counts``, ``buf[length + i]`` receives the number of nonzero entries
    up to ``i`` (exact in float64; partial counts in ``buf[pt + tpb:]``). Two
    prefix sums on either side of a run of zeros need not be equal (the chunks'
    carries are added in another order), so a range sum is only known to be
    exactly 0 from the counts.
    """
    chunk = (length + tpb - 1) // tpb
    chunk += 1 - chunk % 2
    a = min(tid * chunk, length)
    b = min(a + chunk, length)
    s = 0.0
    z = 0.0
    for i in range(a, b):
        x = buf[i]
        s += x
        buf[i] = s
        if counts:
            if x != 0.0:
                z += 1.0
            buf[length + i] = z
    buf[pt + tid] = s
    if counts:
        buf[pt + tpb + tid] = z
    cuda.syncthreads()
    off = 1
    while off < tpb:
        x = buf[pt + tid]
        if counts:
            y = buf[pt + tpb + tid]
        if tid >= off:
            x += buf[pt + tid - off]
            if counts:
                y += buf[pt + tpb + tid - off]
        cuda.syncthreads()
        buf[pt + tid] = x
        if counts:
            buf[pt + tpb + tid] = y
        cuda.syncthreads()
        off *= 2
    if tid > 0:
        carry = buf[pt + tid - 1]
        for i in range(a, b):
            buf[i] += carry
        if counts:
            carry = buf[pt + tpb + tid - 1]
            for i in range(a, b):
                buf[length + i] += carry
    cuda.syncthreads()


@cuda.jit(device=True)
def _block_sum(x, buf, pt, tid, tpb):  # pragma: no cover - device code
    """Sum of every thread's float64 ``x``, returned to all threads (fixed order)."""
    buf[pt + tid] = x
    cuda.syncthreads()
    s = tpb
    while s > 1:
        h = (s + 1) // 2
        if tid < s - h:
            buf[pt + tid] += buf[pt + tid + h]
        cuda.syncthreads()
        s = h
    total = buf[pt]
    cuda.syncthreads()
    return total


@cuda.jit(device=True)
def _clear_flags(buf, fu, tid):  # pragma: no cover - device code
    """Lower both flags before the first sample (samples raise them with tags >= 1)."""
    if tid == 0:
        buf[fu] = 0.0
        buf[fu + 1] = 0.0
    cuda.syncthreads()


@cuda.jit(device=True)
def _signed(w, x, zero):  # pragma: no cover - device code
    """``w * sign(x)`` with ``sign(0) = sign(NaN) = 0``: the rho = 1 subgradient."""
    if x > zero:
        return w
    if x < zero:
        return -w
    return zero


# --------------------------------------------------------------------------- #
# Up-sweep: phi
# --------------------------------------------------------------------------- #

@cuda.jit(device=True)
def _load(p, q, rp, rq, index, n, n_bins, buf, fu, tag, tid, tpb):  # pragma: no cover - device code
    """buf[bin position] = p - q (0 if not finite, setting flag ``buf[fu] = tag``), 0 elsewhere."""
    bins = BINS * n
    for k in range(tid, n_bins, tpb):
        d = float64(p[rp + k]) - q[rq + k]  # exact for float32 masses
        if math.isfinite(d):
            buf[index[bins + k]] = d
        else:
            buf[index[bins + k]] = 0.0
            buf[fu] = tag
    for i in range(tid, n - n_bins, tpb):
        buf[index[bins + n_bins + i]] = 0.0
    cuda.syncthreads()


@cuda.jit(device=True)
def _subtree_sum(index, n, buf, j):  # pragma: no cover - device code
    """Sum of the loaded values over the subtree of position j, from their prefix
    sums and nonzero counts (``buf[0:n]``, ``buf[n:2 n]``): exactly 0 when all are 0."""
    s = index[START * n + j]
    if s == 0:
        return buf[j] if buf[n + j] != 0.0 else 0.0
    if buf[n + j] == buf[n + s - 1]:
        return 0.0
    return buf[j] - buf[s - 1]


@cuda.jit(device=True)
def _subtree_sums(index, n, buf, bufd, pd, tid, tpb):  # pragma: no cover - device code
    """bufd[pd + j] = the subtree sum of position j, rounded once to the working dtype."""
    for j in range(tid, n, tpb):
        bufd[pd + j] = _subtree_sum(index, n, buf, j)
    cuda.syncthreads()


@cuda.jit(device=True)
def _phi(p, q, rp, rq, index, n, n_bins, buf, bufd, pd, fu, tag, tid, tpb):  # pragma: no cover - device code
    """phi of one sample into ``bufd[pd:pd + n]`` (layout positions)."""
    _load(p, q, rp, rq, index, n, n_bins, buf, fu, tag, tid, tpb)
    _block_scan(buf, n, 2 * n, True, tid, tpb)
    _subtree_sums(index, n, buf, bufd, pd, tid, tpb)
    if buf[fu] == tag:
        # rare: a non-finite p - q goes to every ancestor-or-self, in one thread
        # (inf and NaN arithmetic does not depend on the order)
        if tid == 0:
            for k in range(n_bins):
                d = float64(p[rp + k]) - q[rq + k]  # exact for float32 masses
                if not math.isfinite(d):
                    j = index[BINS * n + k]
                    while j >= 0:
                        bufd[pd + j] += d
                        j = index[PARENT * n + j]
        cuda.syncthreads()


# --------------------------------------------------------------------------- #
# Down-sweep: sums over ancestors
# --------------------------------------------------------------------------- #

@cuda.jit(device=True)
def _path_sums(index, n, n_bins, buf, bufd, pd, fd, tag, out, ro, tid, tpb):  # pragma: no cover - device code
    """out[ro + k] = sum of ``bufd[pd + i]`` over the ancestors-or-self ``i`` of bin k.

    Returns this thread's float64 sum of the values as stored, for the mean.
    """
    for j in range(tid, n, tpb):
        c = bufd[pd + j]
        if math.isfinite(c):
            buf[index[ENTER * n + j]] = c
            buf[index[EXIT * n + j]] = -c
        else:
            buf[index[ENTER * n + j]] = 0.0
            buf[index[EXIT * n + j]] = 0.0
            buf[fd] = tag
    cuda.syncthreads()
    _block_scan(buf, 2 * n, 2 * n, False, tid, tpb)
    walk = buf[fd] == tag
    total = float64(0.0)
    for k in range(tid, n_bins, tpb):
        b = index[BINS * n + k]
        g = buf[index[ENTER * n + b]]
        if walk:
            a = b
            while a >= 0:
                c = bufd[pd + a]
                if not math.isfinite(c):
                    g += c
                a = index[PARENT * n + a]
        out[ro + k] = g
        total += out[ro + k]
    return total


@cuda.jit(device=True)
def _finish(out, ro, n_bins, mean, tid, tpb):  # pragma: no cover - device code
    """Subtract ``mean`` (float64, rounding once); a barrier ends the sample."""
    if mean != 0.0:
        for k in range(tid, n_bins, tpb):
            out[ro + k] = out[ro + k] - mean
    cuda.syncthreads()


# --------------------------------------------------------------------------- #
# One sample of each operation
# --------------------------------------------------------------------------- #

@cuda.jit(device=True)
def _value_grad_rows(
    p, q, p_step, q_step, n_rows, n_bins, weight, index, mode, want_grad, rho, rho_m1, value, grad,
    buf, bufd, pd,
):  # pragma: no cover - device code
    tid = cuda.threadIdx.x
    tpb = cuda.blockDim.x
    n = weight.shape[0]
    pt = 2 * n  # the block's partial sums
    fu = pt + 2 * tpb  # flags: a non-finite p - q (fu), a non-finite c (fu + 1)
    zero = rho - rho
    _clear_flags(buf, fu, tid)
    row = cuda.blockIdx.x
    while row < n_rows:
        tag = row + 1.0  # a flag is raised for this sample when it holds its tag
        _phi(p, q, row * p_step, row * q_step, index, n, n_bins, buf, bufd, pd, fu, tag, tid, tpb)
        acc = float64(0.0)  # (float64(): also under the simulator, where 0.0 + float32 is float32)
        for j in range(tid, n - 1, tpb):  # the root (last position) has no edge
            phi = bufd[pd + j]
            w = weight[j]
            if mode == MODE_TWO:
                term = w * (phi * phi)
                c = (w + w) * phi
            elif mode == MODE_ONE:
                term = w * abs(phi)
                c = _signed(w, phi, zero)
            elif want_grad:
                # one pow for the value and the gradient, as the CPU kernels
                f = abs(phi) ** rho_m1
                term = w * (abs(phi) * f)
                c = (rho * _signed(w, phi, zero)) * f
            else:
                term = w * abs(phi) ** rho
                c = zero
            acc += term
            bufd[pd + j] = c
        if tid == 0:
            bufd[pd + n - 1] = zero
        total = _block_sum(acc, buf, pt, tid, tpb)
        if tid == 0:
            value[row] = total
        mean = 0.0
        if want_grad:
            s = _path_sums(index, n, n_bins, buf, bufd, pd, fu + 1, tag, grad, row * n_bins, tid, tpb)
            mean = _block_sum(s, buf, pt, tid, tpb) / n_bins
        _finish(grad, row * n_bins, n_bins, mean, tid, tpb)
        row += cuda.gridDim.x


@cuda.jit(device=True)
def _phi_rows(p, q, p_step, q_step, n_rows, n_bins, index, out, buf, bufd, pd):  # pragma: no cover - device
    tid = cuda.threadIdx.x
    tpb = cuda.blockDim.x
    n = index.shape[0] // 6
    fu = 2 * n + 2 * tpb
    _clear_flags(buf, fu, tid)
    row = cuda.blockIdx.x
    while row < n_rows:
        _phi(p, q, row * p_step, row * q_step, index, n, n_bins, buf, bufd, pd, fu, row + 1.0, tid, tpb)
        for col in range(tid, n, tpb):  # node order, coalesced writes
            out[row * n + col] = bufd[pd + index[POSITION * n + col]]
        cuda.syncthreads()
        row += cuda.gridDim.x


@cuda.jit(device=True)
def _hvp_rows(
    p, q, v, p_step, q_step, v_step, n_rows, n_bins, weight, below, index, mode, project_out,
    rho_rho_m1, rho_m2, out, buf, bufd, pd,
):  # pragma: no cover - device code
    tid = cuda.threadIdx.x
    tpb = cuda.blockDim.x
    n = weight.shape[0]
    pt = 2 * n
    fu = pt + 2 * tpb
    zero = rho_m2 - rho_m2
    _clear_flags(buf, fu, tid)
    row = cuda.blockIdx.x
    while row < n_rows:
        tag = row + 1.0
        if mode != MODE_TWO:  # the curvature depends on phi
            _phi(p, q, row * p_step, row * q_step, index, n, n_bins, buf, bufd, pd, fu, tag, tid, tpb)
        # psi = subtree sums of u = P v = v - mean(v): from those of v and the bin counts
        rv = row * v_step
        s = float64(0.0)
        for k in range(tid, n_bins, tpb):
            s += v[rv + k]
        mean_v = _block_sum(s, buf, pt, tid, tpb) / n_bins
        for k in range(tid, n_bins, tpb):
            buf[index[BINS * n + k]] = v[rv + k]
        for i in range(tid, n - n_bins, tpb):
            buf[index[BINS * n + n_bins + i]] = 0.0
        cuda.syncthreads()
        _block_scan(buf, n, pt, True, tid, tpb)
        for j in range(tid, n, tpb):
            nb = below[j]
            psi = _subtree_sum(index, n, buf, j) - mean_v * nb
            # an edge with all bins (or none) below it never changes under P: dropped,
            # as its curvature may be infinite (this also drops the root)
            w = weight[j] if 0.0 < nb < n_bins else zero
            if mode == MODE_TWO:
                t = (w + w) * psi
            else:
                wr = rho_rho_m1 * w
                # a direction that leaves phi_i unchanged adds nothing, even where
                # |phi_i|^(rho - 2) is infinite (phi_i = 0, rho < 2)
                t = wr * abs(bufd[pd + j]) ** rho_m2 * psi if (psi != 0.0 and wr != zero) else 0.0
            bufd[pd + j] = t
        cuda.syncthreads()
        s = _path_sums(index, n, n_bins, buf, bufd, pd, fu + 1, tag, out, row * n_bins, tid, tpb)
        mean = 0.0
        if project_out:
            mean = _block_sum(s, buf, pt, tid, tpb) / n_bins
        _finish(out, row * n_bins, n_bins, mean, tid, tpb)
        row += cuda.gridDim.x


# --------------------------------------------------------------------------- #
# Kernels: scratch in dynamic shared memory (one kernel per dtype, as a shared
# array's dtype is a compile-time constant), or in rows of global arrays.
# Arrays are flat: row r of p starts at r * p_step (n_bins, or 0 to broadcast).
# max_registers: 64 registers x 256 threads lets 4 blocks share an SM's
# register file (unbounded, ptxas takes 72-95: 3 blocks), at the cost of 0-28
# bytes of L1-resident spills; below 64 the spills grow.
# --------------------------------------------------------------------------- #

_JIT = {} if cuda.config.ENABLE_CUDASIM else {"max_registers": 64}


def _kernel(func=None, **options):
    """``cuda.jit`` with the options above, cached where the CPU kernels are
    (``NUMBA_CACHE_DIR`` or the per-user folder of :mod:`emdtree.kernels.jit`),
    never beside this module."""
    def decorate(f):
        dispatcher = cuda.jit(**options)(f)
        if not cuda.config.ENABLE_CUDASIM:  # the simulator caches nothing
            relocate_cuda_cache(dispatcher)
        return dispatcher

    return decorate if func is None else decorate(func)


@_kernel(**_JIT)
def value_grad_shared_f32(
    p, q, p_step, q_step, n_rows, n_bins, weight, index, mode, want_grad, rho, rho_m1, value, grad, pd,
):
    """EMD^rho (``value``, (n_rows,)) and the projected gradient (``grad``, flat (n_rows * n_bins,))."""
    _value_grad_rows(p, q, p_step, q_step, n_rows, n_bins, weight, index, mode, want_grad, rho, rho_m1, value,
                     grad, cuda.shared.array(0, float64), cuda.shared.array(0, float32), pd)


@_kernel(**_JIT)
def value_grad_shared_f64(
    p, q, p_step, q_step, n_rows, n_bins, weight, index, mode, want_grad, rho, rho_m1, value, grad, pd,
):
    """As :func:`value_grad_shared_f32`, float64."""
    _value_grad_rows(p, q, p_step, q_step, n_rows, n_bins, weight, index, mode, want_grad, rho, rho_m1, value,
                     grad, cuda.shared.array(0, float64), cuda.shared.array(0, float64), pd)


@_kernel(**_JIT)
def value_grad_global(
    p, q, p_step, q_step, n_rows, n_bins, weight, index, mode, want_grad, rho, rho_m1, value, grad,
    scratch, scratchd,
):
    """As :func:`value_grad_shared_f32`, block ``b`` working in ``scratch[b]`` and ``scratchd[b]``."""
    b = cuda.blockIdx.x
    _value_grad_rows(p, q, p_step, q_step, n_rows, n_bins, weight, index, mode, want_grad, rho, rho_m1, value,
                     grad, scratch[b], scratchd[b], 0)


@_kernel(**_JIT)
def phi_shared_f32(p, q, p_step, q_step, n_rows, n_bins, index, out, pd):
    """phi of every row, ``out`` flat (n_rows * n_nodes,) in node order."""
    _phi_rows(p, q, p_step, q_step, n_rows, n_bins, index, out,
              cuda.shared.array(0, float64), cuda.shared.array(0, float32), pd)


@_kernel(**_JIT)
def phi_shared_f64(p, q, p_step, q_step, n_rows, n_bins, index, out, pd):
    """As :func:`phi_shared_f32`, float64."""
    _phi_rows(p, q, p_step, q_step, n_rows, n_bins, index, out,
              cuda.shared.array(0, float64), cuda.shared.array(0, float64), pd)


@_kernel(**_JIT)
def phi_global(p, q, p_step, q_step, n_rows, n_bins, index, out, scratch, scratchd):
    """As :func:`phi_shared_f32`, with global scratch rows."""
    b = cuda.blockIdx.x
    _phi_rows(p, q, p_step, q_step, n_rows, n_bins, index, out, scratch[b], scratchd[b], 0)


@_kernel(**_JIT)
def hvp_shared_f32(
    p, q, v, p_step, q_step, v_step, n_rows, n_bins, weight, below, index, mode, project_out,
    rho_rho_m1, rho_m2, out, pd,
):
    """``P H P v`` (``H P v`` without ``project_out``) for rho > 1, ``out`` flat (n_rows * n_bins,)."""
    _hvp_rows(p, q, v, p_step, q_step, v_step, n_rows, n_bins, weight, below, index, mode, project_out,
              rho_rho_m1, rho_m2, out, cuda.shared.array(0, float64), cuda.shared.array(0, float32), pd)


@_kernel(**_JIT)
def hvp_shared_f64(
    p, q, v, p_step, q_step, v_step, n_rows, n_bins, weight, below, index, mode, project_out,
    rho_rho_m1, rho_m2, out, pd,
):
    """As :func:`hvp_shared_f32`, float64."""
    _hvp_rows(p, q, v, p_step, q_step, v_step, n_rows, n_bins, weight, below, index, mode, project_out,
              rho_rho_m1, rho_m2, out, cuda.shared.array(0, float64), cuda.shared.array(0, float64), pd)


@_kernel(**_JIT)
def hvp_global(
    p, q, v, p_step, q_step, v_step, n_rows, n_bins, weight, below, index, mode, project_out,
    rho_rho_m1, rho_m2, out, scratch, scratchd,
):
    """As :func:`hvp_shared_f32`, with global scratch rows."""
    b = cuda.blockIdx.x
    _hvp_rows(p, q, v, p_step, q_step, v_step, n_rows, n_bins, weight, below, index, mode, project_out,
              rho_rho_m1, rho_m2, out, scratch[b], scratchd[b], 0)


@_kernel
def fill_zero(out):
    """out[:] = 0 (the Hessian-vector product at rho = 1)."""
    i = cuda.grid(1)
    while i < out.shape[0]:
        out[i] = 0
        i += cuda.gridsize(1)
