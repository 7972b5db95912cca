"""Read trees and count tables, match table features to tree bins, write distance matrices.

Count tables come as delimited text (TSV or CSV, one sample per row and one
feature per column, or the other way round with ``transpose``), NumPy
``.npy`` / ``.npz`` files or BIOM files (with the optional ``biom-format``
package). A typical UniFrac-style run::

    tree = emdtree.io.read_tree("tree.nwk")
    ids, X = emdtree.io.load_counts("table.tsv", tree)
    D = emdtree.pairwise(X, tree=tree, normalize="l1")
    emdtree.io.write_matrix("distances.tsv", D, ids)
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
