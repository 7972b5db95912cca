"""Turn user arrays into the flat, validated rows the kernels take.

Every public function goes through :func:`prepare`: it resolves the bin axis,
broadcasts the batch dimensions, picks the working dtype, checks the masses once
and says what is wrong in the user's terms (which argument, which position,
which value).
"""

from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple

import numpy as np

from ..kernels.checks import row_totals, stats_pass
from .normalize import softmax
from ..trees.tree import Tree
from . import semantics
from .semantics import check_axis, check_normalize, check_rho, working_dtype  # noqa: F401

_CHAIN_CACHE_MAX_BINS = 100_000


@functools.lru_cache(maxsize=16)
def _unit_chain(n_bins: int) -> Tree:
    return Tree.chain(n_bins)


def resolve_tree(tree: Tree | None, n_bins: int) -> Tree:
    """The given tree, or a unit-spacing chain of ``n_bins`` bins for ``None``."""
    if tree is None:
        return _unit_chain(n_bins) if n_bins <= _CHAIN_CACHE_MAX_BINS else Tree.chain(n_bins)
    if not isinstance(tree, Tree):
        raise TypeError(f"tree must be an emdtree.Tree or None, got {type(tree).__name__}")
    if tree.n_bins != n_bins:
        raise ValueError(
            f"the bin axis has length {n_bins} but the tree has {tree.n_bins} bins"
        )
    return tree


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
    names: tuple[str, ...]  # the arguments' names, in the order of ``arrays``
    shapes: tuple[tuple[int, ...], ...]  # the arguments' own shapes, for error messages
    mass_eps: float  # machine epsilon of the least precise mass argument
    normalize: str | None = None  # what was applied: arrays[0] then holds the normalised rows
    # what the caller applied before (an adapter's own softmax): the checks compare the other masses to
    # 1 and name the option the caller gave
    applied: str | None = None


def reject_masked(x: Any, name: str) -> None:
    """A TypeError for a masked array with masked entries: ``np.asarray`` would drop the mask."""
    if isinstance(x, np.ma.MaskedArray) and np.ma.getmaskarray(x).any():
        i = tuple(int(j) for j in np.argwhere(np.ma.getmaskarray(x))[0])
        raise TypeError(f"{name} is a masked array and {name}{list(i)} is masked: the EMD has no meaning "
                        f"for a masked entry; pass {name}.filled(0) (or another fill value)")


def _as_array(x: Any, name: str) -> np.ndarray:
    if hasattr(x, "__cuda_array_interface__") and not isinstance(x, np.ndarray):
        raise TypeError(f"{name} is a GPU array; the NumPy API takes host arrays")
    reject_masked(x, name)
    arr = np.asarray(x)
    if arr.ndim == 0:
        raise ValueError(f"{name} must have a bin axis, got a scalar")
    return arr


def resolve_shape(
    shapes: dict[str, tuple[int, ...]], axis: Any
) -> tuple[tuple[int, ...], int, int, tuple[int, ...]]:
    """Broadcast shape, normalised bin axis, bin count and batch shape of named arguments."""
    first = next(iter(shapes.values()))
    if all(sh == first for sh in shapes.values()):
        shape = tuple(first)
    else:
        try:
            shape = np.broadcast_shapes(*shapes.values())
        except ValueError:
            shown = ", ".join(f"{n}{tuple(sh)}" for n, sh in shapes.items())
            raise ValueError(f"shapes do not broadcast: {shown}") from None
    ndim = len(shape)
    ax = check_axis(axis, ndim)
    n_bins = shape[ax]
    if n_bins == 0:
        raise ValueError("the bin axis is empty")
    return shape, ax, n_bins, shape[:ax] + shape[ax + 1:]


def flatten(
    xp: Any, name: str, a: Any, ax: int, axis: int, n_bins: int, batch_shape: tuple[int, ...], keep_row: bool,
) -> tuple[Any, int]:
    """Argument ``a`` of namespace ``xp`` as (rows, n_bins) with the bin axis last.

    Returns the rows and their step: 0 for one row that stands for the whole
    batch (only with ``keep_row``), else 1.
    """
    ndim = len(batch_shape) + 1
    if a.ndim < ndim:
        a = xp.reshape(a, (1,) * (ndim - a.ndim) + tuple(a.shape))
    if ax != ndim - 1:
        a = xp.moveaxis(a, ax, -1)
    if a.shape[-1] != n_bins:
        # only possible through broadcasting a length-1 bin axis
        raise ValueError(f"{name} has {a.shape[-1]} bins along axis {axis}; expected {n_bins}")
    n_rows = math.prod(batch_shape)
    if keep_row and math.prod(a.shape) == n_bins:
        return xp.reshape(a, (1, n_bins)), 0
    if tuple(a.shape[:-1]) == batch_shape:
        return xp.reshape(a, (n_rows, n_bins)), 1
    return xp.reshape(xp.broadcast_to(a, batch_shape + (n_bins,)), (n_rows, n_bins)), 1


def prepare(
    arrays: dict[str, Any],
    tree: Tree | None,
    axis: int,
    check: bool,
    normalize: str | None = None,
    masses: tuple[str, ...] = ("p", "q"),
    defer: bool = False,
    applied: str | None = None,
) -> Rows:
    """Broadcast, flatten and validate the named arrays.

    ``masses`` names the arguments that are mass distributions (checked for
    finite, non-negative entries and equal totals); any other array (a
    direction ``v``) is only checked for finiteness. With ``defer`` (and no
    ``normalize``) the mass checks are left to :func:`check_stats`, fed by
    the statistics a kernel gathers while it reads the masses.

    ``normalize="l1"`` divides every mass argument by its row totals;
    ``normalize="softmax"`` takes the first mass argument as logits (no NaN
    or ``+inf``, a finite entry in each row; ``-inf`` stands for probability
    0) and replaces it by its softmax, while the other mass arguments must
    be distributions (totals 1).

    ``applied`` is the normalisation the caller has already applied to the
    first mass argument (an adapter's own softmax): the others must then be
    distributions, and a message about them says so rather than suggest an
    option.
    """
    rows = _plain_rows(arrays, tree, axis, masses) if normalize is None and applied is None else None
    if rows is None:
        rows = _general_rows(arrays, tree, axis, normalize, masses, applied)
    if normalize == "softmax":
        return _softmax_rows(rows, masses, check)
    totals: dict[str, np.ndarray] = {}
    if normalize is not None or (check and not defer):
        for i, name in enumerate(rows.names):
            if name not in masses:
                if check:
                    _check_finite(rows, i)
                continue
            totals[name] = _mass_totals(rows, i, check)
        if normalize is not None:
            out = list(rows.arrays)
            for i, name in enumerate(rows.names):
                if name in masses:
                    tot = totals[name]
                    zero = np.flatnonzero(tot <= 0)
                    if zero.size:
                        where = _batch_position(int(zero[0]) if out[i].shape[0] > 1 else 0, rows.batch_shape)
                        raise ValueError(f"{name} has zero total mass{where}: cannot normalize")
                    out[i] = out[i] / tot.astype(rows.dtype)[:, None]
                    out[i].flags.writeable = False
            kept = tuple(totals.get(name) for name in rows.names)
            return rows._replace(arrays=tuple(out), totals=kept, normalize=normalize)
        if check and len(totals) == 2:
            _check_totals(rows, totals[masses[0]], totals[masses[1]], masses)
    return rows


_F32, _F64 = np.dtype(np.float32), np.dtype(np.float64)


def _plain_rows(arrays: dict[str, Any], tree: Tree | None, axis: Any, masses: tuple[str, ...]) -> Rows | None:
    """The rows of :func:`_general_rows` for the common case, in a few operations, or None.

    The case: C-contiguous ndarrays of one shape and one dtype (float32 or
    float64, native byte order), the bin axis last, some of them masses. The
    general path would neither convert nor broadcast them, and the first
    error it could raise on them is :func:`resolve_tree`'s, raised here too.
    """
    first = None
    for a in arrays.values():
        if type(a) is not np.ndarray or not a.flags.c_contiguous:
            return None
        if first is None:
            first = a
        elif a.shape != first.shape or a.dtype is not first.dtype:
            return None
    dtype = first.dtype if first is not None else None
    if dtype is not _F32 and dtype is not _F64:
        return None
    shape = first.shape
    ndim = len(shape)
    if ndim == 0 or type(axis) is not int or not (axis == -1 or axis == ndim - 1) or shape[-1] == 0:
        return None
    for name in arrays:
        if name in masses:
            break
    else:
        return None
    n_bins = shape[-1]
    tree = resolve_tree(tree, n_bins)
    batch_shape = shape[:-1]
    n_rows = math.prod(batch_shape)
    # one row stands for the whole batch (step 0), as flatten() keeps it
    step = 0 if n_rows == 1 else 1
    out = []
    for a in arrays.values():
        flat = a.reshape(n_rows, n_bins)
        flat.setflags(write=False)  # one kernel specialisation whatever the caller's flags
        out.append(flat)
    n = len(out)
    return Rows(tuple(out), (step,) * n, n_rows, batch_shape, ndim - 1, ndim, dtype, tree, (None,) * n,
                tuple(arrays), (shape,) * n, _EPS[dtype])


def _general_rows(
    arrays: dict[str, Any], tree: Tree | None, axis: Any, normalize: str | None, masses: tuple[str, ...],
    applied: str | None,
) -> Rows:
    """Broadcast and flatten the named arrays to :class:`Rows` (any input :func:`prepare` takes)."""
    normalize = check_normalize(normalize)
    applied = check_normalize(applied)
    raw = {name: _as_array(x, name) for name, x in arrays.items()}
    dtype = working_dtype(*raw.values())
    shape, ax, n_bins, batch_shape = resolve_shape({n: a.shape for n, a in raw.items()}, axis)
    ndim = len(shape)
    n_rows = math.prod(batch_shape)
    tree = resolve_tree(tree, n_bins)
    mass_eps = max(_eps(a.dtype) for name, a in raw.items() if name in masses)

    out, steps = [], []
    for name, a in raw.items():
        flat, step = flatten(np, name, a, ax, axis, n_bins, batch_shape, keep_row=True)
        if flat.dtype != dtype or not flat.flags.c_contiguous:
            flat = np.ascontiguousarray(flat, dtype=dtype)
        flat = flat.view()
        flat.flags.writeable = False  # one kernel specialisation whatever the caller's flags
        out.append(flat)
        steps.append(step)

    return Rows(tuple(out), tuple(steps), n_rows, batch_shape, ax, ndim, dtype, tree,
                (None,) * len(out), tuple(raw), tuple(a.shape for a in raw.values()), mass_eps,
                applied=applied)


def _check_finite(rows: Rows, i: int) -> None:
    """A ValueError naming the first non-finite entry of argument ``i``."""
    name, flat = rows.names[i], rows.arrays[i]
    if not np.all(np.isfinite(flat)):
        bad = int(np.flatnonzero(~np.isfinite(flat.ravel()))[0])
        raise ValueError(
            f"{name}{_position(rows, i, bad)} = {semantics._value(flat.flat[bad])} is not finite: entries of "
            f"{name} must be finite"
        )


def namers(rows: Rows, i: int) -> tuple[semantics.Entry, semantics.Row]:
    """How argument ``i`` of ``rows`` is named to the caller: entry ``k`` of flat row ``r``
    in the argument's own indices, and row ``r`` by its batch index."""
    name, n_bins = rows.names[i], rows.tree.n_bins
    several = rows.arrays[i].shape[0] > 1

    def row(r: int) -> str:
        return name + (_batch_position(r, rows.batch_shape) if several else "")

    return (lambda r, k: name + _position(rows, i, r * n_bins + k)), row


def check_logits(rows: Rows, i: int) -> None:
    """Argument ``i`` as logits: no NaN or ``+inf``, and a finite entry in every row
    (:func:`emdtree.engine.semantics.logit_error`)."""
    error = semantics.logit_error(rows.arrays[i], rows.names[i], *namers(rows, i))
    if error is not None:
        raise ValueError(error)


def _softmax_rows(rows: Rows, masses: tuple[str, ...], check: bool) -> Rows:
    """``normalize="softmax"``: the first mass argument to probabilities, the
    others checked to be distributions."""
    out = list(rows.arrays)
    for i, name in enumerate(rows.names):
        if name == masses[0]:
            if check:
                check_logits(rows, i)
            with np.errstate(invalid="ignore"):  # rows of -inf only, unchecked
                out[i] = softmax(np, out[i])
            out[i].flags.writeable = False
        elif not check:
            continue
        elif name in masses:
            tot = _mass_totals(rows, i, True)
            tol = max(rows.tree.n_bins, 64) * rows.mass_eps * np.maximum(np.abs(tot), 1.0)
            off = np.flatnonzero(np.abs(tot - 1.0) > tol)
            if off.size:
                r = int(off[0])
                raise ValueError(semantics.message("distribution", row=namers(rows, i)[1](r),
                                                   total=float(tot[r]), logits=masses[0], name=name))
        else:
            _check_finite(rows, i)
    return rows._replace(arrays=tuple(out), normalize="softmax")


def _mass_totals(rows: Rows, i: int, check: bool) -> np.ndarray:
    """Float64 row totals of mass argument ``i``; with ``check``, a ValueError
    naming its first NaN, infinite or negative entry, or a total too large for
    the working dtype."""
    name, flat = rows.names[i], rows.arrays[i]
    tot = np.empty(flat.shape[0], dtype=np.float64)
    bad = row_totals(flat, tot)
    if check and bad >= 0:
        raise ValueError(semantics.mass_entry_error(flat.flat[bad], name, name + _position(rows, i, bad)))
    if check and (bad == -2 or (tot.size and tot.max() > np.finfo(rows.dtype).max)):
        raise ValueError(
            f"the total mass of {name} overflows {rows.dtype.name}"
            + ("; pass float64 masses" if rows.dtype != np.float64 else "")
        )
    return tot


_EPS = {np.dtype(t): float(np.finfo(t).eps) for t in (np.float16, np.float32, np.float64, np.longdouble)}
_MAX = {np.dtype(t): float(np.finfo(t).max) for t in (np.float32, np.float64)}
_FEW_ROWS = 8


def _eps(dtype: np.dtype) -> float:
    """Machine epsilon of a mass dtype (integers count as float64)."""
    eps = _EPS.get(dtype)
    if eps is None:
        eps = semantics.float_eps(dtype)
    return eps


def check_stats(rows: Rows, totals: np.ndarray, low: np.ndarray) -> None:
    """Validate p and q from a kernel's row totals (rows, 2) and minima.

    Non-finite entries make a row total non-finite and negative ones show in
    the minima; only then are the arrays read again, to name the entry or to
    recompute totals that overflowed the kernel's float32 lanes.
    """
    if rows.n_rows == 0:
        return
    if rows.n_rows <= _FEW_ROWS and rows.applied is None:
        # a few samples: Python floats, without NumPy's per-call overhead; the
        # general path below names whatever is wrong
        tol = max(rows.tree.n_bins, 64) * rows.mass_eps
        pairs = totals.tolist()
        total = sum(a + b for a, b in pairs)
        if (min(low.tolist(), default=0.0) >= 0 and math.isfinite(total) and total <= _MAX[rows.dtype]
                and all(abs(a - b) <= tol * max(abs(a), abs(b)) for a, b in pairs)):
            return
    sp, sq = totals[:, 0], totals[:, 1]
    with np.errstate(over="ignore"):  # a sum beyond float64 means: read the masses again
        total = totals.sum()
    if not (low.min() >= 0 and math.isfinite(total) and total <= np.finfo(rows.dtype).max):
        sp, sq = _mass_totals(rows, 0, True), _mass_totals(rows, 1, True)
    tol = max(rows.tree.n_bins, 64) * rows.mass_eps
    if rows.applied is not None or np.any(np.abs(sp - sq) > tol * np.maximum(np.abs(sp), np.abs(sq))):
        _check_totals(rows, sp, sq, rows.names[:2])


_NO_GRAD = {np.dtype(t): np.zeros(0, dtype=t) for t in (np.float32, np.float64)}


def check_kernel_stats(rows: Rows, rho: float, totals: np.ndarray, low: np.ndarray, value: np.ndarray,
                       grad: np.ndarray | None, compiled: bool = True) -> None:
    """:func:`check_stats` and :func:`check_result` for a value-and-gradient call.

    ``grad`` is the flat gradient when it must be checked too, else None. After
    a compiled kernel (``compiled``), one compiled pass over the statistics
    (:func:`emdtree.kernels.checks.stats_pass`) comes first: it passes only
    what both checks would pass, in a fraction of their NumPy calls, and
    leaves anything else, with its message, to them. The NumPy pass of the
    first calls of a process does not compile it.
    """
    if (compiled and rows.applied is None
            and stats_pass(totals, low, value, _NO_GRAD[rows.dtype] if grad is None else grad,
                           max(rows.tree.n_bins, 64) * rows.mass_eps, _MAX[rows.dtype])):
        return
    check_stats(rows, totals, low)
    check_result(rows, rho, value, None if grad is None else grad.reshape(rows.n_rows, rows.tree.n_bins))


def check_label_stats(rows: Rows, totals: np.ndarray, low: np.ndarray) -> None:
    """Validate p against class labels: a unit mass on one bin, so p must sum to 1."""
    if rows.n_rows == 0:
        return
    sp = totals[:, 0]
    with np.errstate(over="ignore"):
        total = sp.sum()
    if not (low.min() >= 0 and math.isfinite(total)):
        sp = _mass_totals(rows, 0, True)
    tol = max(rows.tree.n_bins, 64) * rows.mass_eps
    off = np.abs(sp - 1.0) > tol * np.maximum(np.abs(sp), 1.0)
    if np.any(off):
        r = int(np.flatnonzero(off)[0])
        raise ValueError(
            f"{rows.names[0]}{_batch_position(r, rows.batch_shape)} sums to {float(sp[r])!r}: against a "
            f"class label (a unit mass on one bin) it must sum to 1; pass normalize='l1' to compare it as "
            f"a distribution"
        )


def check_labels(
    labels: Any, batch_shape: tuple[int, ...], n_bins: int, shape_of_p: tuple[int, ...]
) -> np.ndarray:
    """Integer class indices, one per sample, as a flat int64 array."""
    lab = np.asarray(labels)
    if lab.dtype.kind not in "iu":
        raise TypeError(f"labels must be integer class indices, got dtype {lab.dtype}")
    if lab.shape != batch_shape:
        raise ValueError(
            f"labels has shape {lab.shape}; expected {batch_shape}, the shape of the predictions "
            f"{shape_of_p} without the bin axis"
        )
    flat = np.array(lab.reshape(-1), dtype=np.int64)  # a writable copy: one kernel specialisation
    error = semantics.label_error(flat, n_bins, semantics.batch_entry("labels", batch_shape, flat.size))
    if error is not None:
        raise ValueError(error)
    return flat


def _check_totals(rows: Rows, ta: np.ndarray, tb: np.ndarray, masses: tuple[str, str]) -> None:
    a, b = masses
    if rows.applied is not None:  # the first argument is normalised: the other must be a distribution
        tol = max(rows.tree.n_bins, 64) * rows.mass_eps * np.maximum(np.abs(tb), 1.0)
        off = np.flatnonzero(np.abs(tb - 1.0) > tol)
        if off.size:
            r = int(off[0])
            row = namers(rows, list(rows.names).index(b))[1] if b in rows.names else (lambda _r: b)
            raise ValueError(_distribution_message(rows.applied, row(r), float(tb[r]), a, b))
        return
    tol = max(rows.tree.n_bins, 64) * rows.mass_eps * np.maximum(np.abs(ta), np.abs(tb))
    off = np.abs(ta - tb) > tol
    if np.any(off):
        r = int(np.flatnonzero(off)[0])
        broadcast = max(ta.shape[0], tb.shape[0]) > 1
        where = _batch_position(r, rows.batch_shape) if broadcast else ""
        r_a, r_b = (r if ta.shape[0] > 1 else 0), (r if tb.shape[0] > 1 else 0)
        raise ValueError(
            f"{a} and {b} must have equal total mass{where}: sum({a}) = {float(ta[r_a])!r}, "
            f"sum({b}) = {float(tb[r_b])!r}; pass normalize='l1' to compare them as distributions"
        )


def _distribution_message(normalize: str, row: str, total: float, first: str, name: str) -> str:
    if normalize == "softmax":
        return semantics.message("distribution", row=row, total=total, logits=first, name=name)
    return semantics.message("l1_distribution", row=row, total=total, first=first, name=name)


def check_result(rows: Rows, rho: float, value: np.ndarray, grad: np.ndarray | None) -> None:
    """A ValueError when the EMD of checked (finite) masses, or its gradient, is not finite.

    With finite masses and edge costs that only happens when ``w |phi|^rho``
    overflows the working dtype: a large ``rho`` with ``|phi| > 1``.
    """
    if np.isfinite(value).all() and (grad is None or np.isfinite(grad).all()):
        return
    bad = ~np.isfinite(value)
    if grad is not None:
        bad |= ~np.isfinite(grad).all(axis=1)
    r = int(np.flatnonzero(bad)[0])
    what = "EMD^rho" if not np.isfinite(value[r]) else "the gradient of EMD^rho"
    hint = "; float64 masses reach further" if rows.dtype != np.float64 else ""
    raise ValueError(
        f"{what}{_batch_position(r, rows.batch_shape)} overflows {rows.dtype.name} with rho = {rho:g}: "
        f"|phi|^rho is beyond {float(np.finfo(rows.dtype).max):.3g}; use a smaller rho or scale the masses "
        f"down{hint}"
    )


def _batch_position(row: int, batch_shape: tuple[int, ...]) -> str:
    if not batch_shape:
        return ""
    return f" at batch index {tuple(int(i) for i in np.unravel_index(row, batch_shape))}"


def _position(rows: Rows, i: int, flat_index: int) -> str:
    """``[i, j, ...]``: the index, in argument ``i``'s own shape, of an entry of its flat rows."""
    flat = rows.arrays[i]
    n_bins = rows.tree.n_bins
    row, k = divmod(int(flat_index), n_bins)
    batch = list(np.unravel_index(row, rows.batch_shape)) if (rows.batch_shape and flat.shape[0] > 1) \
        else [0] * len(rows.batch_shape)
    full = batch[:rows.axis] + [k] + batch[rows.axis:]  # index in the broadcast shape
    shape = rows.shapes[i]
    own = full[len(full) - len(shape):]
    own = [0 if size == 1 else int(j) for j, size in zip(own, shape)]
    return "[" + ", ".join(str(j) for j in own) + "]"


def restore_bins(flat: np.ndarray, rows: Rows) -> np.ndarray:
    """(n_rows, m) kernel output back to the input layout, the m-axis at the bin axis."""
    shape = rows.batch_shape + (flat.shape[-1],)
    out = flat if flat.shape == shape else flat.reshape(shape)
    return out if rows.axis == rows.ndim - 1 else np.moveaxis(out, -1, rows.axis)


def restore_scalar(flat: np.ndarray, rows: Rows):
    """(n_rows,) kernel output to the batch shape (a NumPy scalar for one sample)."""
    out = flat if flat.shape == rows.batch_shape else flat.reshape(rows.batch_shape)
    return out[()] if out.ndim == 0 else out
