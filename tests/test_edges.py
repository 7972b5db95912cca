"""Edge cases of the public API and of the kernel paths behind it.

The first part holds regression tests for ground the other test files leave
open: every kernel path (chain row scan, 32-sample blocks, one row at a time,
their boundaries at 8 and 32 rows and at the 8/16-wide tiles) against a
vectorised form of the oracle, on trees with a bin on the root, leaves without
bins and zero-cost edges; Hessian-vector products with broadcast and
non-conserving directions; the parallel chain driver; concurrent calls from
Python threads; ``check_inputs=False`` with unequal totals; where validation
errors point; very large trees with small batches.

The second part pins down edge cases that once went wrong: empty batches,
float32 totals beyond the float32 range, mixed float32/float64 arguments and
the mass tolerance, error positions for broadcast arguments, names with NULs,
-0.0 edge costs, edge costs beyond float32, and non-numeric rho.
"""

import json
import pickle
import re
import threading
import time

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal

import emdtree
import oracle
from emdtree import Tree
from trees import chain, random_masses, random_tree, star

from emdtree.engine import driver as _drv

BLOCK = 32
RHOS = (1.0, 1.5, 2.0, 3.0)
BATCHES = (1, 7, 8, 9, 31, 32, 33, 39, 40, 41, 64, 65)


# --- a vectorised oracle -----------------------------------------------------------
#
# oracle.py walks ancestors in Python for every bin and row; the grids below need
# thousands of rows, so they use the same definitions in matrix form, built on the
# oracle's own subtree_bins and checked against oracle.emd / oracle.grad once.


class _Ref:
    def __init__(self, parents, weights, bins):
        self.parents, self.weights, self.bins = parents, np.asarray(weights, float), bins
        self.A = oracle.subtree_bins(parents, bins).astype(float)  # (n_nodes, n_bins)
        self.w = np.where(np.asarray(parents) == -1, 0.0, self.weights)
        counts = self.A.sum(axis=1)
        self.inner = (counts > 0) & (counts < len(bins)) & (np.asarray(parents) != -1)

    def phi(self, p, q):
        return (np.asarray(p, float) - np.asarray(q, float)) @ self.A.T

    def emd(self, p, q, rho):
        return np.abs(self.phi(p, q)) ** rho @ self.w

    def grad(self, p, q, rho):
        f = self.phi(p, q)
        c = rho * self.w * np.sign(f) * np.abs(f) ** (rho - 1)
        g = c @ self.A
        return g - g.mean(axis=-1, keepdims=True)

    def hessian(self, p, q, rho):
        """(rows, n_bins, n_bins) projected Hessians, for dense masses (phi != 0)."""
        f = np.atleast_2d(self.phi(p, q))
        n = self.A.shape[1]
        with np.errstate(divide="ignore", invalid="ignore"):  # phi = 0 off the inner nodes
            h = np.where(self.inner, rho * (rho - 1) * self.w * np.abs(f) ** (rho - 2), 0.0)
        H = np.einsum("ik,ri,il->rkl", self.A, h, self.A)
        P = np.eye(n) - 1.0 / n
        return P @ H @ P


def _root_bin_tree():
    """Random tree with a bin on the root and on some internal nodes, and leaves without bins."""
    rng = np.random.default_rng(31)
    parents, weights, _ = random_tree(rng, 45, zero_weights=True)
    root = int(np.flatnonzero(parents == -1)[0])
    has_child = np.zeros(len(parents), bool)
    has_child[parents[parents >= 0]] = True
    leaves = np.flatnonzero(~has_child)
    internal = np.flatnonzero(has_child)
    bins = np.concatenate([[root], rng.choice(internal[internal != root], 5, replace=False),
                           rng.choice(leaves, len(leaves) - 4, replace=False)])
    return parents, weights, rng.permutation(bins)


def _exact_bins_tree(n_bins, seed):
    """Random tree (shuffled labels) whose bins are n_bins random nodes, root included or not."""
    rng = np.random.default_rng(seed)
    parents, weights, _ = random_tree(rng, n_bins + 4, zero_weights=True)
    bins = rng.choice(len(parents), n_bins, replace=False)
    return parents, weights, bins


def _chain_arrays(n, spacing=1.0):
    if n == 1:
        return np.array([-1]), np.array([0.0]), np.array([0])
    return chain(n, spacing)


KERNEL_TREES = {
    "chain_zero_spacing": lambda: _chain_arrays(18, np.r_[0, 1, 0, 2, 0, 0, 1, 1, 1, 0, 0, 0, 3, 1, 1, 0, 1]),
    "chain_1": lambda: _chain_arrays(1),
    "chain_16": lambda: _chain_arrays(16, 0.5),
    "chain_33": lambda: _chain_arrays(33),
    "root_bin_binless_leaves": _root_bin_tree,
    "star_17": lambda: star(17),
    "random_16_bins": lambda: _exact_bins_tree(16, 1),
    "random_8_bins": lambda: _exact_bins_tree(8, 2),
    "random_32_bins": lambda: _exact_bins_tree(32, 3),
    "random_33_bins": lambda: _exact_bins_tree(33, 4),
}


def _dense(rng, n, batch, dtype):
    """Strictly positive masses, so no phi below a proper subtree is near a kink."""
    p, q = random_masses(rng, n, batch=batch)
    p = 0.5 * p + 0.5 / n
    q = 0.5 * q + 0.5 / n
    return p.astype(dtype), q.astype(dtype)


def test_vectorised_reference_agrees_with_oracle():
    parents, weights, bins = _root_bin_tree()
    ref = _Ref(parents, weights, bins)
    p, q = _dense(np.random.default_rng(0), len(bins), (), np.float64)
    for rho in RHOS:
        assert_allclose(ref.emd(p, q, rho), oracle.emd(p, q, parents, weights, bins, rho), rtol=1e-13)
        assert_allclose(ref.grad(p, q, rho), oracle.grad(p, q, parents, weights, bins, rho), atol=1e-13)
        H = oracle.hessian(p, q, parents, weights, bins, rho)
        assert_allclose(ref.hessian(p, q, rho)[0], H, atol=1e-12)
    assert_allclose(ref.phi(p, q), oracle.phi(p, q, parents, bins), atol=1e-15)


# --- every kernel path against the reference -------------------------------------------


@pytest.mark.parametrize("name", list(KERNEL_TREES))
def test_every_kernel_path_matches_reference(name):
    # batch sizes straddle the row-kernel cut (n % 32 < 8) and the 32-sample blocks;
    # n_bins straddle the 8 (float64) and 16 (float32) wide tiles; rho 1 and 2 on a
    # canonical chain take the row-scan path, 1.5 and 3 the generic kernels
    parents, weights, bins = KERNEL_TREES[name]()
    tree = Tree.from_parents(parents, weights, bins)
    ref = _Ref(parents, weights, bins)
    n = tree.n_bins
    rng = np.random.default_rng(len(name))
    for batch in BATCHES:
        p64, q64 = _dense(rng, n, (batch,), np.float64)
        p32, q32 = p64.astype(np.float32), q64.astype(np.float32)
        ref_phi = ref.phi(p64, q64)
        for dtype, p, q in ((np.float64, p64, q64), (np.float32, p32, q32)):
            tol = 1e-12 if dtype == np.float64 else 2e-5
            phi = emdtree.phi(p, q, tree)
            assert phi.dtype == dtype
            assert_allclose(phi, ref_phi, rtol=0, atol=tol, err_msg=f"phi batch={batch}")
            for rho in RHOS:
                pr, qr = p.astype(np.float64), q.astype(np.float64)
                ref_value, ref_grad = ref.emd(pr, qr, rho), ref.grad(pr, qr, rho)
                value, grad = emdtree.emd_value_and_grad(p, q, tree, rho=rho)
                assert value.dtype == dtype and grad.dtype == dtype
                what = f"batch={batch} {np.dtype(dtype).name} rho={rho}"
                assert_allclose(value, ref_value, rtol=tol, atol=tol, err_msg=what)
                assert_allclose(emdtree.emd(p, q, tree, rho=rho), ref_value, rtol=tol, atol=tol, err_msg=what)
                scale = max(1.0, np.abs(ref_grad).max())
                assert_allclose(grad, ref_grad, rtol=0, atol=tol * scale, err_msg=what)
                # the projected gradient conserves mass
                drift = np.abs(grad.astype(np.float64).sum(axis=1))
                assert np.all(drift <= 8 * n * np.finfo(dtype).eps * scale)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_float32_within_1e5_of_float64_on_sparse_masses(dtype):
    # sparse p and one-hot q: many phi exactly 0 in the inputs' arithmetic; the value
    # (not the subgradient, which may flip at a kink) must agree across dtypes
    parents, weights, bins = _root_bin_tree()
    tree = Tree.from_parents(parents, weights, bins)
    rng = np.random.default_rng(40)
    p, q = random_masses(rng, tree.n_bins, batch=(41,), sparse=True)
    p, q = p.astype(np.float32), q.astype(np.float32)
    for rho in RHOS:
        v32 = emdtree.emd(p, q, tree, rho=rho)
        v64 = emdtree.emd(p.astype(np.float64), q.astype(np.float64), tree, rho=rho, check_inputs=False)
        assert_allclose(v32, v64, rtol=1e-5, atol=1e-6)


# --- Hessian-vector products and Hessians -------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("rho", [1.5, 2.0, 3.0])
def test_hvp_broadcast_and_non_conserving_directions(dtype, rho):
    # emd_hvp returns P H P v for any v: a direction that adds mass is projected first;
    # v may be one row against a batch, or a batch against one (p, q) pair
    parents, weights, bins = _root_bin_tree()
    tree = Tree.from_parents(parents, weights, bins)
    ref = _Ref(parents, weights, bins)
    n = tree.n_bins
    rng = np.random.default_rng(41)
    tol = 1e-10 if dtype == np.float64 else 1e-4
    for batch in (1, 7, 8, 33, 40):
        p, q = _dense(rng, n, (batch,), dtype)
        H = ref.hessian(p.astype(np.float64), q.astype(np.float64), rho)
        v_one = (rng.standard_normal(n) + 3.0).astype(dtype)  # sums far from zero
        v_many = (rng.standard_normal((batch, n)) + 1.0).astype(dtype)
        scale = max(1.0, np.abs(H).max() * np.abs(v_many).max() * n)
        out = emdtree.emd_hvp(p, q, v_one, tree, rho=rho)
        assert out.shape == (batch, n) and out.dtype == dtype
        assert_allclose(out, H @ v_one.astype(np.float64), atol=tol * scale)
        out = emdtree.emd_hvp(p, q, v_many, tree, rho=rho)
        assert_allclose(out, np.einsum("rkl,rl->rk", H, v_many.astype(np.float64)), atol=tol * scale)
        # one (p, q) pair, many directions
        out = emdtree.emd_hvp(p[0], q[0], v_many, tree, rho=rho)
        assert_allclose(out, v_many.astype(np.float64) @ H[0].T, atol=tol * scale)
        hess = emdtree.emd_hessian(p, q, tree, rho=rho)
        assert hess.shape == (batch, n, n) and hess.dtype == dtype
        assert_allclose(hess, H, atol=tol * max(1.0, np.abs(H).max()))


def test_hessian_of_3d_batch_with_bins_first():
    parents, weights, bins = random_tree(np.random.default_rng(42), 15, bins_on_internal=True)
    tree = Tree.from_parents(parents, weights, bins)
    ref = _Ref(parents, weights, bins)
    n = tree.n_bins
    p, q = _dense(np.random.default_rng(43), n, (2, 3), np.float64)
    for rho in (1.5, 3.0):
        H = emdtree.emd_hessian(np.moveaxis(p, -1, 0), np.moveaxis(q, -1, 0), tree, rho=rho, axis=0)
        assert H.shape == (2, 3, n, n)
        assert_allclose(H.reshape(6, n, n), ref.hessian(p.reshape(6, n), q.reshape(6, n), rho), atol=1e-11)


# --- drivers: parallel chain path, threads ------------------------------------------------


def test_parallel_chain_path_equals_serial(serial_and_parallel):
    # the row-scan chain kernel has its own parallel driver; broadcast rows and a
    # batch that is not a multiple of the block size included
    tree = Tree.chain(37, spacing=np.random.default_rng(44).uniform(0.0, 2.0, 36))
    assert tree._is_canonical_chain
    rng = np.random.default_rng(45)
    cases = []
    for dtype in (np.float32, np.float64):
        p, q = random_masses(rng, 37, batch=(97,), dtype=dtype)
        cases += [(p, q), (p[0], q), (p, q[5])]

    def run():
        return [emdtree.emd_value_and_grad(a, b, tree, rho=rho) for a, b in cases for rho in (1.0, 2.0)]

    serial, parallel = serial_and_parallel(run)
    for (v1, g1), (v2, g2) in zip(serial, parallel):
        assert_array_equal(v1, v2)
        assert_array_equal(g1, g2)


@pytest.mark.parametrize("parallel_kernels", [False, True])
def test_concurrent_calls_from_python_threads_match_serial(monkeypatch, parallel_kernels):
    parents, weights, bins = random_tree(np.random.default_rng(46), 300, bins_on_internal=True)
    tree = Tree.from_parents(parents, weights, bins)
    chain_tree = Tree.chain(50)
    rng = np.random.default_rng(47)
    inputs = [(tree, *random_masses(rng, tree.n_bins, batch=(b,))) for b in (1, 5, 33, 40, 70)]
    inputs += [(chain_tree, *random_masses(rng, 50, batch=(b,))) for b in (3, 40)]
    if parallel_kernels:
        monkeypatch.setattr(_drv, "PARALLEL_MIN_WORK", 0)

    def run():
        return [emdtree.emd_value_and_grad(p, q, t, rho=rho) for t, p, q in inputs for rho in (1.0, 2.0, 2.5)]

    expected = run()
    failures = []

    def work(k):
        try:
            for _ in range(8):
                for (v, g), (v0, g0) in zip(run(), expected):
                    if not (np.array_equal(v, v0) and np.array_equal(g, g0)):
                        failures.append(k)
                        return
        except Exception as exc:  # pragma: no cover - reported below
            failures.append(repr(exc))

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []


# --- inputs the checks let through, or stop ------------------------------------------------


@pytest.mark.parametrize("name", ["chain", "tree"])
def test_check_inputs_false_computes_with_unequal_totals_on_every_path(name):
    if name == "chain":
        parents, weights, bins = chain(20)
    else:
        parents, weights, bins = random_tree(np.random.default_rng(48), 30, bins_on_internal=True)
    tree = Tree.from_parents(parents, weights, bins)
    ref = _Ref(parents, weights, bins)
    n = tree.n_bins
    rng = np.random.default_rng(49)
    for batch in (1, 7, 8, 33, 40):
        for dtype in (np.float64, np.float32):
            p = rng.uniform(0.1, 1.0, (batch, n)).astype(dtype)
            q = rng.uniform(0.1, 3.0, (batch, n)).astype(dtype)  # about twice the mass of p
            tol = 1e-11 if dtype == np.float64 else 1e-5
            for rho in RHOS:
                value, grad = emdtree.emd_value_and_grad(p, q, tree, rho=rho, check_inputs=False)
                pr, qr = p.astype(np.float64), q.astype(np.float64)
                ref_value = ref.emd(pr, qr, rho)
                assert_allclose(value, ref_value, rtol=tol)
                ref_grad = ref.grad(pr, qr, rho)
                assert_allclose(grad, ref_grad, atol=tol * np.abs(ref_grad).max())
            assert_allclose(emdtree.phi(p, q, tree, check_inputs=False), ref.phi(p, q), atol=tol * n)


_CHECKED = {
    "emd": lambda p, q, t: emdtree.emd(p, q, t),
    "value_and_grad_1.5": lambda p, q, t: emdtree.emd_value_and_grad(p, q, t, rho=1.5),
    "phi": lambda p, q, t: emdtree.phi(p, q, t),
    "hvp": lambda p, q, t: emdtree.emd_hvp(p, q, np.zeros(p.shape[-1], p.dtype), t, rho=3),
    "hessian": lambda p, q, t: emdtree.emd_hessian(p, q, t, rho=3),
}


@pytest.mark.parametrize("tree_name", ["chain", "star"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_bad_entries_named_wherever_they_sit(tree_name, dtype):
    # first entry, last entry, the scalar tail after the last full tile (bin 32 of 33),
    # a row of a partial block (row 35 of 40), and a broadcast single row
    n = 33
    tree = Tree.chain(n) if tree_name == "chain" else Tree.from_parents([-1] + [0] * n)
    rng = np.random.default_rng(50)
    tiny = -1e-40 if dtype == np.float32 else -1e-300
    for batch in (1, 8, 33, 40):
        p0, q0 = random_masses(rng, n, batch=(batch,), dtype=dtype)
        spots = {(0, 0), (batch - 1, n - 1), (0, 32), (batch - 1, 16), (min(35, batch - 1), 5)}
        for (r, k) in sorted(spots):
            for value, word in ((np.nan, "not finite"), (-np.inf, "not finite"), (tiny, "negative")):
                for which in ("p", "q"):
                    p, q = p0.copy(), q0.copy()
                    (p if which == "p" else q)[r, k] = value
                    where = f"[{r}, {k}]"  # the index in the argument's own shape
                    for fname, func in _CHECKED.items():
                        with pytest.raises(ValueError) as info:
                            func(p, q, tree)
                        msg = str(info.value)
                        assert f"{which}{where} = " in msg and word in msg, (fname, batch, r, k, msg)
        # a bad entry in a single row broadcast against the batch
        bad = p0[0].copy()
        bad[32] = np.nan
        for func in _CHECKED.values():
            with pytest.raises(ValueError, match=re.escape("p[32] = nan is not finite")):
                func(bad, q0, tree)


def test_negative_zero_entries_are_accepted():
    tree = Tree.from_parents([-1, 0, 0, 1, 1])
    p = np.array([[-0.0, 0.5, 0.5]] * 40)
    q = np.array([[0.5, -0.0, 0.5]] * 40)
    assert_allclose(emdtree.emd(p, q, tree), 3.0 * 0.5)
    assert_allclose(emdtree.emd(p[:3], q[:3]), 0.5)
    assert_allclose(emdtree.phi(p, q, tree)[0], oracle.phi(p[0], q[0], tree.parents, tree.bins))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_total_mass_tolerance_is_the_same_for_every_function(dtype):
    eps = np.finfo(dtype).eps
    for n in (4, 20, 100):
        tol = max(n, 64) * eps
        for tree in (Tree.chain(n), Tree.from_parents([-1] + [0] * n)):
            for batch in (1, 8, 33):
                for rel, ok in ((0.1 * tol, True), (10 * tol, False)):
                    p = np.full((batch, n), 1.0 / n)
                    q = p.copy()
                    q[:, 0] += rel
                    p, q = p.astype(dtype), q.astype(dtype)
                    for func in _CHECKED.values():
                        if ok:
                            func(p, q, tree)
                        else:
                            with pytest.raises(ValueError, match="equal total mass"):
                                func(p, q, tree)


def test_unusual_memory_layouts_and_dtypes():
    parents, weights, bins = random_tree(np.random.default_rng(51), 30, bins_on_internal=True)
    tree = Tree.from_parents(parents, weights, bins)
    ref = _Ref(parents, weights, bins)
    n = tree.n_bins
    p, q = _dense(np.random.default_rng(52), n, (80,), np.float64)
    readonly = p.copy()
    readonly.flags.writeable = False
    layouts = {
        "negative steps": (p[::-2], q[1::2]),
        "big-endian": (p.astype(">f8"), q.astype(">f8")),
        "read-only": (readonly, q),
        "fortran": (np.asfortranarray(p), np.asfortranarray(q)),
    }
    for name, (a, b) in layouts.items():
        value, grad = emdtree.emd_value_and_grad(a, b, tree, rho=2.5)
        assert_allclose(value, ref.emd(a, b, 2.5), rtol=1e-12, err_msg=name)
        assert_allclose(grad, ref.grad(a, b, 2.5), atol=1e-12, err_msg=name)
    value = emdtree.emd(p.astype(">f4"), q.astype(">f4"), tree)
    assert value.dtype == np.float32
    # bins on axis 1 of a Fortran-ordered 3-D array
    p3, q3 = _dense(np.random.default_rng(53), n, (4, 5), np.float64)
    a, b = np.asfortranarray(np.moveaxis(p3, -1, 1)), np.asfortranarray(np.moveaxis(q3, -1, 1))
    assert_allclose(emdtree.emd(a, b, tree, rho=3, axis=1), ref.emd(p3, q3, 3), rtol=1e-12)
    assert_allclose(np.moveaxis(emdtree.phi(a, b, tree, axis=1), 1, -1), ref.phi(p3, q3), atol=1e-14)


@pytest.mark.parametrize("rho", RHOS)
def test_normalize_l1_with_a_broadcast_row_and_its_gradient(rho):
    parents, weights, bins = random_tree(np.random.default_rng(54), 20, bins_on_internal=True)
    tree = Tree.from_parents(parents, weights, bins)
    ref = _Ref(parents, weights, bins)
    n = tree.n_bins
    rng = np.random.default_rng(55)
    pc = rng.uniform(1.0, 10.0, (40, n))
    qc = rng.uniform(1.0, 3.0, n)
    for a, b in ((pc, qc), (qc, pc)):
        value, grad = emdtree.emd_value_and_grad(a, b, tree, rho=rho, normalize="l1")
        A, B = np.broadcast_arrays(a, b)
        an, bn = A / A.sum(1, keepdims=True), B / B.sum(1, keepdims=True)
        assert_allclose(value, ref.emd(an, bn, rho), rtol=1e-12)
        g = ref.grad(an, bn, rho)
        expected = (g - np.sum(g * an, axis=1, keepdims=True)) / A.sum(1, keepdims=True)
        assert_allclose(grad, expected, atol=1e-12 * np.abs(expected).max())


# --- sizes -------------------------------------------------------------------------------


def test_large_tree_small_batches_are_fast_and_right():
    # a path of 1e5 nodes with a bin on every node, numbered from the root (not the
    # canonical chain: the generic kernels) and from the deep end (the canonical chain)
    n = 100_000
    rng = np.random.default_rng(56)
    p, q = random_masses(rng, n, batch=(3,))
    from_root = Tree.from_parents(np.arange(-1, n - 1), bins=np.arange(n))  # bin k on node k, depth k
    from_leaf = Tree.from_parents(np.arange(-1, n - 1), bins=np.arange(n)[::-1].copy())
    assert from_leaf._is_canonical_chain and not from_root._is_canonical_chain
    suffix = np.cumsum((p - q)[:, ::-1], axis=1)[:, ::-1]  # phi at node k of from_root
    for tree in (from_root, from_leaf):
        for rho in (1.0, 2.0, 2.5):
            emdtree.emd_value_and_grad(p[:1], q[:1], tree, rho=rho)  # compile outside the clock
    start = time.perf_counter()
    for tree in (from_root, from_leaf):
        for batch in (1, 3):
            for rho in (1.0, 2.0, 2.5):
                value, grad = emdtree.emd_value_and_grad(p[:batch], q[:batch], tree, rho=rho)
                assert_allclose(value, (np.abs(suffix[:batch, 1:]) ** rho).sum(axis=1), rtol=1e-9)
    assert_allclose(emdtree.phi(p, q, from_root), suffix, atol=1e-12)
    assert_allclose(emdtree.phi(p, q, from_leaf), np.cumsum(p - q, axis=1)[:, ::-1], atol=1e-12)
    emdtree.emd_hvp(p[:1], q[:1], (q - p)[:1], from_root, rho=3)
    assert time.perf_counter() - start < 5.0


def test_two_node_tree_by_hand():
    tree = Tree.from_parents([-1, 0], weights=[0.0, 2.0], bins=[0, 1])
    p, q = np.array([0.3, 0.7]), np.array([0.6, 0.4])  # phi at node 1 = 0.3
    for rho in RHOS:
        value, grad = emdtree.emd_value_and_grad(p, q, tree, rho=rho)
        slope = rho * 2.0 * 0.3 ** (rho - 1)
        assert_allclose(value, 2.0 * 0.3**rho, rtol=1e-14)
        assert_allclose(grad, [-slope / 2, slope / 2], rtol=1e-14)
        h = 0.0 if rho == 1.0 else rho * (rho - 1) * 2.0 * 0.3 ** (rho - 2)
        expected = h / 4 * np.array([[1, -1], [-1, 1]])
        assert_allclose(emdtree.emd_hessian(p, q, tree, rho=rho), expected, atol=1e-14)
        assert_allclose(emdtree.emd_hvp(p, q, [1.0, 0.0], tree, rho=rho), [h / 4, -h / 4], atol=1e-14)
    assert_allclose(emdtree.phi(p, q, tree), [0.0, 0.3], atol=1e-15)


# --- Tree I/O with odd names ------------------------------------------------------------

ODD_NAMES = ["a b", "x,y", "(p)", "q:r", "s;t", "'quote'", '"dq"', "[br]", "ü∂", "", "tab\tx", "nl\nx",
             "\x00b", " lead", "trail ", "1e5", "null", "None"]


def test_odd_names_survive_every_round_trip(tmp_path):
    tree = Tree.from_parents([-1] + [0] * len(ODD_NAMES), names=ODD_NAMES,
                             node_names=[None] + ODD_NAMES[::-1])
    for suffix in (".json", ".npz"):
        tree.save(tmp_path / f"t{suffix}")
        loaded = Tree.load(tmp_path / f"t{suffix}")
        assert loaded == tree and loaded.names == tree.names and loaded.node_names == tree.node_names
    assert Tree.from_dict(json.loads(json.dumps(tree.to_dict()))) == tree
    assert pickle.loads(pickle.dumps(tree)) == tree
    assert Tree.from_newick(tree.to_newick()).names == tree.names


# =====================================================================================
# bugs: these fail on the code as reviewed
# =====================================================================================


@pytest.mark.parametrize("func", ["emd", "emd_grad", "emd_value_and_grad"])
@pytest.mark.parametrize("tree", [None, "star"])
def test_empty_batch_gives_empty_results(func, tree):
    # like phi, emd_hvp and emd_hessian, the value/gradient path (whose mass check reads
    # the kernel's statistics) returns empty results for an empty batch
    t = Tree.from_parents([-1, 0, 0, 0]) if tree == "star" else None
    p = np.zeros((0, 3))
    out = getattr(emdtree, func)(p, p, t)
    value = out[0] if func == "emd_value_and_grad" else out
    assert value.shape == ((0,) if func != "emd_grad" else (0, 3))
    assert emdtree.emd(p, np.full(3, 1 / 3), t).shape == (0,)  # broadcast against one row


def test_float32_unequal_totals_refused_when_block_sums_overflow():
    # the 32-sample kernel sums each row in float32 lanes (3e38 + 3e38 -> inf): the check
    # must then recount in float64 and refuse these unequal masses, as the row kernel does
    tree = Tree.from_parents([-1, 0, 0, 0, 0])
    p = np.tile(np.array([3e38, 3e38, 0, 0], np.float32), (8, 1))
    q = np.tile(np.array([3e38, 0, 0, 0], np.float32), (8, 1))
    with pytest.raises(ValueError, match="equal total mass|overflow"):
        emdtree.emd(p[:1], q[:1], tree)  # row kernel: rejected
    with pytest.raises(ValueError, match="equal total mass|overflow"):
        emdtree.emd(p, q, tree)  # blocked kernel


def test_float32_total_beyond_range_is_refused():
    # float32 masses whose total exceeds the float32 range are refused whatever the
    # number of bins (the chain row scan would otherwise return NaN from inf - inf)
    p = np.zeros(16, np.float32)
    p[:2] = 3e38
    q = p[::-1].copy()
    p32, q32 = np.concatenate([p, p]), np.concatenate([q, q])
    with pytest.raises(ValueError, match="overflow"):
        emdtree.emd(p32, q32)
    try:
        value = emdtree.emd(p, q)
    except ValueError:
        return
    assert not np.isnan(value), "check_inputs=True accepted the masses and returned NaN"


def test_float64_direction_keeps_the_float32_mass_tolerance():
    # a float64 direction makes the working dtype float64, but the total-mass tolerance
    # follows the least precise mass argument (float32 here), not the working dtype
    rng = np.random.default_rng(57)
    p, q = random_masses(rng, 20, dtype=np.float32)
    emdtree.emd(p, q)  # accepted
    v = rng.standard_normal(20)
    emdtree.emd_hvp(p, q, v.astype(np.float32))  # accepted
    emdtree.emd_hvp(p, q, v)  # accepted too


def test_float32_predictions_against_float64_one_hot_targets_accepted():
    # the common "float32 softmax vs np.eye labels" call: p sums to 1 within float32
    # rounding, and that is the tolerance, although the computation runs in float64
    rng = np.random.default_rng(58)
    logits = rng.normal(size=(4, 10))
    p = (np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)).astype(np.float32)
    q = np.eye(10)[[1, 2, 3, 4]]
    emdtree.emd(p, q.astype(np.float32))  # accepted
    emdtree.emd(p, q)  # accepted too


def test_error_position_is_in_the_argument_own_shape():
    # p is 2-D and broadcast against a 3-D q: the message must name p[1, 2], an index
    # p has, not the broadcast position p[0, 1, 2]
    p = np.full((3, 4), 0.25)
    q = np.full((2, 3, 4), 0.25)
    p[1, 2] = np.nan
    for func in (emdtree.emd, emdtree.phi):
        with pytest.raises(ValueError) as info:
            func(p, q)
        idx = re.search(r"p\[([0-9, ]+)\]", str(info.value)).group(1)
        index = tuple(int(i) for i in idx.split(","))
        assert len(index) == p.ndim and np.isnan(p[index]), str(info.value)


def test_empty_bin_axis_with_the_default_tree():
    # the error names the empty bin axis, not Tree.chain(0), which the caller never called
    with pytest.raises(ValueError, match="bin axis is empty"):
        emdtree.emd(np.zeros((2, 0)), np.zeros((2, 0)))


def test_npz_round_trip_keeps_trailing_nul_in_names(tmp_path):
    # NumPy unicode arrays strip trailing NULs: the .npz file must keep names another way
    tree = Tree.from_parents([-1, 0, 0], names=["a\x00", "b"])
    tree.save(tmp_path / "t.json")
    assert Tree.load(tmp_path / "t.json") == tree
    tree.save(tmp_path / "t.npz")
    assert Tree.load(tmp_path / "t.npz") == tree


def test_equal_trees_with_negative_zero_weight_hash_alike():
    # -0.0 is a valid edge cost equal to 0.0: equal trees must hash alike
    a = Tree.from_parents([-1, 0, 0], weights=[0.0, 0.0, 1.0])
    b = Tree.from_parents([-1, 0, 0], weights=[0.0, -0.0, 1.0])
    assert a == b
    assert hash(a) == hash(b)
    assert len({a, b}) == 1


def test_float32_masses_on_a_tree_with_weights_beyond_float32_range():
    # weights up to 1.8e308 are valid; float32 kernels cannot hold 1e39, so float32
    # masses on such a tree must be refused clearly (or computed right), never NaN
    tree = Tree.from_parents([-1, 0, 0, 0], weights=[0.0, 1e39, 1e39, 1.0])
    p = np.array([0.5, 0.5, 0.0], np.float32)
    assert emdtree.emd(p.astype(np.float64), p.astype(np.float64), tree) == 0.0
    with np.errstate(over="ignore"):
        try:
            value = emdtree.emd(p, p, tree)
        except (ValueError, OverflowError):
            return  # a clear refusal would also do
    assert value == 0.0


def test_rho_given_as_a_string_is_refused():
    # rho must be a number: a string such as "2" is refused rather than parsed
    with pytest.raises((TypeError, ValueError), match="rho must be a"):
        emdtree.emd([0.5, 0.5], [0.0, 1.0], rho="2")


def test_booleans_and_non_integers_are_refused_where_numbers_are_meant():
    with pytest.raises(TypeError, match="rho must be"):
        emdtree.emd([0.5, 0.5], [0.0, 1.0], rho=True)
    with pytest.raises(TypeError, match="axis must be an integer"):
        emdtree.emd([0.5, 0.5], [0.0, 1.0], axis=True)
    with pytest.raises(TypeError, match="n_bins must be an integer"):
        Tree.chain(2.5)
    assert Tree.chain(np.int64(3)).n_bins == 3


def test_tree_input_errors_name_the_problem():
    with pytest.raises(ValueError, match=r"names\[1\] is None"):
        Tree.from_parents([-1, 0, 0], names=["a", None])
    with pytest.raises(ValueError, match="lacks the field"):
        Tree.from_dict({"format": "emdtree.Tree", "version": 1, "parents": [-1, 0]})
    with pytest.raises(ValueError, match="is not a node index"):
        Tree.from_parents(np.array([2**64 - 1, 0, 0], dtype=np.uint64))
