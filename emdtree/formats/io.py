"""The implementation of :mod:`emdtree.io`, documented there."""

from __future__ import annotations

import csv
import os
import pathlib
from collections.abc import Sequence
from typing import Any, NamedTuple, TextIO

import numpy as np

from ..trees.files import atomic_write, load_npy, open_npz
from ..trees.tree import Tree
from . import qiime

__all__ = ["Table", "Matrix", "read_tree", "read_table", "match_features", "load_counts",
           "write_matrix", "read_matrix"]

NEWICK_SUFFIXES = (".nwk", ".newick", ".tre", ".tree", ".nw")
_DELIMITERS = {".tsv": "\t", ".tab": "\t", ".txt": "\t", ".csv": ","}
_MAX_LISTED = 10


class Table(NamedTuple):
    """A count table: ``counts[i, j]`` is the count of feature ``j`` in sample ``i``.

    Returned by :func:`read_table`; a named tuple, so it unpacks as
    ``sample_ids, feature_names, counts = table``.

    Parameters
    ----------
    sample_ids : list of str, length n_samples
        The id of each row of ``counts``.
    feature_names : list of str, length n_features
        The name of each column of ``counts``.
    counts : ndarray, shape (n_samples, n_features)
        The counts.

    Examples
    --------
    >>> import numpy as np
    >>> from emdtree.io import Table
    >>> table = Table(["s1", "s2"], ["A", "B"], np.array([[1.0, 3.0], [0.0, 2.0]]))
    >>> table.counts[table.sample_ids.index("s2"), table.feature_names.index("B")]
    np.float64(2.0)
    """

    sample_ids: list[str]
    """The id of each row of ``counts``."""
    feature_names: list[str]
    """The name of each column of ``counts``."""
    counts: np.ndarray
    """The counts, shape ``(n_samples, n_features)``."""


class Matrix(NamedTuple):
    """A labelled matrix read by :func:`read_matrix`.

    A named tuple, so it unpacks as ``row_ids, col_ids, values = matrix``.

    Parameters
    ----------
    row_ids : list of str, length n_rows
        The id of each row of ``values``.
    col_ids : list of str, length n_cols
        The id of each column of ``values``.
    values : ndarray of float64, shape (n_rows, n_cols)
        The entries.

    Examples
    --------
    >>> import numpy as np
    >>> from emdtree.io import Matrix
    >>> m = Matrix(["s1", "s2"], ["s1", "s2"], np.array([[0.0, 0.5], [0.5, 0.0]]))
    >>> m.values[m.row_ids.index("s1"), m.col_ids.index("s2")]
    np.float64(0.5)
    """

    row_ids: list[str]
    """The id of each row of ``values``."""
    col_ids: list[str]
    """The id of each column of ``values``."""
    values: np.ndarray
    """The entries, float64 of shape ``(n_rows, n_cols)``."""


def read_tree(source: str | os.PathLike[str] | Tree) -> Tree:
    """Read a tree: Newick, a saved :class:`~emdtree.Tree`, or a built-in one.

    Parameters
    ----------
    source : str, path-like or Tree
        A Newick file (``.nwk``, ``.newick``, ``.tre``, ``.tree``, ``.nw``),
        a QIIME 2 ``Phylogeny[Rooted]`` artifact (``.qza``, read without
        QIIME 2), a tree saved with :meth:`Tree.save` (``.json`` or
        ``.npz``), or ``"imagenet"`` for
        :func:`emdtree.datasets.imagenet_wordnet`. A Tree is returned as it
        is.

    Returns
    -------
    Tree

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    ValueError
        For an unknown extension, a malformed file, or an artifact of
        another type (``Phylogeny[Unrooted]``: the message names the type).

    Examples
    --------
    >>> import pathlib, tempfile, emdtree
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "tree.nwk"
    >>> _ = path.write_text("((a:1,b:2):0.5,c:3);")
    >>> emdtree.io.read_tree(path).names
    ('a', 'b', 'c')
    """
    if isinstance(source, Tree):
        return source
    if isinstance(source, str) and source == "imagenet":
        from ..datasets import imagenet_wordnet

        return imagenet_wordnet()
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"source must be a path, 'imagenet' or a Tree, got {type(source).__name__}")
    path = pathlib.Path(source)
    suffix = path.suffix.lower()
    known = NEWICK_SUFFIXES + (".json", ".npz", ".qza")
    if suffix == ".qza" or (suffix not in known and path.is_file() and qiime.is_artifact(path)):
        if not path.is_file():
            raise FileNotFoundError(f"no such tree file: {str(path)!r}")
        return _tree_artifact(path)
    if suffix not in known:
        raise ValueError(f"cannot tell the format of {str(path)!r}: use one of the extensions "
                         f"{', '.join(known)}, or 'imagenet' for the built-in tree")
    if not path.is_file():
        raise FileNotFoundError(f"no such tree file: {str(path)!r}")
    if suffix in NEWICK_SUFFIXES:
        return Tree.from_newick(path)
    return Tree.load(path)


def _tree_artifact(path: pathlib.Path) -> Tree:
    from ..trees.newick import parse_newick

    text = qiime.read_tree_newick(path)
    try:
        return Tree(*parse_newick(text))
    except ValueError as exc:
        raise ValueError(f"data/tree.nwk in {str(path)!r}: {exc}") from None


# ----------------------------------------------------------------------------- text tables

def _split(line: str, delimiter: str) -> list[str]:
    try:
        return next(csv.reader([line], delimiter=delimiter))
    except csv.Error as exc:  # e.g. a cell over csv's field size limit
        raise ValueError(f"cannot split a line into cells: {exc}") from None


def _read_text(path: pathlib.Path, delimiter: str, what: str) -> tuple[str, list[str], list[str], np.ndarray]:
    """Parse a delimited table: ``(corner, column names, row ids, values)``.

    Lines starting with ``#`` are comments, except the last line of a leading
    run of comments when it splits into as many cells as the first data line
    (the ``#OTU ID`` header of BIOM's TSV).
    """
    try:
        with open(path, encoding="utf-8-sig", newline="") as fh:
            lines = fh.read().splitlines()
    except UnicodeDecodeError as exc:
        raise ValueError(f"{str(path)!r} is not UTF-8 text (byte {exc.start}): not a {what} in text form") \
            from None
    header = None
    data_start = len(lines)
    last_comment = None
    for number, line in enumerate(lines):
        if not line.strip():
            continue
        if line.startswith("#"):
            if header is None:
                last_comment = (number, line)
            continue
        if last_comment is not None and last_comment[0] == number - 1 and \
                len(_split(last_comment[1], delimiter)) == len(_split(line, delimiter)) and \
                len(_split(line, delimiter)) > 1:
            header = (last_comment[0], last_comment[1])
            data_start = number
        else:
            header = (number, line)
            data_start = number + 1
        break
    if header is None:
        raise ValueError(f"{str(path)!r} holds no {what}: no header line")
    head = _split(header[1], delimiter)
    corner, names = head[0], head[1:]
    if not names:
        raise ValueError(f"the header of {str(path)!r} (line {header[0] + 1}) has no column after the "
                         f"first; is the delimiter {delimiter!r} right?")
    ids: list[str] = []
    rows: list[np.ndarray] = []
    numbers: list[int] = []
    for number in range(data_start, len(lines)):
        line = lines[number]
        if not line.strip() or line.startswith("#"):
            continue
        cells = _split(line, delimiter)
        if len(cells) != len(head):
            raise ValueError(f"line {number + 1} of {str(path)!r} has {len(cells)} cells but the header "
                             f"has {len(head)}: every row needs an id and {len(names)} values")
        try:
            rows.append(np.array(cells[1:], dtype=np.float64))
        except ValueError:
            for name, cell in zip(names, cells[1:]):
                try:
                    float(cell)
                except ValueError:
                    raise ValueError(f"the cell in row {cells[0]!r} (line {number + 1}), column {name!r} of "
                                     f"{str(path)!r} is not a number: {cell!r}") from None
            raise
        ids.append(cells[0])
        numbers.append(number + 1)
    _check_unique(ids, "row id", path, numbers)
    _check_unique(names, "column name", path, None)
    values = np.array(rows, dtype=np.float64).reshape(len(rows), len(names))
    return corner, names, ids, values


def _check_unique(names: Sequence[str], what: str, path: Any, lines: Sequence[int] | None) -> None:
    first: dict[str, int] = {}
    for i, name in enumerate(names):
        if name in first:
            where = f" (lines {lines[first[name]]} and {lines[i]})" if lines is not None else ""
            raise ValueError(f"{what} {name!r} appears twice in {str(path)!r}{where}")
        first[name] = i


def read_table(
    path: str | os.PathLike[str],
    *,
    delimiter: str | None = None,
    transpose: bool | None = None,
    mmap: bool = False,
) -> Table:
    """Read a count table with one sample per row.

    Parameters
    ----------
    path : str or path-like
        ``.tsv`` / ``.txt`` / ``.tab`` (tab-separated), ``.csv``, ``.npy``,
        ``.npz``, ``.biom`` or a QIIME 2 ``FeatureTable[Frequency]`` (or
        ``FeatureTable[RelativeFrequency]``) artifact ``.qza``, read without
        QIIME 2. Text tables have a header row of feature
        names and the sample id in the first column; lines starting with
        ``#`` are skipped, except a ``#OTU ID``-style header just above the
        data. An ``.npy`` file holds the counts alone (ids and features are
        then ``"0"``, ``"1"``, ...); an ``.npz`` file holds ``counts`` and
        optionally ``sample_ids`` and ``feature_names``. BIOM and ``.qza``
        tables need the ``biom-format`` package (``emdtree[biom]``).
    delimiter : str, optional
        Cell delimiter of a text table; default from the extension.
    transpose : bool, optional
        The file has one feature per row and one sample per column (as
        BIOM's TSV and many microbiome tables). Default: True for a text
        table whose header starts with ``#OTU ID``, else False. BIOM files
        and artifacts carry their orientation and take no ``transpose``.
    mmap : bool, default False
        Keep an ``.npy`` file memory-mapped (read only); :func:`emdtree.pairwise`
        then reads it in blocks of rows.

    Returns
    -------
    Table
        ``(sample_ids, feature_names, counts)``, counts of shape
        ``(n_samples, n_features)``; float64 for text, BIOM and ``.qza``, the stored
        dtype for NumPy files.

    Raises
    ------
    ValueError
        For ragged rows, cells that are not numbers (naming row and
        column), duplicate ids or feature names, arrays that are not 2-D,
        names that do not match the counts, an unknown extension, a file
        that is empty, damaged or not in the format its extension says
        (naming the file), or an artifact of another type (naming it).
    ImportError
        For a ``.biom`` or ``.qza`` table without the ``biom-format``
        package.

    Examples
    --------
    >>> import pathlib, tempfile, emdtree
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "table.tsv"
    >>> _ = path.write_text("# counts\\n#OTU ID\\ts1\\ts2\\nA\\t1\\t0\\nB\\t3\\t2\\n")
    >>> table = emdtree.io.read_table(path)  # '#OTU ID': one feature per row
    >>> table.sample_ids, table.feature_names
    (['s1', 's2'], ['A', 'B'])
    >>> table.counts
    array([[1., 3.],
           [0., 2.]])
    """
    path = pathlib.Path(path)
    suffix = path.suffix.lower()
    if mmap and suffix != ".npy":
        raise ValueError(f"mmap=True needs a .npy file, got {str(path)!r}")
    if not path.is_file():
        raise FileNotFoundError(f"no such table file: {str(path)!r}")
    if suffix == ".biom":
        if transpose is not None:
            raise ValueError("a BIOM file carries its orientation: do not pass transpose")
        return _read_biom(path)
    if suffix == ".qza" or (suffix not in _DELIMITERS and suffix not in (".npy", ".npz") and
                            qiime.is_artifact(path)):
        if transpose is not None or delimiter is not None:
            raise ValueError("a QIIME 2 artifact carries its orientation: do not pass transpose or delimiter")
        ids, features, matrix = qiime.read_table_artifact(path)
        return Table(ids, features, np.asarray(matrix.toarray(), dtype=np.float64))
    if suffix in (".npy", ".npz"):
        return _read_numpy(path, suffix, bool(transpose), mmap)
    if delimiter is None:
        if suffix not in _DELIMITERS:
            raise ValueError(f"cannot tell the format of {str(path)!r}: use .tsv, .txt, .tab, .csv, .npy, "
                             ".npz, .biom or .qza, or give the delimiter of a text table")
        delimiter = _DELIMITERS[suffix]
    if not isinstance(delimiter, str) or len(delimiter) != 1:
        raise ValueError(f"delimiter must be a single character, got {delimiter!r}")
    corner, names, ids, values = _read_text(path, delimiter, "count table")
    if transpose is None:
        transpose = corner.lstrip("#").strip().upper() == "OTU ID"
    if transpose:
        return Table(names, ids, np.ascontiguousarray(values.T))
    return Table(ids, names, values)


def _names(data: Any, key: str, path: pathlib.Path) -> list[str] | None:
    if key not in data:
        return None
    names = data[key]
    if names.ndim != 1:
        raise ValueError(f"the {key} in {str(path)!r} must be a 1-D array, got shape {names.shape}")
    return [str(s) for s in names.tolist()]


def _read_numpy(path: pathlib.Path, suffix: str, transpose: bool, mmap: bool) -> Table:
    if suffix == ".npy":
        counts = load_npy(path, mmap=mmap)
        sample_ids = feature_names = None
    else:
        with open_npz(path) as data:
            if "counts" not in data:
                has = ", ".join(data.files) or "none"
                raise ValueError(f"{str(path)!r} has no array 'counts' (it has {has})")
            counts = data["counts"]
            sample_ids = _names(data, "sample_ids", path)
            feature_names = _names(data, "feature_names", path)
    if counts.ndim != 2:
        raise ValueError(f"the counts in {str(path)!r} must be a 2-D array, got shape {counts.shape}")
    if counts.dtype.kind not in "biuf":
        raise ValueError(f"the counts in {str(path)!r} must be numbers, got dtype {counts.dtype}")
    if transpose:
        counts = counts.T
    n, m = counts.shape
    # names are stored in the file's orientation: rows, then columns
    if transpose:
        sample_ids, feature_names = feature_names, sample_ids
    sample_ids, feature_names = _table_names(sample_ids, feature_names, n, m, path)
    _check_unique(sample_ids, "sample id", path, None)
    _check_unique(feature_names, "feature name", path, None)
    return Table(sample_ids, feature_names, counts)


def _table_names(
    sample_ids: list[str] | None, feature_names: list[str] | None, n: int, m: int, path: Any
) -> tuple[list[str], list[str]]:
    """The sample ids and feature names of an (n, m) table, numbered where the file has none."""
    sample_ids = [str(i) for i in range(n)] if sample_ids is None else sample_ids
    feature_names = [str(j) for j in range(m)] if feature_names is None else feature_names
    if len(sample_ids) != n:
        raise ValueError(f"{str(path)!r} has {len(sample_ids)} sample ids for {n} samples")
    if len(feature_names) != m:
        raise ValueError(f"{str(path)!r} has {len(feature_names)} feature names for {m} features")
    return sample_ids, feature_names


def _damaged_biom(path: str | pathlib.Path, exc: Exception) -> ValueError:
    """The error for a BIOM file that biom-format or h5py cannot read, naming the file."""
    text = str(exc).strip().splitlines()
    reason = text[0] if text else type(exc).__name__
    return ValueError(f"cannot read {str(path)!r} as a BIOM table: {reason}")


def _read_biom(path: pathlib.Path) -> Table:
    try:
        import biom
    except ImportError:
        raise ImportError(
            "reading .biom files needs the biom-format package: pip install emdtree[biom]"
        ) from None
    try:
        table = biom.load_table(str(path))
        counts = np.asarray(table.matrix_data.T.toarray(), dtype=np.float64)
    except (MemoryError, KeyboardInterrupt):
        raise
    except Exception as exc:  # biom-format and h5py report damage in many types
        raise _damaged_biom(path, exc) from None
    return Table([str(s) for s in table.ids(axis="sample")], [str(f) for f in table.ids(axis="observation")],
                 counts)


# ----------------------------------------------------------------------------- features to bins

def match_features(
    feature_names: Sequence[str],
    tree: Tree,
    *,
    drop_missing: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """The bin of the tree that each table feature names.

    Parameters
    ----------
    feature_names : sequence of str, length n_features
        Column names of a table.
    tree : Tree
        A tree with bin names (e.g. the tips of a Newick tree).
    drop_missing : bool, default False
        Drop the features the tree does not have instead of raising.

    Returns
    -------
    bins : ndarray of int64, shape (n_features,)
        When ``drop_missing`` is False: ``bins[j]`` is the bin of feature ``j``.
    (columns, bins) : tuple of ndarray of int64
        When ``drop_missing`` is True: the table columns that are kept (in
        increasing order) and the bin of each.

    Raises
    ------
    ValueError
        If the tree has no bin names, a feature name appears twice, or (without
        ``drop_missing``) features are missing from the tree (the first few
        are listed).

    Examples
    --------
    >>> import emdtree
    >>> tree = emdtree.Tree.from_newick("((a:1,b:2):0.5,c:3);")
    >>> emdtree.io.match_features(["c", "a"], tree)
    array([2, 0])
    >>> emdtree.io.match_features(["c", "x", "a"], tree, drop_missing=True)
    (array([0, 2]), array([2, 0]))
    """
    if not isinstance(tree, Tree):
        raise TypeError(f"tree must be an emdtree.Tree, got {type(tree).__name__}")
    if tree.names is None:
        raise ValueError("the tree has no bin names to match the table's features against")
    if isinstance(feature_names, str):
        raise TypeError("feature_names must be a sequence of names, not one string")
    names = [str(f) for f in feature_names]
    _check_unique(names, "feature name", "the table", None)
    index = {name: b for b, name in enumerate(tree.names)}
    bins = np.array([index.get(name, -1) for name in names], dtype=np.int64)
    missing = np.flatnonzero(bins < 0)
    if not drop_missing:
        if missing.size:
            from ..engine.semantics import not_bins_error

            raise ValueError(not_bins_error([names[j] for j in missing], len(names), tree.names, _MAX_LISTED))
        return bins
    columns = np.flatnonzero(bins >= 0).astype(np.int64)
    return columns, bins[columns]


def load_counts(
    table_path: str | os.PathLike[str],
    tree: Tree,
    *,
    drop_missing: bool = False,
    **read_options: Any,
) -> tuple[list[str], np.ndarray]:
    """Read a count table and lay its columns out as the tree's bins.

    Parameters
    ----------
    table_path : str or path-like
        See :func:`read_table`.
    tree : Tree
        Tree with bin names; bins that the table lacks get zero counts.
    drop_missing : bool, default False
        Leave out features the tree does not have (else a ValueError).
    **read_options
        ``delimiter``, ``transpose`` for :func:`read_table`.

    Returns
    -------
    sample_ids : list of str
    X : ndarray, shape (n_samples, tree.n_bins)
        ``X[i, b]`` is the count of the feature named ``tree.names[b]``.

    Examples
    --------
    >>> import pathlib, tempfile, emdtree
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "table.csv"
    >>> _ = path.write_text("sample,c,a\\ns1,1,2\\ns2,0,5\\n")
    >>> tree = emdtree.Tree.from_newick("((a:1,b:2):0.5,c:3);")
    >>> emdtree.io.load_counts(path, tree)
    (['s1', 's2'], array([[2., 0., 1.],
           [5., 0., 0.]]))
    """
    table = read_table(table_path, **read_options)
    return table.sample_ids, table_on_bins(table, tree, drop_missing=drop_missing)


def table_on_bins(table: Table, tree: Tree, *, drop_missing: bool = False) -> np.ndarray:
    """The counts of ``table`` (a :class:`Table`) laid out as the tree's bins, ``(n_samples, tree.n_bins)``:
    bins that the table lacks get zero counts; float32 for float32 counts, else float64."""
    counts = np.asarray(table.counts)
    if counts.ndim != 2 or counts.shape != (len(table.sample_ids), len(table.feature_names)):
        raise ValueError(f"the table's counts have shape {counts.shape} for {len(table.sample_ids)} sample "
                         f"ids and {len(table.feature_names)} feature names")
    if counts.dtype.kind not in "biuf":
        raise ValueError(f"the table's counts must be numbers, got dtype {counts.dtype}")
    found = match_features(table.feature_names, tree, drop_missing=drop_missing)
    columns, bins = found if drop_missing else (np.arange(len(table.feature_names)), found)
    dtype = np.result_type(counts.dtype, np.float32) if counts.dtype.kind == "f" else np.float64
    X = np.zeros((counts.shape[0], tree.n_bins), dtype=dtype)
    X[:, bins] = counts[:, columns]
    return X


# ----------------------------------------------------------------------------- matrices

def _check_ids(ids: Sequence[str], n: int, what: str) -> list[str]:
    if isinstance(ids, str):
        raise TypeError(f"{what} must be a sequence of ids, not one string")
    out = [str(i) for i in ids]
    if len(out) != n:
        raise ValueError(f"{what} has {len(out)} ids for {n} matrix {what.split('_')[0]}s")
    for i in out:
        if any(c in i for c in "\t\n\r"):
            raise ValueError(f"id {i!r} in {what} contains a tab or a line break")
    if len(set(out)) != len(out):
        seen: set[str] = set()
        dup = next(i for i in out if i in seen or seen.add(i))
        raise ValueError(f"id {dup!r} appears twice in {what}")
    return out


def write_matrix(
    path: str | os.PathLike[str] | TextIO,
    matrix: Any,
    row_ids: Sequence[str],
    col_ids: Sequence[str] | None = None,
) -> None:
    """Write a labelled matrix as TSV (as scikit-bio's DistanceMatrix: first cell empty).

    Values are written with the shortest text that reads back to the same
    float64, so :func:`read_matrix` returns them exactly. The rows are
    written one at a time (a memory-mapped matrix is never read whole) to a
    temporary file beside ``path``, which replaces ``path`` only once it is
    complete: a failed write leaves the previous file as it was.

    Parameters
    ----------
    path : str, path-like or text file object
        The file to write (replaced if it exists), or an open text stream
        such as ``sys.stdout``, written in place.
    matrix : array_like, shape (n_rows, n_cols)
        Real numbers, e.g. a distance matrix from :func:`emdtree.pairwise`.
    row_ids : sequence of str, length n_rows
        The id of each row; no tabs or line breaks, no duplicates.
    col_ids : sequence of str, length n_cols, optional
        The id of each column. Default: ``row_ids`` (a square matrix).

    Raises
    ------
    ValueError
        If the matrix is not 2-D or not real, the number of ids does not
        match its shape, an id repeats or holds a tab or a line break.
    OSError
        When the file cannot be written (naming it); ``path`` is then left
        as it was.

    Examples
    --------
    >>> import pathlib, tempfile, numpy as np, emdtree
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "d.tsv"
    >>> emdtree.io.write_matrix(path, np.array([[0, 0.5], [0.5, 0]]), ["s1", "s2"])
    >>> path.read_text().splitlines()
    ['\\ts1\\ts2', 's1\\t0.0\\t0.5', 's2\\t0.5\\t0.0']
    >>> emdtree.io.read_matrix(path).values
    array([[0. , 0.5],
           [0.5, 0. ]])
    """
    values = np.asarray(matrix)
    if values.ndim != 2:
        raise ValueError(f"matrix must be 2-D, got shape {values.shape}")
    if values.dtype.kind not in "biuf":
        raise ValueError(f"matrix must hold real numbers, got dtype {values.dtype}")
    rows = _check_ids(row_ids, values.shape[0], "row_ids")
    cols = rows if col_ids is None else _check_ids(col_ids, values.shape[1], "col_ids")
    if col_ids is None and values.shape[0] != values.shape[1]:
        raise ValueError(f"matrix has shape {values.shape}: give col_ids for a matrix that is not square")
    if hasattr(path, "write"):
        _write_rows(path, values, rows, cols)
        return
    with atomic_write(path, "w", encoding="utf-8", newline="") as fh:
        _write_rows(fh, values, rows, cols)


def _write_rows(fh: Any, values: np.ndarray, rows: list[str], cols: list[str]) -> None:
    fh.write("\t" + "\t".join(cols) + "\n")
    # one row at a time: converting the whole matrix to Python floats would
    # take about six times its size
    for i, name in enumerate(rows):
        row = values[i].astype(np.float64, copy=False).tolist()
        fh.write(name + "\t" + "\t".join(map(repr, row)) + "\n")


def read_matrix(path: str | os.PathLike[str]) -> Matrix:
    """Read a TSV matrix written by :func:`write_matrix` (or scikit-bio).

    Parameters
    ----------
    path : str or path-like
        A tab-separated file: a header row of column ids after an empty (or
        any) first cell, then one row per id with the row id first.

    Returns
    -------
    Matrix
        ``(row_ids, col_ids, values)`` with float64 values.

    Raises
    ------
    ValueError
        For ragged rows, cells that are not numbers or duplicate ids.
    FileNotFoundError
        If the file does not exist.

    Examples
    --------
    >>> import pathlib, tempfile, emdtree
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "d.tsv"
    >>> _ = path.write_text("\\ta\\tb\\na\\t0\\t2.5\\nb\\t2.5\\t0\\n")
    >>> m = emdtree.io.read_matrix(path)
    >>> m.row_ids, m.col_ids
    (['a', 'b'], ['a', 'b'])
    >>> m.values
    array([[0. , 2.5],
           [2.5, 0. ]])
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such matrix file: {str(path)!r}")
    _, cols, rows, values = _read_text(path, "\t", "matrix")
    return Matrix(rows, cols, values)
