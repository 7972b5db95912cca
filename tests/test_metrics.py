"""``emdtree.metrics``: hierarchical evaluation metrics and streaming accumulators."""

import math
import pickle

import numpy as np
import pytest
from trees import TREE_CASES, random_tree

import emdtree
import oracle
from emdtree import Tree, metrics
from emdtree.evaluation.exactsum import ExactSum
from emdtree.trees.hierarchy import hierarchy
from emdtree.evaluation.chunks import chunk_emd, ranks
from emdtree.metrics import EMDMetric, HierarchicalMetrics

# ----------------------------------------------------------------------------- brute force


def ranked(scores):
    """Class indices by decreasing score, ties by increasing index."""
    return sorted(range(len(scores)), key=lambda c: (-scores[c], c))


def _walks(tree):
    """``up(node)`` (the path to the root), summed edge costs from the root, bins below each node."""
    parents, weights, bins = tree.parents, tree.weights, tree.bins

    def up(node):
        path = [int(node)]
        while parents[path[-1]] >= 0:
            path.append(int(parents[path[-1]]))
        return path

    to_root = {node: sum(weights[i] for i in up(node)[:-1]) for node in range(tree.n_nodes)}
    below = {node: [] for node in range(tree.n_nodes)}
    for b in bins:
        for a in up(b):
            below[a].append(int(b))
    return up, to_root, below


def _lca_matrix(tree, value):
    """``value(lca, to_root, below)`` for every pair of distinct bins, by walking parents."""
    up, to_root, below = _walks(tree)
    bins = tree.bins
    n = tree.n_bins
    out = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            if i != j:
                path_j = set(up(bins[j]))
                top = next(a for a in up(bins[i]) if a in path_j)
                out[i, j] = value(top, to_root, below)
    return out


def lca_height_matrix(tree):
    """Bertinetto et al.: ``H - depth(lca)``, with ``H`` the largest depth of a bin."""
    _, to_root, _ = _walks(tree)
    H = max(to_root[int(b)] for b in tree.bins)
    return _lca_matrix(tree, lambda top, to_root, below: H - to_root[top])


def lca_subtree_height_matrix(tree):
    """Height of the subtree of the lowest common ancestor: the longest path down to a bin."""
    return _lca_matrix(tree, lambda top, to_root, below: max(to_root[b] for b in below[top]) - to_root[top])


LCA_DISTANCES = {"lca_height": lca_height_matrix, "lca_subtree_height": lca_subtree_height_matrix}


def brute_report(pred, labels, D, ks):
    pred, labels = np.asarray(pred), np.asarray(labels)
    out = {}
    orders = [ranked(list(row)) for row in pred]
    for k in ks:
        out[f"accuracy@{k}"] = np.mean([y in order[:k] for order, y in zip(orders, labels)])
        out[f"hierarchical_distance@{k}"] = np.mean(
            [np.mean([D[y, c] for c in order[:k]]) for order, y in zip(orders, labels)])
    wrong = [(order[0], y) for order, y in zip(orders, labels) if order[0] != y]
    out["n_mistakes"] = len(wrong)
    out["mistake_severity"] = np.mean([D[y, c] for c, y in wrong]) if wrong else math.nan
    return out


def tree_of(case):
    if case == "large":  # bins span several 16-score blocks of the ranking kernel
        return Tree(*random_tree(np.random.default_rng(42), 150, bins_on_internal=True))
    for name, build in TREE_CASES:
        if name == case:
            parents, weights, bins = build()
            return Tree(parents, weights, bins)
    raise KeyError(case)


def probabilities(rng, m, n, ties=False, dtype=np.float64):
    """Rows summing to 1; with ``ties``, scores from a few levels so that many are equal."""
    raw = rng.integers(0, 4, (m, n)).astype(float) + 0.25 if ties else rng.random((m, n)) + 0.01
    return (raw / raw.sum(axis=1, keepdims=True)).astype(dtype)


def close(a, b, rtol=1e-12):
    return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=rtol, abs_tol=1e-12)


# ----------------------------------------------------------------------------- tree distances


@pytest.mark.parametrize("case", [name for name, _ in TREE_CASES])
def test_lca_distances_match_distance_matrix(case):
    tree = tree_of(case)
    n = tree.n_bins
    a, b = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    h = hierarchy(tree)
    np.testing.assert_allclose(h.distance(a, b, "path"), tree.distance_matrix(), rtol=1e-13, atol=1e-13)
    for kind, brute in LCA_DISTANCES.items():
        want = brute(tree)
        np.testing.assert_allclose(h.distance(a, b, kind), want, rtol=1e-13, atol=1e-13)
        np.testing.assert_allclose(tree.distance_matrix(kind), want, rtol=1e-13, atol=1e-13)
    np.testing.assert_array_equal(tree.distance_matrix("path"), tree.distance_matrix())


def test_lca_distances_on_imagenet():
    tree = emdtree.datasets.imagenet_wordnet()
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 1000, 20000), rng.integers(0, 1000, 20000)
    D = tree.distance_matrix()
    np.testing.assert_array_equal(hierarchy(tree).distance(a, b, "path"), D[a, b])


def test_path_is_twice_lca_height_on_a_balanced_tree():
    tree = tree_of("binary")  # unit edges, every leaf at the same depth
    pred = probabilities(np.random.default_rng(1), 50, tree.n_bins)
    labels = np.random.default_rng(2).integers(0, tree.n_bins, 50)
    path = metrics.mistake_severity(pred, labels, tree)
    height = metrics.mistake_severity(pred, labels, tree, distance="lca_height")
    assert path == pytest.approx(2 * height, rel=1e-14)


# ----------------------------------------------------------------------------- ranking kernel


def score_rows(rng, m, n, kind):
    if kind == "random":
        return rng.random((m, n))
    if kind == "ties":
        return rng.integers(0, 3, (m, n)).astype(float)
    if kind == "ascending":  # every score beats the k-th best so far
        return np.sort(rng.random((m, n)), axis=1)
    if kind == "descending":
        return -np.sort(-rng.random((m, n)), axis=1)
    if kind == "infinite":
        x = rng.standard_normal((m, n))
        x[rng.random((m, n)) < 0.3] = -np.inf
        x[rng.random((m, n)) < 0.05] = np.inf
        return x
    raise ValueError(kind)


@pytest.mark.parametrize("kind", ["random", "ties", "ascending", "descending", "infinite"])
@pytest.mark.parametrize("n", [1, 5, 16, 17, 40, 100])
def test_rank_and_top_k_match_sorting(n, kind):
    rng = np.random.default_rng(n)
    scores = score_rows(rng, 12, n, kind)
    labels = rng.integers(0, n, 12)
    for dtype in (np.float64, np.float32, np.int64):
        if dtype == np.int64:
            x = np.nan_to_num(scores * 4, posinf=9, neginf=-9).astype(dtype)
        else:
            x = scores.astype(dtype)
        orders = [ranked(list(row)) for row in x]
        for k in sorted({k for k in (0, 1, 2, 5, n) if k <= n}):
            rank, top = ranks(x, labels, k)
            assert rank.tolist() == [order.index(y) for order, y in zip(orders, labels)]
            assert top.tolist() == [order[:k] for order in orders]


# ----------------------------------------------------------------------------- against brute force


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("case", ["star", "random", "random_internal_bins", "random_zero_weights", "large"])
def test_report_matches_brute_force(case, ties):
    tree = tree_of(case)
    rng = np.random.default_rng(len(case) + ties)
    n = tree.n_bins
    pred = probabilities(rng, 60, n, ties=ties)
    labels = rng.integers(0, n, 60)
    ks = tuple(sorted({1, 2, min(3, n), n}))
    for distance, D in [("path", tree.distance_matrix())] + [(k, f(tree)) for k, f in LCA_DISTANCES.items()]:
        got = metrics.report(pred, labels, tree, ks=ks, distance=distance)
        want = brute_report(pred, labels, D, ks)
        assert got["n_samples"] == 60
        for key, value in want.items():
            assert close(got[key], value), (key, got[key], value)
        for k in ks:
            assert got[f"accuracy@{k}"] == metrics.topk_accuracy(pred, labels, k)
            assert got[f"hierarchical_distance@{k}"] == pytest.approx(
                metrics.average_hierarchical_distance_at_k(pred, labels, tree, k, distance=distance),
                rel=1e-15)
        assert close(got["mistake_severity"], metrics.mistake_severity(pred, labels, tree, distance=distance))
    assert got[f"accuracy@{n}"] == 1.0


def test_hand_computed_small_case():
    # bins: cat, tiger (siblings), car under vehicle; cat-tiger 2, cat-car 3
    tree = Tree.from_nested({"cat": None, "tiger": None, "vehicle": ["car"]})
    pred = np.array([[0.2, 0.7, 0.1],   # label cat: top-1 tiger (2), top-2 tiger, cat
                     [0.1, 0.2, 0.7],   # label cat: top-1 car (3), top-2 car, tiger
                     [0.1, 0.1, 0.8]])  # label car: right; top-2 car, cat (tie -> lower index)
    r = metrics.report(pred, [0, 0, 2], tree, ks=(1, 2), rho=1.0)
    assert r["accuracy@1"] == pytest.approx(1 / 3) and r["accuracy@2"] == pytest.approx(2 / 3)
    assert r["n_mistakes"] == 2 and r["mistake_severity"] == 2.5
    assert r["hierarchical_distance@1"] == pytest.approx(5 / 3)
    assert r["hierarchical_distance@2"] == pytest.approx((2 + 5 + 3) / 6)
    assert r["mean_emd"] == pytest.approx((0.7 * 2 + 0.1 * 3 + 0.2 * 2 + 0.7 * 3 + 0.2 * 3) / 3)
    r2 = metrics.report(pred, [0, 0, 2], tree, ks=(1,), rho=2.0)
    assert r2["mean_emd"] == pytest.approx(np.mean([emdtree.emd(p, q, tree, rho=2) for p, q in
                                                   zip(pred, np.eye(3)[[0, 0, 2]])]))


def test_ties_go_to_the_lower_index():
    pred = np.array([[0.25, 0.25, 0.25, 0.25]] * 4)
    labels = np.array([0, 1, 2, 3])
    assert metrics.topk_accuracy(pred, labels, 1) == 0.25
    assert metrics.topk_accuracy(pred, labels, 3) == 0.75
    tree = Tree.chain(4)
    # top-2 of every row is (0, 1): distances to labels 0..3 are (0+1, 1+0, 2+1, 3+2)
    assert metrics.average_hierarchical_distance_at_k(pred, labels, tree, 2) == pytest.approx(10 / 8)


def test_mistake_severity_is_nan_without_mistakes():
    tree = Tree.chain(3)
    pred = np.eye(3)
    assert math.isnan(metrics.mistake_severity(pred, [0, 1, 2], tree))
    assert metrics.average_hierarchical_distance_at_k(pred, [0, 1, 2], tree, 1) == 0.0


def test_mean_emd_matches_loops_and_linear_program():
    rng = np.random.default_rng(5)
    parents, weights, bins = random_tree(rng, 12)
    tree = Tree(parents, weights, bins)
    n = tree.n_bins
    pred, target = probabilities(rng, 9, n), probabilities(rng, 9, n)
    labels = rng.integers(0, n, 9)
    D = tree.distance_matrix()
    want = np.mean([oracle.emd_lp(p, q, D) for p, q in zip(pred, target)])
    assert metrics.mean_emd(pred, target, tree) == pytest.approx(want, rel=1e-9)
    want = np.mean([oracle.emd(p, np.eye(n)[y], parents, weights, bins, rho=2) for p, y in zip(pred, labels)])
    assert metrics.mean_emd(pred, labels, tree, rho=2) == pytest.approx(want, rel=1e-12)
    # class indices are one-hot distributions
    one_hot = np.eye(n)[labels]
    by_index = metrics.mean_emd(pred, labels, tree)
    assert by_index == pytest.approx(metrics.mean_emd(pred, one_hot, tree), rel=1e-15)


@pytest.mark.parametrize("case", ["star", "random_internal_bins", "random_zero_weights", "chain", None])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64, np.float16])
def test_labels_give_bitwise_the_values_of_one_hot_targets(case, dtype):
    # class indices reach the kernels as indices (no one-hot array), or as one-hot rows
    # where that runs another kernel or precision; either way the values must be those
    # of explicit one-hot targets, to the last bit
    tree = tree_of(case) if case is not None else None
    n = tree.n_bins if tree is not None else 9
    rng = np.random.default_rng(14)
    for m in (1, 5, 45):  # one sample, the row kernel, a block and left-overs
        labels = rng.integers(0, n, m)
        for normalize in (None, "l1") if dtype != np.int64 else ("l1",):
            if dtype == np.int64:  # counts
                pred = rng.integers(1, 5, (m, n))
            else:
                pred = probabilities(rng, m, n, dtype=dtype) * (3 if normalize else 1)
            one_hot = np.eye(n, dtype=np.float32 if dtype == np.float32 else np.float64)[labels]
            for rho in (1.0, 2.0, 1.5):
                got = chunk_emd(pred, labels, True, 0, tree, rho, normalize)
                want = np.asarray(emdtree.emd(pred, one_hot, tree, rho, normalize=normalize), dtype=float)
                np.testing.assert_array_equal(got, want.reshape(-1))
                assert metrics.mean_emd(pred, labels, tree, rho, normalize=normalize) == \
                    metrics.mean_emd(pred, one_hot, tree, rho, normalize=normalize)


def test_labels_on_a_tree_build_no_one_hot_rows(monkeypatch):
    import emdtree.evaluation.chunks as chunks_module

    tree = emdtree.datasets.imagenet_wordnet()
    rng = np.random.default_rng(15)
    pred = probabilities(rng, 40, tree.n_bins, dtype=np.float32)
    labels = rng.integers(0, tree.n_bins, 40)
    want = metrics.report(pred, labels, tree, ks=(1,))["mean_emd"]

    def fail(*args):
        raise AssertionError("one-hot targets built")

    monkeypatch.setattr(chunks_module, "_one_hot", fail)
    assert metrics.report(pred, labels, tree, ks=(1,))["mean_emd"] == want
    assert metrics.mean_emd(pred, labels, tree, rho=2) == EMDMetric(tree, 2).update(pred, labels).compute()
    with pytest.raises(AssertionError, match="one-hot targets built"):  # the chain keeps its kernel
        metrics.mean_emd(pred[:, :5] / pred[:, :5].sum(1, keepdims=True), labels % 5)


def test_mean_emd_normalize_and_default_chain():
    counts = np.array([[2, 0, 0, 2], [0, 3, 0, 0]])
    assert metrics.mean_emd(counts, [3, 0], normalize="l1") == pytest.approx((1.5 + 1.0) / 2)
    assert metrics.mean_emd(np.array([[0.0, 1.0]]), np.array([[1.0, 0.0]])) == 1.0


# ----------------------------------------------------------------------------- chunks and streams


def test_chunked_equals_one_shot():
    tree = tree_of("random_internal_bins")
    rng = np.random.default_rng(7)
    pred = probabilities(rng, 101, tree.n_bins, ties=True)
    labels = rng.integers(0, tree.n_bins, 101)
    whole = metrics.report(pred, labels, tree, ks=(1, 3), per_class=True)
    for chunk_size in (1, 7, 100, 1000):
        part = metrics.report(pred, labels, tree, ks=(1, 3), per_class=True, chunk_size=chunk_size)
        assert part.keys() == whole.keys()
        for key in whole:
            if key == "per_class":
                for col, values in whole[key].items():
                    np.testing.assert_allclose(np.array(part[key][col], dtype=float),
                                               np.array(values, dtype=float), rtol=1e-13)
            else:
                assert part[key] == pytest.approx(whole[key], rel=1e-15), key


def test_streaming_and_merge_equal_one_shot():
    tree = tree_of("random")
    rng = np.random.default_rng(8)
    pred = probabilities(rng, 90, tree.n_bins)
    labels = rng.integers(0, tree.n_bins, 90)
    target = probabilities(rng, 90, tree.n_bins)
    one_shot = metrics.report(pred, labels, tree, ks=(1, 2), per_class=True)
    stream = HierarchicalMetrics(tree, ks=(1, 2), per_class=True)
    workers = [HierarchicalMetrics(tree, ks=(1, 2), per_class=True) for _ in range(3)]
    emd_stream, emd_workers = EMDMetric(tree), [EMDMetric(tree) for _ in range(3)]
    cuts = [0, 5, 6, 40, 77, 90]
    for i, (a, b) in enumerate(zip(cuts[:-1], cuts[1:])):
        stream.update(pred[a:b], labels[a:b])
        workers[i % 3].update(pred[a:b], labels[a:b])
        emd_stream.update(pred[a:b], target[a:b])
        emd_workers[i % 3].update(pred[a:b], target[a:b])
    merged = pickle.loads(pickle.dumps(workers[2])).merge(workers[0]).merge(workers[1])
    for result in (stream.compute(), merged.compute()):
        for key, value in one_shot.items():
            if key == "per_class":
                for col in value:
                    np.testing.assert_allclose(np.array(result[key][col], dtype=float),
                                               np.array(value[col], dtype=float), rtol=1e-13)
            else:
                assert result[key] == pytest.approx(value, rel=1e-15), key
    want = metrics.mean_emd(pred, target, tree)
    assert emd_stream.compute() == pytest.approx(want, rel=1e-15)
    merged = emd_workers[1].merge(emd_workers[0]).merge(emd_workers[2])
    assert merged.compute() == pytest.approx(want, rel=1e-15)
    assert emd_stream.n_samples == 90
    emd_stream.reset()
    assert emd_stream.n_samples == 0 and math.isnan(emd_stream.compute())


def test_exact_sum_does_not_depend_on_order():
    values = np.array([1e16, 1.0, -1e16, 1.0, 3e-17] * 50)
    a, b = ExactSum(), ExactSum()
    for v in values:
        a.add(float(v))
    for v in values[::-1]:
        b.add(float(v))
    assert a.value == b.value == math.fsum(values)


def test_per_class_matches_subsets():
    tree = tree_of("random")
    rng = np.random.default_rng(9)
    n = tree.n_bins
    pred = probabilities(rng, 80, n)
    labels = rng.integers(0, n - 1, 80)  # the last class has no samples
    per = metrics.report(pred, labels, tree, ks=(1, 2), per_class=True)["per_class"]
    assert per["class"] == list(range(n))
    for c in range(n):
        rows = labels == c
        if not rows.any():
            assert per["n_samples"][c] == 0 and math.isnan(per["accuracy@1"][c])
            continue
        sub = metrics.report(pred[rows], labels[rows], tree, ks=(1, 2))
        for key in ("n_samples", "n_mistakes", "accuracy@1", "accuracy@2", "mistake_severity",
                    "hierarchical_distance@2", "mean_emd"):
            assert close(per[key][c], sub[key], rtol=1e-12), (c, key)


def test_empty_inputs_give_nan():
    tree = Tree.chain(3)
    empty = np.zeros((0, 3))
    r = metrics.report(empty, np.zeros(0, dtype=int), tree, ks=(1,))
    assert r["n_samples"] == 0 and math.isnan(r["accuracy@1"]) and math.isnan(r["mean_emd"])
    assert math.isnan(metrics.mean_emd(empty, empty, tree))


def test_memmap_input(tmp_path):
    tree = emdtree.datasets.imagenet_wordnet()
    rng = np.random.default_rng(10)
    pred = probabilities(rng, 300, tree.n_bins, dtype=np.float32)
    labels = rng.integers(0, tree.n_bins, 300)
    np.save(tmp_path / "pred.npy", pred)
    mapped = np.load(tmp_path / "pred.npy", mmap_mode="r")
    a = metrics.report(mapped, labels, tree, chunk_size=64)
    b = metrics.report(pred, labels, tree)
    assert a == pytest.approx(b, rel=1e-12)


def test_float32_matches_float64():
    tree = emdtree.datasets.imagenet_wordnet()
    rng = np.random.default_rng(11)
    pred = probabilities(rng, 200, tree.n_bins)
    labels = rng.integers(0, tree.n_bins, 200)
    r64 = metrics.report(pred, labels, tree)
    r32 = metrics.report(pred.astype(np.float32), labels, tree)
    # rounding the scores can only reorder near-ties; none here
    for key in ("accuracy@1", "accuracy@5", "mistake_severity", "hierarchical_distance@5"):
        assert r32[key] == r64[key]
    # measured: at most 7e-9 relative over 5 seeds (per-sample float32 errors of about 1e-7 average out)
    assert r32["mean_emd"] == pytest.approx(r64["mean_emd"], rel=1e-6)


def test_dask_equals_numpy():
    da = pytest.importorskip("dask.array")
    tree = tree_of("random")
    rng = np.random.default_rng(12)
    pred = probabilities(rng, 70, tree.n_bins)
    labels = rng.integers(0, tree.n_bins, 70)
    target = probabilities(rng, 70, tree.n_bins)
    lazy_pred = da.from_array(pred, chunks=(16, 5))
    lazy_labels = da.from_array(labels, chunks=25)
    want = metrics.report(pred, labels, tree, ks=(1, 2), per_class=True)
    for chunk_size in (None, 9):
        got = metrics.report(lazy_pred, lazy_labels, tree, ks=(1, 2), per_class=True, chunk_size=chunk_size)
        for key in want:
            if key != "per_class":
                assert got[key] == pytest.approx(want[key], rel=1e-15), key
        np.testing.assert_allclose(got["per_class"]["mean_emd"], want["per_class"]["mean_emd"], rtol=1e-13)
    assert metrics.mean_emd(lazy_pred, da.from_array(target, chunks=(7, 3)), tree) == pytest.approx(
        metrics.mean_emd(pred, target, tree), rel=1e-15)
    assert metrics.mean_emd(lazy_pred, labels, tree) == pytest.approx(metrics.mean_emd(pred, labels, tree),
                                                                      rel=1e-15)


def test_torch_tensors():
    torch = pytest.importorskip("torch")
    tree = tree_of("random")
    rng = np.random.default_rng(13)
    pred = probabilities(rng, 20, tree.n_bins)
    labels = rng.integers(0, tree.n_bins, 20)
    logits = torch.tensor(np.log(pred), requires_grad=True)
    probs = torch.softmax(logits, dim=1)
    got = metrics.report(probs, torch.tensor(labels), tree, ks=(1, 2))
    assert got == pytest.approx(metrics.report(pred, labels, tree, ks=(1, 2)), rel=1e-12)
    assert metrics.topk_accuracy(logits, torch.tensor(labels), 2) == metrics.topk_accuracy(pred, labels, 2)


# ----------------------------------------------------------------------------- errors


@pytest.fixture
def small():
    tree = Tree.from_nested({"cat": None, "tiger": None, "vehicle": ["car"]})
    pred = np.full((5, 3), 1 / 3)
    return tree, pred, np.array([0, 1, 2, 0, 1])


def test_label_out_of_range_names_index_and_value(small):
    tree, pred, labels = small
    labels[3] = 3
    with pytest.raises(ValueError, match=r"labels\[3\] = 3 is not a class index in \[0, 2\]"):
        metrics.report(pred, labels, tree, ks=(1,), chunk_size=2)
    labels[3] = -1
    with pytest.raises(ValueError, match=r"labels\[3\] = -1 is not a class index"):
        metrics.topk_accuracy(pred, labels)
    with pytest.raises(ValueError, match=r"target\[3\] = -1 is not a class index"):
        metrics.mean_emd(pred, labels, tree)


def test_shape_errors(small):
    tree, pred, labels = small
    with pytest.raises(ValueError, match=r"labels must have shape \(n_samples,\) = \(5,\).*\(4,\)"):
        metrics.topk_accuracy(pred, labels[:4])
    with pytest.raises(ValueError, match=r"pred must have shape \(n_samples, n_bins\), got shape \(3,\)"):
        metrics.topk_accuracy(pred[0], labels[0])
    with pytest.raises(ValueError, match="pred has 2 bins .* but the tree has 3 bins"):
        metrics.mistake_severity(pred[:, :2], labels, tree)
    with pytest.raises(ValueError, match=r"target must be class indices of shape \(5,\) or distributions"):
        metrics.mean_emd(pred, pred[:, :2], tree)
    with pytest.raises(TypeError, match="labels must hold integer class indices, got dtype float64"):
        metrics.topk_accuracy(pred, labels.astype(float))
    metric = EMDMetric().update(pred, labels)
    with pytest.raises(ValueError, match="pred has 4 bins .* but earlier batches had 3 bins"):
        metric.update(np.full((1, 4), 0.25), [0])


def test_k_errors(small):
    tree, pred, labels = small
    with pytest.raises(ValueError, match=r"k = 4 must be between 1 and the number of bins \(3\)"):
        metrics.topk_accuracy(pred, labels, k=4)
    with pytest.raises(ValueError, match=r"k = 4 must be between 1 and the number of bins \(3\)"):
        metrics.report(pred, labels, tree, ks=(1, 4))
    with pytest.raises(ValueError, match="k must be a positive integer, got 0"):
        metrics.average_hierarchical_distance_at_k(pred, labels, tree, 0)
    with pytest.raises(TypeError, match="k must be a positive integer, got 1.5"):
        metrics.topk_accuracy(pred, labels, k=1.5)


def test_nan_and_mass_errors(small):
    tree, pred, labels = small
    bad = pred.copy()
    bad[4, 2] = np.nan
    with pytest.raises(ValueError, match=r"pred\[4, 2\] is NaN"):
        metrics.topk_accuracy(bad, labels, chunk_size=3)
    with pytest.raises(ValueError, match=r"pred\[4, 2\] = nan is not finite"):
        metrics.mean_emd(bad, labels, tree, chunk_size=3)
    bad = pred.copy()
    bad[3] = [1.5, -0.5, 0.0]
    with pytest.raises(ValueError, match=r"pred\[3, 1\] = -0.5 is negative.*probabilities, not logits"):
        metrics.report(bad, labels, tree, chunk_size=2, ks=(1,))
    bad = pred * 2
    with pytest.raises(ValueError, match=r"pred\[0\] sums to 2.0, not 1.*normalize='l1'"):
        metrics.mean_emd(bad, labels, tree)
    rescaled = metrics.mean_emd(bad, labels, tree, normalize="l1")
    assert rescaled == pytest.approx(metrics.mean_emd(pred, labels, tree), rel=1e-14)
    bad[3] = 0.0
    with pytest.raises(ValueError, match=r"pred\[3\] has zero total mass: cannot normalize"):
        metrics.mean_emd(bad, labels, tree, normalize="l1", chunk_size=2)
    target = pred.copy()
    target[2] *= 3
    with pytest.raises(ValueError, match=r"pred\[2\] and target\[2\] have different total mass"):
        metrics.mean_emd(pred, target, tree, chunk_size=4)


def test_argument_errors(small):
    tree, pred, labels = small
    with pytest.raises(ValueError, match="distance must be one of 'path', 'lca_height', "
                                         "'lca_subtree_height', got 'euclid'"):
        metrics.mistake_severity(pred, labels, tree, distance="euclid")
    with pytest.raises(ValueError, match="chunk_size must be a positive integer or None, got 0"):
        metrics.mean_emd(pred, labels, tree, chunk_size=0)
    with pytest.raises(TypeError, match="tree must be an emdtree.Tree, got str"):
        metrics.report(pred, labels, "imagenet")
    with pytest.raises(ValueError, match="rho must be a finite number >= 1"):
        EMDMetric(tree, rho=0.5)
    with pytest.raises(ValueError, match="cannot merge EMDMetric accumulators"):
        EMDMetric(tree, rho=1).merge(EMDMetric(tree, rho=2))
    with pytest.raises(ValueError, match="cannot merge HierarchicalMetrics"):
        HierarchicalMetrics(tree, ks=(1,)).merge(HierarchicalMetrics(tree, ks=(2,)))
    with pytest.raises(ValueError, match="ks is empty"):
        HierarchicalMetrics(tree, ks=())


# ----------------------------------------------------------------------------- LCA distances by hand


def test_lca_height_is_bertinetto_on_unequal_depths():
    #  root ─ A ─ a1, a2            (leaves at depth 2)
    #       └ B ─ C ─ c1, c2        (leaves at depth 3), so H = 3
    tree = Tree.from_nested({"A": ["a1", "a2"], "B": {"C": ["c1", "c2"]}})
    assert tree.names == ("a1", "a2", "c1", "c2")
    # H - depth(LCA): a1-a2 meet at A (depth 1), c1-c2 at C (depth 2), a-c at the root
    want = np.array([[0, 2, 3, 3], [2, 0, 3, 3], [3, 3, 0, 1], [3, 3, 1, 0]], dtype=float)
    np.testing.assert_array_equal(tree.distance_matrix("lca_height"), want)
    # the height of the LCA's own subtree: A's is 1 deep
    subtree = np.array([[0, 1, 3, 3], [1, 0, 3, 3], [3, 3, 0, 1], [3, 3, 1, 0]], dtype=float)
    np.testing.assert_array_equal(tree.distance_matrix("lca_subtree_height"), subtree)
    np.testing.assert_array_equal(tree.distance_matrix("path"),
                                  [[0, 2, 5, 5], [2, 0, 5, 5], [5, 5, 0, 2], [5, 5, 2, 0]])
    # mistakes a1 -> a2 (2) and c1 -> a1 (3); the correct c2 counts for @k only
    pred = np.array([[0.1, 0.6, 0.2, 0.1], [0.5, 0.1, 0.3, 0.1], [0.0, 0.1, 0.2, 0.7]])
    labels = np.array([0, 2, 3])
    assert metrics.mistake_severity(pred, labels, tree, distance="lca_height") == 2.5
    assert metrics.mistake_severity(pred, labels, tree, distance="lca_subtree_height") == 2.0
    # top-2: (2 + 3) / 2, (3 + 0) / 2, (0 + 1) / 2 over 3 samples
    assert metrics.average_hierarchical_distance_at_k(pred, labels, tree, 2, distance="lca_height") == \
        pytest.approx((2.5 + 1.5 + 0.5) / 3, rel=1e-15)


def test_lca_height_on_weighted_edges_and_internal_bins():
    # depths: A 2, a1 3, a2 2.5, B 1, C 2, c1 5, c2 3; H = 5. A carries a bin too.
    edges = [("r", "A"), ("A", "a1"), ("A", "a2"), ("r", "B"), ("B", "C"), ("C", "c1"), ("C", "c2")]
    tree = Tree.from_edges(edges, weights=[2, 1, 0.5, 1, 1, 3, 1], bins=["a1", "a2", "A", "c1", "c2"])
    assert tree.names == ("a1", "a2", "A", "c1", "c2")
    want = np.array([
        [0, 3, 3, 5, 5],  # a1: with a2 and A the LCA is A (5 - 2), with the c's the root
        [3, 0, 3, 5, 5],
        [3, 3, 0, 5, 5],  # A is its own LCA with a1 and a2
        [5, 5, 5, 0, 3],  # c1-c2 meet at C (5 - 2)
        [5, 5, 5, 3, 0],
    ], dtype=float)
    np.testing.assert_array_equal(tree.distance_matrix("lca_height"), want)
    h = hierarchy(tree)
    a, b = np.meshgrid(np.arange(5), np.arange(5), indexing="ij")
    np.testing.assert_array_equal(h.distance(a, b, "lca_height"), want)
    subtree = np.array([
        [0, 1, 1, 5, 5],  # A's subtree reaches down 1 (to a1)
        [1, 0, 1, 5, 5],
        [1, 1, 0, 5, 5],
        [5, 5, 5, 0, 3],
        [5, 5, 5, 3, 0],
    ], dtype=float)
    np.testing.assert_array_equal(tree.distance_matrix("lca_subtree_height"), subtree)
    with pytest.raises(ValueError, match="distance must be one of 'path', 'lca_height'"):
        tree.distance_matrix("lca")


@pytest.mark.parametrize("case", [name for name, _ in TREE_CASES])
def test_lca_height_is_an_ultrametric(case):
    D = tree_of(case).distance_matrix("lca_height")
    # d(a, c) <= max(d(a, b), d(b, c)) for every triple
    assert np.all(D[:, None, :] <= np.maximum(D[:, :, None], D[None, :, :]) + 1e-12)
    np.testing.assert_array_equal(D, D.T)
