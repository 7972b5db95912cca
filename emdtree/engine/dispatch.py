"""Route arrays of any library to the implementation that fits them.

The public functions in :mod:`emdtree._api` call :func:`is_host` first: NumPy
arrays, lists and scalars go straight to the Numba CPU kernels. Everything else
comes here and is answered in the caller's own library, dtype and device:

- CPU PyTorch tensors are viewed as NumPy arrays (zero copy, detached), run
  through the same CPU kernels and returned as tensors sharing that memory;
- arrays on an NVIDIA GPU (``__cuda_array_interface__``: CuPy, CUDA torch
  tensors, Numba device arrays) run in the numba-cuda kernels of
  :mod:`emdtree.engine.cuda`, on the caller's current stream;
- any other Array-API namespace (JAX, array-api-strict, ...) and GPU arrays
  without numba-cuda run in the reference math (:mod:`emdtree.engine.reference`),
  written with Array-API functions and a small table of each library's segment
  sums and gathers (:mod:`emdtree.engine.backends`), so that ``jax.jit`` can
  trace it.

Inputs are checked here with a few reductions on the caller's device and a
single transfer of flags to the host; only when something is wrong are the
arrays copied to the host, where :func:`emdtree.engine.inputs.prepare` names the
offending entry with the same message the NumPy API gives. Inside a JAX trace
values cannot be inspected, so only shapes are checked there.
"""

from __future__ import annotations

import math
import numbers
import sys
import warnings
from typing import Any, NamedTuple

import numpy as np

from . import normalize as _normalize
from . import backends
from .inputs import check_rho, flatten, prepare, resolve_shape, resolve_tree
from ..trees.tree import Tree

_HOST_TYPES = (np.ndarray, np.generic, list, tuple, numbers.Number)


def is_host(*arrays: Any) -> bool:
    """True when every argument is NumPy data (an ndarray, a list, a scalar)."""
    for x in arrays:
        if type(x) is not np.ndarray and not isinstance(x, _HOST_TYPES):
            return False
    return True


class Foreign(NamedTuple):
    """Masses of a non-NumPy library, flattened to (rows, n_bins) on their device."""

    xp: Any
    kind: str  # "cuda" or "xp"
    device: Any
    arrays: tuple[Any, ...]  # 2-D; with kind "cuda" a single broadcast row may stay (1, n_bins)
    n_rows: int
    batch_shape: tuple[int, ...]
    axis: int
    ndim: int
    dtype: Any
    tree: Tree
    totals: tuple[Any, ...]  # row totals before normalize="l1", else Nones
    normalize: str | None = None  # what was applied to arrays[0]


# --------------------------------------------------------------------------- #
# Which library, which device
# --------------------------------------------------------------------------- #

def _namespace(arrays: dict[str, Any]) -> tuple[Any, Any]:
    """The common Array-API namespace and device of the array arguments."""
    import array_api_compat as compat

    found = {name: x for name, x in arrays.items() if not isinstance(x, (list, tuple, numbers.Number))}
    namespaces = {}
    for name, x in found.items():
        if isinstance(x, (np.ndarray, np.generic)):
            namespaces[name] = "numpy"
            continue
        try:
            namespaces[name] = compat.array_namespace(x)
        except TypeError:
            raise TypeError(f"{name} of type {type(x).__module__}.{type(x).__qualname__} is not an array "
                            "emdtree understands") from None
    kinds = {n: (ns if ns == "numpy" else ns.__name__) for n, ns in namespaces.items()}
    if len(set(kinds.values())) > 1:
        shown = ", ".join(f"{n} is {_library(v)}" for n, v in kinds.items())
        raise TypeError(f"arrays from different libraries: {shown}; convert them to one library first")
    name0 = next(iter(found))
    xp = namespaces[name0]
    devices = {n: compat.device(x) for n, x in found.items()}
    if len({str(d) for d in devices.values()}) > 1:
        shown = ", ".join(f"{n} on {d}" for n, d in devices.items())
        raise ValueError(f"arrays on different devices: {shown}; move them to one device first")
    return xp, devices[name0]


def _library(namespace_name: str) -> str:
    return {"numpy": "a NumPy array"}.get(namespace_name, f"a {namespace_name.split('.')[-1]} array")


def _on_cuda(x: Any) -> bool:
    import array_api_compat as compat

    if compat.is_torch_array(x):
        return x.device.type == "cuda"
    return hasattr(x, "__cuda_array_interface__")


def _traced(x: Any) -> bool:
    """A JAX tracer (under ``jax.jit``, ``grad`` or ``vmap``): values are unknown."""
    return any(cls.__name__.endswith("Tracer") for cls in type(x).__mro__)


def _cuda_module():
    """:mod:`emdtree.engine.cuda` when numba-cuda can drive a GPU here, else None."""
    global _CUDA
    if _CUDA is None:
        try:
            from numba import cuda

            if not cuda.is_available():
                raise ImportError("no CUDA device")
            from . import cuda as _cuda
            _CUDA = _cuda
        except ImportError:
            warnings.warn(
                "GPU arrays are handled by array-library operations because numba-cuda is not installed "
                "or finds no GPU; pip install 'emdtree[cuda]' for the CUDA kernels",
                RuntimeWarning, stacklevel=4)
            _CUDA = False
    return _CUDA or None


_CUDA: Any = None


# --------------------------------------------------------------------------- #
# Shapes and checks, in the caller's library
# --------------------------------------------------------------------------- #

def _working_dtype(xp: Any, arrays: list[Any], device: Any) -> Any:
    """float32 stays float32; float64, integers and booleans become float64
    where the library has it (JAX without x64: its default float)."""
    dtypes = [a.dtype for a in arrays]
    for dt in dtypes:
        if not (xp.isdtype(dt, "real floating") or xp.isdtype(dt, "integral") or xp.isdtype(dt, "bool")):
            raise TypeError(f"masses must be real numbers, got dtype {dt}")
    if all(xp.isdtype(dt, "real floating") and xp.finfo(dt).bits <= 32 for dt in dtypes):
        return xp.float32
    default = xp.__array_namespace_info__().default_dtypes(device=device)["real floating"]
    return xp.float64 if xp.finfo(default).bits == 64 or any(dt == xp.float64 for dt in dtypes) else default


def _to_host(x: Any) -> np.ndarray:
    import array_api_compat as compat

    if compat.is_torch_array(x):
        return x.detach().cpu().numpy()
    if compat.is_cupy_array(x):
        return x.get()
    try:
        return np.from_dlpack(x)
    except (TypeError, RuntimeError, BufferError, AttributeError):
        return np.asarray(x)


def _contiguous(xp: Any, x: Any) -> Any:
    import array_api_compat as compat

    if compat.is_torch_array(x):
        return x.contiguous()
    if compat.is_cupy_array(x):
        import cupy

        return cupy.ascontiguousarray(x)
    return x


def prepare_foreign(
    arrays: dict[str, Any],
    tree: Tree | None,
    axis: int,
    check: bool,
    normalize: str | None = None,
    masses: tuple[str, ...] = ("p", "q"),
    cuda: bool = False,
) -> Foreign:
    """Counterpart of :func:`emdtree.engine.inputs.prepare` that stays in the caller's library."""
    normalize = _normalize.check_normalize(normalize)
    xp, dev = _namespace(arrays)
    raw = {}
    like = _float_dtype_of(arrays)
    for name, x in arrays.items():
        if isinstance(x, _HOST_TYPES):
            x = xp.asarray(np.asarray(x), device=dev)
            if like is not None:
                x = xp.astype(x, like)
        if x.ndim == 0:
            raise ValueError(f"{name} must have a bin axis, got a scalar")
        raw[name] = x
    dtype = _working_dtype(xp, list(raw.values()), dev)
    shape, ax, n_bins, batch_shape = resolve_shape({n: tuple(a.shape) for n, a in raw.items()}, axis)
    ndim = len(shape)
    n_rows = math.prod(batch_shape)
    tree = resolve_tree(tree, n_bins)

    out = []
    for name, a in raw.items():
        flat, _ = flatten(xp, name, a, ax, axis, n_bins, batch_shape, keep_row=cuda)
        if flat.dtype != dtype:
            flat = xp.astype(flat, dtype)
        out.append(_contiguous(xp, flat) if cuda else flat)

    traced = any(_traced(a) for a in out)
    if check and not traced and n_rows:
        _check_values(xp, out, list(raw), masses, n_bins, arrays, tree, axis, normalize)
    totals: list[Any] = [None] * len(out)
    if normalize == "softmax":
        i = list(raw).index(masses[0])
        out[i] = _normalize.softmax(xp, out[i])
    elif normalize is not None:
        for i, name in enumerate(raw):
            if name in masses:
                tot = xp.sum(out[i], axis=-1, keepdims=True)
                if not traced and n_rows and not bool(xp.all(tot > 0)):
                    prepare({n: _to_host(x) for n, x in raw.items()}, tree, axis, check, normalize, masses)
                totals[i] = tot
                out[i] = out[i] / tot
    return Foreign(xp, "cuda" if cuda else "xp", dev, tuple(out), n_rows, batch_shape, ax, ndim, dtype, tree,
                   tuple(totals), normalize)


def _check_values(xp, flats, names, masses, n_bins, arrays, tree, axis, normalize) -> None:
    """One device reduction and one transfer in the common case; on failure the
    host path raises the NumPy API's message."""
    ok = None
    mass_totals = []
    for name, a in zip(names, flats):
        if normalize == "softmax" and name == masses[0]:
            # logits: no NaN or +inf, and a finite logit in every row
            good = xp.all(~xp.isnan(a) & (a < xp.inf)) & xp.all(xp.max(a, axis=-1) > -xp.inf)
        else:
            good = xp.all(xp.isfinite(a))
        if name in masses and not (normalize == "softmax" and name == masses[0]):
            good = good & xp.all(a >= 0)
            tot = xp.sum(a, axis=-1)
            mass_totals.append(tot)
            if normalize == "softmax":
                eps = float(xp.finfo(a.dtype).eps)
                ok_one = xp.abs(tot - 1) <= max(n_bins, 64) * eps * xp.maximum(xp.abs(tot), xp.ones_like(tot))
                good = good & xp.all(ok_one)
        ok = good if ok is None else ok & good
    if normalize is None and len(mass_totals) == 2:
        ta, tb = mass_totals
        eps = float(xp.finfo(flats[0].dtype).eps)
        tol = max(n_bins, 64) * eps
        ok = ok & xp.all(xp.abs(ta - tb) <= tol * xp.maximum(xp.abs(ta), xp.abs(tb)))
    if not bool(ok):
        host = {n: _to_host(x) if not isinstance(x, (list, tuple, numbers.Number)) else x
                for n, x in arrays.items()}
        prepare(host, tree, axis, True, normalize, masses)


def _restore_bins(f: Foreign, flat: Any) -> Any:
    xp = f.xp
    out = xp.reshape(flat, f.batch_shape + (flat.shape[-1],))
    return out if f.axis == f.ndim - 1 else xp.moveaxis(out, -1, f.axis)


def _restore_scalar(f: Foreign, flat: Any) -> Any:
    return f.xp.reshape(f.xp.asarray(flat), f.batch_shape)


def _normalized_grad(f: Foreign, grad: Any) -> Any:
    """Chain rule through the normalisation of p (see :mod:`emdtree.engine.normalize`)."""
    return _normalize.grad(f.xp, f.normalize, grad, f.arrays[0], f.totals[0])


# --------------------------------------------------------------------------- #
# Operations
# --------------------------------------------------------------------------- #

def _float_dtype_of(arrays: dict[str, Any]) -> Any:
    """The floating dtype of the array arguments, which Python lists adopt (like
    Python scalars in the Array API), or None."""
    for x in arrays.values():
        if not isinstance(x, _HOST_TYPES) and "float" in str(x.dtype):
            return x.dtype
    return None


def _torch_host(x: Any, like: Any = None) -> Any:
    if isinstance(x, _HOST_TYPES):
        if like is not None and isinstance(x, (list, tuple)):
            return np.asarray(x, dtype=str(like).replace("torch.", ""))
        return x
    import torch

    if x.dtype in (torch.float16, torch.bfloat16):
        x = x.float()
    return x.detach().resolve_conj().resolve_neg().numpy()


def torch_back(result: Any) -> Any:
    """Tensors sharing the memory of the NumPy ``result`` (a tuple stays a tuple)."""
    import torch

    if isinstance(result, tuple):
        return tuple(torch_back(r) for r in result)
    return torch.from_numpy(np.asarray(result))


def torch_cpu(arrays: dict[str, Any]) -> list[np.ndarray] | None:
    """NumPy views (zero copy, detached) of ``arrays`` when they are CPU torch tensors, else None.

    The public functions run such arguments through their NumPy path and give
    the result back with :func:`torch_back`.
    """
    if _route(arrays) != "torch-cpu":
        return None
    like = _float_dtype_of(arrays)
    return [_torch_host(x, like) for x in arrays.values()]


def _route(arrays: dict[str, Any]) -> str:
    torch = sys.modules.get("torch")
    xs = [x for x in arrays.values() if not isinstance(x, _HOST_TYPES)]
    if torch is not None and all(isinstance(x, torch.Tensor) and x.device.type == "cpu" for x in xs):
        if any(isinstance(x, (np.ndarray, np.generic)) for x in arrays.values()):
            _namespace(arrays)  # raises: two libraries
        return "torch-cpu"
    if xs and all(_on_cuda(x) for x in xs):
        return "cuda"
    return "xp"


def value_grad(
    p: Any, q: Any, tree: Tree | None, rho: float, axis: int, normalize: str | None, check: bool,
    want_grad: bool,
) -> Any:
    """emd (``want_grad=False``) or emd_value_and_grad for non-NumPy arrays."""
    arrays = {"p": p, "q": q}
    route = _route(arrays)
    rho = check_rho(rho)
    cuda = _cuda_module() if route == "cuda" else None
    f = prepare_foreign(arrays, tree, axis, check, normalize, cuda=cuda is not None)
    if cuda is not None:
        value, grad = _run_cuda(cuda, "value_grad", f, rho, want_grad)
    else:
        value, grad = backends.value_grad_rows(f.xp, *f.arrays, f.tree, rho, want_grad)
    value = _restore_scalar(f, value)
    if not want_grad:
        return value
    if normalize is not None:
        grad = _normalized_grad(f, grad)
    return value, _restore_bins(f, grad)


def phi(p: Any, q: Any, tree: Tree | None, axis: int, normalize: str | None, check: bool) -> Any:
    arrays = {"p": p, "q": q}
    route = _route(arrays)
    cuda = _cuda_module() if route == "cuda" else None
    f = prepare_foreign(arrays, tree, axis, check, normalize, cuda=cuda is not None)
    if cuda is not None:
        out = _run_cuda(cuda, "phi", f)
    else:
        out = backends.phi_rows(f.xp, *f.arrays, f.tree)
    return _restore_bins(f, out)


def hvp(p: Any, q: Any, v: Any, tree: Tree | None, rho: float, axis: int, check: bool,
        project_out: bool = True, normalize: str | None = None) -> Any:
    arrays = {"p": p, "q": q, "v": v}
    route = _route(arrays)
    rho = check_rho(rho)
    cuda = _cuda_module() if route == "cuda" else None
    f = prepare_foreign(arrays, tree, axis, check, normalize, cuda=cuda is not None)
    if normalize is not None:
        return _restore_bins(f, _normalized_hvp(f, cuda, rho))
    if cuda is not None:
        out = _run_cuda(cuda, "hvp", f, rho, project_out)
    else:
        out = backends.hvp_rows(f.xp, *f.arrays, f.tree, rho, project_out)
    return _restore_bins(f, out)


def _normalized_hvp(f: Foreign, cuda: Any, rho: float) -> Any:
    """The HVP with respect to the raw p of a normalised loss (:mod:`emdtree.engine.normalize`)."""
    xp = f.xp
    a, q, v = f.arrays
    w = _normalize.direction(xp, f.normalize, v, a, f.totals[0])
    if cuda is not None:
        g = _run_cuda(cuda, "value_grad", f._replace(arrays=(a, q)), rho, True)[1]
        hw = _run_cuda(cuda, "hvp", f._replace(arrays=(a, q, _contiguous(xp, w))), rho, True)
    else:
        g = backends.value_grad_rows(xp, a, q, f.tree, rho, True)[1]
        hw = backends.hvp_rows(xp, a, q, w, f.tree, rho, True)
    return _normalize.hvp(xp, f.normalize, hw, v, g, a, f.totals[0])


def hessian(p: Any, q: Any, tree: Tree | None, rho: float, axis: int, check: bool,
            normalize: str | None = None) -> Any:
    arrays = {"p": p, "q": q}
    rho = check_rho(rho)
    f = prepare_foreign(arrays, tree, axis, check, normalize)
    out = backends.hessian_rows(f.xp, *f.arrays, f.tree, rho)
    if normalize is not None:
        g = backends.value_grad_rows(f.xp, *f.arrays, f.tree, rho, True)[1]
        out = _normalize.hessian(f.xp, normalize, out, g, f.arrays[0], f.totals[0])
    n = f.tree.n_bins
    return f.xp.reshape(out, f.batch_shape + (n, n))


def _run_cuda(cuda: Any, op: str, f: Foreign, *args: Any) -> Any:
    """Call a :mod:`emdtree.engine.cuda` driver function on the caller's current stream
    and wrap its device arrays back into the caller's library."""
    from numba import cuda as nb_cuda

    index = getattr(f.device, "index", None)
    with nb_cuda.gpus[index or 0]:
        stream = _current_stream(f.arrays[0])
        # every launch goes on the caller's stream, so no synchronisation is needed here
        dev = [nb_cuda.as_cuda_array(a, sync=False) for a in f.arrays]
        if op == "value_grad":
            rho, want_grad = args
            value, grad = cuda.value_grad(dev[0], dev[1], f.tree, rho, want_grad, stream)
            return _wrap(f, value), (_wrap(f, grad) if grad is not None else None)
        if op == "phi":
            return _wrap(f, cuda.phi(dev[0], dev[1], f.tree, stream))
        rho, project_out = args
        return _wrap(f, cuda.hvp(dev[0], dev[1], dev[2], f.tree, rho, project_out, stream))


def _current_stream(x: Any) -> Any:
    import array_api_compat as compat
    from numba import cuda as nb_cuda

    if compat.is_torch_array(x):
        import torch

        return nb_cuda.external_stream(torch.cuda.current_stream(x.device).cuda_stream)
    if compat.is_cupy_array(x):
        import cupy

        return nb_cuda.external_stream(cupy.cuda.get_current_stream().ptr)
    return nb_cuda.default_stream()


def _wrap(f: Foreign, devarray: Any) -> Any:
    import array_api_compat as compat

    x0 = f.arrays[0]
    if compat.is_torch_array(x0):
        import torch

        return torch.as_tensor(devarray, device=x0.device)
    if compat.is_cupy_array(x0):
        import cupy

        return cupy.asarray(devarray)
    return devarray
