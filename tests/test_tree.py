"""Tests of ``Tree``: validation errors of ``Tree.from_parents``, the
properties (root, depth, bins, names, the ignored root weight),
``Tree.chain`` and ``is_chain``, ``distance_matrix`` against the oracle,
saving and loading as JSON and npz, pickling, equality, hashing and ``repr``,
and immutability."""

import pickle

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal

import emdtree
import oracle
from emdtree import Tree
from trees import TREE_CASES, binary, chain, deep_path, random_tree, star


CASE_IDS = [name for name, _ in TREE_CASES]
BUILDERS = [build for _, build in TREE_CASES]


# --- helpers ----------------------------------------------------------------------


def _case(build):
    """``(parents, weights, bins, Tree)`` of a ``TREE_CASES`` builder."""
    parents, weights, bins = build()
    return parents, weights, bins, Tree.from_parents(parents, weights, bins)


# --- validation and properties ----------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (dict(parents=[0, 0]), ValueError, "no root"),
        (dict(parents=[1, 2, 0]), ValueError, "no root"),
        (dict(parents=[-1, -1, 0]), ValueError, "2 roots"),
        (dict(parents=[-1, 0, -1, 1]), ValueError, r"2 roots \(nodes 0, 2\)"),
        (dict(parents=[-1, 2, 3, 1]), ValueError, "cycle: 1 -> 2 -> 3 -> 1"),
        (dict(parents=[-1, 0, 3, 2]), ValueError, "cycle: 2 -> 3 -> 2"),
        (dict(parents=[-1, 1]), ValueError, "cycle: node 1 is its own parent"),
        (dict(parents=[-1, 5]), ValueError, r"parents\[1\] = 5 is out of range for 2 nodes"),
        (dict(parents=[-1, 0, -2]), ValueError, r"parents\[2\] = -2 is out of range"),
        (dict(parents=[-1, 0, 0], weights=[0, 1, -0.5]), ValueError, r"weights\[2\] = -0.5 is negative"),
        (dict(parents=[-1, 0, 0], weights=[0, np.inf, 1]), ValueError, r"weights\[1\] = inf is not finite"),
        (dict(parents=[-1, 0, 0], weights=[0, 1, np.nan]), ValueError, r"weights\[2\] = nan is not finite"),
        (dict(parents=[-1, 0, 0], weights=[0, 1]), ValueError, "weights has shape"),
        (dict(parents=[-1, 0, 0], bins=[1, 2, 1]), ValueError,
         r"bins contains node 1 twice \(bins\[0\] and bins\[2\]\)"),
        (dict(parents=[-1, 0, 0], bins=[1, 3]), ValueError, r"bins\[1\] = 3 is not a node index in \[0, 2\]"),
        (dict(parents=[-1, 0, 0], bins=[-1, 1]), ValueError, r"bins\[0\] = -1 is not a node index"),
        (dict(parents=[-1, 0, 0], names=["a"]), ValueError, "names has 1 entries but there are 2 bins"),
        (dict(parents=[-1, 0, 0], names=["a", "b", "c"]), ValueError,
         "names has 3 entries but there are 2 bins"),
        (dict(parents=[-1, 0, 0], node_names=["r", "a"]), ValueError,
         "node_names has 2 entries but there are 3 nodes"),
    ],
)
def test_tree_validation(kwargs, error, message):
    with pytest.raises(error, match=message):
        Tree.from_parents(**kwargs)


def test_tree_root_weight_is_ignored():
    tree = Tree.from_parents([-1, 0, 0], weights=[np.inf, 1.0, 2.0])  # the root has no edge
    assert tree.weights.tolist() == [0.0, 1.0, 2.0]
    tree = Tree.from_parents([1, -1, 1], weights=[3.0, -5.0, 2.0])
    assert tree.weights.tolist() == [3.0, 0.0, 2.0]
    assert tree.root == 1


def test_tree_properties():
    tree = Tree.from_parents([-1, 0, 0, 1, 1], weights=[0, 1, 2, 1, 1])
    assert (tree.n_nodes, tree.n_bins, tree.depth, tree.root) == (5, 3, 2, 0)
    assert tree.bins.tolist() == [2, 3, 4] and tree.names is None and tree.node_names is None
    assert not tree.is_chain
    tree = Tree.from_parents([2, 2, -1, 0], bins=[3, 1, 2])  # default weights 1
    assert tree.root == 2 and tree.depth == 2 and tree.weights.tolist() == [1.0, 1.0, 0.0, 1.0]
    # bins on internal nodes, in the given order
    assert tree.bins.tolist() == [3, 1, 2]
    assert_array_equal(tree.distance_matrix(), [[0, 3, 2], [3, 0, 1], [2, 1, 0]])


@pytest.mark.parametrize(
    "build, depth",
    [(lambda: chain(6), 5), (lambda: star(7), 1), (lambda: binary(4), 4), (lambda: deep_path(25), 24)],
)
def test_tree_depth(build, depth):
    assert Tree.from_parents(*build()).depth == depth


def test_chain_and_is_chain():
    tree = Tree.chain(5, spacing=[1.0, 2.0, 0.5, 3.0])
    assert tree.is_chain and tree.n_nodes == tree.n_bins == 5 and tree.depth == 4
    parents, weights, bins = chain(5, spacing=[1.0, 2.0, 0.5, 3.0])
    assert_array_equal(tree.parents, parents)
    assert_array_equal(tree.weights, weights)
    assert_array_equal(tree.bins, bins)
    assert Tree.chain(4, spacing=0.5).weights.tolist() == [0.5, 0.5, 0.5, 0.0]
    assert Tree.chain(1).n_bins == 1
    # a path with a bin on every node, in path order from either end
    assert Tree.from_parents([-1, 0, 1, 2]).n_bins == 1
    assert Tree.from_parents([-1, 0, 1, 2], bins=[0, 1, 2, 3]).is_chain
    assert Tree.from_parents([-1, 0, 1, 2], bins=[3, 2, 1, 0]).is_chain
    assert Tree.from_parents([1, 2, 3, -1], bins=[3, 2, 1, 0]).is_chain
    assert Tree.from_parents([-1, 0, 1, 2], weights=[0, 1, 5, 2], bins=[0, 1, 2, 3]).is_chain
    # not chains: bins out of path order, a bin missing, a branch
    assert not Tree.from_parents([-1, 0, 1, 2], bins=[0, 2, 1, 3]).is_chain
    assert not Tree.from_parents([-1, 0, 1, 2], bins=[0, 1, 2]).is_chain
    assert not Tree.from_parents([-1, 0, 0, 1], bins=[0, 1, 2, 3]).is_chain  # path 2-0-1-3, bins not in order
    assert not Tree.from_parents([-1, 0, 0, 0], bins=[0, 1, 2, 3]).is_chain
    assert not Tree.from_parents([-1, 0, 1, 1], bins=[0, 1, 2, 3]).is_chain
    assert not Tree.from_parents(*star(3)).is_chain
    for bad in ([1.0, -1.0], [1.0, np.nan], [1.0, 2.0, 3.0]):
        with pytest.raises(ValueError, match="spacing"):
            Tree.chain(3, spacing=bad)
    with pytest.raises(ValueError, match="n_bins must be >= 1"):
        Tree.chain(0)


# --- distance matrix --------------------------------------------------------------


@pytest.mark.parametrize("build", BUILDERS, ids=CASE_IDS)
def test_distance_matrix_matches_oracle(build):
    parents, weights, bins, tree = _case(build)
    D = tree.distance_matrix()
    assert D.shape == (tree.n_bins, tree.n_bins) and D.dtype == np.float64
    assert_allclose(D, oracle.distance_matrix(parents, weights, bins), rtol=1e-13, atol=1e-13)
    assert np.all(np.diag(D) == 0) and np.array_equal(D, D.T)


# --- saving, loading, pickling, equality ------------------------------------------


def _named_tree():
    parents = np.array([-1, 0, 0, 1, 1, 2])
    return Tree.from_parents(
        parents,
        weights=[0.0, 0.5, 1.25, 2.0, 1.0 / 3.0, 0.1],
        bins=[3, 4, 5, 1],
        names=["cat", "dog", "ship", "animal"],
        node_names=["entity", "animal", None, "cat", None, "ship"],
    )


@pytest.mark.parametrize("suffix", [".json", ".npz", ".JSON"])
def test_save_load_round_trip(tmp_path, suffix):
    for tree in (_named_tree(), Tree.chain(6, spacing=np.linspace(0.1, 1.0, 5)),
                 Tree.from_parents(*random_tree(np.random.default_rng(20), 50, bins_on_internal=True))):
        path = tmp_path / f"tree{suffix}"
        tree.save(path)
        loaded = Tree.load(path)
        assert loaded == tree and hash(loaded) == hash(tree)
        assert_array_equal(loaded.parents, tree.parents)
        assert_array_equal(loaded.weights, tree.weights)  # bit-exact weights
        assert_array_equal(loaded.bins, tree.bins)
        assert loaded.names == tree.names and loaded.node_names == tree.node_names
        Tree.load(str(path))  # str paths as well
    loaded = Tree.load(tmp_path / f"tree{suffix}")
    assert loaded.weights.dtype == np.float64 and loaded.parents.dtype == np.int64


def test_save_load_named_tree_keeps_none_node_names(tmp_path):
    tree = _named_tree()
    for suffix in (".json", ".npz"):
        tree.save(tmp_path / f"t{suffix}")
        loaded = Tree.load(tmp_path / f"t{suffix}")
        assert loaded.node_names == ("entity", "animal", None, "cat", None, "ship")
        assert loaded.names == ("cat", "dog", "ship", "animal")
    assert Tree.from_dict(tree.to_dict()) == tree
    with pytest.raises(ValueError, match=r"\.json or \.npz"):
        tree.save(tmp_path / "tree.txt")
    with pytest.raises(ValueError, match="not a saved emdtree.Tree"):
        Tree.from_dict({"format": "something else"})


def test_pickle_equality_hash_and_repr():
    tree = _named_tree()
    clone = pickle.loads(pickle.dumps(tree))
    assert clone == tree and hash(clone) == hash(tree) and clone is not tree
    assert clone.node_names == tree.node_names
    same = Tree.from_parents(tree.parents.copy(), tree.weights.copy(), tree.bins.copy(), list(tree.names),
                             list(tree.node_names))
    assert same == tree and hash(same) == hash(tree)
    assert len({tree, clone, same}) == 1
    other_weights = tree.weights.copy()
    other_weights[3] += 1e-12
    assert Tree.from_parents(tree.parents, other_weights, tree.bins, tree.names, tree.node_names) != tree
    assert Tree.from_parents(tree.parents, tree.weights, tree.bins) != tree  # no names
    assert Tree.from_parents(tree.parents, tree.weights, tree.bins[::-1], tree.names) != tree
    assert Tree.chain(4) != Tree.chain(5) and Tree.chain(4) == Tree.chain(4, spacing=1.0)
    assert tree != "tree" and tree != None  # noqa: E711
    text = repr(tree)
    assert "n_nodes=6" in text and "n_bins=4" in text
    assert "n_nodes=10" in repr(Tree.chain(10)) and "n_bins=10" in repr(Tree.chain(10))


# --- immutability -----------------------------------------------------------------


def test_tree_is_immutable():
    parents = np.array([-1, 0, 0, 1, 1])
    weights = np.array([0.0, 1.0, 2.0, 1.0, 1.0])
    tree = Tree.from_parents(parents, weights)
    for attr in ("parents", "weights", "bins", "names", "node_names", "layout", "anything"):
        with pytest.raises(AttributeError):
            setattr(tree, attr, None)
    with pytest.raises(AttributeError):
        del tree.weights
    for arr in (tree.parents, tree.weights, tree.bins):
        assert not arr.flags.writeable
        with pytest.raises(ValueError, match="read-only"):
            arr[0] = 1
    # the tree does not share memory with the caller's arrays
    parents[3] = 2
    weights[1] = 100.0
    assert tree.parents.tolist() == [-1, 0, 0, 1, 1] and tree.weights.tolist() == [0.0, 1.0, 2.0, 1.0, 1.0]
    p, q = np.array([1.0, 0.0, 0.0]), np.array([0.0, 0.0, 1.0])
    assert emdtree.emd(p, q, tree) == 4.0  # path 2 -> 0 -> 1 -> 4
