"""Shared fixtures."""

import numba
import pytest

from emdtree.engine import driver as _driver


@pytest.fixture
def serial_and_parallel(monkeypatch):
    """``compare(run) -> (serial, parallel)``: ``run()`` once with the one-thread
    kernels forced and once with the parallel drivers forced on two threads."""
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("needs two Numba threads")

    def compare(run):
        monkeypatch.setattr(_driver, "PARALLEL_MIN_WORK", 10**18)
        serial = run()
        monkeypatch.setattr(_driver, "PARALLEL_MIN_WORK", 0)
        previous = numba.get_num_threads()
        numba.set_num_threads(2)
        try:
            parallel = run()
        finally:
            numba.set_num_threads(previous)
        return serial, parallel

    return compare
