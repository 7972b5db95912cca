"""EMD^rho in TensorFlow operations, with the closed-form gradient.

The path of :func:`emdtree.tensorflow.emd_loss` that XLA compiles and that
runs on GPU tensors: the math of :mod:`emdtree.engine.reference` (gathers and
segment sums over the post-order layout) in TF operations, inside a
``tf.custom_gradient`` whose backward is the dirt-conserving gradient
computed with the value (paper eq. 9-10), as the kernels' path does, and
whose gradient's own derivative is ``P H P`` (:func:`differentiable`, used
by both paths).
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Callable

from ..trees.tree import Tree
from ..engine import reference as nm
from ..engine.backends import tf_ops as _ops
from ..engine.plan import plan_of

if TYPE_CHECKING:  # pragma: no cover
    import tensorflow as tf

__all__ = ["differentiable", "emd_rows", "is_preferred"]


def emd_rows(p: tf.Tensor, q: tf.Tensor, tree: Tree, rho: float, sparse: bool,
             softmax: bool = False) -> tf.Tensor:
    """EMD^rho of each row of ``p`` (rows, n_bins) against distributions or int64 class indices (rows,).

    Differentiable in ``p`` and a distribution ``q`` (the gradient with
    respect to ``q`` is the negative of that with respect to ``p``). With
    ``softmax``, ``p`` holds logits, normalised by a softmax over the bins
    under the loss's own gradient (:func:`differentiable`).
    """
    import tensorflow as tf

    ops, pl = _ops(), plan_of(tree)
    n_bins = tree.n_bins

    def forward(p, q):
        d = p - (tf.one_hot(q, n_bins, dtype=p.dtype) if sparse else q)
        return nm.value_grad_rows(ops, d, pl, rho, want_grad=True)

    def hvp(p, q, v):
        if sparse:
            d = tf.transpose(p) - tf.one_hot(q, n_bins, axis=0, dtype=p.dtype)
        else:
            d = tf.transpose(p - q)
        return tf.transpose(nm.hvp(ops, d, tf.transpose(v), pl, rho))

    return differentiable(forward, hvp, rho, sparse, softmax)(p, q)


def differentiable(forward: Callable, hvp: Callable, rho: float, sparse: bool,
                   softmax: bool = False) -> Callable:
    """``op(p, q)``: the values of ``forward(p, q) -> (value, grad)``, differentiable twice.

    The gradient with respect to ``p`` is ``d_value grad`` (the dirt-conserving
    gradient; with respect to a distribution ``q`` its negative), and that
    gradient's own derivative is ``P H P``, applied by ``hvp(p, q, v)``:
    symmetric, so a nested ``tf.GradientTape`` gets :func:`emdtree.emd_hvp`,
    eagerly, in ``tf.function`` and under XLA. A third derivative is zero
    for rho = 1 and 2 and, not implemented otherwise, NaN.

    With ``softmax``, ``op(z, q)`` gives the values of ``forward(softmax(z), q)``
    for logits ``z``, the softmax and the loss under one gradient: with
    respect to ``z`` it is ``d_value p (grad - <p, grad>)``, ``p = softmax(z)``
    (the mean of ``grad`` over the bins drops out, as ``p`` sums to 1), in one
    pass rather than the loss's gradient followed by the softmax's. The
    backward recomputes ``p`` from ``z`` (XLA and graphs share it with the
    forward's) so that a nested tape differentiates it as the composition.
    """
    import tensorflow as tf

    def third(p):
        if rho in (1.0, 2.0):
            return tf.zeros_like(p)
        return tf.fill(tf.shape(p), tf.constant(float("nan"), p.dtype))

    def hessian_times(p, q, v):
        @tf.custom_gradient
        def op(p, q, v):
            def backward(d_out):
                d_p = third(p)
                return d_p, (None if sparse else tf.cast(-d_p, q.dtype)), hessian_times(p, q, d_out)

            return hvp(p, q, v), backward

        return op(p, q, v)

    @tf.custom_gradient
    def op(p, q):
        z = p
        if softmax:
            p = tf.nn.softmax(z)
        value, grad = forward(p, q)

        @tf.custom_gradient
        def gradient(p, q):
            def backward(d_grad):
                h = hessian_times(p, q, d_grad)
                return h, (None if sparse else tf.cast(-h, q.dtype))

            return tf.identity(grad), backward

        def backward(d_value):
            if softmax:
                p_z = tf.nn.softmax(z)
                g = d_value[:, None] * gradient(p_z, q)
                d_z = p_z * (g - tf.reduce_sum(p_z * g, axis=-1, keepdims=True))
                return d_z, (None if sparse else tf.cast(-g, q.dtype))
            d_p = d_value[:, None] * gradient(p, q)
            # a float32 target beside float64 predictions keeps its dtype (its totals are checked
            # to float32's precision): its gradient comes back in it
            return d_p, (None if sparse else tf.cast(-d_p, q.dtype))

        return value, backward

    return op


def is_preferred(p: tf.Tensor) -> bool:
    """Whether the TF path should serve ``p`` outside XLA: yes on a GPU.

    A tensor placed on a device says where it lives; without a placement,
    the op goes where TensorFlow puts it, on a GPU when one is visible.
    """
    import tensorflow as tf

    device = getattr(p, "device", "") or ""
    if device:
        return "GPU" in device.upper()
    return bool(tf.config.list_logical_devices("GPU"))
