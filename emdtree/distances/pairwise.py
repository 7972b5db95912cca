"""All-pairs EMD^rho between two sets of samples: distance matrices on a tree.

With ``rho = 1`` and ``normalize="l1"`` this is weighted unnormalised
UniFrac (Lozupone et al. 2007): the branch lengths of a phylogeny are the
edge costs and the samples are taxon counts on its tips.

Each sample is turned once into a row ``x`` with ``x_k = w_k^(1/rho) phi_k``
over the columns ``k`` that can contribute (paper eq. 7), so that
``EMD^rho(p, q) = sum_k |x_k - y_k|^rho``; the pair sums are then formed by
the tiled kernels of :mod:`emdtree.kernels.pairwise`. The columns kept are
the non-root nodes with a bin below them but not every bin below them (the
others have ``phi = 0`` for every pair of equal totals), one node per run of
nodes with the same bins below (their ``phi`` are equal, so their costs add
up), with a positive total cost, and taking more than one value over the
samples (a column that is constant contributes nothing).

Sparse samples on a large tree (a microbiome table: a few thousand observed
tips among 100,000) take the sparse route of
:mod:`emdtree.distances.sparse_rows`: rows stored on the ancestors of the
observed bins only, pairs summed over the columns two samples share. The
route is chosen from the density of the rows; both give the same distances
to rounding.

Accuracy. Each sample's phi is rounded on its own, so a distance errs by a
few ``eps (S_i + S_j)`` with ``S_i = sum_k w_k |phi_k|`` (the direct formula
on the same rows does too). For ``rho = 1`` in float64 the kernel sums
``min(x_k, y_k)`` (see ``_MIN_TAU`` in :mod:`emdtree.distances.rows`), for
``rho = 2`` in float64 it uses a matrix product (see ``_GRAM_REL``); both
fall back to the direct sum for the pairs where they would lose accuracy. Square results are computed for ``i < j``
and mirrored: exactly symmetric, with an exactly zero diagonal.
"""

from __future__ import annotations

import numbers
from typing import Any

import numba
import numpy as np

from ..engine import driver as _driver, semantics, tiers as _tiers
from ..engine.inputs import check_rho, reject_masked, working_dtype
from ..kernels import cpu
from ..kernels import pairwise as kernels
from ..engine.normalize import check_normalize
from ..engine.threads import parallel_launch, usable_threads
from . import sparse_rows as _sparse
from .rows import _GRAM_MAX_TAU, _GRAM_REL, _MIN_TAU, _columns, _Rows, _sample_tree
from ..trees.tree import Tree
from ..engine.plan import plan_of

__all__ = ["pairwise"]

# Rows turned into phi at a time when block_size is None: about 4M node values.
_BLOCK_VALUES = 1 << 22

# Pair-column terms up to which a matrix is computed with SciPy's cdist (a few ns per
# term) rather than the pair kernels, whose compilation takes several seconds: about
# 500 samples on the ImageNet tree. Unless EMDTREE_JIT=eager, whatever is compiled.
_COLD_MAX_WORK = 200_000_000


def _check_samples(x: Any, name: str, axis: int) -> np.ndarray:
    """A 2-D (n_samples, n_bins) view of ``x``: memory maps stay memory maps."""
    if hasattr(x, "__cuda_array_interface__") and not isinstance(x, np.ndarray):
        raise TypeError(f"{name} is a GPU array; pairwise takes host arrays")
    reject_masked(x, name)
    sparse = semantics.is_scipy_sparse(x)  # kept sparse: the sparse route reads it as it is
    arr = x if isinstance(x, np.ndarray) or sparse else semantics.host_rows(x, name)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array (n_samples, n_bins), got shape {arr.shape}")
    if arr.dtype.kind not in "biuf" and not semantics.narrow_float(arr.dtype):  # bfloat16: in float32
        raise TypeError(f"{name} must hold real numbers, got dtype {arr.dtype}")
    arr = arr if axis == 1 else arr.T
    return _sparse.csr_rows(arr) if sparse else arr


def _is_dask(x: Any) -> bool:
    return type(x).__module__.startswith("dask") and hasattr(x, "blocks")


def _check_equal_totals(parts: list[tuple[str, _Rows]], n_bins: int, mass_eps: float, axis: int) -> None:
    """Equal totals up to rounding in the least precise input dtype (as :func:`emdtree.emd`)."""
    ref_name, ref = parts[0]
    if ref.totals.size == 0:
        return
    t0 = float(ref.totals[0])
    tol = max(n_bins, 64) * mass_eps
    for name, rows in parts:
        t = rows.totals
        off = np.abs(t - t0) > tol * np.maximum(np.abs(t), abs(t0))
        if np.any(off):
            r = int(np.flatnonzero(off)[0])
            first = f"{ref_name}[0]" if axis == 1 else f"{ref_name}[:, 0]"
            this = f"{name}[{r}]" if axis == 1 else f"{name}[:, {r}]"
            raise ValueError(
                f"all samples must have equal total mass, but sum({first}) = {t0!r} and "
                f"sum({this}) = {float(t[r])!r}: the EMD between different totals is undefined; "
                "pass normalize='l1' to compare them as distributions"
            )


def _check_int(value: Any, name: str, low: int, high: int | None = None) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (numbers.Integral, np.integer)):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        limit = f"between {low} and {high}" if high is not None else f">= {low}"
        raise ValueError(f"{name} must be {limit}, got {value}")
    return int(value)


def pairwise(
    X: Any,
    Y: Any = None,
    tree: Tree | None = None,
    rho: float = 1.0,
    *,
    normalize: str | None = None,
    condensed: bool = False,
    block_size: int | None = None,
    axis: int = -1,
    check_inputs: bool = True,
    n_threads: int | None = None,
) -> np.ndarray:
    """EMD^rho between every sample of ``X`` and every sample of ``Y``.

    ``D[i, j] = EMD^rho(X[i], Y[j]) = sum_k w_k |phi_k(X[i]) - phi_k(Y[j])|^rho``
    over the non-root nodes ``k`` (paper eq. 7). On a phylogeny with
    ``rho=1`` and ``normalize="l1"`` this is weighted unnormalised UniFrac.

    Parameters
    ----------
    X : array_like, shape (n, n_bins)
        Non-negative masses, one sample per row (per column with ``axis=0``).
        A ``numpy.memmap`` is read in blocks of rows, never whole. A dask
        array (for ``X`` or ``Y``) gives a lazy dask array of the same
        distances, computed block by block on the active scheduler (see
        :doc:`/scaling`). A SciPy sparse matrix or array is read as it is
        by the sparse route (made dense only where that route does not
        apply: small or dense tables).
    Y : array_like, shape (m, n_bins), optional
        Second set of samples. When None, the square matrix between the
        samples of ``X``: each pair is computed once and mirrored, so the
        result is exactly symmetric with an exactly zero diagonal.
    tree : Tree, optional
        Ground space; default: a chain with unit spacing (ordinal bins).
    rho : float, default 1.0
        Exponent, >= 1; ``1`` is the exact EMD.
    normalize : {None, "l1", "softmax"}, optional
        ``"l1"`` divides every sample by its total (counts to proportions);
        a sample with zero total is then an error. ``"softmax"`` takes every
        sample as logits and compares their softmaxes. Without it all
        samples must have equal totals.
    condensed : bool, default False
        Return the condensed vector of :func:`scipy.spatial.distance.pdist`
        (the pairs ``i < j`` row by row) instead of the square matrix; only
        with ``Y=None``.
    block_size : int, optional
        Samples turned into phi at a time: the memory used beyond the
        transformed samples and the output is about ``block_size x n_nodes``
        values. Default: about 4 million node values. With dask arrays: the
        samples per block of the lazy matrix (default: the row chunks of
        ``X`` and ``Y``).
    axis : {-1, 1, 0}, default -1
        The bin axis of ``X`` and ``Y``; ``0`` for tables with one sample per
        column (``(n_bins, n)``).
    check_inputs : bool, default True
        Check that masses are finite, non-negative and (without
        ``normalize``) have equal totals. ``False`` skips the checks; the
        result for invalid masses is then undefined.
    n_threads : int, optional
        Numba threads for turning the samples into rows and for the pair
        sums (each thread takes the next tile of pairs as it finishes one;
        the result is the same bits on any number of threads). By default
        the threads the host leaves (``EMDTREE_NUM_THREADS``, Numba's count,
        the affinity mask, torch's count: see docs/deployment.rst) for large
        matrices, and one thread when the pairs times the columns are fewer
        than ``emdtree.engine.driver.PARALLEL_MIN_WORK`` (a parallel region
        costs milliseconds when another core is busy). In a process forked
        from one that ran OpenMP parallel regions, one thread (see
        :mod:`emdtree.engine.threads`). For ``rho=2`` in float64 most of the
        work is a matrix product, which runs on NumPy's BLAS and its own
        threads. Not used with dask arrays, whose tasks run on one thread
        each (the scheduler's workers are the parallelism).

    Returns
    -------
    ndarray or dask.array.Array
        ``(n, m)``, or ``(n, n)`` when ``Y`` is None, or ``(n (n - 1) / 2,)``
        with ``condensed=True``; float32 when every input is float32 (or a
        float of two bytes or less: float16, bfloat16, whose totals are
        checked to their own precision), else float64. A dask array when
        ``X`` or ``Y`` is one: blocked by the row blocks of ``X`` and
        ``Y``, each row block transformed once and, for ``Y=None``, each pair
        of blocks computed once (the blocks below the diagonal are
        transposes); input errors are raised when it is computed. ``condensed=True`` is not available then.

    Raises
    ------
    ValueError
        For inputs that are not 2-D, bin counts that differ between ``X``,
        ``Y`` and the tree, NaN, infinite or negative masses, unequal totals
        without ``normalize``, a zero total with ``normalize="l1"``, a NaN
        or ``+inf`` logit with ``normalize="softmax"``, or ``condensed=True``
        with ``Y``.

    See Also
    --------
    emd : the same distance for paired samples.
    scipy.spatial.distance.squareform : condensed to square and back.

    Examples
    --------
    >>> import numpy as np, emdtree
    >>> tree = emdtree.Tree.from_newick("((a:1,b:2):0.5,c:3);")
    >>> counts = np.array([[4, 0, 0], [0, 2, 2], [1, 1, 2]])
    >>> emdtree.pairwise(counts, tree=tree, normalize="l1")
    array([[0.  , 3.75, 3.  ],
           [3.75, 0.  , 0.75],
           [3.  , 0.75, 0.  ]])
    >>> emdtree.pairwise(counts, tree=tree, normalize="l1", condensed=True)
    array([3.75, 3.  , 0.75])
    >>> float(emdtree.emd([1, 0, 0], [0, 0.5, 0.5], tree))
    3.75
    """
    rho = check_rho(rho)
    normalize = check_normalize(normalize)
    if isinstance(axis, (bool, np.bool_)) or not isinstance(axis, (numbers.Integral, np.integer)):
        raise TypeError(f"axis must be an integer, got {type(axis).__name__}")
    if axis not in (-2, -1, 0, 1):
        raise ValueError(f"axis {axis} is out of bounds for 2-D inputs")
    ax = int(axis) % 2
    if condensed and Y is not None:
        raise ValueError("condensed=True needs Y=None: a condensed vector holds the pairs of one set of "
                         "samples")
    max_threads = numba.config.NUMBA_NUM_THREADS
    if n_threads is not None:
        n_threads = _check_int(n_threads, "n_threads", 1, max_threads)
    if _is_dask(X) or _is_dask(Y):
        if condensed:
            raise ValueError("condensed=True is not available for dask arrays: the lazy matrix is blocked "
                             "by pairs of sample blocks; take the square matrix")
        from .pairwise_dask import pairwise_dask

        return pairwise_dask(X, Y, tree, rho, normalize, None if block_size is None else
                             _check_int(block_size, "block_size", 1), ax, check_inputs)
    xs = _check_samples(X, "X", ax)
    ys = None if Y is None else _check_samples(Y, "Y", ax)
    dtype = working_dtype(xs) if ys is None else working_dtype(xs, ys)
    n_bins = xs.shape[1]
    tree = _sample_tree(tree, n_bins, None if ys is None else ys.shape[1], f" along axis {axis}")
    if block_size is None:
        block = max(cpu.BLOCK, _BLOCK_VALUES // tree.n_nodes // cpu.BLOCK * cpu.BLOCK)
    else:
        block = _check_int(block_size, "block_size", 1)

    positions, scale = _columns(tree, rho)
    n_a, n_b = xs.shape[0], xs.shape[0] if ys is None else ys.shape[0]
    # small matrices are computed with NumPy and SciPy, whatever is compiled (emdtree.engine.tiers)
    work = n_a * n_b * positions.shape[0] // (2 if ys is None else 1)
    cold = _tiers.use_numpy(work, _COLD_MAX_WORK, counted=False) and plan_of(tree).suits_numpy_pass()
    if not cold:
        sparse = _sparse_pairs(xs, ys, dtype, tree, rho, positions, scale, normalize, check_inputs, block,
                               condensed, n_threads)
        if sparse is not None:
            return sparse
    # SciPy sparse tables that are small, dense or hold what the dense route names
    xs = xs.toarray() if semantics.is_scipy_sparse(xs) else xs
    ys = ys.toarray() if semantics.is_scipy_sparse(ys) else ys
    return _pairs(xs, ys, ax, dtype, tree, rho, positions, scale, normalize, check_inputs, block, condensed,
                  n_threads, cold)


def _pairs(xs: np.ndarray, ys: np.ndarray | None, ax: int, dtype: np.dtype, tree: Tree, rho: float,
           positions: np.ndarray, scale: np.ndarray, normalize: str | None, check_inputs: bool, block: int,
           condensed: bool, n_threads: int | None, cold: bool) -> np.ndarray:
    """:func:`pairwise` on checked in-memory samples, with the kernels or, ``cold``, NumPy and SciPy;
    ``n_threads`` None picks the threads from the size of the work."""
    n_bins = tree.n_bins
    n_a, n_b = xs.shape[0], xs.shape[0] if ys is None else ys.shape[0]
    if n_threads is None:  # sized by the pair sums, by far the larger part of the work
        pairs = n_a * (n_a - 1) // 2 if condensed else n_a * n_b
        n_threads = usable_threads() if pairs * positions.shape[0] >= _driver.PARALLEL_MIN_WORK else 1
    n_threads = usable_threads(n_threads)
    # the rows are turned into phi across the same threads
    row_threads = 1 if cold else n_threads
    parts = [("X", _Rows(xs, "X", ax, dtype, tree, positions, scale, normalize, check_inputs, block, cold,
                         row_threads))]
    if ys is not None:
        parts.append(("Y", _Rows(ys, "Y", ax, dtype, tree, positions, scale, normalize, check_inputs, block,
                                 cold, row_threads)))
    if check_inputs and normalize is None:
        inputs = [xs] if ys is None else [xs, ys]
        mass_eps = max(semantics.float_eps(a.dtype) for a in inputs)
        _check_equal_totals(parts, n_bins, mass_eps, ax)
    low = np.minimum.reduce([rows.low for _, rows in parts])
    high = np.maximum.reduce([rows.high for _, rows in parts])
    varying = np.flatnonzero(~(low == high))  # NaN (unchecked inputs) counts as varying
    for _, rows in parts:
        rows.keep(varying)

    a = parts[0][1].x
    b = a if ys is None else parts[1][1].x
    if ys is not None:
        out, kind = np.zeros(n_a * n_b, dtype=dtype), kernels.OUT_RECT
    elif condensed:
        out, kind = np.zeros(n_a * (n_a - 1) // 2, dtype=dtype), kernels.OUT_CONDENSED
    else:
        out, kind = np.zeros(n_a * n_a, dtype=dtype), kernels.OUT_SQUARE
    n_cols = a.shape[1]
    tau = n_cols * float(np.finfo(np.float64).eps) / _GRAM_REL
    use_gram = rho == 2.0 and dtype == np.float64 and tau < _GRAM_MAX_TAU
    if out.size and n_cols and cold:
        _scipy_pair_sums(a, None if ys is None else b, rho, condensed, out)
    elif out.size and n_cols and use_gram:
        with np.errstate(over="ignore", invalid="ignore"):  # an overflow shows in the result check
            _gram_pairs(a, b, ys is None, kind, out, tau, block, n_threads)
    elif out.size and n_cols:
        mode = kernels.MODE_ONE if rho == 1.0 else kernels.MODE_TWO if rho == 2.0 else kernels.MODE_GENERAL
        sum_a = sum_b = np.zeros(0)
        if mode == kernels.MODE_ONE and dtype == np.float64 and low.min() >= 0:
            mode = kernels.MODE_ONE_MIN
            sum_a = _row_sums(a, n_threads)
            sum_b = sum_a if ys is None else _row_sums(b, n_threads)
        args = (a.reshape(-1), b.reshape(-1), n_a, n_b, n_cols, kind, mode, dtype.type(rho), sum_a, sum_b,
                _MIN_TAU, out)
        if n_threads == 1:
            kernels.pair_sums_serial(*args)
        else:
            with parallel_launch(n_threads):
                kernels.pair_sums(*args, n_threads)
    if check_inputs:
        _check_finite(out, kind, n_a, n_b, rho)
    return out if condensed else out.reshape(n_a, n_b)


def _row_sums(x: np.ndarray, n_threads: int) -> np.ndarray:
    """Float64 row sums of the rows ``x``, the same on any number of threads."""
    sums = np.empty(x.shape[0], dtype=np.float64)
    if n_threads == 1:
        kernels.row_sums_serial(x.reshape(-1), x.shape[0], x.shape[1], sums)
    else:
        with parallel_launch(n_threads):
            kernels.row_sums(x.reshape(-1), x.shape[0], x.shape[1], sums)
    return sums


def _sparse_pairs(xs: np.ndarray, ys: np.ndarray | None, dtype: np.dtype, tree: Tree, rho: float,
                  positions: np.ndarray, scale: np.ndarray, normalize: str | None, check_inputs: bool,
                  block: int, condensed: bool, n_threads: int | None) -> np.ndarray | None:
    """:func:`pairwise` on sparse rows (:mod:`emdtree.distances.sparse_rows`), or None when the
    samples are too dense for them (or invalid: the dense route names the entry)."""
    rows = _sparse.in_memory([xs] if ys is None else [xs, ys], dtype, tree, positions, scale, normalize,
                             check_inputs, block)
    if rows is None:
        return None
    out = _sparse.distances(rows[0], None if ys is None else rows[1], rho, n_threads)
    n_a, n_b = out.shape
    if condensed:
        out = out[np.triu_indices(n_a, 1)]
    kind = kernels.OUT_CONDENSED if condensed else kernels.OUT_RECT
    if check_inputs:
        _check_finite(out.reshape(-1), kind, n_a, n_b, rho)
    return out


def _check_finite(out: np.ndarray, kind: int, n_a: int, n_b: int, rho: float) -> None:
    """Checked masses are finite, so a distance that is not is ``w |phi|^rho`` overflowing."""
    step = 1 << 20  # in slices: a boolean copy of a large matrix would be large too
    for start in range(0, out.size, step):
        bad = np.flatnonzero(~np.isfinite(out[start:start + step]))
        if bad.size:
            k = start + int(bad[0])
            if kind == kernels.OUT_CONDENSED:
                i = int(np.searchsorted(np.cumsum(np.arange(n_a - 1, 0, -1)), k, side="right"))
                j = k - (i * (2 * n_a - i - 1)) // 2 + i + 1
            else:
                i, j = divmod(k, n_b)
            raise ValueError(f"the distance between samples {i} and {j} overflows {out.dtype.name} with "
                             f"rho = {rho:g}: |phi|^rho is beyond {float(np.finfo(out.dtype).max):.3g}; use "
                             "a smaller rho or scale the masses down")


def _gram_pairs(a: np.ndarray, b: np.ndarray, square: bool, kind: int, out: np.ndarray, tau: float,
                block: int, n_threads: int) -> None:
    """EMD^2 from matrix products, block of rows by block of rows (see ``_GRAM_REL``).

    ``a`` and ``b`` are the driver's own float64 rows: they are centred in place.
    """
    # the centre of the finite rows: an unchecked row holding NaN or inf stays in its own pairs
    fin_a = np.isfinite(a).all(axis=1)
    fin_b = fin_a if square else np.isfinite(b).all(axis=1)
    count = fin_a.sum() + (0 if square else fin_b.sum())
    center = a[fin_a].sum(axis=0) + (0.0 if square else b[fin_b].sum(axis=0))
    center = center / max(int(count), 1)
    a -= center
    if not square:
        b -= center
    norm_a = np.einsum("ij,ij->i", a, a)
    norm_b = norm_a if square else np.einsum("ij,ij->i", b, b)
    n_a, n_b = a.shape[0], b.shape[0]
    n_cols = a.shape[1]
    square_out = out.reshape(n_a, n_b) if kind == kernels.OUT_SQUARE else None
    starts = None  # first condensed index of each row
    if kind == kernels.OUT_CONDENSED:
        starts = np.concatenate(([0], np.cumsum(np.arange(n_a - 1, 0, -1))))
    rows_per_block = max(1, min(block, (1 << 22) // max(n_b, 1)))
    for r0 in range(0, n_a, rows_per_block):
        r1 = min(r0 + rows_per_block, n_a)
        c0 = r0 if square else 0  # a square output needs the pairs j >= i only
        total = norm_a[r0:r1, None] + norm_b[None, c0:]
        d = total - 2.0 * (a[r0:r1] @ b[c0:].T)
        low_rows, low_cols = np.nonzero(~(d > tau * total))
        if square:
            keep = low_cols + c0 > low_rows + r0
            low_rows, low_cols = low_rows[keep], low_cols[keep]
        if low_rows.size:
            vals = np.empty(low_rows.size)
            args = (a.reshape(-1), b.reshape(-1), n_cols, low_rows + r0, low_cols + c0, kernels.MODE_TWO, 2.0,
                    vals)
            if n_threads == 1:
                kernels.listed_pairs_serial(*args)
            else:
                with parallel_launch(n_threads):
                    kernels.listed_pairs(*args)
            d[low_rows, low_cols] = vals
        if kind == kernels.OUT_RECT:
            out.reshape(n_a, n_b)[r0:r1] = d
            continue
        for i in range(r0, r1):
            row = d[i - r0, i + 1 - c0:]  # pairs (i, j > i)
            if square_out is not None:
                square_out[i, i + 1:] = row
                square_out[i + 1:, i] = row
            else:
                out[starts[i]:starts[i] + row.size] = row


# ----------------------------------------------------------------------------- SciPy
# Small matrices are computed with SciPy (emdtree.engine.tiers).


def _scipy_pair_sums(a: np.ndarray, b: np.ndarray | None, rho: float, condensed: bool,
                     out: np.ndarray) -> None:
    """``sum_k |a_ik - b_jk|^rho`` for all pairs with SciPy, summed in float64, into ``out``.

    ``b`` None: the pairs of ``a`` with itself, as a condensed vector or a flat
    square matrix (exactly symmetric, zero diagonal), as ``out`` is sized.
    """
    from scipy.spatial import distance

    metric, kwargs = ("cityblock", {}) if rho == 1.0 else ("sqeuclidean", {}) if rho == 2.0 else \
        ("minkowski", {"p": rho})
    a = a.astype(np.float64, copy=False)
    with np.errstate(over="ignore", invalid="ignore"):  # an overflow shows in the result check
        if b is None:
            d = distance.pdist(a, metric, **kwargs)
            if metric == "minkowski":
                d **= rho
            out[:] = d if condensed else distance.squareform(d, checks=False).reshape(-1)
        else:
            d = distance.cdist(a, b.astype(np.float64, copy=False), metric, **kwargs)
            if metric == "minkowski":
                d **= rho
            out[:] = d.reshape(-1)
