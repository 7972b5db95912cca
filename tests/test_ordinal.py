"""Ordinal classes: EMD^2 on a unit chain is the ranked probability score, and the
squared EMD loss of Hou et al. as dlordinal implements it (docs/ordinal.rst)."""

from __future__ import annotations

import numpy as np
import pytest

import emdtree


def rps(p: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The ranked probability score written out: squared gaps of the cumulative sums."""
    q = np.eye(p.shape[-1])[labels]
    return np.sum((np.cumsum(p, axis=-1) - np.cumsum(q, axis=-1)) ** 2, axis=-1)


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


@pytest.mark.parametrize("n_classes", [2, 3, 5, 10, 100])
def test_emd2_on_a_chain_is_the_ranked_probability_score(n_classes):
    rng = np.random.default_rng(n_classes)
    p = softmax(3 * rng.standard_normal((64, n_classes)))
    labels = rng.integers(0, n_classes, 64)
    want = rps(p, labels)
    q = np.eye(n_classes)[labels]
    for tree in (emdtree.Tree.chain(n_classes), None):
        np.testing.assert_allclose(emdtree.emd(p, q, tree, rho=2), want, rtol=1e-12, atol=1e-15)
    # from logits, as the losses take them
    z = np.log(p)
    got = emdtree.emd(z, q, emdtree.Tree.chain(n_classes), rho=2, normalize="softmax")
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-15)
    got32 = emdtree.emd(p.astype(np.float32), q.astype(np.float32), emdtree.Tree.chain(n_classes), rho=2)
    assert got32.dtype == np.float32
    np.testing.assert_allclose(got32, want, rtol=n_classes * 4e-7, atol=1e-6)


def test_the_documented_example():
    p = np.array([0.05, 0.15, 0.2, 0.4, 0.2])
    assert rps(p, np.array(1)) == pytest.approx(1.0425, rel=1e-12)
    value = float(emdtree.emd(p, np.eye(5)[1], emdtree.Tree.chain(5), rho=2))
    assert value == pytest.approx(1.0425, rel=1e-12)


def test_spacing_weights_each_gap():
    p = np.array([0.5, 0.25, 0.25])
    q = np.array([0.0, 0.0, 1.0])
    gaps = np.cumsum(p - q)[:-1]
    chain = emdtree.Tree.chain(3, spacing=[1.0, 3.0])
    assert float(emdtree.emd(p, q, chain, rho=2)) == pytest.approx(1.0 * gaps[0] ** 2 + 3.0 * gaps[1] ** 2)


@pytest.mark.parametrize("dtype_name", ["float32", "float64"])
@pytest.mark.parametrize("n_classes, rows", [(3, 64), (5, 64), (10, 64), (100, 64), (100, 2048)])
def test_torch_loss_equals_dlordinal(n_classes, rows, dtype_name):
    # 2,048 rows of 100 classes: more entries than the loss computes in torch operations,
    # so emdtree's kernels run
    torch = pytest.importorskip("torch")
    dlordinal_losses = pytest.importorskip("dlordinal.losses")
    import emdtree.torch

    dtype = getattr(torch, dtype_name)
    ours = emdtree.torch.EMDLoss(emdtree.Tree.chain(n_classes), rho=2, normalize="softmax")
    theirs = dlordinal_losses.EMDLoss(num_classes=n_classes)
    gen = torch.Generator().manual_seed(n_classes)
    # rounding: a few units in the last place of the dtype
    rtol = 1e-6 if dtype_name == "float32" else 1e-15
    for _ in range(10 if rows < 1000 else 2):
        logits = (3 * torch.randn(rows, n_classes, generator=gen, dtype=dtype)).requires_grad_(True)
        labels = torch.randint(0, n_classes, (rows,), generator=gen)
        for target in (labels, torch.nn.functional.one_hot(labels, n_classes).to(dtype)):
            a, b = ours(logits, target), theirs(logits, target)
            assert a.dtype == b.dtype == dtype
            assert abs(a.item() - b.item()) <= rtol * abs(b.item())
            grad_a, = torch.autograd.grad(a, logits)
            grad_b, = torch.autograd.grad(b, logits)
            assert (grad_a - grad_b).abs().max().item() <= 10 * rtol * grad_b.abs().max().item()
        # and both are the score of the softmax, averaged over the batch
        p = torch.softmax(logits.detach().double(), dim=1).numpy()
        assert a.item() == pytest.approx(rps(p, labels.numpy()).mean(), rel=10 * rtol)
