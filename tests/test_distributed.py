"""Distances and metrics on a dask.distributed cluster of two worker processes.

One ``LocalCluster`` serves the whole module (starting one costs seconds):
two processes of one thread each, so the kernels run in other processes than
the test's and never two to a process.
"""

import logging
import os
import warnings

import numpy as np
import pytest
from trees import random_tree

import emdtree
from emdtree import Tree, metrics

distributed = pytest.importorskip("distributed")
da = pytest.importorskip("dask.array")
dask = pytest.importorskip("dask")

TIMEOUT = 120  # seconds for any one computation on the cluster


@pytest.fixture(scope="module")
def client():
    # the workers load the kernels from Numba's cache: compile them here first
    X = np.eye(3)
    emdtree.pairwise(da.from_array(X, chunks=2), normalize="l1").compute(scheduler="sync")
    with dask.config.set({"distributed.comm.timeouts.connect": "30s"}):
        cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                           dashboard_address=None, silence_logs=logging.ERROR,
                                           host="127.0.0.1", worker_dashboard_address=None)
        client = distributed.Client(cluster, timeout="60s")
    try:
        client.wait_for_workers(2, timeout=60)
        yield client
    finally:
        # shutting down may warn about connections closed under running comms;
        # these are about the cluster's teardown, not about the code under test
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=RuntimeWarning,
                                    module=r"(distributed|tornado|asyncio)\b.*")
            warnings.filterwarnings("ignore", category=ResourceWarning)
            client.close(timeout=30)
            cluster.close(timeout=30)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(11)
    tree = Tree(*random_tree(rng, 300))
    n = 90
    X = np.floor(rng.random((n, tree.n_bins)) * 30) * (rng.random((n, tree.n_bins)) < 0.1)
    X[np.arange(n), rng.integers(0, tree.n_bins, n)] += 1.0
    return tree, X


def ran_on_workers(stream, prefix, client):
    """The worker addresses that ran the tasks whose key starts with ``prefix``."""
    workers = set(client.scheduler_info()["workers"])
    where = [t["worker"] for t in stream.data if str(t["key"]).lstrip("('\"").startswith(prefix)]
    assert where, f"no task {prefix!r} in the task stream"
    assert set(where) <= workers
    return where


def test_distances_equal_numpy_and_ran_on_workers(client, data):
    tree, X = data
    want = emdtree.pairwise(X, tree=tree, normalize="l1")
    D = emdtree.pairwise(da.from_array(X, chunks=(20, -1)), tree=tree, normalize="l1")
    with distributed.get_task_stream(client) as stream:
        got = client.compute(D).result(timeout=TIMEOUT)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)
    assert np.array_equal(got, got.T) and not np.any(np.diag(got))
    # five row blocks: each transformed once, 15 block pairs computed and 10 mirrored, all on the workers
    assert len(ran_on_workers(stream, "emdtree-phi-X", client)) == 5
    assert len(ran_on_workers(stream, "emdtree-pairwise", client)) == 25
    pids = client.run(os.getpid)
    assert len(pids) == 2 and os.getpid() not in pids.values()


def test_rectangular_rho2(client, data):
    tree, X = data
    Y = X[::3] + 1.0
    want = emdtree.pairwise(X, Y, tree=tree, rho=2.0, normalize="l1")
    D = emdtree.pairwise(da.from_array(X, chunks=(25, -1)), da.from_array(Y, chunks=(8, -1)), tree=tree,
                         rho=2.0, normalize="l1")
    np.testing.assert_allclose(client.compute(D).result(timeout=TIMEOUT), want, rtol=1e-10, atol=1e-14)


def test_zarr_round_trip(client, data, tmp_path):
    zarr = pytest.importorskip("zarr")
    tree, X = data
    want = emdtree.pairwise(X, tree=tree, normalize="l1")
    D = emdtree.pairwise(da.from_array(X, chunks=(32, -1)), tree=tree, normalize="l1")
    path = str(tmp_path / "d.zarr")
    with distributed.get_task_stream(client) as stream:
        da.to_zarr(D, path, compute=False).compute(timeout=TIMEOUT)
    ran_on_workers(stream, "emdtree-pairwise", client)
    stored = zarr.open_array(path, mode="r")
    assert stored.shape == (90, 90) and stored.chunks == (32, 32) and stored.dtype == np.float64
    back = stored[...]
    np.testing.assert_allclose(back, want, rtol=1e-12, atol=1e-14)
    assert np.array_equal(back, client.compute(D).result(timeout=TIMEOUT))


def test_metrics_equal_in_memory(client):
    rng = np.random.default_rng(12)
    tree = Tree(*random_tree(rng, 120))
    n = 500
    pred = rng.random((n, tree.n_bins)) + 0.01
    pred /= pred.sum(axis=1, keepdims=True)
    labels = rng.integers(0, tree.n_bins, n)
    target = rng.random((n, tree.n_bins))
    target /= target.sum(axis=1, keepdims=True)
    lazy_pred = da.from_array(pred, chunks=(37, -1))
    lazy_labels = da.from_array(labels, chunks=37)
    with distributed.get_task_stream(client) as stream:
        got = metrics.report(lazy_pred, lazy_labels, tree, ks=(1, 3), per_class=True)
    want = metrics.report(pred, labels, tree, ks=(1, 3), per_class=True)
    for key in want:
        if key != "per_class":
            assert got[key] == want[key], key  # exact: counts, and sums added without rounding
    np.testing.assert_allclose(got["per_class"]["mean_emd"], want["per_class"]["mean_emd"], rtol=1e-13)
    assert got["per_class"]["n_samples"] == want["per_class"]["n_samples"]
    assert len(ran_on_workers(stream, "emdtree-metric-chunk", client)) == 14  # one task per chunk
    assert ran_on_workers(stream, "emdtree-metric-merge", client)
    # distribution targets: the kernels take rows in vector tiles, so a row's last bit may depend on
    # its place in the chunk; over the same chunks the means are equal bit for bit
    assert metrics.mean_emd(lazy_pred, da.from_array(target, chunks=(50, -1)), tree, rho=2.0) == \
        metrics.mean_emd(pred, target, tree, rho=2.0, chunk_size=37)
    assert metrics.topk_accuracy(lazy_pred, lazy_labels, 3) == metrics.topk_accuracy(pred, labels, 3)
    assert metrics.mistake_severity(lazy_pred, lazy_labels, tree, distance="lca_height") == \
        metrics.mistake_severity(pred, labels, tree, distance="lca_height")
    assert metrics.average_hierarchical_distance_at_k(lazy_pred, labels, tree, 2) == \
        metrics.average_hierarchical_distance_at_k(pred, labels, tree, 2)
    merged = metrics.EMDMetric(tree).update(lazy_pred[:200], lazy_labels[:200])
    merged.update(pred[200:], labels[200:])
    assert merged.n_samples == n and merged.compute() == metrics.mean_emd(pred, labels, tree)
    streamed = metrics.HierarchicalMetrics(tree, ks=(1,)).update(lazy_pred, labels).compute()
    assert streamed == metrics.HierarchicalMetrics(tree, ks=(1,)).update(pred, labels).compute()


def test_errors_from_workers_name_the_row(client, data):
    tree, X = data
    bad = X.copy()
    bad[77, 5] = np.nan
    D = emdtree.pairwise(da.from_array(bad, chunks=(20, -1)), tree=tree, normalize="l1")
    with pytest.raises(ValueError, match=r"X\[77, 5\] = nan is not finite"):
        client.compute(D).result(timeout=TIMEOUT)
    labels = np.zeros(X.shape[0], dtype=np.int64)
    labels[61] = tree.n_bins
    with pytest.raises(ValueError, match=r"labels\[61\] = .* is not a class index"):
        metrics.report(da.from_array(X / X.sum(1, keepdims=True), chunks=(20, -1)),
                       da.from_array(labels, chunks=20), tree)


def test_cli_on_the_cluster(client, tmp_path, capsys):
    # last in the module: the command line opens (and closes) a second client of the cluster
    zarr = pytest.importorskip("zarr")
    from emdtree.__main__ import main

    rng = np.random.default_rng(13)
    X = rng.integers(0, 4, (70, 3)).astype(float) + np.array([1.0, 0.0, 0.0])
    (tmp_path / "t.nwk").write_text("((a:1,b:2):0.5,c:3);")
    np.savez(tmp_path / "t.npz", counts=X, feature_names=np.array(["a", "b", "c"]))
    tree = emdtree.io.read_tree(tmp_path / "t.nwk")
    out = tmp_path / "d.zarr"
    with distributed.get_task_stream(client) as stream:
        code = main(["pairwise", str(tmp_path / "t.npz"), "--tree", str(tmp_path / "t.nwk"), "-o", str(out),
                     "--scheduler", client.scheduler.address, "--block-size", "32", "-q"])
    assert code == 0, capsys.readouterr().err
    ran_on_workers(stream, "emdtree-pairwise", client)
    got = zarr.open_group(str(out), mode="r")["distances"][...]
    np.testing.assert_allclose(got, emdtree.pairwise(X, tree=tree, normalize="l1"), rtol=1e-12, atol=1e-14)
