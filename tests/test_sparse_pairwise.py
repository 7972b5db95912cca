"""The sparse route of emdtree.pairwise (emdtree.distances.sparse_rows): the dense route's distances
to rounding, in memory and on Dask, whichever route each input takes."""

import numba
import numpy as np
import pytest
from oracle import emd as oracle_emd
from trees import random_tree

import emdtree
from emdtree import Tree
from emdtree.distances import sparse_rows
from emdtree.kernels import sparse_pairwise as kernels

RHOS = [1.0, 1.5, 2.0]
DTYPES = [np.float64, np.float32]
# relative agreement of the two routes: float64 rounding (both sum in float64 or in
# CHUNK-long lanes) and float32 rounding of phi (the dense route sums it in float32)
TOL = {np.float64: 1e-12, np.float32: 2e-5}


@pytest.fixture
def route(monkeypatch):
    """``route("sparse" | "dense")`` forces the route of the next calls; records the sparse calls."""
    calls = []
    original = sparse_rows.distances

    def spy(*args, **kwargs):
        calls.append(args[0].shape)
        return original(*args, **kwargs)

    monkeypatch.setattr(sparse_rows, "distances", spy)

    def force(which):
        high = 2.0 if which == "sparse" else -1.0
        monkeypatch.setattr(sparse_rows, "SPARSE_MAX_DENSITY", high)
        monkeypatch.setattr(sparse_rows, "INPUT_MAX_DENSITY", high)
        calls.clear()
        return calls

    return force


def sparse_samples(rng, n, n_bins, per_sample=(1, 6), dtype=np.float64, total=None):
    """Counts on a few random bins per sample; with ``total``, each row rescaled to it."""
    x = np.zeros((n, n_bins))
    for r in range(n):
        k = int(rng.integers(per_sample[0], per_sample[1] + 1))
        x[r, rng.choice(n_bins, min(k, n_bins), replace=False)] = rng.geometric(0.3, min(k, n_bins))
    if total is not None:
        x *= total / x.sum(axis=1, keepdims=True)
    return x.astype(dtype)


def dense_samples(rng, n, n_bins, dtype=np.float64):
    x = rng.random((n, n_bins))
    return (x / x.sum(axis=1, keepdims=True)).astype(dtype)


def both_routes(route, *args, **kwargs):
    calls = route("dense")
    dense = emdtree.pairwise(*args, **kwargs)
    assert not calls
    calls = route("sparse")
    sparse = emdtree.pairwise(*args, **kwargs)
    assert calls, "the sparse route did not run"
    return dense, sparse


def assert_close(sparse, dense, dtype):
    assert sparse.dtype == dense.dtype == dtype
    scale = max(float(np.abs(dense).max()), 1e-30)
    np.testing.assert_allclose(sparse, dense, rtol=TOL[dtype], atol=TOL[dtype] * 1e-3 * scale)


@pytest.mark.parametrize("rho", RHOS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("inner_bins", [False, True])
@pytest.mark.parametrize("kind", ["sparse", "dense"])
def test_routes_agree_square(route, rho, dtype, inner_bins, kind):
    rng = np.random.default_rng(int(rho * 10) + 7 * inner_bins)
    tree = Tree(*random_tree(rng, 120, bins_on_internal=inner_bins))
    make = sparse_samples if kind == "sparse" else dense_samples
    X = make(rng, 37, tree.n_bins, dtype=dtype)
    X[5] = X[2]  # a repeated sample: distance exactly 0
    dense, sparse = both_routes(route, X, tree=tree, rho=rho, normalize="l1")
    assert_close(sparse, dense, dtype)
    assert np.array_equal(sparse, sparse.T)
    assert np.all(np.diag(sparse) == 0) and sparse[2, 5] == 0


@pytest.mark.parametrize("rho", RHOS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("normalize", ["l1", None])
def test_routes_agree_rectangular(route, rho, dtype, normalize):
    rng = np.random.default_rng(3 + int(rho * 10))
    tree = Tree(*random_tree(rng, 150))
    total = None if normalize else 2.0
    X = sparse_samples(rng, 23, tree.n_bins, dtype=dtype, total=total)
    Y = sparse_samples(rng, 17, tree.n_bins, dtype=dtype, total=total)
    Y[4] = X[9]
    dense, sparse = both_routes(route, X, Y, tree=tree, rho=rho, normalize=normalize)
    assert_close(sparse, dense, dtype)
    assert sparse[9, 4] == 0


def test_matches_oracle_and_condensed(route):
    rng = np.random.default_rng(11)
    parents, weights, bins = random_tree(rng, 60, bins_on_internal=True)
    tree = Tree(parents, weights, bins)
    X = sparse_samples(rng, 9, tree.n_bins)
    route("sparse")
    for rho in RHOS:
        D = emdtree.pairwise(X, tree=tree, rho=rho, normalize="l1")
        P = X / X.sum(axis=1, keepdims=True)
        want = np.array([[oracle_emd(p, q, parents, weights, bins, rho) for q in P] for p in P])
        np.testing.assert_allclose(D, want, rtol=1e-12, atol=1e-14)
        c = emdtree.pairwise(X, tree=tree, rho=rho, normalize="l1", condensed=True)
        assert np.array_equal(c, D[np.triu_indices(len(X), 1)])


def test_near_identical_pairs_are_summed_directly():
    """Pairs whose distance cancels in ``S_x + S_y - sum t`` are summed again over the union: on the
    same rows, every distance is the direct sum to 1e-12 relative, down to 1e-12 of the masses."""
    rng = np.random.default_rng(2)
    n_cols = 400
    base = rng.random(n_cols) * (rng.random(n_cols) < 0.5)
    dense = np.tile(base, (8, 1))
    k = np.flatnonzero(base)
    for r in range(1, 7):
        dense[r, k[r]] *= 1 + 10.0 ** -(2 * r)  # distances from 1e-2 down to 1e-12 of the row sums
    dense[7, k[0]] = 0.0  # a column in one row only
    ptr = np.concatenate([[0], np.cumsum((dense != 0).sum(axis=1))])
    rows = sparse_rows.SparseRows(ptr, np.nonzero(dense)[1].astype(np.int32), dense[dense != 0], n_cols)
    for rho in RHOS:
        want = (np.abs(dense[:, None, :] - dense[None, :, :]) ** rho).sum(axis=2)
        D = sparse_rows.distances(rows, None, rho)
        np.testing.assert_allclose(D, want, rtol=1e-12, atol=0)
        R = sparse_rows.distances(rows, rows, rho)
        np.testing.assert_allclose(R, want, rtol=1e-12, atol=0)
        assert np.all(np.diag(R) == 0)


def test_serial_and_parallel_kernels_agree(route):
    rng = np.random.default_rng(4)
    tree = Tree(*random_tree(rng, 200))
    X = sparse_samples(rng, 70, tree.n_bins)
    route("sparse")
    serial = emdtree.pairwise(X, tree=tree, normalize="l1", n_threads=1)
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("needs two Numba threads")
    parallel = emdtree.pairwise(X, tree=tree, normalize="l1", n_threads=2)
    assert np.array_equal(serial, parallel)


def test_invalid_input_raises_as_dense(route):
    rng = np.random.default_rng(5)
    tree = Tree(*random_tree(rng, 50))
    X = sparse_samples(rng, 6, tree.n_bins)
    X[3, 7] = -1.0
    route("sparse")
    with pytest.raises(ValueError, match=r"X\[3, 7\] = -1.0 is negative"):
        emdtree.pairwise(X, tree=tree, normalize="l1")
    X[3, 7] = 0.0
    with pytest.raises(ValueError, match="equal total mass"):
        emdtree.pairwise(X, tree=tree)


def test_sparse_rows_are_the_dense_rows(monkeypatch):
    """The CSR rows hold exactly the non-zero columns of phi, at the positions of the dense route."""
    rng = np.random.default_rng(8)
    parents, weights, bins = random_tree(rng, 80, bins_on_internal=True)
    tree = Tree(parents, weights, bins)
    X = sparse_samples(rng, 12, tree.n_bins)
    from emdtree.distances.rows import _columns, _Rows

    monkeypatch.setattr(sparse_rows, "INPUT_MAX_DENSITY", 2.0)
    positions, scale = _columns(tree, 1.0)
    ptr, idx, val, totals = sparse_rows.masses(X)
    assert np.array_equal(totals, X.sum(axis=1))
    rows = sparse_rows.build(ptr, idx, val, totals, tree, sparse_rows.column_of(tree, positions), scale,
                             np.dtype(np.float64))
    dense = _Rows(X, "X", 1, np.dtype(np.float64), tree, positions, scale, "l1", True, 12).x
    for r in range(len(X)):
        cols = rows.idx[rows.ptr[r]:rows.ptr[r + 1]]
        assert np.all(np.diff(cols) > 0)
        assert np.array_equal(cols, np.flatnonzero(dense[r]))
    np.testing.assert_allclose(rows.to_dense(), dense, rtol=1e-14, atol=1e-16)


def test_kernel_mode_general_handles_signs():
    """Unchecked rows may hold negative values: the general terms use |x|."""
    a = sparse_rows.SparseRows(np.array([0, 2, 3]), np.array([0, 2, 1], dtype=np.int32),
                                  np.array([-1.0, 2.0, 0.5]), 3)
    D = sparse_rows.distances(a, None, 1.0)
    want = np.abs(a.to_dense()[0] - a.to_dense()[1]).sum()
    assert D[0, 1] == D[1, 0] == pytest.approx(want, rel=1e-15)
    assert kernels.MODE_GENERAL == sparse_rows._mode(1.0, a, a)


# ----------------------------------------------------------------------------- Dask


@pytest.mark.parametrize("rho", [1.0, 1.5])
@pytest.mark.parametrize("dtype", DTYPES)
def test_dask_sparse_blocks_equal_in_memory(route, rho, dtype):
    dask_array = pytest.importorskip("dask.array")
    rng = np.random.default_rng(9)
    tree = Tree(*random_tree(rng, 150))
    X = sparse_samples(rng, 30, tree.n_bins, dtype=dtype)
    Y = sparse_samples(rng, 11, tree.n_bins, dtype=dtype)
    route("dense")
    dense_memory = emdtree.pairwise(X, tree=tree, rho=rho, normalize="l1")
    dense_rect = emdtree.pairwise(X, Y, tree=tree, rho=rho, normalize="l1")
    route("sparse")
    lazy = emdtree.pairwise(dask_array.from_array(X, chunks=(8, -1)), tree=tree, rho=rho, normalize="l1")
    D = lazy.compute(scheduler="sync")
    assert_close(D, dense_memory, dtype)
    assert np.array_equal(D, D.T) and np.all(np.diag(D) == 0)
    R = emdtree.pairwise(dask_array.from_array(X, chunks=(8, -1)), dask_array.from_array(Y, chunks=(4, -1)),
                         tree=tree, rho=rho, normalize="l1").compute(scheduler="sync")
    assert_close(R, dense_rect, dtype)


def test_dask_mixed_blocks(route, monkeypatch):
    """A block too dense for the sparse route beside a sparse one: the pair is summed densely."""
    dask_array = pytest.importorskip("dask.array")
    rng = np.random.default_rng(10)
    tree = Tree(*random_tree(rng, 150))
    X = np.concatenate([sparse_samples(rng, 8, tree.n_bins), dense_samples(rng, 8, tree.n_bins)])
    route("dense")
    want = emdtree.pairwise(X, tree=tree, normalize="l1")
    route("sparse")
    monkeypatch.setattr(sparse_rows, "INPUT_MAX_DENSITY", 0.5)
    D = emdtree.pairwise(dask_array.from_array(X, chunks=(8, -1)), tree=tree, normalize="l1").compute(
        scheduler="sync")
    np.testing.assert_allclose(D, want, rtol=1e-12)
    assert np.array_equal(D, D.T)


def test_dask_invalid_block_names_the_row(route):
    dask_array = pytest.importorskip("dask.array")
    rng = np.random.default_rng(12)
    tree = Tree(*random_tree(rng, 60))
    X = sparse_samples(rng, 12, tree.n_bins)
    X[9, 4] = np.nan
    route("sparse")
    with pytest.raises(ValueError, match=r"X\[9, 4\]"):
        emdtree.pairwise(dask_array.from_array(X, chunks=(4, -1)), tree=tree, normalize="l1").compute(
            scheduler="sync")


# ----------------------------------------------------------------------------- SciPy sparse input


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("normalize", ["l1", None])
def test_scipy_sparse_input_is_read_as_it_is(route, monkeypatch, dtype, normalize):
    """A SciPy sparse table goes to the sparse route without being made dense (here: no
    ``toarray`` of more than one row), and gives the bits of the same table passed dense."""
    sp = pytest.importorskip("scipy.sparse")
    monkeypatch.setenv("EMDTREE_JIT", "eager")  # the kernels, not SciPy's cdist, at this size
    rng = np.random.default_rng(21)
    tree = Tree(*random_tree(rng, 400))
    x = sparse_samples(rng, 60, tree.n_bins, dtype=dtype, total=None if normalize else 6.0)
    y = x[:17]
    want = emdtree.pairwise(x, y, tree=tree, normalize=normalize)
    want_square = emdtree.pairwise(x, tree=tree, normalize=normalize)
    calls = route("sparse")
    whole = sp.csr_array.toarray
    monkeypatch.setattr(sp.csr_array, "toarray", lambda self, *a, **k: (
        pytest.fail(f"a sparse input of shape {self.shape} was made dense") if self.shape[0] > 1
        else whole(self, *a, **k)))
    for kind in (sp.csr_matrix, sp.csc_array, sp.coo_matrix):
        got = emdtree.pairwise(kind(x), kind(y), tree=tree, normalize=normalize)
        np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(emdtree.pairwise(kind(x), tree=tree, normalize=normalize), want_square)
    np.testing.assert_array_equal(emdtree.pairwise(sp.csc_array(x.T), tree=tree, normalize=normalize, axis=0),
                                  want_square)
    assert len(calls) == 7


def test_scipy_sparse_input_falls_back_and_names_bad_entries(route):
    sp = pytest.importorskip("scipy.sparse")
    rng = np.random.default_rng(22)
    tree = Tree(*random_tree(rng, 50))
    x = sparse_samples(rng, 12, tree.n_bins)
    route("dense")  # too dense for the sparse route: made dense, same values
    np.testing.assert_array_equal(emdtree.pairwise(sp.csr_matrix(x), tree=tree, normalize="l1"),
                                  emdtree.pairwise(x, tree=tree, normalize="l1"))
    route("sparse")
    for value, what in ((-1.0, "is negative"), (np.nan, "is not finite")):
        bad = sp.lil_array(x)
        bad[3, 4] = value
        with pytest.raises(ValueError, match=rf"X\[3, 4\] = .* {what}"):
            emdtree.pairwise(bad, tree=tree, normalize="l1")
    with pytest.raises(TypeError, match="X must hold real numbers, got dtype complex128"):
        emdtree.pairwise(sp.csr_matrix(x.astype(complex)), tree=tree)


def test_weighted_unifrac_of_a_scipy_sparse_table(route, monkeypatch):
    sp = pytest.importorskip("scipy.sparse")
    monkeypatch.setenv("EMDTREE_JIT", "eager")
    rng = np.random.default_rng(23)
    tree = Tree(*random_tree(rng, 400))
    counts = sparse_samples(rng, 40, tree.n_bins).astype(np.int64)
    counts[[3, 17]] = 0  # samples without counts
    calls = route("sparse")
    for normalized in (False, True):
        got = emdtree.weighted_unifrac(sp.csr_matrix(counts), tree, normalized=normalized)
        np.testing.assert_array_equal(got, emdtree.weighted_unifrac(counts, tree, normalized=normalized))
    assert calls  # the sparse route ran
