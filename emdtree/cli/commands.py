"""``emdtree distance``, ``emdtree pairwise``, ``emdtree unifrac`` and ``emdtree evaluate``."""

from __future__ import annotations

import contextlib
import json
import math
import os
import pathlib
import stat
import sys
import warnings
from typing import Any, Callable, NamedTuple, TextIO

import numpy as np

_TEXT_DELIMITERS = {".csv": ",", ".tsv": "\t", ".tab": "\t", ".txt": None}


class InputError(ValueError):
    """Bad input named in command-line terms; reported on one line, exit status 2."""


# ----------------------------------------------------------------------------- reading


def read_array(spec: str, what: str, *, mmap: bool = False) -> np.ndarray:
    """An array from a file or from the command line.

    ``spec`` is a ``.npy`` file (memory-mapped with ``mmap``), an ``.npz``
    file holding one array (or ``FILE.npz:NAME``), a ``.csv``, ``.tsv`` or
    ``.txt`` file of numbers (one row per line), or inline numbers: commas
    between values and semicolons between rows, as in ``0.5,0.5;1,0``.
    """
    path, key = spec, None
    if not os.path.exists(spec) and ".npz:" in spec.lower():
        path, key = spec.rsplit(":", 1)
    suffix = pathlib.Path(path).suffix.lower()
    if not os.path.exists(path):
        inline = _parse_inline(spec)
        if inline is not None:
            return inline
        raise InputError(f"{what}: no such file {path!r} (nor inline numbers such as 0.5,0.5)")
    if os.path.isdir(path):
        raise InputError(f"{what}: {path!r} is a directory, not a file")
    from ..trees.files import load_npy, open_npz

    try:
        if suffix == ".npy":
            return load_npy(path, mmap=mmap)
        if suffix == ".npz":
            with open_npz(path) as data:
                names = data.files
                if key is None:
                    if len(names) != 1:
                        raise InputError(f"{what}: {path!r} holds {len(names)} arrays ({', '.join(names)}); "
                                         f"pick one as {path}:NAME")
                    key = names[0]
                if key not in names:
                    raise InputError(f"{what}: {path!r} has no array {key!r} (it has {', '.join(names)})")
                return data[key]
        if suffix in _TEXT_DELIMITERS:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "input contained no data": said below, on one line
                values = np.loadtxt(path, delimiter=_TEXT_DELIMITERS[suffix], ndmin=1)
            if values.size == 0:
                raise InputError(f"{what}: {path!r} holds no numbers")
            return values
    except InputError:
        raise
    except ValueError as exc:
        message = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise InputError(f"{what}: {message}" if repr(path) in message else
                         f"{what}: cannot read {path!r}: {message}") from None
    raise InputError(f"{what}: cannot tell the format of {path!r}: use .npy, .npz, .csv, .tsv or .txt")


def _parse_inline(text: str) -> np.ndarray | None:
    rows = [row for row in text.split(";")]
    try:
        values = [[float(v) for v in row.split(",")] for row in rows]
    except ValueError:
        return None
    if len(values) == 1:
        return np.array(values[0])
    if len({len(r) for r in values}) != 1:
        raise InputError(f"inline rows have different lengths: {text!r}")
    return np.array(values)


def read_tree(spec: str | None):
    """The tree named on the command line (see :func:`emdtree.io.read_tree`), or None."""
    if spec is None:
        return None
    from ..formats import io

    try:
        return io.read_tree(spec)
    except (ValueError, KeyError) as exc:
        # a malformed file: say which one (io's messages for missing files and
        # unknown extensions already do)
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(message if spec in message else f"tree {spec!r}: {message}") from None


# ----------------------------------------------------------------------------- output

# per command: the options that name inputs (with their names in messages) and outputs
_INPUTS = {"distance": (("p", "P"), ("q", "Q"), ("tree", "--tree")),
           "pairwise": (("table", "TABLE"), ("tree", "--tree")),
           "unifrac": (("table", "TABLE"), ("tree", "--tree")),
           "evaluate": (("pred", "PRED"), ("labels", "LABELS"), ("tree", "--tree"))}
_OUTPUTS = {"distance": (("output", "-o"),), "pairwise": (("output", "-o"),), "unifrac": (("output", "-o"),),
            "evaluate": (("per_class", "--per-class"),)}


def is_stdout(path: Any) -> bool:
    """Whether an output argument is ``-``: the matrix goes to stdout."""
    return str(path) == "-"


def _input_paths(spec: str) -> list[str]:
    """The existing files or directories that an input argument names (none for inline numbers)."""
    paths = [spec]
    if ":" in spec:
        paths.append(spec.rsplit(":", 1)[0])  # FILE.npz:NAME
    return [p for p in paths if os.path.exists(p)]


def _identity(path: str) -> tuple[int, int] | None:
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_dev, info.st_ino


def _ancestors(path: str) -> list[str]:
    """``path`` and every directory above it, lexically and with symbolic links resolved."""
    found = []
    for start in (os.path.abspath(path), os.path.realpath(path)):
        p = start
        while True:
            found.append(p)
            parent = os.path.dirname(p)
            if parent == p:
                break
            p = parent
    return found


def check_outputs(args) -> None:
    """Refuse an output that is one of the command's inputs, holds one (a store) or lies inside one:
    the same file, a hard or symbolic link to it, the same directory. Outputs that are devices or
    pipes (``/dev/stdout``) are not checked."""
    outputs = [(getattr(args, attr, None), option) for attr, option in _OUTPUTS.get(args.command, ())]
    outputs = [(path, option) for path, option in outputs if path and not is_stdout(path)]
    if not outputs:
        return
    for out, option in outputs:
        _check_output_folder(out, option)
        try:
            info = os.stat(out)
        except OSError:
            info = None
        if info is not None and not (stat.S_ISREG(info.st_mode) or stat.S_ISDIR(info.st_mode)):
            continue
        out_ids = {_identity(p) for p in _ancestors(out)} - {None}
        own = _identity(out)
        for attr, what in _INPUTS[args.command]:
            spec = getattr(args, attr, None)
            if not spec:
                continue
            for path in _input_paths(str(spec)):
                ident = _identity(path)
                if ident is None:
                    continue
                if ident in out_ids:
                    relation = "is" if ident == own else "lies inside"
                    raise InputError(f"{option} {out!r} {relation} the input {what} {str(spec)!r}: "
                                     "choose another output")
                if own is not None and own in {_identity(p) for p in _ancestors(path)}:
                    raise InputError(f"{option} {out!r} holds the input {what} {str(spec)!r}, which "
                                     "replacing it would delete: choose another output")


def _check_output_folder(out: str, option: str) -> None:
    """Say before computing when an output's folder is a file, or is missing for a file output
    (the folders above a Zarr store are made, as :func:`emdtree.io.write_zarr` does)."""
    folder = os.path.dirname(os.path.abspath(out))
    if os.path.isdir(folder):
        return
    above = folder
    while not os.path.exists(above) and os.path.dirname(above) != above:
        above = os.path.dirname(above)
    if not os.path.isdir(above):
        raise InputError(f"{option} {out!r}: {os.path.relpath(above)!r} is a file, not a folder")
    if not str(out).rstrip("/\\").lower().endswith(".zarr"):
        raise InputError(f"{option} {out!r}: the folder {os.path.dirname(out)!r} does not exist")


def _stderr_is_terminal() -> bool:
    isatty = getattr(sys.stderr, "isatty", None)
    return bool(isatty and isatty())


def progress_bar(total: int, desc: str, quiet: bool):
    """A tqdm bar on stderr, or None: without tqdm, with ``--quiet`` or when
    stderr is not a terminal."""
    if quiet or not _stderr_is_terminal():
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=desc, unit="row", file=sys.stderr, leave=False)


def _number(value: np.generic) -> str:
    """Shortest text that reads back to the same value in its own dtype."""
    return str(value)


def _json_value(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None  # NaN is not JSON
    if isinstance(value, dict):
        return {k: _json_value(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_value(v) for v in value]
    return value


def _write_values(path: str, values: np.ndarray) -> None:
    from ..trees.files import atomic_write

    suffix = pathlib.Path(path).suffix.lower()
    if suffix == ".npy":
        # through a file object: given a name, np.save would append ".npy" to "OUT.NPY"
        with atomic_write(path, "wb") as fh:
            np.save(fh, values)
        return
    if values.ndim > 2:
        raise InputError(f"-o {path!r}: {values.ndim}-D results go to a .npy file")
    delimiter = {".csv": ",", ".tsv": "\t"}.get(suffix, "\t")
    with atomic_write(path, "w", encoding="utf-8") as fh:
        np.savetxt(fh, np.atleast_1d(values), fmt="%.17g", delimiter=delimiter)


# ----------------------------------------------------------------------------- distance


def distance(args, out: TextIO) -> None:
    import emdtree

    tree = read_tree(args.tree)
    p, q = read_array(args.p, "P"), read_array(args.q, "Q")
    normalize = None if args.normalize == "none" else args.normalize
    value = np.asarray(emdtree.emd(p, q, tree, args.rho, args.axis, normalize=normalize))
    if args.output and not is_stdout(args.output):
        _write_values(args.output, value)
        return
    if value.ndim == 0:
        print(_number(value[()]), file=out)
    elif value.ndim == 1:
        for v in value:
            print(_number(v), file=out)
    elif value.ndim == 2:
        for row in value:
            print("\t".join(_number(v) for v in row), file=out)
    else:
        raise InputError(f"the result has shape {value.shape}: write it with -o FILE.npy")


# ----------------------------------------------------------------------------- pairwise, unifrac


class Measure(NamedTuple):
    """What a matrix command computes from the counts: ``emdtree pairwise`` or ``emdtree unifrac``."""

    normalize: str | None
    """How the counts are checked: the rules of :mod:`emdtree.engine.semantics` for this normalize."""
    equal_totals: bool
    """Every sample must have the first one's total (``--normalize none``)."""
    compute: Callable[[Any, Any, int | None], Any]
    """The matrix of ``(X, tree, block_size)``, in memory or lazy for a dask ``X``."""
    attrs: dict
    """The attributes of a Zarr output."""


def measure(args) -> Measure:
    """The :class:`Measure` of the command line ``args``."""
    import emdtree

    if args.command == "unifrac":
        normalized = bool(args.normalized)
        return Measure(None, False,
                       lambda X, tree, block: emdtree.weighted_unifrac(X, tree, normalized=normalized,
                                                                       block_size=block),
                       {"metric": "weighted_unifrac", "normalized": normalized})
    normalize = None if args.normalize == "none" else args.normalize
    return Measure(normalize, normalize is None,
                   lambda X, tree, block: emdtree.pairwise(X, tree=tree, rho=args.rho, normalize=normalize,
                                                           block_size=block),
                   {"rho": args.rho, "normalize": args.normalize})


def write_output(args, D: Any, sample_ids: list[str], out: TextIO) -> None:
    """The matrix as TSV to ``-o FILE``, or to ``out`` (stdout) for ``-o -``."""
    from ..formats import io

    io.write_matrix(out if is_stdout(args.output) else args.output, D, sample_ids)


def matrix(args, out: TextIO) -> None:
    """``emdtree pairwise`` and ``emdtree unifrac`` in memory (see :mod:`emdtree.cli.scaleout` for Zarr,
    clusters and blocks)."""
    from emdtree.formats import io

    tree = read_tree(args.tree)
    options = {"transpose": True} if args.transpose else {}
    try:
        sample_ids, X = io.load_counts(args.table, tree, drop_missing=args.drop_missing, **options)
    except ValueError as exc:
        raise InputError(str(exc).replace("pass drop_missing=True", "pass --drop-missing")) from None
    except ImportError as exc:  # the package a format needs (biom-format for .biom, .qza): one line
        raise InputError(str(exc)) from None
    what = measure(args)
    _check_counts(X, sample_ids, tree, args.table, what.normalize, what.equal_totals)
    if not args.quiet and _stderr_is_terminal():
        print(f"emdtree: {len(sample_ids)} samples x {tree.n_bins} bins; "
              f"{len(sample_ids) * (len(sample_ids) - 1) // 2} pairs", file=sys.stderr)
    D = what.compute(X, tree, None)
    write_output(args, D, sample_ids, out)


def _check_counts(X: np.ndarray, sample_ids: list[str], tree: Any, table: str, normalize: str | None,
                  equal_totals: bool) -> None:
    """Name a bad value by its sample id and feature, as in the file: a count that is not finite or
    negative, or (``--normalize softmax``) a logit that is NaN or +inf (the rules of
    :mod:`emdtree.engine.semantics`); with ``equal_totals``, a total unlike the first sample's."""
    first = None
    if equal_totals and X.shape[0]:
        first = (sample_ids[0], float(np.asarray(X[0]).sum(dtype=np.float64)))
    for start in range(0, X.shape[0], 4096):  # in blocks: X may be memory-mapped
        check_table_block(np.asarray(X[start:start + 4096]), normalize, table, sample_ids[start:start + 4096],
                          tree.names, first)


def check_table_block(block: np.ndarray, normalize: str | None, table: str, sample_ids: Any,
                      features: Any, first: tuple[str, float] | None = None) -> np.ndarray:
    """``block`` (samples in rows) itself, or an InputError naming its first bad value by sample id
    and feature; ``sample_ids`` are the block's own. With ``first``, the id and the total of the
    table's first sample (``--normalize none``), every sample must have that total."""
    from ..engine import semantics

    word = "value" if normalize == "softmax" else "count"

    def entry(r: int, k: int) -> str:
        return f"{table!r}: the {word} of {str(features[k])!r} in sample {str(sample_ids[r])!r}"

    def row(r: int) -> str:
        return f"{table!r}: sample {str(sample_ids[r])!r}"

    error = semantics.masses_error(block, normalize, "the table", entry, row)
    if error is None and first is not None and normalize is None and block.size:
        error = semantics.unequal_total_error(block.sum(axis=1, dtype=np.float64), first[1],
                                              semantics.float_eps(block.dtype), block.shape[1],
                                              lambda r: f"sample {str(sample_ids[r])!r}",
                                              f"sample {str(first[0])!r}")
        error = None if error is None else f"{table!r}: {error}"
    if error is not None:
        raise InputError(error)
    return block


# ----------------------------------------------------------------------------- evaluate

_LABELS = [
    ("n_samples", "samples"),
    ("accuracy@", "top-{k} accuracy"),
    ("n_mistakes", "top-1 mistakes"),
    ("mistake_severity", "mistake severity"),
    ("hierarchical_distance@", "hierarchical distance@{k}"),
    ("mean_emd", "mean EMD{rho}"),
]


def _read_labels(spec: str) -> np.ndarray:
    labels = read_array(spec, "LABELS")
    if labels.dtype.kind == "f":
        whole = np.isfinite(labels) & (labels == np.round(labels)) & (np.abs(labels) < 2.0**62)
        if labels.size and not np.all(whole):
            bad = int(np.flatnonzero(~whole.reshape(-1))[0])
            raise InputError(f"LABELS[{bad}] = {labels.flat[bad].item()!r} is not a class index")
        labels = labels.astype(np.int64)
    return np.asarray(labels).reshape(-1) if labels.ndim == 2 and 1 in labels.shape else labels


def evaluate(args, out: TextIO) -> None:
    from emdtree.evaluation import metrics

    tree = read_tree(args.tree)
    pred = read_array(args.pred, "PRED", mmap=True)
    labels = _read_labels(args.labels)
    normalize = None if args.normalize == "none" else args.normalize
    ks = tuple(args.k) if args.k else tuple(k for k in (1, 5) if k <= tree.n_bins)
    bar = progress_bar(pred.shape[0] if pred.ndim == 2 else 0, "evaluate", args.quiet)
    with contextlib.closing(bar) if bar is not None else contextlib.nullcontext():
        result = metrics.report(pred, labels, tree, ks=ks, rho=args.rho,
                                per_class=args.per_class is not None, normalize=normalize,
                                distance=args.distance, chunk_size=args.chunk_size,
                                progress=None if bar is None else bar.update)
    per_class = result.pop("per_class", None)
    if per_class is not None:
        _write_per_class(args.per_class, per_class)
    if args.json:
        json.dump(_json_value(result), out, indent=2)
        print(file=out)
        return
    rows = []
    for key, value in result.items():
        name = key
        for prefix, label in _LABELS:
            if key == prefix or (prefix.endswith("@") and key.startswith(prefix)):
                k = key[len(prefix):] if prefix.endswith("@") else ""
                name = label.format(k=k, rho="" if args.rho == 1 else f"^{args.rho:g}")
        text = str(value) if isinstance(value, int) else ("-" if math.isnan(value) else f"{value:.6g}")
        rows.append((name, text))
    width = max(len(name) for name, _ in rows)
    distance_name = {"path": "path length", "lca_height": "LCA height (H - depth of the LCA)",
                     "lca_subtree_height": "height of the LCA's subtree"}[args.distance]
    print(f"{pred.shape[0]} predictions over {pred.shape[1]} classes; tree distances: {distance_name}",
          file=out)
    for name, text in rows:
        print(f"  {name.ljust(width)}  {text}", file=out)


def _write_per_class(path: str, columns: dict[str, list]) -> None:
    from ..trees.files import atomic_write

    keys = list(columns)
    n = len(columns["class"])
    with atomic_write(path, "w", encoding="utf-8", newline="") as fh:
        fh.write("\t".join(keys) + "\n")
        for i in range(n):
            cells = []
            for key in keys:
                v = columns[key][i]
                if v is None:
                    cells.append("")
                elif isinstance(v, float):
                    cells.append("nan" if math.isnan(v) else repr(v))
                else:
                    cells.append(str(v).replace("\t", " "))
            fh.write("\t".join(cells) + "\n")
