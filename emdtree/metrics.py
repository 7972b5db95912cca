"""Evaluation metrics for classifiers whose classes are the bins of a tree.

Besides the mean EMD between predictions and targets, this module computes the
hierarchical metrics of Bertinetto et al., "Making Better Mistakes: Leveraging
Class Hierarchies with Deep Networks" (CVPR 2020):

* the *mistake severity*: the mean tree distance between the top-1 prediction
  and the true class over the misclassified samples;
* the *average hierarchical distance at k*: the mean, over all samples, of the
  mean tree distance between the true class and each of the k highest-scored
  classes (a correct class counts 0).

Tree distances between two classes are one of the distances of
:meth:`Tree.distance_matrix`:

``distance="path"`` (the default)
    The path metric: the cost of moving a unit of mass between the two
    classes, so that the EMD between one-hot distributions is the distance
    between their classes and all the metrics share one unit.
``distance="lca_height"``
    Bertinetto et al.'s distance, ``H - depth(LCA)`` for distinct classes (0
    for equal ones), with ``H`` the height of the hierarchy and ``depth``
    counted from the root. It is the distance of their released code and
    data (``data/*_ilsvrc_distances`` in fiveai/making-better-mistakes), so on
    their hierarchies the metrics reproduce the mistake severities and
    hierarchical distances published with it, whatever the depths of the
    leaves. On weighted edges ``depth`` is the summed cost of the edges from
    the root and ``H`` the largest depth of a bin; bins on internal nodes
    are covered by the same formula (a bin is then the LCA of itself and the
    bins below it).
``distance="lca_subtree_height"``
    The height of the LCA's own subtree (the longest path from it down to a
    bin). It equals ``"lca_height"`` when every class is a leaf at depth
    ``H`` (as in iNaturalist19-H) and is smaller elsewhere (tieredImageNet-H,
    whose leaves lie at depths 3 to 12).

On a tree whose classes are leaves at one depth with unit edges the path
metric is twice either LCA height. None of them needs the
``n_bins x n_bins`` distance matrix: distances come from lowest common
ancestors, found by binary lifting on the tree's post-order layout.

Inputs are NumPy arrays or anything :func:`numpy.asarray` takes (CPU torch
tensors included); large and memory-mapped arrays are read in row chunks, so
memory stays bounded. On dask arrays each chunk's partial state (counts and
exact sums) is computed by a task where the chunk lives (on the workers of a
``dask.distributed`` cluster) and the states are merged in a tree; only they
travel to the caller. Integer class labels
reach the EMD kernels as indices, without one-hot rows. Ranking ties are broken
towards the lower bin index, as :func:`numpy.argmax` does.

The accumulators :class:`EMDMetric` and :class:`HierarchicalMetrics` stream
the same quantities over batches and merge across workers.
"""

from __future__ import annotations

from .evaluation.metrics import (
    EMDMetric,
    HierarchicalMetrics,
    average_hierarchical_distance_at_k,
    mean_emd,
    mistake_severity,
    report,
    topk_accuracy,
)

__all__ = [
    "EMDMetric",
    "HierarchicalMetrics",
    "average_hierarchical_distance_at_k",
    "mean_emd",
    "mistake_severity",
    "report",
    "topk_accuracy",
]

# the objects answer to their public module: pickles, reprs, Keras configs and the docs
for _name in __all__:
    if getattr(globals()[_name], "__module__", None) == "emdtree.evaluation.metrics":
        globals()[_name].__module__ = __name__
del _name
