"""emdtree.io: trees, count tables, feature matching and distance-matrix files."""

import sys

import numpy as np
import pytest

import emdtree
from emdtree import Tree
from emdtree.io import (
    Matrix, Table, load_counts, match_features, read_matrix, read_table, read_tree, write_matrix,
)

NEWICK = "((a:1,'b c':2)ab:0.5,(d:1,e_f:0.25):1,g:3);"


@pytest.fixture
def tree():
    return Tree.from_newick(NEWICK)


# ----------------------------------------------------------------------------- trees


@pytest.mark.parametrize("suffix", [".nwk", ".newick", ".tre", ".tree", ".NWK"])
def test_read_tree_newick(tmp_path, tree, suffix):
    path = tmp_path / f"t{suffix}"
    path.write_text(NEWICK)
    assert read_tree(path) == tree
    assert read_tree(str(path)) == tree
    assert tree.names == ("a", "b c", "d", "e f", "g")


@pytest.mark.parametrize("suffix", [".json", ".npz"])
def test_read_tree_saved(tmp_path, tree, suffix):
    path = tmp_path / f"t{suffix}"
    tree.save(path)
    assert read_tree(path) == tree


def test_read_tree_builtin_and_passthrough(tree):
    imagenet = read_tree("imagenet")
    assert (imagenet.n_nodes, imagenet.n_bins) == (1371, 1000)
    assert read_tree(tree) is tree


def test_read_tree_errors(tmp_path):
    with pytest.raises(ValueError, match=r"cannot tell the format of .*t\.txt.*\.nwk.*'imagenet'"):
        read_tree(tmp_path / "t.txt")
    with pytest.raises(FileNotFoundError, match="no such tree file"):
        read_tree(tmp_path / "missing.nwk")
    with pytest.raises(TypeError, match="source must be a path, 'imagenet' or a Tree"):
        read_tree(3)
    bad = tmp_path / "bad.nwk"
    bad.write_text("((a,b);")
    with pytest.raises(ValueError, match=r"';' at position 6 before the '\(' at position 0 is closed"):
        read_tree(bad)


# ----------------------------------------------------------------------------- tables

def test_tsv_with_comments_and_otu_header(tmp_path):
    path = tmp_path / "table.tsv"
    path.write_text("# Constructed from biom file\n#OTU ID\ts1\ts2\ts3\na\t1\t0\t2\n# a comment\n"
                    "b c\t0\t5\t1.5\n\n")
    table = read_table(path)
    assert isinstance(table, Table)
    assert table.sample_ids == ["s1", "s2", "s3"]
    assert table.feature_names == ["a", "b c"]
    np.testing.assert_array_equal(table.counts, [[1, 0], [0, 5], [2, 1.5]])
    assert table.counts.dtype == np.float64
    same_way = read_table(path, transpose=False)  # as written: one feature per row
    assert same_way.sample_ids == ["a", "b c"] and same_way.feature_names == ["s1", "s2", "s3"]
    np.testing.assert_array_equal(same_way.counts, table.counts.T)


def test_csv_samples_by_features_and_delimiters(tmp_path):
    path = tmp_path / "table.csv"
    path.write_text('sample,a,"b c",g\nS1,1,2,3\nS2,4,5,6\n')
    table = read_table(path)
    assert table.sample_ids == ["S1", "S2"] and table.feature_names == ["a", "b c", "g"]
    np.testing.assert_array_equal(table.counts, [[1, 2, 3], [4, 5, 6]])
    other = tmp_path / "table.dat"
    other.write_text("sample;a;b\nS1;1;2\n")
    assert read_table(other, delimiter=";").counts.tolist() == [[1.0, 2.0]]
    t = read_table(path, transpose=True)
    assert t.sample_ids == ["a", "b c", "g"] and t.feature_names == ["S1", "S2"]


@pytest.mark.parametrize("text, match", [
    ("id\ta\tb\nS1\t1\t2\nS2\t3\n", r"line 3 of .* has 2 cells but the header has 3"),
    ("id\ta\tb\nS1\t1\t2\nS2\t3\tx7\n", r"row 'S2' \(line 3\), column 'b' .* is not a number: 'x7'"),
    ("id\ta\tb\nS1\t1\t\n", r"row 'S1' \(line 2\), column 'b' .* is not a number: ''"),
    ("id\ta\tb\nS1\t1\t2\nS1\t3\t4\n", r"row id 'S1' appears twice in .* \(lines 2 and 3\)"),
    ("id\ta\ta\nS1\t1\t2\n", r"column name 'a' appears twice"),
    ("# only a comment\n", "holds no count table: no header line"),
    ("id,a,b\nS1,1,2\n", r"the header of .* has no column after the first; is the delimiter '\\t' right\?"),
])
def test_table_errors(tmp_path, text, match):
    path = tmp_path / "table.tsv"
    path.write_text(text)
    with pytest.raises(ValueError, match=match):
        read_table(path)


def test_table_path_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such table file"):
        read_table(tmp_path / "missing.tsv")
    odd = tmp_path / "table.xyz"
    odd.write_text("id\ta\nS\t1\n")
    with pytest.raises(ValueError, match=r"cannot tell the format of .*table\.xyz"):
        read_table(odd)
    with pytest.raises(ValueError, match="delimiter must be a single character"):
        read_table(odd, delimiter="ab")
    with pytest.raises(ValueError, match=r"mmap=True needs a \.npy file"):
        read_table(odd, mmap=True)


def test_npy_positional_and_memory_mapped(tmp_path):
    rng = np.random.default_rng(0)
    counts = rng.poisson(2.0, size=(7, 5)).astype(np.int64) + 1
    path = tmp_path / "c.npy"
    np.save(path, counts)
    table = read_table(path)
    assert table.sample_ids == [str(i) for i in range(7)]
    assert table.feature_names == [str(j) for j in range(5)]
    np.testing.assert_array_equal(table.counts, counts)
    mapped = read_table(path, mmap=True)
    assert isinstance(mapped.counts, np.memmap)
    tree = Tree.chain(5)
    np.testing.assert_array_equal(emdtree.pairwise(mapped.counts, tree=tree, normalize="l1", block_size=3),
                                  emdtree.pairwise(counts, tree=tree, normalize="l1"))
    flipped = read_table(path, transpose=True, mmap=True)
    assert flipped.counts.shape == (5, 7) and flipped.sample_ids == [str(i) for i in range(5)]
    np.save(tmp_path / "bad.npy", np.zeros(3))
    with pytest.raises(ValueError, match=r"must be a 2-D array, got shape \(3,\)"):
        read_table(tmp_path / "bad.npy")


def test_npz_with_names(tmp_path):
    counts = np.arange(6.0).reshape(2, 3)
    path = tmp_path / "c.npz"
    np.savez(path, counts=counts, sample_ids=np.array(["x", "y"]), feature_names=np.array(["a", "b", "c"]))
    table = read_table(path)
    assert table.sample_ids == ["x", "y"] and table.feature_names == ["a", "b", "c"]
    np.testing.assert_array_equal(table.counts, counts)
    flipped = read_table(path, transpose=True)
    assert flipped.sample_ids == ["a", "b", "c"] and flipped.feature_names == ["x", "y"]
    np.testing.assert_array_equal(flipped.counts, counts.T)
    np.savez(tmp_path / "none.npz", other=counts)
    with pytest.raises(ValueError, match="has no array 'counts' \\(it has other\\)"):
        read_table(tmp_path / "none.npz")
    np.savez(tmp_path / "short.npz", counts=counts, sample_ids=np.array(["x"]))
    with pytest.raises(ValueError, match="has 1 sample ids for 2 samples"):
        read_table(tmp_path / "short.npz")
    np.savez(tmp_path / "dup.npz", counts=counts, feature_names=np.array(["a", "b", "a"]))
    with pytest.raises(ValueError, match="feature name 'a' appears twice"):
        read_table(tmp_path / "dup.npz")


def test_biom(tmp_path):
    biom = pytest.importorskip("biom")
    data = np.array([[1.0, 0.0, 3.0], [0.0, 2.0, 5.0]])  # observations x samples
    table = biom.Table(data, ["o1", "o2"], ["s1", "s2", "s3"])
    path = tmp_path / "t.biom"
    with biom.util.biom_open(str(path), "w") as fh:
        table.to_hdf5(fh, "emdtree test")
    got = read_table(path)
    assert got.sample_ids == ["s1", "s2", "s3"] and got.feature_names == ["o1", "o2"]
    np.testing.assert_array_equal(got.counts, data.T)
    with pytest.raises(ValueError, match="BIOM file carries its orientation"):
        read_table(path, transpose=True)


def test_biom_missing_package(tmp_path, monkeypatch):
    path = tmp_path / "t.biom"
    path.write_bytes(b"")
    monkeypatch.setitem(sys.modules, "biom", None)
    with pytest.raises(ImportError, match=r"biom-format package: pip install emdtree\[biom\]"):
        read_table(path)


# ----------------------------------------------------------------------------- features to bins


def test_match_features(tree):
    bins = match_features(["g", "a", "e f"], tree)
    assert bins.dtype == np.int64 and bins.tolist() == [4, 0, 3]
    columns, kept = match_features(["zz", "g", "yy", "a"], tree, drop_missing=True)
    assert columns.tolist() == [1, 3] and kept.tolist() == [4, 0]


def test_match_features_errors(tree):
    names = ["a"] + [f"m{i}" for i in range(13)]
    message = r"13 of 14 features are not bins of the tree: 'm0', .*'m9' and 3 more; pass drop_missing=True"
    with pytest.raises(ValueError, match=message):
        match_features(names, tree)
    with pytest.raises(ValueError, match="feature name 'a' appears twice"):
        match_features(["a", "a"], tree)
    with pytest.raises(ValueError, match="the tree has no bin names"):
        match_features(["a"], Tree.chain(3))
    with pytest.raises(TypeError, match="not one string"):
        match_features("abc", tree)
    with pytest.raises(TypeError, match="tree must be an emdtree.Tree"):
        match_features(["a"], "tree")


def test_load_counts(tmp_path, tree):
    path = tmp_path / "t.csv"
    path.write_text("id,g,a,zz\nS1,1,2,7\nS2,0,5,1\n")
    with pytest.raises(ValueError, match=r"1 of 3 features are not bins of the tree: 'zz'"):
        load_counts(path, tree)
    ids, X = load_counts(path, tree, drop_missing=True)
    assert ids == ["S1", "S2"]
    np.testing.assert_array_equal(X, [[2, 0, 0, 0, 1], [5, 0, 0, 0, 0]])  # bins a, b c, d, e f, g
    ids, X = load_counts(path, tree, drop_missing=True, transpose=True)
    assert ids == ["g", "a", "zz"] and X.shape == (3, 5)


# ----------------------------------------------------------------------------- matrices


def test_matrix_round_trip_is_exact(tmp_path):
    rng = np.random.default_rng(1)
    D = emdtree.pairwise(rng.random((6, 9)), normalize="l1")
    ids = [f"sample {i}" for i in range(6)]
    write_matrix(tmp_path / "d.tsv", D, ids)
    back = read_matrix(tmp_path / "d.tsv")
    assert isinstance(back, Matrix)
    assert back.row_ids == ids and back.col_ids == ids
    assert np.array_equal(back.values, D)
    R = rng.random((2, 3))
    write_matrix(tmp_path / "r.tsv", R, ["x", "y"], ["a", "b", "c"])
    back = read_matrix(tmp_path / "r.tsv")
    assert back.row_ids == ["x", "y"] and back.col_ids == ["a", "b", "c"] and np.array_equal(back.values, R)


def test_matrix_matches_scikit_bio_format(tmp_path):
    skbio = pytest.importorskip("skbio")
    D = np.array([[0.0, 0.25, 1.5], [0.25, 0.0, 2.0], [1.5, 2.0, 0.0]])
    write_matrix(tmp_path / "ours.tsv", D, ["a", "b", "c"])
    theirs = skbio.DistanceMatrix.read(str(tmp_path / "ours.tsv"))
    assert list(theirs.ids) == ["a", "b", "c"] and np.array_equal(theirs.data, D)
    skbio.DistanceMatrix(D, ["x", "y", "z"]).write(str(tmp_path / "theirs.tsv"))
    back = read_matrix(tmp_path / "theirs.tsv")
    assert back.row_ids == ["x", "y", "z"] and np.array_equal(back.values, D)


@pytest.mark.parametrize("args, match", [
    ((np.zeros(3), ["a", "b", "c"]), r"matrix must be 2-D, got shape \(3,\)"),
    ((np.zeros((2, 2)), ["a"]), "row_ids has 1 ids for 2 matrix rows"),
    ((np.zeros((2, 3)), ["a", "b"]), "give col_ids for a matrix that is not square"),
    ((np.zeros((2, 3)), ["a", "b"], ["x", "y"]), "col_ids has 2 ids for 3 matrix cols"),
    ((np.zeros((2, 2)), ["a", "a"]), "id 'a' appears twice in row_ids"),
    ((np.zeros((2, 2)), ["a", "b\tc"]), "contains a tab or a line break"),
    ((np.array([["a"]]), ["a"]), "matrix must hold real numbers"),
])
def test_write_matrix_errors(tmp_path, args, match):
    with pytest.raises(ValueError, match=match):
        write_matrix(tmp_path / "d.tsv", *args)


def test_read_matrix_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such matrix file"):
        read_matrix(tmp_path / "missing.tsv")
    path = tmp_path / "d.tsv"
    path.write_text("\ta\tb\na\t0\t1\nb\t1\n")
    with pytest.raises(ValueError, match="line 3 of .* has 2 cells but the header has 3"):
        read_matrix(path)
