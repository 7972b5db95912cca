"""Numerical properties of the public functions (``emd``, ``emd_grad``,
``emd_value_and_grad``, ``phi``, ``emd_hvp``, ``emd_hessian``): for rho = 1
agreement with linear programming and POT, batched results against the slow
reference implementations in ``oracle.py`` row by row, chains against SciPy's
Wasserstein distance, gradients, Hessian-vector products and Hessians against
finite differences and the oracle, the symmetry, row sums and convexity of the
Hessian, float32 against float64, large (multi-threaded) batches against
small ones, ``normalize='l1'`` against explicitly normalised masses, the metric
axioms for rho = 1, and a large random tree."""

import numpy as np
import ot
import pytest
import scipy.stats
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.testing import assert_allclose, assert_array_equal

import emdtree
import oracle
from emdtree import Tree
from trees import (
    TREE_CASES,
    chain,
    chain_positions,
    deep_path,
    random_masses,
    random_tree,
)


CASE_IDS = [name for name, _ in TREE_CASES]
BUILDERS = [build for _, build in TREE_CASES]
RHOS = (1.0, 1.5, 2.0, 3.0)


# --- helpers ------------------------------------------------------------------


def _case(build):
    """``(parents, weights, bins, Tree)`` of a ``TREE_CASES`` builder."""
    parents, weights, bins = build()
    return parents, weights, bins, Tree.from_parents(parents, weights, bins)


def _seed(build):
    return BUILDERS.index(build)


def _directions(rng, n_bins, count):
    """Random mass-conserving directions (each sums to zero), shape (count, n_bins)."""
    d = rng.standard_normal((count, n_bins))
    return d - d.mean(axis=1, keepdims=True)


def _phi_margin(p, q, parents, weights, bins):
    """Smallest |phi_i| over the edges that matter: non-root nodes with a positive
    weight whose subtree holds some but not all of the bins (mass-conserving
    moves leave phi unchanged at the others)."""
    f = oracle.phi(p, q, parents, bins)
    A = oracle.subtree_bins(parents, bins)
    keep = (parents != -1) & (weights > 0) & A.any(axis=1) & ~A.all(axis=1)
    return np.abs(f[keep]).min() if keep.any() else np.inf


def _arrays(tree):
    return tree.parents, tree.weights, tree.bins


def _central_difference(f, p, q, d, h, tree, rho):
    """(f(p + h d, q) - f(p - h d, q)) / 2h for f = emdtree.emd or emdtree.emd_grad."""
    return (f(p + h * d, q, tree, rho=rho) - f(p - h * d, q, tree, rho=rho)) / (2 * h)


def _dense_point(rng, n_bins):
    """A random dense pair with every entry at least 0.2 / n_bins."""
    p, q = random_masses(rng, n_bins)
    p = 0.2 / n_bins + 0.8 * p
    q = 0.2 / n_bins + 0.8 * q
    return p / p.sum(), q / q.sum()


def _broadcast_tree():
    return Tree.from_parents(*random_tree(np.random.default_rng(12), 20, bins_on_internal=True))


# --- rho = 1: exact optimal transport -----------------------------------------------


@pytest.mark.parametrize("build", BUILDERS, ids=CASE_IDS)
def test_emd_rho1_equals_linear_program_and_pot(build):
    parents, weights, bins, tree = _case(build)
    D = oracle.distance_matrix(parents, weights, bins)
    rng = np.random.default_rng(_seed(build))
    for sparse in (False, False, True, True):
        p, q = random_masses(rng, tree.n_bins, sparse=sparse)
        value = emdtree.emd(p, q, tree)
        assert isinstance(value, np.float64)
        ref = oracle.emd_lp(p, q, D)
        assert_allclose(value, ref, rtol=1e-9, atol=1e-12)
        assert_allclose(value, ot.emd2(p, q, D), rtol=1e-9, atol=1e-12)
        assert_allclose(emdtree.emd(q, p, tree), ref, rtol=1e-9, atol=1e-12)


# --- batched results against per-row oracle calls ------------------------------------


@pytest.mark.parametrize("rho", RHOS)
@pytest.mark.parametrize("build", BUILDERS, ids=CASE_IDS)
def test_value_and_grad_batched_match_oracle_per_row(build, rho):
    parents, weights, bins, tree = _case(build)
    rng = np.random.default_rng(1000 + _seed(build))
    n_rows = 64 + 5
    p, q = random_masses(rng, tree.n_bins, batch=(n_rows,))
    ref_val = np.array([oracle.emd(p[r], q[r], parents, weights, bins, rho) for r in range(n_rows)])
    ref_grad = np.array([oracle.grad(p[r], q[r], parents, weights, bins, rho) for r in range(n_rows)])
    grad_atol = 1e-10 * max(1.0, np.abs(ref_grad).max())
    for n in (n_rows, 37, 1):
        value, grad = emdtree.emd_value_and_grad(p[:n], q[:n], tree, rho=rho)
        assert value.shape == (n,) and grad.shape == (n, tree.n_bins)
        assert value.dtype == grad.dtype == np.float64
        assert_allclose(value, ref_val[:n], rtol=1e-10, atol=1e-14)
        assert_allclose(grad, ref_grad[:n], rtol=0, atol=grad_atol)
        assert_allclose(emdtree.emd(p[:n], q[:n], tree, rho=rho), ref_val[:n], rtol=1e-10, atol=1e-14)
        assert_allclose(emdtree.emd_grad(p[:n], q[:n], tree, rho=rho), ref_grad[:n], rtol=0, atol=grad_atol)
    # a single pair without a batch axis
    value, grad = emdtree.emd_value_and_grad(p[5], q[5], tree, rho=rho)
    assert np.ndim(value) == 0 and grad.shape == (tree.n_bins,)
    assert_allclose(value, ref_val[5], rtol=1e-10, atol=1e-14)
    assert_allclose(grad, ref_grad[5], rtol=0, atol=grad_atol)


@pytest.mark.parametrize("build", BUILDERS, ids=CASE_IDS)
def test_phi_batched_matches_oracle_per_row(build):
    parents, weights, bins, tree = _case(build)
    rng = np.random.default_rng(2000 + _seed(build))
    n_rows = 64 + 5
    p, q = random_masses(rng, tree.n_bins, batch=(n_rows,))
    ps, qs = random_masses(rng, tree.n_bins, batch=(n_rows,), sparse=True)
    p[1::2], q[1::2] = ps[1::2], qs[1::2]  # alternate dense and sparse rows
    ref = np.array([oracle.phi(p[r], q[r], parents, bins) for r in range(n_rows)])
    for n in (n_rows, 37, 1):
        out = emdtree.phi(p[:n], q[:n], tree)
        assert out.shape == (n, tree.n_nodes) and out.dtype == np.float64
        assert_allclose(out, ref[:n], rtol=0, atol=1e-12)
    assert_allclose(emdtree.phi(p[3], q[3], tree), ref[3], rtol=0, atol=1e-12)


@pytest.mark.parametrize("build", BUILDERS, ids=CASE_IDS)
def test_sparse_masses_match_oracle(build):
    """Masses with many zeros (phi exactly 0 on many edges) against the oracle."""
    parents, weights, bins, tree = _case(build)
    rng = np.random.default_rng(3000 + _seed(build))
    p, q = random_masses(rng, tree.n_bins, batch=(41,), sparse=True)
    for rho in RHOS:
        ref = [oracle.emd(p[r], q[r], parents, weights, bins, rho) for r in range(len(p))]
        assert_allclose(emdtree.emd(p, q, tree, rho=rho), ref, rtol=1e-10, atol=1e-14)
    for rho in (2.0, 3.0):  # smooth at phi = 0: gradient well defined
        ref = np.array([oracle.grad(p[r], q[r], parents, weights, bins, rho) for r in range(len(p))])
        assert_allclose(emdtree.emd_grad(p, q, tree, rho=rho), ref, rtol=0, atol=1e-10 * np.abs(ref).max())


# --- chains -----------------------------------------------------------------------


@pytest.mark.parametrize("n", [2, 3, 10, 57])
def test_chain_matches_scipy_wasserstein(n):
    rng = np.random.default_rng(n)
    spacings = [None, 0.37, rng.uniform(0.05, 4.0, size=n - 1)]
    for spacing in spacings:
        tree = Tree.chain(n, spacing=spacing)
        pos = chain_positions(n, 1.0 if spacing is None else spacing)
        for sparse in (False, True):
            p, q = random_masses(rng, n, batch=(5,), sparse=sparse)
            values = emdtree.emd(p, q, tree)
            ref = [scipy.stats.wasserstein_distance(pos, pos, p[r], q[r]) for r in range(5)]
            assert_allclose(values, ref, rtol=1e-10, atol=1e-14)


def test_tree_none_is_unit_chain():
    rng = np.random.default_rng(5)
    n = 13
    chain_tree = Tree.chain(n)
    parents, weights, bins = chain(n)
    assert chain_tree == Tree.from_parents(parents, weights, bins)
    p, q = random_masses(rng, n, batch=(6,))
    v = _directions(rng, n, 6)
    for rho in RHOS:
        assert_array_equal(emdtree.emd(p, q, rho=rho), emdtree.emd(p, q, chain_tree, rho=rho))
        assert_array_equal(emdtree.emd_grad(p, q, rho=rho), emdtree.emd_grad(p, q, chain_tree, rho=rho))
        assert_array_equal(emdtree.emd_hvp(p, q, v, rho=rho), emdtree.emd_hvp(p, q, v, chain_tree, rho=rho))
        assert_array_equal(
            emdtree.emd_hessian(p, q, rho=rho), emdtree.emd_hessian(p, q, chain_tree, rho=rho)
        )
    assert_array_equal(emdtree.phi(p, q), emdtree.phi(p, q, chain_tree))
    # on a unit chain phi is the cumulative sum of p - q
    assert_allclose(emdtree.phi(p, q), np.cumsum(p - q, axis=-1), rtol=0, atol=1e-14)


# --- gradients against finite differences -------------------------------------------


@pytest.mark.parametrize("rho", [1.5, 2.0, 3.0])
@pytest.mark.parametrize("build", BUILDERS, ids=CASE_IDS)
def test_grad_matches_finite_differences(build, rho):
    parents, weights, bins, tree = _case(build)
    rng = np.random.default_rng(4000 + _seed(build))
    p, q = _dense_point(rng, tree.n_bins)
    value, g = emdtree.emd_value_and_grad(p, q, tree, rho=rho)
    margin = _phi_margin(p, q, parents, weights, bins)
    for d in _directions(rng, tree.n_bins, 4):
        # keep every phi on its side of 0 and every mass positive
        h = min(1e-6, 1e-3 * margin / np.abs(d).sum(), 0.1 * p.min() / np.abs(d).max())
        fd = _central_difference(emdtree.emd, p, q, d, h, tree, rho)
        # truncation error (relative 1e-6 at most) plus rounding of the values over 2h
        tol = 1e-6 * np.abs(g).max() * np.abs(d).sum() + 1e-14 * abs(value) / h
        assert abs(fd - g @ d) <= tol, (fd, g @ d)


@pytest.mark.parametrize("build", BUILDERS, ids=CASE_IDS)
def test_grad_rho1_matches_finite_differences_away_from_kinks(build):
    """For rho = 1 the loss is piecewise linear; where no phi is near 0 the
    subgradient is the gradient and central differences are exact up to rounding."""
    parents, weights, bins, tree = _case(build)
    rng = np.random.default_rng(5000 + _seed(build))
    p, q = _dense_point(rng, tree.n_bins)
    margin = _phi_margin(p, q, parents, weights, bins)
    assert margin > 1e-6
    value, g = emdtree.emd_value_and_grad(p, q, tree)
    for d in _directions(rng, tree.n_bins, 4):
        h = min(0.25 * margin / np.abs(d).sum(), 0.1 * p.min() / np.abs(d).max())
        fd = _central_difference(emdtree.emd, p, q, d, h, tree, 1.0)
        # only rounding of the values over 2h
        assert abs(fd - g @ d) <= 1e-14 * (abs(value) + 1.0) / h, (fd, g @ d)


@pytest.mark.parametrize("rho", RHOS)
def test_grad_sums_to_zero(rho):
    rng = np.random.default_rng(6)
    parents, weights, bins = random_tree(rng, 300, bins_on_internal=True)
    tree = Tree.from_parents(parents, weights, bins)
    for sparse in (False, True):
        p, q = random_masses(rng, tree.n_bins, batch=(50,), sparse=sparse)
        g = emdtree.emd_grad(p, q, tree, rho=rho)
        scale = np.abs(g).max(axis=-1)
        # measured: at most 3.4e-13 with gradient entries up to 45
        assert np.all(np.abs(g.sum(axis=-1)) <= 1e-12 * np.maximum(scale, 1.0)), np.abs(g.sum(-1)).max()
        # swapping p and q negates phi, hence the gradient
        assert_allclose(emdtree.emd_grad(q, p, tree, rho=rho), -g, rtol=0, atol=1e-12 * scale.max())


# --- Hessian ----------------------------------------------------------------------


@pytest.mark.parametrize("rho", [2.0, 3.0])
@pytest.mark.parametrize("build", BUILDERS, ids=CASE_IDS)
def test_hvp_and_hessian_match_finite_differences_of_grad(build, rho):
    parents, weights, bins, tree = _case(build)
    rng = np.random.default_rng(7000 + _seed(build))
    p, q = _dense_point(rng, tree.n_bins)
    margin = _phi_margin(p, q, parents, weights, bins)
    H = emdtree.emd_hessian(p, q, tree, rho=rho)
    assert H.shape == (tree.n_bins, tree.n_bins)
    for d in _directions(rng, tree.n_bins, 3):
        # rho = 2: the gradient is linear; rho = 3: quadratic while no phi changes sign
        h = min(1e-4, 0.25 * margin / np.abs(d).sum(), 0.1 * p.min() / np.abs(d).max())
        fd = _central_difference(emdtree.emd_grad, p, q, d, h, tree, rho)
        hv = emdtree.emd_hvp(p, q, d, tree, rho=rho)
        scale = np.abs(H).max() * np.abs(d).max() * tree.n_bins
        assert_allclose(hv, fd, rtol=0, atol=1e-7 * scale)
        assert_allclose(H @ d, fd, rtol=0, atol=1e-7 * scale)


@pytest.mark.parametrize("build", BUILDERS, ids=CASE_IDS)
def test_hvp_rho_1_5_matches_finite_differences_away_from_zero(build):
    parents, weights, bins, tree = _case(build)
    rng = np.random.default_rng(8000 + _seed(build))
    # the dense pair with the largest margin among a few candidates
    points = [_dense_point(rng, tree.n_bins) for _ in range(20)]
    p, q = max(points, key=lambda pq: _phi_margin(*pq, parents, weights, bins))
    margin = _phi_margin(p, q, parents, weights, bins)
    assert margin > 1e-5
    for d in _directions(rng, tree.n_bins, 3):
        h = min(1e-6, 1e-3 * margin / np.abs(d).sum(), 0.1 * p.min() / np.abs(d).max())
        fd = _central_difference(emdtree.emd_grad, p, q, d, h, tree, 1.5)
        hv = emdtree.emd_hvp(p, q, d, tree, rho=1.5)
        # size of the result plus the rounding of the gradients over 2h
        scale = np.abs(fd).max() + np.abs(emdtree.emd_grad(p, q, tree, rho=1.5)).max() * 1e-16 / h
        assert_allclose(hv, fd, rtol=0, atol=1e-5 * scale)
        assert_allclose(emdtree.emd_hessian(p, q, tree, rho=1.5) @ d, fd, rtol=0, atol=1e-5 * scale)


@pytest.mark.parametrize("rho", [1.5, 2.0, 3.0])
@pytest.mark.parametrize("build", BUILDERS, ids=CASE_IDS)
def test_hessian_and_hvp_match_oracle(build, rho):
    parents, weights, bins, tree = _case(build)
    rng = np.random.default_rng(9000 + _seed(build))
    p, q = random_masses(rng, tree.n_bins, batch=(3,))
    v = rng.standard_normal((3, tree.n_bins))  # not mass-conserving: P projects it
    H = emdtree.emd_hessian(p, q, tree, rho=rho)
    hv = emdtree.emd_hvp(p, q, v, tree, rho=rho)
    assert H.shape == (3, tree.n_bins, tree.n_bins) and hv.shape == (3, tree.n_bins)
    for r in range(3):
        ref = oracle.hessian(p[r], q[r], parents, weights, bins, rho)
        scale = np.abs(ref).max()
        assert_allclose(H[r], ref, rtol=0, atol=1e-12 * scale)
        assert_allclose(hv[r], ref @ v[r], rtol=0, atol=1e-12 * scale * np.abs(v[r]).sum())


@pytest.mark.parametrize("rho", [1.5, 2.0, 3.0])
@pytest.mark.parametrize("build", BUILDERS, ids=CASE_IDS)
def test_hessian_properties(build, rho):
    parents, weights, bins, tree = _case(build)
    rng = np.random.default_rng(10000 + _seed(build))
    n = tree.n_bins
    p, q = random_masses(rng, n, batch=(4,))
    v = rng.standard_normal((4, n))
    H = emdtree.emd_hessian(p, q, tree, rho=rho)
    scale = np.abs(H).max()
    assert np.all(np.isfinite(H))
    Hv = np.einsum("rkl,rl->rk", H, v)
    assert_allclose(Hv, emdtree.emd_hvp(p, q, v, tree, rho=rho), rtol=0, atol=1e-12 * scale * n)
    assert_allclose(H, np.swapaxes(H, -1, -2), rtol=0, atol=1e-13 * scale)
    assert_allclose(H.sum(axis=-1), 0.0, rtol=0, atol=1e-13 * scale * n)
    # the hvp of a constant vector (no mass moved) is zero
    assert_allclose(emdtree.emd_hvp(p, q, np.ones(n), tree, rho=rho), 0.0, rtol=0, atol=1e-13 * scale * n)
    if rho >= 2:  # EMD^rho is convex
        assert np.linalg.eigvalsh(H).min() >= -1e-12 * scale * n
    if rho == 2:  # the Hessian of EMD^2 does not depend on p and q
        p2, q2 = random_masses(rng, n, sparse=True)
        assert_allclose(emdtree.emd_hessian(p2, q2, tree), H[0], rtol=0, atol=1e-14 * scale)
        assert_allclose(H, np.broadcast_to(H[0], H.shape), rtol=0, atol=1e-14 * scale)


def test_rho1_hessian_and_hvp_are_zero():
    rng = np.random.default_rng(11)
    parents, weights, bins = random_tree(rng, 30, bins_on_internal=True)
    tree = Tree.from_parents(parents, weights, bins)
    p, q = random_masses(rng, tree.n_bins, batch=(3,))
    v = rng.standard_normal((3, tree.n_bins))
    H = emdtree.emd_hessian(p, q, tree, rho=1)
    assert H.shape == (3, tree.n_bins, tree.n_bins)
    assert np.all(H == 0)
    assert np.all(emdtree.emd_hvp(p, q, v, tree, rho=1) == 0)


def test_hessian_rho_between_1_and_2_with_all_bins_below_a_non_root_node():
    """A non-root node whose subtree holds every bin has phi = 0 for every
    balanced pair, but no mass-conserving move changes it: its (infinite)
    curvature is cancelled by the projection P and the Hessian is finite."""
    parents, weights, bins = deep_path(7)  # node 1, the root's only child, is above all bins
    tree = Tree.from_parents(parents, weights, bins)
    p = np.array([0.5, 0.25, 0.25])
    q = np.array([0.125, 0.375, 0.5])  # dyadic: phi at node 1 is exactly 0
    ref = oracle.hessian(p, q, parents, weights, bins, 1.5)
    assert np.all(np.isfinite(ref))
    H = emdtree.emd_hessian(p, q, tree, rho=1.5)
    assert_allclose(H, ref, rtol=0, atol=1e-12 * np.abs(ref).max())
    v = np.array([1.0, 0.3, -0.7])
    assert_allclose(emdtree.emd_hvp(p, q, v, tree, rho=1.5), ref @ v, rtol=0, atol=1e-12 * np.abs(ref).max())


def test_hvp_rho_between_1_and_2_with_all_bins_below_a_non_root_node():
    # root 0 -> node 1 -> leaves 2 and 3
    parents, weights, bins = np.array([-1, 0, 1, 1]), np.array([0.0, 1.0, 1.0, 1.0]), np.array([2, 3])
    tree = Tree.from_parents(parents, weights, bins)
    p, q = np.array([0.75, 0.25]), np.array([0.25, 0.75])
    ref = oracle.hessian(p, q, parents, weights, bins, 1.5)
    for v in (np.array([1.0, -1.0]), np.array([0.1, 0.3])):
        assert_allclose(emdtree.emd_hvp(p, q, v, tree, rho=1.5), ref @ v, rtol=0, atol=1e-12)


# --- float32 against float64, large batches ---------------------------------------


def _softmax(rng, shape, scale):
    z = scale * rng.standard_normal(shape)
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def test_float32_close_to_float64_on_imagenet_tree():
    """float32 against float64 on the ImageNet WordNet tree (1371 nodes, 1000
    bins), batch 64 of softmax outputs (logits of standard deviation 3); the
    float32 inputs are the float64 masses rounded to float32, so the error
    includes that rounding.

    Measured with this seed, rho = 1, 2, 3: largest relative error of the
    values 1.4e-7, 2.6e-7, 3.5e-7; largest gradient error relative to the
    row's largest gradient entry 7.5e-8, 3.9e-7, 3.3e-7 (seeds 0-3: at most
    6.9e-7 for values and 4.8e-7 for gradients). Bounds: 3e-6 for both.
    """
    from emdtree.datasets import imagenet_wordnet

    tree = imagenet_wordnet()
    rng = np.random.default_rng(0)
    p = _softmax(rng, (64, 1000), 3.0)
    q = _softmax(rng, (64, 1000), 3.0)
    p32, q32 = p.astype(np.float32), q.astype(np.float32)
    for rho in (1.0, 2.0, 3.0):
        v64, g64 = emdtree.emd_value_and_grad(p, q, tree, rho=rho)
        v32, g32 = emdtree.emd_value_and_grad(p32, q32, tree, rho=rho)
        assert v32.dtype == g32.dtype == np.float32
        assert_allclose(v32, v64, rtol=3e-6, atol=0)
        row_scale = np.abs(g64).max(axis=-1, keepdims=True)
        assert np.all(np.abs(g32 - g64) <= 3e-6 * row_scale), (np.abs(g32 - g64) / row_scale).max()


def test_large_batch_matches_small_batches():
    """A batch large enough to be split across threads gives the results of
    small batches, and of the oracle on a few rows."""
    from emdtree.datasets import imagenet_wordnet

    tree = imagenet_wordnet()
    rng = np.random.default_rng(22)
    n_rows = 1500 + 7  # rows x nodes > 2e6
    p = _softmax(rng, (n_rows, 1000), 2.0)
    q = _softmax(rng, (n_rows, 1000), 2.0)
    for dtype, rho in ((np.float64, 1.0), (np.float64, 1.5), (np.float64, 2.0), (np.float32, 2.0)):
        pd, qd = p.astype(dtype), q.astype(dtype)
        value, grad = emdtree.emd_value_and_grad(pd, qd, tree, rho=rho)
        assert value.dtype == grad.dtype == dtype
        tol = 1e-13 if dtype == np.float64 else 1e-6
        for start in (0, 37 * 16, n_rows - 37):
            part = slice(start, start + 37)
            v_part, g_part = emdtree.emd_value_and_grad(pd[part], qd[part], tree, rho=rho)
            assert_allclose(value[part], v_part, rtol=tol)
            assert_allclose(grad[part], g_part, rtol=0, atol=tol * np.abs(g_part).max())
        assert_allclose(emdtree.emd(pd, qd, tree, rho=rho), value, rtol=tol)
        if dtype == np.float64:
            for r in (0, 777, n_rows - 1):
                assert_allclose(value[r], oracle.emd(p[r], q[r], *_arrays(tree), rho), rtol=1e-10)


# --- normalize="l1" ------------------------------------------------------------


@pytest.mark.parametrize("rho", RHOS)
def test_normalize_l1_counts_equal_distributions(rho):
    tree = _broadcast_tree()
    n = tree.n_bins
    rng = np.random.default_rng(17)
    pc = rng.integers(0, 20, size=(6, n)).astype(np.float64)
    qc = rng.integers(0, 20, size=(6, n)).astype(np.float64)
    pc[:, 0] += 1  # no empty row
    qc[:, 1] += 1
    pn = pc / pc.sum(axis=-1, keepdims=True)
    qn = qc / qc.sum(axis=-1, keepdims=True)
    ref = emdtree.emd(pn, qn, tree, rho=rho)
    assert_allclose(emdtree.emd(pc, qc, tree, rho=rho, normalize="l1"), ref, rtol=1e-13)
    ref = emdtree.emd(pn, qn[0], tree, rho=rho)  # one target for the whole batch
    assert_allclose(emdtree.emd(pc, qc[0], tree, rho=rho, normalize="l1"), ref, rtol=1e-13)
    assert_allclose(emdtree.phi(pc, qc, tree, normalize="l1"), emdtree.phi(pn, qn, tree), rtol=0, atol=1e-15)
    # integer counts in, float64 out
    value = emdtree.emd(pc.astype(np.int64), qc.astype(np.int64), tree, rho=rho, normalize="l1")
    assert value.dtype == np.float64
    assert_allclose(value, emdtree.emd(pn, qn, tree, rho=rho), rtol=1e-13)
    # the value of value_and_grad agrees with emd
    val, _ = emdtree.emd_value_and_grad(pc, qc, tree, rho=rho, normalize="l1")
    assert_allclose(val, emdtree.emd(pn, qn, tree, rho=rho), rtol=1e-13)


@pytest.mark.parametrize("rho", RHOS)
def test_normalize_l1_grad_matches_finite_differences_of_normalised_loss(rho):
    parents, weights, bins = random_tree(np.random.default_rng(18), 25, bins_on_internal=True)
    tree = Tree.from_parents(parents, weights, bins)
    n = tree.n_bins
    rng = np.random.default_rng(19)
    pc = rng.uniform(1.0, 10.0, size=(3, n))
    qc = rng.uniform(1.0, 10.0, size=(3, n))
    value, grad = emdtree.emd_value_and_grad(pc, qc, tree, rho=rho, normalize="l1")
    assert grad.shape == (3, n)
    assert_array_equal(emdtree.emd_grad(pc, qc, tree, rho=rho, normalize="l1"), grad)
    for r in range(3):
        pn, qn = pc[r] / pc[r].sum(), qc[r] / qc[r].sum()
        margin = _phi_margin(pn, qn, parents, weights, bins)
        assert margin > 1e-6
        for d in rng.standard_normal((3, n)):  # arbitrary directions: the total changes too
            h = min(1e-6, 1e-3 * margin * pc[r].sum() / np.abs(d).sum())

            def f(x, r=r):
                return emdtree.emd(x, qc[r], tree, rho=rho, normalize="l1")

            fd = (f(pc[r] + h * d) - f(pc[r] - h * d)) / (2 * h)
            scale = np.abs(grad[r]).max() * np.abs(d).sum()
            assert abs(fd - grad[r] @ d) <= 1e-6 * scale, (fd, grad[r] @ d)


# --- metric axioms (rho = 1) ------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n_nodes=st.integers(2, 9), internal=st.booleans(), data=st.data())
def test_metric_axioms(seed, n_nodes, internal, data):
    rng = np.random.default_rng(seed)
    tree = Tree.from_parents(*random_tree(rng, n_nodes, bins_on_internal=internal))
    n = tree.n_bins
    counts = st.lists(st.integers(0, 4), min_size=n, max_size=n).filter(lambda c: sum(c) > 0)
    p, q, r = (np.array(data.draw(counts), dtype=np.float64) for _ in range(3))
    p, q, r = p / p.sum(), q / q.sum(), r / r.sum()
    d_pq, d_qp = emdtree.emd(p, q, tree), emdtree.emd(q, p, tree)
    d_pr, d_qr = emdtree.emd(p, r, tree), emdtree.emd(q, r, tree)
    assert emdtree.emd(p, p, tree) == 0.0
    assert d_pq == pytest.approx(d_qp, rel=1e-14, abs=1e-15)
    assert d_pr <= d_pq + d_qr + 1e-12
    assert (d_pq > 1e-12) == (not np.array_equal(p, q))  # all edge weights are >= 0.1
    assert d_pq >= 0


# --- a larger tree ------------------------------------------------------------------


def test_large_random_tree_matches_oracle():
    rng = np.random.default_rng(21)
    parents, weights, bins = random_tree(rng, 2000, bins_on_internal=True, zero_weights=True)
    tree = Tree.from_parents(parents, weights, bins)
    assert tree.n_nodes == 2000 and tree.n_bins > 1000
    p, q = random_masses(rng, tree.n_bins)
    assert_allclose(emdtree.phi(p, q, tree), oracle.phi(p, q, parents, bins), rtol=0, atol=1e-12)
    for rho in (1.0, 1.5, 2.0):
        value, grad = emdtree.emd_value_and_grad(p, q, tree, rho=rho)
        assert_allclose(value, oracle.emd(p, q, parents, weights, bins, rho), rtol=1e-10)
        ref = oracle.grad(p, q, parents, weights, bins, rho)
        assert_allclose(grad, ref, rtol=0, atol=1e-10 * np.abs(ref).max())
    # the oracle's dense Hessian is too slow at this size; for rho = 2 the gradient is linear,
    # so central differences of it give the Hessian-vector product up to rounding
    d = _directions(rng, tree.n_bins, 1)[0]
    h = 0.1 * p.min() / np.abs(d).max()
    fd = _central_difference(emdtree.emd_grad, p, q, d, h, tree, 2.0)
    assert_allclose(emdtree.emd_hvp(p, q, d, tree, rho=2), fd, rtol=0, atol=1e-6 * np.abs(fd).max())
