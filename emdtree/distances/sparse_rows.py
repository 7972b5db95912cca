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

from typing import Any

import numpy as np

from ..engine.semantics import is_scipy_sparse
from ..engine.threads import parallel_launch, usable_threads
from ..kernels import sparse_pairwise as kernels
from ..trees.tree import Tree
from .rows import _MIN_TAU

# Rows whose stored entries are at most this fraction of rows x columns are summed
# sparsely; measured crossover against the dense kernels (benchmarks/bench_emp.py --crossover).
SPARSE_MAX_DENSITY = 0.1

# Inputs with more non-zero masses than this fraction of their entries are not tried
# (their rows would be denser still: every ancestor of an observed bin is stored).
INPUT_MAX_DENSITY = 0.05

# Pair terms (pairs x mean stored entries per row) from which the parallel kernel runs.
_PARALLEL_MIN_TERMS = 4_000_000


class SparseRows:
    """Transformed rows of a block of samples in CSR form (columns ascending in each row).

    Attributes
    ----------
    ptr : ndarray of int64, shape (n + 1,)
    idx : ndarray of int32, shape (nnz,)
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

    def __sizeof__(self) -> int:  # what dask counts against a worker's memory, with the CSC to come
        return 2 * self.nbytes + 64

    def __getstate__(self) -> tuple:
        return self.ptr, self.idx, self.val, self.n_cols

    def __setstate__(self, state: tuple) -> None:
        self.__init__(*state)

    def density(self) -> float:
        n, c = self.shape
        return self.idx.shape[0] / max(n * c, 1)

    def order(self) -> np.ndarray:
        """The rows by the middle column of their support: rows in the same clades come together."""
        sizes = np.diff(self.ptr)
        middle = np.full(sizes.shape[0], -1, dtype=np.int64)
        has = sizes > 0
        middle[has] = self.idx[self.ptr[:-1][has] + sizes[has] // 2]
        return np.argsort(middle, kind="stable").astype(np.int64)

    def csc(self, order: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The rows by column (``ptr``, label, value), the rows labelled by their place in ``order``
        (default: their index), labels ascending. The one by index is built once and kept (the
        blocks of a Dask graph serve several tasks, maybe at once: a task never reads another's)."""
        if order is None and self._csc is not None:
            return self._csc
        n = self.shape[0]
        t_ptr = np.empty(self.n_cols + 1, dtype=np.int64)
        t_row = np.empty(self.idx.shape[0], dtype=np.int32)
        t_val = np.empty_like(self.val)
        kernels.transpose(self.ptr, self.idx, self.val, self.n_cols,
                          np.arange(n, dtype=np.int64) if order is None else order, t_ptr, t_row, t_val)
        if order is None:
            self._csc = (t_ptr, t_row, t_val)
        return t_ptr, t_row, t_val

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


def csr_rows(x: Any) -> Any:
    """A SciPy sparse table as a canonical CSR array (a copy: sorted columns, no duplicates, no
    stored zeros), whose rows give the same masses to this module as the dense rows would."""
    import scipy.sparse as sp

    out = sp.csr_array(x, copy=True)
    out.sum_duplicates()
    out.eliminate_zeros()
    return out


def first_row_total(x: Any) -> float:
    """The float64 total of the first row, summed as NumPy sums a dense row."""
    row = x[0:1].toarray()[0] if is_scipy_sparse(x) else x[0]
    return float(np.sum(row, dtype=np.float64))


def _csr_masses(rows: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
    """:func:`masses` of the rows of a canonical CSR array (:func:`csr_rows`)."""
    n, c = rows.shape
    data = rows.data
    if data.dtype.kind not in "biuf" or data.shape[0] > INPUT_MAX_DENSITY * n * c:
        return None
    val = data.astype(np.float64)
    if not (np.all(np.isfinite(val)) and np.all(val >= 0)):
        return None
    ptr = rows.indptr.astype(np.int64)
    totals = np.bincount(np.repeat(np.arange(n), np.diff(ptr)), weights=val, minlength=n)
    return ptr, rows.indices.astype(np.int64), val, totals


def masses(rows: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
    """The non-zero masses of the dense rows ``(n, n_bins)`` (or of a CSR array from
    :func:`csr_rows`) as CSR (``ptr``, ``idx``, float64 ``val``) and the row totals; None when more
    than :data:`INPUT_MAX_DENSITY` of the entries are non-zero or an entry is NaN, infinite or
    negative (the dense route then names it)."""
    if is_scipy_sparse(rows):
        return _csr_masses(rows)
    rows = np.ascontiguousarray(rows)
    if rows.dtype.kind not in "biuf":
        return None
    ptr = np.empty(rows.shape[0] + 1, dtype=np.int64)
    kernels.count_nonzero_rows(rows, ptr)
    if ptr[-1] > INPUT_MAX_DENSITY * rows.size:
        return None
    idx = np.empty(ptr[-1], dtype=np.int64)
    val = np.empty(ptr[-1], dtype=np.float64)
    totals = np.empty(rows.shape[0], dtype=np.float64)
    if not kernels.dense_to_csr(rows, ptr, idx, val, totals):
        return None
    return ptr, idx, val, totals


def build(in_ptr: np.ndarray, in_idx: np.ndarray, in_val: np.ndarray, divisor: np.ndarray | None, tree: Tree,
          columns: np.ndarray, scale: np.ndarray, dtype: np.dtype) -> SparseRows:
    """Sparse rows of the masses in CSR form (bins ``in_idx``, float64 ``in_val``), divided by
    ``divisor`` (row totals for ``normalize="l1"``; None: unscaled). ``columns`` from :func:`column_of`."""
    lay = tree.layout
    n = in_ptr.shape[0] - 1
    sizes = np.empty(n, dtype=np.int64)
    kernels.support_sizes(in_ptr, in_idx, lay.parent, lay.bin_position, columns, sizes)
    ptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(sizes, out=ptr[1:])
    idx = np.empty(ptr[-1], dtype=np.int32)
    val = np.empty(ptr[-1], dtype=dtype)
    div = np.ones(n) if divisor is None else np.asarray(divisor, dtype=np.float64)
    kernels.phi_rows(in_ptr, in_idx, in_val, div, lay.parent, lay.bin_position, columns,
                     np.asarray(scale, dtype=np.float64), ptr, idx, val)
    return SparseRows(ptr, idx, val, scale.shape[0])


def block(raw: np.ndarray, normalize: str | None, t0: float | None, mass_eps: float, tree: Tree,
          positions: np.ndarray, scale: np.ndarray, dtype: np.dtype) -> SparseRows | None:
    """The sparse rows of one block of masses (as given: any real dtype), or None for the dense route:
    rows too dense, or masses the dense route refuses (it names the entry). ``t0``: the total every
    row must have (without ``normalize``; None: unchecked)."""
    if normalize not in (None, "l1"):
        return None
    found = masses(raw)
    if found is None:
        return None
    ptr, idx, val, totals = found
    if totals.size and totals.max() > np.finfo(dtype).max:
        return None
    if normalize == "l1" and not np.all(totals > 0):
        return None
    if normalize is None and t0 is not None:
        tol = max(tree.n_bins, 64) * mass_eps
        if np.any(np.abs(totals - t0) > tol * np.maximum(np.abs(totals), abs(t0))):
            return None
    out = build(ptr, idx, val, totals if normalize == "l1" else None, tree, column_of(tree, positions), scale,
                dtype)
    return out if out.density() <= SPARSE_MAX_DENSITY else None


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
    out = np.zeros((n_a, n_b), dtype=a.val.dtype)
    if out.size == 0:
        return out
    order = a.order()
    label_row = order if square else np.arange(n_b, dtype=np.int64)
    t_ptr, t_row, t_val = other.csc(order if square else None)
    args = (a.ptr, a.idx, a.val, sum_a, other.ptr, other.idx, other.val, sum_b, t_ptr, t_row, t_val,
            label_row, square, mode, float(rho), _MIN_TAU, order, out.reshape(-1))
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


def in_memory(inputs: list[Any], dtype: np.dtype, tree: Tree, positions: np.ndarray,
              scale: np.ndarray, normalize: str | None, check: bool, step: int) -> list[SparseRows] | None:
    """The sparse rows of each input (n, n_bins; dense or from :func:`csr_rows`), read ``step`` rows
    at a time, when they are sparse enough; None for the dense route (also for masses that the dense
    route refuses: it names the entry)."""
    if normalize not in (None, "l1") or any(x.shape[0] == 0 for x in inputs):
        return None
    eps = max(float(np.finfo(x.dtype if x.dtype.kind == "f" else np.float64).eps) for x in inputs)
    with np.errstate(over="ignore", invalid="ignore"):  # an overflowing total goes to the dense route
        t0 = first_row_total(inputs[0]) if check and normalize is None else None
    out = []
    for x in inputs:
        parts = []
        for r0 in range(0, x.shape[0], step):
            part = block(x[r0:r0 + step], normalize, t0, eps, tree, positions, scale, dtype)
            if part is None:
                return None
            parts.append(part)
        out.append(concatenate(parts, positions.shape[0], dtype))
    return out


def concatenate(parts: list[SparseRows], n_cols: int, dtype: np.dtype) -> SparseRows:
    """The rows of ``parts`` one after another."""
    if len(parts) == 1:
        return parts[0]
    if not parts:
        return SparseRows(np.zeros(1, dtype=np.int64), np.zeros(0, dtype=np.int32), np.zeros(0, dtype=dtype),
                          n_cols)
    offsets = np.cumsum([0] + [p.idx.shape[0] for p in parts[:-1]])
    ptr = np.concatenate([[0]] + [p.ptr[1:] + o for p, o in zip(parts, offsets)])
    return SparseRows(ptr.astype(np.int64), np.concatenate([p.idx for p in parts]),
                      np.concatenate([p.val for p in parts]), n_cols)

