"""Built-in ground spaces.

``imagenet_wordnet``
    The WordNet is-a tree over the 1000 ILSVRC-2012 (ImageNet-1k) classes,
    with the classes as bins in the usual class-index order (the order of
    the wnid-sorted class list used by torchvision, Keras and Caffe).

The tree and the class names are derived from Princeton WordNet 3.0 and
ship with its license (``data/imagenet_wordnet/LICENSE-WordNet.txt``);
``data/imagenet_wordnet/README.md`` describes where the data came from and
how the WordNet graph was turned into a tree.
"""

from __future__ import annotations

import functools
import importlib.resources
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from ..trees.tree import Tree

__all__ = ["imagenet_wordnet", "imagenet_wordnet_wnids", "imagenet_classes"]

_TREE_COLUMNS = ["node_wnid", "parent_wnid", "name"]
_CLASS_COLUMNS = ["index", "wnid", "name"]
_N_CLASSES = 1000


def _read_tsv(filename: str, columns: list[str]) -> list[list[str]]:
    """Rows of a packaged ImageNet/WordNet TSV file, header checked and removed."""
    path = importlib.resources.files(__name__) / "data" / "imagenet_wordnet" / filename
    lines = path.read_text(encoding="utf-8").splitlines()
    header = lines[0].split("\t")
    if header != columns:
        raise ValueError(f"{filename}: expected columns {columns}, found {header}")
    rows = [line.split("\t") for line in lines[1:] if line]
    for number, row in enumerate(rows, start=2):
        if len(row) != len(columns):
            raise ValueError(f"{filename}, line {number}: expected {len(columns)} fields, found {len(row)}")
    return rows


@functools.lru_cache(maxsize=None)
def _classes() -> tuple[tuple[str, str], ...]:
    """``(wnid, name)`` of the 1000 classes in class-index order."""
    rows = _read_tsv("classes.tsv", _CLASS_COLUMNS)
    if [int(index) for index, _, _ in rows] != list(range(_N_CLASSES)):
        raise ValueError(f"classes.tsv: expected indices 0..{_N_CLASSES - 1} in order")
    return tuple((wnid, name) for _, wnid, name in rows)


@functools.lru_cache(maxsize=None)
def _tree_arrays(collapsed: bool) -> tuple[np.ndarray, np.ndarray, tuple[str, ...], tuple[str, ...]]:
    """Parsed tree file: ``(parents, bins, node_wnids, node_names)``.

    The arrays are read-only so that the cached copy cannot be altered.
    """
    filename = "tree.tsv" if collapsed else "tree_uncollapsed.tsv"
    rows = _read_tsv(filename, _TREE_COLUMNS)
    node_wnids = tuple(row[0] for row in rows)
    node_names = tuple(row[2] for row in rows)
    index = {wnid: i for i, wnid in enumerate(node_wnids)}
    if len(index) != len(rows):
        raise ValueError(f"{filename}: duplicate node wnids")

    parents = np.empty(len(rows), dtype=np.int64)
    for i, (_, parent_wnid, _) in enumerate(rows):
        if parent_wnid == "":
            parents[i] = -1
        elif parent_wnid in index:
            parents[i] = index[parent_wnid]
        else:
            raise ValueError(f"{filename}: parent {parent_wnid} of {node_wnids[i]} is not a node")

    missing = [wnid for wnid, _ in _classes() if wnid not in index]
    if missing:
        raise ValueError(f"{filename}: {len(missing)} classes are not nodes, e.g. {missing[0]}")
    bins = np.array([index[wnid] for wnid, _ in _classes()], dtype=np.int64)

    parents.setflags(write=False)
    bins.setflags(write=False)
    return parents, bins, node_wnids, node_names


@functools.lru_cache(maxsize=None)
def _imagenet_wordnet(collapsed: bool) -> Tree:
    from ..trees.tree import Tree

    parents, bins, _, node_names = _tree_arrays(collapsed)
    return Tree.from_parents(parents, weights=None, bins=bins, names=_bin_names(), node_names=node_names)


def _bin_names() -> list[str]:
    """Class names, each one that repeats (``crane``) followed by its wnid: bin names are keys."""
    names = [name for _, name in _classes()]
    repeated = {name for name in names if names.count(name) > 1}
    return [f"{name} ({wnid})" if name in repeated else name for (wnid, name) in _classes()]


def imagenet_wordnet(collapsed: bool = True) -> Tree:
    """The WordNet is-a tree over the 1000 ImageNet (ILSVRC-2012) classes.

    Every edge joins a WordNet synset to one of its hypernyms (ancestors)
    and costs 1. The bins are the 1000 classes, in the usual class-index
    order (index ``k`` is the ``k``-th class wnid in sorted order, as in
    torchvision's ``ImageFolder``, Keras and Caffe), so a classifier's
    1000 outputs can be compared with it directly. The classes are exactly
    the leaves of the tree.

    WordNet is a directed acyclic graph; each synset keeps the one hypernym
    that lies on a shortest hypernym path to the root ``entity`` (ties go to
    the hypernym listed first in WordNet 3.0). This gives the uncollapsed
    tree (1808 nodes, height 17). The default collapsed tree then removes
    every internal node with a single child (1371 nodes, height 13).

    Parameters
    ----------
    collapsed : bool, optional
        If true (default), return the tree without single-child internal
        nodes; otherwise every edge is a direct WordNet hypernym link.

    Returns
    -------
    Tree
        ``n_bins == 1000``; ``names`` holds the class names (the synset
        lemmas joined with ``", "``, as in ImageNet's ``words.txt``; a
        name that two classes share is followed by the wnid, as bin names
        are unique), ``node_names`` the name of every node. Node 0 is the root
        ``entity`` and every parent comes before its children. The same
        (immutable) object is returned on every call.

    See Also
    --------
    imagenet_wordnet_wnids : WordNet ids of the nodes.
    imagenet_classes : WordNet ids and names of the bins.

    Notes
    -----
    Derived from Princeton WordNet 3.0 (WordNet 3.0 license, shipped as
    ``emdtree/datasets/data/imagenet_wordnet/LICENSE-WordNet.txt``). Two
    classes share a name: ``crane`` is both class 134 (the bird) and
    class 517 (the machine); their bins are named ``crane (n02012849)``
    and ``crane (n03126707)``.

    Examples
    --------
    >>> from emdtree.datasets import imagenet_wordnet
    >>> tree = imagenet_wordnet()
    >>> tree.n_nodes, tree.n_bins, tree.depth
    (1371, 1000, 13)
    >>> tree.names[0]
    'tench, Tinca tinca'
    >>> tree.node_names[0]
    'entity'
    >>> D = tree.distance_matrix()
    >>> float(D.max())
    19.0
    >>> imagenet_wordnet(collapsed=False).n_nodes
    1808
    """
    return _imagenet_wordnet(bool(collapsed))


def imagenet_wordnet_wnids(collapsed: bool = True) -> list[str]:
    """WordNet ids of the nodes of :func:`imagenet_wordnet`, in node order.

    Parameters
    ----------
    collapsed : bool, optional
        Which tree, as in :func:`imagenet_wordnet`.

    Returns
    -------
    list of str
        ``wnids[i]`` is the id (``"n"`` followed by the 8-digit WordNet 3.0
        noun offset) of node ``i``.

    Examples
    --------
    >>> from emdtree.datasets import imagenet_wordnet, imagenet_wordnet_wnids
    >>> wnids = imagenet_wordnet_wnids()
    >>> wnids[0]
    'n00001740'
    >>> tree = imagenet_wordnet()
    >>> wnids[tree.bins[0]]
    'n01440764'
    """
    return list(_tree_arrays(bool(collapsed))[2])


def imagenet_classes() -> list[tuple[str, str]]:
    """WordNet id and name of each of the 1000 ImageNet classes, in class-index order.

    Returns
    -------
    list of (str, str)
        ``(wnid, name)`` for class indices 0 to 999; the same order as the
        bins of :func:`imagenet_wordnet`.

    Examples
    --------
    >>> from emdtree.datasets import imagenet_classes
    >>> classes = imagenet_classes()
    >>> len(classes)
    1000
    >>> classes[0]
    ('n01440764', 'tench, Tinca tinca')
    >>> classes[134][1], classes[517][1]
    ('crane', 'crane')
    """
    return list(_classes())
