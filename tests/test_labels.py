"""Class-index targets: the kernels' label path against explicit one-hot targets."""

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal
from trees import TREE_CASES, random_masses

import emdtree
from emdtree.engine.labels import value_grad_labels


def _one_hot(labels, n_bins, dtype):
    out = np.zeros(labels.shape + (n_bins,), dtype=dtype)
    np.put_along_axis(out, labels[..., None], 1.0, axis=-1)
    return out


@pytest.mark.parametrize("case", TREE_CASES, ids=[c[0] for c in TREE_CASES])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("rho", [1.0, 2.0, 1.5])
def test_labels_equal_one_hot_targets(case, dtype, rho):
    tree = emdtree.Tree.from_parents(*case[1]())
    rng = np.random.default_rng(5)
    for batch in [(), (3,), (40,), (2, 37)]:  # one sample, row kernel, blocks + left-overs
        p, _ = random_masses(rng, tree.n_bins, batch=batch, dtype=dtype)
        labels = rng.integers(0, tree.n_bins, size=batch)
        value, grad = value_grad_labels(p, labels, tree, rho)
        want_value, want_grad = emdtree.emd_value_and_grad(p, _one_hot(labels, tree.n_bins, dtype), tree, rho)
        assert value.dtype == want_value.dtype and grad.dtype == want_grad.dtype
        tol = 1e-5 if dtype == np.float32 else 1e-12
        assert_allclose(value, want_value, rtol=tol, atol=tol)
        assert_allclose(grad, want_grad, rtol=tol, atol=tol)


def test_labels_serial_and_parallel(serial_and_parallel):
    tree = emdtree.datasets.imagenet_wordnet()
    rng = np.random.default_rng(2)
    p, _ = random_masses(rng, tree.n_bins, batch=(100,))
    labels = rng.integers(0, tree.n_bins, size=100)
    serial, parallel = serial_and_parallel(lambda: value_grad_labels(p, labels, tree, 2.0))
    assert_array_equal(serial[0], parallel[0])
    assert_array_equal(serial[1], parallel[1])


def test_labels_on_the_bin_axis_and_value_only():
    rng = np.random.default_rng(3)
    p, _ = random_masses(rng, 6, batch=(4, 5))
    labels = rng.integers(0, 6, size=(4, 5))
    p_mid = np.moveaxis(p, -1, 1)
    value, grad = value_grad_labels(p_mid, labels, None, 1.0, axis=1)
    want_value, want_grad = emdtree.emd_value_and_grad(p, _one_hot(labels, 6, p.dtype), rho=1.0)
    assert_allclose(value, want_value, rtol=1e-12)
    assert_allclose(grad, np.moveaxis(want_grad, -1, 1), rtol=1e-12, atol=1e-15)
    only, none = value_grad_labels(p, labels, None, 1.0, want_grad=False)
    assert none is None
    assert_allclose(only, want_value, rtol=1e-12)


def test_labels_normalize_l1_differentiates_the_raw_masses():
    rng = np.random.default_rng(4)
    counts = rng.random((3, 8)) * 5
    labels = np.array([0, 7, 3])
    value, grad = value_grad_labels(counts, labels, None, 2.0, normalize="l1")
    target = _one_hot(labels, 8, float) * counts.sum(1, keepdims=True)
    want_value, want_grad = emdtree.emd_value_and_grad(counts, target, rho=2.0, normalize="l1")
    assert_allclose(value, want_value, rtol=1e-12)
    assert_allclose(grad, want_grad, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize(
    "labels, error, match",
    [
        (np.array([0, 4]), ValueError, r"labels\[1\] = 4 is not a class index in \[0, 3\] \(4 bins\)"),
        (np.array([-1, 0]), ValueError, r"labels\[0\] = -1 is not a class index"),
        (np.array([0.0, 1.0]), TypeError, "labels must be integer class indices"),
        (np.array([0, 1, 2]), ValueError, r"labels has shape \(3,\); expected \(2,\)"),
    ],
)
def test_bad_labels(labels, error, match):
    p = np.full((2, 4), 0.25)
    with pytest.raises(error, match=match):
        value_grad_labels(p, labels)


def test_predictions_must_sum_to_one_and_be_valid():
    labels = np.array([0, 1])
    with pytest.raises(ValueError, match=r"p at batch index \(1,\) sums to 2.0: .* must sum to 1"):
        value_grad_labels(np.array([[0.5, 0.5], [1.0, 1.0]]), labels)
    with pytest.raises(ValueError, match=r"p\[0, 1\] = -0.5 is negative"):
        value_grad_labels(np.array([[1.5, -0.5], [0.5, 0.5]]), labels)
    with pytest.raises(ValueError, match=r"p\[1, 0\] = nan is not finite"):
        value_grad_labels(np.array([[0.5, 0.5], [np.nan, 0.5]]), labels)
