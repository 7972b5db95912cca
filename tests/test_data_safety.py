"""Nothing lost, nothing silently wrong: overflowing totals, repeated bin names,
float class labels, atomic writes, file-name suffixes, command-line errors, the
memory of ``write_matrix``, trees released by the adapters and the messages of
bad input (one test or more for each)."""

import errno
import gc
import json
import os
import pathlib
import resource
import subprocess
import sys
import tracemalloc
import weakref

import numpy as np
import pytest

import emdtree
from emdtree import Tree, io, metrics
from emdtree.trees import files as _files
from emdtree.frameworks import losses as _losses
from emdtree.kernels.checks import row_totals

from cli_helpers import assert_input_error as one_error_line
from cli_helpers import run as cli

NEWICK = "((a:1,b:2):0.5,c:3);"
OVERFLOW = np.array([[1e308, 1e308, 0], [0.2, 0.3, 0.5], [0.5, 0.25, 0.25]])


def small_tree():
    return Tree.from_parents([-1, 0, 0, 1, 1], [0, 1, 2, 1, 1])


# ----------------------------------------------------------------------------- 1. overflowing row totals


@pytest.mark.parametrize("normalize", ["l1", None])
def test_pairwise_names_the_row_whose_total_overflows(normalize):
    tree = small_tree()
    with pytest.raises(ValueError, match=r"the total mass of X\[0\] overflows float64"):
        emdtree.pairwise(OVERFLOW, tree=tree, normalize=normalize)
    with pytest.raises(ValueError, match=r"the total mass of Y\[0\] overflows float64"):
        emdtree.pairwise(OVERFLOW[1:], OVERFLOW, tree=tree, normalize=normalize)
    with pytest.raises(ValueError, match="overflows float64"):  # as emdtree.emd says
        emdtree.emd(OVERFLOW[0], OVERFLOW[1], tree, normalize=normalize)
    # the valid rows alone agree with emd
    D = emdtree.pairwise(OVERFLOW[1:], tree=tree, normalize="l1")
    assert D[0, 1] == pytest.approx(float(emdtree.emd(OVERFLOW[1], OVERFLOW[2], tree)))


def test_row_totals_sets_every_total_when_a_row_overflows():
    totals = np.full(3, -7.0)
    assert row_totals(OVERFLOW, totals) == -2
    assert totals[0] == np.inf
    np.testing.assert_allclose(totals[1:], [1.0, 1.0])


# ----------------------------------------------------------------------------- 2. repeated bin names


def test_repeated_bin_names_are_refused():
    with pytest.raises(ValueError, match=r"names\[0\] and names\[2\] are both 'a'"):
        Tree.from_parents([-1, 0, 0, 0], names=["a", "b", "a"])
    with pytest.raises(ValueError, match="both read as the name '1'"):  # labels 1 and "1"
        Tree.from_edges([("r", 1), ("r", "1")])
    # node names (internal labels) may repeat
    assert Tree.from_parents([-1, 0, 0], node_names=["x", "x", "y"]).node_names == ("x", "x", "y")


@pytest.mark.parametrize("suffix", [".json", ".npz"])
def test_repeated_bin_names_are_refused_on_load(tmp_path, suffix, capsys):
    tree = Tree.from_parents([-1, 0, 0, 0], names=["a", "b", "c"])
    path = tmp_path / f"t{suffix}"
    tree.save(path)
    if suffix == ".json":
        data = json.loads(path.read_text())
        data["names"] = ["a", "b", "a"]
        path.write_text(json.dumps(data))
    else:
        with np.load(path) as saved:
            arrays = dict(saved)
        arrays["names_json"] = np.array(json.dumps(["a", "b", "a"]))
        np.savez(path, **arrays)
    with pytest.raises(ValueError, match="are both 'a'"):
        Tree.load(path)
    table = tmp_path / "table.tsv"
    table.write_text("sample\ta\tb\ns1\t1\t0\ns2\t0\t1\n")
    one_error_line(["pairwise", table, "--tree", path, "-o", tmp_path / "d.tsv"], capsys, "are both 'a'")
    assert not (tmp_path / "d.tsv").exists()


def test_imagenet_bins_have_unique_names():
    tree = emdtree.datasets.imagenet_wordnet()
    assert len(set(tree.names)) == tree.n_bins
    assert io.match_features(["crane (n03126707)"], tree).tolist() == [517]


# ----------------------------------------------------------------------------- 3. float class labels


def test_tensorflow_refuses_float_labels_that_are_not_class_indices():
    tf = pytest.importorskip("tensorflow")
    from emdtree.tensorflow import EMDLoss, emd_loss

    tree = Tree.chain(3)
    y_pred = tf.constant([[0.5, 0.5, 0.0], [0.0, 1.0, 0.0]])
    for bad, shown in [(0.4, "0.4"), (-0.9, "-0.9"), (1.9, "1.9"), (float("nan"), "nan")]:
        with pytest.raises(ValueError, match=rf"y_true\[0\] = {shown} is not a class index: .*whole numbers"):
            emd_loss(tf.constant([bad, 1.0]), y_pred, tree)
    with pytest.raises(ValueError, match=r"y_true\[1\] = 3.0 is not a class index in \[0, 2\] \(3 bins\)"):
        emd_loss(tf.constant([1.0, 3.0]), y_pred, tree)
    with pytest.raises(tf.errors.InvalidArgumentError, match="is not a class index"):
        tf.function(lambda t, p: emd_loss(t, p, tree))(tf.constant([0.4, 1.0]), y_pred)
    # integral floats, as Keras hands labels over, still work
    expected = emd_loss(tf.constant([1, 2]), y_pred, tree).numpy()
    np.testing.assert_array_equal(emd_loss(tf.constant([1.0, 2.0]), y_pred, tree).numpy(), expected)
    loss = EMDLoss(tree)
    assert float(loss(tf.constant([[1.0], [2.0]]), y_pred)) == pytest.approx(expected.mean())


# ----------------------------------------------------------------------------- 4. atomic writes


def _fail_fsync(monkeypatch):
    def fsync(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(_files.os, "fsync", fsync)


def _leftovers(directory):
    return sorted(p.name for p in pathlib.Path(directory).iterdir() if p.name.endswith(".tmp"))


def test_write_matrix_keeps_the_previous_file_when_the_write_fails(tmp_path, monkeypatch):
    path = tmp_path / "d.tsv"
    io.write_matrix(path, np.array([[0.0, 1.0], [1.0, 0.0]]), ["a", "b"])
    before = path.read_bytes()
    _fail_fsync(monkeypatch)
    with pytest.raises(OSError, match="No space left on device") as info:
        io.write_matrix(path, np.zeros((50, 50)), [f"s{i}" for i in range(50)])
    assert info.value.filename == str(path)  # the error names the file
    assert path.read_bytes() == before
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("suffix", [".json", ".npz"])
def test_tree_save_keeps_the_previous_file_when_the_write_fails(tmp_path, monkeypatch, suffix):
    path = tmp_path / f"t{suffix}"
    Tree.chain(3).save(path)
    before = path.read_bytes()
    _fail_fsync(monkeypatch)
    with pytest.raises(OSError, match="No space left on device"):
        Tree.chain(50).save(path)
    assert path.read_bytes() == before
    assert Tree.load(path) == Tree.chain(3)
    assert _leftovers(tmp_path) == []


def test_atomic_write_fails_cleanly_when_the_content_fails(tmp_path):
    path = tmp_path / "out.txt"
    path.write_text("old")
    with pytest.raises(RuntimeError, match="half way"):
        with _files.atomic_write(path) as fh:
            fh.write("new " * 1000)
            raise RuntimeError("half way")
    assert path.read_text() == "old"
    assert _leftovers(tmp_path) == []


def test_atomic_write_keeps_permissions_and_follows_links(tmp_path):
    path = tmp_path / "d.tsv"
    path.write_text("old")
    path.chmod(0o640)
    link = tmp_path / "link.tsv"
    link.symlink_to(path)
    io.write_matrix(link, np.zeros((1, 1)), ["a"])
    assert link.is_symlink() and path.read_text().startswith("\ta")
    assert path.stat().st_mode & 0o777 == 0o640
    fresh = tmp_path / "fresh.tsv"
    io.write_matrix(fresh, np.zeros((1, 1)), ["a"])
    umask = os.umask(0)
    os.umask(umask)
    assert fresh.stat().st_mode & 0o777 == 0o666 & ~umask
    with pytest.raises(IsADirectoryError):
        io.write_matrix(tmp_path, np.zeros((1, 1)), ["a"])


# the child limits itself (no preexec_fn: forking a process that imported JAX warns)
LIMITED = ("import resource, runpy, signal; "
           "signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "  # write() fails with EFBIG instead of killing
           "resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096)); "
           "runpy.run_module('emdtree', run_name='__main__')")


@pytest.mark.skipif(not hasattr(resource, "RLIMIT_FSIZE"), reason="needs RLIMIT_FSIZE")
def test_cli_output_survives_a_file_size_limit(tmp_path):
    (tmp_path / "t.nwk").write_text(NEWICK)
    rng = np.random.default_rng(0)
    rows = "\n".join(f"s{i}\t" + "\t".join(str(v) for v in rng.integers(1, 9, 3)) for i in range(60))
    (tmp_path / "table.tsv").write_text("sample\ta\tb\tc\n" + rows + "\n")
    out = tmp_path / "d.tsv"
    out.write_text("previous result\n")
    run = subprocess.run([sys.executable, "-c", LIMITED, "pairwise", "table.tsv", "--tree", "t.nwk",
                          "-o", "d.tsv", "-q"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert run.returncode == 2, run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0] == "emdtree: error: File too large: 'd.tsv'", run.stderr
    assert out.read_text() == "previous result\n"
    assert _leftovers(tmp_path) == []


# ----------------------------------------------------------------------------- 5. suffixes in capitals


def test_save_and_load_keep_a_capitalised_suffix(tmp_path, capsys):
    tree = Tree.from_newick(NEWICK)
    for name in ("t.NPZ", "t.Json"):
        tree.save(tmp_path / name)
        assert Tree.load(tmp_path / name) == tree
        assert io.read_tree(tmp_path / name) == tree
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.Json", "t.NPZ"]
    code, _, err = cli(["distance", "0.5,0.5;1,0", "0,1;0,1", "-o", tmp_path / "OUT.NPY"], capsys)
    assert code == 0, err
    assert not (tmp_path / "OUT.NPY.npy").exists()
    np.testing.assert_array_equal(np.load(tmp_path / "OUT.NPY"), [0.5, 1.0])


# ----------------------------------------------------------------------------- 6. command-line errors


def test_cli_damaged_numpy_files_and_trees(tmp_path, capsys):
    for name in ("empty.npy", "empty.npz", "empty.json", "empty.nwk"):
        (tmp_path / name).write_bytes(b"")
    np.savez(tmp_path / "ok.npz", p=np.ones(3))
    data = (tmp_path / "ok.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(data[: len(data) // 2])
    (tmp_path / "list.json").write_text("[1, 2]")
    one_error_line(["distance", tmp_path / "empty.npy", "1,0,0"], capsys, "empty.npy", "empty")
    one_error_line(["distance", tmp_path / "empty.npz", "1,0,0"], capsys, "empty.npz", "empty")
    one_error_line(["distance", tmp_path / "cut.npz", "1,0,0"], capsys, "cut.npz", "not a valid zip archive")
    for tree in ("empty.npz", "empty.json", "empty.nwk", "list.json"):
        one_error_line(["distance", "1,0,0", "0,0,1", "--tree", tmp_path / tree], capsys, tree)
    one_error_line(["distance", "1,0,0", "0,0,1", "--tree", tmp_path / "list.json"], capsys,
                   "a saved tree is a mapping")


def test_cli_reports_a_result_too_large_for_memory(tmp_path, capsys, monkeypatch):
    (tmp_path / "t.nwk").write_text(NEWICK)
    (tmp_path / "table.tsv").write_text("sample\ta\tb\tc\ns1\t1\t2\t0\ns2\t0\t5\t1\n")

    def pairwise(*args, **kwargs):
        raise MemoryError("Unable to allocate 7.28 TiB for an array with shape (1000000, 1000000)")

    monkeypatch.setattr(emdtree, "pairwise", pairwise)
    one_error_line(["pairwise", tmp_path / "table.tsv", "--tree", tmp_path / "t.nwk", "-o",
                    tmp_path / "d.tsv"], capsys, "not enough memory: Unable to allocate 7.28 TiB")


def test_cli_stops_silently_on_a_broken_pipe():
    proc = subprocess.Popen([sys.executable, "-m", "emdtree", "info"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    proc.stdout.close()  # the reader is gone before anything is written, as `| head -0`
    _, err = proc.communicate(timeout=300)
    assert err.decode() == ""
    assert proc.returncode == 141


# ----------------------------------------------------------------------------- 7. write_matrix memory


def test_write_matrix_streams_rows(tmp_path):
    values = np.random.default_rng(0).random((400, 400))
    ids = [f"s{i}" for i in range(400)]
    tracemalloc.start()
    try:
        io.write_matrix(tmp_path / "d.tsv", values, ids)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # the matrix as Python floats and their text would take several times its size
    assert peak < values.nbytes / 4, (peak, values.nbytes)
    np.testing.assert_array_equal(io.read_matrix(tmp_path / "d.tsv").values, values)
    mapped = np.lib.format.open_memmap(tmp_path / "m.npy", mode="w+", dtype=np.float32, shape=(3, 2))
    mapped[:] = [[0, 1], [2, 3], [4, 5.5]]
    io.write_matrix(tmp_path / "m.tsv", mapped, ["a", "b", "c"], ["x", "y"])
    assert io.read_matrix(tmp_path / "m.tsv").values.tolist() == [[0, 1], [2, 3], [4, 5.5]]


# ----------------------------------------------------------------------------- 8. trees held by the adapters


def _collected(make_and_use):
    ref = make_and_use()
    gc.collect()
    return ref() is None


def test_tree_tokens_do_not_keep_trees_alive():
    tokens = []

    def use():
        tree = Tree.chain(50)
        token = _losses.tree_token(tree)
        assert _losses.tree_of(token) is tree
        p = np.full((2, 50), 1 / 50)
        _losses.value_grad(p, np.array([0, 3]), token, 2.0, want_grad=True)
        tokens.append(token)
        return weakref.ref(tree)

    assert all(_collected(use) for _ in range(5))
    assert len(tokens) == 5 and not any(token in _losses._TREES for token in tokens)


def test_equal_trees_share_a_token_while_one_lives():
    a, b = Tree.chain(4), Tree.chain(4)
    assert _losses.tree_token(a) == _losses.tree_token(b) != _losses.tree_token(Tree.chain(5))
    token = _losses.tree_token(a)
    del a
    gc.collect()
    assert _losses.tree_of(token) is b
    del b
    gc.collect()
    with pytest.raises(RuntimeError, match="keep a reference to the Tree"):
        _losses.tree_of(token)


def test_torch_releases_trees_and_keeps_one_for_backward():
    torch = pytest.importorskip("torch")
    from emdtree.torch import emd_loss

    def use():
        tree = Tree.chain(6)
        p = torch.full((3, 6), 1 / 6, requires_grad=True)
        emd_loss(p, torch.tensor([0, 2, 5]), tree).backward()
        return weakref.ref(tree)

    assert _collected(use)
    p = torch.full((3, 6), 1 / 6, requires_grad=True)
    loss = emd_loss(p, torch.tensor([0, 2, 5]), Tree.chain(6))  # the only reference is the graph's
    gc.collect()
    loss.backward()
    expected = emdtree.emd_grad(np.full((3, 6), 1 / 6), np.eye(6)[[0, 2, 5]], Tree.chain(6), 2.0) / 3
    np.testing.assert_allclose(p.grad.numpy(), expected, rtol=1e-6, atol=1e-7)


def test_jax_jitted_function_keeps_its_tree():
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    from emdtree.jax import emd_loss

    f = jax.jit(lambda p, t: emd_loss(p, t, Tree.chain(4)))  # the tree lives only in the trace
    p = jnp.full((2, 4), 0.25, dtype=jnp.float32)
    first = f(p, jnp.array([0, 3]))
    gc.collect()
    np.testing.assert_array_equal(f(p, jnp.array([0, 3])), first)


# ----------------------------------------------------------------------------- 9. messages


def test_saved_tree_messages(tmp_path):
    with pytest.raises(TypeError, match="a saved tree is a mapping .* got list"):
        Tree.from_dict([1, 2])
    good = Tree.chain(3).to_dict()
    with pytest.raises(ValueError, match="version field of a saved tree must be an integer, got 'abc'"):
        Tree.from_dict(good | {"version": "abc"})
    with pytest.raises(ValueError, match="format version 7, newer than 1"):
        Tree.from_dict(good | {"version": 7})
    assert Tree.from_dict({k: v for k, v in good.items() if k != "version"}) == Tree.chain(3)
    with pytest.raises(ValueError, match="the field 'parents' of a saved tree must be a list"):
        Tree.from_dict(good | {"parents": "abc"})
    path = tmp_path / "t.npz"
    Tree.chain(3).save(path)
    with np.load(path) as saved:
        arrays = dict(saved)
    np.savez(path, **(arrays | {"version": np.array(7)}))
    with pytest.raises(ValueError, match="format version 7, newer than 1"):
        Tree.load(path)
    (tmp_path / "t.json").write_bytes(b"\xff\xfe{}")
    with pytest.raises(ValueError, match="is not UTF-8"):
        Tree.load(tmp_path / "t.json")
    (tmp_path / "t.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ValueError, match="nests JSON too deeply"):
        Tree.load(tmp_path / "t.json")


def test_newick_with_a_byte_order_mark_and_file_names_with_parentheses(tmp_path, monkeypatch):
    expected = Tree.from_newick(NEWICK)
    assert Tree.from_newick("\ufeff" + NEWICK) == expected
    (tmp_path / "bom.nwk").write_bytes(b"\xef\xbb\xbf" + NEWICK.encode())
    assert Tree.from_newick(tmp_path / "bom.nwk") == expected
    (tmp_path / "tree(1).nwk").write_text(NEWICK)
    assert Tree.from_newick(str(tmp_path / "tree(1).nwk")) == expected
    assert io.read_tree(str(tmp_path / "tree(1).nwk")) == expected
    monkeypatch.chdir(tmp_path)
    assert Tree.from_newick("tree(1).nwk") == expected
    with pytest.raises(FileNotFoundError, match="no such Newick file"):
        Tree.from_newick("tree(2).nwk")
    (tmp_path / "latin1.nwk").write_bytes("((\xe9:1,b:1),c:1);".encode("latin-1"))
    with pytest.raises(ValueError, match="is not UTF-8"):
        Tree.from_newick(tmp_path / "latin1.nwk")


@pytest.mark.parametrize("framework", ["torch", "jax"])
def test_adapters_name_what_the_normalisation_cannot_take(framework):
    if framework == "torch":
        torch = pytest.importorskip("torch")
        from emdtree.torch import emd_loss

        array, labels = torch.tensor, torch.tensor
    else:
        jax = pytest.importorskip("jax")
        from emdtree.jax import emd_loss

        array, labels = jax.numpy.array, jax.numpy.array
    inf = float("inf")
    x = array([[0.0, 1.0, 2.0], [inf, 0.0, 0.0]])
    with pytest.raises(ValueError, match=r"input\[1, 0\] = inf is not a logit: with normalize='softmax' "
                                         r"input holds logits"):
        emd_loss(x, labels([0, 1]), normalize="softmax")
    with pytest.raises(ValueError, match=r"input\[0, :\] has zero total mass: cannot normalize"):
        emd_loss(array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]]), labels([0, 1]), normalize="l1")
    with pytest.raises(ValueError, match=r"input\[1, 2\] = -1.0 is negative: entries of input must be"):
        emd_loss(array([[1.0, 0.0, 0.0], [1.0, 2.0, -1.0]]), labels([0, 1]), normalize="l1")
    with pytest.raises(ValueError, match=r"input\[:, 1\] has zero total mass"):  # the bin axis first
        emd_loss(array([[1.0, 0.0], [1.0, 0.0], [0.0, 0.0]]), labels([0, 1]), normalize="l1", axis=0)


def test_mean_emd_names_float_labels():
    pred = np.full((10, 4), 0.25)
    with pytest.raises(TypeError, match=r"target has the shape of class indices, \(10,\), but dtype float64"):
        metrics.mean_emd(pred, np.arange(10) % 4 + 0.5, Tree.chain(4))


@pytest.mark.parametrize("framework", ["torch", "jax"])
def test_adapters_check_a_float32_target_to_its_own_precision(framework):
    rng = np.random.default_rng(1)
    p = rng.random((4, 300))
    p /= p.sum(axis=1, keepdims=True)
    q = rng.random((4, 300)).astype(np.float32)
    q /= q.sum(axis=1, keepdims=True)
    tree = Tree.chain(300)
    expected = emdtree.emd(p, q, tree, 2.0)
    if framework == "torch":
        torch = pytest.importorskip("torch")
        from emdtree.torch import emd_loss

        value = emd_loss(torch.tensor(p), torch.tensor(q), tree, reduction="none").numpy()
    else:
        jax = pytest.importorskip("jax")
        from emdtree.jax import emd_loss

        with jax.enable_x64(True):
            value = np.asarray(emd_loss(jax.numpy.asarray(p), jax.numpy.asarray(q), tree))
    np.testing.assert_allclose(value, expected, rtol=1e-10)


def test_cli_names_options_as_flags(tmp_path, capsys):
    (tmp_path / "t.nwk").write_text(NEWICK)
    (tmp_path / "table.tsv").write_text("sample\ta\tb\tc\ns1\t1\t2\t0\ns2\t0\t5\t1\n")
    line = one_error_line(["pairwise", tmp_path / "table.tsv", "--tree", tmp_path / "t.nwk", "-o",
                           tmp_path / "d.tsv", "--normalize", "none"], capsys, "pass --normalize l1")
    assert "normalize='l1'" not in line
    line = one_error_line(["distance", "1,0,0", "0,0,2"], capsys, "--normalize l1")
    assert "normalize='l1'" not in line


def test_cli_names_a_bad_count_by_sample_and_feature(tmp_path, capsys):
    (tmp_path / "t.nwk").write_text(NEWICK)
    (tmp_path / "table.tsv").write_text("sample\tc\ta\tb\ns1\t1\t2\t0\ns2\t0\t1e999\t1\n")
    argv = ["pairwise", tmp_path / "table.tsv", "--tree", tmp_path / "t.nwk", "-o", tmp_path / "d.tsv"]
    one_error_line(argv, capsys, "the count of 'a' in sample 's2' = inf is not finite")
    (tmp_path / "table.tsv").write_text("sample\tc\ta\tb\ns1\t1\t2\t-3\ns2\t0\t1\t1\n")
    one_error_line(argv, capsys, "the count of 'b' in sample 's1' = -3.0 is negative")


def test_damaged_biom_file_is_named(tmp_path, capsys):
    pytest.importorskip("biom")
    (tmp_path / "t.nwk").write_text(NEWICK)
    (tmp_path / "table.biom").write_bytes(b'{"id": "x", "format": "Biological Observation Matrix 1.0.0"')
    with pytest.raises(ValueError, match="cannot read .*table.biom' as a BIOM table"):
        io.read_table(tmp_path / "table.biom")
    one_error_line(["pairwise", tmp_path / "table.biom", "--tree", tmp_path / "t.nwk", "-o",
                    tmp_path / "d.tsv"], capsys, "table.biom", "BIOM")


def test_an_overflowing_emd_is_an_error():
    p, q = np.array([0, 0, 0, 2.0]), np.array([2.0, 0, 0, 0])
    tree = Tree.chain(4)
    for f in (emdtree.emd, emdtree.emd_value_and_grad):
        with pytest.raises(ValueError, match=r"EMD\^rho overflows float64 with rho = 1e\+06"):
            f(p, q, tree, 1e6)
    with pytest.raises(ValueError, match="the distance between samples 0 and 1 overflows float64"):
        emdtree.pairwise(np.stack([p, q]), tree=tree, rho=1e6)
    with pytest.raises(ValueError, match="the distance between samples 0 and 1 overflows float64"):
        emdtree.pairwise(np.stack([p, q]) * 1e200, tree=tree, rho=2.0)
    assert float(emdtree.emd(p / 2, q / 2, tree, 1e6)) == 3.0  # |phi| <= 1 does not overflow
    torch = pytest.importorskip("torch")
    from emdtree.torch import emd_loss

    with pytest.raises(ValueError, match="overflows float64"):
        emd_loss(torch.tensor(p[None]), torch.tensor(q[None]), tree, rho=1e6)


def test_masked_arrays_are_refused():
    mask = [False, False, True]
    p = np.ma.array([0.5, 0.5, 0.0], mask=mask)
    q = np.array([0.0, 0.5, 0.5])
    with pytest.raises(TypeError, match=r"p is a masked array and p\[2\] is masked: .*p.filled\(0\)"):
        emdtree.emd(p, q)
    with pytest.raises(TypeError, match=r"X is a masked array and X\[0, 2\] is masked"):
        emdtree.pairwise(np.ma.array([q, q], mask=[mask, mask]))
    with pytest.raises(TypeError, match=r"pred is a masked array"):
        metrics.mean_emd(np.ma.array([q], mask=[mask]), np.array([0]), Tree.chain(3))
    # a masked array without masked entries is an array
    assert float(emdtree.emd(np.ma.array([0.5, 0.5, 0.0]), q)) == 1.0
