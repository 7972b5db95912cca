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

A table too large to hold dense (the Earth Microbiome Project's size) is
opened as a dask array of sample blocks with :func:`open_counts` instead.
"""

from __future__ import annotations

from .formats.lazy_tables import open_counts
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
    "open_counts",
    "write_matrix",
    "read_matrix",
]

# the objects answer to their public module: pickles, reprs, Keras configs and the docs
for _name in __all__:
    if str(getattr(globals()[_name], "__module__", "")).startswith("emdtree.formats."):
        globals()[_name].__module__ = __name__
del _name
