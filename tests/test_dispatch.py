"""Arrays of other libraries: answered in the caller's library, dtype and device."""

import numpy as np
import pytest
from numpy.testing import assert_allclose
from trees import random_masses, random_tree

import emdtree
from emdtree.engine import dispatch as _dispatch

torch = pytest.importorskip("torch")

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _tree(seed=0, n_nodes=30):
    rng = np.random.default_rng(seed)
    return emdtree.Tree.from_parents(*random_tree(rng, n_nodes, bins_on_internal=True))


OPS = {
    "emd": lambda p, q, t: emdtree.emd(p, q, t, rho=2.0),
    "emd_rho1": lambda p, q, t: emdtree.emd(p, q, t),
    "value_and_grad": lambda p, q, t: emdtree.emd_value_and_grad(p, q, t, rho=1.5),
    "grad": lambda p, q, t: emdtree.emd_grad(p, q, t, rho=2.0),
    "phi": lambda p, q, t: emdtree.phi(p, q, t),
    "hvp": lambda p, q, t: emdtree.emd_hvp(p, q, p - q, t, rho=2.0),
    "hessian": lambda p, q, t: emdtree.emd_hessian(p, q, t, rho=3.0),
    "normalize": lambda p, q, t: emdtree.emd_value_and_grad(3 * p, q, t, rho=2.0, normalize="l1"),
}


def _flat(result):
    return result if isinstance(result, tuple) else (result,)


@pytest.mark.parametrize("op", list(OPS))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("batch", [(), (5,), (2, 40)])
def test_torch_cpu_tensors_in_torch_tensors_out(op, dtype, batch):
    tree = _tree()
    p, q = random_masses(np.random.default_rng(1), tree.n_bins, batch=batch, dtype=dtype)
    want = _flat(OPS[op](p, q, tree))
    got = _flat(OPS[op](torch.from_numpy(p), torch.from_numpy(q), tree))
    for g, w in zip(got, want):
        assert isinstance(g, torch.Tensor)
        assert g.dtype == getattr(torch, np.dtype(dtype).name)
        assert tuple(g.shape) == np.shape(w)
        assert g.device.type == "cpu"
        assert_allclose(g.numpy(), w, rtol=0, atol=0)


def test_torch_inputs_are_viewed_not_copied_and_gradients_are_detached():
    t = torch.rand(4, 6, dtype=torch.float64, requires_grad=True)
    view = _dispatch._torch_host(t)
    assert np.shares_memory(view, t.detach().numpy())
    p = t.detach() / t.detach().sum(1, keepdim=True)
    p.requires_grad_(True)
    value = emdtree.emd(p, torch.full((6,), 1 / 6, dtype=torch.float64))
    assert not value.requires_grad and value.shape == (4,)


def test_torch_axis_and_broadcast_single_target():
    p = torch.rand(3, 7, 2, dtype=torch.float64)
    p = p / p.sum(1, keepdim=True)
    q = torch.full((7, 1), 1 / 7, dtype=torch.float64)
    got = emdtree.emd(p, q, axis=1)
    want = emdtree.emd(p.numpy(), q.numpy(), axis=1)
    assert got.shape == (3, 2)
    assert_allclose(got.numpy(), want)


def test_python_lists_take_the_dtype_of_the_array_argument():
    p = torch.tensor([0.25, 0.25, 0.5])
    out = emdtree.emd(p, [0.5, 0.25, 0.25])
    assert out.dtype == torch.float32 and out.ndim == 0


def test_mixed_libraries_are_refused():
    with pytest.raises(TypeError, match="p is a torch array, q is a NumPy array"):
        emdtree.emd(torch.ones(3) / 3, np.ones(3) / 3)


def test_bad_torch_input_gives_the_numpy_message():
    p = torch.tensor([[0.5, 0.5], [float("nan"), 1.0]])
    q = torch.tensor([0.5, 0.5])
    with pytest.raises(ValueError, match=r"p\[1, 0\] = nan is not finite"):
        emdtree.emd(p, q)
    with pytest.raises(ValueError, match="must have equal total mass"):
        emdtree.emd(torch.tensor([1.0, 1.0]), q)


def test_unknown_objects_are_refused_clearly():
    class Opaque:
        pass

    with pytest.raises(TypeError, match="is not an array emdtree understands"):
        emdtree.emd(Opaque(), Opaque())


def test_host_data_takes_the_numpy_path():
    assert _dispatch.is_host(np.ones(3), [1.0, 2.0], 3.0, np.float32(1))
    assert not _dispatch.is_host(np.ones(3), torch.ones(3))


# --------------------------------------------------------------------------- #
# Every namespace through the public API
# --------------------------------------------------------------------------- #

def _namespaces():
    import importlib

    out = [("numpy", np, (np.float32, np.float64))]
    for name, dtypes in [("array_api_strict", ("float32", "float64")), ("torch", ("float32", "float64")),
                         ("jax.numpy", ("float32",))]:
        try:
            out.append((name, importlib.import_module(name), dtypes))
        except ImportError:
            continue
    return [pytest.param(mod, dt, id=f"{name}-{np.dtype(dt).name}") for name, mod, dts in out for dt in dts]


def xp_assert_close(actual, desired, xp, dtype, device=None, rtol=1e-7, atol=0.0):
    """Like numpy's assert_allclose, and ``actual`` must be an array of
    namespace ``xp`` with the given dtype, shape and device."""
    import array_api_compat as compat

    if xp is np:
        assert isinstance(actual, (np.ndarray, np.generic)), type(actual)
        assert actual.dtype == np.dtype(dtype)
    else:
        expected = compat.array_namespace(xp.asarray(0.0)).__name__.split(".")[-1]
        assert compat.array_namespace(actual).__name__.endswith(expected)
        assert str(actual.dtype).split(".")[-1] == np.dtype(dtype).name, actual.dtype
        if device is not None:
            assert str(compat.device(actual)) == str(device)
    assert tuple(actual.shape) == np.shape(desired)
    host = np.asarray(actual.cpu() if hasattr(actual, "cpu") else actual)
    assert_allclose(host, desired, rtol=rtol, atol=atol)


@pytest.mark.parametrize("mod, dtype", _namespaces())
@pytest.mark.parametrize("rho", [1.0, 2.0, 1.5])
def test_every_namespace_matches_the_numpy_api(mod, dtype, rho):
    import array_api_compat as compat

    xp = compat.array_namespace(mod.asarray(0.0)) if mod is not np else np
    tree = _tree(seed=3, n_nodes=40)
    rng = np.random.default_rng(8)
    p, q = random_masses(rng, tree.n_bins, batch=(3, 5), dtype=np.float64)
    v = rng.standard_normal(p.shape)
    want_value, want_grad = emdtree.emd_value_and_grad(p, q, tree, rho)
    want_phi = emdtree.phi(p, q, tree)
    want_hvp = emdtree.emd_hvp(p, q, v, tree, rho=max(rho, 2.0))
    name = np.dtype(dtype).name
    P, Q, V = (mod.asarray(a.astype(name)) for a in (p, q, v))
    dev = compat.device(P)
    tol = dict(rtol=2e-5, atol=2e-6) if name == "float32" else dict(rtol=1e-12, atol=1e-14)
    value, grad = emdtree.emd_value_and_grad(P, Q, tree, rho)
    xp_assert_close(value, want_value, xp, dtype, dev, **tol)
    xp_assert_close(grad, want_grad, xp, dtype, dev, **tol)
    xp_assert_close(emdtree.emd(P, Q, tree, rho), want_value, xp, dtype, dev, **tol)
    xp_assert_close(emdtree.phi(P, Q, tree), want_phi, xp, dtype, dev, **tol)
    xp_assert_close(emdtree.emd_hvp(P, Q, V, tree, rho=max(rho, 2.0)), want_hvp, xp, dtype, dev, **tol)
    # the bin axis elsewhere, and one sample
    p_first = mod.asarray(np.moveaxis(p, -1, 0).astype(name))
    moved = emdtree.emd(p_first, mod.asarray(q[0, 0, :, None, None].astype(name)), tree, rho, axis=0)
    xp_assert_close(moved, emdtree.emd(p, q[0, 0], tree, rho), xp, dtype, dev, **tol)
    single = emdtree.emd(mod.asarray(p[0, 0].astype(name)), mod.asarray(q[0, 0].astype(name)), tree, rho)
    assert tuple(single.shape) == ()


@pytest.mark.parametrize("mod", [pytest.param(m, id=n) for n, m in
                                 [("array_api_strict", pytest.importorskip("array_api_strict"))]])
def test_xp_path_gives_the_numpy_messages(mod):
    p = mod.asarray([[0.5, 0.5], [float("nan"), 1.0]])
    with pytest.raises(ValueError, match=r"p\[1, 0\] = nan is not finite"):
        emdtree.emd(p, mod.asarray([0.5, 0.5]))
    with pytest.raises(ValueError, match="must have equal total mass"):
        emdtree.emd(mod.asarray([1.0, 1.0]), mod.asarray([0.5, 0.5]))
    with pytest.raises(ValueError, match="zero total mass"):
        emdtree.emd(mod.asarray([0.0, 0.0]), mod.asarray([0.5, 0.5]), normalize="l1")
    with pytest.raises(ValueError, match="shapes do not broadcast"):
        emdtree.emd(mod.asarray([[0.5, 0.5]] * 3), mod.asarray([[0.5, 0.5]] * 2))


def test_jax_jit_traces_the_public_api():
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    tree = _tree(seed=4)
    p, q = random_masses(np.random.default_rng(9), tree.n_bins, batch=(6,), dtype=np.float32)
    traces = []

    @jax.jit
    def loss(a, b):
        traces.append(1)
        value, grad = emdtree.emd_value_and_grad(a, b, tree, rho=2.0)
        return value.sum(), grad

    for _ in range(3):
        total, grad = loss(jnp.asarray(p), jnp.asarray(q))
    want_value, want_grad = emdtree.emd_value_and_grad(p, q, tree, rho=2.0)
    assert len(traces) == 1
    assert_allclose(float(total), want_value.sum(), rtol=1e-5)
    assert_allclose(np.asarray(grad), want_grad, rtol=1e-4, atol=1e-6)
