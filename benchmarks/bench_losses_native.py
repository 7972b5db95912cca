"""Time the training losses' paths in each framework against its cross-entropy.

On the ImageNet WordNet tree (1000 classes), a batch of float32 logits on the
CPU with one thread, the script times forward + backward (value and gradient
with respect to the logits) of EMD^2 after a softmax, with class indices (and,
in torch, also distribution targets: one-hot rows with label smoothing), in
each framework and the framework's own cross-entropy on the same logits in
the same mode, side by side in one run:

* torch: ``nn.CrossEntropyLoss``; ``emdtree.torch.EMDLoss`` eagerly (the
  custom operators over the kernels) and under ``torch.func.grad`` (the
  ``autograd.Function`` path);
* JAX, under ``jax.jit``: ``optax``-style cross-entropy written with
  ``jax.nn.log_softmax``; ``emdtree.jax.emd_loss`` with
  ``implementation="callback"`` (the kernels) and ``"native"`` (JAX
  operations: what accelerators and sharded batches run);
* TensorFlow: ``tf.nn.sparse_softmax_cross_entropy_with_logits`` and
  ``emdtree.tensorflow.emd_loss`` in a ``tf.function`` without XLA (the
  kernels through ``tf.numpy_function``) and with ``jit_compile=True`` (TF
  operations compiled by XLA).

Each EMD gradient is checked against the kernels in float64 first. Every
ratio is to the cross-entropy of the same framework and compile mode. Run
``python benchmarks/bench_losses_native.py --help`` for the options.
"""

from __future__ import annotations

import argparse
import os
import sys

# one thread in every framework, set before they are imported
os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("EMDTREE_NUM_THREADS", "1")

import numpy as np  # noqa: E402

import emdtree  # noqa: E402
from emdtree.datasets import imagenet_wordnet  # noqa: E402

from _common import Timer, fmt_ms, machine_info, print_machine, print_table, write_json  # noqa: E402

FRAMEWORKS = ("torch", "jax", "tensorflow")


def reference_grad(tree, logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Gradient of the mean EMD^2 after a softmax, in float64 through the kernels; ``targets``
    are class indices or distributions."""
    z = logits.astype(np.float64)
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    q = np.eye(tree.n_bins)[targets] if targets.ndim == 1 else targets.astype(np.float64)
    g = emdtree.emd_grad(p, q, tree, 2.0)
    return p * (g - np.sum(g * p, 1, keepdims=True)) / len(p)


SMOOTHING = 0.1  # the distribution targets: one-hot rows with label smoothing


def smoothed(n_bins: int, labels: np.ndarray, dtype=np.float32) -> np.ndarray:
    """Distribution targets: ``1 - SMOOTHING`` on the label, ``SMOOTHING`` spread over every bin."""
    q = np.full((labels.shape[0], n_bins), SMOOTHING / n_bins, dtype=np.float64)
    q[np.arange(labels.shape[0]), labels] += 1.0 - SMOOTHING
    return q.astype(dtype)


def torch_cases(tree, logits, labels):
    import torch

    from emdtree.torch import EMDLoss

    torch.set_num_threads(1)
    x = torch.tensor(logits)
    t = torch.tensor(labels)
    soft = torch.tensor(smoothed(tree.n_bins, labels))
    ce = torch.nn.CrossEntropyLoss()
    emd = EMDLoss(tree, normalize="softmax")

    def eager(loss_fn, target):
        def run():
            z = x.detach().requires_grad_()
            (g,) = torch.autograd.grad(loss_fn(z, target), z)
            return g
        return run

    func_grad = torch.func.grad(emd)
    cases = {
        "cross-entropy": eager(ce, t),
        "EMD^2, custom operators (kernels)": eager(emd, t),
        "EMD^2, torch.func.grad (kernels)": lambda: func_grad(x, t),
        f"cross-entropy, {DIST}": eager(ce, soft),
        f"EMD^2, custom operators (kernels), {DIST}": eager(emd, soft),
    }
    return torch.__version__, cases, {k: (lambda f=f: f().numpy()) for k, f in cases.items()}


DIST = "distribution targets"


def jax_cases(tree, logits, labels):
    import jax
    import jax.numpy as jnp

    from emdtree.jax import emd_loss

    x, t = jnp.asarray(logits), jnp.asarray(labels)

    def ce(z, t):
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(z), t[:, None], axis=1))

    def emd(implementation):
        return lambda z, t: emd_loss(z, t, tree, normalize="softmax", implementation=implementation).mean()

    fns = {
        "cross-entropy": ce,
        "EMD^2, callback (kernels)": emd("callback"),
        "EMD^2, native (JAX operations)": emd("native"),
    }
    cases, grads = {}, {}
    for name, fn in fns.items():
        step = jax.jit(jax.value_and_grad(fn))
        cases[name] = lambda step=step: jax.block_until_ready(step(x, t))
        grads[name] = lambda step=step: np.asarray(step(x, t)[1])
    return jax.__version__, cases, grads


def tf_cases(tree, logits, labels):
    import tensorflow as tf

    from emdtree.tensorflow import emd_loss

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    x, t = tf.constant(logits), tf.constant(labels)

    def ce(t, z):
        return tf.nn.sparse_softmax_cross_entropy_with_logits(t, z)

    def emd(t, z):
        return emd_loss(t, z, tree, normalize="softmax")

    def value_and_grad(loss_fn):
        def step(z, t):
            with tf.GradientTape() as tape:
                tape.watch(z)
                loss = tf.reduce_mean(loss_fn(t, z))
            return loss, tape.gradient(loss, z)
        return step

    cases, grads = {}, {}
    for mode, jit in (("tf.function", False), ("XLA", True)):
        for name, fn in (("cross-entropy", ce), ("EMD^2", emd)):
            label = f"{name}, {mode}" + ("" if name == "cross-entropy" else
                                         " (kernels)" if not jit else " (TF operations)")
            step = tf.function(value_and_grad(fn), jit_compile=jit)
            cases[label] = lambda step=step: step(x, t)[1].numpy()
            grads[label] = cases[label]
    return tf.__version__, cases, grads


BUILDERS = {"torch": torch_cases, "jax": jax_cases, "tensorflow": tf_cases}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer samples (about 30 s with the imports)")
    ap.add_argument("--smoke", action="store_true",
                    help="a batch of 8 and a few samples: checks that every path runs (seconds)")
    ap.add_argument("--json", metavar="PATH", help="also write the results and machine info as JSON")
    ap.add_argument("--batch", type=int, default=512, help="rows per batch (default 512)")
    ap.add_argument("--frameworks", default=",".join(FRAMEWORKS),
                    help=f"comma-separated subset of {', '.join(FRAMEWORKS)} (default: all installed)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.batch < 1:
        ap.error("--batch must be at least 1")
    if args.smoke:
        args.batch = min(args.batch, 8)
    wanted = [f.strip() for f in args.frameworks.split(",") if f.strip()]
    unknown = sorted(set(wanted) - set(FRAMEWORKS))
    if unknown:
        ap.error(f"unknown frameworks: {', '.join(unknown)}")

    info = machine_info()
    print_machine(info)
    tree = imagenet_wordnet()
    rng = np.random.default_rng(args.seed)
    logits = (rng.standard_normal((args.batch, tree.n_bins)) * 2.0).astype(np.float32)
    labels = rng.integers(0, tree.n_bins, args.batch)
    want = {"": reference_grad(tree, logits, labels),
            DIST: reference_grad(tree, logits, smoothed(tree.n_bins, labels, np.float64))}
    timer = (Timer(3, min_sample_s=0.0, max_total_s=0.05) if args.smoke else
             Timer(50 if args.quick else 200, min_sample_s=0.0, max_total_s=1.0 if args.quick else 4.0))

    print(f"\n== ImageNet WordNet: {tree.n_nodes} nodes, {tree.n_bins} bins; batch {args.batch}, float32, "
          "CPU, one thread; forward + backward of the mean loss to the logits")
    rows, results = [], []
    for framework in wanted:
        try:
            version, cases, grads = BUILDERS[framework](tree, logits, labels)
        except ImportError as exc:
            print(f"{framework}: not installed ({exc})")
            continue
        errors = {}
        for name, fn in grads.items():
            if "EMD" in name:
                w = want[DIST if name.endswith(DIST) else ""]
                errors[name] = float(np.abs(fn() - w).max() / np.abs(w).max())
        timed = Timer.run(timer, cases)
        for name, t in timed.items():
            mode = name.split(", ")[1].split(" ")[0] if framework == "tensorflow" else None
            base_name = "cross-entropy" + (f", {mode}" if mode else "") + (f", {DIST}" if name.endswith(DIST)
                                                                           else "")
            base = timed[base_name]
            ratio, ratio_p10 = t["median_ms"] / base["median_ms"], t["p10_ms"] / base["p10_ms"]
            err = errors.get(name)
            rows.append([f"{framework} {version}", name, fmt_ms(t["median_ms"]),
                         f"{fmt_ms(t['p10_ms'])}-{fmt_ms(t['p90_ms'])}", f"{ratio:.2f}", f"{ratio_p10:.2f}",
                         "-" if err is None else f"{err:.1e}"])
            results.append(dict(framework=framework, version=version, method=name,
                                ratio_to_cross_entropy=ratio, ratio_to_cross_entropy_p10=ratio_p10,
                                grad_rel_diff=err, **t))
    print_table(["framework", "method", "median ms", "p10-p90 ms", "x CE", "x CE (p10)", "grad err"], rows,
                right={2, 3, 4, 5, 6})
    print("x CE = time / time of the same framework's cross-entropy (same compile mode), medians and 10th "
          "percentiles; grad err = max |grad - float64 kernels| / max |grad|")
    if args.json:
        write_json(args.json, {"benchmark": "bench_losses_native", "args": vars(args), "machine": info,
                               "tree": {"name": "imagenet_wordnet", "n_nodes": tree.n_nodes,
                                        "n_bins": tree.n_bins},
                               "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
