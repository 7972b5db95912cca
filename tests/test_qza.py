"""QIIME 2 artifacts (.qza) read by emdtree.io and the command line, built here as QIIME 2 lays them out."""

import sys
import uuid
import zipfile

import numpy as np
import pytest

import emdtree
from emdtree import Tree

from cli_helpers import assert_input_error, run

NEWICK = "((a:1,b:2):0.5,(c:3,d:0.25):1);"
SAMPLES = ["s1", "s2", "s3"]
FEATURES = ["d", "a", "c"]  # b is absent from the table
COUNTS = np.array([[1, 4, 0], [0, 2, 2], [5, 0, 1]], dtype=float)  # samples x features


def make_artifact(path, artifact_type, data, fmt="BIOMV210DirFmt"):
    """A zip as QIIME 2 writes it: <uuid>/VERSION, metadata.yaml, data/ and a provenance folder whose
    ancestors' metadata name other types."""
    uid = str(uuid.uuid4())
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(f"{uid}/VERSION", "QIIME 2\narchive: 5\nframework: 2023.5.1\n")
        archive.writestr(f"{uid}/metadata.yaml", f"uuid: {uid}\ntype: {artifact_type}\nformat: {fmt}\n")
        for name, content in data.items():
            archive.writestr(f"{uid}/data/{name}", content)
        other = str(uuid.uuid4())
        archive.writestr(f"{uid}/provenance/metadata.yaml", f"uuid: {uid}\ntype: {artifact_type}\n")
        archive.writestr(f"{uid}/provenance/artifacts/{other}/metadata.yaml",
                         f"uuid: {other}\ntype: Phylogeny[Unrooted]\nformat: NewickDirectoryFormat\n")
    return path


def biom_bytes(tmp_path, counts=COUNTS, samples=SAMPLES, features=FEATURES):
    biom = pytest.importorskip("biom")
    table = biom.Table(np.asarray(counts).T, features, samples)  # observations x samples
    path = tmp_path / f"{uuid.uuid4()}.biom"
    with biom.util.biom_open(str(path), "w") as fh:
        table.to_hdf5(fh, "emdtree tests")
    return path.read_bytes()


def table_qza(tmp_path, name="table.qza", artifact_type="FeatureTable[Frequency]", counts=COUNTS):
    return make_artifact(tmp_path / name, artifact_type, {"feature-table.biom": biom_bytes(tmp_path, counts)})


def tree_qza(tmp_path, name="tree.qza", artifact_type="Phylogeny[Rooted]", newick=NEWICK):
    return make_artifact(tmp_path / name, artifact_type, {"tree.nwk": newick + "\n"},
                         fmt="NewickDirectoryFormat")


# ----------------------------------------------------------------------------- emdtree.io


def test_read_table(tmp_path):
    table = emdtree.io.read_table(table_qza(tmp_path))
    assert table.sample_ids == SAMPLES and table.feature_names == FEATURES
    assert table.counts.dtype == np.float64
    np.testing.assert_array_equal(table.counts, COUNTS)


def test_read_tree(tmp_path):
    tree = emdtree.io.read_tree(tree_qza(tmp_path))
    assert tree == Tree.from_newick(NEWICK) and tree.names == ("a", "b", "c", "d")


def test_detected_by_content(tmp_path):
    """An artifact under another name is still read: a zip's first bytes."""
    table = emdtree.io.read_table(table_qza(tmp_path, name="table.artifact"))
    np.testing.assert_array_equal(table.counts, COUNTS)
    tree = emdtree.io.read_tree(tree_qza(tmp_path, name="tree.zip"))
    assert tree == Tree.from_newick(NEWICK)


def test_load_counts_and_unifrac(tmp_path):
    tree = emdtree.io.read_tree(tree_qza(tmp_path))
    ids, X = emdtree.io.load_counts(table_qza(tmp_path), tree)
    assert ids == SAMPLES
    want = np.zeros((3, 4))
    want[:, [3, 0, 2]] = COUNTS
    np.testing.assert_array_equal(X, want)
    table = emdtree.io.read_table(tmp_path / "table.qza")
    for normalized in (False, True):
        np.testing.assert_array_equal(emdtree.weighted_unifrac(table, tree, normalized=normalized),
                                      emdtree.weighted_unifrac(want, tree, normalized=normalized))


def test_relative_frequency_is_accepted(tmp_path):
    """A FeatureTable[RelativeFrequency] gives the same UniFrac: every sample is divided by its total."""
    tree = Tree.from_newick(NEWICK)
    rel = emdtree.io.read_table(table_qza(tmp_path, "rel.qza", "FeatureTable[RelativeFrequency]",
                                          COUNTS / COUNTS.sum(axis=1, keepdims=True)))
    freq = emdtree.io.read_table(table_qza(tmp_path))
    for normalized in (False, True):
        np.testing.assert_allclose(emdtree.weighted_unifrac(rel, tree, normalized=normalized),
                                   emdtree.weighted_unifrac(freq, tree, normalized=normalized), rtol=1e-14)


def test_wrong_artifact_types(tmp_path):
    with pytest.raises(ValueError, match=r"is a Phylogeny\[Unrooted\] artifact, but a tree must be "
                                         r"Phylogeny\[Rooted\]: root it first"):
        emdtree.io.read_tree(tree_qza(tmp_path, artifact_type="Phylogeny[Unrooted]"))
    with pytest.raises(ValueError, match=r"is a FeatureTable\[Frequency\] artifact, but a tree must be"):
        emdtree.io.read_tree(table_qza(tmp_path))
    with pytest.raises(ValueError, match=r"is a Phylogeny\[Rooted\] artifact, but a count table must be "
                                         r"FeatureTable\[Frequency\] or FeatureTable\[RelativeFrequency\]"):
        emdtree.io.read_table(tree_qza(tmp_path))
    with pytest.raises(ValueError, match=r"FeatureTable\[PresenceAbsence\] artifact.*needs counts"):
        emdtree.io.read_table(table_qza(tmp_path, "pa.qza", "FeatureTable[PresenceAbsence]"))


def test_damaged_artifacts(tmp_path):
    (tmp_path / "junk.qza").write_bytes(b"not a zip at all")
    with pytest.raises(ValueError, match="junk.qza' is not a QIIME 2 artifact: not a zip archive"):
        emdtree.io.read_table(tmp_path / "junk.qza")
    with zipfile.ZipFile(tmp_path / "bare.qza", "w") as archive:
        archive.writestr("x/data/tree.nwk", NEWICK)
    with pytest.raises(ValueError, match="bare.qza' is not a QIIME 2 artifact: no <uuid>/metadata.yaml"):
        emdtree.io.read_tree(tmp_path / "bare.qza")
    make_artifact(tmp_path / "empty.qza", "Phylogeny[Rooted]", {"other.txt": "x"})
    with pytest.raises(ValueError, match=r"has no data/tree.nwk \(data/ holds other.txt\)"):
        emdtree.io.read_tree(tmp_path / "empty.qza")
    make_artifact(tmp_path / "badbiom.qza", "FeatureTable[Frequency]", {"feature-table.biom": b"garbage"})
    with pytest.raises(ValueError, match="cannot read the BIOM table in .*badbiom.qza"):
        emdtree.io.read_table(tmp_path / "badbiom.qza")
    tree_qza(tmp_path, "badtree.qza", newick="((a:1,b:2;")
    with pytest.raises(ValueError, match="data/tree.nwk in .*badtree.qza"):
        emdtree.io.read_tree(tmp_path / "badtree.qza")
    with pytest.raises(ValueError, match="carries its orientation"):
        emdtree.io.read_table(table_qza(tmp_path), transpose=True)
    with pytest.raises(FileNotFoundError, match="no such tree file"):
        emdtree.io.read_tree(tmp_path / "missing.qza")


def test_table_without_biom_package(tmp_path, monkeypatch):
    path = table_qza(tmp_path)
    monkeypatch.setitem(sys.modules, "biom", None)
    with pytest.raises(ImportError, match=r"biom-format package: pip install emdtree\[biom\]"):
        emdtree.io.read_table(path)
    # the tree needs no optional package
    assert emdtree.io.read_tree(tree_qza(tmp_path)).n_bins == 4


# ----------------------------------------------------------------------------- command line


@pytest.mark.parametrize("command", ["unifrac", "pairwise"])
def test_cli(tmp_path, capsys, command):
    table, tree_path = table_qza(tmp_path), tree_qza(tmp_path)
    code, out, err = run([command, table, "--tree", tree_path, "-o", tmp_path / "D.tsv"], capsys)
    assert code == 0 and out == "" and err == ""
    matrix = emdtree.io.read_matrix(tmp_path / "D.tsv")
    assert matrix.row_ids == SAMPLES
    tree = Tree.from_newick(NEWICK)
    want = emdtree.weighted_unifrac(emdtree.io.read_table(table), tree)
    np.testing.assert_array_equal(matrix.values, want)


def test_cli_dask_path(tmp_path, capsys):
    zarr = pytest.importorskip("zarr")
    pytest.importorskip("dask.array")
    code, _, err = run(["unifrac", table_qza(tmp_path), "--tree", tree_qza(tmp_path), "--normalized",
                        "-o", tmp_path / "D.zarr", "--block-size", "2"], capsys)
    assert code == 0, err
    got = zarr.open_group(str(tmp_path / "D.zarr"), mode="r")["distances"][...]
    want = emdtree.weighted_unifrac(emdtree.io.read_table(tmp_path / "table.qza"), Tree.from_newick(NEWICK),
                                    normalized=True)
    np.testing.assert_allclose(got, want, rtol=1e-13, atol=1e-15)


def test_cli_reads_a_feature_table_by_blocks(tmp_path, capsys, monkeypatch):
    # an EMP-size artifact made dense as a whole would not fit in memory: with dask installed the
    # table is read as .biom files are, the sparse matrix once and its rows a block at a time
    pytest.importorskip("dask.array")
    from emdtree.formats import io as formats_io
    from emdtree.formats.lazy_tables import _BiomRows

    rng = np.random.default_rng(5)
    counts = rng.poisson(1.0, (9, 3)) + (np.arange(3) == 0)
    samples = [f"x{i}" for i in range(9)]
    table = make_artifact(tmp_path / "big.qza", "FeatureTable[Frequency]",
                          {"feature-table.biom": biom_bytes(tmp_path, counts, samples)})
    blocks = []
    monkeypatch.setattr(_BiomRows, "__getitem__",
                        lambda self, index, _f=_BiomRows.__getitem__: blocks.append(_f(self, index).shape)
                        or _f(self, index))
    monkeypatch.setattr(formats_io.Table, "__init__", None)  # no whole table in memory
    code, out, err = run(["unifrac", table, "--tree", tree_qza(tmp_path), "-o", "-", "--block-size", "4"],
                         capsys)
    assert code == 0, err
    assert blocks and max(rows for rows, _ in blocks) <= 4
    ids = out.splitlines()[0].split("\t")[1:]
    values = np.array([line.split("\t")[1:] for line in out.splitlines()[1:]], dtype=float)
    assert ids == samples
    monkeypatch.undo()
    want = emdtree.weighted_unifrac(emdtree.io.read_table(table), Tree.from_newick(NEWICK))
    np.testing.assert_allclose(values, want, rtol=1e-13, atol=1e-15)


def test_open_counts_gives_sample_blocks_of_any_table(tmp_path):
    da = pytest.importorskip("dask.array")
    tree = Tree.from_newick(NEWICK)
    qza = table_qza(tmp_path)
    (tmp_path / "t.biom").write_bytes(biom_bytes(tmp_path))
    text = tmp_path / "t.tsv"
    text.write_text("sample\t" + "\t".join(FEATURES) + "\n" + "".join(
        f"{s}\t" + "\t".join(str(int(c)) for c in row) + "\n" for s, row in zip(SAMPLES, COUNTS)))
    ids, want = emdtree.io.load_counts(qza, tree)
    for path in (qza, tmp_path / "t.biom", text):
        got_ids, counts = emdtree.io.open_counts(path, tree, block_rows=2)
        assert isinstance(counts, da.Array) and counts.chunks == ((2, 1), (tree.n_bins,))
        assert got_ids == ids == SAMPLES
        np.testing.assert_array_equal(counts.compute(scheduler="sync"), want)
        np.testing.assert_allclose(emdtree.weighted_unifrac(counts, tree).compute(scheduler="sync"),
                                   emdtree.weighted_unifrac(want, tree), rtol=1e-13, atol=1e-15)
    assert emdtree.io.open_counts(qza, tree)[1].chunks[0] == (3,)  # the default block: every sample here
    with pytest.raises(ValueError, match="block_rows must be a positive integer, got 0"):
        emdtree.io.open_counts(qza, tree, block_rows=0)
    with pytest.raises(ValueError, match="a QIIME 2 artifact carries its orientation"):
        emdtree.io.open_counts(qza, tree, transpose=True)
    assert emdtree.io.open_counts.__module__ == "emdtree.io"


def test_cli_errors(tmp_path, capsys, monkeypatch):
    table = table_qza(tmp_path)
    unrooted = tree_qza(tmp_path, "unrooted.qza", "Phylogeny[Unrooted]")
    assert_input_error(["unifrac", table, "--tree", unrooted, "-o", tmp_path / "D.tsv"], capsys,
                       "unrooted.qza", "Phylogeny[Unrooted]", "midpoint-root")
    tree = tree_qza(tmp_path)
    assert_input_error(["unifrac", tree, "--tree", tree, "-o", tmp_path / "D.tsv"], capsys,
                       "is a Phylogeny[Rooted] artifact, but a count table must be")
    monkeypatch.setitem(sys.modules, "biom", None)
    assert_input_error(["unifrac", table, "--tree", tree_qza(tmp_path), "-o", tmp_path / "D.tsv"], capsys,
                       "emdtree[biom]")
    assert not (tmp_path / "D.tsv").exists()
