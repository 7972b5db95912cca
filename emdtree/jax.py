"""EMD^rho as a JAX loss, with exact gradients from emdtree's kernels.

:func:`emd_loss` runs the kernels through ``jax.pure_callback``, so it works
under ``jax.jit`` and ``jax.vmap``, with a ``jax.custom_jvp`` rule: the
tangent of the loss is ``<g, dp - dq>`` with ``g`` the dirt-conserving
gradient that the kernels compute with the value. That rule is linear in the
tangents, so JAX transposes it for reverse mode: ``jax.grad``, ``jax.vjp``
and ``jax.jvp`` all work, with respect to the prediction and a distribution
target. The gradient is itself differentiable (a ``custom_jvp`` whose
tangent is the kernels' Hessian-vector product ``P H P v``, as a linear map
that JAX transposes to itself), so ``jax.hessian`` and every composition of
``jacfwd``, ``jacrev`` and ``grad`` give :func:`emdtree.emd_hessian` on this
path as on the native one.

The callback is vmapped with ``vmap_method="expand_dims"``: an argument that
is not batched reaches NumPy with a size-1 batch axis instead of a copy per
batch element, and the kernels broadcast it.

A second, native path computes the same numbers in JAX operations
(:mod:`emdtree.frameworks.jax_native`): it stays inside XLA, so it runs on GPUs and
TPUs without a round trip to the host and shards with its inputs; its
gradient is differentiable in the same way. :func:`emd_loss` picks it for
arrays on an accelerator or spread over several devices; on one CPU device
the callback is faster.
"""

from __future__ import annotations

from .frameworks.jax import emd_loss

__all__ = ["emd_loss"]

# the objects answer to their public module: pickles, reprs, Keras configs and the docs
for _name in __all__:
    if getattr(globals()[_name], "__module__", None) == "emdtree.frameworks.jax":
        globals()[_name].__module__ = __name__
del _name
