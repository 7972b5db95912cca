"""Run every benchmark script's smoke mode: each ``benchmarks/bench_*.py --smoke`` in
its own interpreter (two at a time, ``-j``), with a time limit, and one status line
per script.

A smoke run uses tiny sizes and takes seconds: it checks that the script still
runs against the library as it is (imports, call signatures, result checks),
not its figures. A script whose optional package or GPU is missing prints one
line saying so and exits with status 0. The scripts are found by name
(``bench_*.py`` next to this file), so a new script is run without listing it.

    python benchmarks/run_smoke.py                # every script
    python benchmarks/run_smoke.py -k pairwise    # the scripts whose name holds "pairwise"

Exits with status 1 when a script fails or runs past ``--timeout``.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import glob
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def scripts(pattern: str | None = None) -> list[str]:
    """The benchmark scripts, sorted by name, those holding ``pattern`` only when given."""
    found = sorted(glob.glob(os.path.join(HERE, "bench_*.py")))
    return [path for path in found if pattern is None or pattern in os.path.basename(path)]


def last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _smoke(path: str, root: str, env: dict, timeout: float) -> tuple[int | None, str, str, str, float]:
    """Run one script's smoke mode: (exit status, status text, output, stdout, seconds)."""
    t0 = time.perf_counter()
    try:
        run = subprocess.run([sys.executable, path, "--smoke"], cwd=root, env=env, capture_output=True,
                             text=True, timeout=timeout)
        output, stdout, code = run.stdout + run.stderr, run.stdout, run.returncode
        status = "ok" if code == 0 else f"FAILED (exit status {code})"
    except subprocess.TimeoutExpired as exc:
        output = "".join(x.decode(errors="replace") if isinstance(x, bytes) else (x or "")
                         for x in (exc.stdout, exc.stderr))
        code, status, stdout = None, f"FAILED (ran past {timeout:g} s)", ""
    return code, status, output, stdout, time.perf_counter() - t0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-k", dest="pattern", default=None, help="run only the scripts whose name holds this")
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds per script (default 300)")
    ap.add_argument("-j", "--jobs", type=int, default=2, help="scripts run at once (default 2)")
    ap.add_argument("-v", "--verbose", action="store_true", help="print every script's output")
    args = ap.parse_args(argv)

    paths = scripts(args.pattern)
    if not paths:
        print(f"no benchmark script matches {args.pattern!r}")
        return 1
    root = os.path.dirname(HERE)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    # POT loads every framework it finds for its backends (seconds each); the scripts use its NumPy one
    for framework in ("TENSORFLOW", "JAX", "CUPY"):
        env.setdefault(f"POT_BACKEND_DISABLE_{framework}", "1")
    width = max(len(os.path.basename(p)) for p in paths)
    failed = []
    start = time.perf_counter()
    # two scripts at a time: a smoke run checks that a script runs, not its figures
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        runs = [pool.submit(_smoke, path, root, env, args.timeout) for path in paths]
        for path, run in zip(paths, runs):
            name = os.path.basename(path)
            code, status, output, stdout, seconds = run.result()
            note = f"  {last_line(stdout)[:80]}" if code == 0 else ""
            print(f"{name:<{width}}  {seconds:6.1f} s  {status}{note}", flush=True)
            if args.verbose or code != 0:
                tail = output.splitlines()[-40:] if code != 0 else output.splitlines()
                print("\n".join("    " + line for line in tail), flush=True)
            if code != 0:
                failed.append(name)
    total = time.perf_counter() - start
    print(f"{len(paths) - len(failed)} of {len(paths)} smoke runs passed in {total:.0f} s"
          + (": failed " + ", ".join(failed) if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
