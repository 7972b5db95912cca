"""Time to the first results in a new Python process, cold and warm.

Runs, each in a fresh interpreter and timed from the outside (what ``time``
shows a user):

* the README's "Ten lines" block (read from README.rst), statement by
  statement, so that import, tree loading and the first calls are timed apart;
* ``python -m emdtree demo``;
* a weighted UniFrac matrix of 100 samples on the ImageNet tree
  (:func:`emdtree.pairwise`).

Each in three states of Numba's cache (``NUMBA_CACHE_DIR``):

* ``cold``: an empty cache, as after ``pip install``; first calls run NumPy
  code for calls below a size (emdtree.engine.tiers), kernels above it;
* ``cold, eager``: an empty cache with ``EMDTREE_JIT=eager``: every kernel a
  call needs is compiled on the spot (what every first call cost before);
* ``warm``: a cache that holds the kernels (filled by the eager runs).

The kernels compiled in each run are listed with their compile times (a
kernel's time includes the helpers it compiles).

    python benchmarks/bench_startup.py [--runs 2] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import re
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]

CHILD = r"""
import ast, json, sys, time
t_start = time.perf_counter()
from numba.core import event

compiles = []
starts = {}

class Listener(event.Listener):
    def on_start(self, ev):
        starts[id(ev.data["dispatcher"]), str(ev.data["args"])] = time.perf_counter()
    def on_end(self, ev):
        d = ev.data["dispatcher"]
        t = time.perf_counter() - starts.pop((id(d), str(ev.data["args"])))
        compiles.append([d.py_func.__module__ + "." + d.py_func.__qualname__, round(t, 3), depth[0]])

depth = [0]
class Depth(event.Listener):
    def on_start(self, ev): depth[0] += 1
    def on_end(self, ev): depth[0] -= 1

event.register("numba:compile", Depth())
event.register("numba:compile", Listener())
mode, payload = sys.argv[1], sys.argv[2]
phases = []
if mode == "script":
    env = {"__name__": "__main__"}
    for node in ast.parse(payload).body:
        code = compile(ast.Module([node], []), "<readme>", "exec")
        t0 = time.perf_counter()
        exec(code, env)
        phases.append([ast.get_source_segment(payload, node).splitlines()[0][:60], time.perf_counter() - t0])
else:
    from emdtree.__main__ import main
    import io, contextlib
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        main(payload.split())
    phases.append([payload, time.perf_counter() - t0])
# top-level compilations only: Depth has counted the end of this one already
print(json.dumps({"phases": phases, "compiles": [c[:2] for c in compiles if c[2] == 0]}))
"""


PAIRWISE = """\
import numpy as np
import emdtree
tree = emdtree.datasets.imagenet_wordnet()
counts = np.random.default_rng(0).poisson(0.5, size=(100, tree.n_bins))
D = emdtree.pairwise(counts, tree=tree, normalize="l1")
"""


def readme_block(title: str) -> str:
    """The first Python code block after the section titled ``title`` in README.rst."""
    text = (ROOT / "README.rst").read_text(encoding="utf-8")
    section = text[text.index(f"\n{title}\n"):]
    match = re.search(r"\.\. code-block:: python\n\n((?:    .*\n|\n)+)", section)
    return "\n".join(line[4:] for line in match.group(1).splitlines()).strip() + "\n"


def run_child(mode: str, payload: str, cache_dir: str, eager: bool) -> dict:
    env = dict(os.environ, NUMBA_CACHE_DIR=cache_dir)
    env.pop("EMDTREE_JIT", None)
    if eager:
        env["EMDTREE_JIT"] = "eager"
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", CHILD, mode, payload], env=env, capture_output=True,
                         text=True, check=True, cwd=ROOT)
    wall = time.perf_counter() - t0
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["wall_s"] = wall
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2, help="runs per case and state (median reported)")
    parser.add_argument("--json", default=None)
    parser.add_argument("--smoke", action="store_true",
                        help="the README block once, cold cache: checks the script runs")
    args = parser.parse_args()
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from _common import machine_info, print_machine

    print_machine(machine_info())
    cases = [("Ten lines", "script", readme_block("Ten lines")), ("emdtree demo", "cli", "demo"),
             ("pairwise 100", "script", PAIRWISE)]
    states = ("cold", "cold, eager", "warm")
    if args.smoke:
        cases, states, args.runs = cases[:1], states[:1], 1
    rows, record = [], []
    for name, mode, payload in cases:
        warm_dir = tempfile.mkdtemp(prefix="emdtree-warm-")
        for state in states:
            runs = []
            for _ in range(args.runs):
                if state == "warm":
                    cache = warm_dir
                else:
                    cache = tempfile.mkdtemp(prefix="emdtree-cold-")
                res = run_child(mode, payload, cache, eager=state != "cold")
                if state == "cold, eager" and not os.listdir(warm_dir):
                    run_child(mode, payload, warm_dir, eager=True)  # fills the warm cache
                runs.append(res)
            walls = [r["wall_s"] for r in runs]
            compiles = runs[-1]["compiles"]
            total_compile = sum(t for _, t in compiles)
            rows.append([name, state, statistics.median(walls), min(walls), max(walls), len(compiles),
                         total_compile])
            record.append({"case": name, "state": state, "runs": runs})
            print(f"{name:14s} {state:12s} wall median {statistics.median(walls):5.2f} s "
                  f"(runs {', '.join(f'{w:.2f}' for w in walls)}); {len(compiles)} kernels compiled, "
                  f"{total_compile:.2f} s", flush=True)
            for label, t in runs[-1]["phases"]:
                if t >= 0.02:
                    print(f"{'':29s}{t:6.2f} s  {label}")
            for kernel, t in sorted(compiles, key=lambda c: -c[1])[:6]:
                print(f"{'':29s}{t:6.2f} s  compile {kernel}")
    print()
    print(f"{'case':14s}  {'cache':12s}  {'median s':>8s}  {'min':>5s}  {'max':>5s}  {'kernels':>7s}  "
          f"{'compile s':>9s}")
    for name, state, med, lo, hi, n, tc in rows:
        print(f"{name:14s}  {state:12s}  {med:8.2f}  {lo:5.2f}  {hi:5.2f}  {n:7d}  {tc:9.2f}")
    print("wall: whole interpreter, from the outside; compile: top-level Numba compilations in the last run")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump({"results": record, "python": sys.version}, fh, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
