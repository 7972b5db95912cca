"""Files that are either complete or untouched, and NumPy files read with errors that name them.

:func:`atomic_write` is how every file that emdtree writes (saved trees,
distance matrices, command-line outputs) reaches the disk: the content goes to
a temporary file in the target's directory, is flushed to stable storage and
only then renamed over the target, so a run that fails part-way (disk full, a
file-size limit, out of memory, an interrupt) leaves the previous file as it
was. :func:`load_npy` and :func:`open_npz` read ``.npy`` / ``.npz`` files and
turn the many ways NumPy reports a damaged file (``EOFError``,
``zipfile.BadZipFile``, ``zlib.error``, a pickle refusal) into one
``ValueError`` that names the file.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
import struct
import tokenize
import warnings
import zipfile
import zlib
from collections.abc import Iterator
from typing import IO, Any

import numpy as np

__all__ = ["atomic_write", "load_npy", "open_npz", "NpzArchive"]

# what np.load and NpzFile raise for a file that is empty, truncated or not NumPy's
# (a damaged .npy header reaches ast.literal_eval: SyntaxError, tokenize.TokenError; zipfile
# says NotImplementedError for an unknown version or compression, RuntimeError for encryption,
# OSError for a seek past either end; the file itself was opened before, so that is damage too)
_DAMAGED = (EOFError, ValueError, TypeError, SyntaxError, tokenize.TokenError, RecursionError,
            zipfile.BadZipFile, zlib.error, KeyError, UnicodeError, OverflowError, NotImplementedError,
            RuntimeError, struct.error, OSError)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str], mode: str = "w", *, encoding: str | None = None,
                 newline: str | None = None) -> Iterator[IO[Any]]:
    """Open ``path`` for writing so that it is replaced only when the block succeeds.

    The block writes to a new file beside ``path`` (same directory, so the
    final rename stays on one file system); on success it is flushed,
    ``fsync``-ed and renamed onto ``path`` with :func:`os.replace`, taking
    the permissions of the file it replaces. On any exception the temporary
    file is removed and ``path`` is left as it was. An ``OSError`` without a
    file name (``File too large``, ``No space left on device``) is raised
    again naming ``path``. A ``path`` that exists but is not a regular file
    (``/dev/stdout``, a named pipe) is written directly.

    Parameters
    ----------
    path : str or path-like
        The file to write; a symbolic link is followed and its target replaced.
    mode : {"w", "wb"}
        Text or binary.
    encoding, newline : str, optional
        As in :func:`open`, for text mode.

    Yields
    ------
    file object
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"mode must be 'w' or 'wb', got {mode!r}")
    name = os.fspath(path)
    target = os.path.realpath(name) if os.path.islink(name) else name
    try:
        info = os.stat(target)
    except FileNotFoundError:
        info = None
    except OSError as exc:
        raise _named(exc, name) from None
    if info is not None and stat.S_ISDIR(info.st_mode):
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), name)
    if info is not None and not stat.S_ISREG(info.st_mode):  # a device or a pipe: nothing to replace
        with open(target, mode, encoding=encoding, newline=newline) as fh:
            yield fh
        return
    directory = os.path.dirname(os.path.abspath(target))
    fd, temp = _create_beside(target, directory, name)
    try:
        with os.fdopen(fd, mode, encoding=encoding, newline=newline) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        if info is not None:
            os.chmod(temp, stat.S_IMODE(info.st_mode))
        os.replace(temp, target)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        if isinstance(exc, OSError) and exc.filename is None:
            raise _named(exc, name) from exc
        raise
    _sync_directory(directory)


def _create_beside(target: str, directory: str, name: str) -> tuple[int, str]:
    """A new file next to ``target``, created with the umask's permissions as ``open`` would."""
    base = os.path.basename(target)
    for _ in range(100):
        temp = os.path.join(directory, f".{base}.{secrets.token_hex(4)}.tmp")
        try:
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
            return os.open(temp, flags, 0o666), temp
        except FileExistsError:
            continue
        except OSError as exc:
            raise _named(exc, name) from None
    raise FileExistsError(errno.EEXIST, "could not create a temporary file", name)  # pragma: no cover


def _sync_directory(directory: str) -> None:
    """Make the rename itself durable where the platform allows (POSIX)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - Windows, or a directory we may not open
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some file systems refuse fsync on directories
        pass
    finally:
        os.close(fd)


def _named(exc: OSError, name: str) -> OSError:
    if exc.errno is None:
        return OSError(f"{name}: {exc}")
    return OSError(exc.errno, exc.strerror or os.strerror(exc.errno), name)


# ----------------------------------------------------------------------------- reading NumPy files


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """No warnings while NumPy parses a header: a damaged one makes ``ast`` warn about
    escapes, and the error that follows says all."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _reason(exc: BaseException) -> str:
    if isinstance(exc, EOFError):
        return "the file is empty or truncated"
    if isinstance(exc, zipfile.BadZipFile):
        return f"not a valid zip archive ({str(exc).strip() or 'damaged'})"
    text = str(exc).strip().splitlines()
    if "pickle" in (text[0] if text else "").lower():
        return "it holds pickled Python objects, which are not read for safety (or the file is damaged)"
    return text[0] if text else type(exc).__name__


_NPY_MAGIC = b"\x93NUMPY"
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")


def _check_magic(name: str, kind: str) -> None:
    """Refuse a file that is neither kind of NumPy file before np.load takes it for a pickle."""
    try:
        with open(name, "rb") as fh:
            head = fh.read(6)
    except IsADirectoryError:
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), name) from None
    if not head:
        raise ValueError(f"cannot read {name!r} as {kind} file: the file is empty")
    npy, npz = head.startswith(_NPY_MAGIC), head[:4] in _ZIP_MAGIC
    if not (npy or npz):
        raise ValueError(f"cannot read {name!r} as {kind} file: it is not a NumPy file (no .npy or .npz "
                         "header)")
    # np.load would open the other kind itself and leave the file open if it is damaged
    if kind == "a .npy" and npz:
        raise ValueError(f"cannot read {name!r} as a .npy file: it is an .npz archive")
    if kind == "an .npz" and npy:
        raise ValueError(f"cannot read {name!r} as an .npz file: it holds a single .npy array")


def load_npy(path: str | os.PathLike[str], *, mmap: bool = False) -> np.ndarray:
    """The array of a ``.npy`` file, memory-mapped read-only with ``mmap``.

    Raises
    ------
    ValueError
        Naming the file, when it is empty, truncated, damaged or holds
        pickled objects.
    """
    _check_magic(os.fspath(path), "a .npy")
    try:
        with _quiet():
            data = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except _DAMAGED as exc:
        raise ValueError(f"cannot read {os.fspath(path)!r} as a .npy file: {_reason(exc)}") from None
    if not isinstance(data, np.ndarray):  # an .npz archive under a .npy name
        data.close()
        raise ValueError(f"cannot read {os.fspath(path)!r} as a .npy file: it is an .npz archive")
    return data


class NpzArchive:
    """The arrays of an open ``.npz`` file; see :func:`open_npz`."""

    __slots__ = ("path", "_data")

    def __init__(self, path: str, data: Any) -> None:
        self.path = path
        self._data = data

    @property
    def files(self) -> list[str]:
        """Names of the arrays in the archive."""
        return list(self._data.files)

    def __contains__(self, key: str) -> bool:
        return key in self._data.files

    def __getitem__(self, key: str) -> np.ndarray:
        try:
            with _quiet():
                return self._data[key]
        except _DAMAGED as exc:
            raise ValueError(f"cannot read the array {key!r} of {self.path!r}: {_reason(exc)}") from None


@contextlib.contextmanager
def open_npz(path: str | os.PathLike[str]) -> Iterator[NpzArchive]:
    """Open an ``.npz`` file; a damaged archive or member is a ValueError naming it."""
    name = os.fspath(path)
    _check_magic(name, "an .npz")
    # our own file object: np.load leaves the one it opens unclosed when the archive is damaged
    with open(name, "rb") as fh:
        try:
            with _quiet():
                data = np.load(fh, allow_pickle=False)
        except _DAMAGED as exc:
            raise ValueError(f"cannot read {name!r} as an .npz file: {_reason(exc)}") from None
        if isinstance(data, np.ndarray):
            raise ValueError(f"cannot read {name!r} as an .npz file: it holds a single .npy array")
        try:
            yield NpzArchive(name, data)
        finally:
            data.close()
