"""The PyTorch loss ``emdtree.torch``: values against ``emdtree.emd`` and the
oracle, gradients against ``emdtree.emd_grad``, ``gradcheck`` and
``gradgradcheck`` in float64, class indices against one-hot targets,
reductions, ``vmap``, ``torch.compile(fullgraph=True)``, float32 against
float64, a short training run, and the errors for bad input."""

import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import emdtree  # noqa: E402
import oracle  # noqa: E402
from emdtree import Tree  # noqa: E402
from emdtree.torch import EMDLoss, emd_loss  # noqa: E402
from trees import random_tree  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def case():
    """A random weighted tree with bins on some internal nodes, and its arrays."""
    rng = np.random.default_rng(7)
    parents, weights, bins = random_tree(rng, 12, bins_on_internal=True)
    return parents, weights, bins, Tree.from_parents(parents, weights, bins)


def _dists(rng, shape, dtype=torch.float64):
    x = rng.random(shape) + 0.05
    return torch.tensor(x / x.sum(-1, keepdims=True), dtype=dtype)


@pytest.mark.parametrize("rho", [1.0, 1.5, 2.0])
def test_value_matches_emd_and_oracle(case, rho):
    parents, weights, bins, tree = case
    rng = np.random.default_rng(1)
    p, q = _dists(rng, (5, tree.n_bins)), _dists(rng, (5, tree.n_bins))
    got = emd_loss(p, q, tree, rho, reduction="none")
    assert got.dtype == torch.float64 and got.shape == (5,)
    np.testing.assert_allclose(got.numpy(), emdtree.emd(p.numpy(), q.numpy(), tree, rho), rtol=1e-12)
    want = [oracle.emd(p[i].numpy(), q[i].numpy(), parents, weights, bins, rho) for i in range(5)]
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-10)


def test_axis_and_batch_shape(case):
    tree = case[3]
    rng = np.random.default_rng(2)
    p, q = _dists(rng, (2, 3, tree.n_bins)), _dists(rng, (2, 3, tree.n_bins))
    want = emd_loss(p, q, tree, reduction="none")
    assert want.shape == (2, 3)
    got = emd_loss(p.movedim(-1, 0), q.movedim(-1, 0), tree, reduction="none", axis=0)
    torch.testing.assert_close(got, want, rtol=1e-13, atol=0)
    labels = torch.tensor([[0, 1, 2], [3, 4, 0]])
    got = emd_loss(p.movedim(-1, 1), labels, tree, reduction="none", axis=1)
    torch.testing.assert_close(got, emd_loss(p, labels, tree, reduction="none"), rtol=1e-13, atol=0)


def test_reductions_and_module(case):
    tree = case[3]
    rng = np.random.default_rng(3)
    x, q = torch.tensor(rng.standard_normal((6, tree.n_bins))), _dists(rng, (6, tree.n_bins))
    per = emd_loss(x, q, tree, normalize="softmax", reduction="none")
    torch.testing.assert_close(emd_loss(x, q, tree, normalize="softmax"), per.mean())
    torch.testing.assert_close(emd_loss(x, q, tree, normalize="softmax", reduction="sum"), per.sum())
    module = EMDLoss(tree, normalize="softmax", reduction="sum")
    torch.testing.assert_close(module(x, q), per.sum())
    assert len(module.state_dict()) == 0 and module.to(torch.float32)(x, q) == module(x, q)
    torch.testing.assert_close(per, emd_loss(torch.softmax(x, -1), q, tree, reduction="none"))
    l1 = emd_loss(x.exp(), q, tree, normalize="l1", reduction="none")
    torch.testing.assert_close(l1, per, rtol=1e-12, atol=0)


@pytest.mark.parametrize("rho", [1.0, 1.5, 2.0])
def test_gradients_match_numpy_api(case, rho):
    tree = case[3]
    rng = np.random.default_rng(4)
    p = _dists(rng, (4, tree.n_bins)).requires_grad_()
    q = _dists(rng, (4, tree.n_bins)).requires_grad_()
    upstream = torch.tensor(rng.standard_normal(4))
    emd_loss(p, q, tree, rho, reduction="none").backward(upstream)
    grad = emdtree.emd_grad(p.detach().numpy(), q.detach().numpy(), tree, rho)
    want = upstream.numpy()[:, None] * grad
    np.testing.assert_allclose(p.grad.numpy(), want, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(q.grad.numpy(), -want, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(p.grad.sum(-1).numpy(), 0.0, atol=1e-13)  # dirt-conserving


def test_labels_equal_one_hot(case):
    tree = case[3]
    rng = np.random.default_rng(5)
    labels = torch.tensor(rng.integers(0, tree.n_bins, 7))
    one_hot = torch.nn.functional.one_hot(labels, tree.n_bins).double()
    x1 = torch.tensor(rng.standard_normal((7, tree.n_bins)), requires_grad=True)
    x2 = x1.detach().clone().requires_grad_()
    a = emd_loss(x1, labels, tree, 1.5, normalize="softmax", reduction="sum")
    b = emd_loss(x2, one_hot, tree, 1.5, normalize="softmax", reduction="sum")
    torch.testing.assert_close(a, b, rtol=1e-14, atol=0)
    a.backward()
    b.backward()
    torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-13, atol=1e-15)
    torch.testing.assert_close(emd_loss(x1, labels.int(), tree, normalize="softmax"),
                               emd_loss(x1, labels, tree, normalize="softmax"))


@pytest.mark.parametrize("rho", [2.0, 1.5])
def test_gradcheck_and_gradgradcheck(case, rho):
    # Through a softmax: its Jacobian maps the dirt-conserving gradient and the
    # plain one alike, so finite differences in every direction must agree.
    # Normal logits keep |phi| well away from 0 on this tree (rho = 1.5).
    tree = case[3]
    rng = np.random.default_rng(6)
    x = torch.tensor(rng.standard_normal((3, tree.n_bins)), requires_grad=True)
    y = torch.tensor(rng.standard_normal((3, tree.n_bins)), requires_grad=True)

    def dist(x, y):
        return emd_loss(torch.softmax(x, -1), torch.softmax(y, -1), tree, rho, reduction="none")

    def labels(x):
        return emd_loss(x, torch.tensor([0, 3, 5]), tree, rho, normalize="softmax", reduction="sum")

    assert torch.autograd.gradcheck(dist, (x, y))
    assert torch.autograd.gradgradcheck(dist, (x, y))
    assert torch.autograd.gradcheck(labels, (x,))
    assert torch.autograd.gradgradcheck(labels, (x,))


def _projected_hessian_times(p, q, parents, weights, bins, v, rho):
    """``P H P v`` with ``H = A^T diag(h) A`` (paper eq. 12 for rho = 2) and ``P = I - 11^T / n``."""
    f = oracle.phi(p, q, parents, bins)
    A = oracle.subtree_bins(parents, bins).astype(float)
    h = np.array([0.0 if parents[i] == -1 else rho * (rho - 1) * weights[i] * abs(f[i]) ** (rho - 2)
                  for i in range(len(parents))])
    out = A.T @ (h * (A @ (v - v.mean())))
    return out - out.mean()


@pytest.mark.parametrize("rho", [1.5, 2.0])
def test_double_backward_is_hessian_vector_product(case, rho):
    # the derivative of the dirt-conserving gradient P g is P H P (symmetric) in reverse mode too
    parents, weights, bins, tree = case
    rng = np.random.default_rng(8)
    p = _dists(rng, (2, tree.n_bins)).requires_grad_()
    q = _dists(rng, (2, tree.n_bins)).requires_grad_()
    v = torch.tensor(rng.standard_normal((2, tree.n_bins)))
    (g,) = torch.autograd.grad(emd_loss(p, q, tree, rho, reduction="sum"), p, create_graph=True)
    hv_p, hv_q = torch.autograd.grad((g * v).sum(), (p, q))
    for r in range(2):
        want = _projected_hessian_times(p[r].detach().numpy(), q[r].detach().numpy(), parents, weights,
                                        bins, v[r].numpy(), rho)
        np.testing.assert_allclose(hv_p[r].numpy(), want, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(hv_q[r].numpy(), -want, rtol=1e-10, atol=1e-12)
    projected = emdtree.emd_hvp(p.detach().numpy(), q.detach().numpy(), v.numpy(), tree, rho)
    np.testing.assert_allclose(hv_p.numpy(), projected, rtol=1e-10, atol=1e-12)


def test_third_derivative_raises(case):
    tree = case[3]
    p = _dists(np.random.default_rng(12), (2, tree.n_bins)).requires_grad_()
    (g,) = torch.autograd.grad(emd_loss(p, torch.tensor([0, 1]), tree, 1.5, reduction="sum"), p,
                               create_graph=True)
    (h,) = torch.autograd.grad((g * g).sum(), p, create_graph=True)
    with pytest.raises(NotImplementedError, match="third derivatives"):
        torch.autograd.grad(h.sum(), p)


def test_third_derivative_of_rho_two(case):
    # the Hessian is constant: d/dp sum(P H P g) = P H P (P H P 1) = 0 since P 1 = 0; with g . v
    # instead, the derivative of <P H P g, v> is P H P (P H P v)
    tree = case[3]
    rng = np.random.default_rng(13)
    p = _dists(rng, (1, tree.n_bins)).requires_grad_()
    v = torch.tensor(rng.standard_normal((1, tree.n_bins)))
    (g,) = torch.autograd.grad(emd_loss(p, torch.tensor([2]), tree, reduction="sum"), p, create_graph=True)
    (h,) = torch.autograd.grad((g * g).sum(), p, create_graph=True)
    (third,) = torch.autograd.grad((h * v).sum(), p)
    hvp = emdtree.emd_hvp(p.detach().numpy(), np.eye(tree.n_bins)[[2]], v.numpy(), tree)
    hhvp = emdtree.emd_hvp(p.detach().numpy(), np.eye(tree.n_bins)[[2]], 2 * hvp, tree)
    np.testing.assert_allclose(third.numpy(), hhvp, rtol=1e-10, atol=1e-12)


def test_float32_against_float64():
    tree = emdtree.datasets.imagenet_wordnet()
    rng = np.random.default_rng(9)
    x64 = torch.tensor(rng.standard_normal((16, tree.n_bins)) * 3, requires_grad=True)
    x32 = x64.detach().float().requires_grad_()
    labels = torch.tensor(rng.integers(0, tree.n_bins, 16))
    v64 = emd_loss(x64, labels, tree, normalize="softmax", reduction="none")
    v32 = emd_loss(x32, labels, tree, normalize="softmax", reduction="none")
    assert v32.dtype == torch.float32
    v64.sum().backward()
    v32.sum().backward()
    # measured: relative error of the values ~3e-7, of the gradients ~1e-6 (in
    # units of the largest entry); the bounds leave a margin of about 10x
    np.testing.assert_allclose(v32.detach().numpy(), v64.detach().numpy(), rtol=5e-6)
    scale = x64.grad.abs().max().item()
    assert (x32.grad.double() - x64.grad).abs().max().item() < 1e-5 * scale


def test_vmap_equals_batch(case):
    tree = case[3]
    rng = np.random.default_rng(10)
    x = torch.tensor(rng.standard_normal((3, 4, tree.n_bins)))
    q = _dists(rng, (4, tree.n_bins))
    labels = torch.tensor(rng.integers(0, tree.n_bins, (3, 4)))
    got = torch.vmap(lambda x: emd_loss(x, q, tree, normalize="softmax", reduction="none"))(x)
    want = emd_loss(x, q.expand(3, 4, -1), tree, normalize="softmax", reduction="none")
    torch.testing.assert_close(got, want, rtol=1e-14, atol=0)
    got = torch.vmap(lambda x, t: emd_loss(x, t, tree, normalize="softmax"))(x, labels)
    want = emd_loss(x, labels, tree, normalize="softmax", reduction="none").mean(-1)
    torch.testing.assert_close(got, want, rtol=1e-14, atol=0)


def test_compile_fullgraph(case):
    # aot_eager traces the fake implementations and the autograd formula like
    # inductor does, without its code generation (which would take ~20-50 s)
    tree = case[3]
    rng = np.random.default_rng(11)
    x = torch.tensor(rng.standard_normal((8, tree.n_bins)), dtype=torch.float32, requires_grad=True)
    labels = torch.tensor(rng.integers(0, tree.n_bins, 8))
    loss_fn = EMDLoss(tree, normalize="softmax")
    compiled = torch.compile(lambda x, t: loss_fn(x, t) + torch.nn.functional.cross_entropy(x, t),
                             fullgraph=True, backend="aot_eager")
    got = compiled(x, labels)
    (g_got,) = torch.autograd.grad(got, x)
    want = loss_fn(x, labels) + torch.nn.functional.cross_entropy(x, labels)
    (g_want,) = torch.autograd.grad(want, x)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(g_got, g_want)


def test_training_reduces_loss(case):
    tree = case[3]
    torch.manual_seed(0)
    features = torch.randn(64, 5)
    labels = (features @ torch.randn(5, tree.n_bins)).argmax(-1)
    model = torch.nn.Linear(5, tree.n_bins)
    loss_fn = EMDLoss(tree, normalize="softmax")
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    losses = []
    for _ in range(20):
        opt.zero_grad()
        loss = loss_fn(model(features), labels)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]


def test_bad_inputs(case):
    tree = case[3]
    n = tree.n_bins
    p = torch.full((2, n), 1.0 / n)
    with pytest.raises(ValueError, match=r"target has shape \(2, 3\) but input has shape"):
        emd_loss(p, torch.full((2, 3), 1 / 3), tree)
    with pytest.raises(ValueError, match=r"expected \(2,\), got \(3,\)"):
        emd_loss(p, torch.tensor([0, 1, 2]), tree)
    with pytest.raises(ValueError, match=rf"target\[1\] = {n} is not a class index in \[0, {n - 1}\]"):
        emd_loss(p, torch.tensor([0, n]), tree)
    with pytest.raises(ValueError, match=r"target\[0\] = -1 is not a class index"):
        emd_loss(p, torch.tensor([-1, 0]), tree)
    bad = p.clone()
    bad[1, 2] = -0.1
    bad[1, 3] += 0.1
    with pytest.raises(ValueError, match=r"input\[1, 2\] = -0.1.* is negative"):
        emd_loss(bad, torch.tensor([0, 1]), tree)
    with pytest.raises(ValueError, match=r"input at batch index \(0,\) sums to 2.0.*must sum to 1"):
        emd_loss(2 * p, torch.tensor([0, 1]), tree)
    with pytest.raises(ValueError, match="must have equal total mass"):
        emd_loss(2 * p, p, tree)
    with pytest.raises(TypeError, match="input must be a floating-point tensor"):
        emd_loss(torch.ones((2, n), dtype=torch.long), torch.tensor([0, 1]), tree)
    with pytest.raises(TypeError, match="target must hold probabilities or integer class indices"):
        emd_loss(p, torch.ones(2, dtype=torch.bool), tree)
    with pytest.raises(TypeError, match="input must be a torch.Tensor"):
        emd_loss(p.numpy(), torch.tensor([0, 1]), tree)
    with pytest.raises(ValueError, match=f"the bin axis has length {n + 1} but the tree has {n} bins"):
        emd_loss(torch.full((2, n + 1), 1.0 / (n + 1)), torch.tensor([0, 1]), tree)
    with pytest.raises(ValueError, match="reduction must be"):
        emd_loss(p, torch.tensor([0, 1]), tree, reduction="batchmean")
    with pytest.raises(ValueError, match="normalize must be"):
        EMDLoss(tree, normalize="softplus")
    with pytest.raises(ValueError, match="rho must be a finite number >= 1"):
        emd_loss(p, torch.tensor([0, 1]), tree, rho=0.5)
    with pytest.raises(ValueError, match="axis 2 is out of bounds"):
        emd_loss(p, torch.tensor([0, 1]), tree, axis=2)


def test_frameworks_load_lazily_and_name_their_extra():
    code = (
        "import sys, emdtree\n"
        "assert not {'torch', 'tensorflow', 'jax'} & set(sys.modules), 'framework imported'\n"
        "for name in ('torch', 'tensorflow', 'jax'):\n"
        "    sys.modules[name] = None\n"
        "    try:\n"
        "        getattr(emdtree, name)\n"
        "    except ImportError as exc:\n"
        "        assert f'pip install \"emdtree[{name}]\"' in str(exc), exc\n"
        "    else:\n"
        "        raise AssertionError(name)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("requires_grad", [False, True])
@pytest.mark.parametrize("n_bins", [5, 3000])  # a small chain runs as torch operations, a large one on the kernels
def test_eager_forward_mode_is_refused_or_exact_never_dropped(requires_grad, n_bins):
    import torch.autograd.forward_ad as fwAD

    gen = torch.Generator().manual_seed(0)
    tree = emdtree.Tree.chain(n_bins)
    x = torch.randn(64, n_bins, generator=gen, dtype=torch.float64)
    q = torch.softmax(torch.randn(64, n_bins, generator=gen, dtype=torch.float64), -1)
    v = torch.randn(64, n_bins, generator=gen, dtype=torch.float64)
    for loss, inp in [(EMDLoss(tree, rho=2, normalize="softmax"), x),
                      (EMDLoss(tree, rho=2), torch.softmax(x, -1))]:
        want = torch.func.jvp(lambda a, loss=loss: loss(a, q), (inp,), (v,))[1]
        with fwAD.dual_level():
            dual = fwAD.make_dual(inp.clone().requires_grad_(requires_grad), v)
            try:
                out = loss(dual, q)
            except NotImplementedError as e:
                assert "torch.func.jvp" in str(e)
                continue
            tangent = fwAD.unpack_dual(out).tangent
        assert tangent is not None
        torch.testing.assert_close(tangent, want)
