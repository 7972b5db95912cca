"""CUDA kernels against the CPU kernels, on a GPU or in Numba's CUDA simulator.

Run by ``tests/test_cuda.py`` in a subprocess with ``NUMBA_ENABLE_CUDASIM=1``
(the variable must be set before Numba is imported); skipped unless the
simulator is on or a GPU is present. Blocks of a few threads make tiny trees
cross thread-chunk boundaries, and a small scratch budget makes the blocks of
the global-memory path stride over several rows.
"""

import sys

import numpy as np
import pytest
from numba import cuda
from numpy.testing import assert_allclose, assert_array_equal

import emdtree
from emdtree import Tree
from emdtree.engine.inputs import prepare
from trees import TREE_CASES, chain, random_masses, random_tree, star

SIMULATOR = bool(cuda.config.ENABLE_CUDASIM)
if SIMULATOR:
    # the simulator runs a block's threads as Python threads that meet at every
    # syncthreads; a short switch interval makes the hand-overs 30x faster
    sys.setswitchinterval(5e-5)

pytestmark = pytest.mark.skipif(
    not (SIMULATOR or cuda.is_available()), reason="needs a CUDA GPU or NUMBA_ENABLE_CUDASIM=1"
)

from emdtree.engine import (  # noqa: E402  (after the skip: imports numba.cuda kernels)
    cuda as _cuda,
    driver as _driver,
)

DTYPES = [np.float32, np.float64]
RHOS = [1.0, 2.0, 1.5, 3.0]
TOL = {np.float32: 1e-6, np.float64: 1e-12}


@pytest.fixture(autouse=True)
def few_threads(monkeypatch):
    """4 threads per block; a test may set another count through the returned setter."""
    monkeypatch.setattr(_cuda, "THREADS_PER_BLOCK", 4)
    return lambda n: monkeypatch.setattr(_cuda, "THREADS_PER_BLOCK", n)


@pytest.fixture
def global_scratch(monkeypatch):
    """Force the global-memory path with scratch for only 2 blocks (which then stride over the rows)."""
    monkeypatch.setattr(_cuda, "SHARED_BYTES_MAX", 0)
    monkeypatch.setattr(_cuda, "GLOBAL_BLOCKS_MAX", 2)


class Device:
    """Host arrays in, host arrays out, through one stream."""

    def __init__(self):
        self.stream = cuda.stream()

    def put(self, *arrays):
        return [cuda.to_device(np.ascontiguousarray(a), stream=self.stream) for a in arrays]

    def get(self, x):
        return None if x is None else x.copy_to_host(stream=self.stream)

    def value_grad(self, p, q, tree, rho, want_grad=True):
        value, grad = _cuda.value_grad(*self.put(p, q), tree, rho, want_grad, self.stream)
        return self.get(value), self.get(grad)

    def phi(self, p, q, tree):
        return self.get(_cuda.phi(*self.put(p, q), tree, self.stream))

    def hvp(self, p, q, v, tree, rho, project_out=True):
        return self.get(_cuda.hvp(*self.put(p, q, v), tree, rho, project_out, self.stream))


@pytest.fixture
def dev():
    return Device()


def _tree(build):
    return Tree.from_parents(*build())


def _masses(tree, dtype, rows, seed, broadcast_q=False):
    rng = np.random.default_rng(seed)
    p, q = random_masses(rng, tree.n_bins, batch=(rows,), dtype=dtype, sparse=seed % 2 == 1)
    return p, (q[:1] if broadcast_q else q)


def _close(actual, expected, dtype, what, scale=0.0):
    """Relative agreement, scaled by the largest entry (entries near 0 are differences
    of large terms) or by ``scale``, the size of the terms summed, if larger."""
    tol = TOL[dtype]
    expected = np.asarray(expected, dtype=np.float64)
    scale = max(np.abs(expected).max(initial=0.0), scale, 1e-300)
    assert actual.dtype == dtype, what
    assert_allclose(actual, expected, rtol=tol, atol=tol * scale, err_msg=what)


def _cpu_hvp(p, q, v, tree, rho, project_out):
    rows = prepare({"p": p, "q": q, "v": v}, tree, -1, check=False)
    return _driver.hvp(rows, rho, project_out=project_out)


# References: the CPU kernels in float64 on the same values (float32 inputs upcast),
# so that a float32 result is held to 1e-6 of the exact answer, not of the CPU's
# own float32 rounding (which reaches 1e-5 on sums with cancellation).

def _f64(*arrays):
    return [np.asarray(a, dtype=np.float64) for a in arrays]


def ref_value_grad(p, q, tree, rho):
    return emdtree.emd_value_and_grad(*_f64(p, q), tree, rho=rho, check_inputs=False)


def ref_phi(p, q, tree):
    return emdtree.phi(*_f64(p, q), tree, check_inputs=False)


def ref_hvp(p, q, v, tree, rho, project_out=True):
    if project_out:
        return emdtree.emd_hvp(*_f64(p, q, v), tree, rho=rho, check_inputs=False)
    return _cpu_hvp(*_f64(p, q, v), tree, rho, False)


def hvp_term_scale(p, q, v, tree, rho):
    """The largest sum, over a bin's ancestors i, of |h_i psi_i|: the size of the terms
    that an HVP entry adds up. With rho < 2 and a small phi_i they dwarf the result, and
    float32 rounding of h_i (through w_i and phi_i) is relative to them."""
    lay = tree.layout
    p, q, v = np.broadcast_arrays(*_f64(p, q, v))
    phi = ref_phi(p, q, tree)[:, lay.order]
    u = v - v.mean(axis=1, keepdims=True)
    psi = ref_phi(u, np.zeros_like(u), tree)[:, lay.order]
    nb = lay.bins_below
    w = np.where((nb > 0) & (nb < tree.n_bins), lay.weight, 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.nan_to_num(np.abs(rho * (rho - 1) * w * np.abs(phi) ** (rho - 2) * psi))
    for j in range(tree.n_nodes - 2, -1, -1):  # descending: sums over ancestors-or-self
        t[:, j] += t[:, lay.parent[j]]
    return float(t[:, lay.bin_position].max())


# --------------------------------------------------------------------------- #
# Agreement with the CPU kernels
# --------------------------------------------------------------------------- #

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name,build", TREE_CASES, ids=[c[0] for c in TREE_CASES])
def test_value_grad_match_cpu(dev, name, build, dtype):
    tree = _tree(build)
    for seed, rho in enumerate(RHOS):
        p, q = _masses(tree, dtype, 3, seed, broadcast_q=seed == 2)
        value, grad = dev.value_grad(p, q, tree, rho)
        ref_value, ref_grad = ref_value_grad(p, q, tree, rho)
        _close(value, ref_value, dtype, f"value, rho={rho}")
        _close(grad, ref_grad, dtype, f"grad, rho={rho}")
        assert_allclose(grad.astype(np.float64).sum(axis=1), 0.0, atol=10 * TOL[dtype] * np.abs(grad).max())
        alone, none = dev.value_grad(p, q, tree, rho, want_grad=False)
        assert none is None
        _close(alone, ref_value, dtype, f"value without gradient, rho={rho}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name,build", TREE_CASES, ids=[c[0] for c in TREE_CASES])
def test_phi_matches_cpu(dev, name, build, dtype):
    tree = _tree(build)
    p, q = _masses(tree, dtype, 4, 7)
    out = dev.phi(p, q, tree)
    assert out.shape == (4, tree.n_nodes)
    _close(out, ref_phi(p, q, tree), dtype, "phi")


HVP_TREES = [c for c in TREE_CASES if c[0] in ("star", "chain_uneven", "binary", "random_internal_bins",
                                                "random_zero_weights", "random_internal_zero")]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name,build", HVP_TREES, ids=[c[0] for c in HVP_TREES])
def test_hvp_matches_cpu(dev, name, build, dtype):
    tree = _tree(build)
    rng = np.random.default_rng(3)
    p, q = _masses(tree, dtype, 3, 4)
    v = rng.standard_normal((3, tree.n_bins)).astype(dtype)
    for rho in (2.0, 1.5, 3.0):
        scale = hvp_term_scale(p, q, v, tree, rho)
        _close(dev.hvp(p, q, v, tree, rho), ref_hvp(p, q, v, tree, rho), dtype, f"P H P v, rho={rho}", scale)
        _close(dev.hvp(p, q, v[:1], tree, rho, project_out=False), ref_hvp(p, q, v[:1], tree, rho, False),
               dtype, f"H P v, rho={rho}", scale)
    zeros = dev.hvp(p, q, v, tree, 1.0)
    assert zeros.dtype == dtype
    assert_array_equal(zeros, 0.0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_imagenet_tree(dev, dtype):
    # the float32 accuracy claim on the tree it is made for (1,371 nodes, depth 13)
    tree = emdtree.datasets.imagenet_wordnet()
    p, q = _masses(tree, dtype, 3, 10)  # dense masses: no phi = 0 (infinite curvature at rho = 1.5)
    v = np.random.default_rng(0).standard_normal((1, tree.n_bins)).astype(dtype)
    for rho in (1.0, 2.0, 1.5):
        value, grad = dev.value_grad(p, q, tree, rho)
        ref_value, ref_grad = ref_value_grad(p, q, tree, rho)
        _close(value, ref_value, dtype, f"value, rho={rho}")
        _close(grad, ref_grad, dtype, f"grad, rho={rho}")
    _close(dev.phi(p, q, tree), ref_phi(p, q, tree), dtype, "phi")
    _close(dev.hvp(p, q, v, tree, 1.5), ref_hvp(p, q, v, tree, 1.5), dtype, "hvp")


# --------------------------------------------------------------------------- #
# Launch shapes: thread counts, the global-memory path, broadcast rows
# --------------------------------------------------------------------------- #

@pytest.mark.parametrize("threads", [1, 3, 8])
def test_thread_counts_agree(dev, few_threads, threads):
    # chunk boundaries, odd counts and a single thread change only the order of float64 additions
    tree = _tree(lambda: random_tree(np.random.default_rng(5), 45, bins_on_internal=True))
    p, q = _masses(tree, np.float64, 3, 2)
    v = np.random.default_rng(1).standard_normal((3, tree.n_bins))
    few_threads(threads)
    for rho in (1.0, 2.5):
        value, grad = dev.value_grad(p, q, tree, rho)
        ref_value, ref_grad = ref_value_grad(p, q, tree, rho)
        _close(value, ref_value, np.float64, "value")
        _close(grad, ref_grad, np.float64, "grad")
    _close(dev.phi(p, q, tree), ref_phi(p, q, tree), np.float64, "phi")
    _close(dev.hvp(p, q, v, tree, 2.5), ref_hvp(p, q, v, tree, 2.5), np.float64, "hvp")


@pytest.mark.parametrize("dtype", DTYPES)
def test_global_scratch_path_equals_shared_path(dev, monkeypatch, dtype):
    # same device code on other memory: equal to the last bit; 9 rows over 2 blocks
    tree = _tree(lambda: random_tree(np.random.default_rng(8), 30, bins_on_internal=True, zero_weights=True))
    p, q = _masses(tree, dtype, 9, 0)
    v = np.random.default_rng(2).standard_normal((9, tree.n_bins)).astype(dtype)
    shared = [dev.value_grad(p, q, tree, 1.5), dev.phi(p, q, tree), dev.hvp(p, q, v, tree, 1.5, False)]
    monkeypatch.setattr(_cuda, "SHARED_BYTES_MAX", 0)
    monkeypatch.setattr(_cuda, "GLOBAL_BLOCKS_MAX", 2)
    in_global = [dev.value_grad(p, q, tree, 1.5), dev.phi(p, q, tree), dev.hvp(p, q, v, tree, 1.5, False)]
    for a, b in zip([*shared[0], *shared[1:]], [*in_global[0], *in_global[1:]]):
        assert_array_equal(a, b)


@pytest.mark.parametrize("which", ["p", "q", "both"])
def test_broadcast_single_row(dev, which):
    tree = _tree(lambda: random_tree(np.random.default_rng(9), 20, bins_on_internal=True))
    p, q = _masses(tree, np.float64, 6, 4)
    if which in ("p", "both"):
        p = p[:1]
    if which in ("q", "both"):
        q = q[:1]
    v = np.random.default_rng(0).standard_normal((1, tree.n_bins))
    value, grad = dev.value_grad(p, q, tree, 2.0)
    ref_value, ref_grad = ref_value_grad(p, q, tree, 2.0)
    rows = 1 if which == "both" else 6
    assert value.shape == (rows,) and grad.shape == (rows, tree.n_bins)
    _close(value, ref_value.reshape(rows), np.float64, "value")
    _close(grad, ref_grad.reshape(rows, -1), np.float64, "grad")
    _close(dev.hvp(p, q, v, tree, 3.0), ref_hvp(p, q, v, tree, 3.0).reshape(rows, -1),
           np.float64, "hvp")


# --------------------------------------------------------------------------- #
# Shapes of trees
# --------------------------------------------------------------------------- #

def _all_ops_match(dev, tree, dtype, rows=2, rhos=(1.0, 2.0, 1.5)):
    # sparse masses (seed 1: phi = 0 on empty subtrees) and dense ones (seed 0); the
    # HVP on dense ones only, as phi = 0 makes it infinite for rho = 1.5
    v = np.random.default_rng(4).standard_normal((rows, tree.n_bins)).astype(dtype)
    for seed in (0, 1):
        p, q = _masses(tree, dtype, rows, seed)
        for rho in rhos:
            value, grad = dev.value_grad(p, q, tree, rho)
            ref_value, ref_grad = ref_value_grad(p, q, tree, rho)
            _close(value, ref_value, dtype, f"value, rho={rho}")
            _close(grad, ref_grad, dtype, f"grad, rho={rho}")
            if rho != 1.0 and seed == 0:
                _close(dev.hvp(p, q, v, tree, rho), ref_hvp(p, q, v, tree, rho), dtype, f"hvp, rho={rho}")
        _close(dev.phi(p, q, tree), ref_phi(p, q, tree), dtype, "phi")


@pytest.mark.parametrize("dtype", DTYPES)
def test_single_node_and_single_bin(dev, dtype):
    for tree in (Tree.from_parents([-1]), Tree.from_parents([-1, 0, 1], [0, 1.0, 2.0], bins=[2]),
                 Tree.chain(1)):
        p = np.ones((3, 1), dtype=dtype)
        value, grad = dev.value_grad(p, p, tree, 1.5)
        assert_array_equal(value, 0.0)
        assert_array_equal(grad, 0.0)
        assert_array_equal(dev.phi(p, p, tree), 0.0)
        assert_array_equal(dev.hvp(p, p, p, tree, 2.0), 0.0)


def test_deep_chain_uses_global_scratch(dev):
    # 10^4 nodes: the scan does not care about depth; the tree is too large for shared memory
    tree = Tree.chain(10_000, spacing=np.random.default_rng(0).uniform(0.5, 2.0, 9_999))
    assert 8 * (2 * tree.n_nodes) > _cuda.SHARED_BYTES_MAX
    p, q = _masses(tree, np.float64, 1, 0)
    for rho in (1.0, 2.0):
        value, grad = dev.value_grad(p, q, tree, rho)
        ref_value, ref_grad = ref_value_grad(p, q, tree, rho)
        _close(value, ref_value, np.float64, "value")
        _close(grad, ref_grad, np.float64, "grad")


@pytest.mark.parametrize("dtype", DTYPES)
def test_wide_star_and_long_chain(dev, dtype):
    _all_ops_match(dev, _tree(lambda: star(60)), dtype)
    _all_ops_match(dev, _tree(lambda: chain(60, spacing=np.linspace(0.1, 2.0, 59))), dtype)


def test_zero_cost_edges_and_internal_bins_in_global_path(dev, global_scratch):
    tree = _tree(lambda: random_tree(np.random.default_rng(12), 50, bins_on_internal=True, zero_weights=True))
    _all_ops_match(dev, tree, np.float64, rows=5)


# --------------------------------------------------------------------------- #
# Conventions at phi = 0 and for non-finite values
# --------------------------------------------------------------------------- #

def test_sign_of_zero_phi_is_zero(dev):
    # p == q on a subtree: phi = 0 exactly there; the rho = 1 subgradient takes sign(0) = 0
    tree = Tree.from_nested({"a": ["x", "y"], "b": ["z", "w"]})
    p = np.array([[0.25, 0.25, 0.5, 0.0]])
    q = np.array([[0.25, 0.25, 0.0, 0.5]])
    for dtype in DTYPES:
        value, grad = dev.value_grad(p.astype(dtype), q.astype(dtype), tree, 1.0)
        ref_value, ref_grad = emdtree.emd_value_and_grad(p.astype(dtype), q.astype(dtype), tree, rho=1.0)
        assert_array_equal(value, ref_value)
        assert_array_equal(grad, ref_grad)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the simulator: numpy scalars warn on 0 ** -0.5
@pytest.mark.parametrize("project_out", [True, False])
def test_hvp_infinite_curvature_where_cpu_has_it(dev, project_out):
    # 1 < rho < 2 and phi_i = 0 (p == q below i) with a direction that changes phi_i:
    # the CPU gives +-inf on the bins below i (and NaN after projection); so must the GPU
    tree = Tree.from_nested({"a": ["x", "y"], "b": ["z", "w"], "c": ["s"]})
    p = np.array([[0.25, 0.25, 0.3, 0.0, 0.2]])
    q = np.array([[0.25, 0.25, 0.0, 0.3, 0.2]])
    v = np.array([[1.0, -2.0, 0.5, 0.25, 0.0]])
    out = dev.hvp(p, q, v, tree, 1.5, project_out)
    ref = _cpu_hvp(p, q, v, tree, 1.5, project_out)
    assert not np.isfinite(ref).all()
    assert_array_equal(np.isnan(out), np.isnan(ref))
    assert_array_equal(np.isinf(out), np.isinf(ref))
    assert_allclose(out, ref, rtol=1e-12, equal_nan=True)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the simulator: numpy scalars warn on inf - inf
def test_non_finite_masses_reach_the_cpu_entries(dev):
    # with unchecked inputs a NaN or inf bin spoils its ancestors' phi and no others
    tree = _tree(lambda: random_tree(np.random.default_rng(6), 25, bins_on_internal=True))
    p, q = _masses(tree, np.float64, 3, 0)
    p[0, 2] = np.nan
    p[1, 0] = np.inf
    q[1, 3] = np.inf
    out = dev.phi(p, q, tree)
    ref = emdtree.phi(p, q, tree, check_inputs=False)
    assert_array_equal(np.isnan(out), np.isnan(ref))
    assert_allclose(out, ref, rtol=1e-12, atol=1e-12, equal_nan=True)
    value, grad = dev.value_grad(p, q, tree, 2.0)
    ref_value, ref_grad = emdtree.emd_value_and_grad(p, q, tree, rho=2.0, check_inputs=False)
    assert_allclose(value, ref_value, rtol=1e-12, equal_nan=True)
    assert_allclose(grad, ref_grad, rtol=1e-12, atol=1e-12, equal_nan=True)


# --------------------------------------------------------------------------- #
# Tree arrays, shapes and errors
# --------------------------------------------------------------------------- #

def test_tree_arrays_cached_per_dtype():
    tree = _tree(lambda: random_tree(np.random.default_rng(1), 12))
    a32 = _cuda.tree_arrays(tree, np.float32)
    assert _cuda.tree_arrays(tree, "float32") is a32
    a64 = _cuda.tree_arrays(tree, np.float64)
    assert a64 is not a32
    assert a32.weight.copy_to_host().dtype == np.float32
    assert_array_equal(a64.weight.copy_to_host(), tree.layout.weight)
    assert_array_equal(a64.index.copy_to_host(), _cuda.tree_index(tree))
    assert_array_equal(a64.below.copy_to_host(), tree.layout.bins_below)
    with pytest.raises(ValueError, match="beyond the float32 range"):
        _cuda.tree_arrays(Tree.from_parents([-1, 0], [0.0, 1e39]), np.float32)


def test_empty_batch(dev):
    tree = Tree.chain(4)
    empty = np.zeros((0, 4))
    value, grad = dev.value_grad(empty, np.ones((1, 4)) / 4, tree, 2.0)
    assert value.shape == (0,) and grad.shape == (0, 4)
    assert dev.phi(empty, empty, tree).shape == (0, 4)
    assert dev.hvp(empty, empty, empty, tree, 1.5).shape == (0, 4)


def test_bad_arguments_name_the_problem(dev):
    tree = Tree.chain(4)
    s = dev.stream
    p32, q64 = dev.put(np.ones((2, 4), np.float32), np.ones((2, 4)))
    with pytest.raises(TypeError, match="one dtype, got p float32, q float64"):
        _cuda.value_grad(p32, q64, tree, 1.0, True, s)
    p3, q2 = dev.put(np.ones((3, 4)), np.ones((2, 4)))
    with pytest.raises(ValueError, match="q has 2 rows; expected 1 or 3"):
        _cuda.phi(p3, q2, tree, s)
    (p5,) = dev.put(np.ones((2, 5)))
    with pytest.raises(ValueError, match=r"p has shape \(2, 5\); expected \(rows, 4\)"):
        _cuda.phi(p5, q64, tree, s)
    with pytest.raises(ValueError, match="rho must be a finite number >= 1"):
        _cuda.hvp(q64, q64, q64, tree, 0.5, True, s)
    (i64,) = dev.put(np.ones((2, 4), np.int64))
    with pytest.raises(TypeError, match="float32 or float64"):
        _cuda.phi(i64, i64, tree, s)
