"""First calls in a new process: the NumPy pass that answers while the kernels
are not compiled, the choice between it and the kernels, the pure-Python tree
layout, and the command line's note on long compilations."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import textwrap
import warnings

import numba
import numpy as np
import pytest

import emdtree
from emdtree.engine import compile_notice as _compile_notice, tiers as _tiers
from emdtree.trees import layout as _layout
from emdtree.frameworks import losses as _losses
from emdtree.kernels import cpu

RNG = np.random.default_rng(20261205)


def random_tree(n_nodes: int, internal_bins: bool, rng=RNG) -> emdtree.Tree:
    parents = [-1] + [int(rng.integers(0, i)) for i in range(1, n_nodes)]
    weights = rng.uniform(0.1, 2.0, n_nodes)
    weights[0] = 0.0
    if internal_bins:
        bins = rng.permutation(n_nodes)[: max(2, n_nodes // 2)]
    else:
        children = np.bincount(np.array(parents[1:]), minlength=n_nodes)
        bins = rng.permutation(np.flatnonzero(children == 0))
    return emdtree.Tree.from_parents(parents, weights, bins=bins)


TREES = {
    "imagenet": emdtree.datasets.imagenet_wordnet(),
    "chain": emdtree.Tree.chain(37),
    "leaves": random_tree(300, internal_bins=False),
    "internal bins": random_tree(120, internal_bins=True),
}


@pytest.fixture
def path(monkeypatch):
    """``path("numpy")`` or ``path("kernel")``: which path every value-and-gradient call takes."""

    def choose(which: str) -> None:
        monkeypatch.setattr(_tiers, "use_numpy", lambda work, max_work=0, counted=True: which == "numpy")

    return choose


def rows_of(rng, n, n_bins, dtype):
    x = rng.random((n, n_bins)) ** 3
    return (x / x.sum(axis=1, keepdims=True)).astype(dtype)


@pytest.mark.parametrize("name", list(TREES))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("rho", [1.0, 2.0, 1.5, 3.0])
@pytest.mark.parametrize("n", [1, 5, 40])
@pytest.mark.parametrize("target", ["rows", "one row", "labels"])
def test_numpy_pass_agrees_with_the_kernels(path, name, dtype, rho, n, target):
    tree = TREES[name]
    rng = np.random.default_rng(n * 7 + int(rho * 10))
    p = rows_of(rng, n, tree.n_bins, dtype)
    if target == "labels":
        q = rng.integers(0, tree.n_bins, n)
    else:
        q = rows_of(rng, n if target == "rows" else 1, tree.n_bins, dtype)
    results = {}
    for which in ("numpy", "kernel"):
        path(which)
        results[which] = _losses.value_grad(p, q, tree, rho, True)
    (v_np, g_np), (v_k, g_k) = results["numpy"], results["kernel"]
    assert v_np.dtype == v_k.dtype == dtype and g_np.dtype == g_k.dtype == dtype
    assert v_np.shape == v_k.shape == (n,) and g_np.shape == g_k.shape == (n, tree.n_bins)
    tol = 2e-5 if dtype == np.float32 else 1e-11
    scale_v = max(1.0, float(np.abs(v_k).max()))
    scale_g = max(1.0, float(np.abs(g_k).max()))
    np.testing.assert_allclose(v_np, v_k, rtol=0, atol=tol * scale_v)
    np.testing.assert_allclose(g_np, g_k, rtol=0, atol=tol * scale_g)
    # dirt-conserving: each gradient row sums to zero, to the rounding of the entries before
    # the mean is taken out (up to a few times the largest projected entry)
    bound = 16 * tree.n_bins * scale_g * np.finfo(dtype).eps
    assert np.abs(g_np.astype(np.float64).sum(axis=1)).max() <= bound


def test_numpy_pass_value_is_the_exact_emd(path):
    """rho = 1 on one-hot rows is the length of the tree path between the two bins."""
    tree = TREES["internal bins"]
    eye = np.eye(tree.n_bins)
    d = tree.distance_matrix()
    path("numpy")
    for a, b in [(0, 1), (3, 7), (5, 5), (2, tree.n_bins - 1)]:
        assert float(emdtree.emd(eye[a], eye[b], tree)) == pytest.approx(d[a, b], abs=1e-12)


@pytest.mark.parametrize("bad, message", [
    (np.nan, r"is not finite"),
    (-0.25, r"negative"),
])
def test_numpy_pass_names_bad_input_as_the_kernels_do(path, bad, message):
    tree = TREES["leaves"]
    p = rows_of(np.random.default_rng(1), 4, tree.n_bins, np.float64)
    q = rows_of(np.random.default_rng(2), 4, tree.n_bins, np.float64)
    p[2, 5] = bad
    errors = []
    for which in ("numpy", "kernel"):
        path(which)
        with pytest.raises(ValueError, match=message) as info:
            emdtree.emd(p, q, tree)
        errors.append(str(info.value))
    assert errors[0] == errors[1]


@pytest.mark.parametrize("which", ["numpy", "kernel"])
def test_both_paths_refuse_an_edge_cost_beyond_float32(path, which):
    tree = emdtree.Tree.from_parents([-1, 0, 0], [0, 1e39, 1])
    path(which)
    with pytest.raises(ValueError, match="edge cost of 1e\\+39, beyond the float32 range"):
        emdtree.emd(np.array([1, 0], np.float32), np.array([0, 1], np.float32), tree)


def test_numpy_pass_refuses_unequal_totals_as_the_kernels_do(path):
    tree = TREES["chain"]
    p = rows_of(np.random.default_rng(1), 3, tree.n_bins, np.float32)
    q = rows_of(np.random.default_rng(2), 3, tree.n_bins, np.float32)
    q[1] *= 1.5
    errors = []
    for which in ("numpy", "kernel"):
        path(which)
        with pytest.raises(ValueError, match="total") as info:
            emdtree.emd_value_and_grad(p, q, tree, rho=2)
        errors.append(str(info.value))
    # the same message, with totals summed in float64 by the NumPy pass and in float32 lanes by the kernel
    number = r"[-+]?\d+\.\d+(?:e[-+]?\d+)?"
    assert re.sub(number, "x", errors[0]) == re.sub(number, "x", errors[1])
    np.testing.assert_allclose([float(x) for x in re.findall(number, errors[0])],
                               [float(x) for x in re.findall(number, errors[1])], rtol=1e-6)


@pytest.mark.parametrize("name", list(TREES))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("rho", [1.0, 2.0, 1.5])
@pytest.mark.parametrize("normalize", [None, "l1", "softmax"])
@pytest.mark.parametrize("shape", ["square", "condensed", "X and Y"])
def test_numpy_pairwise_agrees_with_the_kernels(path, name, dtype, rho, normalize, shape):
    tree = TREES[name]
    rng = np.random.default_rng(int(rho * 10) + len(name))
    x = rows_of(rng, 9, tree.n_bins, dtype)
    y = rows_of(rng, 4, tree.n_bins, dtype)
    if normalize is not None:  # any scale: the counts of a table, or logits
        x, y = x * 37, y * 11
    kw = {"condensed": True} if shape == "condensed" else {"Y": y} if shape == "X and Y" else {}
    results = []
    for which in ("numpy", "kernel"):
        path(which)
        results.append(emdtree.pairwise(x, tree=tree, rho=rho, normalize=normalize, **kw))
    got, want = results
    assert got.dtype == want.dtype == dtype and got.shape == want.shape
    tol = 1e-5 if dtype == np.float32 else 1e-11
    np.testing.assert_allclose(got, want, rtol=0, atol=tol * max(1.0, float(np.abs(want).max())))
    if shape == "square":
        assert np.array_equal(got, got.T) and not np.diag(got).any()


@pytest.mark.parametrize("bad, message", [
    (np.nan, r"X\[1, 4\] = nan is not finite"),
    (-1.0, r"X\[1, 4\] = -1.0 is negative"),
    (1e300, r"the total mass of X\[1\] overflows float32"),
])
def test_numpy_pairwise_names_bad_input_as_the_kernels_do(path, bad, message):
    tree = TREES["leaves"]
    x = rows_of(np.random.default_rng(5), 3, tree.n_bins, np.float32)
    x[1, 4] = np.float32(bad) if bad != 1e300 else np.float32(3e38)
    if bad == 1e300:
        x[1, 5] = np.float32(3e38)
    errors = []
    for which in ("numpy", "kernel"):
        path(which)
        with pytest.raises(ValueError, match=message) as info:
            emdtree.pairwise(x, tree=tree, normalize="l1")
        errors.append(str(info.value))
    assert errors[0] == errors[1]


# ----------------------------------------------------------------------------- the choice


@pytest.fixture
def lazy(monkeypatch):
    monkeypatch.setenv("EMDTREE_JIT", "lazy")
    monkeypatch.delenv("EMDTREE_JIT_BUDGET", raising=False)
    _tiers.reset()
    yield
    _tiers.reset()


def test_the_choice_depends_on_the_size_of_the_call_only(lazy, monkeypatch):
    """Small calls run NumPy code, larger calls the kernel, whatever is compiled or cached."""
    assert _tiers.use_numpy(1000)
    assert _tiers.use_numpy(_tiers.MAX_WORK)
    assert not _tiers.use_numpy(_tiers.MAX_WORK + 1)
    assert _tiers.use_numpy(50, max_work=50) and not _tiers.use_numpy(51, max_work=50)
    assert _tiers.use_numpy(10 ** 9, max_work=10 ** 9, counted=False)  # pairwise: its size only
    tree = TREES["leaves"]
    p = rows_of(np.random.default_rng(3), 40, tree.n_bins, np.float64)
    monkeypatch.setenv("EMDTREE_JIT", "eager")
    emdtree.emd(p, p[::-1], tree)  # compiles (or loads) the kernel in this process
    assert not _tiers.use_numpy(10)
    monkeypatch.setenv("EMDTREE_JIT", "lazy")
    assert cpu.value_grad_serial.overloads
    assert _tiers.use_numpy(100)  # a compiled kernel does not change the choice


def test_the_numpy_pass_ends_when_its_work_budget_is_spent(lazy, monkeypatch):
    """The switch to the kernels comes after a fixed amount of work: the same calls switch at the
    same call in every run."""
    monkeypatch.setattr(_tiers, "WORK_BUDGET", 1000)
    assert [_tiers.use_numpy(300) for _ in range(5)] == [True, True, True, False, False]
    assert not _tiers.use_numpy(1)  # spent: small calls too run the kernel from then on
    _tiers.reset()
    assert [_tiers.use_numpy(300) for _ in range(5)] == [True, True, True, False, False]


def test_the_readme_first_calls_run_numpy_code(lazy):
    tree = TREES["imagenet"]
    assert _tiers.use_numpy(512 * tree.n_nodes)


def test_the_old_time_budget_is_named_as_gone(lazy, monkeypatch):
    monkeypatch.setattr(_tiers, "_warned_budget", False)
    monkeypatch.setenv("EMDTREE_JIT_BUDGET", "5")
    with pytest.warns(FutureWarning, match="EMDTREE_JIT_BUDGET has no effect"):
        assert _tiers.use_numpy(10)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _tiers.use_numpy(10)  # once per process


def test_a_bad_setting_is_named(lazy, monkeypatch):
    monkeypatch.setenv("EMDTREE_JIT", "eagre")
    with pytest.raises(ValueError, match="EMDTREE_JIT='eagre': expected"):
        _tiers.use_numpy(10)


FIRST_CALLS = """
import json, sys, numpy as np
from numba.core import event
compiled = []
class L(event.Listener):
    def on_start(self, ev): compiled.append(ev.data["dispatcher"].py_func.__qualname__)
    def on_end(self, ev): pass
event.register("numba:compile", L())
import emdtree
tree = emdtree.datasets.imagenet_wordnet()
rng = np.random.default_rng(0)
p = rng.random((512, tree.n_bins)).astype(np.float32); p /= p.sum(axis=1, keepdims=True)
q = np.eye(tree.n_bins, dtype=np.float32)[rng.integers(0, 1000, 512)]
dist = emdtree.emd(p, q, tree)
loss, grad = emdtree.emd_value_and_grad(p, q, tree, rho=2)
chain = emdtree.emd(p[:3, :10] / p[:3, :10].sum(1, keepdims=True), np.full((3, 10), 0.1, np.float32))
pairs = emdtree.pairwise(p[:60].astype(np.float64), tree=tree, condensed=True, normalize="l1")
np.savez(sys.argv[1], dist=dist, loss=loss, grad=grad, chain=chain, pairs=pairs)
print(json.dumps(compiled))
"""


def test_a_new_process_answers_its_first_calls_without_compiling(tmp_path):
    """The README's first calls and a distance matrix, with an empty Numba cache: no
    kernel is compiled, and the results agree with those of the kernels."""
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "cache"))
    env.pop("EMDTREE_JIT", None)
    out = subprocess.run([sys.executable, "-c", FIRST_CALLS, str(tmp_path / "r.npz")], env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
    got = np.load(tmp_path / "r.npz")
    rng = np.random.default_rng(0)
    tree = TREES["imagenet"]
    p = rng.random((512, tree.n_bins)).astype(np.float32)
    p /= p.sum(axis=1, keepdims=True)
    q = np.eye(tree.n_bins, dtype=np.float32)[rng.integers(0, 1000, 512)]
    np.testing.assert_allclose(got["dist"], emdtree.emd(p, q, tree), rtol=1e-5)
    loss, grad = emdtree.emd_value_and_grad(p, q, tree, rho=2)
    np.testing.assert_allclose(got["loss"], loss, rtol=1e-5)
    np.testing.assert_allclose(got["grad"], grad, rtol=0, atol=2e-5 * np.abs(grad).max())
    c = p[:3, :10] / p[:3, :10].sum(1, keepdims=True)
    np.testing.assert_allclose(got["chain"], emdtree.emd(c, np.full((3, 10), 0.1, np.float32)), rtol=1e-5)
    pairs = emdtree.pairwise(p[:60].astype(np.float64), tree=tree, condensed=True, normalize="l1")
    np.testing.assert_allclose(got["pairs"], pairs, rtol=1e-11)


# ----------------------------------------------------------------------------- the layout


@pytest.mark.parametrize("n", [1, 2, 3, 40, 700])
def test_python_layout_is_the_kernels_layout(n):
    rng = np.random.default_rng(n)
    for _ in range(5):
        parents = np.array([-1] + [int(rng.integers(0, i)) for i in range(1, n)], dtype=np.int64)
        perm = rng.permutation(n)
        inv = np.argsort(perm)
        parents = np.where(parents[perm] >= 0, inv[np.maximum(parents[perm], 0)], -1).astype(np.int64)
        root = int(np.flatnonzero(parents < 0)[0])
        order, reached = _layout._postorder(parents, root)
        order_py, reached_py = _layout._postorder_py(parents, root)
        assert reached == reached_py == n
        np.testing.assert_array_equal(order, order_py)
        at = rng.integers(0, 3, n).astype(np.float64)
        numba_arrays = _layout._fill_layout(parents, order, at)
        for a, b in zip(numba_arrays, _layout._fill_layout_py(parents, order, at)):
            assert a.dtype == b.dtype
            np.testing.assert_array_equal(a, b)


def test_python_layout_stops_at_a_cycle_through_the_root():
    parents = np.array([2, 0, 1], dtype=np.int64)
    assert _layout._postorder_py(parents, 0)[1] == _layout._postorder(parents, 0)[1] == -1
    with pytest.raises(ValueError, match="cycle"):
        emdtree.Tree.from_parents([-1, 2, 3, 1], [0, 1, 1, 1])


# ----------------------------------------------------------------------------- the note


def compile_probe(name: str):
    source = textwrap.dedent(f"""
        def {name}(x):
            s = 0.0
            for i in range(x.shape[0]):
                s += x[i] * x[i]
            return s
    """)
    scope = {"__name__": "emdtree._probe"}
    exec(source, scope)
    return numba.njit(scope[name])


def test_a_long_compilation_says_so_once(monkeypatch):
    monkeypatch.setattr(_compile_notice, "_listener", None)
    stream = io.StringIO()
    _compile_notice.announce(stream, after_s=0.0)
    try:
        compile_probe("probe_a")(np.ones(3))
        compile_probe("probe_b")(np.ones(3))  # once per process
    finally:
        _compile_notice._listener.said = True  # this process's listener stays registered: keep it silent
    lines = stream.getvalue().splitlines()
    assert lines == [_compile_notice._MESSAGE]


def test_a_short_compilation_says_nothing(monkeypatch):
    monkeypatch.setattr(_compile_notice, "_listener", None)
    stream = io.StringIO()
    _compile_notice.announce(stream, after_s=60.0)
    try:
        compile_probe("probe_c")(np.ones(3))
    finally:
        _compile_notice._listener.said = True
    assert stream.getvalue() == ""


def test_info_says_whether_the_kernels_are_cached(monkeypatch, capsys):
    from emdtree.__main__ import main

    monkeypatch.setenv("EMDTREE_JIT", "lazy")
    for cached, expected in ((True, "value and gradient, all pairs: cached; small calls run NumPy code"),
                             (False, "not cached yet; small calls run NumPy code")):
        monkeypatch.setattr(_tiers, "in_cache", lambda kernel, cached=cached: cached)
        assert main(["info"]) == 0
        row = [line for line in capsys.readouterr().out.splitlines() if line.startswith("Kernels ")]
        assert len(row) == 1 and expected in row[0], row
