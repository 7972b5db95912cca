"""``emdtree.wasserstein_1d``: weighted samples on the real line, against SciPy."""

import numpy as np
import pytest
from scipy import stats

import emdtree
from emdtree import wasserstein_1d, wasserstein_1d_value_and_grad

RTOL = 1e-12


def scipy_loop(u, v, uw=None, vw=None):
    """SciPy, one pair at a time, over the leading dimension of 2-D arrays."""
    return np.array([stats.wasserstein_distance(u[i], v[i], None if uw is None else uw[i],
                                                None if vw is None else vw[i]) for i in range(u.shape[0])])


# ----------------------------------------------------------------------------- SciPy's own test cases
# (scipy/stats/tests/test_stats.py, TestWassersteinDistance): the same arguments and assertions, with
# wasserstein_1d in place of wasserstein_distance, and each value also compared with SciPy's.

SCIPY_CASES = [
    # test_simple
    (([0, 1], [0], [1, 1], [1]), 0.5),
    (([0, 1], [0], [3, 1], [1]), 0.25),
    (([0, 2], [0], [1, 1], [1]), 1.0),
    (([0, 1, 2], [1, 2, 3]), 1.0),
    # test_same_distribution
    (([1, 2, 3], [2, 1, 3]), 0.0),
    (([1, 1, 1, 4], [4, 1], [1, 1, 1, 1], [1, 3]), 0.0),
    # test_shift
    (([0], [1]), 1.0),
    (([-5], [5]), 10.0),
    (([1, 2, 3, 4, 5], [11, 12, 13, 14, 15]), 10.0),
    (([4.5, 6.7, 2.1], [4.6, 7, 9.2], [3, 1, 1], [1, 3, 1]), 2.5),
]


@pytest.mark.parametrize("args, expected", SCIPY_CASES)
def test_scipy_cases(args, expected):
    got = wasserstein_1d(*args)
    assert isinstance(got, np.float64)
    np.testing.assert_allclose(got, expected, rtol=1e-7)  # SciPy's own tolerance (assert_allclose)
    np.testing.assert_allclose(got, stats.wasserstein_distance(*args), rtol=RTOL, atol=1e-15)
    if expected == 0.0:
        assert got == 0.0  # SciPy asserts equality here


def test_scipy_combine_weights():
    a = wasserstein_1d([0, 0, 1, 1, 1, 1, 5], [0, 3, 3, 3, 3, 4, 4], [1] * 7, [1] * 7)
    b = wasserstein_1d([5, 0, 1], [0, 4, 3], [1, 2, 4], [1, 2, 4])
    np.testing.assert_allclose(a, b, rtol=RTOL)
    np.testing.assert_allclose(a, stats.wasserstein_distance([0, 0, 1, 1, 1, 1, 5], [0, 3, 3, 3, 3, 4, 4],
                                                             [1] * 7, [1] * 7), rtol=RTOL)


def test_scipy_collapse():
    u = np.arange(-10, 30, 0.3)
    v = np.zeros_like(u)
    np.testing.assert_allclose(wasserstein_1d(u, v), np.mean(np.abs(u)), rtol=RTOL)
    np.testing.assert_allclose(wasserstein_1d(u, v), stats.wasserstein_distance(u, v), rtol=RTOL)
    u_weights = np.arange(len(u))
    v_weights = u_weights[::-1]
    np.testing.assert_allclose(wasserstein_1d(u, v, u_weights, v_weights),
                               np.average(np.abs(u), weights=u_weights), rtol=RTOL)
    np.testing.assert_allclose(wasserstein_1d(u, v, u_weights, v_weights),
                               stats.wasserstein_distance(u, v, u_weights, v_weights), rtol=RTOL)


def test_scipy_zero_weight():
    a = wasserstein_1d([1, 2, 100000], [1, 1], [1, 1, 0], [1, 1])
    np.testing.assert_allclose(a, wasserstein_1d([1, 2], [1, 1], [1, 1], [1, 1]), rtol=RTOL)
    np.testing.assert_allclose(a, stats.wasserstein_distance([1, 2, 100000], [1, 1], [1, 1, 0], [1, 1]),
                               rtol=RTOL)


def test_scipy_inf_values():
    assert wasserstein_1d([1, 2, np.inf], [1, 1]) == np.inf
    assert wasserstein_1d([1, 2, np.inf], [-np.inf, 1]) == np.inf
    assert wasserstein_1d([1, -np.inf, np.inf], [1, 1]) == np.inf
    assert np.isnan(wasserstein_1d([1, 2, np.inf], [np.inf, 1]))  # SciPy: nan, with a RuntimeWarning


# ----------------------------------------------------------------------------- random cases


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("weighted", [False, True])
def test_random_against_scipy(seed, weighted):
    rng = np.random.default_rng(seed)
    n, m = rng.integers(1, 40, 2)
    # positions from a few values, so that many repeat within and across the two samples
    u = rng.integers(-5, 6, (30, n)) * 0.5 + (rng.random((30, n)) < 0.3) * rng.random((30, n))
    v = rng.integers(-5, 6, (30, m)) * 0.5
    uw = vw = None
    if weighted:
        uw = rng.random((30, n)) * (rng.random((30, n)) < 0.7)  # zero weights too
        vw = rng.integers(0, 3, (30, m)).astype(float)
        uw[:, 0] += 0.1
        vw[:, 0] += 1.0
    got = wasserstein_1d(u, v, uw, vw)
    want = scipy_loop(u, v, uw, vw)
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=1e-14)


def test_large_random_against_scipy():
    rng = np.random.default_rng(7)
    u, v = rng.normal(size=(8, 1000)), rng.normal(0.3, 2.0, size=(8, 700))
    uw, vw = rng.random((8, 1000)), rng.random((8, 700))
    uw[:, ::7] = 0.0
    np.testing.assert_allclose(wasserstein_1d(u, v, uw, vw), scipy_loop(u, v, uw, vw), rtol=RTOL)
    np.testing.assert_allclose(wasserstein_1d(u, v), scipy_loop(u, v), rtol=RTOL)


def test_batches_broadcast_and_axis():
    rng = np.random.default_rng(3)
    u = rng.normal(size=(2, 3, 5))
    v = rng.normal(size=(3, 4))  # broadcasts over the first dimension of u
    uw = rng.random((1, 3, 5))
    got = wasserstein_1d(u, v, uw)
    assert got.shape == (2, 3)
    for i in range(2):
        for j in range(3):
            want = stats.wasserstein_distance(u[i, j], v[j], uw[0, j])
            np.testing.assert_allclose(got[i, j], want, rtol=RTOL)
    # the sample axis first
    np.testing.assert_allclose(wasserstein_1d(np.moveaxis(u, -1, 0), v.T, np.moveaxis(uw, -1, 0), axis=0),
                               got, rtol=0, atol=0)
    # one reference distribution for the whole batch
    ref = rng.normal(size=6)
    np.testing.assert_allclose(wasserstein_1d(u, ref), scipy_loop(u.reshape(6, 5), np.tile(ref, (6, 1)))
                               .reshape(2, 3), rtol=RTOL)


def test_dtypes_and_empty_batch():
    u = np.array([[0.0, 1.0]], dtype=np.float32)
    assert wasserstein_1d(u, u + 1).dtype == np.float32
    assert wasserstein_1d(u, np.array([[1.0, 2.0]])).dtype == np.float64
    assert wasserstein_1d([0, 1], [2, 3]) == 2.0  # integers
    assert wasserstein_1d(np.zeros((0, 3)), np.zeros((0, 2))).shape == (0,)


def test_relaxation_rho_2_is_the_energy_distance():
    rng = np.random.default_rng(4)
    for _ in range(5):
        u, v = rng.normal(size=50), rng.normal(size=30)
        uw, vw = rng.random(50), rng.random(30)
        value = wasserstein_1d(u, v, uw, vw, rho=2)
        np.testing.assert_allclose(np.sqrt(2 * value), stats.energy_distance(u, v, uw, vw), rtol=1e-12)


def test_agrees_with_emd_on_a_chain():
    rng = np.random.default_rng(5)
    positions = np.sort(rng.random(12) * 10)
    p, q = rng.random((4, 12)), rng.random((4, 12))
    p /= p.sum(axis=1, keepdims=True)
    q /= q.sum(axis=1, keepdims=True)
    chain = emdtree.Tree.chain(12, spacing=np.diff(positions))
    for rho in (1.0, 1.5, 2.0):
        np.testing.assert_allclose(wasserstein_1d(positions, positions, p, q, rho=rho),
                                   emdtree.emd(p, q, chain, rho=rho), rtol=1e-12)
        _, (gu, gv) = wasserstein_1d_value_and_grad(positions, positions, p, q, rho=rho)
        np.testing.assert_allclose(gu, emdtree.emd_grad(p, q, chain, rho=rho), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(gv, emdtree.emd_grad(q, p, chain, rho=rho), rtol=1e-10, atol=1e-12)


# ----------------------------------------------------------------------------- gradient


@pytest.mark.parametrize("rho", [1.0, 1.5, 2.0, 3.0])
def test_gradient_by_finite_differences(rho):
    rng = np.random.default_rng(int(rho * 10))
    u, v = rng.normal(size=9), rng.normal(size=7)  # distinct positions: the CDFs differ on every gap
    uw, vw = rng.random(9) + 0.1, rng.random(7) + 0.1
    value, (gu, gv) = wasserstein_1d_value_and_grad(u, v, uw, vw, rho=rho)
    assert value == wasserstein_1d(u, v, uw, vw, rho=rho)
    np.testing.assert_allclose(gu.sum(), 0.0, atol=1e-14)
    np.testing.assert_allclose(gv.sum(), 0.0, atol=1e-14)
    eps = 1e-6
    for _ in range(5):
        du = rng.normal(size=9)
        du -= du.mean()  # a change that keeps the total weight
        dv = rng.normal(size=7)
        dv -= dv.mean()
        fd_u = (wasserstein_1d(u, v, uw + eps * du, vw, rho=rho)
                - wasserstein_1d(u, v, uw - eps * du, vw, rho=rho)) / (2 * eps)
        fd_v = (wasserstein_1d(u, v, uw, vw + eps * dv, rho=rho)
                - wasserstein_1d(u, v, uw, vw - eps * dv, rho=rho)) / (2 * eps)
        np.testing.assert_allclose(gu @ du, fd_u, rtol=1e-6, atol=1e-8)
        np.testing.assert_allclose(gv @ dv, fd_v, rtol=1e-6, atol=1e-8)
    # the total does not matter: scaling the weights leaves the value alone
    assert wasserstein_1d(u, v, 3 * uw, vw, rho=rho) == pytest.approx(value, rel=1e-13)


def test_gradient_batched_with_axis_and_unweighted():
    rng = np.random.default_rng(8)
    u, v = rng.normal(size=(6, 3)), rng.normal(size=(5, 3))  # samples along axis 0, 3 pairs
    value, (gu, gv) = wasserstein_1d_value_and_grad(u, v, axis=0, rho=2)
    assert value.shape == (3,) and gu.shape == (6, 3) and gv.shape == (5, 3)
    for j in range(3):
        _, (gu_j, gv_j) = wasserstein_1d_value_and_grad(u[:, j], v[:, j], np.ones(6), np.ones(5), rho=2)
        np.testing.assert_allclose(gu[:, j], gu_j, rtol=1e-13, atol=1e-15)
        np.testing.assert_allclose(gv[:, j], gv_j, rtol=1e-13, atol=1e-15)
        np.testing.assert_allclose(value[j], wasserstein_1d(u[:, j], v[:, j], rho=2), rtol=0)


def test_gradient_points_downhill():
    rng = np.random.default_rng(9)
    u, v = rng.normal(size=20), rng.normal(1.0, size=20)
    w = np.full(20, 1 / 20)
    start = wasserstein_1d(u, v, w)
    for _ in range(20):
        _, (gu, _) = wasserstein_1d_value_and_grad(u, v, w)
        w = np.clip(w - 0.01 * gu, 0, None)
    assert wasserstein_1d(u, v, w) < start


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize("args, kwargs, error, match", [
    (([], [1.0]), {}, ValueError, "u_values is empty"),
    (([1.0], []), {}, ValueError, "v_values is empty"),
    (([1.0, 2.0], [1.0], [1.0, 2.0, 3.0]), {}, ValueError, "u_weights has 3 entries along axis -1 but"),
    (([1.0, 2.0], [1.0], [1.0, -1.0]), {}, ValueError, r"u_weights has the entry -1.0 at sample 1, which is "
                                                      "negative"),
    (([1.0, 2.0], [1.0], None, [np.nan]), {}, ValueError, "v_weights has the entry nan at sample 0, which is "
                                                         "not finite"),
    (([1.0, 2.0], [1.0], [0.0, 0.0]), {}, ValueError, "u_weights sums to 0.0: the weights must have a "
                                                     "positive, finite total"),
    ((np.ones((2, 3)), np.ones((3, 3))), {}, ValueError, "does not broadcast with the batch shape"),
    (([1.0], [1.0]), {"rho": 0.5}, ValueError, "rho must be"),
    (([1.0], [1.0]), {"axis": 1}, ValueError, "axis 1 is out of bounds for u_values with 1 dimensions"),
    (([1.0], [1.0]), {"axis": 0.0}, TypeError, "axis must be an integer"),
    ((["a"], [1.0]), {}, TypeError, "u_values must hold real numbers"),
    ((1.0, [1.0]), {}, ValueError, "u_values must have a sample axis"),
])
def test_errors(args, kwargs, error, match):
    with pytest.raises(error, match=match):
        wasserstein_1d(*args, **kwargs)


def test_weight_errors_name_the_batch_index():
    w = np.ones((3, 2))
    w[2] = 0.0
    with pytest.raises(ValueError, match=r"u_weights at batch index \(2,\) sums to 0.0"):
        wasserstein_1d(np.ones((3, 2)), [1.0], w)


def test_parallel_merges_agree(monkeypatch):
    from emdtree.distances import line as _line

    rng = np.random.default_rng(10)
    u, v = rng.normal(size=(40, 30)), rng.normal(size=(40, 20))
    uw = rng.random((40, 30))
    serial = wasserstein_1d_value_and_grad(u, v, uw, rho=1.5)
    monkeypatch.setattr(_line, "_PARALLEL_MIN_WORK", 0)
    parallel = wasserstein_1d_value_and_grad(u, v, uw, rho=1.5)
    np.testing.assert_array_equal(parallel[0], serial[0])
    np.testing.assert_array_equal(parallel[1][0], serial[1][0])
    np.testing.assert_array_equal(parallel[1][1], serial[1][1])
    np.testing.assert_allclose(wasserstein_1d(u, v), scipy_loop(u, v), rtol=RTOL)
