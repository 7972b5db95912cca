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
  plus ``P H P d_grad`` when the gradient itself is differentiated (``P H P``
  is symmetric: the transposed Jacobian of ``g``, as in the custom operator);
* jvp: ``<g, dp - dq>`` for the value and ``P H P (dp - dq)`` for ``g``.

``P H P`` is :func:`emdtree.emd_hessian`, with ``P = I - 11^T / n_bins``:
every composition of ``jacfwd``, ``jacrev``, ``hessian`` and autograd double
backward gives it. The product is itself an ``autograd.Function``, linear in
its direction, so that a transform over a transform can differentiate it.
"""

from __future__ import annotations

import functools
from typing import Callable

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

    hvp_function = _hvp_function(hvp_op, fold)

    class EMDFunction(torch.autograd.Function):
        """``(value (rows,), grad (rows, n_bins))`` of 2-D ``input`` against ``target``.

        Arguments as the ``emdtree::emd_value_grad`` operator: ``input``,
        ``target`` (distributions, or int64 class indices), ``tree`` (its
        token), ``rho``, ``check``, ``applied`` (the normalisation of
        ``input``, "" for none).
        """

        @staticmethod
        def forward(input, target, tree, rho, check, applied):
            value, grad = value_grad_op(input, target, tree, rho, check, applied)
            return value, grad

        @staticmethod
        def setup_context(ctx, inputs, output):
            input, target, tree, rho = inputs[:4]
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
                hvp = hvp_function.apply(input, target, d_grad, ctx.tree, ctx.rho)
                d_input = hvp if d_input is None else d_input + hvp
            d_target = None
            if d_input is not None and not ctx.target_is_labels:
                d_target = -d_input
            return d_input, d_target, None, None, None, None

        @staticmethod
        def jvp(ctx, d_input, d_target, *_):
            input, target, grad = ctx.saved_tensors
            direction = _direction(d_input, d_target, ctx.target_is_labels)
            if direction is None:
                return None, None
            _check_forward_level()
            d_value = (grad * direction).sum(-1)
            return d_value, hvp_function.apply(input, target, direction, ctx.tree, ctx.rho)

        @staticmethod
        def vmap(info, in_dims, input, target, tree, rho, check, applied):
            size, folded = fold((input, target, tree, rho, check, applied), in_dims)
            value, grad = EMDFunction.apply(*folded)
            return (value.reshape(size, -1), grad.reshape(size, -1, grad.shape[-1])), (0, 0)

    return EMDFunction


FORWARD_OVER_FORWARD = (
    "forward mode over forward mode (torch.func.jacfwd of jacfwd, jvp of jvp) cannot differentiate the EMD "
    "loss: PyTorch runs an autograd.Function's jvp rule without the enclosing forward-mode transform, so "
    "the result would be zero. Use torch.func.hessian (jacfwd of jacrev), jacrev of jacrev or jacrev of "
    "jacfwd: they give emdtree.emd_hessian"
)


THIRD_DERIVATIVES = ("third derivatives of the EMD loss are only implemented for rho = 1 and rho = 2 (where "
                     "they are zero)")


def third_is_zero(rho: float) -> bool:
    """Whether the Hessian is constant (rho = 2, paper eq. 12) or zero (rho = 1), so that
    the derivative of a Hessian-vector product with respect to the masses is zero."""
    return rho in (1.0, 2.0)


def _check_forward_level() -> None:
    """A NotImplementedError for a jvp rule run under two forward-mode transforms."""
    try:
        from torch._C._functorch import TransformType
        from torch._functorch.pyfunctorch import retrieve_all_functorch_interpreters
    except ImportError:  # pragma: no cover - private modules moved
        return
    if sum(i.key() == TransformType.Jvp for i in retrieve_all_functorch_interpreters()) > 1:
        raise NotImplementedError(FORWARD_OVER_FORWARD)


def _direction(d_input, d_target, target_is_labels):
    """``d_input - d_target``, the change of ``p - q``; None when neither moves."""
    direction = d_input
    if d_target is not None and not target_is_labels:
        direction = d_target.neg() if direction is None else direction - d_target
    return direction


@functools.cache
def _hvp_function(hvp_op: Callable, fold: Callable) -> type:
    import torch

    class HVPFunction(torch.autograd.Function):
        """``P H P v`` of each row, as the ``emdtree::emd_hvp`` operator.

        Linear in ``v``, and symmetric: its Jacobian-vector product and its
        transposed Jacobian in ``v`` are the product itself. Its derivative
        with respect to the masses (a third derivative of the loss) is zero
        for rho = 1 and 2; for other exponents it is not implemented: NaN in
        forward mode (which computes it whether or not it is used), an error
        in reverse mode.
        """

        @staticmethod
        def forward(input, target, v, tree, rho):
            return hvp_op(input, target, v, tree, rho)

        @staticmethod
        def setup_context(ctx, inputs, output):
            input, target, _, tree, rho = inputs
            ctx.set_materialize_grads(False)
            ctx.tree, ctx.rho = tree, rho
            ctx.target_is_labels = not target.dtype.is_floating_point
            ctx.save_for_backward(input, target)
            ctx.save_for_forward(input, target)

        @staticmethod
        def backward(ctx, d_out):
            input, target = ctx.saved_tensors
            if d_out is None:
                return None, None, None, None, None
            masses = ctx.needs_input_grad[0] or (ctx.needs_input_grad[1] and not ctx.target_is_labels)
            if masses and not third_is_zero(ctx.rho):
                raise NotImplementedError(THIRD_DERIVATIVES)
            return None, None, HVPFunction.apply(input, target, d_out, ctx.tree, ctx.rho), None, None

        @staticmethod
        def jvp(ctx, d_input, d_target, d_v, *_):
            input, target = ctx.saved_tensors
            _check_forward_level()
            out = None if d_v is None else HVPFunction.apply(input, target, d_v, ctx.tree, ctx.rho)
            if _direction(d_input, d_target, ctx.target_is_labels) is not None \
                    and not third_is_zero(ctx.rho):
                nan = torch.full_like(input, float("nan"))
                out = nan if out is None else out + nan
            return torch.zeros_like(input) if out is None else out

        @staticmethod
        def vmap(info, in_dims, input, target, v, tree, rho):
            size, folded = fold((input, target, v, tree, rho), in_dims)
            out = HVPFunction.apply(*folded)
            return out.reshape(size, -1, out.shape[-1]), 0

    return HVPFunction
