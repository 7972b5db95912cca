"""Input semantics: what every door of emdtree accepts, and what it says when it does not.

One definition, called by the NumPy API, the torch, TensorFlow and JAX
adapters, ``pairwise`` in memory and per Dask block, the metrics and the
command line; the doors differ only in how they name an entry (``p[1, 3]``,
``X[27, 3]``, ``sample 's0', feature 't2'``), never in what they accept.

``normalize``
    ``None``: the masses are used as given: finite and ``>= 0``, with equal
    totals between the arguments compared. ``"l1"``: finite, ``>= 0`` and a
    positive total in every row, which is then divided by it. ``"softmax"``:
    the first argument holds logits, any real number or ``-inf`` (a masked
    class: probability 0, gradient 0); ``+inf`` and NaN are rejected, as is a
    row whose logits are all ``-inf`` (its softmax is undefined). The other
    arguments are distributions (totals 1) or class indices.

Messages come from the one table :data:`MESSAGES`; the checks take the rows
as ``(rows, n_bins)`` NumPy arrays and two namers: ``entry(r, k)`` for the
caller's name of entry ``k`` of row ``r``, and ``row(r)`` for that of row
``r``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import Any

import numpy as np

NORMALIZE = (None, "l1", "softmax")

#: Every message about an input's values, by kind; fields in braces.
MESSAGES = {
    "normalize": "normalize must be None, 'l1' or 'softmax', got {normalize!r}",
    "logit": ("{entry} = {value} is not a logit: with normalize='softmax' {name} holds logits, which must "
              "not be NaN or +inf (-inf masks a class)"),
    "masked_row": "every logit of {row} is -inf: its softmax is undefined",
    "mass": "{entry} = {value} is {what}: entries of {name} must be finite and >= 0",
    "zero_total": "{row} has zero total mass: cannot normalize",
    "total": "{row} sums to {total!r}: normalize='l1' cannot rescale it to sum to 1",
    "label": "{entry} = {value} is not a class index in [0, {top}] ({n_bins} bins)",
    "whole_label": "{entry} = {value} is not a class index: class indices must be whole numbers",
    "distribution": ("{row} sums to {total!r}: with normalize='softmax' {logits} holds logits and {name} "
                     "must be a distribution (summing to 1)"),
    "batch_shapes": ("{name} has the batch shape {shape} (its shape without the sample axis), which does "
                     "not broadcast with the batch shape {other_shape} of {other}"),
    "not_bins": ("{count} of {total} features are not bins of the tree: {shown}{more}{hint}; pass "
                 "drop_missing=True to leave them out"),
    "unicode_hint": (" ({feature} differs from the tree's {tip} only in Unicode normalisation: normalise "
                     "both names to one form, e.g. NFC)"),
    "unequal_totals": ("{row} sums to {total!r} and {first} to {first_total!r}: samples must have equal "
                       "total mass (the EMD between different totals is undefined); pass normalize='l1' to "
                       "compare them as distributions"),
    "l1_distribution": ("{row} sums to {total!r}: with normalize='l1' {first} is rescaled to sum to 1 and "
                        "{name} must be a distribution (summing to 1)"),
    "count_range": "expected a positive integer at most {top} (2**63 - 1), got {value}",
    "scheduler": ("--scheduler {address}: no dask scheduler answered there within {seconds:g} s; "
                  "check the address and that the scheduler is running"),
}

#: The largest value of a count option (rows, samples, workers): the range of int64.
COUNT_MAX = 2**63 - 1

_REAL = (numbers.Real, np.integer, np.floating)

Entry = Callable[[int, int], str]
Row = Callable[[int], str]


def message(kind: str, **fields: Any) -> str:
    """The message of ``kind`` in :data:`MESSAGES`, filled in."""
    return MESSAGES[kind].format(**fields)


def check_normalize(normalize: Any) -> str | None:
    """``None``, ``"l1"`` or ``"softmax"``, or a ValueError."""
    if not (normalize is None or (isinstance(normalize, str) and normalize in NORMALIZE)):
        raise ValueError(message("normalize", normalize=normalize))
    return normalize


def check_rho(rho: Any) -> float:
    """The exponent as a Python float: a finite real number >= 1 (plain Python, so that graph
    tracers can run it)."""
    if type(rho) is not float and type(rho) is not int:  # the common types need no isinstance
        if isinstance(rho, (bool, np.bool_)) or not isinstance(rho, _REAL):
            raise TypeError(f"rho must be a real number >= 1, got {rho!r}")
    value = float(rho)
    # comparisons only (no math.isfinite), so that a symbolic float of torch.compile passes
    if not (1.0 <= value < math.inf):
        raise ValueError(f"rho must be a finite number >= 1, got {rho!r}")
    return value


def check_axis(axis: Any, ndim: int, name: str = "inputs") -> int:
    """The bin axis as a non-negative index into ``name`` of ``ndim`` dimensions."""
    if isinstance(axis, (bool, np.bool_)) or not isinstance(axis, (numbers.Integral, np.integer)):
        raise TypeError(f"axis must be an integer, got {type(axis).__name__}")
    if ndim == 0:
        raise ValueError(f"{name} must have a bin axis, got a scalar")
    if not -ndim <= axis < ndim:
        raise ValueError(f"axis {axis} is out of bounds for {name} with {ndim} dimensions")
    return int(axis) % ndim


def narrow_float(dtype: Any) -> bool:
    """Whether ``dtype`` is one of the floats of ``ml_dtypes`` (bfloat16, float8, ...: what JAX and
    TensorFlow arrays convert to), which NumPy stores but does not compute in."""
    dtype = np.dtype(dtype)
    return (dtype.kind == "V" and str(getattr(dtype.type, "__module__", "")).startswith("ml_dtypes")
            and dtype.name.startswith(("bfloat", "float")))


def widened(arr: Any) -> Any:
    """``arr`` cast to float32 where it holds floats of ``ml_dtypes`` (bfloat16, float8, ...), which
    NumPy stores but does not compute in; any other array as it is (dask arrays stay lazy)."""
    return arr.astype(np.float32) if narrow_float(arr.dtype) else arr


def is_scipy_sparse(x: Any) -> bool:
    """Whether ``x`` is a SciPy sparse matrix or array."""
    return type(x).__module__.startswith("scipy.sparse") and hasattr(x, "toarray")


def host_rows(x: Any, name: str) -> np.ndarray:
    """``x`` as a NumPy array, or a ``TypeError`` naming ``name`` for a SciPy sparse matrix and for
    what NumPy would turn into a 0-d object array."""
    if is_scipy_sparse(x):
        raise TypeError(f"{name} is a SciPy sparse matrix: pass {name}.toarray() (emdtree.pairwise and "
                        "emdtree.weighted_unifrac take sparse tables as they are)")
    arr = np.asarray(x)
    if arr.dtype == object and arr.ndim == 0:
        raise TypeError(f"{name} of type {type(x).__module__}.{type(x).__qualname__} is not an array "
                        "emdtree understands")
    return arr


def float_eps(dtype: Any) -> float:
    """Machine epsilon of a mass dtype: its own for floats (``ml_dtypes``' included), float64's for
    integers."""
    dtype = np.dtype(dtype)
    if narrow_float(dtype):
        import ml_dtypes

        return float(ml_dtypes.finfo(dtype).eps)
    return float(np.finfo(dtype if dtype.kind == "f" else np.float64).eps)


def working_dtype(*arrays: Any) -> np.dtype:
    """The dtype of the computation: float32 stays float32, as do float16, bfloat16 and the other
    floats of ``ml_dtypes`` (cast first, as the adapters do); float64 and integers become float64."""
    dtypes = [np.dtype(a.dtype) for a in arrays]
    bad = next((d for d in dtypes if d.kind not in "biuf" and not narrow_float(d)), None)
    if bad is not None:
        raise TypeError(f"masses must be real numbers, got dtype {bad}")
    if all(narrow_float(d) or (d.kind == "f" and d.itemsize <= 4) for d in dtypes):
        return np.dtype(np.float32)
    return np.dtype(np.float64)


def indexed(name: str, offset: int = 0, axis: int = 1) -> tuple[Entry, Row]:
    """Namers for the rows of a 2-D ``name`` holding samples in rows (``axis=1``, the
    bin axis last) or in columns (``axis=0``), the first row being ``offset``."""
    if axis == 0:
        return (lambda r, k: f"{name}[{k}, {offset + r}]"), (lambda r: f"{name}[:, {offset + r}]")
    return (lambda r, k: f"{name}[{offset + r}, {k}]"), (lambda r: f"{name}[{offset + r}]")


def along(name: str, shape: tuple[int, ...], axis: int) -> tuple[Entry, Row]:
    """Namers for the rows of ``x.moveaxis(axis, -1).reshape(-1, n_bins)``, in ``x``'s
    own indices (``shape`` is ``x``'s): ``input[2, 0, 1]`` and ``input[2, :, 1]``."""
    batch = tuple(shape[:axis]) + tuple(shape[axis + 1:])

    def index(r: int, k: Any) -> list[str]:
        at = [str(int(j)) for j in np.unravel_index(r, batch)] if batch else []
        at.insert(axis, str(k))
        return at

    def entry(r: int, k: int) -> str:
        return f"{name}[{', '.join(index(r, k))}]"

    return entry, (lambda r: f"{name}[{', '.join(index(r, ':'))}]")


def _value(x: Any) -> str:
    """A value as the caller would print it: a NumPy scalar to its own dtype's precision."""
    return str(x) if isinstance(x, np.generic) else repr(x)


def shown_name(name: str) -> str:
    """A name as a message shows it: ``repr``, with ``ascii`` escapes when the name is not printable
    ASCII, so that names that look alike (NFC and NFD forms of 'é', a no-break space) differ."""
    return repr(name) if name.isascii() and name.isprintable() else ascii(name)


def not_bins_error(missing: list[str], total: int, tip_names: Any, listed: int = 10) -> str:
    """The message for features ``missing`` from the tree (of ``total``), the first ``listed``
    shown, with a hint when one differs from a tip name only in Unicode normalisation."""
    import unicodedata

    shown = ", ".join(shown_name(f) for f in missing[:listed])
    more = f" and {len(missing) - listed} more" if len(missing) > listed else ""
    hint = ""
    if any(not f.isascii() for f in missing):
        tips = {unicodedata.normalize("NFC", str(t)): str(t) for t in tip_names if not str(t).isascii()}
        for f in missing:
            tip = tips.get(unicodedata.normalize("NFC", f))
            if tip is not None:
                hint = message("unicode_hint", feature=shown_name(f), tip=shown_name(tip))
                break
    return message("not_bins", count=len(missing), total=total, shown=shown, more=more, hint=hint)


# ----------------------------------------------------------------------------- the rules


def logit_error(rows: np.ndarray, name: str, entry: Entry, row: Row) -> str | None:
    """The message for the first NaN or ``+inf`` logit, then the first row of ``-inf`` only; None if
    ``rows`` are valid logits."""
    rows = np.asarray(rows)
    if rows.dtype.kind != "f" or rows.size == 0:
        return None
    bad = np.isnan(rows) | (rows == np.inf)
    if bad.any():
        r, k = (int(j) for j in np.argwhere(bad)[0])
        return message("logit", entry=entry(r, k), value=_value(rows[r, k]), name=name)
    masked = np.flatnonzero(~(rows.max(axis=1, initial=-np.inf) > -np.inf))
    if masked.size:
        return message("masked_row", row=row(int(masked[0])))
    return None


def mass_error(rows: np.ndarray, name: str, entry: Entry) -> str | None:
    """The message for the first entry of ``rows`` that is not a finite mass ``>= 0``; None if all are."""
    rows = np.asarray(rows)
    bad = ~(np.isfinite(rows) & (rows >= 0)) if rows.dtype.kind == "f" else rows < 0
    if not bad.any():
        return None
    r, k = (int(j) for j in np.argwhere(bad)[0])
    return mass_entry_error(rows[r, k], name, entry(r, k))


def mass_entry_error(value: Any, name: str, where: str) -> str:
    """The message for one bad mass ``value`` at ``where``."""
    what = "not finite" if not np.isfinite(value) else "negative"
    return message("mass", entry=where, value=_value(value), what=what, name=name)


def total_error(totals: np.ndarray, row: Row) -> str | None:
    """The message for the first row whose total ``normalize="l1"`` cannot divide by."""
    bad = np.flatnonzero(~((totals > 0) & np.isfinite(totals)))
    if not bad.size:
        return None
    r = int(bad[0])
    if totals[r] == 0 or np.isnan(totals[r]):
        return message("zero_total", row=row(r))
    return message("total", row=row(r), total=float(totals[r]))


def label_error(labels: np.ndarray, n_bins: int, entry: Callable[[int], str]) -> str | None:
    """The message for the first class index of the flat ``labels`` outside ``[0, n_bins)`` (a float
    label must also be a whole number), named by ``entry(i)``; None if all are valid."""
    flat = np.asarray(labels).reshape(-1)
    if flat.dtype.kind == "f":
        whole = np.isfinite(flat) & (flat == np.round(flat))
        if not whole.all():
            i = int(np.flatnonzero(~whole)[0])
            return message("whole_label", entry=entry(i), value=_value(flat[i]))
    bad = np.flatnonzero((flat < 0) | (flat >= n_bins))
    if not bad.size:
        return None
    i = int(bad[0])
    return message("label", entry=entry(i), value=_value(flat[i]), top=n_bins - 1, n_bins=n_bins)


def batch_entry(name: str, batch_shape: tuple[int, ...] | None, size: int) -> Callable[[int], str]:
    """Names of the entries of a flattened ``name`` of ``batch_shape`` (flat indices when the shape
    does not fit ``size``): ``labels[1, 2]``."""
    shape = tuple(batch_shape) if batch_shape is not None and int(np.prod(batch_shape)) == size else (size,)
    return lambda i: name + str([int(j) for j in np.unravel_index(i, shape)] if shape else [])


def masses_error(rows: np.ndarray, normalize: str | None, name: str, entry: Entry, row: Row) -> str | None:
    """What is wrong with ``rows`` (rows, n_bins) of argument ``name`` as the raw first argument of
    ``normalize``, or None: logits for ``"softmax"``, finite masses >= 0 otherwise, with a positive
    total in every row for ``"l1"``."""
    if normalize == "softmax":
        return logit_error(rows, name, entry, row)
    error = mass_error(rows, name, entry)
    if error is None and normalize == "l1":
        error = total_error(np.asarray(rows).sum(axis=1, dtype=np.float64), row)
    return error


def unequal_total_error(totals: np.ndarray, first_total: float, eps: float, n_bins: int, row: Row,
                        first: str) -> str | None:
    """The message for the first of the float64 row ``totals`` that differs from ``first_total``
    (that of the row named ``first``) by more than rounding at precision ``eps`` allows; None if
    none does."""
    tol = max(n_bins, 64) * eps * np.maximum(np.abs(totals), abs(first_total))
    off = np.flatnonzero(np.abs(totals - first_total) > tol)
    if not off.size:
        return None
    r = int(off[0])
    return message("unequal_totals", row=row(r), total=float(totals[r]), first=first,
                   first_total=float(first_total))


def check_masses(rows: np.ndarray, normalize: str | None, name: str, entry: Entry | None = None,
                 row: Row | None = None) -> None:
    """A ValueError from :func:`masses_error` (namers default to :func:`indexed`)."""
    if entry is None or row is None:
        entry, row = indexed(name)
    error = masses_error(rows, normalize, name, entry, row)
    if error is not None:
        raise ValueError(error)


def check_raw(x: Any, normalize: str | None, axis: int, name: str = "input") -> None:
    """The rules of ``normalize`` on an adapter's raw array ``x`` (any shape, bin axis ``axis``),
    naming entries in ``x``'s own indices; ``normalize=None`` is left to the kernels."""
    if normalize is None:
        return
    x = np.asarray(x)
    axis = axis % x.ndim
    if x.size == 0:
        return
    rows = np.moveaxis(x, axis, -1).reshape(-1, x.shape[axis])
    entry, row = along(name, x.shape, axis)
    error = masses_error(rows, normalize, name, entry, row)
    if error is not None:
        raise ValueError(error)

