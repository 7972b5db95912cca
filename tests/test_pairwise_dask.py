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


# ----------------------------------------------------------------------------- command line

NEWICK = "((a:1,b:2):0.5,(c:3,d:1):1,e:2);"
FEATURES = ["e", "a", "b", "c", "d"]  # table order, not the tree's


@pytest.fixture
def tables(tmp_path):
    """The same table as TSV, Zarr, HDF5 and BIOM (the formats present); the reference matrix."""
    rng = np.random.default_rng(9)
    X = rng.integers(0, 6, (45, 5)).astype(float)
    X[:, 0] += 1.0
    ids = [f"s{i}" for i in range(45)]
    (tmp_path / "t.nwk").write_text(NEWICK)
    lines = ["id\t" + "\t".join(FEATURES)] + [f"{i}\t" + "\t".join(map(str, row)) for i, row in zip(ids, X)]
    (tmp_path / "t.tsv").write_text("\n".join(lines) + "\n")
    paths = [tmp_path / "t.tsv"]
    try:
        import zarr
    except ImportError:
        pass
    else:
        group = zarr.open_group(str(tmp_path / "t.zarr"), mode="w")
        group.create_array("counts", data=X, chunks=(16, 5))
        group.create_array("sample_ids", shape=(45,), dtype=str)[:] = np.array(ids)
        group.create_array("feature_names", shape=(5,), dtype=str)[:] = np.array(FEATURES)
        paths.append(tmp_path / "t.zarr")
    try:
        import h5py
    except ImportError:
        pass
    else:
        with h5py.File(tmp_path / "t.h5", "w") as fh:
            fh.create_dataset("counts", data=X.T, chunks=(5, 10))  # one feature per row: --transpose
            fh["sample_ids"] = np.array(ids, dtype="S")
            fh["feature_names"] = np.array(FEATURES, dtype="S")
        paths.append(tmp_path / "t.h5")
    try:
        import biom
    except ImportError:
        pass
    else:
        with biom.util.biom_open(str(tmp_path / "t.biom"), "w") as fh:
            biom.Table(X.T, FEATURES, ids).to_hdf5(fh, "test")
        paths.append(tmp_path / "t.biom")
    tree = emdtree.io.read_tree(tmp_path / "t.nwk")
    _, counts = emdtree.io.load_counts(tmp_path / "t.tsv", tree)
    return paths, ids, emdtree.pairwise(counts, tree=tree, normalize="l1")


def test_cli_zarr_output_from_every_table_format(tables, tmp_path):
    zarr = pytest.importorskip("zarr")
    from emdtree.__main__ import main

    paths, ids, want = tables
    for path in paths:
        out = tmp_path / f"{path.suffix[1:]}.zarr"
        options = ["--transpose"] if path.suffix == ".h5" else []
        code = main(["pairwise", str(path), "--tree", str(tmp_path / "t.nwk"), "-o", str(out), "--block-size",
                     "16", "-q", *options])
        assert code == 0, path
        group = zarr.open_group(str(out), mode="r")
        assert group["distances"].chunks == (16, 16)
        assert list(group["sample_ids"][...]) == ids and group.attrs["normalize"] == "l1"
        np.testing.assert_allclose(group["distances"][...], want, rtol=1e-12, atol=1e-14)
        assert not list(tmp_path.glob("*.partial-*"))  # written beside, then moved in place
    # a TSV output through dask, and a second run replacing the store
    nwk = str(tmp_path / "t.nwk")
    assert main(["pairwise", str(paths[-1]), "--tree", nwk, "-o", str(tmp_path / "d.tsv"), "-q"]) == 0
    got = emdtree.io.read_matrix(tmp_path / "d.tsv").values
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)
    assert main(["pairwise", str(paths[0]), "--tree", nwk, "-o", str(tmp_path / "tsv.zarr"), "--rho", "2",
                 "-q"]) == 0
    assert zarr.open_group(str(tmp_path / "tsv.zarr"), mode="r").attrs["rho"] == 2.0


def test_cli_zarr_errors(tables, tmp_path, capsys):
    pytest.importorskip("zarr")
    from emdtree.__main__ import main

    paths, _, _ = tables
    (tmp_path / "keep.zarr").mkdir()
    (tmp_path / "keep.zarr" / "notes.txt").write_text("mine")
    argv = ["pairwise", str(paths[0]), "--tree", str(tmp_path / "t.nwk"), "-q"]
    assert main(argv + ["-o", str(tmp_path / "keep.zarr")]) == 2
    assert "exists and is not a Zarr store" in capsys.readouterr().err
    assert (tmp_path / "keep.zarr" / "notes.txt").read_text() == "mine"
    assert main(argv + ["-o", str(tmp_path / "x.zarr"), "--workers", "2", "--scheduler", "tcp://h:1"]) == 2
    assert "not both" in capsys.readouterr().err
    bad = tmp_path / "bad.zarr"
    import zarr

    zarr.open_group(str(bad), mode="w").create_array("values", data=np.ones((2, 5)))
    nwk = str(tmp_path / "t.nwk")
    assert main(["pairwise", str(bad), "--tree", nwk, "-o", str(tmp_path / "y.zarr")]) == 2
    assert "has no array 'counts'" in capsys.readouterr().err
