"""The native JAX path of ``emdtree.jax.emd_loss`` (JAX operations, no host
callback): values and gradients against the kernels in float64 on trees of
every shape, class indices against one-hot targets, ``jax.hessian`` and the
``jvp`` of ``grad`` against ``emdtree.emd_hessian`` / ``emdtree.emd_hvp``,
``vmap(grad)`` per-sample gradients against a loop, float32 against float64
on the ImageNet tree, the choice of path, and input checks."""

import numpy as np
import pytest

jax = pytest.importorskip("jax")

import jax.numpy as jnp  # noqa: E402

import emdtree  # noqa: E402
import trees  # noqa: E402
from emdtree import Tree
from emdtree.frameworks import jax_native as _jax_native  # noqa: E402
from emdtree.jax import emd_loss  # noqa: E402

pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::FutureWarning"),
]

TREES = {
    "random": lambda: trees.random_tree(np.random.default_rng(27), 12, bins_on_internal=True),
    "chain": lambda: trees.chain(9, spacing=0.5),
    "star": lambda: trees.star(6),
    "deep_path": lambda: trees.deep_path(40),
    "binary": lambda: trees.binary(3),
    "single_edge": lambda: trees.single_edge(2.0),
    # bins on the root and an inner node, a leaf without a bin
    "odd_bins": lambda: (np.array([-1, 0, 1, 1, 0]), np.array([0.0, 1.0, 2.0, 3.0, 0.5]),
                         np.array([1, 2, 0])),
    "caterpillar": lambda: trees.caterpillar(7),
}


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


@pytest.fixture(scope="module", params=sorted(TREES))
def tree(request):
    return Tree.from_parents(*TREES[request.param]())


def _dists(rng, shape):
    x = rng.random(shape) + 0.05
    return x / x.sum(-1, keepdims=True)


def _native(p, q, tree, rho, **kw):
    return emd_loss(p, q, tree, rho, implementation="native", **kw)


@pytest.mark.parametrize("rho", [1.0, 1.5, 2.0, 3.0])
def test_value_and_gradients_equal_kernels(tree, rho, x64):
    rng = np.random.default_rng(1)
    p, q = _dists(rng, (5, tree.n_bins)), _dists(rng, (5, tree.n_bins))
    w = rng.standard_normal(5)
    value, (d_p, d_q) = jax.jit(jax.value_and_grad(
        lambda p, q: jnp.dot(w, _native(p, q, tree, rho)), argnums=(0, 1)))(p, q)
    want_value, want_grad = emdtree.emd_value_and_grad(p, q, tree, rho)
    np.testing.assert_allclose(value, w @ want_value, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(d_p, w[:, None] * want_grad, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(d_q, -w[:, None] * want_grad, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("name", ["random", "star"])
def test_class_indices_equal_one_hot_and_chain_default(name, x64):
    tree = Tree.from_parents(*TREES[name]())
    rng = np.random.default_rng(2)
    p = _dists(rng, (3, 4, tree.n_bins))
    labels = rng.integers(0, tree.n_bins, (3, 4))
    one_hot = np.eye(tree.n_bins)[labels]
    for rho in (1.0, 2.0):
        got = jax.jit(jax.grad(lambda p, rho=rho: _native(p, labels, tree, rho).sum()))(p)
        want = jax.jit(jax.grad(lambda p, rho=rho: _native(p, one_hot, tree, rho).sum()))(p)
        np.testing.assert_allclose(got, want, rtol=1e-13, atol=1e-14)
        np.testing.assert_allclose(_native(p, labels, tree, rho), emdtree.emd(p, one_hot, tree, rho),
                                   rtol=1e-12, atol=1e-14)
    # tree=None is the unit chain
    np.testing.assert_allclose(_native(p, labels, None, 2.0),
                               emdtree.emd(p, one_hot, Tree.chain(tree.n_bins), 2.0), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("rho", [1.5, 2.0, 3.0])
@pytest.mark.parametrize("name", ["random", "deep_path", "single_edge"])
def test_hessian_and_jvp_of_grad_equal_kernels(name, rho, x64):
    tree = Tree.from_parents(*TREES[name]())
    rng = np.random.default_rng(3)
    p, q = _dists(rng, (2, tree.n_bins)), _dists(rng, (2, tree.n_bins))
    hessian = jax.jit(jax.hessian(lambda p: _native(p, q, tree, rho).sum()))(p)
    for r in range(2):
        np.testing.assert_allclose(hessian[r, :, r, :], emdtree.emd_hessian(p[r], q[r], tree, rho),
                                   rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(hessian[0, :, 1, :], 0.0)  # rows do not interact
    v = rng.standard_normal((2, tree.n_bins))
    grad = jax.grad(lambda p: _native(p, q, tree, rho).sum())
    _, hvp = jax.jit(lambda p, v: jax.jvp(grad, (p,), (v,)))(p, v)
    np.testing.assert_allclose(hvp, emdtree.emd_hvp(p, q, v, tree, rho), rtol=1e-10, atol=1e-12)


def test_rho2_hessian_is_the_constant_of_eq12(x64):
    tree = emdtree.Tree.from_nested({"animal": ["cat", "tiger"], "vehicle": ["starship", "plane"]})
    rng = np.random.default_rng(4)
    labels = jnp.array([0, 3])
    hessian = jax.jit(jax.hessian(lambda p: _native(p, labels, tree, 2.0).sum()))
    hessians = [hessian(_dists(rng, (2, 4))) for _ in range(2)]
    np.testing.assert_allclose(hessians[0], hessians[1], atol=1e-14)
    want = emdtree.emd_hessian(np.full(4, 0.25), np.eye(4)[0], tree)
    np.testing.assert_allclose(hessians[0][0, :, 0, :], want, atol=1e-14)


@pytest.mark.parametrize("name", ["random", "chain"])
def test_vmap_of_grad_is_per_sample_gradient(name, x64):
    tree = Tree.from_parents(*TREES[name]())
    rng = np.random.default_rng(5)
    logits = rng.standard_normal((6, tree.n_bins))
    labels = rng.integers(0, tree.n_bins, 6)

    def loss(x, t):
        return _native(x, t, tree, 2.0, normalize="softmax").mean()

    per_sample = jax.jit(jax.vmap(jax.grad(loss)))(logits[:, None], labels[:, None])
    grad = jax.jit(jax.grad(loss))
    loop = np.stack([grad(logits[i:i + 1], labels[i:i + 1]) for i in range(6)])
    np.testing.assert_allclose(per_sample, loop, rtol=1e-12, atol=1e-15)
    # and the callback path agrees
    callback = jax.vmap(jax.grad(lambda x, t: emd_loss(x, t, tree, normalize="softmax",
                                                        implementation="callback").mean()))
    np.testing.assert_allclose(callback(logits[:, None], labels[:, None]), loop, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("rho,value_tol,grad_tol", [(1.0, 3e-6, 3e-6), (2.0, 3e-6, 3e-6), (1.5, 3e-6, 1e-4)])
def test_float32_against_float64_on_imagenet(rho, value_tol, grad_tol):
    tree = emdtree.datasets.imagenet_wordnet()
    rng = np.random.default_rng(6)
    z = rng.normal(0.0, 3.0, (64, tree.n_bins))
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    labels = rng.integers(0, tree.n_bins, 64)
    value, grad = jax.jit(jax.value_and_grad(
        lambda p: _native(p, labels, tree, rho).sum()))(jnp.asarray(p, jnp.float32))
    assert grad.dtype == jnp.float32
    want_value, want_grad = emdtree.emd_value_and_grad(p, np.eye(tree.n_bins)[labels], tree, rho)
    assert abs(float(value) - want_value.sum()) <= value_tol * want_value.sum()
    assert np.abs(grad - want_grad).max() <= grad_tol * np.abs(want_grad).max()


def test_choice_of_path_and_checks():
    tree = Tree.from_nested({"a": ["x", "y"], "b": None})
    p = jnp.array([[0.5, 0.25, 0.25]])
    assert not _jax_native.is_preferred(p, jnp.array([1]))  # one CPU device: the callback
    with pytest.raises(ValueError, match="implementation must be"):
        emd_loss(p, jnp.array([1]), tree, implementation="xla")
    # outside a trace the native path checks the masses like the kernels
    with pytest.raises(ValueError, match="negative"):
        _native(jnp.array([[1.5, -0.25, -0.25]]), jnp.array([1]), tree, 2.0)
    with pytest.raises(ValueError, match="class index"):
        _native(p, jnp.array([3]), tree, 2.0)
    # inside jit it cannot, and still computes
    got = jax.jit(lambda p, t: _native(p, t, tree, 2.0))(p, jnp.array([1]))
    np.testing.assert_allclose(got, emd_loss(p, jnp.array([1]), tree), rtol=1e-6)
