"""The implementation of :mod:`emdtree.torch`, documented there."""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np

try:
    import torch
    from torch.utils._python_dispatch import _get_current_dispatch_mode as _dispatch_mode
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        'emdtree.torch needs PyTorch: pip install "emdtree[torch]"'
    ) from exc

from . import losses as _losses, torch_func as _torch_func
from .torch_func import THIRD_DERIVATIVES, third_is_zero
from ..engine.plan import plan_of
from ..trees.tree import Tree

__all__ = ["EMDLoss", "emd_loss"]

Tensor = torch.Tensor


# ----------------------------------------------------------------------------- kernels as operators


def _target_for_device(target: Tensor, n_bins: int, dtype: torch.dtype) -> Tensor:
    if target.dtype.is_floating_point:
        return target
    return torch.nn.functional.one_hot(target, n_bins).to(dtype)


def _run(p: Tensor, target: Tensor, tree: int, rho: float, want_grad: bool, check: bool, applied: str = ""):
    """(value (rows,), grad (rows, n_bins) or None) of 2-D ``p`` against ``target``; ``applied`` is
    the normalisation :func:`emd_loss` gave ``p`` ("" for none), which a distribution target is then
    checked against (on a CPU; other devices are checked by :func:`emd_loss` itself)."""
    if p.device.type != "cpu":
        from .. import _api

        q = _target_for_device(target, p.shape[-1], p.dtype)
        tree_ = _losses.tree_of(tree)
        if want_grad:
            return _api.emd_value_and_grad(p, q, tree_, rho, check_inputs=check)
        return _api.emd(p, q, tree_, rho, check_inputs=check), None
    value, grad = _losses.value_grad(p.detach().numpy(), target.detach().numpy(), tree, rho, want_grad, check,
                                     applied=applied or None)
    return torch.from_numpy(value), (None if grad is None else torch.from_numpy(grad))


@torch.library.custom_op("emdtree::emd_value", mutates_args=())
def _value_op(input: Tensor, target: Tensor, tree: int, rho: float, check: bool, applied: str) -> Tensor:
    """EMD^rho of each row of ``input`` (rows, n_bins) against ``target``."""
    return _run(input, target, tree, rho, False, check, applied)[0]


@torch.library.custom_op("emdtree::emd_value_grad", mutates_args=())
def _value_grad_op(
    input: Tensor, target: Tensor, tree: int, rho: float, check: bool, applied: str
) -> tuple[Tensor, Tensor]:
    """EMD^rho of each row and its dirt-conserving gradient with respect to ``input``."""
    return _run(input, target, tree, rho, True, check, applied)


@torch.library.custom_op("emdtree::emd_hvp", mutates_args=())
def _hvp_op(input: Tensor, target: Tensor, v: Tensor, tree: int, rho: float) -> Tensor:
    """``P H P v`` of each row: the derivative of the dirt-conserving gradient along ``v``."""
    if input.device.type != "cpu":
        from ..engine import dispatch as _dispatch

        q = _target_for_device(target, input.shape[-1], input.dtype)
        return _dispatch.hvp(input, q, v, _losses.tree_of(tree), rho, -1, False)
    out = _losses.hvp(input.detach().numpy(), target.detach().numpy(), v.detach().numpy(), tree, rho)
    return torch.from_numpy(out)


@_value_op.register_fake
def _value_fake(input, target, tree, rho, check, applied):
    return input.new_empty(input.shape[:-1])


@_value_grad_op.register_fake
def _value_grad_fake(input, target, tree, rho, check, applied):
    return input.new_empty(input.shape[:-1]), torch.empty_like(input)


@_hvp_op.register_fake
def _hvp_fake(input, target, v, tree, rho):
    return torch.empty_like(input)


def _setup(ctx, inputs, output):
    input, target, tree, rho = inputs[:4]
    # gradients of unused outputs stay None, so that a first-order backward
    # does not compute a Hessian-vector product of zeros
    ctx.set_materialize_grads(False)
    ctx.tree, ctx.rho = tree, rho
    ctx.tree_object = _losses.tree_of(tree)  # alive until the backward pass: the registry holds it weakly
    ctx.target_is_labels = not target.dtype.is_floating_point
    grad = output[1] if isinstance(output, tuple) else None
    ctx.save_for_backward(input, target, grad)


def _value_grad_backward(ctx, d_value, d_grad):
    input, target, grad = ctx.saved_tensors
    d_input = None
    if d_value is not None:
        d_input = d_value.unsqueeze(-1) * grad
    if d_grad is not None:
        # the derivative of the gradient is P H P (symmetric), in either direction
        hvp = _hvp_op(input, target, d_grad, ctx.tree, ctx.rho)
        d_input = hvp if d_input is None else d_input + hvp
    d_target = None
    if d_input is not None and not ctx.target_is_labels and ctx.needs_input_grad[1]:
        d_target = -d_input
    return d_input, d_target, None, None, None, None


def _value_backward(ctx, d_value):
    input, target, _ = ctx.saved_tensors
    if d_value is None:
        return None, None, None, None, None, None
    _, grad = _value_grad_op(input, target, ctx.tree, ctx.rho, False, "")
    d_input = d_value.unsqueeze(-1) * grad
    d_target = None if ctx.target_is_labels or not ctx.needs_input_grad[1] else -d_input
    return d_input, d_target, None, None, None, None


def _hvp_backward(ctx, d_out):
    # P H P is symmetric: the transposed Jacobian in v is the product itself
    input, target = ctx.saved_tensors
    if (ctx.needs_input_grad[0] or ctx.needs_input_grad[1]) and not third_is_zero(ctx.rho):
        raise NotImplementedError(THIRD_DERIVATIVES)
    d_v = _hvp_op(input, target, d_out, ctx.tree, ctx.rho) if ctx.needs_input_grad[2] else None
    return None, None, d_v, None, None


def _hvp_setup(ctx, inputs, output):
    input, target, _, tree, rho = inputs
    ctx.tree, ctx.rho = tree, rho
    ctx.tree_object = _losses.tree_of(tree)
    ctx.save_for_backward(input, target)


_value_grad_op.register_autograd(_value_grad_backward, setup_context=_setup)
_value_op.register_autograd(_value_backward, setup_context=_setup)
_hvp_op.register_autograd(_hvp_backward, setup_context=_hvp_setup)


def _fold(args, in_dims):
    """Move vmap's batch dimension of every tensor to the front and merge it into the rows."""
    size = next(a.shape[d] for a, d in zip(args, in_dims) if d is not None)
    out = []
    for a, d in zip(args, in_dims):
        if isinstance(a, Tensor):
            a = a.unsqueeze(0).expand(size, *a.shape) if d is None else a.movedim(d, 0)
            a = a.reshape((-1,) + tuple(a.shape[2:]))  # (size, rows, ...) -> (size * rows, ...)
        out.append(a)
    return size, out


@torch.library.register_vmap("emdtree::emd_value")
def _value_vmap(info, in_dims, input, target, tree, rho, check, applied):
    args = (input, target, tree, rho, check, applied)
    size, folded = _fold(args, in_dims)
    value = _value_op(*folded)
    return value.reshape(size, -1), 0


@torch.library.register_vmap("emdtree::emd_value_grad")
def _value_grad_vmap(info, in_dims, input, target, tree, rho, check, applied):
    args = (input, target, tree, rho, check, applied)
    size, folded = _fold(args, in_dims)
    value, grad = _value_grad_op(*folded)
    return (value.reshape(size, -1), grad.reshape(size, -1, grad.shape[-1])), (0, 0)


@torch.library.register_vmap("emdtree::emd_hvp")
def _hvp_vmap(info, in_dims, input, target, v, tree, rho):
    args = (input, target, v, tree, rho)
    size, folded = _fold(args, in_dims)
    out = _hvp_op(*folded)
    return out.reshape(size, -1, out.shape[-1]), 0


# ----------------------------------------------------------------------------- ordinal bins, torch operations

# Up to this many entries (rows x bins), a softmax loss on a chain runs as torch's own operations:
# a cumulative sum and a sum of squares cost less than the custom operator's dispatch, checks and
# copies. Measured by benchmarks/bench_ordinal.py (one thread, forward + backward): the kernels
# win from about 2^17 entries on (1,300 rows of 100 bins).
ORDINAL_OPS_MAX = 1 << 17
_STEPS_MAX_BINS = 1024  # a cached (n_bins, n_bins - 1) table of the targets' cumulative sums


@functools.lru_cache(maxsize=4)
def _label_steps(n_bins: int, dtype: torch.dtype) -> Tensor:
    """Row ``t``: the cumulative sum of a unit mass on bin ``t`` (1 from bin ``t`` on), last bin cut."""
    return torch.ones(n_bins, n_bins, dtype=dtype).triu_()[:, :-1].contiguous()


def _chain_weights(tree: Tree | None, dtype: torch.dtype) -> Tensor | None:
    """The edge costs of a canonical chain's non-root nodes, or None for unit spacing."""
    if tree is None:
        return None

    def build() -> Tensor | None:
        w = tree.layout.weight[:-1]
        return None if bool(np.all(w == 1.0)) else torch.tensor(w, dtype=dtype)

    return plan_of(tree).converted(("torch ordinal weights", dtype), build)


def _ordinal_route(p: Tensor, tree: Tree | None, rho: float, normalize: str | None) -> bool:
    """Whether :func:`_ordinal` serves this call: softmax outputs on a CPU, a chain, rho 1 or 2,
    a small batch, eagerly (``torch.compile`` and ``torch.func`` keep the operators)."""
    return (normalize == "softmax" and rho in (1.0, 2.0) and 0 < p.numel() <= ORDINAL_OPS_MAX
            and p.device.type == "cpu" and (tree is None or tree._is_canonical_chain)
            and not torch.compiler.is_compiling() and not _torch_func.transforms_active())


def _ordinal(p: Tensor, q: Tensor, tree: Tree | None, rho: float, check: bool) -> Tensor | None:
    """EMD^rho of each row of softmax outputs ``p`` (rows, n_bins) on a chain, as torch operations.

    phi is the cumulative sum of ``p - q`` over the non-root bins; autograd differentiates
    ``sum w |phi|^rho``. Its gradient with respect to the logits is the operators': the softmax's
    Jacobian annihilates constants, so the projection ``P`` changes nothing, and ``P J = J`` gives
    the same second derivatives. A distribution target is moved through ``q - mean(q - q')`` with
    ``q'`` its detached copy: the value is ``q``, the gradient the projected one, ``-P g``.

    Returns None when ``check`` finds a class index out of range or a target that is not a
    distribution: the operators then raise the message that names the entry. A bad logit shows
    as a value that is not finite, which the caller checks once, after the reduction.
    """
    n_bins = p.shape[-1]
    cdf = torch.cumsum(p[:, :-1], dim=-1)
    if q.dtype.is_floating_point:
        if check:
            qd = q.detach()
            eps = torch.finfo(torch.float32 if torch.float32 in (p.dtype, q.dtype) else torch.float64).eps
            totals = qd.sum(dim=-1, dtype=torch.float64)
            # half the engine's tolerance: a target near its edge goes to the operators to be judged
            tol = 0.5 * max(n_bins, 64) * eps
            ok = (qd.amin() >= 0) & ((totals - 1.0).abs() <= tol * totals.abs().clamp(min=1.0)).all()
            if not bool(ok):
                return None
        if q.requires_grad:
            q = q - (q - q.detach()).mean(dim=-1, keepdim=True)
        c = cdf - torch.cumsum(q[:, :-1].to(p.dtype), dim=-1)
    elif n_bins <= _STEPS_MAX_BINS:
        try:
            c = cdf - _label_steps(n_bins, p.dtype).index_select(0, q)
        except (IndexError, RuntimeError):  # a class index out of range (RuntimeError: one bin)
            return None
    else:
        if check:
            low, high = torch.aminmax(q)
            if not bool((low >= 0) & (high < n_bins)):
                return None
        c = cdf - (torch.arange(n_bins - 1, device=q.device) >= q[:, None]).to(p.dtype)
    w = _chain_weights(tree, p.dtype)
    if rho == 2.0:
        return torch.linalg.vecdot(c, c if w is None else c * w)
    a = c.abs()
    return a.sum(dim=-1) if w is None else torch.linalg.vecdot(a, w.expand_as(a))


def _finite(x: Tensor) -> bool:
    """Whether every entry of ``x`` is finite (one read for a scalar)."""
    x = x.detach()
    return math.isfinite(x.item()) if x.dim() == 0 else bool(torch.isfinite(x).all())


def _restore(value: Tensor, batch_shape: torch.Size, dtype: torch.dtype) -> Tensor:
    """Per-row values in the caller's batch shape and dtype."""
    if value.shape != batch_shape:
        value = value.reshape(batch_shape)
    return value if value.dtype == dtype else value.to(dtype)


def _reduce(value: Tensor, reduction: str) -> Tensor:
    if reduction == "mean":
        return value.mean()
    if reduction == "sum":
        return value.sum()
    return value


# ----------------------------------------------------------------------------- public API


@torch.compiler.assume_constant_result
def _tree_token(tree: Tree | None, n_bins: int) -> int:
    # a constant for the compiler: the tree is host data, read when tracing
    return _losses.check_tree(tree, n_bins)


def _unwrapped(x: Tensor, ax: int) -> tuple[Tensor, int]:
    """The plain tensor under ``torch.func`` wrappers, and the bin axis in it. A vmapped
    dimension is folded into the first batch dimension, as the operators fold it (so an
    entry is named by the same row as the kernels name it), or comes first."""
    functorch = torch._C._functorch
    while functorch.is_functorch_wrapped_tensor(x):
        if functorch.is_batchedtensor(x):
            bdim = functorch.maybe_get_bdim(x)
            x = functorch.get_unwrapped(x).movedim(bdim, 0)
            if x.dim() > 2 and ax > 0:
                x = x.reshape(-1, *x.shape[2:])
            else:
                ax += 1
        else:
            x = functorch.get_unwrapped(x)
    return x, ax


def _host(x: Tensor) -> np.ndarray:
    """A NumPy copy of a plain tensor in its own float dtype, through Python lists: under
    ``torch.func`` no new tensor has storage for ``.numpy()``. For error paths only."""
    return np.asarray(x.detach().cpu().tolist(), dtype=np.float64 if x.dtype == torch.float64 else np.float32)


def _check_normalizable(input: Tensor, normalize: str, ax: int) -> None:
    """Name the raw entry that the normalisation would turn into NaN (eagerly and under
    ``torch.func`` transforms; a compiled call gets the kernels' message about the
    normalised masses). The rules are :func:`emdtree.engine.semantics.check_raw`:
    ``-inf`` logits mask classes."""
    if torch.compiler.is_compiling():
        return
    x, ax = _unwrapped(input, ax)
    x = x.detach()
    if x.numel() == 0:
        return
    if normalize == "softmax":
        ok = ~(torch.isnan(x) | (x == float("inf"))).any() & (torch.amax(x, dim=ax) > -float("inf")).all()
    else:
        ok = torch.isfinite(x).all() & (x >= 0).all() & (x.sum(dim=ax) > 0).all()
    if not bool(ok):
        _losses.check_normalizable(_host(x).astype(np.float64), normalize, ax)


def _check_distribution_target(p: Tensor, q: Tensor, tree: Tree | None, rho: float, normalize: str) -> None:
    """After the loss's own normalisation the target must sum to 1 (to its dtype's precision):
    the engine's check and message (which names the normalisation given), eagerly and under
    ``torch.func``, when a row is off."""
    if torch.compiler.is_compiling() or q.numel() == 0:
        return
    qu, _ = _unwrapped(q, q.dim() - 1)
    pu, _ = _unwrapped(p, p.dim() - 1)
    totals = qu.detach().sum(dim=-1, dtype=torch.float64)
    eps = torch.finfo(qu.dtype).eps
    if bool(((totals - 1.0).abs() <= max(q.shape[-1], 64) * eps).all()):
        return
    _losses.value_grad(_host(pu).reshape(-1, q.shape[-1]), _host(qu).reshape(-1, q.shape[-1]), tree,
                       rho, want_grad=False, check=True, applied=normalize)


def _eager(*tensors: Tensor) -> bool:
    """Whether this call runs eagerly on plain tensors: not compiled, traced, under a ``torch.func``
    transform or a dispatch mode (``make_fx``, fake tensors), where only the operators will do."""
    return not (torch.compiler.is_compiling() or _torch_func.transforms_active() or torch.jit.is_tracing()
                or _dispatch_mode() is not None or torch.overrides.has_torch_function(tensors))


def _refuse_dual(*tensors: Tensor) -> None:
    """Eager forward-mode AD (``torch.autograd.forward_ad``) has no rule in the kernels' operators:
    say so rather than drop the tangent. ``torch.func.jvp`` and ``jacfwd`` have one."""
    from torch.autograd import forward_ad

    if forward_ad._current_level < 0:
        return
    if any(forward_ad.unpack_dual(t).tangent is not None for t in tensors):
        raise NotImplementedError(
            "emdtree's torch losses have no forward-mode derivative through torch.autograd.forward_ad: "
            "use torch.func.jvp or torch.func.jacfwd, or reverse mode (backward, torch.func.grad)")


def _call(p: Tensor, q: Tensor, token: int, rho: float, check: bool, applied: str, fused: str = "") -> Tensor:
    """EMD^rho of each row of 2-D ``p`` through the operator that fits the mode: the
    ``autograd.Function`` under ``torch.func``, value and gradient when a gradient is wanted.

    With ``fused`` (a reduction), ``p`` holds logits and :class:`_SoftmaxEMD` takes their
    softmax and returns the reduced loss (an eager CPU call that wants a gradient).
    """
    if _torch_func.transforms_active():
        function = _torch_func.emd_function(_value_grad_op, _hvp_op, _fold)
        return function.apply(p, q, token, rho, check, applied)[0]
    _refuse_dual(p, q)
    if fused:
        return _SoftmaxEMD.apply(p, q, token, rho, check, applied, fused)
    if torch.is_grad_enabled() and (p.requires_grad or q.requires_grad):
        return _value_grad_op(p, q, token, rho, check, applied)[0]
    if p.device.type == "cpu" and _eager(p, q):
        return _run(p, q, token, rho, False, check, applied)[0]  # nothing to record: no dispatch
    return _value_op(p, q, token, rho, check, applied)


# ----------------------------------------------------------------------------- softmax and kernels, fused


def _softmax_route(z: Tensor, q: Tensor) -> bool:
    """Whether :class:`_SoftmaxEMD` serves a softmax loss of logits ``z`` (rows, n_bins):
    eagerly, on a CPU, when a gradient is wanted."""
    return (z.device.type == "cpu" and z.numel() > 0 and torch.is_grad_enabled()
            and (z.requires_grad or q.requires_grad) and _eager(z, q))


def _softmax_value_grad(z: Tensor, q: Tensor, tree: int, rho: float, check: bool, applied: str,
                        scale: float, keep_grad: bool) -> tuple[Tensor, Tensor, Tensor | None]:
    """``(value, dz, g)``: EMD^rho of each row of ``softmax(z)``; ``scale`` times its gradient
    with respect to the logits ``z``; with ``keep_grad``, the dirt-conserving gradient ``g``
    with respect to the probabilities (else None).

    ``dz = scale J g = scale p * (g - <p, g>)`` is formed in place in the kernels' output, in
    two passes after the row sums ``<p, g>``, where the softmax's backward would allocate and
    take three, and the scaling by the upstream gradient a fourth.
    """
    # called where autograd records nothing: in the forward pass, and in a backward pass
    # without create_graph
    p = torch.softmax(z.detach(), dim=-1)
    value, g = _run(p, q, tree, rho, True, check, applied)
    if q.dtype.is_floating_point:
        # the row sums in NumPy: half the time of torch.linalg.vecdot (which multiplies, then sums)
        inner = torch.from_numpy(np.einsum("rk,rk->r", p.numpy(), g.numpy()))[:, None]
    else:
        # <p - q, g> = rho EMD^rho (sum over the nodes of rho w |phi|^(rho - 1) sign(phi) phi; g's
        # projection adds a multiple of sum(p - q) = 0), so with q a unit mass on bin t,
        # <p, g> = rho EMD^rho + g_t: no pass over the rows
        inner = g.gather(1, q[:, None]).add_(value[:, None], alpha=rho)
    dz = g.clone() if keep_grad else g
    if scale == 1.0:
        dz.sub_(inner)
    else:
        torch.add(inner.mul_(-scale), dz, alpha=scale, out=dz)  # scale (g - <p, g>)
    return value, dz.mul_(p), (g if keep_grad else None)


def _batched(x: Tensor) -> bool:
    """Whether ``x`` is vmapped: by ``torch.func`` or by ``is_grads_batched`` (the legacy kind)."""
    return _torch_func.transforms_active() or torch._C._functorch.is_legacy_batchedtensor(x)


class _SoftmaxEMD(torch.autograd.Function):
    """The reduced EMD^rho of the rows of ``softmax(z)`` (rows, n_bins), for eager CPU calls
    that want a gradient: the forward pass gives the value and the gradient with respect to
    the logits, and the backward pass only scales it by the upstream gradient (not at all for
    the usual 1), in place: no softmax backward, no custom operator's dispatch.

    The backward pass hands its buffer over to the caller: a second backward through a
    retained graph computes it again, and a differentiable backward (``create_graph=True``)
    goes through ``torch.softmax`` and the ``emdtree::emd_value_grad`` operator, whose
    derivative is ``P H P``.
    """

    @staticmethod
    def forward(ctx, z, q, tree, rho, check, applied, reduction):
        keep = ctx.needs_input_grad[1] and q.dtype.is_floating_point
        scale = 1.0 / z.shape[0] if reduction == "mean" else 1.0
        value, dz, g = _softmax_value_grad(z, q, tree, rho, check, applied, scale, keep)
        ctx.tree, ctx.rho, ctx.scale, ctx.per_row = tree, rho, scale, reduction == "none"
        ctx.tree_object = _losses.tree_of(tree)  # alive until the backward pass: the registry holds it weakly
        ctx.buffers = (dz, g if keep else None)
        ctx.save_for_backward(z, q)
        return _reduce(value, reduction)

    @staticmethod
    def backward(ctx, d_value):
        z, q = ctx.saved_tensors
        want_z = ctx.needs_input_grad[0]
        want_q = ctx.needs_input_grad[1] and q.dtype.is_floating_point
        d = d_value.unsqueeze(-1) if ctx.per_row else d_value
        if torch.is_grad_enabled():
            # differentiable: the softmax's Jacobian and the operator, whose derivative is P H P
            p = torch.softmax(z, dim=-1)
            dg = (d * ctx.scale) * _value_grad_op(p, q, ctx.tree, ctx.rho, False, "")[1]
            dz = p * (dg - torch.linalg.vecdot(p, dg).unsqueeze(-1)) if want_z else None
            return dz, (-dg if want_q else None), None, None, None, None, None
        dz, g = ctx.buffers
        if _batched(d_value):  # vmapped upstream gradients (is_grads_batched, vmap): nothing in place
            if dz is None:
                _, dz, g = _softmax_value_grad(z, q, ctx.tree, ctx.rho, False, "", ctx.scale, want_q)
            return (dz * d if want_z else None), (g * (d * -ctx.scale) if want_q else None), \
                None, None, None, None, None
        ctx.buffers = (None, None)
        if dz is None:  # a second backward through a retained graph
            _, dz, g = _softmax_value_grad(z, q, ctx.tree, ctx.rho, False, "", ctx.scale, want_q)
        if want_z and (ctx.per_row or d.item() != 1.0):
            dz.mul_(d)
        if want_q:
            g.mul_(d * -ctx.scale)
        return (dz if want_z else None), (g if want_q else None), None, None, None, None, None


def _check_tensor(x: Any, name: str) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    return x


def emd_loss(
    input: Tensor,
    target: Tensor,
    tree: Tree | None = None,
    rho: float = 2.0,
    reduction: str = "mean",
    normalize: str | None = None,
    axis: int = -1,
    check_inputs: bool = True,
) -> Tensor:
    """EMD^rho between predicted distributions and targets on a tree, as a torch loss.

    For each sample, ``EMD^rho(p, q) = sum_i w_i |phi_i|^rho`` over the
    non-root nodes ``i`` of ``tree`` (paper eq. 7), where ``p`` is the
    (optionally normalised) ``input``, ``q`` the target and ``phi_i`` the
    mass of ``p - q`` under node ``i``.

    Parameters
    ----------
    input : Tensor, shape (..., n_bins, ...)
        Predicted masses, or logits with ``normalize="softmax"``; float32 or
        float64 (float16 and bfloat16 are computed in float32).
    target : Tensor
        Either target distributions, floating point, of the shape of
        ``input`` (with equal totals: 1 after a normalisation), or integer
        class indices of the shape of ``input`` without the bin axis, like
        :class:`torch.nn.CrossEntropyLoss`. Distribution targets receive
        gradients too.
    tree : Tree, optional
        Ground space; default: a chain with unit spacing (ordinal classes).
    rho : float, default 2.0
        Exponent, >= 1: 2 is the paper's smooth loss, 1 the exact EMD.
    reduction : {"mean", "sum", "none"}, default "mean"
        Mean or sum over the samples, or the per-sample losses, shape
        ``(...)``.
    normalize : {None, "softmax", "l1"}, optional
        Applied to ``input`` along the bin axis before the EMD, as torch
        operations: a softmax of logits, or a division by the total.
        A ``-inf`` logit masks its class (probability and gradient 0); ``+inf``, NaN and a
        row of ``-inf`` only are errors naming the entry.
    axis : int, default -1
        The bin axis.
    check_inputs : bool, default True
        Check that masses are finite, non-negative and have equal totals.

    Returns
    -------
    Tensor
        A scalar, or shape ``(...)`` for ``reduction="none"``; the dtype of
        ``input``.

    Raises
    ------
    TypeError
        For a non-tensor, a non-floating ``input`` or a target that is
        neither floating point nor integer.
    ValueError
        For mismatched shapes, a bin axis that does not match the tree, a
        class index out of range, negative or non-finite masses, or unequal
        totals.

    Examples
    --------
    >>> import torch, emdtree
    >>> from emdtree.torch import emd_loss
    >>> p = torch.tensor([[0.5, 0.5, 0.0]], requires_grad=True)
    >>> q = torch.tensor([[0.0, 0.5, 0.5]])
    >>> loss = emd_loss(p, q)  # rho=2: 0.5**2 + 0.5**2
    >>> loss
    tensor(0.5000, grad_fn=<MeanBackward0>)
    >>> loss.backward()
    >>> p.grad
    tensor([[ 1.,  0., -1.]])
    >>> logits = torch.zeros(2, 3)
    >>> emd_loss(logits, torch.tensor([0, 2]), normalize="softmax", reduction="none")
    tensor([0.5556, 0.5556])
    """
    _check_tensor(input, "input")
    _check_tensor(target, "target")
    rho = _losses.check_rho_value(rho)
    reduction = _losses.check_reduction(reduction)
    normalize = _losses.check_normalize(normalize)
    if not input.dtype.is_floating_point:
        raise TypeError(f"input must be a floating-point tensor, got dtype {input.dtype}")
    labels = not target.dtype.is_floating_point
    if labels and (target.dtype == torch.bool or target.dtype.is_complex):
        raise TypeError(f"target must hold probabilities or integer class indices, got dtype {target.dtype}")
    ax = _losses.check_axis(axis, input.dim())
    _losses.check_target_shape(input.shape, target.shape, ax, labels)
    n_bins = input.shape[ax]
    token = _tree_token(tree, n_bins)

    out_dtype = input.dtype
    if input.dtype not in (torch.float32, torch.float64):
        input = input.float()
    # On a CPU the kernels check the normalised masses themselves: a bad logit (NaN, +inf, a row
    # of -inf) reaches them as NaN, and only then is the raw input read again to name the entry;
    # the target is checked against the normalisation inside the operator. Other devices, and l1
    # (a row of negative masses normalises to valid ones), are checked here first.
    on_cpu = input.device.type == "cpu"
    deferred = check_inputs and on_cpu and normalize == "softmax"
    if check_inputs and normalize is not None and not deferred:
        _check_normalizable(input, normalize, ax)
    # no-op views are skipped: each is a node of the autograd graph, which small batches notice
    last = ax == input.dim() - 1
    x = input if last else input.movedim(ax, -1)
    batch_shape = x.shape[:-1]
    if x.dim() != 2:
        x = x.reshape(-1, n_bins)
    if labels:
        q = (target if target.dim() == 1 else target.reshape(-1)).long()
    else:
        # a float32 target stays float32 next to float64 input, so that its mass is checked to
        # float32's precision, as emdtree.emd does
        q = target if last else target.movedim(ax, -1)
        if not (q.dtype == torch.float32 and x.dtype == torch.float64):
            q = q.to(x.dtype)
        if q.dim() != 2:
            q = q.reshape(-1, n_bins)

    p = x
    if normalize == "l1":
        p = x / x.sum(dim=-1, keepdim=True)
    applied = (normalize or "") if check_inputs and on_cpu else ""
    ordinal = _ordinal_route(x, tree, rho, normalize)
    # the softmax and the kernels fused (the gradient with respect to the logits in the forward
    # pass), which reduce the values themselves: not where they change dtype first (their
    # reduction then follows the cast, as on the other routes)
    fusable = normalize == "softmax" and out_dtype == x.dtype
    fused = fusable and not ordinal and _softmax_route(x, q)
    if normalize == "softmax" and not fused:
        p = torch.softmax(x, dim=-1)
    if check_inputs and normalize is not None and not labels and not on_cpu:
        _check_distribution_target(p, q, tree, rho, normalize)
    if ordinal:
        value = _ordinal(p, q, tree, rho, check_inputs)
        if value is not None:
            out = _reduce(_restore(value, batch_shape, out_dtype), reduction)
            # not finite: a bad logit (or an overflow), which the operators name
            if not check_inputs or _finite(out):
                return out
        fused = fusable and _softmax_route(x, q)  # the kernels name the problem
    args = (x, q, token, rho, check_inputs, applied, reduction) if fused else \
        (p, q, token, rho, check_inputs, applied)
    if deferred and not torch.compiler.is_compiling():
        try:
            value = _call(*args)
        except ValueError:
            _check_normalizable(input, normalize, ax)  # names a bad logit, if that was the cause
            raise
    else:
        value = _call(*args)
    if fused:
        return value if reduction != "none" or value.shape == batch_shape else value.reshape(batch_shape)
    return _reduce(_restore(value, batch_shape, out_dtype), reduction)


class EMDLoss(torch.nn.Module):
    """EMD^rho on a tree as a :class:`torch.nn.Module`; see :func:`emd_loss`.

    The tree is host data shared by every device: ``.to(device)`` has nothing
    to move, and CUDA inputs are handed to emdtree's CUDA kernels.

    Parameters
    ----------
    tree, rho, reduction, normalize, axis, check_inputs
        As in :func:`emd_loss`. Calling the module with ``(input, target)``
        returns ``emd_loss(input, target, tree, rho, reduction, ...)``.

    Examples
    --------
    >>> import torch, emdtree
    >>> tree = emdtree.Tree.from_nested({"cat": None, "tiger": None, "vehicle": ["starship"]})
    >>> loss_fn = emdtree.torch.EMDLoss(tree, normalize="softmax")
    >>> loss_fn  # doctest: +NORMALIZE_WHITESPACE
    EMDLoss(tree=Tree(n_nodes=5, n_bins=3, depth=2, names=['cat', 'tiger', 'starship']),
            rho=2.0, reduction='mean', normalize='softmax')
    >>> logits = torch.tensor([[4.0, 0.0, 0.0]], requires_grad=True)
    >>> loss = loss_fn(logits, torch.tensor([1]))  # confusing cat with tiger costs little
    >>> loss.backward()
    >>> bool(loss < loss_fn(logits, torch.tensor([2])))
    True
    """

    def __init__(
        self,
        tree: Tree | None = None,
        rho: float = 2.0,
        reduction: str = "mean",
        normalize: str | None = None,
        axis: int = -1,
        check_inputs: bool = True,
    ) -> None:
        super().__init__()
        if tree is not None and not isinstance(tree, Tree):
            raise TypeError(f"tree must be an emdtree.Tree or None, got {type(tree).__name__}")
        self.tree = tree
        self.rho = _losses.check_rho_value(rho)
        self.reduction = _losses.check_reduction(reduction)
        self.normalize = _losses.check_normalize(normalize)
        self.axis = axis
        self.check_inputs = check_inputs

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return emd_loss(input, target, self.tree, self.rho, self.reduction, self.normalize,
                        self.axis, self.check_inputs)

    def extra_repr(self) -> str:
        parts = [f"tree={self.tree!r}", f"rho={self.rho!r}", f"reduction={self.reduction!r}"]
        if self.normalize is not None:
            parts.append(f"normalize={self.normalize!r}")
        if self.axis != -1:
            parts.append(f"axis={self.axis}")
        return ", ".join(parts)
