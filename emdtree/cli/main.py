"""The implementation of the ``emdtree`` command line, documented there."""

from __future__ import annotations

import argparse
import os
import re
import sys
from typing import Sequence

COMMANDS = ("demo", "info", "distance", "pairwise", "unifrac", "evaluate")
_BROKEN_PIPE = 141  # 128 + SIGPIPE: the status of `yes | head -1`'s yes


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, no usage block
        raise _UsageError(message)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    from ..engine.semantics import COUNT_MAX, message

    if value > COUNT_MAX:  # beyond int64, NumPy and dask take it for an object
        raise argparse.ArgumentTypeError(message("count_range", top=COUNT_MAX, value=value))
    return value


def _rho(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 1, got {text!r}") from None
    if not value >= 1 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 1, got {text}")
    return value


def _common_options(suppress: bool) -> _Parser:
    """--quiet and --threads, accepted before and after the command."""
    common = _Parser(add_help=False)
    default = argparse.SUPPRESS if suppress else None
    common.add_argument("-q", "--quiet", action="store_true",
                        default=argparse.SUPPRESS if suppress else False,
                        help="no progress bars or notes on stderr")
    common.add_argument("--threads", type=_positive_int, metavar="N", default=default,
                        help="Numba threads (default: all, or NUMBA_NUM_THREADS)")
    return common


def _table_arguments(parser: argparse.ArgumentParser, tree_help: str) -> None:
    """TABLE, --tree, -o and the options of reading a count table: pairwise and unifrac."""
    parser.add_argument("table", metavar="TABLE")
    parser.add_argument("--tree", metavar="T", required=True, help=f"the tree: {tree_help}")
    parser.add_argument("-o", "--output", metavar="D.tsv", required=True,
                        help="where to write the matrix: a TSV file, '-' for the TSV on stdout, or a Zarr "
                             "store (D.zarr), written block by block")
    parser.add_argument("--drop-missing", action="store_true",
                        help="leave out features that are not tips of the tree (default: an error)")
    parser.add_argument("--transpose", action="store_true",
                        help="the table has one feature per row (default: detected from a '#OTU ID' header)")


def _scaleout_arguments(parser: argparse.ArgumentParser) -> None:
    """The Dask options of the matrix commands."""
    parser.add_argument("--scheduler", metavar="ADDRESS",
                        help="run on the dask.distributed cluster at ADDRESS (e.g. tcp://host:8786)")
    parser.add_argument("--workers", type=_positive_int, metavar="N",
                        help="run on a local dask cluster of N worker processes")
    parser.add_argument("--block-size", type=_positive_int, metavar="ROWS",
                        help="samples per block of the matrix with dask (default: about 16 million phi "
                             "values per block)")


def _build_parser() -> _Parser:
    from .. import __version__

    parser = _Parser(
        prog="emdtree",
        description="Exact and relaxed Earth Mover's Distances on chains and trees.",
        epilog="Without a command, 'demo' runs. Bad input ends with exit status 2.",
        parents=[_common_options(suppress=False)],
    )
    parser.add_argument("--version", action="version", version=f"emdtree {__version__}")
    common = [_common_options(suppress=True)]
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    demo = sub.add_parser("demo", parents=common, help="tree EMD on the ImageNet class hierarchy (default)",
                          description="Tree EMD and hierarchical metrics on the ImageNet WordNet class "
                                      "hierarchy, with generated predictions.")
    demo.add_argument("--seed", type=int, default=0, help="seed of the generated predictions (default 0)")
    demo.add_argument("--batch", type=_positive_int, default=512,
                      help="images in the generated batch, also the batch that is timed (default 512)")

    sub.add_parser("info", parents=common, help="versions, threads, GPU, optional packages",
                   description="Versions, Numba threading, CUDA, optional packages and Numba's cache.")

    tree_help = ("Newick (.nwk, .newick, .tre, .tree, .nw), a QIIME 2 Phylogeny[Rooted] .qza, a saved Tree "
                 "(.json, .npz) or 'imagenet'")
    dist = sub.add_parser(
        "distance", parents=common, help="EMD between histograms P and Q",
        description="EMD^rho between P and Q, each a .npy, .npz[:NAME], .csv, .tsv or .txt file or inline "
                    "numbers (commas between values, semicolons between rows: 0.5,0.5;1,0; put -- before "
                    "numbers that start with a minus sign). Batch dimensions broadcast; one distance "
                    "per line.")
    dist.add_argument("p", metavar="P")
    dist.add_argument("q", metavar="Q")
    dist.add_argument("--tree", metavar="T", help=f"the tree: {tree_help}; default: a unit-spacing chain")
    dist.add_argument("--rho", type=_rho, default=1.0, help="exponent, >= 1 (default 1: the exact EMD)")
    dist.add_argument("--axis", type=int, default=-1, help="the bin axis (default -1)")
    dist.add_argument("--normalize", choices=("l1", "softmax", "none"), default="none",
                      help="'l1': divide P and Q by their totals first; 'softmax': P holds logits, Q "
                           "distributions (default none: equal totals needed)")
    dist.add_argument("-o", "--output", metavar="FILE", help="write to FILE (.npy, .csv, .tsv or text); '-' or none: stdout")

    pair = sub.add_parser(
        "pairwise", parents=common, help="distance matrix between the samples of a count table",
        description="EMD^rho between every pair of samples of a count table (TSV/CSV with a header of "
                    "feature names and sample ids in the first column, .npy, .npz, .biom or a QIIME 2 "
                    "FeatureTable .qza), written as a square TSV with the sample ids on both axes. "
                    "Features are matched to the tree's tip names. With rho=1 and the default l1 "
                    "normalisation this is weighted UniFrac (unnormalised; see 'emdtree unifrac'). With a "
                    ".zarr output, a Zarr/HDF5 table (read by blocks of samples), a BIOM table when dask is "
                    "installed, --scheduler or --workers, the matrix is computed with dask block by block; a "
                    "BIOM table needs only biom-format.")
    _table_arguments(pair, tree_help)
    pair.add_argument("--rho", type=_rho, default=1.0, help="exponent, >= 1 (default 1)")
    pair.add_argument("--normalize", choices=("l1", "softmax", "none"), default="l1",
                      help="'l1' (default): compare relative abundances, as samples of counts differ in "
                           "depth; 'softmax': the samples are logits; 'none': raw masses, which must have "
                           "equal totals")
    _scaleout_arguments(pair)

    uni = sub.add_parser(
        "unifrac", parents=common, help="weighted UniFrac matrix between the samples of a count table",
        description="Weighted UniFrac (Lozupone et al. 2007) between every pair of samples of a count "
                    "table, as scikit-bio and QIIME 2 compute it: counts are compared as relative "
                    "abundances, branch lengths are the costs. TABLE is a TSV/CSV (sample ids in the first "
                    "column, or '#OTU ID' for one feature per row), .npy, .npz, .biom, Zarr/HDF5 or a "
                    "QIIME 2 FeatureTable[Frequency] .qza; --tree a Newick file or a Phylogeny[Rooted] "
                    ".qza. The matrix is written as a square TSV (QIIME 2 imports it as a DistanceMatrix), "
                    "to stdout with -o -, or to a Zarr store; the Dask options are those of 'emdtree "
                    "pairwise'.")
    _table_arguments(uni, tree_help)
    uni.add_argument("--normalized", action="store_true",
                     help="weighted normalised UniFrac: divide by the two samples' mean root-to-tip "
                          "distance (values in [0, 1]; default: unnormalised)")
    _scaleout_arguments(uni)
    ev = sub.add_parser(
        "evaluate", parents=common, help="hierarchical metrics of a classifier's predictions",
        description="Top-k accuracy, mistake severity, hierarchical distance@k (Bertinetto et al., 2020) "
                    "and mean EMD of predicted distributions PRED (n_samples, n_classes) against class "
                    "indices LABELS (n_samples,). A .npy PRED is memory-mapped and read in chunks.")
    ev.add_argument("pred", metavar="PRED")
    ev.add_argument("labels", metavar="LABELS")
    ev.add_argument("--tree", metavar="T", required=True, help=f"the tree: {tree_help}")
    ev.add_argument("--k", type=_positive_int, nargs="+", metavar="K",
                    help="the k of top-k accuracy and hierarchical distance (default 1 5, or 1 for "
                         "fewer than 5 classes)")
    ev.add_argument("--rho", type=_rho, default=1.0, help="exponent of the mean EMD (default 1)")
    ev.add_argument("--normalize", choices=("l1", "softmax", "none"), default="none",
                    help="'l1': rescale rows of PRED to sum to 1; 'softmax': PRED holds logits (default "
                         "none: PRED holds probabilities)")
    ev.add_argument("--distance", choices=("path", "lca_height", "lca_subtree_height"), default="path",
                    help="tree distance between classes: path length (default), H - depth(LCA) as in "
                         "Bertinetto et al. 2020, or the height of the LCA's subtree")
    ev.add_argument("--chunk-size", type=_positive_int, metavar="ROWS",
                    help="rows read at a time (default: about 4 million scores)")
    ev.add_argument("--json", action="store_true", help="print the metrics as JSON")
    ev.add_argument("--per-class", metavar="OUT.tsv", help="also write the metrics of each class as TSV")
    return parser


def _parse(args_list: list[str]) -> argparse.Namespace:
    if not any(a in COMMANDS for a in args_list) and not any(a in ("-h", "--help", "--version")
                                                             for a in args_list):
        args_list = ["demo"] + args_list
    args = _build_parser().parse_args(args_list)
    args.quiet = getattr(args, "quiet", False)
    args.threads = getattr(args, "threads", None)
    return args


def _set_threads(n: int) -> None:
    import numba

    limit = numba.config.NUMBA_NUM_THREADS
    if n > limit:
        raise _UsageError(f"--threads {n}: at most {limit} threads are available (NUMBA_NUM_THREADS)")
    numba.set_num_threads(n)


def _run(args, out) -> None:
    from . import commands as _cli_commands, demo as _cli_demo, info as _cli_info, scaleout as _cli_scaleout

    # Zarr output, a cluster, or a table read by blocks go to the scale-out path
    _cli_commands.check_outputs(args)  # before anything is read or written
    scaleout = args.command in ("pairwise", "unifrac") and _cli_scaleout.wanted(args)
    matrix = _cli_scaleout.matrix if scaleout else _cli_commands.matrix
    run = {
        "demo": _cli_demo.run,
        "info": _cli_info.run,
        "distance": _cli_commands.distance,
        "pairwise": matrix,
        "unifrac": matrix,
        "evaluate": _cli_commands.evaluate,
    }[args.command]
    run(args, out)


# the library's keyword arguments, as the options that set them
_OPTIONS = [
    (re.compile(r"normalize=None"), "--normalize none"),
    (re.compile(r"normalize='(\w+)'"), r"--normalize \1"),
    (re.compile(r"drop_missing=True"), "--drop-missing"),
    (re.compile(r"chunk_size"), "--chunk-size"),
    (re.compile(r"give default_length to fill in missing lengths"),
     "give every branch a length, or none (then each costs 1)"),
]


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, MemoryError):
        detail = str(exc).strip().splitlines()
        return "not enough memory" + (f": {detail[0]}" if detail else "") + \
            " (try fewer samples, or --threads 1)"
    if isinstance(exc, OSError) and exc.strerror and exc.filename is not None:
        return f"{exc.strerror}: {exc.filename!r}"
    text = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
    lines = text.strip().splitlines()
    line = lines[0] if lines else type(exc).__name__
    for pattern, option in _OPTIONS:
        line = pattern.sub(option, line)
    return line


def _silence_stdout() -> None:
    """After a broken pipe: point stdout at /dev/null, so that the flush at exit stays silent."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # stdout without a file descriptor (captured)
        pass


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``emdtree`` command line; returns the exit status.

    Input errors (the library's ValueError, TypeError, KeyError and OSError,
    and a MemoryError for a result too large) print one line and return 2;
    any other exception is a bug and propagates with its traceback. When the
    reader of stdout goes away (``emdtree info | head -1``) the command stops
    silently with status 141 (128 + SIGPIPE), as a program killed by SIGPIPE.
    """
    args_list = list(sys.argv[1:] if argv is None else argv)
    try:
        args = _parse(args_list)
        if args.threads is not None:
            _set_threads(args.threads)
    except _UsageError as exc:
        print(f"emdtree: error: {exc}", file=sys.stderr)
        return 2
    except SystemExit as exc:  # --help, --version
        return exc.code if isinstance(exc.code, int) else 0
    isatty = getattr(sys.stderr, "isatty", None)
    if not args.quiet and isatty and isatty():  # a note, as the progress bars: only on a terminal
        from ..engine.compile_notice import announce

        announce()
    try:
        _run(args, sys.stdout)
        sys.stdout.flush()  # a broken pipe shows here rather than at exit
    except KeyboardInterrupt:
        print("emdtree: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        _silence_stdout()
        return _BROKEN_PIPE
    except (ValueError, TypeError, KeyError, OSError, MemoryError) as exc:
        print(f"emdtree: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
