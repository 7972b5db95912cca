"""emdtree shares the process with a framework: its parallel kernels leave the
framework's thread settings as they were, and size themselves to what it leaves.

The subprocess cases run in a fresh interpreter each: Numba's threading layer
starts once per process, and the change it made (PyTorch's OpenMP thread count
going from the user's setting to Numba's) happened at that start.
"""

from __future__ import annotations

import os
import subprocess
import sys
import types
from pathlib import Path

import numba
import pytest

from emdtree.engine import threads

ROOT = Path(__file__).resolve().parents[1]

_SCRIPT = r"""
import sys
import numpy as np
import torch

torch.set_num_threads(int(sys.argv[1]))
model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))
x, y = torch.randn(256, 32), torch.randint(0, 10, (256,))
torch.nn.functional.cross_entropy(model(x), y).backward()  # torch has run its own threads
before = torch.get_num_threads()

import numba
import emdtree
from emdtree.engine import threads

tree = emdtree.Tree.chain(100)
r = np.random.default_rng(0)
p = r.random((512, 100)); p /= p.sum(axis=1, keepdims=True)
q = r.random((512, 100)); q /= q.sum(axis=1, keepdims=True)
planned = threads.usable_threads()
value, grad = emdtree.emd_value_and_grad(p, q, tree, rho=2)
assert np.isfinite(value).all() and np.isfinite(grad).all()
torch.nn.functional.cross_entropy(model(x), y).backward()
try:
    layer = numba.threading_layer()
except ValueError:  # no parallel region has run
    layer = "none"
print("threads", before, planned, layer, torch.get_num_threads(), flush=True)
"""


def _run(torch_threads: int, env: dict[str, str], tmp_path: Path) -> tuple[int, int, str, int]:
    pytest.importorskip("torch")
    script = tmp_path / "neighbour.py"
    script.write_text(_SCRIPT)
    full = dict(os.environ, PYTHONPATH=str(ROOT), EMDTREE_JIT="eager", EMDTREE_PARALLEL_MIN_WORK="0")
    for name in ("EMDTREE_NUM_THREADS", "NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "NUMBA_THREADING_LAYER",
                 "NUMBA_THREADING_LAYER_PRIORITY"):
        full.pop(name, None)
    full.update(env)
    result = subprocess.run([sys.executable, str(script), str(torch_threads)], env=full, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    line = [s for s in result.stdout.splitlines() if s.startswith("threads ")][-1].split()
    return int(line[1]), int(line[2]), line[3], int(line[4])


_OMP = {"NUMBA_THREADING_LAYER": "omp"}


@pytest.mark.parametrize("torch_threads, env, emdtree_threads", [
    (1, {**_OMP, "EMDTREE_NUM_THREADS": "2"}, 2),  # emdtree asked for more threads than torch has
    (2, {**_OMP, "NUMBA_NUM_THREADS": "3"}, 3),    # Numba's layer starts with a count torch does not have
])
def test_openmp_layer_leaves_torch_thread_count(torch_threads, env, emdtree_threads, tmp_path):
    before, planned, layer, after = _run(torch_threads, env, tmp_path)
    assert before == torch_threads
    assert planned == emdtree_threads and layer == "omp", "the call must take the parallel path on OpenMP"
    assert after == torch_threads


def test_unchosen_layer_is_not_torchs_openmp(tmp_path):
    try:
        from numba.np.ufunc import tbbpool  # noqa: F401
        expected = "tbb"
    except ImportError:
        expected = "workqueue"
    before, planned, layer, after = _run(1, {"EMDTREE_NUM_THREADS": "2", "NUMBA_NUM_THREADS": "3"}, tmp_path)
    assert (before, planned, after) == (1, 2, 1)
    assert layer == expected


def test_default_threads_follow_torch_set_below_the_cores(tmp_path):
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs two CPUs")
    before, planned, layer, after = _run(1, {}, tmp_path)
    assert (before, planned, after) == (1, 1, 1)
    assert layer == "none", "a call sized to one thread runs serially and leaves Numba's layer unstarted"


@pytest.fixture
def clean_env(monkeypatch):
    for name in ("EMDTREE_NUM_THREADS", "NUMBA_NUM_THREADS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(threads, "layer_started", lambda: False)  # Numba's count is its default
    monkeypatch.setitem(sys.modules, "torch", None)
    return monkeypatch


def test_explicit_setting_wins_and_is_capped(clean_env):
    limit = numba.config.NUMBA_NUM_THREADS
    clean_env.setenv("EMDTREE_NUM_THREADS", "1")
    assert threads.default_threads() == 1
    assert threads.usable_threads() == 1
    assert threads.usable_threads(limit) == limit  # a count the call names is kept
    clean_env.setenv("EMDTREE_NUM_THREADS", str(limit + 5))
    assert threads.default_threads() == limit


@pytest.mark.parametrize("text", ["0", "-2", "two", "1.5"])
def test_bad_explicit_setting_names_the_variable(clean_env, text):
    clean_env.setenv("EMDTREE_NUM_THREADS", text)
    with pytest.raises(ValueError, match="EMDTREE_NUM_THREADS"):
        threads.default_threads()


def test_default_threads_follow_affinity_and_torch(clean_env):
    limit = numba.config.NUMBA_NUM_THREADS
    clean_env.setattr(threads, "_affinity", lambda: 1)
    assert threads.default_threads() == 1
    clean_env.setattr(threads, "_affinity", lambda: limit + 4)
    assert threads.default_threads() == limit
    clean_env.setitem(sys.modules, "torch", types.SimpleNamespace(get_num_threads=lambda: 1))
    assert threads.default_threads() == 1  # torch set below the cores
    clean_env.setitem(sys.modules, "torch", types.SimpleNamespace(get_num_threads=lambda: limit + 4))
    assert threads.default_threads() == limit  # torch at every core: no cap
