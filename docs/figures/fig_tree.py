"""The flow phi and the gradient on a small class hierarchy (after the paper's Figure 1).

The tree is drawn top-down with a simple layout: leaves evenly spaced in
depth-first order, every parent centred over its first and last child.
"""

from __future__ import annotations

import numpy as np

import emdtree

HIERARCHY = {
    "animal": {"mammal": ["cat", "tiger", "dog"], "bird": ["eagle", "penguin"]},
    "vehicle": {"car": ["sedan", "truck"], "aircraft": ["plane", "starship"]},
}


def example() -> tuple[emdtree.Tree, np.ndarray, np.ndarray]:
    """The tree of :data:`HIERARCHY`, a prediction ``p`` and a one-hot target ``q`` ("tiger")."""
    tree = emdtree.Tree.from_nested(HIERARCHY)
    scores = {"cat": 0.45, "tiger": 0.2, "dog": 0.1, "eagle": 0.05, "plane": 0.15, "starship": 0.05}
    p = np.array([scores.get(name, 0.0) for name in tree.names])
    q = np.array([1.0 if name == "tiger" else 0.0 for name in tree.names])
    return tree, p, q


def tree_positions(tree: emdtree.Tree) -> np.ndarray:
    """``(n_nodes, 2)`` drawing coordinates: x from the leaf order, y = -depth."""
    n = tree.n_nodes
    children: list[list[int]] = [[] for _ in range(n)]
    for node, parent in enumerate(tree.parents):
        if parent >= 0:
            children[parent].append(node)
    xy = np.zeros((n, 2))
    next_x = 0.0
    # iterative depth-first walk: a node is placed after all of its children
    stack = [(tree.root, 0, False)]
    while stack:
        node, depth, expanded = stack.pop()
        xy[node, 1] = -depth
        if not children[node]:
            xy[node, 0] = next_x
            next_x += 1.0
        elif expanded:
            kids = children[node]
            xy[node, 0] = 0.5 * (xy[kids[0], 0] + xy[kids[-1], 0])
        else:
            stack.append((node, depth, True))
            stack.extend((child, depth + 1, False) for child in reversed(children[node]))
    return xy


def flows(tree: emdtree.Tree, p: np.ndarray, q: np.ndarray) -> dict[str, np.ndarray]:
    """phi per node and the dirt-conserving gradients (rho = 1 and 2) per bin."""
    return {
        "phi": emdtree.phi(p, q, tree),
        "grad1": emdtree.emd_grad(p, q, tree, rho=1.0),
        "grad2": emdtree.emd_grad(p, q, tree, rho=2.0),
    }


def draw(path: str) -> None:
    """Write the figure to ``path``."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyArrowPatch

    tree, p, q = example()
    xy = tree_positions(tree)
    f = flows(tree, p, q)
    phi = f["phi"]
    leaf_x = xy[tree.bins, 0]

    fig, (ax_tree, ax_mass, ax_grad) = plt.subplots(
        3, 1, figsize=(8.0, 7.0), sharex=True, gridspec_kw={"height_ratios": [2.3, 1.0, 1.1]}
    )
    width_per_mass = 9.0
    for node, parent in enumerate(tree.parents):
        if parent < 0:
            continue
        (x0, y0), (x1, y1) = xy[node], xy[parent]
        ax_tree.plot([x0, x1], [y0, y1], color="0.8", lw=1.0, zorder=1)
        if abs(phi[node]) > 1e-12:
            # phi > 0: p has too much mass below this edge, which must leave upwards
            start, end = ((x0, y0), (x1, y1)) if phi[node] > 0 else ((x1, y1), (x0, y0))
            ax_tree.add_patch(
                FancyArrowPatch(
                    start, end, arrowstyle="-|>", mutation_scale=12, shrinkA=9, shrinkB=9,
                    lw=0.8 + width_per_mass * abs(phi[node]), color="tab:red", alpha=0.75, zorder=2,
                )
            )
        ax_tree.text(
            0.5 * (x0 + x1), 0.5 * (y0 + y1), f"{phi[node]:+.2f}", fontsize=7, ha="center", va="center",
            color="tab:red" if abs(phi[node]) > 1e-12 else "0.6", zorder=4,
            bbox={"boxstyle": "round,pad=0.15", "facecolor": "white", "edgecolor": "none", "alpha": 0.9},
        )
    names = tree.node_names
    for node in range(tree.n_nodes):
        label = names[node] if names is not None and names[node] is not None else "root"
        is_leaf = node in set(tree.bins.tolist())
        ax_tree.scatter(*xy[node], s=30, color="black", zorder=3)
        ax_tree.text(
            xy[node, 0], xy[node, 1] + (-0.15 if is_leaf else 0.12), label, ha="center",
            va="top" if is_leaf else "bottom", fontsize=8,
        )
    ax_tree.set_ylim(xy[:, 1].min() - 0.5, 0.45)
    ax_tree.set_yticks([])
    ax_tree.tick_params(axis="x", length=0)
    ax_tree.set_title(
        "flow $\\phi_i$ on every edge (arrow: direction mass must move, width: amount)", fontsize=9
    )
    for side in ("left", "right", "top", "bottom"):
        ax_tree.spines[side].set_visible(False)

    ax_mass.bar(leaf_x - 0.18, p, width=0.34, color="tab:blue", label="prediction $p$")
    ax_mass.bar(leaf_x + 0.18, q, width=0.34, color="tab:orange", label="target $q$")
    ax_mass.set_ylabel("mass")
    ax_mass.legend(fontsize=8, frameon=False, loc="upper right")

    ax_grad.axhline(0.0, color="black", lw=0.6)
    ax_grad.bar(leaf_x - 0.18, f["grad1"], width=0.34, color="tab:green", label="EMD ($\\rho = 1$)")
    ax_grad.bar(leaf_x + 0.18, f["grad2"], width=0.34, color="tab:purple", label="EMD$^2$ ($\\rho = 2$)")
    ax_grad.set_ylabel("$\\partial / \\partial p$")
    ax_grad.legend(fontsize=8, frameon=False, loc="upper left")
    ax_grad.set_xticks(leaf_x)
    ax_grad.set_xticklabels(tree.names, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
