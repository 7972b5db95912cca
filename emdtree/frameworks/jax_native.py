"""EMD^rho in JAX operations, with closed-form first and second derivatives.

The path of :func:`emdtree.jax.emd_loss` that stays inside XLA: no host
callback, so it runs on GPUs and TPUs without a copy to the host, shards
with its inputs, and differentiates twice. The math is
:mod:`emdtree.engine.reference` (gathers and segment sums over the post-order
layout); the derivatives are ``jax.custom_jvp`` rules, not automatic
differentiation of those operations:

* the tangent of the loss is ``<g, dp - dq>`` with ``g`` the dirt-conserving
  gradient (paper eq. 9-10), computed with the value;
* the tangent of ``g`` is ``P H P (dp - dq)``, the Hessian-vector product
  (paper eq. 12 for rho = 2).

So ``jax.grad`` gives the kernels' gradient, and every composition of
forward and reverse mode over it (``jax.hessian``, ``jacfwd``/``jacrev`` of
``jacrev``/``grad``, ``jacfwd`` of ``jacfwd``) gives
:func:`emdtree.emd_hessian`, ``P H P``, symmetric (:func:`hessian_times`).
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any, Callable, NamedTuple

from ..trees.tree import Tree
from ..engine import reference as nm
from ..engine.backends import jax_ops
from ..engine.plan import plan_of

if TYPE_CHECKING:  # pragma: no cover
    import jax

__all__ = ["emd", "hessian_times", "is_preferred"]


class _Native(NamedTuple):
    ops: nm.Ops
    value_grad: Callable  # (p, q, tree, rho) -> (value, grad), with the custom_jvp rule
    softmax_value: Callable  # (z, q, tree, rho) -> value after a softmax of the logits z, with its rule


@functools.cache
def _native() -> _Native:
    """The operations and the differentiable function, built on first use, so that
    this module imports without JAX (the adapter imports JAX itself)."""
    import jax
    import jax.numpy as jnp

    ops = jax_ops()

    def difference(p, q):
        """``p - q`` node-major, (n_bins, rows); integer ``q`` holds class indices."""
        if jnp.issubdtype(q.dtype, jnp.integer):
            one_hot = jnp.arange(p.shape[-1])[:, None] == q[None, :]
            return p.T - one_hot.astype(p.dtype)
        return (p - q).T

    @functools.partial(jax.custom_jvp, nondiff_argnums=(2, 3))
    def value_grad(p, q, tree, rho):
        """Value (rows,) and dirt-conserving gradient (rows, n_bins) of 2-D ``p`` against ``q``."""
        if jnp.issubdtype(q.dtype, jnp.integer):
            d = p - (jnp.arange(p.shape[-1])[None, :] == q[:, None]).astype(p.dtype)
        else:
            d = p - q
        return nm.value_grad_rows(ops, d, plan_of(tree), rho, want_grad=True)

    @value_grad.defjvp
    def value_grad_jvp(tree, rho, primals, tangents):
        p, q = primals
        dp, dq = tangents
        value, grad = value_grad(p, q, tree, rho)
        direction = dp if not jnp.issubdtype(q.dtype, jnp.floating) else dp - dq
        d_value = jnp.sum(grad * direction, axis=-1)
        d = difference(jax.lax.stop_gradient(p), jax.lax.stop_gradient(q))
        pl = plan_of(tree)
        d_grad = hessian_times(lambda v: nm.hvp(ops, d, v.T, pl, rho).T, p, q, direction, rho)
        return (value, grad), (d_value, d_grad)

    def softmax(z):
        e = jnp.exp(z - jax.lax.stop_gradient(jnp.max(z, axis=-1, keepdims=True)))
        return e / jnp.sum(e, axis=-1, keepdims=True)

    @functools.partial(jax.custom_jvp, nondiff_argnums=(2, 3))
    def softmax_value(z, q, tree, rho):
        """EMD^rho (rows,) of ``softmax(z)`` (rows, n_bins) against ``q``."""
        return value_grad(softmax(z), q, tree, rho)[0]

    @softmax_value.defjvp
    def softmax_value_jvp(tree, rho, primals, tangents):
        # One rule for the softmax and the loss: the gradient with respect to the logits is
        # p (g - <p, g>) with g the dirt-conserving gradient (its mean over the bins drops out,
        # as p sums to 1), formed once, rather than the loss's rule followed by the softmax's.
        # g keeps its own rule (value_grad), so derivatives of this tangent are those of the
        # composition.
        z, q = primals
        dz, dq = tangents
        p = softmax(z)
        value, g = value_grad(p, q, tree, rho)
        gz = p * (g - jnp.sum(p * g, axis=-1, keepdims=True))
        d_value = jnp.sum(gz * dz, axis=-1)
        if jnp.issubdtype(q.dtype, jnp.floating):
            d_value = d_value - jnp.sum(g * dq, axis=-1)
        return value, d_value

    return _Native(ops, value_grad, softmax_value)


def hessian_times(apply: Callable, p: jax.Array, q: jax.Array, direction: jax.Array, rho: float) -> jax.Array:
    """``P H P direction``, the tangent of the gradient, as a linear map that JAX can transpose.

    ``apply(v)`` computes ``P H P v`` at the (fixed) ``p`` and ``q``, in JAX
    operations or through a callback. JAX transposes a tangent rule
    operation by operation, which neither a callback nor the product's
    convention at ``phi = 0`` (a direction that leaves ``phi`` unchanged adds
    nothing where ``|phi|^(rho-2)`` is infinite: a ``where`` on the
    direction) allows. ``jax.lax.custom_linear_solve`` with an identity
    ``matvec`` carries a linear map with its own JVP, transpose and batching
    rules: the map is its own tangent, and, ``P H P`` being symmetric, its
    own transpose, so forward and reverse mode over the gradient both give
    :func:`emdtree.emd_hessian`.

    The map's change with ``p`` and ``q`` (a third derivative of the loss) is
    zero for rho = 1 and 2; for other exponents it is not implemented, and
    comes out as NaN.
    """
    import jax

    out = jax.lax.custom_linear_solve(lambda x: x, direction, lambda _, b: apply(b), symmetric=True)
    if rho not in (1.0, 2.0):
        out = out + _third_marker()(p)
        if jax.numpy.issubdtype(q.dtype, jax.numpy.floating):
            out = out + _third_marker()(q)
    return out


@functools.cache
def _third_marker() -> Callable:
    """Zeros shaped like the argument, whose derivative is NaN: the unimplemented third derivative."""
    import jax
    import jax.numpy as jnp

    @jax.custom_jvp
    def marker(x):
        return jnp.zeros_like(x)

    @marker.defjvp
    def marker_jvp(primals, tangents):
        (x,), (dx,) = primals, tangents
        return jnp.zeros_like(x), dx * jnp.nan

    return marker


def emd(p: jax.Array, q: jax.Array, tree: Tree, rho: float, softmax: bool = False) -> jax.Array:
    """EMD^rho of ``p`` (..., n_bins) against distributions (..., n_bins) or class indices (...).

    Inputs are checked by the caller; ``p`` is float32 or float64 and ``q``
    in its dtype or integer. With ``softmax``, ``p`` holds logits, normalised
    by a softmax over the bins: the loss and the softmax then have one
    derivative rule (the gradient with respect to the logits in one pass).
    """
    import jax.numpy as jnp

    n_bins = p.shape[-1]
    batch = p.shape[:-1]
    p_rows = p.reshape(-1, n_bins)
    q_rows = q.reshape(-1) if jnp.issubdtype(q.dtype, jnp.integer) else q.reshape(-1, n_bins)
    if softmax:
        return _native().softmax_value(p_rows, q_rows, tree, rho).reshape(batch)
    value, _ = _native().value_grad(p_rows, q_rows, tree, rho)
    return value.reshape(batch)


def is_preferred(*arrays: Any) -> bool:
    """Whether the native path should serve these arrays (the ``"auto"`` choice).

    Yes on accelerators (the callback would copy to the host and back) and
    for arrays over several devices (a callback does not shard). Inside a
    trace the arrays' placement is unknown: the default backend and the
    number of devices decide.
    """
    import jax

    for x in arrays:
        if isinstance(x, jax.core.Tracer):
            if jax.default_backend() != "cpu" or jax.device_count() > 1:
                return True
            continue
        devices = x.devices() if hasattr(x, "devices") else set()
        if len(devices) > 1 or any(d.platform != "cpu" for d in devices):
            return True
    return False
