"""Reading and writing trees, count tables and distance matrices, behind emdtree.io."""
