"""Time a training step's loss in PyTorch: EMD^2 after a softmax against cross-entropy.

On the ImageNet WordNet tree (1000 classes), for a batch of float32 logits on
the CPU, the script times forward + backward (``loss.backward()`` down to the
logits) of, side by side in one run:

* ``nn.CrossEntropyLoss`` with class indices and with distribution targets
  (label-smoothed one-hot rows): the baselines;
* ``emdtree.torch.EMDLoss(tree, normalize="softmax")`` with class indices and
  with distribution targets, eagerly: the fused route (the softmax and the
  kernels in one forward pass that also gives the gradient with respect to
  the logits), and the same through the custom operators (what
  ``torch.compile`` and ``torch.func`` run, and what eager calls ran before);
* the paper's ImageNet setting, EMD^2 + cross-entropy 1:1;
* the same sum under ``torch.compile(fullgraph=True)`` (inductor), whose
  compile time is reported separately (skipped with ``--quick``);
* ``emdtree.emd_value_and_grad`` on the softmax probabilities in NumPy: the
  kernel alone.

Each loss is checked against ``emdtree.emd`` and its gradient against
``torch.autograd`` through an explicit softmax before timing. Run
``python benchmarks/bench_losses.py --help`` for the options.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings

import numpy as np

import emdtree
from emdtree.datasets import imagenet_wordnet

from _common import Timer, fmt_ms, machine_info, print_machine, print_table, write_json


def make_inputs(rng, batch, n_bins, smoothing=0.1):
    import torch

    logits = torch.tensor(rng.standard_normal((batch, n_bins)) * 2.0, dtype=torch.float32)
    labels = torch.tensor(rng.integers(0, n_bins, batch))
    soft = torch.full((batch, n_bins), smoothing / n_bins)
    soft[torch.arange(batch), labels] += 1.0 - smoothing
    soft /= soft.sum(-1, keepdim=True)
    return logits, labels, soft


def step(loss_fn, logits, target):
    """One forward + backward of ``loss_fn(logits, target)``."""
    def run():
        logits.grad = None
        loss = loss_fn(logits, target)
        loss.backward()
        return loss
    return run


def operators(fn):
    """``fn`` with the fused softmax route switched off: the loss goes through the custom operators."""
    from emdtree.frameworks import torch as adapter

    def run():
        route = adapter._softmax_route
        adapter._softmax_route = lambda z, q: False
        try:
            return fn()
        finally:
            adapter._softmax_route = route
    return run


def check(tree, logits, labels, soft):
    """Largest relative differences of the EMD loss and its gradient to references."""
    import torch

    from emdtree.torch import EMDLoss

    out = {}
    for name, target in (("class indices", labels), ("distributions", soft)):
        x = logits.detach().clone().requires_grad_()
        loss = EMDLoss(tree, normalize="softmax")(x, target)
        loss.backward()
        probs = torch.softmax(logits.detach().double(), -1).numpy()
        q = target.double().numpy() if target.dtype.is_floating_point else \
            np.eye(tree.n_bins)[target.numpy()]
        q = q / q.sum(-1, keepdims=True)  # float32 rows summed to 1 in float32, not in float64
        want = emdtree.emd(probs, q, tree, rho=2).mean()
        # gradient through an explicit float64 softmax Jacobian: J^T g / batch
        g = emdtree.emd_grad(probs, q, tree, rho=2)
        want_grad = probs * (g - np.sum(g * probs, -1, keepdims=True)) / len(probs)
        out[name] = (abs(loss.item() - want) / want,
                     float(np.abs(x.grad.numpy() - want_grad).max() / np.abs(want_grad).max()))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer repeats, no torch.compile (about 15 s)")
    ap.add_argument("--json", metavar="PATH", help="also write the results and machine info as JSON")
    ap.add_argument("--batch", type=int, default=512, help="rows per batch (default 512)")
    ap.add_argument("--repeat", type=int, default=None,
                    help="samples (single calls) per measurement (default 200, --quick 50)")
    ap.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    ap.add_argument("--torch-threads", type=int, default=1,
                    help="torch intra-op threads (default 1: on a busy machine torch's spinning thread "
                         "pool can slow small operations down tenfold)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, seconds: checks the script runs")
    args = ap.parse_args(argv)
    if args.smoke:
        args.quick, args.batch, args.repeat = True, 16, 3
    if args.batch < 1:
        ap.error("--batch must be at least 1")
    repeat = args.repeat or (50 if args.quick else 200)
    compile_too = not (args.quick or args.no_compile)

    try:
        import torch
    except ImportError:
        print("bench_losses: nothing to measure: torch is not installed")
        return 0

    from emdtree.torch import EMDLoss

    torch.set_num_threads(args.torch_threads)
    info = machine_info()
    info["torch"] = torch.__version__
    info["torch_threads"] = torch.get_num_threads()
    print_machine(info)
    print(f"torch {torch.__version__} with {torch.get_num_threads()} intra-op threads")

    tree = imagenet_wordnet()
    rng = np.random.default_rng(args.seed)
    logits, labels, soft = make_inputs(rng, args.batch, tree.n_bins)
    logits.requires_grad_()
    ce = torch.nn.CrossEntropyLoss()
    emd = EMDLoss(tree, normalize="softmax")

    def emd_plus_ce(x, t):
        return emd(x, t) + ce(x, t)

    fns = {
        "cross-entropy (class indices)": step(ce, logits, labels),
        "EMD^2 softmax (class indices)": step(emd, logits, labels),
        "EMD^2 softmax, operators (class indices)": operators(step(emd, logits, labels)),
        "cross-entropy (distributions)": step(ce, logits, soft),
        "EMD^2 softmax (distributions)": step(emd, logits, soft),
        "EMD^2 softmax, operators (distributions)": operators(step(emd, logits, soft)),
        "EMD^2 + cross-entropy (class indices)": step(emd_plus_ce, logits, labels),
    }
    compile_s = None
    if compile_too:
        compiled = torch.compile(emd_plus_ce, fullgraph=True)
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            step(compiled, logits, labels)()
        compile_s = time.perf_counter() - t0
        fns["torch.compile(EMD^2 + cross-entropy)"] = step(compiled, logits, labels)
    probs = torch.softmax(logits.detach(), -1).numpy()
    one_hot = np.eye(tree.n_bins, dtype=np.float32)[labels.numpy()]
    fns["kernel only: emd_value_and_grad (NumPy)"] = \
        lambda: emdtree.emd_value_and_grad(probs, one_hot, tree, 2.0)

    errors = check(tree, logits, labels, soft)
    # one call per sample, many samples: on a shared machine the fastest
    # samples (p10) of a few-millisecond call are the ones nothing interrupted
    timed = Timer(repeat, min_sample_s=0.0, max_total_s=1.0 if args.quick else 5.0).run(fns)
    bases = {kind: (timed[f"cross-entropy ({kind})"]["median_ms"], timed[f"cross-entropy ({kind})"]["p10_ms"])
             for kind in ("class indices", "distributions")}

    def base_of(name):
        """The cross-entropy with the same kind of target."""
        return bases["distributions" if "(distributions)" in name else "class indices"]

    print()
    print(f"== ImageNet WordNet: {tree.n_nodes} nodes, {tree.n_bins} bins; batch {args.batch}, float32, CPU; "
          "forward + backward to the logits")
    rows = []
    for name, t in timed.items():
        base, base_p10 = base_of(name)
        rows.append([name, fmt_ms(t["median_ms"]), f"{fmt_ms(t['p10_ms'])}-{fmt_ms(t['p90_ms'])}",
                     f"{t['median_ms'] / base:.2f}", f"{t['p10_ms'] / base_p10:.2f}"])
    print_table(["method", "median ms", "p10-p90 ms", "x CE (medians)", "x CE (p10s)"], rows,
                right={1, 2, 3, 4})
    print()
    for name, (dv, dg) in errors.items():
        print(f"check, {name}: loss rel. diff to emdtree.emd {dv:.1e}, gradient {dg:.1e} "
              "(float32 vs float64)")
    if compile_s is not None:
        print(f"torch.compile(fullgraph=True): first call (compile + run) {compile_s:.1f} s")
    print("x CE = time / time of nn.CrossEntropyLoss forward + backward with the same kind of target in the "
          "same run, as medians and as 10th percentiles (less sensitive to other work on a shared machine)")

    if args.json:
        write_json(args.json, {
            "benchmark": "bench_losses", "args": vars(args), "machine": info,
            "tree": {"name": "imagenet_wordnet", "n_nodes": tree.n_nodes, "n_bins": tree.n_bins},
            "compile_seconds": compile_s,
            "checks": {k: {"loss_rel_diff": v[0], "grad_rel_diff": v[1]} for k, v in errors.items()},
            "results": [dict(method=k, ratio_to_cross_entropy=v["median_ms"] / base_of(k)[0],
                             ratio_to_cross_entropy_p10=v["p10_ms"] / base_of(k)[1], **v)
                        for k, v in timed.items()],
        })
    return 0


if __name__ == "__main__":
    sys.exit(main())
