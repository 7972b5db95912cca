"""The paper's Figure 3: how close the Sinkhorn distance and its gradient come to the EMD.

For a batch of softmax predictions ``p`` and smooth softmax targets ``q`` on the
ImageNet WordNet tree, and for every lambda, dtype (float64, float32) and
method (``"caffe"``, ``"log"``) of :func:`emdtree.sinkhorn`, one run records
after 1, 2, 5, 10, ... iterations:

* the ratio SD / EMD (median over the pairs whose value is finite), EMD being
  the exact ``emdtree.emd(p, q, tree)``;
* the angle in degrees between Sinkhorn's gradient (centred ``log(u) / lambda``)
  and the EMD's (``emdtree.emd_grad(p, q, tree, rho=1)``), mean over the pairs
  whose gradient is finite;
* the fraction of pairs whose value or gradient is not finite (a float32
  failure), and the median marginal error.

Targets are not one-hot on purpose: with a one-hot target there is a single
coupling, so SD equals the EMD exactly whatever lambda.

The plot (``fig3.png``): (a) SD / EMD and (b) the angle against the iteration
count for a few lambdas, (c) SD / EMD and (d) the angle against lambda after
the last iteration count. Red crosses mark float32 failures.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

import emdtree
from emdtree.distances.sinkhorn import sinkhorn_path
from emdtree.datasets import imagenet_wordnet

from _common import as_dtype, machine_info, print_machine, print_table, softmax_rows, write_json

VARIANTS = [("log", "float64"), ("log", "float32"), ("caffe", "float64"), ("caffe", "float32")]
STYLE = {("log", "float64"): "-", ("log", "float32"): ":", ("caffe", "float64"): "--",
         ("caffe", "float32"): "-."}


def angle_deg(g: np.ndarray, h: np.ndarray) -> np.ndarray:
    """Angle between the rows of ``g`` and ``h``, in degrees (nan for non-finite rows)."""
    g = g.astype(np.float64)
    with np.errstate(invalid="ignore"):
        cos = (g * h).sum(1) / (np.linalg.norm(g, axis=1) * np.linalg.norm(h, axis=1))
    return np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))


def trace(p, q, tree, lam, method, dtype, counts, exact, exact_grad) -> list[dict]:
    out = []
    t0 = time.perf_counter()
    for res in sinkhorn_path(as_dtype(p, dtype), as_dtype(q, dtype), tree, counts, lam=lam, method=method):
        value = np.asarray(res.value, dtype=np.float64)
        finite = np.isfinite(value) & np.all(np.isfinite(res.grad), axis=1)
        ratio = value / exact
        ang = angle_deg(res.grad, exact_grad)
        out.append({
            "n_iter": res.n_iter,
            "sd_over_emd": float(np.median(ratio[np.isfinite(ratio)])) if np.isfinite(ratio).any() else None,
            "angle_deg": float(np.mean(ang[finite])) if finite.any() else None,
            "failed_fraction": float(1 - finite.mean()),
            "marginal_error": float(np.nanmedian(np.asarray(res.marginal_error, dtype=np.float64)))
            if np.isfinite(res.marginal_error).any() else None,
        })
    out[-1]["seconds"] = time.perf_counter() - t0
    return out


def plot(results: dict, lams_iter: list[float], counts: list[int], path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 8.5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for key, label in (("sd_over_emd", "SD / EMD"), ("angle_deg", "angle to EMD gradient (deg)")):
        row = 0 if key == "sd_over_emd" else 1
        ax = axes[row, 0]
        for c, lam in enumerate(lams_iter):
            for variant in VARIANTS:
                pts = results[(lam, *variant)]
                y = [np.nan if e[key] is None or e["failed_fraction"] > 0 else e[key] for e in pts]
                ax.plot(counts, y, STYLE[variant], color=colors[c % len(colors)],
                        label=f"lambda {lam:g}" if variant == VARIANTS[0] else None)
                bad = [n for n, e in zip(counts, pts) if e["failed_fraction"] > 0]
                if bad:  # in the colour of its lambda, with a red edge
                    # stacked by lambda so that failures at the same count stay visible
                    level = _bottom(key) + c * (0.05 if key == "sd_over_emd" else 3.0)
                    ax.plot(bad, [level] * len(bad), "X", color=colors[c % len(colors)],
                            mec="red", ms=9, label=f"{variant[0]} {variant[1]} failed, lambda {lam:g}")
        ax.set_xscale("log")
        ax.set_xlabel("iterations")
        ax.set_ylabel(label)
        ax.set_title(f"({'a' if row == 0 else 'b'}) {label} against iterations")
        ax.legend(fontsize=8, loc="best")
        ax = axes[row, 1]
        lams = sorted({k[0] for k in results})
        for variant in VARIANTS:
            last = [results[(lam, *variant)][-1] for lam in lams]
            y = [np.nan if e[key] is None or e["failed_fraction"] > 0 else e[key] for e in last]
            ax.plot(lams, y, STYLE[variant], marker="o", ms=3, color="k" if variant[0] == "log" else "C3",
                    label=f"{variant[0]} {variant[1]}")
            bad = [lam for lam, e in zip(lams, last) if e["failed_fraction"] > 0]
            if bad:
                ax.plot(bad, [_bottom(key)] * len(bad), "x", color="red", ms=8,
                        label=f"{variant[0]} {variant[1]} failed (nan/inf)")
        ax.set_xscale("log")
        ax.set_xlabel("lambda")
        ax.set_ylabel(label)
        ax.set_title(f"({'c' if row == 0 else 'd'}) {label} after {counts[-1]} iterations")
        ax.legend(fontsize=8, loc="best")
    axes[0, 0].axhline(1.0, color="0.6", lw=0.8)
    axes[0, 1].axhline(1.0, color="0.6", lw=0.8)
    fig.text(0.5, 0.005, "line styles: solid log float64, dotted log float32, dashed caffe float64, "
             "dash-dot caffe float32; crosses: non-finite value or gradient (not plotted as a line)",
             ha="center", fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.02, 1, 0.97))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"wrote {path}")


def _title(batch: int, quick: bool) -> str:
    return (f"Sinkhorn against the exact EMD, ImageNet WordNet tree, {batch} softmax pairs"
            + (" (quick run)" if quick else ""))


def _bottom(key: str) -> float:
    """Where failure markers go: the bottom of the panel's natural range."""
    return 0.0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="8 pairs, up to 100 iterations, 5 lambdas")
    ap.add_argument("--json", metavar="PATH", help="write every number to PATH")
    ap.add_argument("--rst", metavar="PATH", help="write the summary table as reStructuredText to PATH")
    ap.add_argument("--plot-dir", default=None, help="write fig3.png here (default: next to --json, else .)")
    ap.add_argument("--batch", type=int, default=None, help="pairs (default 32, --quick 8)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--from-json", metavar="PATH", help="redraw the plot from a JSON file this script wrote")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, seconds: checks the script runs")
    args = ap.parse_args(argv)
    if args.smoke:
        args.quick, args.batch = True, 2
    if args.from_json:
        import json

        with open(args.from_json, encoding="utf-8") as f:
            data = json.load(f)
        results = {(r["lam"], r["method"], r["dtype"]): r["trace"] for r in data["results"]}
        cfg = data["config"]
        plot(results, [lam for lam in (1.0, 10.0, 100.0) if lam in cfg["lams"]], cfg["iterations"],
             os.path.join(args.plot_dir or os.path.dirname(os.path.abspath(args.from_json)), "fig3.png"),
             _title(cfg["batch"], cfg["quick"]))
        return 0
    batch = args.batch or (8 if args.quick else 32)
    if args.smoke:
        counts, lams = [1, 5], [10.0]
    elif args.quick:
        counts = [1, 2, 5, 10, 20, 50, 100]
        lams = [1.0, 3.0, 10.0, 30.0, 100.0]
    else:
        counts = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000]
        lams = [0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0]
    lams_iter = [10.0] if args.smoke else [1.0, 10.0, 100.0]

    info = machine_info()
    print_machine(info)
    tree = imagenet_wordnet()
    rng = np.random.default_rng(args.seed)
    p = softmax_rows(rng, batch, tree.n_bins, scale=2.0)
    q = softmax_rows(rng, batch, tree.n_bins, scale=3.0)
    exact = emdtree.emd(p, q, tree)
    exact_grad = emdtree.emd_grad(p, q, tree, rho=1)
    print(f"ImageNet WordNet tree, {batch} pairs (softmax predictions and targets), max distance "
          f"{tree.distance_matrix().max():g}; lambdas {lams}; iterations {counts}")
    start = time.perf_counter()
    results = {}
    for lam in lams:
        for method, dt in VARIANTS:
            results[(lam, method, dt)] = trace(p, q, tree, lam, method, np.dtype(dt), counts, exact,
                                               exact_grad)
            print(f"  lambda {lam:g} {method} {dt}: {results[(lam, method, dt)][-1]['seconds']:.1f} s",
                  flush=True)

    headers = ["lambda", "method", "dtype", "SD/EMD", "angle deg", "failed", "marginal err", "seconds"]
    rows = []
    for (lam, method, dt), pts in results.items():
        e = pts[-1]
        first_fail = next((x["n_iter"] for x in pts if x["failed_fraction"] > 0), None)
        rows.append([f"{lam:g}", method, dt,
                     "-" if e["sd_over_emd"] is None else f"{e['sd_over_emd']:.4f}",
                     "-" if e["angle_deg"] is None else f"{e['angle_deg']:.2f}",
                     f"{e['failed_fraction']:.0%}" + (f" (from it {first_fail})" if first_fail else ""),
                     "-" if e["marginal_error"] is None else f"{e['marginal_error']:.1e}",
                     f"{e['seconds']:.1f}"])
    print(f"\nAfter {counts[-1]} iterations "
          "(SD/EMD: median over finite pairs; angle: mean over finite pairs):")
    print_table(headers, rows, right={0, 3, 4, 6, 7})
    failures = [{"lam": lam, "method": m, "dtype": dt,
                 "first_failed_iteration": next(x["n_iter"] for x in pts if x["failed_fraction"] > 0),
                 "failed_fraction_at_end": pts[-1]["failed_fraction"]}
                for (lam, m, dt), pts in results.items() if any(x["failed_fraction"] > 0 for x in pts)]
    print("\nFailures (non-finite value or gradient):",
          "none" if not failures else "; ".join(
              f"lambda {f['lam']:g} {f['method']} {f['dtype']} from iteration {f['first_failed_iteration']}"
              for f in failures))
    print(f"Total {time.perf_counter() - start:.0f} s.")

    plot_dir = args.plot_dir or (os.path.dirname(os.path.abspath(args.json)) if args.json else ".")
    if args.smoke and not args.plot_dir:
        import tempfile

        plot_dir = tempfile.mkdtemp()  # the plot code runs; no file left behind in the working folder
    os.makedirs(plot_dir, exist_ok=True)
    plot(results, lams_iter, counts, os.path.join(plot_dir, "fig3.png"), _title(batch, args.quick))
    config = {"batch": batch, "lams": lams, "iterations": counts, "quick": args.quick, "seed": args.seed,
              "predictions": "softmax (scale 2)", "targets": "softmax (scale 3)"}
    if args.json:
        write_json(args.json, {
            "benchmark": "bench_fig3", "machine": info, "config": config, "failures": failures,
            "results": [{"lam": lam, "method": m, "dtype": dt, "trace": pts}
                        for (lam, m, dt), pts in results.items()],
        })
    if args.rst:
        from run_all import write_rst

        write_rst(args.rst, headers, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
