"""Gradients of MSE, EMD, EMD^2 and the Sinkhorn distance on a chain (the paper's Figure 5).

A smooth prediction ``p`` and a spiky target ``q`` on a chain of ordinal bins.
MSE pulls every bin towards its own target value; the EMD gradients say where
mass has to go, and so vary smoothly along the chain.
"""

from __future__ import annotations

import importlib

import numpy as np

import emdtree


def masses(n_bins: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """A smooth ``p`` (two broad bumps) and a spiky ``q`` (three narrow peaks), each summing to 1."""
    x = np.linspace(0.0, 1.0, n_bins)
    p = np.exp(-0.5 * ((x - 0.3) / 0.12) ** 2) + 0.6 * np.exp(-0.5 * ((x - 0.75) / 0.08) ** 2) + 0.02
    q = np.full(n_bins, 0.002)
    for centre, height in ((0.15, 1.0), (0.5, 0.6), (0.85, 0.8)):
        q[int(round(centre * (n_bins - 1)))] += height
    return p / p.sum(), q / q.sum()


def sinkhorn_grad(
    p: np.ndarray, q: np.ndarray, tree: emdtree.Tree, lam: float = 1.0, n_iter: int = 1000
) -> np.ndarray | None:
    """Gradient of the Sinkhorn distance with respect to ``p``, or None without ``emdtree.sinkhorn``.

    ``p`` must be positive in every bin: the gradient is ``-inf`` where it is zero.
    """
    try:
        module = importlib.import_module("emdtree.distances.sinkhorn")
    except ImportError:
        return None
    result = module.sinkhorn(p, q, tree, lam=lam, n_iter=n_iter, tol=1e-10, method="log", return_grad=True)
    return np.asarray(result.grad, dtype=np.float64)


def gradients(p: np.ndarray, q: np.ndarray) -> dict[str, np.ndarray]:
    """Dirt-conserving gradients with respect to ``p`` on a unit chain, by loss name.

    MSE's gradient ``2 (p - q) / n`` is projected like the others, so that all
    panels show directions that keep the total mass.
    """
    n = p.shape[0]
    mse = 2.0 * (p - q) / n
    out = {
        "MSE": mse - mse.mean(),
        "EMD ($\\rho = 1$)": emdtree.emd_grad(p, q, rho=1.0),
        "EMD$^2$ ($\\rho = 2$)": emdtree.emd_grad(p, q, rho=2.0),
    }
    sd = sinkhorn_grad(p, q, emdtree.Tree.chain(n))
    if sd is not None:
        out["the Sinkhorn distance ($\\lambda = 1$)"] = sd
    return out


def draw(path: str, n_bins: int = 64) -> None:
    """Write the figure to ``path``."""
    import matplotlib.pyplot as plt

    p, q = masses(n_bins)
    grads = gradients(p, q)
    bins = np.arange(n_bins)
    fig, axes = plt.subplots(1 + len(grads), 1, figsize=(7.0, 1.6 * (1 + len(grads))), sharex=True)
    ax = axes[0]
    ax.bar(bins, q, width=0.9, color="tab:orange", alpha=0.7, label="target $q$ (spiky)")
    ax.plot(bins, p, color="tab:blue", lw=2, label="prediction $p$ (smooth)")
    ax.set_ylabel("mass")
    ax.legend(loc="upper right", fontsize=8, frameon=False)
    colors = ["tab:gray", "tab:green", "tab:purple", "tab:red"]
    for ax, (name, g), color in zip(axes[1:], grads.items(), colors):
        ax.axhline(0.0, color="black", lw=0.6)
        ax.bar(bins, g, width=0.9, color=color)
        ax.set_ylabel("gradient", fontsize=8)
        ax.set_title(f"$\\partial/\\partial p$ of {name}", fontsize=9, loc="left")
    axes[-1].set_xlabel("bin (ordinal)")
    fig.suptitle("Gradients with respect to $p$ on a chain of %d bins" % n_bins, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
