"""Small-data classification over the WordNet tree with CE, EMD^2, EMD^2 + CE and SD + CE (paper section 5.3).

The paper trains an image classifier on 50 ImageNet images per class and
finds that the relaxed EMD^2 loss, added to cross entropy, helps in that
small-data regime. This is the same comparison at CPU scale, on inputs that
carry the WordNet hierarchy:

* classes: the bins of ``emdtree.datasets.imagenet_wordnet()``, by default
  200 of the 1000 ILSVRC-2012 classes drawn with seed 0, on the tree
  spanned by them (their nodes and all ancestors: path distances between
  the classes are those of the full tree); ``--classes 1000`` uses all;
* inputs (64 features): every tree node gets a random Gaussian offset, a
  class mean is the sum of the offsets on the path from the root to its
  node, and a sample is its class mean plus Gaussian noise; classes close
  in the tree are therefore close in input space;
* model: a one-hidden-layer MLP (256 ReLU units), Adam, batch 32;
* losses on the logits ``z`` with labels ``y``: ``CE``; ``EMD^2`` =
  EMD^2(softmax(z), one-hot(y)); ``EMD^2+CE`` with weights 1 : 1;
  ``SD+CE`` = 1 x Sinkhorn distance + 3 x CE;
* scores on a held-out test set after every epoch: top-1 accuracy,
  mistake severity (mean tree distance between a wrong top-1 prediction
  and the label) and the holistic EMD error (exact EMD, rho = 1, between
  softmax(z) and the one-hot label), for 2, 5 and 10 training samples per
  class and a few seeds.

Usage::

    python examples/experiments/wordnet_small_data.py            # full run
    python examples/experiments/wordnet_small_data.py --quick    # a couple of minutes
    python examples/experiments/wordnet_small_data.py --smoke    # seconds
"""

from __future__ import annotations

import os
import sys

import numpy as np
import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common as common  # noqa: E402

import emdtree  # noqa: E402

LOSSES = ("CE", "EMD^2", "EMD^2+CE", "SD+CE")
N_FEATURES = 64
OFFSET_SCALE = 1.0  # norm of a node's offset, on average
NOISE_SCALE = 4.0  # norm of a sample's noise, on average
# Sinkhorn on the tree metric: entropic strength lambda and a fixed number of
# iterations. With one-hot targets one iteration already gives the exact plan
# (all mass goes to the label), so the count matters little here.
SD_LAMBDA = 10.0
SD_ITERATIONS = 10
SD_WEIGHT, CE_WEIGHT_WITH_SD = 1.0, 3.0

MODES = {
    "full": dict(classes=200, sizes=(2, 5, 10), epochs=40, seeds=3, n_test=10),
    "quick": dict(classes=100, sizes=(2, 10), epochs=25, seeds=2, n_test=10),
    "smoke": dict(classes=30, sizes=(2,), epochs=3, seeds=1, n_test=4),
}


# ----------------------------------------------------------------------------- data


def class_tree(n_classes: int) -> tuple[emdtree.Tree, np.ndarray]:
    """The WordNet tree spanned by ``n_classes`` ILSVRC classes (drawn with seed 0), and their indices."""
    full = emdtree.datasets.imagenet_wordnet()
    if n_classes >= full.n_bins:
        return full, np.arange(full.n_bins)
    keep = np.sort(np.random.default_rng(0).choice(full.n_bins, n_classes, replace=False))
    return common.restrict_tree(full, keep), keep


def class_means(tree: emdtree.Tree, rng: np.random.Generator) -> np.ndarray:
    """Sum of random node offsets along each bin's path from the root: (n_bins, N_FEATURES)."""
    offsets = rng.standard_normal((tree.n_nodes, N_FEATURES)) * OFFSET_SCALE / np.sqrt(N_FEATURES)
    offsets[tree.root] = 0.0
    lay = tree.layout
    # layout positions run children before parents; accumulate root-down by walking backwards
    acc = np.zeros_like(offsets)
    order = np.asarray(lay.order)
    parent_pos = np.asarray(lay.parent)
    acc_pos = offsets[order].copy()
    for j in range(order.size - 2, -1, -1):
        acc_pos[j] += acc_pos[parent_pos[j]]
    acc[order] = acc_pos
    return acc[tree.bins]


def sample(means: np.ndarray, per_class: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    y = np.repeat(np.arange(means.shape[0]), per_class)
    x = means[y] + rng.standard_normal((y.size, N_FEATURES)) * NOISE_SCALE / np.sqrt(N_FEATURES)
    return torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y)


# ----------------------------------------------------------------------------- model, losses, scores


def make_model(n_classes: int) -> nn.Module:
    return nn.Sequential(nn.Linear(N_FEATURES, 256), nn.ReLU(), nn.Linear(256, n_classes))


def make_loss(name: str, tree: emdtree.Tree, sinkhorn: common.Sinkhorn):
    ce = nn.functional.cross_entropy

    def emd2(z, y):
        return common.emd2_loss(z, y, tree, normalize="softmax")

    def sd(z, y):
        return sinkhorn.loss(torch.softmax(z, dim=1), nn.functional.one_hot(y, z.shape[1]).to(z.dtype))

    losses = {
        "CE": ce,
        "EMD^2": emd2,
        "EMD^2+CE": lambda z, y: emd2(z, y) + ce(z, y),
        "SD+CE": lambda z, y: SD_WEIGHT * sd(z, y) + CE_WEIGHT_WITH_SD * ce(z, y),
    }
    return losses[name]


def scores(model: nn.Module, x: torch.Tensor, y: torch.Tensor, tree: emdtree.Tree, dist: np.ndarray) -> dict:
    """Top-1 accuracy, mistake severity and holistic EMD (rho = 1) on ``(x, y)``."""
    with torch.no_grad():
        prob = torch.softmax(model(x).double(), dim=1).numpy()
    y = y.numpy()
    pred = prob.argmax(axis=1)
    wrong = pred != y
    onehot = np.zeros_like(prob)
    onehot[np.arange(y.size), y] = 1.0
    return {
        "top1": float(1.0 - wrong.mean()),
        "severity": float(dist[pred[wrong], y[wrong]].mean()) if wrong.any() else 0.0,
        "emd": float(emdtree.emd(prob, onehot, tree, rho=1.0, normalize="l1").mean()),
    }


def train(name: str, tree, dist, sinkhorn, data, epochs: int, seed: int) -> dict:
    x_train, y_train, x_test, y_test = data
    torch.manual_seed(seed)
    model = make_model(tree.n_bins)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = make_loss(name, tree, sinkhorn)
    gen = torch.Generator().manual_seed(seed)
    history = {k: [v] for k, v in scores(model, x_test, y_test, tree, dist).items()}
    clock = common.Stopwatch()
    for _ in range(epochs):
        perm = torch.randperm(x_train.shape[0], generator=gen)
        for idx in perm.split(32):
            loss = loss_fn(model(x_train[idx]), y_train[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        for k, v in scores(model, x_test, y_test, tree, dist).items():
            history[k].append(v)
    history["seconds"] = clock()
    return history


# ----------------------------------------------------------------------------- report

METRICS = (("top1", "top-1 accuracy"), ("severity", "mistake severity (tree distance)"),
           ("emd", "holistic EMD (rho = 1)"))


def plot(path: str, runs: dict, sizes, epochs: int, n_classes: int, chance: dict) -> None:
    plt = common.pyplot()
    fig, axes = plt.subplots(len(METRICS), len(sizes), figsize=(4.4 * len(sizes), 9.0), squeeze=False)
    x = np.arange(epochs + 1)
    for col, size in enumerate(sizes):
        for row, (key, label) in enumerate(METRICS):
            ax = axes[row, col]
            for name in LOSSES:
                common.plot_band(ax, x, np.array([h[key] for h in runs[size][name]]), name)
            if key in chance:
                ax.axhline(chance[key], color="k", lw=0.8, ls=":", label="uniform guess")
            ax.set_ylabel(label)
            ax.grid(alpha=0.3)
            if row == 0:
                ax.set_title(f"{size} training samples per class ({n_classes} classes)")
            if row == len(METRICS) - 1:
                ax.set_xlabel("epoch")
    axes[0, 0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    parser = common.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, default=None,
                        help="number of ILSVRC classes (default: by mode)")
    args = parser.parse_args(argv)
    mode = common.mode_of(args)
    cfg = dict(MODES[mode])
    if args.classes:
        cfg["classes"] = args.classes
    seeds = args.seeds or cfg["seeds"]
    common.set_threads(args.threads)
    clock = common.Stopwatch()

    tree, class_ids = class_tree(cfg["classes"])
    dist = tree.distance_matrix()
    sinkhorn = common.Sinkhorn(dist, SD_LAMBDA, SD_ITERATIONS)
    # the uniform prediction: what a model that learned nothing scores
    uniform = np.full((1, tree.n_bins), 1.0 / tree.n_bins)
    chance = {"top1": 1.0 / tree.n_bins,
              "emd": float(emdtree.emd(np.repeat(uniform, tree.n_bins, 0), np.eye(tree.n_bins), tree).mean())}

    runs = {}
    for size in cfg["sizes"]:
        runs[size] = {name: [] for name in LOSSES}
        for seed in range(seeds):
            rng = np.random.default_rng(1000 + seed)
            means = class_means(tree, rng)
            data = (*sample(means, size, rng), *sample(means, cfg["n_test"], rng))
            for name in LOSSES:
                runs[size][name].append(train(name, tree, dist, sinkhorn, data, cfg["epochs"], seed))
        for name in LOSSES:
            last = {k: np.mean([h[k][-1] for h in runs[size][name]]) for k, _ in METRICS}
            print(f"{size:3d}/class {name:9s} top-1 {last['top1']:.3f}  severity {last['severity']:.2f}  "
                  f"EMD {last['emd']:.3f}")

    os.makedirs(args.out, exist_ok=True)
    png = os.path.join(args.out, "wordnet_small_data.png")
    plot(png, runs, cfg["sizes"], cfg["epochs"], tree.n_bins, chance)

    rows, summary = [], {}
    for size in cfg["sizes"]:
        summary[size] = {}
        for name in LOSSES:
            hs = runs[size][name]
            final = {k: [h[k][-1] for h in hs] for k, _ in METRICS}
            best_top1 = [max(h["top1"]) for h in hs]
            summary[size][name] = {
                **{f"final_{k}_mean": float(np.mean(v)) for k, v in final.items()},
                **{f"final_{k}_std": float(np.std(v)) for k, v in final.items()},
                "best_top1_mean": float(np.mean(best_top1)),
                "seconds_per_run": float(np.mean([h["seconds"] for h in hs])),
            }
            s = summary[size][name]
            rows.append([str(size), name,
                         f"{s['final_top1_mean']:.3f} ± {s['final_top1_std']:.3f}",
                         f"{s['best_top1_mean']:.3f}",
                         f"{s['final_severity_mean']:.2f} ± {s['final_severity_std']:.2f}",
                         f"{s['final_emd_mean']:.3f} ± {s['final_emd_std']:.3f}",
                         common.fmt(s["seconds_per_run"], 3)])
    headers = ["samples/class", "loss", "final top-1", "best top-1", "mistake severity", "holistic EMD",
               "s per run"]
    md = [f"# Tree: small-data classification over WordNet ({mode} mode)", "",
          f"{tree.n_bins} classes, tree of {tree.n_nodes} nodes (depth {tree.depth}), "
          f"{cfg['n_test']} test samples per class, {cfg['epochs']} epochs, {seeds} seed(s); "
          "mean ± standard deviation over seeds after the last epoch; "
          "best top-1 = best epoch, mean over seeds.",
          "", common.markdown_table(headers, rows), "",
          f"* Uniform guess: top-1 {chance['top1']:.4f}, holistic EMD {chance['emd']:.3f}.",
          f"* SD + CE = {SD_WEIGHT:g} x SD + {CE_WEIGHT_WITH_SD:g} x CE; Sinkhorn lambda = {SD_LAMBDA}, "
          f"{SD_ITERATIONS} iterations.",
          f"* Total time {clock():.0f} s."]
    text = "\n".join(md)
    print(text)
    results = {
        "experiment": "wordnet_small_data", "mode": mode, "seeds": seeds, "config": cfg,
        "n_classes": tree.n_bins, "class_ids": class_ids, "n_nodes": tree.n_nodes,
        "data": {"n_features": N_FEATURES, "offset_scale": OFFSET_SCALE, "noise_scale": NOISE_SCALE},
        "sinkhorn": {"lambda": SD_LAMBDA, "iterations": SD_ITERATIONS,
                     "gradient": "envelope (dual potential)",
                     "weights": [SD_WEIGHT, CE_WEIGHT_WITH_SD]},
        "chance": chance, "machine": common.machine_info(args.threads), "total_seconds": clock(),
        "summary": {str(k): v for k, v in summary.items()},
        "curves": {str(size): {name: {k: [h[k] for h in runs[size][name]] for k, _ in METRICS}
                               for name in LOSSES} for size in cfg["sizes"]},
    }
    files = common.write_outputs(args.out, "wordnet_small_data", results, text) + [png]
    print("wrote", ", ".join(files))
    return results


if __name__ == "__main__":
    main()
