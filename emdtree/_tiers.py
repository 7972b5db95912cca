"""When a call runs the compiled kernel, and when NumPy code instead.

A new process whose Numba cache does not hold the value-and-gradient kernel
(or the all-pairs kernels) would pay its compilation (about 3 s, or 6 s, on a
2-core machine) on the first call, for work that takes milliseconds. Such
calls run the NumPy pass (:func:`emdtree._driver.numpy_value_grad`) instead, while
the time they take adds up; once it reaches a budget (``EMDTREE_JIT_BUDGET``
seconds, default 1), or when a call is large, the next call compiles the
kernel, which Numba then caches on disk for later processes. A kernel
already compiled in this process, or found in Numba's cache, is always used.

``EMDTREE_JIT=eager`` turns this off: every call runs the kernels, compiling
them on first use, as benchmarks and the test suite want. Both paths compute
the same quantities from the same checks; they differ by rounding (the NumPy
pass sums in float64).
"""

from __future__ import annotations

import contextlib
import os
import time
from typing import Iterator

# Work (rows x nodes) above which a call compiles the kernel at once: the NumPy
# pass costs about 5-10 ns per row and node, so at this size one call would
# spend a good part of the budget.
MAX_WORK = 8_000_000

_spent: dict[object, float] = {}
_cached: dict[object, bool] = {}


def _eager() -> bool:
    value = os.environ.get("EMDTREE_JIT", "lazy").strip().lower()
    if value not in ("lazy", "eager", ""):
        raise ValueError(f"EMDTREE_JIT={os.environ['EMDTREE_JIT']!r}: expected 'lazy' (the default) or "
                         "'eager'")
    return value == "eager"


def _budget() -> float:
    text = os.environ.get("EMDTREE_JIT_BUDGET", "1")
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value >= 0:
        raise ValueError(f"EMDTREE_JIT_BUDGET={text!r}: expected a number of seconds >= 0")
    return value


def in_cache(kernel) -> bool:
    """Whether Numba's on-disk cache holds machine code of ``kernel`` for this
    source (any signature); checked once per process."""
    known = _cached.get(kernel)
    if known is None:
        try:
            known = bool(kernel._cache._cache_file._load_index())
        except Exception:  # no cache (compiled in memory), or another Numba: compile as usual
            known = not hasattr(kernel, "_cache")
        _cached[kernel] = known
    return known


def use_numpy(kernel, work: int, max_work: int = MAX_WORK) -> bool:
    """Whether a call that would run ``kernel`` on ``work`` (rows x nodes, or what ``max_work``
    counts) runs NumPy code instead."""
    if kernel.overloads or work > max_work or _eager():
        return False
    if _spent.get(kernel, 0.0) >= _budget():
        return False
    return not in_cache(kernel)


@contextlib.contextmanager
def timed(kernel) -> Iterator[None]:
    """Count the time of a NumPy pass standing in for ``kernel`` against the budget."""
    t0 = time.perf_counter()
    try:
        yield
    finally:
        _spent[kernel] = _spent.get(kernel, 0.0) + time.perf_counter() - t0
