"""Time emdtree's CUDA kernels on the ImageNet WordNet tree against torch and POT on the same GPU.

For batches (default 512 and 8192) of softmax-like predictions ``p`` and random
targets ``q`` (1000 bins, float32 and float64, torch CUDA tensors) the script
times, in one run, on the same arrays and the same stream:

* emdtree's kernels (``emdtree.engine.cuda``): EMD^2 value and gradient, EMD (rho=1)
  value and gradient, the value alone, phi, and Hessian-vector products
  (rho=2 and rho=1.5);
* emdtree's public API on the torch tensors, where it accepts them (it adds
  the conversions, checks and allocations of the dispatch layer);
* the same math in torch: a sparse ancestor matrix (``phi = A (p - q)``,
  gradient ``A^T c``), and a level-by-level ``index_add_`` sweep;
* POT's ``ot.sinkhorn2`` (torch backend, 100 iterations, reg=1/3) with the
  tree's distance matrix, value and gradient (autograd), one pair at a time on
  a few pairs and extrapolated to the batch, and one ``p`` against the whole
  batch of ``q`` in one call.

Every method is first checked against emdtree's CPU kernels (float64, on the
same values). Kernel times are CUDA-event times on the stream, median of many
calls taken round-robin after warm-up; ``back-to-back`` divides one event
pair around many queued calls, which hides the host's launch cost when the GPU
is the slower side; ``host us`` is the Python-side cost of one call.

Run ``python benchmarks/bench_gpu.py --help`` for the options. Without an
NVIDIA GPU (torch with CUDA and numba-cuda) it prints one line and exits 0.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings

import numpy as np

import emdtree
from emdtree.datasets import imagenet_wordnet

from _common import (
    as_dtype, fmt_ms, machine_info, print_machine, print_table, random_rows, softmax_rows, write_json,
)

# Largest relative difference from the float64 CPU kernels that counts as agreement
# (emdtree's kernels; the torch float32 references sum in float32 and get 1e-4).
TOLERANCE = {"float32": 1e-6, "float64": 1e-12}
TORCH_TOLERANCE = {"float32": 1e-4, "float64": 1e-10}


def gpu_or_reason():
    """``(torch, numba.cuda)`` when both can drive a GPU, else a one-line reason."""
    try:
        import torch
    except ImportError:
        return "torch is not installed"
    if not torch.cuda.is_available():
        return "torch finds no CUDA GPU"
    try:
        from numba import cuda
    except ImportError:
        return "numba-cuda is not installed"
    if cuda.config.ENABLE_CUDASIM:
        return "NUMBA_ENABLE_CUDASIM is set (the simulator is not a GPU)"
    if not cuda.is_available():
        return "numba-cuda finds no CUDA GPU"
    return torch, cuda


# ----------------------------------------------------------------------------- torch references

class TorchSparse:
    """EMD^rho with a sparse ancestor matrix: ``phi = A (p - q)``, gradient ``A^T c``."""

    def __init__(self, tree, torch, dtype, device):
        rows, cols = [], []
        node = np.asarray(tree.bins, dtype=np.int64).copy()
        bins = np.arange(tree.n_bins)
        while bins.size:  # every bin up to the root, one level per step
            rows.append(node)
            cols.append(bins)
            node = tree.parents[node]
            keep = node >= 0
            node, bins = node[keep], bins[keep]
        rows, cols = np.concatenate(rows), np.concatenate(cols)
        index = torch.as_tensor(np.stack([rows, cols]), device=device)
        ones = torch.ones(rows.size, dtype=dtype, device=device)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "Sparse CSR tensor support is in beta", UserWarning)
            self.A = torch.sparse_coo_tensor(index, ones, (tree.n_nodes, tree.n_bins), check_invariants=True)
            self.A = self.A.coalesce().to_sparse_csr()
            self.At = torch.sparse_coo_tensor(index.flip(0), ones, (tree.n_bins, tree.n_nodes),
                                              check_invariants=True)
            self.At = self.At.coalesce().to_sparse_csr()
        self.w = torch.tensor(tree.weights, dtype=dtype, device=device)[:, None]
        self.torch = torch

    def value_grad(self, p, q, rho=2.0):
        torch = self.torch
        phi = torch.sparse.mm(self.A, (p - q).T)  # (n_nodes, batch)
        if rho == 2.0:
            value = (self.w * phi * phi).sum(0)
            c = 2 * self.w * phi
        else:
            a = phi.abs()
            value = (self.w * a**rho).sum(0)
            c = rho * self.w * torch.sign(phi) * a ** (rho - 1)
        grad = torch.sparse.mm(self.At, c).T
        return value, grad - grad.mean(1, keepdim=True)


class TorchLevels:
    """EMD^2 by ``index_add_`` up the tree one level at a time, and a gather down again."""

    def __init__(self, tree, torch, dtype, device):
        depth = tree.layout.depth[tree.layout.position]  # in node order
        self.levels = []
        for d in range(int(depth.max()), 0, -1):
            nodes = np.flatnonzero(depth == d)
            self.levels.append((torch.as_tensor(nodes, device=device),
                                torch.as_tensor(tree.parents[nodes], device=device)))
        self.bins = torch.tensor(tree.bins, device=device)
        self.w = torch.tensor(tree.weights, dtype=dtype, device=device)
        self.n_nodes = tree.n_nodes
        self.torch = torch

    def value_grad(self, p, q):
        torch = self.torch
        phi = torch.zeros((p.shape[0], self.n_nodes), dtype=p.dtype, device=p.device)
        phi[:, self.bins] = p - q
        for nodes, parents in self.levels:  # deepest level first
            phi.index_add_(1, parents, phi[:, nodes])
        value = (self.w * phi * phi).sum(1)
        g = 2 * self.w * phi
        for nodes, parents in reversed(self.levels):  # root side first
            g[:, nodes] += g[:, parents]
        grad = g[:, self.bins]
        return value, grad - grad.mean(1, keepdim=True)


# ----------------------------------------------------------------------------- timing

def time_round_robin(torch, fns, repeats, warmup, burst):
    """CUDA-event milliseconds per call of each callable, and host microseconds per call."""
    stream = torch.cuda.current_stream()
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    torch.cuda.synchronize()
    events = {name: [] for name in fns}
    host = {name: [] for name in fns}
    names = list(fns)
    for r in range(repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record(stream)
            t0 = time.perf_counter()
            fns[name]()
            host[name].append(time.perf_counter() - t0)
            end.record(stream)
            events[name].append((start, end))
        if r % 16 == 15:
            torch.cuda.synchronize()  # keep the queue short
    torch.cuda.synchronize()
    out = {}
    for name, fn in fns.items():
        ms = np.array([s.elapsed_time(e) for s, e in events[name]])
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record(stream)
        for _ in range(burst):
            fn()
        end.record(stream)
        torch.cuda.synchronize()
        out[name] = {
            "median_ms": float(np.median(ms)), "p10_ms": float(np.percentile(ms, 10)),
            "p90_ms": float(np.percentile(ms, 90)), "n_samples": int(ms.size),
            "back_to_back_ms": start.elapsed_time(end) / burst,
            "host_us": float(np.median(host[name])) * 1e6,
        }
    return out


def time_pot(torch, ot, p, q, M, n_pairs, repeats):
    """POT's Sinkhorn, value and gradient by autograd: per pair (extrapolated) and one p against all q."""
    out = {}

    def pair(i):
        a = p[i].clone().requires_grad_(True)
        loss = ot.sinkhorn2(a, q[i], M, reg=1 / 3, numItermax=100, stopThr=0.0)
        loss.backward()
        return loss, a.grad

    def one_to_many():
        a = p[0].clone().requires_grad_(True)
        loss = ot.sinkhorn2(a, q.T.contiguous(), M, reg=1 / 3, numItermax=100, stopThr=0.0)
        loss.sum().backward()
        return loss

    pair(0)
    one_to_many()
    torch.cuda.synchronize()
    per_pair = []
    for i in range(n_pairs):
        t0 = time.perf_counter()
        pair(i % p.shape[0])
        torch.cuda.synchronize()
        per_pair.append(time.perf_counter() - t0)
    ms = np.array(per_pair) * 1e3 * p.shape[0]
    out["POT ot.sinkhorn2 100 it, value+grad (per pair, extrapolated)"] = {
        "median_ms": float(np.median(ms)), "p10_ms": float(np.percentile(ms, 10)),
        "p90_ms": float(np.percentile(ms, 90)), "n_samples": n_pairs, "extrapolated": True,
    }
    walls = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        one_to_many()
        torch.cuda.synchronize()
        walls.append(time.perf_counter() - t0)
    ms = np.array(walls) * 1e3
    out["POT ot.sinkhorn2 100 it, one p vs all q, value+grad"] = {
        "median_ms": float(np.median(ms)), "p10_ms": float(np.percentile(ms, 10)),
        "p90_ms": float(np.percentile(ms, 90)), "n_samples": repeats,
    }
    return out


# ----------------------------------------------------------------------------- one case

def rel_diff(actual, expected) -> float:
    """Largest difference relative to the largest reference entry of each row."""
    actual = np.asarray(actual, dtype=np.float64).reshape(expected.shape[0], -1)
    expected = np.asarray(expected, dtype=np.float64).reshape(expected.shape[0], -1)
    scale = np.maximum(np.abs(expected).max(axis=1), np.finfo(float).tiny)
    return float((np.abs(actual - expected).max(axis=1) / scale).max())


def run_case(torch, cuda, tree, dtype, batch, args):
    from emdtree.engine import cuda as _cuda

    device = torch.device("cuda")
    tdtype = getattr(torch, dtype)
    rng = np.random.default_rng(args.seed)
    p_host = as_dtype(softmax_rows(rng, batch, tree.n_bins), np.dtype(dtype))
    q_host = as_dtype(random_rows(rng, batch, tree.n_bins), np.dtype(dtype))
    v_host = rng.standard_normal((batch, tree.n_bins)).astype(dtype)
    p, q, v = (torch.as_tensor(x, device=device) for x in (p_host, q_host, v_host))
    stream = cuda.external_stream(torch.cuda.current_stream().cuda_stream)
    dp, dq, dv = (cuda.as_cuda_array(x, sync=False) for x in (p, q, v))
    sparse = TorchSparse(tree, torch, tdtype, device)
    levels = TorchLevels(tree, torch, tdtype, device)

    fns = {
        "emdtree kernel value+grad rho=2": lambda: _cuda.value_grad(dp, dq, tree, 2.0, True, stream),
        "emdtree kernel value+grad rho=1": lambda: _cuda.value_grad(dp, dq, tree, 1.0, True, stream),
        "emdtree kernel value rho=2": lambda: _cuda.value_grad(dp, dq, tree, 2.0, False, stream),
        "emdtree kernel phi": lambda: _cuda.phi(dp, dq, tree, stream),
        "emdtree kernel HVP rho=2": lambda: _cuda.hvp(dp, dq, dv, tree, 2.0, True, stream),
        "emdtree kernel HVP rho=1.5": lambda: _cuda.hvp(dp, dq, dv, tree, 1.5, True, stream),
        "torch sparse A (p - q), A^T c rho=2": lambda: sparse.value_grad(p, q),
        "torch index_add_ by level rho=2": lambda: levels.value_grad(p, q),
    }
    notes = {}
    try:
        emdtree.emd_value_and_grad(p, q, tree, rho=2.0, check_inputs=False)
        fns["emdtree public API value+grad rho=2 (torch tensors)"] = (
            lambda: emdtree.emd_value_and_grad(p, q, tree, rho=2.0, check_inputs=False))
    except (TypeError, ValueError) as exc:
        notes["public API"] = f"not timed: {exc}"

    # correctness first, against the CPU kernels in float64 on the same values
    p64, q64, v64 = (x.astype(np.float64) for x in (p_host, q_host, v_host))
    n = min(batch, args.check_rows)

    def host(x):
        torch.cuda.synchronize()  # the kernels ran on torch's stream
        return x.copy_to_host() if hasattr(x, "copy_to_host") else x.detach().cpu().numpy()

    checks = {}
    for rho in (2.0, 1.0):
        rv, rg = emdtree.emd_value_and_grad(p64[:n], q64[:n], tree, rho=rho, check_inputs=False)
        value, grad = _cuda.value_grad(dp, dq, tree, rho, True, stream)
        checks[f"emdtree kernel value+grad rho={rho:g}"] = max(rel_diff(host(value)[:n, None], rv[:, None]),
                                                              rel_diff(host(grad)[:n], rg))
    value, _ = _cuda.value_grad(dp, dq, tree, 2.0, False, stream)
    checks["emdtree kernel value rho=2"] = rel_diff(
        host(value)[:n, None], emdtree.emd(p64[:n], q64[:n], tree, rho=2.0, check_inputs=False)[:, None])
    checks["emdtree kernel phi"] = rel_diff(host(_cuda.phi(dp, dq, tree, stream))[:n],
                                            emdtree.phi(p64[:n], q64[:n], tree, check_inputs=False))
    for rho in (2.0, 1.5):
        checks[f"emdtree kernel HVP rho={rho:g}"] = rel_diff(
            host(_cuda.hvp(dp, dq, dv, tree, rho, True, stream))[:n],
            emdtree.emd_hvp(p64[:n], q64[:n], v64[:n], tree, rho=rho, check_inputs=False))
    rv2, rg2 = emdtree.emd_value_and_grad(p64[:n], q64[:n], tree, rho=2.0, check_inputs=False)
    for name in ("torch sparse A (p - q), A^T c rho=2", "torch index_add_ by level rho=2",
                 "emdtree public API value+grad rho=2 (torch tensors)"):
        if name in fns:
            value, grad = fns[name]()
            checks[name] = max(rel_diff(host(value)[:n, None], rv2[:, None]), rel_diff(host(grad)[:n], rg2))

    timings = time_round_robin(torch, fns, args.repeat, warmup=3, burst=args.burst)
    if args.pot:
        import ot

        M = torch.as_tensor(tree.distance_matrix(), dtype=tdtype, device=device)
        timings.update(time_pot(torch, ot, p, q, M, args.pot_pairs, max(3, args.repeat // 20)))
    results = []
    for name, t in timings.items():
        tol = (TOLERANCE if name.startswith("emdtree") else TORCH_TOLERANCE)[dtype]
        err = checks.get(name)
        results.append({"dtype": dtype, "batch": batch, "method": name, **t, "max_rel_diff_vs_cpu": err,
                        "agrees": None if err is None else bool(err <= tol)})
    return results, notes


def print_results(results, notes):
    base = {}
    for r in results:
        if r["method"] == "emdtree kernel value+grad rho=2":
            base[(r["dtype"], r["batch"])] = r["median_ms"]
    rows = []
    for r in results:
        ref = base.get((r["dtype"], r["batch"]))
        err = r.get("max_rel_diff_vs_cpu")
        rows.append([
            r["dtype"], str(r["batch"]), r["method"], fmt_ms(r["median_ms"]),
            f"{fmt_ms(r['p10_ms'])}-{fmt_ms(r['p90_ms'])}",
            fmt_ms(r["back_to_back_ms"]) if "back_to_back_ms" in r else "-",
            f"{r['host_us']:.0f}" if "host_us" in r else "-",
            f"{r['median_ms'] / ref:.2f}" if ref else "-",
            "-" if err is None else f"{err:.1e}{'' if r['agrees'] else ' (!)'}",
        ])
    print_table(["dtype", "batch", "method", "median ms", "p10-p90 ms", "back-to-back ms", "host us",
                 "x kernel", "rel diff vs CPU"], rows, right={1, 3, 4, 5, 6, 7})
    for k, v in notes.items():
        print(f"{k}: {v}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="float32, batch 512, fewer repeats and POT pairs")
    ap.add_argument("--json", metavar="PATH", help="also write the results and machine info as JSON")
    ap.add_argument("--batches", type=int, nargs="+", default=None, help="batch sizes (default 512 8192)")
    ap.add_argument("--dtypes", nargs="+", choices=["float32", "float64"], default=None)
    ap.add_argument("--repeat", type=int, default=None, help="timed calls per method (default 200, quick 50)")
    ap.add_argument("--burst", type=int, default=50, help="queued calls for the back-to-back time")
    ap.add_argument("--check-rows", type=int, default=256, help="rows checked against the CPU kernels")
    ap.add_argument("--pot-pairs", type=int, default=None,
                    help="pairs timed one at a time (default 16, quick 4)")
    ap.add_argument("--no-pot", dest="pot", action="store_false", help="skip POT's Sinkhorn")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, seconds: checks the script runs")
    args = ap.parse_args(argv)
    if args.smoke:
        args.quick, args.batches, args.repeat, args.burst, args.check_rows, args.pot_pairs = \
            True, [64], 3, 3, 16, 1

    found = gpu_or_reason()
    if isinstance(found, str):
        print(f"bench_gpu: nothing to measure: {found}")
        return 0
    torch, cuda = found
    if args.pot:
        try:
            import ot  # noqa: F401
        except ImportError:
            args.pot = False
    args.batches = args.batches or ([512] if args.quick else [512, 8192])
    args.dtypes = args.dtypes or (["float32"] if args.quick else ["float32", "float64"])
    args.repeat = args.repeat or (50 if args.quick else 200)
    args.pot_pairs = args.pot_pairs or (4 if args.quick else 16)

    info = machine_info()
    dev = cuda.get_current_device()
    import importlib.metadata

    info.update({
        "gpu": torch.cuda.get_device_name(), "gpu_compute_capability": list(dev.compute_capability),
        "torch": torch.__version__, "torch_cuda": torch.version.cuda,
        "numba_cuda": importlib.metadata.version("numba-cuda"),
    })
    print_machine(info)
    print(f"GPU: {info['gpu']} (compute capability {dev.compute_capability}), torch {info['torch']} "
          f"(CUDA {info['torch_cuda']}), numba-cuda {info['numba_cuda']}")
    tree = imagenet_wordnet()
    print(f"ImageNet WordNet tree: {tree.n_nodes} nodes, {tree.n_bins} bins, depth {tree.depth}; "
          f"p softmax rows, q random rows; {args.repeat} timed calls per method")
    results, notes = [], {}
    for dtype in args.dtypes:
        for batch in args.batches:
            res, note = run_case(torch, cuda, tree, dtype, batch, args)
            results += res
            notes.update(note)
    print_results(results, notes)
    bad = [r["method"] for r in results if r["agrees"] is False]
    if bad:
        print("DISAGREE with the CPU kernels: " + ", ".join(sorted(set(bad))))
    if args.json:
        write_json(args.json, {"benchmark": "bench_gpu", "machine": info, "args": vars(args),
                               "results": results})
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
