"""Read trees and count tables, match table features to tree bins, write distance matrices.

Count tables come as delimited text (TSV or CSV, one sample per row and one
feature per column, or the other way round with ``transpose``), NumPy
``.npy`` / ``.npz`` files, BIOM files or QIIME 2 ``FeatureTable[Frequency]``
artifacts (``.qza``; both with the optional ``biom-format`` package). Trees
come as Newick, saved :class:`~emdtree.Tree` files or QIIME 2
``Phylogeny[Rooted]`` artifacts. A typical UniFrac run::

    tree = emdtree.io.read_tree("rooted-tree.qza")
    table = emdtree.io.read_table("table.qza")
    D = emdtree.weighted_unifrac(table, tree)
    emdtree.io.write_matrix("distances.tsv", D, table.sample_ids)
"""

from __future__ import annotations

from .formats.io import (
    Table,
    Matrix,
    read_tree,
    read_table,
    match_features,
    load_counts,
    write_matrix,
    read_matrix,
)

__all__ = [
    "Table",
    "Matrix",
    "read_tree",
    "read_table",
    "match_features",
    "load_counts",
    "write_matrix",
    "read_matrix",
]

# the objects answer to their public module: pickles, reprs, Keras configs and the docs
for _name in __all__:
    if getattr(globals()[_name], "__module__", None) == "emdtree.formats.io":
        globals()[_name].__module__ = __name__
del _name
