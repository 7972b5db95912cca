"""emdtree.weighted_unifrac and ``emdtree unifrac``: scikit-bio's weighted UniFrac, both variants."""

import io as text_io
import os
import warnings

import numpy as np
import pytest
from trees import random_tree

import emdtree
from emdtree import Tree
from emdtree.distances.unifrac import root_distances
from emdtree.trees.newick import to_newick

from cli_helpers import assert_input_error, run

NEWICK = "((a:1,b:2):0.5,c:3);"


def _skbio():
    return pytest.importorskip("skbio")


def _skbio_unifrac(C, taxa, newick, normalized):
    skbio = _skbio()
    from skbio.diversity import beta_diversity

    sk_tree = skbio.TreeNode.read(text_io.StringIO(newick))
    ids = [f"s{i}" for i in range(C.shape[0])]
    with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)  # 0 / 0 of two samples at root distance 0
        return beta_diversity("weighted_unifrac", C, ids, taxa=list(taxa), tree=sk_tree,
                              normalized=normalized).data


def _on_bins(C, taxa, tree):
    X = np.zeros((C.shape[0], tree.n_bins))
    X[:, emdtree.io.match_features(taxa, tree)] = C
    return X


def _random_newick(rng, n_tips):
    """A random rooted tree (two children at the root, as scikit-bio wants a rooted tree) with
    zero-length branches, its tip names and its emdtree Tree."""
    parents, weights, _ = random_tree(rng, 2 * n_tips, zero_weights=True)
    par, w = parents.tolist(), weights.tolist()
    root = par.index(-1)
    kids = [v for v, p in enumerate(par) if p == root]
    if len(kids) > 2:
        par.append(root)
        w.append(float(rng.uniform(0, 1)))
        for v in kids[1:]:
            par[v] = len(par) - 1
    par, w = np.array(par), np.array(w)
    has_child = np.zeros(par.size, dtype=bool)
    has_child[par[par >= 0]] = True
    tips = np.flatnonzero(~has_child)
    names = [f"otu{i}" for i in range(tips.size)]
    newick = to_newick(par, w, tips, names, None)
    return newick, names, Tree.from_newick(newick)


def _random_counts(rng, taxa, n_samples):
    """Sparse counts: a quarter of the taxa absent from every sample, some samples of one taxon,
    one empty sample."""
    C = rng.poisson(0.5, size=(n_samples, len(taxa))) * (rng.random((n_samples, len(taxa))) < 0.3)
    C[:, : len(taxa) // 4] = 0
    C[np.arange(n_samples), rng.integers(len(taxa) // 4, len(taxa), n_samples)] += 1
    C[1] = 0
    C[1, len(taxa) // 2] = 7  # one taxon
    C[2] = 0
    C[2, -1] = 1  # one taxon, one read
    C[3] = 0  # no counts at all
    return C


def _assert_skbio_equal(D, ref, rtol=1e-12):
    ref = np.where(np.isnan(ref), 0.0, ref)  # scikit-bio's 0 / 0, which emdtree takes as 0
    assert np.array_equal(D == 0, ref == 0)
    nonzero = ref != 0
    np.testing.assert_allclose(D[nonzero], ref[nonzero], rtol=rtol, atol=0)


# ----------------------------------------------------------------------------- against scikit-bio


@pytest.mark.parametrize("normalized", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_skbio_random_trees(seed, normalized):
    rng = np.random.default_rng(seed)
    newick, names, tree = _random_newick(rng, 40)
    # the table lists most tips, in a shuffled order: the others get zero counts
    taxa = [names[i] for i in rng.permutation(len(names))[: len(names) - 4]]
    C = _random_counts(rng, taxa, 15)
    ref = _skbio_unifrac(C, taxa, newick, normalized)
    D = emdtree.weighted_unifrac(_on_bins(C, taxa, tree), tree, normalized=normalized)
    _assert_skbio_equal(D, ref)
    # the same through a Table, which names its features
    table = emdtree.io.Table([f"s{i}" for i in range(C.shape[0])], taxa, C.astype(np.float64))
    np.testing.assert_array_equal(emdtree.weighted_unifrac(table, tree, normalized=normalized), D)


@pytest.mark.parametrize("normalized", [False, True])
def test_skbio_zero_length_tips(normalized):
    """Samples whose counts all lie at distance 0 from the root: scikit-bio's 0 / 0 is 0 here."""
    newick = "((a:0,b:0):0,(c:1,d:2):0.5);"
    tree = Tree.from_newick(newick)
    C = np.array([[1, 0, 0, 0], [0, 3, 0, 0], [2, 1, 0, 0], [0, 0, 1, 1], [1, 0, 0, 1], [0, 0, 0, 0]])
    ref = _skbio_unifrac(C, "abcd", newick, normalized)
    D = emdtree.weighted_unifrac(C, tree, normalized=normalized)
    _assert_skbio_equal(D, ref)
    assert D[0, 1] == D[0, 5] == 0.0


def _tiny_test_data():
    skbio = _skbio()
    return os.path.join(os.path.dirname(skbio.__file__), "diversity", "beta", "tests", "data", "qiime-191-tt")


@pytest.mark.parametrize("normalized", [False, True])
def test_skbio_tiny_test_data(normalized):
    """scikit-bio's copy of QIIME 1.9.1's tiny test, with its sample without counts put back."""
    data = _tiny_test_data()
    tree = emdtree.io.read_tree(os.path.join(data, "tree.nwk"))
    table = emdtree.io.read_table(os.path.join(data, "otu-table.tsv"))
    ids = table.sample_ids + ["not16S.1"]
    C = np.vstack([table.counts, np.zeros(len(table.feature_names))]).astype(np.int64)
    with open(os.path.join(data, "tree.nwk"), encoding="utf-8") as fh:
        newick = fh.read()
    ref = _skbio_unifrac(C, table.feature_names, newick, normalized)
    D = emdtree.weighted_unifrac(emdtree.io.Table(ids, table.feature_names, C), tree, normalized=normalized)
    _assert_skbio_equal(D, ref)
    # QIIME 1.9.1's own results (12 significant digits); its unnormalised UniFrac puts a sample
    # without counts at 1 from every other, where scikit-bio (and emdtree) give its mean tip depth
    name = "weighted_normalized_unifrac_dm.txt" if normalized else "weighted_unifrac_dm.txt"
    qiime = emdtree.io.read_matrix(os.path.join(data, name))
    keep = ids if normalized else table.sample_ids
    idx = [qiime.row_ids.index(s) for s in keep]
    np.testing.assert_allclose(D[: len(keep), : len(keep)], qiime.values[np.ix_(idx, idx)], rtol=1e-9,
                               atol=1e-12)


# ----------------------------------------------------------------------------- properties


def _oracle(X, tree, normalized):
    """Weighted UniFrac from its definition: emd of the proportions, root distances by walking up."""
    d = np.zeros(tree.n_bins)
    for k, node in enumerate(tree.bins.tolist()):
        while tree.parents[node] >= 0:
            d[k] += tree.weights[node]
            node = int(tree.parents[node])
    n = X.shape[0]
    totals = X.sum(axis=1)
    P = np.divide(X, totals[:, None], out=np.zeros(X.shape), where=totals[:, None] > 0)
    u = P @ d
    D = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            if totals[i] > 0 and totals[j] > 0:
                D[i, j] = float(emdtree.emd(P[i], P[j], tree))
            else:
                D[i, j] = u[i] + u[j]  # one of them is 0
            if normalized:
                D[i, j] = D[i, j] / (u[i] + u[j]) if u[i] + u[j] > 0 else 0.0
    return D


@pytest.mark.parametrize("normalized", [False, True])
@pytest.mark.parametrize("seed", [0, 1])
def test_bins_on_inner_nodes_match_the_definition(seed, normalized):
    rng = np.random.default_rng(seed)
    parents, weights, bins = random_tree(rng, 30, bins_on_internal=True, zero_weights=True)
    tree = Tree(parents, weights, bins)
    X = rng.poisson(1.0, size=(9, tree.n_bins)) * (rng.random((9, tree.n_bins)) < 0.4)
    X[0] = 0
    D = emdtree.weighted_unifrac(X, tree, normalized=normalized)
    np.testing.assert_allclose(D, _oracle(X, tree, normalized), rtol=1e-12, atol=1e-14)


def test_root_distances():
    rng = np.random.default_rng(5)
    parents, weights, bins = random_tree(rng, 200, bins_on_internal=True)
    tree = Tree(parents, weights, bins)
    want = []
    for node in tree.bins.tolist():
        total = 0.0
        while tree.parents[node] >= 0:
            total += tree.weights[node]
            node = int(tree.parents[node])
        want.append(total)
    np.testing.assert_allclose(root_distances(tree), want, rtol=1e-14)
    chain = Tree.chain(5, spacing=[1, 2, 3, 4])  # bins on every node, the root among them
    assert np.sort(root_distances(chain)).tolist() in ([0, 1, 3, 6, 10], [0, 4, 7, 9, 10])  # rooted at an end


@pytest.mark.parametrize("normalized", [False, True])
def test_symmetric_zero_diagonal_and_range(normalized):
    rng = np.random.default_rng(3)
    _, names, tree = _random_newick(rng, 50)
    C = _random_counts(rng, names, 40)
    D = emdtree.weighted_unifrac(_on_bins(C, names, tree), tree, normalized=normalized)
    assert D.dtype == np.float64 and D.shape == (40, 40)
    assert np.array_equal(D, D.T) and np.all(np.diag(D) == 0)
    assert np.all(D >= 0)
    if normalized:
        assert np.all(D <= 1 + 1e-15)


@pytest.mark.parametrize("normalized", [False, True])
def test_float32_within_rounding_of_float64(normalized):
    rng = np.random.default_rng(4)
    _, names, tree = _random_newick(rng, 200)
    X = _on_bins(_random_counts(rng, names, 60), names, tree)
    D64 = emdtree.weighted_unifrac(X, tree, normalized=normalized)
    D32 = emdtree.weighted_unifrac(X.astype(np.float32), tree, normalized=normalized)
    assert D32.dtype == np.float32
    assert np.array_equal(D32, D32.T) and np.all(np.diag(D32) == 0)
    # a distance errs by a few eps (S_i + S_j), S_i = sum_k w_k phi_k = u_i; normalised, by a few eps
    u = emdtree.weighted_unifrac(X, tree)[3]  # sample 3 is empty: its row holds u
    scale = np.ones_like(D64) if normalized else u[:, None] + u[None, :]
    eps = float(np.finfo(np.float32).eps)
    assert np.all(np.abs(D32.astype(np.float64) - D64) <= 64 * eps * scale)


def test_counts_of_any_scale_and_integer_dtype():
    tree = Tree.from_newick(NEWICK)
    counts = np.array([[4, 0, 0], [0, 2, 2], [1, 1, 2]])
    D = emdtree.weighted_unifrac(counts, tree, normalized=True)
    np.testing.assert_allclose(emdtree.weighted_unifrac(counts * 1000.0, tree, normalized=True), D,
                               rtol=1e-15)
    props = counts / counts.sum(axis=1, keepdims=True)  # a relative-frequency table gives the same
    np.testing.assert_allclose(emdtree.weighted_unifrac(props, tree, normalized=True), D, rtol=1e-15)
    np.testing.assert_array_equal(emdtree.weighted_unifrac(counts, tree),
                                  emdtree.pairwise(counts, tree=tree, normalize="l1"))


@pytest.mark.parametrize("normalized", [False, True])
def test_dask_equals_memory(normalized):
    da = pytest.importorskip("dask.array")
    rng = np.random.default_rng(6)
    _, names, tree = _random_newick(rng, 30)
    X = _on_bins(_random_counts(rng, names, 23), names, tree)
    want = emdtree.weighted_unifrac(X, tree, normalized=normalized)
    for dtype in (np.float64, np.float32):
        lazy = emdtree.weighted_unifrac(da.from_array(X.astype(dtype), chunks=(7, -1)), tree,
                                        normalized=normalized, block_size=5)
        assert isinstance(lazy, da.Array) and lazy.dtype == dtype
        got = lazy.compute()
        assert np.array_equal(got, got.T) and np.all(np.diag(got) == 0)
        tol = 1e-13 if dtype == np.float64 else 1e-5
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol * np.abs(want).max())


def test_memmap_is_read_in_blocks(tmp_path):
    rng = np.random.default_rng(7)
    _, names, tree = _random_newick(rng, 20)
    X = _on_bins(_random_counts(rng, names, 12), names, tree)
    np.save(tmp_path / "X.npy", X)
    mapped = np.load(tmp_path / "X.npy", mmap_mode="r")
    np.testing.assert_array_equal(emdtree.weighted_unifrac(mapped, tree, normalized=True),
                                  emdtree.weighted_unifrac(X, tree, normalized=True))


def test_bad_input():
    tree = Tree.from_newick(NEWICK)
    good = np.array([[1.0, 0.0, 2.0], [0.0, 1.0, 0.0]])
    with pytest.raises(ValueError, match=r"counts\[1, 2\] = -1"):
        emdtree.weighted_unifrac(np.array([[1.0, 0.0, 2.0], [0.0, 1.0, -1.0]]), tree)
    with pytest.raises(ValueError, match=r"counts\[0, 1\] = nan"):
        emdtree.weighted_unifrac(np.array([[1.0, np.nan, 2.0]]), tree, normalized=True)
    with pytest.raises(ValueError, match="counts has 2 columns but the tree has 3 bins"):
        emdtree.weighted_unifrac(good[:, :2], tree)
    with pytest.raises(ValueError, match="2-D"):
        emdtree.weighted_unifrac(good[0], tree)
    with pytest.raises(TypeError, match="tree must be an emdtree.Tree"):
        emdtree.weighted_unifrac(good, NEWICK)
    with pytest.raises(TypeError, match="normalized must be True or False"):
        emdtree.weighted_unifrac(good, tree, normalized="yes")
    with pytest.raises(TypeError, match="real numbers"):
        emdtree.weighted_unifrac(good.astype(complex), tree)
    table = emdtree.io.Table(["s1"], ["a", "zz"], np.array([[1.0, 2.0]]))
    with pytest.raises(ValueError, match="'zz'"):
        emdtree.weighted_unifrac(table, tree)
    np.testing.assert_array_equal(emdtree.weighted_unifrac(table, tree, drop_missing=True), [[0.0]])
    assert emdtree.weighted_unifrac(np.zeros((0, 3)), tree).shape == (0, 0)


def test_dask_bad_input_raises_when_computed():
    da = pytest.importorskip("dask.array")
    tree = Tree.from_newick(NEWICK)
    X = np.array([[1.0, 0.0, 2.0], [0.0, 1.0, 0.0], [3.0, -2.0, 0.0]])
    lazy = emdtree.weighted_unifrac(da.from_array(X, chunks=(2, -1)), tree)
    with pytest.raises(ValueError, match=r"counts\[2, 1\] = -2"):
        lazy.compute()


def test_public_name():
    assert "weighted_unifrac" in emdtree.__all__ and "weighted_unifrac" in dir(emdtree)


# ----------------------------------------------------------------------------- command line


@pytest.fixture
def files(tmp_path):
    (tmp_path / "t.nwk").write_text(NEWICK)
    (tmp_path / "table.tsv").write_text("sample\tc\ta\tb\ns1\t1\t2\t0\ns2\t0\t5\t1\ns3\t3\t0\t0\n"
                                        "empty\t0\t0\t0\n")
    return tmp_path


def _want(normalized):
    tree = Tree.from_newick(NEWICK)  # bins a, b, c
    counts = np.array([[2, 0, 1], [5, 1, 0], [0, 0, 3], [0, 0, 0]])
    return emdtree.weighted_unifrac(counts, tree, normalized=normalized)


@pytest.mark.parametrize("normalized", [False, True])
def test_cli_unifrac_equals_the_function(files, capsys, normalized):
    flag = ["--normalized"] if normalized else []
    code, out, err = run(["unifrac", files / "table.tsv", "--tree", files / "t.nwk", "-o", files / "D.tsv"]
                         + flag, capsys)
    assert code == 0 and out == "" and err == ""
    matrix = emdtree.io.read_matrix(files / "D.tsv")
    assert matrix.row_ids == matrix.col_ids == ["s1", "s2", "s3", "empty"]
    np.testing.assert_array_equal(matrix.values, _want(normalized))


def _stdout_matrix(out):
    lines = out.splitlines()
    ids = lines[0].split("\t")[1:]
    values = np.array([[float(v) for v in line.split("\t")[1:]] for line in lines[1:]])
    assert [line.split("\t")[0] for line in lines[1:]] == ids
    return ids, values


@pytest.mark.parametrize("command", ["unifrac", "pairwise"])
def test_cli_output_to_stdout(files, capsys, command):
    table = files / "table.tsv"
    if command == "pairwise":  # l1 needs a total: leave the empty sample out
        table = files / "full.tsv"
        table.write_text("\n".join((files / "table.tsv").read_text().splitlines()[:-1]) + "\n")
    code, out, err = run([command, table, "--tree", files / "t.nwk", "-o", "-"], capsys)
    assert code == 0 and err == ""
    assert not (files / "-").exists() and not os.path.exists("-")
    ids, values = _stdout_matrix(out)
    n = len(ids)
    np.testing.assert_array_equal(values, _want(False)[:n, :n])
    # the same text as the file written with -o
    code, _, _ = run([command, table, "--tree", files / "t.nwk", "-o", files / "D.tsv"], capsys)
    assert code == 0 and (files / "D.tsv").read_text() == out


def test_cli_stdout_through_dask(files, capsys):
    pytest.importorskip("dask.array")
    biom = pytest.importorskip("biom")
    table = biom.Table(np.array([[2, 5, 0, 0], [0, 1, 0, 0], [1, 0, 3, 0]]), ["a", "b", "c"],
                       ["s1", "s2", "s3", "empty"])
    with biom.util.biom_open(str(files / "t.biom"), "w") as fh:
        table.to_hdf5(fh, "test")
    for flag in ([], ["--normalized"]):
        code, out, err = run(["unifrac", files / "t.biom", "--tree", files / "t.nwk", "-o", "-",
                              "--block-size", "2"] + flag, capsys)
        assert code == 0 and err == ""
        ids, values = _stdout_matrix(out)
        assert ids == ["s1", "s2", "s3", "empty"]
        np.testing.assert_allclose(values, _want(bool(flag)), rtol=1e-13, atol=1e-15)


def test_cli_unifrac_zarr(files, capsys):
    zarr = pytest.importorskip("zarr")
    pytest.importorskip("dask.array")
    code, out, err = run(["unifrac", files / "table.tsv", "--tree", files / "t.nwk", "--normalized",
                          "--block-size", "3", "-o", files / "D.zarr"], capsys)
    assert code == 0 and out == "", err
    group = zarr.open_group(str(files / "D.zarr"), mode="r")
    np.testing.assert_allclose(group["distances"][...], _want(True), rtol=1e-13, atol=1e-15)
    assert dict(group.attrs) == {"metric": "weighted_unifrac", "normalized": True}
    assert list(group["sample_ids"][...]) == ["s1", "s2", "s3", "empty"]


def test_cli_unifrac_errors(files, capsys):
    args = ["--tree", files / "t.nwk", "-o", files / "D.tsv"]
    (files / "neg.tsv").write_text("sample\ta\tb\tc\ns1\t1\t-2\t0\n")
    assert_input_error(["unifrac", files / "neg.tsv"] + args, capsys, "neg.tsv'", "'b'", "'s1'", "negative")
    (files / "extra.tsv").write_text("sample\ta\tzz\ns1\t1\t2\n")
    assert_input_error(["unifrac", files / "extra.tsv"] + args, capsys, "'zz'", "--drop-missing")
    code, _, _ = run(["unifrac", files / "extra.tsv", "--drop-missing"] + args, capsys)
    assert code == 0 and emdtree.io.read_matrix(files / "D.tsv").row_ids == ["s1"]
    assert_input_error(["unifrac", files / "table.tsv", "--rho", "2"] + args, capsys, "--rho")
    assert_input_error(["unifrac", files / "table.tsv", "--tree", files / "t.nwk", "-o", files / "table.tsv"],
                       capsys, "is the input TABLE")


def test_cli_help_lists_unifrac(capsys):
    code, out, _ = run(["--help"], capsys)
    assert code == 0 and "unifrac" in out
    code, out, _ = run(["unifrac", "--help"], capsys)
    assert code == 0 and "--normalized" in out and "--rho" not in out and "--workers" in out


def test_output_is_qiime2_distance_matrix_format(tmp_path, capsys):
    """QIIME 2 imports a DistanceMatrix from scikit-bio's lsmat format: its sniffer recognises the file
    (older q2-types) and scikit-bio reads it back as a valid DistanceMatrix (newer q2-types)."""
    skbio = _skbio()
    (tmp_path / "t.nwk").write_text(NEWICK)
    (tmp_path / "table.tsv").write_text("sample\ta\tb\tc\n001\t1\t2\t0\n1e3\t0\t5\t1\nNaN\t3\t0\t1\n")
    for flag in ([], ["--normalized"]):
        code, _, err = run(["unifrac", tmp_path / "table.tsv", "--tree", tmp_path / "t.nwk",
                            "-o", tmp_path / "dm.tsv"] + flag, capsys)
        assert code == 0, err
        assert skbio.io.io_registry.get_sniffer("lsmat")(str(tmp_path / "dm.tsv"))[0]
        dm = skbio.DistanceMatrix.read(str(tmp_path / "dm.tsv"), format="lsmat")
        assert list(dm.ids) == ["001", "1e3", "NaN"]
        want = emdtree.weighted_unifrac(np.array([[1, 2, 0], [0, 5, 1], [3, 0, 1]]), Tree.from_newick(NEWICK),
                                        normalized=bool(flag))
        np.testing.assert_array_equal(dm.data, want)
