"""Sparse transformed rows for :mod:`emdtree.distances.pairwise`, in memory and on Dask.

A sample's row ``x`` (``x_k = w_k^(1/rho) phi_k``) is non-zero only on the
ancestors of the bins that hold its mass. When the samples are sparse on a
large tree (a microbiome table: a few hundred to a few thousand observed tips
among 100,000), the rows are kept in CSR form and the pairs are summed over
the columns two samples share (:mod:`emdtree.kernels.sparse_pairwise`): a
pair costs its shared support instead of every column of the tree, and the
rows take ``12 nnz`` bytes instead of ``8 n c``.

Which route runs is decided by the density of the rows, the stored entries
over ``rows x columns`` (:data:`SPARSE_MAX_DENSITY`, set by
``benchmarks/bench_emp.py --crossover``); the two routes give the same
distances to rounding (``tests/test_sparse_pairwise.py``). Only masses (no
``normalize="softmax"``, whose rows are dense) take this route.
"""

from __future__ import annotations

import numpy as np

from ..engine.threads import parallel_launch, usable_threads
from ..kernels import sparse_pairwise as kernels
from ..trees.tree import Tree
from .rows import _MIN_TAU

# Rows whose stored entries are at most this fraction of rows x columns are summed
# sparsely; measured crossover against the dense kernels (benchmarks/bench_emp.py --crossover).
SPARSE_MAX_DENSITY = 0.05

# Inputs with more non-zero masses than this fraction of their entries are not tried
# (their rows would be denser still: every ancestor of an observed bin is stored).
INPUT_MAX_DENSITY = 0.02

# Pair terms (pairs x mean stored entries per row) from which the parallel kernel runs.
_PARALLEL_MIN_TERMS = 4_000_000


class SparseRows:
    """Transformed rows of a block of samples in CSR form (columns ascending in each row).

    Attributes
    ----------
    ptr : ndarray of int64, shape (n + 1,)
    idx : ndarray of int64, shape (nnz,)
        Column of each stored value.
    val : ndarray, shape (nnz,)
        The values ``x_k``, in the working dtype.
    n_cols : int
        Columns of the dense rows.
    """

    __slots__ = ("ptr", "idx", "val", "n_cols", "_csc")

    def __init__(self, ptr: np.ndarray, idx: np.ndarray, val: np.ndarray, n_cols: int) -> None:
        self.ptr, self.idx, self.val, self.n_cols = ptr, idx, val, int(n_cols)
        self._csc = None

    @property
    def shape(self) -> tuple[int, int]:
        return (self.ptr.shape[0] - 1, self.n_cols)

    @property
    def dtype(self) -> np.dtype:
        return self.val.dtype

    @property
    def nbytes(self) -> int:
        return self.ptr.nbytes + self.idx.nbytes + self.val.nbytes

    def __sizeof__(self) -> int:  # what dask counts against a worker's memory
        return self.nbytes + 64

    def __getstate__(self) -> tuple:
        return self.ptr, self.idx, self.val, self.n_cols

    def __setstate__(self, state: tuple) -> None:
        self.__init__(*state)

    def density(self) -> float:
        n, c = self.shape
        return self.idx.shape[0] / max(n * c, 1)

    def csc(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The rows by column (``ptr``, row, value), rows ascending; built once."""
        if self._csc is None:
            t_ptr = np.empty(self.n_cols + 1, dtype=np.int64)
            t_row = np.empty(self.idx.shape[0], dtype=np.int64)
            t_val = np.empty_like(self.val)
            kernels.transpose(self.ptr, self.idx, self.val, self.n_cols, t_ptr, t_row, t_val)
            self._csc = (t_ptr, t_row, t_val)
        return self._csc

    def to_dense(self) -> np.ndarray:
        n, c = self.shape
        out = np.zeros((n, c), dtype=self.val.dtype)
        rows = np.repeat(np.arange(n), np.diff(self.ptr))
        out[rows, self.idx] = self.val
        return out


def column_of(tree: Tree, positions: np.ndarray) -> np.ndarray:
    """The column of each layout position (``-1`` where none)."""
    out = np.full(tree.n_nodes, -1, dtype=np.int64)
    out[positions] = np.arange(positions.shape[0])
    return out


def input_density(rows: np.ndarray) -> float:
    """Fraction of non-zero entries of a 2-D block of masses."""
    return float(np.count_nonzero(rows)) / max(rows.size, 1)


def build(rows: np.ndarray, divisor: np.ndarray | None, tree: Tree, columns: np.ndarray, scale: np.ndarray,
          dtype: np.dtype) -> SparseRows:
    """Sparse rows of the checked masses ``rows`` (n, n_bins), divided by ``divisor`` (row totals for
    ``normalize="l1"``; None: unscaled). ``columns`` from :func:`column_of`."""
    lay = tree.layout
    n = rows.shape[0]
    in_ptr = np.empty(n + 1, dtype=np.int64)
    in_idx, in_val = kernels.dense_to_csr(np.ascontiguousarray(rows), in_ptr)
    sizes = np.empty(n, dtype=np.int64)
    kernels.support_sizes(in_ptr, in_idx, lay.parent, lay.bin_position, columns, sizes)
    ptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(sizes, out=ptr[1:])
    idx = np.empty(ptr[-1], dtype=np.int64)
    val = np.empty(ptr[-1], dtype=dtype)
    div = np.ones(n) if divisor is None else np.asarray(divisor, dtype=np.float64)
    kernels.phi_rows(in_ptr, in_idx, in_val, div, lay.parent, lay.bin_position, columns,
                     np.asarray(scale, dtype=np.float64), ptr, idx, val)
    return SparseRows(ptr, idx, val, scale.shape[0])


def _mode(rho: float, a: SparseRows, b: SparseRows) -> int:
    if rho == 2.0:
        return kernels.MODE_TWO
    if rho == 1.0 and (a.val.size == 0 or a.val.min() >= 0) and (b.val.size == 0 or b.val.min() >= 0):
        return kernels.MODE_ONE_MIN
    return kernels.MODE_GENERAL


def distances(a: SparseRows, b: SparseRows | None, rho: float, n_threads: int | None = 1) -> np.ndarray:
    """EMD^rho between the sparse rows of ``a`` and ``b`` (None: ``a`` with itself, exactly symmetric
    with a zero diagonal), ``(n_a, n_b)`` in ``a``'s dtype. ``n_threads`` None: from the work."""
    square = b is None
    other = a if square else b
    mode = _mode(rho, a, other)
    n_a, n_b = a.shape[0], other.shape[0]
    sum_a = np.empty(n_a)
    kernels.power_sums(a.ptr, a.val, mode, float(rho), sum_a)
    if square:
        sum_b = sum_a
    else:
        sum_b = np.empty(n_b)
        kernels.power_sums(other.ptr, other.val, mode, float(rho), sum_b)
    t_ptr, t_row, t_val = other.csc()
    out = np.zeros((n_a, n_b), dtype=a.val.dtype)
    if out.size == 0:
        return out
    args = (a.ptr, a.idx, a.val, sum_a, other.ptr, other.idx, other.val, sum_b, t_ptr, t_row, t_val, square,
            mode, float(rho), _MIN_TAU, out.reshape(-1))
    if n_threads is None:
        terms = n_a * n_b * (a.idx.shape[0] / max(n_a, 1))
        n_threads = usable_threads() if terms >= _PARALLEL_MIN_TERMS else 1
    n_threads = usable_threads(n_threads)
    with np.errstate(over="ignore", invalid="ignore"):
        if n_threads == 1:
            kernels.sparse_pair_sums_serial(*args)
        else:
            with parallel_launch(n_threads):
                kernels.sparse_pair_sums(*args, 8 * n_threads)
    return out


def _checked_totals(samples: np.ndarray, dtype: np.dtype, block: int) -> np.ndarray | None:
    """Row totals (float64) of finite, non-negative masses; None when an entry is not (the dense
    route then raises the error that names it)."""
    from ..kernels.checks import row_totals

    totals = np.empty(samples.shape[0])
    for r0 in range(0, samples.shape[0], block):
        rows = np.ascontiguousarray(samples[r0:r0 + block], dtype=dtype)
        if row_totals(rows, totals[r0:r0 + block]) != -1:
            return None
    return totals


def in_memory(inputs: list[np.ndarray], dtype: np.dtype, tree: Tree, positions: np.ndarray,
              scale: np.ndarray, normalize: str | None, check: bool) -> list[SparseRows] | None:
    """The sparse rows of each input (n, n_bins) when they are sparse enough; None for the dense route.

    Inputs that the checks of the dense route would refuse (an invalid mass, a zero total
    with ``normalize="l1"``, unequal totals without ``normalize``) get None too: the dense
    route names the entry.
    """
    if normalize not in (None, "l1"):
        return None
    if sum(np.count_nonzero(x) for x in inputs) > INPUT_MAX_DENSITY * sum(x.size for x in inputs):
        return None
    block = max(1, (1 << 22) // max(tree.n_bins, 1))
    totals = []
    for x in inputs:
        t = _checked_totals(x, dtype, block) if check or normalize == "l1" else None
        if (check or normalize == "l1") and t is None:
            return None
        if normalize == "l1" and not np.all(t > 0):
            return None
        totals.append(t)
    if check and normalize is None:
        every = np.concatenate(totals)
        if every.size:
            eps = max(float(np.finfo(x.dtype if x.dtype.kind == "f" else np.float64).eps) for x in inputs)
            t0 = every[0]
            if np.any(np.abs(every - t0) > max(tree.n_bins, 64) * eps * np.maximum(np.abs(every), abs(t0))):
                return None
    columns = column_of(tree, positions)
    out = []
    cells = 0
    for x, t in zip(inputs, totals):
        parts = []
        for r0 in range(0, x.shape[0], block):
            rows = np.ascontiguousarray(x[r0:r0 + block], dtype=dtype)
            div = t[r0:r0 + block] if normalize == "l1" else None
            parts.append(build(rows, div, tree, columns, scale, dtype))
        out.append(concatenate(parts, positions.shape[0], dtype))
        cells += x.shape[0] * positions.shape[0]
    if sum(r.idx.shape[0] for r in out) > SPARSE_MAX_DENSITY * cells:
        return None
    return out


def concatenate(parts: list[SparseRows], n_cols: int, dtype: np.dtype) -> SparseRows:
    """The rows of ``parts`` one after another."""
    if len(parts) == 1:
        return parts[0]
    if not parts:
        return SparseRows(np.zeros(1, dtype=np.int64), np.zeros(0, dtype=np.int64), np.zeros(0, dtype=dtype),
                          n_cols)
    offsets = np.cumsum([0] + [p.idx.shape[0] for p in parts[:-1]])
    ptr = np.concatenate([[0]] + [p.ptr[1:] + o for p, o in zip(parts, offsets)])
    return SparseRows(ptr.astype(np.int64), np.concatenate([p.idx for p in parts]),
                      np.concatenate([p.val for p in parts]), n_cols)


def block(rows: np.ndarray, divisor: np.ndarray | None, tree: Tree, positions: np.ndarray, scale: np.ndarray,
          dtype: np.dtype) -> SparseRows | None:
    """The sparse rows of one checked block of masses (a Dask task), or None when it is too dense."""
    if input_density(rows) > INPUT_MAX_DENSITY:
        return None
    out = build(rows, divisor, tree, column_of(tree, positions), scale, dtype)
    return out if out.density() <= SPARSE_MAX_DENSITY else None
