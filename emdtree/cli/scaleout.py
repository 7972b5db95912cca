"""``emdtree pairwise`` and ``emdtree unifrac`` on dask: Zarr output, a cluster, tables read by blocks.

Taken when the output is a ``.zarr`` store, the table is a Zarr, HDF5 or
BIOM file, or ``--scheduler`` / ``--workers`` is given. The matrix is built
lazily (:func:`emdtree.pairwise` or :func:`emdtree.weighted_unifrac` on a dask
array) and written block by block,
so neither the table nor the matrix has to fit in one process: a task holds
two blocks of transformed samples and one block of distances.
"""

from __future__ import annotations

import contextlib
import os
import sys
import warnings
from collections.abc import Iterator
from typing import Any, TextIO

import numpy as np

from ..formats.lazy_tables import LAZY_SUFFIXES, SPARSE_SUFFIXES, default_block_rows


class _Input(ValueError):
    pass


def wanted(args) -> bool:
    """Whether ``emdtree pairwise`` or ``emdtree unifrac`` takes the dask path for these arguments.

    A BIOM table or a QIIME 2 feature table (``.qza``) needs only the ``biom``
    extra: it is read by blocks when dask is installed (never made dense as a
    whole), and in memory otherwise (the same matrix).
    """
    table = str(args.table).rstrip("/\\").lower()
    if getattr(args, "scheduler", None) is not None or getattr(args, "workers", None) is not None:
        return True
    if _is_zarr(args.output):
        return True
    if table.endswith(SPARSE_SUFFIXES):
        return _has_dask()
    return table.endswith(LAZY_SUFFIXES)


def _has_dask() -> bool:
    try:
        import dask.array  # noqa: F401
    except ImportError:
        return False
    return True


def _needs_dask(args) -> str:
    """What asked for dask, and the extra that brings it."""
    if getattr(args, "scheduler", None) is not None or getattr(args, "workers", None) is not None:
        option = "--scheduler" if getattr(args, "scheduler", None) is not None else "--workers"
        return f"{option} needs dask.distributed: pip install emdtree[distributed]"
    if _is_zarr(args.output):
        return f"-o {args.output!r}: writing a Zarr store needs dask and zarr: pip install emdtree[zarr]"
    table = str(args.table).rstrip("/\\").lower()
    extra = "emdtree[zarr]" if table.endswith(".zarr") else "emdtree[dask] h5py"
    return f"{args.table!r}: reading this table by blocks needs dask: pip install {extra}"


def _is_zarr(path: str) -> bool:
    return str(path).rstrip("/\\").lower().endswith(".zarr")


#: Seconds to wait for the scheduler of ``--scheduler`` to answer.
CONNECT_TIMEOUT_S = 5.0


@contextlib.contextmanager
def scheduler(address: str | None, workers: int | None, threads: int | None) -> Iterator[Any]:
    """A ``distributed.Client`` for ``address`` or a local cluster of ``workers`` processes, or
    None (the threaded scheduler, ``threads`` threads)."""
    if address is None and workers is None:
        import dask

        with dask.config.set(scheduler="threads", **({"num_workers": threads} if threads else {})):
            yield None
        return
    try:
        import distributed
    except ImportError:
        from .commands import InputError

        raise InputError("--scheduler and --workers need dask.distributed: "
                         "pip install emdtree[distributed]") from None
    if address is not None:
        try:
            client = distributed.Client(address, timeout=f"{CONNECT_TIMEOUT_S}s")
        except (OSError, TimeoutError):  # refused, unreachable or silent: one line, soon
            from ..engine.semantics import message
            from .commands import InputError

            raise InputError(message("scheduler", address=address, seconds=CONNECT_TIMEOUT_S)) from None
        with client:
            yield client
        return
    import logging

    # a task that fails on bad input is reported once, on one line, by main: not also by the worker
    with distributed.LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                  dashboard_address=None, silence_logs=logging.CRITICAL) as cluster:
        with distributed.Client(cluster) as client:
            yield client


def _compute(task: Any, client: Any, show: bool) -> None:
    """Run a dask computation, with dask's progress bar on stderr when ``show``."""
    if client is None:
        import dask

        if show:
            from dask.diagnostics import ProgressBar

            with ProgressBar(out=sys.stderr):
                dask.compute(task)
        else:
            dask.compute(task)
        return
    import distributed

    running = client.persist(task)
    if show:
        with contextlib.redirect_stdout(sys.stderr):  # its text bar writes to stdout
            distributed.progress(running)
    running.compute()  # raises the first error of a task, in the caller's terms


def _check_target(path: str) -> None:
    """An existing ``path`` must be a Zarr store (it is replaced) that this process can remove."""
    from ..trees import files

    target = files._directory_target(path)
    files.recover_directory(target)  # a swap that a killed run left half done
    if os.path.lexists(target):
        is_store = os.path.isdir(target) and any(os.path.exists(os.path.join(target, name))
                                                  for name in ("zarr.json", ".zgroup", ".zarray"))
        if not is_store:
            raise _Input(f"-o {path!r} exists and is not a Zarr store: will not replace it")


def write_zarr(path: str, D: Any, sample_ids: list[str], attrs: dict, client: Any, show: bool) -> None:
    """Write the lazy matrix ``D`` to the Zarr group ``path`` block by block.

    The group holds ``distances`` (chunked as ``D``) and ``sample_ids``; the
    store is written beside ``path`` and swapped in by renames once complete
    (:func:`emdtree.trees.files.atomic_directory`), so ``path`` is always the
    complete old or new store, and a run killed at any point is recovered by
    the next run or read of ``path``.
    """
    try:
        import zarr  # noqa: F401
    except ImportError:
        raise ImportError("writing .zarr needs the zarr package: pip install emdtree[zarr]") from None
    _check_target(path)
    with warnings.catch_warnings(record=True) as notes:
        warnings.simplefilter("always", UserWarning)
        _write_store(path, D, sample_ids, attrs, client, show)
    for note in notes:  # an old store that could not be removed after the swap: one line
        print(f"emdtree: warning: {note.message}", file=sys.stderr)


def _write_store(path: str, D: Any, sample_ids: list[str], attrs: dict, client: Any, show: bool) -> None:
    import zarr
    import dask.array as da

    from ..trees import files

    with files.atomic_directory(path) as partial:
        group = zarr.open_group(partial, mode="w")
        ids = group.create_array("sample_ids", shape=(len(sample_ids),), dtype=str)
        if sample_ids:
            ids[:] = np.array(sample_ids, dtype=str)
        group.attrs.update(attrs)
        chunks = tuple(c[0] if c else 1 for c in D.chunks)
        group.create_array("distances", shape=D.shape, chunks=chunks, dtype=D.dtype, fill_value=0.0)
        target = zarr.open_array(partial, path="distances", mode="r+")
        _compute(da.store(D, target, lock=False, compute=False), client, show)


def _checked_counts(X: Any, sample_ids: list[str], tree: Any, table: str, normalize: str | None,
                    equal_totals: bool) -> Any:
    """``X`` whose blocks name a bad value by sample id and feature when computed, as in memory."""
    import dask.array as da

    from .commands import check_table_block

    ids = da.from_array(np.array(sample_ids, dtype=object)[:, None], chunks=(X.chunks[0], 1))
    names = da.from_array(np.array(tree.names, dtype=object)[None, :], chunks=-1)
    if not equal_totals or not sample_ids:
        return da.map_blocks(lambda x, i, f: check_table_block(x, normalize, table, i[:, 0], f[0]), X, ids,
                             names, dtype=X.dtype, meta=np.empty((0, 0), dtype=X.dtype))
    # --normalize none: every sample has the first one's total, named by sample id as in memory
    first_total = X[:1].sum(dtype=np.float64)
    first_id = sample_ids[0]
    ids = da.from_array(np.array(sample_ids, dtype=object), chunks=(X.chunks[0],))
    names = da.from_array(np.array(tree.names, dtype=object), chunks=(X.chunks[1],))
    return da.blockwise(
        lambda x, i, f, t: check_table_block(x, normalize, table, i, f, (first_id, float(t))),
        "ij", X, "ij", ids, "i", names, "j", first_total, "", dtype=X.dtype,
        meta=np.empty((0, 0), dtype=X.dtype))


def matrix(args, out: TextIO) -> None:
    """``emdtree pairwise`` and ``emdtree unifrac`` through dask (see :func:`wanted`)."""
    from .commands import InputError, _stderr_is_terminal, measure, read_tree, write_output
    from ..formats.lazy_tables import open_counts

    if getattr(args, "scheduler", None) is not None and getattr(args, "workers", None) is not None:
        raise InputError("give --scheduler ADDRESS or --workers N, not both")
    if not _has_dask():
        raise InputError(_needs_dask(args))
    tree = read_tree(args.tree)
    block = args.block_size or default_block_rows(tree.n_nodes)
    if _is_zarr(args.table):
        from ..trees import files

        files.recover_directory(args.table)  # a store that a killed run left between two names
    try:
        sample_ids, X = open_counts(args.table, tree, block_rows=block, drop_missing=args.drop_missing,
                                    transpose=args.transpose)
    except ValueError as exc:
        raise InputError(str(exc).replace("pass drop_missing=True", "pass --drop-missing")) from None
    except ImportError as exc:  # an optional package the table's format needs: one line
        raise InputError(str(exc)) from None
    what = measure(args)
    X = _checked_counts(X, sample_ids, tree, args.table, what.normalize, what.equal_totals)
    show = not args.quiet and _stderr_is_terminal()
    n = len(sample_ids)
    if show:
        print(f"emdtree: {n} samples x {tree.n_bins} bins; {n * (n - 1) // 2} pairs in blocks of {block} "
              "samples", file=sys.stderr)
    D = what.compute(X, tree, block)
    with scheduler(args.scheduler, args.workers, args.threads) as client:
        if _is_zarr(args.output):
            try:
                write_zarr(args.output, D, sample_ids, what.attrs, client, show)
            except _Input as exc:
                raise InputError(str(exc)) from None
            return
        if client is None:
            values = D.compute()
        else:
            values = client.compute(D).result()
    write_output(args, values, sample_ids, out)
