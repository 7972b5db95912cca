"""Same program, same bits: the choice between the NumPy pass and the kernels
depends on the call only; phi is summed the same way on every CPU path (so
rho = 1 gives the same subgradient); unchecked rows never read unset totals;
and the library runs with Numba's JIT disabled."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import emdtree
from emdtree.engine import tiers as _tiers

import oracle

ROOT = Path(__file__).resolve().parent.parent


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("EMDTREE_JIT", "EMDTREE_JIT_BUDGET")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep)
                                                       if p])
    env.update(extra)
    return env


# ----------------------------------------------------------------------------- same bits every run

# A seeded loop of value-and-gradient calls of mixed sizes on a chain and a small
# tree, as a short training run makes, whose first calls run the NumPy pass and
# the later ones the kernels: the hash of every output.
LOOP = r"""
import hashlib, sys, numpy as np, emdtree
emdtree.engine.tiers.WORK_BUDGET = 3_000_000  # the switch to the kernels falls inside the loop
rng = np.random.default_rng(1234)
tree = emdtree.Tree.from_parents([-1] + [int(i // 3) for i in range(1, 40)], rng.uniform(0.5, 2.0, 40))
chain = emdtree.Tree.chain(64)
h = hashlib.sha256()
sizes = [8, 3000, 40, 30000, 1, 5000]
n_kernel = 0
for step in range(24):
    t = tree if step % 2 else chain
    n = sizes[(step // 2) % len(sizes)]
    rho = (1.0, 2.0, 1.5)[step % 3]
    # float32 below the limit; the large calls in float64 only (fewer kernels to compile)
    for dtype in (np.float32, np.float64) if n < 30000 else (np.float64,):
        p = rng.random((n, t.n_bins)).astype(dtype); p /= p.sum(axis=1, keepdims=True)
        q = rng.random((n, t.n_bins)).astype(dtype); q /= q.sum(axis=1, keepdims=True)
        numpy_pass = emdtree.engine.tiers.would_use_numpy(n * t.n_nodes)
        v, g = emdtree.emd_value_and_grad(p, q, t, rho=rho)
        n_kernel += not numpy_pass
        h.update(v.tobytes()); h.update(g.tobytes())
print(h.hexdigest(), n_kernel)
"""


def run_loop(cache: Path) -> str:
    out = subprocess.run([sys.executable, "-c", LOOP], env=child_env(NUMBA_CACHE_DIR=str(cache)),
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


def test_a_seeded_loop_gives_the_same_bits_cold_twice_and_warm(tmp_path):
    first = run_loop(tmp_path / "cold1")
    second = run_loop(tmp_path / "cold2")
    warm = run_loop(tmp_path / "cold1")  # the cache the first run filled
    assert first == second == warm
    assert 0 < int(first[1]) < 36  # the loop runs the NumPy pass, then the kernels


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_same_bits_on_any_number_of_threads(dtype, monkeypatch):
    """Rows are independent in the kernels: the serial kernel and the parallel one with its work
    split in 2, 3 or 5 parts give the same bits."""
    import contextlib

    from emdtree.engine import driver as _driver

    monkeypatch.setenv("EMDTREE_JIT", "eager")
    monkeypatch.setattr(_driver, "parallel_launch", lambda n: contextlib.nullcontext())
    rng = np.random.default_rng(7)
    for tree in (emdtree.Tree.chain(50), emdtree.Tree.from_parents([-1] + [i // 4 for i in range(1, 90)],
                                                                      rng.uniform(0.5, 2, 90))):
        p = rng.random((300, tree.n_bins)).astype(dtype)
        p /= p.sum(axis=1, keepdims=True)
        q = p[::-1].copy()
        for rho in (1.0, 2.0, 1.5):
            monkeypatch.setattr(_driver, "PARALLEL_MIN_WORK", 10 ** 12)
            serial = emdtree.emd_value_and_grad(p, q, tree, rho=rho)
            monkeypatch.setattr(_driver, "PARALLEL_MIN_WORK", 0)
            for n_threads in (2, 3, 5):
                monkeypatch.setattr(_driver, "usable_threads", lambda n=n_threads: n)
                parallel = emdtree.emd_value_and_grad(p, q, tree, rho=rho)
                for a, b in zip(serial, parallel):
                    assert a.tobytes() == b.tobytes(), (rho, n_threads)


# ----------------------------------------------------------------------------- rho = 1 at phi = 0


def swapped(rng, n_rows: int, n: int, dtype) -> tuple[np.ndarray, np.ndarray]:
    """Rows p and q = p with random neighbours swapped: phi is exactly 0 between swaps."""
    p = rng.random((n_rows, n)) ** 2
    p = (p / p.sum(axis=1, keepdims=True)).astype(dtype)
    q = p.copy()
    for r in range(n_rows):
        k = 0
        while k < n - 1:
            if rng.random() < 0.4:
                q[r, k], q[r, k + 1] = p[r, k + 1], p[r, k]
                k += 2
            else:
                k += 1
    return p, q


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_rho_one_on_a_chain_gives_the_same_subgradient_on_every_path(dtype, monkeypatch):
    n = 37
    chain = emdtree.Tree.chain(n)
    # the same path with one more node above the top bin, at zero cost: not the canonical chain
    w = list(np.asarray(chain.weights)[:n - 1]) + [0.0, 0.0]
    tree = emdtree.Tree.from_parents(list(range(1, n + 1)) + [-1], w, bins=range(n))
    assert chain._is_canonical_chain and not tree._is_canonical_chain
    p, q = swapped(np.random.default_rng(0), 2000, n, dtype)
    results = {}
    for path in ("numpy", "kernel"):
        monkeypatch.setattr(_tiers, "use_numpy", lambda *args, path=path, **kw: path == "numpy")
        for name, t in (("chain", chain), ("tree", tree)):
            results[name, path] = emdtree.emd_grad(p, q, t, rho=1)
        # fewer than 8 rows: the one-row kernel
        results["rows", path] = np.concatenate([emdtree.emd_grad(p[i:i + 4], q[i:i + 4], tree, rho=1)
                                                for i in range(0, 40, 4)])
    want = np.stack([oracle.grad(p[r], q[r], tree.parents, tree.weights, tree.bins, rho=1.0)
                     for r in range(40)])
    # sign(phi) decides each entry: a flipped sign moves an entry by a whole edge cost
    tol = 4 * n * np.finfo(dtype).eps
    for key, got in results.items():
        np.testing.assert_allclose(got[:40], want, rtol=0, atol=tol, err_msg=str(key))
        np.testing.assert_allclose(got, results["tree", "numpy"][:got.shape[0]], rtol=0, atol=tol,
                                   err_msg=str(key))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_rho_one_on_a_tree_gives_the_same_subgradient_on_every_path(dtype, monkeypatch):
    """Bins swapped with siblings, many per row: phi cancels exactly at their parents
    only if every path sums the children in the same order."""
    rng = np.random.default_rng(11)
    tree = emdtree.Tree.from_parents([-1] + [int(rng.integers(0, i)) for i in range(1, 300)],
                                     rng.uniform(0.5, 2, 300))
    parents, bins = np.asarray(tree.parents), np.asarray(tree.bins)
    bin_of = {int(node): k for k, node in enumerate(bins)}
    p = rng.random((400, tree.n_bins)) ** 2
    p = (p / p.sum(axis=1, keepdims=True)).astype(dtype)
    q = p.copy()
    for r in range(q.shape[0]):
        perm = np.arange(tree.n_bins)
        for k in rng.permutation(tree.n_bins)[:60]:
            nodes = np.flatnonzero(parents == parents[bins[k]])
            siblings = [bin_of[int(c)] for c in nodes if int(c) in bin_of]
            j = int(rng.choice(siblings))
            perm[[k, j]] = perm[[j, k]]
        q[r] = p[r, perm]
    results = {}
    for path in ("numpy", "kernel"):
        monkeypatch.setattr(_tiers, "use_numpy", lambda *args, path=path, **kw: path == "numpy")
        results["blocked", path] = emdtree.emd_grad(p, q, tree, rho=1)
        results["rows", path] = np.concatenate([emdtree.emd_grad(p[i:i + 4], q[i:i + 4], tree, rho=1)
                                                for i in range(0, 40, 4)])
    want = results["blocked", "kernel"]
    tol = 64 * np.finfo(dtype).eps * np.abs(want).max()
    for key, got in results.items():
        np.testing.assert_allclose(got, want[:got.shape[0]], rtol=0, atol=tol, err_msg=str(key))


# ----------------------------------------------------------------------------- unchecked totals


@pytest.mark.parametrize("path", ["numpy", "kernel"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("rho", [1.0, 2.0, 1.5])
def test_an_unchecked_nan_row_stays_in_its_own_pairs(path, dtype, rho, monkeypatch):
    monkeypatch.setattr(_tiers, "use_numpy", lambda *args, **kw: path == "numpy")
    tree = emdtree.datasets.imagenet_wordnet()
    rng = np.random.default_rng(1)
    x = (rng.random((12, tree.n_bins)) + 0.01).astype(dtype)
    x[3, 7] = np.nan
    got = emdtree.pairwise(x, tree=tree, rho=rho, normalize="l1", check_inputs=False)
    valid = np.arange(12) != 3
    assert np.isnan(got[3, valid]).all() and np.isnan(got[valid, 3]).all()
    want = emdtree.pairwise(x[valid], tree=tree, rho=rho, normalize="l1")
    tol = 1e-5 if dtype == np.float32 else 1e-10
    np.testing.assert_allclose(got[np.ix_(valid, valid)], want, rtol=tol, atol=tol)


def test_row_totals_are_all_written_past_an_invalid_entry():
    from emdtree.kernels.checks import row_totals
    from emdtree.distances.rows import _numpy_row_totals

    x = np.ones((6, 40))
    x[1, 3] = np.nan
    x[4, 0] = -1.0
    for totals_of in (row_totals, _numpy_row_totals):
        totals = np.full(6, 123.0)
        assert totals_of(x, totals) == 43
        np.testing.assert_array_equal(totals, [40, np.nan, 40, 40, 38, 40])


def test_a_zero_total_is_named_unchecked_too():
    x = np.ones((4, 10))
    x[2] = 0.0
    with pytest.raises(ValueError, match=r"X\[2\] has zero total mass: cannot normalize"):
        emdtree.pairwise(x, normalize="l1", check_inputs=False)


# ----------------------------------------------------------------------------- NUMBA_DISABLE_JIT

NO_JIT = r"""
import json, sys, numpy as np, emdtree
sys.path.insert(0, sys.argv[1])
import oracle
assert emdtree.kernels.cpu.value_grad_serial.__class__.__name__ == "function"  # the JIT is off
rng = np.random.default_rng(3)
trees = {"tree": emdtree.Tree.from_parents([-1, 0, 0, 1, 1, 2, 2, 2], [0, 1, 2, 1.5, .5, 1, 3, .25]),
         "internal": emdtree.Tree.from_parents([-1, 0, 0, 1, 1], [0, 1, 2, 1.5, .5], bins=[4, 1, 3, 2]),
         "chain": emdtree.Tree.chain(19)}
worst = {}
for name, t in trees.items():
    par, w, b = t.parents, t.weights, t.bins
    for dtype in (np.float64, np.float32):
        for n in (3, 40):  # one-row and blocked kernels
            p = rng.random((n, t.n_bins)); p /= p.sum(1, keepdims=True); p = p.astype(dtype)
            q = rng.random((n, t.n_bins)); q /= q.sum(1, keepdims=True); q = q.astype(dtype)
            v = rng.normal(size=(n, t.n_bins)).astype(dtype)
            for rho in (1.0, 2.0, 1.5):
                rows = range(n)
                pairs = [
                    (emdtree.emd(p, q, t, rho=rho), [oracle.emd(p[r], q[r], par, w, b, rho) for r in rows]),
                    (emdtree.emd_grad(p, q, t, rho=rho),
                     [oracle.grad(p[r], q[r], par, w, b, rho) for r in rows]),
                    (emdtree.phi(p, q, t), [oracle.phi(p[r], q[r], par, b) for r in rows]),
                    (emdtree.pairwise(p, tree=t, rho=rho),
                     [[oracle.emd(p[i], p[j], par, w, b, rho) for j in rows] for i in rows]),
                ]
                if rho != 1.0:
                    pairs.append((emdtree.emd_hvp(p, q, v, t, rho=rho),
                                  [oracle.hvp(p[r], q[r], par, w, b, v[r], rho) for r in rows]))
                for i, (got, want) in enumerate(pairs):
                    want = np.asarray(want)
                    err = np.abs(np.asarray(got, np.float64) - want).max() / max(1.0, np.abs(want).max())
                    worst[f"{name} {np.dtype(dtype).name} rho={rho} #{i}"] = float(err)
print(json.dumps(worst))
"""


@pytest.mark.parametrize("jit", ["lazy", "eager"])
def test_the_library_runs_with_the_jit_disabled(tmp_path, jit):
    env = child_env(NUMBA_DISABLE_JIT="1", EMDTREE_JIT=jit, NUMBA_CACHE_DIR=str(tmp_path / "cache"))
    out = subprocess.run([sys.executable, "-c", NO_JIT, str(Path(__file__).parent)], env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    worst = json.loads(out.stdout.strip().splitlines()[-1])
    for key, err in worst.items():
        assert err <= (2e-5 if "float32" in key else 1e-12), (key, err)
