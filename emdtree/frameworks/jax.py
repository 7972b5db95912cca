"""The implementation of :mod:`emdtree.jax`, documented there."""

from __future__ import annotations

import functools
from typing import Any

try:
    import jax
    import jax.numpy as jnp
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError('emdtree.jax needs JAX: pip install "emdtree[jax]"') from exc

import numpy as np

from . import jax_native as _jax_native, losses as _losses
from ..engine.inputs import resolve_tree
from ..trees.tree import Tree

__all__ = ["emd_loss"]

_IMPLEMENTATIONS = ("auto", "native", "callback")


def _kernels(p: np.ndarray, q: np.ndarray, token: Tree | int | None, rho: float, check: bool,
             want_grad: bool):
    """Value (and gradient) for ``p`` (..., n_bins) against ``q`` (..., n_bins) or labels (...)."""
    p, q = np.asarray(p), np.asarray(q)
    n_bins = p.shape[-1]
    labels = _losses.is_labels(q.dtype)
    batch = np.broadcast_shapes(p.shape[:-1], q.shape if labels else q.shape[:-1])
    p_rows = np.broadcast_to(p, batch + (n_bins,)).reshape(-1, n_bins)
    if not labels and q.size == n_bins:
        q_rows = q.reshape(1, n_bins)  # one target for every row: the kernels broadcast it
    else:
        q_rows = np.broadcast_to(q, batch if labels else batch + (n_bins,))
        q_rows = q_rows.reshape(-1) if labels else q_rows.reshape(-1, n_bins)
    value, grad = _losses.value_grad(p_rows, q_rows, token, rho, want_grad, check, batch)
    value = value.reshape(batch)
    return (value, grad.reshape(batch + (n_bins,))) if want_grad else value


def _call(p: jax.Array, q: jax.Array, token: int, rho: float, check: bool, want_grad: bool):
    value = jax.ShapeDtypeStruct(p.shape[:-1], p.dtype)
    shapes = (value, jax.ShapeDtypeStruct(p.shape, p.dtype)) if want_grad else value
    # the callback holds the tree itself: a jitted function may outlive the caller's reference
    fn = functools.partial(_kernels, token=_losses.tree_of(token), rho=rho, check=check, want_grad=want_grad)
    return jax.pure_callback(fn, shapes, p, q, vmap_method="expand_dims")


@functools.partial(jax.custom_jvp, nondiff_argnums=(2, 3, 4))
def _emd(p: jax.Array, q: jax.Array, token: int, rho: float, check: bool) -> jax.Array:
    return _call(p, q, token, rho, check, want_grad=False)


@_emd.defjvp
def _emd_jvp(token, rho, check, primals, tangents):
    p, q = primals
    dp, dq = tangents
    value, grad = _value_grad(p, q, token, rho, check)
    # d EMD = <g, dp> - <g, dq> with the dirt-conserving gradient g (paper eq. 9-10)
    tangent = jnp.sum(grad * dp, axis=-1)
    if jnp.issubdtype(q.dtype, jnp.floating):
        tangent = tangent - jnp.sum(grad * dq, axis=-1)
    return value, tangent


@functools.partial(jax.custom_jvp, nondiff_argnums=(2, 3, 4))
def _value_grad(p: jax.Array, q: jax.Array, token: int, rho: float, check: bool):
    """Value and dirt-conserving gradient from the kernels; the gradient's own tangent is
    ``P H P (dp - dq)``, so that second derivatives work through the callback too."""
    return _call(p, q, token, rho, check, want_grad=True)


@_value_grad.defjvp
def _value_grad_jvp(token, rho, check, primals, tangents):
    p, q = primals
    dp, dq = tangents
    value, grad = _value_grad(p, q, token, rho, check)
    direction = dp - dq if jnp.issubdtype(q.dtype, jnp.floating) else dp
    d_value = jnp.sum(grad * direction, axis=-1)
    ps, qs = jax.lax.stop_gradient(p), jax.lax.stop_gradient(q)
    d_grad = _jax_native.hessian_times(lambda v: _call_hvp(ps, qs, v, token, rho), p, q, direction, rho)
    return (value, grad), (d_value, d_grad)


def _kernels_hvp(p: np.ndarray, q: np.ndarray, v: np.ndarray, tree: Tree | None, rho: float) -> np.ndarray:
    """``P H P v`` for ``p``, ``v`` (..., n_bins) against ``q`` (..., n_bins) or labels (...), broadcast."""
    p, q, v = np.asarray(p), np.asarray(q), np.asarray(v)
    n_bins = p.shape[-1]
    labels = _losses.is_labels(q.dtype)
    batch = np.broadcast_shapes(p.shape[:-1], v.shape[:-1], q.shape if labels else q.shape[:-1])
    p_rows = np.broadcast_to(p, batch + (n_bins,)).reshape(-1, n_bins)
    v_rows = np.broadcast_to(v, batch + (n_bins,)).reshape(-1, n_bins).astype(p.dtype, copy=False)
    q_rows = np.broadcast_to(q, batch if labels else batch + (n_bins,))
    q_rows = q_rows.reshape(-1) if labels else q_rows.reshape(-1, n_bins)
    return _losses.hvp(p_rows, q_rows, v_rows, tree, rho).reshape(batch + (n_bins,))


def _call_hvp(p: jax.Array, q: jax.Array, v: jax.Array, token: int, rho: float) -> jax.Array:
    fn = functools.partial(_kernels_hvp, tree=_losses.tree_of(token), rho=rho)
    shape = jax.ShapeDtypeStruct(jnp.broadcast_shapes(p.shape, v.shape), p.dtype)
    return jax.pure_callback(fn, shape, p, q, v, vmap_method="expand_dims")


def emd_loss(
    input: Any,
    target: Any,
    tree: Tree | None = None,
    rho: float = 2.0,
    normalize: str | None = None,
    axis: int = -1,
    check_inputs: bool = True,
    implementation: str = "auto",
) -> jax.Array:
    """EMD^rho between predicted distributions and targets on a tree, per sample.

    For each sample, ``EMD^rho(p, q) = sum_i w_i |phi_i|^rho`` over the
    non-root nodes ``i`` of ``tree`` (paper eq. 7), where ``p`` is the
    (optionally normalised) ``input``, ``q`` the target and ``phi_i`` the
    mass of ``p - q`` under node ``i``.

    Parameters
    ----------
    input : array_like, shape (..., n_bins, ...)
        Predicted masses, or logits with ``normalize="softmax"``; float32 or
        float64 (float16 and bfloat16 are computed in float32).
    target : array_like
        Target distributions of the shape of ``input`` (equal totals), or
        integer class indices of the shape of ``input`` without the bin
        axis. Distribution targets are differentiable too.
    tree : Tree, optional
        Ground space; default: a chain with unit spacing (ordinal classes).
    rho : float, default 2.0
        Exponent, >= 1: 2 is the paper's smooth loss, 1 the exact EMD.
    normalize : {None, "softmax", "l1"}, optional
        Applied to ``input`` along the bin axis first, as JAX operations.
        A ``-inf`` logit masks its class (probability and gradient 0); ``+inf``, NaN and a
        row of ``-inf`` only are errors naming the entry.
    axis : int, default -1
        The bin axis.
    check_inputs : bool, default True
        Check that masses are finite, non-negative and have equal totals,
        and that class indices are in range (errors surface from the
        callback when the computation runs). The native path checks arrays
        it receives outside a trace; inside ``jax.jit`` it cannot.
    implementation : {"auto", "native", "callback"}, default "auto"
        ``"callback"`` runs emdtree's CPU kernels through
        ``jax.pure_callback``; ``"native"`` runs JAX operations that stay
        inside XLA (accelerators, sharded arrays). Both differentiate
        twice: ``jax.hessian`` gives :func:`emdtree.emd_hessian`. ``"auto"``
        picks the native path for arrays on an accelerator or over several
        devices (inside a trace: when the default backend is not the CPU or
        there are several devices), the callback otherwise, which checks the
        inputs under ``jit`` too (the native path cannot raise there). On one
        CPU thread the native path can be the faster one (ImageNet tree,
        512 x 1000 logits: 2.6 ms against 4.5 ms): ``"native"`` chooses it.

    Returns
    -------
    jax.Array, shape (...)
        One loss per sample, in the dtype of ``input``. Reduce it as you
        like, e.g. ``.mean()``.

    Raises
    ------
    TypeError
        For an ``input`` that is not floating point, or a target that is
        neither floating point nor integer.
    ValueError
        For mismatched shapes, a bin axis that does not match the tree, or
        an unknown ``implementation``.

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> from emdtree.jax import emd_loss
    >>> p = jnp.array([[0.5, 0.5, 0.0]], dtype=jnp.float32)
    >>> q = jnp.array([[0.0, 0.5, 0.5]], dtype=jnp.float32)
    >>> emd_loss(p, q)  # rho=2: 0.5**2 + 0.5**2
    Array([0.5], dtype=float32)
    >>> jax.grad(lambda p: emd_loss(p, q).sum())(p)
    Array([[ 1.,  0., -1.]], dtype=float32)
    >>> loss = jax.jit(lambda x, t: emd_loss(x, t, normalize="softmax"))
    >>> loss(jnp.zeros((2, 3), dtype=jnp.float32), jnp.array([0, 2])).round(4)
    Array([0.5556, 0.5556], dtype=float32)
    >>> from emdtree import emd_hessian  # rho=2: the constant Hessian of paper eq. 12, projected
    >>> h = jax.hessian(lambda p: emd_loss(p, q, implementation="native").sum())(p)
    >>> bool(jnp.allclose(h[0, :, 0], emd_hessian(p[0], q[0]), atol=1e-6))
    True
    """
    rho = _losses.check_rho_value(rho)
    normalize = _losses.check_normalize(normalize)
    if implementation not in _IMPLEMENTATIONS:
        raise ValueError(f"implementation must be 'auto', 'native' or 'callback', got {implementation!r}")
    input, target = jnp.asarray(input), jnp.asarray(target)
    if not jnp.issubdtype(input.dtype, jnp.floating):
        raise TypeError(f"input must be floating point, got dtype {input.dtype}")
    labels = jnp.issubdtype(target.dtype, jnp.integer)
    if not (labels or jnp.issubdtype(target.dtype, jnp.floating)):
        raise TypeError(f"target must hold probabilities or integer class indices, got dtype {target.dtype}")
    ax = _losses.check_axis(axis, input.ndim)
    _losses.check_target_shape(input.shape, target.shape, ax, labels)
    n_bins = input.shape[ax]
    token = _losses.check_tree(tree, n_bins)
    if labels and not isinstance(target, jax.core.Tracer):
        # eagerly a ValueError here, not one wrapped by the callback's runtime error
        _losses.check_labels(np.asarray(target), n_bins, target.shape, "target")

    out_dtype = input.dtype
    if input.dtype not in (jnp.float32, jnp.float64):
        input = input.astype(jnp.float32)
    native = implementation == "native" or (implementation == "auto"
                                            and _jax_native.is_preferred(input, target))
    if check_inputs and normalize is not None:
        if not isinstance(input, jax.core.Tracer):
            _losses.check_normalizable(np.asarray(input), normalize, ax)
        elif not native:
            # traced: a host check of the raw input names the caller's entry when the
            # computation runs, where the kernels would see only the normalised masses
            input = _checked(input, normalize, ax - input.ndim)
    p = jnp.moveaxis(input, ax, -1)
    logits = p
    if normalize == "softmax":
        p = jax.nn.softmax(p, axis=-1)
    elif normalize == "l1":
        p = p / jnp.sum(p, axis=-1, keepdims=True)
    q = target if labels else jnp.moveaxis(target, ax, -1)
    if not labels and not (q.dtype == jnp.float32 and p.dtype == jnp.float64):
        # (a float32 target beside float64 input stays float32: its mass is checked to
        # float32's precision, as emdtree.emd does)
        q = q.astype(p.dtype)
    if native:
        if check_inputs:
            _check_concrete(p, q, tree, rho)
        q = q.astype(p.dtype) if not labels else q
        if normalize == "softmax":  # the softmax and the loss under one derivative rule
            return _jax_native.emd(logits, q, resolve_tree(tree, n_bins), rho, softmax=True).astype(out_dtype)
        return _jax_native.emd(p, q, resolve_tree(tree, n_bins), rho).astype(out_dtype)
    return _emd(p, q, token, rho, bool(check_inputs)).astype(out_dtype)


def _check_host(x: np.ndarray, normalize: str, axis: int) -> np.ndarray:
    x = np.asarray(x)
    _losses.check_normalizable(x, normalize, axis)
    return x


@functools.partial(jax.custom_jvp, nondiff_argnums=(1, 2))
def _checked(x: jax.Array, normalize: str, axis: int) -> jax.Array:
    """``x`` itself, after the rules of ``normalize`` on the host (``axis`` < 0: a vmap adds
    leading axes). The identity to differentiation."""
    fn = functools.partial(_check_host, normalize=normalize, axis=axis)
    return jax.pure_callback(fn, jax.ShapeDtypeStruct(x.shape, x.dtype), x, vmap_method="expand_dims")


@_checked.defjvp
def _checked_jvp(normalize, axis, primals, tangents):
    return _checked(primals[0], normalize, axis), tangents[0]


def _check_concrete(p: jax.Array, q: jax.Array, tree: Tree | None, rho: float) -> None:
    """The kernels' input checks, for arrays that hold values (not inside a trace)."""
    if isinstance(p, jax.core.Tracer) or isinstance(q, jax.core.Tracer):
        return
    n_bins = p.shape[-1]
    labels = jnp.issubdtype(q.dtype, jnp.integer)
    p_rows = np.asarray(p).reshape(-1, n_bins)
    q_rows = np.asarray(q).reshape(-1) if labels else np.asarray(q).reshape(-1, n_bins)
    _losses.value_grad(p_rows, q_rows, tree, rho, want_grad=False, check=True, batch_shape=p.shape[:-1])
