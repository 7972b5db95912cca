"""One input semantics through every door: masked logits, bad logits, softmax on Dask and in the CLI.

Each door (the NumPy API, torch, JAX eager and under jit, TensorFlow eager and
in a ``tf.function``, ``pairwise`` in memory and on Dask, the metrics, the
command line) is held to :mod:`emdtree.engine.semantics`: ``-inf`` logits are
masked classes (probability 0, gradient 0), a row of ``-inf`` only is an error
naming that row, and a ``+inf`` or NaN logit is named at the caller's entry.
"""

from __future__ import annotations

import numpy as np
import pytest

import emdtree

from cli_helpers import assert_input_error, run

TREE = emdtree.Tree.from_nested({"a": ["x", "y"], "b": ["z", "w"], "c": None})
N_BINS = TREE.n_bins
LABELS = np.array([0, 2, 4, 1])


def _masked_logits(dtype=np.float64) -> np.ndarray:
    """A batch of logits with some ``-inf`` entries (not a whole row), one on a row's target class."""
    z = np.random.default_rng(7).normal(size=(4, N_BINS)).astype(dtype)
    z[0, 1] = z[0, 3] = -np.inf
    z[2, 0] = -np.inf
    z[3, 1] = -np.inf  # the target class of row 3 is masked: a finite loss all the same
    return z


def _reference(z: np.ndarray, target: np.ndarray, rho: float):
    """Loss per row and gradient with respect to the logits, from the NumPy API."""
    q = np.eye(N_BINS, dtype=z.dtype)[target] if target.dtype.kind in "iu" else target
    return emdtree.emd_value_and_grad(z, q, TREE, rho=rho, normalize="softmax")


def _torch(z, target, rho):
    torch = pytest.importorskip("torch")
    from emdtree.torch import emd_loss

    x = torch.tensor(z, requires_grad=True)
    loss = emd_loss(x, torch.tensor(target), TREE, rho=rho, normalize="softmax", reduction="none")
    loss.sum().backward()
    return loss.detach().numpy(), x.grad.numpy()


def _jax(z, target, rho, jit=False):
    jax = pytest.importorskip("jax")
    from emdtree.jax import emd_loss

    def values(x):
        return emd_loss(x, jax.numpy.asarray(target), TREE, rho=rho, normalize="softmax",
                        implementation="callback")

    def total(x):
        return values(x).sum()

    value, grad = (jax.jit(values), jax.jit(jax.grad(total))) if jit else (values, jax.grad(total))
    with jax.enable_x64(True):
        x = jax.numpy.asarray(z)
        return np.asarray(value(x)), np.asarray(grad(x))


def _jax_jit(z, target, rho):
    return _jax(z, target, rho, jit=True)


def _tf(z, target, rho, graph=False):
    tf = pytest.importorskip("tensorflow")
    from emdtree.tensorflow import emd_loss

    def values(x):
        return emd_loss(tf.constant(target), x, TREE, rho=rho, normalize="softmax")

    if graph:
        values = tf.function(values)
    x = tf.Variable(z)
    with tf.GradientTape() as tape:
        loss = values(x)
        total = tf.reduce_sum(loss)
    return loss.numpy(), tape.gradient(total, x).numpy()


def _tf_graph(z, target, rho):
    return _tf(z, target, rho, graph=True)


ADAPTERS = {"torch": _torch, "jax": _jax, "jax-jit": _jax_jit, "tf": _tf, "tf-function": _tf_graph}


def _targets(kind: str, dtype) -> np.ndarray:
    if kind == "labels":
        return LABELS
    return np.random.default_rng(3).dirichlet(np.ones(N_BINS), size=4).astype(dtype)


@pytest.mark.parametrize("door", list(ADAPTERS))
@pytest.mark.parametrize("kind", ["labels", "softmax-targets"])
@pytest.mark.parametrize("rho", [1.5, 2.0])
def test_masked_logits_agree_with_the_numpy_api(door, kind, rho):
    z = _masked_logits()
    target = _targets(kind, z.dtype)
    want_value, want_grad = _reference(z, target, rho)
    value, grad = ADAPTERS[door](z, target, rho)
    np.testing.assert_allclose(value, want_value, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(grad, want_grad, rtol=1e-10, atol=1e-14)
    masked = np.isneginf(z)
    assert np.all(grad[masked] == 0) and np.all(np.isfinite(grad))
    assert np.any(grad[~masked] != 0)


def test_masked_logits_float32():
    torch = pytest.importorskip("torch")
    from emdtree.torch import emd_loss

    z = _masked_logits(np.float32)
    want_value, want_grad = _reference(z, LABELS, 2.0)
    x = torch.tensor(z, requires_grad=True)
    loss = emd_loss(x, torch.tensor(LABELS), TREE, normalize="softmax", reduction="sum")
    loss.backward()
    assert x.grad.dtype == torch.float32
    np.testing.assert_allclose(loss.item(), want_value.sum(), rtol=1e-5)
    np.testing.assert_allclose(x.grad.numpy(), want_grad, rtol=1e-4, atol=1e-6)
    assert np.all(x.grad.numpy()[np.isneginf(z)] == 0)


def _numpy_door(z, target, rho):
    return _reference(z, target, rho)


ALL_DOORS = {"numpy": _numpy_door, **ADAPTERS}


@pytest.mark.parametrize("door", list(ALL_DOORS))
def test_a_row_of_minus_inf_is_named(door):
    z = _masked_logits()
    z[2] = -np.inf
    with pytest.raises(Exception, match=r"every logit of \S*.*2.* is -inf: its softmax is undefined") as info:
        ALL_DOORS[door](z, LABELS, 2.0)
    assert "nan" not in str(info.value).lower()


@pytest.mark.parametrize("door", list(ALL_DOORS))
@pytest.mark.parametrize("bad", [np.inf, np.nan])
def test_a_bad_logit_is_named_at_the_callers_entry(door, bad):
    z = _masked_logits()
    z[1, 3] = bad
    shown = "inf" if bad == np.inf else "nan"
    with pytest.raises(Exception, match=rf"\[1, 3\] = {shown} is not a logit") as info:
        ALL_DOORS[door](z, LABELS, 2.0)
    assert "[1, 0]" not in str(info.value)  # not the softmaxed NaN of another entry


# ----------------------------------------------------------------------------- pairwise, metrics, CLI


def _logits(n=11, seed=0):
    return np.random.default_rng(seed).normal(scale=2.0, size=(n, N_BINS))


@pytest.mark.parametrize("axis", [-1, 0])
def test_pairwise_softmax_on_dask_equals_in_memory(axis):
    da = pytest.importorskip("dask.array")
    X = _logits()
    X[4, 2] = -np.inf
    Y = _logits(5, seed=1)
    if axis == 0:
        X, Y = X.T.copy(), Y.T.copy()
    for args in ((X,), (X, Y)):
        want = emdtree.pairwise(*args, tree=TREE, normalize="softmax", axis=axis)
        lazy = [da.from_array(a, chunks=(3, -1) if axis == -1 else (-1, 3)) for a in args]
        got = emdtree.pairwise(*lazy, tree=TREE, normalize="softmax", axis=axis).compute()
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("bad, row", [(np.nan, False), (np.inf, False), (-np.inf, True)])
def test_pairwise_dask_names_bad_logits_as_in_memory(bad, row):
    da = pytest.importorskip("dask.array")
    X = _logits()
    if row:
        X[7] = bad
    else:
        X[7, 2] = bad
    with pytest.raises(ValueError) as memory:
        emdtree.pairwise(X, tree=TREE, normalize="softmax")
    with pytest.raises(ValueError) as lazy:
        emdtree.pairwise(da.from_array(X, chunks=(3, -1)), tree=TREE, normalize="softmax").compute()
    assert str(lazy.value) == str(memory.value)
    assert ("X[7]" if row else "X[7, 2]") in str(memory.value)


def test_metrics_softmax_on_dask_equals_in_memory():
    da = pytest.importorskip("dask.array")
    from emdtree.metrics import EMDMetric

    X = _logits(13)
    Q = np.random.default_rng(2).dirichlet(np.ones(N_BINS), size=13)
    labels = np.arange(13) % N_BINS
    for target in (Q, labels):
        memory, lazy = EMDMetric(TREE, normalize="softmax"), EMDMetric(TREE, normalize="softmax")
        memory.update(X, target)
        lazy.update(da.from_array(X, chunks=(4, -1)), da.from_array(target, chunks=4))
        assert lazy.compute() == pytest.approx(memory.compute(), rel=1e-12)


NEWICK = "((a:1,b:2):0.5,c:3);"


@pytest.fixture
def files(tmp_path):
    (tmp_path / "t.nwk").write_text(NEWICK)
    (tmp_path / "logits.tsv").write_text("sample\tc\ta\tb\ns0\t1\t-2\t0.5\ns1\t-3.55\t1\t1\ns2\t0\t-inf\t2\n")
    (tmp_path / "bad.tsv").write_text("sample\tc\ta\tb\ns0\t1\t-2\t0.5\ns1\t-3.55\tinf\t1\n")
    return tmp_path


@pytest.mark.parametrize("output", ["d.tsv", "d.zarr"])
def test_cli_pairwise_softmax_takes_negative_logits(files, capsys, output):
    if output.endswith(".zarr"):
        pytest.importorskip("zarr")
    from emdtree import io

    argv = ["pairwise", files / "logits.tsv", "--tree", files / "t.nwk", "--normalize", "softmax",
            "-o", files / output]
    code, _, err = run(argv, capsys)
    assert code == 0, err
    tree = emdtree.Tree.from_newick(NEWICK)
    _, X = io.load_counts(files / "logits.tsv", tree)
    want = emdtree.pairwise(X, tree=tree, normalize="softmax")
    if output.endswith(".zarr"):
        import zarr

        got = np.asarray(zarr.open_group(str(files / output), mode="r")["distances"])
    else:
        got = io.read_matrix(files / output).values
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("output", ["d.tsv", "d.zarr"])
def test_cli_names_a_bad_logit_by_sample_and_feature(files, capsys, output):
    if output.endswith(".zarr"):
        pytest.importorskip("zarr")
    argv = ["pairwise", files / "bad.tsv", "--tree", files / "t.nwk", "--normalize", "softmax", "-o",
            files / output]
    assert_input_error(argv, capsys, "the value of 'a' in sample 's1' = inf is not a logit")
    argv[5] = "none"
    assert_input_error(argv, capsys, "the count of 'a' in sample 's0' = -2.0 is negative")


# ----------------------------------------------------------------------------- the rules themselves


def test_rules_on_rows():
    from emdtree.engine import semantics

    entry, row = semantics.indexed("X", offset=10)
    ok = np.array([[0.0, -np.inf, -3.0], [1.0, 2.0, 3.0]])
    assert semantics.masses_error(ok, "softmax", "X", entry, row) is None
    assert semantics.masses_error(ok, None, "X", entry, row) == \
        "X[10, 1] = -inf is not finite: entries of X must be finite and >= 0"
    assert semantics.masses_error(np.array([[0.0, 0.0], [1.0, 0.0]]), "l1", "X", entry, row) == \
        "X[10] has zero total mass: cannot normalize"
    assert semantics.masses_error(np.array([[1.0, 0.0], [np.nan, 0.0]]), "softmax", "X", entry, row) == \
        semantics.message("logit", entry="X[11, 0]", value="nan", name="X")
    entry, row = semantics.along("input", (2, 3, 4), axis=1)
    assert (entry(5, 2), row(5)) == ("input[1, 2, 1]", "input[1, :, 1]")
    with pytest.raises(ValueError, match="normalize must be None, 'l1' or 'softmax'"):
        semantics.check_normalize("l2")


@pytest.mark.parametrize("door", ["numpy", "torch", "jax", "tf", "metrics"])
def test_a_bad_class_index_reads_the_same_at_every_door(door):
    z = _masked_logits()
    labels = LABELS.copy()
    labels[2] = N_BINS
    if door == "numpy":
        from emdtree.engine.labels import value_grad_labels

        call, name = (lambda: value_grad_labels(z, labels, TREE, normalize="softmax")), "labels"
    elif door == "metrics":
        from emdtree.metrics import EMDMetric

        call, name = (lambda: EMDMetric(TREE, normalize="softmax").update(z, labels)), "target"
    elif door == "tf":
        call, name = (lambda: _tf(z, labels, 2.0)), "y_true"
    else:
        call, name = (lambda: ADAPTERS[door](z, labels, 2.0)), "target"
    with pytest.raises(ValueError, match=rf"^{name}\[2\] = {N_BINS} is not a class index in "
                                         rf"\[0, {N_BINS - 1}\] \({N_BINS} bins\)$"):
        call()
