"""Run bench_table1, bench_fig3 and bench_peers and write their outputs for the docs.

    python benchmarks/run_all.py --quick   # about 12 minutes on a loaded 2-core machine
    python benchmarks/run_all.py           # full runs: expect most of an hour on 2 cores,
                                           # mostly bench_fig3's log variant at large lambda

Writes into ``docs/_static/benchmarks/`` (``--out`` to change): one JSON file
per script, the Figure 3 PNG, one reStructuredText table per script
(``table1.txt``, ``fig3.txt``, ``peers.txt``) and ``machine.txt``, which
``docs/benchmarks.rst`` includes (``.txt``, so that Sphinx does not take them
for pages of their own).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_OUT = os.path.join(HERE, os.pardir, "docs", "_static", "benchmarks")


def rst_table(headers: list[str], rows: list[list[str]]) -> str:
    """A reStructuredText grid table (cells may be empty)."""
    cells = [headers] + rows
    widths = [max(len(str(r[i])) for r in cells) or 1 for i in range(len(headers))]

    def sep(ch):
        return "+" + "+".join(ch * (w + 2) for w in widths) + "+\n"

    def line(r):
        return "|" + "|".join(f" {str(c):<{w}} " for c, w in zip(r, widths)) + "|\n"

    out = sep("-") + line(headers) + sep("=")
    for r in rows:
        out += line(r) + sep("-")
    return out


def write_rst(path: str, headers: list[str], rows: list[list[str]]) -> None:
    """Write :func:`rst_table` to ``path`` for the docs page to include."""
    with open(path, "w", encoding="utf-8") as f:
        f.write(rst_table(headers, rows))
    print(f"wrote {path}")


def machine_rst(info: dict) -> str:
    load = ", ".join(f"{x:.2f}" for x in info.get("load_average") or [])
    return (
        f"Measured on {info['date']}: {info['cpu_model']}, {info['cpus_usable']} usable CPUs of "
        f"{info['cpu_count']} (load average at the start {load}), {info['platform']}; Python "
        f"{info['python']}, emdtree {info['emdtree']}, NumPy {info['numpy']}, Numba {info['numba']} "
        f"({info['numba_default_threads']} threads, layer {info['numba_threading_layer']}), SciPy "
        f"{info['scipy']}, POT {info['pot']}.\n"
    )


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="pass --quick to every script")
    ap.add_argument("--out", default=DEFAULT_OUT, help="output folder (default docs/_static/benchmarks)")
    ap.add_argument("--only", nargs="*", choices=("table1", "fig3", "peers"), default=None,
                    help="run only these scripts")
    args = ap.parse_args(argv)
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    sys.path.insert(0, HERE)
    from _common import machine_info

    with open(os.path.join(out, "machine.txt"), "w", encoding="utf-8") as f:
        f.write(machine_rst(machine_info()))
    failed = []
    for name in args.only or ("table1", "fig3", "peers"):
        cmd = [sys.executable, os.path.join(HERE, f"bench_{name}.py"),
               "--json", os.path.join(out, f"{name}.json"), "--rst", os.path.join(out, f"{name}.txt")]
        if name == "fig3":
            cmd += ["--plot-dir", out]
        if args.quick:
            cmd.append("--quick")
        shown = ["python"] + [os.path.relpath(c) if os.path.isabs(c) else c for c in cmd[1:]]
        print(f"\n=== {' '.join(shown)}", flush=True)
        t0 = time.perf_counter()
        rc = subprocess.call(cmd, cwd=HERE)
        print(f"=== bench_{name}: exit status {rc}, {time.perf_counter() - t0:.0f} s", flush=True)
        if rc:
            failed.append(name)
    if failed:
        print("failed:", ", ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
