"""Tests for the Newick reader and writer."""

import pathlib
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import oracle
from emdtree.trees.builders import TreeArrays
from emdtree.trees.newick import parse_newick, read_newick, to_newick


def assert_same(a, b):
    np.testing.assert_array_equal(a.parents, b.parents)
    np.testing.assert_array_equal(a.weights, b.weights)
    np.testing.assert_array_equal(a.bins, b.bins)
    assert a.names == b.names
    assert a.node_names == b.node_names


def test_small_tree_exact_arrays():
    t = parse_newick("((A:1,B:2)AB:0.5,C:3)root;")
    assert isinstance(t, TreeArrays)
    assert t.parents.dtype == np.int64 and t.bins.dtype == np.int64
    assert t.weights.dtype == np.float64
    np.testing.assert_array_equal(t.parents, [-1, 0, 1, 1, 0])
    np.testing.assert_array_equal(t.weights, [0.0, 0.5, 1.0, 2.0, 3.0])
    np.testing.assert_array_equal(t.bins, [2, 3, 4])
    assert t.names == ["A", "B", "C"]
    assert t.node_names == ["root", "AB", "A", "B", "C"]


def test_topology_only_costs_one_and_root_length_ignored():
    t = parse_newick("((A,B),(C,D)):7.5;")
    np.testing.assert_array_equal(t.parents, [-1, 0, 1, 1, 0, 4, 4])
    np.testing.assert_array_equal(t.weights, [0, 1, 1, 1, 1, 1, 1])
    assert t.node_names == [None, None, "A", "B", None, "C", "D"]


def test_default_length_fills_missing_lengths():
    t = parse_newick("((A:1,B)X,C:2);", default_length=0.25)
    np.testing.assert_array_equal(t.weights, [0, 0.25, 1, 0.25, 2])
    with pytest.raises(ValueError, match="tip 'B'.*no branch length.*default_length"):
        parse_newick("((A:1,B)X:1,C:2);")
    with pytest.raises(ValueError, match="internal node 'X'.*no branch length"):
        parse_newick("((A:1,B:1)X,C:2);")


def test_comments_whitespace_and_exponents():
    text = """[&R] ( [first] A : 1e-3 [&&NHX:S=x] ,
        ( B:2.5E+2 , C : 0 ) [c] inner : .5
    ) [end] ; [trailing]
    """
    t = parse_newick(text)
    np.testing.assert_array_equal(t.parents, [-1, 0, 0, 2, 2])
    np.testing.assert_array_equal(t.weights, [0, 1e-3, 0.5, 250.0, 0.0])
    assert t.names == ["A", "B", "C"]
    assert t.node_names == [None, "A", "inner", "B", "C"]


def test_missing_semicolon_is_accepted():
    assert_same(parse_newick("(A:1,B:2)"), parse_newick("(A:1,B:2);"))


def test_quoted_and_underscored_labels():
    t = parse_newick("('a b;c':1,'(x:y, z)':1,'it''s':1,A_b:1,'A_b':1,'':1)'r t';")
    assert t.names == ["a b;c", "(x:y, z)", "it's", "A b", "A_b", ""]
    assert t.node_names[0] == "r t"


def test_numeric_looking_names_stay_strings():
    t = parse_newick("(123:1,'456':2,1e5:3,0.5:4)7;")
    assert t.names == ["123", "456", "1e5", "0.5"]
    assert t.node_names[0] == "7"
    np.testing.assert_array_equal(t.weights, [0, 1, 2, 3, 4])


def test_repeated_internal_names_unary_nodes_and_zero_lengths():
    t = parse_newick("(((A:0)X:1)X:0,(B:2)X:3);")
    np.testing.assert_array_equal(t.parents, [-1, 0, 1, 2, 0, 4])
    np.testing.assert_array_equal(t.weights, [0, 0, 1, 0, 3, 2])
    np.testing.assert_array_equal(t.bins, [3, 5])
    assert t.node_names == [None, "X", "X", "A", "X", "B"]


def test_unlabelled_tips_give_no_names():
    t = parse_newick("(,(,));")
    np.testing.assert_array_equal(t.parents, [-1, 0, 0, 2, 2])
    assert t.names is None and t.node_names is None


def test_single_node_trees():
    t = parse_newick("A;")
    np.testing.assert_array_equal(t.parents, [-1])
    np.testing.assert_array_equal(t.weights, [0.0])
    np.testing.assert_array_equal(t.bins, [0])
    assert t.names == ["A"]
    assert parse_newick(";").names is None


@pytest.mark.parametrize(
    "text, match",
    [
        ("", "holds no tree"),
        ("  [only a comment] ", "holds no tree"),
        ("((A,B);", r"';' at position 6 before the '\(' at position 0 is closed"),
        ("((A,B)", r"'\(' at position 0 is never closed"),
        ("(A,B));", r"unmatched '\)' at position 5"),
        ("A,B;", "',' outside any parentheses at position 1"),
        ("(A,B);(C,D);", r"unexpected '\(' after the closing ';' at position 6"),
        ("(A B,C);", "unexpected label 'B' at position 3"),
        ("(A,B)(C);", r"unexpected '\(' at position 5"),
        ("('A,B);", "unterminated quoted label at position 1"),
        ("(A[x,B);", "unterminated comment at position 2"),
        ("(A],B);", r"unexpected '\]' at position 2"),
        ("(A:,B);", "expected a branch length after ':' at position 3"),
        ("(A:1:2,B);", "second branch length at position 4"),
        ("(A:x,B);", "invalid branch length 'x' at position 3"),
        ("(A:1_0,B);", "invalid branch length '1_0'"),
        ("(A:inf,B);", "branch length 'inf' at position 3 is not finite"),
        ("(A:nan,B);", "'nan' at position 3 is not finite"),
        ("(A:1,B:-0.5);", r"negative branch length -0.5 at position 7 for the tip 'B'"),
        ("((A:1,B:1):-1,C:1);", "negative branch length -1 .* unlabelled internal node at position 1"),
        ("(A:1,B:", "ends where a branch length was expected"),
        ("(A,(B,A));", "two tips are labelled 'A': the tip 'A' at position 1 and the tip 'A' at position 6"),
        ("(A,(B,));", r"tip at position 6 has no label while other tips have one"),
    ],
)
def test_malformed_text(text, match):
    with pytest.raises(ValueError, match=match):
        parse_newick(text)


def test_positions_in_multiline_text_give_line_and_column():
    where = r"position 8 \(line 2, column 3\) for the tip 'B' at position 6 \(line 2, column 1\)"
    with pytest.raises(ValueError, match=where):
        parse_newick("(A:1,\nB:-1);")


def test_bad_arguments():
    with pytest.raises(TypeError, match="str"):
        parse_newick(b"(A,B);")
    with pytest.raises(ValueError, match="default_length"):
        parse_newick("(A,B);", default_length=-1.0)


def test_deep_caterpillar_parses_and_writes_without_recursion():
    n = 100_000
    text = "(" * (n - 1) + "t0" + "".join(f",t{i}:{i})" for i in range(1, n)) + ";"
    t = parse_newick(text, default_length=0.0)
    assert t.parents.shape == (2 * n - 1,)
    np.testing.assert_array_equal(t.parents[: n - 1], np.arange(-1, n - 2))
    assert t.names[:3] == ["t0", "t1", "t2"] and t.names[-1] == f"t{n - 1}"
    assert t.weights[-1] == n - 1 and t.weights[n - 1] == 0.0
    assert_same(parse_newick(to_newick(*t)), t)


def test_large_random_tree_round_trip():
    rng = random.Random(0)
    n = 100_000
    parents = [-1] * (2 * n - 1)
    pool = list(range(n))
    for new in range(n, 2 * n - 1):
        for _ in range(2):
            k = rng.randrange(len(pool))
            pool[k], pool[-1] = pool[-1], pool[k]
            parents[pool.pop()] = new
        pool.append(new)
    weights = np.random.default_rng(0).random(2 * n - 1)
    text = to_newick(np.array(parents), weights, np.arange(n), [f"s{i}" for i in range(n)])
    t = parse_newick(text)
    assert len(t.names) == n and t.parents.shape == (2 * n - 1,)
    assert to_newick(*t) == text


@st.composite
def preorder_trees(draw):
    """Trees numbered in pre-order with children in node order."""
    n = draw(st.integers(1, 25))
    parents, path = [-1], [0]
    for i in range(1, n):
        j = draw(st.integers(0, len(path) - 1))
        parents.append(path[j])
        path = path[: j + 1] + [i]
    parents = np.array(parents, dtype=np.int64)
    has_child = np.zeros(n, bool)
    has_child[parents[1:]] = True
    bins = np.flatnonzero(~has_child)
    weights = np.array(draw(st.lists(st.floats(0, 1e300), min_size=n, max_size=n)))
    weights[0] = 0.0
    if not draw(st.booleans()):
        return TreeArrays(parents, weights, bins, None, None)
    labels = draw(st.lists(st.text(max_size=6), min_size=n, max_size=n, unique=True))
    node_names = [x if not has_child[i] or draw(st.booleans()) else None for i, x in enumerate(labels)]
    return TreeArrays(parents, weights, bins, [labels[b] for b in bins], node_names)


@settings(max_examples=200, deadline=None)
@given(preorder_trees())
def test_round_trip_is_exact(tree):
    assert_same(parse_newick(to_newick(*tree)), tree)


@settings(max_examples=50, deadline=None)
@given(st.integers(2, 30), st.randoms(use_true_random=False))
def test_round_trip_of_any_numbering_keeps_leaf_distances(n, rng):
    parents = [-1] + [rng.randrange(i) for i in range(1, n)]
    perm = list(range(n))
    rng.shuffle(perm)
    shuffled = np.empty(n, dtype=np.int64)
    for i, p in enumerate(parents):
        shuffled[perm[i]] = -1 if p < 0 else perm[p]
    weights = np.array([rng.choice([0.0, 0.1, 1 / 3, 7.0]) for _ in range(n)])
    has_child = np.zeros(n, bool)
    has_child[shuffled[shuffled >= 0]] = True
    bins = np.flatnonzero(~has_child)
    names = [f"leaf {b}" for b in bins]
    text = to_newick(shuffled, weights, bins, names)
    back = parse_newick(text)
    assert to_newick(*back) == text
    order = [back.names.index(x) for x in names]
    expected = oracle.distance_matrix(shuffled, weights, bins)
    got = oracle.distance_matrix(back.parents, back.weights, back.bins)[np.ix_(order, order)]
    np.testing.assert_array_equal(got, expected)


def test_to_newick_quoting_and_defaults():
    text = to_newick([-1, 0, 0, 0], None, None, ["a b", "x_y", "it's"], ["r", None, None, None])
    assert text == "('a b','x_y','it''s')r;"
    assert parse_newick(text).names == ["a b", "x_y", "it's"]
    assert to_newick([-1, 0, 0], [0.0, 0.1, 1e-5]) == "(:0.1,:1e-05);"


@pytest.mark.parametrize(
    "args, match",
    [
        (([-1, 0, 1], None, [1, 2]), "bin node 1 is not a leaf"),
        (([-1, 0, 0], None, [1]), "leaf 2 is not a bin"),
        (([-1, 0, 0], None, [1, 1]), "bins contain a node twice"),
        (([-1, 0, 0], None, [1, 5]), "bin node 5 is not a node"),
        (([-1, -1, 0],), "exactly one root"),
        (([-1, 2, 1],), "cycle"),
        (([-1, 0, 7],), r"parents\[2\] = 7 is not a node"),
        (([-1, 0, 0], [0.0, 1.0, -2.0]), r"weights\[2\] = -2.0"),
        (([-1, 0, 0], [0.0, 1.0]), "weights has shape"),
        (([-1, 0, 0], None, None, ["a"]), "names has 1 entries for 2 bins"),
        (([0.5, 0.0],), "integer"),
    ],
)
def test_to_newick_errors(args, match):
    with pytest.raises(ValueError, match=match):
        to_newick(*args)


def test_read_newick_from_files_and_strings(tmp_path):
    path = tmp_path / "tree.nwk"
    path.write_text("\ufeff((Ä:1,B:2)X:1,C:1);\n", encoding="utf-8")
    expected = parse_newick("((Ä:1,B:2)X:1,C:1);")
    assert_same(read_newick(path), expected)
    assert_same(read_newick(str(path)), expected)
    assert_same(read_newick("((Ä:1,B:2)X:1,C:1);"), expected)
    assert_same(read_newick("A;"), parse_newick("A"))
    missing = str(tmp_path / "missing.nwk")
    with pytest.raises(FileNotFoundError, match="missing.nwk"):
        read_newick(missing)
    with pytest.raises(FileNotFoundError, match="'A'"):
        read_newick("A")
    with pytest.raises(FileNotFoundError):
        read_newick(pathlib.Path(missing))
    with pytest.raises(TypeError):
        read_newick(3)
