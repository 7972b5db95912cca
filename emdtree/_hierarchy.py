"""Tree distances between bins through their lowest common ancestor (LCA).

The hierarchical metrics need the distance between a true class and each of
a prediction's best classes, for many pairs; the tables here answer that in
O(log depth) vectorised steps per batch of pairs, without the
``n_bins x n_bins`` distance matrix.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from ._tree import Tree

DISTANCES = ("path", "lca_height")


class Hierarchy:
    """Distances between bins through their lowest common ancestor (LCA).

    In the post-order layout every ancestor of a position has a larger
    position, and the subtree of position ``j`` is ``[j - size[j] + 1, j]``.
    So for bin positions ``a < b`` the LCA is the lowest ancestor of ``a``
    whose position is at least ``b``, found by binary lifting in
    ``ceil(log2(depth + 1))`` vectorised steps.
    """

    def __init__(self, tree: Tree) -> None:
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

        ``kind`` is ``"path"`` (the path metric of :meth:`Tree.distance_matrix`)
        or ``"lca_height"`` (the longest path from the LCA down to a bin; 0 for
        equal bins).
        """
        a, b = self.bin_position[bins_a], self.bin_position[bins_b]
        top = self.lca(a, b)
        if kind == "path":
            return self.to_root[a] + self.to_root[b] - 2.0 * self.to_root[top]
        return np.where(a == b, 0.0, self.height[top])


@functools.lru_cache(maxsize=8)
def hierarchy(tree: Tree) -> Hierarchy:
    """The LCA tables of ``tree``, built once for the last few trees."""
    return Hierarchy(tree)
