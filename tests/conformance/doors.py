"""The doors into emdtree: one entry per way of asking for the same numbers.

Each :class:`Door` is a name, the modules it needs (the door is skipped, with
the reason, when one is missing), and functions that take a
:class:`~conformance.cases.Case` (NumPy inputs) and return NumPy outputs
through that door:

``value_grad(case) -> (value (rows,), grad (rows, n_bins) or None)``
``hessian(case) -> (rows, n_bins, n_bins)``, or ``hvp(case) -> (rows, n_bins)``
(the Hessian times ``case.v``), for doors that give second derivatives.

A new door joins by adding one entry to :data:`DOORS`. Which internal knob
forces which CPU backend lives in :func:`forced` alone, so that renaming
emdtree's internal modules touches one place.

Doors marked ``run="cuda-sim"`` or ``"disable-jit"`` run in a subprocess whose
environment is set before Numba is imported (:data:`RUNS`);
``test_conformance.py`` starts it.

:data:`KNOWN_DEFECTS` maps ``(door, kind)`` to the reason a pair fails today;
``kind`` is one of a case's tags (its kind, ``rho=1.5``, ``float32``, ``raw``
for masses without normalisation, ``curved`` for a case with a finite,
non-zero Hessian to compare, ``second`` for any Hessian to compare, ``*``)
or several joined by ``+``. The pairs run as ``xfail(strict=True)``: an entry
fails the suite once its defect is fixed, and is then deleted here.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable
from unittest import mock

import numpy as np

from .cases import FEW, Case

# ---------------------------------------------------------------------------- tolerances

# relative to the largest expected entry of each quantity
TOL = {"float64": 1e-9, "float32": 3e-5}
# second derivatives in float32: terms h_i ~ |phi|^(rho - 2) summed over ancestors
TOL_SECOND = {"float64": 1e-8, "float32": 3e-4}


# ---------------------------------------------------------------------------- the registry


@dataclass(frozen=True)
class Door:
    """One way into emdtree: see the module docstring. ``labels``: takes class-index targets;
    ``softmax``: takes ``normalize="softmax"``; ``keeps_dtype``: float32 in, float32 out;
    ``subset``: "all", "small" or "few" cases; ``applies``: a further choice of cases."""

    name: str
    value_grad: Callable[[Case], tuple[np.ndarray, np.ndarray | None]]
    hessian: Callable[[Case], np.ndarray] | None = None
    hvp: Callable[[Case], np.ndarray] | None = None
    needs: tuple[str, ...] = ()
    applies: Callable[[Case], bool] = lambda case: True
    subset: str = "all"  # slow doors run "small" cases, or the "few" (compilers, XLA)
    labels: bool = False  # takes class indices; other doors get one-hot targets
    softmax: bool = True  # takes normalize="softmax"
    keeps_dtype: bool = True  # float32 in, float32 out
    names_entries: bool = True  # reports a bad entry by its index in the arrays the door was given
    run: str = "main"  # the process that runs it: "main" or a key of RUNS

    def missing(self) -> str | None:
        """Why the door cannot run here, or None."""
        for module in self.needs:
            if importlib.util.find_spec(module) is None:
                return f"{self.name} needs {module}, which is not installed"
        return None

    def takes(self, case: Case) -> bool:
        if self.subset != "all" and self.subset not in case.tags:
            return False
        if case.normalize == "softmax" and not self.softmax:
            return False
        return self.applies(case)

    def view(self, case: Case) -> Case:
        """The case as this door takes it: one-hot rows for class indices it cannot take."""
        return case if self.labels or not case.labels else replace(case, q=case.q_dense())


# ---------------------------------------------------------------------------- shared helpers


@functools.lru_cache(maxsize=None)
def tree_of(case: Case):
    return case.tree()


@functools.lru_cache(maxsize=None)
def tree_not_chain(case: Case):
    """The case's tree, or for a canonical chain the same path rooted at its first bin: the same
    distances, without the chain kernel's layout, so that the blocked and row kernels run."""
    if not case.is_chain:
        return tree_of(case)
    from emdtree import Tree

    n = case.n_bins
    parents = np.arange(-1, n - 1, dtype=np.int64)
    weights = np.concatenate([[0.0], case.weights[:-1]])
    return Tree(parents, weights, np.arange(n), names=[f"b{k}" for k in range(n)])


def _blocks(h: np.ndarray) -> np.ndarray:
    """Diagonal (rows, n, n) blocks of a (rows, n, rows, n) Hessian of a sum over rows; the
    other blocks must be zero (rows do not interact)."""
    rows, n = h.shape[:2]
    diag = np.stack([h[r, :, r, :] for r in range(rows)])
    off = h.copy()
    for r in range(rows):
        off[r, :, r, :] = 0
    if np.any(off != 0):
        raise AssertionError(f"rows interact in the Hessian: off-diagonal block entry {np.abs(off).max():g}")
    return diag


def to_numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):
        return x.detach().cpu().numpy()
    if hasattr(x, "numpy"):
        return np.asarray(x.numpy())
    try:
        return np.from_dlpack(x)
    except (TypeError, RuntimeError, BufferError, AttributeError):
        return np.asarray(x)


# ---------------------------------------------------------------------------- NumPy API, each CPU backend


BACKENDS = ("numpy-pass", "numba-serial", "numba-parallel", "numba-chain", "numba-rows")
COPIES = 36  # the parallel door tiles the rows past one 32-row block per thread


@contextlib.contextmanager
def forced(backend: str):
    """Run the enclosed NumPy-API calls on one CPU backend. The only place that knows the knobs."""
    from emdtree.engine import driver as _driver, tiers as _tiers

    knobs = {
        # the first-call NumPy pass, whatever the kernels' state
        "numpy-pass": {(_tiers, "use_numpy"): lambda *args, **kwargs: True},
        "numba-serial": {(_tiers, "use_numpy"): lambda *args, **kwargs: False,
                         (_driver, "ROW_KERNEL_MAX"): 0, (_driver, "PARALLEL_MIN_WORK"): 10**18},
        "numba-parallel": {(_tiers, "use_numpy"): lambda *args, **kwargs: False,
                           (_driver, "ROW_KERNEL_MAX"): 0, (_driver, "PARALLEL_MIN_WORK"): 0},
        "numba-chain": {(_tiers, "use_numpy"): lambda *args, **kwargs: False,
                        (_driver, "PARALLEL_MIN_WORK"): 10**18},
        "numba-rows": {(_tiers, "use_numpy"): lambda *args, **kwargs: False,
                       (_driver, "ROW_KERNEL_MAX"): 10**9, (_driver, "PARALLEL_MIN_WORK"): 10**18},
    }[backend]
    with contextlib.ExitStack() as stack:
        for (module, attr), value in knobs.items():
            stack.enter_context(mock.patch.object(module, attr, value))
        if backend == "numba-parallel":
            import numba

            previous = numba.get_num_threads()
            numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
            stack.callback(numba.set_num_threads, previous)
        yield


@contextlib.contextmanager
def kernels_called():
    """Record the value-and-gradient implementations that the enclosed calls run (a list of names
    from "numpy-pass", "chain-serial", "chain-parallel", "blocked-serial", "blocked-parallel",
    "rows"), to check that :func:`forced` forces what it says."""
    from emdtree.engine import driver as _driver
    from emdtree.kernels import chain, cpu
    from emdtree.kernels import rows as rows_kernel

    called: list[str] = []
    targets = {"numpy-pass": (_driver, "numpy_value_grad"), "chain-serial": (chain, "chain_value_grad_serial"),
               "chain-parallel": (chain, "chain_value_grad_parallel"),
               "blocked-serial": (cpu, "value_grad_serial"), "blocked-parallel": (cpu, "value_grad_parallel"),
               "rows": (rows_kernel, "value_grad_rows")}

    def spy(name, fn):
        def run(*args, **kwargs):
            called.append(name)
            return fn(*args, **kwargs)
        run.overloads = getattr(fn, "overloads", None)
        return run

    with contextlib.ExitStack() as stack:
        for name, (module, attr) in targets.items():
            stack.enter_context(mock.patch.object(module, attr, spy(name, getattr(module, attr))))
        yield called


_NOT_CHAIN = ("numba-serial", "numba-parallel", "numba-rows")


def _api_inputs(case: Case, backend: str):
    tree = tree_not_chain(case) if backend in _NOT_CHAIN else tree_of(case)
    p, q, v = case.p, case.q, case.v
    if backend == "numba-parallel":
        p, q, v = (np.tile(x, (COPIES, 1)) for x in (p, q, v))
    return p, q, v, tree


def _last_copy(x: np.ndarray, case: Case) -> np.ndarray:
    return x[-len(case.p):]


def _api_value_grad(backend):
    def run(case):
        import emdtree

        p, q, _, tree = _api_inputs(case, backend)
        with forced(backend):
            value = emdtree.emd(p, q, tree, case.rho, normalize=case.normalize)
            value2, grad = emdtree.emd_value_and_grad(p, q, tree, case.rho, normalize=case.normalize)
        tol = TOL[case.dtype.name] * max(1.0, float(np.abs(value).max(initial=0.0)))
        if not np.all(np.abs(value.astype(np.float64) - value2) <= tol):
            raise AssertionError(f"emd and emd_value_and_grad differ: {value} vs {value2}")
        return _last_copy(value, case), _last_copy(grad, case)
    return run


def _api_hessian(backend):
    def run(case):
        import emdtree

        p, q, _, tree = _api_inputs(case, backend)
        with forced(backend):
            return _last_copy(emdtree.emd_hessian(p, q, tree, case.rho, normalize=case.normalize), case)
    return run


def _api_hvp(backend):
    def run(case):
        import emdtree

        p, q, v, tree = _api_inputs(case, backend)
        with forced(backend):
            return _last_copy(emdtree.emd_hvp(p, q, v, tree, case.rho, normalize=case.normalize), case)
    return run


def _chain_kernel_runs(case: Case) -> bool:
    return case.is_chain and case.rho in (1.0, 2.0)


def _api_door(backend: str, run: str = "main", **options) -> Door:
    prefix = "" if run == "main" else f"{run}:"
    return Door(f"{prefix}api-{backend}", _api_value_grad(backend), hessian=_api_hessian(backend),
                hvp=_api_hvp(backend), run=run,
                applies=_chain_kernel_runs if backend == "numba-chain" else (lambda case: True), **options)


# ---------------------------------------------------------------------------- Array-API dispatch


def _dispatch_door(name: str, module: str, convert: Callable[[np.ndarray], object], jit: bool = False,
                   **options) -> Door:
    """The NumPy API called with another library's arrays; with ``jit``, inside one ``jax.jit``
    (JAX compiles every operation per shape when eager: seconds a case)."""

    def call(case, fn, *args):
        import emdtree

        arrays = [convert(x) for x in args]
        run = lambda *xs: fn(emdtree, *xs, tree_of(case), case.rho, normalize=case.normalize)  # noqa: E731
        with _x64(module):
            if jit:
                import jax

                run = jax.jit(run)
            out = run(*arrays)
            return tuple(to_numpy(x) for x in out) if isinstance(out, tuple) else to_numpy(out)

    return Door(
        name,
        lambda case: call(case, lambda e, *a, **k: e.emd_value_and_grad(*a, **k), case.p, case.q),
        hessian=lambda case: call(case, lambda e, *a, **k: e.emd_hessian(*a, **k), case.p, case.q),
        hvp=lambda case: call(case, lambda e, *a, **k: e.emd_hvp(*a, **k), case.p, case.q, case.v),
        needs=(module,), **options)


def _x64(module: str):
    if module != "jax":
        return contextlib.nullcontext()
    import jax

    return jax.enable_x64(True)


def _torch_tensor(x):
    import torch

    return torch.from_numpy(np.array(x))


def _strict_array(x):
    import array_api_strict as xp

    return xp.asarray(np.array(x))


def _jax_array(x):
    import jax
    import jax.numpy as jnp

    with jax.enable_x64(True):
        return jnp.asarray(x)


# ---------------------------------------------------------------------------- metrics and pairwise


def _metrics_value(case):
    from emdtree import metrics

    values = [metrics.mean_emd(case.p[r:r + 1], case.q[r:r + 1], tree_of(case), case.rho,
                               normalize=case.normalize) for r in range(len(case.p))]
    return np.array(values), None


def _metrics_dask_value(case):
    import dask.array as da

    from emdtree import metrics

    p = da.from_array(case.p, chunks=1)
    q = da.from_array(case.q, chunks=1)
    values = []
    for r in range(len(case.p)):
        metric = metrics.EMDMetric(tree_of(case), case.rho, normalize=case.normalize)
        with _synchronous():
            values.append(metric.update(p[r:r + 1], q[r:r + 1]).compute())
    return np.array(values), None


def _synchronous():
    import dask

    return dask.config.set(scheduler="synchronous")


def _as_logits(q: np.ndarray) -> np.ndarray:
    """Logits whose softmax is ``q``: ``log q``, ``-inf`` for empty bins."""
    with np.errstate(divide="ignore"):
        return np.log(q)


def _pairwise_inputs(case):
    y = case.q if case.normalize is None else _as_logits(case.q).astype(case.dtype)
    return case.p, y


def _pairwise_value(case):
    import emdtree

    x, y = _pairwise_inputs(case)
    d = emdtree.pairwise(x, y, tree_of(case), case.rho, normalize=case.normalize)
    return np.diagonal(d).copy(), None


def _pairwise_sparse_value(case):
    import scipy.sparse as sp

    import emdtree

    x, y = _pairwise_inputs(case)
    d = emdtree.pairwise(sp.csr_array(x), sp.csc_matrix(y), tree_of(case), case.rho, normalize=case.normalize)
    return np.diagonal(d).copy(), None


def _pairwise_dask_value(case):
    import dask.array as da

    import emdtree

    x, y = _pairwise_inputs(case)
    d = emdtree.pairwise(da.from_array(x, chunks=2), da.from_array(y, chunks=2), tree_of(case), case.rho,
                         normalize=case.normalize)
    with _synchronous():
        return np.diagonal(d.compute()).copy(), None


# ---------------------------------------------------------------------------- the command line


def _cli_distance(case):
    from emdtree.__main__ import main

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        np.save(tmp / "p.npy", case.p)
        np.save(tmp / "q.npy", case.q)
        tree_of(case).save(tmp / "tree.json")
        code = main(["distance", str(tmp / "p.npy"), str(tmp / "q.npy"), "--tree", str(tmp / "tree.json"),
                     "--rho", repr(case.rho), "--normalize", case.normalize or "none", "-q",
                     "-o", str(tmp / "out.npy")])
        if code != 0:
            raise AssertionError(f"emdtree distance exited with status {code}")
        return np.load(tmp / "out.npy"), None


def _cli_pairwise(case):
    from emdtree.__main__ import main

    x, y = _pairwise_inputs(case)
    rows = len(x)
    table = np.concatenate([x, y]).astype(np.float64)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        lines = ["sample\t" + "\t".join(f"b{k}" for k in range(case.n_bins))]
        lines += [f"s{i}\t" + "\t".join(repr(float(a)) for a in row) for i, row in enumerate(table)]
        (tmp / "table.tsv").write_text("\n".join(lines) + "\n")
        tree_of(case).save(tmp / "tree.json")
        code = main(["pairwise", str(tmp / "table.tsv"), "--tree", str(tmp / "tree.json"), "--rho",
                     repr(case.rho), "--normalize", case.normalize or "none", "-q", "-o", str(tmp / "d.tsv")])
        if code != 0:
            raise AssertionError(f"emdtree pairwise exited with status {code}")
        d = np.loadtxt(tmp / "d.tsv", skiprows=1, usecols=range(1, 2 * rows + 1), ndmin=2)
    return np.array([d[i, rows + i] for i in range(rows)]), None


# ---------------------------------------------------------------------------- PyTorch


def _torch_inputs(case):
    import torch

    p = torch.from_numpy(case.p.copy())
    q = torch.from_numpy(case.q.copy())
    return p, q


def _torch_loss(case, reduction="sum"):
    from emdtree.torch import emd_loss

    tree = tree_of(case)
    return lambda x, q: emd_loss(x, q, tree, case.rho, reduction=reduction, normalize=case.normalize)


def _torch_eager(case):
    import torch

    p, q = _torch_inputs(case)
    value = _torch_loss(case, "none")(p, q)
    x = p.clone().requires_grad_()
    (grad,) = torch.autograd.grad(_torch_loss(case)(x, q), x)
    return to_numpy(value), to_numpy(grad)


def _torch_double_backward(case):
    import torch

    p, q = _torch_inputs(case)
    x = p.clone().requires_grad_()
    (grad,) = torch.autograd.grad(_torch_loss(case)(x, q), x, create_graph=True)
    (hv,) = torch.autograd.grad(grad, x, grad_outputs=torch.from_numpy(case.v.copy()), allow_unused=True)
    return np.zeros_like(case.v) if hv is None else to_numpy(hv)


def _torch_func_grad(case):
    import torch

    p, q = _torch_inputs(case)
    grad, _ = torch.func.grad_and_value(_torch_loss(case))(p, q)
    value = torch.func.vmap(lambda x, t: _torch_loss(case)(x[None], t[None]))(p, q)
    return to_numpy(value), to_numpy(grad)


def _torch_vmap_grad(case):
    import torch

    p, q = _torch_inputs(case)
    grad = torch.func.vmap(torch.func.grad(lambda x, t: _torch_loss(case)(x[None], t[None])))(p, q)
    return to_numpy(_torch_loss(case, "none")(p, q)), to_numpy(grad)


def _torch_jac(which):
    def value_grad(case):
        import torch

        p, q = _torch_inputs(case)
        jac = getattr(torch.func, which)(lambda x: _torch_loss(case, "none")(x, q))(p)  # (rows, rows, n)
        grad = torch.stack([jac[r, r] for r in range(len(p))])
        return to_numpy(_torch_loss(case, "none")(p, q)), to_numpy(grad)

    def hessian(case):
        import torch

        p, q = _torch_inputs(case)
        # jacfwd of jacfwd raises (forward mode over forward mode through an autograd.Function
        # loses the inner tangent in PyTorch): forward over reverse, as torch.func.hessian does
        inner = torch.func.jacrev if which == "jacfwd" else getattr(torch.func, which)
        return _blocks(to_numpy(getattr(torch.func, which)(inner(lambda x: _torch_loss(case)(x, q)))(p)))

    return value_grad, hessian


def _torch_func_hessian(case):
    import torch

    p, q = _torch_inputs(case)
    return _blocks(to_numpy(torch.func.hessian(lambda x: _torch_loss(case)(x, q))(p)))


def _torch_compiled(case):
    import torch

    p, q = _torch_inputs(case)
    # a fresh compile per case: the table's cases must not depend on which ran before
    torch._dynamo.reset()
    loss = torch.compile(_torch_loss(case, "none"), backend="aot_eager", fullgraph=True)
    x = p.clone().requires_grad_()
    value = loss(x, q)
    (grad,) = torch.autograd.grad(value.sum(), x)
    return to_numpy(value), to_numpy(grad)


def _torch_compiled_new_rho(case):
    """A compiled function that takes ``rho`` as an argument, called with another ``rho`` first:
    the second call recompiles with ``rho`` as a symbolic float, as it does in a training loop
    whose exponent changes."""
    import torch

    from emdtree.torch import emd_loss

    p, q = _torch_inputs(case)
    tree = tree_of(case)
    torch._dynamo.reset()
    def losses(x, t, rho):
        return emd_loss(x, t, tree, rho, reduction="none", normalize=case.normalize)

    loss = torch.compile(losses, backend="aot_eager", fullgraph=True)
    loss(p, q, case.rho + 1.0)
    x = p.clone().requires_grad_()
    value = loss(x, q, case.rho)
    (grad,) = torch.autograd.grad(value.sum(), x)
    return to_numpy(value), to_numpy(grad)


# ---------------------------------------------------------------------------- TensorFlow and Keras


def _tf_inputs(case):
    import tensorflow as tf

    return tf.constant(case.p), tf.constant(case.q), tf.constant(case.v)


def _tf_loss(case):
    from emdtree.tensorflow import emd_loss

    tree = tree_of(case)
    return lambda x, q: emd_loss(q, x, tree, case.rho, normalize=case.normalize)


def _tf_first(case, x, q):
    import tensorflow as tf

    with tf.GradientTape() as tape:
        tape.watch(x)
        value = _tf_loss(case)(x, q)
    return value, tape.gradient(value, x)


def _tf_second(case, x, q, v):
    import tensorflow as tf

    with tf.GradientTape() as outer:
        outer.watch(x)
        with tf.GradientTape() as inner:
            inner.watch(x)
            value = tf.reduce_sum(_tf_loss(case)(x, q))
        grad = inner.gradient(value, x)
    return outer.gradient(grad, x, output_gradients=v, unconnected_gradients=tf.UnconnectedGradients.ZERO)


def _tf_door(name: str, mode: str, **options) -> Door:
    def wrap(fn):
        if mode == "eager":
            return fn
        import tensorflow as tf

        return tf.function(fn, jit_compile=mode == "xla")

    def value_grad(case):
        x, q, _ = _tf_inputs(case)
        value, grad = wrap(lambda x, q: _tf_first(case, x, q))(x, q)
        return to_numpy(value), to_numpy(grad)

    def hvp(case):
        x, q, v = _tf_inputs(case)
        return to_numpy(wrap(lambda x, q, v: _tf_second(case, x, q, v))(x, q, v))

    return Door(name, value_grad, hvp=hvp, needs=("tensorflow",), labels=True, **options)


def _keras_loss(case):
    import tensorflow as tf

    from emdtree.tensorflow import EMDLoss

    loss = EMDLoss(tree_of(case), case.rho, normalize=case.normalize, reduction=None, dtype=case.dtype.name)
    x, q, _ = _tf_inputs(case)
    with tf.GradientTape() as tape:
        tape.watch(x)
        value = loss(q, x)
        total = tf.reduce_sum(value)
    return to_numpy(value), to_numpy(tape.gradient(total, x))


# ---------------------------------------------------------------------------- JAX


def _jax_loss(case, implementation):
    from emdtree.jax import emd_loss

    tree = tree_of(case)
    return lambda x, q: emd_loss(x, q, tree, case.rho, normalize=case.normalize,
                                 implementation=implementation)


def _jax_door(name: str, implementation: str, mode: str, second: str | None, **options) -> Door:
    """``mode``: "eager", "jit" (value and gradient in one compiled function, the Hessian in
    another) or "vmap" (per-sample gradients); ``second``: the transform for the Hessian."""

    def value_grad(case):
        import jax

        with jax.enable_x64(True):
            p, q = _jax_array(case.p), _jax_array(case.q)
            f = _jax_loss(case, implementation)
            if mode == "vmap":
                grad = jax.vmap(jax.grad(lambda x, t: f(x[None], t[None]).sum()))(p, q)
                value = jax.vmap(lambda x, t: f(x[None], t[None])[0])(p, q)
                return np.asarray(value), np.asarray(grad)
            both = lambda x, t: (f(x, t), jax.grad(lambda y: f(y, t).sum())(x))  # noqa: E731
            value, grad = (jax.jit(both) if mode == "jit" else both)(p, q)
            return np.asarray(value), np.asarray(grad)

    def hessian(case):
        import jax

        with jax.enable_x64(True):
            p, q = _jax_array(case.p), _jax_array(case.q)
            f = _jax_loss(case, implementation)
            total = lambda x: f(x, q).sum()  # noqa: E731
            h = {"hessian": jax.hessian, "jacrev-grad": lambda g: jax.jacrev(jax.grad(g)),
                 "jacfwd-grad": lambda g: jax.jacfwd(jax.grad(g))}[second](total)
            return _blocks(np.asarray((jax.jit(h) if mode == "jit" else h)(p)))

    return Door(name, value_grad, hessian=hessian if second else None, needs=("jax",), labels=True, **options)


# ---------------------------------------------------------------------------- CUDA kernels (simulator)


def _cuda_value_grad(case):
    from numba import cuda

    from emdtree.engine import cuda as _cuda

    stream = cuda.stream()
    p, q = (cuda.to_device(np.ascontiguousarray(x), stream=stream) for x in (case.p, case.q))
    value, grad = _cuda.value_grad(p, q, tree_of(case), case.rho, True, stream)
    return value.copy_to_host(stream=stream), grad.copy_to_host(stream=stream)


def _cuda_hvp(case):
    from numba import cuda

    from emdtree.engine import cuda as _cuda

    stream = cuda.stream()
    p, q, v = (cuda.to_device(np.ascontiguousarray(x), stream=stream) for x in (case.p, case.q, case.v))
    return _cuda.hvp(p, q, v, tree_of(case), case.rho, True, stream).copy_to_host(stream=stream)


@contextlib.contextmanager
def cuda_setup():
    """Blocks of 4 threads, so that the small trees still cross thread-chunk boundaries."""
    import sys

    from emdtree.engine import cuda as _cuda

    interval = sys.getswitchinterval()
    sys.setswitchinterval(5e-5)  # the simulator's threads meet at every syncthreads
    try:
        with mock.patch.object(_cuda, "THREADS_PER_BLOCK", 4):
            yield
    finally:
        sys.setswitchinterval(interval)


# ---------------------------------------------------------------------------- the table of doors


def _raw(case: Case) -> bool:
    return case.normalize is None


DOORS: list[Door] = [
    *[_api_door(backend) for backend in BACKENDS],
    _dispatch_door("dispatch-torch", "torch", _torch_tensor),
    _dispatch_door("dispatch-array-api-strict", "array_api_strict", _strict_array),
    # eager JAX compiles every operation per shape (seconds a case): one case eagerly, a few under jit
    _dispatch_door("dispatch-jax", "jax", _jax_array, applies=lambda case: case.name == FEW[1]),
    _dispatch_door("dispatch-jax-jit", "jax", _jax_array, jit=True, subset="few"),
    # (one call per row: an error names row 0)
    Door("metrics-mean-emd", _metrics_value, labels=True, keeps_dtype=False, names_entries=False),
    Door("metrics-dask", _metrics_dask_value, needs=("dask",), labels=True, keeps_dtype=False,
         names_entries=False,
         subset="small"),
    Door("pairwise", _pairwise_value),
    Door("pairwise-dask", _pairwise_dask_value, needs=("dask",)),
    # SciPy sparse tables hold masses (the sparse route reads their stored entries)
    Door("pairwise-scipy-sparse", _pairwise_sparse_value, softmax=False),
    # (errors name a file's sample and feature, and end in exit status 2)
    Door("cli-distance", _cli_distance, keeps_dtype=False, names_entries=False),
    # a text table is float64: float32 rows summing to 1 in float32 do not in float64
    Door("cli-pairwise", _cli_pairwise, keeps_dtype=False, applies=lambda case: case.dtype == np.float64,
         names_entries=False),
    Door("torch-eager", _torch_eager, hvp=_torch_double_backward, needs=("torch",), labels=True),
    Door("torch-func-grad", _torch_func_grad, hessian=_torch_func_hessian, needs=("torch",), labels=True),
    Door("torch-vmap-grad", _torch_vmap_grad, needs=("torch",), labels=True),
    Door("torch-jacrev", *_torch_jac("jacrev"), needs=("torch",), labels=True),
    Door("torch-jacfwd", *_torch_jac("jacfwd"), needs=("torch",), labels=True),
    Door("torch-compile", _torch_compiled, needs=("torch",), labels=True, subset="few"),
    Door("torch-compile-new-rho", _torch_compiled_new_rho, needs=("torch",), labels=True,
         applies=lambda case: case.name == FEW[0]),
    _tf_door("tf-eager", "eager"),
    _tf_door("tf-function", "function", subset="few"),
    _tf_door("tf-xla", "xla", subset="few"),
    Door("keras-loss", _keras_loss, needs=("tensorflow", "keras"), labels=True, subset="few"),
    _jax_door("jax-callback", "callback", "eager", "hessian", subset="small"),
    _jax_door("jax-callback-jit", "callback", "jit", None, subset="small"),
    _jax_door("jax-callback-vmap", "callback", "vmap", None, subset="few"),
    # the native path compiles every primitive per shape: eagerly, 5-10 s a case; one jit is ~1 s
    _jax_door("jax-native-jit", "native", "jit", "hessian", subset="few"),
    _jax_door("jax-native-jacrev", "native", "jit", "jacrev-grad",
              applies=lambda case: case.name in ("tree-tree6-float64-rho1.5", "tree-tree7-float32-rho2")),
    Door("cuda-sim", _cuda_value_grad, hvp=_cuda_hvp, needs=("numba_cuda",), applies=_raw, run="cuda-sim"),
    *[_api_door(backend, run="disable-jit", subset="small") for backend in BACKENDS],
]


@dataclass(frozen=True)
class Run:
    """A subprocess for doors that need their environment before Numba is imported."""

    name: str
    env: dict
    setup: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext


RUNS = {
    "cuda-sim": Run("cuda-sim", {"NUMBA_ENABLE_CUDASIM": "1"}, cuda_setup),
    "disable-jit": Run("disable-jit", {"NUMBA_DISABLE_JIT": "1"}),
}
RUN_ENV = "EMDTREE_CONFORMANCE_RUN"


def current_run() -> str:
    return os.environ.get(RUN_ENV, "main")


# ---------------------------------------------------------------------------- known defects

_MASKED_TORCH = ("torch rejects -inf logits (masked classes) eagerly: 'normalize='softmax' needs finite "
                 "logits'")
_MASKED_JAX = "JAX eager rejects -inf logits (masked classes): 'normalize='softmax' needs finite logits'"
_DISABLE_JIT = ("NUMBA_DISABLE_JIT=1: Numba intrinsics (tile_stats, row_up_1, chain_up_1, ...) are not "
                "usable in pure Python, and `kernel.overloads` raises AttributeError")

_INF_AS_NAN = ("a +inf logit is reported as a NaN at another entry of the softmax ('input[1, 0] = nan'), "
               "not as the caller's bad logit")

KNOWN_DEFECTS: dict[tuple[str, str], str] = {}


def known_defect(door: Door, case: Case) -> str | None:
    """The reason this pair fails today, from :data:`KNOWN_DEFECTS`, or None."""
    reasons = [reason for (name, kind), reason in KNOWN_DEFECTS.items()
               if name == door.name and all(tag in case.tags for tag in kind.split("+"))]
    return "; ".join(reasons) or None
