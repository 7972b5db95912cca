"""GPU driver: device copies of the tree, scratch allocation and kernel launches.

The CUDA counterpart of :mod:`emdtree.engine.driver`, for arrays that already live
on an NVIDIA GPU. It is imported only when a GPU array shows up (``import
emdtree`` never imports ``numba.cuda``). Every function takes 2-D C-contiguous
numba device arrays, float32 or float64 (all of one dtype), of shape
``(rows, n_bins)`` where ``rows`` is ``n_rows`` or 1 (one row broadcast
against the others), and a numba stream; every allocation and launch goes on
that stream, nothing waits for the device (except the first use of a tree on
a device and dtype, which copies its arrays over once), and the results are
new device arrays. The functions check shapes and dtypes (metadata only) but not the
values: the masses are the caller's to validate (non-finite values give the
CPU kernels' inf and NaN pattern, see :mod:`emdtree.kernels.cuda`).

Results equal those of the CPU drivers on the same rows to rounding
(float64: ~1e-15 relative; float32: within ~1e-7 of float64 on the ImageNet
tree), with their conventions: ``sign(0) = 0`` at rho = 1, a zero Hessian at
rho = 1, edges with all bins or none below them dropped from the Hessian.
Device memory comes from numba's allocator (an EMM plugin routes it through
the caller's pool); numba defers frees and flushes them in batches, and a
flush (``cuMemFree``) waits for the device.

The kernels (:mod:`emdtree.kernels.cuda`) run one thread block per sample
with its scratch in dynamic shared memory when it fits in
``SHARED_BYTES_MAX``, else in rows of a global-memory array sized by
``GLOBAL_SCRATCH_BYTES``.
"""

from __future__ import annotations

import warnings
from typing import Any, NamedTuple

import numpy as np
from numba import cuda

from .driver import kernel_arrays, mode_of
from .plan import plan_of
from .inputs import check_rho
from ..kernels import cuda as kernels
from ..trees.tree import Tree

# Threads per block. 256 keeps a launch within the register file at any
# register count (255 per thread at most); with the kernels' 64 registers, 4
# blocks share an H100 SM, as do their 4 x 31.5 KiB of shared scratch on the
# ImageNet tree. Tests set a few threads, so that tiny trees still cross the
# threads' chunk boundaries.
THREADS_PER_BLOCK = 256

# Dynamic shared memory per block: the 48 KiB a kernel may use without the
# opt-in attribute (which numba-cuda does not expose).
SHARED_BYTES_MAX = 48 * 1024

# Budget for the global scratch of trees too large for shared memory; the grid
# is capped so that one scratch row per block fits, and the blocks stride over
# the rows.
GLOBAL_SCRATCH_BYTES = 256 * 2**20
GLOBAL_BLOCKS_MAX = 4096


class TreeArrays(NamedTuple):
    """Device copies of a tree's layout in one dtype (see :func:`tree_arrays`)."""

    n_nodes: int
    n_bins: int
    index: Any  # int32 (6 n_nodes,): see tree_index
    weight: Any  # (n_nodes,) edge costs in the working dtype, 0 at the root
    below: Any  # float64 (n_nodes,) number of bins below each position


def tree_index(tree: Tree) -> np.ndarray:
    """The kernels' packed int32 index array of a tree.

    Six blocks of ``n_nodes`` entries, in post-order positions: the first
    position of each subtree (``START``), the Euler-tour slots where the tour
    enters and leaves each position (``ENTER``, ``EXIT``; together a
    permutation of ``0 .. 2 n_nodes - 1``), the parent position (``-1`` at the
    root), the position of each node (``POSITION``), then the positions of the
    bins followed by those of the nodes without a bin (``BINS``).

    Examples
    --------
    >>> from emdtree import Tree
    >>> tree_index(Tree.chain(2)).reshape(6, 2)  # leaf at position 0, root at 1
    array([[ 0,  0],
           [ 1,  0],
           [ 2,  3],
           [ 1, -1],
           [ 0,  1],
           [ 0,  1]], dtype=int32)
    """
    lay = tree.layout
    n = tree.n_nodes
    if 6 * n >= 2**31:
        raise ValueError(f"the tree has {n} nodes; the CUDA kernels take fewer than {2**31 // 6}")
    pos = np.arange(n, dtype=np.int64)
    start = pos - lay.size + 1
    enter = 2 * start + lay.depth  # entries of the subtrees before, exits of those done
    exit_ = 2 * pos + 1 + lay.depth  # j + 1 entries up to j, j exits, one per open ancestor
    non_bin = np.flatnonzero(lay.bin_at < 0)
    parts = (start, enter, exit_, lay.parent, lay.position, lay.bin_position, non_bin)
    return np.concatenate(parts).astype(np.int32)


def _device_key() -> str:
    dev = cuda.get_current_device()
    return str(getattr(dev, "uuid", getattr(dev, "id", 0)))


def tree_arrays(tree: Tree, dtype: Any) -> TreeArrays:
    """Device copies of the tree's arrays for the kernels, cached on the tree.

    One copy per dtype and device (the current one); made once, synchronously,
    so that any stream may use it.

    Raises
    ------
    ValueError
        If an edge cost is beyond the dtype's range (as the CPU kernels).
    """
    dtype = np.dtype(dtype)

    def build() -> TreeArrays:
        _, weight, _, _, below = kernel_arrays(tree, dtype)
        return TreeArrays(
            tree.n_nodes,
            tree.n_bins,
            cuda.to_device(tree_index(tree)),
            cuda.to_device(np.ascontiguousarray(weight, dtype=dtype)),
            cuda.to_device(np.ascontiguousarray(below, dtype=np.float64)),
        )

    return plan_of(tree).converted(("cuda", dtype.str, _device_key()), build)


def _rows(tree: Tree, named: dict[str, Any]) -> tuple[np.dtype, int, list[int]]:
    """Check the arrays' metadata; the dtype, the number of rows, each row step."""
    dtypes = {np.dtype(a.dtype) for a in named.values()}
    dtype = next(iter(dtypes))
    if len(dtypes) > 1 or dtype not in (np.dtype(np.float32), np.dtype(np.float64)):
        shown = ", ".join(f"{n} {np.dtype(a.dtype)}" for n, a in named.items())
        raise TypeError(f"the CUDA kernels take float32 or float64 arrays of one dtype, got {shown}")
    for name, a in named.items():
        if a.ndim != 2 or a.shape[1] != tree.n_bins:
            raise ValueError(
                f"{name} has shape {tuple(a.shape)}; expected (rows, {tree.n_bins}) for the tree's bins")
    counts = [a.shape[0] for a in named.values()]
    n_rows = 0 if 0 in counts else max(counts)
    for name, a in named.items():
        if a.shape[0] not in (1, n_rows):
            raise ValueError(f"{name} has {a.shape[0]} rows; expected 1 or {n_rows}")
    return dtype, n_rows, [0 if a.shape[0] == 1 else 1 for a in named.values()]


def _flat(a: Any) -> Any:
    """A C-contiguous 2-D device array as the 1-D view the kernels index."""
    if not a.is_c_contiguous():
        raise ValueError("the CUDA kernels take C-contiguous arrays")
    return a.reshape(a.size)


class _Launch(NamedTuple):
    grid: int
    threads: int
    shared_bytes: int  # dynamic shared memory, 0 on the global path
    pd: int  # offset of the working-dtype scratch in the shared array, in its elements
    scratch: Any  # global float64 scratch rows, or None
    scratchd: Any  # global working-dtype scratch rows, or None


def _launch(n_nodes: int, n_rows: int, dtype: np.dtype, stream: Any) -> _Launch:
    """Launch configuration: shared scratch when it fits, else global scratch rows."""
    tpb = THREADS_PER_BLOCK
    slots = 2 * n_nodes + 2 * tpb + 2  # float64: prefix sums, partial sums and counts, two flags
    row_bytes = 8 * slots + dtype.itemsize * n_nodes
    if row_bytes <= SHARED_BYTES_MAX:
        return _Launch(n_rows, tpb, row_bytes, slots * (8 // dtype.itemsize), None, None)
    blocks = int(min(n_rows, GLOBAL_BLOCKS_MAX, max(1, GLOBAL_SCRATCH_BYTES // row_bytes)))
    scratch = cuda.device_array((blocks, slots), dtype=np.float64, stream=stream)
    scratchd = cuda.device_array((blocks, n_nodes), dtype=dtype, stream=stream)
    return _Launch(blocks, tpb, 0, 0, scratch, scratchd)


def _configured(kernel: Any, grid: int, threads: int, stream: Any, shared_bytes: int = 0) -> Any:
    """``kernel[grid, threads, stream, shared_bytes]``, without numba-cuda's warning for
    grids under 128 blocks: with one block per sample a small batch is a small grid."""
    if grid >= 128:
        return kernel[grid, threads, stream, shared_bytes]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Grid size .* under-utilization")
        return kernel[grid, threads, stream, shared_bytes]


def _run(kernels_: tuple[Any, Any, Any], tree: TreeArrays, n_rows: int, dtype: np.dtype, stream: Any,
         args: tuple) -> None:
    """Launch the (float32 shared, float64 shared, global) kernel that fits the tree."""
    cfg = _launch(tree.n_nodes, n_rows, dtype, stream)
    if cfg.scratch is None:
        kernel = kernels_[0] if dtype == np.float32 else kernels_[1]
        _configured(kernel, cfg.grid, cfg.threads, stream, cfg.shared_bytes)(*args, cfg.pd)
    else:
        _configured(kernels_[2], cfg.grid, cfg.threads, stream)(*args, cfg.scratch, cfg.scratchd)


_VALUE_GRAD = (kernels.value_grad_shared_f32, kernels.value_grad_shared_f64, kernels.value_grad_global)
_PHI = (kernels.phi_shared_f32, kernels.phi_shared_f64, kernels.phi_global)
_HVP = (kernels.hvp_shared_f32, kernels.hvp_shared_f64, kernels.hvp_global)


def value_grad(p: Any, q: Any, tree: Tree, rho: float, want_grad: bool, stream: Any) -> tuple[Any, Any]:
    """EMD^rho of every row pair and, with ``want_grad``, its projected gradient.

    Same values as :func:`emdtree.engine.driver.value_grad` (and so
    :func:`emdtree.emd_value_and_grad`) on the same rows.

    Parameters
    ----------
    p, q : device arrays, shape (n_rows or 1, n_bins)
    tree : Tree
    rho : float
        Exponent >= 1; 1 and 2 take the fast paths.
    want_grad : bool
    stream : numba stream

    Returns
    -------
    value : device array, shape (n_rows,)
    grad : device array, shape (n_rows, n_bins), or None
        Gradient with respect to ``p``, minus its mean over the bins.
    """
    rho = check_rho(rho)
    dtype, n_rows, (ps, qs) = _rows(tree, {"p": p, "q": q})
    n_bins = tree.n_bins
    value = cuda.device_array(n_rows, dtype=dtype, stream=stream)
    grad = cuda.device_array((n_rows if want_grad else 0) * n_bins, dtype=dtype, stream=stream)
    if n_rows:
        t = tree_arrays(tree, dtype)
        _run(_VALUE_GRAD, t, n_rows, dtype, stream, (
            _flat(p), _flat(q), ps * n_bins, qs * n_bins, n_rows, n_bins, t.weight, t.index, mode_of(rho),
            bool(want_grad), dtype.type(rho), dtype.type(rho - 1.0), value, grad))
    return value, (grad.reshape(n_rows, n_bins) if want_grad else None)


def phi(p: Any, q: Any, tree: Tree, stream: Any) -> Any:
    """Subtree mass differences of every row pair, as :func:`emdtree.phi`.

    Parameters
    ----------
    p, q : device arrays, shape (n_rows or 1, n_bins)
    tree : Tree
    stream : numba stream

    Returns
    -------
    device array, shape (n_rows, n_nodes)
        Nodes in the tree's numbering.
    """
    dtype, n_rows, (ps, qs) = _rows(tree, {"p": p, "q": q})
    n_bins = tree.n_bins
    out = cuda.device_array(n_rows * tree.n_nodes, dtype=dtype, stream=stream)
    if n_rows:
        t = tree_arrays(tree, dtype)
        _run(_PHI, t, n_rows, dtype, stream, (_flat(p), _flat(q), ps * n_bins, qs * n_bins, n_rows, n_bins,
                                              t.index, out))
    return out.reshape(n_rows, tree.n_nodes)


def hvp(p: Any, q: Any, v: Any, tree: Tree, rho: float, project_out: bool, stream: Any) -> Any:
    """Hessian-vector product of EMD^rho for every row triple.

    ``P H P v`` with ``project_out`` (as :func:`emdtree.emd_hvp`), else
    ``H P v`` (as :func:`emdtree.engine.driver.hvp` with ``project_out=False``).
    Zero for ``rho = 1``.

    Parameters
    ----------
    p, q, v : device arrays, shape (n_rows or 1, n_bins)
    tree : Tree
    rho : float
    project_out : bool
    stream : numba stream

    Returns
    -------
    device array, shape (n_rows, n_bins)
    """
    rho = check_rho(rho)
    dtype, n_rows, (ps, qs, vs) = _rows(tree, {"p": p, "q": q, "v": v})
    n_bins = tree.n_bins
    out = cuda.device_array(n_rows * n_bins, dtype=dtype, stream=stream)
    if n_rows == 0:
        return out.reshape(0, n_bins)
    if rho == 1.0:
        blocks = min((n_rows * n_bins + THREADS_PER_BLOCK - 1) // THREADS_PER_BLOCK, 1024)
        _configured(kernels.fill_zero, blocks, THREADS_PER_BLOCK, stream)(out)
        return out.reshape(n_rows, n_bins)
    t = tree_arrays(tree, dtype)
    _run(_HVP, t, n_rows, dtype, stream, (
        _flat(p), _flat(q), _flat(v), ps * n_bins, qs * n_bins, vs * n_bins, n_rows, n_bins, t.weight,
        t.below, t.index, mode_of(rho), bool(project_out), dtype.type(rho * (rho - 1.0)),
        dtype.type(rho - 2.0), out))
    return out.reshape(n_rows, n_bins)


__all__ = ["TreeArrays", "hvp", "phi", "tree_arrays", "tree_index", "value_grad"]
