"""Helpers shared by the benchmark scripts: inputs, timing, machine description."""

from __future__ import annotations

import contextlib
import datetime
import importlib.metadata
import json
import os
import platform
import time
from typing import Callable, Iterator

import numpy as np

# Benchmarks time the compiled kernels: no NumPy pass for small calls
# (emdtree.engine.tiers), whatever their size.
os.environ.setdefault("EMDTREE_JIT", "eager")


# ----------------------------------------------------------------------------- inputs

def softmax_rows(rng: np.random.Generator, n_rows: int, n_bins: int, scale: float = 2.0) -> np.ndarray:
    """Softmax of Gaussian logits (standard deviation ``scale``), float64, rows sum to 1."""
    logits = rng.standard_normal((n_rows, n_bins)) * scale
    logits -= logits.max(axis=1, keepdims=True)
    p = np.exp(logits)
    return p / p.sum(axis=1, keepdims=True)


def random_rows(rng: np.random.Generator, n_rows: int, n_bins: int) -> np.ndarray:
    """Uniform random histograms, float64, rows sum to 1."""
    q = rng.random((n_rows, n_bins))
    return q / q.sum(axis=1, keepdims=True)


def one_hot_rows(rng: np.random.Generator, n_rows: int, n_bins: int) -> np.ndarray:
    """One-hot rows at uniformly random bins, float64."""
    q = np.zeros((n_rows, n_bins))
    q[np.arange(n_rows), rng.integers(0, n_bins, n_rows)] = 1.0
    return q


def as_dtype(a: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """``a`` in ``dtype``, each row rescaled in that dtype so that its total is as close to 1 as it gets."""
    out = np.ascontiguousarray(a, dtype=dtype)
    out /= out.sum(axis=1, keepdims=True, dtype=np.float64).astype(dtype)
    return out


def random_binary_tree(rng: np.random.Generator, n_tips: int) -> tuple[np.ndarray, np.ndarray]:
    """Parents and branch lengths of a random rooted binary tree: tips ``0..n_tips-1``,
    internal nodes made by joining two random subtrees until one is left (the root)."""
    n = 2 * n_tips - 1
    parents = np.full(n, -1, dtype=np.int64)
    active = list(range(n_tips))
    for node in range(n_tips, n):
        for _ in range(2):
            i = int(rng.integers(len(active)))
            active[i], active[-1] = active[-1], active[i]
            parents[active.pop()] = node
        active.append(node)
    lengths = rng.uniform(0.0, 1.0, n)
    lengths[-1] = 0.0
    return parents, lengths


# ----------------------------------------------------------------------------- timing

class Timer:
    """Interleaved timing of several callables.

    Every callable is called twice to warm up (Numba compiles or loads its
    cache on the first call), then the number of calls per sample is chosen
    so that one sample lasts at least ``min_sample_s``. Samples are taken
    round-robin (one sample of each callable in turn, the order rotated
    every round), so that a change in the load of a shared machine affects
    all of them alike. A callable whose samples take long gets fewer of
    them (at least ``min_repeats``) so that it uses about ``max_total_s``.
    """

    def __init__(self, repeats: int, min_sample_s: float = 2e-3, max_total_s: float = 2.0,
                 min_repeats: int = 3, pause_s: float = 0.0) -> None:
        self.repeats = repeats
        self.min_sample_s = min_sample_s
        self.max_total_s = max_total_s
        self.min_repeats = min_repeats
        self.pause_s = pause_s

    def run(self, fns: dict[str, Callable[[], object]]) -> dict[str, dict]:
        plan = {}
        for name, fn in fns.items():
            fn()
            t0 = time.perf_counter()
            fn()
            once = max(time.perf_counter() - t0, 1e-7)
            inner = 1 if self.min_sample_s <= 0 else max(1, int(np.ceil(self.min_sample_s / once)))
            reps = max(self.min_repeats, min(self.repeats, int(self.max_total_s / (once * inner))))
            plan[name] = (fn, inner, reps)
        samples: dict[str, list[float]] = {name: [] for name in fns}
        names = list(fns)
        for r in range(max(reps for _, _, reps in plan.values())):
            for name in names[r % len(names):] + names[:r % len(names)]:
                fn, inner, reps = plan[name]
                if len(samples[name]) >= reps:
                    continue
                if self.pause_s:
                    time.sleep(self.pause_s)
                t0 = time.perf_counter()
                for _ in range(inner):
                    fn()
                samples[name].append((time.perf_counter() - t0) / inner)
        return {name: summarize(samples[name], plan[name][1]) for name in names}


def summarize(samples: list[float], inner: int = 1) -> dict:
    s = np.asarray(samples) * 1e3
    return {
        "median_ms": float(np.median(s)),
        "p10_ms": float(np.percentile(s, 10)),
        "p90_ms": float(np.percentile(s, 90)),
        "n_samples": int(s.size),
        "calls_per_sample": int(inner),
    }


@contextlib.contextmanager
def num_threads(n: int) -> Iterator[None]:
    """Temporarily set Numba's thread count."""
    import numba

    old = numba.get_num_threads()
    numba.set_num_threads(n)
    try:
        yield
    finally:
        numba.set_num_threads(old)


@contextlib.contextmanager
def kernel_path_probe() -> Iterator[list[str]]:
    """Record which of emdtree's CPU value/gradient kernels the public API calls.

    Yields a list that receives ``"serial"`` or ``"parallel"`` (prefixed with
    ``"chain "`` for the chain fast path) for every call made while the
    context is active. Kernels not found under these names are not recorded.
    """
    from emdtree.kernels import chain, cpu

    seen: list[str] = []
    originals = []
    for module, prefix, tag in ((cpu, "value_grad", ""), (chain, "chain_value_grad", "chain ")):
        for label in ("serial", "parallel"):
            name = f"{prefix}_{label}"
            fn = getattr(module, name, None)
            if fn is None:
                continue
            originals.append((module, name, fn))

            def wrapper(*args, _fn=fn, _label=tag + label, **kwargs):
                seen.append(_label)
                return _fn(*args, **kwargs)

            setattr(module, name, wrapper)
    try:
        yield seen
    finally:
        for module, name, fn in originals:
            setattr(module, name, fn)


def kernel_path(call: Callable[[], object]) -> str:
    """``"serial"``, ``"parallel"`` or ``"?"``: the kernel that one call of ``call`` uses."""
    try:
        with kernel_path_probe() as seen:
            call()
    except ImportError:
        return "?"
    return "/".join(sorted(set(seen))) or "?"


# ----------------------------------------------------------------------------- machine

def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# CPU names Numba accepts (NUMBA_CPU_NAME) and the widest vector ISA LLVM generates for them
_AVX512_CPUS = ("skylake-avx512", "cascadelake", "cooperlake", "cannonlake", "icelake", "tigerlake",
                "rocketlake", "sapphirerapids", "graniterapids", "emeraldrapids", "znver4", "znver5",
                "knl", "knm", "x86-64-v4")
_AVX2_CPUS = ("haswell", "broadwell", "skylake", "alderlake", "raptorlake", "meteorlake", "arrowlake",
              "lunarlake", "gracemont", "znver1", "znver2", "znver3", "bdver4", "x86-64-v3")


def _isa_of_features(features: dict) -> str:
    """The widest vector ISA in an LLVM feature map (name -> enabled)."""
    on = {name for name, enabled in features.items() if enabled}
    if "avx512f" in on:
        return "AVX-512"
    if "avx2" in on:
        return "AVX2"
    if "avx" in on:
        return "AVX"
    if "sve2" in on or "sve" in on:
        return "SVE2" if "sve2" in on else "SVE"
    if "neon" in on or platform.machine().lower() in ("arm64", "aarch64"):
        return "NEON"
    if "sse2" in on:
        return "SSE2"
    return "unknown"


def _isa_of_cpu_name(name: str) -> str | None:
    name = name.lower()
    if name.startswith(_AVX512_CPUS):
        return "AVX-512"
    if name.startswith(_AVX2_CPUS):
        return "AVX2"
    if name in ("generic", "x86-64", "x86-64-v2"):
        return "SSE2" if name != "x86-64-v2" else "SSE4.2"
    return None


def vector_isa() -> dict:
    """The host CPU's widest vector ISA, and the one Numba generates code for.

    Numba compiles for ``NUMBA_CPU_NAME`` (default: the host CPU) with
    ``NUMBA_CPU_FEATURES`` (default: the host's features, even when
    ``NUMBA_CPU_NAME`` names another CPU). So ``NUMBA_CPU_NAME=haswell`` alone
    still gives AVX-512 code on an AVX-512 host;
    ``NUMBA_CPU_NAME=haswell NUMBA_CPU_FEATURES=-avx512f`` gives AVX2 code.
    """
    import numba

    try:
        import llvmlite.binding as llvm

        host_features = dict(llvm.get_host_cpu_features().items())
        host_name = llvm.get_host_cpu_name()
    except Exception:  # an LLVM without the host queries
        host_features, host_name = {}, "unknown"
    host = _isa_of_features(host_features)
    cpu_name = numba.config.CPU_NAME
    cpu_features = numba.config.CPU_FEATURES
    settings = " ".join(f"{var}={value}" for var, value in (("NUMBA_CPU_NAME", cpu_name),
                                                            ("NUMBA_CPU_FEATURES", cpu_features))
                        if value is not None)
    if cpu_features is None:  # the host's features, whatever the CPU name
        used = host
        note = (f"{settings} sets the scheduling model only: Numba keeps the host's features"
                if cpu_name and cpu_name != "host" else None)
    else:
        flags = {f[1:]: f[0] == "+" for f in str(cpu_features).split(",") if f[:1] in ("+", "-")}
        used = _isa_of_cpu_name(cpu_name if cpu_name and cpu_name != "host" else host_name) or "SSE2"
        if flags.get("avx512f"):
            used = "AVX-512"
        elif flags.get("avx2") and used != "AVX-512":
            used = "AVX2"
        if used == "AVX-512" and flags.get("avx512f") is False:
            used = "AVX2"
        if used == "AVX2" and flags.get("avx2") is False:
            used = "AVX" if flags.get("avx") is not False else "SSE4.2"
        note = settings
    try:  # the library's own reading of the width its kernels are compiled for
        from emdtree.kernels import lanes

        kernels = lanes.vector_isa()
    except (ImportError, AttributeError):
        kernels = None
    return {"host": host, "host_cpu_name": host_name, "used": used, "override": note, "kernels": kernels}


def isa_text(isa: dict) -> str:
    """``AVX-512``, or ``AVX2 (NUMBA_CPU_NAME=haswell NUMBA_CPU_FEATURES=-avx512f; the host has AVX-512)``."""
    if isa["override"] is None:
        return isa["used"]
    return f"{isa['used']} ({isa['override']}; the host has {isa['host']})"


def machine_info() -> dict:
    import numba

    import emdtree

    n_threads = numba.get_num_threads()  # also starts Numba's threading layer
    try:
        layer = numba.threading_layer()
    except ValueError:
        layer = None
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = None
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpu_model": cpu_model(),
        "vector_isa": vector_isa(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": affinity,
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "emdtree": emdtree.__version__,
        "numpy": np.__version__,
        "numba": numba.__version__,
        "scipy": _version("scipy"),
        "pot": _version("pot") or _version("POT"),
        "numba_threading_layer": layer,
        "numba_max_threads": numba.config.NUMBA_NUM_THREADS,
        "numba_default_threads": n_threads,
    }


def print_machine(info: dict) -> None:
    isa = info.get("vector_isa")
    llvm_name = f" (LLVM: {isa['host_cpu_name']})" if isa else ""
    print(f"CPU: {info['cpu_model']}{llvm_name}, {info['cpus_usable']} usable of {info['cpu_count']}, "
          f"vector ISA {isa_text(isa) if isa else 'unknown'}; "
          f"load average {', '.join(f'{x:.2f}' for x in info['load_average'] or [])}")
    if isa and isa.get("kernels"):
        print(f"emdtree's kernels are compiled for {isa['kernels']}")
    print(f"emdtree {info['emdtree']}, numpy {info['numpy']}, numba {info['numba']} "
          f"(threading layer {info['numba_threading_layer']}, up to {info['numba_max_threads']} threads), "
          f"scipy {info['scipy']}, POT {info['pot'] or 'not installed'}, Python {info['python']}")


def write_json(path: str, data: dict) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2)
        f.write("\n")
    print(f"wrote {path}")


def fmt_ms(ms: float) -> str:
    if not np.isfinite(ms):
        return "-"
    if ms >= 100:
        return f"{ms:.0f}"
    if ms >= 10:
        return f"{ms:.1f}"
    if ms >= 1:
        return f"{ms:.2f}"
    return f"{ms:.3f}"


def print_table(headers: list[str], rows: list[list[str]], right: set[int] = frozenset()) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]

    def line(cells):
        cols = (c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))
        return "  ".join(cols).rstrip()

    print(line(headers))
    print(line(["-" * w for w in widths]))
    for r in rows:
        print(line(r))
