"""Entropy-regularised optimal transport (Sinkhorn), the paper's baseline.

Martinez et al. compare EMD^rho with the Sinkhorn distance of Cuturi (2013)
as computed by the Caffe layer of Frogner et al. (2015), the paper's
Algorithm 1. With ``K = exp(-lam M - 1)`` and ``u = 1``, every iteration does

    v <- q / (K^T u),    u <- p / (K v),

the plan is ``P = diag(u) K diag(v)``, the Sinkhorn distance is
``SD = <P, M> = sum(u * ((K * M) v))`` and the gradient with respect to ``p``
is ``log(u) / lam`` minus its mean over the bins.

``method="caffe"`` runs these scalings as written. ``method="log"`` runs the
same iterations on ``log u`` and ``log v`` (log-sum-exp updates), so it has
the same iterates and the same fixed point but neither overflows nor
underflows when ``lam * M`` is large. Both are vectorised over the batch: each
half-iteration is one ``(batch, n) @ (n, n)`` matrix product, the cost
``O(batch n^2)`` per iteration that the paper compares with EMD^2's
``O(batch n)``.
"""

from __future__ import annotations

import functools
import math
import numbers
from typing import Any, Iterator, NamedTuple

import numpy as np

from ..engine.inputs import prepare, restore_bins, restore_scalar
from ..trees.tree import Tree

__all__ = ["sinkhorn", "SinkhornResult"]

_METHODS = ("caffe", "log")
_LSE_CHUNK = 1 << 22  # entries of one (pairs, n_bins) block in the exact log-sum-exp


class SinkhornResult(NamedTuple):
    """Output of :func:`sinkhorn`; every array has the batch shape of the inputs.

    A named tuple: it unpacks as ``value, grad, n_iter, converged,
    marginal_error = sinkhorn(...)``.

    Parameters
    ----------
    value : ndarray or float, shape (...)
        Sinkhorn distance ``<P, M>`` of the final plan.
    grad : ndarray or None, shape of the broadcast inputs
        Centred ``log(u) / lam``, the gradient with respect to ``p``; None
        unless ``return_grad``.
    n_iter : int
        Iterations run (each one a ``v`` and a ``u`` update).
    converged : ndarray of bool or bool, shape (...)
        ``marginal_error <= tol``; all False when ``tol`` is None.
    marginal_error : ndarray or float, shape (...)
        ``sum_j |(P^T 1)_j - q_j| / sum(q)`` of the final plan (its rows sum
        to ``p`` exactly).

    Examples
    --------
    >>> import numpy as np, emdtree
    >>> M = emdtree.Tree.chain(2).distance_matrix()
    >>> res = emdtree.sinkhorn([1.0, 0.0], [0.0, 1.0], M, n_iter=3)
    >>> float(res.value), res.grad is None, res.n_iter, bool(res.converged)
    (1.0, True, 3, False)
    """

    value: Any
    """Sinkhorn distance ``<P, M>`` of the final plan, shape (...)."""
    grad: np.ndarray | None
    """Centred ``log(u) / lam``, shape of the inputs; None unless ``return_grad``."""
    n_iter: int
    """Iterations run (each one a ``v`` and a ``u`` update)."""
    converged: Any
    """``marginal_error <= tol``, shape (...); all False when ``tol`` is None."""
    marginal_error: Any
    """``sum_j |(P^T 1)_j - q_j| / sum(q)`` of the final plan, shape (...)."""


# ----------------------------------------------------------------------------- inputs

_CACHE_MAX_BINS = 4096  # 128 MB per cached float64 matrix at most


@functools.lru_cache(maxsize=8)
def _cached_tree_cost(tree: Tree) -> np.ndarray:
    cost = tree.distance_matrix()
    cost.flags.writeable = False
    return cost


def _tree_cost(tree: Tree) -> np.ndarray:
    return _cached_tree_cost(tree) if tree.n_bins <= _CACHE_MAX_BINS else tree.distance_matrix()


def _check_cost(cost: Any, n_bins: int) -> np.ndarray:
    if isinstance(cost, Tree):
        if cost.n_bins != n_bins:
            raise ValueError(f"the bin axis has length {n_bins} but the tree has {cost.n_bins} bins")
        return _tree_cost(cost)
    M = np.asarray(cost)
    if M.dtype.kind not in "biuf":
        raise TypeError(f"cost must be a real matrix or an emdtree.Tree, got dtype {M.dtype}")
    if M.ndim != 2 or M.shape[0] != M.shape[1]:
        raise ValueError(f"cost must be a square (n_bins, n_bins) matrix, got shape {M.shape}")
    if M.shape[0] != n_bins:
        raise ValueError(f"cost has shape {M.shape} but the bin axis has length {n_bins}")
    M = M.astype(np.float64, copy=False)
    bad = ~np.isfinite(M) | (M < 0)
    if bad.any():
        i, j = (int(k) for k in np.unravel_index(int(np.flatnonzero(bad)[0]), M.shape))
        raise ValueError(f"cost[{i}, {j}] = {M[i, j]} is not allowed: the cost must be finite and >= 0")
    return M


def _check_scalar(x: Any, name: str, low: float, open_low: bool) -> float:
    if isinstance(x, (bool, np.bool_)) or not isinstance(x, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {x!r}")
    value = float(x)
    if not math.isfinite(value) or value < low or (open_low and value == low):
        raise ValueError(f"{name} must be a finite number {'>' if open_low else '>='} {low:g}, got {x!r}")
    return value


# ----------------------------------------------------------------------------- log domain

def _exact_lse(log_x: np.ndarray, log_k: np.ndarray, rows: np.ndarray, cols: np.ndarray,
               weights: np.ndarray | None = None) -> np.ndarray:
    """``log sum_j exp(log_x[r, j] + log_k[c, j])`` for the pairs ``(r, c)``; with
    ``weights``, the softmax-weighted mean ``sum_j w_j weights[c, j]`` instead."""
    out = np.empty(rows.size, dtype=log_x.dtype)
    step = max(1, _LSE_CHUNK // max(1, log_x.shape[1]))
    for s in range(0, rows.size, step):
        a = log_x[rows[s:s + step]] + log_k[cols[s:s + step]]
        top = a.max(axis=1, keepdims=True)
        top[~np.isfinite(top)] = 0.0
        with np.errstate(under="ignore"):
            e = np.exp(a - top)
        total = e.sum(axis=1)
        if weights is None:
            out[s:s + step] = np.log(total) + top[:, 0]
        else:
            out[s:s + step] = (e * weights[cols[s:s + step]]).sum(axis=1) / total
    return out


class _LogKernel:
    """``log(x @ K.T)`` for rows of log-values ``log_x`` (``-inf`` for zeros).

    Each row is shifted by its maximum, exponentiated and multiplied by ``K``
    with BLAS, in float64 whatever the working dtype. Entries of ``K`` and of
    the shifted rows below ``2**-500`` are set to zero, so that no product is
    subnormal (CPUs compute with subnormals many times slower). A sum below
    ``n 2**-500 / eps`` may have lost terms that way, and only those entries are
    recomputed with an exact log-sum-exp: the result is exact to rounding for
    every ``lam``.
    """

    def __init__(self, log_k: np.ndarray, weights: np.ndarray | None = None) -> None:
        self.log_k = log_k
        self.K = _flushed_exp(log_k)
        self.KW = None if weights is None else self.K * weights
        self.weight_max = 0.0 if weights is None else float(weights.max(initial=0.0))
        self.floor = log_k.shape[1] * _SMALL / float(np.finfo(np.float64).eps)

    def _shifted(self, log_x: np.ndarray):
        top = log_x.max(axis=1, keepdims=True).astype(np.float64)
        top[~np.isfinite(top)] = 0.0
        e = _flushed_exp(log_x - top)
        return top, e, e @ self.K.T

    def lse(self, log_x: np.ndarray) -> np.ndarray:
        top, _, s = self._shifted(log_x)
        with np.errstate(divide="ignore"):
            out = np.log(s) + top
        r, c = np.nonzero(s < self.floor)
        if r.size:
            out[r, c] = _exact_lse(log_x.astype(np.float64), self.log_k, r, c)
        return out.astype(log_x.dtype)

    def mean_weight(self, log_x: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """``((K * weights) x) / (K x)``: ``weights[i]`` averaged over plan row ``i``."""
        _, e, s = self._shifted(log_x)
        num = e @ self.KW.T
        with np.errstate(divide="ignore", invalid="ignore"):
            out = num / s
        # the largest terms of the sum may carry zero weight (M[i, i] = 0), so
        # the numerator is checked for lost terms too
        r, c = np.nonzero((s < self.floor) | (num < self.floor * self.weight_max))
        if r.size:
            out[r, c] = _exact_lse(log_x.astype(np.float64), self.log_k, r, c, weights=weights)
        return out


_SMALL = 2.0 ** -500


def _flushed_exp(x: np.ndarray) -> np.ndarray:
    with np.errstate(under="ignore"):
        out = np.exp(x, dtype=np.float64)
    out[out < _SMALL] = 0.0
    return out


class _LogSolver:
    """Algorithm 1 on ``log u`` and ``log v``: log-sum-exp instead of products."""

    def __init__(self, p, q, M, lam, dtype):
        log_k = -lam * M - 1.0  # float64: the products are float64 in both precisions
        self.fwd = _LogKernel(log_k, weights=M)  # x @ K.T
        self.bwd = _LogKernel(np.ascontiguousarray(log_k.T))  # x @ K
        self.p, self.q, self.M = p, q, M
        with np.errstate(divide="ignore"):
            self.log_p, self.log_q = np.log(p), np.log(q)
        self.log_u = np.zeros((max(p.shape[0], q.shape[0]), p.shape[1]), dtype=dtype)
        self.log_v = np.zeros_like(self.log_u)
        self._log_ktu = None  # log(K^T u), shared by the error check and the next step

    def log_ktu(self):
        if self._log_ktu is None:
            self._log_ktu = self.bwd.lse(self.log_u)
        return self._log_ktu

    def step(self):
        self.log_v = self.log_q - self.log_ktu()
        self.log_u = self.log_p - self.fwd.lse(self.log_v)
        self._log_ktu = None

    def error(self):
        return _log_marginal_error(self.log_v, self.log_ktu(), self.q)

    def value(self):
        # u = p / (K v), so SD = sum_i p_i ((K * M) v)_i / (K v)_i
        mean_cost = self.fwd.mean_weight(self.log_v, self.M).astype(self.p.dtype)
        return (self.p * mean_cost).sum(axis=1, dtype=self.p.dtype)


def _log_marginal_error(log_v, log_ktu, q):
    with np.errstate(invalid="ignore", under="ignore"):
        marg = np.exp(np.where(np.isneginf(log_v), -np.inf, log_v + log_ktu))
    return np.abs(marg - q).sum(axis=1) / q.sum(axis=1)


# ----------------------------------------------------------------------------- Caffe

class _CaffeSolver:
    """Algorithm 1 as written: products of ``u``, ``v`` and ``K`` in the working dtype."""

    def __init__(self, p, q, M, lam, dtype):
        with np.errstate(under="ignore"):
            K = np.exp(-lam * M - 1.0).astype(dtype)
        # Subnormal kernel entries make CPU matrix products 10-100 times slower;
        # they are set to zero, as GPUs flushing subnormals do.
        K[K < np.finfo(dtype).tiny] = 0
        self.K, self.KM = K, K * M.astype(dtype)
        self.p, self.q = p, q
        self.u = np.ones((max(p.shape[0], q.shape[0]), p.shape[1]), dtype=dtype)
        self.v = np.zeros_like(self.u)
        self._ktu = None

    # underflow to 0 and the inf or nan that follow are the reported outcome
    @np.errstate(all="ignore")
    def ktu(self):
        if self._ktu is None:
            self._ktu = self.u @ self.K  # K^T u, row by row
        return self._ktu

    @np.errstate(all="ignore")
    def step(self):
        self.v = self.q / self.ktu()
        self.u = self.p / (self.v @ self.K.T)
        self._ktu = None

    @np.errstate(all="ignore")
    def error(self):
        return np.abs(self.v * self.ktu() - self.q).sum(axis=1) / self.q.sum(axis=1)

    @np.errstate(all="ignore")
    def value(self):
        return (self.u * (self.v @ self.KM.T)).sum(axis=1, dtype=self.p.dtype)

    @property
    @np.errstate(all="ignore")
    def log_u(self):
        return np.log(self.u)


_SOLVERS = {"log": _LogSolver, "caffe": _CaffeSolver}


# ----------------------------------------------------------------------------- public

def _centred_grad(log_u: np.ndarray, p: np.ndarray, lam: float) -> np.ndarray:
    """``log(u) / lam`` minus its mean over the bins that carry mass; ``-inf`` where ``p = 0``."""
    f = log_u / lam
    with np.errstate(invalid="ignore"):
        has_mass = np.broadcast_to(p > 0, f.shape)
        count = has_mass.sum(axis=1, keepdims=True)
        mean = np.where(has_mass, f, 0).sum(axis=1, keepdims=True) / np.maximum(count, 1)
        g = f - mean.astype(f.dtype)
    return np.where(has_mass, g, np.array(-np.inf, dtype=f.dtype))


def sinkhorn(
    p: Any,
    q: Any,
    cost: Any,
    lam: float = 10.0,
    n_iter: int = 100,
    tol: float | None = None,
    method: str = "log",
    axis: int = -1,
    return_grad: bool = False,
    dtype: Any = None,
) -> SinkhornResult:
    """Sinkhorn distance (entropy-regularised transport) and its gradient.

    The paper's Algorithm 1 (Cuturi's Sinkhorn iterations as in the Caffe
    layer of Frogner et al.): with ``K = exp(-lam M - 1)`` and ``u = 1``,
    ``n_iter`` times ``v <- q / (K^T u)``, then ``u <- p / (K v)``; the plan
    is ``P = diag(u) K diag(v)`` (its rows sum to ``p``) and

        SD = <P, M> = sum(u * ((K * M) v)).

    The gradient is ``log(u) / lam`` minus its mean over the bins: the dual
    potential of ``p``, i.e. the gradient of the entropy-regularised cost
    ``<P, M> + (1/lam) sum P log P`` at the fixed point (not the derivative of
    ``SD`` itself); it sums to zero, as the gradient of :func:`emd_grad` does.

    Parameters
    ----------
    p, q : array_like, shape (..., n_bins, ...)
        Non-negative masses with equal totals along ``axis``; the other
        dimensions broadcast.
    cost : array_like, shape (n_bins, n_bins), or Tree
        Ground cost ``M``, finite and >= 0. A :class:`Tree` stands for its
        path metric, ``tree.distance_matrix()`` (cached).
    lam : float, default 10.0
        Strength ``lambda`` > 0 in the paper's convention: the larger, the
        weaker the entropy and the closer ``SD`` comes to the EMD (at the cost
        of slower convergence). POT's ``reg`` is ``1 / lam``:
        ``sinkhorn(p, q, M, lam).value`` equals
        ``ot.sinkhorn2(p, q, M, reg=1 / lam)`` after the same iterations.
    n_iter : int, default 100
        Maximum number of iterations (>= 1).
    tol : float, optional
        Stop early once ``marginal_error <= tol`` for every pair of the batch.
        None runs exactly ``n_iter`` iterations.
    method : {"log", "caffe"}, default "log"
        ``"caffe"`` iterates on ``u`` and ``v`` as written above. For large
        ``lam * M`` the kernel and the scalings underflow or overflow (in
        float32 from ``lam * M`` of about 90, in float64 of about 700): the
        result then is ``nan`` or ``inf`` in ``value`` and ``grad`` and
        ``converged`` is False, which is returned as is, not hidden.
        Kernel entries below the smallest normal number are set to zero
        (subnormal arithmetic is many times slower on CPUs).
        ``"log"`` runs the same iterations on ``log u``, ``log v`` with
        log-sum-exp updates: same iterates, same fixed point, finite for any
        ``lam``. Its matrix products are float64 in both precisions (the
        potentials and outputs follow ``dtype``); it costs about as much as
        ``"caffe"`` while the shifted kernel does not underflow, and up to
        ``n_bins`` exponentials per entry where it does (``lam * M`` beyond
        about 300).
    axis : int, default -1
        The bin axis.
    return_grad : bool, default False
        Also return the gradient with respect to ``p``.
    dtype : {None, numpy.float32, numpy.float64}, optional
        Working precision; default float32 for float32 masses, else float64.

    Returns
    -------
    SinkhornResult
        Named tuple ``(value, grad, n_iter, converged, marginal_error)``:
        ``value`` shape (...), ``grad`` shape of the broadcast inputs (or
        None), ``n_iter`` an int, ``converged`` bool and ``marginal_error``
        (``sum_j |(P^T 1)_j - q_j| / sum(q)``, the first marginal being
        exact) of shape (...). A bin where ``p`` is zero has ``u = 0``, so
        its gradient entry is ``-inf`` (the regularised cost has infinite
        slope there); the mean is taken over the other bins. Zero bins of
        ``q`` are harmless.

    Raises
    ------
    ValueError
        For masses that are negative, not finite or of unequal totals,
        shapes that do not broadcast or do not match ``cost``, a cost that is
        not square, negative or not finite, ``lam <= 0``, ``n_iter < 1``,
        ``tol < 0`` or an unknown ``method``.

    See Also
    --------
    emd : the exact EMD that ``SD`` approaches as ``lam`` grows.

    Examples
    --------
    >>> import numpy as np, emdtree
    >>> p, q = np.array([0.5, 0.5, 0.0]), np.array([0.0, 0.5, 0.5])
    >>> M = emdtree.Tree.chain(3).distance_matrix()
    >>> res = emdtree.sinkhorn(p, q, M, lam=50, n_iter=1000, tol=1e-12, return_grad=True)
    >>> round(float(res.value), 6), float(emdtree.emd(p, q)), bool(res.converged)
    (1.0, 1.0, True)
    >>> res.grad  # -inf at the bin without mass
    array([ 0.5, -0.5, -inf])
    >>> r32 = emdtree.sinkhorn(p, q, M, lam=200, method="caffe", dtype=np.float32)
    >>> bool(np.isfinite(r32.value))  # exp(-200) underflows in float32
    False
    """
    rows, solver, lam = _setup(p, q, cost, lam, method, axis, dtype)
    n_iter, tol = _check_iterations(n_iter, tol)
    done = 0
    for it in range(n_iter):
        if tol is not None and it > 0 and solver.error().max() <= tol:
            break
        solver.step()
        done += 1
    return _result(solver, rows, lam, done, tol, return_grad)


def _check_iterations(n_iter: Any, tol: Any) -> tuple[int, float | None]:
    if isinstance(n_iter, (bool, np.bool_)) or not isinstance(n_iter, (int, np.integer)):
        raise TypeError(f"n_iter must be an integer, got {n_iter!r}")
    if n_iter < 1:
        raise ValueError(f"n_iter must be >= 1, got {n_iter}")
    if tol is not None:
        tol = _check_scalar(tol, "tol", 0.0, open_low=False)
    return int(n_iter), tol


def _setup(p, q, cost, lam, method, axis, dtype):
    """Validate everything but the iteration counts; the solver at ``u = 1``."""
    if method not in _METHODS:
        raise ValueError(f"method must be one of {_METHODS}, got {method!r}")
    lam = _check_scalar(lam, "lam", 0.0, open_low=True)
    if dtype is not None:
        dtype = np.dtype(dtype)
        if dtype not in (np.dtype(np.float32), np.dtype(np.float64)):
            raise ValueError(f"dtype must be None, float32 or float64, got {dtype}")
    rows = prepare({"p": p, "q": q}, cost if isinstance(cost, Tree) else None, axis, True)
    dtype = dtype or rows.dtype
    M = _check_cost(cost, rows.tree.n_bins)
    a, b = (np.asarray(x, dtype=dtype) for x in rows.arrays)
    empty = np.flatnonzero(b.sum(axis=1) <= 0)
    if empty.size:
        where = ""
        if b.shape[0] > 1:
            index = tuple(int(i) for i in np.unravel_index(int(empty[0]), rows.batch_shape))
            where = f" at batch index {index}"
        raise ValueError(f"q has zero total mass{where}: the Sinkhorn distance needs mass to move")
    return rows._replace(dtype=dtype), _SOLVERS[method](a, b, M, lam, dtype), lam


def _result(solver, rows, lam, done, tol, return_grad) -> SinkhornResult:
    dtype = rows.dtype
    shape = (rows.n_rows,)
    err = np.broadcast_to(solver.error(), shape).astype(dtype, copy=False)
    value = np.broadcast_to(solver.value(), shape).astype(dtype, copy=False)
    converged = np.zeros(shape, dtype=bool) if tol is None else (err <= tol)
    grad = None
    if return_grad:
        grad = restore_bins(_centred_grad(solver.log_u, solver.p, lam).astype(dtype, copy=False), rows)
    return SinkhornResult(restore_scalar(value, rows), grad, done, restore_scalar(converged, rows),
                          restore_scalar(err, rows))


def sinkhorn_path(
    p: Any,
    q: Any,
    cost: Any,
    n_iters: Any,
    lam: float = 10.0,
    method: str = "log",
    axis: int = -1,
    dtype: Any = None,
) -> Iterator[SinkhornResult]:
    """:func:`sinkhorn` after each of the increasing iteration counts ``n_iters``,
    in one run: result ``k`` equals ``sinkhorn(..., n_iter=n_iters[k],
    return_grad=True)``. Used to trace convergence (benchmarks/bench_fig3.py).
    """
    rows, solver, lam = _setup(p, q, cost, lam, method, axis, dtype)
    counts = [_check_iterations(n, None)[0] for n in n_iters]
    if any(b <= a for a, b in zip(counts, counts[1:])):
        raise ValueError(f"n_iters must increase, got {list(n_iters)}")
    done = 0
    for n in counts:
        while done < n:
            solver.step()
            done += 1
        yield _result(solver, rows, lam, done, None, True)
