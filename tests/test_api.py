"""Tests of the public NumPy API (``emd``, ``emd_grad``, ``emd_value_and_grad``,
``phi``, ``emd_hvp``, ``emd_hessian``) and of ``Tree``, against the slow
reference implementations in ``oracle.py``, linear programming, POT, SciPy and
finite differences."""

import pickle
import re

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
    binary,
    chain,
    chain_positions,
    deep_path,
    random_masses,
    random_tree,
    star,
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


# --- broadcasting and axis -------------------------------------------------------


def _broadcast_tree():
    return Tree.from_parents(*random_tree(np.random.default_rng(12), 20, bins_on_internal=True))


@pytest.mark.parametrize("rho", [1.0, 1.5, 2.0])
def test_broadcast_batch_against_single_target(rho):
    tree = _broadcast_tree()
    n, m = tree.n_bins, tree.n_nodes
    rng = np.random.default_rng(13)
    p, q = random_masses(rng, n, batch=(7,))
    q1 = q[2]
    qt = np.broadcast_to(q1, p.shape)
    v = rng.standard_normal(n)
    vt = np.broadcast_to(v, p.shape)
    for a, b, at, bt in ((p, q1, p, qt), (q1, p, qt, p)):
        value, grad = emdtree.emd_value_and_grad(a, b, tree, rho=rho)
        assert value.shape == (7,) and grad.shape == (7, n)
        ref_value, ref_grad = emdtree.emd_value_and_grad(np.array(at), np.array(bt), tree, rho=rho)
        assert_allclose(value, ref_value, rtol=1e-14, atol=0)
        assert_allclose(grad, ref_grad, rtol=0, atol=1e-14)
        assert_allclose(emdtree.emd(a, b, tree, rho=rho), ref_value, rtol=1e-14, atol=0)
        out = emdtree.phi(a, b, tree)
        assert out.shape == (7, m)
        assert_allclose(out, emdtree.phi(np.array(at), np.array(bt), tree), rtol=0, atol=1e-15)
        hv = emdtree.emd_hvp(a, b, v, tree, rho=rho)
        assert hv.shape == (7, n)
        ref_hv = emdtree.emd_hvp(np.array(at), np.array(bt), np.array(vt), tree, rho=rho)
        assert_allclose(hv, ref_hv, rtol=0, atol=1e-12 * max(1.0, np.abs(hv).max()))
        H = emdtree.emd_hessian(a, b, tree, rho=rho)
        assert H.shape == (7, n, n)
        assert_allclose(H, emdtree.emd_hessian(np.array(at), np.array(bt), tree, rho=rho), rtol=0, atol=0)
    # and against the oracle, row by row
    ref = [oracle.emd(p[r], q1, *_arrays(tree), rho) for r in range(7)]
    assert_allclose(emdtree.emd(p, q1, tree, rho=rho), ref, rtol=1e-10)


@pytest.mark.parametrize("rho", [1.0, 3.0])
def test_broadcast_outer_product_of_batches(rho):
    tree = _broadcast_tree()
    n, m = tree.n_bins, tree.n_nodes
    rng = np.random.default_rng(14)
    A, C = 3, 5
    p, _ = random_masses(rng, n, batch=(A, 1))
    q, _ = random_masses(rng, n, batch=(1, C))
    v = rng.standard_normal((A, 1, n))
    value, grad = emdtree.emd_value_and_grad(p, q, tree, rho=rho)
    assert value.shape == (A, C) and grad.shape == (A, C, n)
    out = emdtree.phi(p, q, tree)
    assert out.shape == (A, C, m)
    hv = emdtree.emd_hvp(p, q, v, tree, rho=rho)
    assert hv.shape == (A, C, n)
    H = emdtree.emd_hessian(p, q, tree, rho=rho)
    assert H.shape == (A, C, n, n)
    for a in range(A):
        for c in range(C):
            v_ac, g_ac = emdtree.emd_value_and_grad(p[a, 0], q[0, c], tree, rho=rho)
            assert_allclose(value[a, c], v_ac, rtol=1e-14)
            assert_allclose(grad[a, c], g_ac, rtol=0, atol=1e-14)
            assert_allclose(out[a, c], emdtree.phi(p[a, 0], q[0, c], tree), rtol=0, atol=1e-15)
            ref_hv = emdtree.emd_hvp(p[a, 0], q[0, c], v[a, 0], tree, rho=rho)
            assert_allclose(hv[a, c], ref_hv, rtol=0, atol=1e-12 * max(1.0, np.abs(hv).max()))
            assert_allclose(H[a, c], emdtree.emd_hessian(p[a, 0], q[0, c], tree, rho=rho), rtol=0, atol=0)
            assert_allclose(value[a, c], oracle.emd(p[a, 0], q[0, c], *_arrays(tree), rho), rtol=1e-10)


@pytest.mark.parametrize("rho", [1.0, 1.5, 2.0])
def test_axis_argument_matches_canonical_layout(rho):
    tree = _broadcast_tree()
    n, m = tree.n_bins, tree.n_nodes
    rng = np.random.default_rng(15)
    p, q = random_masses(rng, n, batch=(4, 6))  # canonical: (4, 6, n)
    v = rng.standard_normal((4, 6, n))
    value, grad = emdtree.emd_value_and_grad(p, q, tree, rho=rho)
    out = emdtree.phi(p, q, tree)
    hv = emdtree.emd_hvp(p, q, v, tree, rho=rho)
    H = emdtree.emd_hessian(p, q, tree, rho=rho)
    hv_tol = 1e-12 * max(1.0, np.abs(hv).max())
    for axis in (0, 1, -2, -3):
        ax = axis % 3
        pa, qa, va = (np.moveaxis(x, -1, ax) for x in (p, q, v))
        value_a, grad_a = emdtree.emd_value_and_grad(pa, qa, tree, rho=rho, axis=axis)
        assert value_a.shape == (4, 6) and grad_a.shape == pa.shape
        assert_allclose(value_a, value, rtol=1e-14)
        assert_allclose(np.moveaxis(grad_a, ax, -1), grad, rtol=0, atol=1e-14)
        assert_allclose(emdtree.emd(pa, qa, tree, rho=rho, axis=axis), value, rtol=1e-14)
        out_a = emdtree.phi(pa, qa, tree, axis=axis)
        assert out_a.shape[ax] == m and np.moveaxis(out_a, ax, -1).shape == (4, 6, m)
        assert_allclose(np.moveaxis(out_a, ax, -1), out, rtol=0, atol=1e-15)
        hv_a = emdtree.emd_hvp(pa, qa, va, tree, rho=rho, axis=axis)
        assert hv_a.shape == pa.shape
        assert_allclose(np.moveaxis(hv_a, ax, -1), hv, rtol=0, atol=hv_tol)
        H_a = emdtree.emd_hessian(pa, qa, tree, rho=rho, axis=axis)
        assert H_a.shape == (4, 6, n, n)
        assert_allclose(H_a, H, rtol=0, atol=1e-14 * max(1.0, np.abs(H).max()))
    # a 2-D input with the bins first
    value_t, grad_t = emdtree.emd_value_and_grad(p[0].T, q[0].T, tree, rho=rho, axis=0)
    assert value_t.shape == (6,) and grad_t.shape == (n, 6)
    assert_allclose(value_t, value[0], rtol=1e-14)
    assert_allclose(grad_t.T, grad[0], rtol=0, atol=1e-14)
    assert emdtree.phi(p[0].T, q[0].T, tree, axis=0).shape == (m, 6)


def test_single_pair_gives_numpy_scalar():
    p, q = np.array([0.5, 0.5, 0.0, 0.0]), np.array([0.0, 0.0, 0.5, 0.5])
    value = emdtree.emd(p, q)
    assert isinstance(value, np.float64) and value == 2.0
    value32 = emdtree.emd(p.astype(np.float32), q.astype(np.float32))
    assert isinstance(value32, np.float32) and value32 == 2.0
    value, grad = emdtree.emd_value_and_grad(p, q, rho=2)
    assert isinstance(value, np.float64) and value == 1.5 and grad.shape == (4,)


# --- dtypes ---------------------------------------------------------------------


def test_float32_in_float32_out():
    tree = _broadcast_tree()
    n = tree.n_bins
    rng = np.random.default_rng(16)
    p, q = random_masses(rng, n, batch=(5,), dtype=np.float32)
    v = rng.standard_normal((5, n)).astype(np.float32)
    for rho in RHOS:
        assert emdtree.emd(p, q, tree, rho=rho).dtype == np.float32
        assert emdtree.emd(p[0], q[0], tree, rho=rho).dtype == np.float32
        value, grad = emdtree.emd_value_and_grad(p, q, tree, rho=rho)
        assert value.dtype == grad.dtype == np.float32
        assert emdtree.emd_grad(p, q, tree, rho=rho).dtype == np.float32
        assert emdtree.emd_hvp(p, q, v, tree, rho=rho).dtype == np.float32
        assert emdtree.emd_hessian(p, q, tree, rho=rho).dtype == np.float32
    assert emdtree.phi(p, q, tree).dtype == np.float32
    assert emdtree.emd(p * 7, q * 7, tree, normalize="l1").dtype == np.float32
    assert emdtree.emd_grad(p * 7, q * 7, tree, normalize="l1").dtype == np.float32


def test_integers_and_mixed_dtypes_give_float64():
    p = np.array([2, 0, 1, 3])
    q = np.array([0, 1, 2, 3])
    ref = emdtree.emd(p.astype(np.float64), q.astype(np.float64))
    for a, b in ((p, q), (p.astype(np.int32), q.astype(np.uint8)), (p.astype(np.float32), q),
                 (p.astype(np.float32), q.astype(np.float64))):
        value = emdtree.emd(a, b)
        assert value.dtype == np.float64 and value == ref
        assert emdtree.emd_grad(a, b, rho=2).dtype == np.float64
        assert emdtree.phi(a, b).dtype == np.float64
        assert emdtree.emd_hvp(a, b, np.array([1, 0, 0, -1])).dtype == np.float64
        assert emdtree.emd_hessian(a, b, rho=1.5).dtype == np.float64
    # lists of Python ints
    assert emdtree.emd([2, 0, 1, 3], [0, 1, 2, 3]) == ref
    # p - q = [2, -1, -1, 0]: phi = [2, 1, 0] on the three unit edges
    assert ref == 3.0


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


# --- bad inputs -------------------------------------------------------------------

_P = np.array([0.25, 0.25, 0.5])
_Q = np.array([0.5, 0.25, 0.25])

# every public function, called as f(p, q, **kwargs)
FUNCS = {
    "emd": lambda p, q, **kw: emdtree.emd(p, q, **kw),
    "emd_grad": lambda p, q, **kw: emdtree.emd_grad(p, q, **kw),
    "emd_value_and_grad": lambda p, q, **kw: emdtree.emd_value_and_grad(p, q, **kw),
    "phi": lambda p, q, **kw: emdtree.phi(p, q, **kw),
    "emd_hvp": lambda p, q, **kw: emdtree.emd_hvp(p, q, np.zeros(np.shape(p)), **kw),
    "emd_hessian": lambda p, q, **kw: emdtree.emd_hessian(p, q, **kw),
}
WITH_RHO = ["emd", "emd_grad", "emd_value_and_grad", "emd_hvp", "emd_hessian"]
WITH_NORMALIZE = ["emd", "emd_grad", "emd_value_and_grad", "phi"]
ALL = list(FUNCS)


def _with(values, p=_P, q=_Q):
    """Copies of p and q with entries replaced: values = {('p', index): value}."""
    p, q = np.array(p, dtype=np.float64), np.array(q, dtype=np.float64)
    for (name, index), value in values.items():
        (p if name == "p" else q)[index] = value
    return p, q


@pytest.mark.parametrize("name", ALL)
def test_bin_axis_length_must_match_tree(name):
    with pytest.raises(ValueError, match="bin axis has length 3 but the tree has 4 bins"):
        FUNCS[name](_P, _Q, tree=Tree.chain(4))
    with pytest.raises(ValueError, match="bin axis has length 3 but the tree has 2 bins"):
        FUNCS[name](np.tile(_P, (2, 1)), np.tile(_Q, (2, 1)), tree=Tree.chain(2), axis=-1)


@pytest.mark.parametrize("name", ALL)
def test_shapes_must_broadcast(name):
    p = np.tile(_P, (2, 1))
    q = np.tile(_Q, (3, 1))
    with pytest.raises(ValueError, match=re.escape("shapes do not broadcast: p(2, 3), q(3, 3)")):
        FUNCS[name](p, q)
    with pytest.raises(ValueError, match="do not broadcast"):
        FUNCS[name](_P, np.array([0.5, 0.5]))


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize(
    "where, value, message",
    [
        (("p", 1), np.nan, "p[1] = nan is not finite"),
        (("q", 2), np.inf, "q[2] = inf is not finite"),
        (("p", 0), -np.inf, "p[0] = -inf is not finite"),
        (("q", 0), -0.25, "q[0] = -0.25 is negative"),
    ],
)
def test_bad_mass_values_named(name, where, value, message):
    p, q = _with({where: value})
    with pytest.raises(ValueError, match=re.escape(message)):
        FUNCS[name](p, q)


@pytest.mark.parametrize("name", ALL)
def test_bad_mass_position_in_batch(name):
    p = np.tile(_P, (2, 4, 1))
    q = np.tile(_Q, (2, 4, 1))
    p[1, 3, 2] = -0.5
    with pytest.raises(ValueError, match=re.escape("p[1, 3, 2] = -0.5 is negative")):
        FUNCS[name](p, q)
    # the same entry with the bins on axis 1
    with pytest.raises(ValueError, match=re.escape("p[1, 2, 3] = -0.5 is negative")):
        FUNCS[name](np.swapaxes(p, 1, 2), np.swapaxes(q, 1, 2), axis=1)
    q = np.tile(_Q, (2, 4, 1))
    q[0, 1, 0] = np.nan
    with pytest.raises(ValueError, match=re.escape("q[0, 1, 0] = nan is not finite")):
        FUNCS[name](np.tile(_P, (2, 4, 1)), q)


def test_bad_direction_named():
    with pytest.raises(ValueError, match=re.escape("v[0] = inf is not finite")):
        emdtree.emd_hvp(_P, _Q, np.array([np.inf, 0.0, 0.0]))


@pytest.mark.parametrize("name", ALL)
def test_unequal_totals(name):
    q = np.array([0.5, 0.25, 0.5])
    with pytest.raises(ValueError, match=r"sum\(p\) = .*1\.0.*sum\(q\) = .*1\.25.*normalize='l1'"):
        FUNCS[name](_P, q)
    p = np.tile(_P, (3, 1))
    qb = np.tile(_Q, (3, 1))
    qb[2] *= 2
    with pytest.raises(ValueError, match=r"at batch index \(2,\).*sum\(p\) = .*sum\(q\) = .*normalize='l1'"):
        FUNCS[name](p, qb)
    # check_inputs=False skips the check
    FUNCS[name](_P, q, check_inputs=False)


@pytest.mark.parametrize("name", WITH_RHO)
@pytest.mark.parametrize("rho", [0.5, 0.999, 0.0, -1.0, np.nan, np.inf])
def test_bad_rho(name, rho):
    with pytest.raises(ValueError, match="rho must be a finite number >= 1"):
        FUNCS[name](_P, _Q, rho=rho)


@pytest.mark.parametrize("name", ALL)
def test_axis_out_of_range(name):
    with pytest.raises(ValueError, match="axis 1 is out of bounds for inputs with 1 dimensions"):
        FUNCS[name](_P, _Q, axis=1)
    with pytest.raises(ValueError, match="axis -3 is out of bounds for inputs with 2 dimensions"):
        FUNCS[name](np.tile(_P, (2, 1)), np.tile(_Q, (2, 1)), axis=-3)


@pytest.mark.parametrize("name", WITH_NORMALIZE)
def test_normalize_errors(name):
    with pytest.raises(ValueError, match="normalize must be None or 'l1'"):
        FUNCS[name](_P, _Q, normalize="l2")
    with pytest.raises(ValueError, match="normalize must be None or 'l1'"):
        FUNCS[name](_P, _Q, normalize=True)
    with pytest.raises(ValueError, match="p has zero total mass: cannot normalize"):
        FUNCS[name](np.zeros(3), _Q, normalize="l1")
    q = np.tile(_Q, (3, 1))
    q[1] = 0.0
    with pytest.raises(ValueError, match=re.escape("q has zero total mass at batch index (1,)")):
        FUNCS[name](np.tile(_P, (3, 1)), q, normalize="l1")


@pytest.mark.parametrize("name", ALL)
def test_type_errors(name):
    with pytest.raises(TypeError, match="real"):
        FUNCS[name](_P.astype(np.complex128), _Q)
    with pytest.raises(TypeError, match="real"):
        FUNCS[name](_P, _Q + 0j)
    with pytest.raises(TypeError, match="emdtree.Tree"):
        FUNCS[name](_P, _Q, tree="chain")
    with pytest.raises(TypeError, match="emdtree.Tree"):
        FUNCS[name](_P, _Q, tree=np.array([-1, 0, 0, 0]))


@pytest.mark.parametrize("name", ALL)
def test_check_inputs_false_skips_value_checks(name):
    # unequal totals: emd^rho is still sum_i w_i |phi_i|^rho over the non-root nodes
    p, q = _P, np.array([0.5, 0.25, 0.5])
    FUNCS[name](p, q, check_inputs=False)
    if name == "emd":
        parents, weights, bins = chain(3)
        ref = oracle.emd(p, q, parents, weights, bins)
        assert emdtree.emd(p, q, check_inputs=False) == pytest.approx(ref, rel=1e-12)
    # shapes are still checked
    with pytest.raises(ValueError, match="bin axis has length 3 but the tree has 4 bins"):
        FUNCS[name](p, q, tree=Tree.chain(4), check_inputs=False)


# --- Tree -------------------------------------------------------------------------


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


@pytest.mark.parametrize("build", BUILDERS, ids=CASE_IDS)
def test_distance_matrix_matches_oracle(build):
    parents, weights, bins, tree = _case(build)
    D = tree.distance_matrix()
    assert D.shape == (tree.n_bins, tree.n_bins) and D.dtype == np.float64
    assert_allclose(D, oracle.distance_matrix(parents, weights, bins), rtol=1e-13, atol=1e-13)
    assert np.all(np.diag(D) == 0) and np.array_equal(D, D.T)


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
