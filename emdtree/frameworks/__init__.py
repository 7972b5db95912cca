"""The framework adapters behind emdtree.torch, emdtree.jax and emdtree.tensorflow."""
