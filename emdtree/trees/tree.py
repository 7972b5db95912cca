"""The ``Tree``: the ground space on which masses are moved.

A tree is three flat arrays: ``parents`` (the parent of every node, ``-1`` at
the single root), ``weights`` (the cost of the edge from a node to its parent)
and ``bins`` (the node that carries each histogram bin). Everything the kernels
need is derived once, at construction, into a post-order :class:`Layout`.
"""

from __future__ import annotations

import json
import operator
import os
from collections.abc import Mapping, Sequence
from functools import cached_property
from typing import Any

import numpy as np

from .layout import build_layout

_FORMAT = "emdtree.Tree"
_FORMAT_VERSION = 1


def _check_version(version: Any) -> None:
    """The format version of a saved tree: an integer no newer than this library's."""
    if isinstance(version, str) and version.strip().lstrip("+-").isdigit():
        version = int(version)
    if version is None:  # written before the field existed
        return
    if isinstance(version, bool) or not isinstance(version, (int, np.integer)):
        raise ValueError(f"the version field of a saved tree must be an integer, got {version!r}")
    if version > _FORMAT_VERSION:
        raise ValueError(f"saved tree has format version {version}, newer than {_FORMAT_VERSION}: "
                         "upgrade emdtree to read it")


def _as_index_array(values: Any, what: str) -> np.ndarray:
    try:
        arr = np.asarray(values)
    except (ValueError, TypeError):  # ragged nesting
        raise ValueError(f"{what} must be a one-dimensional array of integer node indices") from None
    if arr.ndim != 1:
        raise ValueError(f"{what} must be one-dimensional, got shape {arr.shape}")
    if arr.size == 0:
        return np.zeros(0, dtype=np.int64)
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr)):
            raise ValueError(f"{what} must hold integer node indices, got {arr.dtype} values")
    elif arr.dtype.kind not in "iu":
        raise TypeError(f"{what} must hold integer node indices, got dtype {arr.dtype}")
    elif arr.dtype.kind == "u" and arr.max() > np.iinfo(np.int64).max:
        i = int(np.argmax(arr))
        raise ValueError(f"{what}[{i}] = {int(arr[i])} is not a node index")
    return arr.astype(np.int64)


def _check_parents(parents: np.ndarray) -> None:
    n = parents.shape[0]
    if n == 0:
        raise ValueError("parents is empty: a tree needs at least one node")
    bad = np.flatnonzero((parents < -1) | (parents >= n))
    if bad.size:
        i = int(bad[0])
        raise ValueError(
            f"parents[{i}] = {int(parents[i])} is out of range for {n} nodes "
            f"(use -1 for the root, otherwise an index in [0, {n - 1}])"
        )
    roots = np.flatnonzero(parents == -1)
    if roots.size == 0:
        raise ValueError("parents has no root: exactly one node must have parent -1")
    if roots.size > 1:
        shown = ", ".join(str(int(r)) for r in roots[:5]) + (", ..." if roots.size > 5 else "")
        raise ValueError(
            f"parents has {roots.size} roots (nodes {shown}): exactly one node may have parent -1"
        )
    loops = np.flatnonzero(parents == np.arange(n))
    if loops.size:
        raise ValueError(f"parents contains a cycle: node {int(loops[0])} is its own parent")


def _check_weights(weights: Any, n: int, root: int) -> np.ndarray:
    if weights is None:
        w = np.ones(n, dtype=np.float64)
    else:
        try:
            w = np.asarray(weights)
        except (ValueError, TypeError):  # ragged nesting
            raise ValueError("weights must be a scalar or a one-dimensional array of numbers") from None
        if w.dtype.kind not in "iuf":
            raise TypeError(f"weights must be real numbers, got dtype {w.dtype}")
        w = w.astype(np.float64)
        if w.ndim == 0:
            w = np.full(n, float(w))
        if w.shape != (n,):
            raise ValueError(f"weights has shape {w.shape} but the tree has {n} nodes; expected ({n},)")
        w = w.copy()
        w[root] = 0.0  # the root has no edge: its entry is ignored
        bad = np.flatnonzero(~np.isfinite(w))
        if bad.size:
            i = int(bad[0])
            raise ValueError(f"weights[{i}] = {w[i]} is not finite: edge costs must be finite and >= 0")
        bad = np.flatnonzero(w < 0)
        if bad.size:
            i = int(bad[0])
            raise ValueError(f"weights[{i}] = {w[i]} is negative: edge costs must be finite and >= 0")
    w[root] = 0.0
    w += 0.0  # -0.0 -> 0.0, so that equal trees have equal bytes (and hashes)
    return w


def _check_names(names: Any, n: int, what: str, allow_none: bool) -> tuple | None:
    if names is None:
        return None
    if isinstance(names, str):
        raise TypeError(f"{what} must be a sequence of strings, not a single string")
    if not allow_none and any(x is None for x in names):
        i = next(i for i, x in enumerate(names) if x is None)
        raise ValueError(f"{what}[{i}] is None: every bin needs a name (or pass names=None)")
    try:
        out = tuple(None if x is None else str(x) for x in names)
    except TypeError:
        raise TypeError(f"{what} must be a sequence of strings, got {type(names).__name__}") from None
    if len(out) != n:
        target = "bins" if what == "names" else "nodes"
        raise ValueError(f"{what} has {len(out)} entries but there are {n} {target}")
    if what == "names" and len(set(out)) != n:
        # a table's feature is matched to its bin by name: a repeated name would pick one silently
        first: dict[str, int] = {}
        for i, name in enumerate(out):
            if name in first:
                raise ValueError(f"names[{first[name]}] and names[{i}] are both {name!r}: "
                                 "bin names must be unique")
            first[name] = i
    return out


class Tree:
    """An immutable rooted tree with histogram bins on some of its nodes.

    Build one with a constructor such as :meth:`from_parents`, :meth:`chain`,
    :meth:`from_newick` or :meth:`from_edges`; ``Tree(...)`` is the same as
    :meth:`from_parents`.

    Parameters
    ----------
    parents : array_like of int, shape (n_nodes,)
        Parent of each node; ``-1`` marks the single root.
    weights : array_like of float, shape (n_nodes,) or scalar, optional
        Cost of the edge from each node to its parent (finite, >= 0). The
        root's entry is ignored. Default: every edge costs 1.
    bins : array_like of int, shape (n_bins,), optional
        Node carrying each bin. Default: the leaves, in node order. Bins may
        sit on internal nodes.
    names : sequence of str, shape (n_bins,), optional
        A name for each bin.
    node_names : sequence of str or None, shape (n_nodes,), optional
        A name for each node.

    Attributes
    ----------
    parents, weights, bins : ndarray
        Read-only arrays as described above (``weights[root] == 0``).
    names : tuple of str or None
    node_names : tuple of (str or None) or None
    layout : Layout
        Post-order arrays used by the kernels.

    Examples
    --------
    >>> import emdtree
    >>> tree = emdtree.Tree.from_parents([-1, 0, 0, 1, 1], weights=[0, 1, 2, 1, 1])
    >>> tree
    Tree(n_nodes=5, n_bins=3, depth=2, weights=[1, 2])
    >>> tree.bins
    array([2, 3, 4])
    >>> tree.distance_matrix()
    array([[0., 4., 4.],
           [4., 0., 2.],
           [4., 2., 0.]])
    """

    # _loss_token: the integer that stands for this tree in framework ops (0 until
    # emdtree.frameworks.losses.tree_token assigns one); __weakref__ lets that registry
    # forget the tree once the user drops it. _plan: the tree's one cache of derived
    # arrays for every implementation (emdtree.engine.plan.TreePlan, made on first
    # use). __dict__ holds cached properties.
    __slots__ = ("parents", "weights", "bins", "names", "node_names", "layout", "_loss_token", "_plan",
                 "__dict__", "__weakref__")

    def __init__(
        self,
        parents: Any,
        weights: Any = None,
        bins: Any = None,
        names: Sequence[str] | None = None,
        node_names: Sequence[str | None] | None = None,
    ) -> None:
        par = _as_index_array(parents, "parents")
        _check_parents(par)
        n = par.shape[0]
        root = int(np.flatnonzero(par == -1)[0])
        w = _check_weights(weights, n, root)
        if bins is None:
            has_child = np.zeros(n, dtype=bool)
            has_child[par[par >= 0]] = True
            b = np.flatnonzero(~has_child).astype(np.int64)
        else:
            b = _as_index_array(bins, "bins")
            if b.size == 0:
                raise ValueError("bins is empty: a tree needs at least one bin")
            bad = np.flatnonzero((b < 0) | (b >= n))
            if bad.size:
                i = int(bad[0])
                raise ValueError(f"bins[{i}] = {int(b[i])} is not a node index in [0, {n - 1}]")
            uniq, first, counts = np.unique(b, return_index=True, return_counts=True)
            if np.any(counts > 1):
                node = int(uniq[np.flatnonzero(counts > 1)[0]])
                where = np.flatnonzero(b == node)
                raise ValueError(
                    f"bins contains node {node} twice (bins[{where[0]}] and bins[{where[1]}]): "
                    "each node carries at most one bin"
                )
        layout = build_layout(par, w, b)
        for arr in (par, w, b):
            arr.setflags(write=False)
        set_ = object.__setattr__
        set_(self, "parents", par)
        set_(self, "weights", w)
        set_(self, "bins", b)
        set_(self, "names", _check_names(names, b.shape[0], "names", allow_none=False))
        set_(self, "node_names", _check_names(node_names, n, "node_names", allow_none=True))
        set_(self, "layout", layout)
        set_(self, "_loss_token", 0)
        set_(self, "_plan", None)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"Tree is immutable: cannot set {name!r}")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"Tree is immutable: cannot delete {name!r}")

    # ------------------------------------------------------------------ constructors

    @classmethod
    def from_parents(
        cls,
        parents: Any,
        weights: Any = None,
        bins: Any = None,
        names: Sequence[str] | None = None,
        node_names: Sequence[str | None] | None = None,
    ) -> Tree:
        """Build a tree from its parent array.

        Parameters
        ----------
        parents : array_like of int, shape (n_nodes,)
            Parent of each node, ``-1`` for the single root.
        weights : array_like of float, shape (n_nodes,) or scalar, optional
            Cost of the edge from each node to its parent; default 1.
        bins : array_like of int, shape (n_bins,), optional
            Node of each bin; default: the leaves in node order.
        names : sequence of str, optional
            One name per bin.
        node_names : sequence of str or None, optional
            One name per node.

        Returns
        -------
        Tree

        Raises
        ------
        ValueError
            If there is no root or more than one, a cycle, a parent index out
            of range, a negative or non-finite weight, a duplicate bin, a
            repeated bin name, or names of the wrong length.

        Examples
        --------
        >>> from emdtree import Tree
        >>> Tree.from_parents([-1, 0, 0]).n_bins
        2
        >>> Tree.from_parents([1, -1, 1, 0], bins=[0, 2, 3]).bins
        array([0, 2, 3])
        """
        return cls(parents, weights, bins, names, node_names)

    @classmethod
    def chain(cls, n_bins: int, spacing: float | Sequence[float] | None = None) -> Tree:
        """A path with a bin on every node: the ground space of ordinal bins.

        Node ``i`` carries bin ``i`` and its parent is node ``i + 1``, so
        phi is the cumulative sum of ``p - q`` and EMD with ``rho=1`` is the
        one-dimensional Wasserstein-1 distance.

        Parameters
        ----------
        n_bins : int
            Number of bins (>= 1).
        spacing : float or array_like of float, shape (n_bins - 1,), optional
            Distance between consecutive bins; default 1.

        Returns
        -------
        Tree

        Examples
        --------
        >>> import numpy as np, emdtree
        >>> tree = emdtree.Tree.chain(4)
        >>> tree.is_chain
        True
        >>> float(emdtree.emd(np.array([1.0, 0, 0, 0]), np.array([0, 0, 0, 1.0]), tree))
        3.0
        """
        if isinstance(n_bins, (bool, np.bool_)):
            raise TypeError("n_bins must be an integer, got a bool")
        try:
            n = operator.index(n_bins)
        except TypeError:
            raise TypeError(f"n_bins must be an integer, got {n_bins!r}") from None
        if n < 1:
            raise ValueError(f"n_bins must be >= 1, got {n_bins}")
        parents = np.arange(1, n + 1, dtype=np.int64)
        parents[-1] = -1
        weights = np.zeros(n, dtype=np.float64)
        if spacing is None:
            weights[:-1] = 1.0
        else:
            sp = np.asarray(spacing, dtype=np.float64)
            if sp.ndim == 0:
                weights[:-1] = sp
            elif sp.shape == (n - 1,):
                weights[:-1] = sp
            else:
                raise ValueError(
                    f"spacing has shape {sp.shape}; expected a scalar or ({n - 1},) for {n} bins"
                )
            bad = np.flatnonzero(~np.isfinite(weights) | (weights < 0))
            if bad.size:
                i = int(bad[0])
                raise ValueError(f"spacing[{i}] = {weights[i]} must be finite and >= 0")
        return cls(parents, weights, np.arange(n, dtype=np.int64))

    @classmethod
    def from_edges(cls, edges: Any, weights: Any = None, root: Any = None, bins: Any = None) -> Tree:
        """Build a tree from an edge list.

        Parameters
        ----------
        edges : sequence of (parent, child) pairs or array_like, shape (n_edges, 2)
            Hashable node labels. With ``root=None`` pairs are directed
            parent -> child; with a ``root`` they are undirected and oriented
            away from it.
        weights : sequence of float, or mapping {(u, v): float}, optional
            Edge costs aligned with ``edges``; default 1.
        root : hashable, optional
            The root label.
        bins : sequence of hashable, optional
            The nodes that carry the bins, in bin order: node labels, or
            node indices (in the tree's numbering) for entries that are no
            label. They may be internal nodes. Default: the leaves, in node
            order.

        Returns
        -------
        Tree
            Bin and node names are the labels unless the labels are exactly
            ``0 .. n_nodes - 1``.

        Examples
        --------
        >>> from emdtree import Tree
        >>> t = Tree.from_edges([("animal", "cat"), ("animal", "dog")], weights=[1.0, 2.0])
        >>> t.names, float(t.distance_matrix()[0, 1])
        (('cat', 'dog'), 3.0)
        >>> Tree.from_edges([("animal", "cat"), ("animal", "dog")], bins=["dog", "animal", "cat"]).names
        ('dog', 'animal', 'cat')
        """
        from .builders import build_from_edges

        return cls(*build_from_edges(edges, weights=weights, root=root, bins=bins))

    @classmethod
    def from_newick(cls, text_or_path: str | os.PathLike, default_length: float | None = None,
                    bins: Sequence[Any] | None = None) -> Tree:
        """Read a Newick tree: branch lengths become weights, tips become bins.

        Parameters
        ----------
        text_or_path : str or path-like
            Newick text, or the path of a file holding it.
        default_length : float, optional
            Cost of edges without a branch length. By default every edge costs
            1 when the tree has no branch lengths at all, and a partly missing
            length is an error.
        bins : sequence, optional
            The nodes that carry the bins, in bin order: node labels (tip or
            internal, each label on one node only) or node indices. Default:
            the tips in order of appearance.

        Returns
        -------
        Tree
            Bins named by their labels.

        Examples
        --------
        >>> from emdtree import Tree
        >>> t = Tree.from_newick("((a:1,b:2):0.5,c:3);")
        >>> t.names
        ('a', 'b', 'c')
        >>> t.distance_matrix()[0]
        array([0. , 3. , 4.5])
        """
        from .newick import read_newick

        arrays = read_newick(text_or_path, default_length=default_length)
        if bins is not None:
            from .builders import name_lookup, with_bins

            arrays = with_bins(arrays, bins, name_lookup(arrays.node_names))
        return cls(*arrays)

    @classmethod
    def from_networkx(cls, graph: Any, root: Any = None, weight: str | None = "weight",
                      bins: Sequence[Any] | None = None) -> Tree:
        """Build a tree from a networkx ``DiGraph`` (parent -> child) or ``Graph``.

        Parameters
        ----------
        graph : networkx.Graph or networkx.DiGraph
            A tree. Directed edges point from parent to child.
        root : hashable, optional
            Root node; inferred for a ``DiGraph``.
        weight : str or None, default "weight"
            Edge attribute holding the cost (missing -> 1); ``None``: all 1.
        bins : sequence of hashable, optional
            The graph nodes that carry the bins, in bin order; default: the
            leaves.

        Returns
        -------
        Tree

        Examples
        --------
        >>> import networkx as nx
        >>> from emdtree import Tree
        >>> g = nx.DiGraph([("r", "a"), ("r", "b")])
        >>> Tree.from_networkx(g).names
        ('a', 'b')
        """
        from .builders import build_from_networkx

        return cls(*build_from_networkx(graph, root=root, weight=weight, bins=bins))

    @classmethod
    def from_linkage(cls, Z: Any) -> Tree:
        """Build the dendrogram of a ``scipy.cluster.hierarchy`` linkage matrix.

        Leaves ``0 .. n-1`` are the bins; the edge from a cluster to its parent
        costs the difference of their merge heights, so the path distance
        between two leaves is twice their cophenetic distance.

        Parameters
        ----------
        Z : array_like, shape (n - 1, 4)
            Linkage matrix.

        Returns
        -------
        Tree

        Examples
        --------
        >>> import numpy as np
        >>> from scipy.cluster.hierarchy import linkage
        >>> from emdtree import Tree
        >>> t = Tree.from_linkage(linkage(np.array([[0.0], [1.0], [5.0]]), "single"))
        >>> t.n_bins, t.n_nodes
        (3, 5)
        """
        from .builders import build_from_linkage

        return cls(*build_from_linkage(Z))

    @classmethod
    def from_nested(cls, mapping: Mapping[str, Any], bins: Sequence[str] | None = None) -> Tree:
        """Build a tree from nested dicts and lists of names (unit edge costs).

        Parameters
        ----------
        mapping : mapping
            ``{name: children}`` where children is ``None`` (a leaf), a
            mapping, or a list of names and mappings. A single top-level key
            is the root; several get a common unnamed root.
        bins : sequence of str, optional
            The names of the nodes that carry the bins, in bin order (leaves
            or internal nodes, each name on one node only); default: the
            leaves in pre-order.

        Returns
        -------
        Tree
            Bins named by their keys.

        Examples
        --------
        >>> from emdtree import Tree
        >>> t = Tree.from_nested({"animal": {"cat": None, "tiger": None}, "vehicle": ["starship"]})
        >>> t.names
        ('cat', 'tiger', 'starship')
        >>> t.distance_matrix()[0]
        array([0., 2., 4.])
        """
        from .builders import build_from_nested, name_lookup, with_bins

        arrays = build_from_nested(mapping)
        if bins is not None:
            arrays = with_bins(arrays, bins, name_lookup(arrays.node_names))
        return cls(*arrays)

    # ------------------------------------------------------------------ properties

    @property
    def n_nodes(self) -> int:
        """Number of nodes."""
        return int(self.parents.shape[0])

    @property
    def n_bins(self) -> int:
        """Number of bins."""
        return int(self.bins.shape[0])

    @property
    def root(self) -> int:
        """Index of the root node."""
        return int(self.layout.order[-1])

    @cached_property
    def depth(self) -> int:
        """Largest number of edges between the root and a node."""
        return int(self.layout.depth.max())

    @cached_property
    def is_chain(self) -> bool:
        """True if the tree is a path carrying one bin on every node, in path order."""
        n = self.n_nodes
        if self.n_bins != n:
            return False
        degree = np.bincount(self.parents[self.parents >= 0], minlength=n) + (self.parents >= 0)
        if n > 1 and (degree.max() > 2 or np.count_nonzero(degree == 1) != 2):
            return False
        # bins must follow the path: consecutive bins are adjacent nodes
        b = self.bins
        a, c = b[:-1], b[1:]
        return bool(np.all((self.parents[a] == c) | (self.parents[c] == a)))

    @cached_property
    def _is_canonical_chain(self) -> bool:
        """True if position ``j`` carries bin ``j`` and its parent is ``j + 1``."""
        lay = self.layout
        n = self.n_nodes
        return bool(
            self.n_bins == n
            and np.array_equal(lay.bin_position, np.arange(n))
            and np.array_equal(lay.parent[:-1], np.arange(1, n))
        )

    # ------------------------------------------------------------------ metric

    def distance_matrix(self, distance: str = "path") -> np.ndarray:
        """Distances between all pairs of bins.

        Parameters
        ----------
        distance : {"path", "lca_height", "lca_subtree_height"}, default "path"
            With ``depth(x)`` the sum of the edge costs from the root down to
            node ``x`` and ``lca`` the lowest common ancestor of two distinct
            bins:

            ``"path"``
                The path metric: the sum of the edge costs on the path
                between the two bins' nodes. EMD with ``rho=1`` is the
                optimal-transport cost under this metric.
            ``"lca_height"``
                ``H - depth(lca)``, with ``H`` the largest depth of a bin: the
                distance of Bertinetto et al., "Making Better Mistakes"
                (CVPR 2020), on their unit-edge hierarchies the height of the
                hierarchy minus the depth of the LCA (see
                :mod:`emdtree.metrics`).
            ``"lca_subtree_height"``
                The height of the LCA's own subtree: the largest
                ``depth(x) - depth(lca)`` over the bins ``x`` below it.

            Every distance is 0 between a bin and itself.

        Returns
        -------
        ndarray of float64, shape (n_bins, n_bins)
            Symmetric, with a zero diagonal.

        Examples
        --------
        >>> from emdtree import Tree
        >>> Tree.chain(3, spacing=[1.0, 2.0]).distance_matrix()
        array([[0., 1., 3.],
               [1., 0., 2.],
               [3., 2., 0.]])

        Leaves at unequal depths: ``a`` and ``b`` at depth 2 meet at depth 1,
        ``c`` and ``d`` at depth 3 meet at depth 2, and the deepest bins are at
        ``H = 3``:

        >>> t = Tree.from_nested({"x": ["a", "b"], "y": {"z": ["c", "d"]}})
        >>> t.names
        ('a', 'b', 'c', 'd')
        >>> t.distance_matrix("lca_height")  # H - depth(lca)
        array([[0., 2., 3., 3.],
               [2., 0., 3., 3.],
               [3., 3., 0., 1.],
               [3., 3., 1., 0.]])
        >>> float(t.distance_matrix("lca_subtree_height")[0, 1])  # x's subtree is 1 deep
        1.0
        """
        from .hierarchy import DISTANCES, hierarchy
        from ..kernels.dense import distance_matrix, lca_matrix

        if distance == "path":
            return distance_matrix(self.layout, self.n_bins)
        if distance == "lca_height":
            tables = hierarchy(self)
            return lca_matrix(self.layout, tables.total_height - tables.to_root)
        if distance == "lca_subtree_height":
            height = hierarchy(self).height
            return lca_matrix(self.layout, np.where(np.isfinite(height), height, 0.0))
        raise ValueError(f"distance must be one of {', '.join(map(repr, DISTANCES))}, got {distance!r}")

    # ------------------------------------------------------------------ I/O

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict that :meth:`from_dict` reads back exactly.

        Returns
        -------
        dict
            The fields ``format``, ``version``, ``parents``, ``weights``,
            ``bins``, ``names`` and ``node_names``.

        Examples
        --------
        >>> from emdtree import Tree
        >>> Tree.from_parents([-1, 0, 0]).to_dict()["parents"]
        [-1, 0, 0]
        """
        return {
            "format": _FORMAT,
            "version": _FORMAT_VERSION,
            "parents": self.parents.tolist(),
            "weights": self.weights.tolist(),
            "bins": self.bins.tolist(),
            "names": None if self.names is None else list(self.names),
            "node_names": None if self.node_names is None else list(self.node_names),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Tree:
        """Inverse of :meth:`to_dict`.

        Parameters
        ----------
        data : mapping
            As returned by :meth:`to_dict`, or read from its JSON text.

        Returns
        -------
        Tree

        Raises
        ------
        TypeError
            If ``data`` is not a mapping.
        ValueError
            For a foreign ``format`` field, a ``version`` that is not an
            integer or is newer than this library reads, missing fields or
            fields that do not make a tree.

        Examples
        --------
        >>> from emdtree import Tree
        >>> t = Tree.chain(4)
        >>> Tree.from_dict(t.to_dict()) == t
        True
        """
        if not isinstance(data, Mapping):
            raise TypeError("a saved tree is a mapping as returned by Tree.to_dict, got "
                            f"{type(data).__name__}")
        if data.get("format") != _FORMAT:
            raise ValueError(f"not a saved emdtree.Tree (format field is {data.get('format')!r})")
        _check_version(data.get("version"))
        missing = [key for key in ("parents", "weights", "bins") if key not in data]
        if missing:
            raise ValueError(f"saved tree lacks the field(s) {', '.join(missing)}")
        fields = {key: data.get(key) for key in ("parents", "weights", "bins", "names", "node_names")}
        for key, value in fields.items():
            if value is not None and not isinstance(value, (list, tuple, np.ndarray)):
                raise ValueError(f"the field {key!r} of a saved tree must be a list, got "
                                 f"{type(value).__name__}")
        return cls(fields["parents"], fields["weights"], fields["bins"], fields["names"],
                   fields["node_names"])

    def to_newick(self) -> str:
        """Newick text of the tree (bins must be tips); see :meth:`from_newick`.

        Returns
        -------
        str
            One line, ending with ``;``.

        Examples
        --------
        >>> from emdtree import Tree
        >>> Tree.from_newick("((a:1,b:2):0.5,c:3);").to_newick()
        '((a:1.0,b:2.0):0.5,c:3.0);'
        """
        from .newick import to_newick

        return to_newick(self.parents, self.weights, self.bins, self.names, self.node_names)

    def save(self, path: str | os.PathLike) -> None:
        """Save to ``.json`` or ``.npz`` (chosen by the file extension, in any case).

        The tree is written to a temporary file in the same directory, which
        replaces ``path`` only once it is complete and flushed to disk: a
        save that fails leaves an existing file as it was.

        Parameters
        ----------
        path : str or path-like
            Destination; its extension, ``.json`` or ``.npz`` (``.NPZ`` too),
            selects the format. The file is written under exactly this name.

        Raises
        ------
        ValueError
            For another extension.
        OSError
            When the file cannot be written (naming it).

        Examples
        --------
        >>> import tempfile, pathlib
        >>> from emdtree import Tree
        >>> t = Tree.chain(5, spacing=0.5)
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "chain.json"
        >>> t.save(path)
        >>> Tree.load(path) == t
        True
        """
        from .files import atomic_write

        path = os.fspath(path)
        ext = os.path.splitext(path)[1].lower()
        if ext == ".json":
            with atomic_write(path, "w", encoding="utf-8") as fh:
                json.dump(self.to_dict(), fh)
        elif ext == ".npz":
            # names as JSON text: NumPy's fixed-width strings would drop trailing NULs
            extra = {}
            if self.names is not None:
                extra["names_json"] = np.array(json.dumps(list(self.names)))
            if self.node_names is not None:
                extra["node_names_json"] = np.array(json.dumps(list(self.node_names)))
            # written through a file object: given a name, np.savez would append ".npz" to "t.NPZ"
            with atomic_write(path, "wb") as fh:
                np.savez(
                    fh,
                    format=np.array(_FORMAT),
                    version=np.array(_FORMAT_VERSION),
                    parents=self.parents,
                    weights=self.weights,
                    bins=self.bins,
                    **extra,
                )
        else:
            raise ValueError(f"cannot tell the format of {path!r}: use a .json or .npz extension")

    @classmethod
    def load(cls, path: str | os.PathLike) -> Tree:
        """Load a tree written by :meth:`save` (``.json`` or ``.npz``).

        Parameters
        ----------
        path : str or path-like
            A file written by :meth:`save`; its extension selects the format.

        Returns
        -------
        Tree

        Raises
        ------
        ValueError
            For an empty, damaged or foreign file, a format version newer
            than this library reads, or fields that do not make a tree
            (repeated bin names included); the message names the file.

        Examples
        --------
        >>> import tempfile, pathlib
        >>> from emdtree import Tree
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "tree.npz"
        >>> Tree.chain(3).save(path)
        >>> Tree.load(path).n_bins
        3
        """
        path = os.fspath(path)
        ext = os.path.splitext(path)[1].lower()
        if ext == ".json":
            with open(path, encoding="utf-8-sig") as fh:
                try:
                    data = json.load(fh)
                except UnicodeDecodeError as exc:
                    raise ValueError(f"{path!r} is not UTF-8 text: {exc.reason} at byte {exc.start}") \
                        from None
                except ValueError as exc:
                    raise ValueError(f"{path!r} is not valid JSON: {exc}") from None
                except RecursionError:
                    raise ValueError(f"{path!r} nests JSON too deeply to be a saved tree") from None
            try:
                return cls.from_dict(data)
            except (ValueError, TypeError) as exc:
                raise type(exc)(f"{path!r}: {exc}") from None
        if ext == ".npz":
            return cls._load_npz(path)
        raise ValueError(f"cannot tell the format of {path!r}: use a .json or .npz extension")

    @classmethod
    def _load_npz(cls, path: str) -> Tree:
        from .files import open_npz

        with open_npz(path) as data:
            if "format" not in data or data["format"].shape != () or str(data["format"]) != _FORMAT:
                raise ValueError(f"{path!r} is not a saved emdtree.Tree")
            version = data["version"] if "version" in data else None
            if version is not None:
                version = version.item() if version.shape == () and version.dtype.kind in "iuU" else version
            try:
                _check_version(version)
                missing = [key for key in ("parents", "weights", "bins") if key not in data]
                if missing:
                    raise ValueError(f"saved tree lacks the array(s) {', '.join(missing)}")
                names = [None, None]
                for i, key in enumerate(("names_json", "node_names_json")):
                    if key in data:
                        try:
                            names[i] = json.loads(str(data[key]))
                        except ValueError:
                            raise ValueError(f"its {key} array is not JSON text") from None
                        if not isinstance(names[i], list):
                            raise ValueError(f"its {key} array must hold a JSON list")
                return cls(data["parents"], data["weights"], data["bins"], names[0], names[1])
            except (ValueError, TypeError) as exc:
                raise type(exc)(f"{path!r}: {exc}") from None

    # ------------------------------------------------------------------ dunder

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Tree):
            return NotImplemented
        return (
            np.array_equal(self.parents, other.parents)
            and np.array_equal(self.weights, other.weights)
            and np.array_equal(self.bins, other.bins)
            and self.names == other.names
            and self.node_names == other.node_names
        )

    def __hash__(self) -> int:
        return hash((self.parents.tobytes(), self.weights.tobytes(), self.bins.tobytes(), self.names))

    def __repr__(self) -> str:
        parts = [f"n_nodes={self.n_nodes}", f"n_bins={self.n_bins}", f"depth={self.depth}"]
        if self.is_chain:
            parts.append("chain")
        w = self.weights[self.parents >= 0]
        if w.size and not np.all(w == 1.0):
            parts.append(f"weights=[{w.min():.4g}, {w.max():.4g}]")
        if self.names is not None:
            shown = ", ".join(repr(s) for s in self.names[:3]) + (", ..." if self.n_bins > 3 else "")
            parts.append(f"names=[{shown}]")
        return f"Tree({', '.join(parts)})"

    def __reduce__(self):
        return (self.__class__, (self.parents, self.weights, self.bins, self.names, self.node_names))
