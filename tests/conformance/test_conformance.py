"""Every case of the table through every door, against ``tests/oracle.py``.

One test per (door, case) compares the value, the gradient and the second
derivatives (dense Hessian or Hessian-vector product) that the door gives;
one per (door, bad case) checks that a NaN, ``+inf`` or negative entry is
reported by its index.
Doors whose framework is missing skip with the reason. Doors that need an
environment set before Numba is imported (the CUDA simulator,
``NUMBA_DISABLE_JIT=1``) run in one subprocess each, which runs this same
file with ``EMDTREE_CONFORMANCE_RUN`` set.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from .cases import BAD_CASES, CASES, Case
from .doors import DOORS, KNOWN_DEFECTS, RUN_ENV, RUNS, TOL, TOL_SECOND, Door, current_run, known_defect

RUN = current_run()
ROOT = Path(__file__).resolve().parents[2]


def _pairs(cases=CASES, bad=False):
    for door in DOORS:
        if door.run != RUN or (bad and not door.names_entries):
            continue
        missing = door.missing()
        for case in cases:
            if not door.takes(case):
                continue
            marks = []
            if missing:
                marks.append(pytest.mark.skip(reason=missing))
            else:
                reason = known_defect(door, case)
                if reason:
                    marks.append(pytest.mark.xfail(strict=True, reason=reason))
            yield pytest.param(door, case, id=f"{door.name}-{case.name}", marks=marks)


def _close(name: str, actual, expected: np.ndarray, case: Case, door: Door, tol: dict) -> str | None:
    """A mismatch between ``actual`` and the oracle's ``expected``, described, or None."""
    if actual is None:
        return f"{name}: the door gave None"
    actual = np.asarray(actual)
    if actual.shape != expected.shape:
        return f"{name}: shape {actual.shape}, expected {expected.shape}"
    if door.keeps_dtype and actual.dtype != case.dtype:
        return f"{name}: dtype {actual.dtype}, expected {case.dtype}"
    t = tol[case.dtype.name]
    scale = max(np.abs(expected).max(initial=0.0), 1e-300)
    a = actual.astype(np.float64)
    bad = ~(np.abs(a - expected) <= t * scale + t * np.abs(expected))
    if not bad.any():
        return None
    where = tuple(int(i) for i in np.argwhere(bad)[0])
    return (f"{name}: {int(bad.sum())} of {bad.size} entries differ, largest by "
            f"{np.nanmax(np.abs(a - expected)):.3g} (tolerance {t:g} x {scale:.3g}); first at {where}: "
            f"{a[where]!r} vs oracle {expected[where]!r}")


@pytest.mark.parametrize("door,case", list(_pairs()))
def test_door_matches_oracle(door: Door, case: Case):
    view = door.view(case)
    errors = []
    with RUNS[RUN].setup() if RUN in RUNS else contextlib.nullcontext():
        value, grad = door.value_grad(view)
        errors.append(_close("value", value, case.value, case, door, TOL))
        if grad is not None:
            errors.append(_close("gradient", grad, case.grad, case, door, TOL))
        if case.hessian is not None and door.hessian is not None:
            errors.append(_close("Hessian", door.hessian(view), case.hessian, case, door, TOL_SECOND))
        if case.hessian is not None and door.hvp is not None:
            errors.append(_close("Hessian-vector product", door.hvp(view), case.expected_hvp(), case, door,
                                 TOL_SECOND))
    errors = [e for e in errors if e]
    assert not errors, "\n".join(errors)


@pytest.mark.parametrize("door,case", list(_pairs(BAD_CASES, bad=True)))
def test_door_rejects_bad_input(door: Door, case: Case):
    """NaN, +inf and negative entries are reported by the door, naming the caller's entry [1, 2]."""
    with pytest.raises(Exception) as info:
        door.value_grad(door.view(case))
    message = str(info.value)
    assert "[1, 2]" in message, message
    assert any(word in message for word in ("inf", "nan", "NaN", "negative")), message


def test_known_defects_name_doors_and_tags():
    names = {door.name for door in DOORS}
    tags = set().union(*(case.tags for case in CASES + BAD_CASES))
    for door, kind in KNOWN_DEFECTS:
        assert door in names, door
        assert set(kind.split("+")) <= tags, kind


@pytest.mark.skipif(RUN != "main", reason="runs from the main process")
@pytest.mark.parametrize("run", sorted(RUNS))
def test_subprocess_doors(run):
    doors = [d for d in DOORS if d.run == run]
    missing = [d.missing() for d in doors if d.missing()]
    if len(missing) == len(doors):
        pytest.skip("; ".join(missing))
    env = dict(os.environ, **RUNS[run].env, **{RUN_ENV: run})
    result = subprocess.run(
        [sys.executable, "-m", "pytest", str(Path(__file__)), "-q", "-p", "no:cacheprovider",
         "-k", "test_door_matches_oracle"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    tail = (result.stdout + result.stderr)[-6000:]
    assert result.returncode == 0, tail
    assert " passed" in result.stdout or " xfailed" in result.stdout, tail
