"""The one engine: input semantics, per-tree plans, the reference math and the kernels."""
