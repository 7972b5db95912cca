"""Deployment conditions: fork after parallel calls, Python threads under every Numba
threading layer, and a read-only install with no writable cache.

Each case runs in a fresh interpreter: the threading layer is chosen once per
process, and a failure here is a killed or hung process, which must not take the
test session with it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ["omp", "tbb", "workqueue"]

# Parallel work in the parent (every kernel family that has a parallel twin), then the
# same work in forked children, a fork pool and a spawn pool; results must be equal.
_FORK_SCRIPT = r"""
import multiprocessing as mp, os
import numpy as np
import numba
import emdtree
from emdtree import metrics

# EMDTREE_PARALLEL_MIN_WORK=0 in the environment: every call takes its parallel kernel
tree = emdtree.Tree.from_parents([-1, 0, 0, 1, 1, 2, 2, 3], [0, 1, 2, 1, 1, 3, 1, 2], bins=[3, 4, 5, 6, 7])


def work(seed=0):
    numba.set_num_threads(2)
    r = np.random.default_rng(seed)
    p = r.random((80, tree.n_bins)); p /= p.sum(axis=1, keepdims=True)
    q = r.random((80, tree.n_bins)); q /= q.sum(axis=1, keepdims=True)
    v, g = emdtree.emd_value_and_grad(p, q, tree, rho=2)
    h = emdtree.emd_hessian(p[:40], q[:40], tree, rho=1.5)
    d = emdtree.pairwise(p, tree=tree, n_threads=2)
    d2 = emdtree.pairwise(p, tree=tree, rho=2, n_threads=2)
    labels = r.integers(0, tree.n_bins, 80)
    acc = metrics.topk_accuracy(p, labels, k=2)
    return float(v.sum() + g.sum() + h.sum() + d.sum() + d2.sum() + acc)


if __name__ == "__main__":
    expected = work()
    print("layer", numba.threading_layer(), flush=True)

    pid = os.fork()
    if pid == 0:
        os._exit(0 if abs(work() - expected) < 1e-9 else 3)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, f"forked child ended with status {status}"
    print("fork ok", flush=True)

    for method in ("fork", "spawn"):
        with mp.get_context(method).Pool(2) as pool:
            got = pool.map_async(work, [0, 0, 0, 0]).get(timeout=120)
        assert all(abs(x - expected) < 1e-9 for x in got), (method, got, expected)
        print(method, "pool ok", flush=True)
"""

# Four Python threads calling parallel kernels at once, compared with one thread's results.
_THREADS_SCRIPT = r"""
import threading
import numpy as np
import numba
import emdtree

numba.set_num_threads(2)  # EMDTREE_PARALLEL_MIN_WORK=0: every call takes its parallel kernel
rng = np.random.default_rng(1)
tree = emdtree.Tree.from_parents([-1, 0, 0, 1, 1, 2, 2], [0, 1, 2, 1, 1, 3, 1], bins=[3, 4, 5, 6])
X = rng.random((120, tree.n_bins))
X /= X.sum(axis=1, keepdims=True)

def run():
    return (emdtree.pairwise(X, tree=tree, n_threads=2), emdtree.emd_value_and_grad(X, X[::-1], tree, rho=2))

expected = run()
failures = []

def worker():
    try:
        for _ in range(20):
            d, (v, g) = run()
            if not (np.array_equal(d, expected[0]) and np.array_equal(v, expected[1][0])
                    and np.array_equal(g, expected[1][1])):
                failures.append("different result")
    except Exception as exc:
        failures.append(repr(exc))

threads = [threading.Thread(target=worker) for _ in range(4)]
for t in threads:
    t.start()
for t in threads:
    t.join()
assert not failures, failures
print("layer", numba.threading_layer())
"""


def _run(code: str, env_extra: dict[str, str], tmp_path: Path, timeout: float = 300):
    """Run ``code`` as a script file (spawned pool workers import it by path)."""
    script = tmp_path / "script.py"
    script.write_text(code)
    env = dict(os.environ, EMDTREE_PARALLEL_MIN_WORK="0", **env_extra)
    return subprocess.run([sys.executable, str(script)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


def _skip_if_layer_missing(result, layer):
    if result.returncode != 0 and "No threading layer could be loaded" in result.stderr:
        pytest.skip(f"Numba's {layer} threading layer is not available here")


@pytest.mark.parametrize("layer", LAYERS)
def test_fork_and_pools_after_parallel_calls(layer, tmp_path):
    if sys.platform == "win32":
        pytest.skip("no fork on Windows")
    result = _run(_FORK_SCRIPT, {"NUMBA_THREADING_LAYER": layer}, tmp_path)
    _skip_if_layer_missing(result, layer)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-4000:]
    assert f"layer {layer}" in result.stdout, out[-2000:]
    for step in ("fork ok", "fork pool ok", "spawn pool ok"):
        assert step in result.stdout, out[-4000:]


@pytest.mark.parametrize("layer", LAYERS)
def test_python_threads_under_every_threading_layer(layer, tmp_path):
    result = _run(_THREADS_SCRIPT, {"NUMBA_THREADING_LAYER": layer}, tmp_path)
    _skip_if_layer_missing(result, layer)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    assert f"layer {layer}" in result.stdout


def test_rank_kernels_serial_and_parallel_agree(serial_and_parallel):
    import numpy as np

    from emdtree.evaluation import chunks as _metric_chunks

    rng = np.random.default_rng(3)
    scores = rng.random((300, 70))
    scores[:, 5] = scores[:, 6]  # ties go to the lower index in both
    labels = rng.integers(0, 70, 300)
    serial, parallel = serial_and_parallel(lambda: _metric_chunks.ranks(scores, labels, 4))
    for a, b in zip(serial, parallel):
        np.testing.assert_array_equal(a, b)


def _unwritable_copy(tmp_path: Path) -> Path:
    """A writable copy of the package, with a HOME where no cache folder can be created.

    A HOME that is a plain file cannot hold a cache folder, even for root, who may
    write to read-only directories. The package's own folders stay writable: the
    kernels must still not be cached there.
    """
    dest = tmp_path / "site"
    shutil.copytree(ROOT / "emdtree", dest / "emdtree",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.nbi", "*.nbc"))
    (tmp_path / "home").write_text("")
    return dest


def _files(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*") if p.is_file()}


_READ_ONLY_SCRIPT = (
    "import warnings, numpy as np\n"
    "with warnings.catch_warnings(record=True) as caught:\n"
    "    warnings.simplefilter('always')\n"
    "    import emdtree\n"
    "    from emdtree import metrics\n"
    "    from emdtree.kernels import jit\n"
    "    assert emdtree.__file__.startswith(%r), emdtree.__file__\n"
    "    v = emdtree.emd([[1.0, 0, 0]], [[0, 0, 1.0]])\n"
    "    d = emdtree.pairwise(np.eye(3))\n"
    "    acc = metrics.topk_accuracy(np.eye(3), [0, 1, 2], k=1)\n"
    "assert v[0] == 2.0 and d[0, 2] == 2.0 and acc == 1.0, (v, d, acc)\n"
    "ours = [w for w in caught if 'emdtree' in str(w.message)]\n"
    "print('warnings', len(ours), [w.category.__name__ for w in ours])\n"
    "print(ours[0].message if ours else '')\n"
    "print('location', jit.cache_location())\n"
)


@pytest.mark.parametrize("numba_cache_dir", [False, True], ids=["no NUMBA_CACHE_DIR", "unwritable one"])
def test_read_only_install_computes_with_one_warning(tmp_path, numba_cache_dir):
    site = _unwritable_copy(tmp_path)
    before = _files(site)
    env = {"HOME": str(tmp_path / "home"), "XDG_CACHE_HOME": str(tmp_path / "home"),
           "PYTHONDONTWRITEBYTECODE": "1", "PYTHONPATH": str(site)}
    if not numba_cache_dir:
        env["EMDTREE_JIT"] = "eager"  # the kernels themselves run, compiled in memory
    else:
        env["NUMBA_CACHE_DIR"] = str(tmp_path / "home" / "numba")  # under a file: cannot be created
    env_clean = {k: v for k, v in os.environ.items() if k not in ("NUMBA_CACHE_DIR", "LOCALAPPDATA")}
    result = subprocess.run([sys.executable, "-c", _READ_ONLY_SCRIPT % str(site)], cwd=site,
                            env=dict(env_clean, **env), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    assert "warnings 1 ['NoKernelCacheWarning']" in result.stdout, result.stdout
    assert "NUMBA_CACHE_DIR" in result.stdout
    assert "location none: compiled in memory in each process" in result.stdout, result.stdout
    # no fallback to the package's own folders, although they can be written
    assert _files(site) == before, sorted(str(p) for p in _files(site) - before)
