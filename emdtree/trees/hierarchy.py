"""Tree distances between bins through their lowest common ancestor (LCA).

The hierarchical metrics need the distance between a true class and each of
a prediction's best classes, for many pairs; the tables here answer that in
O(log depth) vectorised steps per batch of pairs, without the
``n_bins x n_bins`` distance matrix.

Three distances between bins ``a != b`` (all are 0 for ``a == b``), with
``depth(x)`` the summed edge costs from the root down to node ``x``:

``"path"``
    ``depth(a) + depth(b) - 2 depth(lca)``: the tree's path metric.
``"lca_height"``
    ``H - depth(lca)``, ``H`` the largest ``depth`` of a bin: the distance of
    Bertinetto et al. (2020), who compute it on unit edges as the height of
    the hierarchy minus the depth of the LCA. It is an ultrametric; where the
    bins are leaves, it is half the path metric of the tree in which each
    bin's own edge is lengthened to bring the bin down to depth ``H``.
``"lca_subtree_height"``
    The largest ``depth(x) - depth(lca)`` over the bins ``x`` below the LCA:
    the height of the LCA's own subtree. It equals ``"lca_height"`` when
    every bin is a leaf at depth ``H``.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np


DISTANCES = ("path", "lca_height", "lca_subtree_height")


class Hierarchy:
    """Distances between bins through their lowest common ancestor (LCA).

    In the post-order layout every ancestor of a position has a larger
    position, and the subtree of position ``j`` is ``[j - size[j] + 1, j]``.
    So for bin positions ``a < b`` the LCA is the lowest ancestor of ``a``
    whose position is at least ``b``, found by binary lifting in
    ``ceil(log2(depth + 1))`` vectorised steps.
    """

    def __init__(self, tree: Any) -> None:  # an emdtree.Tree (whose module imports this one)
        lay = tree.layout
        n = tree.n_nodes
        parent = lay.parent.copy()
        parent[-1] = n - 1  # the root is its own parent: lifting stops there
        levels = max(1, math.ceil(math.log2(tree.depth + 1)))
        up = [parent]
        for _ in range(levels - 1):
            up.append(up[-1][up[-1]])
        self.up = up
        self.bin_position = lay.bin_position
        # Length of the path to the root and the largest such length among the
        # bins below, level by level so that each sum follows its path.
        by_depth = np.argsort(lay.depth, kind="stable")
        starts = np.searchsorted(lay.depth[by_depth], np.arange(tree.depth + 2))
        to_root = np.zeros(n)
        for d in range(1, tree.depth + 1):
            at = by_depth[starts[d]:starts[d + 1]]
            to_root[at] = to_root[parent[at]] + lay.weight[at]
        lowest_bin = np.full(n, -np.inf)
        lowest_bin[lay.bin_position] = to_root[lay.bin_position]
        for d in range(tree.depth, 0, -1):
            at = by_depth[starts[d]:starts[d + 1]]
            np.maximum.at(lowest_bin, parent[at], lowest_bin[at])
        self.to_root = to_root
        self.height = lowest_bin - to_root  # -inf where no bin is below
        self.total_height = float(lowest_bin[-1])  # H: the largest depth of a bin

    def lca(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Position of the LCA of the nodes at positions ``a`` and ``b``."""
        lo, hi = np.minimum(a, b), np.maximum(a, b)
        x = lo
        for up in reversed(self.up):
            step = up[x]
            x = np.where(step < hi, step, x)
        return np.where(lo == hi, lo, self.up[0][x])

    def distance(self, bins_a: np.ndarray, bins_b: np.ndarray, kind: str) -> np.ndarray:
        """Tree distance between bins ``bins_a`` and ``bins_b`` (equal shapes), float64.

        ``kind`` is one of :data:`DISTANCES` (see the module notes).
        """
        a, b = self.bin_position[bins_a], self.bin_position[bins_b]
        top = self.lca(a, b)
        if kind == "path":
            return self.to_root[a] + self.to_root[b] - 2.0 * self.to_root[top]
        if kind == "lca_height":
            return np.where(a == b, 0.0, self.total_height - self.to_root[top])
        if kind == "lca_subtree_height":
            return np.where(a == b, 0.0, self.height[top])
        raise ValueError(f"distance must be one of {', '.join(map(repr, DISTANCES))}, got {kind!r}")


@functools.lru_cache(maxsize=8)
def hierarchy(tree: Any) -> Hierarchy:
    """The LCA tables of ``tree`` (an :class:`emdtree.Tree`), built once for the last few trees."""
    return Hierarchy(tree)
