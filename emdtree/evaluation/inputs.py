"""Inputs of the evaluation metrics: conversion to host arrays, validation in
the user's terms, and iteration over row chunks.

Scores and labels are read a chunk of rows at a time (dask arrays a block at
a time) so that memory stays bounded; an error names the position in the
whole input, not in the chunk.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from ..trees.hierarchy import DISTANCES
from ..engine.inputs import reject_masked
from ..engine import semantics

CHUNK_ELEMENTS = 1 << 22  # default chunk: about 4 million scores (32 MB of float64)


def host(x: Any, name: str = "input") -> Any:
    """Torch tensors (also those that require grad or live on a GPU) to NumPy;
    dask arrays stay lazy; anything else through :func:`numpy.asarray`."""
    if is_dask(x):
        return x
    if type(x).__module__.startswith("torch") and hasattr(x, "detach"):
        x = x.detach().cpu()
        # NumPy has no bfloat16: in float32, as emdtree.emd takes such tensors
        return (x.float() if str(x.dtype) == "torch.bfloat16" else x).numpy()
    reject_masked(x, name)
    return semantics.host_rows(x, name)


def is_dask(x: Any) -> bool:
    return type(x).__module__.startswith("dask") and hasattr(x, "blocks")


# ----------------------------------------------------------------------------- arguments

def check_scores(pred: Any, name: str = "pred") -> None:
    if pred.ndim != 2:
        raise ValueError(f"{name} must have shape (n_samples, n_bins), got shape {tuple(pred.shape)}")
    if np.dtype(pred.dtype).kind not in "biuf" and not semantics.narrow_float(pred.dtype):
        raise TypeError(f"{name} must hold real numbers, got dtype {pred.dtype}")
    if pred.shape[1] == 0:
        raise ValueError(f"{name} has no bins (shape {tuple(pred.shape)})")


def check_labels_shape(labels: Any, n_samples: int, name: str = "labels") -> None:
    if np.dtype(labels.dtype).kind not in "iu":
        raise TypeError(f"{name} must hold integer class indices, got dtype {labels.dtype}")
    if labels.shape != (n_samples,):
        raise ValueError(
            f"{name} must have shape (n_samples,) = ({n_samples},) to match pred, got shape "
            f"{tuple(labels.shape)}"
        )


def check_target(pred: Any, target: Any) -> bool:
    """Validate the target's shape; True for class indices, False for distributions."""
    if np.dtype(target.dtype).kind in "iu" and target.ndim == 1:
        check_labels_shape(target, pred.shape[0], "target")
        return True
    if target.ndim == 1 and target.shape == (pred.shape[0],) and pred.shape != target.shape:
        raise TypeError(
            f"target has the shape of class indices, ({pred.shape[0]},), but dtype {target.dtype}: class "
            f"indices must be integers (distributions would have pred's shape {tuple(pred.shape)})"
        )
    if target.shape != pred.shape:
        raise ValueError(
            f"target must be class indices of shape ({pred.shape[0]},) or distributions of pred's shape "
            f"{tuple(pred.shape)}, got shape {tuple(target.shape)}"
        )
    if np.dtype(target.dtype).kind not in "biuf" and not semantics.narrow_float(target.dtype):
        raise TypeError(f"target must hold real numbers, got dtype {target.dtype}")
    return False


def check_k(k: Any, n_bins: int | None) -> int:
    if isinstance(k, (bool, np.bool_)) or not isinstance(k, (numbers.Integral, np.integer)):
        raise TypeError(f"k must be a positive integer, got {k!r}")
    if k < 1:
        raise ValueError(f"k must be a positive integer, got {int(k)}")
    if n_bins is not None and k > n_bins:
        raise ValueError(f"k = {int(k)} must be between 1 and the number of bins ({n_bins})")
    return int(k)


def check_distance(distance: str) -> str:
    if distance not in DISTANCES:
        raise ValueError(f"distance must be one of {', '.join(map(repr, DISTANCES))}, got {distance!r}")
    return distance


def check_chunk_size(chunk_size: Any) -> int:
    if isinstance(chunk_size, (bool, np.bool_)) or not isinstance(chunk_size, (numbers.Integral, np.integer)):
        raise TypeError(f"chunk_size must be a positive integer or None, got {chunk_size!r}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer or None, got {chunk_size}")
    return int(chunk_size)


# ----------------------------------------------------------------------------- chunks

def chunks(arrays: Sequence[Any], chunk_size: int | None) -> Iterator[tuple[int, list[np.ndarray]]]:
    """``(first row, [row chunk of each array])`` over the rows of 2-D scores and
    their 1-D or 2-D companions; dask arrays are computed one block at a time."""
    n_rows, n_bins = arrays[0].shape
    if any(is_dask(a) for a in arrays):
        import dask
        import dask.array as da

        if chunk_size is not None:
            rows = check_chunk_size(chunk_size)
            lead = da.asarray(arrays[0]).rechunk({0: rows, 1: -1})
        else:
            lead = da.asarray(arrays[0]).rechunk({1: -1})
        lazy = [lead] + [da.asarray(a).rechunk({0: lead.chunks[0]} | ({1: -1} if a.ndim == 2 else {}))
                         for a in arrays[1:]]
        start = 0
        for i in range(lead.numblocks[0]):
            blocks = dask.compute(*(a.blocks[i] for a in lazy))
            yield start, [np.asarray(b) for b in blocks]
            start += blocks[0].shape[0]
        return
    rows = check_chunk_size(chunk_size) if chunk_size is not None else max(1, CHUNK_ELEMENTS // n_bins)
    for start in range(0, n_rows, rows):
        yield start, [np.asarray(a[start:start + rows]) for a in arrays]


# ----------------------------------------------------------------------------- values of a chunk

def no_nan(chunk: np.ndarray, start: int, name: str = "pred") -> None:
    if chunk.size and chunk.dtype.kind == "f" and np.isnan(chunk.min()):
        r, c = np.argwhere(np.isnan(chunk))[0]
        raise ValueError(f"{name}[{start + r}, {c}] is NaN: scores must not be NaN")


def labels_in_range(labels: np.ndarray, start: int, n_bins: int, name: str = "labels") -> None:
    error = semantics.label_error(labels, n_bins, lambda i: f"{name}[{start + i}]")
    if error is not None:
        raise ValueError(error)


def explain_masses(pred: np.ndarray, target: np.ndarray | None, start: int, tol_eps: float,
                   normalize: str | None) -> None:
    """Raise a ValueError that names the row (in the whole input) of an invalid
    mass; for a chunk the EMD kernels rejected. ``target=None``: class labels
    (a unit mass on one bin)."""
    if normalize == "softmax":
        error = semantics.logit_error(pred, "pred", *semantics.indexed("pred", start))
        if error is not None:
            raise ValueError(error)
    for name, a in (("pred", pred), ("target", target)):
        if a is None or (name == "pred" and normalize == "softmax"):
            continue
        bad = (~np.isfinite(a) | (a < 0)) if a.dtype.kind == "f" else a < 0
        if bad.any():
            r, c = np.argwhere(bad)[0]
            what = "not finite" if not np.isfinite(a[r, c]) else "negative"
            raise ValueError(
                f"{name}[{start + r}, {c}] = {a[r, c].item()!r} is {what}: the EMD needs non-negative masses "
                "(probabilities, not logits: pass normalize='softmax' for logits)"
            )
    sp = pred.sum(axis=1, dtype=np.float64)
    sq = np.ones_like(sp) if target is None else target.sum(axis=1, dtype=np.float64)
    if normalize == "softmax":
        tol = max(pred.shape[1], 64) * tol_eps * np.maximum(np.abs(sq), 1.0)
        off = np.flatnonzero(np.abs(sq - 1.0) > tol)
        if off.size:
            r = int(off[0])
            raise ValueError(f"target[{start + r}] sums to {float(sq[r])!r}: with normalize='softmax' the "
                             "targets must be distributions (summing to 1) or class indices")
        return
    if normalize is not None:
        for name, totals in (("pred", sp), ("target", sq)):
            zero = np.flatnonzero(totals <= 0)
            if zero.size:
                raise ValueError(f"{name}[{start + int(zero[0])}] has zero total mass: cannot normalize")
        return
    tol = max(pred.shape[1], 64) * tol_eps * np.maximum(np.abs(sp), np.abs(sq))
    off = np.flatnonzero(np.abs(sp - sq) > tol)
    if off.size:
        r = int(off[0])
        if target is None:
            raise ValueError(
                f"pred[{start + r}] sums to {float(sp[r])!r}, not 1: the EMD to a class compares "
                "distributions; pass normalize='l1' to rescale the rows"
            )
        raise ValueError(
            f"pred[{start + r}] and target[{start + r}] have different total mass ({float(sp[r])!r} and "
            f"{float(sq[r])!r}); pass normalize='l1' to compare them as distributions"
        )
