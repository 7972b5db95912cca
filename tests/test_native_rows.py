"""The row-major entry of the reference math and the native losses' softmax rule.

``reference.value_grad_rows`` (JAX and TensorFlow tables) against
``reference.value_grad`` on node-major arrays, in float64, on trees of every
shape, with exact cancellations (phi = 0, where sign(0) = 0 decides the
gradient at rho = 1); the ``materialize`` hook is the identity; and the
native losses after a softmax (one derivative rule for the softmax and the
loss) against the chain rule over the kernels' gradient, with respect to the
logits and to distribution targets, under ``jax.jit`` and
``tf.function(jit_compile=True)``.
"""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
from trees import TREE_CASES

import emdtree
from emdtree.datasets import imagenet_wordnet
from emdtree.engine import backends, reference
from emdtree.engine.plan import plan_of

pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::FutureWarning"),
]

RHOS = [1.0, 1.5, 2.0, 3.0]
CASES = [case for case in TREE_CASES if case[0] in ("star", "chain", "caterpillar", "random",
                                                     "random_internal_bins", "random_internal_zero")]


def _differences(rng, n_bins, rows=6):
    """Rows p and q whose differences have exact zeros: a row p = q, a row moving mass between
    two bins only."""
    p = rng.random((rows, n_bins))
    q = rng.random((rows, n_bins))
    p /= p.sum(1, keepdims=True)
    q /= q.sum(1, keepdims=True)
    q[0] = p[0]
    q[1] = p[1]
    q[1, [0, n_bins - 1]] = p[1, [n_bins - 1, 0]]
    return p, q


@contextlib.contextmanager
def _library(name):
    """(ops, to library, to NumPy) for float64 arrays of JAX (x64 on in the block) or TensorFlow."""
    if name == "jax":
        jax = pytest.importorskip("jax")
        import jax.numpy as jnp

        with jax.enable_x64(True):
            yield backends.jax_ops(), (lambda a: jnp.asarray(a, dtype=jnp.float64)), np.asarray
    else:
        tf = pytest.importorskip("tensorflow")
        yield backends.tf_ops(), (lambda a: tf.constant(a, dtype=tf.float64)), (lambda t: t.numpy())


def _trees():
    return [(name, emdtree.Tree(*make())) for name, make in CASES] + [("imagenet", imagenet_wordnet())]


@pytest.mark.parametrize("library", ["jax", "tf"])
@pytest.mark.parametrize("rho", RHOS)
def test_row_major_entry_equals_node_major(library, rho):
    rng = np.random.default_rng(3)
    with _library(library) as (ops, to, back):
        for name, tree in _trees():
            plan = plan_of(tree)
            p, q = _differences(rng, tree.n_bins)
            d = p - q
            want_v, want_g = reference.value_grad(ops, to(d.T), plan, rho, True)
            got_v, got_g = reference.value_grad_rows(ops, to(d), plan, rho, True)
            np.testing.assert_allclose(back(got_v), back(want_v), rtol=1e-12, atol=1e-14, err_msg=name)
            np.testing.assert_allclose(back(got_g), back(want_g).T, rtol=1e-12, atol=1e-13, err_msg=name)
            # the kernels' convention at phi = 0 (rho = 1: sign(0) = 0) on the rows with exact zeros
            kernels = emdtree.emd_grad(p[:2], q[:2], tree, rho)
            np.testing.assert_allclose(back(got_g)[:2], kernels, rtol=1e-9, atol=1e-12, err_msg=name)
            value, none = reference.value_grad_rows(ops, to(d), plan, rho, False)
            assert none is None
            np.testing.assert_allclose(back(value), back(want_v), rtol=1e-12, atol=1e-14)
            _, raw = reference.value_grad_rows(ops, to(d), plan, rho, True, project=False)
            raw = back(raw)
            np.testing.assert_allclose(raw - raw.mean(1, keepdims=True), back(want_g).T, rtol=1e-12,
                                       atol=1e-13, err_msg=name)


@pytest.mark.parametrize("library", ["jax", "tf"])
def test_materialize_is_the_identity(library):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((7, 5))
    with _library(library) as (ops, to, back):
        np.testing.assert_array_equal(back(ops.materialize(to(x))), x)


def _softmax_case(tree, rows=5, seed=5):
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((rows, tree.n_bins)) * 2.0
    q = rng.random((rows, tree.n_bins))
    q /= q.sum(1, keepdims=True)
    labels = rng.integers(0, tree.n_bins, rows)
    return z, q, labels


def _want(tree, z, q, rho):
    """Values and the gradients of their sum to the logits and to q, by the chain rule over the kernels."""
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    value = emdtree.emd(p, q, tree, rho)
    g = emdtree.emd_grad(p, q, tree, rho)
    return value, p * (g - np.sum(p * g, 1, keepdims=True)), -g


SOFTMAX_TREES = [("random_internal_bins", lambda: emdtree.Tree(*dict(CASES)["random_internal_bins"]())),
                 ("chain", lambda: emdtree.Tree(*dict(CASES)["chain"]())),
                 ("imagenet", imagenet_wordnet)]


@pytest.mark.parametrize("rho", [1.0, 2.0, 3.0])
@pytest.mark.parametrize("name,make", SOFTMAX_TREES, ids=[n for n, _ in SOFTMAX_TREES])
def test_jax_softmax_rule_equals_chain_rule(name, make, rho):
    jax = pytest.importorskip("jax")
    import jax.numpy as jnp

    from emdtree.jax import emd_loss

    tree = make()
    z, q, labels = _softmax_case(tree)
    with jax.enable_x64(True):
        def loss(z, q):
            return emd_loss(z, q, tree, rho, normalize="softmax", implementation="native").sum()

        value = jax.jit(lambda z, q: emd_loss(z, q, tree, rho, normalize="softmax",
                                              implementation="native"))(jnp.asarray(z), jnp.asarray(q))
        g_z, g_q = jax.jit(jax.grad(loss, argnums=(0, 1)))(jnp.asarray(z), jnp.asarray(q))
        want_v, want_z, want_q = _want(tree, z, q, rho)
        np.testing.assert_allclose(np.asarray(value), want_v, rtol=1e-10, atol=1e-13)
        np.testing.assert_allclose(np.asarray(g_z), want_z, rtol=1e-8, atol=1e-12)
        np.testing.assert_allclose(np.asarray(g_q), want_q, rtol=1e-8, atol=1e-12)
        # class indices: the one-hot rows' chain rule
        g_l = jax.jit(jax.grad(lambda z: emd_loss(z, jnp.asarray(labels), tree, rho, normalize="softmax",
                                                  implementation="native").sum()))(jnp.asarray(z))
        _, want_l, _ = _want(tree, z, np.eye(tree.n_bins)[labels], rho)
        np.testing.assert_allclose(np.asarray(g_l), want_l, rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("rho", [1.0, 2.0, 3.0])
@pytest.mark.parametrize("name,make", SOFTMAX_TREES, ids=[n for n, _ in SOFTMAX_TREES])
def test_tf_xla_softmax_rule_equals_chain_rule(name, make, rho):
    tf = pytest.importorskip("tensorflow")

    from emdtree.tensorflow import emd_loss

    tree = make()
    z, q, labels = _softmax_case(tree)

    @tf.function(jit_compile=True)
    def step(z, target):
        with tf.GradientTape() as tape:
            tape.watch([z, target])
            value = emd_loss(target, z, tree, rho, normalize="softmax")
            total = tf.reduce_sum(value)
        return (value, *tape.gradient(total, [z, target]))

    value, g_z, g_q = step(tf.constant(z), tf.constant(q))
    want_v, want_z, want_q = _want(tree, z, q, rho)
    np.testing.assert_allclose(value.numpy(), want_v, rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(g_z.numpy(), want_z, rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(g_q.numpy(), want_q, rtol=1e-8, atol=1e-12)

    @tf.function(jit_compile=True)
    def step_labels(z, labels):
        with tf.GradientTape() as tape:
            tape.watch(z)
            total = tf.reduce_sum(emd_loss(labels, z, tree, rho, normalize="softmax"))
        return tape.gradient(total, z)

    _, want_l, _ = _want(tree, z, np.eye(tree.n_bins)[labels], rho)
    np.testing.assert_allclose(step_labels(tf.constant(z), tf.constant(labels)).numpy(), want_l, rtol=1e-8,
                               atol=1e-12)


@pytest.mark.parametrize("rho", RHOS)
def test_numpy_gather_as_slices_equals_the_gather(rho):
    """The NumPy table's sums at the bins (``s[up]`` as slices where ``up`` is a few runs: a
    chain) against the plain gather, for values, gradients, HVPs and Hessians."""
    plain = backends.numpy_ops._replace(bins_from=None)
    rng = np.random.default_rng(6)
    chains = [("chain1000", emdtree.Tree.chain(1000)),
              ("chain_uneven", emdtree.Tree(*dict(TREE_CASES)["chain_uneven"]()))]
    seen_runs = False
    for name, tree in _trees() + chains:
        plan = plan_of(tree)
        seen_runs |= plan.up_runs is not None and len(plan.up_runs) <= 2
        p, q = _differences(rng, tree.n_bins)
        d, v = (p - q).T, rng.standard_normal((tree.n_bins, p.shape[0]))
        for ops in (backends.numpy_ops, plain):
            with np.errstate(invalid="ignore", divide="ignore"):  # infinite curvature at phi = 0, rho < 2
                got = (reference.value_grad(ops, d, plan, rho, True), reference.hvp(ops, d, v, plan, rho))
            if ops is plain:
                np.testing.assert_array_equal(got[0][0], want[0][0], err_msg=name)
                np.testing.assert_array_equal(got[0][1], want[0][1], err_msg=name)
                np.testing.assert_array_equal(got[1], want[1], err_msg=name)
            want = got
        if tree.n_bins <= 40:
            with np.errstate(invalid="ignore", divide="ignore"):  # inf - inf in the projection, rho < 2
                got, want = (reference.hessian(ops, d, plan, rho) for ops in (backends.numpy_ops, plain))
            np.testing.assert_array_equal(got, want, err_msg=name)
    assert seen_runs
