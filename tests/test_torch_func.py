"""``torch.func`` transforms on ``emdtree.torch``: ``grad`` against
``backward``, ``vmap(grad(...))`` per-sample gradients against a loop,
``jacrev`` and ``jacfwd`` against the kernels' gradients, ``hessian`` against
``emdtree.emd_hessian``, and the custom-operator path alongside (eager double
backward against ``jvp`` of ``grad`` and ``emdtree.emd_hvp``, for any direction)."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import emdtree  # noqa: E402
from emdtree import Tree  # noqa: E402
from emdtree.torch import EMDLoss, emd_loss  # noqa: E402
from trees import random_tree  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

func = torch.func


@pytest.fixture(scope="module")
def tree():
    return Tree.from_parents(*random_tree(np.random.default_rng(7), 12, bins_on_internal=True))


def _dists(rng, shape):
    x = rng.random(shape) + 0.05
    return torch.tensor(x / x.sum(-1, keepdims=True), dtype=torch.float64)


@pytest.mark.parametrize("rho", [1.0, 1.5, 2.0])
def test_grad_equals_backward(tree, rho):
    rng = np.random.default_rng(1)
    logits = torch.tensor(rng.standard_normal((5, tree.n_bins)))
    labels = torch.tensor(rng.integers(0, tree.n_bins, 5))
    q = _dists(rng, (5, tree.n_bins))
    loss_fn = EMDLoss(tree, rho, normalize="softmax")
    for target in (labels, q):
        got = func.grad(loss_fn)(logits, target)
        x = logits.clone().requires_grad_()
        loss_fn(x, target).backward()
        torch.testing.assert_close(got, x.grad, rtol=1e-13, atol=1e-15)
    # with respect to a distribution target: the negative of the input's
    p = torch.softmax(logits, -1)
    d_p, d_q = func.grad(lambda p, q: emd_loss(p, q, tree, rho, reduction="sum"), argnums=(0, 1))(p, q)
    want = torch.from_numpy(emdtree.emd_grad(p.numpy(), q.numpy(), tree, rho))
    torch.testing.assert_close(d_p, want, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(d_q, -want, rtol=1e-12, atol=1e-14)


def test_per_sample_gradients(tree):
    rng = np.random.default_rng(2)
    model = torch.nn.Linear(4, tree.n_bins).double()
    params = {k: v.detach() for k, v in model.named_parameters()}
    x = torch.tensor(rng.standard_normal((6, 4)))
    labels = torch.tensor(rng.integers(0, tree.n_bins, 6))
    loss_fn = EMDLoss(tree, normalize="softmax")

    def loss(params, x, t):
        return loss_fn(func.functional_call(model, params, (x[None],)), t[None])

    per_sample = func.vmap(func.grad(loss), in_dims=(None, 0, 0))(params, x, labels)
    for i in range(6):
        model.zero_grad()
        loss_fn(model(x[i:i + 1]), labels[i:i + 1]).backward()
        for name, p in model.named_parameters():
            torch.testing.assert_close(per_sample[name][i], p.grad, rtol=1e-12, atol=1e-15)


def test_jacrev_jacfwd_and_hessian(tree):
    rng = np.random.default_rng(3)
    p, q = _dists(rng, (3, tree.n_bins)), _dists(rng, (3, tree.n_bins))
    per_row = lambda p: emd_loss(p, q, tree, 1.5, reduction="none")  # noqa: E731
    jac = func.jacrev(per_row)(p)
    grads = torch.from_numpy(emdtree.emd_grad(p.numpy(), q.numpy(), tree, 1.5))
    for r in range(3):
        torch.testing.assert_close(jac[r, r], grads[r], rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(jac[r, (r + 1) % 3], torch.zeros(tree.n_bins, dtype=torch.float64))
    torch.testing.assert_close(func.jacfwd(per_row)(p), jac, rtol=1e-12, atol=1e-14)
    for rho in (1.5, 2.0):
        hess = func.hessian(lambda x, rho=rho: emd_loss(x, q[0], tree, rho, reduction="sum"))(p[0])
        want = emdtree.emd_hessian(p[0].numpy(), q[0].numpy(), tree, rho)
        torch.testing.assert_close(hess, torch.from_numpy(want), rtol=1e-10, atol=1e-12)


def test_custom_operator_double_backward_equals_jvp_of_grad(tree):
    rng = np.random.default_rng(4)
    p, q = _dists(rng, (2, tree.n_bins)), _dists(rng, (2, tree.n_bins))
    v = torch.tensor(rng.standard_normal((2, tree.n_bins)))
    x = p.clone().requires_grad_()
    (g,) = torch.autograd.grad(emd_loss(x, q, tree, 1.5, reduction="sum"), x, create_graph=True)
    (eager,) = torch.autograd.grad(g, x, v)  # the custom operators' P H P v
    _, transformed = func.jvp(func.grad(lambda x: emd_loss(x, q, tree, 1.5, reduction="sum")), (p,), (v,))
    torch.testing.assert_close(eager, transformed, rtol=1e-10, atol=1e-12)
    want = emdtree.emd_hvp(p.numpy(), q.numpy(), v.numpy(), tree, 1.5)
    torch.testing.assert_close(transformed, torch.from_numpy(want), rtol=1e-10, atol=1e-12)
