"""emdtree: exact and relaxed Earth Mover's Distances on chains and trees.

The EMD between histograms on the bins of a tree (or a chain, for ordinal
bins) has a closed form: the sum over edges of the edge cost times the mass
that must cross it. emdtree computes it, the paper's relaxed ``EMD^rho``, its
dirt-conserving gradient and its Hessian with Numba kernels, exactly and in
time linear in the size of the tree.
"""

from . import datasets
from ._api import emd, emd_grad, emd_hessian, emd_hvp, emd_value_and_grad, phi
from ._tree import Tree

__version__ = "0.1.0"

__all__ = [
    "Tree",
    "datasets",
    "emd",
    "emd_grad",
    "emd_hessian",
    "emd_hvp",
    "emd_value_and_grad",
    "phi",
    "__version__",
]
