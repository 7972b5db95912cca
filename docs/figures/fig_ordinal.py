"""Ordinal classes: EMD^2 on a chain is the ranked probability score, and it grows
with the distance of a mistake where the cross-entropy does not."""

from __future__ import annotations

import numpy as np

import emdtree


def cdf_gap(p: np.ndarray, label: int) -> dict[str, np.ndarray | float]:
    """The two cumulative distributions of a prediction ``p`` and a label, and the
    ranked probability score, the sum of their squared gaps, with EMD^2 on the chain."""
    q = np.eye(p.shape[0])[label]
    f_p, f_q = np.cumsum(p), np.cumsum(q)
    return {"F_p": f_p, "F_q": f_q, "rps": float(np.sum((f_p - f_q) ** 2)),
            "emd2": float(emdtree.emd(p, q, emdtree.Tree.chain(p.shape[0]), rho=2))}


def by_distance(n_classes: int = 7, label: int = 0, top: float = 0.7) -> dict[str, np.ndarray]:
    """Cross-entropy and EMD^2 of a prediction that puts ``top`` on class ``j`` and
    spreads the rest evenly, for every ``j``, against ``label``."""
    j = np.arange(n_classes)
    p = np.full((n_classes, n_classes), (1.0 - top) / (n_classes - 1))
    p[j, j] = top
    q = np.eye(n_classes)[label]
    return {"distance": np.abs(j - label), "cross-entropy": -np.log(p[:, label]),
            "EMD2": emdtree.emd(p, q, emdtree.Tree.chain(n_classes), rho=2)}


def draw(path: str) -> None:
    """Write the figure to ``path``."""
    import matplotlib.pyplot as plt

    p = np.array([0.05, 0.15, 0.2, 0.4, 0.2])
    g = cdf_gap(p, label=1)
    c = by_distance()
    fig, (ax_cdf, ax) = plt.subplots(1, 2, figsize=(8.0, 3.0))
    k = np.arange(p.shape[0])
    edges = np.append(k, k[-1] + 1) - 0.5  # each cumulative value over its class's bar
    ax_cdf.bar(k, p, color="tab:blue", alpha=0.35, label="prediction $p$")
    ax_cdf.stairs(g["F_p"], edges, color="tab:blue", lw=2, baseline=None, label="$F_p$ (cumulative)")
    ax_cdf.stairs(g["F_q"], edges, color="tab:orange", lw=2, baseline=None, label="$F_q$, label = class 1")
    ax_cdf.fill_between(edges, np.append(g["F_p"], 1.0), np.append(g["F_q"], 1.0), step="post",
                        color="tab:purple", alpha=0.2)
    ax_cdf.set_xticks(k)
    ax_cdf.set_xlabel("class")
    ax_cdf.set_title(f"RPS = sum of squared gaps = EMD$^2$ = {g['rps']:.3f}", fontsize=9)
    ax_cdf.legend(fontsize=7, frameon=False, loc="upper left")
    for key, label, color in (("cross-entropy", "cross-entropy", "tab:gray"),
                              ("EMD2", "EMD$^2$ on Tree.chain(7)", "tab:purple")):
        ax.plot(c["distance"], c[key], "o-", color=color, lw=2, label=label)
    ax.set_xlabel("classes between the top class (0.7) and the label")
    ax.set_ylabel("loss")
    ax.set_title("a mistake two classes off costs more than one", fontsize=9)
    ax.legend(fontsize=8, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
