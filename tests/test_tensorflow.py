"""The TensorFlow / Keras loss ``emdtree.tensorflow``: values against
``emdtree.emd``, gradients against ``emdtree.emd_grad`` and
``tf.test.compute_gradient``, class indices against one-hot targets,
``tf.function`` and XLA, Keras reductions, ``fit`` and a
save / load round trip, and the errors for bad input."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

import emdtree  # noqa: E402
from emdtree import Tree  # noqa: E402
from emdtree.tensorflow import EMDLoss, emd_loss  # noqa: E402
from trees import random_tree  # noqa: E402

pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::FutureWarning"),
]


@pytest.fixture(scope="module")
def tree():
    rng = np.random.default_rng(17)
    return Tree.from_parents(*random_tree(rng, 12, bins_on_internal=True))


def _dists(rng, shape):
    x = rng.random(shape) + 0.05
    return x / x.sum(-1, keepdims=True)


@pytest.mark.parametrize("rho", [1.0, 1.5, 2.0])
def test_value_matches_emd(tree, rho):
    rng = np.random.default_rng(1)
    p, q = _dists(rng, (2, 3, tree.n_bins)), _dists(rng, (2, 3, tree.n_bins))
    got = emd_loss(tf.constant(q), tf.constant(p), tree, rho)
    assert got.dtype == tf.float64 and got.shape == (2, 3)
    np.testing.assert_allclose(got.numpy(), emdtree.emd(p, q, tree, rho), rtol=1e-12)
    got = emd_loss(np.moveaxis(q, -1, 1), np.moveaxis(p, -1, 1), tree, rho, axis=1)
    np.testing.assert_allclose(got.numpy(), emdtree.emd(p, q, tree, rho), rtol=1e-12)


def test_class_indices_equal_one_hot(tree):
    rng = np.random.default_rng(2)
    logits = tf.constant(rng.standard_normal((5, tree.n_bins)))
    labels = rng.integers(0, tree.n_bins, 5)
    one_hot = tf.one_hot(labels, tree.n_bins, dtype=tf.float64)
    want = emd_loss(one_hot, logits, tree, normalize="softmax")
    for target in (labels, labels.astype(np.float32), labels[:, None].astype(np.float64)):
        np.testing.assert_allclose(emd_loss(target, logits, tree, normalize="softmax").numpy(), want.numpy(),
                                   rtol=1e-14)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(logits)
        a = tf.reduce_sum(emd_loss(labels, logits, tree, normalize="softmax"))
        b = tf.reduce_sum(emd_loss(one_hot, logits, tree, normalize="softmax"))
    np.testing.assert_allclose(tape.gradient(a, logits).numpy(), tape.gradient(b, logits).numpy(),
                               rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("rho", [1.0, 2.0])
def test_gradient_matches_numpy_api(tree, rho):
    rng = np.random.default_rng(3)
    p = tf.Variable(_dists(rng, (4, tree.n_bins)))
    q = tf.Variable(_dists(rng, (4, tree.n_bins)))
    upstream = rng.standard_normal(4)
    with tf.GradientTape() as tape:
        value = emd_loss(q, p, tree, rho)
    d_p, d_q = tape.gradient(value, [p, q], output_gradients=tf.constant(upstream))
    want = upstream[:, None] * emdtree.emd_grad(p.numpy(), q.numpy(), tree, rho)
    np.testing.assert_allclose(d_p.numpy(), want, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(d_q.numpy(), -want, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("rho", [2.0, 1.5])
def test_compute_gradient(tree, rho):
    # through a softmax, whose Jacobian treats the dirt-conserving gradient and
    # the plain one alike; normal logits keep |phi| away from 0 for rho = 1.5
    rng = np.random.default_rng(4)
    x = tf.constant(rng.standard_normal((3, tree.n_bins)))
    y = tf.constant(rng.standard_normal((3, tree.n_bins)))

    def f(x, y):
        return emd_loss(tf.nn.softmax(y), x, tree, rho, normalize="softmax")

    theoretical, numerical = tf.test.compute_gradient(f, [x, y], delta=1e-5)
    for t, n in zip(theoretical, numerical):
        np.testing.assert_allclose(t, n, rtol=1e-6, atol=1e-8)


def test_tf_function_and_xla(tree):
    rng = np.random.default_rng(5)
    logits = tf.constant(rng.standard_normal((6, tree.n_bins)), dtype=tf.float32)
    labels = tf.constant(rng.integers(0, tree.n_bins, 6))

    def value_and_grad(x, t):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_mean(emd_loss(t, x, tree, normalize="softmax"))
        return loss, tape.gradient(loss, x)

    eager = value_and_grad(logits, labels)
    graph = tf.function(value_and_grad)(logits, labels)
    for a, b in zip(eager, graph):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6)
    xla = tf.function(value_and_grad, jit_compile=True)(logits, labels)
    for a, b in zip(eager, xla):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=2e-6, atol=1e-7)


def test_keras_reductions_and_sample_weight(tree):
    rng = np.random.default_rng(6)
    logits = tf.constant(rng.standard_normal((4, tree.n_bins)), dtype=tf.float32)
    labels = rng.integers(0, tree.n_bins, 4)
    weights = np.array([1.0, 0.0, 2.0, 0.5], dtype=np.float32)
    per = emd_loss(labels, logits, tree, normalize="softmax").numpy()
    cases = {"sum_over_batch_size": per.mean(), "sum": per.sum(), None: per}
    for reduction, want in cases.items():
        got = EMDLoss(tree, normalize="softmax", reduction=reduction)(labels, logits)
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-6)
    got = EMDLoss(tree, normalize="softmax", reduction="sum")(labels, logits, sample_weight=weights)
    np.testing.assert_allclose(got.numpy(), (per * weights).sum(), rtol=1e-6)


def _model(n_features, n_bins):
    keras.utils.set_random_seed(0)
    return keras.Sequential([keras.Input((n_features,)), keras.layers.Dense(n_bins)])


def test_keras_fit_reduces_loss_and_saved_model_loads(tree, tmp_path):
    rng = np.random.default_rng(7)
    features = rng.standard_normal((64, 5)).astype(np.float32)
    labels = (features @ rng.standard_normal((5, tree.n_bins))).argmax(-1)
    model = _model(5, tree.n_bins)
    model.compile(optimizer=keras.optimizers.SGD(0.5), loss=EMDLoss(tree, normalize="softmax"),
                  jit_compile=False)
    history = model.fit(features, labels, batch_size=64, epochs=20, verbose=0)
    losses = history.history["loss"]
    assert losses[-1] < 0.7 * losses[0]

    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded.loss, EMDLoss) and loaded.loss.tree == tree
    assert loaded.loss.normalize == "softmax" and loaded.loss.rho == 2.0
    np.testing.assert_array_equal(loaded.predict(features, verbose=0), model.predict(features, verbose=0))
    np.testing.assert_allclose(loaded.evaluate(features, labels, verbose=0),
                               model.evaluate(features, labels, verbose=0), rtol=1e-6)


def test_config_round_trip_without_tree():
    loss = EMDLoss(rho=1.0, reduction="sum", name="ordinal")
    again = EMDLoss.from_config(loss.get_config())
    assert again.tree is None and again.rho == 1.0 and again.reduction == "sum" and again.name == "ordinal"
    np.testing.assert_allclose(again([0], [[0.0, 0.0, 1.0]]).numpy(), 2.0)


def test_bad_inputs(tree):
    n = tree.n_bins
    p = np.full((2, n), 1.0 / n)
    with pytest.raises(ValueError, match=r"y_true has shape \(2, 3\) but y_pred has shape"):
        emd_loss(np.full((2, 3), 1 / 3), p, tree)
    with pytest.raises(ValueError, match=r"expected class indices of shape \(2,\)"):
        emd_loss(np.array([0, 1, 2]), p, tree)
    with pytest.raises(ValueError, match=rf"y_true\[1\] = {n} is not a class index in \[0, {n - 1}\]"):
        emd_loss(np.array([0, n]), p, tree)
    bad = p.copy()
    bad[1, 2], bad[1, 3] = -0.1, bad[1, 3] + 0.1
    with pytest.raises(ValueError, match=r"y_pred\[1, 2\] = -0.1.* is negative"):
        emd_loss(np.array([0, 1]), bad, tree)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"y_pred\[1, 2\] = -0.1.* is negative"):
        tf.function(emd_loss)(np.array([0, 1]), bad, tree)
    with pytest.raises(ValueError, match=r"y_pred at batch index \(0,\) sums to 2.0.*must sum to 1"):
        emd_loss(np.array([0, 1]), 2 * p, tree)
    with pytest.raises(ValueError, match="must have equal total mass"):
        emd_loss(p, 2 * p, tree)
    with pytest.raises(TypeError, match="y_pred must be floating point"):
        emd_loss(np.array([0, 1]), np.ones((2, n), dtype=np.int32), tree)
    with pytest.raises(ValueError, match=f"the bin axis has length {n + 1} but the tree has {n} bins"):
        emd_loss(np.array([0, 1]), np.full((2, n + 1), 1.0 / (n + 1)), tree)
    with pytest.raises(ValueError, match="normalize must be"):
        EMDLoss(tree, normalize="sigmoid")
    with pytest.raises(TypeError, match="tree must be an emdtree.Tree"):
        EMDLoss(tree.to_dict())
