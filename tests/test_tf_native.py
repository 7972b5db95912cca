"""The TensorFlow path that XLA compiles (TF operations, no NumPy callback):
float64 values and gradients under ``jit_compile=True`` against the kernels'
eager path on trees of every shape, distribution targets and class indices,
float32 against float64 on the ImageNet tree, Keras ``fit`` with
``jit_compile=True`` against ``jit_compile=False``, and the choice of path."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

import emdtree  # noqa: E402
import trees  # noqa: E402
from emdtree import Tree
from emdtree.frameworks import tf_native as _tf_native  # noqa: E402
from emdtree.tensorflow import EMDLoss, emd_loss  # noqa: E402

pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::FutureWarning"),
]

TREES = {
    "random": lambda: trees.random_tree(np.random.default_rng(17), 12, bins_on_internal=True),
    "chain": lambda: trees.chain(9, spacing=0.5),
    "star": lambda: trees.star(6),
    "deep_path": lambda: trees.deep_path(30),
    "single_edge": lambda: trees.single_edge(2.0),
    # bins on the root and an inner node, a leaf without a bin
    "odd_bins": lambda: (np.array([-1, 0, 1, 1, 0]), np.array([0.0, 1.0, 2.0, 3.0, 0.5]),
                         np.array([1, 2, 0])),
}


def _dists(rng, shape):
    x = rng.random(shape) + 0.05
    return x / x.sum(-1, keepdims=True)


def _value_and_grads(y_true, y_pred, tree, rho):
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([y_true, y_pred])
        value = emd_loss(y_true, y_pred, tree, rho)
        total = tf.reduce_sum(value * tf.range(1, value.shape[0] + 1, dtype=value.dtype))
    d_true = tape.gradient(total, y_true) if y_true.dtype.is_floating else None
    return value, tape.gradient(total, y_pred), d_true


@pytest.mark.parametrize("name", sorted(TREES))
def test_xla_equals_kernels_in_float64(name):
    tree = Tree.from_parents(*TREES[name]())
    rng = np.random.default_rng(1)
    p = tf.constant(_dists(rng, (4, tree.n_bins)))
    targets = [tf.constant(_dists(rng, (4, tree.n_bins))), tf.constant(rng.integers(0, tree.n_bins, 4))]
    xla = tf.function(_value_and_grads, jit_compile=True)
    for rho in (1.0, 1.5, 2.0, 3.0):
        for q in targets:
            want = _value_and_grads(q, p, tree, rho)  # eager CPU: the kernels
            got = xla(q, p, tree, rho)
            for a, b in zip(got, want):
                if b is None:
                    assert a is None
                    continue
                np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-12, atol=1e-12)
    # the native path outside XLA, called directly, agrees too (it serves GPU tensors)
    rows = _tf_native.emd_rows(p, tf.constant(targets[1], tf.int64), tree, 2.0, sparse=True)
    np.testing.assert_allclose(rows.numpy(), emd_loss(targets[1], p, tree).numpy(), rtol=1e-12)


def test_float32_under_xla_against_float64_on_imagenet():
    tree = emdtree.datasets.imagenet_wordnet()
    rng = np.random.default_rng(2)
    logits = rng.normal(0.0, 3.0, (64, tree.n_bins))
    labels = rng.integers(0, tree.n_bins, 64)

    def run(x, t):
        with tf.GradientTape() as tape:
            tape.watch(x)
            value = emd_loss(t, x, tree, normalize="softmax")
            total = tf.reduce_sum(value)
        return value, tape.gradient(total, x)

    got = tf.function(run, jit_compile=True)(tf.constant(logits, tf.float32), tf.constant(labels))
    want = run(tf.constant(logits), tf.constant(labels))  # eager float64: the kernels
    assert got[0].dtype == tf.float32
    np.testing.assert_allclose(got[0].numpy(), want[0].numpy(), rtol=3e-6)
    assert np.abs(got[1].numpy() - want[1].numpy()).max() <= 3e-6 * np.abs(want[1].numpy()).max()


def test_fit_with_xla_follows_fit_without():
    tree = Tree.from_parents(*TREES["random"]())
    rng = np.random.default_rng(3)
    features = rng.standard_normal((64, 5)).astype(np.float32)
    labels = (features @ rng.standard_normal((5, tree.n_bins))).argmax(-1)
    runs = {}
    for jit in (False, True):
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(tree.n_bins)])
        model.compile(optimizer=keras.optimizers.SGD(0.5), loss=EMDLoss(tree, normalize="softmax"),
                      jit_compile=jit)
        history = model.fit(features, labels, batch_size=32, epochs=5, verbose=0, shuffle=False)
        runs[jit] = history.history["loss"], model.get_weights()
    losses, weights = runs[True]
    assert losses[-1] < 0.9 * losses[0]
    np.testing.assert_allclose(losses, runs[False][0], rtol=1e-5)
    for a, b in zip(weights, runs[False][1]):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_choice_of_path():
    with tf.device("/CPU:0"):
        x = tf.zeros((2, 3))
    assert not _tf_native.is_preferred(x)  # an eager CPU tensor goes to the kernels

    @tf.function
    def placed(x):
        return _tf_native.is_preferred(tf.identity(x))

    # in a graph without a device scope: the native path exactly when a GPU is visible
    assert bool(placed(x)) == bool(tf.config.list_logical_devices("GPU"))


def test_native_path_checks_eager_inputs(monkeypatch):
    # as on a GPU: eager tensors take the native path, which checks them first
    monkeypatch.setattr(_tf_native, "is_preferred", lambda p: True)
    tree = Tree.from_parents(*TREES["random"]())
    p = np.full((2, tree.n_bins), 1.0 / tree.n_bins)
    np.testing.assert_allclose(emd_loss(tf.constant([0, 1]), tf.constant(p), tree).numpy(),
                               emdtree.emd(p, np.eye(tree.n_bins)[[0, 1]], tree, 2.0), rtol=1e-12)
    bad = p.copy()
    bad[1, 0] = -bad[1, 0]
    with pytest.raises(ValueError, match="negative"):
        emd_loss(tf.constant([0, 1]), tf.constant(bad), tree)
    with pytest.raises(ValueError, match="class index"):
        emd_loss(tf.constant([0, tree.n_bins]), tf.constant(p), tree)
