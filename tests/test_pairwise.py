"""emdtree.pairwise: against a loop over emdtree.emd, against scikit-bio's weighted UniFrac, metric axioms."""

import os

import numba
import numpy as np
import pytest
from scipy.spatial.distance import squareform
from trees import TREE_CASES, random_tree

import emdtree
from emdtree import Tree
from emdtree.kernels import pairwise as kernels
from emdtree.trees.newick import to_newick

RHOS = [1.0, 2.0, 1.5]


def loop(X, Y, tree, rho, normalize=None):
    """D[i, j] = emd(X[i], Y[j]) by one call per pair."""
    return np.array([[float(emd_value) for emd_value in emdtree.emd(x, Y, tree, rho=rho, normalize=normalize)]
                     for x in X])


def counts(rng, n, n_bins, density=0.4, dtype=np.float64):
    """Random non-negative rows with some zeros, each with a positive total."""
    x = rng.random((n, n_bins)) * (rng.random((n, n_bins)) < density)
    x[np.arange(n), rng.integers(0, n_bins, n)] += 1.0
    return x.astype(dtype)


def unit_rows(rng, n, n_bins, dtype=np.float64):
    x = counts(rng, n, n_bins)
    return (x / x.sum(1, keepdims=True)).astype(dtype)


def rel_err(a, b):
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-300), initial=0.0))


# ----------------------------------------------------------------------------- against emd


@pytest.mark.parametrize("case", [c for c in TREE_CASES], ids=[c[0] for c in TREE_CASES])
@pytest.mark.parametrize("rho", RHOS)
def test_square_matches_emd_loop(case, rho):
    tree = Tree(*case[1]())
    rng = np.random.default_rng(7)
    X = unit_rows(rng, 11, tree.n_bins)
    D = emdtree.pairwise(X, tree=tree, rho=rho)
    ref = loop(X, X, tree, rho)
    np.fill_diagonal(ref, 0.0)
    assert D.shape == (11, 11) and D.dtype == np.float64
    np.testing.assert_allclose(D, ref, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("rho", RHOS)
@pytest.mark.parametrize("shape", [(1, 1), (1, 6), (5, 3), (37, 41), (70, 9)])
def test_rectangular_matches_emd_loop(rho, shape):
    # sizes on both sides of the 4-row micro tiles and 32-row super tiles
    rng = np.random.default_rng(shape[0] * 100 + shape[1])
    tree = Tree(*random_tree(rng, 60, bins_on_internal=True, zero_weights=True))
    X = unit_rows(rng, shape[0], tree.n_bins)
    Y = unit_rows(rng, shape[1], tree.n_bins)
    D = emdtree.pairwise(X, Y, tree, rho=rho, block_size=4)
    assert D.shape == shape
    np.testing.assert_allclose(D, loop(X, Y, tree, rho), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("rho", RHOS)
def test_long_rows_cross_column_chunks(rho):
    # more contributing nodes than one column chunk, odd sample counts
    rng = np.random.default_rng(3)
    tree = Tree(*random_tree(rng, 3 * kernels.CHUNK + 17))
    X = unit_rows(rng, 35, tree.n_bins)
    Y = unit_rows(rng, 6, tree.n_bins)
    np.testing.assert_allclose(emdtree.pairwise(X, Y, tree, rho=rho), loop(X, Y, tree, rho), rtol=1e-11)
    D = emdtree.pairwise(X, tree=tree, rho=rho, block_size=5)
    ref = loop(X, X, tree, rho)
    np.fill_diagonal(ref, 0.0)
    np.testing.assert_allclose(D, ref, rtol=1e-11, atol=1e-14)


@pytest.mark.parametrize("rho", RHOS)
def test_float32_against_float64(rho):
    rng = np.random.default_rng(5)
    tree = Tree(*random_tree(rng, 400))
    X = unit_rows(rng, 40, tree.n_bins, np.float32)
    Y = unit_rows(rng, 9, tree.n_bins, np.float32)
    D32 = emdtree.pairwise(X, Y, tree, rho=rho)
    # the same numbers in float64 (their float64 totals differ by float32 rounding)
    D64 = emdtree.pairwise(X.astype(np.float64), Y.astype(np.float64), tree, rho=rho, check_inputs=False)
    assert D32.dtype == np.float32
    # measured: below 2e-6 relative on these inputs; float32 inputs have eps 1.2e-7
    assert rel_err(D32.astype(np.float64), D64) < 2e-5
    S32 = emdtree.pairwise(X, tree=tree, rho=rho, condensed=True)
    assert S32.dtype == np.float32
    S64 = emdtree.pairwise(X.astype(np.float64), tree=tree, rho=rho, condensed=True, check_inputs=False)
    assert rel_err(S32.astype(np.float64), S64) < 2e-5


def test_float32_matches_emd_loop_in_float32():
    rng = np.random.default_rng(6)
    tree = Tree(*random_tree(rng, 50))
    X = unit_rows(rng, 10, tree.n_bins, np.float32)
    D = emdtree.pairwise(X, X[:4], tree)
    np.testing.assert_allclose(D, loop(X, X[:4], tree, 1.0), rtol=2e-5, atol=1e-6)


def test_condensed_is_pdist_order_and_squareform():
    rng = np.random.default_rng(8)
    tree = Tree(*random_tree(rng, 30))
    X = unit_rows(rng, 71, tree.n_bins)
    D = emdtree.pairwise(X, tree=tree, rho=1.5)
    c = emdtree.pairwise(X, tree=tree, rho=1.5, condensed=True)
    assert c.shape == (71 * 70 // 2,)
    assert np.array_equal(c, squareform(D, checks=True))
    assert emdtree.pairwise(X[:1], tree=tree, condensed=True).shape == (0,)


def test_square_is_exactly_symmetric_with_zero_diagonal():
    rng = np.random.default_rng(9)
    tree = Tree(*random_tree(rng, 200, zero_weights=True))
    X = unit_rows(rng, 70, tree.n_bins)  # more than one super tile
    X[7] = X[3]  # a duplicate sample
    for rho in RHOS:
        D = emdtree.pairwise(X, tree=tree, rho=rho)
        assert np.array_equal(D, D.T)
        assert np.all(np.diag(D) == 0.0)
        assert D[3, 7] == 0.0
        assert np.all(D[~np.eye(70, dtype=bool) & (np.abs(X[:, None] - X[None]).sum(-1) > 0)] > 0)


def test_metric_axioms_rho_one():
    rng = np.random.default_rng(10)
    tree = Tree(*random_tree(rng, 80, bins_on_internal=True))
    X = unit_rows(rng, 30, tree.n_bins)
    D = emdtree.pairwise(X, tree=tree)
    # triangle inequality for every triple
    excess = D[:, None, :] - (D[:, :, None] + D[None, :, :])
    assert excess.max() <= 1e-12 * D.max()
    off = ~np.eye(30, dtype=bool)
    assert D[off].min() > 0  # distinct histograms, positive edge costs


def test_normalize_counts_and_axis():
    rng = np.random.default_rng(11)
    tree = Tree(*random_tree(rng, 40))
    C = np.floor(counts(rng, 13, tree.n_bins) * 20).astype(np.int64) + (rng.random((13, tree.n_bins)) < 0.05)
    C[:, 0] += 1
    D = emdtree.pairwise(C, tree=tree, normalize="l1")
    P = C / C.sum(1, keepdims=True)
    ref = loop(P, P, tree, 1.0)
    np.fill_diagonal(ref, 0.0)
    np.testing.assert_allclose(D, ref, rtol=1e-12, atol=1e-15)
    assert np.array_equal(emdtree.pairwise(C.T, tree=tree, normalize="l1", axis=0), D)
    # another tiling of the pairs: equal up to the order of the sums
    np.testing.assert_allclose(emdtree.pairwise(C.T, C[:3].T, tree=tree, normalize="l1", axis=0), D[:, :3],
                               rtol=1e-13, atol=1e-15)
    # raw counts with equal totals need no normalize
    E = np.full((4, tree.n_bins), 0)
    E[np.arange(4), [0, 1, 2, 3]] = 5
    np.testing.assert_allclose(emdtree.pairwise(E, tree=tree),
                               5 * emdtree.pairwise(E, tree=tree, normalize="l1"))


def test_inputs_are_not_modified_and_check_inputs_false_agrees():
    rng = np.random.default_rng(12)
    tree = Tree(*random_tree(rng, 40))
    X = counts(rng, 9, tree.n_bins)
    before = X.copy()
    D = emdtree.pairwise(X, tree=tree, normalize="l1")
    assert np.array_equal(X, before)
    assert np.array_equal(emdtree.pairwise(X, tree=tree, normalize="l1", check_inputs=False), D)


def test_default_tree_is_unit_chain():
    rng = np.random.default_rng(13)
    X = unit_rows(rng, 6, 12)
    ref = loop(X, X, None, 1.0)
    np.fill_diagonal(ref, 0.0)
    np.testing.assert_allclose(emdtree.pairwise(X), ref, rtol=1e-12, atol=1e-15)


def test_empty_and_single_sample():
    tree = Tree.chain(4)
    assert emdtree.pairwise(np.zeros((0, 4)), tree=tree).shape == (0, 0)
    assert emdtree.pairwise(np.zeros((0, 4)), np.ones((2, 4)), tree=tree).shape == (0, 2)
    assert emdtree.pairwise(np.ones((1, 4)), tree=tree).tolist() == [[0.0]]


def test_threads_give_identical_results(monkeypatch):
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("needs two Numba threads")
    monkeypatch.setenv("EMDTREE_JIT", "eager")  # the kernels, not SciPy, at this size
    rng = np.random.default_rng(14)
    tree = Tree(*random_tree(rng, 300))
    X = unit_rows(rng, 97, tree.n_bins)
    one = emdtree.pairwise(X, tree=tree, n_threads=1)
    two = emdtree.pairwise(X, tree=tree, n_threads=2)
    assert np.array_equal(one, two)
    assert np.array_equal(emdtree.pairwise(X, X[:40], tree=tree, n_threads=1),
                          emdtree.pairwise(X, X[:40], tree=tree, n_threads=2))


@pytest.mark.parametrize("rho, dtype, normalize", [(1.0, np.float64, "l1"), (1.0, np.float32, "l1"),
                                                   (1.5, np.float64, None), (2.0, np.float32, None)])
def test_threads_give_identical_results_for_every_kernel(rho, dtype, normalize, monkeypatch):
    """Rows turned into phi and pair sums on 1 or 2 threads, super tiles taken in any order: the same bits
    (min-sum, direct and general kernels; square, condensed and two-set outputs; ragged last tiles)."""
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("needs two Numba threads")
    monkeypatch.setenv("EMDTREE_JIT", "eager")  # the kernels, not SciPy, at this size
    calls = []
    monkeypatch.setattr(kernels, "pair_sums",
                        lambda *a, _f=kernels.pair_sums: calls.append(1) or _f(*a))
    rng = np.random.default_rng(15)
    tree = Tree(*random_tree(rng, 200))
    X = (rng.poisson(0.5, (203, tree.n_bins)) + (normalize is None)).astype(dtype)
    if normalize is None:
        X /= X.sum(axis=1, keepdims=True)
    for kwargs in (dict(), dict(condensed=True), dict(Y=X[:70])):
        one = emdtree.pairwise(X, tree=tree, rho=rho, normalize=normalize, n_threads=1, **kwargs)
        two = emdtree.pairwise(X, tree=tree, rho=rho, normalize=normalize, n_threads=2, **kwargs)
        assert one.dtype == dtype and np.array_equal(one, two)
    assert len(calls) == 3  # the parallel kernel ran


class _RowSpy(np.ndarray):
    """An ndarray that records the number of rows of every slice taken from it."""

    taken: list

    def __getitem__(self, key):
        if isinstance(key, slice):
            _RowSpy.taken.append(len(range(*key.indices(self.shape[0]))))
        return np.asarray(super().__getitem__(key))


def _eight_lanes(x, y, mode, rho):
    """The sum of :func:`emdtree.kernels.pairwise._single` in its documented order, in Python."""
    def term(u, v):
        if mode == kernels.MODE_ONE:
            return abs(u - v)
        if mode == kernels.MODE_ONE_MIN:
            return min(u, v)
        if mode == kernels.MODE_TWO:
            return (u - v) * (u - v)
        return abs(u - v) ** rho

    # each term in the dtype of the rows, the lanes in float64 (what Numba infers for the
    # float64 power of the general case)
    lanes = [0.0] * 8
    m = len(x) - len(x) % 8
    for k in range(m):
        lanes[k % 8] += float(term(x[k], y[k]))
    for k in range(m, len(x)):
        lanes[0] += float(term(x[k], y[k]))
    s = lanes
    return ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("mode", [kernels.MODE_ONE, kernels.MODE_ONE_MIN, kernels.MODE_TWO])
def test_single_pair_sum_has_one_order(dtype, mode):
    """The pair sum outside the micro tiles (last rows, row sums, direct sums) is summed in one
    written order, not one LLVM chooses per caller: with ``fastmath`` the serial and the parallel
    kernels gave different last bits for the last row of a 97-sample matrix, depending on which
    kernels the process had compiled first."""
    rng = np.random.default_rng(16)
    a = rng.random(1100).astype(dtype)
    b = rng.random(1100).astype(dtype)
    for k0, k1 in ((0, 1100), (3, 517), (5, 12), (7, 7)):
        got = kernels._single(a, b, 0, 0, k0, k1, mode, 1.0)
        assert got == _eight_lanes(a[k0:k1], b[k0:k1], mode, 1.0), (k0, k1)


def test_memory_mapped_input_read_in_blocks(tmp_path):
    rng = np.random.default_rng(15)
    tree = Tree(*random_tree(rng, 60))
    X = counts(rng, 50, tree.n_bins)
    np.save(tmp_path / "x.npy", X)
    mapped = np.load(tmp_path / "x.npy", mmap_mode="r")
    D = emdtree.pairwise(mapped, tree=tree, normalize="l1", block_size=8)
    assert isinstance(mapped, np.memmap)
    np.testing.assert_array_equal(D, emdtree.pairwise(X, tree=tree, normalize="l1"))
    _RowSpy.taken = []
    spy = X.view(_RowSpy)
    emdtree.pairwise(spy, tree=tree, normalize="l1", block_size=8)
    # every row once, and the first block once more: the sparse route reads it to see how dense
    # the samples are (emdtree.distances.sparse_rows)
    assert _RowSpy.taken and max(_RowSpy.taken) <= 8 and sum(_RowSpy.taken) in (50, 58)


def test_constant_and_unused_columns_are_dropped_without_changing_results():
    # samples that share all mass on some subtrees: those columns are constant
    rng = np.random.default_rng(16)
    tree = Tree(*random_tree(rng, 50, bins_on_internal=True, zero_weights=True))
    X = unit_rows(rng, 12, tree.n_bins)
    X[:, : tree.n_bins // 2] = 0.0
    X[:, 0] = 1.0
    X /= X.sum(1, keepdims=True)
    for rho in RHOS:
        ref = loop(X, X, tree, rho)
        np.fill_diagonal(ref, 0.0)
        np.testing.assert_allclose(emdtree.pairwise(X, tree=tree, rho=rho), ref, rtol=1e-12, atol=1e-15)


def test_rho_one_near_duplicates_keep_relative_accuracy():
    # float64 rho = 1 sums min(x, y) and subtracts from the row sums; pairs that
    # cancel are summed again directly: check samples a tiny distance apart
    rng = np.random.default_rng(17)
    tree = Tree(*random_tree(rng, 300))
    X = unit_rows(rng, 20, tree.n_bins)
    for i, eps in zip(range(10, 20), np.logspace(-3, -12, 10)):
        X[i] = X[i - 10]
        src = int(np.argmax(X[i]))
        dst = (src + 1 + int(rng.integers(tree.n_bins - 1))) % tree.n_bins
        X[i, src] -= eps
        X[i, dst] += eps
    D = emdtree.pairwise(X, tree=tree)
    # direct formula on the same phi rows, in float64
    phis = emdtree.phi(X, np.zeros(tree.n_bins), tree, check_inputs=False)
    w = np.where(tree.parents >= 0, tree.weights, 0.0)
    ref = (w * np.abs(phis[:, None, :] - phis[None, :, :])).sum(-1)
    scale = (w * np.abs(phis)).sum(-1)
    pairs = np.arange(10)
    assert np.all(D[pairs, pairs + 10] > 0)
    # phi of each sample is rounded on its own, so near duplicates are exact only up
    # to rounding of the row scale S_i = sum_k w_k phi_k. Measured on these inputs:
    # below 1.2e-17 (S_i + S_j) with the direct re-sum of cancelling pairs, 1.6e-16
    # without it (S_i + S_j - 2 sum min alone)
    err = np.abs(D - ref)[pairs, pairs + 10]
    assert np.all(err <= 4e-17 * (scale[pairs] + scale[pairs + 10]))
    far = ref > 1e-3 * (scale[:, None] + scale[None, :])
    assert rel_err(D[far], ref[far]) < 1e-12


def test_rho_two_gram_product_falls_back_for_near_duplicates():
    # float64 rho = 2 uses |a|^2 + |b|^2 - 2 a.b on centred rows; near-duplicate pairs
    # cancel and are summed directly
    rng = np.random.default_rng(19)
    tree = Tree(*random_tree(rng, 300))
    X = unit_rows(rng, 20, tree.n_bins)
    for i, eps in zip(range(10, 20), np.logspace(-2, -11, 10)):
        X[i] = X[i - 10]
        src = int(np.argmax(X[i]))
        dst = (src + 1 + int(rng.integers(tree.n_bins - 1))) % tree.n_bins
        X[i, src] -= eps
        X[i, dst] += eps
    phis = emdtree.phi(X, np.zeros(tree.n_bins), tree, check_inputs=False)
    w = np.where(tree.parents >= 0, tree.weights, 0.0)
    ref = (w * (phis[:, None, :] - phis[None, :, :]) ** 2).sum(-1)
    scale = (w * phis**2).sum(-1)
    pairs = np.arange(10)
    near = ref[pairs, pairs + 10]
    # each row is rounded on its own (phi, the cost scaling, the centring), so a
    # near duplicate errs by about eps sqrt(D (S_i + S_j)) with S_i = sum_k w_k phi_k^2
    bound = np.finfo(float).eps * np.sqrt(near * (scale[pairs] + scale[pairs + 10]))
    for D in (emdtree.pairwise(X, tree=tree, rho=2), emdtree.pairwise(X, X, tree=tree, rho=2)):
        assert np.all(D[pairs, pairs + 10] > 0)
        # measured: up to 3.3 bound with the direct re-sum, 1.7e7 bound with the
        # product form alone
        assert np.all(np.abs(D[pairs, pairs + 10] - near) <= 8 * bound)
        far = ref > 1e-6 * (scale[:, None] + scale[None, :])
        assert rel_err(D[far], ref[far]) < 1e-9


def test_unchecked_negative_masses_use_the_direct_sum():
    # with check_inputs=False nothing stops negative entries; the formula still holds
    rng = np.random.default_rng(18)
    tree = Tree(*random_tree(rng, 40))
    X = rng.standard_normal((9, tree.n_bins))
    X -= X.mean(1, keepdims=True)
    D = emdtree.pairwise(X, tree=tree, check_inputs=False)
    ref = np.array([[float(emdtree.emd(x, y, tree, check_inputs=False)) for y in X] for x in X])
    np.fill_diagonal(ref, 0.0)
    np.testing.assert_allclose(D, ref, rtol=1e-12, atol=1e-14)


# ----------------------------------------------------------------------------- scikit-bio


skbio = pytest.importorskip("skbio")


def _skbio_unifrac(C, taxa, newick):
    from io import StringIO

    from skbio.diversity import beta_diversity

    sk_tree = skbio.TreeNode.read(StringIO(newick))
    ids = [f"s{i}" for i in range(C.shape[0])]
    return beta_diversity("weighted_unifrac", C, ids, taxa=list(taxa), tree=sk_tree, normalized=False).data


def _emdtree_unifrac(C, taxa, tree):
    X = np.zeros((C.shape[0], tree.n_bins))
    X[:, emdtree.io.match_features(taxa, tree)] = C
    return emdtree.pairwise(X, tree=tree, normalize="l1")


def test_skbio_tiny_test_data():
    data = os.path.join(os.path.dirname(skbio.__file__), "diversity", "beta", "tests", "data", "qiime-191-tt")
    tree = emdtree.io.read_tree(os.path.join(data, "tree.nwk"))
    table = emdtree.io.read_table(os.path.join(data, "otu-table.tsv"))
    C = table.counts.astype(np.int64)
    with open(os.path.join(data, "tree.nwk"), encoding="utf-8") as fh:
        newick = fh.read()
    ref = _skbio_unifrac(C, table.feature_names, newick)
    D = _emdtree_unifrac(C, table.feature_names, tree)
    assert rel_err(D[ref > 0], ref[ref > 0]) < 1e-9
    assert np.array_equal(D == 0, ref == 0)
    # QIIME 1.9.1's own results, written with 12 significant digits
    qiime = emdtree.io.read_matrix(os.path.join(data, "weighted_unifrac_dm.txt"))
    idx = [qiime.row_ids.index(s) for s in table.sample_ids]
    np.testing.assert_allclose(D, qiime.values[np.ix_(idx, idx)], rtol=1e-9, atol=1e-12)


def _awkward_newick(rng, n_tips):
    """Random tree text with unary nodes, zero-length branches, quoted labels with
    spaces and ';', numeric-looking tip names and repeated internal names."""
    parents, weights, _ = random_tree(rng, 2 * n_tips)
    n = parents.shape[0]
    # put a unary node on about a fifth of the edges
    par = parents.tolist()
    w = weights.tolist()
    for v in rng.choice(np.flatnonzero(parents >= 0), size=n // 5, replace=False).tolist():
        par.append(par[v])
        w.append(float(rng.uniform(0, 1)))
        par[v] = len(par) - 1
    # scikit-bio takes a root with more than two children for an unrooted tree
    root = par.index(-1)
    kids = [v for v, p in enumerate(par) if p == root]
    if len(kids) > 2:
        par.append(root)
        w.append(float(rng.uniform(0, 1)))
        for v in kids[1:]:
            par[v] = len(par) - 1
    par, w = np.array(par), np.array(w)
    w[rng.random(w.size) < 0.15] = 0.0
    has_child = np.zeros(par.size, dtype=bool)
    has_child[par[par >= 0]] = True
    tips = np.flatnonzero(~has_child)
    kinds = ["otu {}", "tax;on {}", "{}", "1e{}", "x_{}"]
    tip_names = [kinds[i % len(kinds)].format(i) for i in range(tips.size)]
    node_names = [None] * par.size
    for v in np.flatnonzero(has_child).tolist():
        node_names[v] = "clade" if rng.random() < 0.5 else None
    return to_newick(par, w, tips, tip_names, node_names), tip_names


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_skbio_random_trees(seed):
    rng = np.random.default_rng(seed)
    newick, _ = _awkward_newick(rng, 60)
    tree = Tree.from_newick(newick)
    sk_tips = [t.name for t in skbio.TreeNode.read([newick]).tips()]
    assert sorted(sk_tips) == sorted(tree.names)  # both readers see the same labels
    # the table has most tips in a shuffled order, some tips without any counts
    taxa = [sk_tips[i] for i in rng.permutation(len(sk_tips))[: len(sk_tips) - 5]]
    C = rng.poisson(0.7, size=(17, len(taxa)))
    C[:, : len(taxa) // 4] = 0
    C[np.arange(17), rng.integers(len(taxa) // 4, len(taxa), 17)] += 1
    ref = _skbio_unifrac(C, taxa, newick)
    D = _emdtree_unifrac(C, taxa, tree)
    assert rel_err(D[ref > 0], ref[ref > 0]) < 1e-9
    assert np.array_equal(D == 0, ref == 0)


# ----------------------------------------------------------------------------- errors


@pytest.fixture
def small():
    tree = Tree.from_newick("((a:1,b:2):0.5,c:3);")
    return tree, np.array([[1.0, 0.0, 1.0], [0.0, 2.0, 0.0]])


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(X=np.ones(3)), ValueError, r"X must be a 2-D array \(n_samples, n_bins\), got shape \(3,\)"),
    (dict(Y=np.ones((2, 4))), ValueError, "X has 3 bins along axis -1 but Y has 4"),
    (dict(X=np.ones((2, 4)), Y=None), ValueError, "X has 4 bins along axis -1 but the tree has 3 bins"),
    (dict(X=np.array([[1.0, np.nan, 1.0]])), ValueError, r"X\[0, 1\] = nan is not finite"),
    (dict(Y=np.array([[1.0, 1.0, 0.0], [1.0, -1.0, 2.0]])), ValueError, r"Y\[1, 1\] = -1.0 is negative"),
    (dict(X=np.array([[1.0, 0.0, 1.0], [0.0, 3.0, 0.0]])), ValueError,
     r"equal total mass.*sum\(X\[0\]\) = 2.0 and sum\(X\[1\]\) = 3.0.*undefined.*normalize='l1'"),
    (dict(Y=np.array([[5.0, 0.0, 0.0]])), ValueError, r"sum\(Y\[0\]\) = 5.0"),
    (dict(X=np.array([[1.0, 0.0, 1.0], [0.0, 0.0, 0.0]]), normalize="l1"), ValueError,
     r"X\[1\] has zero total mass: cannot normalize"),
    (dict(normalize="l2"), ValueError, "normalize must be None, 'l1' or 'softmax'"),
    (dict(Y=np.ones((1, 3)), condensed=True, normalize="l1"), ValueError, "condensed=True needs Y=None"),
    (dict(rho=0.5), ValueError, "rho must be a finite number >= 1"),
    (dict(block_size=0), ValueError, "block_size must be >= 1, got 0"),
    (dict(block_size=2.5), TypeError, "block_size must be an integer"),
    (dict(n_threads=0), ValueError, "n_threads must be between 1 and"),
    (dict(axis=2), ValueError, "axis 2 is out of bounds for 2-D inputs"),
    (dict(axis=0.0), TypeError, "axis must be an integer"),
    (dict(tree="tree"), TypeError, "tree must be an emdtree.Tree or None"),
    (dict(X=np.array([["a", "b", "c"]])), TypeError, "X must hold real numbers"),
])
def test_errors(small, kwargs, exc, match):
    tree, X = small
    args = dict(X=X, Y=None, tree=tree)
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        emdtree.pairwise(args.pop("X"), args.pop("Y"), args.pop("tree"), **args)


def test_error_positions_follow_axis(small):
    tree, X = small
    bad = X.T.copy()
    bad[2, 1] = -3.0
    with pytest.raises(ValueError, match=r"X\[2, 1\] = -3.0 is negative"):
        emdtree.pairwise(bad, tree=tree, axis=0)
    with pytest.raises(ValueError, match=r"X\[:, 1\] has zero total mass"):
        emdtree.pairwise(np.array([[1.0, 0.0], [0.0, 0.0], [1.0, 0.0]]), tree=tree, axis=0, normalize="l1")


@pytest.mark.parametrize("micro, size", [("_micro", 4), ("_micro3", 3)])
@pytest.mark.parametrize("mode, rho", [(kernels.MODE_ONE, 1.0), (kernels.MODE_ONE_MIN, 1.0),
                                       (kernels.MODE_TWO, 2.0), (kernels.MODE_GENERAL, 1.5)])
def test_micro_tiles_add_their_pair_sums(micro, size, mode, rho):
    """Both register micro tiles (4 x 4 for 32 vector registers, 3 x 3 for AVX2's 16; a machine compiles
    only one into the pair kernels) add sum_k f(a_ik, b_jk) over a column range to their block of acc."""
    rng = np.random.default_rng(16)
    n_cols, k0, k1, stride = 37, 3, 30, 9
    a, b = rng.random((size + 1, n_cols)), rng.random((size + 2, n_cols))
    acc = rng.random(stride * (size + 2))
    before = acc.copy()
    getattr(kernels, micro)(a.reshape(-1), b.reshape(-1), n_cols, 2 * n_cols, n_cols, n_cols, k0, k1, mode,
                            rho, acc, 1, stride)
    x, y = a[1:1 + size, None, k0:k1], b[None, 2:2 + size, k0:k1]
    terms = np.minimum(x, y) if mode == kernels.MODE_ONE_MIN else np.abs(x - y) ** rho
    want = before.copy()
    for r in range(size):
        want[1 + r * stride:1 + r * stride + size] += terms[r].sum(axis=-1)
    np.testing.assert_allclose(acc, want, rtol=1e-13)
