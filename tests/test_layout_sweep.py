"""The sweep order of the value-and-gradient kernels (emdtree.trees.layout.sweep_order)."""

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal

from emdtree import Tree
from emdtree.engine import driver as _driver
from emdtree.kernels import cpu
from emdtree.kernels import rows as rows_kernel
from emdtree.trees.layout import sweep_order
from trees import TREE_CASES, random_masses, random_tree


def _simple_bins(tree):
    """Bins that are the only bin of a non-root leaf, by brute force from ``parents``."""
    parents, bins = tree.parents, tree.bins
    has_child = np.zeros(tree.n_nodes, dtype=bool)
    has_child[parents[parents >= 0]] = True
    return np.array([not has_child[b] and parents[b] >= 0 for b in bins])


@pytest.mark.parametrize("case", [c[1] for c in TREE_CASES], ids=[c[0] for c in TREE_CASES])
def test_sweep_order_is_a_topological_relabelling(case):
    tree = Tree.from_parents(*case())
    lay = tree.layout
    order = sweep_order(lay)
    n = tree.n_nodes
    # a permutation of the layout positions that maps the tree onto itself
    assert_array_equal(np.sort(order.row), np.arange(n))
    assert_array_equal(order.parent[order.row[:-1]], order.row[lay.parent[:-1]])
    assert_array_equal(order.weight[order.row], lay.weight)
    assert_array_equal(order.bin_position, order.row[lay.bin_position])
    # every child before its parent, the root last
    assert order.parent[-1] == -1 and order.row[n - 1] == n - 1
    assert np.all(order.parent[:-1] > np.arange(n - 1))
    # the rows without a bin, ascending
    carries = np.zeros(n, dtype=bool)
    carries[order.bin_position] = True
    assert_array_equal(order.non_bin, np.flatnonzero(~carries))
    # the simple bins lead, in bin order, and nothing else comes before them
    simple = _simple_bins(tree)
    assert_array_equal(order.bin_position[simple], np.arange(simple.sum()))
    assert np.all(order.bin_position[~simple] >= simple.sum())


def _read_only(arrays):
    """Views with the flags of the library's arrays, so that no kernel compiles again."""
    views = []
    for a, like in zip(arrays, (True, None, True, True)):
        v = a.view()
        if like:
            v.flags.writeable = False
        views.append(v)
    return tuple(views)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("rho", [1.0, 2.0, 2.5])
@pytest.mark.parametrize("internal", [False, True])
def test_kernels_agree_on_post_order_and_sweep_order(dtype, rho, internal):
    # the sweeps need only a topological order: both numberings give the same
    # values and gradients up to the order of the floating-point additions
    tree = Tree.from_parents(*random_tree(np.random.default_rng(21), 200, bins_on_internal=internal))
    rng = np.random.default_rng(22)
    batch = cpu.BLOCK + 5  # a full block and a partial one
    p, q = random_masses(rng, tree.n_bins, batch=(batch,), dtype=dtype)
    p.flags.writeable = q.flags.writeable = False  # the variant that also takes writable inputs
    consts = _driver.consts_of(rho, np.dtype(dtype))
    arrays = {
        "post-order": _read_only(_driver.kernel_arrays(tree, np.dtype(dtype))[:4]),
        "sweep order": _driver.sweep_arrays(tree, np.dtype(dtype)),
    }
    for kernel, n_low in ((cpu.value_grad_serial, 2), (rows_kernel.value_grad_rows, batch)):
        out = {}
        for name, arr in arrays.items():
            value, grad = np.empty(batch, dtype), np.empty(batch * tree.n_bins, dtype)
            totals, low = np.empty((batch, 2)), np.empty(n_low, dtype if n_low == 2 else np.float64)
            kernel(p.ravel(), q.ravel(), 1, 1, np.zeros(0, np.int64), batch, *arr, _driver.mode_of(rho),
                   consts, True, value, grad, totals, low)
            out[name] = (value, grad, totals)
        tol = 2e-6 if dtype == np.float32 else 1e-13
        for a, b in zip(out["sweep order"], out["post-order"]):
            assert_allclose(a, b, rtol=tol, atol=tol * max(1.0, np.abs(b).max()))
