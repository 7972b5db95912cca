"""Turn user arrays into the flat, validated rows the kernels take.

Every public function goes through :func:`prepare`: it resolves the bin axis,
broadcasts the batch dimensions, picks the working dtype, checks the masses once
and says what is wrong in the user's terms (which argument, which position,
which value).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np

from ._kernels.checks import row_totals
from ._tree import Tree

_chain_cache: dict[int, Tree] = {}


def resolve_tree(tree: Tree | None, n_bins: int) -> Tree:
    """The given tree, or a unit-spacing chain of ``n_bins`` bins for ``None``."""
    if tree is None:
        if n_bins not in _chain_cache:
            if len(_chain_cache) > 64:
                _chain_cache.clear()
            _chain_cache[n_bins] = Tree.chain(n_bins)
        return _chain_cache[n_bins]
    if not isinstance(tree, Tree):
        raise TypeError(f"tree must be an emdtree.Tree or None, got {type(tree).__name__}")
    if tree.n_bins != n_bins:
        raise ValueError(
            f"the bin axis has length {n_bins} but the tree has {tree.n_bins} bins"
        )
    return tree


def check_rho(rho: Any) -> float:
    """Validate the exponent: a finite real number >= 1."""
    try:
        value = float(rho)
    except (TypeError, ValueError):
        raise TypeError(f"rho must be a real number >= 1, got {rho!r}") from None
    if not np.isfinite(value) or value < 1.0:
        raise ValueError(f"rho must be a finite number >= 1, got {rho!r}")
    return value


def working_dtype(*arrays: np.ndarray) -> np.dtype:
    """float32 stays float32, other floats and integers become float64."""
    kinds = {a.dtype.kind for a in arrays}
    if kinds - set("biuf"):
        bad = next(a.dtype for a in arrays if a.dtype.kind not in "biuf")
        raise TypeError(f"masses must be real numbers, got dtype {bad}")
    if all(a.dtype.kind == "f" and a.dtype.itemsize <= 4 for a in arrays):
        return np.dtype(np.float32)
    return np.dtype(np.float64)


class Rows(NamedTuple):
    """Masses flattened to ``(rows, n_bins)`` for the kernels."""

    arrays: tuple[np.ndarray, ...]  # 2-D C-contiguous, each with 1 or n_rows rows
    steps: tuple[int, ...]  # 1 for a full array, 0 for a broadcast single row
    n_rows: int
    batch_shape: tuple[int, ...]
    axis: int  # position of the bin axis in the broadcast input
    ndim: int
    dtype: np.dtype
    tree: Tree
    totals: tuple[np.ndarray | None, ...]  # row totals before normalize="l1", else Nones


def _as_array(x: Any, name: str) -> np.ndarray:
    if hasattr(x, "__cuda_array_interface__") and not isinstance(x, np.ndarray):
        raise TypeError(f"{name} is a GPU array; the NumPy API takes host arrays")
    arr = np.asarray(x)
    if arr.ndim == 0:
        raise ValueError(f"{name} must have a bin axis, got a scalar")
    return arr


def prepare(
    arrays: dict[str, Any],
    tree: Tree | None,
    axis: int,
    check: bool,
    normalize: str | None = None,
    masses: tuple[str, ...] = ("p", "q"),
    defer: bool = False,
) -> Rows:
    """Broadcast, flatten and validate the named arrays.

    ``masses`` names the arguments that are mass distributions (checked for
    finite, non-negative entries and equal totals); any other array (a
    direction ``v``) is only checked for finiteness. With ``defer`` (and no
    ``normalize``) the mass checks are left to :func:`check_stats`, fed by
    the statistics a kernel gathers while it reads the masses.
    """
    if normalize is not None and normalize != "l1":
        raise ValueError(f"normalize must be None or 'l1', got {normalize!r}")
    raw = {name: _as_array(x, name) for name, x in arrays.items()}
    dtype = working_dtype(*raw.values())
    shapes = [a.shape for a in raw.values()]
    if all(sh == shapes[0] for sh in shapes):
        shape = shapes[0]
    else:
        try:
            shape = np.broadcast_shapes(*shapes)
        except ValueError:
            shown = ", ".join(f"{n}{a.shape}" for n, a in raw.items())
            raise ValueError(f"shapes do not broadcast: {shown}") from None
    ndim = len(shape)
    if not isinstance(axis, (int, np.integer)):
        raise TypeError(f"axis must be an integer, got {type(axis).__name__}")
    if not -ndim <= axis < ndim:
        raise ValueError(f"axis {axis} is out of bounds for inputs with {ndim} dimensions")
    ax = int(axis) % ndim
    n_bins = shape[ax]
    batch_shape = shape[:ax] + shape[ax + 1:]
    n_rows = math.prod(batch_shape)
    tree = resolve_tree(tree, n_bins)
    if n_bins == 0:
        raise ValueError("the bin axis is empty")

    out, steps = [], []
    for name, a in raw.items():
        if a.ndim < ndim:
            a = a.reshape((1,) * (ndim - a.ndim) + a.shape)
        if ax != ndim - 1:
            a = np.moveaxis(a, ax, -1)
        if a.shape[-1] != n_bins:
            # only possible through broadcasting a length-1 bin axis
            raise ValueError(f"{name} has {a.shape[-1]} bins along axis {axis}; expected {n_bins}")
        if a.size == n_bins:
            flat, step = a.reshape(1, n_bins), 0
        elif a.shape[:-1] == batch_shape:
            flat, step = a.reshape(n_rows, n_bins), 1
        else:
            flat, step = np.broadcast_to(a, batch_shape + (n_bins,)).reshape(n_rows, n_bins), 1
        if flat.dtype != dtype or not flat.flags.c_contiguous:
            flat = np.ascontiguousarray(flat, dtype=dtype)
        flat = flat.view()
        flat.flags.writeable = False  # one kernel specialisation whatever the caller's flags
        out.append(flat)
        steps.append(step)

    totals: dict[str, np.ndarray] = {}
    if normalize is not None or (check and not defer):
        for name, flat in zip(raw, out):
            if name not in masses:
                if check and not np.all(np.isfinite(flat)):
                    bad = int(np.flatnonzero(~np.isfinite(flat.ravel()))[0])
                    where = _position(bad, flat.shape, batch_shape, n_bins, ax)
                    raise ValueError(
                        f"{name}{where} = {flat.flat[bad]} is not finite: entries of {name} must be finite"
                    )
                continue
            tot = _mass_totals(name, flat, batch_shape, n_bins, ax, check)
            totals[name] = tot
        if normalize is not None:
            for i, name in enumerate(raw):
                if name in masses:
                    tot = totals[name]
                    zero = np.flatnonzero(tot <= 0)
                    if zero.size:
                        where = _batch_position(int(zero[0]) if out[i].shape[0] > 1 else 0, batch_shape)
                        raise ValueError(f"{name} has zero total mass{where}: cannot normalize")
                    out[i] = out[i] / tot.astype(dtype)[:, None]
                    out[i].flags.writeable = False
        elif check and len(totals) == 2:
            _check_totals(totals, masses, dtype, n_bins, batch_shape, out)
    kept = tuple(totals.get(name) if normalize is not None else None for name in raw)
    return Rows(tuple(out), tuple(steps), n_rows, batch_shape, ax, ndim, dtype, tree, kept)


def _mass_totals(name: str, flat: np.ndarray, batch_shape, n_bins: int, ax: int, check: bool) -> np.ndarray:
    """Row totals of a mass array; with ``check``, a ValueError naming the first
    NaN, infinite or negative entry, or a row whose total overflows."""
    tot = np.empty(flat.shape[0], dtype=np.float64)
    bad = row_totals(flat, tot)
    if check and bad >= 0:
        where = _position(bad, flat.shape, batch_shape, n_bins, ax)
        value = flat.flat[bad]
        what = "not finite" if not np.isfinite(value) else "negative"
        raise ValueError(f"{name}{where} = {value} is {what}: entries of {name} must be finite and >= 0")
    if check and bad == -2:
        raise ValueError(f"the total mass of {name} overflows the floating-point range")
    return tot


def check_stats(rows: Rows, totals: np.ndarray, low: np.ndarray) -> None:
    """Validate p and q from a kernel's row totals (rows, 2) and minima.

    Non-finite entries make a row total non-finite and negative ones show in
    the minima; only then are the arrays scanned again, to name the entry.
    """
    if not (low.min() >= 0 and math.isfinite(totals.sum())):
        for name, flat in zip(("p", "q"), rows.arrays):
            _mass_totals(name, flat, rows.batch_shape, rows.tree.n_bins, rows.axis, True)
    sp, sq = totals[:, 0], totals[:, 1]
    tol = max(rows.tree.n_bins, 64) * np.finfo(rows.dtype).eps
    if np.any(np.abs(sp - sq) > tol * np.maximum(np.abs(sp), np.abs(sq))):
        _check_totals(
            {"p": sp, "q": sq}, ("p", "q"), rows.dtype, rows.tree.n_bins, rows.batch_shape, rows.arrays
        )


def _check_totals(totals, masses, dtype, n_bins, batch_shape, out) -> None:
    a, b = masses
    ta, tb = totals[a], totals[b]
    scale = np.maximum(np.abs(ta), np.abs(tb))
    tol = max(n_bins, 64) * np.finfo(dtype).eps * scale
    off = np.abs(ta - tb) > tol
    if np.any(off):
        r = int(np.flatnonzero(off)[0])
        where = _batch_position(r, batch_shape) if max(out[0].shape[0], out[1].shape[0]) > 1 else ""
        raise ValueError(
            f"{a} and {b} must have equal total mass{where}: sum({a}) = {ta[r]!r}, sum({b}) = {tb[r]!r}; "
            "pass normalize='l1' to compare them as distributions"
        )


def _batch_position(row: int, batch_shape: tuple[int, ...]) -> str:
    if not batch_shape:
        return ""
    return f" at batch index {tuple(int(i) for i in np.unravel_index(row, batch_shape))}"


def _position(flat_index: int, shape2d, batch_shape, n_bins: int, ax: int) -> str:
    row, k = divmod(int(flat_index), n_bins)
    if shape2d[0] == 1:
        return f"[bin {k}]"
    idx = list(np.unravel_index(row, batch_shape)) if batch_shape else []
    idx.insert(ax, k)
    return "[" + ", ".join(str(int(i)) for i in idx) + "]"


def restore_bins(flat: np.ndarray, rows: Rows) -> np.ndarray:
    """(n_rows, m) kernel output back to the input layout, the m-axis at the bin axis."""
    out = flat.reshape(rows.batch_shape + (flat.shape[-1],))
    return out if rows.axis == rows.ndim - 1 else np.moveaxis(out, -1, rows.axis)


def restore_scalar(flat: np.ndarray, rows: Rows):
    """(n_rows,) kernel output to the batch shape (a NumPy scalar for one sample)."""
    out = flat.reshape(rows.batch_shape)
    return out[()] if out.ndim == 0 else out
