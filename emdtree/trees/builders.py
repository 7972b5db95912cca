"""Turn common tree formats into flat parent arrays.

Every builder returns a :class:`TreeArrays`: node ``i`` has parent
``parents[i]`` (``-1`` for the root) and the edge from ``i`` to its parent
costs ``weights[i]``.  ``bins`` lists the nodes that carry mass, by default
the leaves (nodes without children) in node order.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

__all__ = [
    "TreeArrays",
    "build_from_edges",
    "build_from_linkage",
    "build_from_nested",
    "build_from_networkx",
    "leaves_of",
    "with_bins",
]


class TreeArrays(NamedTuple):
    """Flat description of a rooted tree with weighted edges.

    Attributes
    ----------
    parents : numpy.ndarray
        ``int64`` array of shape ``(n_nodes,)``: ``-1`` for the single root,
        otherwise the index of the parent node.
    weights : numpy.ndarray
        ``float64`` array of shape ``(n_nodes,)``: cost of the edge from each
        node to its parent, ``0.0`` at the root.
    bins : numpy.ndarray
        ``int64`` node index of each bin.
    names : list of str or None
        One name per bin, or None.
    node_names : list of (str or None) or None
        One (possibly None) name per node, or None.
    """

    parents: np.ndarray
    weights: np.ndarray
    bins: np.ndarray
    names: list[str] | None
    node_names: list[str | None] | None


def leaves_of(parents: np.ndarray) -> np.ndarray:
    """Return the nodes without children, in increasing order.

    Parameters
    ----------
    parents : numpy.ndarray
        Parent array, ``-1`` at the root.

    Returns
    -------
    numpy.ndarray
        ``int64`` indices of the leaves.
    """
    parents = np.asarray(parents, dtype=np.int64)
    has_child = np.zeros(parents.shape[0], dtype=bool)
    has_child[parents[parents >= 0]] = True
    return np.flatnonzero(~has_child).astype(np.int64)


def _listing(labels: Sequence[Any], limit: int = 5) -> str:
    """Show at most ``limit`` labels, then how many there are in all."""
    shown = ", ".join(repr(x) for x in labels[:limit])
    return shown if len(labels) <= limit else f"{shown}, ... ({len(labels)} in all)"


def _is_index_labels(labels: Sequence[Any]) -> bool:
    """True when the labels are exactly the integers ``0 .. n-1``."""
    for x in labels:
        if not isinstance(x, (int, np.integer)) or isinstance(x, (bool, np.bool_)):
            return False
    return sorted(int(x) for x in labels) == list(range(len(labels)))


def _number_nodes(labels: list[Any]) -> tuple[dict[Any, int], list[Any], list[str] | None]:
    """Index the nodes; keep the labels as indices when they are ``0 .. n-1``.

    Returns the map label -> node index, the labels in node order and the node
    names (None for integer labels ``0 .. n-1``).
    """
    if _is_index_labels(labels):
        ordered = sorted(labels, key=int)
        return {x: int(x) for x in labels}, ordered, None
    names = [str(x) for x in labels]
    first: dict[str, Any] = {}
    for x, s in zip(labels, names):
        if s in first:
            raise ValueError(f"node labels {first[s]!r} and {x!r} both read as the name {s!r}")
        first[s] = x
    return {x: i for i, x in enumerate(labels)}, list(labels), names


def _edge_cost(value: Any, what: Callable[[], str]) -> float:
    """Convert one edge cost to float, insisting on a finite value >= 0."""
    try:
        w = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"the cost of {what()} is {value!r}, not a number") from None
    if not math.isfinite(w) or w < 0:
        raise ValueError(f"the cost of {what()} is {w!r}; edge costs must be finite and >= 0")
    return w


def _assemble(
    labels: list[Any],
    node_names: list[str] | None,
    pairs: list[tuple[int, int]],
    costs: Sequence[float],
    root: int | None,
    directed: bool,
    describe: Callable[[int], str],
) -> TreeArrays:
    """Check that index pairs form a tree and turn them into a TreeArrays.

    ``pairs[k] = (u, v)`` is edge ``k`` between node indices ``u`` and ``v``
    (parent -> child when ``directed``).  ``describe(k)`` names edge ``k`` in
    the user's terms for error messages.
    """
    n = len(labels)
    parent_edge = [-1] * n
    if directed:
        for k, (u, v) in enumerate(pairs):
            if u == v:
                raise ValueError(f"{describe(k)} is a self-loop")
            j = parent_edge[v]
            if j >= 0:
                if pairs[j][0] == u:
                    raise ValueError(f"{describe(j)} and {describe(k)} are the same edge")
                raise ValueError(
                    f"node {labels[v]!r} has two parents: {labels[pairs[j][0]]!r} "
                    f"({describe(j)}) and {labels[u]!r} ({describe(k)})"
                )
            parent_edge[v] = k
        tops = [i for i in range(n) if parent_edge[i] < 0]
        if root is not None and parent_edge[root] >= 0:
            raise ValueError(
                f"root {labels[root]!r} has a parent: {describe(parent_edge[root])}"
            )
        if not tops:
            raise ValueError("the edges have no root (every node is a child), so they contain a cycle")
        if len(tops) > 1:
            raise ValueError(
                f"the edges have {len(tops)} roots (nodes that are never a child): "
                f"{_listing([labels[i] for i in tops])}; a tree has exactly one"
            )
        top = tops[0]
        children: list[list[int]] = [[] for _ in range(n)]
        for v in range(n):
            if v != top:
                children[pairs[parent_edge[v]][0]].append(v)
        seen = [False] * n
        seen[top] = True
        todo = [top]
        while todo:
            for c in children[todo.pop()]:
                seen[c] = True
                todo.append(c)
        if not all(seen):
            # Every node but the root has one parent, so walking up from an
            # unreachable node must loop.
            v = seen.index(False)
            walk: list[int] = []
            step: dict[int, int] = {}
            while v not in step:
                step[v] = len(walk)
                walk.append(v)
                v = pairs[parent_edge[v]][0]
            loop = walk[step[v]:][::-1]
            start = loop.index(min(loop))
            loop = loop[start:] + loop[:start]
            raise ValueError(
                "the edges contain a cycle: " + " -> ".join(repr(labels[u]) for u in loop + loop[:1])
            )
        parents = np.full(n, -1, dtype=np.int64)
        weights = np.zeros(n, dtype=np.float64)
        for v in range(n):
            k = parent_edge[v]
            if k >= 0:
                parents[v] = pairs[k][0]
                weights[v] = costs[k]
    else:
        assert root is not None
        adjacent: list[list[tuple[int, int]]] = [[] for _ in range(n)]
        first: dict[tuple[int, int], int] = {}
        group = list(range(n))  # union-find forest over the nodes

        def find(x: int) -> int:
            while group[x] != x:
                group[x] = group[group[x]]
                x = group[x]
            return x

        for k, (u, v) in enumerate(pairs):
            if u == v:
                raise ValueError(f"{describe(k)} is a self-loop")
            key = (u, v) if u < v else (v, u)
            if key in first:
                raise ValueError(f"{describe(first[key])} and {describe(k)} join the same two nodes")
            first[key] = k
            gu, gv = find(u), find(v)
            if gu == gv:
                raise ValueError(f"the edges contain a cycle: {describe(k)} closes it")
            group[gu] = gv
            adjacent[u].append((v, k))
            adjacent[v].append((u, k))
        parents = np.full(n, -1, dtype=np.int64)
        weights = np.zeros(n, dtype=np.float64)
        seen = [False] * n
        seen[root] = True
        todo = [root]
        while todo:
            u = todo.pop()
            for v, k in adjacent[u]:
                if not seen[v]:
                    seen[v] = True
                    parent_edge[v] = k
                    parents[v] = u
                    weights[v] = costs[k]
                    todo.append(v)
        lost = [labels[i] for i in range(n) if not seen[i]]
        if lost:
            raise ValueError(
                f"the edges are not connected: {_listing(lost)} cannot be reached "
                f"from the root {labels[root]!r}"
            )
    bins = leaves_of(parents)
    names = None if node_names is None else [node_names[b] for b in bins]
    return TreeArrays(parents, weights, bins, names, None if node_names is None else list(node_names))


def with_bins(arrays: TreeArrays, bins: Any, lookup: Mapping[Any, int] | None) -> TreeArrays:
    """``arrays`` with the bins, in order, given by ``bins``.

    Each entry is looked up in ``lookup`` (node label -> node index); one
    that is no label there may be a node index, an integer in
    ``[0, n_nodes)``. ``names`` become the bins' node names (None unless
    every bin has one).
    """
    if isinstance(bins, (str, bytes)) or not isinstance(bins, Iterable):
        raise TypeError(f"bins must be a sequence of node labels or indices, got {type(bins).__name__}")
    n = arrays.parents.shape[0]
    nodes: list[int] = []
    first: dict[int, int] = {}
    for k, b in enumerate(bins):
        try:
            node = None if lookup is None else lookup.get(b)
        except TypeError:
            raise TypeError(f"bins[{k}] = {b!r} is not hashable: give node labels or indices") from None
        if node is None:
            if isinstance(b, (int, np.integer)) and not isinstance(b, (bool, np.bool_)) and 0 <= b < n:
                node = int(b)
            else:
                raise ValueError(f"bins[{k}] = {b!r} is neither a node label nor a node index")
        if node in first:
            raise ValueError(f"bins[{first[node]}] and bins[{k}] are the same node: each node carries at "
                             "most one bin")
        first[node] = k
        nodes.append(node)
    node_names = arrays.node_names
    names = None if node_names is None else [node_names[i] for i in nodes]
    if names is not None and any(x is None for x in names):
        names = None
    return arrays._replace(bins=np.array(nodes, dtype=np.int64), names=names)


def name_lookup(node_names: Sequence[str | None] | None) -> dict[str, int] | None:
    """Node name -> node index, for the names that only one node has."""
    if node_names is None:
        return None
    seen: dict[str, int] = {}
    twice: set[str] = set()
    for i, x in enumerate(node_names):
        if x is None:
            continue
        if x in seen:
            twice.add(x)
        seen[x] = i
    return {x: i for x, i in seen.items() if x not in twice}


def build_from_edges(
    edges: Iterable[tuple[Hashable, Hashable]] | np.ndarray,
    weights: Sequence[float] | np.ndarray | Mapping[tuple[Hashable, Hashable], float] | None = None,
    root: Hashable | None = None,
    bins: Iterable[Hashable] | None = None,
) -> TreeArrays:
    """Build a tree from a list of edges.

    Parameters
    ----------
    edges : sequence of (parent, child) pairs or array of shape (m, 2)
        Edges between hashable node labels.
    weights : sequence of float, mapping or None, optional
        Edge costs: None (every edge costs 1.0), ``m`` costs aligned with
        ``edges``, or a mapping ``{(u, v): cost}`` with one entry per edge
        (with ``root`` given, ``(v, u)`` also matches the edge ``(u, v)``).
    root : hashable, optional
        Without a root the pairs are directed ``(parent, child)`` and the root
        is the one node that is never a child.  With a root the edges are
        undirected and are oriented away from ``root``.
    bins : sequence of hashable, optional
        The nodes that carry the bins, in bin order: node labels, or node
        indices for entries that are no label (see :func:`with_bins`).
        Default: the leaves in node order.

    Returns
    -------
    TreeArrays
        When the labels are exactly the integers ``0 .. n-1`` node ``i`` is
        label ``i`` and ``names``/``node_names`` are None.  Otherwise nodes
        are numbered in order of first appearance in ``edges``, ``node_names``
        holds ``str(label)`` and ``names`` the bins' labels.  The bins are the
        nodes without children, in node order (a root given with a single
        neighbour is not a bin).

    Raises
    ------
    ValueError
        For an empty edge list, a self-loop, a repeated edge, a node with two
        parents, no root or several roots, a cycle, edges that are not
        connected, or a negative or non-finite cost.
    TypeError
        For malformed edges, unhashable labels or non-numeric costs.
    """
    if isinstance(edges, np.ndarray):
        if edges.ndim != 2 or edges.shape[1] != 2:
            raise ValueError(f"an edge array must have shape (m, 2), got {edges.shape}")
        edge_list = [tuple(e) for e in edges.tolist()]
    else:
        if isinstance(edges, (str, bytes)) or not isinstance(edges, Iterable):
            raise TypeError(f"edges must be a sequence of (parent, child) pairs, got {type(edges).__name__}")
        edge_list = []
        for k, e in enumerate(edges):
            try:
                if isinstance(e, (str, bytes)):
                    raise ValueError
                u, v = e
            except (TypeError, ValueError):
                raise TypeError(f"edge {k} is {e!r}, not a (parent, child) pair") from None
            edge_list.append((u, v))
    if not edge_list:
        raise ValueError("the edge list is empty; give at least one (parent, child) pair")
    found: dict[Any, None] = {}
    for k, (u, v) in enumerate(edge_list):
        try:
            found.setdefault(u)
            found.setdefault(v)
        except TypeError:
            raise TypeError(f"edge {k} {(u, v)!r} has an unhashable node label") from None
    index, labels, node_names = _number_nodes(list(found))

    def describe(k: int) -> str:
        return f"edge {k} {edge_list[k]!r}"

    m = len(edge_list)
    if weights is None:
        costs = [1.0] * m
    elif isinstance(weights, Mapping):
        costs = []
        used = set()
        for k, (u, v) in enumerate(edge_list):
            key = (u, v)
            if key not in weights and root is not None and (v, u) in weights:
                key = (v, u)
            if key not in weights:
                raise ValueError(f"weights has no entry for {describe(k)}")
            used.add(key)
            costs.append(_edge_cost(weights[key], lambda k=k: describe(k)))
        if len(used) < len(weights):
            extra = next(key for key in weights if key not in used)
            raise ValueError(f"weights has an entry for {extra!r}, which is not an edge")
    else:
        try:
            array = np.asarray(weights, dtype=np.float64)
        except (TypeError, ValueError):
            raise TypeError(
                "weights must be None, a sequence of numbers or a mapping {(u, v): cost}"
            ) from None
        if array.shape != (m,):
            raise ValueError(f"weights has shape {array.shape} but there are {m} edges")
        costs = [_edge_cost(w, lambda k=k: describe(k)) for k, w in enumerate(array.tolist())]
    if root is not None:
        try:
            known = root in index
        except TypeError:
            raise TypeError(f"root {root!r} is not hashable") from None
        if not known:
            raise ValueError(f"root {root!r} is not a node of the edge list")
    pairs = [(index[u], index[v]) for u, v in edge_list]
    arrays = _assemble(
        labels, node_names, pairs, costs, None if root is None else index[root], root is None, describe
    )
    return arrays if bins is None else with_bins(arrays, bins, index)


def build_from_networkx(
    graph: Any, root: Hashable | None = None, weight: str | None = "weight", bins: Any = None
) -> TreeArrays:
    """Build a tree from a networkx graph.

    Parameters
    ----------
    graph : networkx.Graph or networkx.DiGraph
        A ``DiGraph`` has edges parent -> child; an undirected ``Graph`` must
        be a tree and is oriented away from ``root``.
    root : hashable, optional
        The root node.  For a ``DiGraph`` it defaults to (and must be) the one
        node without a parent; for a ``Graph`` it defaults to the first node.
    weight : str or None, optional
        Edge attribute holding the edge cost (1.0 where missing); None gives
        every edge cost 1.0.
    bins : sequence of hashable, optional
        The graph nodes that carry the bins, in bin order (see
        :func:`build_from_edges`). Default: the leaves.

    Returns
    -------
    TreeArrays
        Nodes follow ``graph.nodes`` order, unless the nodes are exactly the
        integers ``0 .. n-1``: then node ``i`` is node ``i`` of the graph and
        ``names``/``node_names`` are None.  Otherwise ``node_names`` holds
        ``str(node)``.  The bins are the nodes without children.

    Raises
    ------
    TypeError
        If ``graph`` is not a networkx graph, is a multigraph, or has a
        non-numeric edge cost.
    ValueError
        If the graph is empty or is not a tree rooted at ``root``.
    """
    import networkx as nx

    if not isinstance(graph, nx.Graph):
        raise TypeError(f"expected a networkx Graph or DiGraph, got {type(graph).__name__}")
    if graph.is_multigraph():
        raise TypeError("multigraphs are not supported: a tree has at most one edge between two nodes")
    if graph.number_of_nodes() == 0:
        raise ValueError("the graph has no nodes")
    index, labels, node_names = _number_nodes(list(graph.nodes))
    directed = graph.is_directed()
    if root is not None and root not in graph:
        raise ValueError(f"root {root!r} is not a node of the graph")
    if root is None and not directed:
        root = next(iter(graph.nodes))
    edge_list = list(graph.edges(data=True))

    def describe(k: int) -> str:
        return f"edge {edge_list[k][:2]!r}"

    costs = [
        1.0 if weight is None else _edge_cost(data.get(weight, 1.0), lambda k=k: describe(k))
        for k, (_, _, data) in enumerate(edge_list)
    ]
    pairs = [(index[u], index[v]) for u, v, _ in edge_list]
    arrays = _assemble(
        labels, node_names, pairs, costs, None if root is None else index[root], directed, describe
    )
    return arrays if bins is None else with_bins(arrays, bins, index)


def build_from_linkage(Z: np.ndarray) -> TreeArrays:
    """Build the tree of a hierarchical clustering.

    Parameters
    ----------
    Z : array_like of shape (n - 1, 4)
        Linkage matrix as returned by :func:`scipy.cluster.hierarchy.linkage`.

    Returns
    -------
    TreeArrays
        Observations ``0 .. n-1`` are nodes (and bins) ``0 .. n-1``, cluster
        ``n + i`` formed by merge ``i`` is node ``n + i`` and the root is node
        ``2n - 2``.  The edge from a cluster to its parent costs the difference
        of their merge heights (leaves have height 0), so the path between two
        observations is **twice** their cophenetic distance
        (:func:`scipy.cluster.hierarchy.cophenet`).  ``names`` and
        ``node_names`` are None.

    Raises
    ------
    ValueError
        If ``Z`` is not a valid linkage matrix, or if a merge is lower than
        one of the clusters it joins (inversions of centroid or median
        linkage), which would give a negative edge cost.
    """
    from scipy.cluster.hierarchy import is_valid_linkage

    try:
        raw = np.asarray(Z)
        if raw.dtype.kind not in "biuf":  # complex, strings, objects: no silent casts
            raise TypeError
        Z = raw.astype(np.float64)
    except (TypeError, ValueError):
        raise TypeError("Z must be a numeric linkage matrix of shape (n - 1, 4)") from None
    try:
        is_valid_linkage(Z, throw=True, name="Z")
    except (TypeError, ValueError) as err:
        raise ValueError(f"invalid linkage matrix: {err}") from None
    ids = Z[:, :2]
    # scipy lets NaN and (for one merge) out-of-range clusters through
    limit = Z.shape[0] + 1 + np.arange(Z.shape[0])[:, None]  # merge i may join clusters < n + i
    bad = ~(np.isfinite(ids) & (ids == np.round(ids)) & (ids >= 0) & (ids < limit)).all(axis=1)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"invalid linkage matrix: merge {i} joins clusters {float(Z[i, 0])!r} and "
                         f"{float(Z[i, 1])!r}; they must be integers in [0, {int(limit[i, 0]) - 1}]")
    bad = ~(np.isfinite(Z[:, 2]) & (Z[:, 2] >= 0))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"invalid linkage matrix: merge {i} has height {float(Z[i, 2])!r}; "
            "heights must be finite and >= 0"
        )
    n = Z.shape[0] + 1
    merged = np.arange(n, 2 * n - 1, dtype=np.int64)
    parents = np.full(2 * n - 1, -1, dtype=np.int64)
    parents[Z[:, 0].astype(np.int64)] = merged
    parents[Z[:, 1].astype(np.int64)] = merged
    height = np.zeros(2 * n - 1, dtype=np.float64)
    height[n:] = Z[:, 2]
    weights = np.zeros(2 * n - 1, dtype=np.float64)
    weights[:-1] = height[parents[:-1]] - height[:-1]
    low = np.flatnonzero(weights < 0)
    if low.size:
        c = int(low[0])
        i = int(parents[c]) - n
        raise ValueError(
            f"non-monotone linkage: merge {i} at height {float(Z[i, 2])!r} is lower than the cluster "
            f"{c} it merges (height {float(height[c])!r}); inversions such as those of centroid or "
            "median linkage cannot be drawn as a tree with nonnegative edge costs"
        )
    return TreeArrays(parents, weights, np.arange(n, dtype=np.int64), None, None)


def _subtrees(value: Any, where: Callable[[], str]) -> list[tuple[Any, Any]]:
    """The (name, value) children of one nested value."""
    if value is None:
        return []
    if isinstance(value, Mapping):
        return list(value.items())
    if isinstance(value, (list, tuple)):
        out: list[tuple[Any, Any]] = []
        for item in value:
            if isinstance(item, Mapping):
                out.extend(item.items())
            elif item is None or isinstance(item, (list, tuple, set, bytes)):
                raise TypeError(
                    f"the children of {where()} contain {item!r}; list items must be names or dicts"
                )
            else:
                out.append((item, None))
        return out
    raise TypeError(f"the value of {where()} is {value!r}; expected None, a dict or a list")


def build_from_nested(mapping: Mapping[Any, Any] | Sequence[Any]) -> TreeArrays:
    """Build a tree from nested dicts and lists.

    Parameters
    ----------
    mapping : dict or list
        A dict maps child names to their subtrees; a list (or tuple) holds
        children, each a name (a leaf) or a dict of named subtrees; None or an
        empty dict or list is a leaf.  For example
        ``{"animal": {"cat": None, "dog": {}}, "vehicle": ["car", {"boat": ["canoe"]}]}``.
        A top-level dict with one key makes that key the root; otherwise an
        unnamed root is added above the top-level children.

    Returns
    -------
    TreeArrays
        Nodes in pre-order, every edge costs 1.0, the bins are the leaves in
        pre-order, ``names`` their names and ``node_names`` the names of all
        nodes (``str`` of the keys; None for an added root).

    Raises
    ------
    TypeError
        For a value that is not None, a dict or a list, or a list item that is
        not a name or a dict.
    ValueError
        For an empty structure, two leaves with the same name, or a container
        that appears twice (a cycle or a shared subtree).
    """
    if not isinstance(mapping, (Mapping, list, tuple)):
        raise TypeError(f"expected a dict or a list, got {type(mapping).__name__}")
    parents: list[int] = []
    node_names: list[str | None] = []

    def path(i: int) -> str:
        parts = []
        while i >= 0 and node_names[i] is not None:
            parts.append(node_names[i])
            i = parents[i]
        return repr("/".join(reversed(parts)))

    top = _subtrees(mapping, lambda: "the top level")
    if not top:
        raise ValueError("the nested structure is empty")
    if isinstance(mapping, Mapping) and len(top) == 1:
        todo = [(top[0][0], top[0][1], -1)]
    else:
        parents.append(-1)
        node_names.append(None)
        todo = [(name, value, 0) for name, value in reversed(top)]
    seen_containers = {id(mapping)}
    seen_leaves: dict[str, int] = {}
    has_child = [False] * len(parents)
    while todo:
        name, value, parent = todo.pop()
        i = len(parents)
        parents.append(parent)
        node_names.append(str(name))
        has_child.append(False)
        if parent >= 0:
            has_child[parent] = True
        if isinstance(value, (Mapping, list, tuple)) and value:
            if id(value) in seen_containers:
                raise ValueError(
                    f"the value of {path(i)} appears twice in the structure (a cycle or a shared subtree)"
                )
            seen_containers.add(id(value))
        children = _subtrees(value, lambda i=i: path(i))
        if not children:
            if node_names[i] in seen_leaves:
                raise ValueError(
                    f"two leaves are named {node_names[i]!r}: "
                    f"{path(seen_leaves[node_names[i]])} and {path(i)}"
                )
            seen_leaves[node_names[i]] = i
        todo.extend((c, v, i) for c, v in reversed(children))
    bins = np.flatnonzero(~np.array(has_child)).astype(np.int64)
    return TreeArrays(
        np.array(parents, dtype=np.int64),
        np.where(np.array(parents) >= 0, 1.0, 0.0),
        bins,
        [node_names[b] for b in bins],
        node_names,
    )
