"""emdtree.pairwise on dask arrays (threaded scheduler): the in-memory distances, lazily and blocked."""

import numpy as np
import pytest
from trees import random_tree

import emdtree
from emdtree import Tree

da = pytest.importorskip("dask.array")
dask = pytest.importorskip("dask")

RHOS = [1.0, 2.0, 1.5]


def sparse_counts(rng, n, n_bins, density=0.1, dtype=np.float64):
    """Non-negative rows, mostly zeros, each with a positive total."""
    x = np.floor(rng.random((n, n_bins)) * 20) * (rng.random((n, n_bins)) < density)
    x[np.arange(n), rng.integers(0, n_bins, n)] += 1.0
    return x.astype(dtype)


@pytest.fixture(scope="module")
def tree():
    return Tree(*random_tree(np.random.default_rng(5), 200))


def block_tasks(D):
    """Keys of the layers of a lazy matrix: {layer prefix: number of keys}."""
    counts = {}
    for key in dict(D.__dask_graph__()):
        name = key[0] if isinstance(key, tuple) else key
        prefix = name.rsplit("-", 1)[0]
        counts[prefix] = counts.get(prefix, 0) + 1
    return counts


@pytest.mark.parametrize("rho", RHOS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_square_equals_in_memory(tree, rho, dtype):
    rng = np.random.default_rng(1)
    X = sparse_counts(rng, 75, tree.n_bins, dtype=dtype)
    want = emdtree.pairwise(X, tree=tree, rho=rho, normalize="l1")
    D = emdtree.pairwise(da.from_array(X, chunks=(17, 40)), tree=tree, rho=rho, normalize="l1")
    assert isinstance(D, da.Array) and D.chunks == ((17, 17, 17, 17, 7),) * 2 and D.dtype == want.dtype
    got = D.compute(scheduler="threads")
    assert np.array_equal(got, got.T) and not np.any(np.diag(got))
    if dtype == np.float64:
        # the rho = 2 blocks are centred on their own mean: within the Gram bound of 1e-10
        np.testing.assert_allclose(got, want, rtol=1e-10 if rho == 2.0 else 1e-12, atol=1e-14)
    else:
        # float32 rows summed in other column sets (the columns constant over a block pair are left out)
        np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-6 * np.abs(want).max())


def test_each_block_transformed_once_and_each_pair_computed_once(tree):
    X = sparse_counts(np.random.default_rng(2), 60, tree.n_bins)
    D = emdtree.pairwise(da.from_array(X, chunks=(12, -1)), tree=tree, normalize="l1")
    layers = block_tasks(D)
    nb = 5
    assert layers["emdtree-phi-X"] == nb  # one phi transform per row block
    # every block of the matrix is a key; the nb (nb - 1) / 2 below the diagonal are transposes
    assert layers["emdtree-pairwise"] == nb * nb
    graph = dict(D.__dask_graph__())
    from dask.core import get_dependencies

    mirrors = [k for k in graph if k[0] == D.name and k[1] > k[2]]
    assert len(mirrors) == nb * (nb - 1) // 2
    for key in mirrors:
        assert get_dependencies(graph, key) == {(D.name, key[2], key[1])}


@pytest.mark.parametrize("rho", RHOS)
def test_rectangular_and_mixed_inputs(tree, rho):
    rng = np.random.default_rng(3)
    X = sparse_counts(rng, 41, tree.n_bins)
    Y = sparse_counts(rng, 23, tree.n_bins, dtype=np.float32)
    want = emdtree.pairwise(X, Y, tree=tree, rho=rho, normalize="l1")
    tol = 1e-10 if rho == 2.0 else 1e-12
    for x, y in [(da.from_array(X, chunks=(10, -1)), Y), (X, da.from_array(Y, chunks=(7, 30)))]:
        D = emdtree.pairwise(x, y, tree=tree, rho=rho, normalize="l1")
        assert D.shape == (41, 23) and D.dtype == np.float64
        np.testing.assert_allclose(D.compute(), want, rtol=tol, atol=1e-14)


def test_axis_zero_block_size_and_equal_totals(tree):
    rng = np.random.default_rng(4)
    X = sparse_counts(rng, 30, tree.n_bins)
    X = X / X.sum(axis=1, keepdims=True) * 3.0
    want = emdtree.pairwise(X, tree=tree)
    D = emdtree.pairwise(da.from_array(np.ascontiguousarray(X.T), chunks=(50, 30)), tree=tree, axis=0,
                         block_size=8)
    assert D.chunks == ((8, 8, 8, 6),) * 2
    np.testing.assert_allclose(D.compute(), want, rtol=1e-12, atol=1e-14)


def test_default_chain_and_empty():
    rng = np.random.default_rng(6)
    X = rng.random((9, 12))
    X /= X.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(emdtree.pairwise(da.from_array(X, chunks=4)).compute(), emdtree.pairwise(X),
                               rtol=1e-12, atol=1e-14)
    empty = emdtree.pairwise(da.zeros((0, 12), chunks=5), X)
    assert empty.shape == (0, 9) and empty.compute().shape == (0, 9)


def test_errors_name_rows_of_the_whole_input(tree):
    rng = np.random.default_rng(8)
    X = sparse_counts(rng, 40, tree.n_bins)
    bad = X.copy()
    bad[27, 3] = -1.0
    with pytest.raises(ValueError, match=r"X\[27, 3\] = -1.0 is negative"):
        emdtree.pairwise(da.from_array(bad, chunks=(10, -1)), tree=tree, normalize="l1").compute()
    zero = X.copy()
    zero[33] = 0.0
    with pytest.raises(ValueError, match=r"X\[33\] has zero total mass"):
        emdtree.pairwise(da.from_array(zero, chunks=(10, -1)), tree=tree, normalize="l1").compute()
    unequal = np.ones((20, tree.n_bins))
    unequal[14, 0] = 2.0
    with pytest.raises(ValueError, match=r"sum\(Y\[14\]\) = "):
        emdtree.pairwise(unequal[:5], da.from_array(unequal, chunks=(6, -1)), tree=tree).compute()
    with pytest.raises(ValueError, match="condensed=True is not available for dask arrays"):
        emdtree.pairwise(da.from_array(X), tree=tree, condensed=True)
    with pytest.raises(ValueError, match="X has 7 bins but the tree has"):
        emdtree.pairwise(da.ones((3, 7)), tree=tree)
    with pytest.raises(ValueError, match="2-D"):
        emdtree.pairwise(da.ones(7), tree=tree)
    with pytest.raises(ValueError, match="block_size must be"):
        emdtree.pairwise(da.from_array(X), tree=tree, block_size=0)
