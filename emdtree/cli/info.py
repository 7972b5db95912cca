"""``emdtree info``: versions, threads, GPU, optional packages and Numba's cache."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import sys
import warnings
from typing import TextIO

import numpy as np

# Distributions that unlock optional parts of emdtree (see pyproject's extras).
OPTIONAL = [
    ("torch", "torch", "emdtree.torch"),
    ("tensorflow", "tensorflow", "emdtree.tensorflow"),  # or tensorflow-cpu
    ("jax", "jax", "emdtree.jax"),
    ("dask", "dask", "dask arrays in emdtree.metrics"),
    ("tqdm", "tqdm", "progress bars"),
    ("biom-format", "biom", "BIOM tables in emdtree.io"),
    ("POT", "ot", "comparisons in benchmarks"),
    ("scikit-bio", "skbio", "UniFrac comparisons"),
    ("networkx", "networkx", "Tree.from_networkx"),
]


def version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _optional(dist: str, module: str) -> str:
    """Version of an optional distribution, found without importing it."""
    if importlib.util.find_spec(module) is None:
        return "not installed"
    for name in (dist, f"{dist}-cpu"):
        found = version(name)
        if found != "not installed":
            return found
    return "installed"


def cuda_status() -> tuple[str, str]:
    """(numba-cuda installed?, CUDA GPU available?) as text; never raises."""
    installed = importlib.util.find_spec("numba_cuda") is not None
    package = f"installed ({version('numba-cuda')})" if installed else "not installed"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from numba import cuda

            if not cuda.is_available():
                return package, "no (no CUDA driver or device found)"
            names = []
            for gpu in cuda.gpus:
                name = gpu.name
                names.append(name.decode() if isinstance(name, bytes) else str(name))
            return package, "yes: " + ", ".join(names)
    except Exception as exc:  # any failure here, numba-cuda absent included, just means "no GPU"
        return package, f"no ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"


def cache_dir() -> str:
    """Where Numba keeps emdtree's compiled kernels in this process; never raises."""
    try:
        from emdtree.kernels import jit

        return jit.cache_location()
    except Exception as exc:  # a description only: never fail the command for it
        return f"unknown ({exc})"


def kernels_status() -> str:
    """Whether the main kernels are in Numba's cache, and which calls run them."""
    try:
        import numba

        if numba.config.DISABLE_JIT:
            return "not compiled: NUMBA_DISABLE_JIT is set, the kernels run as Python (slow)"
        from emdtree.engine import tiers as _tiers
        from emdtree.kernels import cpu
        from emdtree.kernels import pairwise as pair_kernels

        cached = [name for name, kernel in (("value and gradient", cpu.value_grad_serial),
                                            ("all pairs", pair_kernels.pair_sums_serial))
                  if _tiers.in_cache(kernel)]
        eager = _tiers._eager()
    except Exception as exc:  # a description only: never fail the command for it
        return f"unknown ({exc})"
    state = ("value and gradient, all pairs: cached" if len(cached) == 2 else
             f"{cached[0]}: cached, the other not yet" if cached else "not cached yet")
    what = "every call runs them (EMDTREE_JIT=eager)" if eager else \
        "small calls run NumPy code whatever the cache holds (see docs/deployment.rst)"
    return f"{state}; {what}"


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux), or what :mod:`platform` knows."""
    import platform

    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def run(args, out: TextIO) -> None:
    import numba

    import emdtree
    from emdtree.kernels import lanes

    n_threads = numba.get_num_threads()  # also starts Numba's threading layer
    try:
        layer = numba.threading_layer()
    except ValueError:
        layer = "not started"
    package, gpu = cuda_status()
    rows = [
        ("emdtree", emdtree.__version__),
        ("Python", sys.version.split()[0]),
        ("numpy", np.__version__),
        ("numba", numba.__version__),
        ("scipy", version("scipy")),
        ("CPU", cpu_model()),
        ("Kernels' vectors", lanes.vector_isa()),
        ("Numba threading layer", str(layer)),
        ("Numba threads", f"{n_threads} (at most {numba.config.NUMBA_NUM_THREADS}; {os.cpu_count()} CPUs)"),
        ("numba-cuda", package),
        ("CUDA GPU", gpu),
        ("Numba cache", cache_dir()),
        ("Kernels", kernels_status()),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key.ljust(width)}  {value}", file=out)
    print(file=out)
    print("Optional packages:", file=out)
    width = max(len(d) for d, _, _ in OPTIONAL)
    for dist, module, use in OPTIONAL:
        print(f"  {dist.ljust(width)}  {_optional(dist, module)}  ({use})", file=out)
