"""Generated malformed input: the command line, the readers of :mod:`emdtree.io`
and the Tree builders either work or say what is wrong in one line, never
with a traceback.

Files are valid ones damaged by truncation, flipped or inserted bytes, or
replaced by random bytes, plus arrays of the wrong shape or dtype and random
Newick, JSON and table text. Hypothesis runs derandomized (a fixed seed) with
a bounded number of examples, so the run is the same every time and short.
"""

import contextlib
import io as stdio
import json
import pathlib
import tempfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from emdtree import Tree, io
from emdtree.__main__ import main

NEWICK = "((a:1,b:2):0.5,c:3);"
TABLE_TSV = "sample\ta\tb\tc\ns1\t1\t2\t0\ns2\t0\t5\t1\ns3\t3\t0\t0\n"
FUZZ = settings(max_examples=150, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
# what bad input may raise: one line naming the problem
CLEAR = (ValueError, TypeError, OSError, KeyError)


def _npz_bytes(**arrays) -> bytes:
    buffer = stdio.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def _npy_bytes(array) -> bytes:
    buffer = stdio.BytesIO()
    np.save(buffer, array, allow_pickle=True)
    return buffer.getvalue()


def _tree_npz() -> bytes:
    buffer = stdio.BytesIO()
    with tempfile.TemporaryDirectory() as d:
        path = pathlib.Path(d) / "t.npz"
        Tree.from_newick(NEWICK).save(path)
        buffer.write(path.read_bytes())
    return buffer.getvalue()


VALID = {
    ".nwk": NEWICK.encode(),
    ".json": json.dumps(Tree.from_newick(NEWICK).to_dict()).encode(),
    ".tree.npz": _tree_npz(),
    ".tsv": TABLE_TSV.encode(),
    ".csv": TABLE_TSV.replace("\t", ",").encode(),
    ".npy": _npy_bytes(np.array([[1.0, 2.0, 0.0], [0.0, 5.0, 1.0]])),
    ".npz": _npz_bytes(counts=np.array([[1.0, 2.0, 0.0], [0.0, 5.0, 1.0]]), sample_ids=np.array(["s1", "s2"]),
                       feature_names=np.array(["a", "b", "c"])),
}


@st.composite
def damaged(draw, valid: bytes) -> tuple[bytes, bool]:
    """``(content, surely_invalid)``: a damaged copy of ``valid``."""
    how = draw(st.sampled_from(["truncate", "flip", "insert", "random", "empty"]))
    if how == "empty":
        return b"", True
    if how == "random":
        return draw(st.binary(min_size=1, max_size=300)), False
    if how == "truncate":
        cut = draw(st.integers(0, len(valid) - 1))
        return valid[:cut], False
    data = bytearray(valid)
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(data) - 1))
        if how == "flip":
            data[at] ^= draw(st.integers(1, 255))
        else:
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
    return bytes(data), False


def _run_cli(argv) -> tuple[int, str]:
    out, err = stdio.StringIO(), stdio.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, err.getvalue()


def _assert_clear(code: int, err: str, must_fail: bool) -> None:
    assert code in (0, 2), (code, err)
    if must_fail:
        assert code == 2, err
    if code == 2:
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("emdtree: error: ") and len(lines[0]) > 16, err
        assert "Traceback" not in err


@pytest.fixture(scope="module")
def workdir():
    with tempfile.TemporaryDirectory() as d:
        root = pathlib.Path(d)
        (root / "t.nwk").write_text(NEWICK)
        (root / "table.tsv").write_text(TABLE_TSV)
        yield root


# ----------------------------------------------------------------------------- the command line


@pytest.mark.parametrize("suffix", [".nwk", ".json", ".tree.npz"])
def test_cli_damaged_tree(workdir, suffix):
    valid = VALID[suffix]
    name = workdir / ("tree.npz" if suffix == ".tree.npz" else f"tree{suffix}")

    @FUZZ
    @given(damaged(valid))
    def check(case):
        content, must_fail = case
        name.write_bytes(content)
        code, err = _run_cli(["distance", "1,0,0", "0,0,1", "--tree", name])
        _assert_clear(code, err, must_fail)

    check()


@pytest.mark.parametrize("suffix", [".tsv", ".csv", ".npy", ".npz"])
def test_cli_damaged_table_keeps_the_previous_output(workdir, suffix):
    valid = VALID[suffix]
    table = workdir / f"table{suffix}"
    out = workdir / f"d{suffix}.tsv"
    out.write_text("previous\n")

    @FUZZ
    @given(damaged(valid))
    def check(case):
        content, must_fail = case
        table.write_bytes(content)
        before = out.read_bytes()
        code, err = _run_cli(["pairwise", table, "--tree", workdir / "t.nwk", "-o", out, "--drop-missing",
                              "-q"])
        _assert_clear(code, err, must_fail)
        if code == 2:
            assert out.read_bytes() == before
        assert not list(workdir.glob(".*.tmp"))

    check()


@pytest.mark.parametrize("suffix", [".npy", ".npz", ".csv", ".txt"])
def test_cli_damaged_histograms(workdir, suffix):
    valid = _npy_bytes(np.array([0.5, 0.5, 0.0])) if suffix == ".npy" else \
        _npz_bytes(p=np.array([0.5, 0.5, 0.0])) if suffix == ".npz" else b"0.5,0.5,0\n"
    path = workdir / f"p{suffix}"

    @FUZZ
    @given(damaged(valid))
    def check(case):
        content, must_fail = case
        path.write_bytes(content)
        code, err = _run_cli(["distance", path, "0,0.5,0.5", "--tree", workdir / "t.nwk"])
        _assert_clear(code, err, must_fail)

    check()


_DTYPES = st.sampled_from([np.float64, np.float32, np.int64, np.uint8, np.bool_, np.complex128, "U3", object])


@st.composite
def odd_arrays(draw):
    """Arrays of the wrong rank, dtype or size, with NaN, infinities and negatives."""
    shape = tuple(draw(st.lists(st.integers(0, 4), max_size=4)))
    dtype = draw(_DTYPES)
    values = draw(st.lists(st.sampled_from([0.0, 1.0, 0.5, -1.0, np.nan, np.inf, 1e308, 3.0]),
                           min_size=int(np.prod(shape)), max_size=int(np.prod(shape))))
    array = np.array(values).reshape(shape)
    with np.errstate(invalid="ignore", over="ignore"):
        return array.astype(dtype)


def test_cli_arrays_of_the_wrong_shape_or_dtype(workdir):
    pred, labels = workdir / "pred.npy", workdir / "labels.npy"

    @FUZZ
    @given(odd_arrays(), odd_arrays(), st.sampled_from(["distance", "evaluate", "pairwise"]))
    def check(a, b, command):
        pred.write_bytes(_npy_bytes(a))
        labels.write_bytes(_npy_bytes(b))
        if command == "distance":
            argv = ["distance", pred, labels, "--tree", workdir / "t.nwk"]
        elif command == "evaluate":
            argv = ["evaluate", pred, labels, "--tree", workdir / "t.nwk"]
        else:
            argv = ["pairwise", pred, "--tree", workdir / "t.nwk", "-o", workdir / "d.tsv", "-q"]
        code, err = _run_cli(argv)
        _assert_clear(code, err, a.dtype == object or a.ndim == 0)

    check()


# ----------------------------------------------------------------------------- emdtree.io readers


def _assert_reader(read, path):
    try:
        read(path)
    except CLEAR as exc:
        message = str(exc).strip()
        assert message and len(message.splitlines()) == 1, message


@pytest.mark.parametrize("suffix", [".tsv", ".csv", ".npy", ".npz", ".nwk", ".json", ".tree.npz"])
def test_io_readers_on_damaged_files(workdir, suffix):
    valid = VALID[suffix]
    path = workdir / ("io_tree.npz" if suffix == ".tree.npz" else f"io{suffix}")
    readers = {".nwk": [io.read_tree, Tree.from_newick], ".json": [io.read_tree, Tree.load],
               ".tree.npz": [io.read_tree, Tree.load]}.get(suffix, [io.read_table])
    if suffix == ".tsv":
        readers = readers + [io.read_matrix]
    if suffix == ".npy":
        readers = readers + [lambda p: io.read_table(p, mmap=True)]

    @FUZZ
    @given(damaged(valid))
    def check(case):
        path.write_bytes(case[0])
        for read in readers:
            _assert_reader(read, path)

    check()


def test_io_read_table_on_random_text(workdir):
    path = workdir / "random.tsv"
    cells = st.sampled_from(["", "1", "-2", "x", "nan", "inf", "1e999", "#OTU ID", '"', "\t", "a", "0.5"])

    @FUZZ
    @given(st.lists(st.lists(cells, max_size=5), max_size=6))
    def check(rows):
        path.write_text("\n".join("\t".join(r) for r in rows))
        _assert_reader(io.read_table, path)
        _assert_reader(io.read_matrix, path)

    check()


def test_load_counts_with_odd_npz_names(workdir):
    path = workdir / "names.npz"
    tree = Tree.from_newick(NEWICK)

    @FUZZ
    @given(odd_arrays(), odd_arrays(), odd_arrays())
    def check(counts, sample_ids, feature_names):
        path.write_bytes(_npz_bytes(counts=counts, sample_ids=sample_ids, feature_names=feature_names))
        _assert_reader(lambda p: io.load_counts(p, tree, drop_missing=True), path)

    check()


# ----------------------------------------------------------------------------- Tree builders


def _assert_builds_or_refuses(build, *args):
    try:
        tree = build(*args)
    except (ValueError, TypeError) as exc:
        message = str(exc).strip()
        assert message and len(message.splitlines()) == 1, message
        return
    assert isinstance(tree, Tree)
    assert np.all(np.isfinite(tree.weights)) and np.all(tree.weights >= 0)
    assert tree.names is None or len(set(tree.names)) == tree.n_bins


_INDEX = st.integers(-3, 8)
_WEIGHT = st.sampled_from([0.0, 1.0, 2.5, -1.0, np.nan, np.inf, 1e308])


@FUZZ
@given(st.lists(_INDEX, max_size=8), st.one_of(st.none(), st.lists(_WEIGHT, max_size=8)),
       st.one_of(st.none(), st.lists(_INDEX, max_size=6)),
       st.one_of(st.none(), st.lists(st.sampled_from(["a", "b", "c", ""]), max_size=6)))
def test_from_parents_fuzz(parents, weights, bins, names):
    _assert_builds_or_refuses(Tree.from_parents, parents, weights, bins, names)


_LABEL = st.one_of(st.integers(0, 5), st.sampled_from(["a", "b", "r", "1", "0"]))


@FUZZ
@given(st.lists(st.tuples(_LABEL, _LABEL), max_size=7), st.one_of(st.none(), st.lists(_WEIGHT, max_size=7)),
       st.one_of(st.none(), _LABEL))
def test_from_edges_fuzz(edges, weights, root):
    _assert_builds_or_refuses(Tree.from_edges, edges, weights, root)


_NESTED = st.recursive(
    st.one_of(st.none(), st.sampled_from(["a", "b", "c"]), st.integers(0, 3)),
    lambda children: st.one_of(st.lists(children, max_size=3),
                               st.dictionaries(st.sampled_from(["a", "b", "c", "d"]), children, max_size=3)),
    max_leaves=8,
)


@FUZZ
@given(_NESTED)
def test_from_nested_fuzz(mapping):
    _assert_builds_or_refuses(Tree.from_nested, mapping)


@FUZZ
@given(st.text(alphabet="(),:;ab1.e-[]' _\n\t", max_size=30))
def test_from_newick_fuzz(text):
    _assert_builds_or_refuses(Tree.from_newick, text + ";" if "(" not in text and ";" not in text else text)


@FUZZ
@given(odd_arrays())
def test_from_linkage_fuzz(Z):
    _assert_builds_or_refuses(Tree.from_linkage, Z)


_JSON = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-2, 3), st.floats(allow_nan=True), st.text(max_size=3)),
    lambda children: st.one_of(st.lists(children, max_size=4),
                               st.dictionaries(st.sampled_from(["format", "version", "parents", "weights",
                                                                "bins", "names", "node_names"]),
                                               children, max_size=7)),
    max_leaves=12,
)


@FUZZ
@given(_JSON, st.booleans())
def test_from_dict_fuzz(data, stamp):
    if stamp and isinstance(data, dict):
        data = data | {"format": "emdtree.Tree"}
    _assert_builds_or_refuses(Tree.from_dict, data)
