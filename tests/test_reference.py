"""The reference math (emdtree.engine.reference) in every namespace against the NumPy API and the kernels.

Through the Array-API door (emdtree.engine.backends.*_rows), parametrised over
namespace (array-api-strict: the generic table; jax.numpy; torch) x dtype (float32,
float64). JAX runs float64 inside ``jax.enable_x64(True)``, a context manager
that restores the setting, so nothing leaks into other test modules.
"""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
from trees import TREE_CASES, random_masses

import emdtree
from emdtree.engine import driver as _driver
from emdtree.engine import backends
from emdtree.engine.inputs import prepare

array_api_compat = pytest.importorskip("array_api_compat")

NAMESPACES = ["array_api_strict", "jax.numpy", "array_api_compat.torch"]
DTYPES = ["float32", "float64"]
RHOS = [1.0, 2.0, 1.5, 3.0]

# float32 against float64, relative to the largest entry of each result. Largest
# errors measured over TREE_CASES (5 seeds, 8 rows): 2.5e-7 for phi, values and
# gradients, 5.3e-7 for HVPs and Hessians at rho = 2 and 3. At rho = 1.5 the
# curvature |phi|^(rho-2) amplifies the relative error of small phi: 2.5e-5 here,
# 3.7e-5 for the float32 CPU kernels on the same inputs.
F32_RTOL = 5e-6
F32_RTOL_CURVATURE = 3e-4
F64_RTOL = 1e-12

EXTRA_CASES = [
    ("one_node", lambda: (np.array([-1]), np.array([0.0]), np.array([0]))),
    ("one_bin_path", lambda: (np.array([-1, 0, 1]), np.array([0.0, 1.0, 2.0]), np.array([2]))),
    ("star_of_chains", lambda: (np.array([-1, 0, 1, 0, 3, 0]), np.array([0.0, 1, 2, 0.5, 0, 3]),
                                np.array([2, 4, 5, 0]))),
]


@contextlib.contextmanager
def namespace(name, dtype):
    """(namespace, its dtype). JAX float64 runs with x64 enabled and array-api-strict
    at version 2023.12 of the standard, inside the block only."""
    xp = pytest.importorskip(name)
    context = contextlib.nullcontext()
    if name == "jax.numpy" and dtype == "float64":
        import jax

        context = jax.enable_x64(True)
    elif name == "array_api_strict":
        # the version the implementation is written against: no newer functions
        context = xp.ArrayAPIStrictFlags(api_version="2023.12")
    with context:
        yield xp, getattr(xp, dtype)


@pytest.fixture(params=[(ns, dt) for ns in NAMESPACES for dt in DTYPES],
                ids=[f"{ns}-{dt}" for ns in NAMESPACES for dt in DTYPES])
def xp_dtype(request):
    with namespace(*request.param) as found:
        yield found


def traced(xp, fn, *args):
    """``fn(*args)``, compiled with ``jax.jit`` for JAX: one compilation instead of
    one per operation, and a check that the code traces."""
    if xp.__name__.startswith("jax"):
        import jax

        return jax.jit(fn)(*args)
    return fn(*args)


def to_numpy(x):
    return np.from_dlpack(x)


def as_xp(xp, dtype, a):
    """A NumPy array rounded to ``dtype`` and moved into ``xp``."""
    return xp.asarray(np.asarray(a, dtype=np.float32 if dtype == xp.float32 else np.float64))


def xp_assert_close(actual, desired, rtol, atol=0.0, *, like):
    """``actual`` is an array of the namespace, dtype and device of ``like`` and
    matches ``desired`` (NumPy) within ``rtol`` of the largest entry of ``desired`` plus ``atol``."""
    xp = array_api_compat.array_namespace(like)
    assert array_api_compat.array_namespace(actual) is xp, type(actual)
    assert actual.dtype == like.dtype, (actual.dtype, like.dtype)
    assert tuple(actual.shape) == desired.shape, (actual.shape, desired.shape)
    assert array_api_compat.device(actual) == array_api_compat.device(like)
    got = to_numpy(actual).astype(np.float64)
    scale = np.max(np.abs(desired[np.isfinite(desired)]), initial=0.0)
    np.testing.assert_allclose(got, desired, rtol=0, atol=rtol * scale + atol, equal_nan=True)


def rtol_of(xp, dtype):
    return F32_RTOL if dtype == xp.float32 else F64_RTOL


def inputs(xp, dtype, tree, rows, seed):
    """p, q, v in the namespace, and the same values in float64 NumPy."""
    rng = np.random.default_rng(seed)
    p, q = random_masses(rng, tree.n_bins, (rows,))
    v = rng.standard_normal(p.shape)
    xs = [as_xp(xp, dtype, a) for a in (p, q, v)]
    return xs, [to_numpy(a).astype(np.float64) for a in xs]


def hvp_reference(p, q, v, tree, rho, project_out):
    """The CPU kernels' HVP, with or without the final projection."""
    rows = prepare({"p": p, "q": q, "v": v}, tree, -1, False)
    return _driver.hvp(rows, rho, project_out)


def all_results(xp, tree, p, q, v):
    """Every function for every rho, by name; ``xp`` may be NumPy (the public API)."""
    if xp is np:
        out = {"phi": emdtree.phi(p, q, tree, check_inputs=False)}
    else:
        out = {"phi": backends.phi_rows(xp, p, q, tree)}
    for rho in RHOS:
        if xp is np:
            value_grad = emdtree.emd_value_and_grad(p, q, tree, rho, check_inputs=False)
            out[f"{rho} value"], out[f"{rho} grad"] = value_grad
            out[f"{rho} value only"] = out[f"{rho} value"]
            out[f"{rho} P H P v"] = hvp_reference(p, q, v, tree, rho, True)
            out[f"{rho} H P v"] = hvp_reference(p, q, v, tree, rho, False)
            out[f"{rho} hessian"] = emdtree.emd_hessian(p, q, tree, rho, check_inputs=False)
            continue
        out[f"{rho} value"], out[f"{rho} grad"] = backends.value_grad_rows(xp, p, q, tree, rho, True)
        out[f"{rho} value only"], none = backends.value_grad_rows(xp, p, q, tree, rho, False)
        assert none is None
        out[f"{rho} P H P v"] = backends.hvp_rows(xp, p, q, v, tree, rho, True)
        out[f"{rho} H P v"] = backends.hvp_rows(xp, p, q, v, tree, rho, False)
        out[f"{rho} hessian"] = backends.hessian_rows(xp, p, q, tree, rho)
    return out


# Every tree shape in the NumPy-backed namespace; in JAX (slower to compile) a few
# that cover chains, internal bins, zero costs and a single node.
ALL_CASES = TREE_CASES + EXTRA_CASES
JAX_CASES = ("chain", "binary", "random_internal_zero", "one_node", "star_of_chains")
MATCH_PARAMS = [
    pytest.param(ns, dt, case, id=f"{ns}-{dt}-{case[0]}")
    for ns in NAMESPACES for dt in DTYPES for case in ALL_CASES
    if ns != "jax.numpy" or case[0] in JAX_CASES
]


@pytest.mark.parametrize("name, dtype, case", MATCH_PARAMS)
def test_matches_numpy_api(name, dtype, case):
    tree = emdtree.Tree(*case[1]())
    with namespace(name, dtype) as (xp, dt):
        (p, q, v), numpy_inputs = inputs(xp, dt, tree, rows=3, seed=len(case[0]))
        got = traced(xp, lambda *a: all_results(xp, tree, *a), p, q, v)
        want = all_results(np, tree, *numpy_inputs)
        assert got.keys() == want.keys()
        for key in want:
            curvature = key in ("1.5 P H P v", "1.5 H P v", "1.5 hessian")
            tol = F32_RTOL_CURVATURE if curvature and dt == xp.float32 else rtol_of(xp, dt)
            xp_assert_close(got[key], want[key], tol, like=p)


def test_phi_is_zero_where_the_masses_agree(xp_dtype):
    """At p = q every phi is 0: no 0 * inf in the value or gradient for rho < 2,
    and the HVP and Hessian follow the kernels' conventions (infinite where v moves phi)."""
    xp, dtype = xp_dtype
    tree = emdtree.Tree(*TREE_CASES[7][1]())
    (p, _, v), (pn, _, vn) = inputs(xp, dtype, tree, rows=2, seed=5)

    def at_equal_masses(p, v):
        out = {}
        for rho in (1.0, 1.5):
            out[f"{rho} value"], out[f"{rho} grad"] = backends.value_grad_rows(xp, p, p, tree, rho, True)
        out["hvp along 0"] = backends.hvp_rows(xp, p, p, v * 0.0, tree, 1.5, True)
        out["hvp"] = backends.hvp_rows(xp, p, p, v, tree, 1.5, True)
        out["hessian"] = backends.hessian_rows(xp, p, p, tree, 1.5)
        return out

    with np.errstate(invalid="ignore"):  # inf - inf in NumPy-backed namespaces: expected here
        got = traced(xp, at_equal_masses, p, v)
    for rho in (1.0, 1.5):
        xp_assert_close(got[f"{rho} value"], np.zeros(2), 0.0, like=p)
        xp_assert_close(got[f"{rho} grad"], np.zeros((2, tree.n_bins)), 0.0, like=p)
    xp_assert_close(got["hvp along 0"], np.zeros(vn.shape), 0.0, like=p)
    want = emdtree.emd_hvp(pn, pn, vn, tree, 1.5, check_inputs=False)
    assert not np.isfinite(want).any()
    assert not np.isfinite(to_numpy(got["hvp"])).any()
    assert not np.isfinite(to_numpy(got["hessian"])).any()


@pytest.mark.parametrize("name", NAMESPACES)
def test_float64_imagenet(name):
    tree = emdtree.datasets.imagenet_wordnet()
    with namespace(name, "float64") as (xp, dtype):
        (p, q, v), (pn, qn, vn) = inputs(xp, dtype, tree, rows=4, seed=11)

        def results(p, q, v):
            out = {"phi": backends.phi_rows(xp, p, q, tree)}
            for rho in RHOS:
                out[f"{rho} value"], out[f"{rho} grad"] = backends.value_grad_rows(xp, p, q, tree, rho, True)
                out[f"{rho} hvp"] = backends.hvp_rows(xp, p, q, v, tree, rho, True)
            return out

        got = traced(xp, results, p, q, v)
        xp_assert_close(got["phi"], emdtree.phi(pn, qn, tree, check_inputs=False), F64_RTOL, like=p)
        for rho in RHOS:
            value, grad = emdtree.emd_value_and_grad(pn, qn, tree, rho, check_inputs=False)
            xp_assert_close(got[f"{rho} value"], value, F64_RTOL, like=p)
            xp_assert_close(got[f"{rho} grad"], grad, F64_RTOL, like=p)
            xp_assert_close(got[f"{rho} hvp"], emdtree.emd_hvp(pn, qn, vn, tree, rho, check_inputs=False),
                            F64_RTOL, like=p)


def softmax(z):
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


# Relative error of float32 value and gradient against float64 on the ImageNet tree,
# worst row (per row: max |error| / max |float64 value|), softmax predictions against
# one-hot or softmax targets. Measured on 512 rows with the compensated prefix sums:
# below 2.4e-7 for rho = 1 and 2 and 3.1e-6 (gradient) for rho = 1.5; plain prefix
# sums gave 0.33 (gradient, rho = 1: signs of small phi lost), 8e-7 and 1.4e-4.
IMAGENET_F32_BOUND = {1.0: 3e-6, 2.0: 3e-6, 1.5: 3e-5}


@pytest.mark.parametrize("name", NAMESPACES)
@pytest.mark.parametrize("target", ["one-hot", "smooth"])
def test_float32_error_bound_imagenet(name, target):
    tree = emdtree.datasets.imagenet_wordnet()
    rng = np.random.default_rng(3)
    rows, n_bins = 64, tree.n_bins
    p = softmax(rng.normal(0.0, 3.0, (rows, n_bins))).astype(np.float32)
    if target == "one-hot":
        q = np.zeros((rows, n_bins), dtype=np.float32)
        q[np.arange(rows), rng.integers(0, n_bins, rows)] = 1.0
    else:
        q = softmax(rng.normal(0.0, 3.0, (rows, n_bins))).astype(np.float32)
    with namespace(name, "float32") as (xp, _):
        def results(a, b):
            return {rho: backends.value_grad_rows(xp, a, b, tree, rho, True) for rho in IMAGENET_F32_BOUND}

        got = traced(xp, results, xp.asarray(p), xp.asarray(q))
    for rho, bound in IMAGENET_F32_BOUND.items():
        value, grad = emdtree.emd_value_and_grad(p.astype(np.float64), q.astype(np.float64), tree, rho,
                                                 check_inputs=False)
        got_value, got_grad = (to_numpy(a).astype(np.float64) for a in got[rho])
        value_error = np.abs(got_value - value) / np.abs(value)
        grad_error = np.abs(got_grad - grad).max(axis=1) / np.abs(grad).max(axis=1)
        assert value_error.max() < bound, (rho, value_error.max())
        assert grad_error.max() < bound, (rho, grad_error.max())


# --------------------------------------------------------------------------- #
# JAX: tracing and differentiation
# --------------------------------------------------------------------------- #

@pytest.fixture(params=DTYPES)
def jax_dtype(request):
    pytest.importorskip("jax")
    with namespace("jax.numpy", request.param) as (jnp, dtype):
        import jax

        yield jax, dtype


def test_jit_traces_once(jax_dtype):
    jax, dtype = jax_dtype
    jnp = jax.numpy
    tree = emdtree.Tree(*TREE_CASES[9][1]())  # bins on internal nodes
    traces = []

    @jax.jit
    def loss(p, q):
        traces.append(1)
        return backends.value_grad_rows(jnp, p, q, tree, 2.0, True)

    for seed in (1, 2):
        (p, q, _), (pn, qn, _) = inputs(jnp, dtype, tree, rows=5, seed=seed)
        value, grad = emdtree.emd_value_and_grad(pn, qn, tree, 2.0, check_inputs=False)
        got_value, got_grad = loss(p, q)
        xp_assert_close(got_value, value, rtol_of(jnp, dtype), like=p)
        xp_assert_close(got_grad, grad, rtol_of(jnp, dtype), like=p)
    assert len(traces) == 1
    # nothing made during the trace was kept: an eager call on the same tree still works
    eager_value, _ = backends.value_grad_rows(jnp, p, q, tree, 2.0, False)
    xp_assert_close(eager_value, value, rtol_of(jnp, dtype), like=p)


def test_no_tracer_is_cached():
    """A trace leaves nothing of itself in the tree's plan: only NumPy arrays are kept for JAX."""
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    tree = emdtree.Tree(*TREE_CASES[7][1]())
    (p, q, _), _ = inputs(jnp, jnp.float32, tree, rows=2, seed=0)
    jax.jit(lambda a, b: backends.value_grad_rows(jnp, a, b, tree, 1.0, False)[0])(p, q)
    backends.value_grad_rows(jnp, p, q, tree, 1.0, False)
    kept = list(tree._plan._cache.values())
    assert kept
    for entry in kept:
        for field in entry if isinstance(entry, tuple) else (entry,):
            for a in field if isinstance(field, tuple) else (field,):
                assert not isinstance(a, jax.core.Tracer), type(a)


@pytest.mark.parametrize("case", [TREE_CASES[i] for i in (2, 11)], ids=lambda c: c[0])
def test_jax_grad_is_the_projected_gradient(jax_dtype, case):
    """jax.grad of the summed values, minus its mean, is value_grad's gradient,
    also at p = q (first row), where |phi|^(rho-1) must not give 0 * inf."""
    jax, dtype = jax_dtype
    jnp = jax.numpy
    tree = emdtree.Tree(*case[1]())
    (p, q, _), _ = inputs(jnp, dtype, tree, rows=4, seed=7)
    q = jnp.concat([p[:1], q[1:]], axis=0)

    def both(p, q):
        out = {}
        for rho in RHOS:
            def total(a, rho=rho):
                return jnp.sum(backends.value_grad_rows(jnp, a, q, tree, rho, False)[0])

            auto = jax.grad(total)(p)
            out[f"{rho} auto"] = auto - jnp.mean(auto, axis=1, keepdims=True)
            out[f"{rho} grad"] = backends.value_grad_rows(jnp, p, q, tree, rho, True)[1]
        return out

    got = jax.jit(both)(p, q)
    for rho in RHOS:
        grad = to_numpy(got[f"{rho} grad"]).astype(np.float64)
        np.testing.assert_array_equal(grad[0], 0.0)
        xp_assert_close(got[f"{rho} auto"], grad, 10 * rtol_of(jnp, dtype), like=p)


def test_hvp_is_the_vjp_of_the_gradient(jax_dtype):
    """H P v (project_out=False) is the transposed Jacobian of the projected gradient applied to v."""
    jax, dtype = jax_dtype
    jnp = jax.numpy
    tree = emdtree.Tree(*TREE_CASES[7][1]())
    (p, q, v), _ = inputs(jnp, dtype, tree, rows=3, seed=8)

    def both(p, q, v):
        out = {}
        for rho in (2.0, 3.0):
            def grad_of(a, rho=rho):
                return backends.value_grad_rows(jnp, a, q, tree, rho, True)[1]

            _, pullback = jax.vjp(grad_of, p)
            (out[f"{rho} vjp"],) = pullback(v)
            out[f"{rho} hvp"] = backends.hvp_rows(jnp, p, q, v, tree, rho, False)
        return out

    got = jax.jit(both)(p, q, v)
    for rho in (2.0, 3.0):
        want = to_numpy(got[f"{rho} vjp"]).astype(np.float64)
        xp_assert_close(got[f"{rho} hvp"], want, 10 * rtol_of(jnp, dtype), like=p)


def test_edge_cost_beyond_float32_range(xp_dtype):
    xp, dtype = xp_dtype
    tree = emdtree.Tree.from_parents([-1, 0, 0], weights=[0.0, 1e39, 1.0])
    (p, q, _), (pn, qn, _) = inputs(xp, dtype, tree, rows=1, seed=0)
    if dtype == xp.float32:
        with pytest.raises(ValueError, match="edge cost of 1e.39, beyond the float32 range"):
            backends.value_grad_rows(xp, p, q, tree, 1.0, True)
    else:
        value, _ = emdtree.emd_value_and_grad(pn, qn, tree, 1.0, check_inputs=False)
        xp_assert_close(backends.value_grad_rows(xp, p, q, tree, 1.0, False)[0], value, F64_RTOL, like=p)
