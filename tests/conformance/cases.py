"""The case table: small deterministic inputs with their exact answers from ``tests/oracle.py``.

Every case is built from a fixed seed: a tree (a random tree with bins on
internal nodes and zero-cost edges, or a chain with uneven spacing), a batch
of ``p`` (masses, or logits with ``normalize="softmax"``), targets ``q``
(distributions, or class indices), a direction ``v`` for Hessian-vector
products, an exponent ``rho`` and a dtype. Inputs are rounded to the dtype
first; the expected value, gradient and Hessian are the oracle's float64
answers for the rounded inputs.

Kinds (a case's ``kind``; ``tags`` adds ``rho=...``, the dtype's name,
``small`` and ``few`` for the cases that the slow doors run, and the tags
:data:`conformance.doors.KNOWN_DEFECTS` uses):

``tree``, ``chain``
    Random masses, every non-root phi well away from zero.
``tie``
    Dyadic masses (multiples of 1/64) rearranged inside one subtree, so many
    phi are exactly zero in any order of summation: the ``sign(0) = 0``
    subgradient for ``rho = 1``, a Hessian entry of 0 (rho > 2), ``2 w``
    (rho = 2) or infinite (1 < rho < 2, no Hessian compared then).
``swap``
    A chain whose target swaps neighbouring random (not dyadic) masses: phi is
    exactly zero after every swapped pair when formed from the differences
    ``p - q``, but not when formed as ``cumsum(p) - cumsum(q)``.
``zero-mass``
    Sparse masses: bins empty in ``p``, in ``q`` or in both, and a row with
    ``p == q``.
``softmax``
    Logits of both signs with ``normalize="softmax"``; derivatives with
    respect to the logits.
``masked``
    As ``softmax``, with ``-inf`` logits (probability 0).
``bad-inf-logit``, ``bad-nan-mass``, ``bad-negative-mass`` (:data:`BAD_CASES`)
    One invalid entry at row 1, bin 2, to be reported by its index.
``labels``
    Class-index targets, ``q`` of shape ``(rows,)`` (int64), as the
    framework losses and metrics take them; doors without them get one-hot
    rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

import oracle
from trees import random_tree

ROWS = 3


@dataclass(frozen=True, eq=False)
class Case:
    """One row of the table. ``q`` is (rows, n_bins) floats, or (rows,) int64 class indices."""

    name: str
    kind: str
    parents: np.ndarray
    weights: np.ndarray
    bins: np.ndarray
    p: np.ndarray
    q: np.ndarray
    v: np.ndarray
    rho: float
    normalize: str | None
    small: bool
    value: np.ndarray = field(repr=False)
    grad: np.ndarray = field(repr=False)
    hessian: np.ndarray | None = field(repr=False)  # None where some entry is infinite

    @property
    def dtype(self) -> np.dtype:
        return self.p.dtype

    @property
    def labels(self) -> bool:
        return self.q.ndim == 1

    @property
    def n_bins(self) -> int:
        return self.p.shape[1]

    @property
    def is_chain(self) -> bool:
        """The canonical chain of ``Tree.chain``: node k carries bin k, its parent is k + 1."""
        n = len(self.parents)
        return (n == self.n_bins and np.array_equal(self.bins, np.arange(n))
                and np.array_equal(self.parents, np.append(np.arange(1, n), -1)))

    @property
    def tags(self) -> frozenset[str]:
        if self.kind.startswith("bad-"):
            return frozenset({self.kind, "bad"} | ({"small"} if self.small else set()))
        tags = {self.kind, f"rho={self.rho:g}", self.dtype.name, "*"}
        if self.small:
            tags.add("small")
        if self.name in FEW:
            tags.add("few")
        if self.normalize is None:
            tags.add("raw")
        else:
            tags.add("logits")
        if self.hessian is not None:
            tags.add("second")
            if self.rho != 1.0:  # the EMD's own Hessian is not zero
                tags.add("curved")
        return frozenset(tags)

    def q_dense(self) -> np.ndarray:
        """Targets as distributions: one-hot rows for class indices."""
        if not self.labels:
            return self.q
        return np.eye(self.n_bins, dtype=self.dtype)[self.q]

    def tree(self):
        from emdtree import Tree

        return Tree(self.parents, self.weights, self.bins, names=[f"b{k}" for k in range(self.n_bins)])

    def expected_hvp(self) -> np.ndarray | None:
        if self.hessian is None:
            return None
        return np.einsum("rkm,rm->rk", self.hessian, self.v.astype(np.float64))

    def __repr__(self) -> str:
        return f"Case({self.name})"


def _oracle(p, q, parents, weights, bins, rho, normalize):
    """Value, gradient and Hessian of each row, float64."""
    value, grad, hess = [], [], []
    for p_r, q_r in zip(p.astype(np.float64), q.astype(np.float64)):
        tree = (parents, weights, bins)
        if normalize == "softmax":
            value.append(oracle.emd_softmax(p_r, q_r, *tree, rho))
            grad.append(oracle.grad_softmax(p_r, q_r, *tree, rho))
            hess.append(oracle.hessian_softmax(p_r, q_r, *tree, rho))
        else:
            value.append(oracle.emd(p_r, q_r, *tree, rho))
            grad.append(oracle.grad(p_r, q_r, *tree, rho))
            hess.append(oracle.hessian(p_r, q_r, *tree, rho))
    hess = np.array(hess)
    return np.array(value), np.array(grad), (hess if np.isfinite(hess).all() else None)


def _dirichlet(rng, n, rows):
    return rng.dirichlet(np.ones(n), size=rows)


def _chain(n, rng):
    parents = np.append(np.arange(1, n), -1).astype(np.int64)
    weights = np.append(rng.uniform(0.5, 2.0, n - 1), 0.0)
    return parents, weights, np.arange(n, dtype=np.int64)


def _tree(rng, n_nodes=10):
    return random_tree(rng, n_nodes, bins_on_internal=True, zero_weights=True)


def _min_phi(p, q, parents, bins):
    """Smallest |phi| over the non-root edges of every row (the gradient's distance to a kink)."""
    return min(np.abs(oracle.phi(a, b, parents, bins)[parents != -1]).min() for a, b in zip(p, q))


def _generic(rng, kind, dtype):
    """Random masses on a random tree or a chain, redrawn until no phi is near zero."""
    while True:
        parents, weights, bins = _chain(7, rng) if kind == "chain" else _tree(rng)
        n = len(bins)
        p = _dirichlet(rng, n, ROWS).astype(dtype)
        q = _dirichlet(rng, n, ROWS).astype(dtype)
        if _min_phi(p, q, parents, bins) > 0.02:
            return parents, weights, bins, p, q


def _dyadic(rng, n, rows):
    out = np.zeros((rows, n))
    for r in range(rows):
        out[r] = np.bincount(rng.integers(0, n, 64), minlength=n) / 64
    return out


def _tie(rng, dtype):
    """Dyadic masses; q rearranges p inside the subtree of one node and moves 1/64 elsewhere."""
    parents, weights, bins = _tree(rng, 12)
    n = len(bins)
    under = oracle.subtree_bins(parents, bins)
    node = max((i for i in range(len(parents)) if parents[i] != -1 and 2 <= under[i].sum() < n),
               key=lambda i: under[i].sum())
    inside = np.flatnonzero(under[node])
    outside = np.flatnonzero(~under[node])
    p = _dyadic(rng, n, ROWS)
    q = p.copy()
    for r in range(ROWS):
        q[r, inside] = p[r, rng.permutation(inside)]
        if r == 1 and len(outside) >= 2:
            a, b = outside[:2]
            if p[r, a] > 0:
                q[r, a] -= 1 / 64
                q[r, b] += 1 / 64
    q[2] = p[2]  # a row with p == q: every phi is zero
    return parents, weights, bins, p.astype(dtype), q.astype(dtype)


def _swap(rng, dtype):
    parents, weights, bins = _chain(8, rng)
    p = _dirichlet(rng, 8, ROWS).astype(dtype)
    q = p.reshape(ROWS, 4, 2)[:, :, ::-1].reshape(ROWS, 8).copy()
    return parents, weights, bins, p, q


def _zero_mass(rng, dtype):
    parents, weights, bins = _tree(rng)
    n = len(bins)
    p = _dirichlet(rng, n, ROWS) * (rng.random((ROWS, n)) < 0.5)
    q = _dirichlet(rng, n, ROWS) * (rng.random((ROWS, n)) < 0.5)
    p[:, 0] = q[:, 0] = 0.0  # a bin empty on both sides
    p[:, 1] += 0.05
    q[:, 2] += 0.05
    p /= p.sum(axis=1, keepdims=True)
    q /= q.sum(axis=1, keepdims=True)
    q[2] = p[2]
    return parents, weights, bins, p.astype(dtype), q.astype(dtype)


def _logits(rng, kind, dtype, chain):
    parents, weights, bins = _chain(6, rng) if chain else _tree(rng)
    n = len(bins)
    z = rng.normal(0.0, 2.0, (ROWS, n))
    if kind == "masked":
        z[0, [0, 2]] = -np.inf
        z[1, n - 1] = -np.inf
        z[2, 1:] = -np.inf  # one bin left: softmax is one-hot
    q = _dirichlet(rng, n, ROWS)
    return parents, weights, bins, z.astype(dtype), q.astype(dtype)


def _labels(rng, dtype, chain, normalize):
    parents, weights, bins = _chain(6, rng) if chain else _tree(rng)
    n = len(bins)
    p = rng.normal(0.0, 1.5, (ROWS, n)) if normalize else _dirichlet(rng, n, ROWS)
    return parents, weights, bins, p.astype(dtype), np.array([0, n - 1, n // 2], dtype=np.int64)


# (kind, dtype, rho, small, options)
_TABLE = [
    *[("tree", dt, rho, rho == 2.0 and dt == "float32", {}) for dt in ("float64", "float32")
      for rho in (1.0, 1.5, 2.0, 3.0)],
    *[("chain", dt, rho, rho == 1.0 and dt == "float64", {}) for dt in ("float64", "float32")
      for rho in (1.0, 1.5, 2.0, 3.0)],
    ("tie", "float64", 1.0, True, {}),
    ("tie", "float64", 1.5, False, {}),
    ("tie", "float64", 2.0, False, {}),
    ("tie", "float64", 3.0, False, {}),
    ("tie", "float32", 1.0, False, {}),
    ("swap", "float64", 1.0, True, {}),
    ("swap", "float32", 1.0, False, {}),
    ("swap", "float64", 2.0, False, {}),
    ("zero-mass", "float64", 1.0, False, {}),
    ("zero-mass", "float64", 1.5, False, {}),
    ("zero-mass", "float32", 2.0, True, {}),
    ("softmax", "float32", 2.0, True, {"chain": False}),
    ("softmax", "float64", 1.0, False, {"chain": True}),
    ("softmax", "float64", 1.5, False, {"chain": False}),
    ("masked", "float32", 2.0, True, {"chain": False}),
    ("masked", "float64", 1.0, False, {"chain": True}),
    ("masked", "float64", 3.0, False, {"chain": False}),
    ("labels", "float32", 2.0, True, {"chain": False, "normalize": "softmax"}),
    ("labels", "float64", 1.0, False, {"chain": True, "normalize": None}),
    ("labels", "float64", 3.0, False, {"chain": False, "normalize": None}),
]


def _build(seed: int, kind: str, dtype: str, rho: float, small: bool, options: dict) -> Case:
    rng = np.random.default_rng(seed)
    dt = np.dtype(dtype)
    normalize = options.get("normalize", "softmax" if kind in ("softmax", "masked") else None)
    if kind in ("tree", "chain"):
        parents, weights, bins, p, q = _generic(rng, kind, dt)
    elif kind == "tie":
        parents, weights, bins, p, q = _tie(rng, dt)
    elif kind == "swap":
        parents, weights, bins, p, q = _swap(rng, dt)
    elif kind == "zero-mass":
        parents, weights, bins, p, q = _zero_mass(rng, dt)
    elif kind in ("softmax", "masked"):
        parents, weights, bins, p, q = _logits(rng, kind, dt, options["chain"])
    else:
        parents, weights, bins, p, q = _labels(rng, dt, options["chain"], normalize)
    v = rng.standard_normal(p.shape).astype(dt)
    q_dense = np.eye(p.shape[1], dtype=dt)[q] if q.ndim == 1 else q
    value, grad, hess = _oracle(p, q_dense, parents, weights, bins, rho, normalize)
    shape = "chain" if kind in ("chain", "swap") or options.get("chain") else "tree"
    name = f"{kind}-{shape}{len(bins)}-{dt.name}-rho{rho:g}"
    return Case(name, kind, parents, weights, bins, p, q, v, rho, normalize, small, value, grad, hess)


# the cases of the slowest doors (a compile or a trace each): a tree, masked logits, a chain
FEW = ("tree-tree7-float32-rho2", "masked-tree9-float32-rho2", "chain-chain7-float64-rho1")

CASES: list[Case] = [_build(1000 + i, *row) for i, row in enumerate(_TABLE)]
SMALL_CASES: list[Case] = [c for c in CASES if c.small]


def _bad(kind: str) -> Case:
    """An invalid input at row 1, bin 2, which every door must reject, naming that entry."""
    rng = np.random.default_rng(7)
    parents, weights, bins = _chain(6, rng)
    p = _dirichlet(rng, 6, ROWS)
    q = _dirichlet(rng, 6, ROWS)
    normalize = None
    dtype = np.float64
    if kind == "bad-inf-logit":
        p, normalize, dtype = rng.normal(0.0, 1.0, (ROWS, 6)), "softmax", np.float32
        p[1, 2] = np.inf
    elif kind == "bad-nan-mass":
        p[1, 2] = np.nan
    else:
        p[1, 3] += p[1, 2] + 0.25
        p[1, 2] = -0.25
    p, q = p.astype(dtype), q.astype(dtype)
    zeros = np.zeros(ROWS)
    name = f"{kind}-chain6-{np.dtype(dtype).name}"
    return Case(name, kind, parents, weights, bins, p, q, np.zeros_like(p), 1.0, normalize,
                kind == "bad-inf-logit", zeros, np.zeros_like(p), None)


# inputs every door must reject with an error naming the entry [1, 2]
BAD_CASES: list[Case] = [_bad(kind) for kind in ("bad-inf-logit", "bad-nan-mass", "bad-negative-mass")]
