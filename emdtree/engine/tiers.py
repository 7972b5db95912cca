"""When a call runs the compiled kernel, and when NumPy code instead.

A new process whose Numba cache does not hold the value-and-gradient kernel
(or the all-pairs kernels) would pay its compilation (about 3 s, or 6 s, on a
2-core machine) on the first call, for work that takes milliseconds. So the
first calls of a process run the NumPy pass (:func:`emdtree.engine.driver.numpy_value_grad`),
until they have done ``WORK_BUDGET`` units of work (rows x nodes, about 1 s of
NumPy code); from then on, and for any call larger than ``MAX_WORK``, the
compiled kernel runs, compiling on first use (Numba then caches it on disk for
later processes).

The choice depends only on the calls the program makes: their work, their
tree and ``EMDTREE_JIT``; never on the clock, on what is compiled in the
process or on what Numba's cache holds. The same program with the same inputs
therefore runs the same code for each call, and gives the same bits, in every
run, on a fresh install as with the kernels cached. A long training loop
reaches the kernels after a few dozen batches; a short script never waits on a
compilation.

``EMDTREE_JIT=eager`` runs the kernels for every call, as benchmarks and the
test suite want. The two paths compute the same quantities from the same
checks; they differ by rounding.
"""

from __future__ import annotations

import os
import sys
import threading
import warnings

# Work (rows x nodes) above which a value-and-gradient call runs the kernel at once.
# Measured on a 2-core machine (ImageNet tree, float32, rho = 2): the NumPy pass
# takes about 30 ns per row and node (24 ms for a batch of 512, 702k work), the
# kernel about 1 ns (0.8 ms), and compiling the kernel about 3 s.
MAX_WORK = 8_000_000

# Work that the NumPy pass may do in a process (summed over its calls) before the
# kernels take over: about 1 s at 30 ns per row and node, 42 batches of 512 on the
# ImageNet tree. A script of a few dozen such calls finishes before a compilation
# would; a training loop pays the compilation once, after its first batches.
WORK_BUDGET = 30_000_000

_spent = 0
_spent_lock = threading.Lock()


_warned_budget = False


def _eager() -> bool:
    value = os.environ.get("EMDTREE_JIT", "lazy").strip().lower()
    if value not in ("lazy", "eager", ""):
        raise ValueError(f"EMDTREE_JIT={os.environ['EMDTREE_JIT']!r}: expected 'lazy' (the default) or "
                         "'eager'")
    return value == "eager"


def _no_budget() -> None:
    """``EMDTREE_JIT_BUDGET`` (a time budget before compiling) is gone: say so once."""
    global _warned_budget
    if _warned_budget or "EMDTREE_JIT_BUDGET" not in os.environ:
        return
    _warned_budget = True
    warnings.warn(
        "EMDTREE_JIT_BUDGET has no effect: whether a call runs the compiled kernel now depends only on "
        "the work of the calls (so that results do not depend on timing), or on EMDTREE_JIT=eager, which "
        "runs the kernels for every call (see docs/deployment.rst)",
        FutureWarning,
        stacklevel=_caller_level(),
    )


def _caller_level() -> int:
    """The ``stacklevel`` of the first frame outside emdtree (the caller's line)."""
    package = os.path.dirname(os.path.abspath(__file__))
    frame, level = sys._getframe(1), 1
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(package):
        frame, level = frame.f_back, level + 1
    return level


def in_cache(kernel) -> bool:
    """Whether Numba's on-disk cache holds machine code of ``kernel`` for this source
    (any signature). Reported by ``emdtree info``; never used to choose a path."""
    try:
        return bool(kernel._cache._cache_file._load_index())
    except Exception:  # no cache (compiled in memory, or NUMBA_DISABLE_JIT), or another Numba
        return not hasattr(kernel, "_cache")


def use_numpy(work: int, max_work: int = MAX_WORK, counted: bool = True) -> bool:
    """Whether a call of ``work`` (rows x nodes, or what ``max_work`` counts) runs NumPy code
    instead of the kernel: from the work, the work of the earlier calls (``counted``) and
    ``EMDTREE_JIT`` only."""
    global _spent
    _no_budget()
    if _eager() or work > max_work:
        return False
    if not counted:
        return True
    with _spent_lock:
        if _spent + work > WORK_BUDGET:
            _spent = WORK_BUDGET + 1  # spent: every later call runs the kernel
            return False
        _spent += work
        return True


def would_use_numpy(work: int) -> bool:
    """Whether the next value-and-gradient call of ``work`` would run NumPy code (not counted)."""
    return not _eager() and work <= MAX_WORK and _spent + work <= WORK_BUDGET


def reset() -> None:
    """Forget the work done so far (tests)."""
    global _spent
    with _spent_lock:
        _spent = 0
