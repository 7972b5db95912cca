"""The JAX loss ``emdtree.jax``: values against ``emdtree.emd``, gradients
(both arguments) against ``emdtree.emd_grad``, ``jax.test_util.check_grads``
in reverse and forward mode, ``jit`` and ``vmap`` against plain batches,
class indices against one-hot targets, a short training run, and the errors
for bad input."""

import numpy as np
import pytest

jax = pytest.importorskip("jax")

import jax.numpy as jnp  # noqa: E402
from jax.test_util import check_grads  # noqa: E402

import emdtree  # noqa: E402
from emdtree import Tree  # noqa: E402
from emdtree.jax import emd_loss  # noqa: E402
from trees import random_tree  # noqa: E402

pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::FutureWarning"),
]


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


@pytest.fixture(scope="module")
def tree():
    rng = np.random.default_rng(27)
    return Tree.from_parents(*random_tree(rng, 12, bins_on_internal=True))


def _dists(rng, shape):
    x = rng.random(shape) + 0.05
    return x / x.sum(-1, keepdims=True)


@pytest.mark.parametrize("rho", [1.0, 1.5, 2.0])
def test_value_matches_emd(tree, rho, x64):
    rng = np.random.default_rng(1)
    p, q = _dists(rng, (2, 3, tree.n_bins)), _dists(rng, (2, 3, tree.n_bins))
    got = emd_loss(jnp.asarray(p), jnp.asarray(q), tree, rho)
    assert got.dtype == jnp.float64 and got.shape == (2, 3)
    np.testing.assert_allclose(got, emdtree.emd(p, q, tree, rho), rtol=1e-12)
    got = emd_loss(np.moveaxis(p, -1, 0), np.moveaxis(q, -1, 0), tree, rho, axis=0)
    np.testing.assert_allclose(got, emdtree.emd(p, q, tree, rho), rtol=1e-12)


@pytest.mark.parametrize("rho", [1.0, 2.0])
def test_gradients_and_jvp_match_numpy_api(tree, rho, x64):
    rng = np.random.default_rng(2)
    p, q = _dists(rng, (4, tree.n_bins)), _dists(rng, (4, tree.n_bins))
    w = rng.standard_normal(4)
    d_p, d_q = jax.grad(lambda p, q: jnp.dot(w, emd_loss(p, q, tree, rho)), argnums=(0, 1))(p, q)
    want = w[:, None] * emdtree.emd_grad(p, q, tree, rho)
    np.testing.assert_allclose(d_p, want, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(d_q, -want, rtol=1e-12, atol=1e-14)
    dp, dq = rng.standard_normal(p.shape), rng.standard_normal(q.shape)
    value, tangent = jax.jvp(lambda p, q: emd_loss(p, q, tree, rho), (p, q), (dp, dq))
    grad = emdtree.emd_grad(p, q, tree, rho)
    np.testing.assert_allclose(value, emdtree.emd(p, q, tree, rho), rtol=1e-12)
    np.testing.assert_allclose(tangent, np.sum(grad * (dp - dq), -1), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("rho", [2.0, 1.5])
def test_check_grads(tree, rho, x64):
    # through a softmax, whose Jacobian treats the dirt-conserving gradient and
    # the plain one alike; normal logits keep |phi| away from 0 for rho = 1.5
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.standard_normal((3, tree.n_bins)))
    y = jnp.asarray(rng.standard_normal((3, tree.n_bins)))

    def f(x, y):
        return emd_loss(x, jax.nn.softmax(y), tree, rho, normalize="softmax")

    check_grads(f, (x, y), order=1, modes=("rev", "fwd"), eps=1e-5)
    check_grads(lambda x: emd_loss(x, jnp.array([0, 4, 7]), tree, rho, normalize="softmax"), (x,),
                order=1, modes=("rev",), eps=1e-5)


def test_class_indices_equal_one_hot(tree, x64):
    rng = np.random.default_rng(4)
    x = jnp.asarray(rng.standard_normal((5, tree.n_bins)))
    labels = jnp.asarray(rng.integers(0, tree.n_bins, 5))
    one_hot = jax.nn.one_hot(labels, tree.n_bins, dtype=jnp.float64)

    def loss(x, t):
        return emd_loss(x, t, tree, 1.5, normalize="softmax").sum()

    np.testing.assert_allclose(loss(x, labels), loss(x, one_hot), rtol=1e-14)
    np.testing.assert_allclose(jax.grad(loss)(x, labels), jax.grad(loss)(x, one_hot), rtol=1e-13, atol=1e-15)


def test_jit_and_vmap_equal_batch(tree):
    rng = np.random.default_rng(5)
    x = jnp.asarray(rng.standard_normal((3, 4, tree.n_bins)), dtype=jnp.float32)
    q = jnp.asarray(_dists(rng, (4, tree.n_bins)), dtype=jnp.float32)
    labels = jnp.asarray(rng.integers(0, tree.n_bins, (3, 4)))
    want = emd_loss(x, jnp.broadcast_to(q, x.shape), tree, normalize="softmax")
    got = jax.jit(jax.vmap(lambda x: emd_loss(x, q, tree, normalize="softmax")))(x)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    want = emd_loss(x, labels, tree, normalize="softmax")
    got = jax.vmap(lambda x, t: emd_loss(x, t, tree, normalize="softmax"))(x, labels)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    # per-sample gradients: vmap of grad against the gradient of the sum
    per_sample = jax.jit(jax.vmap(jax.grad(lambda x, t: emd_loss(x, t, tree, normalize="softmax").sum())))
    total = jax.grad(lambda x: emd_loss(x, labels, tree, normalize="softmax").sum())
    np.testing.assert_allclose(per_sample(x, labels), total(x), rtol=1e-5, atol=1e-7)


def test_training_reduces_loss(tree):
    rng = np.random.default_rng(6)
    features = jnp.asarray(rng.standard_normal((64, 5)), dtype=jnp.float32)
    labels = jnp.argmax(features @ jnp.asarray(rng.standard_normal((5, tree.n_bins)), dtype=jnp.float32), -1)
    params = (jnp.zeros((5, tree.n_bins)), jnp.zeros(tree.n_bins))

    def loss(params):
        weights, bias = params
        return emd_loss(features @ weights + bias, labels, tree, normalize="softmax").mean()

    step = jax.jit(jax.value_and_grad(loss))
    losses = []
    for _ in range(20):
        value, grads = step(params)
        params = jax.tree_util.tree_map(lambda a, g: a - 0.5 * g, params, grads)
        losses.append(float(value))
    assert losses[-1] < 0.7 * losses[0]


def test_bad_inputs(tree):
    n = tree.n_bins
    p = jnp.full((2, n), 1.0 / n)
    with pytest.raises(ValueError, match=r"target has shape \(2, 3\) but input has shape"):
        emd_loss(p, jnp.full((2, 3), 1 / 3), tree)
    with pytest.raises(ValueError, match=r"expected \(2,\), got \(3,\)"):
        emd_loss(p, jnp.array([0, 1, 2]), tree)
    with pytest.raises(Exception, match=rf"target\[1\] = {n} is not a class index in \[0, {n - 1}\]"):
        emd_loss(p, jnp.array([0, n]), tree).block_until_ready()
    bad = p.at[1, 2].set(-0.1).at[1, 3].add(0.1 + 1.0 / n)
    with pytest.raises(Exception, match=r"input\[1, 2\] = -0.1.* is negative"):
        emd_loss(bad, jnp.array([0, 1]), tree).block_until_ready()
    with pytest.raises(TypeError, match="input must be floating point"):
        emd_loss(jnp.ones((2, n), dtype=jnp.int32), jnp.array([0, 1]), tree)
    with pytest.raises(TypeError, match="target must hold probabilities or integer class indices"):
        emd_loss(p, jnp.array([True, False]), tree)
    with pytest.raises(ValueError, match=f"the bin axis has length {n + 1} but the tree has {n} bins"):
        emd_loss(jnp.full((2, n + 1), 1.0 / (n + 1)), jnp.array([0, 1]), tree)
    with pytest.raises(ValueError, match="normalize must be"):
        emd_loss(p, jnp.array([0, 1]), tree, normalize="softplus")
