"""The ``emdtree`` command line (``emdtree/__main__.py`` and ``emdtree/cli/``)."""

import importlib.metadata
import json
import pathlib
import subprocess
import sys
import tomllib

import numba
import numpy as np
import pytest

import emdtree
from emdtree import Tree, io, metrics
from emdtree.cli import commands as _cli_commands, info as _cli_info
from emdtree.__main__ import main

from cli_helpers import assert_input_error, run

NEWICK = "((a:1,b:2):0.5,c:3);"


@pytest.fixture
def files(tmp_path):
    """A small Newick tree, a count table and predictions with labels."""
    (tmp_path / "t.nwk").write_text(NEWICK)
    (tmp_path / "table.tsv").write_text("sample\tc\ta\tb\ns1\t1\t2\t0\ns2\t0\t5\t1\ns3\t3\t0\t0\n")
    rng = np.random.default_rng(0)
    pred = rng.random((40, 3)) + 0.01
    pred /= pred.sum(axis=1, keepdims=True)
    np.save(tmp_path / "pred.npy", pred)
    np.save(tmp_path / "labels.npy", rng.integers(0, 3, 40))
    return tmp_path


# ----------------------------------------------------------------------------- demo, info, arguments


def test_demo(capsys):
    code, out, _ = run(["demo", "--batch", "64", "--seed", "3"], capsys)
    assert code == 0
    assert "ImageNet WordNet tree: 1371 nodes, 1000 bins" in out
    # one-hot EMD equals the tree distance: tabby -> tiger cat is 2 edges
    line = next(s for s in out.splitlines() if s.split()[:3] == ["tabby", "tiger", "cat"])
    assert line.split()[3:6] == ["2", "2", "2"]
    assert "airliner" in out
    good = next(s for s in out.splitlines() if s.strip().startswith("good:")).split()
    bad = next(s for s in out.splitlines() if s.strip().startswith("bad:")).split()
    # columns: top-1, top-5, severity, dist@5, mean EMD, mean EMD^2
    assert good[-6] == bad[-6]  # same accuracy
    assert float(good[-4]) < float(bad[-4])  # milder mistakes
    assert float(good[-2]) < float(bad[-2]) and float(good[-1]) < float(bad[-1])
    assert "EMD^2 value and gradient for the batch of 64 (float32)" in out


def test_demo_is_the_default(capsys):
    code, out, _ = run(["--batch", "16"], capsys)
    assert code == 0 and "a batch of 16 images" in out


def test_info(capsys):
    code, out, _ = run(["info"], capsys)
    assert code == 0
    for key in ("emdtree", "numpy", "numba", "scipy", "Numba threading layer", "Numba threads",
                "numba-cuda", "CUDA GPU", "Numba cache", "CPU", "Kernels' vectors"):
        assert any(line.startswith(key + " ") for line in out.splitlines()), key
    assert any(line.startswith("Kernels' vectors") and "-bit vectors" in line for line in out.splitlines())
    assert "Optional packages:" in out
    for dist in ("torch", "dask", "tqdm", "biom-format"):
        assert any(line.split()[:1] == [dist] for line in out.splitlines()), dist


def test_info_without_numba_cuda(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "numba.cuda", None)  # as if numba-cuda were absent
    monkeypatch.delattr(numba, "cuda", raising=False)
    package, gpu = _cli_info.cuda_status()
    assert gpu.startswith("no (ModuleNotFoundError")
    code, out, _ = run(["info"], capsys)
    assert code == 0 and any(line.startswith("CUDA GPU") and " no (" in line for line in out.splitlines())


@pytest.mark.parametrize("argv", [["--help"], ["evaluate", "--help"], ["--version"]])
def test_help_and_version(argv, capsys):
    code, out, err = run(argv, capsys)
    assert code == 0 and err == ""
    assert ("usage: emdtree" in out) or out.startswith("emdtree ")


@pytest.mark.parametrize("argv", [["demo", "--batch", "0"], ["demo", "--seed", "x"], ["nonsense"],
                                  ["distance", "1,0"], ["evaluate", "p.npy", "l.npy"],
                                  ["distance", "1,0", "0,1", "--rho", "0.5"],
                                  ["pairwise", "t.tsv", "--tree", "t.nwk"]])
def test_bad_arguments(argv, capsys):
    code, out, err = run(argv, capsys)
    assert code == 2 and out == ""
    err = err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("emdtree: error:")


def test_threads_option(capsys):
    before = numba.get_num_threads()
    try:
        code, out, _ = run(["--threads", "1", "info"], capsys)
        assert code == 0 and "Numba threads          1 " in out
        code, out, _ = run(["info", "--threads", "1", "--quiet"], capsys)
        assert code == 0
    finally:
        numba.set_num_threads(before)
    assert_input_error(["--threads", str(numba.config.NUMBA_NUM_THREADS + 1), "info"], capsys,
                       "at most", "NUMBA_NUM_THREADS")


def test_bugs_are_not_swallowed(monkeypatch):
    def broken(args, out):
        raise RuntimeError("a bug")

    monkeypatch.setattr(_cli_commands, "distance", broken)
    with pytest.raises(RuntimeError, match="a bug"):
        main(["distance", "1,0", "0,1"])


def test_console_script_entry_point():
    root = pathlib.Path(__file__).resolve().parents[1]
    with open(root / "pyproject.toml", "rb") as fh:
        scripts = tomllib.load(fh)["project"]["scripts"]
    assert scripts["emdtree"] == "emdtree.__main__:main"
    found = [e for e in importlib.metadata.entry_points(group="console_scripts") if e.name == "emdtree"]
    if found:  # installed (editable or not)
        assert found[0].value == "emdtree.__main__:main" and found[0].load() is main


# ----------------------------------------------------------------------------- distance


def test_distance_inline(capsys):
    code, out, _ = run(["distance", "0.5,0.5,0,0", "0,0,0.5,0.5"], capsys)
    assert code == 0 and out == "2.0\n"
    code, out, _ = run(["distance", "1,0;0,1", "0,1", "--rho", "2"], capsys)
    assert code == 0 and out.split() == ["1.0", "0.0"]


def test_distance_dash_output_is_stdout(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, _ = run(["distance", "1,0;0,1", "0,1", "-o", "-"], capsys)
    assert code == 0 and out.split() == ["1.0", "0.0"]
    assert not (tmp_path / "-").exists()


def test_distance_files_and_output(files, capsys):
    rng = np.random.default_rng(1)
    p = rng.random((4, 3))
    q = rng.random((4, 3))
    p, q = p / p.sum(1, keepdims=True), q / q.sum(1, keepdims=True)
    tree = Tree.from_newick(NEWICK)
    want = emdtree.emd(p, q, tree, rho=1.5)
    np.save(files / "p.npy", p)
    np.savetxt(files / "q.csv", q, delimiter=",", fmt="%.17g")
    np.savez(files / "both.npz", p=p, q=q)
    code, out, _ = run(["distance", files / "p.npy", files / "q.csv", "--tree", files / "t.nwk",
                        "--rho", "1.5"], capsys)
    assert code == 0
    np.testing.assert_array_equal(np.array(out.split(), dtype=float), want)  # shortest repr: exact
    code, out, _ = run(["distance", f"{files / 'both.npz'}:p", f"{files / 'both.npz'}:q", "--tree",
                        files / "t.nwk", "--rho", "1.5", "-o", files / "d.npy"], capsys)
    assert code == 0 and out == ""
    np.testing.assert_array_equal(np.load(files / "d.npy"), want)
    # bins along axis 0, counts normalised
    code, out, _ = run(["distance", files / "p.npy", files / "q.csv", "--tree", files / "t.nwk"], capsys)
    np.savetxt(files / "pt.tsv", 3 * p.T, delimiter="\t")
    code, out2, _ = run(["distance", files / "pt.tsv", files / "q.csv", "--tree", files / "t.nwk"], capsys)
    assert code == 2  # (3, 4) against (4, 3): shapes do not broadcast
    np.save(files / "qt.npy", q.T)
    code, out2, _ = run(["distance", files / "pt.tsv", files / "qt.npy", "--tree", files / "t.nwk",
                         "--axis", "0", "--normalize", "l1", "-o", files / "d.tsv"], capsys)
    assert code == 0
    np.testing.assert_allclose(np.loadtxt(files / "d.tsv"), np.array(out.split(), dtype=float), rtol=1e-14)


def test_distance_input_errors(files, capsys):
    tree = files / "t.nwk"
    assert_input_error(["distance", files / "missing.npy", "0,1"], capsys, "P: no such file", "missing.npy")
    assert_input_error(["distance", "1,0", "0,1,0"], capsys, "shapes do not broadcast")
    assert_input_error(["distance", "1,0,0", "0,1,1", "--tree", tree], capsys, "equal total mass")
    assert_input_error(["distance", "1,0", "0,1", "--tree", tree], capsys, "bin axis has length 2",
                       "3 bins")
    (files / "bad.nwk").write_text("((a:1,b:2):0.5,c:3;")
    assert_input_error(["distance", "1,0,0", "0,1,0", "--tree", files / "bad.nwk"], capsys, "bad.nwk")
    assert_input_error(["distance", "1,0,0", "0,1,0", "--tree", files / "none.nwk"], capsys,
                       "no such tree file")
    np.savez(files / "two.npz", a=np.ones(2), b=np.ones(2))
    assert_input_error(["distance", files / "two.npz", "0,1"], capsys, "holds 2 arrays (a, b)", ":NAME")
    (files / "words.csv").write_text("1,x\n")
    assert_input_error(["distance", files / "words.csv", "0,1"], capsys, "P: cannot read")
    assert_input_error(["distance", "1,0;1", "0,1"], capsys, "inline rows have different lengths")
    assert_input_error(["distance", "--", "-1,2", "0,1"], capsys, "p[0] = -1.0 is negative")


# ----------------------------------------------------------------------------- pairwise


def test_pairwise(files, capsys):
    code, out, err = run(["pairwise", files / "table.tsv", "--tree", files / "t.nwk", "-o", files / "D.tsv"],
                         capsys)
    assert code == 0 and out == "" and err == ""
    matrix = io.read_matrix(files / "D.tsv")
    assert matrix.row_ids == matrix.col_ids == ["s1", "s2", "s3"]
    tree = Tree.from_newick(NEWICK)  # bins a, b, c
    counts = np.array([[2, 0, 1], [5, 1, 0], [0, 0, 3]], dtype=float)
    props = counts / counts.sum(1, keepdims=True)
    want = np.array([[float(emdtree.emd(x, y, tree)) for y in props] for x in props])
    np.testing.assert_allclose(matrix.values, want, rtol=1e-14, atol=1e-15)
    # one feature per row, rho = 2
    (files / "features.tsv").write_text("feature\ts1\ts2\ts3\nc\t1\t0\t3\na\t2\t5\t0\nb\t0\t1\t0\n")
    code, _, _ = run(["pairwise", files / "features.tsv", "--transpose", "--tree", files / "t.nwk",
                      "--rho", "2",
                      "-o", files / "D2.tsv"], capsys)
    assert code == 0
    want2 = np.array([[float(emdtree.emd(x, y, tree, rho=2)) for y in props] for x in props])
    np.testing.assert_allclose(io.read_matrix(files / "D2.tsv").values, want2, rtol=1e-14, atol=1e-15)


def test_pairwise_errors(files, capsys):
    (files / "extra.tsv").write_text("sample\tc\ta\tzz\ns1\t1\t2\t4\ns2\t0\t5\t1\n")
    args = ["--tree", files / "t.nwk", "-o", files / "D.tsv"]
    assert_input_error(["pairwise", files / "extra.tsv"] + args, capsys, "'zz'", "--drop-missing")
    code, _, _ = run(["pairwise", files / "extra.tsv", "--drop-missing"] + args, capsys)
    assert code == 0
    assert io.read_matrix(files / "D.tsv").values[0, 1] == pytest.approx(
        float(emdtree.emd([2 / 3, 0, 1 / 3], [1, 0, 0], Tree.from_newick(NEWICK))))
    assert_input_error(["pairwise", files / "table.tsv", "--normalize", "none"] + args, capsys,
                       "equal total")
    assert_input_error(["pairwise", files / "nothing.tsv"] + args, capsys, "no such table file")
    (files / "bad.nwk").write_text("((a:1,b:2):0.5,c:3;")
    assert_input_error(["pairwise", files / "table.tsv", "--tree", files / "bad.nwk", "-o", files / "D.tsv"],
                       capsys, "bad.nwk")
    (files / "ragged.tsv").write_text("sample\tc\ta\ns1\t1\n")
    assert_input_error(["pairwise", files / "ragged.tsv"] + args, capsys, "ragged.tsv")


# ----------------------------------------------------------------------------- evaluate


def test_evaluate(files, capsys):
    tree = Tree.from_newick(NEWICK)
    pred, labels = np.load(files / "pred.npy"), np.load(files / "labels.npy")
    base = ["evaluate", files / "pred.npy", files / "labels.npy", "--tree", files / "t.nwk", "--k", "1", "2"]
    code, out, _ = run(base + ["--json"], capsys)
    assert code == 0
    want = metrics.report(pred, labels, tree, ks=(1, 2))
    assert json.loads(out) == pytest.approx(want, rel=1e-15)
    code, out, _ = run(base + ["--chunk-size", "7", "--per-class", files / "pc.tsv"], capsys)
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "40 predictions over 3 classes; tree distances: path length"
    table = dict(line.strip().rsplit(None, 1) for line in lines[1:])
    assert int(table["samples"]) == 40
    assert float(table["top-2 accuracy"]) == pytest.approx(want["accuracy@2"], rel=1e-5)
    assert float(table["mistake severity"]) == pytest.approx(want["mistake_severity"], rel=1e-5)
    assert float(table["mean EMD"]) == pytest.approx(want["mean_emd"], rel=1e-5)
    rows = [line.split("\t") for line in (files / "pc.tsv").read_text().splitlines()]
    header, rows = rows[0], rows[1:]
    assert header[:3] == ["class", "name", "n_samples"] and [r[1] for r in rows] == ["a", "b", "c"]
    per = metrics.report(pred, labels, tree, ks=(1, 2), per_class=True)["per_class"]
    col = header.index("hierarchical_distance@2")
    np.testing.assert_allclose([float(r[col]) for r in rows], per["hierarchical_distance@2"], rtol=1e-14)
    # text labels, LCA heights
    np.savetxt(files / "labels.txt", labels, fmt="%d")
    code, out, _ = run(["evaluate", files / "pred.npy", files / "labels.txt", "--tree", files / "t.nwk",
                        "--json", "--k", "1", "--distance", "lca_height", "--rho", "2"], capsys)
    want = metrics.report(pred, labels, tree, ks=(1,), distance="lca_height", rho=2)
    assert code == 0 and json.loads(out) == pytest.approx(want, rel=1e-15)


def test_evaluate_on_imagenet(tmp_path, capsys):
    rng = np.random.default_rng(2)
    pred = rng.random((30, 1000)).astype(np.float32)
    pred /= pred.sum(axis=1, keepdims=True)
    labels = rng.integers(0, 1000, 30)
    np.save(tmp_path / "pred.npy", pred)
    np.save(tmp_path / "labels.npy", labels)
    code, out, _ = run(["evaluate", tmp_path / "pred.npy", tmp_path / "labels.npy", "--tree", "imagenet",
                        "--json", "--quiet"], capsys)
    assert code == 0
    want = metrics.report(pred, labels, emdtree.datasets.imagenet_wordnet())
    assert json.loads(out) == pytest.approx(want, rel=1e-15)


def test_evaluate_input_errors(files, capsys):
    pred = np.load(files / "pred.npy")
    base = ["--tree", files / "t.nwk"]
    labels = np.load(files / "labels.npy")
    labels[17] = 3
    np.save(files / "bad_labels.npy", labels)
    assert_input_error(["evaluate", files / "pred.npy", files / "bad_labels.npy"] + base, capsys,
                       "labels[17] = 3 is not a class index")
    np.save(files / "short.npy", labels[:39])
    assert_input_error(["evaluate", files / "pred.npy", files / "short.npy"] + base, capsys,
                       "labels must have shape (n_samples,) = (40,)")
    assert_input_error(["evaluate", files / "pred.npy", files / "labels.npy", "--k", "4"] + base, capsys,
                       "k = 4", "(3)")
    bad = pred.copy()
    bad[33, 1] = np.nan
    np.save(files / "nan.npy", bad)
    assert_input_error(["evaluate", files / "nan.npy", files / "labels.npy", "--chunk-size", "8"] + base,
                       capsys, "pred[33, 1] is NaN")
    np.save(files / "logits.npy", np.log(pred))
    assert_input_error(["evaluate", files / "logits.npy", files / "labels.npy"] + base, capsys,
                       "is negative", "not logits")
    np.save(files / "wide.npy", np.full((40, 4), 0.25))
    assert_input_error(["evaluate", files / "wide.npy", files / "labels.npy"] + base, capsys,
                       "4 bins", "tree has 3 bins")
    np.savetxt(files / "frac.txt", np.full(40, 0.5))
    assert_input_error(["evaluate", files / "pred.npy", files / "frac.txt"] + base, capsys,
                       "LABELS[0] = 0.5 is not a class index")
    assert_input_error(["evaluate", files / "gone.npy", files / "labels.npy"] + base, capsys,
                       "PRED: no such file")


# ----------------------------------------------------------------------------- progress bars


def test_progress_bar_only_on_a_terminal(monkeypatch):
    tqdm = pytest.importorskip("tqdm")
    assert _cli_commands.progress_bar(10, "x", quiet=False) is None  # pytest captures stderr
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    assert _cli_commands.progress_bar(10, "x", quiet=True) is None
    bar = _cli_commands.progress_bar(10, "x", quiet=False)
    assert isinstance(bar, tqdm.tqdm)
    bar.close()
    monkeypatch.setitem(sys.modules, "tqdm", None)  # as if tqdm were not installed
    assert _cli_commands.progress_bar(10, "x", quiet=False) is None


def test_evaluate_with_progress_bar(files, capsys, monkeypatch):
    pytest.importorskip("tqdm")
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    code, out, err = run(["evaluate", files / "pred.npy", files / "labels.npy", "--tree", files / "t.nwk",
                          "--k", "1", "--chunk-size", "10", "--json"], capsys)
    assert code == 0 and json.loads(out)["n_samples"] == 40
    assert "evaluate" in err  # the bar went to stderr


# ----------------------------------------------------------------------------- subprocesses


def test_module_runs():
    result = subprocess.run([sys.executable, "-m", "emdtree", "demo", "--batch", "32"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "Same accuracy, different EMD" in result.stdout


def test_module_exit_status_on_bad_input(tmp_path):
    result = subprocess.run([sys.executable, "-m", "emdtree", "evaluate", str(tmp_path / "none.npy"),
                             str(tmp_path / "none.npy"), "--tree", "imagenet"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert result.stdout == ""
    missing = str(tmp_path / "none.npy")
    assert result.stderr.splitlines() == [
        f"emdtree: error: PRED: no such file {missing!r} (nor inline numbers such as 0.5,0.5)"]
