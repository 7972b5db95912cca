"""The EMD loss's operators as a ``torch.autograd.Function``, for ``torch.func``.

``torch.func`` transforms (``grad``, ``vmap`` of ``grad`` for per-sample
gradients, ``jacrev``, ``jacfwd``, ``hessian``) do not run operators that
carry an autograd formula registered through ``torch.library``, which is
how :mod:`emdtree.torch` gives ``torch.compile`` its custom operators. While
such a transform is active, :func:`emdtree.torch.emd_loss` goes through
:func:`emd_function` instead: an ``autograd.Function`` with
``setup_context``, a ``vmap`` rule and a ``jvp`` rule around the same
operators, so the numbers are the kernels' in both cases.

Derivatives, with ``g`` the dirt-conserving gradient that the forward pass
returns beside the value:

* backward: ``d_value g`` (and ``-d_value g`` for a distribution target),
  plus ``H P d_grad`` when the gradient itself is differentiated (the
  transposed Jacobian of ``g``, as in the custom operator);
* jvp: ``<g, dp - dq>`` for the value and ``P H P (dp - dq)`` for ``g``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

__all__ = ["emd_function", "transforms_active"]


def transforms_active() -> bool:
    """Whether a ``torch.func`` transform is running."""
    import torch

    return bool(torch._C._are_functorch_transforms_active())


@functools.cache
def emd_function(value_grad_op: Callable, hvp_op: Callable, fold: Callable) -> type:
    """The ``autograd.Function`` around the adapter's operators, built on first use,
    so that this module imports without PyTorch (the adapter imports it itself).

    ``value_grad_op`` and ``hvp_op`` are the ``emdtree::emd_value_grad`` and
    ``emdtree::emd_hvp`` operators; ``fold(args, in_dims)`` folds the vmapped
    dimension into the rows and returns ``(size, folded_args)``.
    """
    import torch

    class EMDFunction(torch.autograd.Function):
        """``(value (rows,), grad (rows, n_bins))`` of 2-D ``input`` against ``target``.

        Arguments as the ``emdtree::emd_value_grad`` operator: ``input``,
        ``target`` (distributions, or int64 class indices), ``tree`` (its
        token), ``rho``, ``check``.
        """

        @staticmethod
        def forward(input, target, tree, rho, check):
            value, grad = value_grad_op(input, target, tree, rho, check)
            return value, grad

        @staticmethod
        def setup_context(ctx, inputs, output):
            input, target, tree, rho, _ = inputs
            ctx.set_materialize_grads(False)
            ctx.tree, ctx.rho = tree, rho
            ctx.target_is_labels = not target.dtype.is_floating_point
            ctx.save_for_backward(input, target, output[1])
            ctx.save_for_forward(input, target, output[1])

        @staticmethod
        def backward(ctx, d_value, d_grad):
            input, target, grad = ctx.saved_tensors
            d_input = None
            if d_value is not None:
                d_input = d_value.unsqueeze(-1) * grad
            if d_grad is not None:
                hvp = hvp_op(input, target, d_grad, ctx.tree, ctx.rho)
                d_input = hvp if d_input is None else d_input + hvp
            d_target = None
            if d_input is not None and not ctx.target_is_labels:
                d_target = -d_input
            return d_input, d_target, None, None, None

        @staticmethod
        def jvp(ctx, d_input, d_target, *_):
            input, target, grad = ctx.saved_tensors
            direction = d_input
            if d_target is not None and not ctx.target_is_labels:
                direction = d_target.neg() if direction is None else direction - d_target
            if direction is None:
                return None, None
            d_value = (grad * direction).sum(-1)
            # the operator gives H P v; P (H P v) = P H P v
            d_grad = hvp_op(input, target, direction, ctx.tree, ctx.rho)
            return d_value, d_grad - d_grad.mean(-1, keepdim=True)

        @staticmethod
        def vmap(info, in_dims, input, target, tree, rho, check):
            size, folded = fold((input, target, tree, rho, check), in_dims)
            value, grad = EMDFunction.apply(*folded)
            return (value.reshape(size, -1), grad.reshape(size, -1, grad.shape[-1])), (0, 0)

    return EMDFunction
