"""The CPU kernels' tiles are one vector register wide, for the CPU Numba compiles for:
read from the code generator (so NUMBA_CPU_NAME / NUMBA_CPU_FEATURES move it), with
only that CPU's registers in the code, and results that agree with the oracle at
every width."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import llvmlite.binding as ll
import numpy as np
import pytest

from emdtree.kernels import lanes, pure, simd
from numba import types

ROOT = Path(__file__).resolve().parent.parent

X86 = platform.machine().lower() in ("x86_64", "amd64")
HOST_AVX2 = X86 and bool(ll.get_host_cpu_features().get("avx2", False))
x86_only = pytest.mark.skipif(not X86, reason="x86 CPU names and registers")


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("EMDTREE_JIT", "NUMBA_CPU_NAME", "NUMBA_CPU_FEATURES", "NUMBA_DISABLE_JIT")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep)
                                                       if p])
    env.update(extra)
    return env


def run_child(code: str, env: dict[str, str], timeout: int = 600) -> dict:
    out = subprocess.run([sys.executable, "-c", code, str(Path(__file__).parent)], env=env,
                         capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_the_tiles_are_one_vector_wide():
    width = lanes.vector_bytes()
    assert width in (16, 32, 64)
    assert lanes.VECTOR_BYTES == width
    assert simd.tile_lanes(types.float32) == width // 4
    assert simd.tile_lanes(types.float64) == width // 8
    # each transposed tile fills whole rows of the block
    assert lanes.BLOCK % (width // 4) == 0
    assert f"{8 * width}-bit" in lanes.vector_isa()
    # the chain scan stops at 256 bits (faster with AVX-512 too), the stand-ins follow it
    assert lanes.CHAIN_BYTES == min(width, 32)
    assert pure.CHAIN_BYTES == lanes.CHAIN_BYTES


@pytest.mark.parametrize("asm, width", [
    ("vaddps %zmm0, %zmm0, %zmm0", 64), ("vaddps %ymm1, %ymm1, %ymm1", 32), ("addps %xmm0, %xmm1", 16),
])
def test_the_width_is_read_from_the_registers_of_the_probe(asm, width):
    assert lanes._width_of_assembly(asm) == width


WIDTH = r"""
import json
from numba import types
from emdtree.kernels import lanes, simd
print(json.dumps([lanes.vector_bytes(), simd.tile_lanes(types.float32), simd.tile_lanes(types.float64),
                  lanes.vector_isa()]))
"""


@x86_only
@pytest.mark.parametrize("cpu, features, width", [
    ("haswell", "+avx2", 32),  # AVX2 without AVX-512, the common cloud machine
    ("znver3", "+avx2", 32),
    ("skylake-avx512", "+avx512f", 64),
    ("generic", None, 16),  # SSE2 only
])
def test_the_width_follows_the_cpu_that_numba_compiles_for(cpu, features, width):
    # nothing runs for that CPU: the probe is compiled, not called
    extra = {"NUMBA_CPU_NAME": cpu}
    if features is not None:
        extra["NUMBA_CPU_FEATURES"] = features
    got, f32, f64, isa = run_child(WIDTH, child_env(**extra), timeout=120)
    assert (got, f32, f64) == (width, width // 4, width // 8), isa
    assert isa.endswith(f"cpu {cpu}")


REGISTERS = r"""
import json, re, sys
import numpy as np
from numba import njit, types
from emdtree.kernels import cpu
f32 = types.Array(types.float32, 1, "C")
i64 = types.Array(types.int64, 1, "C")
sig = (f32, f32, types.intp, types.intp, types.intp, types.intp, i64, i64, f32, f32, f32, f32)
cpu._load_block.compile(sig)
asm = cpu._load_block.inspect_asm(sig)
out = (f32, f32, types.intp, types.intp, i64, f32)
cpu._store_block.compile(out)
asm += cpu._store_block.inspect_asm(out)
print(json.dumps({"zmm": len(re.findall("%zmm", asm)), "ymm": len(re.findall("%ymm", asm))}))
"""


@x86_only
def test_an_avx2_build_uses_ymm_registers_only(tmp_path):
    # compiled for Haswell (not run): the tiles move in ymm registers, none of AVX-512's zmm
    env = child_env(NUMBA_CPU_NAME="haswell", NUMBA_CPU_FEATURES="+avx2", NUMBA_CACHE_DIR=str(tmp_path))
    regs = run_child(REGISTERS, env)
    assert regs["zmm"] == 0 and regs["ymm"] > 0, regs


AGREE = r"""
import json, sys
import numpy as np
sys.path.insert(0, sys.argv[1])
import emdtree, oracle
from emdtree.kernels import lanes
rng = np.random.default_rng(7)
trees = {"internal": emdtree.Tree.from_parents([-1, 0, 0, 1, 1, 2, 2, 2, 3, 3], np.linspace(0, 2, 10),
                                               bins=[4, 8, 9, 5, 6, 7, 1, 2, 3]),
         "chain": emdtree.Tree.chain(37)}  # tiles and a tail at every width
worst = {}
n = 3 * lanes.BLOCK + 5
for name, t in trees.items():
    par, w, b = t.parents, t.weights, t.bins
    for dtype in (np.float64, np.float32):
        p = rng.random((n, t.n_bins)); p /= p.sum(1, keepdims=True); p = p.astype(dtype)
        q = rng.random((n, t.n_bins)); q /= q.sum(1, keepdims=True); q = q.astype(dtype)
        for rho in (1.0, 2.0):
            v, g = emdtree.emd_value_and_grad(p, q, t, rho=rho)
            want_v = [oracle.emd(p[r], q[r], par, w, b, rho) for r in range(n)]
            want_g = np.array([oracle.grad(p[r], q[r], par, w, b, rho) for r in range(n)])
            key = f"{name} {np.dtype(dtype).name} rho={rho}"
            worst[key + " value"] = float(np.abs(v - want_v).max() / np.abs(want_v).max())
            if rho == 2.0:  # rho = 1: a subgradient where some phi is 0
                worst[key + " grad"] = float(np.abs(g - want_g).max() / np.abs(want_g).max())
        got = emdtree.phi(p, q, t)
        want = np.array([oracle.phi(p[r], q[r], par, b) for r in range(n)])
        worst[f"{name} {np.dtype(dtype).name} phi"] = float(np.abs(got - want).max())
print(json.dumps({"width": lanes.vector_bytes(), "worst": worst}))
"""


@x86_only
@pytest.mark.parametrize("cpu, features, width", [
    pytest.param("haswell", "+avx2", 32,
                 marks=pytest.mark.skipif(not HOST_AVX2, reason="runs AVX2 code: needs an AVX2 CPU")),
    ("generic", None, 16),  # SSE2: 4 float32 lanes and 2 float64 lanes per tile row, on every x86-64
])
def test_the_kernels_agree_with_the_oracle_at_every_width(tmp_path, cpu, features, width):
    extra = {"NUMBA_CPU_NAME": cpu, "NUMBA_CACHE_DIR": str(tmp_path), "EMDTREE_JIT": "eager"}
    if features is not None:
        extra["NUMBA_CPU_FEATURES"] = features
    out = run_child(AGREE, child_env(**extra), timeout=900)
    assert out["width"] == width
    for key, err in out["worst"].items():
        assert err <= (1e-5 if "float32" in key else 1e-12), (key, err)
