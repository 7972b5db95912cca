"""The training experiments in examples/experiments: their helpers and a seconds-long run of each script."""

from __future__ import annotations

import importlib.util
import json
import os
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("matplotlib")
pytest.importorskip("emdtree.torch")

import emdtree  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # the scripts train with one thread; a torch thread pool that earlier tests
    # started with more threads slowed the training runs below down ~10x
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXPERIMENTS = os.path.join(ROOT, "examples", "experiments")


def _load(name: str):
    if EXPERIMENTS not in sys.path:
        sys.path.insert(0, EXPERIMENTS)
    path = os.path.join(EXPERIMENTS, f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"_experiment_{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def common():
    return _load("_common")


# ----------------------------------------------------------------------------- helpers


def _sinkhorn_reference(a, b, cost, lam, n_iter):
    """Plain log-domain Sinkhorn on one pair: (plan, f)."""
    from scipy.special import logsumexp

    with np.errstate(divide="ignore"):
        log_a, log_b = np.log(a), np.log(b)
    f, g = np.zeros_like(a), np.zeros_like(b)
    for _ in range(n_iter):
        f = log_a - logsumexp(g[None, :] - lam * cost, axis=1)
        g = log_b - logsumexp(f[:, None] - lam * cost, axis=0)
    return np.exp(f[:, None] + g[None, :] - lam * cost), f / lam


def test_sinkhorn_matches_reference_and_marginals(common):
    rng = np.random.default_rng(0)
    n = 12
    cost = np.abs(np.subtract.outer(np.arange(n), np.arange(n))).astype(float)
    a = rng.random((3, n))
    a /= a.sum(1, keepdims=True)
    b = rng.random((3, n))
    b[:, :3] = 0.0  # zero target masses take the -inf path
    b /= b.sum(1, keepdims=True)
    lam = 2.0
    value, pot = common.Sinkhorn(cost, lam, 500).value_and_potential(torch.tensor(a), torch.tensor(b))
    for i in range(3):
        plan, f = _sinkhorn_reference(a[i], b[i], cost, lam, 500)
        np.testing.assert_allclose(plan.sum(1), a[i], atol=1e-10)  # converged: both marginals hold
        np.testing.assert_allclose(plan.sum(0), b[i], atol=1e-12)
        np.testing.assert_allclose(value[i].item(), (plan * cost).sum(), rtol=1e-10)
        np.testing.assert_allclose(pot[i].numpy(), f - f.mean(), atol=1e-9)
    np.testing.assert_allclose(pot.sum(1).numpy(), 0.0, atol=1e-12)
    # the entropic cost is above the exact EMD (chain: rho = 1) and close to it
    exact = emdtree.emd(a, b, rho=1.0)
    assert np.all(value.numpy() >= exact - 1e-12) and np.all(value.numpy() <= exact + 0.5)


def test_sinkhorn_envelope_gradient_is_finite_difference_of_entropic_objective(common):
    # The gradient returned is that of OT_eps(a, b) = <P, M> + eps * sum P (log P - 1),
    # along mass-conserving directions.
    rng = np.random.default_rng(1)
    n, lam = 8, 3.0
    cost = rng.random((n, n)) * 2
    cost = cost + cost.T
    np.fill_diagonal(cost, 0)
    sk = common.Sinkhorn(cost, lam, 3000)

    def objective(a, b):
        f, g = sk.potentials(torch.tensor(a[None]), torch.tensor(b[None]))
        plan = np.exp(f.numpy()[0][:, None] + g.numpy()[0][None, :] - lam * cost)
        return (plan * cost).sum() + (plan * (np.log(plan) - 1)).sum() / lam

    a = rng.random(n) + 0.2
    a /= a.sum()
    b = rng.random(n) + 0.2
    b /= b.sum()
    _, pot = sk.value_and_potential(torch.tensor(a[None]), torch.tensor(b[None]))
    v = rng.standard_normal(n)
    v -= v.mean()
    h = 1e-5
    fd = (objective(a + h * v, b) - objective(a - h * v, b)) / (2 * h)
    np.testing.assert_allclose(pot.numpy()[0] @ v, fd, rtol=1e-5, atol=1e-8)


def test_sinkhorn_loss_one_hot_is_expected_distance(common):
    # With a one-hot target the plan sends all of a to the label: the value is
    # the expected tree distance to the label, and the envelope gradient is that
    # of the entropic objective, expected distance + (1 / lambda) sum a (log a - 1).
    tree = emdtree.datasets.imagenet_wordnet()
    small = common.restrict_tree(tree, np.arange(0, 1000, 25))
    dist = torch.tensor(small.distance_matrix())
    lam = 10.0
    sk = common.Sinkhorn(dist.numpy(), lam, 5)
    logits = torch.randn(6, small.n_bins, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 3, 7, 39, 12, 12])
    prob = torch.softmax(logits, 1)
    loss = sk.loss(prob, torch.nn.functional.one_hot(labels, small.n_bins).double())
    expected = (prob * dist[:, labels].T).sum(1).mean()
    np.testing.assert_allclose(loss.item(), expected.item(), rtol=1e-10)
    entropic = expected + (prob * (torch.log(prob) - 1)).sum(1).mean() / lam
    (g1,) = torch.autograd.grad(loss, logits, retain_graph=True)
    (g2,) = torch.autograd.grad(entropic, logits)
    np.testing.assert_allclose(g1.numpy(), g2.numpy(), atol=1e-10)


def test_sinkhorn_rejects_bad_arguments(common):
    with pytest.raises(ValueError, match="square"):
        common.Sinkhorn(np.zeros((2, 3)), 1.0, 10)
    with pytest.raises(ValueError, match="underflows"):
        common.Sinkhorn(np.full((2, 2), 100.0), 10.0, 10)
    with pytest.raises(ValueError, match="n_iter"):
        common.Sinkhorn(np.ones((2, 2)), 1.0, 0)


def test_restrict_tree_keeps_distances(common):
    tree = emdtree.datasets.imagenet_wordnet()
    keep = np.random.default_rng(3).choice(tree.n_bins, 50, replace=False)
    small = common.restrict_tree(tree, keep)
    assert small.n_bins == 50
    assert list(small.names) == [tree.names[i] for i in keep]
    np.testing.assert_array_equal(small.distance_matrix(), tree.distance_matrix()[np.ix_(keep, keep)])


def test_class_means_sum_offsets_along_paths():
    wordnet = _load("wordnet_small_data")
    tree, _ = wordnet.class_tree(20)
    means = wordnet.class_means(tree, np.random.default_rng(0))
    offsets = np.random.default_rng(0).standard_normal((tree.n_nodes, wordnet.N_FEATURES))
    offsets *= wordnet.OFFSET_SCALE / np.sqrt(wordnet.N_FEATURES)
    for k in (0, 7, 19):
        node, total = tree.bins[k], np.zeros(wordnet.N_FEATURES)
        while tree.parents[node] >= 0:
            total += offsets[node]
            node = tree.parents[node]
        np.testing.assert_allclose(means[k], total, atol=1e-12)


# ----------------------------------------------------------------------------- scripts


def test_chain_spectra_smoke(tmp_path):
    results = _load("chain_spectra").main(["--quick", "--smoke", "--out", str(tmp_path)])
    for name in ("chain_spectra.json", "chain_spectra.md", "chain_spectra.png"):
        assert (tmp_path / name).stat().st_size > 0
    saved = json.loads((tmp_path / "chain_spectra.json").read_text())
    assert saved["mode"] == "smoke"
    assert "| respiration | EMD^2 |" in (tmp_path / "chain_spectra.md").read_text()
    for data, curves in results["curves"].items():
        for loss, c in curves.items():
            emd = np.asarray(c["test_emd"])
            n_bins = 64 if data == "respiration" else 33
            assert np.all(np.isfinite(emd)) and np.all(emd > 0) and np.all(emd <= n_bins - 1), (data, loss)
            # training moves the spectra towards the targets from a random start
            assert np.all(emd[:, -1] < emd[:, 0]), (data, loss)
        for loss, s in results["summary"][data].items():
            steps = [x for x in s["steps_to_levels"] if np.isfinite(x)]
            assert all(0 <= x <= c["steps"][-1] for x in steps), (data, loss)


def test_wordnet_small_data_smoke(tmp_path):
    results = _load("wordnet_small_data").main(["--quick", "--smoke", "--out", str(tmp_path)])
    for name in ("wordnet_small_data.json", "wordnet_small_data.md", "wordnet_small_data.png"):
        assert (tmp_path / name).stat().st_size > 0
    json.loads((tmp_path / "wordnet_small_data.json").read_text())
    chance = results["chance"]
    max_dist = 2 * 13  # twice the depth of the WordNet tree
    for by_loss in results["curves"].values():
        for loss, c in by_loss.items():
            top1, severity, emd = (np.asarray(c[k]) for k in ("top1", "severity", "emd"))
            assert np.all((top1 >= 0) & (top1 <= 1)), loss
            assert np.all((severity >= 0) & (severity <= max_dist)), loss
            assert np.all(np.isfinite(emd) & (emd >= 0) & (emd <= max_dist)), loss
        # a few epochs of cross entropy already beat guessing on the test set
        assert np.mean(by_loss["CE"]["top1"], axis=0)[-1] > 2 * chance["top1"]
