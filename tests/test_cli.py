"""The ``emdtree`` command line (``emdtree/__main__.py``)."""

import subprocess
import sys

import pytest

from emdtree.__main__ import main


def test_demo(capsys):
    assert main(["demo", "--batch", "64", "--seed", "3"]) == 0
    out = capsys.readouterr().out
    assert "ImageNet WordNet tree: 1371 nodes, 1000 bins" in out
    # one-hot EMD equals the tree distance: tabby -> tiger cat is 2 edges
    line = next(s for s in out.splitlines() if s.split()[:3] == ["tabby", "tiger", "cat"])
    assert line.split()[3:6] == ["2", "2", "2"]
    assert "airliner" in out
    good = next(s for s in out.splitlines() if s.strip().startswith("good:"))
    bad = next(s for s in out.splitlines() if s.strip().startswith("bad:"))
    # same accuracy, smaller EMD for the model whose mistakes stay near the truth
    assert good.split()[-4] == bad.split()[-4]
    assert float(good.split()[-2]) < float(bad.split()[-2])
    assert float(good.split()[-1]) < float(bad.split()[-1])
    assert "EMD^2 value and gradient for the batch of 64 (float32)" in out


def test_info(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    for key in ("emdtree", "numpy", "numba", "scipy", "Numba threading layer", "Numba threads",
                "numba-cuda", "CUDA GPU", "Numba cache"):
        assert any(line.startswith(key + " ") for line in out.splitlines()), key


@pytest.mark.parametrize("argv", [["demo", "--batch", "0"], ["demo", "--seed", "x"], ["nonsense"]])
def test_bad_arguments(argv, capsys):
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("emdtree: error:")


def test_module_runs():
    result = subprocess.run([sys.executable, "-m", "emdtree", "demo", "--batch", "32"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "Same accuracy, different EMD" in result.stdout
