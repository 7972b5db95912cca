"""The ``njit`` of emdtree's CPU kernels: Numba's, cached on disk outside the package.

Every kernel asks for ``cache=True``, so that a new process loads its machine
code instead of compiling it again. Numba's own rule puts that cache in the
package's ``__pycache__`` folders, inside the installation, where ``pip
uninstall`` does not know the files and leaves them behind (a leftover
``emdtree`` folder then hides a later install). emdtree's kernels are cached
instead:

1. in ``NUMBA_CACHE_DIR`` when it is set (Numba's own rule, unchanged);
2. else in a per-user cache folder, :func:`cache_root` (``$XDG_CACHE_HOME/emdtree/numba``
   or ``~/.cache/emdtree/numba``; ``~/Library/Caches/emdtree/numba`` on macOS;
   ``%LOCALAPPDATA%\\emdtree\\Cache\\numba`` on Windows), in a subfolder per
   emdtree version, Python version and installation path (:func:`cache_dir`);
3. else nowhere: where no such folder can be written (a read-only image, a
   read-only home), the kernels are compiled in memory in each process, and
   one :class:`NoKernelCacheWarning` says how to get a cache back.

Nothing is ever written next to the modules.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import sys
import warnings
from pathlib import Path

import numba
from numba.core import caching as _caching
from numba.core import config as _config

# the package folder (emdtree/), which the cache must never be written into
PACKAGE_DIR = Path(__file__).resolve().parents[1]


class NoKernelCacheWarning(RuntimeWarning):
    """No writable Numba cache location: the kernels are compiled in each process.

    Issued at most once per process, when neither ``NUMBA_CACHE_DIR`` nor the
    per-user cache folder can be written (see :doc:`/deployment`). The kernels
    still work; each process compiles those it calls. Point ``NUMBA_CACHE_DIR``
    at a writable folder to cache them.

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


@functools.lru_cache(maxsize=1)
def _version() -> str:
    """emdtree's version, read from the package's ``__init__.py`` (which imports this
    module before it defines ``__version__``)."""
    try:
        text = (PACKAGE_DIR / "__init__.py").read_text(encoding="utf-8")
    except OSError:
        return "unknown"
    found = re.search(r"""^__version__\s*=\s*["']([^"']+)["']""", text, re.MULTILINE)
    return found.group(1) if found else "unknown"


def cache_root() -> Path:
    """The per-user folder that holds emdtree's compiled kernels, for every version.

    ``%LOCALAPPDATA%\\emdtree\\Cache\\numba`` on Windows, ``~/Library/Caches/emdtree/numba``
    on macOS, else ``$XDG_CACHE_HOME/emdtree/numba`` (an absolute ``XDG_CACHE_HOME``)
    or ``~/.cache/emdtree/numba``. Deleting it clears the cache. Not used where
    ``NUMBA_CACHE_DIR`` is set.

    Returns
    -------
    pathlib.Path
        The folder; it may not exist yet.

    Examples
    --------
    >>> from emdtree.kernels import jit
    >>> jit.cache_root().name, "emdtree" in jit.cache_root().parts
    ('numba', True)
    """
    if sys.platform == "win32":
        base = os.environ.get("LOCALAPPDATA") or os.path.join(os.path.expanduser("~"), "AppData", "Local")
        return Path(base, "emdtree", "Cache", "numba")
    if sys.platform == "darwin":
        return Path(os.path.expanduser("~"), "Library", "Caches", "emdtree", "numba")
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    base = xdg if os.path.isabs(xdg) else os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base, "emdtree", "numba")


def cache_dir() -> Path:
    """The folder, under :func:`cache_root`, for this installation of emdtree.

    One subfolder per emdtree version, Python version and installation path
    (``0.1.0-py311-<12 hex digits>``), so that two installations never share
    cache files; inside it, one folder per subpackage (``kernels``, ``trees`` ...).

    Returns
    -------
    pathlib.Path
        The folder; it may not exist yet.

    Examples
    --------
    >>> from emdtree.kernels import jit
    >>> jit.cache_dir().parent == jit.cache_root()
    True
    """
    where = hashlib.sha256(str(PACKAGE_DIR).encode("utf-8", "surrogatepass")).hexdigest()[:12]
    key = f"{_version()}-py{sys.version_info[0]}{sys.version_info[1]}-{where}"
    return cache_root() / key


# Numba's classes (older Numbas name some with a leading underscore)
_Locator = _caching._CacheLocator
_SourceBacked = _caching._SourceFileBackedLocatorMixin
_UserProvided = getattr(_caching, "UserProvidedCacheLocator", None) or _caching._UserProvidedCacheLocator


class _UserCacheLocator(_SourceBacked, _Locator):
    """Numba cache locator for emdtree's modules: :func:`cache_dir`, then the module's
    folder relative to the package (another file: Numba's hashed subfolder name)."""

    def __init__(self, py_func, py_file):
        self._py_file = py_file
        self._lineno = py_func.__code__.co_firstlineno
        folder = Path(py_file).resolve().parent
        try:
            sub = folder.relative_to(PACKAGE_DIR).parts
        except ValueError:
            sub = (self.get_suitable_cache_subpath(py_file),)
        self._cache_path = str(cache_dir().joinpath(*sub) if sub else cache_dir() / "_package")

    def get_cache_path(self):
        return self._cache_path


class _KernelCacheImpl(_caching.CompileResultCacheImpl):
    # NUMBA_CACHE_DIR first, then the per-user folder; never the package's __pycache__
    _locator_classes = [_UserProvided, _UserCacheLocator]


class _KernelCache(_caching.FunctionCache):
    _impl_class = _KernelCacheImpl


@functools.lru_cache(maxsize=1)
def _cuda_cache_class() -> type | None:
    """numba-cuda's kernel cache with the CPU kernels' locators, or None for a numba-cuda
    without those classes."""
    try:
        from numba.cuda.dispatcher import CUDACache, CUDACacheImpl
    except ImportError:
        return None

    class _CUDAKernelCacheImpl(CUDACacheImpl):
        _locator_classes = [_UserProvided, _UserCacheLocator]

    class _CUDAKernelCache(CUDACache):
        _impl_class = _CUDAKernelCacheImpl

    return _CUDAKernelCache


def relocate_cuda_cache(dispatcher) -> None:
    """Give a numba-cuda kernel the CPU kernels' cache locations (``NUMBA_CACHE_DIR``, then
    :func:`cache_dir`; never the package's ``__pycache__``), or no cache where neither can be
    written or this numba-cuda has no cache classes to extend."""
    cache_class = _cuda_cache_class()
    if cache_class is None:  # another numba-cuda: compiled in each process
        return
    try:
        dispatcher._cache = cache_class(dispatcher.py_func)
    except RuntimeError as exc:
        if "no locator available" not in str(exc):
            raise
        _warn_once(exc)


def _probe():  # a function of this module, to ask the locator where it would cache
    pass


def cache_location() -> str:
    """Where this process caches emdtree's compiled kernels, as one line of text.

    Returns
    -------
    str
        The folder and the rule that chose it (``NUMBA_CACHE_DIR``, the per-user
        folder), or that nothing is cached and why.

    Examples
    --------
    >>> from emdtree.kernels import jit
    >>> isinstance(jit.cache_location(), str)
    True
    """
    if _config.DISABLE_JIT:
        return "none: NUMBA_DISABLE_JIT is set, nothing is compiled"
    if _config.CACHE_DIR:
        ok = _UserProvided.from_function(_probe, __file__) is not None
        if ok:
            return f"{_config.CACHE_DIR} (NUMBA_CACHE_DIR)"
        rule = f"NUMBA_CACHE_DIR={_config.CACHE_DIR} cannot be written, "
    else:
        rule = ""
    if _UserCacheLocator.from_function(_probe, __file__) is not None:
        return f"{cache_dir()} ({rule}per-user cache; delete {cache_root()} to clear it)"
    return (f"none: compiled in memory in each process ({rule}{cache_root()} cannot be written; "
            "set NUMBA_CACHE_DIR to a writable folder)")


_warned = False


def _warn_once(exc: Exception) -> None:
    global _warned
    if _warned:
        return
    _warned = True
    warnings.warn(
        f"emdtree cannot cache its compiled kernels ({exc}; neither NUMBA_CACHE_DIR nor {cache_root()} "
        "can be written); they are compiled in memory in each process, which costs a few seconds per "
        "kernel on first use. Point NUMBA_CACHE_DIR at a writable directory to cache them.",
        NoKernelCacheWarning,
        stacklevel=4,
    )


def njit(func=None, *, cache: bool = True, **options):
    """:func:`numba.njit`, cached by default in NUMBA_CACHE_DIR or :func:`cache_dir` (never
    next to the modules), that compiles in memory (after one warning per process) where
    neither can be written."""

    def decorate(f):
        dispatcher = numba.njit(**options)(f)
        if cache and hasattr(dispatcher, "enable_caching"):  # not under NUMBA_DISABLE_JIT
            try:
                # what Dispatcher.enable_caching does, with emdtree's locators
                dispatcher._cache = _KernelCache(dispatcher.py_func)
            except RuntimeError as exc:
                if "no locator available" not in str(exc):
                    raise
                _warn_once(exc)
        return dispatcher

    return decorate if func is None else decorate(func)
