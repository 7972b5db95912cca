"""``normalize="l1"`` and ``normalize="softmax"``: the map from the raw first
argument to the distribution ``a`` that the EMD compares, and the chain rule
through it, for the gradient, Hessian-vector products and Hessians.

Every function takes the array namespace ``xp`` (NumPy on the host, the
caller's library for the other arrays) and rows with the bin axis last.
``a`` is the normalised row, ``total`` the raw row totals (``"l1"`` only),
``g`` a gradient of the EMD with respect to ``a`` and ``H`` its Hessian.
Adding a constant to ``g`` (or ``P`` on either side of ``H``) changes none of
the results below: the Jacobians of both maps annihilate constant rows.

``"l1"``: ``a = p / S``, Jacobian ``N = (I - a 1^T) / S``, and

    grad = N^T g = (g - <g, a>) / S
    hess = N^T H N - (b 1^T + 1 b^T) / S,   b = N^T g.

``"softmax"``: ``a = softmax(z)``, Jacobian ``J = diag(a) - a a^T``
(symmetric), and

    grad = J g = a * (g - <g, a>)
    hess = J H J + diag(u) - u a^T - a u^T,   u = J g.

The softmax Hessian's rows sum to zero (``J 1 = 0``, ``sum(u) = 0``), as
adding a constant to the logits changes nothing.
"""

from __future__ import annotations

from typing import Any

from .semantics import NORMALIZE, check_normalize  # noqa: F401 - the one definition


def softmax(xp: Any, z: Any) -> Any:
    """Softmax along the last axis, shifted by the row maximum (no overflow).

    ``-inf`` logits give probability 0; a row must hold a finite logit.
    """
    top = xp.max(z, axis=-1, keepdims=True)
    e = xp.exp(z - top)
    return e / xp.sum(e, axis=-1, keepdims=True)


def _dot(xp: Any, x: Any, y: Any) -> Any:
    return xp.sum(x * y, axis=-1, keepdims=True)


def grad(xp: Any, normalize: str, g: Any, a: Any, total: Any) -> Any:
    """Gradient with respect to the raw rows (the logits for ``"softmax"``)."""
    if normalize == "softmax":
        return a * (g - _dot(xp, g, a))
    return (g - _dot(xp, g, a)) / total


def direction(xp: Any, normalize: str, v: Any, a: Any, total: Any) -> Any:
    """The change of ``a`` along a change ``v`` of the raw rows: ``J v`` or ``N v``."""
    if normalize == "softmax":
        return a * (v - _dot(xp, v, a))
    return (v - a * xp.sum(v, axis=-1, keepdims=True)) / total


def hvp(xp: Any, normalize: str, hw: Any, v: Any, g: Any, a: Any, total: Any) -> Any:
    """Hessian-vector product with respect to the raw rows, from ``hw = H direction(v)``."""
    if normalize == "softmax":
        u = grad(xp, normalize, g, a, total)
        return a * (hw - _dot(xp, hw, a)) + u * v - u * _dot(xp, a, v) - a * _dot(xp, u, v)
    b = grad(xp, normalize, g, a, total)
    return ((hw - _dot(xp, hw, a)) - b * xp.sum(v, axis=-1, keepdims=True) - _dot(xp, b, v)) / total


def hessian(xp: Any, normalize: str, h: Any, g: Any, a: Any, total: Any) -> Any:
    """Dense Hessians ``(rows, n, n)`` with respect to the raw rows, from ``h = H``
    (or ``P H P``) with respect to ``a``."""
    col = a[..., None]  # (rows, n, 1)
    row = a[..., None, :]  # (rows, 1, n)
    if normalize == "softmax":
        # H J = H diag(a) - (H a) a^T, then J (H J) = diag(a) (H J) - a (a^T H J)
        ha = xp.sum(h * row, axis=-1, keepdims=True)  # (rows, n, 1): H a
        hj = h * row - ha * row
        jhj = col * hj - col * xp.sum(col * hj, axis=-2, keepdims=True)
        u = grad(xp, normalize, g, a, total)
        n = a.shape[-1]
        eye = xp.eye(n, dtype=h.dtype, device=_device(xp, h)) if _has_device(xp) else xp.eye(n, dtype=h.dtype)
        return jhj + eye * u[..., None] - u[..., None] * row - col * u[..., None, :]
    # N^T H N = (H - 1 (a^T H) - (H a) 1^T + (a^T H a) 1 1^T) / S^2
    ha = xp.sum(h * row, axis=-1, keepdims=True)  # (rows, n, 1)
    ah = xp.sum(col * h, axis=-2, keepdims=True)  # (rows, 1, n)
    aha = xp.sum(ha * col, axis=-2, keepdims=True)  # (rows, 1, 1)
    t = total[..., None]  # (rows, 1, 1)
    b = grad(xp, normalize, g, a, total)
    return (h - ah - ha + aha) / (t * t) - (b[..., None] + b[..., None, :]) / t


def _has_device(xp: Any) -> bool:
    return getattr(xp, "__name__", "") != "numpy"


def _device(xp: Any, x: Any) -> Any:
    import array_api_compat as compat

    return compat.device(x)
