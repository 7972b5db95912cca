"""Input handling of the public functions: broadcasting of the batch axes of
``p``, ``q`` and the direction ``v``, the ``axis`` argument, output shapes
(NumPy scalars for a single pair) and dtypes (float32 in, float32 out;
integers and mixed dtypes give float64), every error raised for bad inputs
(bin count, shapes, non-finite or negative masses and where they are,
unequal totals, rho, axis, normalize, types), and ``check_inputs=False``."""

import re

import numpy as np
import pytest
from numpy.testing import assert_allclose

import emdtree
import oracle
from emdtree import Tree
from trees import chain, random_masses, random_tree


RHOS = (1.0, 1.5, 2.0, 3.0)


# --- helpers ----------------------------------------------------------------------


def _arrays(tree):
    return tree.parents, tree.weights, tree.bins


def _broadcast_tree():
    return Tree.from_parents(*random_tree(np.random.default_rng(12), 20, bins_on_internal=True))


# --- broadcasting and axis -------------------------------------------------------


@pytest.mark.parametrize("rho", [1.0, 1.5, 2.0])
def test_broadcast_batch_against_single_target(rho):
    tree = _broadcast_tree()
    n, m = tree.n_bins, tree.n_nodes
    rng = np.random.default_rng(13)
    p, q = random_masses(rng, n, batch=(7,))
    q1 = q[2]
    qt = np.broadcast_to(q1, p.shape)
    v = rng.standard_normal(n)
    vt = np.broadcast_to(v, p.shape)
    for a, b, at, bt in ((p, q1, p, qt), (q1, p, qt, p)):
        value, grad = emdtree.emd_value_and_grad(a, b, tree, rho=rho)
        assert value.shape == (7,) and grad.shape == (7, n)
        ref_value, ref_grad = emdtree.emd_value_and_grad(np.array(at), np.array(bt), tree, rho=rho)
        assert_allclose(value, ref_value, rtol=1e-14, atol=0)
        assert_allclose(grad, ref_grad, rtol=0, atol=1e-14)
        assert_allclose(emdtree.emd(a, b, tree, rho=rho), ref_value, rtol=1e-14, atol=0)
        out = emdtree.phi(a, b, tree)
        assert out.shape == (7, m)
        assert_allclose(out, emdtree.phi(np.array(at), np.array(bt), tree), rtol=0, atol=1e-15)
        hv = emdtree.emd_hvp(a, b, v, tree, rho=rho)
        assert hv.shape == (7, n)
        ref_hv = emdtree.emd_hvp(np.array(at), np.array(bt), np.array(vt), tree, rho=rho)
        assert_allclose(hv, ref_hv, rtol=0, atol=1e-12 * max(1.0, np.abs(hv).max()))
        H = emdtree.emd_hessian(a, b, tree, rho=rho)
        assert H.shape == (7, n, n)
        assert_allclose(H, emdtree.emd_hessian(np.array(at), np.array(bt), tree, rho=rho), rtol=0, atol=0)
    # and against the oracle, row by row
    ref = [oracle.emd(p[r], q1, *_arrays(tree), rho) for r in range(7)]
    assert_allclose(emdtree.emd(p, q1, tree, rho=rho), ref, rtol=1e-10)


@pytest.mark.parametrize("rho", [1.0, 3.0])
def test_broadcast_outer_product_of_batches(rho):
    tree = _broadcast_tree()
    n, m = tree.n_bins, tree.n_nodes
    rng = np.random.default_rng(14)
    A, C = 3, 5
    p, _ = random_masses(rng, n, batch=(A, 1))
    q, _ = random_masses(rng, n, batch=(1, C))
    v = rng.standard_normal((A, 1, n))
    value, grad = emdtree.emd_value_and_grad(p, q, tree, rho=rho)
    assert value.shape == (A, C) and grad.shape == (A, C, n)
    out = emdtree.phi(p, q, tree)
    assert out.shape == (A, C, m)
    hv = emdtree.emd_hvp(p, q, v, tree, rho=rho)
    assert hv.shape == (A, C, n)
    H = emdtree.emd_hessian(p, q, tree, rho=rho)
    assert H.shape == (A, C, n, n)
    for a in range(A):
        for c in range(C):
            v_ac, g_ac = emdtree.emd_value_and_grad(p[a, 0], q[0, c], tree, rho=rho)
            assert_allclose(value[a, c], v_ac, rtol=1e-14)
            assert_allclose(grad[a, c], g_ac, rtol=0, atol=1e-14)
            assert_allclose(out[a, c], emdtree.phi(p[a, 0], q[0, c], tree), rtol=0, atol=1e-15)
            ref_hv = emdtree.emd_hvp(p[a, 0], q[0, c], v[a, 0], tree, rho=rho)
            assert_allclose(hv[a, c], ref_hv, rtol=0, atol=1e-12 * max(1.0, np.abs(hv).max()))
            assert_allclose(H[a, c], emdtree.emd_hessian(p[a, 0], q[0, c], tree, rho=rho), rtol=0, atol=0)
            assert_allclose(value[a, c], oracle.emd(p[a, 0], q[0, c], *_arrays(tree), rho), rtol=1e-10)


@pytest.mark.parametrize("rho", [1.0, 1.5, 2.0])
def test_axis_argument_matches_canonical_layout(rho):
    tree = _broadcast_tree()
    n, m = tree.n_bins, tree.n_nodes
    rng = np.random.default_rng(15)
    p, q = random_masses(rng, n, batch=(4, 6))  # canonical: (4, 6, n)
    v = rng.standard_normal((4, 6, n))
    value, grad = emdtree.emd_value_and_grad(p, q, tree, rho=rho)
    out = emdtree.phi(p, q, tree)
    hv = emdtree.emd_hvp(p, q, v, tree, rho=rho)
    H = emdtree.emd_hessian(p, q, tree, rho=rho)
    hv_tol = 1e-12 * max(1.0, np.abs(hv).max())
    for axis in (0, 1, -2, -3):
        ax = axis % 3
        pa, qa, va = (np.moveaxis(x, -1, ax) for x in (p, q, v))
        value_a, grad_a = emdtree.emd_value_and_grad(pa, qa, tree, rho=rho, axis=axis)
        assert value_a.shape == (4, 6) and grad_a.shape == pa.shape
        assert_allclose(value_a, value, rtol=1e-14)
        assert_allclose(np.moveaxis(grad_a, ax, -1), grad, rtol=0, atol=1e-14)
        assert_allclose(emdtree.emd(pa, qa, tree, rho=rho, axis=axis), value, rtol=1e-14)
        out_a = emdtree.phi(pa, qa, tree, axis=axis)
        assert out_a.shape[ax] == m and np.moveaxis(out_a, ax, -1).shape == (4, 6, m)
        assert_allclose(np.moveaxis(out_a, ax, -1), out, rtol=0, atol=1e-15)
        hv_a = emdtree.emd_hvp(pa, qa, va, tree, rho=rho, axis=axis)
        assert hv_a.shape == pa.shape
        assert_allclose(np.moveaxis(hv_a, ax, -1), hv, rtol=0, atol=hv_tol)
        H_a = emdtree.emd_hessian(pa, qa, tree, rho=rho, axis=axis)
        assert H_a.shape == (4, 6, n, n)
        assert_allclose(H_a, H, rtol=0, atol=1e-14 * max(1.0, np.abs(H).max()))
    # a 2-D input with the bins first
    value_t, grad_t = emdtree.emd_value_and_grad(p[0].T, q[0].T, tree, rho=rho, axis=0)
    assert value_t.shape == (6,) and grad_t.shape == (n, 6)
    assert_allclose(value_t, value[0], rtol=1e-14)
    assert_allclose(grad_t.T, grad[0], rtol=0, atol=1e-14)
    assert emdtree.phi(p[0].T, q[0].T, tree, axis=0).shape == (m, 6)


# --- output shapes and dtypes -----------------------------------------------------


def test_single_pair_gives_numpy_scalar():
    p, q = np.array([0.5, 0.5, 0.0, 0.0]), np.array([0.0, 0.0, 0.5, 0.5])
    value = emdtree.emd(p, q)
    assert isinstance(value, np.float64) and value == 2.0
    value32 = emdtree.emd(p.astype(np.float32), q.astype(np.float32))
    assert isinstance(value32, np.float32) and value32 == 2.0
    value, grad = emdtree.emd_value_and_grad(p, q, rho=2)
    assert isinstance(value, np.float64) and value == 1.5 and grad.shape == (4,)


def test_float32_in_float32_out():
    tree = _broadcast_tree()
    n = tree.n_bins
    rng = np.random.default_rng(16)
    p, q = random_masses(rng, n, batch=(5,), dtype=np.float32)
    v = rng.standard_normal((5, n)).astype(np.float32)
    for rho in RHOS:
        assert emdtree.emd(p, q, tree, rho=rho).dtype == np.float32
        assert emdtree.emd(p[0], q[0], tree, rho=rho).dtype == np.float32
        value, grad = emdtree.emd_value_and_grad(p, q, tree, rho=rho)
        assert value.dtype == grad.dtype == np.float32
        assert emdtree.emd_grad(p, q, tree, rho=rho).dtype == np.float32
        assert emdtree.emd_hvp(p, q, v, tree, rho=rho).dtype == np.float32
        assert emdtree.emd_hessian(p, q, tree, rho=rho).dtype == np.float32
    assert emdtree.phi(p, q, tree).dtype == np.float32
    assert emdtree.emd(p * 7, q * 7, tree, normalize="l1").dtype == np.float32
    assert emdtree.emd_grad(p * 7, q * 7, tree, normalize="l1").dtype == np.float32


def test_integers_and_mixed_dtypes_give_float64():
    p = np.array([2, 0, 1, 3])
    q = np.array([0, 1, 2, 3])
    ref = emdtree.emd(p.astype(np.float64), q.astype(np.float64))
    for a, b in ((p, q), (p.astype(np.int32), q.astype(np.uint8)), (p.astype(np.float32), q),
                 (p.astype(np.float32), q.astype(np.float64))):
        value = emdtree.emd(a, b)
        assert value.dtype == np.float64 and value == ref
        assert emdtree.emd_grad(a, b, rho=2).dtype == np.float64
        assert emdtree.phi(a, b).dtype == np.float64
        assert emdtree.emd_hvp(a, b, np.array([1, 0, 0, -1])).dtype == np.float64
        assert emdtree.emd_hessian(a, b, rho=1.5).dtype == np.float64
    # lists of Python ints
    assert emdtree.emd([2, 0, 1, 3], [0, 1, 2, 3]) == ref
    # p - q = [2, -1, -1, 0]: phi = [2, 1, 0] on the three unit edges
    assert ref == 3.0


# --- bad inputs -------------------------------------------------------------------

_P = np.array([0.25, 0.25, 0.5])
_Q = np.array([0.5, 0.25, 0.25])

# every public function, called as f(p, q, **kwargs)
FUNCS = {
    "emd": lambda p, q, **kw: emdtree.emd(p, q, **kw),
    "emd_grad": lambda p, q, **kw: emdtree.emd_grad(p, q, **kw),
    "emd_value_and_grad": lambda p, q, **kw: emdtree.emd_value_and_grad(p, q, **kw),
    "phi": lambda p, q, **kw: emdtree.phi(p, q, **kw),
    "emd_hvp": lambda p, q, **kw: emdtree.emd_hvp(p, q, np.zeros(np.shape(p)), **kw),
    "emd_hessian": lambda p, q, **kw: emdtree.emd_hessian(p, q, **kw),
}
WITH_RHO = ["emd", "emd_grad", "emd_value_and_grad", "emd_hvp", "emd_hessian"]
WITH_NORMALIZE = ["emd", "emd_grad", "emd_value_and_grad", "phi"]
ALL = list(FUNCS)


def _with(values, p=_P, q=_Q):
    """Copies of p and q with entries replaced: values = {('p', index): value}."""
    p, q = np.array(p, dtype=np.float64), np.array(q, dtype=np.float64)
    for (name, index), value in values.items():
        (p if name == "p" else q)[index] = value
    return p, q


@pytest.mark.parametrize("name", ALL)
def test_bin_axis_length_must_match_tree(name):
    with pytest.raises(ValueError, match="bin axis has length 3 but the tree has 4 bins"):
        FUNCS[name](_P, _Q, tree=Tree.chain(4))
    with pytest.raises(ValueError, match="bin axis has length 3 but the tree has 2 bins"):
        FUNCS[name](np.tile(_P, (2, 1)), np.tile(_Q, (2, 1)), tree=Tree.chain(2), axis=-1)


@pytest.mark.parametrize("name", ALL)
def test_shapes_must_broadcast(name):
    p = np.tile(_P, (2, 1))
    q = np.tile(_Q, (3, 1))
    with pytest.raises(ValueError, match=re.escape("shapes do not broadcast: p(2, 3), q(3, 3)")):
        FUNCS[name](p, q)
    with pytest.raises(ValueError, match="do not broadcast"):
        FUNCS[name](_P, np.array([0.5, 0.5]))


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize(
    "where, value, message",
    [
        (("p", 1), np.nan, "p[1] = nan is not finite"),
        (("q", 2), np.inf, "q[2] = inf is not finite"),
        (("p", 0), -np.inf, "p[0] = -inf is not finite"),
        (("q", 0), -0.25, "q[0] = -0.25 is negative"),
    ],
)
def test_bad_mass_values_named(name, where, value, message):
    p, q = _with({where: value})
    with pytest.raises(ValueError, match=re.escape(message)):
        FUNCS[name](p, q)


@pytest.mark.parametrize("name", ALL)
def test_bad_mass_position_in_batch(name):
    p = np.tile(_P, (2, 4, 1))
    q = np.tile(_Q, (2, 4, 1))
    p[1, 3, 2] = -0.5
    with pytest.raises(ValueError, match=re.escape("p[1, 3, 2] = -0.5 is negative")):
        FUNCS[name](p, q)
    # the same entry with the bins on axis 1
    with pytest.raises(ValueError, match=re.escape("p[1, 2, 3] = -0.5 is negative")):
        FUNCS[name](np.swapaxes(p, 1, 2), np.swapaxes(q, 1, 2), axis=1)
    q = np.tile(_Q, (2, 4, 1))
    q[0, 1, 0] = np.nan
    with pytest.raises(ValueError, match=re.escape("q[0, 1, 0] = nan is not finite")):
        FUNCS[name](np.tile(_P, (2, 4, 1)), q)


def test_bad_direction_named():
    with pytest.raises(ValueError, match=re.escape("v[0] = inf is not finite")):
        emdtree.emd_hvp(_P, _Q, np.array([np.inf, 0.0, 0.0]))


@pytest.mark.parametrize("name", ALL)
def test_unequal_totals(name):
    q = np.array([0.5, 0.25, 0.5])
    with pytest.raises(ValueError, match=r"sum\(p\) = .*1\.0.*sum\(q\) = .*1\.25.*normalize='l1'"):
        FUNCS[name](_P, q)
    p = np.tile(_P, (3, 1))
    qb = np.tile(_Q, (3, 1))
    qb[2] *= 2
    with pytest.raises(ValueError, match=r"at batch index \(2,\).*sum\(p\) = .*sum\(q\) = .*normalize='l1'"):
        FUNCS[name](p, qb)
    # check_inputs=False skips the check
    FUNCS[name](_P, q, check_inputs=False)


@pytest.mark.parametrize("name", WITH_RHO)
@pytest.mark.parametrize("rho", [0.5, 0.999, 0.0, -1.0, np.nan, np.inf])
def test_bad_rho(name, rho):
    with pytest.raises(ValueError, match="rho must be a finite number >= 1"):
        FUNCS[name](_P, _Q, rho=rho)


@pytest.mark.parametrize("name", ALL)
def test_axis_out_of_range(name):
    with pytest.raises(ValueError, match="axis 1 is out of bounds for inputs with 1 dimensions"):
        FUNCS[name](_P, _Q, axis=1)
    with pytest.raises(ValueError, match="axis -3 is out of bounds for inputs with 2 dimensions"):
        FUNCS[name](np.tile(_P, (2, 1)), np.tile(_Q, (2, 1)), axis=-3)


@pytest.mark.parametrize("name", WITH_NORMALIZE)
def test_normalize_errors(name):
    with pytest.raises(ValueError, match="normalize must be None, 'l1' or 'softmax'"):
        FUNCS[name](_P, _Q, normalize="l2")
    with pytest.raises(ValueError, match="normalize must be None, 'l1' or 'softmax'"):
        FUNCS[name](_P, _Q, normalize=True)
    with pytest.raises(ValueError, match="p has zero total mass: cannot normalize"):
        FUNCS[name](np.zeros(3), _Q, normalize="l1")
    q = np.tile(_Q, (3, 1))
    q[1] = 0.0
    with pytest.raises(ValueError, match=re.escape("q has zero total mass at batch index (1,)")):
        FUNCS[name](np.tile(_P, (3, 1)), q, normalize="l1")


@pytest.mark.parametrize("name", ALL)
def test_type_errors(name):
    with pytest.raises(TypeError, match="real"):
        FUNCS[name](_P.astype(np.complex128), _Q)
    with pytest.raises(TypeError, match="real"):
        FUNCS[name](_P, _Q + 0j)
    with pytest.raises(TypeError, match="emdtree.Tree"):
        FUNCS[name](_P, _Q, tree="chain")
    with pytest.raises(TypeError, match="emdtree.Tree"):
        FUNCS[name](_P, _Q, tree=np.array([-1, 0, 0, 0]))


@pytest.mark.parametrize("name", ALL)
def test_check_inputs_false_skips_value_checks(name):
    # unequal totals: emd^rho is still sum_i w_i |phi_i|^rho over the non-root nodes
    p, q = _P, np.array([0.5, 0.25, 0.5])
    FUNCS[name](p, q, check_inputs=False)
    if name == "emd":
        parents, weights, bins = chain(3)
        ref = oracle.emd(p, q, parents, weights, bins)
        assert emdtree.emd(p, q, check_inputs=False) == pytest.approx(ref, rel=1e-12)
    # shapes are still checked
    with pytest.raises(ValueError, match="bin axis has length 3 but the tree has 4 bins"):
        FUNCS[name](p, q, tree=Tree.chain(4), check_inputs=False)
