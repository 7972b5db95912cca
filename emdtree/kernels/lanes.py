"""The block width of the vector kernels: samples swept together, one per lane."""

BLOCK = 32
