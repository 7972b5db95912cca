"""The short paths of a NumPy API call: plain rows, the compiled statistics check, shared constants.

Each short path must give what the general path gives: the same rows, the same
decision on the inputs, the same messages and the same bits.
"""

from __future__ import annotations

import numpy as np
import pytest

import emdtree
from emdtree.engine import driver, inputs
from emdtree.kernels.checks import stats_pass

from trees import random_tree

TREES = {
    "imagenet": emdtree.datasets.imagenet_wordnet(),
    "leaves": emdtree.Tree(*random_tree(np.random.default_rng(7), 300, bins_on_internal=True)),
}

FIELDS = ("steps", "n_rows", "batch_shape", "axis", "ndim", "dtype", "tree", "totals", "names", "shapes",
          "mass_eps", "normalize", "applied")


@pytest.fixture
def eager(monkeypatch):
    monkeypatch.setenv("EMDTREE_JIT", "eager")


def masses(rng, shape, dtype):
    p = rng.random(shape)
    return (p / p.sum(axis=-1, keepdims=True)).astype(dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(5,), (1, 5), (0, 5), (4, 5), (2, 3, 5), (1, 1, 5)])
@pytest.mark.parametrize("given_tree", [False, True])
def test_plain_rows_are_the_general_rows(shape, dtype, given_tree):
    rng = np.random.default_rng(0)
    p, q = masses(rng, shape, dtype), masses(rng, shape, dtype)
    q.flags.writeable = False  # a read-only argument becomes a read-only view as well
    tree = emdtree.Tree.chain(5) if given_tree else None
    for axis in (-1, len(shape) - 1):
        plain = inputs._plain_rows({"p": p, "q": q}, tree, axis, ("p", "q"))
        general = inputs._general_rows({"p": p, "q": q}, tree, axis, None, ("p", "q"), None)
        assert plain is not None
        for field in FIELDS:
            assert getattr(plain, field) == getattr(general, field), field
        assert type(plain.axis) is int and plain.dtype is general.dtype
        for a, b in zip(plain.arrays, general.arrays):
            assert a.shape == b.shape and a.dtype == b.dtype and np.array_equal(a, b)
            assert not a.flags.writeable and a.flags.c_contiguous
            assert np.shares_memory(a, b) or a.size == 0  # no copy
    assert p.flags.writeable  # the caller's array keeps its flags


def test_plain_rows_leave_every_other_input_to_the_general_path():
    rng = np.random.default_rng(1)
    p = masses(rng, (4, 6), np.float32)
    cases = {
        "not contiguous": ({"p": p[:, ::2], "q": p[:, ::2]}, -1),
        "Fortran order": ({"p": np.asfortranarray(p), "q": np.asfortranarray(p)}, -1),
        "two dtypes": ({"p": p, "q": p.astype(np.float64)}, -1),
        "broadcast": ({"p": p, "q": p[:1]}, -1),
        "integers": ({"p": (p * 10).astype(np.int64), "q": (p * 10).astype(np.int64)}, -1),
        "float16": ({"p": p.astype(np.float16), "q": p.astype(np.float16)}, -1),
        "big-endian": ({"p": p.astype(">f4"), "q": p.astype(">f4")}, -1),
        "bin axis first": ({"p": p, "q": p}, 0),
        "NumPy integer axis": ({"p": p, "q": p}, np.int64(-1)),
        "boolean axis": ({"p": p, "q": p}, True),
        "list": ({"p": p.tolist(), "q": p}, -1),
        "masked": ({"p": np.ma.masked_array(p), "q": p}, -1),
        "subclass": ({"p": p.view(np.recarray), "q": p}, -1),
        "no bins": ({"p": p[:, :0], "q": p[:, :0]}, -1),
        "scalar": ({"p": np.float32(1.0), "q": np.float32(1.0)}, -1),
    }
    for what, (arrays, axis) in cases.items():
        assert inputs._plain_rows(arrays, None, axis, ("p", "q")) is None, what
    assert inputs._plain_rows({"v": p}, None, -1, ("p", "q")) is None  # no mass among them


def message(call):
    with pytest.raises((ValueError, TypeError)) as info:
        call()
    return str(info.value)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_short_paths_say_what_the_general_path_says(dtype, eager):
    """Bad masses as plain C-contiguous arrays (the short paths) and as Fortran-ordered ones
    (converted by the general path) give the same message."""
    rng = np.random.default_rng(2)
    tree = TREES["leaves"]
    p, q = masses(rng, (40, tree.n_bins), dtype), masses(rng, (40, tree.n_bins), dtype)
    bad = {"NaN": (3, 1, np.nan), "inf": (38, 0, np.inf), "negative": (35, 2, -0.25),
           "total": (33, 4, 5.0)}
    for what, (r, k, x) in bad.items():
        p_bad = p.copy()
        p_bad[r, k] = x
        plain = message(lambda: emdtree.emd_value_and_grad(p_bad, q, tree, rho=2))
        general = message(lambda: emdtree.emd_value_and_grad(np.asfortranarray(p_bad), q, tree, rho=2))
        assert plain == general, what
        assert f"[{r}" in plain or f"({r},)" in plain, (what, plain)
    wrong = emdtree.Tree.chain(tree.n_bins + 1)
    assert (message(lambda: emdtree.emd_value_and_grad(p, q, wrong))
            == message(lambda: emdtree.emd_value_and_grad(np.asfortranarray(p), q, wrong)))
    # row totals near the dtype's largest number (their sum beyond it), and |phi|^3 beyond it
    big = np.zeros((40, tree.n_bins), dtype=dtype)
    big[:, 0] = 0.9 * np.finfo(dtype).max
    moved = np.roll(big, 1, axis=1)
    overflow = message(lambda: emdtree.emd_value_and_grad(big, moved, tree, rho=3))
    assert overflow == message(lambda: emdtree.emd_value_and_grad(np.asfortranarray(big), moved, tree, rho=3))
    assert "overflows" in overflow


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", ["imagenet", "chain"])
@pytest.mark.parametrize("n_rows", [1, 5, 32, 45])
def test_the_short_paths_give_the_same_bits(name, n_rows, dtype, eager):
    tree = TREES["imagenet"] if name == "imagenet" else emdtree.Tree.chain(300)
    rng = np.random.default_rng(3)
    p, q = masses(rng, (n_rows, tree.n_bins), dtype), masses(rng, (n_rows, tree.n_bins), dtype)
    for rho in (1, 2, 2.5):
        value, grad = emdtree.emd_value_and_grad(p, q, tree, rho=rho)
        value_f, grad_f = emdtree.emd_value_and_grad(np.asfortranarray(p), np.asfortranarray(q), tree,
                                                     rho=np.float64(rho))
        assert value.dtype == value_f.dtype == grad.dtype == grad_f.dtype == dtype
        assert value.shape == (n_rows,) and grad.shape == (n_rows, tree.n_bins)
        assert value.tobytes() == value_f.tobytes() and grad.tobytes() == grad_f.tobytes()
    v1, g1 = emdtree.emd_value_and_grad(p[0], q[0], tree, rho=2)
    assert np.ndim(v1) == 0 and isinstance(v1, np.generic) and g1.shape == (tree.n_bins,)


def test_valid_inputs_are_passed_by_the_compiled_check_alone(eager, monkeypatch):
    """The NumPy checks run only when the compiled pass over the statistics cannot vouch for them."""
    tree = TREES["imagenet"]
    rng = np.random.default_rng(4)
    p, q = masses(rng, (64, tree.n_bins), np.float32), masses(rng, (64, tree.n_bins), np.float32)
    expected = emdtree.emd_value_and_grad(p, q, tree, rho=2)

    def fail(*args, **kwargs):
        raise AssertionError("the full check ran")

    monkeypatch.setattr(inputs, "check_stats", fail)
    monkeypatch.setattr(inputs, "check_result", fail)
    for t in (tree, emdtree.Tree.chain(tree.n_bins)):
        value, grad = emdtree.emd_value_and_grad(p, q, t, rho=2)
    value, grad = emdtree.emd_value_and_grad(p, q, tree, rho=2)
    assert np.array_equal(value, expected[0]) and np.array_equal(grad, expected[1])
    p_bad = p.copy()
    p_bad[1, 2] = -1.0
    with pytest.raises(AssertionError, match="the full check ran"):
        emdtree.emd_value_and_grad(p_bad, q, tree, rho=2)


def full_checks_pass(rows, totals, low, value, grad) -> bool:
    try:
        inputs.check_stats(rows, totals, low)
        inputs.check_result(rows, 2.0, value, None if grad.size == 0 else grad.reshape(rows.n_rows, -1))
    except ValueError:
        return False
    return True


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_compiled_check_passes_only_what_the_full_checks_pass(dtype):
    """stats_pass True implies check_stats and check_result pass; on random statistics around
    every boundary (tolerance, signs, NaN, infinities, the dtype's range)."""
    rng = np.random.default_rng(5)
    n_rows, n_bins = 12, 7
    p = masses(rng, (n_rows, n_bins), dtype)
    rows = inputs.prepare({"p": p, "q": p}, None, -1, True, None, defer=True)
    tol = max(n_bins, 64) * rows.mass_eps
    big = float(np.finfo(dtype).max)
    # the arrays the full check reads again when the statistics look wrong: valid ones
    passed = failed = 0
    for trial in range(3000):
        totals = np.repeat(p.sum(axis=1, dtype=np.float64)[:, None], 2, axis=1)
        low = np.zeros(rng.integers(1, 4), dtype=rng.choice([dtype, np.float64]))
        value = rng.random(n_rows).astype(dtype)
        grad = rng.random(n_rows * n_bins).astype(dtype) if trial % 2 else np.zeros(0, dtype=dtype)
        for _ in range(rng.integers(0, 3)):
            r = rng.integers(n_rows)
            kind = rng.integers(9)
            if kind == 0:
                totals[r, rng.integers(2)] *= 1 + rng.choice([-1, 1]) * tol * rng.choice([0.5, 0.999, 1.0,
                                                                                        1.001, 2])
            elif kind == 1:
                totals[r, rng.integers(2)] = rng.choice([np.nan, np.inf, -np.inf, -1.0, 0.0])
            elif kind == 2:
                low[rng.integers(low.size)] = rng.choice([np.nan, -1e-30, -1.0, 0.0])
            elif kind == 3:
                totals[:] = big * rng.choice([0.2, 0.26, 0.3, 0.6]) / n_rows
            elif kind == 4:
                value[r] = rng.choice([np.nan, np.inf, big])
            elif kind == 5 and grad.size:
                grad[rng.integers(grad.size)] = rng.choice([np.nan, -np.inf, big])
            elif kind == 6:
                totals[r] = 0.0
        fast = stats_pass(totals, low, value, grad, tol, big)
        full = full_checks_pass(rows, totals, low, value, grad)
        assert full or not fast, (totals, low, value, grad)
        passed += fast
        failed += not full
    assert passed > 500 and failed > 500  # both sides are exercised


def test_the_shared_constants_are_never_written():
    rng = np.random.default_rng(6)
    tree = TREES["leaves"]
    for dtype in (np.float32, np.float64):
        for rho in (1.0, 2.0):
            consts = driver.consts_of(rho, np.dtype(dtype))
            assert driver.consts_of(rho, np.dtype(dtype)) is consts and consts.dtype == dtype
            p, q = masses(rng, (40, tree.n_bins), dtype), masses(rng, (40, tree.n_bins), dtype)
            emdtree.emd_value_and_grad(p, q, tree, rho=rho)
            assert consts.tolist() == [rho, rho - 1.0, rho * (rho - 1.0), rho - 2.0]
    assert driver.consts_of(2.5, np.dtype(np.float64)).tolist() == [2.5, 1.5, 3.75, 0.5]


def test_totals_beyond_float64_when_summed_warn_of_nothing(eager):
    """Rows whose totals are each near float64's largest number (their sum is not): the check reads
    the masses again rather than let NumPy's overflow warning reach the caller."""
    big = np.zeros((40, 10))
    big[:, 3] = 0.9 * np.finfo(np.float64).max
    value, grad = emdtree.emd_value_and_grad(big, big, rho=2)  # warnings are errors in the suite
    assert not value.any() and not grad.any()
    moved = np.roll(big, 1, axis=1)
    assert "overflows float64" in message(lambda: emdtree.emd_value_and_grad(big, moved, rho=3))
