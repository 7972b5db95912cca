"""Second derivatives of the training losses follow one convention in every mode.

The loss's gradient is the dirt-conserving ``g = P grad f`` with
``P = I - 11^T / n_bins``; its derivative, in forward and reverse mode alike,
is ``P H P``: :func:`emdtree.emd_hessian`, symmetric, and what
:func:`emdtree.emd_hvp` applies. Every framework's compositions of
transforms must give it (or, where the framework cannot, raise), on chains
and trees, for rho in {1.5, 2, 3}; rho = 1 has a zero Hessian. Through a
softmax the Hessian is that of the composition, checked against finite
differences of the gradient.
"""

import numpy as np
import pytest

import emdtree
from emdtree import Tree
from trees import random_tree

RHOS = [1.5, 2.0, 3.0]


def _tree(kind):
    if kind == "chain3":
        return None, 3
    rng = np.random.default_rng(11)
    tree = Tree.from_parents(*random_tree(rng, 12, bins_on_internal=True))
    return tree, tree.n_bins


def _point(n_bins, seed=0):
    """Distributions whose subtree masses stay well away from 0 (|phi|^(rho-2) is smooth there)."""
    rng = np.random.default_rng(seed)
    p = rng.dirichlet(np.full(n_bins, 2.0))
    q = rng.dirichlet(np.full(n_bins, 2.0))
    return p, q


def _hessian(p, q, tree, rho):
    return emdtree.emd_hessian(p, q, tree, rho)


def _fd_hessian(grad, x, eps=1e-6):
    """Central finite differences of a gradient function, one column per coordinate."""
    n = x.shape[-1]
    cols = []
    for k in range(n):
        e = np.zeros(n)
        e[k] = eps
        cols.append((grad(x + e) - grad(x - e)) / (2 * eps))
    h = np.stack(cols, axis=-1)
    return (h + h.T) / 2


# ----------------------------------------------------------------------------- torch

kinds = pytest.mark.parametrize("kind", ["chain3", "tree"])


@pytest.fixture(scope="module")
def torch_mod():
    return pytest.importorskip("torch")


def _torch_loss(torch, tree, rho, q, normalize=None):
    from emdtree.torch import emd_loss

    qt = torch.tensor(q)
    return lambda x: emd_loss(x[None], qt[None], tree, rho, reduction="sum", normalize=normalize)


@kinds
@pytest.mark.parametrize("rho", RHOS)
def test_torch_transforms_give_emd_hessian(torch_mod, kind, rho):
    torch = torch_mod
    func = torch.func
    tree, n = _tree(kind)
    p, q = _point(n)
    f = _torch_loss(torch, tree, rho, q)
    want = _hessian(p, q, tree, rho)
    pt = torch.tensor(p)
    for name, h in [("hessian", func.hessian(f)), ("jacrev(jacrev)", func.jacrev(func.jacrev(f))),
                    ("jacfwd(jacrev)", func.jacfwd(func.jacrev(f))),
                    ("jacrev(jacfwd)", func.jacrev(func.jacfwd(f))),
                    ("jacrev(grad)", func.jacrev(func.grad(f)))]:
        np.testing.assert_allclose(h(pt).numpy(), want, rtol=1e-10, atol=1e-12, err_msg=name)


@kinds
@pytest.mark.parametrize("rho", RHOS)
def test_torch_double_backward_gives_emd_hessian(torch_mod, kind, rho):
    torch = torch_mod
    tree, n = _tree(kind)
    p, q = _point(n, 1)
    f = _torch_loss(torch, tree, rho, q)
    x = torch.tensor(p, requires_grad=True)
    (g,) = torch.autograd.grad(f(x), x, create_graph=True)
    rows = [torch.autograd.grad(g[k], x, retain_graph=True)[0].numpy() for k in range(n)]
    np.testing.assert_allclose(np.stack(rows), _hessian(p, q, tree, rho), rtol=1e-10, atol=1e-12)
    # g . v differentiated: P H P v, the product emdtree.emd_hvp gives, for any v (not only mass-conserving)
    v = np.random.default_rng(2).standard_normal(n)
    (hv,) = torch.autograd.grad((g * torch.tensor(v)).sum(), x)
    np.testing.assert_allclose(hv.numpy(), emdtree.emd_hvp(p, q, v, tree, rho), rtol=1e-10, atol=1e-12)


@kinds
@pytest.mark.parametrize("rho", RHOS)
def test_torch_jvp_of_grad_and_vjp_agree(torch_mod, kind, rho):
    # forward and reverse mode over the gradient apply the same (symmetric) matrix
    torch = torch_mod
    func = torch.func
    tree, n = _tree(kind)
    p, q = _point(n, 3)
    f = _torch_loss(torch, tree, rho, q)
    v = torch.tensor(np.random.default_rng(4).standard_normal(n))
    _, fwd = func.jvp(func.grad(f), (torch.tensor(p),), (v,))
    _, pullback = func.vjp(func.grad(f), torch.tensor(p))
    (rev,) = pullback(v)
    want = emdtree.emd_hvp(p, q, v.numpy(), tree, rho)
    np.testing.assert_allclose(fwd.numpy(), want, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(rev.numpy(), want, rtol=1e-10, atol=1e-12)


@kinds
def test_torch_forward_over_forward_raises(torch_mod, kind):
    torch = torch_mod
    func = torch.func
    tree, n = _tree(kind)
    p, q = _point(n)
    f = _torch_loss(torch, tree, 2.0, q)
    with pytest.raises(NotImplementedError, match="forward mode over forward mode"):
        func.jacfwd(func.jacfwd(f))(torch.tensor(p))


@kinds
@pytest.mark.parametrize("rho", [1.0] + RHOS)
def test_torch_gradgradcheck(torch_mod, kind, rho):
    torch = torch_mod
    tree, n = _tree(kind)
    p, q = _point(n, 5)  # no phi near 0: finite differences stay on one piece of |phi|^rho
    x = torch.tensor(p, requires_grad=True)
    y = torch.tensor(q, requires_grad=True)
    from emdtree.torch import emd_loss

    def loss(x, y):
        return emd_loss(x[None], y[None], tree, rho, reduction="sum")

    # mass-conserving perturbations only: off the simplex the projected gradient is not a gradient
    assert torch.autograd.gradgradcheck(lambda x, y: loss(x - x.mean() + 1.0 / n, y - y.mean() + 1.0 / n),
                                        (x, y))


@kinds
def test_torch_rho_one_has_zero_hessian(torch_mod, kind):
    torch = torch_mod
    func = torch.func
    tree, n = _tree(kind)
    p, q = _point(n, 6)
    f = _torch_loss(torch, tree, 1.0, q)
    pt = torch.tensor(p)
    for h in (func.hessian(f), func.jacrev(func.jacrev(f)), func.jacrev(func.jacfwd(f))):
        assert not h(pt).any()
    x = torch.tensor(p, requires_grad=True)
    (g,) = torch.autograd.grad(f(x), x, create_graph=True)
    (hv,) = torch.autograd.grad((g * torch.arange(n)).sum(), x)
    assert not hv.any()


def test_torch_func_third_derivatives(torch_mod):
    # zero for rho = 2 (constant Hessian); for other exponents not implemented: an error, not a wrong number
    torch = torch_mod
    func = torch.func
    tree, n = _tree("chain3")
    p, q = _point(n)
    pt = torch.tensor(p)
    for t in (lambda f: func.jacrev(func.hessian(f)), lambda f: func.jacrev(func.jacrev(func.jacrev(f)))):
        assert not t(_torch_loss(torch, tree, 2.0, q))(pt).any()
        with pytest.raises(NotImplementedError, match="third derivatives"):
            t(_torch_loss(torch, tree, 1.5, q))(pt)


@kinds
@pytest.mark.parametrize("rho", RHOS)
def test_torch_hessian_through_softmax(torch_mod, kind, rho):
    torch = torch_mod
    func = torch.func
    tree, n = _tree(kind)
    _, q = _point(n, 7)
    logits = np.random.default_rng(8).standard_normal(n)
    f = _torch_loss(torch, tree, rho, q, normalize="softmax")

    def grad(x):
        return func.grad(f)(torch.tensor(x)).numpy()

    want = _fd_hessian(grad, logits)
    np.testing.assert_allclose(want, emdtree.emd_hessian(logits, q, tree, rho, normalize="softmax"),
                               rtol=1e-5, atol=1e-7)
    x = torch.tensor(logits)
    for name, h in [("hessian", func.hessian(f)), ("jacrev(jacrev)", func.jacrev(func.jacrev(f))),
                    ("jacrev(jacfwd)", func.jacrev(func.jacfwd(f)))]:
        np.testing.assert_allclose(h(x).numpy(), want, rtol=1e-5, atol=1e-7, err_msg=name)
    xg = x.clone().requires_grad_()
    (g,) = torch.autograd.grad(f(xg), xg, create_graph=True)
    rows = [torch.autograd.grad(g[k], xg, retain_graph=True)[0].numpy() for k in range(n)]
    np.testing.assert_allclose(np.stack(rows), want, rtol=1e-5, atol=1e-7)


# ----------------------------------------------------------------------------- JAX

IMPLEMENTATIONS = ["callback", "native"]


@pytest.fixture(scope="module")
def jax_mod():
    jax = pytest.importorskip("jax")
    with jax.enable_x64(True):
        yield jax


def _jax_transforms(jax, short=False):
    if short:
        return [("hessian", jax.hessian), ("jacrev(grad)", lambda f: jax.jacrev(jax.grad(f)))]
    return [("hessian", jax.hessian), ("jacfwd(jacrev)", lambda f: jax.jacfwd(jax.jacrev(f))),
            ("jacrev(jacrev)", lambda f: jax.jacrev(jax.jacrev(f))),
            ("jacrev(grad)", lambda f: jax.jacrev(jax.grad(f))),
            ("jacrev(jacfwd)", lambda f: jax.jacrev(jax.jacfwd(f))),
            ("jacfwd(jacfwd)", lambda f: jax.jacfwd(jax.jacfwd(f)))]


def _jax_loss(tree, rho, q, implementation, normalize=None):
    import jax.numpy as jnp

    from emdtree.jax import emd_loss

    qj = jnp.asarray(q)
    return lambda x: emd_loss(x[None], qj[None], tree, rho, normalize=normalize,
                              implementation=implementation).sum()


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@kinds
@pytest.mark.parametrize("rho", RHOS)
def test_jax_transforms_give_emd_hessian(jax_mod, implementation, kind, rho):
    jax = jax_mod
    tree, n = _tree(kind)
    p, q = _point(n)
    f = _jax_loss(tree, rho, q, implementation)
    want = _hessian(p, q, tree, rho)
    x = jax.numpy.asarray(p)
    for name, t in _jax_transforms(jax):
        np.testing.assert_allclose(np.asarray(jax.jit(t(f))(x)), want, rtol=1e-10, atol=1e-12, err_msg=name)
    for name, t in _jax_transforms(jax, short=True):  # eagerly too, op by op
        np.testing.assert_allclose(np.asarray(t(f)(x)), want, rtol=1e-10, atol=1e-12, err_msg=name)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("rho", RHOS)
def test_jax_hessian_per_sample_and_labels(jax_mod, implementation, rho):
    # vmap over samples, class-index targets, and a distribution target's own second derivatives
    jax = jax_mod
    jnp = jax.numpy
    from emdtree.jax import emd_loss

    tree, n = _tree("tree")
    rng = np.random.default_rng(9)
    p = rng.dirichlet(np.full(n, 2.0), size=3)
    labels = np.array([0, 3, n - 1])

    def f(x, t):
        return emd_loss(x, t, tree, rho, implementation=implementation)

    h = jax.vmap(jax.hessian(f))(jnp.asarray(p), jnp.asarray(labels))
    for r in range(3):
        want = _hessian(p[r], np.eye(n)[labels[r]], tree, rho)
        np.testing.assert_allclose(np.asarray(h[r]), want, rtol=1e-10, atol=1e-12)
    q = rng.dirichlet(np.full(n, 2.0))
    hqq = jax.hessian(lambda t: f(jnp.asarray(p[0]), t))(jnp.asarray(q))
    np.testing.assert_allclose(np.asarray(hqq), _hessian(p[0], q, tree, rho), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("rho", RHOS)
def test_jax_jvp_and_vjp_of_grad_give_emd_hvp(jax_mod, implementation, rho):
    jax = jax_mod
    tree, n = _tree("tree")
    p, q = _point(n, 3)
    f = _jax_loss(tree, rho, q, implementation)
    v = np.random.default_rng(4).standard_normal(n)  # not mass-conserving: P H P v all the same
    want = emdtree.emd_hvp(p, q, v, tree, rho)
    _, fwd = jax.jvp(jax.grad(f), (jax.numpy.asarray(p),), (jax.numpy.asarray(v),))
    (rev,) = jax.vjp(jax.grad(f), jax.numpy.asarray(p))[1](jax.numpy.asarray(v))
    np.testing.assert_allclose(np.asarray(fwd), want, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(np.asarray(rev), want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@kinds
def test_jax_rho_one_has_zero_hessian(jax_mod, implementation, kind):
    jax = jax_mod
    tree, n = _tree(kind)
    p, q = _point(n, 6)
    f = _jax_loss(tree, 1.0, q, implementation)
    for name, t in _jax_transforms(jax, short=True):
        assert not np.asarray(t(f)(jax.numpy.asarray(p))).any(), name


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("rho", RHOS)
def test_jax_hessian_through_softmax(jax_mod, implementation, rho):
    jax = jax_mod
    tree, n = _tree("tree")
    _, q = _point(n, 7)
    logits = np.random.default_rng(8).standard_normal(n)
    f = _jax_loss(tree, rho, q, implementation, normalize="softmax")
    grad = jax.grad(f)
    want = _fd_hessian(lambda x: np.asarray(grad(jax.numpy.asarray(x))), logits)
    for name, t in _jax_transforms(jax, short=True):
        np.testing.assert_allclose(np.asarray(t(f)(jax.numpy.asarray(logits))), want, rtol=1e-5, atol=1e-7,
                                   err_msg=name)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_jax_third_derivatives(jax_mod, implementation):
    # zero for rho = 2 (constant Hessian); not implemented otherwise, and NaN rather than a wrong number
    jax = jax_mod
    tree, n = _tree("chain3")
    p, q = _point(n)
    for rho, check in [(2.0, lambda t: not t.any()), (1.5, lambda t: np.isnan(t).all())]:
        f = _jax_loss(tree, rho, q, implementation)
        third = np.asarray(jax.jacfwd(jax.hessian(f))(jax.numpy.asarray(p)))
        assert check(third), (rho, third)


# ----------------------------------------------------------------------------- TensorFlow

TF_MODES = ["eager", "function", "xla"]


@pytest.fixture(scope="module")
def tf_mod():
    return pytest.importorskip("tensorflow")


def _tf_hvp_fn(tf, tree, rho, mode, normalize=None, labels=False):
    from emdtree.tensorflow import emd_loss

    def hvp(p, q, v):
        with tf.GradientTape() as outer:
            outer.watch(p)
            with tf.GradientTape() as inner:
                inner.watch(p)
                loss = tf.reduce_sum(emd_loss(q, p, tree, rho, normalize=normalize))
            g = inner.gradient(loss, p)
            gv = tf.reduce_sum(g * v)
        return g, outer.gradient(gv, p)

    if mode == "eager":
        return hvp
    return tf.function(hvp, jit_compile=mode == "xla")


@pytest.mark.parametrize("mode", TF_MODES)
@kinds
@pytest.mark.parametrize("rho", RHOS)
def test_tf_nested_tapes_give_emd_hvp(tf_mod, mode, kind, rho):
    tf = tf_mod
    tree, n = _tree(kind)
    rng = np.random.default_rng(10)
    p = rng.dirichlet(np.full(n, 2.0), size=2)
    q = rng.dirichlet(np.full(n, 2.0), size=2)
    v = rng.standard_normal((2, n))  # not mass-conserving: P H P v all the same
    fn = _tf_hvp_fn(tf, tree, rho, mode)
    g, hv = fn(tf.constant(p), tf.constant(q), tf.constant(v))
    assert hv is not None
    np.testing.assert_allclose(g.numpy(), emdtree.emd_grad(p, q, tree, rho), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(hv.numpy(), emdtree.emd_hvp(p, q, v, tree, rho), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("mode", TF_MODES)
@pytest.mark.parametrize("rho", [1.0, 2.0])
def test_tf_hessian_of_labels_and_targets(tf_mod, mode, rho):
    # class-index targets; with a distribution target, its own second derivative too
    tf = tf_mod
    from emdtree.tensorflow import emd_loss

    tree, n = _tree("tree")
    p, q = _point(n, 11)
    labels = np.array([3])

    def hessians(p, q, t):
        with tf.GradientTape(persistent=True) as outer:
            outer.watch([p, q])
            with tf.GradientTape(persistent=True) as inner:
                inner.watch([p, q])
                by_label = tf.reduce_sum(emd_loss(t, p, tree, rho))
                by_dist = tf.reduce_sum(emd_loss(q, p, tree, rho))
            g_label = inner.gradient(by_label, p)
            g_q = inner.gradient(by_dist, q)
        return outer.jacobian(g_label, p), outer.jacobian(g_q, q)

    if mode != "eager":
        hessians = tf.function(hessians, jit_compile=mode == "xla")
    h_label, h_q = hessians(tf.constant(p[None]), tf.constant(q[None]), tf.constant(labels))
    np.testing.assert_allclose(h_label.numpy()[0, :, 0, :], _hessian(p, np.eye(n)[3], tree, rho),
                               rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(h_q.numpy()[0, :, 0, :], _hessian(p, q, tree, rho), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("mode", TF_MODES)
@pytest.mark.parametrize("rho", [1.5, 3.0])
def test_tf_hessian_through_softmax(tf_mod, mode, rho):
    tf = tf_mod
    tree, n = _tree("tree")
    _, q = _point(n, 12)
    logits = np.random.default_rng(13).standard_normal(n)
    fn = _tf_hvp_fn(tf, tree, rho, mode, normalize="softmax")
    qt = tf.constant(q[None])

    def grad(x):
        return fn(tf.constant(x[None]), qt, tf.zeros((1, n), tf.float64))[0].numpy()[0]

    want = _fd_hessian(grad, logits)
    for k in range(n):
        e = np.eye(n)[k][None]
        hv = fn(tf.constant(logits[None]), qt, tf.constant(e))[1].numpy()[0]
        np.testing.assert_allclose(hv, want[k], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("mode", ["eager", "xla"])
def test_tf_third_derivatives(tf_mod, mode):
    # zero for rho = 2 (constant Hessian); not implemented otherwise: NaN, not None or a wrong number
    tf = tf_mod
    from emdtree.tensorflow import emd_loss

    tree, n = _tree("chain3")
    p, q = _point(n)

    def third(p, q, rho):
        with tf.GradientTape() as t3:
            t3.watch(p)
            with tf.GradientTape() as t2:
                t2.watch(p)
                with tf.GradientTape() as t1:
                    t1.watch(p)
                    loss = tf.reduce_sum(emd_loss(q, p, tree, rho))
                g = t1.gradient(loss, p)
                gg = tf.reduce_sum(g * g)
            h = t2.gradient(gg, p)
            hh = tf.reduce_sum(h * tf.range(n, dtype=h.dtype))
        return t3.gradient(hh, p)

    if mode != "eager":
        third = tf.function(third, jit_compile=True)
    p_, q_ = tf.constant(p[None]), tf.constant(q[None])
    # rho = 2: d/dp <2 P H P g, r> = 2 P H P (P H P r)
    r = np.arange(n, dtype=float)
    hr = emdtree.emd_hvp(p, q, r, tree)
    np.testing.assert_allclose(third(p_, q_, 2.0).numpy()[0], emdtree.emd_hvp(p, q, 2 * hr, tree),
                               rtol=1e-10, atol=1e-12)
    assert np.isnan(third(p_, q_, 1.5).numpy()).all()


# ----------------------------------------------------------------------------- rho = 1: one subgradient


def _ties(kind, rows=300, seed=14):
    """Rows ``q`` that swap two bins of ``p`` under one parent (neighbours on a chain): phi is exactly 0
    on the edges above, where every path must take sign(0) = 0."""
    import oracle
    import trees

    rng = np.random.default_rng(seed)
    if kind == "chain":
        parents, weights, bins = trees.chain(6)
        tree = None
    else:
        parents, weights, bins = random_tree(np.random.default_rng(11), 12, bins_on_internal=True)
        tree = Tree.from_parents(parents, weights, bins)
    n = len(bins)
    p = rng.dirichlet(np.ones(n), size=rows)
    q = p.copy()
    parent_of_bin = parents[bins]
    pairs = [(a, b) for a in range(n) for b in range(a + 1, n) if parent_of_bin[a] == parent_of_bin[b]]
    if kind == "chain":
        pairs = [(k, k + 1) for k in range(n - 1)]
    for r in range(rows):
        a, b = pairs[rng.integers(len(pairs))]
        q[r, [a, b]] = q[r, [b, a]]
    want = np.stack([oracle.grad(p[r], q[r], parents, weights, bins, 1.0) for r in range(rows)])
    return tree, p, q, want


@pytest.mark.parametrize("kind", ["chain", "tree"])
def test_rho_one_subgradient_is_the_same_on_every_path(kind):
    tree, p, q, want = _ties(kind)
    got = {"emd_grad": emdtree.emd_grad(p, q, tree, 1.0)}
    try:
        import torch

        from emdtree.torch import emd_loss as torch_loss
    except ImportError:
        pass
    else:
        x = torch.tensor(p, requires_grad=True)
        torch_loss(x, torch.tensor(q), tree, 1.0, reduction="sum").backward()
        got["torch"] = x.grad.numpy()
        got["torch.func"] = torch.func.grad(lambda x: torch_loss(x, torch.tensor(q), tree, 1.0,
                                                                  reduction="sum"))(torch.tensor(p)).numpy()
    try:
        import jax

        from emdtree.jax import emd_loss as jax_loss
    except ImportError:
        pass
    else:
        with jax.enable_x64(True):
            for impl in IMPLEMENTATIONS:
                got[f"jax {impl}"] = np.asarray(jax.grad(
                    lambda x, impl=impl: jax_loss(x, q, tree, 1.0, implementation=impl).sum())(p))
    try:
        import tensorflow as tf

        from emdtree.tensorflow import emd_loss as tf_loss
    except ImportError:
        pass
    else:
        def tf_grad(x):
            with tf.GradientTape() as tape:
                tape.watch(x)
                loss = tf.reduce_sum(tf_loss(tf.constant(q), x, tree, 1.0))
            return tape.gradient(loss, x)

        got["tf eager"] = tf_grad(tf.constant(p)).numpy()
        got["tf xla"] = tf.function(tf_grad, jit_compile=True)(tf.constant(p)).numpy()
    for name, g in got.items():
        np.testing.assert_allclose(g, want, rtol=0, atol=1e-12, err_msg=name)
