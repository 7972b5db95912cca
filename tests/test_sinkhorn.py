"""emdtree.sinkhorn against POT, finite differences and the exact EMD."""

import os

import numpy as np
import pytest

import emdtree
from trees import random_masses, random_tree

# POT imports every installed framework as a backend unless told not to: only NumPy is used here.
for _framework in ("PYTORCH", "JAX", "TENSORFLOW", "CUPY"):
    os.environ.setdefault(f"POT_BACKEND_DISABLE_{_framework}", "1")
ot = pytest.importorskip("ot")

# POT warns when it stops at numItermax, which these tests do on purpose.
pytestmark = pytest.mark.filterwarnings("ignore:Sinkhorn did not converge")

METHODS = ("log", "caffe")


def _problem(seed, n=12, batch=3, zeros=False):
    rng = np.random.default_rng(seed)
    parents, weights, bins = random_tree(rng, 2 * n - 1)
    tree = emdtree.Tree.from_parents(parents, weights, bins)
    n = tree.n_bins
    p = rng.random((batch, n)) + 0.05
    q = rng.random((batch, n)) + 0.05
    if zeros:
        q[:, rng.permutation(n)[: n // 2]] = 0.0
    p /= p.sum(1, keepdims=True)
    q /= q.sum(1, keepdims=True)
    return tree, p, q


def _pot_value(p, q, M, lam, n_iter, stop=0.0):
    return np.array([ot.sinkhorn2(a, b, M, reg=1 / lam, numItermax=n_iter, stopThr=stop)
                     for a, b in zip(p, q)])


def _centred(x):
    return x - x.mean(-1, keepdims=True)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("lam,n_iter", [(0.5, 1), (2.0, 7), (5.0, 60)])
def test_equals_pot_after_the_same_iterations(method, lam, n_iter):
    # POT's kernel is exp(-M / reg), without the paper's "-1": the factor e^-1
    # is absorbed by v, so the iterates u, the plan and SD are the same.
    tree, p, q = _problem(1)
    M = tree.distance_matrix()
    res = emdtree.sinkhorn(p, q, M, lam=lam, n_iter=n_iter, method=method, return_grad=True)
    ref = _pot_value(p, q, M, lam, n_iter)
    np.testing.assert_allclose(res.value, ref, rtol=1e-10)
    assert res.n_iter == n_iter and not res.converged.any()
    # the gradient is the dual potential reg * log(u) of POT's iterate, centred
    for a, b, g in zip(p, q, res.grad):
        _, log = ot.sinkhorn(a, b, M, reg=1 / lam, numItermax=n_iter, stopThr=0.0, log=True)
        np.testing.assert_allclose(g, _centred(np.log(log["u"]) / lam), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("method", METHODS)
def test_converged_value_and_potentials_match_pot(method):
    tree, p, q = _problem(2, zeros=True)
    M = tree.distance_matrix()
    lam = 4.0
    res = emdtree.sinkhorn(p, q, tree, lam=lam, n_iter=5000, tol=1e-13, method=method, return_grad=True)
    assert res.converged.all() and res.n_iter < 5000
    assert res.marginal_error.max() <= 1e-13
    ref = _pot_value(p, q, M, lam, 5000, stop=1e-15)
    np.testing.assert_allclose(res.value, ref, rtol=1e-10)
    for a, b, g in zip(p, q, res.grad):
        with np.errstate(divide="ignore"):  # log(0) of q's empty bins inside POT
            _, log = ot.sinkhorn(a, b, M, reg=1 / lam, numItermax=5000, stopThr=1e-15,
                                 method="sinkhorn_log", log=True)
        np.testing.assert_allclose(g, _centred(log["log_u"] / lam), atol=1e-8)


def test_gradient_is_the_derivative_of_the_regularised_cost():
    # d/dt of <P, M> + (1/lam) sum P log P at the optimal plan, along
    # mass-conserving directions, by central differences.
    tree, p, q = _problem(3, n=8, batch=1)
    M, lam, a, b = tree.distance_matrix(), 3.0, p[0], q[0]

    def regularised(x):
        P = ot.sinkhorn(x, b, M, reg=1 / lam, numItermax=20000, stopThr=1e-15, method="sinkhorn_log")
        return (P * M).sum() + (P * np.log(P)).sum() / lam

    grad = emdtree.sinkhorn(a, b, M, lam=lam, n_iter=20000, tol=1e-14, return_grad=True).grad
    rng = np.random.default_rng(0)
    for _ in range(3):
        d = _centred(rng.standard_normal(a.size))
        h = 1e-5
        fd = (regularised(a + h * d) - regularised(a - h * d)) / (2 * h)
        assert abs(fd - grad @ d) <= 1e-6 * max(1.0, abs(fd))
    assert abs(grad.sum()) < 1e-12


@pytest.mark.parametrize("method", METHODS)
def test_the_two_methods_have_the_same_iterates(method):
    tree, p, q = _problem(4, batch=4)
    ref = emdtree.sinkhorn(p, q, tree, lam=6.0, n_iter=40, method="log", return_grad=True)
    res = emdtree.sinkhorn(p, q, tree, lam=6.0, n_iter=40, method=method, return_grad=True)
    np.testing.assert_allclose(res.value, ref.value, rtol=1e-12)
    np.testing.assert_allclose(res.grad, ref.grad, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(res.marginal_error, ref.marginal_error, rtol=1e-9)


def test_approaches_the_exact_emd_as_lambda_grows():
    tree, p, q = _problem(5, n=8, batch=2)
    exact = emdtree.emd(p, q, tree)
    gaps = []
    for lam in (1.0, 3.0, 10.0, 40.0):
        res = emdtree.sinkhorn(p, q, tree, lam=lam, n_iter=20000, tol=1e-7)
        assert res.converged.all()
        # the plan is feasible up to its marginal error, so its cost is at least
        # the optimum minus what that error can move
        assert np.all(res.value >= exact - 1e-7 * tree.distance_matrix().max())
        gaps.append(np.max(res.value / exact - 1))
    assert gaps[0] > gaps[1] > gaps[2] > gaps[3]
    assert gaps[2] < 0.01 and abs(gaps[3]) < 1e-6


def test_batch_equals_loop_broadcast_and_axis():
    tree, p, q = _problem(6, batch=5, zeros=True)
    q1 = q[0]
    res = emdtree.sinkhorn(p, q1, tree, lam=3.0, n_iter=30, return_grad=True)
    for i in range(p.shape[0]):
        one = emdtree.sinkhorn(p[i], q1, tree, lam=3.0, n_iter=30, return_grad=True)
        assert np.ndim(one.value) == 0
        np.testing.assert_allclose(res.value[i], one.value, rtol=1e-13)
        np.testing.assert_allclose(res.grad[i], one.grad, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(res.marginal_error[i], one.marginal_error, rtol=1e-10)
    p3 = p.reshape(5, 1, -1).repeat(2, axis=1)
    res3 = emdtree.sinkhorn(np.moveaxis(p3, -1, 0), q1[:, None, None], tree, lam=3.0, n_iter=30,
                            axis=0, return_grad=True)
    assert res3.value.shape == (5, 2) and res3.grad.shape == (tree.n_bins, 5, 2)
    np.testing.assert_allclose(res3.value[:, 1], res.value, rtol=1e-13)
    np.testing.assert_allclose(np.moveaxis(res3.grad, 0, -1)[:, 0], res.grad, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("method", METHODS)
def test_float32_against_float64_where_it_does_not_underflow(method):
    tree, p, q = _problem(7, batch=4)
    r64 = emdtree.sinkhorn(p, q, tree, lam=5.0, n_iter=50, method=method, return_grad=True)
    r32 = emdtree.sinkhorn(p.astype(np.float32), q.astype(np.float32), tree, lam=5.0, n_iter=50,
                           method=method, return_grad=True)
    assert r32.value.dtype == np.float32 and r32.grad.dtype == np.float32
    assert r32.marginal_error.dtype == np.float32
    # measured: about 1e-6 relative on the value, 2e-6 on the gradient
    np.testing.assert_allclose(r32.value, r64.value, rtol=2e-5)
    np.testing.assert_allclose(r32.grad, r64.grad, atol=2e-5 * np.abs(r64.grad).max())
    forced = emdtree.sinkhorn(p, q, tree, lam=5.0, n_iter=50, method=method, dtype=np.float32)
    assert forced.value.dtype == np.float32


def test_caffe_fails_in_float32_where_the_log_domain_does_not():
    tree, p, q = _problem(8, batch=3)
    lam = 400.0 / tree.distance_matrix().max()  # lam * max(M) = 400: exp(-400) underflows in float32
    p32, q32 = p.astype(np.float32), q.astype(np.float32)
    caffe = emdtree.sinkhorn(p32, q32, tree, lam=lam, n_iter=200, tol=1e-3, method="caffe",
                             return_grad=True)
    assert not np.all(np.isfinite(caffe.value)) or not np.all(np.isfinite(caffe.grad))
    assert not caffe.converged.all()
    log32 = emdtree.sinkhorn(p32, q32, tree, lam=lam, n_iter=200, method="log", return_grad=True)
    log64 = emdtree.sinkhorn(p, q, tree, lam=lam, n_iter=200, method="log", return_grad=True)
    assert np.all(np.isfinite(log32.value)) and np.all(np.isfinite(log32.grad))
    np.testing.assert_allclose(log32.value, log64.value, rtol=1e-4)
    # the float64 log domain still matches POT's own log-domain solver there
    M = tree.distance_matrix()
    ref = [ot.sinkhorn2(a, b, M, reg=1 / lam, numItermax=200, stopThr=0.0, method="sinkhorn_log")
           for a, b in zip(p, q)]
    np.testing.assert_allclose(log64.value, ref, rtol=1e-10)


def test_zero_mass_bins_in_the_log_domain():
    tree, p, q = _problem(9, batch=2)
    n = tree.n_bins
    p[:, :3] = 0.0
    p /= p.sum(1, keepdims=True)
    q = np.zeros_like(p)
    q[0, 5] = q[1, n - 1] = 1.0  # one-hot targets
    with np.errstate(invalid="raise", divide="raise", over="raise"):
        res = emdtree.sinkhorn(p, q, tree, lam=30.0, n_iter=3000, tol=1e-10, return_grad=True)
    assert np.all(np.isfinite(res.value)) and res.converged.all()
    # a one-hot target leaves a single coupling: SD is the exact EMD
    np.testing.assert_allclose(res.value, emdtree.emd(p, q, tree), rtol=1e-12)
    assert np.all(res.grad[:, :3] == -np.inf)
    finite = res.grad[:, 3:]
    assert np.all(np.isfinite(finite)) and np.abs(finite.sum(1)).max() < 1e-12


def test_large_lambda_takes_the_exact_log_sum_exp_path():
    # lam * M reaches 3000: the shifted kernel underflows and entries are recomputed exactly
    tree, p, q = _problem(10, batch=2)
    M = tree.distance_matrix()
    lam = 3000.0 / M.max()
    res = emdtree.sinkhorn(p, q, M, lam=lam, n_iter=50, return_grad=True)
    ref = [ot.sinkhorn2(a, b, M, reg=1 / lam, numItermax=50, stopThr=0.0, method="sinkhorn_log")
           for a, b in zip(p, q)]
    np.testing.assert_allclose(res.value, ref, rtol=1e-9)
    assert np.all(np.isfinite(res.grad))


def test_random_masses_helper_and_tree_cost_agree():
    rng = np.random.default_rng(11)
    tree = emdtree.Tree.chain(9)
    p, q = random_masses(rng, tree.n_bins, (2,))
    a = emdtree.sinkhorn(p, q, tree, lam=2.0, n_iter=20)
    b = emdtree.sinkhorn(p, q, tree.distance_matrix(), lam=2.0, n_iter=20)
    np.testing.assert_array_equal(a.value, b.value)


@pytest.mark.parametrize("kwargs,exc,match", [
    ({"lam": 0.0}, ValueError, "lam must be a finite number > 0"),
    ({"lam": np.nan}, ValueError, "lam"),
    ({"lam": "1"}, TypeError, "lam must be a real number"),
    ({"n_iter": 0}, ValueError, "n_iter must be >= 1"),
    ({"n_iter": 2.5}, TypeError, "n_iter must be an integer"),
    ({"tol": -1.0}, ValueError, "tol must be a finite number >= 0"),
    ({"method": "newton"}, ValueError, "method must be one of"),
    ({"dtype": np.int32}, ValueError, "dtype must be"),
])
def test_bad_parameters(kwargs, exc, match):
    p = np.full(4, 0.25)
    with pytest.raises(exc, match=match):
        emdtree.sinkhorn(p, p, emdtree.Tree.chain(4), **kwargs)


@pytest.mark.parametrize("p,q,cost,match", [
    ([0.5, 0.5, 0], [0.5, 0.5, np.nan], np.zeros((3, 3)), r"q\[2\] = nan is not finite"),
    ([0.5, 0.5, 0], [1.5, -0.5, 0], np.zeros((3, 3)), r"q\[1\] = -0.5 is negative"),
    ([0.5, 0.5, 0], [0.5, 0.5, 0.5], np.zeros((3, 3)), "equal total mass"),
    ([0, 0, 0], [0, 0, 0], np.zeros((3, 3)), "zero total mass"),
    ([0.5, 0.5, 0], [0.5, 0.5, 0], np.zeros((3, 2)), r"square .* got shape \(3, 2\)"),
    ([0.5, 0.5, 0], [0.5, 0.5, 0], np.zeros((4, 4)), "bin axis has length 3"),
    ([0.5, 0.5, 0], [0.5, 0.5, 0], -np.ones((3, 3)), r"cost\[0, 0\] = -1.0 .* finite and >= 0"),
    ([0.5, 0.5, 0], [0.5, 0.5, 0], np.full((3, 3), np.inf), r"cost\[0, 0\] = inf"),
    ([0.5, 0.5, 0], [0.5, 0.5, 0], np.array([["a"] * 3] * 3), "real matrix"),
    ([0.5, 0.5, 0], [0.5, 0.5, 0], emdtree.Tree.chain(4), "tree has 4 bins"),
    ([[0.5, 0.5, 0]] * 2, [[0.5, 0.5]] * 3, np.zeros((3, 3)), "do not broadcast"),
])
def test_bad_inputs(p, q, cost, match):
    with pytest.raises((ValueError, TypeError), match=match):
        emdtree.sinkhorn(p, q, cost)


@pytest.mark.parametrize("method", METHODS)
def test_path_equals_separate_runs(method):
    from emdtree.distances.sinkhorn import sinkhorn_path

    tree, p, q = _problem(12, batch=2)
    path = list(sinkhorn_path(p, q, tree, [1, 4, 9], lam=3.0, method=method))
    for n, res in zip([1, 4, 9], path):
        one = emdtree.sinkhorn(p, q, tree, lam=3.0, n_iter=n, method=method, return_grad=True)
        assert res.n_iter == n
        np.testing.assert_array_equal(res.value, one.value)
        np.testing.assert_array_equal(res.grad, one.grad)
    with pytest.raises(ValueError, match="n_iters must increase"):
        list(sinkhorn_path(p, q, tree, [4, 4]))
