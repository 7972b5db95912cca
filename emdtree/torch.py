"""EMD^rho as a PyTorch loss, with exact gradients from emdtree's kernels.

:func:`emd_loss` and :class:`EMDLoss` compare predicted distributions on the
bins of a tree with target distributions or class indices. The paper's
setting for classification is EMD^2 after a softmax (``normalize="softmax"``,
the default ``rho=2``), often added to the cross-entropy.

The EMD is a ``torch.library.custom_op`` (``emdtree::emd_value_grad``) with a
fake implementation and an autograd formula, so it runs eagerly and under
``torch.compile(fullgraph=True)`` (for the cheaper eager routes of softmax
losses, see below). Its backward is the dirt-conserving
gradient (it sums to zero over the bins; with respect to a distribution target
it is the negative), scaled by the upstream gradient of each sample. The
gradient is itself differentiable: its derivative is ``P H P`` with
``P = I - 11^T / n_bins``, :func:`emdtree.emd_hessian` (symmetric), applied
through the Hessian-vector product ``P H P v`` (op ``emdtree::emd_hvp``) in
forward and reverse mode alike, so double backward and
``torch.autograd.gradgradcheck`` work. Third derivatives are zero for
``rho = 2`` (constant Hessian) and ``rho = 1``, and raise for other
exponents. The softmax and ``"l1"`` normalisation run as ordinary torch
operations. Under
``torch.func`` transforms (``grad``, ``vmap(grad(...))`` for per-sample
gradients, ``jacrev``, ``jacfwd``, ``hessian``), which do not run operators
with a registered autograd formula, the same operators are called through a
``torch.autograd.Function`` with ``vmap`` and ``jvp`` rules
(:mod:`emdtree.frameworks.torch_func`); ``hessian``, ``jacrev`` of ``jacrev`` and
``jacrev`` of ``jacfwd`` give :func:`emdtree.emd_hessian`, while ``jacfwd``
of ``jacfwd`` raises (PyTorch runs a ``jvp`` rule without the enclosing
forward transform).

Eagerly on a CPU, a softmax loss (``normalize="softmax"``) takes one of two
cheaper routes, with the same values, gradients and second derivatives:

* on a chain (:meth:`emdtree.Tree.chain`, unit or uneven spacing) with ``rho`` 1 or 2
  and up to ``ORDINAL_OPS_MAX`` entries (rows x bins, ``2**17``; module
  :mod:`emdtree.frameworks.torch`), torch's own operations: a cumulative sum
  and a sum of squares, which cost less than the operator's dispatch for small
  batches (``benchmarks/bench_ordinal.py``);
* otherwise, when a gradient is wanted, the softmax and the kernels fused: the
  forward pass also forms the gradient with respect to the logits,
  ``p * (g - <p, g>)``, in the kernels' output, and the backward pass only
  scales it by the upstream gradient (``benchmarks/bench_losses.py``). A
  differentiable backward (``create_graph=True``) goes through the operators.

A call that wants no gradient calls the kernels without the operators'
dispatch. ``torch.compile``, ``torch.func`` transforms, tracing and dispatch
modes always use the operators. CPU tensors are handed to the kernels without a
copy. CUDA tensors go to :func:`emdtree.emd_value_and_grad` (and the
Hessian-vector product of :func:`emdtree.emd_hvp`) as they are, which run
them in emdtree's CUDA kernels on torch's current stream.
"""

from __future__ import annotations

from .frameworks.torch import EMDLoss, emd_loss

__all__ = ["EMDLoss", "emd_loss"]

# the objects answer to their public module: pickles, reprs, Keras configs and the docs
for _name in __all__:
    if getattr(globals()[_name], "__module__", None) == "emdtree.frameworks.torch":
        globals()[_name].__module__ = __name__
del _name
