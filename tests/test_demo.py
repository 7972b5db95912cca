"""``emdtree demo`` as a newcomer sees it: figures that read right, no kernel to compile;
and the NumPy ranking that the metrics' first calls run instead of the ranking kernel."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import emdtree
from emdtree.cli.main import main
from emdtree.evaluation import metrics as _metrics
from emdtree.evaluation.chunks import ranks

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _model_rows(out: str) -> dict[str, list[str]]:
    rows = {}
    for line in out.splitlines():
        words = line.split()
        if words and words[0] in ("good:", "bad:"):
            rows[words[0]] = words[-6:]  # top-1, top-5, severity, dist@5, mean EMD, mean EMD^2
    return rows


def test_demo_top5_is_above_top1(capsys):
    # generated predictions that spread their rest at random rank the true class among
    # their best 5 only by chance: top-5 came out equal to top-1 (68.2% and 68.2%)
    assert main(["demo"]) == 0
    rows = _model_rows(capsys.readouterr().out)
    for name in ("good:", "bad:"):
        top1, top5 = (float(cell.rstrip("%")) for cell in rows[name][:2])
        assert top1 < top5 < 100.0, rows[name]
    assert rows["good:"][:2] == rows["bad:"][:2]  # the same accuracy, top-1 and top-5


_COMPILES = r"""
import contextlib, io, json, sys
from numba.core import event

compiled = []

class Listener(event.Listener):
    def on_start(self, ev):
        pass

    def on_end(self, ev):
        func = ev.data["dispatcher"].py_func
        compiled.append(func.__module__ + "." + func.__qualname__)

event.register("numba:compile", Listener())
from emdtree.__main__ import main
with contextlib.redirect_stdout(io.StringIO()):
    code = main(["demo", "--batch", "512"])
print(json.dumps([code, sorted({name for name in compiled if name.startswith("emdtree.")})]))
"""


def test_demo_compiles_no_kernel(tmp_path):
    # with an empty Numba cache the demo compiled two kernels (the dense distance matrix
    # and the ranking of the metrics), 3 of its 4.5 s on a 2-core machine
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "numba"))
    env.pop("EMDTREE_JIT", None)  # the default: first calls run NumPy code
    proc = subprocess.run([sys.executable, "-c", _COMPILES], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    code, compiled = json.loads(proc.stdout.strip().splitlines()[-1])
    assert code == 0
    assert compiled == []


# ----------------------------------------------------------------------------- NumPy ranking


def _scores(rng, m, n, dtype):
    """Scores with many ties, signed zeros and infinities."""
    x = rng.integers(-2, 3, (m, n)).astype(dtype)
    x[rng.random((m, n)) < 0.1] = -np.inf
    x[rng.random((m, n)) < 0.05] = np.inf
    x[x == 0] *= rng.choice([-1, 1], size=int(np.count_nonzero(x == 0)))  # -0.0 ties with 0.0
    return x


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64, np.int64])
def test_numpy_ranks_equal_the_kernel(dtype):
    rng = np.random.default_rng(20261207)
    for _ in range(200):
        m, n = int(rng.integers(1, 12)), int(rng.integers(1, 40))
        k = int(rng.integers(0, n + 1))
        x = _scores(rng, m, n, np.float64)
        if dtype is np.int64:
            x = np.where(np.isfinite(x), x, 7).astype(np.int64)
        else:
            x = x.astype(dtype)
        y = rng.integers(0, n, m)
        rank, top = _metrics._numpy_ranks(x, y, k)
        want_rank, want_top = ranks(x, y, k)
        np.testing.assert_array_equal(rank, want_rank)
        np.testing.assert_array_equal(top, want_top)
        assert rank.dtype == top.dtype == np.int64 and top.shape == (m, k)


def test_numpy_ranks_on_random_scores():
    rng = np.random.default_rng(5)
    x = rng.random((64, 1000)).astype(np.float32)
    y = rng.integers(0, 1000, 64)
    rank, top = _metrics._numpy_ranks(x, y, 5)
    want_rank, want_top = ranks(x, y, 5)
    np.testing.assert_array_equal(rank, want_rank)
    np.testing.assert_array_equal(top, want_top)
    np.testing.assert_array_equal(top[:, 0], np.argmax(x, axis=1))


def test_first_metrics_calls_run_numpy(monkeypatch):
    # outside EMDTREE_JIT=eager a small chunk is ranked in NumPy, and the report is the same
    from emdtree.engine import tiers

    rng = np.random.default_rng(11)
    tree = emdtree.datasets.imagenet_wordnet()
    scores = rng.random((40, tree.n_bins))
    scores /= scores.sum(axis=1, keepdims=True)
    labels = rng.integers(0, tree.n_bins, 40)
    with_kernel = _metrics.report(scores, labels, tree, ks=(1, 5))
    called = []
    monkeypatch.setenv("EMDTREE_JIT", "lazy")
    monkeypatch.setattr(tiers, "_spent", 0)
    real = _metrics._numpy_ranks
    monkeypatch.setattr(_metrics, "_numpy_ranks", lambda *a: called.append(1) or real(*a))
    first = _metrics.report(scores, labels, tree, ks=(1, 5))
    assert called
    # the ranks give the same integers; the EMD (NumPy code too) agrees to rounding
    assert first.pop("mean_emd") == pytest.approx(with_kernel.pop("mean_emd"), rel=1e-12)
    assert first == with_kernel
