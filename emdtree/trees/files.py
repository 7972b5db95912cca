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

:func:`atomic_directory` does the same for a directory (a Zarr store): the
new directory is written beside the target under a name that says which
process writes it, renamed to a *complete* name once written, and swapped in
by renames (the old one moved aside, the new one moved in, the old one
removed). :func:`recover_directory`, called by every writer and reader of a
target, finishes or undoes the swap of a process that died and removes the
leftovers of dead processes, never those of a live one.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
import socket
import stat
import struct
import tokenize
import warnings
import zipfile
import zlib
from collections.abc import Iterator
from typing import IO, Any

import numpy as np

__all__ = ["atomic_write", "atomic_directory", "recover_directory", "DirectoryNotReplaced", "load_npy",
           "open_npz", "NpzArchive"]

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
    _remove_dead_files(target, directory)
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
        temp = os.path.join(directory, f".{base}.{_writer_token()}.tmp")
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


# ----------------------------------------------------------------------------- writers and their leftovers

def _host() -> str:
    name = socket.gethostname() or "host"
    return "".join(c if c.isalnum() or c in "._" else "_" for c in name)[:40]


def _start_time(pid: int) -> str:
    """The start time of process ``pid`` in clock ticks since boot (Linux), or "0" where unknown:
    with the pid, it tells a process from a later one given the same pid."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            fields = fh.read().rsplit(b")", 1)[1].split()
        return fields[19].decode()
    except (OSError, IndexError, UnicodeDecodeError):
        return "0"


def _writer_token() -> str:
    """``PID-START-RANDOM-HOST``: who writes a temporary file or directory, and a part of its own."""
    return f"{os.getpid()}-{_start_time(os.getpid())}-{secrets.token_hex(4)}-{_host()}"


def _writer_alive(token: str) -> bool:
    """Whether the process named by a token may still be writing: True unless it is known dead.

    A token of another host, or one that cannot be read, counts as alive (its
    writer cannot be checked from here); so does any process on Windows.
    A token that is a bare pid (the name older versions gave) is checked by
    the pid alone.
    """
    parts = token.split("-", 3)
    if not parts[0].isdigit():
        return True
    pid = int(parts[0])
    if len(parts) == 4:
        start, host = parts[1], parts[3]
        if host != _host():
            return True
    elif len(parts) == 1:
        start = "0"
    else:
        return True
    if os.name == "nt" or pid <= 0:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        pass
    except OSError:
        return True
    now = _start_time(pid)
    return start == "0" or now == "0" or now == start  # else the pid was given to a later process


def _remove_dead_files(target: str, directory: str) -> None:
    """Remove the temporary files of :func:`atomic_write` left beside ``target`` by dead processes."""
    prefix, suffix = f".{os.path.basename(target)}.", ".tmp"
    try:
        names = [e.name for e in os.scandir(directory)
                 if e.name.startswith(prefix) and e.name.endswith(suffix)]
    except OSError:
        return
    for name in names:
        token = name[len(prefix):-len(suffix)]
        if token.count("-") >= 3 and not _writer_alive(token):
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(directory, name))


# ----------------------------------------------------------------------------- directories

# beside TARGET: TARGET.partial-TOKEN while written, TARGET.new-TOKEN once complete,
# TARGET.old-TOKEN the previous store moved aside, TARGET.trash-TOKEN being removed
_KINDS = ("partial", "new", "old", "trash")


def _directory_target(path: str | os.PathLike[str]) -> str:
    """The absolute path of a directory target; a symbolic link is followed (its target is replaced)."""
    name = os.path.abspath(os.fspath(path).rstrip("/\\") or os.sep)
    return os.path.realpath(name) if os.path.islink(name) else name


def _siblings(target: str) -> list[tuple[str, str, str]]:
    """``(kind, token, path)`` of the writers' directories beside ``target``."""
    directory, base = os.path.split(target)
    found = []
    try:
        entries = list(os.scandir(directory or "."))
    except OSError:
        return found
    for entry in entries:
        for kind in _KINDS:
            prefix = f"{base}.{kind}-"
            if entry.name.startswith(prefix):
                found.append((kind, entry.name[len(prefix):], entry.path))
    return found


@contextlib.contextmanager
def _swap_lock(target: str) -> Iterator[None]:
    """Serialise the renames of writers (and recoveries) of targets in one directory, where the
    platform and file system allow an advisory lock on the directory; elsewhere the renames are
    retried."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    try:
        fd = os.open(os.path.dirname(target) or ".", os.O_RDONLY)
    except OSError:
        yield
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:  # pragma: no cover - a file system without flock
            pass
        yield
    finally:
        os.close(fd)  # releases the lock


def _remove_tree(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)


def _recover(target: str) -> None:
    """:func:`recover_directory` with the swap lock held."""
    dead = [(kind, token, path) for kind, token, path in _siblings(target) if not _writer_alive(token)]
    if not os.path.lexists(target):
        # a swap that died between moving the old store aside and moving the new one in
        complete = sorted((path for kind, _, path in dead if kind == "new"), key=_mtime, reverse=True)
        old = [path for kind, _, path in dead if kind == "old"]
        for path in complete + old:
            try:
                os.rename(path, target)
                break
            except OSError:
                continue
    for _, _, path in dead:
        if os.path.lexists(path):
            _remove_tree(path)


def _mtime(path: str) -> float:
    try:
        return os.stat(path).st_mtime
    except OSError:
        return 0.0


def recover_directory(path: str | os.PathLike[str]) -> None:
    """Bring a directory target written by :func:`atomic_directory` back to a complete state.

    When the process that replaced ``path`` died during the swap, ``path``
    may be missing while the complete new directory or the old one waits
    beside it: the new one is moved in (or else the old one back). The
    directories of dead writers beside ``path`` are then removed. Those of
    live writers, and of writers on other hosts, are left alone.
    """
    target = _directory_target(path)
    with _swap_lock(target):
        _recover(target)


def _removal_blocker(path: str) -> str | None:
    """The first entry of the tree at ``path`` that this process may not remove, with the reason."""
    errors: list[OSError] = []
    for root, dirs, _ in os.walk(path, onerror=errors.append):
        if not os.access(root, os.W_OK | os.X_OK | os.R_OK):
            return f"{root!r} (Permission denied)"
        dirs[:] = [d for d in dirs if not os.path.islink(os.path.join(root, d))]
        if errors:
            break
    if errors:
        return f"{errors[0].filename!r} ({errors[0].strerror or errors[0]})"
    return None


class DirectoryNotReplaced(PermissionError):
    """The previous directory at a target cannot be removed; it is left as it was."""


def _check_removable(target: str, name: str) -> None:
    if not os.path.isdir(target) or os.path.islink(target):
        return
    blocker = _removal_blocker(target)
    if blocker is not None:
        raise DirectoryNotReplaced(f"cannot replace {name!r}: the previous store cannot be removed, "
                                   f"{blocker}; it is left as it was")


def _step(name: str) -> None:
    """A point between two steps of the swap (tests interrupt the swap here)."""


def _swap(new: str, target: str, token: str, name: str) -> None:
    """Move the complete directory ``new`` to ``target``: the old one aside, the new one in, the
    old one removed. At every moment ``target`` is the complete old or new directory, or missing
    with both beside it (where :func:`recover_directory` finds them)."""
    aside, trash = f"{target}.old-{token}", f"{target}.trash-{token}"
    with _swap_lock(target):
        _recover(target)
        _check_removable(target, name)
        for attempt in range(20):
            _step("aside")
            moved = False
            if os.path.lexists(target):
                os.rename(target, aside)
                moved = True
            _step("in")
            try:
                os.rename(new, target)
            except OSError as exc:
                # another writer moved its store in meanwhile (a file system without the lock)
                if moved:
                    with contextlib.suppress(OSError):
                        os.rename(aside, target)
                if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY, errno.EISDIR) or attempt == 19:
                    raise
                continue
            break
        _sync_directory(os.path.dirname(target))
        _step("swapped")
        if not moved:
            return
        os.rename(aside, trash)
    _step("trash")
    try:
        shutil.rmtree(trash)
    except OSError as exc:
        import warnings as _warnings

        _warnings.warn(f"{name!r} is replaced, but the previous store moved aside to {trash!r} could not "
                       f"be removed ({_reason(exc)}); the next write to {name!r} removes it", stacklevel=3)


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike[str]) -> Iterator[str]:
    """A new directory beside ``path`` that replaces ``path`` only when the block succeeds.

    The block writes into the yielded directory (``PATH.partial-TOKEN``, the
    token naming this process: pid, start time, host). Once the block
    returns, the directory is renamed ``PATH.new-TOKEN`` (complete) and
    swapped in by renames: the old ``path`` moved aside, the new one moved
    in, the old one removed. ``path`` is thus always the complete old or new
    directory; a process killed during the swap leaves both beside ``path``,
    and the next writer or reader (:func:`recover_directory`) completes it.
    Leftovers of dead writers of ``path`` are removed first; those of live
    writers are never touched, so writers running at once each finish and
    ``path`` holds the last one's directory.

    Parameters
    ----------
    path : str or path-like
        The directory to write; a symbolic link is followed and its target
        replaced. Missing folders above it are made.

    Yields
    ------
    str
        The new directory, empty, to fill.

    Raises
    ------
    DirectoryNotReplaced
        (a PermissionError) Before anything is written, and again before the
        swap, when the old directory at ``path`` cannot be removed by this
        process; it is left as it was, and the new one is discarded.
    """
    name = os.fspath(path)
    target = _directory_target(name)
    try:
        os.makedirs(os.path.dirname(target), exist_ok=True)  # as a store's own folders are made
    except OSError as exc:
        raise _named(exc, name) from None
    recover_directory(target)
    _check_removable(target, name)
    token = _writer_token()
    partial, new = f"{target}.partial-{token}", f"{target}.new-{token}"
    os.mkdir(partial)
    try:
        yield partial
        os.rename(partial, new)
        _step("complete")
        _swap(new, target, token, name)
    except BaseException:
        # interrupted or failed here in a live process: put the old store back if it is aside
        aside = f"{target}.old-{token}"
        with _swap_lock(target):
            if not os.path.lexists(target) and os.path.lexists(aside):
                with contextlib.suppress(OSError):
                    os.rename(aside, target)
        for leftover in (partial, new, aside, f"{target}.trash-{token}"):
            if os.path.lexists(leftover):
                _remove_tree(leftover)
        raise


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
