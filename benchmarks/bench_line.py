"""``emdtree.wasserstein_1d`` against a loop of ``scipy.stats.wasserstein_distance`` calls.

512 pairs of 1,000 samples each (normal positions, the second distribution
shifted and wider), with uniform random weights and without weights. emdtree
takes the whole batch in one call; SciPy is called once per pair (it has no
batch form); POT's ``ot.wasserstein_1d``, when installed, takes the batch
with the pairs along its second axis. Each method is timed by interleaved
samples (``_common.Timer``); the table gives the median time per batch, the
ratio to emdtree, and the largest relative difference to SciPy's values.
The value and gradient (``wasserstein_1d_value_and_grad``) are timed too.

Run from the repository root::

    python benchmarks/bench_line.py            # about 30 s
    python benchmarks/bench_line.py --quick    # a few seconds
"""

from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):  # see bench_core.py
    os.environ.setdefault(_var, "1")
for _framework in ("PYTORCH", "JAX", "TENSORFLOW", "CUPY"):  # POT's NumPy backend is all that is used
    os.environ.setdefault(f"POT_BACKEND_DISABLE_{_framework}", "1")

import argparse  # noqa: E402
import sys  # noqa: E402

import numpy as np  # noqa: E402
import scipy.stats  # noqa: E402

import emdtree  # noqa: E402

from _common import Timer, fmt_ms, machine_info, print_machine, print_table, write_json  # noqa: E402

try:
    import ot
except ImportError:  # POT is optional
    ot = None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=512)
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=15, help="timing samples per method (at most)")
    parser.add_argument("--max-seconds", type=float, default=4.0, help="time budget per method")
    parser.add_argument("--quick", action="store_true", help="few timing samples")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, seconds: checks the script runs")
    args = parser.parse_args(argv)
    if args.smoke:
        args.quick, args.pairs, args.samples = True, 8, 50
    if args.quick:
        args.repeat, args.max_seconds = 3, 0.5

    rng = np.random.default_rng(0)
    b, n = args.pairs, args.samples
    u = rng.normal(size=(b, n))
    v = rng.normal(0.5, 1.5, size=(b, n))
    uw, vw = rng.random((b, n)), rng.random((b, n))

    info = machine_info()
    print_machine(info)
    print(f"{b} pairs of {n} samples; times per batch (median)\n")
    timer = Timer(repeats=args.repeat, min_sample_s=2e-3, max_total_s=args.max_seconds)
    results = []
    for weighted in (True, False):
        w = (uw, vw) if weighted else (None, None)
        fns = {
            "emdtree.wasserstein_1d": lambda w=w: emdtree.wasserstein_1d(u, v, *w),
            "emdtree value and grad": lambda w=w: emdtree.wasserstein_1d_value_and_grad(u, v, *w),
            "scipy, one call per pair": lambda w=w: [
                scipy.stats.wasserstein_distance(u[i], v[i], None if w[0] is None else w[0][i],
                                                 None if w[1] is None else w[1][i]) for i in range(b)],
        }
        if ot is not None:
            ow = (uw.T / uw.sum(axis=1), vw.T / vw.sum(axis=1)) if weighted else (None, None)
            fns["ot.wasserstein_1d (batch)"] = lambda ow=ow: ot.wasserstein_1d(u.T, v.T, *ow, p=1)
        timed = timer.run(fns)
        reference = np.array([fns["scipy, one call per pair"]()]).ravel()
        values = {
            "emdtree.wasserstein_1d": emdtree.wasserstein_1d(u, v, *w),
            "emdtree value and grad": emdtree.wasserstein_1d_value_and_grad(u, v, *w)[0],
            "scipy, one call per pair": reference,
        }
        if ot is not None:
            values["ot.wasserstein_1d (batch)"] = np.asarray(fns["ot.wasserstein_1d (batch)"]())
        base = timed["emdtree.wasserstein_1d"]["median_ms"]
        for name, t in timed.items():
            diff = float(np.max(np.abs(values[name] - reference) / np.abs(reference)))
            results.append({"weights": "random" if weighted else "none", "method": name,
                            "batch_ms": t["median_ms"], "x_emdtree": t["median_ms"] / base,
                            "max_rel_diff_to_scipy": diff, **{k: t[k] for k in ("p10_ms", "p90_ms")}})

    print_table(["weights", "method", "ms per batch", "x emdtree", "rel. diff to SciPy"],
                [[r["weights"], r["method"], fmt_ms(r["batch_ms"]), f"{r['x_emdtree']:.1f}",
                  f"{r['max_rel_diff_to_scipy']:.1e}"] for r in results], right={2, 3, 4})
    if args.json:
        write_json(args.json, {"machine": info, "pairs": b, "samples": n, "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
