"""The CPU kernels' own edges: block and tile boundaries, broadcast rows, the
parallel driver, tiny trees, and the input statistics gathered in the load."""

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal

import emdtree
import oracle
from emdtree import Tree
from emdtree.engine import driver as _driver
from emdtree.kernels import cpu
from trees import random_masses, random_tree

BLOCK = cpu.BLOCK


def _tree(seed, n_nodes, internal=True):
    parents, weights, bins = random_tree(np.random.default_rng(seed), n_nodes, bins_on_internal=internal)
    return parents, weights, bins, Tree.from_parents(parents, weights, bins)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n_bins", [1, 2, 7, 8, 9, 15, 16, 17, 33])
@pytest.mark.parametrize("batch", [1, 31, 32, 33, 64, 97])
def test_batch_equals_loop_across_block_and_tile_edges(dtype, n_bins, batch):
    # full blocks of 32 rows go through the vector tile transposes, partial blocks and
    # the last n_bins % 16 (float32) or % 8 (float64) bins through the scalar path:
    # every row must come out as if computed alone
    rng = np.random.default_rng(n_bins * 1000 + batch)
    tree = Tree.chain(n_bins, spacing=rng.uniform(0.5, 2.0, max(n_bins - 1, 0)))
    p, q = random_masses(rng, n_bins, batch=(batch,), dtype=dtype)
    for rho in (1.0, 2.0, 2.5):
        value, grad = emdtree.emd_value_and_grad(p, q, tree, rho=rho)
        for r in range(0, batch, max(1, batch // 5)):
            v1, g1 = emdtree.emd_value_and_grad(p[r], q[r], tree, rho=rho)
            tol = 1e-6 if dtype == np.float32 else 1e-13
            assert_allclose(value[r], v1, rtol=tol, atol=tol)
            assert_allclose(grad[r], g1, rtol=tol, atol=tol * max(1.0, np.abs(g1).max()))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gradient_rows_match_oracle_on_tree_with_internal_bins(dtype):
    parents, weights, bins, tree = _tree(3, 300)
    rng = np.random.default_rng(0)
    p, q = random_masses(rng, tree.n_bins, batch=(70,), dtype=dtype)
    for rho in (1.0, 2.0, 1.5):
        value, grad = emdtree.emd_value_and_grad(p, q, tree, rho=rho)
        for r in (0, 31, 32, 69):
            p64, q64 = p[r].astype(np.float64), q[r].astype(np.float64)
            g_ref = oracle.grad(p64, q64, parents, weights, bins, rho)
            v_ref = oracle.emd(p64, q64, parents, weights, bins, rho)
            tol = 2e-5 if dtype == np.float32 else 1e-12
            assert_allclose(value[r], v_ref, rtol=tol)
            assert_allclose(grad[r], g_ref, atol=tol * np.abs(g_ref).max())


@pytest.mark.parametrize("func", ["value_and_grad", "phi", "hvp"])
def test_parallel_driver_equals_serial(serial_and_parallel, func):
    parents, weights, bins, tree = _tree(5, 200)
    rng = np.random.default_rng(1)
    p, q = random_masses(rng, tree.n_bins, batch=(3 * BLOCK + 5,))
    v = rng.standard_normal(p.shape)

    def run():
        if func == "value_and_grad":
            return emdtree.emd_value_and_grad(p, q, tree, rho=2)
        if func == "phi":
            return (emdtree.phi(p, q, tree),)
        return (emdtree.emd_hvp(p, q, v, tree, rho=3),)

    serial, parallel = serial_and_parallel(run)
    for a, b in zip(serial, parallel):
        assert_array_equal(a, b)  # same blocks, same order of operations


def test_dense_hessian_parallel_equals_serial(serial_and_parallel):
    _, _, _, tree = _tree(6, 40)
    p, q = random_masses(np.random.default_rng(2), tree.n_bins, batch=(5,))
    serial, parallel = serial_and_parallel(lambda: emdtree.emd_hessian(p, q, tree, rho=3))
    assert_array_equal(parallel, serial)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_broadcast_rows_are_not_copied_but_agree(dtype):
    # a single target row is read with stride 0 by every sample
    _, _, _, tree = _tree(7, 120)
    rng = np.random.default_rng(3)
    p, q = random_masses(rng, tree.n_bins, batch=(40,), dtype=dtype)
    target = q[0]
    v1, g1 = emdtree.emd_value_and_grad(p, target, tree, rho=2)
    v2, g2 = emdtree.emd_value_and_grad(p, np.broadcast_to(target, p.shape).copy(), tree, rho=2)
    assert_array_equal(v1, v2)
    assert_array_equal(g1, g2)
    v3 = emdtree.emd(target, p, tree, rho=2)  # broadcast p instead of q
    assert_array_equal(v3, v1)


def test_single_node_tree():
    tree = Tree.from_parents([-1])
    assert tree.n_bins == 1 and tree.n_nodes == 1
    value, grad = emdtree.emd_value_and_grad(np.ones((3, 1)), np.ones((3, 1)), tree, rho=2)
    assert_array_equal(value, 0.0)
    assert_array_equal(grad, 0.0)
    assert_array_equal(emdtree.emd_hessian([1.0], [1.0], tree), [[0.0]])


def test_non_finite_entry_after_finite_ones_is_found_in_a_full_block():
    # the load gathers row totals and minima; the error still names the entry
    tree = Tree.chain(40)
    rng = np.random.default_rng(4)
    p, q = random_masses(rng, 40, batch=(64,))
    p[45, 37] = np.nan
    with pytest.raises(ValueError, match=r"p\[45, 37\] = nan is not finite"):
        emdtree.emd_value_and_grad(p, q, tree)
    p[45, 37] = -1e-3
    with pytest.raises(ValueError, match=r"p\[45, 37\] = -0\.001 is negative"):
        emdtree.emd(p, q, tree)
    p[45, 37] = np.inf
    with pytest.raises(ValueError, match=r"p\[45, 37\] = inf is not finite"):
        emdtree.emd(p, q, tree)


def test_kernel_specialisations_stay_few():
    # read-only views and cached layout arrays keep one compiled variant per dtype
    tree = Tree.chain(20)
    rng = np.random.default_rng(5)
    for dtype in (np.float32, np.float64):
        p, q = random_masses(rng, 20, batch=(40,), dtype=dtype)
        emdtree.emd_value_and_grad(p, q, tree, rho=2)
        p.flags.writeable = False
        emdtree.emd_value_and_grad(p, q, tree, rho=2)
        emdtree.emd(p[0], q, tree)
    assert len(cpu.value_grad_serial.signatures) <= 2


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n_bins", [1, 2, 15, 16, 17, 100])
def test_chain_fast_path_equals_tree_kernel(dtype, n_bins):
    # Tree.chain takes the row-scan path; the same chain with one more leaf that
    # carries no bin (so no mass ever crosses its edge) takes the blocked sweeps
    rng = np.random.default_rng(n_bins)
    spacing = rng.uniform(0.5, 2.0, n_bins - 1)
    fast = Tree.chain(n_bins, spacing=spacing)
    parents = np.append(fast.parents, n_bins - 1)
    weights = np.append(fast.weights, 5.0)
    generic = Tree.from_parents(parents, weights, bins=np.arange(n_bins))
    assert fast._is_canonical_chain and not generic._is_canonical_chain
    p, q = random_masses(rng, n_bins, batch=(45,), dtype=dtype)
    tol = 2e-6 if dtype == np.float32 else 1e-13
    for rho in (1.0, 2.0):
        v1, g1 = emdtree.emd_value_and_grad(p, q, fast, rho=rho)
        v2, g2 = emdtree.emd_value_and_grad(p, q, generic, rho=rho)
        assert_allclose(v1, v2, rtol=tol, atol=tol)
        assert_allclose(g1, g2, atol=tol * max(1.0, np.abs(g2).max()))
        assert_allclose(emdtree.emd(p, q, fast, rho=rho), v1, rtol=tol, atol=tol)


@pytest.mark.parametrize("rho", [2.0, 3.0])
def test_unprojected_hvp_is_the_transposed_jacobian_of_the_gradient(rho):
    # reverse mode needs J^T v with J = d(emd_grad)/dp along *any* direction u (the
    # totals may change): <v, J u> = <H P v, u>, checked by central differences
    from emdtree.engine.inputs import prepare

    parents, weights, bins, tree = _tree(8, 60)
    rng = np.random.default_rng(9)
    p, q = random_masses(rng, tree.n_bins, batch=(3,))
    v = rng.standard_normal(p.shape)
    u = rng.standard_normal(p.shape)  # not mass-conserving
    h = 1e-6
    jac_u = (emdtree.emd_grad(p + h * u, q, tree, rho=rho, check_inputs=False)
             - emdtree.emd_grad(p - h * u, q, tree, rho=rho, check_inputs=False)) / (2 * h)
    rows = prepare({"p": p, "q": q, "v": v}, tree, -1, True)
    jt_v = _driver.hvp(rows, rho, project_out=False)
    assert_allclose(np.sum(v * jac_u, axis=1), np.sum(jt_v * u, axis=1), rtol=1e-6)
    # and projecting its output gives the symmetric P H P v of emd_hvp
    projected = jt_v - jt_v.mean(axis=1, keepdims=True)
    assert_allclose(projected, emdtree.emd_hvp(p, q, v, tree, rho=rho), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("tree_name", ["imagenet", "chain"])
@pytest.mark.parametrize("rho", [1.0, 2.0, 1.5])
def test_float32_gradient_conserves_mass_to_rounding(tree_name, rho):
    # the mean is taken, in float64, from the very entries that are stored, so a row
    # sums to zero within about eps * sum |g| (measured: 0.3e-7 to 1e-7 of sum |g| on
    # these trees); summing c_i * (bins below i) instead was 3x to 5x worse in float32
    tree = emdtree.datasets.imagenet_wordnet() if tree_name == "imagenet" else Tree.chain(1003)
    rng = np.random.default_rng(11)
    logits = rng.normal(size=(96, tree.n_bins))
    p = (np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)).astype(np.float32)
    q = np.eye(tree.n_bins, dtype=np.float32)[rng.integers(0, tree.n_bins, 96)]
    grad = emdtree.emd_grad(p, q, tree, rho=rho).astype(np.float64)
    drift = np.abs(grad.sum(axis=1))
    scale = np.abs(grad).sum(axis=1)
    assert np.all(drift <= 4 * np.finfo(np.float32).eps * scale)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("rho", [1.0, 2.0, 2.5])
def test_row_kernel_equals_blocked_kernel(dtype, rho):
    # a few samples go one at a time; the same samples in a full block must agree
    from emdtree.kernels import rows as rows_kernel

    parents, weights, bins, tree = _tree(12, 150)
    rng = np.random.default_rng(13)
    p, q = random_masses(rng, tree.n_bins, batch=(BLOCK,), dtype=dtype)
    arrays = _driver.sweep_arrays(tree, np.dtype(dtype))
    consts = _driver.consts_of(rho, np.dtype(dtype))
    out = []
    kernels = ((cpu.value_grad_serial, np.empty(1, dtype)), (rows_kernel.value_grad_rows, np.empty(BLOCK)))
    for kernel, low in kernels:
        value, grad = np.empty(BLOCK, dtype), np.empty(BLOCK * tree.n_bins, dtype)
        totals = np.empty((BLOCK, 2))
        kernel(p.ravel(), q.ravel(), 1, 1, np.zeros(0, np.int64), BLOCK, *arrays, _driver.mode_of(rho),
               consts, True, value, grad, totals, low)
        out.append((value, grad, totals))
    tol = 3e-6 if dtype == np.float32 else 1e-13
    for a, b in zip(*out):
        assert_allclose(a, b, rtol=tol, atol=tol * max(1.0, np.abs(b).max()))


@pytest.mark.parametrize("rho", [2.0, 3.0, 1.5])
@pytest.mark.parametrize("project_out", [True, False])
def test_row_hvp_kernel_equals_blocked_kernel(rho, project_out):
    from emdtree.kernels import rows as rows_kernel

    parents, weights, bins, tree = _tree(14, 120)
    rng = np.random.default_rng(15)
    p, q = random_masses(rng, tree.n_bins, batch=(BLOCK,))
    v = rng.standard_normal(p.shape)
    parent, weight, bin_pos, non_bin, below = _driver.kernel_arrays(tree, np.dtype(np.float64))
    consts = _driver.consts_of(rho, np.dtype(np.float64))
    outs = []
    for kernel in (cpu.hvp_serial, rows_kernel.hvp_rows):
        out = np.empty(BLOCK * tree.n_bins)
        kernel(p.ravel(), q.ravel(), v.ravel(), 1, 1, 1, BLOCK, parent, weight, bin_pos, non_bin, below,
               _driver.mode_of(rho), consts, project_out, out)
        outs.append(out)
    assert_allclose(outs[1], outs[0], rtol=1e-12, atol=1e-12 * np.abs(outs[0]).max())
