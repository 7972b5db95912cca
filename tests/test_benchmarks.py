"""The benchmark scripts keep a smoke mode that CI runs (``benchmarks/run_smoke.py``).

The smoke runs themselves are CI's (they take minutes in all); here only the
scripts' source is read, so these checks cost milliseconds.
"""

from __future__ import annotations

import ast
import importlib.util
import pathlib

import pytest

BENCH = pathlib.Path(__file__).resolve().parents[1] / "benchmarks"
SCRIPTS = sorted(BENCH.glob("bench_*.py"))


def _options(tree: ast.AST) -> set[str]:
    """The option strings of every ``add_argument`` call in a module."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                and node.func.attr == "add_argument":
            found.update(a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str))
    return found


def _reads_smoke(tree: ast.AST) -> bool:
    return any(isinstance(node, ast.Attribute) and node.attr == "smoke" for node in ast.walk(tree))


def test_there_are_scripts():
    assert len(SCRIPTS) >= 10


@pytest.mark.parametrize("path", SCRIPTS, ids=[p.name for p in SCRIPTS])
def test_every_script_has_a_smoke_mode(path):
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    assert "--smoke" in _options(tree), f"{path.name} has no --smoke option"
    assert _reads_smoke(tree), f"{path.name} accepts --smoke but never reads args.smoke"


@pytest.mark.parametrize("path", SCRIPTS, ids=[p.name for p in SCRIPTS])
def test_every_script_prints_the_machine(path):
    """Figures come with the CPU model and its vector ISA (``_common.print_machine``)."""
    assert "print_machine(" in path.read_text(encoding="utf-8"), f"{path.name} does not print the machine"


def test_run_smoke_finds_every_script():
    spec = importlib.util.spec_from_file_location("run_smoke", BENCH / "run_smoke.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert [pathlib.Path(p) for p in module.scripts()] == SCRIPTS
    assert [pathlib.Path(p).name for p in module.scripts("pairwise")] == ["bench_pairwise.py"]


def test_the_smoke_check_sees_a_missing_option(tmp_path):
    """The check above fails for a script without the option (it can fail)."""
    source = "import argparse\nap = argparse.ArgumentParser()\nap.add_argument('--quick')\n"
    tree = ast.parse(source)
    assert "--smoke" not in _options(tree) and not _reads_smoke(tree)
