"""Per library, what the reference math needs beyond the Array API (:class:`~.reference.Ops`).

Segment sums, gathers of rows, constants and the form of the plan's index
arrays, for NumPy, JAX, TensorFlow, PyTorch and, for any other Array-API
namespace (array-api-strict, ...), a generic table whose segment sums are
products with constant 0/1 matrices. Each library is imported only when its
table is first asked for.

NumPy replaces the two tree sums by SciPy sparse products (cumulative sums
on a chain), :attr:`~.plan.TreePlan.numpy_sums`: on the ImageNet tree they
are a few times faster than the pointer-doubling steps in NumPy, and as fast
as the kernels' first calls need (``benchmarks/bench_losses.py``).
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from . import reference
from .plan import TreePlan
from .reference import Ops

__all__ = ["subtree_sums_as_kernels", "numpy_ops", "jax_ops", "tf_ops", "torch_ops", "generic_ops", "ops_for", "phi_rows",
           "value_grad_rows", "hvp_rows", "hessian_rows"]


def _plan_index(plan: TreePlan, name: str) -> Any:
    """A NumPy index array of the plan by name: a field of ``node_major`` or ``"hessian_index"``."""
    if name == "hessian_index":
        return plan.hessian_index
    return getattr(plan.node_major, name)


def _numpy_index(plan: TreePlan, name: str, like: Any) -> Any:
    return _plan_index(plan, name)


def _cumsum0(x: np.ndarray, reverse: bool = False) -> np.ndarray:
    """Cumulative sums down the rows of ``x`` (from the last row up with ``reverse``), in place
    for a C-ordered ``x`` of 16 columns or more (a fresh product or concatenation here).

    ``np.cumsum(x, axis=0)`` of a C-ordered array walks each column with a
    stride: 10 ms for (1000, 512) float64, where adding whole rows in turn
    takes 1.1 ms (and a Fortran-ordered array 1.4 ms).
    """
    if x.ndim != 2 or x.shape[1] < 16 or x.flags.f_contiguous:
        return np.cumsum(x[::-1], axis=0)[::-1] if reverse else np.cumsum(x, axis=0)
    out = x
    steps = range(out.shape[0] - 2, -1, -1) if reverse else range(1, out.shape[0])
    for i in steps:
        np.add(out[i], out[i + 1 if reverse else i - 1], out=out[i])
    return out


def _numpy_subtree(d: np.ndarray, plan: TreePlan) -> np.ndarray:
    sums = plan.numpy_sums
    x = sums.gather @ d
    return _cumsum0(x) if sums.inner is None else sums.inner @ x


def _numpy_ancestors(s: np.ndarray, plan: TreePlan) -> np.ndarray:
    sums = plan.numpy_sums
    if sums.inner is None:  # a path: the ancestors of position i are i .. n_inner - 1
        return _cumsum0(s, reverse=True)
    return sums.inner_t @ s


def subtree_sums_as_kernels(plan: TreePlan, d: np.ndarray) -> np.ndarray:
    """phi at the inner positions of the node-major arrays, (n_inner, rows), from the
    differences ``d`` (rows, n_bins) in their own dtype.

    Summed in ``d``'s dtype and in the order of the CPU kernels' ascending
    sweep: a node's own difference, then its children's phi one after the
    other in the sweep's order (a running sum along a chain), so that phi has
    the kernels' bits and an exact cancellation leaves the same exact 0, where
    ``sign(0) = 0`` decides the gradient for ``rho = 1``. The NumPy pass
    (:func:`emdtree.engine.driver.numpy_value_grad`) takes phi from here.
    """
    row, steps, inner = plan.sweep_sums
    if plan.canonical_chain:  # phi_k = phi_(k-1) + d_k, as the chain kernel
        phi = np.cumsum(d, axis=1).T
        return phi[inner]
    lay = plan.layout
    phi = np.zeros((plan.n_nodes, d.shape[0]), dtype=d.dtype)
    phi[row[lay.bin_position]] = d.T
    for child, par in steps:
        if isinstance(par, int):  # many siblings: one running sum, in order
            phi[par] = np.cumsum(np.concatenate([phi[par][None], phi[child]]), axis=0)[-1]
        else:
            phi[par] += phi[child]
    return phi[row[inner]]


def _numpy_bins_from(at_bins: np.ndarray, s: np.ndarray, plan: TreePlan) -> np.ndarray:
    """``s[up]`` plus ``at_bins`` at the bin rows, into one fresh array: the gather as slices
    where ``up`` is a few runs of consecutive indices (a chain: two)."""
    nm, runs = plan.node_major, plan.up_runs
    if at_bins.ndim == s.ndim and at_bins.shape[1:] != s.shape[1:]:  # (a Hessian's weights)
        s = np.broadcast_to(s, s.shape[:1] + np.broadcast_shapes(s.shape[1:], at_bins.shape[1:]))
    if runs is None:
        out = s[nm.up]
    else:
        out = np.empty((nm.up.shape[0],) + s.shape[1:], dtype=np.result_type(s, at_bins))
        for first, end, source in runs:
            out[first:end] = s[source:source + end - first]
    if nm.leaf_bins is None:
        out += at_bins
    else:
        out[nm.leaf_bins] += at_bins  # the leaf bins are distinct
    return out


def _numpy_segment_sum(x: np.ndarray, idx: np.ndarray, n: int) -> np.ndarray:
    out = np.zeros((n,) + x.shape[1:], dtype=x.dtype)
    np.add.at(out, idx, x)
    return out


numpy_ops = Ops(
    take=lambda x, idx: x[idx],
    segment_sum=_numpy_segment_sum,
    concat0=lambda xs: np.concatenate(xs, axis=0),
    zero_row=lambda x: np.concatenate([x, np.zeros((1,) + x.shape[1:], dtype=x.dtype)], axis=0),
    reshape=np.reshape,
    sum0=lambda x: np.sum(x, axis=0),
    mean0=lambda x: np.mean(x, axis=0, keepdims=True),
    abs=np.abs,
    sign=np.sign,
    where=np.where,
    constant=lambda a, like: np.asarray(a, dtype=like.dtype),
    index=_numpy_index,
    segments=_numpy_index,
    subtree=_numpy_subtree,
    ancestors=_numpy_ancestors,
    bins_from=_numpy_bins_from,
)


@functools.cache
def _identity(n: int) -> np.ndarray:
    """``0 .. n-1`` as indices (of a scatter that a compiler keeps: not an iota it could fold)."""
    out = np.arange(n, dtype=np.int32)
    out.flags.writeable = False
    return out


@functools.cache
def jax_ops() -> Ops:
    """JAX: segment sums as ``.at[].add`` (XLA scatters), NumPy indices as constants of the trace."""
    import jax.numpy as jnp

    def zeros(x, n):
        # zeros of n rows like those of x, with its sharding: with explicitly
        # sharded batches, a fresh unsharded array would not combine with x
        if x.shape[0] == 0:
            return jnp.zeros((n,) + x.shape[1:], x.dtype)
        return jnp.broadcast_to(jnp.zeros_like(x[:1]), (n,) + x.shape[1:])

    return Ops(
        take=lambda x, idx: jnp.take(x, idx, axis=0),
        segment_sum=lambda x, idx, n: zeros(x, n).at[idx].add(x),
        concat0=lambda xs: jnp.concatenate(xs, axis=0),
        zero_row=lambda x: jnp.concatenate([x, zeros(x, 1)], axis=0),
        reshape=jnp.reshape,
        sum0=lambda x: jnp.sum(x, axis=0),
        mean0=lambda x: jnp.mean(x, axis=0, keepdims=True),
        abs=jnp.abs,
        sign=jnp.sign,
        where=jnp.where,
        constant=lambda a, like: jnp.asarray(a, dtype=like.dtype),
        index=_numpy_index,
        segments=_numpy_index,
        transpose=jnp.transpose,
        sum1=lambda x: jnp.sum(x, axis=-1),
        mean1=lambda x: jnp.mean(x, axis=-1, keepdims=True),
        # a scatter is never fused into its uses: the rows are summed once
        materialize=lambda x: zeros(x, x.shape[0]).at[_identity(x.shape[0])].add(x),
    )


@functools.cache
def tf_ops() -> Ops:
    """TensorFlow: ``gather`` and ``unsorted_segment_sum``, NumPy indices as constants."""
    import tensorflow as tf

    return Ops(
        take=lambda x, idx: tf.gather(x, idx, axis=0),
        segment_sum=lambda x, idx, n: tf.math.unsorted_segment_sum(x, idx, n),
        concat0=lambda xs: tf.concat(xs, axis=0),
        zero_row=lambda x: tf.concat([x, tf.zeros(tf.stack([1, tf.shape(x)[1]]), x.dtype)], axis=0),
        reshape=tf.reshape,
        sum0=lambda x: tf.reduce_sum(x, axis=0),
        mean0=lambda x: tf.reduce_mean(x, axis=0, keepdims=True),
        abs=tf.abs,
        sign=tf.sign,
        where=tf.where,
        constant=lambda a, like: tf.constant(a, dtype=like.dtype),
        index=_numpy_index,
        segments=_numpy_index,
        transpose=tf.transpose,
        sum1=lambda x: tf.reduce_sum(x, axis=-1),
        mean1=lambda x: tf.reduce_mean(x, axis=-1, keepdims=True),
        # a scatter is never fused into its uses: the rows are summed once (under XLA)
        materialize=lambda x: tf.math.unsorted_segment_sum(x, _identity(x.shape[0]), x.shape[0]),
    )


@functools.cache
def torch_ops() -> Ops:
    """PyTorch: ``index_select`` and ``index_add``, indices kept in the plan per device."""
    import torch

    def index(plan: TreePlan, name: str, like: Any) -> Any:
        def build() -> Any:
            a = _plan_index(plan, name)
            if isinstance(a, tuple):
                return tuple(torch.as_tensor(t, dtype=torch.int64, device=like.device) for t in a)
            return torch.as_tensor(a, dtype=torch.int64, device=like.device)

        return plan.converted(("torch", name, str(like.device)), build)

    def segment_sum(x, idx, n):
        return torch.zeros((n,) + tuple(x.shape[1:]), dtype=x.dtype, device=x.device).index_add(0, idx, x)

    return Ops(
        take=lambda x, idx: torch.index_select(x, 0, idx),
        segment_sum=segment_sum,
        concat0=lambda xs: torch.cat(xs, dim=0),
        zero_row=lambda x: torch.cat([x, x.new_zeros((1,) + tuple(x.shape[1:]))], dim=0),
        reshape=torch.reshape,
        sum0=lambda x: torch.sum(x, dim=0),
        mean0=lambda x: torch.mean(x, dim=0, keepdim=True),
        abs=torch.abs,
        sign=torch.sign,
        where=torch.where,
        constant=lambda a, like: torch.as_tensor(a, dtype=like.dtype, device=like.device),
        index=index,
        segments=index,
    )


@functools.cache
def generic_ops(xp: Any) -> Ops:
    """Any Array-API namespace: ``take``, and segment sums as products with constant 0/1
    matrices (the standard has no scatter), kept in the plan per namespace, dtype and device."""
    from array_api_compat import device as device_of

    def key(like: Any, *parts: Any) -> tuple:
        return (xp.__name__, *parts, str(like.dtype), repr(device_of(like)))

    def index(plan: TreePlan, name: str, like: Any) -> Any:
        def build() -> Any:
            a = _plan_index(plan, name)
            dev = device_of(like)
            if isinstance(a, tuple):
                return tuple(xp.asarray(t, device=dev) for t in a)
            return xp.asarray(a, device=dev)

        return plan.converted(key(like, "index", name), build)

    def segments(plan: TreePlan, name: str, like: Any) -> Any:
        n = plan.node_major.n_inner
        real = np.float32 if like.dtype == xp.float32 else np.float64

        def matrix(idx: np.ndarray) -> Any:
            m = np.zeros((n, idx.shape[0]), dtype=real)
            m[idx, np.arange(idx.shape[0])] = 1.0
            return xp.asarray(m, device=device_of(like))

        def build() -> Any:
            a = _plan_index(plan, name)
            return tuple(matrix(t) for t in a) if isinstance(a, tuple) else matrix(a)

        return plan.converted(key(like, "segments", name), build)

    def zero_row(x):
        return xp.concat([x, xp.zeros((1,) + tuple(x.shape[1:]), dtype=x.dtype, device=device_of(x))], axis=0)

    def where(cond, a, b):
        return xp.where(cond, a, b)

    return Ops(
        take=lambda x, idx: xp.take(x, idx, axis=0),
        segment_sum=lambda x, m, n: xp.matmul(m, x),
        concat0=lambda xs: xp.concat(xs, axis=0),
        zero_row=zero_row,
        reshape=xp.reshape,
        sum0=lambda x: xp.sum(x, axis=0),
        mean0=lambda x: xp.mean(x, axis=0, keepdims=True),
        abs=xp.abs,
        sign=xp.sign,
        where=where,
        constant=lambda a, like: xp.asarray(a.astype(np.float32 if like.dtype == xp.float32 else np.float64),
                                            device=device_of(like)),
        index=index,
        segments=segments,
    )


def ops_for(xp: Any) -> Ops:
    """The table for an Array-API namespace (as :func:`array_api_compat.array_namespace` gives it)."""
    name = getattr(xp, "__name__", "")
    if xp is np or name in ("numpy", "array_api_compat.numpy"):
        return numpy_ops
    if name.startswith("jax"):
        return jax_ops()
    if name in ("torch", "array_api_compat.torch"):
        return torch_ops()
    return generic_ops(xp)


# --------------------------------------------------------------------------- #
# The Array-API door: (rows, n_bins) arrays of one namespace
# --------------------------------------------------------------------------- #

def _prepared(xp: Any, tree: Any, like: Any) -> tuple[Ops, TreePlan]:
    from .plan import plan_of

    plan = plan_of(tree)
    plan.check_dtype(np.float32 if like.dtype == xp.float32 else np.float64)
    return ops_for(xp), plan


def phi_rows(xp: Any, p: Any, q: Any, tree: Any) -> Any:
    """phi of every row, (rows, n_nodes), in the tree's node numbering."""
    ops, plan = _prepared(xp, tree, p)
    return reference.phi(ops, (p - q).T, plan).T


def value_grad_rows(xp: Any, p: Any, q: Any, tree: Any, rho: float, want_grad: bool) -> tuple[Any, Any]:
    """EMD^rho of every row, (rows,), and its projected gradient, (rows, n_bins) or None."""
    ops, plan = _prepared(xp, tree, p)
    value, grad = reference.value_grad(ops, (p - q).T, plan, rho, want_grad)
    return value, (None if grad is None else grad.T)


def hvp_rows(xp: Any, p: Any, q: Any, v: Any, tree: Any, rho: float, project_out: bool) -> Any:
    """``P H P v`` (``H P v`` without ``project_out``) for every row, (rows, n_bins)."""
    ops, plan = _prepared(xp, tree, v)
    return reference.hvp(ops, (p - q).T, v.T, plan, rho, project_out).T


def hessian_rows(xp: Any, p: Any, q: Any, tree: Any, rho: float) -> Any:
    """Projected dense Hessians ``P H P``, (rows, n_bins, n_bins), in the input dtype."""
    ops, plan = _prepared(xp, tree, p)
    rows, n_bins = p.shape
    out = xp.permute_dims(reference.hessian(ops, (p - q).T, plan, rho), (2, 0, 1))
    if out.shape[0] != rows:
        out = xp.broadcast_to(out, (rows, n_bins, n_bins))
    return out
