"""The case table itself: the oracle's softmax derivatives against finite differences, and the
properties each kind of case is built to have."""

from __future__ import annotations

import numpy as np
import pytest

import oracle

from .cases import CASES, FEW, Case
from .doors import DOORS, KNOWN_DEFECTS

TREE = (np.array([-1, 0, 0, 1, 1, 2]), np.array([0.0, 1.0, 2.0, 0.5, 1.5, 0.7]), np.array([3, 4, 5, 2, 0]))


def _central(f, x, h):
    out = []
    for k in range(len(x)):
        e = np.zeros_like(x)
        e[k] = h
        out.append((f(x + e) - f(x - e)) / (2 * h))
    return np.array(out)


@pytest.mark.parametrize("rho", [1.0, 1.5, 2.0, 3.0])
@pytest.mark.parametrize("masked", [False, True])
def test_oracle_softmax_derivatives_match_finite_differences(rho, masked):
    rng = np.random.default_rng(int(rho * 10) + masked)
    z = rng.normal(0.0, 1.0, 5)
    if masked:
        z[1] = -np.inf
    q = rng.dirichlet(np.ones(5))
    free = np.isfinite(z)
    zf = np.where(free, z, 0.0)

    def at(x):  # the masked logit stays -inf
        return np.where(free, x, -np.inf)

    g = oracle.grad_softmax(z, q, *TREE, rho)
    fd = _central(lambda x: oracle.emd_softmax(at(x), q, *TREE, rho), zf, 1e-6)
    np.testing.assert_allclose(g[free], fd[free], atol=1e-7)
    assert np.all(g[~free] == 0)
    hess = oracle.hessian_softmax(z, q, *TREE, rho)
    fd2 = _central(lambda x: oracle.grad_softmax(at(x), q, *TREE, rho), zf, 1e-5)
    np.testing.assert_allclose(hess[np.ix_(free, free)], fd2[np.ix_(free, free)], atol=1e-6)
    np.testing.assert_allclose(hess, hess.T, atol=1e-14)
    assert np.all(hess[~free] == 0) and np.all(hess[:, ~free] == 0)


def test_oracle_softmax_of_masked_logits():
    s = oracle.softmax(np.array([-np.inf, 0.0, np.log(3.0)]))
    np.testing.assert_allclose(s, [0.0, 0.25, 0.75], rtol=1e-15)


def _case(name: str) -> Case:
    return next(c for c in CASES if c.name == name)


def test_names_are_unique_and_few_cases_exist():
    names = [c.name for c in CASES]
    assert len(set(names)) == len(names)
    assert all(_case(name).small for name in FEW)


@pytest.mark.parametrize("case", [c for c in CASES if c.kind in ("tie", "swap")], ids=lambda c: c.name)
def test_ties_are_exact_zeros(case):
    for p, q in zip(case.p.astype(np.float64), case.q_dense().astype(np.float64)):
        phi = oracle.phi(p, q, case.parents, case.bins)[case.parents != -1]
        # the same zeros summed in the reverse order of the bins
        phi_rev = oracle.phi(p[::-1], q[::-1], case.parents, case.bins[::-1])[case.parents != -1]
        assert np.count_nonzero(phi == 0) >= 1
        np.testing.assert_array_equal(phi == 0, phi_rev == 0)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_case_inputs(case):
    rows, n = case.p.shape
    assert case.v.shape == (rows, n) and case.v.dtype == case.dtype
    assert case.value.shape == (rows,) and case.grad.shape == (rows, n)
    if case.normalize is None:
        assert np.all(case.p >= 0)
        np.testing.assert_allclose(case.grad.sum(axis=1), 0.0, atol=1e-12)
    if case.kind == "masked":
        assert np.isneginf(case.p).any() and np.all(case.grad[np.isneginf(case.p)] == 0)
    if case.kind in ("softmax", "labels") and case.normalize == "softmax":
        assert (case.p < 0).any()
    if case.kind == "zero-mass":
        assert np.all(case.p[:, 0] == 0) and np.all(case.q[:, 0] == 0)
    if case.labels:
        assert case.q.dtype == np.int64 and case.q.shape == (rows,)
    if case.hessian is not None:
        np.testing.assert_allclose(case.hessian, np.swapaxes(case.hessian, 1, 2), atol=1e-12)
    if case.kind == "chain":
        assert case.is_chain


def test_kinds_dtypes_and_exponents_are_covered():
    assert {c.kind for c in CASES} == {"tree", "chain", "tie", "swap", "zero-mass", "softmax", "masked",
                                        "labels"}
    assert {c.rho for c in CASES} == {1.0, 1.5, 2.0, 3.0}
    assert {c.dtype.name for c in CASES} == {"float32", "float64"}
    assert {c.rho for c in CASES if c.kind == "tree"} == {1.0, 1.5, 2.0, 3.0}


def test_every_door_takes_some_case():
    for door in DOORS:
        assert any(door.takes(c) for c in CASES), door.name


@pytest.mark.parametrize("backend,kind,want", [
    ("numpy-pass", "tree", "numpy-pass"), ("numpy-pass", "chain", "numpy-pass"),
    ("numba-serial", "tree", "blocked-serial"), ("numba-serial", "chain", "blocked-serial"),
    ("numba-parallel", "tree", "blocked-parallel"), ("numba-parallel", "chain", "blocked-parallel"),
    ("numba-chain", "chain", "chain-serial"),
    ("numba-rows", "tree", "rows"), ("numba-rows", "chain", "rows"),
])
def test_forced_backends_run_their_implementation(backend, kind, want):
    import numba

    from .doors import kernels_called

    if backend == "numba-parallel" and numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("needs two Numba threads")
    door = next(d for d in DOORS if d.name == f"api-{backend}")
    case = next(c for c in CASES if c.kind == kind and c.rho == 2.0)
    with kernels_called() as called:
        door.value_grad(case)
    assert called and set(called) == {want}, called


@pytest.mark.parametrize("case", [c for c in CASES if c.kind == "swap"], ids=lambda c: c.name)
def test_swap_cases_catch_phi_formed_from_two_cumulative_sums(case):
    # zero after every swapped pair from the differences; rounding noise somewhere from two sums
    assert np.all(np.cumsum(case.p - case.q, axis=1)[:, 1::2] == 0)
    assert np.any((np.cumsum(case.p, axis=1) - np.cumsum(case.q, axis=1))[:, 1::2] != 0)
