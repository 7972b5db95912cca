"""Distances between sets of samples: all pairs in memory and on Dask, 1-D, Sinkhorn."""
