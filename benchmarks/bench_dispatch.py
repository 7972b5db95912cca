"""What the array dispatch costs: each library's arrays through the public API.

Two measurements, side by side in one run:

* **tiny**: one pair of 10-bin histograms, ``emdtree.emd(p, q)`` (float64).
  For NumPy this is the whole per-call cost of the API; the dispatch test
  itself (``_dispatch.is_host``) is timed alone. CPU torch tensors pay for
  the zero-copy views in and out; JAX and array-api-strict arrays run the
  Array-API implementation.
* **batch**: EMD^2 value and gradient on the ImageNet WordNet tree (1371
  nodes), batch 512, float32: NumPy and CPU torch through the Numba
  kernels, JAX through the Array-API implementation under ``jax.jit``.

Run ``python benchmarks/bench_dispatch.py --quick`` (about 20 s) or with
``--json PATH``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from _common import Timer, as_dtype, machine_info, print_machine, print_table, softmax_rows, write_json

import emdtree
from emdtree.engine import dispatch as _dispatch


def _libraries():
    out = {"numpy": np}
    for name in ("torch", "jax.numpy", "array_api_strict"):
        try:
            out[name] = __import__(name, fromlist=["_"])
        except ImportError:
            continue
    return out


def _convert(lib, name, a):
    if name == "numpy":
        return a
    if name == "torch":
        return lib.from_numpy(a)
    return lib.asarray(a)


def tiny(timer: Timer, libs: dict) -> list[dict]:
    p = np.full(10, 0.1)
    q = np.zeros(10)
    q[::2] = 0.2
    fns = {"numpy: is_host check alone": lambda: _dispatch.is_host(p, q)}
    for name, lib in libs.items():
        a, b = _convert(lib, name, p), _convert(lib, name, q)
        fns[f"{name}: emd(p, q)"] = lambda a=a, b=b: emdtree.emd(a, b)
    timed = timer.run(fns)
    return [{"case": name, "median_us": t["median_ms"] * 1e3, "p10_us": t["p10_ms"] * 1e3,
             "p90_us": t["p90_ms"] * 1e3} for name, t in timed.items()]


def batch(timer: Timer, libs: dict, n_rows: int) -> list[dict]:
    tree = emdtree.datasets.imagenet_wordnet()
    rng = np.random.default_rng(0)
    p = as_dtype(softmax_rows(rng, n_rows, tree.n_bins), np.float32)
    q = as_dtype(softmax_rows(rng, n_rows, tree.n_bins, scale=1.0), np.float32)
    fns = {}
    for name, lib in libs.items():
        a, b = _convert(lib, name, p), _convert(lib, name, q)
        if name == "jax.numpy":
            import jax

            f = jax.jit(lambda x, y: emdtree.emd_value_and_grad(x, y, tree, rho=2.0))
            fns["jax.numpy (jit)"] = lambda a=a, b=b, f=f: jax.block_until_ready(f(a, b))
        else:
            fns[name] = lambda a=a, b=b: emdtree.emd_value_and_grad(a, b, tree, rho=2.0)
    timed = timer.run(fns)
    base = timed["numpy"]["median_ms"]
    return [{"case": name, "median_ms": t["median_ms"], "p10_ms": t["p10_ms"], "p90_ms": t["p90_ms"],
             "x_numpy": t["median_ms"] / base} for name, t in timed.items()]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer samples (about 20 s)")
    ap.add_argument("--json", metavar="PATH", help="also write the results and machine info as JSON")
    ap.add_argument("--batch", type=int, default=512, help="rows of the batch measurement (default 512)")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, seconds: checks the script runs")
    args = ap.parse_args(argv)
    if args.smoke:
        args.quick, args.batch = True, 16
    info = machine_info()
    print_machine(info)
    libs = _libraries()
    start = time.perf_counter()
    repeats = 3 if args.smoke else 30 if args.quick else 200
    tiny_s = 0.05 if args.smoke else 0.5 if args.quick else 2.0
    tiny_rows = tiny(Timer(repeats, min_sample_s=2e-3, max_total_s=tiny_s), libs)
    print("\nOne pair of 10-bin histograms, emdtree.emd(p, q), float64 (microseconds per call)")
    print_table(["case", "median", "p10", "p90"],
                [[r["case"], f"{r['median_us']:.1f}", f"{r['p10_us']:.1f}", f"{r['p90_us']:.1f}"]
                 for r in tiny_rows], right={1, 2, 3})
    batch_s = 0.1 if args.smoke else 1.0 if args.quick else 4.0
    batch_rows = batch(Timer(repeats // 2, min_sample_s=0.0, max_total_s=batch_s), libs,
                       args.batch)
    print(f"\nImageNet tree, batch {args.batch}, float32, EMD^2 value + gradient (ms per call)")
    print_table(["library", "median", "p10", "p90", "x numpy"],
                [[r["case"], f"{r['median_ms']:.3f}", f"{r['p10_ms']:.3f}", f"{r['p90_ms']:.3f}",
                  f"{r['x_numpy']:.1f}"] for r in batch_rows], right={1, 2, 3, 4})
    print(f"\n({time.perf_counter() - start:.0f} s)")
    if args.json:
        write_json(args.json, {"machine": info, "tiny": tiny_rows, "batch": batch_rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
