"""The one engine: input semantics, per-tree plans, the reference math, and the drivers that choose
and launch the kernels of :mod:`emdtree.kernels`."""
