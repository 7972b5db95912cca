"""Tests of the built-in ImageNet/WordNet tree."""

import fnmatch
import importlib.resources
import pathlib

import numpy as np
import pytest

import emdtree
import oracle
from emdtree.datasets import imagenet_classes, imagenet_wordnet, imagenet_wordnet_wnids
from trees import leaves

DATA = importlib.resources.files("emdtree.datasets") / "data" / "imagenet_wordnet"

# (collapsed, n_nodes, depth, max leaf-to-leaf distance, a farthest pair)
STATS = [
    (True, 1371, 13, 19, ("gazelle", "yawl")),
    (False, 1808, 17, 26, ("ibex", "carbonara")),
]


def _class_index(first_lemma):
    (index,) = [k for k, (_, name) in enumerate(imagenet_classes()) if name.split(", ")[0] == first_lemma]
    return index


@pytest.mark.parametrize("collapsed, n_nodes, depth, diameter, pair", STATS)
def test_size_depth_and_diameter(collapsed, n_nodes, depth, diameter, pair):
    tree = imagenet_wordnet(collapsed=collapsed)
    assert isinstance(tree, emdtree.Tree)
    assert (tree.n_nodes, tree.n_bins, tree.depth) == (n_nodes, 1000, depth)
    assert tree.parents[0] == -1 and tree.node_names[0] == "entity"
    assert np.all(tree.parents[1:] < np.arange(1, n_nodes))  # parents come first
    assert np.all(tree.weights[1:] == 1.0)

    D = tree.distance_matrix()
    assert D.shape == (1000, 1000)
    np.testing.assert_array_equal(D, D.T)
    assert np.all(np.diag(D) == 0) and np.all(D[~np.eye(1000, dtype=bool)] >= 2)
    assert D.max() == diameter
    a, b = (_class_index(name) for name in pair)
    assert D[a, b] == diameter


@pytest.mark.parametrize("collapsed", [True, False])
def test_bins_are_the_leaves_in_class_order(collapsed):
    tree = imagenet_wordnet(collapsed=collapsed)
    wnids = imagenet_wordnet_wnids(collapsed=collapsed)
    assert len(wnids) == tree.n_nodes == len(set(wnids))
    assert wnids[0] == "n00001740"
    assert all(len(w) == 9 and w[0] == "n" and w[1:].isdigit() for w in wnids)
    np.testing.assert_array_equal(np.sort(tree.bins), leaves(tree.parents))
    classes = imagenet_classes()
    assert [wnids[node] for node in tree.bins] == [wnid for wnid, _ in classes]
    repeated = {"crane"}  # the one class name that two classes share gets its wnid
    assert list(tree.names) == [f"{name} ({wnid})" if name in repeated else name for wnid, name in classes]
    assert [tree.node_names[node] for node in tree.bins] == [name for _, name in classes]
    assert len(set(tree.names)) == tree.n_bins


def test_class_names():
    classes = imagenet_classes()
    assert len(classes) == 1000
    assert classes[0] == ("n01440764", "tench, Tinca tinca")
    assert classes == sorted(classes)  # class index = position in wnid order
    tree = imagenet_wordnet()
    assert tree.names[0].split(", ")[0] == "tench"
    assert classes[134][1] == classes[517][1] == "crane"
    assert (tree.names[134], tree.names[517]) == ("crane (n02012849)", "crane (n03126707)")
    assert classes[134][0] != classes[517][0]
    assert tree.names[999] == "toilet tissue, toilet paper, bathroom tissue"


@pytest.mark.parametrize("collapsed", [True, False])
def test_distances_match_oracle(collapsed):
    tree = imagenet_wordnet(collapsed=collapsed)
    rng = np.random.default_rng(7)
    some = np.concatenate([rng.choice(1000, size=20, replace=False), [_class_index("gazelle"), 134, 517]])
    expected = oracle.distance_matrix(tree.parents, tree.weights, tree.bins[some])
    np.testing.assert_array_equal(tree.distance_matrix()[np.ix_(some, some)], expected)
    assert expected[-1, -2] == (11 if collapsed else 14)  # crane the bird vs crane the machine


def test_collapsed_tree_contracts_the_uncollapsed_one():
    full = imagenet_wordnet(collapsed=False)
    full_wnids = imagenet_wordnet_wnids(collapsed=False)
    short = imagenet_wordnet(collapsed=True)
    short_wnids = imagenet_wordnet_wnids(collapsed=True)
    position = {wnid: i for i, wnid in enumerate(full_wnids)}
    assert set(short_wnids) <= set(full_wnids)
    assert len(full_wnids) - len(short_wnids) == 437
    # each collapsed edge joins a node to one of its ancestors in the full tree
    for child, parent in enumerate(short.parents):
        if parent == -1:
            continue
        path = oracle.ancestors_or_self(full.parents, position[short_wnids[child]])
        assert position[short_wnids[parent]] in path[1:]
    # no internal node of the collapsed tree has a single child
    n_children = np.bincount(short.parents[1:], minlength=short.n_nodes)
    internal = np.flatnonzero(n_children > 0)
    assert np.all(n_children[internal] >= 2) and len(internal) == 371
    # the node names agree between the two files
    full_names = dict(zip(full_wnids, full.node_names))
    assert all(full_names[w] == name for w, name in zip(short_wnids, short.node_names))


def test_cached_and_copied():
    assert imagenet_wordnet() is imagenet_wordnet(collapsed=True)
    assert imagenet_wordnet(collapsed=False) is not imagenet_wordnet()
    classes = imagenet_classes()
    classes.clear()
    assert len(imagenet_classes()) == 1000
    wnids = imagenet_wordnet_wnids()
    wnids[0] = "changed"
    assert imagenet_wordnet_wnids()[0] == "n00001740"


def test_license_and_readme_ship_with_the_data():
    licence = (DATA / "LICENSE-WordNet.txt").read_text(encoding="utf-8")
    assert "WordNet 3.0 Copyright 2006 by Princeton University.  All rights reserved." in licence
    assert "Princeton University and LICENSEE agrees to preserve same." in licence
    readme = (DATA / "README.md").read_text(encoding="utf-8")
    assert "DAG -> tree" in readme


def test_package_data_globs_cover_every_data_file():
    pyproject = pathlib.Path(__file__).resolve().parents[1] / "pyproject.toml"
    if not pyproject.is_file():
        pytest.skip("not running from a source checkout")
    tomllib = pytest.importorskip("tomllib")
    globs = tomllib.loads(pyproject.read_text(encoding="utf-8"))["tool"]["setuptools"]["package-data"][
        "emdtree.datasets"
    ]
    files = [entry.name for entry in DATA.iterdir() if entry.is_file()]
    expected = {"tree.tsv", "tree_uncollapsed.tsv", "classes.tsv", "LICENSE-WordNet.txt", "README.md"}
    assert expected <= set(files)
    for name in files:
        assert any(fnmatch.fnmatch(f"data/imagenet_wordnet/{name}", g) for g in globs), name
