"""Arrays of other libraries: answered in the caller's library, dtype and device."""

import numpy as np
import pytest
from numpy.testing import assert_allclose
from trees import random_masses, random_tree

import emdtree
from emdtree import _dispatch

torch = pytest.importorskip("torch")

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _tree(seed=0, n_nodes=30):
    return emdtree.Tree.from_parents(*random_tree(np.random.default_rng(seed), n_nodes, bins_on_internal=True))


OPS = {
    "emd": lambda p, q, t: emdtree.emd(p, q, t, rho=2.0),
    "emd_rho1": lambda p, q, t: emdtree.emd(p, q, t),
    "value_and_grad": lambda p, q, t: emdtree.emd_value_and_grad(p, q, t, rho=1.5),
    "grad": lambda p, q, t: emdtree.emd_grad(p, q, t, rho=2.0),
    "phi": lambda p, q, t: emdtree.phi(p, q, t),
    "hvp": lambda p, q, t: emdtree.emd_hvp(p, q, p - q, t, rho=2.0),
    "hessian": lambda p, q, t: emdtree.emd_hessian(p, q, t, rho=3.0),
    "normalize": lambda p, q, t: emdtree.emd_value_and_grad(3 * p, q, t, rho=2.0, normalize="l1"),
}


def _flat(result):
    return result if isinstance(result, tuple) else (result,)


@pytest.mark.parametrize("op", list(OPS))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("batch", [(), (5,), (2, 40)])
def test_torch_cpu_tensors_in_torch_tensors_out(op, dtype, batch):
    tree = _tree()
    p, q = random_masses(np.random.default_rng(1), tree.n_bins, batch=batch, dtype=dtype)
    want = _flat(OPS[op](p, q, tree))
    got = _flat(OPS[op](torch.from_numpy(p), torch.from_numpy(q), tree))
    for g, w in zip(got, want):
        assert isinstance(g, torch.Tensor)
        assert g.dtype == getattr(torch, np.dtype(dtype).name)
        assert tuple(g.shape) == np.shape(w)
        assert g.device.type == "cpu"
        assert_allclose(g.numpy(), w, rtol=0, atol=0)


def test_torch_inputs_are_viewed_not_copied_and_gradients_are_detached():
    t = torch.rand(4, 6, dtype=torch.float64, requires_grad=True)
    view = _dispatch._torch_host(t)
    assert np.shares_memory(view, t.detach().numpy())
    p = t.detach() / t.detach().sum(1, keepdim=True)
    p.requires_grad_(True)
    value = emdtree.emd(p, torch.full((6,), 1 / 6, dtype=torch.float64))
    assert not value.requires_grad and value.shape == (4,)


def test_torch_axis_and_broadcast_single_target():
    p = torch.rand(3, 7, 2, dtype=torch.float64)
    p = p / p.sum(1, keepdim=True)
    q = torch.full((7, 1), 1 / 7, dtype=torch.float64)
    got = emdtree.emd(p, q, axis=1)
    want = emdtree.emd(p.numpy(), q.numpy(), axis=1)
    assert got.shape == (3, 2)
    assert_allclose(got.numpy(), want)


def test_python_lists_take_the_dtype_of_the_array_argument():
    p = torch.tensor([0.25, 0.25, 0.5])
    out = emdtree.emd(p, [0.5, 0.25, 0.25])
    assert out.dtype == torch.float32 and out.ndim == 0


def test_mixed_libraries_are_refused():
    with pytest.raises(TypeError, match="p is a torch array, q is a NumPy array"):
        emdtree.emd(torch.ones(3) / 3, np.ones(3) / 3)


def test_bad_torch_input_gives_the_numpy_message():
    p = torch.tensor([[0.5, 0.5], [float("nan"), 1.0]])
    q = torch.tensor([0.5, 0.5])
    with pytest.raises(ValueError, match=r"p\[1, 0\] = nan is not finite"):
        emdtree.emd(p, q)
    with pytest.raises(ValueError, match="must have equal total mass"):
        emdtree.emd(torch.tensor([1.0, 1.0]), q)


def test_unknown_objects_are_refused_clearly():
    class Opaque:
        pass

    with pytest.raises(TypeError, match="is not an array emdtree understands"):
        emdtree.emd(Opaque(), Opaque())


def test_host_data_takes_the_numpy_path():
    assert _dispatch.is_host(np.ones(3), [1.0, 2.0], 3.0, np.float32(1))
    assert not _dispatch.is_host(np.ones(3), torch.ones(3))
