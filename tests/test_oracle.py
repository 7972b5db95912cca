"""Self-tests of the reference implementations in ``oracle.py`` and of the
generators in ``trees.py``."""

import networkx as nx
import numpy as np
import ot
import pytest
import scipy.sparse
import scipy.sparse.csgraph
import scipy.stats

import oracle
from trees import (
    TREE_CASES,
    caterpillar,
    chain,
    chain_positions,
    leaves,
    random_masses,
    random_tree,
)

CASE_IDS = [name for name, _ in TREE_CASES]
BUILDERS = [build for _, build in TREE_CASES]


def _directions(rng, n_bins, count):
    """Random mass-conserving directions (each sums to zero)."""
    d = rng.standard_normal((count, n_bins))
    return d - d.mean(axis=1, keepdims=True)


def _case_seed(build):
    return BUILDERS.index(build)


# --- generators ---------------------------------------------------------------


@pytest.mark.parametrize("build", BUILDERS, ids=CASE_IDS)
def test_tree_cases_are_valid_trees(build):
    parents, weights, bins = build()
    n = len(parents)
    assert parents.dtype == np.int64 and bins.dtype == np.int64
    assert weights.dtype == np.float64 and weights.shape == (n,)
    assert np.sum(parents == -1) == 1
    assert np.all((parents >= -1) & (parents < n))
    for node in range(n):  # every node reaches the root without a cycle
        assert parents[oracle.ancestors_or_self(parents, node)[-1]] == -1
    assert weights[parents == -1] == 0.0
    assert np.all(weights >= 0.0)
    assert len(np.unique(bins)) == len(bins) >= 1
    assert set(leaves(parents)) <= set(bins.tolist())


def test_random_tree_options():
    rng = np.random.default_rng(10)
    parents, weights, bins = random_tree(rng, 50)
    child = np.flatnonzero(parents >= 0)
    assert np.any(parents[child] > child) and np.any(parents[child] < child)
    assert np.all((weights[child] > 0.1) & (weights[child] < 3.0))
    assert np.array_equal(np.sort(bins), leaves(parents))
    assert not np.array_equal(bins, np.sort(bins))

    parents, weights, bins = random_tree(rng, 50, bins_on_internal=True, zero_weights=True)
    assert len(bins) > len(leaves(parents))
    assert np.any(weights[parents >= 0] == 0.0)

    parents, weights, _ = random_tree(rng, 20, weighted=False)
    assert np.all(weights[parents >= 0] == 1.0)


def test_random_masses():
    rng = np.random.default_rng(11)
    p, q = random_masses(rng, 12)
    assert p.shape == q.shape == (12,) and np.all(p > 0) and np.all(q > 0)
    np.testing.assert_allclose([p.sum(), q.sum()], 1.0, rtol=1e-15)

    p, q = random_masses(rng, 12, batch=(3, 4), dtype=np.float32, sparse=True)
    assert p.shape == q.shape == (3, 4, 12) and p.dtype == q.dtype == np.float32
    np.testing.assert_allclose(p.sum(-1), 1.0, rtol=1e-6)
    np.testing.assert_array_equal((q == 1).sum(-1), 1)
    np.testing.assert_array_equal((q == 0).sum(-1), 11)
    assert np.any(p == 0) and np.all((p > 0).sum(-1) >= 1)


def test_chain_layout():
    parents, weights, bins = chain(4, spacing=0.5)
    np.testing.assert_array_equal(parents, [1, 2, 3, -1])
    np.testing.assert_array_equal(weights, [0.5, 0.5, 0.5, 0.0])
    np.testing.assert_array_equal(bins, [0, 1, 2, 3])


# --- oracle: basic structure -------------------------------------------------


def test_phi_and_subtree_bins_small_example():
    # root 0 -> {1, 2}; 1 -> {3, 4}; bins on 3, 4, 2 and 1 (internal)
    parents = np.array([-1, 0, 0, 1, 1])
    bins = np.array([3, 4, 2, 1])
    A = oracle.subtree_bins(parents, bins)
    expected = np.array(
        [
            [1, 1, 1, 1],
            [1, 1, 0, 1],
            [0, 0, 1, 0],
            [1, 0, 0, 0],
            [0, 1, 0, 0],
        ],
        dtype=bool,
    )
    np.testing.assert_array_equal(A, expected)
    p = np.array([0.1, 0.2, 0.3, 0.4])
    q = np.array([0.4, 0.3, 0.2, 0.1])
    np.testing.assert_allclose(oracle.phi(p, q, parents, bins), [0.0, -0.1, 0.1, -0.3, -0.1], atol=1e-15)
    weights = np.array([0.0, 2.0, 1.0, 1.0, 3.0])
    assert oracle.emd(p, q, parents, weights, bins) == pytest.approx(2 * 0.1 + 0.1 + 0.3 + 3 * 0.1)
    assert oracle.emd(p, q, parents, weights, bins, rho=2) == pytest.approx(2 * 0.01 + 0.01 + 0.09 + 3 * 0.01)


@pytest.mark.parametrize("build", BUILDERS, ids=CASE_IDS)
def test_emd_symmetric_and_zero_on_diagonal(build):
    parents, weights, bins = build()
    rng = np.random.default_rng(_case_seed(build))
    p, q = random_masses(rng, len(bins))
    for rho in (1.0, 2.0):
        assert oracle.emd(p, p, parents, weights, bins, rho) == 0.0
        assert oracle.emd(p, q, parents, weights, bins, rho) == pytest.approx(
            oracle.emd(q, p, parents, weights, bins, rho), rel=1e-12
        )


# --- oracle: exact EMD against linear programming ----------------------------


def test_emd_lp_matches_pot_on_general_costs():
    rng = np.random.default_rng(20)
    for n, m in [(1, 5), (6, 9), (10, 4)]:
        p = rng.random(n)
        q = rng.random(m)
        p /= p.sum()
        q /= q.sum()
        D = rng.uniform(0.0, 5.0, size=(n, m))
        assert oracle.emd_lp(p, q, D) == pytest.approx(ot.emd2(p, q, D), rel=1e-9, abs=1e-13)


@pytest.mark.parametrize("build", BUILDERS, ids=CASE_IDS)
def test_tree_emd_equals_lp_and_pot(build):
    parents, weights, bins = build()
    D = oracle.distance_matrix(parents, weights, bins)
    rng = np.random.default_rng(100 + _case_seed(build))
    pairs = [random_masses(rng, len(bins)) for _ in range(3)]
    pairs.append(random_masses(rng, len(bins), sparse=True))
    for p, q in pairs:
        expected = ot.emd2(p, q, D)
        got = oracle.emd(p, q, parents, weights, bins, rho=1)
        assert oracle.emd_lp(p, q, D) == pytest.approx(expected, rel=1e-9, abs=1e-13)
        assert got == pytest.approx(expected, rel=1e-9, abs=1e-13)
        if len(bins) > 2:
            assert expected > 1e-3  # the comparison is not a trivial 0 == 0


def test_lp_comparison_detects_a_wrong_weight():
    parents, weights, bins = random_tree(np.random.default_rng(21), 30)
    p, q = random_masses(np.random.default_rng(22), len(bins))
    f = oracle.phi(p, q, parents, bins)
    edge = int(np.argmax(np.abs(f)))
    wrong = weights.copy()
    wrong[edge] *= 1.01
    expected = oracle.emd_lp(p, q, oracle.distance_matrix(parents, weights, bins))
    assert oracle.emd(p, q, parents, weights, bins) == pytest.approx(expected, rel=1e-9)
    assert oracle.emd(p, q, parents, wrong, bins) != pytest.approx(expected, rel=1e-6)


def test_chain_emd_equals_scipy_wasserstein():
    rng = np.random.default_rng(30)
    n = 15
    spacing = rng.uniform(0.1, 2.0, size=n - 1)
    parents, weights, bins = chain(n, spacing)
    positions = chain_positions(n, spacing)
    for sparse in (False, False, True):
        p, q = random_masses(rng, n, sparse=sparse)
        expected = scipy.stats.wasserstein_distance(
            u_values=positions, v_values=positions, u_weights=p, v_weights=q
        )
        assert oracle.emd(p, q, parents, weights, bins) == pytest.approx(expected, rel=1e-9)


# --- oracle: gradient --------------------------------------------------------


@pytest.mark.parametrize("rho", [1.5, 2.0, 3.0])
@pytest.mark.parametrize("build", BUILDERS, ids=CASE_IDS)
def test_grad_matches_finite_differences(build, rho):
    parents, weights, bins = build()
    rng = np.random.default_rng(200 + _case_seed(build))
    p, q = random_masses(rng, len(bins))
    g = oracle.grad(p, q, parents, weights, bins, rho)
    assert abs(g.sum()) < 1e-12
    h = 1e-6
    for d in _directions(rng, len(bins), 3):
        fd = (
            oracle.emd(p + h * d, q, parents, weights, bins, rho)
            - oracle.emd(p - h * d, q, parents, weights, bins, rho)
        ) / (2 * h)
        assert g @ d == pytest.approx(fd, rel=1e-6, abs=1e-8)


@pytest.mark.parametrize("build", BUILDERS, ids=CASE_IDS)
def test_grad_rho1_matches_finite_differences_away_from_kinks(build):
    parents, weights, bins = build()
    rng = np.random.default_rng(300 + _case_seed(build))
    p, q = random_masses(rng, len(bins))
    # nodes whose phi moves with a mass-conserving direction must stay away from 0
    A = oracle.subtree_bins(parents, bins)
    moving = (parents != -1) & A.any(axis=1) & ~A.all(axis=1)
    f = oracle.phi(p, q, parents, bins)
    h = 1e-8
    assert np.all(np.abs(f[moving]) > 1e-4)
    g = oracle.grad(p, q, parents, weights, bins, rho=1)
    for d in _directions(rng, len(bins), 3):
        fd = (
            oracle.emd(p + h * d, q, parents, weights, bins, 1)
            - oracle.emd(p - h * d, q, parents, weights, bins, 1)
        ) / (2 * h)
        assert g @ d == pytest.approx(fd, rel=1e-6, abs=1e-7)


def test_grad_check_detects_a_wrong_exponent():
    parents, weights, bins = random_tree(np.random.default_rng(31), 30)
    p, q = random_masses(np.random.default_rng(32), len(bins))
    d = _directions(np.random.default_rng(33), len(bins), 1)[0]
    h = 1e-6
    fd = (
        oracle.emd(p + h * d, q, parents, weights, bins, 2.0)
        - oracle.emd(p - h * d, q, parents, weights, bins, 2.0)
    ) / (2 * h)
    assert oracle.grad(p, q, parents, weights, bins, 2.0) @ d == pytest.approx(fd, rel=1e-6)
    assert oracle.grad(p, q, parents, weights, bins, 2.1) @ d != pytest.approx(fd, rel=1e-3)


# --- oracle: Hessian ---------------------------------------------------------


@pytest.mark.parametrize("rho", [2.0, 3.0])
@pytest.mark.parametrize("build", BUILDERS, ids=CASE_IDS)
def test_hessian_matches_finite_differences_of_grad(build, rho):
    parents, weights, bins = build()
    n = len(bins)
    rng = np.random.default_rng(400 + _case_seed(build))
    p, q = random_masses(rng, n)
    H = oracle.hessian(p, q, parents, weights, bins, rho)
    assert H.shape == (n, n)
    np.testing.assert_allclose(H, H.T, atol=1e-12)
    np.testing.assert_allclose(H @ np.ones(n), 0.0, atol=1e-12)
    assert np.linalg.eigvalsh(H).min() > -1e-10  # w |x|^rho is convex for rho >= 1

    # column j of P H P is the derivative of the projected gradient along P e_j
    h = 1e-5
    P = np.eye(n) - 1.0 / n
    fd = np.empty((n, n))
    for j in range(n):
        fd[:, j] = (
            oracle.grad(p + h * P[j], q, parents, weights, bins, rho)
            - oracle.grad(p - h * P[j], q, parents, weights, bins, rho)
        ) / (2 * h)
    scale = max(1.0, np.abs(H).max())
    np.testing.assert_allclose(fd, H, rtol=0, atol=1e-6 * scale)
    assert np.abs(H).max() > 1e-3  # not a trivial zero matrix

    v = rng.standard_normal(n)  # not mass-conserving on purpose
    np.testing.assert_allclose(
        oracle.hvp(p, q, parents, weights, bins, v, rho), H @ v, rtol=1e-13, atol=1e-13
    )


def test_hessian_rho1_is_zero():
    parents, weights, bins = caterpillar(5)
    p, q = random_masses(np.random.default_rng(40), len(bins))
    np.testing.assert_array_equal(oracle.hessian(p, q, parents, weights, bins, 1.0), 0.0)


def test_hessian_rho2_closed_form_on_chain():
    # rho = 2 on a chain: H = 2 * P L^T diag(w) L P with L lower-triangular ones
    n = 6
    spacing = np.arange(1.0, n)
    parents, weights, bins = chain(n, spacing)
    p, q = random_masses(np.random.default_rng(41), n)
    L = np.tril(np.ones((n - 1, n)))  # row i: bins 0..i lie below node i
    P = np.eye(n) - 1.0 / n
    expected = P @ (2 * L.T @ np.diag(spacing) @ L) @ P
    np.testing.assert_allclose(oracle.hessian(p, q, parents, weights, bins, 2.0), expected, atol=1e-12)


# --- oracle: distances -------------------------------------------------------


@pytest.mark.parametrize("build", BUILDERS, ids=CASE_IDS)
def test_distance_matrix_equals_shortest_paths(build):
    parents, weights, bins = build()
    D = oracle.distance_matrix(parents, weights, bins)
    n_bins = len(bins)

    graph = nx.Graph()
    graph.add_nodes_from(range(len(parents)))
    for i, parent in enumerate(parents):
        if parent != -1:
            graph.add_edge(i, int(parent), weight=float(weights[i]))
    lengths = dict(nx.all_pairs_dijkstra_path_length(graph))
    expected = np.array([[lengths[int(a)][int(b)] for b in bins] for a in bins])
    np.testing.assert_allclose(D, expected, rtol=1e-12, atol=1e-12)

    if np.all(weights[parents != -1] > 0):  # csgraph drops zero-weight edges
        child = np.flatnonzero(parents != -1)
        adjacency = scipy.sparse.coo_matrix(
            (weights[child], (child, parents[child])), shape=(len(parents),) * 2
        ).tocsr()
        sp = scipy.sparse.csgraph.shortest_path(adjacency, directed=False)
        np.testing.assert_allclose(D, sp[np.ix_(bins, bins)], rtol=1e-12, atol=1e-12)

    assert np.all(np.diag(D) == 0.0)
    if n_bins > 1:
        assert D.max() > 0.0
