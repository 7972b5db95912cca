"""Classification metrics on a tree, behind emdtree.metrics."""
