"""The guide's named examples for the frameworks (``.. code-block:: python`` with a
``:name:``) run as written, each in a fresh interpreter, where their packages are
installed; the Sphinx build shows them whatever is installed."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from importlib.util import find_spec

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(ROOT, "docs")

# name of the block -> (page, packages it needs, what must hold afterwards, in its namespace)
EXAMPLES = {
    "keras-emd2-ce": ("losses.rst", ["tensorflow", "keras"],
                      "history.history['loss'][-1] < 0.5 * history.history['loss'][0]"),
    "optax-training-loop": ("losses.rst", ["jax", "optax"], "losses[-1] < 0.5 * losses[0]"),
    "ordinal-dlordinal": ("ordinal.rst", ["torch", "dlordinal"],
                          "abs(a.item() - b.item()) <= 1e-15 * abs(b.item()) "
                          "and (grad_a - grad_b).abs().max().item() <= 1e-14 * grad_b.abs().max().item()"),
}


def named_blocks(text: str) -> dict[str, str]:
    """``{name: code}`` of the ``.. code-block:: python`` blocks with a ``:name:`` option."""
    blocks = {}
    pattern = re.compile(r"^(?P<indent>[ ]*)\.\. code-block:: python\n"
                         r"(?P<options>(?:(?P=indent)   :\w+:.*\n)+)\n"
                         r"(?P<body>(?:(?:(?P=indent)   .*)?\n)+)", re.MULTILINE)
    for match in pattern.finditer(text):
        name = re.search(r":name: *(\S+)", match["options"])
        if name is None:
            continue
        lines = match["body"].splitlines()
        indent = min(len(line) - len(line.lstrip()) for line in lines if line.strip())
        blocks[name.group(1)] = "\n".join(line[indent:] for line in lines).strip() + "\n"
    return blocks


def test_named_blocks():
    text = ("x\n\n.. code-block:: python\n   :name: one\n\n   a = 1\n\n   b = a\n\nafter\n"
            "   .. code-block:: python\n      :name: two\n\n      c = 2\n\n"
            ".. code-block:: python\n\n   d = 3\n")
    assert named_blocks(text) == {"one": "a = 1\n\nb = a\n", "two": "c = 2\n"}


def test_every_named_example_is_listed():
    found = {}
    for page in sorted(os.listdir(DOCS)):
        if page.endswith(".rst"):
            with open(os.path.join(DOCS, page), encoding="utf-8") as fh:
                found.update({name: page for name in named_blocks(fh.read())})
    assert found == {name: page for name, (page, _, _) in EXAMPLES.items()}


_RUNNER = r"""
import json, sys
code, check = json.loads(sys.stdin.read())
ns = {"__name__": "__main__"}
exec(compile(code, "<example>", "exec"), ns)
print(json.dumps(bool(eval(check, ns))))
"""


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_example_runs(name):
    page, packages, check = EXAMPLES[name]
    for package in packages:
        if find_spec(package) is None:
            pytest.skip(f"{name} needs {package}")
    with open(os.path.join(DOCS, page), encoding="utf-8") as fh:
        code = named_blocks(fh.read())[name]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run([sys.executable, "-c", _RUNNER], input=json.dumps([code, check]),
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) is True, check
