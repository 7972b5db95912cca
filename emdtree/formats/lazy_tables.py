"""Count tables as dask arrays chunked by samples: Zarr, HDF5, BIOM files and QIIME 2 feature tables.

A table that does not fit in memory stays on disk; each task reads the rows
of its block (the workers of a cluster open the file themselves, so it must be
on storage they share). Layout of a Zarr group or HDF5 file: an array
``counts`` of shape ``(n_samples, n_features)`` (``transpose`` for one
feature per row), and optionally 1-D string arrays ``sample_ids`` and
``feature_names``. BIOM files (sparse, HDF5 or JSON) and QIIME 2
``FeatureTable`` artifacts (``.qza``, a BIOM table in a zip archive) are read
once into a sparse matrix; each block is made dense when a task needs it.
Other formats are read by :func:`emdtree.io.read_table` and chunked in memory.
"""

from __future__ import annotations

import os
import pathlib
from typing import Any

import numpy as np

from ..trees.tree import Tree

LAZY_SUFFIXES = (".zarr", ".h5", ".hdf5", ".biom", ".qza")
#: Sparse tables: read by blocks where dask is installed, else in memory (the same matrix).
SPARSE_SUFFIXES = (".biom", ".qza")


class _HDF5Rows:
    """Rows of an HDF5 dataset, opened in the process that reads them (h5py handles do not pickle)."""

    def __init__(self, path: str, name: str, shape: tuple[int, int], dtype: np.dtype) -> None:
        self.path, self.name, self.shape, self.dtype = path, name, shape, dtype
        self.ndim = 2

    def __getitem__(self, index: Any) -> np.ndarray:
        import h5py

        with h5py.File(self.path, "r") as fh:
            return np.asarray(fh[self.name][index])


class _BiomRows:
    """Rows (samples) of a BIOM table or feature-table artifact, loaded once per process, made dense
    block by block."""

    _cache: dict[str, Any] = {}

    def __init__(self, path: str, shape: tuple[int, int]) -> None:
        self.path, self.shape, self.dtype, self.ndim = path, shape, np.dtype(np.float64), 2

    def __getitem__(self, index: Any) -> np.ndarray:
        matrix = self._cache.get(self.path)
        if matrix is None:
            matrix = _load_biom(self.path)[2]
            self._cache.clear()  # one table per process at a time
            self._cache[self.path] = matrix
        rows, cols = index if isinstance(index, tuple) else (index, slice(None))
        return np.asarray(matrix[rows][:, cols].toarray(), dtype=np.float64)

    def __getstate__(self) -> dict:
        return {"path": self.path, "shape": self.shape}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["path"], state["shape"])


def _load_biom(path: str) -> tuple[list[str], list[str], Any]:
    """Sample ids, feature ids and the sparse (samples, features) counts of a ``.biom`` or ``.qza`` table."""
    if path.lower().endswith(".qza"):
        from . import qiime

        return qiime.read_table_artifact(path)
    try:
        import biom
    except ImportError:
        raise ImportError("reading .biom files needs the biom-format package: pip install emdtree[biom]") \
            from None
    try:
        table = biom.load_table(path)
        matrix = table.matrix_data.T.tocsr()  # samples x features
    except (MemoryError, KeyboardInterrupt):
        raise
    except Exception as exc:  # biom-format and h5py report damage in many types
        from .io import _damaged_biom

        raise _damaged_biom(path, exc) from None
    return [str(s) for s in table.ids(axis="sample")], [str(f) for f in table.ids(axis="observation")], matrix


def _names(values: Any) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in np.asarray(values).tolist()]


def _open_zarr(path: str) -> tuple[Any, list[str] | None, list[str] | None]:
    try:
        import zarr
    except ImportError:
        raise ImportError("reading .zarr tables needs the zarr package: pip install emdtree[zarr]") from None
    import dask.array as da

    from ..trees.files import recover_directory

    recover_directory(path)  # a store whose writer died while replacing it: its complete old or new self
    group = zarr.open_group(path, mode="r")
    keys = set(group.array_keys())
    if "counts" not in keys:
        has = ", ".join(sorted(keys)) or "none"
        raise ValueError(f"the Zarr group {path!r} has no array 'counts' (it has {has})")
    counts = da.from_zarr(path, component="counts")
    ids = _names(group["sample_ids"][...]) if "sample_ids" in keys else None
    features = _names(group["feature_names"][...]) if "feature_names" in keys else None
    return counts, ids, features


def _open_hdf5(path: str) -> tuple[Any, list[str] | None, list[str] | None]:
    try:
        import h5py
    except ImportError:
        raise ImportError("reading HDF5 tables needs the h5py package: pip install h5py") from None
    with h5py.File(path, "r") as fh:
        if "counts" not in fh:
            has = ", ".join(fh) or "none"
            raise ValueError(f"the HDF5 file {path!r} has no dataset 'counts' (it has {has})")
        data = fh["counts"]
        rows = _HDF5Rows(path, "counts", tuple(data.shape), np.dtype(data.dtype))
        chunks = data.chunks
        ids = _names(fh["sample_ids"][...]) if "sample_ids" in fh else None
        features = _names(fh["feature_names"][...]) if "feature_names" in fh else None
    import dask.array as da

    if len(rows.shape) != 2:
        raise ValueError(f"the counts in {path!r} must be a 2-D array, got shape {rows.shape}")
    counts = da.from_array(rows, chunks=chunks or (max(1, 1 << 24 // max(rows.shape[1], 1)), -1),
                           name=f"emdtree-hdf5-{os.path.abspath(path)}-{os.path.getmtime(path)}")
    return counts, ids, features


def _to_bins(block: np.ndarray, columns: np.ndarray, bins: np.ndarray, n_bins: int) -> np.ndarray:
    dtype = np.result_type(block.dtype, np.float32) if block.dtype.kind == "f" else np.float64
    out = np.zeros((block.shape[0], n_bins), dtype=dtype)
    out[:, bins] = block[:, columns]
    return out


def default_block_rows(n_nodes: int) -> int:
    """Samples per block: about 16 million phi values per block, in multiples of 64, 64 to 4096."""
    rows = (1 << 24) // max(n_nodes, 1) // 64 * 64
    return int(min(4096, max(64, rows)))


def open_counts(path: str | os.PathLike[str], tree: Tree, *, block_rows: int | None = None,
                drop_missing: bool = False, transpose: bool = False) -> tuple[list[str], Any]:
    """Sample ids and a dask array ``(n_samples, tree.n_bins)`` of counts, chunked by ``block_rows`` samples.

    The table is never held dense as a whole: Zarr and HDF5 tables stay on
    disk, BIOM and ``.qza`` tables are held sparse, and each block of samples
    is made dense when a task needs it. Pass the array to
    :func:`emdtree.weighted_unifrac` or :func:`emdtree.pairwise` for a lazy
    distance matrix.

    Parameters
    ----------
    path : str or path-like
        A ``.zarr`` group, an ``.h5`` / ``.hdf5`` file, a ``.biom`` table, a
        QIIME 2 feature-table artifact (``.qza``), or any table
        :func:`emdtree.io.read_table` reads.
    tree : Tree
        The tree whose tip names the feature names are matched to.
    block_rows : int, optional
        Samples per chunk; by default about 16 million tree nodes' worth
        (64 to 4096 samples), as the command line chooses.
    drop_missing : bool, default False
        Leave out features that are not bins of the tree (else an error).
    transpose : bool, default False
        The stored counts have one feature per row (not for BIOM and ``.qza``).

    Returns
    -------
    sample_ids : list of str
    counts : dask.array.Array, shape (n_samples, tree.n_bins)

    Examples
    --------
    >>> import pathlib, tempfile, emdtree
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "table.csv"
    >>> _ = path.write_text("sample,c,a\\ns1,1,2\\ns2,0,5\\n")
    >>> tree = emdtree.Tree.from_newick("((a:1,b:2):0.5,c:3);")
    >>> ids, counts = emdtree.io.open_counts(path, tree, block_rows=1)
    >>> counts.chunks, counts.compute()
    (((1, 1), (3,)), array([[2., 0., 1.],
           [5., 0., 0.]]))
    """
    try:
        import dask.array as da
    except ImportError:
        raise ImportError("emdtree.io.open_counts gives a dask array: pip install emdtree[dask]") from None

    from . import io

    if block_rows is None:
        block_rows = default_block_rows(tree.n_nodes)
    if isinstance(block_rows, bool) or not isinstance(block_rows, (int, np.integer)) or block_rows < 1:
        raise ValueError(f"block_rows must be a positive integer, got {block_rows!r}")
    text = os.fspath(path)
    suffix = pathlib.Path(text.rstrip("/\\")).suffix.lower()
    if suffix in (".zarr", ".h5", ".hdf5"):
        if not os.path.exists(text):
            raise FileNotFoundError(f"no such table: {text!r}")
        counts, ids, features = _open_zarr(text) if suffix == ".zarr" else _open_hdf5(text)
        if counts.ndim != 2:
            raise ValueError(f"the counts in {text!r} must be a 2-D array, got shape {counts.shape}")
        if np.dtype(counts.dtype).kind not in "biuf":
            raise ValueError(f"the counts in {text!r} must be numbers, got dtype {counts.dtype}")
        if transpose:  # the names keep their meaning: only the counts are stored the other way
            counts = counts.T
    elif suffix in SPARSE_SUFFIXES:
        if transpose:
            what = "a BIOM file" if suffix == ".biom" else "a QIIME 2 artifact"
            raise ValueError(f"{what} carries its orientation: do not pass transpose")
        if not os.path.isfile(text):
            raise FileNotFoundError(f"no such table: {text!r}")
        ids, features, matrix = _load_biom(text)
        rows = _BiomRows(os.path.abspath(text), matrix.shape)
        _BiomRows._cache[rows.path] = matrix
        counts = da.from_array(rows, chunks=(block_rows, -1), name=f"emdtree-biom-{rows.path}-"
                               f"{os.path.getmtime(text)}")
    else:
        table = io.read_table(text, transpose=transpose or None)
        counts = da.from_array(table.counts, chunks=(block_rows, -1))
        ids, features = table.sample_ids, table.feature_names
    n, m = counts.shape
    ids, features = io._table_names(ids, features, n, m, text)
    found = io.match_features(features, tree, drop_missing=drop_missing)
    columns, bins = found if drop_missing else (np.arange(m), found)
    counts = counts.rechunk({0: block_rows, 1: -1})
    if not (columns.size == tree.n_bins == m and np.array_equal(bins, np.arange(m))):
        dtype = np.result_type(counts.dtype, np.float32) if np.dtype(counts.dtype).kind == "f" else np.float64
        counts = counts.map_blocks(_to_bins, columns, bins, tree.n_bins, dtype=dtype,
                                   chunks=(counts.chunks[0], (tree.n_bins,)))
    return ids, counts
