"""EMD^rho in TensorFlow operations, with the closed-form gradient.

The path of :func:`emdtree.tensorflow.emd_loss` that XLA compiles and that
runs on GPU tensors: the math of :mod:`emdtree.engine.reference` (gathers and
segment sums over the post-order layout) in TF operations, inside a
``tf.custom_gradient`` whose backward is the dirt-conserving gradient
computed with the value (paper eq. 9-10), as the kernels' path does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._tree import Tree
from .engine import reference as nm
from .engine.backends import tf_ops as _ops
from .engine.plan import plan_of

if TYPE_CHECKING:  # pragma: no cover
    import tensorflow as tf

__all__ = ["emd_rows", "is_preferred"]


def emd_rows(p: tf.Tensor, q: tf.Tensor, tree: Tree, rho: float, sparse: bool) -> tf.Tensor:
    """EMD^rho of each row of ``p`` (rows, n_bins) against distributions or int64 class indices (rows,).

    Differentiable in ``p`` and a distribution ``q`` (the gradient with
    respect to ``q`` is the negative of that with respect to ``p``).
    """
    import tensorflow as tf

    ops, pl = _ops(), plan_of(tree)
    n_bins = tree.n_bins

    @tf.custom_gradient
    def op(p, q):
        if sparse:
            d = tf.transpose(p) - tf.one_hot(q, n_bins, axis=0, dtype=p.dtype)
        else:
            d = tf.transpose(p - q)
        value, grad = nm.value_grad(ops, d, pl, rho, want_grad=True)
        grad = tf.transpose(grad)

        def backward(d_value):
            d_p = d_value[:, None] * grad
            return d_p, (None if sparse else -d_p)

        return value, backward

    return op(p, q)


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
