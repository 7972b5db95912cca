"""Training utilities shared by the experiment scripts.

The Sinkhorn distance loss, the tree restricted to some of its bins, the
EMD^2 loss from :mod:`emdtree.torch`, curve statistics and the writers of the
JSON, Markdown and PNG outputs.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import time
from typing import Sequence

import numpy as np
import torch

import emdtree

# ----------------------------------------------------------------------------- run setup


def base_parser(description: str) -> argparse.ArgumentParser:
    """The options every experiment script has."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="a reduced run of a couple of minutes")
    parser.add_argument("--smoke", action="store_true", help="a run of seconds that only checks the pipeline")
    parser.add_argument("--seeds", type=int, default=None, help="number of seeds (default: by mode)")
    parser.add_argument(
        "--threads", type=int, default=1,
        help="torch and Numba threads (default 1: the models are small, and on a shared machine "
             "a second thread mostly waits)",
    )
    parser.add_argument(
        "--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"),
        help="output folder (default: results/ beside the script)",
    )
    return parser


def mode_of(args: argparse.Namespace) -> str:
    return "smoke" if args.smoke else "quick" if args.quick else "full"


def set_threads(n: int) -> None:
    """Use ``n`` threads in torch and in emdtree's Numba kernels."""
    import numba

    torch.set_num_threads(n)
    numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))


def machine_info(threads: int) -> dict:
    """What the timings in a results file were measured on."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), None)
    except OSError:
        cpu = None
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpu_model": cpu or platform.machine(),
        "cpu_count": os.cpu_count(),
        "threads": threads,
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "emdtree": emdtree.__version__,
    }


class Stopwatch:
    """Wall-clock seconds since creation."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()

    def __call__(self) -> float:
        return time.perf_counter() - self.t0


# ----------------------------------------------------------------------------- losses


def emd2_loss(pred: torch.Tensor, target: torch.Tensor, tree: emdtree.Tree,
              normalize: str | None = None) -> torch.Tensor:
    """Mean EMD^2 (paper eq. 10 with rho = 2) over the batch, from :mod:`emdtree.torch`."""
    from emdtree.torch import emd_loss

    return emd_loss(pred, target, tree=tree, rho=2.0, reduction="mean", normalize=normalize)


class _SinkhornFn(torch.autograd.Function):
    """Entropic OT between rows of ``a`` and ``b``; gradient in ``a`` by the envelope theorem."""

    @staticmethod
    def forward(ctx, a, b, sinkhorn):  # noqa: D401 - torch's signature
        value, grad = sinkhorn.value_and_potential(a.detach(), b.detach())
        ctx.save_for_backward(grad.to(a.dtype))
        return value.to(a.dtype)

    @staticmethod
    def backward(ctx, grad_out):
        (grad,) = ctx.saved_tensors
        return grad_out[:, None] * grad, None, None


class Sinkhorn:
    """Batched log-domain Sinkhorn distance (Cuturi 2013; the paper's Algorithm 1).

    For rows ``a`` (predictions) and ``b`` (targets) of a batch, runs
    ``n_iter`` alternating updates of the scaled dual potentials
    ``F = lambda f`` and ``G = lambda g``::

        F_i = log a_i - logsumexp_j (G_j - lambda M_ij)
        G_j = log b_j - logsumexp_i (F_i - lambda M_ij)

    in float64. Each logsumexp is taken as ``m + log(exp(G - m) @ K.T)``
    with ``K = exp(-lambda M)`` computed once and ``m`` the row maximum of
    ``G``: two matrix products per iteration instead of a
    ``(batch, n, n)`` exponential, and exact because the term at the
    maximum contributes at least ``exp(-lambda max M)``, which float64
    represents for ``lambda max M <= 600`` (checked). Zero masses in ``b``
    give ``G_j = -inf`` and are handled exactly.

    The value is the transport cost ``<P, M>`` of the entropic plan
    ``P_ij = exp(F_i + G_j - lambda M_ij)`` (the Sinkhorn distance). The
    gradient with respect to ``a`` is the dual potential ``f = F / lambda``
    minus its mean over the bins: by the envelope theorem this is the
    gradient of the entropic OT objective, as Algorithm 1 returns it
    (alpha); it is not differentiated through the iterations.

    Parameters
    ----------
    cost : array_like, shape (n_bins, n_bins)
        Ground metric ``M``.
    lam : float
        Entropic strength ``lambda`` (regularisation ``1 / lambda``).
    n_iter : int
        Number of Sinkhorn iterations (each updates ``F`` and ``G``).
    """

    def __init__(self, cost: np.ndarray, lam: float, n_iter: int) -> None:
        cost = np.asarray(cost, dtype=np.float64)
        if cost.ndim != 2 or cost.shape[0] != cost.shape[1]:
            raise ValueError(f"cost must be a square matrix, got shape {cost.shape}")
        if not lam > 0:
            raise ValueError(f"lam must be positive, got {lam}")
        if lam * cost.max() > 600:
            raise ValueError(
                f"lam * max(cost) = {lam * cost.max():.0f} > 600: exp(-lam * cost) underflows in float64; "
                "use a smaller lam or rescale the cost"
            )
        if int(n_iter) < 1:
            raise ValueError(f"n_iter must be at least 1, got {n_iter}")
        self.lam = float(lam)
        self.n_iter = int(n_iter)
        self.cost = torch.as_tensor(cost)
        self.kernel = torch.exp(-self.lam * self.cost)

    @staticmethod
    def _lse(h: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
        # logsumexp_j (h_j + log K_ij) for every row of h, via one matrix product.
        # Terms below exp(-700) would be subnormal: they are dropped (set to
        # -inf) before exp, whose slow path for them costs ~20x the rest.
        m = h.max(dim=1, keepdim=True).values
        z = h - m
        z = z.masked_fill(z < -700.0, float("-inf"))
        return m + torch.log(torch.exp(z) @ kernel.T)

    def potentials(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Scaled dual potentials ``F, G`` after ``n_iter`` iterations, float64, shape (batch, n_bins)."""
        log_a = torch.log(a.to(torch.float64).clamp_min(1e-300))
        log_b = torch.log(b.to(torch.float64))
        g = torch.zeros_like(log_b)
        g = torch.where(torch.isfinite(log_b), g, log_b)
        for _ in range(self.n_iter):
            f = log_a - self._lse(g, self.kernel)
            g = log_b - self._lse(f, self.kernel.T)
        return f, g

    def value_and_potential(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(<P, M>, f - mean(f))`` for every row: shapes (batch,) and (batch, n_bins)."""
        flush = torch.set_flush_denormal(True)  # subnormal products only slow the matrix products down
        try:
            with torch.no_grad():
                f, g = self.potentials(a, b)
                # <P, M> = sum_i exp(F_i + logsumexp_j (G_j + log K_ij + log M_ij)), never forming P
                value = torch.exp(f + self._lse(g, self.kernel * self.cost)).sum(dim=1)
                pot = f / self.lam
                pot = pot - pot.mean(dim=1, keepdim=True)
        finally:
            if flush:
                torch.set_flush_denormal(False)
        return value, pot

    def loss(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Mean Sinkhorn distance over the batch, differentiable in ``pred`` (batch, n_bins)."""
        return _SinkhornFn.apply(pred, target, self).mean()


# ----------------------------------------------------------------------------- trees


def restrict_tree(tree: emdtree.Tree, keep_bins: Sequence[int]) -> emdtree.Tree:
    """The tree spanned by some of its bins: those bins' nodes and all their ancestors.

    Edge costs are kept, so path distances between the kept bins are those
    of the full tree. Bins are renumbered in the order of ``keep_bins``.
    """
    keep_bins = np.asarray(keep_bins, dtype=np.int64)
    parents = tree.parents
    keep = np.zeros(tree.n_nodes, dtype=bool)
    for node in tree.bins[keep_bins]:
        while node >= 0 and not keep[node]:
            keep[node] = True
            node = parents[node]
    old = np.flatnonzero(keep)
    new_of_old = -np.ones(tree.n_nodes, dtype=np.int64)
    new_of_old[old] = np.arange(old.size)
    new_parents = np.where(parents[old] >= 0, new_of_old[np.maximum(parents[old], 0)], -1)
    names = [tree.names[i] for i in keep_bins] if tree.names is not None else None
    node_names = [tree.node_names[i] for i in old] if tree.node_names is not None else None
    return emdtree.Tree.from_parents(new_parents, weights=tree.weights[old],
                                     bins=new_of_old[tree.bins[keep_bins]], names=names,
                                     node_names=node_names)


# ----------------------------------------------------------------------------- curves


def steps_to_reach(steps: np.ndarray, curve: np.ndarray, level: float) -> float:
    """First step at which ``curve <= level`` (``nan`` if never)."""
    hit = np.flatnonzero(np.asarray(curve) <= level)
    return float(steps[hit[0]]) if hit.size else float("nan")


def mean_band(curves: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean, minimum and maximum over seeds (axis 0)."""
    curves = np.asarray(curves, dtype=np.float64)
    return curves.mean(axis=0), curves.min(axis=0), curves.max(axis=0)


def fmt(x: float, digits: int = 3) -> str:
    if x is None or not np.isfinite(x):
        return "-"
    return f"{x:.{digits}g}" if abs(x) < 1e4 else f"{x:.0f}"


# ----------------------------------------------------------------------------- outputs


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub-flavoured Markdown table."""
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join("---" for _ in headers) + " |"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def write_outputs(out_dir: str, stem: str, results: dict, tables_md: str) -> list[str]:
    """Write ``stem.json`` and ``stem.md`` under ``out_dir``; returns their paths."""
    os.makedirs(out_dir, exist_ok=True)
    json_path = os.path.join(out_dir, f"{stem}.json")
    md_path = os.path.join(out_dir, f"{stem}.md")
    with open(json_path, "w", encoding="utf-8") as f:
        json.dump(results, f, indent=1, default=_jsonable)
    with open(md_path, "w", encoding="utf-8") as f:
        f.write(tables_md.rstrip() + "\n")
    return [json_path, md_path]


def _jsonable(x):
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    raise TypeError(f"cannot write {type(x).__name__} to JSON")


def pyplot():
    """matplotlib's pyplot on the Agg backend (files only, no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


LOSS_COLORS = {
    "MSE": "tab:gray", "SD": "tab:orange", "EMD^2": "tab:blue",
    "CE": "tab:gray", "EMD^2+CE": "tab:green", "SD+CE": "tab:orange",
}


def plot_band(ax, x: np.ndarray, curves: np.ndarray, label: str) -> None:
    """Mean over seeds as a line, min-max over seeds as a shaded band."""
    mean, lo, hi = mean_band(curves)
    color = LOSS_COLORS.get(label)
    ax.plot(x, mean, label=label, color=color, lw=1.6)
    if curves.shape[0] > 1:
        ax.fill_between(x, lo, hi, color=color, alpha=0.2, lw=0)
