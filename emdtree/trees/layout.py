"""Flattened tree layout: the post-order numbering every kernel walks.

A tree is stored by its ``parents`` array. The kernels never see that
numbering: they work on *positions* in a depth-first post-order, in which

* every node comes after all of its descendants, so one ascending sweep
  accumulates subtree sums (phi) and one descending sweep accumulates sums
  over ancestors (gradients);
* the subtree of the node at position ``j`` is the contiguous range
  ``[j - size[j] + 1, j]``;
* the root is the last position, ``n_nodes - 1``, and ``parent[j] > j``.

Children are visited in increasing node index, so the layout of a tree is a
deterministic function of its ``parents`` array.

:func:`sweep_order` renumbers a layout for the kernels that need only the
first and last of these properties (the value-and-gradient sweeps): the bins
of the leaves first, in bin order, then the other nodes in post-order.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from ..kernels.jit import njit


class Layout(NamedTuple):
    """Arrays of a tree in post-order positions (see module docstring).

    Attributes
    ----------
    order : ndarray of int64, shape (n_nodes,)
        Node index at each position; ``order[-1]`` is the root.
    position : ndarray of int64, shape (n_nodes,)
        Position of each node (inverse of ``order``).
    parent : ndarray of int64, shape (n_nodes,)
        Position of the parent of each position; ``-1`` at the root.
    weight : ndarray of float64, shape (n_nodes,)
        Cost of the edge from each position to its parent; 0 at the root.
    bin_position : ndarray of int64, shape (n_bins,)
        Position of the node that carries each bin.
    bins_below : ndarray of float64, shape (n_nodes,)
        Number of bins in the subtree of each position.
    size : ndarray of int64, shape (n_nodes,)
        Number of nodes in the subtree of each position.
    depth : ndarray of int64, shape (n_nodes,)
        Number of edges between each position and the root.
    bin_at : ndarray of int64, shape (n_nodes,)
        Bin index carried by each position, or ``-1``.
    """

    order: np.ndarray
    position: np.ndarray
    parent: np.ndarray
    weight: np.ndarray
    bin_position: np.ndarray
    bins_below: np.ndarray
    size: np.ndarray
    depth: np.ndarray
    bin_at: np.ndarray


@njit(cache=True)
def _postorder(parents, root):  # pragma: no cover - compiled
    """Iterative DFS post-order from ``root``; returns (order, n_reached)."""
    n = parents.shape[0]
    start = np.zeros(n + 1, dtype=np.int64)
    for i in range(n):
        if parents[i] >= 0:
            start[parents[i] + 1] += 1
    for i in range(n):
        start[i + 1] += start[i]
    fill = start[:-1].copy()
    children = np.empty(max(n - 1, 0), dtype=np.int64)
    for i in range(n):
        par = parents[i]
        if par >= 0:
            children[fill[par]] = i
            fill[par] += 1
    order = np.empty(n, dtype=np.int64)
    stack = np.empty(n, dtype=np.int64)
    cursor = np.empty(n, dtype=np.int64)
    top = 0
    stack[0] = root
    cursor[0] = start[root]
    count = 0
    while top >= 0:
        node = stack[top]
        c = cursor[top]
        if c < start[node + 1]:
            cursor[top] = c + 1
            top += 1
            if top >= n:  # only reachable through a cycle through the root
                return order, -1
            stack[top] = children[c]
            cursor[top] = start[children[c]]
        else:
            order[count] = node
            count += 1
            top -= 1
    return order, count


@njit(cache=True)
def _fill_layout(parents, order, n_bins_at):  # pragma: no cover - compiled
    n = order.shape[0]
    position = np.empty(n, dtype=np.int64)
    for j in range(n):
        position[order[j]] = j
    parent = np.empty(n, dtype=np.int64)
    size = np.ones(n, dtype=np.int64)
    below = np.zeros(n, dtype=np.float64)
    for j in range(n):
        node = order[j]
        par = parents[node]
        parent[j] = position[par] if par >= 0 else -1
        below[j] += n_bins_at[node]
    for j in range(n - 1):
        size[parent[j]] += size[j]
        below[parent[j]] += below[j]
    depth = np.zeros(n, dtype=np.int64)
    for j in range(n - 2, -1, -1):
        depth[j] = depth[parent[j]] + 1
    return position, parent, size, below, depth


# Trees up to this many nodes are laid out in Python (about 2 us per node), which
# spares a new process the compilation of the two kernels above (about 0.8 s).
PYTHON_MAX_NODES = 20_000


def _postorder_py(parents: np.ndarray, root: int) -> tuple[np.ndarray, int]:
    """:func:`_postorder` in Python, for small trees: the same order."""
    n = parents.shape[0]
    children: list[list[int]] = [[] for _ in range(n)]
    for i, par in enumerate(parents.tolist()):
        if par >= 0:
            children[par].append(i)
    order: list[int] = []
    stack = [(root, iter(children[root]))]
    while stack:
        node, rest = stack[-1]
        child = next(rest, None)
        if child is None:
            order.append(node)
            stack.pop()
        elif len(stack) >= n:  # only reachable through a cycle through the root
            return np.empty(n, dtype=np.int64), -1
        else:
            stack.append((child, iter(children[child])))
    out = np.empty(n, dtype=np.int64)
    out[: len(order)] = order
    return out, len(order)


def _fill_layout_py(parents: np.ndarray, order: np.ndarray, n_bins_at: np.ndarray):
    """:func:`_fill_layout` in NumPy and Python, for small trees: the same arrays."""
    n = order.shape[0]
    position = np.empty(n, dtype=np.int64)
    position[order] = np.arange(n, dtype=np.int64)
    par = parents[order]
    parent = np.where(par >= 0, position[np.maximum(par, 0)], -1).astype(np.int64)
    size = [1] * n
    below = n_bins_at[order].tolist()
    up = parent.tolist()
    for j in range(n - 1):
        size[up[j]] += size[j]
        below[up[j]] += below[j]
    depth = [0] * n
    for j in range(n - 2, -1, -1):
        depth[j] = depth[up[j]] + 1
    return (position, parent, np.array(size, dtype=np.int64), np.array(below, dtype=np.float64),
            np.array(depth, dtype=np.int64))


def find_cycle(parents: np.ndarray, unreached: np.ndarray) -> list[int]:
    """Return the nodes of one parent cycle, starting from an unreached node."""
    node = int(unreached[0])
    seen: dict[int, int] = {}
    while node not in seen:
        seen[node] = len(seen)
        node = int(parents[node])
    cycle = [node]
    nxt = int(parents[node])
    while nxt != node:
        cycle.append(nxt)
        nxt = int(parents[nxt])
    return cycle


def build_layout(parents: np.ndarray, weights: np.ndarray, bins: np.ndarray) -> Layout:
    """Compute the post-order layout of a validated, acyclic tree.

    Parameters
    ----------
    parents : ndarray of int64, shape (n_nodes,)
    weights : ndarray of float64, shape (n_nodes,)
    bins : ndarray of int64, shape (n_bins,)

    Raises
    ------
    ValueError
        If some node is not connected to the root (the parents contain a cycle).
    """
    n = parents.shape[0]
    roots = np.flatnonzero(parents < 0)
    small = n <= PYTHON_MAX_NODES
    order, reached = (_postorder_py if small else _postorder)(parents, int(roots[0]))
    if reached != n:
        seen = np.zeros(n, dtype=bool)
        if reached > 0:
            seen[order[:reached]] = True
        cycle = find_cycle(parents, np.flatnonzero(~seen))
        raise ValueError(
            "parents contains a cycle: "
            + " -> ".join(str(c) for c in cycle + cycle[:1])
            + "; every node must lead to the root by following parents"
        )
    n_bins_at = np.bincount(bins, minlength=n).astype(np.float64)
    position, parent, size, below, depth = (_fill_layout_py if small else _fill_layout)(parents, order,
                                                                                        n_bins_at)
    weight = weights[order].astype(np.float64)
    weight[-1] = 0.0
    bin_at = np.full(n, -1, dtype=np.int64)
    bin_at[position[bins]] = np.arange(bins.shape[0], dtype=np.int64)
    layout = Layout(order, position, parent, weight, position[bins], below, size, depth, bin_at)
    for arr in layout:
        arr.setflags(write=False)
    return layout


class SweepOrder(NamedTuple):
    """A topological order of the nodes for the value-and-gradient sweeps.

    The layout's post-order puts the bins wherever the tree puts them, so that
    moving a block of samples between the caller's bin-ordered rows and the
    node-major scratch buffer is a scatter (and a gather) over the whole
    buffer: random rows, which miss every cache once the buffer outgrows it.
    This order puts the *simple* bins first, in bin order, and the other
    nodes after them in post-order. A simple bin is the only bin of a non-root
    leaf: nothing flows into its row in the ascending sweep, so it can come
    anywhere before its parent. Rows then move in bin order between the input
    and the buffer, and only the (smaller) rows of the other nodes see random
    access, through the parents of the simple bins.

    ``parent[j] > j`` and the root is last, as in the layout; subtrees are not
    contiguous, so only kernels that need no more than a topological order
    (the ascending and descending sweeps) can use it.

    Attributes
    ----------
    row : ndarray of int64, shape (n_nodes,)
        Row of each layout position.
    parent : ndarray of int64, shape (n_nodes,)
        Row of the parent of each row; ``-1`` at the root.
    weight : ndarray of float64, shape (n_nodes,)
        Cost of the edge from each row to its parent; 0 at the root.
    bin_position : ndarray of int64, shape (n_bins,)
        Row of the node that carries each bin.
    non_bin : ndarray of int64, shape (n_rows,)
        Rows of the nodes that carry no bin, ascending.
    """

    row: np.ndarray
    parent: np.ndarray
    weight: np.ndarray
    bin_position: np.ndarray
    non_bin: np.ndarray


def _simple_bins(layout: Layout) -> np.ndarray:
    """Whether each bin is the only bin of a non-root leaf."""
    n = layout.parent.shape[0]
    per_node = np.bincount(layout.bin_position, minlength=n)
    leaf = layout.size == 1
    leaf[n - 1] = False
    return (leaf & (per_node == 1))[layout.bin_position]


def sweep_order(layout: Layout) -> SweepOrder:
    """The :class:`SweepOrder` of a layout: simple bins first, in bin order."""
    n = layout.parent.shape[0]
    simple_bin = _simple_bins(layout)
    simple_at = np.zeros(n, dtype=bool)
    simple_at[layout.bin_position[simple_bin]] = True
    row = np.empty(n, dtype=np.int64)
    n_simple = int(simple_bin.sum())
    row[layout.bin_position[simple_bin]] = np.arange(n_simple, dtype=np.int64)
    row[~simple_at] = np.arange(n_simple, n, dtype=np.int64)
    order = np.empty(n, dtype=np.int64)
    order[row] = np.arange(n, dtype=np.int64)
    parent = np.full(n, -1, dtype=np.int64)
    parent[:-1] = row[layout.parent[order[:-1]]]
    weight = layout.weight[order]
    carries = np.zeros(n, dtype=bool)
    carries[row[layout.bin_position]] = True
    out = SweepOrder(row, parent, weight, row[layout.bin_position], np.flatnonzero(~carries).astype(np.int64))
    for arr in out:
        arr.setflags(write=False)
    return out

