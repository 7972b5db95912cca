"""``normalize="softmax"`` (and the exact second derivatives with ``"l1"``) in the NumPy API,
the metrics, pairwise and the command line."""

import json

import array_api_strict as xps
import numpy as np
import pytest

import emdtree
from emdtree import Tree, metrics
from emdtree.__main__ import main

TREE = Tree.from_parents([-1, 0, 0, 1, 1, 2, 2, 2], weights=[0, 1.0, 2.0, 0.5, 1.5, 1.0, 0.25, 3.0],
                         bins=[3, 4, 5, 6, 7, 2])


def softmax(z, axis=-1):
    e = np.exp(z - z.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def distributions(rng, shape):
    q = rng.random(shape)
    return q / q.sum(axis=-1, keepdims=True)


@pytest.mark.parametrize("rho", [1.0, 1.5, 2.0])
def test_value_is_emd_of_the_softmax(rho):
    rng = np.random.default_rng(0)
    z = rng.normal(size=(4, 3, 6)) * 3
    q = distributions(rng, (3, 6))
    want = emdtree.emd(softmax(z), q, TREE, rho)
    np.testing.assert_allclose(emdtree.emd(z, q, TREE, rho, normalize="softmax"), want, rtol=1e-13)
    # bin axis first
    np.testing.assert_allclose(emdtree.emd(np.moveaxis(z, -1, 0), q.T[:, None], TREE, rho, axis=0,
                                           normalize="softmax"),
                               want, rtol=1e-13)
    np.testing.assert_allclose(emdtree.phi(z, q, TREE, normalize="softmax"), emdtree.phi(softmax(z), q, TREE),
                               rtol=1e-13, atol=1e-15)
    value, grad = emdtree.emd_value_and_grad(z.astype(np.float32), q.astype(np.float32), TREE, rho,
                                             normalize="softmax")
    assert value.dtype == grad.dtype == np.float32
    np.testing.assert_allclose(value, want, rtol=2e-5)


def test_large_and_masked_logits_are_stable():
    q = np.array([0.0, 0.0, 0.0, 1.0, 0.0, 0.0])
    z = np.array([1000.0, 999.0, -1000.0, 1000.0, -np.inf, 0.0])
    value, grad = emdtree.emd_value_and_grad(z, q, TREE, normalize="softmax")
    assert np.isfinite(value) and np.all(np.isfinite(grad))
    np.testing.assert_allclose(value, emdtree.emd(softmax(np.where(np.isinf(z), -1e300, z)), q, TREE),
                               rtol=1e-13)
    assert grad[4] == 0.0  # a masked class gets no gradient
    assert emdtree.emd([0.0, -np.inf], [1.0, 0.0], normalize="softmax") == 0.0


def numeric_grad(f, z, eps=1e-6):
    return np.array([(f(z + eps * e) - f(z - eps * e)) / (2 * eps) for e in np.eye(z.shape[0])])


@pytest.mark.parametrize("normalize", ["softmax", "l1"])
@pytest.mark.parametrize("rho", [1.0, 1.5, 2.0, 3.0])
def test_derivatives_by_finite_differences(normalize, rho):
    rng = np.random.default_rng(int(rho * 10) + len(normalize))
    n = TREE.n_bins
    z = rng.normal(size=n) * 2 if normalize == "softmax" else rng.random(n) + 0.5
    q = distributions(rng, n)
    g = emdtree.emd_grad(z, q, TREE, rho, normalize=normalize)
    fd = numeric_grad(lambda x: float(emdtree.emd(x, q, TREE, rho, normalize=normalize)), z)
    np.testing.assert_allclose(g, fd, rtol=1e-6, atol=1e-8)
    H = emdtree.emd_hessian(z, q, TREE, rho, normalize=normalize)
    fd_h = numeric_grad(lambda x: emdtree.emd_grad(x, q, TREE, rho, normalize=normalize), z)
    np.testing.assert_allclose(H, fd_h, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(H, H.T, atol=1e-15)
    for v in rng.normal(size=(3, n)):
        np.testing.assert_allclose(emdtree.emd_hvp(z, q, v, TREE, rho, normalize=normalize), H @ v,
                                   rtol=1e-12, atol=1e-14)
    if normalize == "softmax":
        np.testing.assert_allclose(g.sum(), 0.0, atol=1e-15)
        np.testing.assert_allclose(H.sum(axis=1), 0.0, atol=1e-14)  # a constant shift of the logits


def test_batched_second_derivatives_broadcast():
    rng = np.random.default_rng(3)
    z = rng.normal(size=(2, 5, TREE.n_bins))
    q = distributions(rng, TREE.n_bins)
    v = rng.normal(size=(5, TREE.n_bins))
    H = emdtree.emd_hessian(z, q, TREE, 1.5, normalize="softmax")
    hv = emdtree.emd_hvp(z, q, v, TREE, 1.5, normalize="softmax")
    assert H.shape == (2, 5, TREE.n_bins, TREE.n_bins) and hv.shape == z.shape
    for i in range(2):
        for j in range(5):
            want = emdtree.emd_hessian(z[i, j], q, TREE, 1.5, normalize="softmax")
            np.testing.assert_allclose(H[i, j], want, rtol=1e-13, atol=1e-15)
            np.testing.assert_allclose(hv[i, j], H[i, j] @ v[j], rtol=1e-12, atol=1e-14)


def test_array_api_arrays_take_the_same_route():
    rng = np.random.default_rng(4)
    z = rng.normal(size=(3, TREE.n_bins))
    q = distributions(rng, (3, TREE.n_bins))
    v = rng.normal(size=(3, TREE.n_bins))
    for normalize, p in (("softmax", z), ("l1", np.abs(z) + 0.1)):
        xz, xq, xv = xps.asarray(p), xps.asarray(q), xps.asarray(v)
        for rho in (1.0, 2.0):
            value, grad = emdtree.emd_value_and_grad(xz, xq, TREE, rho, normalize=normalize)
            want_value, want_grad = emdtree.emd_value_and_grad(p, q, TREE, rho, normalize=normalize)
            np.testing.assert_allclose(np.asarray(value), want_value, rtol=1e-12)
            np.testing.assert_allclose(np.asarray(grad), want_grad, rtol=1e-12, atol=1e-14)
            hv = emdtree.emd_hvp(xz, xq, xv, TREE, rho, normalize=normalize)
            want_hv = emdtree.emd_hvp(p, q, v, TREE, rho, normalize=normalize)
            np.testing.assert_allclose(np.asarray(hv), want_hv, rtol=1e-12, atol=1e-14)
            h = emdtree.emd_hessian(xz, xq, TREE, rho, normalize=normalize)
            want_h = emdtree.emd_hessian(p, q, TREE, rho, normalize=normalize)
            np.testing.assert_allclose(np.asarray(h), want_h, rtol=1e-12, atol=1e-14)
    with pytest.raises(ValueError, match="with normalize='softmax' p holds logits and q must be a"):
        emdtree.emd(xps.asarray(z), xps.asarray(2 * q), TREE, normalize="softmax")


@pytest.mark.parametrize("z, q, match", [
    ([np.nan, 0, 0, 0, 0, 0], None, r"p\[0\] = nan is not a logit: with normalize='softmax' p holds logits"),
    ([0, np.inf, 0, 0, 0, 0], None, r"p\[1\] = inf is not a logit"),
    ([-np.inf] * 6, None, "every logit of p is -inf: its softmax is undefined"),
    ([0.0] * 6, [0.5, 0, 0, 0, 0, 0.4], "q sums to 0.9: with normalize='softmax' p holds logits and q"),
    ([0.0] * 6, [1.5, 0, 0, 0, 0, -0.5], r"q\[5\] = -0.5 is negative"),
])
def test_errors(z, q, match):
    q = np.full(6, 1 / 6) if q is None else q
    with pytest.raises(ValueError, match=match):
        emdtree.emd(np.array(z, dtype=float), np.array(q), TREE, normalize="softmax")


def test_error_names_the_batch_index():
    z = np.zeros((3, 6))
    z[2] = -np.inf
    with pytest.raises(ValueError, match=r"every logit of p at batch index \(2,\) is -inf"):
        emdtree.emd(z, np.full(6, 1 / 6), TREE, normalize="softmax")
    q = np.full((3, 6), 1 / 6)
    q[1, 0] = 0.5
    with pytest.raises(ValueError, match=r"q at batch index \(1,\) sums to"):
        emdtree.emd(np.zeros((3, 6)), q, TREE, normalize="softmax")


# ----------------------------------------------------------------------------- metrics, pairwise, CLI


@pytest.mark.parametrize("tree", [TREE, None, Tree.chain(6)])
def test_metrics_take_logits(tree):
    rng = np.random.default_rng(5)
    z = rng.normal(size=(40, 6)) * 3
    y = rng.integers(0, 6, 40)
    with_tree = tree if tree is not None else Tree.chain(6)
    got = metrics.report(z, y, with_tree, ks=(1, 3), normalize="softmax", rho=1.5)
    want = metrics.report(softmax(z), y, with_tree, ks=(1, 3), rho=1.5)
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=1e-12), key
    q = distributions(rng, (40, 6))
    assert metrics.mean_emd(z, q, tree, normalize="softmax") == pytest.approx(
        metrics.mean_emd(softmax(z), q, tree), rel=1e-12)
    acc = metrics.EMDMetric(tree, normalize="softmax").update(z[:10], y[:10])
    acc.merge(metrics.EMDMetric(tree, normalize="softmax").update(z[10:], y[10:]))
    assert acc.compute() == pytest.approx(metrics.mean_emd(softmax(z), y, tree), rel=1e-12)


def test_metrics_errors_with_logits():
    z = np.zeros((5, 3))
    z[3, 1] = np.inf
    with pytest.raises(ValueError, match=r"pred\[3, 1\] = inf is not a logit"):
        metrics.mean_emd(z, [0, 1, 2, 0, 1], normalize="softmax")
    with pytest.raises(ValueError, match=r"target\[0\] sums to 2.0: with normalize='softmax' the targets"):
        metrics.mean_emd(np.zeros((2, 3)), np.full((2, 3), 2 / 3), normalize="softmax")
    with pytest.raises(ValueError, match=r"pred\[0, 0\] = -1.0 is negative.*pass normalize='softmax'"):
        metrics.report(-np.eye(3), [0, 1, 2], Tree.chain(3), ks=(1,))
    with pytest.raises(ValueError, match="normalize must be None, 'l1' or 'softmax', got 'l2'"):
        metrics.HierarchicalMetrics(TREE, normalize="l2")


def test_pairwise_takes_logits():
    rng = np.random.default_rng(6)
    z, w = rng.normal(size=(7, 6)), rng.normal(size=(4, 6))
    np.testing.assert_allclose(emdtree.pairwise(z, tree=TREE, normalize="softmax"),
                               emdtree.pairwise(softmax(z), tree=TREE), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(emdtree.pairwise(z.T, w.T, tree=TREE, normalize="softmax", axis=0, rho=2),
                               emdtree.pairwise(softmax(z), softmax(w), tree=TREE, rho=2), rtol=1e-12)
    z[2, 3] = np.nan
    with pytest.raises(ValueError, match=r"X\[2, 3\] = nan is not a logit"):
        emdtree.pairwise(z, tree=TREE, normalize="softmax")


def test_cli_normalize_softmax(tmp_path, capsys):
    (tmp_path / "t.nwk").write_text("((a:1,b:2):0.5,c:3);")
    tree = Tree.from_newick("((a:1,b:2):0.5,c:3);")
    assert main(["distance", "--normalize", "softmax", "--tree", str(tmp_path / "t.nwk"), "--", "0,0,0",
                 "1,0,0"]) == 0
    out = capsys.readouterr().out
    assert float(out) == pytest.approx(float(emdtree.emd([1 / 3] * 3, [1, 0, 0], tree)), rel=1e-15)
    rng = np.random.default_rng(7)
    z = rng.normal(size=(20, 3))
    y = rng.integers(0, 3, 20)
    np.save(tmp_path / "z.npy", z)
    np.save(tmp_path / "y.npy", y)
    args = ["evaluate", str(tmp_path / "z.npy"), str(tmp_path / "y.npy"), "--tree", str(tmp_path / "t.nwk"),
            "--normalize", "softmax", "--k", "1"]
    assert main(args + ["--json", "--distance", "lca_subtree_height"]) == 0
    got = json.loads(capsys.readouterr().out)
    want = metrics.report(softmax(z), y, tree, ks=(1,), distance="lca_subtree_height")
    assert got == pytest.approx(want, rel=1e-12)
    assert main(args + ["--distance", "lca_height"]) == 0
    assert "tree distances: LCA height (H - depth of the LCA)" in capsys.readouterr().out


def test_cpu_tensors_take_the_same_route():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(8)
    z, v = rng.normal(size=(3, TREE.n_bins)), rng.normal(size=(3, TREE.n_bins))
    q = distributions(rng, (3, TREE.n_bins))
    tz, tq, tv = (torch.from_numpy(a) for a in (z, q, v))
    for fn, args in ((emdtree.emd_value_and_grad, (z, q)), (emdtree.emd_hessian, (z, q)),
                     (emdtree.emd_hvp, (z, q, v))):
        want = fn(*args, TREE, 1.5, normalize="softmax")
        got = fn(*(tz, tq, tv)[:len(args)], TREE, 1.5, normalize="softmax")
        pairs = zip(got, want) if isinstance(got, tuple) else [(got, want)]
        for g, w in pairs:
            assert isinstance(g, torch.Tensor)
            np.testing.assert_allclose(g.numpy(), w, rtol=1e-13, atol=1e-15)
