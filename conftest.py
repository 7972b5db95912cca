"""pytest configuration for the checkout: the doctests of an optional adapter are
skipped, with the reason, when its framework is not installed (those of the lazy
tables when dask is not), and every call runs the compiled kernels
(``EMDTREE_JIT=eager``): which path a call takes must not
depend on how long earlier tests took. tests/test_tiers.py tests the NumPy path
that first calls take in a new process, and the choice between the two.

``--doctest-modules`` imports every module under ``emdtree/``; the adapters import
their framework when they load, so without this hook a checkout installed with
only the ``test`` extra would fail to collect them.
"""

from __future__ import annotations

import os
from importlib.util import find_spec
from pathlib import Path

import pytest

os.environ.setdefault("EMDTREE_JIT", "eager")

_FRAMEWORK_OF = {
    Path("emdtree", "torch.py"): ("torch", "torch"),
    Path("emdtree", "frameworks", "torch.py"): ("torch", "torch"),
    Path("emdtree", "tensorflow.py"): ("tensorflow", "tensorflow"),
    Path("emdtree", "frameworks", "tensorflow.py"): ("tensorflow", "tensorflow"),
    Path("emdtree", "jax.py"): ("jax", "jax"),
    Path("emdtree", "frameworks", "jax.py"): ("jax", "jax"),
    Path("emdtree", "formats", "lazy_tables.py"): ("dask", "dask"),
}
_ROOT = Path(__file__).parent


class _SkippedModule(pytest.File):
    """A collector that skips its module with a reason, instead of importing it."""

    reason = ""

    def collect(self):
        pytest.skip(self.reason)


def _missing(file_path: Path) -> tuple[str, str] | None:
    try:
        key = file_path.relative_to(_ROOT)
    except ValueError:
        return None
    entry = _FRAMEWORK_OF.get(key)
    if entry is None or find_spec(entry[0]) is not None:
        return None
    return entry


@pytest.hookimpl(wrapper=True)
def pytest_collect_file(file_path: Path, parent: pytest.Collector):
    collectors = yield
    missing = _missing(file_path)
    if missing is None:
        return collectors
    module, extra = missing
    skipped = _SkippedModule.from_parent(parent, path=file_path)
    skipped.reason = f"doctests of {file_path.name} need {module}: pip install -e \".[{extra}]\""
    return [skipped]
