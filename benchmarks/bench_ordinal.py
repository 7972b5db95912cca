"""Time emdtree's torch loss on ordinal bins against dlordinal's ``EMDLoss``.

dlordinal's ``EMDLoss`` (softmax, cumulative sums, a sum of squares in
torch) computes EMD^2 on a chain of unit spacing, the mean over the batch:
the same loss as ``emdtree.torch.EMDLoss(Tree.chain(n), rho=2,
normalize="softmax")``. On a CPU with one thread (torch and emdtree), the
script times forward + backward (the gradient with respect to the logits,
class-index targets) side by side in one run, and checks that the values and
gradients agree. emdtree picks its route by size (torch operations for small
batches, the chain kernels through custom operators for large ones); where
the installed emdtree has that choice, both routes are also timed forced,
which is how the crossover ``emdtree.frameworks.torch.ORDINAL_OPS_MAX`` was
chosen. Run ``python benchmarks/bench_ordinal.py --help`` for the options.
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("EMDTREE_NUM_THREADS", "1")

import numpy as np  # noqa: E402

import emdtree  # noqa: E402

from _common import Timer, fmt_ms, machine_info, print_machine, print_table, write_json  # noqa: E402

SIZES = ((256, 100), (4096, 100))
SWEEP_ROWS = (256, 512, 1024, 2048, 4096, 8192)


def _cases(n_rows: int, n_bins: int, seed: int, forced: bool):
    import torch

    from emdtree.torch import EMDLoss

    rng = np.random.default_rng(seed)
    x = torch.tensor((rng.standard_normal((n_rows, n_bins)) * 2.0).astype(np.float32))
    t = torch.tensor(rng.integers(0, n_bins, n_rows))
    emd = EMDLoss(emdtree.Tree.chain(n_bins), rho=2, normalize="softmax")

    def step(loss_fn, route=None):
        def run():
            z = x.detach().requires_grad_()
            with _route(route):
                loss = loss_fn(z, t)
                (g,) = torch.autograd.grad(loss, z)
            return loss.detach(), g
        return run

    cases = {"emdtree EMDLoss": step(emd)}
    try:
        from dlordinal.losses import EMDLoss as DLOrdinalEMD
    except ImportError as exc:
        print(f"dlordinal: not installed ({exc})")
    else:
        cases = {"dlordinal EMDLoss": step(DLOrdinalEMD(num_classes=n_bins)), **cases}
    if forced:
        cases["emdtree, torch operations"] = step(emd, "ops")
        cases["emdtree, kernels"] = step(emd, "kernels")
    return cases


class _route:
    """Force emdtree's ordinal route ("ops", "kernels") for the duration, or leave it (None)."""

    def __init__(self, route):
        self.route = route

    def __enter__(self):
        if self.route is not None:
            from emdtree.frameworks import torch as adapter

            self.old = adapter.ORDINAL_OPS_MAX
            adapter.ORDINAL_OPS_MAX = 1 << 62 if self.route == "ops" else 0

    def __exit__(self, *exc):
        if self.route is not None:
            from emdtree.frameworks import torch as adapter

            adapter.ORDINAL_OPS_MAX = self.old


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, a few samples (seconds)")
    ap.add_argument("--sweep", action="store_true",
                    help=f"also time both routes at {', '.join(map(str, SWEEP_ROWS))} rows of 100 bins")
    ap.add_argument("--json", metavar="PATH", help="also write the results and machine info as JSON")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    info = machine_info()
    print_machine(info)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread; emdtree from {emdtree.__file__}")
    from emdtree.frameworks import torch as adapter

    forced = hasattr(adapter, "ORDINAL_OPS_MAX")
    sizes = ((16, 10), (64, 10)) if args.smoke else SIZES
    if args.sweep and not args.smoke:
        sizes = tuple(sizes) + tuple((r, 100) for r in SWEEP_ROWS if (r, 100) not in sizes)
    timer = Timer(5 if args.smoke else 300, min_sample_s=0.0 if args.smoke else 2e-3,
                  max_total_s=0.2 if args.smoke else 3.0)

    print("\n== EMD^2 on a chain after a softmax, float32 logits, class-index targets; CPU, one thread; "
          "forward + backward of the mean loss to the logits")
    rows, results = [], []
    for n_rows, n_bins in sizes:
        cases = _cases(n_rows, n_bins, args.seed, forced)
        outputs = {name: fn() for name, fn in cases.items()}
        ref_name = "dlordinal EMDLoss" if "dlordinal EMDLoss" in cases else "emdtree EMDLoss"
        ref_value, ref_grad = outputs[ref_name]
        timed = Timer.run(timer, cases)
        base = timed[ref_name]["median_ms"]
        for name, t in timed.items():
            value, grad = outputs[name]
            d_value = abs(float(value) - float(ref_value)) / abs(float(ref_value))
            d_grad = float((grad - ref_grad).abs().max() / ref_grad.abs().max())
            rows.append([f"{n_rows} x {n_bins}", name, fmt_ms(t["median_ms"]),
                         f"{fmt_ms(t['p10_ms'])}-{fmt_ms(t['p90_ms'])}", f"{t['median_ms'] / base:.2f}",
                         f"{d_value:.1e}", f"{d_grad:.1e}"])
            results.append(dict(rows=n_rows, bins=n_bins, method=name, ratio=t["median_ms"] / base,
                                value_rel_diff=d_value, grad_rel_diff=d_grad, **t))
    print_table(["batch", "method", "median ms", "p10-p90 ms", f"x {ref_name.split()[0]}", "value diff",
                 "grad diff"], rows, right={2, 3, 4, 5, 6})
    print(f"ratios are medians to the median of {ref_name}, measured interleaved; value diff and grad diff "
          "are relative to it (value: |difference| / value, gradient: max |difference| / max |gradient|)")
    if args.json:
        write_json(args.json, {"benchmark": "bench_ordinal", "args": vars(args), "machine": info,
                               "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
