"""The torch loss's fused route for softmax losses (eager CPU calls that want a gradient: the
softmax and the kernels in one forward pass that also gives the gradient with respect to the
logits) against the custom operators' route: values, gradients with respect to logits and
distribution targets, upstream gradients, retained graphs, batched gradients, second
derivatives, ``-inf`` masks, batch shapes, and the same messages for bad input; and that the
route is taken where it should be, and only there."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from emdtree import Tree  # noqa: E402
from emdtree.frameworks import torch as adapter  # noqa: E402
from emdtree.torch import emd_loss  # noqa: E402
from trees import random_tree  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def tree():
    """A tree that is not a chain (the small-chain route leaves it alone), bins on internal nodes."""
    rng = np.random.default_rng(17)
    return Tree.from_parents(*random_tree(rng, 14, bins_on_internal=True))


@pytest.fixture
def route(monkeypatch):
    """``route("fused")`` or ``route("operators")`` forces a route; the list returned records,
    for each call into the kernels, whether it went the fused way."""
    calls = []
    call = adapter._call
    choose = adapter._softmax_route

    def spy(*args):
        calls.append(len(args) > 6 and bool(args[6]))
        return call(*args)

    monkeypatch.setattr(adapter, "_call", spy)

    def force(name):
        monkeypatch.setattr(adapter, "_softmax_route", choose if name == "fused" else lambda z, q: False)
        calls.clear()
        return calls

    return force


def _case(tree, seed, rows, dtype, labels, mask=True):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, tree.n_bins, generator=g, dtype=dtype) * 2
    if mask:
        x[0, 1] = -float("inf")  # a masked class
    if labels:
        t = torch.randint(0, tree.n_bins, (rows,), generator=g)
    else:
        t = torch.softmax(torch.randn(rows, tree.n_bins, generator=g, dtype=dtype), -1)
    return x, t


def _derivatives(x, t, tree, rho, labels, reduction):
    """The loss, first derivatives (logits, and a distribution target) and a second
    derivative (the gradient's change along a fixed direction)."""
    z = x.clone().requires_grad_()
    tt = t.clone().requires_grad_(not labels)
    loss = emd_loss(z, tt, tree, rho, reduction=reduction, normalize="softmax")
    upstream = torch.linspace(0.5, 2.0, loss.numel(), dtype=loss.dtype).reshape(loss.shape)
    grads = torch.autograd.grad(loss, [z] + ([] if labels else [tt]), upstream, create_graph=True)
    direction = torch.linspace(-1, 1, x.shape[-1], dtype=x.dtype)
    second = torch.autograd.grad((grads[0] * direction).sum(), z)[0]
    return [loss.detach(), *(g.detach() for g in grads), second]


def _first(x, t, tree):
    """The mean loss and its gradient with respect to the logits."""
    z = x.clone().requires_grad_()
    loss = emd_loss(z, t, tree, normalize="softmax")
    loss.backward()
    return loss.detach(), z.grad


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("labels", [True, False])
@pytest.mark.parametrize("rho", [1.0, 1.5, 2.0, 3.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fused_equals_operators(route, tree, reduction, labels, rho, dtype):
    x, t = _case(tree, 3, 6, dtype, labels)
    out = {}
    for name in ("fused", "operators"):
        calls = route(name)
        out[name] = _derivatives(x, t, tree, rho, labels, reduction)
        assert calls and all(c == (name == "fused") for c in calls)
    tol = 2e-6 if dtype == torch.float32 else 1e-12
    for a, b in zip(out["fused"], out["operators"]):
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=tol, atol=tol)
    # the masked class has probability 0 and no gradient
    assert out["fused"][1][0, 1] == 0


def test_upstream_gradients_and_accumulation(route, tree):
    x, t = _case(tree, 4, 5, torch.float64, labels=True)
    route("operators")
    _, want = _first(x, t, tree)
    route("fused")
    z = x.clone().requires_grad_()
    (3.0 * emd_loss(z, t, tree, normalize="softmax")).backward()
    np.testing.assert_allclose(z.grad.numpy(), 3.0 * want.numpy(), rtol=1e-12, atol=1e-15)
    emd_loss(z, t, tree, normalize="softmax").backward()  # adds to the gradient already there
    np.testing.assert_allclose(z.grad.numpy(), 4.0 * want.numpy(), rtol=1e-12, atol=1e-15)


def test_retained_graph_gives_the_gradient_again(route, tree):
    """The backward pass hands its buffer to the caller: changing the gradient it returned
    must not change a second backward through the retained graph."""
    route("fused")
    for labels in (True, False):
        x, t = _case(tree, 5, 4, torch.float32, labels)
        t = t if labels else t.clone().requires_grad_()
        z = x.clone().requires_grad_()
        loss = emd_loss(z, t, tree, normalize="softmax")
        first = torch.autograd.grad(loss, [z] if labels else [z, t], retain_graph=True)
        want = [g.clone() for g in first]
        for g in first:
            g.mul_(0.0)
        second = torch.autograd.grad(loss, [z] if labels else [z, t])
        for a, b in zip(second, want):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("reduction", ["none", "sum"])
def test_batched_upstream_gradients(route, tree, reduction):
    """``is_grads_batched`` runs the backward pass under ``vmap``: as a loop over the rows."""
    route("fused")
    x, t = _case(tree, 6, 3, torch.float64, labels=False, mask=False)
    z = x.clone().requires_grad_()
    tt = t.clone().requires_grad_()
    loss = emd_loss(z, tt, tree, reduction=reduction, normalize="softmax")
    ups = torch.stack([torch.full_like(loss, k + 1.0) for k in range(3)]) if reduction == "sum" else \
        torch.eye(3, dtype=torch.float64)
    got = torch.autograd.grad(loss, [z, tt], ups, retain_graph=True, is_grads_batched=True)
    for k in range(3):
        want = torch.autograd.grad(loss, [z, tt], ups[k], retain_graph=True)
        for a, b in zip(got, want):
            torch.testing.assert_close(a[k], b, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("rho", [1.5, 2.0])
def test_gradgradcheck(route, tree, rho):
    """Finite differences of the loss and of its gradient with respect to the logits (the
    target's gradient is the projected one, which finite differences of unequal totals do not
    give)."""
    calls = route("fused")
    x, t = _case(tree, 7, 3, torch.float64, labels=False, mask=False)
    z = x.clone().requires_grad_()
    labels = torch.tensor([0, 3, 5])
    for target in (t, labels):
        def loss(z):
            return emd_loss(z, target, tree, rho, normalize="softmax")

        assert torch.autograd.gradcheck(loss, (z,))
        assert torch.autograd.gradgradcheck(loss, (z,))
    assert calls and all(calls)


@pytest.mark.parametrize("shape", [(3, 4), (12,)])
def test_axis_and_batch_shape(route, tree, shape):
    """A bin axis in the middle (a copy when flattened) or first (a strided view of rows)."""
    x, t = _case(tree, 8, 12, torch.float32, labels=True, mask=False)
    x, t = x.reshape(*shape, -1).movedim(-1, 1 if len(shape) == 2 else 0), t.reshape(shape)
    out = {}
    for name in ("fused", "operators"):
        calls = route(name)
        z = x.clone().requires_grad_()
        loss = emd_loss(z, t, tree, reduction="none", normalize="softmax", axis=1 if len(shape) == 2 else 0)
        loss.backward(torch.ones_like(loss))
        out[name] = (loss.detach(), z.grad)
        assert calls == [name == "fused"]
    assert out["fused"][0].shape == shape
    for a, b in zip(out["fused"], out["operators"]):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=2e-6, atol=2e-7)


def test_route_choice(route, tree):
    calls = route("fused")
    x, t = _case(tree, 9, 4, torch.float32, labels=True)
    z = x.clone().requires_grad_()
    emd_loss(z, t, tree, normalize="softmax")
    assert calls == [True]
    for run in (lambda: emd_loss(x, t, tree, normalize="softmax"),  # no gradient wanted
                lambda: emd_loss(z.half(), t, tree, normalize="softmax"),  # values cast before the mean
                lambda: emd_loss(torch.softmax(z, -1), t, tree)):  # no softmax in the loss
        calls.clear()
        run()
        assert calls == [False]
    calls.clear()
    with torch.no_grad():
        emd_loss(z, t, tree, normalize="softmax")
    assert calls == [False]
    calls.clear()
    torch.func.grad(lambda z: emd_loss(z, t, tree, normalize="softmax"))(x)
    assert calls == [False]


def test_half_input_goes_the_operators_way(route, tree):
    x, t = _case(tree, 10, 4, torch.float32, labels=True, mask=False)
    route("fused")
    z = x.half().requires_grad_()
    loss = emd_loss(z, t, tree, normalize="softmax")
    loss.backward()
    assert loss.dtype == torch.float16 and z.grad.dtype == torch.float16
    route("operators")
    z2 = x.half().requires_grad_()
    emd_loss(z2, t, tree, normalize="softmax").backward()
    torch.testing.assert_close(z.grad, z2.grad, rtol=0, atol=0)


def _set(a, index, value):
    a = a.clone()
    a[index] = value
    return a


BAD = {
    "+inf logit": lambda x, t: (_set(x, (1, 2), float("inf")), t),
    "nan logit": lambda x, t: (_set(x, (2, 0), float("nan")), t),
    "row of -inf": lambda x, t: (_set(x, 3, -float("inf")), t),
    "label too large": lambda x, t: (x, _set(t, 2, 99)),
    "negative label": lambda x, t: (x, _set(t, 0, -1)),
}

BAD_DIST = {
    "target total": lambda t: t * 1.01,
    "negative target": lambda t: _set(t, (1, 0), -0.01),
    "nan target": lambda t: _set(t, (1, 0), float("nan")),
}


def _message(route, name, x, t, tree):
    calls = route(name)
    with pytest.raises(ValueError) as info:
        emd_loss(x.clone().requires_grad_(), t.clone(), tree, 2.0, normalize="softmax")
    assert calls == [name == "fused"]
    return str(info.value)


@pytest.mark.parametrize("bad", sorted(BAD))
def test_bad_input_same_message(route, tree, bad):
    x, t = _case(tree, 11, 5, torch.float32, labels=True, mask=False)
    x, t = BAD[bad](x, t)
    fused, operators = _message(route, "fused", x, t, tree), _message(route, "operators", x, t, tree)
    assert fused == operators
    assert ("input[" if "logit" in bad or "-inf" in bad else "target") in fused


@pytest.mark.parametrize("bad", sorted(BAD_DIST))
def test_bad_distribution_target_same_message(route, tree, bad):
    x, t = _case(tree, 12, 5, torch.float64, labels=False, mask=False)
    t = BAD_DIST[bad](t)
    fused, operators = _message(route, "fused", x, t, tree), _message(route, "operators", x, t, tree)
    assert fused == operators and "target" in fused


def test_float32_target_next_to_float64_logits(route, tree):
    """The target keeps its dtype (its mass is checked to float32's precision), and so does its gradient."""
    x, t = _case(tree, 13, 4, torch.float64, labels=False, mask=False)
    out = {}
    for name in ("fused", "operators"):
        calls = route(name)
        z, tt = x.clone().requires_grad_(), t.float().requires_grad_()
        loss = emd_loss(z, tt, tree, normalize="softmax")
        loss.backward()
        out[name] = (loss.detach(), z.grad, tt.grad)
        assert calls == [name == "fused"]
    assert out["fused"][2].dtype == torch.float32
    for a, b in zip(out["fused"], out["operators"]):
        assert a.dtype == b.dtype
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-12, atol=1e-15)
