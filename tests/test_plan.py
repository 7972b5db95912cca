"""The per-tree plan: one cache slot on the tree, every derived array computed once."""

from __future__ import annotations

import numpy as np
import pytest
from trees import TREE_CASES, random_masses

import emdtree
from emdtree.engine import driver as _driver, tiers as _tiers
from emdtree.engine import backends, plan as plan_module
from emdtree.engine.plan import TreePlan, plan_of

# cached properties of the tree itself (not derived arrays of an implementation)
TREE_PROPERTIES = {"depth", "is_chain", "_is_canonical_chain"}


def every_door(tree, monkeypatch, twice=True):
    """Run the tree through the kernels, the NumPy pass, pairwise, the Array-API door and the
    framework-native losses present, twice over."""
    rng = np.random.default_rng(0)
    p, q = random_masses(rng, tree.n_bins, (9,))
    v = rng.standard_normal(p.shape)
    for _ in range(2 if twice else 1):
        for dtype in (np.float32, np.float64):
            a, b = p.astype(dtype), q.astype(dtype)
            emdtree.emd_value_and_grad(a, b, tree, 1.5)
            emdtree.emd_hvp(a, b, v.astype(dtype), tree, 1.5)
            emdtree.phi(a, b, tree)
            emdtree.emd_hessian(a, b, tree, 3.0)
            with monkeypatch.context() as m:
                m.setattr(_tiers, "use_numpy", lambda work, max_work=0, counted=True: True)
                emdtree.emd_value_and_grad(a, b, tree, 2.0)
                emdtree.pairwise(a, tree=tree)
        strict = pytest.importorskip("array_api_strict")
        backends.hessian_rows(strict, strict.asarray(p), strict.asarray(q), tree, 1.5)
        backends.hvp_rows(strict, strict.asarray(p), strict.asarray(q), strict.asarray(v), tree, 1.5, True)
        backends.phi_rows(strict, strict.asarray(p), strict.asarray(q), tree)
        try:
            import jax.numpy as jnp

            from emdtree.frameworks import jax_native as _jax_native
        except ImportError:
            continue
        _jax_native.emd(jnp.asarray(p, dtype=jnp.float32), jnp.asarray(q, dtype=jnp.float32), tree, 1.0)


@pytest.mark.parametrize("case", [TREE_CASES[i] for i in (3, 7, 9)], ids=lambda c: c[0])
def test_one_cache_slot(case, monkeypatch):
    """Every implementation keeps its arrays in the tree's one plan, nowhere else on the tree."""
    tree = emdtree.Tree(*case[1]())
    assert tree._plan is None
    every_door(tree, monkeypatch, twice=False)
    assert isinstance(tree._plan, TreePlan)
    assert plan_of(tree) is tree._plan
    assert set(vars(tree)) <= TREE_PROPERTIES, set(vars(tree)) - TREE_PROPERTIES


def test_arrays_are_computed_once(monkeypatch):
    """Running every door twice builds each derived array once."""
    tree = emdtree.Tree(*TREE_CASES[9][1]())
    counts: dict[str, int] = {}

    def counting(name, fn):
        def wrapped(*args, **kwargs):
            counts[name] = counts.get(name, 0) + 1
            return fn(*args, **kwargs)

        return wrapped

    for name in ("_node_major", "_numpy_sums", "_hessian_index"):
        monkeypatch.setattr(TreePlan, name, counting(name, getattr(TreePlan, name)))
    monkeypatch.setattr(plan_module, "sweep_order", counting("sweep_order", plan_module.sweep_order))
    every_door(tree, monkeypatch)
    assert counts["_node_major"] == 1
    assert counts["_numpy_sums"] == 1
    assert counts["_hessian_index"] == 1
    assert counts["sweep_order"] == 1
    pl = plan_of(tree)
    for dtype in (np.float32, np.float64):
        assert pl.kernel_arrays(dtype) is _driver.kernel_arrays(tree, dtype)
        assert pl.sweep_arrays(dtype) is _driver.sweep_arrays(tree, dtype)


def test_a_pickled_tree_leaves_its_plan_behind():
    import pickle

    tree = emdtree.Tree(*TREE_CASES[7][1]())
    plan_of(tree).node_major
    copy = pickle.loads(pickle.dumps(tree))
    assert copy._plan is None
    np.testing.assert_array_equal(plan_of(copy).node_major.up, plan_of(tree).node_major.up)
