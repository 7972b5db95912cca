"""Compiled kernels: CPU (Numba ``@njit``) sweeps, dense matrices and input checks."""
