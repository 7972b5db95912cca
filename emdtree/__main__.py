"""The ``emdtree`` command line (also ``python -m emdtree``).

Commands:

``demo`` (the default)
    The tree EMD and hierarchical metrics on the ImageNet WordNet tree with
    generated predictions; needs no files.
``info``
    Versions, Numba threads and threading layer, CUDA, optional packages.
``distance P Q``
    EMD^rho between histograms given as files or inline numbers.
``pairwise TABLE``
    The matrix of EMDs between the samples of a count table (UniFrac-style).
``evaluate PRED LABELS``
    Top-k accuracy, mistake severity, hierarchical distance and mean EMD of
    a classifier's predictions, read in chunks.

Bad input (a missing, empty or damaged file, shapes that do not match,
unknown tip names, a malformed tree, a label out of range, a result too large
for memory) ends with exit status 2 and one line ``emdtree: error: ...`` on
stderr. Output files (``-o``, ``--per-class``) are written to a temporary file
beside the target and renamed into place when complete, so a failed run
leaves the previous file intact. When the reader of stdout goes away
(``emdtree info | head -1``) the command stops silently with status 141.
"""

import sys

from .cli.main import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
