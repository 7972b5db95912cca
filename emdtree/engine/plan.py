"""One plan per tree: every array derived from its layout that an implementation needs.

A :class:`TreePlan` is made on first use and held in the tree's one cache slot
(``Tree._plan``); :func:`plan_of` returns it. Each array is computed the first
time something asks for it and kept:

* for the Numba kernels, the layout arrays in the kernels' argument order and
  the sweep order, per dtype (:meth:`TreePlan.kernel_arrays`,
  :meth:`TreePlan.sweep_arrays`);
* for the reference math (:mod:`emdtree.engine.reference`), the node-major
  index and weight arrays with their pointer-doubling tables
  (:attr:`TreePlan.node_major`), the sparse matrices of the NumPy pass
  (:attr:`TreePlan.numpy_sums`) and the lowest common ancestors of the dense
  Hessian (:attr:`TreePlan.hessian_index`);
* copies of any of these in another library or on a device (index tensors,
  CUDA device arrays), per key (:meth:`TreePlan.converted`).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import numpy as np

from ..trees.layout import sweep_order

__all__ = ["NodeMajor", "NumpySums", "TreePlan", "plan_of"]

# Trees whose incidence holds more than this many entries per node (deep trees
# that are not chains, where it is nearly dense) are left to the kernels by the
# NumPy pass (:meth:`TreePlan.suits_numpy_pass`).
MAX_MEAN_DEPTH = 64


class NodeMajor(NamedTuple):
    """Index and weight arrays of a tree for node-major arrays ``(positions, rows)`` (NumPy).

    The positions of the post-order layout split into the *leaves* that carry
    a bin, whose phi is their bin's value (no sum needed), and the other,
    *inner* positions, which keep the post-order (the root last). Sums run
    over the inner positions only: 371 of the 1371 nodes of the ImageNet
    tree. Leaves are addressed through their bins, so that the caller's bin
    order needs no permutation. Arrays of values at every node are the
    concatenation ``[bins; inner]`` (``n_bins + n_inner`` rows), read through
    ``node_source`` and ``position_source``.
    """

    n_inner: int  # inner positions, the root included (last)
    up: np.ndarray  # (n_bins,) inner index of each bin's parent (a leaf) or of its own node (inner)
    tables: tuple[np.ndarray, ...]  # doubling tables a_0 .. a_{T-1} of the inner tree, each (n_inner,)
    inner_parent: np.ndarray  # (n_inner,) inner index of each inner position's parent, -1 at the root
    # The *bin rows*: every bin, or, where at most half the bins are leaves (a chain, bins
    # on inner nodes), the leaf bins only, so that no work is spent on the other bins.
    leaf_bins: np.ndarray | None  # (n_leaf,) the leaf bins, or None: the bin rows are all bins
    leaf_slot: np.ndarray | None  # (n_bins,) row of [bin rows; 0] of each bin (n_leaf for inner bins)
    bin_weight: np.ndarray  # (bin rows, 1) float64 cost of each leaf bin's edge; 0 for inner bins
    inner_weight: np.ndarray  # (n_inner - 1, 1) float64 edge costs of the non-root inner positions
    bin_curv_weight: np.ndarray  # the same, 0 on edges with all bins (or none) below
    inner_curv_weight: np.ndarray
    node_source: np.ndarray  # (n_nodes,) row of [bins; inner] holding each node (node order)
    position_source: np.ndarray  # (n_nodes,) the same for each layout position


class NumpySums(NamedTuple):
    """The sums of the NumPy pass as SciPy sparse products (float64 CSR matrices).

    ``gather`` (n_inner, n_bins) sums the bins into the inner positions (a
    leaf into its parent, an inner bin into its own node); ``inner`` (n_inner,
    n_inner) is the incidence of the inner tree (``inner[i, j] = 1`` if ``j``
    is in the subtree of ``i``), None when the inner tree is a path in
    post-order (a chain), whose sums are cumulative sums.
    """

    gather: Any
    inner: Any | None
    inner_t: Any | None  # its transpose, as CSR


def doubling(parent: np.ndarray, depth: int) -> list[np.ndarray]:
    """Tables ``a_t`` (``a_t[j]`` the ``2^t``-th ancestor of ``j``, the root its own), ``2^T > depth``.

    ``parent`` is in post-order, the root last (its parent -1).
    """
    a = parent.copy()
    a[-1] = parent.shape[0] - 1
    tables = []
    while (1 << len(tables)) <= depth:
        tables.append(a)
        a = a[a]
    return tables


# Siblings summed one after the other in one step of the NumPy pass's subtree sums,
# rather than one step per sibling rank.
_WIDE = 16


class TreePlan:
    """The derived arrays of one tree, each computed on first use and kept.

    Parameters
    ----------
    tree : Tree
        The tree. The plan keeps its layout and sizes, not the tree.
    """

    __slots__ = ("layout", "n_nodes", "n_bins", "depth", "canonical_chain", "_cache")

    def __init__(self, tree: Any) -> None:
        self.layout = tree.layout
        self.n_nodes = tree.n_nodes
        self.n_bins = tree.n_bins
        self.depth = tree.depth
        self.canonical_chain = tree._is_canonical_chain
        self._cache: dict[Any, Any] = {}

    def converted(self, key: Any, build: Callable[[], Any]) -> Any:
        """``build()``, once per ``key``: copies in other libraries or on devices."""
        try:
            return self._cache[key]
        except KeyError:
            out = self._cache[key] = build()
            return out

    def check_dtype(self, dtype: Any) -> None:
        """Raise ValueError if an edge cost is beyond the range of the float ``dtype``."""
        dtype = np.dtype(dtype)
        big = self.layout.weight.max(initial=0.0)
        if big > np.finfo(dtype).max:
            raise ValueError(
                f"the tree has an edge cost of {big:g}, beyond the {dtype.name} range: pass float64 masses"
            )

    # ------------------------------------------------------------------ kernels

    def kernel_arrays(self, dtype: Any) -> tuple[np.ndarray, ...]:
        """``(parent, weight, bin_position, non_bin, bins_below)`` for the kernels, per dtype."""
        dtype = np.dtype(dtype)

        def build() -> tuple[np.ndarray, ...]:
            self.check_dtype(dtype)
            lay = self.layout
            return (
                lay.parent,
                np.ascontiguousarray(lay.weight, dtype=dtype),
                lay.bin_position,
                np.flatnonzero(lay.bin_at < 0).astype(np.int64),
                np.ascontiguousarray(lay.bins_below, dtype=dtype),
            )

        return self.converted(("kernel", dtype.str), build)

    def sweep_arrays(self, dtype: Any) -> tuple[np.ndarray, ...]:
        """``(parent, weight, bin_position, non_bin)`` of the layout's sweep order, per dtype."""
        dtype = np.dtype(dtype)

        def build() -> tuple[np.ndarray, ...]:
            self.check_dtype(dtype)
            order = self.converted("sweep_order", lambda: sweep_order(self.layout))
            return (order.parent, np.ascontiguousarray(order.weight, dtype=dtype), order.bin_position,
                    order.non_bin)

        return self.converted(("sweep", dtype.str), build)

    @property
    def sweep_sums(self) -> tuple[np.ndarray, list, np.ndarray]:
        """The steps of the NumPy pass's subtree sums in the kernels' order
        (:func:`emdtree.engine.backends.subtree_sums_as_kernels`): the row of each layout
        position in the sweep order, the steps (deepest first: children added into
        their parents, rank by rank among siblings), and the inner layout positions."""
        return self.converted("sweep_sums", self._sweep_sums)

    def _sweep_sums(self) -> tuple[np.ndarray, list, np.ndarray]:
        lay = self.layout
        order = self.converted("sweep_order", lambda: sweep_order(lay))
        n = lay.parent.shape[0]
        depth = np.empty(n, dtype=np.int64)
        depth[order.row] = lay.depth
        rows = np.arange(n, dtype=np.int64)
        steps: list = []
        for level in range(int(depth.max(initial=0)), 0, -1):
            child = rows[(depth == level) & (order.parent >= 0)]  # ascending: the sweep's order
            par = order.parent[child]
            by = np.argsort(par, kind="stable")
            child, par = child[by], par[by]
            starts = np.flatnonzero(np.r_[True, par[1:] != par[:-1]])
            counts = np.diff(np.r_[starts, child.size])
            rank = np.arange(child.size) - np.repeat(starts, counts)
            wide = np.repeat(counts > _WIDE, counts)
            for r in range(int(min(_WIDE, counts.max(initial=0)))):
                pick = (rank == r) & ~wide
                if pick.any():
                    steps.append((child[pick], par[pick]))
            for start, count in zip(starts[counts > _WIDE], counts[counts > _WIDE]):
                steps.append((child[start:start + count], int(par[start])))
        is_leaf = (lay.size == 1) & (lay.bin_at >= 0)
        is_leaf[-1] = False
        return order.row, steps, np.flatnonzero(~is_leaf)

    # ------------------------------------------------------------ reference math

    @property
    def node_major(self) -> NodeMajor:
        """The :class:`NodeMajor` arrays of the reference math."""
        return self.converted("node_major", self._node_major)

    def _node_major(self) -> NodeMajor:
        lay = self.layout
        n, n_bins = self.n_nodes, self.n_bins
        is_leaf = (lay.size == 1) & (lay.bin_at >= 0)
        is_leaf[-1] = False  # the root is inner, even alone
        inner = np.flatnonzero(~is_leaf)
        inner_index = np.full(n, -1, dtype=np.int64)
        inner_index[inner] = np.arange(inner.size)
        inner_parent = inner_index[lay.parent[inner]]  # -1 at the root (last)
        inner_parent[-1] = -1
        depth = int(lay.depth[inner].max(initial=0))
        tables = doubling(inner_parent, depth) or [np.full(inner.size, inner.size - 1)]
        node = lay.bin_position  # position of each bin
        leaf_bin = is_leaf[node]
        up = np.where(leaf_bin, inner_index[lay.parent[node]], inner_index[node])
        weight = np.asarray(lay.weight, dtype=np.float64)
        below = lay.bins_below
        curv = np.where((below > 0) & (below < n_bins), weight, 0.0)
        # the row of [bins; inner] that holds each layout position
        source = np.where(is_leaf, 0, n_bins + inner_index)
        source[is_leaf] = lay.bin_at[is_leaf]
        idx = np.int32 if n + n_bins < 2**31 else np.int64
        leaf_bins = leaf_slot = None
        bin_weight = np.where(leaf_bin, weight[node], 0.0)[:, None]
        bin_curv = np.where(leaf_bin, curv[node], 0.0)[:, None]
        if 2 * int(leaf_bin.sum()) <= n_bins:
            leaf_bins = np.flatnonzero(leaf_bin)
            leaf_slot = np.full(n_bins, leaf_bins.size, dtype=np.int64)
            leaf_slot[leaf_bins] = np.arange(leaf_bins.size)
            bin_weight, bin_curv = bin_weight[leaf_bins], bin_curv[leaf_bins]
            leaf_bins, leaf_slot = leaf_bins.astype(idx), leaf_slot.astype(idx)
        return NodeMajor(
            n_inner=int(inner.size),
            up=up.astype(idx),
            tables=tuple(t.astype(idx) for t in tables),
            inner_parent=inner_parent.astype(idx),
            leaf_bins=leaf_bins,
            leaf_slot=leaf_slot,
            bin_weight=bin_weight,
            inner_weight=weight[inner][:-1, None],
            bin_curv_weight=bin_curv,
            inner_curv_weight=curv[inner][:-1, None],
            node_source=source[lay.position].astype(idx),
            position_source=source.astype(idx),
        )

    @property
    def up_runs(self) -> tuple[tuple[int, int, int], ...] | None:
        """``node_major.up`` as runs ``(first bin, end bin, first inner index)`` of consecutive
        indices, where there are at most 8 (a chain: 2), else None: its gather as slices."""
        return self.converted("up_runs", self._up_runs)

    def _up_runs(self) -> tuple[tuple[int, int, int], ...] | None:
        up = self.node_major.up.astype(np.int64)
        starts = np.flatnonzero(np.r_[True, np.diff(up) != 1])
        if starts.size > 8:
            return None
        ends = np.r_[starts[1:], up.size]
        return tuple((int(a), int(b), int(up[a])) for a, b in zip(starts, ends))

    @property
    def numpy_sums(self) -> NumpySums:
        """The :class:`NumpySums` of the NumPy pass."""
        return self.converted("numpy_sums", self._numpy_sums)

    def _numpy_sums(self) -> NumpySums:
        import scipy.sparse

        nm = self.node_major
        n_inner, n_bins = nm.n_inner, self.n_bins
        ones = np.ones(n_bins)
        gather = scipy.sparse.csr_matrix((ones, (nm.up, np.arange(n_bins))), shape=(n_inner, n_bins))
        parent = nm.inner_parent.astype(np.int64)
        if np.array_equal(parent[:-1], np.arange(1, n_inner)):
            return NumpySums(gather, None, None)
        rows, cols = [], []
        at = np.arange(n_inner, dtype=np.int64)
        j = at
        while at.size:  # one step up the inner tree per pass
            rows.append(at)
            cols.append(j)
            up = parent[at]
            keep = up >= 0
            at, j = up[keep], j[keep]
        rows, cols = np.concatenate(rows), np.concatenate(cols)
        inner = scipy.sparse.csr_matrix((np.ones(rows.size), (rows, cols)), shape=(n_inner, n_inner))
        return NumpySums(gather, inner, inner.T.tocsr())

    def suits_numpy_pass(self) -> bool:
        """Whether the NumPy pass is cheap here: a chain, or a tree of moderate depth
        (at most :data:`MAX_MEAN_DEPTH` (bin, ancestor-or-self) pairs per node)."""
        if self.canonical_chain:
            return True
        lay = self.layout
        pairs = int(lay.depth[lay.bin_position].sum()) + self.n_bins
        return pairs <= MAX_MEAN_DEPTH * self.n_nodes

    @property
    def hessian_index(self) -> np.ndarray:
        """(n_bins * n_bins,) row of ``[bins; inner]`` at the lowest common ancestor of each pair of bins."""
        return self.converted("hessian_index", self._hessian_index)

    def _hessian_index(self) -> np.ndarray:
        # In post-order the lca of positions a <= b is the first ancestor-or-self
        # i of b whose subtree starts at or before a: found by binary lifting.
        lay = self.layout
        n = self.n_nodes
        idx = np.int32 if n < 2**31 else np.int64  # n_bins^2 pairs: keep them small
        start = (np.arange(n) - lay.size + 1).astype(idx)
        pos = lay.bin_position.astype(idx)
        low = np.minimum(pos[:, None], pos[None, :]).ravel()
        node = np.maximum(pos[:, None], pos[None, :]).ravel()
        top = node
        found = start[node] <= low
        for a in reversed(doubling(lay.parent, self.depth)):  # climb while the subtree starts after low
            up = a.astype(idx)[node]
            node = np.where(start[up] > low, up, node)
        parent = np.where(lay.parent < 0, n - 1, lay.parent).astype(idx)
        lca = np.where(found, top, parent[node])
        return self.node_major.position_source[lca].astype(idx)


def plan_of(tree: Any) -> TreePlan:
    """The :class:`TreePlan` of ``tree``, made on first use and kept in its ``_plan`` slot."""
    plan = tree._plan
    if plan is None:
        plan = TreePlan(tree)
        object.__setattr__(tree, "_plan", plan)
    return plan
