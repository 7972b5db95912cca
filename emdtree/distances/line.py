"""Wasserstein-1 (and EMD^rho) between weighted samples on the real line.

:func:`wasserstein_1d` takes the arguments of
:func:`scipy.stats.wasserstein_distance` -- sample positions and optional
weights for two distributions -- and batches them over leading dimensions.
The two distributions live on the chain of their merged, sorted positions;
the mass that crosses the gap between consecutive positions ``x_k`` and
``x_(k+1)`` is the difference of the two cumulative distribution functions
there, so (paper eq. 7 on that chain)

    EMD^rho(u, v) = sum_k (x_(k+1) - x_k) |U(x_k) - V(x_k)|^rho,

``U`` and ``V`` the CDFs of the normalised weights. ``rho = 1`` is the
Wasserstein-1 distance, SciPy's value; ``rho = 2`` is ``int (U - V)^2 dx``, so
that ``sqrt(2 EMD^2)`` is :func:`scipy.stats.energy_distance`. (For ``rho
!= 1`` this is the paper's relaxation, not the Wasserstein-rho distance.)

Each pair costs two sorts (NumPy's, over the whole batch) and one merge in a
Numba kernel, linear in the number of samples. The CDFs are formed as SciPy
forms them -- running sums of the weights in sorted order divided by their
last value -- so the results agree with SciPy's to rounding in the final
sum.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numba import prange

from ..engine import semantics
from ..engine.inputs import check_rho
from ..kernels.jit import njit
from ..engine.threads import parallel_launch, usable_threads

__all__ = ["wasserstein_1d", "wasserstein_1d_value_and_grad"]

# rows x samples from which the merges run across Numba's threads. The sorts are NumPy's, on one
# thread, and take most of the time: for 512 pairs of 1,000 samples (benchmarks/bench_line.py) the
# two argsorts took about 40 ms and the merges 15 ms on a shared 2-core machine, where a second
# thread for the merges did not pay.
_PARALLEL_MIN_WORK = 1 << 21


@njit(cache=True, inline="always")
def _row(su, wu, sv, wv, ou, ov, rho, mode, want_grad, t, at_u, at_v, gu, gv):  # pragma: no cover
    """Value (and gradient into ``gu``, ``gv`` in the caller's sample order) of one pair.

    ``su``, ``sv``: sorted positions; ``wu``, ``wv``: their weights in that order;
    ``ou``, ``ov``: the sorting permutations; ``t``, ``at_u``, ``at_v``: scratch.
    """
    n, m = su.shape[0], sv.shape[0]
    tot_u = 0.0
    for i in range(n):
        tot_u += wu[i]
    tot_v = 0.0
    for j in range(m):
        tot_v += wv[j]
    i = 0
    j = 0
    cu = 0.0
    cv = 0.0
    value = 0.0
    for k in range(n + m):
        if j == m or (i < n and su[i] <= sv[j]):
            x = su[i]
            cu += wu[i]
            if want_grad:
                at_u[i] = k
            i += 1
        else:
            x = sv[j]
            cv += wv[j]
            if want_grad:
                at_v[j] = k
            j += 1
        if k == n + m - 1:
            if want_grad:
                t[k] = 0.0
            break
        if j == m or (i < n and su[i] <= sv[j]):
            delta = su[i] - x
        else:
            delta = sv[j] - x
        d = cu / tot_u - cv / tot_v
        if mode == 1:
            a = abs(d)
            value += delta * a
            slope = delta * (1.0 if d > 0.0 else (-1.0 if d < 0.0 else 0.0))
        elif mode == 2:
            value += delta * (d * d)
            slope = 2.0 * delta * d
        else:
            a = abs(d)
            value += delta * a ** rho
            slope = 0.0
            if a > 0.0:
                slope = rho * delta * a ** (rho - 1.0) * (1.0 if d > 0.0 else -1.0)
        if want_grad:
            t[k] = slope
    if want_grad:
        # suffix sums: a unit of weight at merged position k moves the CDFs from k on
        acc = 0.0
        for k in range(n + m - 1, -1, -1):
            acc += t[k]
            t[k] = acc
        mean = 0.0
        for i in range(n):
            mean += t[at_u[i]]
        mean /= n
        for i in range(n):
            gu[ou[i]] = (t[at_u[i]] - mean) / tot_u
        mean = 0.0
        for j in range(m):
            mean += t[at_v[j]]
        mean /= m
        for j in range(m):
            gv[ov[j]] = (mean - t[at_v[j]]) / tot_v
    return value


@njit(cache=True, inline="always")
def _gather(x, order, use_order, out):  # pragma: no cover
    if use_order:
        for i in range(out.shape[0]):
            out[i] = x[order[i]]
    else:
        for i in range(out.shape[0]):
            out[i] = x[i]


@njit(cache=True, inline="always")
def _pair(r, u, wu, v, wv, ou, ov, steps, order, rho, mode, want_grad, out, gu, gv, buf, t, at_u, at_v):
    # pragma: no cover
    n, m = u.shape[1], v.shape[1]
    su, swu, sv, swv = buf[0, :n], buf[1, :n], buf[2, :m], buf[3, :m]
    iu, iv = ou[r * steps[4]], ov[r * steps[5]]
    _gather(u[r * steps[0]], iu, order[0], su)
    _gather(wu[r * steps[1]], iu, order[0], swu)
    _gather(v[r * steps[2]], iv, order[1], sv)
    _gather(wv[r * steps[3]], iv, order[1], swv)
    g = r if want_grad else 0
    out[r] = _row(su, swu, sv, swv, iu, iv, rho, mode, want_grad, t, at_u, at_v, gu[g], gv[g])


@njit(cache=True)
def _rows_serial(u, wu, v, wv, ou, ov, steps, order, rho, mode, want_grad, out, gu, gv):  # pragma: no cover
    n, m = u.shape[1], v.shape[1]
    buf = np.empty((4, max(n, m)))
    t = np.empty(n + m)
    at_u = np.empty(n, dtype=np.int64)
    at_v = np.empty(m, dtype=np.int64)
    for r in range(out.shape[0]):
        _pair(r, u, wu, v, wv, ou, ov, steps, order, rho, mode, want_grad, out, gu, gv, buf, t, at_u, at_v)


@njit(cache=True, parallel=True)
def _rows_parallel(u, wu, v, wv, ou, ov, steps, order, rho, mode, want_grad, out, gu, gv, n_chunks):
    # pragma: no cover
    n, m = u.shape[1], v.shape[1]
    n_rows = out.shape[0]
    for c in prange(n_chunks):
        buf = np.empty((4, max(n, m)))
        t = np.empty(n + m)
        at_u = np.empty(n, dtype=np.int64)
        at_v = np.empty(m, dtype=np.int64)
        for r in range(c * n_rows // n_chunks, (c + 1) * n_rows // n_chunks):
            _pair(r, u, wu, v, wv, ou, ov, steps, order, rho, mode, want_grad, out, gu, gv, buf, t, at_u,
                  at_v)


# --------------------------------------------------------------------------- inputs

def _real(x: Any, name: str) -> np.ndarray:
    arr = np.asarray(x)
    if semantics.narrow_float(arr.dtype) or arr.dtype == np.float16:  # computed in float32, as the masses
        arr = arr.astype(np.float32)
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"{name} must hold real numbers, got dtype {arr.dtype}")
    if arr.ndim == 0:
        raise ValueError(f"{name} must have a sample axis, got a scalar")
    return arr


def _axis_last(arr: np.ndarray, axis: int, name: str) -> np.ndarray:
    if not -arr.ndim <= axis < arr.ndim:
        raise ValueError(f"axis {axis} is out of bounds for {name} with {arr.ndim} dimensions")
    return np.moveaxis(arr, axis, -1)


def _position(batch: tuple[int, ...], row: int) -> str:
    if not batch:
        return ""
    return f" at batch index {tuple(int(i) for i in np.unravel_index(row, batch))}"


class _Side:
    """One distribution: sorted positions, weights in that order, the permutation."""

    def __init__(self, values: Any, weights: Any, axis: int, name: str) -> None:
        self.name = name
        self.values = _axis_last(_real(values, f"{name}_values"), axis, f"{name}_values")
        self.weights = None
        if weights is not None:
            w = _axis_last(_real(weights, f"{name}_weights"), axis, f"{name}_weights")
            if w.shape[-1] != self.values.shape[-1] and w.shape[-1] != 1:
                raise ValueError(
                    f"{name}_weights has {w.shape[-1]} entries along axis {axis} but {name}_values has "
                    f"{self.values.shape[-1]}: give one weight per value"
                )
            self.weights = w
        if self.values.shape[-1] == 0:
            raise ValueError(f"{name}_values is empty: a distribution needs at least one value")

    def batch_shapes(self) -> list[tuple[str, tuple[int, ...]]]:
        """The batch shape (the sample axis left out) of each array of this side, by name."""
        shapes = [(f"{self.name}_values", self.values.shape[:-1])]
        if self.weights is not None:
            shapes.append((f"{self.name}_weights", self.weights.shape[:-1]))
        return shapes

    def dtypes(self) -> list[np.dtype]:
        return [self.values.dtype] + ([self.weights.dtype] if self.weights is not None else [])

    def rows(self, batch: tuple[int, ...], n_rows: int, want_grad: bool) -> tuple[np.ndarray, ...]:
        """Positions, weights and the sorting permutation, each (n_rows, n) or one
        row (1, n) that serves the whole batch; positions come sorted (and the
        permutation is a dummy) when neither weights nor a gradient need it."""
        n = self.values.shape[-1]
        w = self.weights
        shared = math.prod(self.values.shape[:-1]) == 1 and (w is None or math.prod(w.shape[:-1]) == 1)

        def flat(a: np.ndarray) -> np.ndarray:
            a = a.reshape(1, n) if shared else np.broadcast_to(a, batch + (n,)).reshape(n_rows, n)
            return np.ascontiguousarray(a, dtype=np.float64)

        values = flat(self.values)
        if w is None:
            weights = np.ones((1, n))
            if not want_grad:
                return np.sort(values, axis=-1), weights, np.zeros((1, 1), dtype=np.intp)
        else:
            weights = flat(np.broadcast_to(w, w.shape[:-1] + (n,)))
            self._check_weights(weights, batch)
        return values, weights, np.argsort(values, axis=-1)

    def _check_weights(self, w: np.ndarray, batch: tuple[int, ...]) -> None:
        name = f"{self.name}_weights"
        bad = ~np.isfinite(w) | (w < 0)
        if bad.any():
            r, k = np.argwhere(bad)[0]
            what = "negative" if np.isfinite(w[r, k]) else "not finite"
            raise ValueError(f"{name}{_position(batch, int(r)) if w.shape[0] > 1 else ''} has the entry "
                             f"{float(w[r, k])!r} at sample {int(k)}, which is {what}: weights must be "
                             "finite and >= 0")
        totals = w.sum(axis=-1)
        bad_rows = np.flatnonzero(~((totals > 0) & np.isfinite(totals)))
        if bad_rows.size:
            r = int(bad_rows[0])
            raise ValueError(f"{name}{_position(batch, r) if w.shape[0] > 1 else ''} sums to "
                             f"{float(totals[r])!r}: the weights must have a positive, finite total")


def _broadcast_batches(named: list[tuple[str, tuple[int, ...]]]) -> tuple[int, ...]:
    """The broadcast batch shape of the named arrays, or a ValueError naming the first array whose
    batch shape does not broadcast with one before it."""
    batch: tuple[int, ...] = ()
    for i, (name, shape) in enumerate(named):
        try:
            batch = np.broadcast_shapes(batch, shape)
        except ValueError:
            other, theirs = next(((n, sh) for n, sh in named[:i] if not _broadcasts(sh, shape)), named[0])
            raise ValueError(semantics.message("batch_shapes", name=name, shape=shape, other=other,
                                               other_shape=theirs)) from None
    return batch


def _broadcasts(a: tuple[int, ...], b: tuple[int, ...]) -> bool:
    try:
        np.broadcast_shapes(a, b)
    except ValueError:
        return False
    return True


def _run(u_values, v_values, u_weights, v_weights, rho, axis, want_grad):
    rho = check_rho(rho)
    if isinstance(axis, (bool, np.bool_)) or not isinstance(axis, (int, np.integer)):
        raise TypeError(f"axis must be an integer, got {type(axis).__name__}")
    u = _Side(u_values, u_weights, int(axis), "u")
    v = _Side(v_values, v_weights, int(axis), "v")
    batch = _broadcast_batches(u.batch_shapes() + v.batch_shapes())
    dtypes = u.dtypes() + v.dtypes()
    out_dtype = np.float32 if all(d == np.float32 for d in dtypes) else np.float64
    n_rows = math.prod(batch)
    n, m = u.values.shape[-1], v.values.shape[-1]
    su, wu, ou = u.rows(batch, n_rows, want_grad)
    sv, wv, ov = v.rows(batch, n_rows, want_grad)
    steps = np.array([int(a.shape[0] > 1) for a in (su, wu, sv, wv, ou, ov)], dtype=np.int64)
    order = np.array([ou.shape[1] == n, ov.shape[1] == m])
    value = np.empty(n_rows)
    gu = np.zeros((n_rows, n) if want_grad else (1, 1))
    gv = np.zeros((n_rows, m) if want_grad else (1, 1))
    mode = 1 if rho == 1.0 else 2 if rho == 2.0 else 0
    if n_rows:
        args = (su, wu, sv, wv, ou, ov, steps, order, rho, mode, want_grad, value, gu, gv)
        n_threads = usable_threads()
        if n_rows > 1 and n_rows * (n + m) >= _PARALLEL_MIN_WORK and n_threads > 1:
            with parallel_launch(n_threads):
                _rows_parallel(*args, min(n_rows, 8 * n_threads))
        else:
            _rows_serial(*args)
    value = value.astype(out_dtype, copy=False).reshape(batch)
    value = value[()] if value.ndim == 0 else value
    if not want_grad:
        return value
    grads = []
    for g, side in ((gu, u), (gv, v)):
        g = g.astype(out_dtype, copy=False).reshape(batch + (g.shape[-1],))
        # the sample axis where it was in this side's values, counted in the broadcast shape
        at = axis if axis < 0 else axis + g.ndim - side.values.ndim
        grads.append(np.moveaxis(g, -1, at))
    return value, tuple(grads)


# --------------------------------------------------------------------------- public


def wasserstein_1d(
    u_values: Any,
    v_values: Any,
    u_weights: Any = None,
    v_weights: Any = None,
    rho: float = 1.0,
    axis: int = -1,
) -> np.ndarray:
    """Wasserstein-1 distance (``rho=1``) between weighted samples on the real line.

    The arguments and, for ``rho=1``, the results of
    :func:`scipy.stats.wasserstein_distance`, batched: ``u_values`` holds
    the positions of the first distribution along ``axis`` and
    ``u_weights`` (default: all equal) their weights, normalised to sum to
    1; likewise ``v``. The EMD on the chain of the merged, sorted positions:

    ``EMD^rho(u, v) = sum_k (x_(k+1) - x_k) |U(x_k) - V(x_k)|^rho``

    with ``U``, ``V`` the two cumulative distribution functions. For
    ``rho = 2`` it is ``int (U - V)^2 dx``, and ``sqrt(2 EMD^2)`` is
    :func:`scipy.stats.energy_distance`; for ``rho != 1`` it is the
    relaxation EMD^rho of the paper, not the Wasserstein-rho distance.

    Parameters
    ----------
    u_values, v_values : array_like, shape (..., n) and (..., m)
        Sample positions along ``axis``. The other dimensions broadcast
        between all four arrays; ``n`` and ``m`` may differ. As in SciPy,
        infinite positions give an infinite distance (or NaN where the
        distance is undefined).
    u_weights, v_weights : array_like, optional
        Finite, non-negative weights of the shapes of ``u_values`` and
        ``v_values`` (or broadcasting to them), each distribution with a
        positive total. Default: equal weights.
    rho : float, default 1.0
        Exponent, >= 1; ``1`` is the Wasserstein-1 distance.
    axis : int, default -1
        The sample axis of every argument.

    Returns
    -------
    ndarray or NumPy scalar, shape (...)
        One distance per pair; float32 when every input is float32, else
        float64 (computed in float64 either way).

    Raises
    ------
    ValueError
        For an empty distribution, weights of the wrong length, negative or
        non-finite weights, a zero total weight, or batch shapes that do not
        broadcast.

    See Also
    --------
    wasserstein_1d_value_and_grad : the same with gradients with respect to the weights.
    emd : histograms on fixed bins (a :meth:`Tree.chain` with ``spacing=np.diff(positions)``).

    Examples
    --------
    >>> import numpy as np, emdtree
    >>> from scipy.stats import wasserstein_distance
    >>> float(emdtree.wasserstein_1d([0, 1, 3], [5, 6, 8]))
    5.0
    >>> u, v, uw, vw = [0.0, 1.0, 3.0], [1.0, 2.0], [1, 1, 2], [3, 1]
    >>> float(emdtree.wasserstein_1d(u, v, uw, vw)), float(wasserstein_distance(u, v, uw, vw))
    (1.0, 1.0)

    A batch of 4 pairs of 100 samples each, compared with one reference:

    >>> rng = np.random.default_rng(0)
    >>> samples = rng.normal(loc=[[0.0], [1.0], [2.0], [3.0]], size=(4, 100))
    >>> emdtree.wasserstein_1d(samples, samples[0]).round(2)
    array([0.  , 0.87, 1.78, 2.88])
    """
    return _run(u_values, v_values, u_weights, v_weights, rho, axis, want_grad=False)


def wasserstein_1d_value_and_grad(
    u_values: Any,
    v_values: Any,
    u_weights: Any = None,
    v_weights: Any = None,
    rho: float = 1.0,
    axis: int = -1,
) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
    """:func:`wasserstein_1d` and its dirt-conserving gradients with respect to
    the weights, in one pass.

    The gradient with respect to ``u_weights`` is that of :func:`emd_grad`
    on the chain of merged positions, read at ``u``'s samples: for sample
    ``i`` at ``x_i``, the sum of ``rho (x_(k+1) - x_k) sign(d_k)
    |d_k|^(rho - 1)`` over the gaps ``k`` at or after ``x_i`` (``d_k =
    U(x_k) - V(x_k)``; ``sign(0) = 0``), minus its mean over ``u``'s
    samples, divided by the total of ``u_weights``. It sums to zero: a step
    along it moves weight between samples without changing the total, and
    for any such change it gives the exact directional derivative (the
    weights are normalised, so a change of the total does nothing). For
    weights that sum to 1 on one common set of positions it is
    :func:`emd_grad` on a :meth:`Tree.chain` of those positions. The
    gradient with respect to ``v_weights`` is built likewise, with the
    opposite sign.

    Parameters
    ----------
    u_values, v_values, u_weights, v_weights, rho, axis
        As in :func:`wasserstein_1d`. Without weights the gradients are
        taken at equal weights of 1.

    Returns
    -------
    value : ndarray or NumPy scalar, shape (...)
        As :func:`wasserstein_1d` returns it.
    (grad_u, grad_v) : tuple of ndarray
        Gradients with respect to ``u_weights`` and ``v_weights``, of the
        broadcast shapes of ``u`` and ``v`` (the batch shape and the sample
        axis at ``axis``).

    See Also
    --------
    wasserstein_1d, emd_value_and_grad

    Examples
    --------
    >>> import emdtree
    >>> value, (gu, gv) = emdtree.wasserstein_1d_value_and_grad([0.0, 1.0], [2.0], [0.5, 0.5])
    >>> float(value)  # half the mass moves 2, half moves 1
    1.5
    >>> gu  # moving weight from 0 to 1 shortens the trip
    array([ 0.5, -0.5])
    >>> gv  # a single sample cannot move weight
    array([0.])
    """
    return _run(u_values, v_values, u_weights, v_weights, rho, axis, want_grad=True)
