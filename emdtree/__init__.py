"""emdtree: exact and relaxed Earth Mover's Distances on chains and trees.

The EMD between histograms on the bins of a tree (or a chain, for ordinal
bins) has a closed form: the sum over edges of the edge cost times the mass
that must cross it. emdtree computes it, the paper's relaxed ``EMD^rho``, its
dirt-conserving gradient and its Hessian with Numba kernels, exactly and in
time linear in the size of the tree.
"""

from . import datasets
from ._api import emd, emd_grad, emd_hessian, emd_hvp, emd_value_and_grad, phi
from .kernels.jit import NoKernelCacheWarning
from .trees.tree import Tree

__version__ = "0.1.0"

# Loaded on first use, so that ``import emdtree`` needs only NumPy, Numba and
# SciPy: the framework adapters import their framework when they load.
_LAZY_MODULES = ("io", "jax", "metrics", "tensorflow", "torch")
_LAZY_FUNCTIONS = {
    "pairwise": ".distances.pairwise",
    "sinkhorn": ".distances.sinkhorn",
    "SinkhornResult": ".distances.sinkhorn",
    "wasserstein_1d": ".distances.line",
    "wasserstein_1d_value_and_grad": ".distances.line",
    "weighted_unifrac": ".distances.unifrac",
}


def __getattr__(name: str):
    import importlib

    if name in _LAZY_MODULES:
        return importlib.import_module(f".{name}", __name__)
    if name in _LAZY_FUNCTIONS:
        return getattr(importlib.import_module(_LAZY_FUNCTIONS[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY_MODULES) | set(_LAZY_FUNCTIONS))

__all__ = [
    "NoKernelCacheWarning",
    "SinkhornResult",
    "Tree",
    "datasets",
    "emd",
    "emd_grad",
    "emd_hessian",
    "emd_hvp",
    "emd_value_and_grad",
    "pairwise",
    "phi",
    "sinkhorn",
    "wasserstein_1d",
    "wasserstein_1d_value_and_grad",
    "weighted_unifrac",
    "__version__",
]
