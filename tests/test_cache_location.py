"""Where Numba caches emdtree's kernels: never inside the installed package.

Files that Numba writes next to the modules are unknown to ``pip uninstall``,
which leaves them, and the leftover ``emdtree`` folder (a namespace package)
then hides a later install. The cache goes to ``NUMBA_CACHE_DIR`` when set, else
to a per-user folder keyed by emdtree's version, Python's version and the
installation's path. Each case runs a fresh interpreter on a copy of the
package, with its own cache folders, and calls a kernel (``EMDTREE_JIT=eager``).
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import emdtree
from emdtree.kernels import jit

ROOT = Path(__file__).resolve().parents[1]

# one small kernel (the chain's value kernel) compiled or loaded, and where it came from
_CALL = r"""
import emdtree
from emdtree.kernels import chain, jit
assert emdtree.__file__.startswith(%(site)r), emdtree.__file__
v = emdtree.emd([[1.0, 0, 0]], [[0, 0, 1.0]])
assert v[0] == 2.0, v
print("hits", sum(chain.chain_value_grad_serial._cache_hits.values()))
print("location", jit.cache_location())
"""


def _copy_package(site: Path) -> Path:
    shutil.copytree(ROOT / "emdtree", site / "emdtree",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.nbi", "*.nbc"))
    return site


def _files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


def _env(tmp_path: Path, site: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("NUMBA_CACHE_DIR", "XDG_CACHE_HOME", "PYTHONPATH", "LOCALAPPDATA")}
    env.update(HOME=str(tmp_path / "home"), PYTHONPATH=str(site), EMDTREE_JIT="eager",
               PYTHONDONTWRITEBYTECODE="1")
    if sys.platform == "win32":
        env["LOCALAPPDATA"] = str(tmp_path / "home" / "AppData" / "Local")
    env.update(extra)
    return env


def _call(site: Path, env: dict[str, str], tmp_path: Path) -> str:
    result = subprocess.run([sys.executable, "-c", _CALL % {"site": str(site)}], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    return result.stdout


def _hits(out: str) -> int:
    return int(next(line.split()[1] for line in out.splitlines() if line.startswith("hits ")))


def _cache_files(folder: Path) -> set[str]:
    return {p.name for p in folder.rglob("*") if p.suffix in (".nbi", ".nbc")} if folder.exists() else set()


def test_kernels_write_nothing_under_the_package_and_cache_per_user(tmp_path):
    site = _copy_package(tmp_path / "site")
    (tmp_path / "home").mkdir()
    before = _files(site)
    env = _env(tmp_path, site, XDG_CACHE_HOME=str(tmp_path / "xdg"))
    first = _call(site, env, tmp_path)
    assert _files(site) == before, sorted(_files(site) - before)
    # the per-user folder: $XDG_CACHE_HOME/emdtree/numba/<version>-py<XY>-<install path hash>/kernels
    keyed = list((tmp_path / "xdg" / "emdtree" / "numba").iterdir())
    assert len(keyed) == 1, keyed
    version, python, where = keyed[0].name.split("-")
    assert python == f"py{sys.version_info[0]}{sys.version_info[1]}"
    assert version == emdtree.__version__ and len(where) == 12
    assert any(n.startswith("chain.chain_value_grad_serial-") for n in _cache_files(keyed[0] / "kernels"))
    assert not (tmp_path / "home" / ".cache").exists()
    assert _hits(first) == 0 and str(keyed[0]) in first
    # a second process loads the kernel from there, still writing nothing in the package
    second = _call(site, env, tmp_path)
    assert _hits(second) >= 1, second
    assert _files(site) == before


def test_without_xdg_cache_home_the_cache_is_under_home(tmp_path):
    site = _copy_package(tmp_path / "site")
    (tmp_path / "home").mkdir()
    before = _files(site)
    out = _call(site, _env(tmp_path, site, XDG_CACHE_HOME="relative/is/ignored"), tmp_path)
    if sys.platform == "win32":
        root = tmp_path / "home" / "AppData" / "Local" / "emdtree" / "Cache" / "numba"
    elif sys.platform == "darwin":
        root = tmp_path / "home" / "Library" / "Caches" / "emdtree" / "numba"
    else:
        root = tmp_path / "home" / ".cache" / "emdtree" / "numba"
    assert _cache_files(root), out
    assert _files(site) == before
    assert not (tmp_path / "relative").exists()


def test_numba_cache_dir_wins(tmp_path):
    site = _copy_package(tmp_path / "site")
    (tmp_path / "home").mkdir()
    before = _files(site)
    env = _env(tmp_path, site, XDG_CACHE_HOME=str(tmp_path / "xdg"),
               NUMBA_CACHE_DIR=str(tmp_path / "numba"))
    out = _call(site, env, tmp_path)
    assert _cache_files(tmp_path / "numba"), out
    assert not _cache_files(tmp_path / "xdg") and not _cache_files(tmp_path / "home")
    assert f"{tmp_path / 'numba'} (NUMBA_CACHE_DIR)" in out
    assert _files(site) == before


def test_two_installations_do_not_share_a_cache_folder(tmp_path):
    script = "from emdtree.kernels import jit; print(jit.cache_dir())"
    folders = []
    for name in ("a", "b"):
        site = _copy_package(tmp_path / name)
        env = _env(tmp_path, site, XDG_CACHE_HOME=str(tmp_path / "xdg"))
        result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True,
                                text=True, timeout=120)
        assert result.returncode == 0, result.stderr[-3000:]
        folders.append(Path(result.stdout.strip()))
    assert folders[0] != folders[1]
    assert folders[0].parent == folders[1].parent == tmp_path / "xdg" / "emdtree" / "numba"


def test_cache_root_follows_the_platform_rules(monkeypatch, tmp_path):
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert jit.cache_root() == tmp_path / "xdg" / "emdtree" / "numba"
    monkeypatch.setenv("XDG_CACHE_HOME", "")
    assert jit.cache_root() == tmp_path / ".cache" / "emdtree" / "numba"
    monkeypatch.setattr(sys, "platform", "darwin")
    assert jit.cache_root() == tmp_path / "Library" / "Caches" / "emdtree" / "numba"
    monkeypatch.setattr(sys, "platform", "win32")
    monkeypatch.setenv("LOCALAPPDATA", str(tmp_path / "local"))
    assert jit.cache_root() == tmp_path / "local" / "emdtree" / "Cache" / "numba"
    version, python, where = jit.cache_dir().name.split("-")
    assert (version, python) == (emdtree.__version__, f"py{sys.version_info[0]}{sys.version_info[1]}")
    assert jit.cache_dir().parent == jit.cache_root()


def _build_wheel(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "setup.cfg", "README.rst", "LICENSE"):
        if (ROOT / name).exists():
            shutil.copy2(ROOT / name, src / name)
    _copy_package(src)
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                             "--no-index", "-q", "-w", str(tmp_path / "dist"), str(src)],
                            capture_output=True, text=True, timeout=300)
    wheels = list((tmp_path / "dist").glob("emdtree-*.whl"))
    if result.returncode != 0 or not wheels:
        pytest.skip(f"cannot build a wheel here: {(result.stdout + result.stderr)[-500:]}")
    return wheels[0]


def test_uninstall_leaves_nothing_and_nothing_shadows_a_reinstall(tmp_path):
    """Install a wheel into a site folder, run a kernel (bytecode written, as after a
    pip install), then remove what pip removes: the files of the wheel's RECORD and
    the bytecode of its modules. Nothing of emdtree's may remain."""
    wheel = _build_wheel(tmp_path)
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(site)
        record = next(n for n in zf.namelist() if n.endswith(".dist-info/RECORD"))
        listed = [line.split(",")[0] for line in zf.read(record).decode().splitlines() if line]
    (tmp_path / "home").mkdir()
    env = _env(tmp_path, site, XDG_CACHE_HOME=str(tmp_path / "xdg"))
    del env["PYTHONDONTWRITEBYTECODE"]
    _call(site, env, tmp_path)

    removable = {site / name for name in listed}
    removable |= {Path(importlib.util.cache_from_source(str(p)))
                  for p in list(removable) if p.suffix == ".py"}
    for path in removable:
        path.unlink(missing_ok=True)
    left = sorted(str(p.relative_to(site)) for p in site.rglob("*") if p.is_file())
    assert left == [], left[:20]
    for folder in sorted((p for p in site.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
        folder.rmdir()
    assert list(site.iterdir()) == []
    # a leftover folder would be found as a namespace package, ahead of a later install
    assert importlib.machinery.PathFinder.find_spec("emdtree", [str(site)]) is None
    assert _cache_files(tmp_path / "xdg" / "emdtree" / "numba")  # the kernels were cached, elsewhere


def test_info_prints_the_cache_folder(tmp_path):
    site = _copy_package(tmp_path / "site")
    (tmp_path / "home").mkdir()
    env = _env(tmp_path, site, XDG_CACHE_HOME=str(tmp_path / "xdg"))
    result = subprocess.run([sys.executable, "-m", "emdtree", "info"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    line = next(line for line in result.stdout.splitlines() if line.startswith("Numba cache"))
    assert f"{tmp_path / 'xdg' / 'emdtree' / 'numba'}{os.sep}" in line and "per-user cache" in line, line
    assert f"delete {tmp_path / 'xdg' / 'emdtree' / 'numba'} to clear it" in line, line


def test_the_cuda_kernels_cache_outside_the_package_too():
    """numba-cuda's kernels are given the same locations as the CPU kernels (not their module's folder)."""
    pytest.importorskip("numba.cuda.dispatcher")
    from numba import cuda

    if cuda.config.ENABLE_CUDASIM:
        pytest.skip("the CUDA simulator caches nothing")
    from emdtree.kernels import cuda as kernels
    from emdtree.kernels import jit

    for name in ("fill_zero", "value_grad_shared_f32"):
        path = Path(getattr(kernels, name)._cache._cache_path).resolve()
        assert jit.PACKAGE_DIR not in path.parents, path
