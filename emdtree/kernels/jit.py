"""The ``njit`` of emdtree's CPU kernels: Numba's, cached on disk where it can be.

Every kernel asks for ``cache=True``, so that a new process loads its machine
code instead of compiling it again. Numba refuses ``cache=True`` outright
("no locator available") when neither the package's ``__pycache__`` nor a
user-wide cache directory can be written: a read-only install in a container,
or on a shared cluster with a read-only home. There the kernels are compiled
in memory in each process instead, and one warning says how to get a cache
back (``NUMBA_CACHE_DIR``).
"""

from __future__ import annotations

import warnings

import numba


class NoKernelCacheWarning(RuntimeWarning):
    """No writable Numba cache location: the kernels are compiled in each process.

    Issued at most once per process, when emdtree is imported from a folder
    that cannot be written and no other cache folder can be (see
    :doc:`/deployment`). The kernels still work; each process compiles those
    it calls. Point ``NUMBA_CACHE_DIR`` at a writable folder to cache them.

    Parameters
    ----------
    message : str
        What could not be cached, and how to fix it.

    Examples
    --------
    >>> import warnings
    >>> import emdtree
    >>> with warnings.catch_warnings():  # a read-only image that accepts compiling in memory
    ...     warnings.simplefilter("ignore", emdtree.NoKernelCacheWarning)
    ...     issubclass(emdtree.NoKernelCacheWarning, RuntimeWarning)
    True
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)


_warned = False


def _warn_once(exc: Exception) -> None:
    global _warned
    if _warned:
        return
    _warned = True
    warnings.warn(
        f"emdtree cannot cache its compiled kernels ({exc}); they are compiled in memory in each "
        "process, which costs a few seconds per kernel on first use. Point NUMBA_CACHE_DIR at a "
        "writable directory to cache them.",
        NoKernelCacheWarning,
        stacklevel=4,
    )


def njit(func=None, *, cache: bool = True, **options):
    """:func:`numba.njit`, with ``cache=True`` by default, that compiles in memory
    (after one warning per process) where no cache location is writable."""

    def decorate(f):
        if cache:
            try:
                return numba.njit(cache=True, **options)(f)
            except RuntimeError as exc:
                if "no locator available" not in str(exc):
                    raise
                _warn_once(exc)
        return numba.njit(**options)(f)

    return decorate if func is None else decorate(func)
