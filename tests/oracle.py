"""Slow, obviously-correct reference implementations for the test suite.

Everything here is written with plain Python loops over nodes and bins so
that it can be checked by reading.  The functions take plain arrays

``parents``
    int array of shape ``(n_nodes,)``; ``parents[i]`` is the parent of node
    ``i`` and ``-1`` marks the single root.
``weights``
    float array of shape ``(n_nodes,)``; ``weights[i]`` is the cost of the
    edge from node ``i`` to its parent (ignored at the root).
``bins``
    int array of shape ``(n_bins,)``; ``bins[k]`` is the node that carries
    bin ``k``.  Bins may sit on internal nodes.

and one-dimensional masses ``p`` and ``q`` of shape ``(n_bins,)``.

With ``phi_i`` the total of ``p - q`` over the bins in the subtree of node
``i``, the (relaxed) tree Earth Mover's Distance is

    EMD^rho(p, q) = sum over non-root i of w_i |phi_i|^rho,

which for ``rho = 1`` is the exact EMD (Wasserstein-1 under the tree path
metric).  :func:`emd_lp` solves the same transport problem as a linear
program for any ground-distance matrix.
"""

import numpy as np
import scipy.optimize


def _as_tree(parents, weights, bins):
    parents = np.asarray(parents, dtype=np.int64)
    bins = np.asarray(bins, dtype=np.int64)
    if weights is not None:
        weights = np.asarray(weights, dtype=np.float64)
    return parents, weights, bins


def ancestors_or_self(parents, node):
    """List the nodes on the path from ``node`` up to and including the root.

    Parameters
    ----------
    parents : array_like of int
        Parent of each node, ``-1`` at the root.
    node : int
        Start node.

    Returns
    -------
    list of int
        ``[node, parent(node), ..., root]``.
    """
    parents = np.asarray(parents, dtype=np.int64)
    path = [int(node)]
    while parents[path[-1]] != -1:
        path.append(int(parents[path[-1]]))
        if len(path) > len(parents):
            raise ValueError("parents contains a cycle")
    return path


def subtree_bins(parents, bins):
    """Bin-membership matrix of the subtrees.

    Parameters
    ----------
    parents : array_like of int, shape (n_nodes,)
        Parent of each node, ``-1`` at the root.
    bins : array_like of int, shape (n_bins,)
        Node carrying each bin.

    Returns
    -------
    A : ndarray of bool, shape (n_nodes, n_bins)
        ``A[i, k]`` is true when bin ``k`` lies in the subtree of node ``i``
        (node ``i`` itself included).
    """
    parents, _, bins = _as_tree(parents, None, bins)
    A = np.zeros((len(parents), len(bins)), dtype=bool)
    for k in range(len(bins)):
        for i in ancestors_or_self(parents, bins[k]):
            A[i, k] = True
    return A


def phi(p, q, parents, bins):
    """Net mass ``p - q`` in the subtree of every node.

    Parameters
    ----------
    p, q : array_like, shape (n_bins,)
        Masses on the bins.
    parents : array_like of int, shape (n_nodes,)
        Parent of each node, ``-1`` at the root.
    bins : array_like of int, shape (n_bins,)
        Node carrying each bin.

    Returns
    -------
    ndarray, shape (n_nodes,)
        ``phi[i]`` is the sum of ``p[k] - q[k]`` over the bins ``k`` in the
        subtree of node ``i``.
    """
    parents, _, bins = _as_tree(parents, None, bins)
    p = np.asarray(p, dtype=np.float64)
    q = np.asarray(q, dtype=np.float64)
    out = np.zeros(len(parents))
    for k in range(len(bins)):
        for i in ancestors_or_self(parents, bins[k]):
            out[i] += p[k] - q[k]
    return out


def _non_root(parents):
    return [i for i in range(len(parents)) if parents[i] != -1]


def emd(p, q, parents, weights, bins, rho=1.0):
    """Tree Earth Mover's Distance ``sum_i w_i |phi_i|^rho`` over non-root nodes.

    Parameters
    ----------
    p, q : array_like, shape (n_bins,)
        Masses on the bins (equal totals).
    parents : array_like of int, shape (n_nodes,)
        Parent of each node, ``-1`` at the root.
    weights : array_like of float, shape (n_nodes,)
        Cost of the edge from each node to its parent.
    bins : array_like of int, shape (n_bins,)
        Node carrying each bin.
    rho : float, optional
        Exponent; ``rho = 1`` gives the exact EMD.

    Returns
    -------
    float
    """
    parents, weights, bins = _as_tree(parents, weights, bins)
    f = phi(p, q, parents, bins)
    total = 0.0
    for i in _non_root(parents):
        total += weights[i] * abs(f[i]) ** rho
    return float(total)


def _edge_slope(phi_i, w_i, rho):
    """Derivative of ``w |x|^rho`` at ``x = phi_i``."""
    if phi_i == 0.0:
        return 0.0
    if rho == 1:
        return w_i * np.sign(phi_i)
    return rho * w_i * np.sign(phi_i) * abs(phi_i) ** (rho - 1)


def _edge_curvature(phi_i, w_i, rho):
    """Second derivative of ``w |x|^rho`` at ``x = phi_i``.

    Zero for ``rho = 1``; infinite at ``phi_i = 0`` when ``1 < rho < 2`` and
    the edge weight is positive.
    """
    if rho == 1 or w_i == 0.0:
        return 0.0
    if phi_i == 0.0:
        if rho == 2:
            return 2.0 * w_i
        if rho > 2:
            return 0.0
        return np.inf
    return rho * (rho - 1) * w_i * abs(phi_i) ** (rho - 2)


def _project(n):
    return np.eye(n) - np.ones((n, n)) / n


def grad(p, q, parents, weights, bins, rho=1.0):
    """Dirt-conserving gradient of :func:`emd` with respect to ``p``.

    Parameters
    ----------
    p, q, parents, weights, bins, rho
        As in :func:`emd`.

    Returns
    -------
    ndarray, shape (n_bins,)
        ``g[k] = sum_i rho w_i sign(phi_i) |phi_i|^(rho - 1)`` over the
        non-root ancestors-or-self ``i`` of ``bins[k]``, minus the mean over
        the bins (so ``g`` sums to zero).  ``sign(0) = 0``.
    """
    parents, weights, bins = _as_tree(parents, weights, bins)
    f = phi(p, q, parents, bins)
    g = np.zeros(len(bins))
    for k in range(len(bins)):
        for i in ancestors_or_self(parents, bins[k]):
            if parents[i] != -1:
                g[k] += _edge_slope(f[i], weights[i], rho)
    return g - g.mean()


def hessian(p, q, parents, weights, bins, rho=1.0):
    """Projected Hessian of :func:`emd` with respect to ``p``.

    Parameters
    ----------
    p, q, parents, weights, bins, rho
        As in :func:`emd`.

    Returns
    -------
    ndarray, shape (n_bins, n_bins)
        ``P A^T diag(h) A P`` with ``A`` from :func:`subtree_bins` (non-root
        rows), ``h_i = rho (rho - 1) w_i |phi_i|^(rho - 2)`` (zero for
        ``rho = 1``) and ``P = I - 11^T / n_bins``.  Nodes whose subtree
        holds all of the bins or none of them are left out: ``P`` cancels
        their term.
    """
    parents, weights, bins = _as_tree(parents, weights, bins)
    f = phi(p, q, parents, bins)
    A = subtree_bins(parents, bins)
    n = len(bins)
    H = np.zeros((n, n))
    for i in _non_root(parents):
        if A[i].all() or not A[i].any():
            # adds a multiple of 11^T (or nothing), which P removes exactly; skipping it
            # avoids round-off from a huge curvature where phi_i is zero up to round-off
            continue
        h = _edge_curvature(f[i], weights[i], rho)
        for k in range(n):
            for m in range(n):
                if A[i, k] and A[i, m]:
                    H[k, m] += h
    P = _project(n)
    with np.errstate(invalid="ignore"):  # infinite curvature (1 < rho < 2, phi_i = 0) gives nan
        return P @ H @ P


def hvp(p, q, parents, weights, bins, v, rho=1.0):
    """Projected Hessian-vector product ``P H P v``.

    Parameters
    ----------
    p, q, parents, weights, bins, rho
        As in :func:`emd`.
    v : array_like, shape (n_bins,)
        Vector to multiply.

    Returns
    -------
    ndarray, shape (n_bins,)
    """
    return hessian(p, q, parents, weights, bins, rho) @ np.asarray(v, dtype=np.float64)


def distance_matrix(parents, weights, bins):
    """Path-metric distances between bins, by walking up to the lowest common ancestor.

    Parameters
    ----------
    parents : array_like of int, shape (n_nodes,)
        Parent of each node, ``-1`` at the root.
    weights : array_like of float, shape (n_nodes,)
        Cost of the edge from each node to its parent.
    bins : array_like of int, shape (n_bins,)
        Node carrying each bin.

    Returns
    -------
    ndarray, shape (n_bins, n_bins)
        ``D[k, m]`` is the total weight of the tree path between ``bins[k]``
        and ``bins[m]``.
    """
    parents, weights, bins = _as_tree(parents, weights, bins)
    n = len(bins)
    D = np.zeros((n, n))
    for k in range(n):
        # distance from bins[k] up to each of its ancestors
        up_from_k = {}
        dist = 0.0
        for node in ancestors_or_self(parents, bins[k]):
            up_from_k[node] = dist
            dist += weights[node]
        for m in range(n):
            node = int(bins[m])
            dist = 0.0
            while node not in up_from_k:
                dist += weights[node]
                node = int(parents[node])
            D[k, m] = dist + up_from_k[node]
    return D


def emd_lp(p, q, D):
    """Exact optimal-transport cost by linear programming.

    Minimises ``sum_{k,m} D[k, m] T[k, m]`` over transport plans ``T >= 0``
    with row sums ``p`` and column sums ``q``, using HiGHS with tight
    tolerances.

    Parameters
    ----------
    p : array_like, shape (n,)
        Source masses.
    q : array_like, shape (m,)
        Target masses, same total as ``p``.
    D : array_like, shape (n, m)
        Ground cost.

    Returns
    -------
    float
    """
    p = np.asarray(p, dtype=np.float64)
    q = np.asarray(q, dtype=np.float64)
    D = np.asarray(D, dtype=np.float64)
    n, m = D.shape
    # variable T[k, j] is x[k * m + j]
    A_eq = np.zeros((n + m, n * m))
    for k in range(n):
        for j in range(m):
            A_eq[k, k * m + j] = 1.0  # row sum k
            A_eq[n + j, k * m + j] = 1.0  # column sum j
    b_eq = np.concatenate([p, q])
    res = scipy.optimize.linprog(
        D.ravel(),
        A_eq=A_eq,
        b_eq=b_eq,
        bounds=(0, None),
        method="highs",
        options={
            "primal_feasibility_tolerance": 1e-10,
            "dual_feasibility_tolerance": 1e-10,
        },
    )
    if res.status != 0:
        raise RuntimeError(f"linprog failed: {res.message}")
    return float(res.fun)


def softmax(z):
    """Softmax of one row of logits, with ``-inf`` logits as probability 0.

    Parameters
    ----------
    z : array_like, shape (n_bins,)
        Logits; ``-inf`` masks a bin, and at least one logit is finite.

    Returns
    -------
    ndarray, shape (n_bins,)
        ``exp(z_k - max z) / sum_j exp(z_j - max z)``.
    """
    z = np.asarray(z, dtype=np.float64)
    top = max(float(x) for x in z)
    e = np.zeros(len(z))
    for k in range(len(z)):
        e[k] = 0.0 if z[k] == -np.inf else np.exp(z[k] - top)
    return e / sum(e)


def _softmax_jacobian(s):
    """``J[k, a] = d s_k / d z_a = s_k (delta_ka - s_a)`` (symmetric)."""
    n = len(s)
    J = np.zeros((n, n))
    for k in range(n):
        for a in range(n):
            J[k, a] = s[k] * ((k == a) - s[a])
    return J


def emd_softmax(z, q, parents, weights, bins, rho=1.0):
    """:func:`emd` of ``softmax(z)`` against the distribution ``q``."""
    return emd(softmax(z), q, parents, weights, bins, rho)


def grad_softmax(z, q, parents, weights, bins, rho=1.0):
    """Gradient of :func:`emd_softmax` with respect to the logits ``z``.

    ``J^T g`` with ``J`` the Jacobian of the softmax and ``g`` the gradient of
    :func:`grad` (its mean does not matter: ``J^T 1 = 0``). Zero at masked bins.
    """
    s = softmax(z)
    return _softmax_jacobian(s).T @ grad(s, q, parents, weights, bins, rho)


def hessian_softmax(z, q, parents, weights, bins, rho=1.0):
    """Hessian of :func:`emd_softmax` with respect to the logits ``z``.

    ``J^T H J + sum_k g_k d^2 s_k / dz dz`` with ``H`` from :func:`hessian` and
    ``g`` from :func:`grad`, where
    ``d^2 s_k / dz_a dz_b = s_k (delta_ka - s_a)(delta_kb - s_b) - s_k s_a (delta_ab - s_b)``.
    Neither the projection in ``H`` nor the mean of ``g`` changes it: ``J 1 = 0`` and
    the second derivatives of ``sum_k s_k = 1`` vanish.
    """
    s = softmax(z)
    J = _softmax_jacobian(s)
    g = grad(s, q, parents, weights, bins, rho)
    with np.errstate(invalid="ignore"):
        out = J.T @ hessian(s, q, parents, weights, bins, rho) @ J
    n = len(s)
    for a in range(n):
        for b in range(n):
            t = 0.0
            for k in range(n):
                t += g[k] * (s[k] * ((k == a) - s[a]) * ((k == b) - s[b]) - s[k] * s[a] * ((a == b) - s[b]))
            out[a, b] += t
    return out
