"""The torch loss's route for small softmax losses on chains (torch operations, no custom
operator) against the kernels' route: values, gradients with respect to logits and
distribution targets, second derivatives, ``-inf`` masks, edge costs, and the same messages
for bad input; and that the route is taken where it should be, and only there."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import oracle  # noqa: E402
from emdtree import Tree  # noqa: E402
from emdtree.frameworks import torch as adapter  # noqa: E402
from emdtree.torch import emd_loss  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

ROUTES = {"ops": 1 << 62, "kernels": 0}


@pytest.fixture
def route(monkeypatch):
    """Force a route: ``route("ops")`` or ``route("kernels")``; the custom operators are spied on."""
    calls = []
    call = adapter._call

    def spy(*args):
        calls.append(args)
        return call(*args)

    monkeypatch.setattr(adapter, "_call", spy)

    def force(name):
        monkeypatch.setattr(adapter, "ORDINAL_OPS_MAX", ROUTES[name])
        calls.clear()
        return calls

    return force


def _case(seed, rows, n_bins, dtype, labels, mask=True):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, n_bins, generator=g, dtype=dtype) * 2
    if mask:
        x[0, 1] = -float("inf")  # a masked class
    if labels:
        t = torch.randint(0, n_bins, (rows,), generator=g)
    else:
        t = torch.softmax(torch.randn(rows, n_bins, generator=g, dtype=dtype), -1)
    return x, t


def _derivatives(x, t, tree, rho, labels):
    """Per-row values, first derivatives (logits, and a distribution target) and a
    second derivative (the gradient's change along a fixed direction), per route."""
    z = x.clone().requires_grad_()
    tt = t.clone().requires_grad_(not labels)
    value = emd_loss(z, tt, tree, rho, reduction="none", normalize="softmax")
    grads = torch.autograd.grad(value.sum(), [z] + ([] if labels else [tt]), create_graph=True)
    direction = torch.linspace(-1, 1, x.shape[-1], dtype=x.dtype)
    second = torch.autograd.grad((grads[0] * direction).sum(), z)[0]
    return [value.detach(), *(g.detach() for g in grads), second]


@pytest.mark.parametrize("labels", [True, False])
@pytest.mark.parametrize("rho", [1.0, 2.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("spacing", [None, "uneven"])
def test_ops_route_equals_kernels(route, labels, rho, dtype, spacing):
    n_bins = 9
    tree = Tree.chain(n_bins, None if spacing is None else np.linspace(0.5, 3.0, n_bins - 1))
    x, t = _case(3, 6, n_bins, dtype, labels)
    calls = route("ops")
    ops = _derivatives(x, t, tree, rho, labels)
    assert not calls, "the small chain should not reach the custom operators"
    calls = route("kernels")
    kernels = _derivatives(x, t, tree, rho, labels)
    assert calls
    tol = 2e-6 if dtype == torch.float32 else 1e-12
    for a, b in zip(ops, kernels):
        assert a.dtype == b.dtype
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=tol, atol=tol)
    # the masked class has probability 0 and no gradient
    assert ops[1][0, 1] == 0


def test_ops_route_matches_oracle():
    n_bins = 7
    tree = Tree.chain(n_bins, [1.0, 2.0, 0.5, 1.0, 3.0, 1.0])
    x, t = _case(5, 4, n_bins, torch.float64, labels=True, mask=False)
    value = emd_loss(x, t, tree, 2.0, reduction="none", normalize="softmax")
    p = torch.softmax(x, -1).numpy()
    q = np.eye(n_bins)[t.numpy()]
    want = [oracle.emd(p[r], q[r], tree.parents, tree.weights, tree.bins, 2.0) for r in range(4)]
    np.testing.assert_allclose(value.numpy(), want, rtol=1e-12)


def test_ops_route_target_gradient_is_projected(route):
    """The gradient with respect to a distribution target is ``-P g``: its rows sum to 0."""
    route("ops")
    x, t = _case(8, 3, 6, torch.float64, labels=False)
    tt = t.clone().requires_grad_()
    z = x.clone().requires_grad_()
    emd_loss(z, tt, None, 2.0, normalize="softmax").backward()
    np.testing.assert_allclose(tt.grad.sum(-1).numpy(), 0, atol=1e-15)
    np.testing.assert_allclose(z.grad.sum(-1).numpy(), 0, atol=1e-15)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_ops_route_reductions_and_batch_shape(route, reduction):
    x, t = _case(2, 12, 5, torch.float32, labels=True)
    x, t = x.reshape(3, 4, 5), t.reshape(3, 4)
    out = {}
    for name in ROUTES:
        route(name)
        out[name] = emd_loss(x, t, None, 2.0, reduction=reduction, normalize="softmax")
    assert out["ops"].shape == out["kernels"].shape
    np.testing.assert_allclose(out["ops"].numpy(), out["kernels"].numpy(), rtol=2e-6)


def test_route_choice(route):
    calls = route("ops")
    x, t = _case(1, 4, 5, torch.float32, labels=True)
    tree = Tree.from_parents([2, 2, -1], bins=[0, 1])  # a star: not a chain
    emd_loss(x[:, :2], t % 2, tree, 2.0, normalize="softmax")
    assert calls, "a tree that is not a chain goes to the kernels"
    calls.clear()
    emd_loss(x, t, None, 1.5, normalize="softmax")
    assert calls, "rho = 1.5 goes to the kernels"
    calls.clear()
    emd_loss(torch.softmax(x, -1), t, None, 2.0)
    assert calls, "masses without a softmax go to the kernels (their gradient is projected)"
    calls.clear()
    emd_loss(x, t, None, 2.0, normalize="softmax")
    assert not calls


def test_default_route_small_and_large(route, monkeypatch):
    """With the default crossover, 256 x 100 runs as torch operations, 4096 x 100 on the kernels."""
    calls = route("ops")
    monkeypatch.setattr(adapter, "ORDINAL_OPS_MAX", 1 << 17)
    for rows, kernels in ((256, False), (4096, True)):
        calls.clear()
        x, t = _case(0, rows, 100, torch.float32, labels=True, mask=False)
        emd_loss(x, t, Tree.chain(100), 2.0, normalize="softmax")
        assert bool(calls) == kernels


def _set(a, index, value):
    a = a.clone()
    a[index] = value
    return a


BAD = {
    "+inf logit": lambda x, t: (_set(x, (1, 2), float("inf")), t),
    "nan logit": lambda x, t: (_set(x, (2, 0), float("nan")), t),
    "row of -inf": lambda x, t: (_set(x, 3, -float("inf")), t),
    "label too large": lambda x, t: (x, _set(t, 2, 5)),
    "negative label": lambda x, t: (x, _set(t, 0, -1)),
}

BAD_DIST = {
    "target total": lambda t: t * 1.01,
    "negative target": lambda t: _set(t, (1, 0), -0.01),
    "nan target": lambda t: _set(t, (1, 0), float("nan")),
}


def _message(route, name, x, t):
    route(name)
    with pytest.raises(ValueError) as info:
        emd_loss(x.clone(), t.clone(), None, 2.0, normalize="softmax")
    return str(info.value)


@pytest.mark.parametrize("bad", sorted(BAD))
def test_bad_input_same_message(route, bad):
    x, t = _case(4, 5, 5, torch.float32, labels=True, mask=False)
    x, t = BAD[bad](x, t)
    ops, kernels = _message(route, "ops", x, t), _message(route, "kernels", x, t)
    assert ops == kernels
    if "logit" in bad or "-inf" in bad:
        assert "input[" in ops
    else:
        assert "target" in ops


@pytest.mark.parametrize("bad", sorted(BAD_DIST))
def test_bad_distribution_target_same_message(route, bad):
    x, t = _case(4, 5, 5, torch.float64, labels=False, mask=False)
    t = BAD_DIST[bad](t)
    ops, kernels = _message(route, "ops", x, t), _message(route, "kernels", x, t)
    assert ops == kernels
    assert "target" in ops


def test_softmax_check_deferred_names_raw_entry(route):
    """On the kernels' route the raw logits are read only when the kernels find a problem:
    the message still names the +inf logit, not a NaN of the normalised masses."""
    x, t = _case(6, 4, 6, torch.float32, labels=True, mask=False)
    x[2, 3] = float("inf")
    msg = _message(route, "kernels", x, t)
    assert "input[2, 3]" in msg and "inf" in msg


@pytest.mark.parametrize("n_bins", [1, 2, 1100])
def test_ops_route_sizes(route, n_bins):
    """One bin (no edge), two, and more bins than the cached table of label steps holds."""
    out = {}
    for name in ROUTES:
        calls = route(name)
        x, t = _case(9, 4, n_bins, torch.float64, labels=True, mask=False)
        out[name] = _derivatives(x, t, None, 2.0, labels=True)
        assert bool(calls) == (name == "kernels")
    for a, b in zip(out["ops"], out["kernels"]):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-12, atol=1e-12)
    x, t = _case(9, 4, n_bins, torch.float64, labels=True, mask=False)
    t[1] = n_bins
    assert _message(route, "ops", x, t) == _message(route, "kernels", x, t)
