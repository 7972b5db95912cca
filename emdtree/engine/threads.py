"""When and how emdtree runs its kernels across Numba's threads: safely under
``fork`` and under concurrent Python threads, whatever the threading layer.

Numba runs ``parallel=True`` kernels on one process-wide threading layer, picked
at the first parallel launch: TBB, OpenMP or its own workqueue
(``numba.threading_layer()``; ``NUMBA_THREADING_LAYER`` chooses). emdtree
leaves that choice to Numba and to the user, and instead avoids the two ways a
layer fails a library user who never asked for threads:

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
a parallel region costs a few milliseconds when another core is busy.
"""

from __future__ import annotations

import os
import threading
from contextlib import contextmanager
from typing import Iterator

import numba

_launch_lock = threading.Lock()
_serial_only = False  # set in a forked child of a process that ran OpenMP parallel regions


def _after_fork_in_child() -> None:
    global _launch_lock, _serial_only
    # a thread of the parent may have held the lock at the fork; it does not exist here
    _launch_lock = threading.Lock()
    try:
        layer = numba.threading_layer()
    except ValueError:  # no parallel region has run: the child starts a layer of its own
        return
    if layer == "omp":
        _serial_only = True


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def usable_threads(requested: int | None = None) -> int:
    """The number of threads a parallel kernel may use now.

    ``requested`` (by default Numba's current ``get_num_threads()``), or 1 in a
    forked child whose parent ran OpenMP parallel regions.
    """
    if _serial_only:
        return 1
    return numba.get_num_threads() if requested is None else int(requested)


@contextmanager
def parallel_launch(n_threads: int) -> Iterator[None]:
    """Hold the launch lock and run Numba's parallel regions on ``n_threads`` threads.

    The calling thread's previous thread count is restored on exit.
    """
    with _launch_lock:
        previous = numba.get_num_threads()
        numba.set_num_threads(n_threads)
        try:
            yield
        finally:
            numba.set_num_threads(previous)
