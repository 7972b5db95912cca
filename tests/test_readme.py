"""README.rst: every Python block runs when pasted, in order, into one interpreter.

The blocks run in a fresh subprocess (as a reader's interpreter would be), each in
the namespace the earlier ones left. A block that imports a framework which is not
installed is skipped, and so are the blocks after it that use a name it defines.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from importlib.util import find_spec
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.rst"

# The frameworks a block may need, recognised by its imports.
FRAMEWORK_IMPORT = re.compile(
    r"^\s*(?:import|from)\s+(torch|jax|tensorflow|keras|emdtree\.(?:torch|jax|tensorflow))\b", re.MULTILINE)

_RUNNER = r"""
import json, sys, traceback
blocks = json.loads(sys.stdin.read())
ns = {"__name__": "__main__"}
results = []
for code in blocks:
    if code is None:
        results.append(None)
        continue
    try:
        exec(compile(code, "<README block>", "exec"), ns)
        results.append("ok")
    except BaseException:
        results.append(traceback.format_exc())
print("\n" + json.dumps(results))
"""


def python_blocks(text: str) -> list[str]:
    """The ``.. code-block:: python`` blocks of a reStructuredText document, dedented."""
    blocks = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        if lines[i].strip() == ".. code-block:: python":
            i += 1
            body = []
            while i < len(lines) and (not lines[i].strip() or lines[i].startswith((" ", "\t"))):
                body.append(lines[i])
                i += 1
            indent = min(len(line) - len(line.lstrip()) for line in body if line.strip())
            blocks.append("\n".join(line[indent:] for line in body).strip() + "\n")
        else:
            i += 1
    return blocks


def framework_of(code: str) -> str | None:
    """The top-level module of the first framework the block imports, if any."""
    match = FRAMEWORK_IMPORT.search(code)
    if match is None:
        return None
    name = match.group(1)
    return name.split(".")[1] if name.startswith("emdtree.") else name


BLOCKS = python_blocks(README.read_text(encoding="utf-8"))


def test_readme_has_python_blocks():
    assert len(BLOCKS) >= 3
    assert "emdtree.emd(" in BLOCKS[0]


def test_python_blocks_parser():
    text = "x\n\n.. code-block:: python\n\n    a = 1\n\n    b = a\n\nafter\n.. code-block:: bash\n\n    ls\n"
    assert python_blocks(text) == ["a = 1\n\nb = a\n"]
    assert framework_of("import numpy\nimport jax.numpy as jnp\n") == "jax"
    assert framework_of("from emdtree.torch import EMDLoss\n") == "torch"
    assert framework_of("import numpy as np\n") is None


@pytest.fixture(scope="module")
def readme_run():
    """Run the blocks in order in one interpreter; ``(results, missing)`` per block."""
    missing = [None if (fw := framework_of(code)) is None or find_spec(fw) is not None else fw
               for code in BLOCKS]
    sent = [None if m else code for code, m in zip(BLOCKS, missing)]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run([sys.executable, "-c", _RUNNER], input=json.dumps(sent), capture_output=True,
                          text=True, cwd=ROOT, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    return results, missing


@pytest.mark.parametrize("index", range(len(BLOCKS)), ids=[f"block{i + 1}" for i in range(len(BLOCKS))])
def test_readme_block_runs(readme_run, index):
    results, missing = readme_run
    if missing[index]:
        pytest.skip(f"README block {index + 1} needs {missing[index]}, which is not installed")
    earlier = [i + 1 for i in range(index) if missing[i]]
    result = results[index]
    if result != "ok" and earlier:
        pytest.skip(f"README block {index + 1} builds on block(s) {earlier}, skipped for a missing framework")
    assert result == "ok", f"README block {index + 1} failed:\n{BLOCKS[index]}\n{result}"
