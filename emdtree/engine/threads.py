"""When and how emdtree runs its kernels across Numba's threads: safely under
``fork`` and under concurrent Python threads, whatever the threading layer, and
without disturbing the framework that shares the process.

Numba runs ``parallel=True`` kernels on one process-wide threading layer, picked
at the first parallel launch: TBB, OpenMP or its own workqueue
(``numba.threading_layer()``; ``NUMBA_THREADING_LAYER`` chooses). emdtree
leaves that choice to Numba and to the user, except that it does not put
Numba on a framework's OpenMP runtime, and avoids the ways a layer fails a
library user who never asked for threads:

* **the host's thread count.** Numba's OpenMP layer, when it starts, calls
  ``omp_set_num_threads(NUMBA_NUM_THREADS)`` on the calling thread. Where
  PyTorch (or any library built on GNU OpenMP) is already loaded, that call
  lands in the framework's own OpenMP runtime: ``torch.get_num_threads()``
  silently goes from the user's 1 to every core, and the framework's next steps
  run on threads that fight for the cores. emdtree starts the layer itself
  (:func:`start_layer`), reads the OpenMP thread count of the runtime in the
  process's global symbol scope before, and sets it back after; every parallel
  launch checks it again on exit. Where such a runtime is loaded and nobody
  chose a layer, emdtree starts Numba's workqueue rather than OpenMP (see
  :func:`start_layer`).
* **sizing.** With no count given, a parallel kernel uses what the host leaves
  (:func:`default_threads`): ``EMDTREE_NUM_THREADS`` when set; else Numba's
  count when the user chose it (``NUMBA_NUM_THREADS``, or a
  ``numba.set_num_threads`` below it); else the CPUs of the process's affinity
  mask, and no more than ``torch.get_num_threads()`` when PyTorch is loaded and
  set below them.
* **fork.** A process forked from one that has run GNU OpenMP parallel regions
  is terminated by Numba as soon as it starts one itself ("fork() called from
  a process already using GNU OpenMP"). PyTorch ``DataLoader`` workers,
  ``multiprocessing`` fork pools and pre-forking servers do exactly that. In
  such a child, :func:`usable_threads` answers 1 and the drivers run the serial
  twin of each kernel, which never enters the threading layer. (TBB and the
  workqueue survive fork; a child of a process that never ran a parallel region
  starts its own layer.)
* **concurrent launches.** The workqueue layer (what Numba uses where neither
  TBB nor OpenMP is available) aborts the process when two Python threads run
  parallel regions at once ("Concurrent access has been detected"). Every
  parallel launch of emdtree holds one process-wide lock
  (:func:`parallel_launch`), so emdtree's own launches never overlap, under any
  layer. A launch already uses every thread it is given, so queueing a second
  one costs little against running both at once on the same cores.

Small work runs serially anyway (see :data:`emdtree.engine.driver.PARALLEL_MIN_WORK`):
a parallel region costs a few milliseconds when another core is busy. A call
that runs serially does not start the threading layer.
"""

from __future__ import annotations

import ctypes
import os
import sys
import threading
from contextlib import contextmanager
from typing import Callable, Iterator

import numba

_launch_lock = threading.Lock()
_layer_lock = threading.Lock()
_serial_only = False  # set in a forked child of a process that ran OpenMP parallel regions
_layer_started = False
# (omp_get_max_threads, omp_set_num_threads) of the runtime the OpenMP layer runs on, once started
_openmp: tuple[Callable[[], int], Callable[[int], None]] | None = None

ENV_THREADS = "EMDTREE_NUM_THREADS"


def _after_fork_in_child() -> None:
    global _launch_lock, _layer_lock, _serial_only
    # a thread of the parent may have held a lock at the fork; it does not exist here
    _launch_lock = threading.Lock()
    _layer_lock = threading.Lock()
    try:
        layer = numba.threading_layer()
    except ValueError:  # no parallel region has run: the child starts a layer of its own
        return
    if layer == "omp":
        _serial_only = True


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _global_openmp() -> tuple[Callable[[], int], Callable[[int], None]] | None:
    """``omp_get_max_threads`` and ``omp_set_num_threads`` as the process resolves them now
    (the runtime Numba's OpenMP layer binds to when another library loaded one first), or None."""
    try:
        lib = ctypes.CDLL(None)
        get, put = lib.omp_get_max_threads, lib.omp_set_num_threads
    except (OSError, AttributeError, TypeError):  # no OpenMP runtime in the global scope; Windows
        return None
    get.restype, get.argtypes = ctypes.c_int, []
    put.restype, put.argtypes = None, [ctypes.c_int]
    return get, put


def _prefer_workqueue() -> bool:
    """Whether Numba, left to itself, would run its layer on an OpenMP runtime that another
    library already uses, and nobody chose a layer: then emdtree starts the workqueue instead."""
    if any(os.environ.get(name, "").strip()
           for name in ("NUMBA_THREADING_LAYER", "NUMBA_THREADING_LAYER_PRIORITY")):
        return False
    if str(numba.config.THREADING_LAYER).lower() != "default":
        return False
    try:  # Numba takes TBB first where it is installed; it shares nothing with OpenMP
        from numba.np.ufunc import tbbpool  # noqa: F401
    except ImportError:
        return True
    return False


def layer_started() -> bool:
    """Whether Numba's threading layer has been started in this process (by anyone)."""
    if _layer_started:
        return True
    try:
        numba.threading_layer()
    except ValueError:
        return False
    return True


def start_layer() -> None:
    """Start Numba's threading layer if nobody has, leaving the OpenMP thread count as it was.

    Numba's OpenMP layer sets the calling thread's OpenMP thread count to
    ``NUMBA_NUM_THREADS`` when it starts; where a framework's OpenMP runtime is
    already loaded (PyTorch's), that is the framework's setting. It is read
    before and restored after. Where such a runtime is loaded and nobody chose
    a layer (``NUMBA_THREADING_LAYER``, ``NUMBA_THREADING_LAYER_PRIORITY``,
    ``numba.config.THREADING_LAYER``) and TBB is not installed, the workqueue
    layer is started instead of OpenMP: its idle threads sleep at once rather
    than spin on cores the framework needs.
    """
    global _layer_started, _openmp
    if _layer_started:
        return
    with _layer_lock:
        if _layer_started:
            return
        already = layer_started()
        openmp = None if already else _global_openmp()
        before = openmp[0]() if openmp is not None else None
        chosen = numba.config.THREADING_LAYER
        if openmp is not None and _prefer_workqueue():
            numba.config.THREADING_LAYER = "workqueue"
        try:
            numba.get_num_threads()  # starts the layer
        finally:
            numba.config.THREADING_LAYER = chosen
        if openmp is not None and openmp[0]() != before:
            openmp[1](before)
        if numba.threading_layer() == "omp":
            _openmp = openmp if openmp is not None else _global_openmp()
        _layer_started = True


def _affinity() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # macOS, Windows
        return max(1, os.cpu_count() or 1)


def _env_threads() -> int | None:
    text = os.environ.get(ENV_THREADS, "").strip()
    if not text:
        return None
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise ValueError(f"{ENV_THREADS}={text!r}: expected a positive whole number of threads")
    return n


def default_threads() -> int:
    """The number of threads emdtree's parallel kernels use when a call names none.

    In order: ``EMDTREE_NUM_THREADS`` when set (at most ``NUMBA_NUM_THREADS``);
    Numba's count when the user chose it (``NUMBA_NUM_THREADS`` in the
    environment, or ``numba.set_num_threads`` below ``NUMBA_NUM_THREADS``);
    else the CPUs this process may run on (its affinity mask), and no more than
    ``torch.get_num_threads()`` when PyTorch is loaded and set below them. Does
    not start the threading layer.
    """
    limit = numba.config.NUMBA_NUM_THREADS
    n = _env_threads()
    if n is not None:
        return min(n, limit)
    n = numba.get_num_threads() if layer_started() else limit
    if n < limit or os.environ.get("NUMBA_NUM_THREADS", "").strip():
        return n
    cores = _affinity()
    n = min(n, cores)
    torch = sys.modules.get("torch")
    get = getattr(torch, "get_num_threads", None)
    if get is not None:
        host = int(get())
        if 0 < host < cores:
            n = min(n, host)
    return max(1, n)


def usable_threads(requested: int | None = None) -> int:
    """The number of threads a parallel kernel may use now.

    ``requested``, by default :func:`default_threads`; 1 in a forked child
    whose parent ran OpenMP parallel regions.
    """
    if _serial_only:
        return 1
    return default_threads() if requested is None else int(requested)


@contextmanager
def parallel_launch(n_threads: int) -> Iterator[None]:
    """Hold the launch lock and run Numba's parallel regions on ``n_threads`` threads.

    Starts the threading layer (see :func:`start_layer`) if needed. The calling
    thread's Numba thread count, and the OpenMP thread count of the runtime the
    OpenMP layer shares with the host, are as before on exit.
    """
    start_layer()
    with _launch_lock:
        omp_before = _openmp[0]() if _openmp is not None else None
        previous = numba.get_num_threads()
        numba.set_num_threads(n_threads)
        try:
            yield
        finally:
            numba.set_num_threads(previous)
            if _openmp is not None and _openmp[0]() != omp_before:
                _openmp[1](omp_before)
