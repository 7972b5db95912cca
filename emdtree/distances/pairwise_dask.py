"""Blocked all-pairs EMD^rho on dask arrays: a lazy distance matrix.

The graph has two layers. The first turns each row block of the samples
into its rows ``x`` (``x_k = w_k^(1/rho) phi_k``, see :mod:`emdtree.distances.pairwise`),
once; the second computes one block of the matrix per pair of row blocks
from those rows, so each block's phi transform is reused by every block pair
that needs it and travels between workers as ``block x n_cols`` values. For
a square matrix only the blocks on and above the diagonal are computed; a
block below is the transpose of its mirror image, so the result is exactly
symmetric with an exactly zero diagonal, as the in-memory matrix.

A block of sparse samples (few observed bins on a large tree) becomes
:class:`~emdtree.distances.sparse_rows.SparseRows` instead of dense rows: it
is read from the masses as given, without a dense copy in the working dtype,
and its pairs are summed over shared columns; a block pair with one dense
block is summed densely.

Within a block pair, the columns that are constant over both blocks are left
out when they are many (they contribute exactly zero): with small blocks of
sparse samples on a large tree many nodes carry no mass in either block. Tasks run the one-thread kernels
of :mod:`emdtree.kernels.pairwise`: the scheduler's workers are the
parallelism. Inputs are checked inside the tasks that read them, and errors
name rows of the whole input.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..engine.inputs import working_dtype
from ..kernels import pairwise as kernels
from ..kernels.checks import row_totals
from ..kernels.pairwise import listed_pairs_serial, pair_sums_serial
from . import sparse_rows
from .rows import _GRAM_MAX_TAU, _GRAM_REL, _MIN_TAU, _columns, _Rows, _sample_tree
from ..trees.tree import Tree
from ..engine import semantics

__all__ = ["pairwise_dask", "block_distances"]

# Columns constant over a block pair are dropped (a copy of both blocks) when they are
# at least a tenth of all; a constant column adds exactly zero to every distance.
_COMPACT = 0.9


@dataclass(frozen=True)
class _PhiSettings:
    """What every phi task of one input needs (one graph key, sent once per worker)."""

    name: str
    axis: int
    dtype: np.dtype
    tree: Tree
    positions: np.ndarray
    scale: np.ndarray
    normalize: str | None
    check: bool
    mass_eps: float


def _first_total(block: np.ndarray, dtype: np.dtype) -> float:
    """Total mass of the first sample: the reference of the equal-totals check."""
    rows = np.ascontiguousarray(block[:1], dtype=dtype)
    totals = np.empty(1, dtype=np.float64)
    row_totals(rows, totals)
    return float(totals[0])


def _phi_block(block: np.ndarray, settings: _PhiSettings, offset: int, t0: float | None) -> Any:
    """Rows ``x`` of one block of samples, ``(rows, n_cols)``, after checking them
    (:mod:`emdtree.engine.semantics`, as in memory: logits for ``normalize="softmax"``); sparse
    samples give :class:`~emdtree.distances.sparse_rows.SparseRows`."""
    s = settings
    sparse = sparse_rows.block(block, s.normalize, t0 if s.check else None, s.mass_eps, s.tree, s.positions,
                               s.scale, s.dtype)
    if sparse is not None:
        return sparse
    rows = np.ascontiguousarray(block, dtype=s.dtype)
    entry, row = semantics.indexed(s.name, offset, s.axis)
    if s.normalize == "softmax":
        error = semantics.logit_error(rows, s.name, entry, row) if s.check else None
        if error is not None:
            raise ValueError(error)
    elif s.check or s.normalize is not None or t0 is not None:
        totals = np.empty(rows.shape[0], dtype=np.float64)
        bad = row_totals(rows, totals)
        if s.check and bad >= 0:
            r, k = divmod(bad, rows.shape[1])
            raise ValueError(semantics.mass_entry_error(rows[r, k], s.name, entry(r, k)))
        if s.normalize is not None:
            zero = np.flatnonzero(~(totals > 0))
            if zero.size:
                raise ValueError(semantics.message("zero_total", row=row(int(zero[0]))))
        elif t0 is not None:
            tol = max(s.tree.n_bins, 64) * s.mass_eps
            off = np.abs(totals - t0) > tol * np.maximum(np.abs(totals), abs(t0))
            if np.any(off):
                r = int(np.flatnonzero(off)[0])
                first = semantics.indexed("X", 0, s.axis)[1](0)
                raise ValueError(
                    f"all samples must have equal total mass, but sum({first}) = {t0!r} and sum({row(r)}) = "
                    f"{float(totals[r])!r}: the EMD between different totals is undefined; pass "
                    "normalize='l1' to compare them as distributions"
                )
    transformed = _Rows(rows, s.name, 1, s.dtype, s.tree, s.positions, s.scale, s.normalize, False,
                        max(1, rows.shape[0]))
    return transformed.x


def block_distances(a: np.ndarray, b: np.ndarray | None, rho: float) -> np.ndarray:
    """EMD^rho between the rows of two blocks of transformed samples.

    Parameters
    ----------
    a : ndarray, shape (n_a, n_cols)
        Rows ``x`` of one block (float32 or float64), left unchanged.
    b : ndarray, shape (n_b, n_cols), or None
        Rows of the other block, of ``a``'s dtype; None for the square block
        of ``a`` with itself (exactly symmetric, zero diagonal).
    rho : float
        Exponent, >= 1.

    Returns
    -------
    ndarray, shape (n_a, n_b)
        In ``a``'s dtype, computed on the calling thread only.
    """
    if isinstance(a, sparse_rows.SparseRows) or isinstance(b, sparse_rows.SparseRows):
        if b is None or (isinstance(a, sparse_rows.SparseRows) and isinstance(b, sparse_rows.SparseRows)):
            return sparse_rows.distances(a, b, rho, 1)
        # a block too dense for the sparse route beside a sparse one: both dense
        a, b = (x.to_dense() if isinstance(x, sparse_rows.SparseRows) else x for x in (a, b))
    square = b is None
    dtype = a.dtype
    low = a.min(axis=0, initial=np.inf)
    high = a.max(axis=0, initial=-np.inf)
    if not square:
        low = np.minimum(low, b.min(axis=0, initial=np.inf))
        high = np.maximum(high, b.max(axis=0, initial=-np.inf))
    keep = np.flatnonzero(~(low == high))  # NaN (unchecked inputs) counts as varying
    n_a = a.shape[0]
    n_b = n_a if square else b.shape[0]
    out = np.zeros((n_a, n_b), dtype=dtype)
    if keep.size == 0 or out.size == 0:
        return out
    if keep.size < _COMPACT * a.shape[1]:  # worth a copy of the blocks
        a = np.ascontiguousarray(a[:, keep])
        b = None if square else np.ascontiguousarray(b[:, keep])
        low = low[keep]
    n_cols = a.shape[1]
    tau = n_cols * float(np.finfo(np.float64).eps) / _GRAM_REL
    if rho == 2.0 and dtype == np.float64 and tau < _GRAM_MAX_TAU:
        return _gram_block(a, b, tau, out)
    other = a if square else b
    mode = kernels.MODE_ONE if rho == 1.0 else kernels.MODE_TWO if rho == 2.0 else kernels.MODE_GENERAL
    sum_a = sum_b = np.zeros(0)
    if mode == kernels.MODE_ONE and dtype == np.float64 and low.min() >= 0:
        mode = kernels.MODE_ONE_MIN
        sum_a = a.sum(axis=1)
        sum_b = sum_a if square else other.sum(axis=1)
    kind = kernels.OUT_SQUARE if square else kernels.OUT_RECT
    pair_sums_serial(a.reshape(-1), other.reshape(-1), n_a, n_b, n_cols, kind, mode, dtype.type(rho),
                     sum_a, sum_b, _MIN_TAU, out.reshape(-1))
    return out


def _gram_block(a: np.ndarray, b: np.ndarray | None, tau: float, out: np.ndarray) -> np.ndarray:
    """EMD^2 of a float64 block from a matrix product (see ``emdtree.distances.rows._GRAM_REL``)."""
    square = b is None
    center = a.mean(axis=0) if square else (a.sum(axis=0) + b.sum(axis=0)) / (a.shape[0] + b.shape[0])
    a = a - center  # never in place: the blocks may be shared with other tasks
    b = a if square else b - center
    norm_a = np.einsum("ij,ij->i", a, a)
    norm_b = norm_a if square else np.einsum("ij,ij->i", b, b)
    total = norm_a[:, None] + norm_b[None, :]
    d = total - 2.0 * (a @ b.T)
    low_rows, low_cols = np.nonzero(~(d > tau * total))
    if square:
        upper = low_cols > low_rows
        low_rows, low_cols = low_rows[upper], low_cols[upper]
    if low_rows.size:
        vals = np.empty(low_rows.size)
        listed_pairs_serial(a.reshape(-1), b.reshape(-1), a.shape[1], low_rows.astype(np.int64),
                            low_cols.astype(np.int64), kernels.MODE_TWO, 2.0, vals)
        d[low_rows, low_cols] = vals
    if square:
        upper = np.triu(d, 1)
        d = upper + upper.T  # each entry adds an exact zero: exactly symmetric, zero diagonal
    out[...] = d
    return out


def _square_block(a: np.ndarray, rho: float) -> np.ndarray:
    return block_distances(a, None, rho)


def _mirror(block: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(block.T)


def _as_samples(x: Any, name: str, axis: int, rows: int | None):
    """``x`` as a dask array of samples in rows, the bin axis in one chunk."""
    import dask.array as da

    if not hasattr(x, "ndim") or not hasattr(x, "dtype"):
        x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array (n_samples, n_bins), got shape {tuple(x.shape)}")
    if np.dtype(x.dtype).kind not in "biuf" and not semantics.narrow_float(x.dtype):  # bfloat16: float32
        raise TypeError(f"{name} must hold real numbers, got dtype {x.dtype}")
    lazy = x if isinstance(x, da.Array) else da.from_array(x, chunks=(rows or "auto", -1))
    if axis == 0:
        lazy = lazy.T
    if any(np.isnan(c) for c in lazy.chunks[0]):
        raise ValueError(f"{name} has unknown chunk sizes; call {name}.compute_chunk_sizes() first")
    return lazy.rechunk({0: rows, 1: -1} if rows is not None else {1: -1})


def pairwise_dask(X: Any, Y: Any, tree: Tree | None, rho: float, normalize: str | None,
                  block_size: int | None, axis: int, check_inputs: bool):
    """:func:`emdtree.pairwise` for dask arrays (arguments already checked); a lazy matrix."""
    import dask.array as da
    from dask.base import tokenize
    from dask.highlevelgraph import HighLevelGraph

    xs = _as_samples(X, "X", axis, block_size)
    ys = None if Y is None else _as_samples(Y, "Y", axis, block_size or xs.chunks[0][0] or None)
    dtype = working_dtype(xs) if ys is None else working_dtype(xs, ys)
    n_bins = xs.shape[1]
    tree = _sample_tree(tree, n_bins, None if ys is None else ys.shape[1], "")
    n = xs.shape[0]
    m = n if ys is None else ys.shape[0]
    if n == 0 or m == 0:
        return da.zeros((n, m), dtype=dtype)

    positions, scale = _columns(tree, rho)
    inputs = [xs] if ys is None else [xs, ys]
    mass_eps = max(semantics.float_eps(a.dtype) for a in inputs)
    token = tokenize(xs.name, None if ys is None else ys.name, rho, normalize, check_inputs, axis,
                     tree.layout.parent, tree.layout.weight, tree.layout.bin_at)
    t0_key = None
    phis = []
    for name, lazy in zip("XY", inputs):
        phi_name = f"emdtree-phi-{name}-{token}"
        settings_key = (f"emdtree-phi-settings-{name}-{token}",)
        layer: dict = {settings_key: _PhiSettings(name, axis if axis == 0 else 1, dtype, tree, positions,
                                                  scale, normalize, check_inputs, mass_eps)}
        if check_inputs and normalize is None and t0_key is None:
            t0_key = (f"emdtree-first-total-{token}",)
            layer[t0_key] = (_first_total, (lazy.name, 0, 0), dtype)
        offset = 0
        for i, rows in enumerate(lazy.chunks[0]):
            layer[(phi_name, i, 0)] = (_phi_block, (lazy.name, i, 0), settings_key, offset, t0_key)
            offset += rows
        deps = [lazy] if name == "X" or t0_key is None else [lazy, phis[0]]
        graph = HighLevelGraph.from_collections(phi_name, layer, dependencies=deps)
        phis.append(da.Array(graph, phi_name, chunks=(lazy.chunks[0], (positions.size,)), dtype=dtype))

    name = f"emdtree-pairwise-{token}"
    px = phis[0]
    py = phis[-1]
    rho_value = float(rho)
    layer = {}
    for i in range(px.numblocks[0]):
        for j in range(py.numblocks[0]):
            if ys is not None or i < j:
                layer[(name, i, j)] = (block_distances, (px.name, i, 0), (py.name, j, 0), rho_value)
            elif i == j:
                layer[(name, i, j)] = (_square_block, (px.name, i, 0), rho_value)
            else:
                layer[(name, i, j)] = (_mirror, (name, j, i))
    graph = HighLevelGraph.from_collections(name, layer, dependencies=phis if ys is not None else [px])
    return da.Array(graph, name, chunks=(px.chunks[0], py.chunks[0]), dtype=dtype)
