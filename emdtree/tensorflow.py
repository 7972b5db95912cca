"""EMD^rho as a TensorFlow / Keras loss, with exact gradients from emdtree's kernels.

:func:`emd_loss` (Keras argument order: ``y_true, y_pred``) returns one loss
per sample; :class:`EMDLoss` is the :class:`keras.losses.Loss` with Keras
reductions and serialisation. Targets are distributions or integer class
indices (sparse, like :class:`keras.losses.SparseCategoricalCrossentropy`).

Two paths compute the same numbers, each inside ``tf.custom_gradient``:

* on the CPU, outside XLA, emdtree's kernels run through
  ``tf.numpy_function`` (eagerly, in ``tf.function`` and in ``Model.fit``);
* when XLA compiles the loss (``jit_compile=True``, or Keras' default
  ``"auto"`` on a GPU) and on GPU tensors, TensorFlow operations do
  (:mod:`emdtree.frameworks.tf_native`: gathers and segment sums over the tree's
  post-order layout), which XLA compiles and which stay on the device.

The gradient is the dirt-conserving one (it sums to zero over the bins),
times the upstream gradient of each sample. It is itself differentiable on
both paths: a nested ``tf.GradientTape`` gives the Hessian-vector product
``P H P v`` of :func:`emdtree.emd_hvp` (``P = I - 11^T / n_bins``; the
Hessian :func:`emdtree.emd_hessian`), eagerly, in ``tf.function`` and
under XLA.
"""

from __future__ import annotations

from .frameworks.tensorflow import EMDLoss, emd_loss

__all__ = ["EMDLoss", "emd_loss"]

# the objects answer to their public module: pickles, reprs, Keras configs and the docs
for _name in __all__:
    if getattr(globals()[_name], "__module__", None) == "emdtree.frameworks.tensorflow":
        globals()[_name].__module__ = __name__
del _name
