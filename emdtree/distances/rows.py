"""Samples turned into the rows of :mod:`emdtree.distances.pairwise`, for the in-memory and the Dask paths.

Each sample becomes a row ``x`` with ``x_k = w_k^(1/rho) phi_k`` over the
columns ``k`` that can contribute (paper eq. 7), so that
``EMD^rho(p, q) = sum_k |x_k - y_k|^rho``. The accuracy thresholds of the
pair sums are set here, where both paths read them.
"""

from __future__ import annotations

import numpy as np

from ..kernels import cpu
from ..kernels.checks import row_totals
from ..engine.normalize import softmax
from ..trees.tree import Tree
from ..engine import backends, reference
from ..engine.plan import plan_of
from ..engine.threads import parallel_launch

# For rho = 1 in float64 the kernel forms S_i + S_j - 2 sum_k min(x_ik, x_jk), whose
# rounding error is below ~200 eps (S_i + S_j) (chunked sums of CHUNK / 4 terms per
# lane). Pairs whose distance is below _MIN_TAU (S_i + S_j) are summed directly, so
# the relative error stays below ~200 eps / _MIN_TAU = 2e-11.
_MIN_TAU = 1e-3

# For rho = 2 in float64 the pair sums are |a|^2 + |b|^2 - 2 a.b with a matrix product,
# after subtracting the mean row from every row (distances do not change, and the
# norms become of the size of the distances instead of the size of phi). Any order
# of summation of a.b errs by at most m u |a| |b| (m columns, u = eps / 2), so the
# result errs by at most about m eps (|a|^2 + |b|^2); pairs whose distance is below
# m eps / _GRAM_REL (|a|^2 + |b|^2) are summed directly, which keeps every pair
# within _GRAM_REL of the direct formula. With very many columns (the threshold above
# _GRAM_MAX_TAU) the direct kernel is used throughout.
_GRAM_REL = 1e-10
_GRAM_MAX_TAU = 0.5


def _columns(tree: Tree, rho: float) -> tuple[np.ndarray, np.ndarray]:
    """Layout positions that can contribute and their scales ``w^(1/rho)``.

    A node whose parent has the same bins below it has the same phi as that
    parent for every sample; its cost is added to the top node of the run.
    """
    lay = tree.layout
    n_nodes, n_bins = tree.n_nodes, tree.n_bins
    below = lay.bins_below
    parent = lay.parent
    top = np.arange(n_nodes)
    # descending positions visit a parent before its children
    same = np.zeros(n_nodes, dtype=bool)
    same[:-1] = below[parent[:-1]] == below[:-1]
    for j in np.flatnonzero(same)[::-1]:
        top[j] = top[parent[j]]
    useful = (below > 0) & (below < n_bins)
    useful[-1] = False
    cost = np.bincount(top[useful], weights=lay.weight[useful], minlength=n_nodes)
    positions = np.flatnonzero(cost > 0)
    return positions, cost[positions] ** (1.0 / rho)


def _position(name: str, row: int, col: int, axis: int) -> str:
    return f"{name}[{row}, {col}]" if axis == 1 else f"{name}[{col}, {row}]"


class _Rows:
    """Transformed rows ``x`` of one input, filled block by block (phi on ``n_threads`` threads)."""

    def __init__(self, samples: np.ndarray, name: str, axis: int, dtype: np.dtype, tree: Tree,
                 positions: np.ndarray, scale: np.ndarray, normalize: str | None, check: bool,
                 block: int, cold: bool = False, n_threads: int = 1) -> None:
        n, n_cols = samples.shape[0], positions.shape[0]
        lay = tree.layout
        non_bin = np.flatnonzero(lay.bin_at < 0).astype(np.int64)
        zeros = np.zeros(tree.n_bins, dtype=dtype)
        zeros.flags.writeable = False
        scale = scale.astype(dtype)
        self.x = np.empty((n, n_cols), dtype=dtype)
        self.totals = np.empty(n, dtype=np.float64)
        self.low = np.full(n_cols, np.inf, dtype=dtype)
        self.high = np.full(n_cols, -np.inf, dtype=dtype)
        for r0 in range(0, n, block):
            r1 = min(r0 + block, n)
            rows = np.ascontiguousarray(samples[r0:r1], dtype=dtype).view()
            rows.flags.writeable = False  # one kernel specialisation whatever the caller's flags
            totals = self.totals[r0:r1]
            if normalize == "softmax":
                if check:
                    _check_logits(rows, name, r0, axis)
                rows = softmax(np, rows)
                rows.flags.writeable = False
            bad = (_numpy_row_totals if cold else row_totals)(rows, totals)
            if check and bad >= 0:
                r, k = divmod(bad, rows.shape[1])
                value = rows[r, k]
                what = "not finite" if not np.isfinite(value) else "negative"
                raise ValueError(f"{_position(name, r0 + r, k, axis)} = {value} is {what}: "
                                 f"entries of {name} must be finite and >= 0")
            if check and (bad == -2 or (totals.size and totals.max() > np.finfo(dtype).max)):
                r = int(np.flatnonzero(~(totals <= np.finfo(dtype).max))[0])
                where = f"{name}[{r0 + r}]" if axis == 1 else f"{name}[:, {r0 + r}]"
                raise ValueError(f"the total mass of {where} overflows {np.dtype(dtype).name}"
                                 + ("; pass float64 masses" if dtype != np.float64 else "")
                                 + ": scale the masses down")
            if normalize == "l1":
                # unchecked rows holding NaN have a NaN total: NaN in their own distances only
                zero = np.flatnonzero(~(totals > 0) & ~np.isnan(totals))
                if zero.size:
                    r = r0 + int(zero[0])
                    where = f"{name}[{r}]" if axis == 1 else f"{name}[:, {r}]"
                    what = "zero total mass" if totals[r - r0] == 0 else f"total mass {totals[r - r0]!r}"
                    raise ValueError(f"{where} has {what}: cannot normalize")
                rows = rows / totals.astype(dtype)[:, None]  # never in place: rows may be the caller's
                rows.flags.writeable = False
            x = self.x[r0:r1]
            if n_cols and cold:
                _numpy_phi_columns(tree, rows, positions, x)
            elif n_cols and n_threads > 1:
                with parallel_launch(n_threads):
                    cpu.phi_parallel(rows.reshape(-1), zeros, 1, 0, r1 - r0, lay.parent, lay.bin_position,
                                     non_bin, positions, x.reshape(-1), n_threads)
            elif n_cols:
                cpu.phi_serial(rows.reshape(-1), zeros, 1, 0, r1 - r0, lay.parent, lay.bin_position, non_bin,
                               positions, x.reshape(-1))
            if n_cols:
                with np.errstate(over="ignore"):  # an overflow shows in the result check
                    x *= scale
                np.minimum(self.low, x.min(axis=0), out=self.low)
                np.maximum(self.high, x.max(axis=0), out=self.high)

    def keep(self, columns: np.ndarray) -> None:
        """Keep only ``columns``, compacting the rows in place (no second copy)."""
        n, n_cols = self.x.shape
        m = columns.shape[0]
        if m == n_cols:
            return
        flat = self.x.reshape(-1)
        for r in range(n):
            flat[r * m:(r + 1) * m] = flat[r * n_cols:(r + 1) * n_cols][columns]
        self.x = flat[:n * m].reshape(n, m)


def _sample_tree(tree: Tree | None, n_bins: int, y_bins: int | None, along: str) -> Tree:
    """The tree of samples with ``n_bins`` bins (``y_bins`` for Y): the chain for None."""
    if y_bins is not None and y_bins != n_bins:
        raise ValueError(f"X has {n_bins} bins{along} but Y has {y_bins}")
    if n_bins == 0:
        raise ValueError("the bin axis is empty")
    if tree is None:
        from ..engine.inputs import resolve_tree

        return resolve_tree(None, n_bins)
    if not isinstance(tree, Tree):
        raise TypeError(f"tree must be an emdtree.Tree or None, got {type(tree).__name__}")
    if tree.n_bins != n_bins:
        raise ValueError(f"X has {n_bins} bins{along} but the tree has {tree.n_bins} bins")
    return tree


def _check_logits(rows: np.ndarray, name: str, r0: int, axis: int) -> None:
    """Rows of logits: no NaN or +inf, and a finite logit in every row (:mod:`emdtree.engine.semantics`)."""
    from ..engine import semantics

    error = semantics.logit_error(rows, name, *semantics.indexed(name, r0, axis))
    if error is not None:
        raise ValueError(error)


# ----------------------------------------------------------------------------- NumPy
# Small matrices are computed with these (emdtree.engine.tiers).


def _numpy_row_totals(x: np.ndarray, totals: np.ndarray) -> int:
    """:func:`emdtree.kernels.checks.row_totals` in NumPy: the same return value and totals."""
    with np.errstate(over="ignore", invalid="ignore"):
        totals[:] = x.sum(axis=1, dtype=np.float64)  # every total, invalid entries or not
        bad = ~((x >= 0) & (x < np.inf))
        if bad.any():
            return int(np.flatnonzero(bad.reshape(-1))[0])
    return -1 if np.isfinite(totals).all() else -2


def _numpy_phi_columns(tree: Tree, x: np.ndarray, positions: np.ndarray, out: np.ndarray) -> None:
    """phi of the rows of ``x`` (rows, n_bins) at the layout ``positions``, into ``out`` (rows, positions),
    with the reference math in float64."""
    plan = plan_of(tree)
    d = x.astype(np.float64).T  # Fortran-ordered (emdtree.engine.backends._cumsum0)
    source = plan.node_major.position_source[positions]
    out[:] = reference.phi(backends.numpy_ops, d, plan, source).T
