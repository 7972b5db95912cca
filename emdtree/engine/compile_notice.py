"""One line on stderr when the command line waits on a long kernel compilation.

Numba compiles a kernel on its first use in a process whose cache does not
hold it, silently. The ``emdtree`` command registers :func:`announce` when
stderr is a terminal and ``--quiet`` is not given (as for the progress bars):
when an emdtree kernel has been compiling for ``AFTER_S`` seconds, one line
says so, once per process. Loading a kernel from Numba's cache is not a
compilation and says nothing.
"""

from __future__ import annotations

import sys
import threading
from typing import TextIO

from numba.core import event

AFTER_S = 1.0

_MESSAGE = ("emdtree: compiling kernels for their first use on this machine (a few seconds; "
            "they are cached for later runs)")


def _ours(ev: event.Event) -> bool:
    """Whether the compilation is of one of emdtree's kernels."""
    func = getattr(ev.data.get("dispatcher"), "py_func", None)
    return getattr(func, "__module__", "").startswith("emdtree")


class _Listener(event.Listener):
    """A ``numba:compile`` listener: a timer per top-level compilation of an emdtree kernel."""

    def __init__(self, stream: TextIO, after_s: float) -> None:
        self.stream, self.after_s = stream, after_s
        self.depth = 0
        self.timer: threading.Timer | None = None
        self.said = False
        self.lock = threading.Lock()

    def _say(self) -> None:
        with self.lock:
            if self.said:
                return
            self.said = True
        try:
            print(_MESSAGE, file=self.stream, flush=True)
        except (OSError, ValueError):  # a closed stderr says nothing
            pass

    def on_start(self, ev: event.Event) -> None:
        if not _ours(ev):
            return
        self.depth += 1
        if self.depth == 1 and not self.said:
            self.timer = threading.Timer(self.after_s, self._say)
            self.timer.daemon = True
            self.timer.start()

    def on_end(self, ev: event.Event) -> None:
        if not _ours(ev):
            return
        self.depth -= 1
        if self.depth == 0 and self.timer is not None:
            self.timer.cancel()
            self.timer = None


_listener: _Listener | None = None


def announce(stream: TextIO | None = None, after_s: float = AFTER_S) -> None:
    """Say on ``stream`` (stderr) when a kernel compilation takes longer than ``after_s``.

    Registers one listener per process; a later call only changes where and when it speaks.
    """
    global _listener
    stream = sys.stderr if stream is None else stream
    if _listener is not None:
        _listener.stream, _listener.after_s = stream, after_s
        return
    _listener = _Listener(stream, after_s)
    event.register("numba:compile", _listener)
