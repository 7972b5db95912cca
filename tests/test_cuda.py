"""CUDA kernels: run ``cuda_cases.py`` in Numba's CUDA simulator, and the host-side pieces.

The simulator must be switched on before Numba is imported, so the cases run
in a subprocess with ``NUMBA_ENABLE_CUDASIM=1``. On a machine with a GPU,
``python -m pytest tests/cuda_cases.py`` runs the same cases on the device.
"""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from numpy.testing import assert_array_equal

from emdtree import Tree
from trees import TREE_CASES, random_tree

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
HAS_NUMBA_CUDA = importlib.util.find_spec("numba_cuda") is not None


def _run(args, env=None, timeout=300):
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.skipif(not HAS_NUMBA_CUDA, reason="numba-cuda is not installed")
def test_kernels_pass_in_cuda_simulator():
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    result = _run(["-m", "pytest", str(TESTS / "cuda_cases.py"), "-q", "-p", "no:cacheprovider"], env=env)
    tail = (result.stdout + result.stderr)[-6000:]
    assert result.returncode == 0, tail
    assert " passed" in result.stdout and "skipped" not in result.stdout.splitlines()[-1], tail


def test_import_emdtree_does_not_import_numba_cuda():
    code = (
        "import sys, numpy as np, emdtree\n"
        "emdtree.emd_value_and_grad(np.ones((3, 4)) / 4, np.ones(4) / 4, rho=1.5)\n"
        "emdtree.emd_hvp([0.5, 0.5], [0.5, 0.5], [1.0, -1.0])\n"
        "loaded = sorted(m for m in sys.modules\n"
        "                if m == 'numba.cuda' or m.startswith(('numba.cuda.', 'numba_cuda')))\n"
        "print(loaded)\n"
        "assert not loaded\n"
    )
    result = _run(["-c", code], timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


# --------------------------------------------------------------------------- #
# The packed index array (host side; no device needed)
# --------------------------------------------------------------------------- #

def _index(tree):
    from emdtree.engine.cuda import tree_index

    n = tree.n_nodes
    idx = tree_index(tree)
    assert idx.dtype == np.int32 and idx.shape == (6 * n,)
    names = ["start", "enter", "exit", "parent", "position"]
    blocks = {name: idx[k * n:(k + 1) * n] for k, name in enumerate(names)}
    return blocks | {"bins": idx[5 * n:5 * n + tree.n_bins], "non_bins": idx[5 * n + tree.n_bins:]}


@pytest.mark.parametrize("name,build", TREE_CASES, ids=[c[0] for c in TREE_CASES])
def test_euler_slots_nest_like_the_tree(name, build):
    tree = Tree.from_parents(*build())
    ix = _index(tree)
    n = tree.n_nodes
    enter, exit_, parent = ix["enter"].astype(np.int64), ix["exit"].astype(np.int64), ix["parent"]
    assert_array_equal(np.sort(np.concatenate([enter, exit_])), np.arange(2 * n))
    # every node's interval lies strictly inside its parent's
    child = np.flatnonzero(parent >= 0)
    assert np.all(enter[parent[child]] < enter[child]) and np.all(exit_[child] < exit_[parent[child]])
    # the running sum of +1 at entries and -1 at exits, read at a node's entry, counts
    # the nodes on its path from the root: the sum the gradient kernel takes of c_i
    events = np.zeros(2 * n)
    events[enter] = 1.0
    events[exit_] = -1.0
    assert_array_equal(np.cumsum(events)[enter], tree.layout.depth + 1)


def test_index_blocks_match_the_layout():
    tree = Tree.from_parents(*random_tree(np.random.default_rng(2), 40, bins_on_internal=True))
    lay = tree.layout
    ix = _index(tree)
    assert_array_equal(ix["start"], np.arange(tree.n_nodes) - lay.size + 1)
    assert_array_equal(ix["parent"], lay.parent)
    assert_array_equal(ix["position"], lay.position)
    assert_array_equal(ix["bins"], lay.bin_position)
    assert_array_equal(np.sort(np.concatenate([ix["bins"], ix["non_bins"]])), np.arange(tree.n_nodes))


def test_single_node_index():
    ix = _index(Tree.from_parents([-1]))
    firsts = [int(ix[k][0]) for k in ("start", "enter", "exit", "parent", "position", "bins")]
    assert firsts == [0, 0, 1, -1, 0, 0]
    assert ix["non_bins"].size == 0
