"""Weighted UniFrac, unnormalised and normalised, as scikit-bio and QIIME 2 define it.

Unnormalised weighted UniFrac (Lozupone et al. 2007) is EMD with ``rho = 1``
between the samples' relative abundances on the phylogeny:
:func:`emdtree.pairwise` with ``normalize="l1"`` computes it. The normalised
variant divides ``D[i, j]`` by ``sum_k d_k (A_k / A_T + B_k / B_T) = u_i + u_j``
with ``d_k`` the distance from the root to the node of bin ``k`` and ``u = P d``
for the relative abundances ``P``: one product per sample, next to the pair sums.

Samples without counts follow scikit-bio: their relative abundances are all
zero, so that ``D[i, j] = u_j`` between an empty sample ``i`` and a sample
``j`` (unnormalised; ``1`` normalised) and ``0`` between two empty samples.
"""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np

from ..engine import semantics
from ..engine.inputs import reject_masked
from ..formats.io import Table, table_on_bins
from ..trees.tree import Tree
from . import sparse_rows
from .pairwise import _is_dask, pairwise

__all__ = ["weighted_unifrac"]

# Samples read at a time for the per-sample sums of an in-memory table.
_STAT_VALUES = 1 << 22


def root_distances(tree: Tree) -> np.ndarray:
    """Distance from the root to the node of each bin, float64 of shape ``(n_bins,)``.

    Sums of edge costs by pointer doubling: ``log2(depth)`` vectorised steps,
    each adding paths of equal length (balanced sums, as the reference's).
    """
    parent = tree.parents.copy()
    root = tree.root
    parent[root] = root
    dist = np.asarray(tree.weights, dtype=np.float64).copy()
    dist[root] = 0.0
    while np.any(parent != root):
        dist += dist[parent]
        parent = parent[parent]
    return dist[tree.bins]


def _row_stats(rows: np.ndarray, d: np.ndarray, offset: int) -> np.ndarray:
    """``(rows, 2)``: ``u_i = sum_k d_k P_ik`` (0 for an empty sample) and whether the sample is empty,
    after checking the counts (naming ``counts[i, k]`` in the caller's rows)."""
    rows = np.asarray(rows)
    entry, row = semantics.indexed("counts", offset)
    error = semantics.mass_error(rows, "counts", entry)
    if error is not None:
        raise ValueError(error)
    values = rows.astype(np.float64, copy=False)
    totals = values.sum(axis=1)
    empty = ~np.any(rows != 0, axis=1)
    error = semantics.total_error(np.where(empty, 1.0, totals), row)  # a total that overflows
    if error is not None:
        raise ValueError(error)
    out = np.zeros((rows.shape[0], 2), dtype=np.float64)
    np.divide(values @ d, totals, out=out[:, 0], where=~empty)
    out[:, 1] = empty
    return out


def _stats_block(block: np.ndarray, d: np.ndarray, block_info: Any = None) -> np.ndarray:
    offset = block_info[0]["array-location"][0][0] if block_info else 0
    return _row_stats(block, d, offset)


def _check_counts(counts: Any, tree: Tree) -> Any:
    """``counts`` as a 2-D real array (NumPy or dask) with one column per bin of ``tree``."""
    if not isinstance(tree, Tree):
        raise TypeError(f"tree must be an emdtree.Tree, got {type(tree).__name__}")
    if hasattr(counts, "__cuda_array_interface__") and not isinstance(counts, np.ndarray):
        raise TypeError("counts is a GPU array; weighted_unifrac takes host arrays")
    if semantics.is_scipy_sparse(counts):  # kept sparse: pairwise's sparse route reads it as it is
        counts = sparse_rows.csr_rows(counts)
    elif not _is_dask(counts):
        reject_masked(counts, "counts")
        if not isinstance(counts, np.ndarray):
            counts = semantics.host_rows(counts, "counts")
    counts = semantics.widened(counts)  # bfloat16 and the like: computed in float32
    if counts.ndim != 2:
        raise ValueError(f"counts must be a 2-D array (n_samples, n_bins), got shape {tuple(counts.shape)}")
    if np.dtype(counts.dtype).kind not in "biuf":
        raise TypeError(f"counts must hold real numbers, got dtype {counts.dtype}")
    if counts.shape[1] != tree.n_bins:
        raise ValueError(f"counts has {counts.shape[1]} columns but the tree has {tree.n_bins} bins: one "
                         "column per bin, in the tree's bin order (or pass an emdtree.io.Table)")
    return counts


def weighted_unifrac(
    counts: Any,
    tree: Tree,
    *,
    normalized: bool = False,
    drop_missing: bool = False,
    block_size: int | None = None,
    n_threads: int | None = None,
) -> Any:
    """Weighted UniFrac between every pair of samples, as scikit-bio and QIIME 2 compute it.

    With ``A_i``, ``B_i`` the counts of two samples below node ``i``, ``b_i``
    the length of the branch above it and ``A_T``, ``B_T`` their totals,

    ``u(A, B) = sum_i b_i |A_i / A_T - B_i / B_T|``

    (unnormalised: the EMD between the relative abundances, as
    ``emdtree.pairwise(counts, tree=tree, normalize="l1")``), and with
    ``normalized=True``

    ``u(A, B) / sum_k d_k (A_k / A_T + B_k / B_T)``

    with ``d_k`` the distance from the root to bin ``k`` (to its node, for a
    bin on an inner node). These are scikit-bio's
    ``beta_diversity("weighted_unifrac", ..., normalized=False/True)`` and
    QIIME 2's ``weighted_unifrac`` / ``weighted_normalized_unifrac``.

    Parameters
    ----------
    counts : array_like, shape (n_samples, n_bins), or Table
        Non-negative counts (or relative abundances: every sample is divided
        by its total), one sample per row, one column per bin of ``tree`` in
        its bin order; or a :class:`emdtree.io.Table` (as
        :func:`emdtree.io.read_table` returns), whose features are matched
        to the tree's bin names. A ``numpy.memmap`` is read in blocks of
        rows. A dask array gives a lazy dask array, as
        :func:`emdtree.pairwise` does. A SciPy sparse matrix or array is
        read as it is by :func:`emdtree.pairwise`'s sparse route.
    tree : Tree
        The phylogeny: branch lengths are the edge costs (a branch length on
        the root is ignored, as emdtree trees have no edge above the root).
    normalized : bool, default False
        Divide by the mean root-to-tip distance of the two samples' counts:
        the result lies in ``[0, 1]``.
    drop_missing : bool, default False
        For a Table: leave out features the tree does not have (else a
        ValueError naming them).
    block_size, n_threads : int, optional
        As for :func:`emdtree.pairwise`.

    Returns
    -------
    ndarray or dask.array.Array, shape (n_samples, n_samples)
        Exactly symmetric with an exactly zero diagonal; float32 for float32
        counts, else float64; rows in the order of ``counts`` (of
        ``table.sample_ids`` for a Table). A sample without counts is at
        distance ``sum_k d_k B_k / B_T`` (``1`` normalised) from a sample
        ``B`` and ``0`` from another empty sample, as in scikit-bio. Where the
        normalising sum is 0 (both samples hold all their counts at distance 0
        from the root), the normalised distance is 0 (scikit-bio: NaN).

    Raises
    ------
    ValueError
        For counts that are not 2-D, a column count that is not the tree's
        number of bins, NaN, infinite or negative counts (naming
        ``counts[i, k]``; for dask arrays when the result is computed), or
        table features that the tree lacks.
    TypeError
        For a tree that is not a :class:`~emdtree.Tree` or counts that are
        not real numbers.

    See Also
    --------
    pairwise : the EMD^rho matrix this builds on.
    emdtree.io.read_table : tables, BIOM files and QIIME 2 artifacts.

    Examples
    --------
    >>> import numpy as np, emdtree
    >>> tree = emdtree.Tree.from_newick("((a:1,b:2):0.5,c:3);")
    >>> counts = np.array([[4, 0, 0], [0, 2, 2], [1, 1, 2]])
    >>> emdtree.weighted_unifrac(counts, tree)
    array([[0.  , 3.75, 3.  ],
           [3.75, 0.  , 0.75],
           [3.  , 0.75, 0.  ]])
    >>> emdtree.weighted_unifrac(counts, tree, normalized=True).round(4)
    array([[0.    , 0.8824, 0.75  ],
           [0.8824, 0.    , 0.1429],
           [0.75  , 0.1429, 0.    ]])
    """
    if not isinstance(normalized, (bool, np.bool_)):
        raise TypeError(f"normalized must be True or False, got {normalized!r}")
    if isinstance(counts, Table):
        if not isinstance(tree, Tree):
            raise TypeError(f"tree must be an emdtree.Tree, got {type(tree).__name__}")
        counts = table_on_bins(counts, tree, drop_missing=drop_missing)
    counts = _check_counts(counts, tree)
    d = root_distances(tree)
    if _is_dask(counts):
        return _dask(counts, tree, d, bool(normalized), block_size)
    n = counts.shape[0]
    if block_size is not None and (isinstance(block_size, (bool, np.bool_)) or
                                   not isinstance(block_size, (numbers.Integral, np.integer))):
        raise TypeError(f"block_size must be an integer, got {block_size!r}")
    rows = max(1, _STAT_VALUES // max(tree.n_bins, 1))
    sparse = semantics.is_scipy_sparse(counts)
    stats = np.concatenate([_row_stats(counts[s:s + rows].toarray() if sparse else counts[s:s + rows], d, s)
                            for s in range(0, n, rows)]) if n else np.zeros((0, 2))
    u, empty = stats[:, 0], stats[:, 1] > 0
    safe = counts
    if empty.any() and sparse:  # any sample stands in: here one count on the first bin
        import scipy.sparse as sp

        stand_in = sp.csr_array((np.ones(int(empty.sum()), dtype=counts.dtype),
                                 (np.flatnonzero(empty), np.zeros(int(empty.sum()), dtype=np.int64))),
                                shape=counts.shape)
        safe = sparse_rows.csr_rows(counts + stand_in)
    elif empty.any():  # l1 has no total to divide by: any sample stands in, its distances are replaced
        safe = np.array(counts, copy=True)
        safe[empty] = 1
    # the counts are checked above (finite, >= 0, a finite total): pairwise need not read them again
    D = pairwise(safe, tree=tree, normalize="l1", block_size=block_size, n_threads=n_threads,
                 check_inputs=False)
    if empty.any():
        D[empty, :] = u[None, :]
        D[:, empty] = u[:, None]
    if normalized:
        step = max(1, (1 << 22) // max(n, 1))
        for r0 in range(0, n, step):
            den = u[r0:r0 + step, None] + u[None, :]
            D[r0:r0 + step] = np.divide(D[r0:r0 + step], den, out=np.zeros(den.shape), where=den > 0)
    return D


def _dask(counts: Any, tree: Tree, d: np.ndarray, normalized: bool, block_size: int | None) -> Any:
    """:func:`weighted_unifrac` of a dask array: a lazy matrix, checked when computed."""
    import dask.array as da

    counts = counts.rechunk({0: block_size or counts.chunks[0][0] or "auto", 1: -1})
    stats = counts.map_blocks(_stats_block, d, dtype=np.float64, chunks=(counts.chunks[0], (2,)))
    u, empty = stats[:, 0], stats[:, 1] > 0
    safe = da.where(empty[:, None], counts.dtype.type(1), counts)
    # each block is checked by its stats task, which its pair tasks wait for
    D = pairwise(safe, tree=tree, normalize="l1", block_size=block_size, check_inputs=False)
    dtype = D.dtype
    D = da.where(empty[:, None], u[None, :], da.where(empty[None, :], u[:, None], D))
    if normalized:
        den = u[:, None] + u[None, :]
        D = da.where(den > 0, D / da.where(den > 0, den, 1.0), 0.0)
    return D.astype(dtype)
