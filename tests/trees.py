"""Tree and mass generators for the test suite.

Every builder returns ``(parents, weights, bins)`` as NumPy arrays:
``parents`` (int64, ``-1`` at the single root), ``weights`` (float64, the cost
of the edge to the parent, ``0`` at the root) and ``bins`` (int64, the node
carrying each bin).
"""

import numpy as np


def _pack(parents, weights, bins):
    parents = np.array(parents, dtype=np.int64)
    weights = np.array(weights, dtype=np.float64)
    bins = np.array(bins, dtype=np.int64)
    weights[parents == -1] = 0.0
    return parents, weights, bins


def leaves(parents):
    """Indices of the nodes without children, in increasing order.

    Parameters
    ----------
    parents : array_like of int, shape (n_nodes,)
        Parent of each node, ``-1`` at the root.

    Returns
    -------
    ndarray of int64
    """
    parents = np.asarray(parents, dtype=np.int64)
    has_child = np.zeros(len(parents), dtype=bool)
    has_child[parents[parents >= 0]] = True
    return np.flatnonzero(~has_child).astype(np.int64)


def random_tree(rng, n_nodes, bins_on_internal=False, weighted=True, zero_weights=False):
    """Random tree by random parent attachment, with shuffled node labels.

    Parameters
    ----------
    rng : numpy.random.Generator
        Source of randomness.
    n_nodes : int
        Number of nodes, at least 2.
    bins_on_internal : bool, optional
        Besides the leaves, put bins on a random non-empty subset of the
        internal nodes (the root may be among them).
    weighted : bool, optional
        Edge weights uniform in ``(0.1, 3)``; otherwise all ``1``.
    zero_weights : bool, optional
        Set the weight of about a quarter of the edges (at least one) to
        exactly ``0``.

    Returns
    -------
    parents, weights, bins : ndarray
        The bins come in a random order.

    Notes
    -----
    Node ``j`` of the unlabelled tree is attached to a uniformly random
    earlier node; the labels are then permuted, so a parent's index may be
    larger or smaller than its child's.
    """
    if n_nodes < 2:
        raise ValueError("n_nodes must be at least 2")
    raw = np.full(n_nodes, -1, dtype=np.int64)
    for j in range(1, n_nodes):
        raw[j] = rng.integers(0, j)
    perm = rng.permutation(n_nodes)  # raw node j gets label perm[j]
    parents = np.full(n_nodes, -1, dtype=np.int64)
    for j in range(1, n_nodes):
        parents[perm[j]] = perm[raw[j]]

    if weighted:
        weights = rng.uniform(0.1, 3.0, size=n_nodes)
    else:
        weights = np.ones(n_nodes)
    non_root = np.flatnonzero(parents != -1)
    if zero_weights:
        n_zero = max(1, len(non_root) // 4)
        weights[rng.choice(non_root, size=n_zero, replace=False)] = 0.0

    bins = list(leaves(parents))
    if bins_on_internal:
        internal = np.setdiff1d(np.arange(n_nodes), bins)
        n_extra = int(rng.integers(1, len(internal) + 1))
        bins.extend(rng.choice(internal, size=n_extra, replace=False))
    bins = rng.permutation(np.asarray(bins, dtype=np.int64))
    return _pack(parents, weights, bins)


def single_edge(weight=1.0):
    """Two nodes joined by one edge, with a bin on each.

    Parameters
    ----------
    weight : float, optional
        Cost of the edge.

    Returns
    -------
    parents, weights, bins : ndarray
        Node 0 is the root and carries bin 0; node 1 carries bin 1.
    """
    return _pack([-1, 0], [0.0, weight], [0, 1])


def chain(n, spacing=1.0):
    """A chain (path) of ``n`` bins, the ``chain`` layout of the package.

    Parameters
    ----------
    n : int
        Number of bins (and nodes), at least 2.
    spacing : float or array_like of shape (n - 1,), optional
        Distance between consecutive bins.

    Returns
    -------
    parents, weights, bins : ndarray
        Node ``i`` has parent ``i + 1``; node ``n - 1`` is the root;
        ``bins = 0..n-1``; ``weights[i]`` is the gap between bins ``i`` and
        ``i + 1``.
    """
    parents = np.arange(1, n + 1)
    parents[-1] = -1
    weights = np.zeros(n)
    weights[:-1] = np.broadcast_to(np.asarray(spacing, dtype=np.float64), (n - 1,))
    return _pack(parents, weights, np.arange(n))


def chain_positions(n, spacing=1.0):
    """Positions on the line of the bins of :func:`chain`.

    Parameters
    ----------
    n : int
        Number of bins.
    spacing : float or array_like of shape (n - 1,), optional
        Distance between consecutive bins.

    Returns
    -------
    ndarray, shape (n,)
        Bin 0 at 0, then cumulative gaps.
    """
    gaps = np.broadcast_to(np.asarray(spacing, dtype=np.float64), (n - 1,))
    return np.concatenate([[0.0], np.cumsum(gaps)])


def star(n_leaves):
    """A root with ``n_leaves`` leaf children, each carrying a bin.

    Parameters
    ----------
    n_leaves : int
        Number of leaves.

    Returns
    -------
    parents, weights, bins : ndarray
        Root 0, leaves ``1..n_leaves`` with unit weights; bin ``k`` on node
        ``k + 1``.
    """
    parents = np.zeros(n_leaves + 1, dtype=np.int64)
    parents[0] = -1
    return _pack(parents, np.ones(n_leaves + 1), np.arange(1, n_leaves + 1))


def deep_path(n):
    """A long path from the root with some short side branches.

    Parameters
    ----------
    n : int
        Number of nodes on the path (root included), at least 2.

    Returns
    -------
    parents, weights, bins : ndarray
        Path ``0 - 1 - ... - n-1`` from the root 0; every third path node
        below the root also has a side leaf.  Bins sit on the leaves only:
        the deep end of the path first, then the side leaves.  Unit weights.
    """
    parents = list(range(-1, n - 1))
    bins = [n - 1]
    for node in range(1, n - 1, 3):
        parents.append(node)
        bins.append(len(parents) - 1)
    return _pack(parents, np.ones(len(parents)), bins)


def caterpillar(n):
    """A spine of ``n`` nodes with one leaf hanging from every spine node.

    Parameters
    ----------
    n : int
        Length of the spine (root included), at least 2.

    Returns
    -------
    parents, weights, bins : ndarray
        Spine ``0..n-1`` from the root 0; leg ``n + i`` hangs from spine
        node ``i``.  Bins on all leaves (the legs and the spine end).
        Unit weights.
    """
    parents = list(range(-1, n - 1)) + list(range(n))
    bins = list(range(n, 2 * n)) + [n - 1]
    return _pack(parents, np.ones(2 * n), bins)


def binary(depth):
    """A complete binary tree in heap order with bins on the leaves.

    Parameters
    ----------
    depth : int
        Number of edges from the root to every leaf, at least 1.

    Returns
    -------
    parents, weights, bins : ndarray
        Node ``i > 0`` has parent ``(i - 1) // 2``; ``2 ** depth`` bins on
        the leaves, left to right.  Unit weights.
    """
    n_nodes = 2 ** (depth + 1) - 1
    parents = np.array([-1] + [(i - 1) // 2 for i in range(1, n_nodes)])
    bins = np.arange(2**depth - 1, n_nodes)
    return _pack(parents, np.ones(n_nodes), bins)


def random_masses(rng, n_bins, batch=(), dtype=np.float64, sparse=False):
    """A pair of random mass vectors with equal (unit) totals.

    Parameters
    ----------
    rng : numpy.random.Generator
        Source of randomness.
    n_bins : int
        Number of bins.
    batch : tuple of int, optional
        Leading batch shape.
    dtype : dtype, optional
        Floating dtype of the result.
    sparse : bool, optional
        If true, ``p`` is zero on about half of the bins (never all of them)
        and ``q`` is one-hot.

    Returns
    -------
    p, q : ndarray, shape ``batch + (n_bins,)``
        Non-negative, each summing to 1 along the last axis.
    """
    shape = tuple(batch) + (n_bins,)
    p = rng.random(shape) + 1e-3
    q = rng.random(shape) + 1e-3
    if sparse:
        keep = rng.random(shape) < 0.5
        first = rng.integers(0, n_bins, size=tuple(batch))
        np.put_along_axis(keep, first[..., None], True, axis=-1)
        p = np.where(keep, p, 0.0)
        hot = rng.integers(0, n_bins, size=tuple(batch))
        q = np.zeros(shape)
        np.put_along_axis(q, hot[..., None], 1.0, axis=-1)
    p = p / p.sum(axis=-1, keepdims=True)
    q = q / q.sum(axis=-1, keepdims=True)
    return p.astype(dtype), q.astype(dtype)


def _seeded(seed, **kwargs):
    def build():
        return random_tree(np.random.default_rng(seed), **kwargs)

    return build


#: ``(id, builder)`` pairs for ``pytest.mark.parametrize``; each builder takes
#: no argument and returns ``(parents, weights, bins)``.
TREE_CASES = [
    ("single_edge", lambda: single_edge(2.5)),
    ("star", lambda: star(7)),
    ("chain", lambda: chain(9)),
    ("chain_uneven", lambda: chain(8, spacing=np.linspace(0.2, 3.0, 7))),
    ("deep_path", lambda: deep_path(25)),
    ("caterpillar", lambda: caterpillar(8)),
    ("binary", lambda: binary(4)),
    ("random", _seeded(0, n_nodes=40)),
    ("random_unweighted", _seeded(1, n_nodes=30, weighted=False)),
    ("random_internal_bins", _seeded(2, n_nodes=30, bins_on_internal=True)),
    ("random_zero_weights", _seeded(3, n_nodes=30, zero_weights=True)),
    ("random_internal_zero", _seeded(4, n_nodes=25, bins_on_internal=True, zero_weights=True)),
]
