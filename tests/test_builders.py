"""Tests for the builders of parent arrays from edges, graphs, linkages and nested dicts."""

import networkx as nx
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.cluster.hierarchy import cophenet, linkage
from scipy.spatial.distance import squareform

import oracle
from emdtree.trees.builders import (
    TreeArrays,
    build_from_edges,
    build_from_linkage,
    build_from_nested,
    build_from_networkx,
    leaves_of,
)


def check_arrays(t):
    assert isinstance(t, TreeArrays)
    assert t.parents.dtype == np.int64 and t.bins.dtype == np.int64
    assert t.weights.dtype == np.float64
    assert t.parents.shape == t.weights.shape
    assert (t.parents == -1).sum() == 1
    assert t.weights[t.parents == -1][0] == 0.0
    np.testing.assert_array_equal(t.bins, leaves_of(t.parents))


# --- edges -----------------------------------------------------------------


def test_edges_with_string_labels():
    t = build_from_edges([("a", "b"), ("a", "c"), ("c", "d"), ("c", "e")], weights=[1, 2, 3, 4])
    check_arrays(t)
    np.testing.assert_array_equal(t.parents, [-1, 0, 0, 2, 2])
    np.testing.assert_array_equal(t.weights, [0, 1, 2, 3, 4])
    np.testing.assert_array_equal(t.bins, [1, 3, 4])
    assert t.names == ["b", "d", "e"]
    assert t.node_names == ["a", "b", "c", "d", "e"]


def test_edges_with_index_labels_keep_their_indices():
    t = build_from_edges(np.array([[3, 1], [3, 0], [0, 2]]))
    np.testing.assert_array_equal(t.parents, [3, 3, 0, -1])
    np.testing.assert_array_equal(t.weights, [1, 1, 1, 0])
    np.testing.assert_array_equal(t.bins, [1, 2])
    assert t.names is None and t.node_names is None


def test_edges_with_other_integer_labels_are_named():
    t = build_from_edges([(10, 20), (10, 30)])
    np.testing.assert_array_equal(t.parents, [-1, 0, 0])
    assert t.node_names == ["10", "20", "30"] and t.names == ["20", "30"]


def test_edge_weights_as_mapping():
    edges = [("r", "x"), ("x", "y"), ("r", "z")]
    t = build_from_edges(edges, weights={("x", "y"): 2.0, ("r", "x"): 0.5, ("r", "z"): 0})
    np.testing.assert_array_equal(t.weights, [0, 0.5, 2, 0])
    undirected = build_from_edges(edges, weights={("y", "x"): 2.0, ("x", "r"): 0.5, ("r", "z"): 0}, root="y")
    assert undirected.node_names == ["r", "x", "y", "z"]
    np.testing.assert_array_equal(undirected.parents, [1, 2, -1, 0])
    np.testing.assert_array_equal(undirected.weights, [0.5, 2, 0, 0])
    np.testing.assert_array_equal(undirected.bins, [3])


def test_undirected_edges_are_oriented_from_the_root():
    t = build_from_edges([(0, 1), (1, 2), (1, 3)], weights=[1.0, 2.0, 3.0], root=2)
    np.testing.assert_array_equal(t.parents, [1, 2, -1, 1])
    np.testing.assert_array_equal(t.weights, [1, 2, 0, 3])
    np.testing.assert_array_equal(t.bins, [0, 3])


@pytest.mark.parametrize(
    "edges, kwargs, match",
    [
        ([], {}, "edge list is empty"),
        ([("a", "a"), ("a", "b")], {}, r"edge 0 \('a', 'a'\) is a self-loop"),
        ([("a", "b"), ("a", "b")], {}, r"edge 0 \('a', 'b'\) and edge 1 \('a', 'b'\) are the same edge"),
        (
            [("a", "b"), ("a", "c"), ("c", "b")],
            {},
            r"node 'b' has two parents: 'a' \(edge 0 \('a', 'b'\)\) and 'c' \(edge 2 \('c', 'b'\)\)",
        ),
        ([("a", "b"), ("c", "d"), ("c", "e")], {}, "2 roots .*'a', 'c'; a tree has exactly one"),
        ([("a", "b"), ("b", "a")], {}, r"no root \(every node is a child\)"),
        ([("r", "a"), ("x", "y"), ("y", "z"), ("z", "x")], {}, "cycle: 'x' -> 'y' -> 'z' -> 'x'"),
        ([("a", "b")], {"root": "q"}, "root 'q' is not a node"),
        (
            [("a", "b"), ("c", "d"), ("d", "e")],
            {"root": "a"},
            "not connected: 'c', 'd', 'e' cannot be reached from the root 'a'",
        ),
        ([("a", "b"), ("b", "c"), ("c", "a")], {"root": "a"}, r"cycle: edge 2 \('c', 'a'\) closes it"),
        ([("a", "b"), ("b", "a")], {"root": "a"}, "join the same two nodes"),
        ([(1, "1")], {}, "node labels 1 and '1' both read as the name '1'"),
        ([("a", "b"), ("a", "c")], {"weights": [1.0]}, r"weights has shape \(1,\) but there are 2 edges"),
        ([("a", "b"), ("a", "c")], {"weights": [1.0, -1.0]}, r"cost of edge 1 \('a', 'c'\) is -1.0"),
        ([("a", "b"), ("a", "c")], {"weights": [1.0, np.nan]}, r"cost of edge 1 \('a', 'c'\) is nan"),
        ([("a", "b"), ("a", "c")], {"weights": {("a", "b"): 1}}, r"no entry for edge 1 \('a', 'c'\)"),
        ([("a", "b")], {"weights": {("b", "a"): 1}}, r"no entry for edge 0 \('a', 'b'\)"),
        (
            [("a", "b")],
            {"weights": {("a", "b"): 1, ("a", "x"): 2}},
            r"entry for \('a', 'x'\), which is not an edge",
        ),
        (np.zeros((2, 3)), {}, r"shape \(m, 2\)"),
    ],
)
def test_edge_list_errors(edges, kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_from_edges(edges, **kwargs)


@pytest.mark.parametrize(
    "edges, kwargs, match",
    [
        ("ab", {}, "sequence of"),
        ([("a", "b", "c")], {}, "edge 0 is .* not a \\(parent, child\\) pair"),
        (["ab"], {}, "edge 0 is 'ab'"),
        ([("a", ["b"])], {}, "unhashable"),
        ([("a", "b")], {"weights": ["x"]}, "weights must be"),
        ([("a", "b")], {"weights": {("a", "b"): "x"}}, r"cost of edge 0 \('a', 'b'\) is 'x', not a number"),
    ],
)
def test_edge_list_type_errors(edges, kwargs, match):
    with pytest.raises(TypeError, match=match):
        build_from_edges(edges, **kwargs)


@st.composite
def labelled_trees(draw):
    """Shuffled (parent, child) edges of a random tree, with random costs and labels."""
    n = draw(st.integers(2, 20))
    parents = [-1] + [draw(st.integers(0, i - 1)) for i in range(1, n)]
    if draw(st.booleans()):
        labels = draw(st.permutations(range(n)))
    else:
        labels = draw(st.lists(st.text(max_size=3), min_size=n, max_size=n, unique=True))
    weights = draw(st.lists(st.floats(0, 100), min_size=n - 1, max_size=n - 1))
    edges = [(labels[parents[i]], labels[i]) for i in range(1, n)]
    order = draw(st.permutations(range(n - 1)))
    return [edges[k] for k in order], [weights[k] for k in order], labels


@settings(max_examples=60, deadline=None)
@given(labelled_trees(), st.data())
def test_edge_path_distances_match_networkx(tree, data):
    edges, weights, labels = tree
    root = data.draw(st.sampled_from([None, *labels]))
    t = build_from_edges(edges, weights=weights, root=root)
    check_arrays(t)
    if t.node_names is None:
        assert sorted(labels) == list(range(len(labels)))
        index = {x: x for x in labels}
    else:
        index = {x: t.node_names.index(x) for x in labels}
        assert t.names == [t.node_names[b] for b in t.bins]
    if root is not None:
        assert t.parents[index[root]] == -1
    graph = nx.Graph()
    graph.add_weighted_edges_from((u, v, w) for (u, v), w in zip(edges, weights))
    picks = data.draw(st.lists(st.sampled_from(labels), min_size=1, max_size=5, unique=True))
    got = oracle.distance_matrix(t.parents, t.weights, [index[x] for x in picks])
    for i, a in enumerate(picks):
        for j, b in enumerate(picks):
            assert got[i, j] == pytest.approx(nx.shortest_path_length(graph, a, b, "weight"), abs=1e-9)


# --- networkx --------------------------------------------------------------


def test_networkx_digraph():
    g = nx.DiGraph()
    g.add_nodes_from(["leaf", "root", "mid"])
    g.add_edge("root", "mid", weight=2.5)
    g.add_edge("mid", "leaf")
    g.add_edge("root", "other", cost=4.0)
    t = build_from_networkx(g)
    check_arrays(t)
    assert t.node_names == ["leaf", "root", "mid", "other"]
    np.testing.assert_array_equal(t.parents, [2, -1, 1, 1])
    np.testing.assert_array_equal(t.weights, [1.0, 0, 2.5, 1.0])
    assert t.names == ["leaf", "other"]
    np.testing.assert_array_equal(build_from_networkx(g, weight="cost").weights, [1, 0, 1, 4])
    np.testing.assert_array_equal(build_from_networkx(g, weight=None).weights, [1, 0, 1, 1])
    assert build_from_networkx(g, root="root").parents.tolist() == t.parents.tolist()
    with pytest.raises(ValueError, match=r"root 'mid' has a parent: edge \('root', 'mid'\)"):
        build_from_networkx(g, root="mid")


def test_networkx_undirected_graph_uses_first_node_as_default_root():
    g = nx.Graph()
    g.add_weighted_edges_from([(1, 0, 0.5), (1, 2, 1.5), (2, 3, 2.0)])
    t = build_from_networkx(g)
    assert t.node_names is None
    np.testing.assert_array_equal(t.parents, [1, -1, 1, 2])
    np.testing.assert_array_equal(t.weights, [0.5, 0, 1.5, 2.0])
    np.testing.assert_array_equal(t.bins, [0, 3])
    t3 = build_from_networkx(g, root=3)
    np.testing.assert_array_equal(t3.parents, [1, 2, 3, -1])
    np.testing.assert_array_equal(t3.bins, [0])


def test_networkx_random_trees_keep_distances():
    for seed in range(5):
        g = nx.random_labeled_tree(30, seed=seed)
        rng = np.random.default_rng(seed)
        for u, v in g.edges:
            g.edges[u, v]["weight"] = float(rng.random())
        t = build_from_networkx(g, root=seed)
        check_arrays(t)
        nodes = list(range(0, 30, 3))
        expected = dict(nx.all_pairs_dijkstra_path_length(g))
        got = oracle.distance_matrix(t.parents, t.weights, nodes)
        for i, a in enumerate(nodes):
            for j, b in enumerate(nodes):
                assert got[i, j] == pytest.approx(expected[a][b])


def test_networkx_single_node():
    g = nx.Graph()
    g.add_node("only")
    t = build_from_networkx(g)
    np.testing.assert_array_equal(t.parents, [-1])
    assert t.names == ["only"]


@pytest.mark.parametrize(
    "graph, kwargs, match",
    [
        (nx.Graph(), {}, "no nodes"),
        (nx.cycle_graph(4), {}, r"cycle: edge \(2, 3\) closes it"),
        (nx.Graph([(0, 1), (2, 3)]), {}, "not connected: 2, 3 cannot be reached"),
        (nx.DiGraph([(0, 1), (2, 1)]), {}, "node 1 has two parents: 0 .* and 2"),
        (nx.DiGraph([(0, 1), (2, 3)]), {}, "2 roots"),
        (nx.path_graph(3), {"root": 7}, "root 7 is not a node"),
        (nx.Graph([(0, 1, {"weight": -1.0})]), {}, r"cost of edge \(0, 1\) is -1.0"),
    ],
)
def test_networkx_errors(graph, kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_from_networkx(graph, **kwargs)


def test_networkx_type_errors():
    with pytest.raises(TypeError, match="networkx Graph or DiGraph, got list"):
        build_from_networkx([(0, 1)])
    with pytest.raises(TypeError, match="multigraphs"):
        build_from_networkx(nx.MultiGraph([(0, 1)]))
    with pytest.raises(TypeError, match="not a number"):
        build_from_networkx(nx.Graph([(0, 1, {"weight": "heavy"})]))


# --- linkage ---------------------------------------------------------------


def test_linkage_small_exact():
    Z = np.array([[0.0, 1.0, 1.0, 2.0], [2.0, 3.0, 3.0, 3.0]])
    t = build_from_linkage(Z)
    check_arrays(t)
    np.testing.assert_array_equal(t.parents, [3, 3, 4, 4, -1])
    np.testing.assert_array_equal(t.weights, [1, 1, 3, 2, 0])
    np.testing.assert_array_equal(t.bins, [0, 1, 2])
    assert t.names is None and t.node_names is None


@pytest.mark.parametrize("method", ["single", "complete", "average", "weighted", "ward"])
def test_linkage_leaf_distances_are_twice_cophenetic(method):
    X = np.random.default_rng(3).normal(size=(25, 3))
    Z = linkage(X, method)
    t = build_from_linkage(Z)
    check_arrays(t)
    got = oracle.distance_matrix(t.parents, t.weights, t.bins)
    np.testing.assert_allclose(got, 2 * squareform(cophenet(Z)), atol=1e-12)


@pytest.mark.parametrize(
    "Z, match",
    [
        (np.zeros((2, 3)), "invalid linkage matrix: .*4 columns"),
        (np.zeros((0, 4)), "invalid linkage matrix"),
        (np.array([[0.0, 1.0, -1.0, 2.0]]), "invalid linkage matrix: merge 0 has height -1.0"),
        (np.array([[0.0, 0.0, 1.0, 2.0], [1.0, 2.0, 2.0, 2.0]]), "invalid linkage matrix"),
        (np.array([[0.0, 1.0, np.nan, 2.0]]), "merge 0 has height nan"),
        (
            np.array([[0.0, 1.0, 2.0, 2.0], [2.0, 3.0, 1.5, 3.0]]),
            r"non-monotone linkage: merge 1 at height 1.5 is lower than the cluster 3 .*height 2.0",
        ),
    ],
)
def test_linkage_errors(Z, match):
    with pytest.raises(ValueError, match=match):
        build_from_linkage(Z)


def test_linkage_inversion_from_centroid_method():
    X = np.array([[0.0, 0.0], [1.0, 0.0], [0.5, 0.9]])
    Z = linkage(X, "centroid")
    assert Z[1, 2] < Z[0, 2]
    with pytest.raises(ValueError, match="non-monotone linkage: merge 1"):
        build_from_linkage(Z)


# --- nested ----------------------------------------------------------------


def test_nested_example():
    nested = {"animal": {"cat": None, "dog": {}}, "vehicle": ["car", "ship", {"boat": ["canoe"]}]}
    t = build_from_nested(nested)
    check_arrays(t)
    assert t.node_names == [None, "animal", "cat", "dog", "vehicle", "car", "ship", "boat", "canoe"]
    np.testing.assert_array_equal(t.parents, [-1, 0, 1, 1, 0, 4, 4, 4, 7])
    np.testing.assert_array_equal(t.weights, [0, 1, 1, 1, 1, 1, 1, 1, 1])
    np.testing.assert_array_equal(t.bins, [2, 3, 5, 6, 8])
    assert t.names == ["cat", "dog", "car", "ship", "canoe"]


def test_nested_single_key_is_the_root_and_lists_at_top():
    t = build_from_nested({"life": ("plant", {"fungus": [], "animal": ["cat", 7]})})
    assert t.node_names == ["life", "plant", "fungus", "animal", "cat", "7"]
    np.testing.assert_array_equal(t.parents, [-1, 0, 0, 0, 3, 3])
    assert t.names == ["plant", "fungus", "cat", "7"]
    top = build_from_nested(["a", {"b": ["c"]}])
    assert top.node_names == [None, "a", "b", "c"]
    np.testing.assert_array_equal(top.parents, [-1, 0, 0, 2])
    leaf = build_from_nested({"solo": None})
    np.testing.assert_array_equal(leaf.parents, [-1])
    assert leaf.names == ["solo"]


def test_nested_deep_chain_without_recursion():
    node = None
    for i in range(5000):
        node = {f"n{i}": node}
    t = build_from_nested(node)
    assert t.parents.shape == (5000,)
    np.testing.assert_array_equal(t.parents, np.arange(-1, 4999))
    assert t.names == ["n0"]


def test_nested_errors():
    with pytest.raises(ValueError, match="empty"):
        build_from_nested({})
    with pytest.raises(ValueError, match="two leaves are named 'x': 'a/x' and 'b/x'"):
        build_from_nested({"a": ["x"], "b": {"x": None}})
    loop = {"a": {}}
    loop["a"]["b"] = loop["a"]
    with pytest.raises(ValueError, match="'a/b' appears twice"):
        build_from_nested(loop)
    with pytest.raises(TypeError, match="value of 'a/b' is 3"):
        build_from_nested({"a": {"b": 3}})
    with pytest.raises(TypeError, match="children of 'a' contain None"):
        build_from_nested({"a": [None]})
    with pytest.raises(TypeError, match="dict or a list, got str"):
        build_from_nested("tree")


# ----------------------------------------------------------------------------- bins= in bin order


def test_bins_in_order_for_every_builder():
    from emdtree import Tree

    edges = [("animal", "cat"), ("animal", "dog"), ("root", "animal"), ("root", "car")]
    t = Tree.from_edges(edges, bins=["dog", "animal", "car"])
    assert t.names == ("dog", "animal", "car")
    assert [t.node_names[b] for b in t.bins] == ["dog", "animal", "car"]
    np.testing.assert_array_equal(t.distance_matrix(), [[0, 1, 3], [1, 0, 2], [3, 2, 0]])
    # undirected with a root, and node indices for entries that are no label
    u = Tree.from_edges([("cat", "animal"), ("dog", "animal"), ("animal", "root"), ("car", "root")],
                        root="root", bins=["dog", 1])
    assert u.names == ("dog", "animal")
    # integer labels 0..n-1 are node indices and labels at once
    assert Tree.from_edges([(0, 1), (0, 2), (1, 3)], bins=[3, 1]).bins.tolist() == [3, 1]
    g = nx.DiGraph(edges)
    assert Tree.from_networkx(g, bins=["car", "root"]).names == ("car", "root")
    n = Tree.from_nested({"animal": ["cat", "dog"], "vehicle": ["car"]}, bins=["car", "animal"])
    assert n.names == ("car", "animal")
    w = Tree.from_newick("((a:1,b:2)ab:0.5,c:3);", bins=["c", "ab", "a"])
    assert w.names == ("c", "ab", "a")
    np.testing.assert_array_equal(w.distance_matrix()[0], [0, 3.5, 4.5])
    # an unnamed internal node by index: no names then
    assert Tree.from_newick("((a,b),c);", bins=["a", 1]).names is None


@pytest.mark.parametrize("bins, error, match", [
    (["cow"], ValueError, r"bins\[0\] = 'cow' is neither a node label nor a node index"),
    (["cat", "cat"], ValueError, r"bins\[0\] and bins\[1\] are the same node"),
    (["cat", 1], ValueError, r"bins\[0\] and bins\[1\] are the same node"),  # node 1 is "cat"
    ([99], ValueError, r"bins\[0\] = 99 is neither"),
    ("cat", TypeError, "bins must be a sequence of node labels or indices"),
    ([["cat"]], TypeError, r"bins\[0\] = \['cat'\] is not hashable"),
    ([], ValueError, "bins is empty"),
])
def test_bins_errors(bins, error, match):
    from emdtree import Tree

    with pytest.raises(error, match=match):
        Tree.from_edges([("animal", "cat"), ("animal", "dog")], bins=bins)


def test_bins_by_an_ambiguous_name():
    from emdtree import Tree

    # two internal nodes named "x": the name picks neither
    with pytest.raises(ValueError, match=r"bins\[0\] = 'x' is neither"):
        Tree.from_nested({"x": {"y": ["a"]}, "z": {"x": ["b"]}}, bins=["x"])
