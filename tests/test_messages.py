"""Each documented input works with the extra named for it, and bad input is named in the caller's terms."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import emdtree
from cli_helpers import assert_input_error, run

_TREE = "(((t0:1,t1:2):0.5,(t2:1,t3:1):1):1,(t4:2,t5:1):0.5);"
_NAMES = [f"t{i}" for i in range(6)]

# `python -c` with dask (and dask.distributed) made unimportable, then the command line
_NO_DASK = textwrap.dedent("""
    import sys

    class _NoDask:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("dask", "distributed"):
                raise ImportError(f"No module named {name!r}")

    sys.meta_path.insert(0, _NoDask())
    from emdtree.cli.main import main

    sys.exit(main(sys.argv[1:]))
""")


def _no_dask(args, cwd):
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.abspath(emdtree.__file__)))
    env["PYTHONPATH"] = os.pathsep.join([root] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    return subprocess.run([sys.executable, "-c", _NO_DASK, *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def _write_biom(path, counts):
    biom = pytest.importorskip("biom")
    h5py = pytest.importorskip("h5py")
    table = biom.Table(np.asarray(counts, dtype=float).T, _NAMES, [f"s{i}" for i in range(len(counts))])
    with h5py.File(path, "w") as fh:
        table.to_hdf5(fh, "emdtree tests")


def _counts(n=7, seed=0):
    return np.random.default_rng(seed).integers(0, 5, size=(n, len(_NAMES))).astype(float) + \
        np.eye(n, len(_NAMES))


# ----------------------------------------------------------------------------- inputs and extras


def test_biom_through_the_cli_needs_no_dask(tmp_path):
    X = _counts()
    _write_biom(tmp_path / "t.biom", X)
    (tmp_path / "tree.nwk").write_text(_TREE)
    done = _no_dask(["pairwise", "t.biom", "--tree", "tree.nwk", "-o", "d.tsv"], tmp_path)
    assert done.returncode == 0, done.stderr
    got = emdtree.io.read_matrix(tmp_path / "d.tsv")
    tree = emdtree.io.read_tree(tmp_path / "tree.nwk")
    assert list(got.row_ids) == [f"s{i}" for i in range(len(X))]
    np.testing.assert_allclose(got.values, emdtree.pairwise(X, tree=tree, normalize="l1"),
                               rtol=1e-12, atol=1e-12)


def test_dask_options_without_dask_say_which_extra(tmp_path):
    _write_biom(tmp_path / "t.biom", _counts())
    (tmp_path / "tree.nwk").write_text(_TREE)
    for extra, expected in ((["-o", "d.zarr"], "emdtree[zarr]"), (["-o", "d.tsv", "--workers", "2"],
                                                                  "emdtree[distributed]")):
        done = _no_dask(["pairwise", "t.biom", "--tree", "tree.nwk", *extra], tmp_path)
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2 and len(lines) == 1, done.stderr
        assert lines[0].startswith("emdtree: error: ") and expected in lines[0], lines[0]


# ----------------------------------------------------------------------------- command-line options


@pytest.fixture
def table(tmp_path):
    X = _counts(5)
    path = tmp_path / "t.tsv"
    path.write_text("id\t" + "\t".join(_NAMES) + "\n" + "".join(
        f"s{i}\t" + "\t".join(str(v) for v in row) + "\n" for i, row in enumerate(X)))
    (tmp_path / "tree.nwk").write_text(_TREE)
    return tmp_path


@pytest.mark.parametrize("value", ["99999999999999999999999", str(2**63)])
def test_a_count_option_beyond_int64_is_a_range_error(table, capsys, value):
    pytest.importorskip("dask.array")
    assert_input_error(["pairwise", table / "t.tsv", "--tree", table / "tree.nwk", "-o", table / "d.zarr",
                        "--block-size", value], capsys, "--block-size", "at most 9223372036854775807", value)


def test_the_largest_count_option_runs(table, capsys):
    pytest.importorskip("zarr")
    code, _, err = run(["pairwise", table / "t.tsv", "--tree", table / "tree.nwk", "-o", table / "d.zarr",
                        "--block-size", str(2**63 - 1)], capsys)
    assert code == 0, err


def test_an_unreachable_scheduler_fails_fast_naming_it(table, capsys):
    pytest.importorskip("distributed")
    from emdtree.cli import scaleout

    assert scaleout.CONNECT_TIMEOUT_S <= 10
    address = "tcp://127.0.0.1:1"  # nothing listens on port 1
    line = assert_input_error(["pairwise", table / "t.tsv", "--tree", table / "tree.nwk", "-o",
                               table / "d.tsv", "--scheduler", address], capsys, address, "scheduler")
    assert "Traceback" not in line


# ----------------------------------------------------------------------------- the NumPy API


@pytest.mark.parametrize("args, culprit, other", [
    ((np.zeros((3, 4)), np.ones((3, 5)), np.ones((2, 4))), "u_weights", "u_values"),
    ((np.zeros((3, 4)), np.ones((3, 5)), None, np.ones((2, 5))), "v_weights", "u_values"),
    ((np.zeros((3, 4)), np.ones((2, 5))), "v_values", "u_values"),
    ((np.zeros((3, 4)), np.ones((3, 5)), np.ones((3, 4)), np.ones((4, 5))), "v_weights", "u_values"),
])
def test_wasserstein_1d_names_the_argument_whose_batch_shape_is_off(args, culprit, other):
    with pytest.raises(ValueError) as info:
        emdtree.wasserstein_1d(*args)
    message = str(info.value)
    assert message.startswith(f"{culprit} has the batch shape") and f"of {other}" in message, message


@pytest.mark.parametrize("dtype_name", ["bfloat16", "float16"])
def test_two_byte_floats_are_computed_in_float32(dtype_name):
    if dtype_name == "bfloat16":
        dtype = pytest.importorskip("ml_dtypes").bfloat16
    else:
        dtype = np.float16
    rng = np.random.default_rng(1)
    tree = emdtree.Tree.from_newick(_TREE)
    p = rng.integers(0, 4, size=(3, 6)).astype(dtype)
    q = rng.integers(0, 4, size=(3, 6)).astype(dtype)
    p32, q32 = p.astype(np.float32), q.astype(np.float32)  # the same values, exactly
    value = emdtree.emd(p, q, tree, normalize="l1")
    assert value.dtype == np.float32
    np.testing.assert_array_equal(value, emdtree.emd(p32, q32, tree, normalize="l1"))
    v, g = emdtree.emd_value_and_grad(p, q, tree, normalize="l1")
    v32, g32 = emdtree.emd_value_and_grad(p32, q32, tree, normalize="l1")
    assert g.dtype == np.float32
    np.testing.assert_array_equal(g, g32)
    w = emdtree.wasserstein_1d(np.arange(4).astype(dtype), np.array([1, 3, 2]).astype(dtype))
    assert w.dtype == np.float32
    assert w == emdtree.wasserstein_1d(np.arange(4, dtype=np.float32), np.array([1, 3, 2], np.float32))


def test_bfloat16_masses_with_unequal_totals_are_named():
    ml_dtypes = pytest.importorskip("ml_dtypes")
    p = np.array([[0.25, 0.75, 0, 0]], dtype=ml_dtypes.bfloat16)
    with pytest.raises(ValueError, match="must have equal total mass"):
        emdtree.emd(p, p * 3)
    with pytest.raises(ValueError, match=r"p\[0, 0\] = nan is not finite"):
        emdtree.emd(np.array([[np.nan, 1, 0, 0]], dtype=ml_dtypes.bfloat16), p)


def _bf16_rows(ml_dtypes, n_rows, n_bins, seed):
    """bfloat16 distributions whose totals are 1 only to bfloat16's precision."""
    x = np.random.default_rng(seed).random((n_rows, n_bins))
    x = (x / x.sum(axis=1, keepdims=True)).astype(ml_dtypes.bfloat16)
    assert np.abs(x.astype(np.float64).sum(axis=1) - 1).max() > 1e-4  # beyond float32's tolerance
    return x


def test_bfloat16_pairwise_metrics_and_unifrac_are_computed_in_float32():
    # they were refused ("X must hold real numbers, got dtype bfloat16") while emd() computed them
    ml_dtypes = pytest.importorskip("ml_dtypes")
    tree = emdtree.Tree.from_newick(_TREE)
    x = _bf16_rows(ml_dtypes, 9, tree.n_bins, 2)
    x32 = x.astype(np.float32)  # the same values, exactly
    D = emdtree.pairwise(x, tree=tree)
    assert D.dtype == np.float32
    np.testing.assert_array_equal(D, emdtree.pairwise(x32, tree=tree, check_inputs=False))
    with pytest.raises(ValueError, match="equal total mass"):
        emdtree.pairwise(x32, tree=tree)  # float32's tolerance: the bfloat16 check is bfloat16's
    labels = np.arange(9) % tree.n_bins
    want = emdtree.emd(x, np.eye(tree.n_bins)[labels], tree).astype(np.float64).mean()
    assert emdtree.metrics.mean_emd(x, labels, tree) == pytest.approx(want, rel=1e-6)
    report = emdtree.metrics.report(x, labels, tree, ks=(1, 2))
    assert report["accuracy@1"] == emdtree.metrics.topk_accuracy(x32, labels, 1)
    assert report["mean_emd"] == pytest.approx(want, rel=1e-6)
    np.testing.assert_array_equal(emdtree.weighted_unifrac(x * 8, tree),
                                  emdtree.weighted_unifrac(x32 * 8, tree))
    with pytest.raises(ValueError, match=r"pred\[\d\] sums to 2"):
        emdtree.metrics.mean_emd(x * 2, labels, tree)


def test_bfloat16_on_dask_is_computed_in_float32():
    ml_dtypes = pytest.importorskip("ml_dtypes")
    da = pytest.importorskip("dask.array")
    tree = emdtree.Tree.from_newick(_TREE)
    x = _bf16_rows(ml_dtypes, 9, tree.n_bins, 3)
    lazy = da.from_array(x, chunks=(4, -1))
    np.testing.assert_allclose(emdtree.pairwise(lazy, tree=tree).compute(scheduler="sync"),
                               emdtree.pairwise(x, tree=tree), rtol=1e-6, atol=1e-7)
    labels = np.arange(9) % tree.n_bins
    assert emdtree.metrics.mean_emd(lazy, labels, tree) == pytest.approx(
        emdtree.metrics.mean_emd(x, labels, tree), rel=1e-6)


def test_scipy_sparse_tables_are_taken_or_named():
    # they were read as 0-d object arrays: "X must be a 2-D array (n_samples, n_bins), got shape ()"
    sparse = pytest.importorskip("scipy.sparse")
    tree = emdtree.Tree.from_newick(_TREE)
    dense = np.random.default_rng(4).poisson(1.0, (7, tree.n_bins)) + np.eye(7, tree.n_bins, dtype=int)
    for kind in (sparse.csr_matrix, sparse.csc_array):
        X = kind(dense)
        np.testing.assert_array_equal(emdtree.weighted_unifrac(X, tree),
                                      emdtree.weighted_unifrac(dense, tree))
        np.testing.assert_array_equal(emdtree.pairwise(X, X[:3], tree=tree, normalize="l1"),
                                      emdtree.pairwise(dense, dense[:3], tree=tree, normalize="l1"))
        with pytest.raises(TypeError, match=r"pred is a SciPy sparse matrix: pass pred.toarray\(\)"):
            emdtree.metrics.mean_emd(X, np.zeros(7, dtype=int), tree, normalize="l1")
    with pytest.raises(TypeError, match="X of type builtins.object is not an array emdtree understands"):
        emdtree.pairwise(object(), tree=tree)


def test_names_that_differ_in_unicode_normalisation_are_told_apart(tmp_path, capsys):
    import unicodedata

    nfc, nfd = unicodedata.normalize("NFC", "caf\u00e9"), unicodedata.normalize("NFD", "caf\u00e9")
    tree = emdtree.Tree.from_newick(f"(({nfc}:1,b:2):0.5,c:3);")
    with pytest.raises(ValueError) as info:
        emdtree.io.match_features([nfd, "b", "c"], tree)
    message = str(info.value)
    assert ascii(nfd) in message and ascii(nfc) in message and "Unicode normalisation" in message, message
    assert nfd not in message  # the escaped form only: the two look alike when printed
    (tmp_path / "tree.nwk").write_text(f"(({nfc}:1,b:2):0.5,c:3);", encoding="utf-8")
    (tmp_path / "t.tsv").write_text(f"id\t{nfd}\tb\tc\ns0\t1\t2\t3\n", encoding="utf-8")
    assert_input_error(["pairwise", tmp_path / "t.tsv", "--tree", tmp_path / "tree.nwk", "-o",
                        tmp_path / "d.tsv"], capsys, ascii(nfd), "Unicode normalisation", "--drop-missing")


# ----------------------------------------------------------------------------- the command line's samples

_PATHS = {
    "in memory": ["-o", "d.tsv"],
    "dask, zarr": ["-o", "d.zarr", "--block-size", "2"],
    "dask, workers": ["-o", "d.tsv", "--workers", "2", "--block-size", "3"],
}


def _path_args(path):
    needs = {"in memory": None, "dask, zarr": "zarr", "dask, workers": "distributed"}[path]
    if needs:
        pytest.importorskip("dask.array")
        pytest.importorskip(needs)
    return _PATHS[path]


@pytest.mark.parametrize("path", list(_PATHS))
def test_unequal_totals_name_the_samples_on_every_path(table, capsys, monkeypatch, path):
    extra = _path_args(path)
    X = np.ones((7, len(_NAMES)))
    X[5, 2] = 2.0
    (table / "u.tsv").write_text("id\t" + "\t".join(_NAMES) + "\n" + "".join(
        f"s{i}\t" + "\t".join(str(v) for v in row) + "\n" for i, row in enumerate(X)))
    monkeypatch.chdir(table)
    line = assert_input_error(["pairwise", "u.tsv", "--tree", "tree.nwk", "--normalize", "none", *extra],
                              capsys, "sample 's5' sums to 7.0", "sample 's0'", "--normalize l1")
    assert "X[" not in line


@pytest.mark.parametrize("path", list(_PATHS))
def test_a_nan_is_named_by_sample_and_feature_on_every_path(table, capsys, monkeypatch, path):
    extra = _path_args(path)
    X = _counts(7)
    X[5, 4] = np.nan
    # the table's columns in another order than the tree's bins
    order = [4, 0, 5, 1, 3, 2]
    (table / "n.tsv").write_text("id\t" + "\t".join(_NAMES[j] for j in order) + "\n" + "".join(
        f"s{i}\t" + "\t".join(str(row[j]) for j in order) + "\n" for i, row in enumerate(X)))
    monkeypatch.chdir(table)
    line = assert_input_error(["pairwise", "n.tsv", "--tree", "tree.nwk", *extra], capsys,
                              "the count of 't4' in sample 's5' = nan")
    assert "X[" not in line


# ----------------------------------------------------------------------------- an adapter's own softmax


def _engine_value(p, q, applied):
    from emdtree.engine import driver, inputs

    rows = inputs.prepare({"y_pred": p, "y_true": q}, None, -1, True, masses=("y_pred", "y_true"), defer=True,
                          applied=applied)
    return driver.value_grad(rows, 2.0, want_grad=True, check=True)


@pytest.mark.parametrize("n_rows", [2, 20])  # the few-rows check and the general one
def test_after_an_adapters_softmax_the_target_must_be_a_distribution(n_rows):
    from emdtree.engine.normalize import softmax

    rng = np.random.default_rng(2)
    p = softmax(np, rng.normal(size=(n_rows, 10)))
    q = np.full((n_rows, 10), 0.1)
    q[1, 0] = 0.09
    with pytest.raises(ValueError) as info:
        _engine_value(p, q, "softmax")
    message = str(info.value)
    assert "y_true at batch index (1,) sums to " in message and "normalize='softmax'" in message, message
    # the total as summed (0.99 to the last bit or two: the summation order is the kernels')
    total = float(message.split(" sums to ")[1].split(":")[0])
    assert abs(total - 0.99) < 1e-15, message
    assert "normalize='l1'" not in message  # never an option other than the one given
    # float32-made soft labels next to float64 probabilities: checked to float32's precision
    q32 = np.full((n_rows, 10), np.float32(0.1), dtype=np.float32)
    q32[:, 0] = np.float32(0.09999996)
    assert abs(q32.sum(axis=1, dtype=np.float64)[0] - 1) > 1e-8
    value, _ = _engine_value(p, q32, "softmax")
    assert np.all(np.isfinite(value))


@pytest.mark.parametrize("framework", ["torch", "tensorflow"])
def test_the_losses_hint_fits_the_normalisation_given(framework):
    """A target that is not a distribution after the loss's own softmax is named as such (never with a hint
    to pass normalize='l1'), and float32-made soft labels beside float64 logits pass."""
    pytest.importorskip(framework)
    q = np.full((3, 10), 0.1)
    q[1, 0] = 0.09
    q32 = np.full((3, 10), np.float32(0.1), dtype=np.float32)
    q32[:, 0] = np.float32(0.09999996)
    z = np.zeros((3, 10))
    if framework == "torch":
        import torch

        from emdtree.torch import emd_loss

        def call(target):
            return emd_loss(torch.tensor(z), torch.tensor(target), normalize="softmax").numpy()
    else:
        import tensorflow as tf

        from emdtree.tensorflow import emd_loss

        def call(target):
            return emd_loss(tf.constant(target), tf.constant(z), normalize="softmax").numpy()
    with pytest.raises(ValueError) as info:
        call(q)
    message = str(info.value)
    assert "at batch index (1,) sums to " in message and "normalize='softmax'" in message, message
    assert abs(float(message.split(" sums to ")[1].split(":")[0]) - 0.99) < 1e-15, message
    assert "normalize='l1'" not in message
    assert np.all(np.isfinite(call(q32)))
