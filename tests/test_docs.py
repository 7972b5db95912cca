"""Documentation: public docstrings, the examples in the user guide, the figure scripts.

The Sphinx build itself is not run here (it takes tens of seconds); see
``docs/conf.py`` for the command.
"""

import doctest
import importlib
import importlib.util
import inspect
import json
import os
import re
import subprocess
import sys
import warnings

import numpy as np
import pytest

import emdtree

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(ROOT, "docs")
FIGURES = os.path.join(DOCS, "figures")

# Guide pages whose ``>>>`` examples are run (pages written elsewhere are not listed).
GUIDE_PAGES = [
    "index.rst",
    "math.rst",
    "trees.rst",
    "numerics.rst",
    "comparison.rst",
    "losses.rst",
    "ordinal.rst",
    "metrics.rst",
    "unifrac.rst",
    "scaling.rst",
    "deployment.rst",
    "gpu.rst",
    "gallery.rst",
]

# Public objects whose docstrings do not yet have every section checked below.
# Each is an expected failure; a strict xfail turns into an error as soon as the
# docstring is completed, and the entry must then be removed.
INCOMPLETE_DOCSTRINGS: dict[str, str] = {}


# --------------------------------------------------------------------- public docstrings


# Public modules whose ``__all__`` is checked as well; the framework modules are
# skipped where their framework is not installed.
PUBLIC_MODULES = ["io", "metrics", "torch", "tensorflow", "jax"]

# Framework hooks (torch's forward and extra_repr, Keras' call, get_config and
# from_config) are described by the docstring of their class, as in docs/conf.py.
FRAMEWORK_HOOKS = {"forward", "extra_repr", "call", "get_config", "from_config"}


def _import_public_module(name):
    """``emdtree.<name>``, or None if it (or the framework it needs) does not import."""
    with warnings.catch_warnings():
        # frameworks may warn about their own dependencies while they load
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        try:
            return importlib.import_module(f"emdtree.{name}")
        except ImportError:
            return None


def _with_methods(name, obj, skip=()):
    out = [(name, obj)]
    if inspect.isclass(obj):
        for member, value in vars(obj).items():
            if member.startswith("_") or member in skip:
                continue
            func = value.__func__ if isinstance(value, (classmethod, staticmethod)) else value
            if inspect.isfunction(func):
                out.append((f"{name}.{member}", getattr(obj, member)))
    return out


def _public_objects():
    """``(name, object)`` for every function and class in ``emdtree.__all__``, in
    the ``__all__`` of the modules in ``PUBLIC_MODULES`` (named ``module.name``),
    the public methods of those classes, the functions of ``emdtree.datasets`` and
    :class:`emdtree.distances.sinkhorn.SinkhornResult`."""
    out = []
    for name in emdtree.__all__:
        if name.startswith("__"):
            continue
        try:
            obj = getattr(emdtree, name)
        except ImportError:  # a lazily loaded part that is not installed
            continue
        if inspect.ismodule(obj):
            continue
        out.extend(_with_methods(name, obj))
    for name in emdtree.datasets.__all__:
        out.append((f"datasets.{name}", getattr(emdtree.datasets, name)))
    for module_name in PUBLIC_MODULES:
        module = _import_public_module(module_name)
        if module is None:
            continue
        for name in module.__all__:
            out.extend(_with_methods(f"{module_name}.{name}", getattr(module, name), skip=FRAMEWORK_HOOKS))
    return out


def _marked(name):
    if name in INCOMPLETE_DOCSTRINGS:
        return pytest.param(name, marks=pytest.mark.xfail(reason=INCOMPLETE_DOCSTRINGS[name], strict=True))
    return name


PUBLIC = dict(_public_objects())


def _documented_parameters(doc):
    names = []
    for param in doc["Parameters"]:
        names.extend(part.strip().lstrip("*") for part in param.name.split(","))
    return [n for n in names if n]


def _signature_parameters(obj):
    # for a class, the signature of calling it: __init__, or __new__ of a named tuple
    params = inspect.signature(obj).parameters.values()
    return [p.name for p in params if p.name not in ("self", "cls")]


def test_public_objects_are_found():
    # guards against the collection above silently finding nothing
    for name in ("emd", "emd_value_and_grad", "emd_grad", "phi", "emd_hvp", "emd_hessian", "Tree",
                 "Tree.from_newick", "datasets.imagenet_wordnet", "io.read_tree", "io.Table",
                 "metrics.report", "metrics.HierarchicalMetrics.update", "SinkhornResult"):
        assert name in PUBLIC
    for module_name in ("torch", "tensorflow", "jax"):
        if _import_public_module(module_name) is not None:
            assert f"{module_name}.emd_loss" in PUBLIC
    assert not any(name.endswith((".forward", ".call")) for name in PUBLIC)


@pytest.mark.parametrize("name", [_marked(n) for n in PUBLIC])
def test_docstring_sections(name):
    docscrape = pytest.importorskip("numpydoc.docscrape")
    obj = PUBLIC[name]
    assert obj.__doc__, f"{name} has no docstring"
    doc = docscrape.ClassDoc(obj, config={"show_class_members": False}) if inspect.isclass(obj) \
        else docscrape.FunctionDoc(obj)
    assert doc["Summary"], f"{name}: no one-line summary"
    assert doc["Examples"], f"{name}: no Examples section"
    assert ">>>" in "\n".join(doc["Examples"]), f"{name}: the Examples section has no doctest"
    documented = _documented_parameters(doc)
    expected = _signature_parameters(obj)
    assert sorted(documented) == sorted(expected), (
        f"{name}: documented parameters {documented} do not match the signature {expected}"
    )
    if not inspect.isclass(obj):
        returns = inspect.signature(obj).return_annotation
        if returns not in (None, "None", inspect.Signature.empty):
            assert doc["Returns"], f"{name}: returns a value but has no Returns section"


def test_documented_parameters_are_read_in_groups():
    docscrape = pytest.importorskip("numpydoc.docscrape")

    def f(p, q, tree=None):
        """Summary.

        Parameters
        ----------
        p, q : array_like
            Masses.

        Examples
        --------
        >>> 1
        1
        """

    doc = docscrape.FunctionDoc(f)
    assert _documented_parameters(doc) == ["p", "q"]
    assert _signature_parameters(f) == ["p", "q", "tree"]


def test_signature_parameters_of_classes():
    class Plain:
        def __init__(self, tree, *, rho=1.0):
            pass

    assert _signature_parameters(Plain) == ["tree", "rho"]
    # a named tuple is built by __new__ (its __init__ is object's)
    assert _signature_parameters(emdtree.io.Matrix) == ["row_ids", "col_ids", "values"]


# --------------------------------------------------------------------- guide examples

_IF_MODULE = re.compile(r"^(?P<indent>[ ]*)\.\. if-module:: (?P<module>\S+)\s*$")


def _module_available(name):
    try:
        importlib.import_module(name)
    except ImportError:
        return False
    return True


def _indent(line):
    return len(line) - len(line.lstrip(" "))


def strip_missing_modules(text, available=_module_available):
    """The examples of an rst page as Sphinx renders it: without the
    ``.. if-module::`` blocks whose module does not import.

    Blocks without examples are dropped unseen, so that their modules (a deep
    learning framework, say) are not imported only to be checked.
    """
    lines = text.splitlines(keepends=True)
    out = []
    i = 0
    while i < len(lines):
        match = _IF_MODULE.match(lines[i])
        if match is None:
            out.append(lines[i])
            i += 1
            continue
        indent = len(match["indent"])
        end = i + 1
        while end < len(lines) and (not lines[end].strip() or _indent(lines[end]) > indent):
            end += 1
        block = lines[i:end]
        if any(">>>" in line for line in block) and available(match["module"]):
            out.extend(block)
        i = end
    return "".join(out)


def test_strip_missing_modules():
    text = (
        "intro\n"
        ".. if-module:: absent\n"
        "\n"
        "   >>> 1 + 1\n"
        "   3\n"
        "\n"
        "after\n"
        ".. if-module:: present\n"
        "\n"
        "   >>> 2\n"
        "   2\n"
        ".. if-module:: never_imported\n"
        "\n"
        "   text only\n"
        "end\n"
    )
    asked = []

    def available(name):
        asked.append(name)
        return name == "present"

    out = strip_missing_modules(text, available=available)
    assert out == "intro\nafter\n.. if-module:: present\n\n   >>> 2\n   2\nend\n"
    assert asked == ["absent", "present"]


@pytest.mark.parametrize("page", GUIDE_PAGES)
def test_guide_examples(page):
    path = os.path.join(DOCS, page)
    with open(path, encoding="utf-8") as fh:
        text = strip_missing_modules(fh.read())
    parser = doctest.DocTestParser()
    test = parser.get_doctest(text, {}, page, path, 0)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    report = []
    runner.run(test, out=report.append)
    assert runner.failures == 0, "".join(report)


def test_guide_figures_exist_and_are_made_by_the_script():
    sys.path.insert(0, FIGURES)
    try:
        make_figures = importlib.import_module("make_figures")
    finally:
        sys.path.remove(FIGURES)
    referenced = set()
    for page in GUIDE_PAGES:
        with open(os.path.join(DOCS, page), encoding="utf-8") as fh:
            referenced |= set(re.findall(r"_static/figures/([\w.-]+\.png)", fh.read()))
    assert referenced, "no figure is shown in the guide"
    assert referenced <= set(make_figures.FIGURES), referenced - set(make_figures.FIGURES)
    for name in referenced:
        assert os.path.getsize(os.path.join(DOCS, "_static", "figures", name)) > 1000, name


# --------------------------------------------------------------------- figure scripts


@pytest.fixture(scope="module")
def figures():
    sys.path.insert(0, FIGURES)
    try:
        yield {name: importlib.import_module(name)
               for name in ("fig_gradients", "fig_tree", "fig_shift", "fig_ordinal")}
    finally:
        sys.path.remove(FIGURES)


def test_tree_positions(figures):
    fig_tree = figures["fig_tree"]
    tree = emdtree.Tree.from_nested({"a": {"b": ["c", "d", "e"], "f": None}, "g": ["h"]})
    xy = fig_tree.tree_positions(tree)
    assert xy.shape == (tree.n_nodes, 2)
    # leaves evenly spaced, in the order of the bins (pre-order of from_nested)
    np.testing.assert_array_equal(xy[tree.bins, 0], np.arange(tree.n_bins))
    depth = np.zeros(tree.n_nodes)
    for node in range(tree.n_nodes):
        parent = tree.parents[node]
        while parent >= 0:
            depth[node] += 1
            parent = tree.parents[parent]
    np.testing.assert_array_equal(xy[:, 1], -depth)
    for node in range(tree.n_nodes):
        kids = np.flatnonzero(tree.parents == node)
        if kids.size:
            assert xy[node, 0] == 0.5 * (xy[kids[0], 0] + xy[kids[-1], 0])


def test_tree_positions_bins_on_internal_nodes(figures):
    tree = emdtree.Tree.from_parents([-1, 0, 0, 1, 1], bins=[1, 3, 4, 2])
    xy = figures["fig_tree"].tree_positions(tree)
    np.testing.assert_array_equal(xy[[3, 4, 2], 0], [0.0, 1.0, 2.0])
    assert xy[1, 0] == 0.5 and xy[0, 0] == 1.25


def test_tree_example_flows(figures):
    fig_tree = figures["fig_tree"]
    tree, p, q = fig_tree.example()
    assert p.sum() == pytest.approx(1.0) and q.sum() == 1.0
    f = fig_tree.flows(tree, p, q)
    assert f["phi"][tree.root] == pytest.approx(0.0, abs=1e-12)
    for key in ("grad1", "grad2"):
        assert f[key].sum() == pytest.approx(0.0, abs=1e-12)
    # the label's bin is where mass must go: the most negative gradient
    assert tree.names[int(np.argmin(f["grad2"]))] == "tiger"


def test_chain_gradients(figures):
    fig_gradients = figures["fig_gradients"]
    p, q = fig_gradients.masses(16)
    assert p.shape == q.shape == (16,)
    assert p.sum() == pytest.approx(1.0) and q.sum() == pytest.approx(1.0)
    assert np.all(p > 0)  # the Sinkhorn gradient is -inf on empty bins
    grads = fig_gradients.gradients(p, q)
    assert {"MSE", "EMD ($\\rho = 1$)", "EMD$^2$ ($\\rho = 2$)"} <= set(grads)
    for name, g in grads.items():
        assert g.shape == (16,) and np.all(np.isfinite(g)), name
        assert g.sum() == pytest.approx(0.0, abs=1e-9), name
    np.testing.assert_allclose(grads["EMD$^2$ ($\\rho = 2$)"], emdtree.emd_grad(p, q, rho=2.0))


def test_shift_curves(figures):
    c = figures["fig_shift"].curves(n_bins=48, width=1.5, max_shift=20)
    np.testing.assert_array_equal(c["shift"], np.arange(21))
    # a bump moved by s bins, far from the ends: every unit of mass travels s
    np.testing.assert_allclose(c["EMD"], c["shift"], atol=1e-6)
    assert c["EMD2"][0] == c["MSE"][0] == 0.0
    assert np.all(np.diff(c["EMD2"]) > 0)
    # MSE no longer grows once the bumps stop overlapping
    assert c["MSE"][20] == pytest.approx(c["MSE"][15], rel=1e-6)


def test_ordinal_curves(figures):
    fig_ordinal = figures["fig_ordinal"]
    p = np.array([0.05, 0.15, 0.2, 0.4, 0.2])
    g = fig_ordinal.cdf_gap(p, label=1)
    assert g["rps"] == pytest.approx(g["emd2"], rel=1e-12) and g["F_q"][0] == 0.0 and g["F_q"][1] == 1.0
    c = fig_ordinal.by_distance(n_classes=7, label=0)
    np.testing.assert_array_equal(c["distance"], np.arange(7))
    assert np.all(np.diff(c["EMD2"]) > 0)  # the farther the mistake, the dearer
    np.testing.assert_allclose(c["cross-entropy"][1:], c["cross-entropy"][1])  # every mistake alike


# --------------------------------------------------------------------- README's first screen


def test_readme_shows_the_set_up_commands_of_ci_first():
    # the test command was at line 198, the install below a 30-line table
    with open(os.path.join(ROOT, "README.rst"), encoding="utf-8") as fh:
        first_screen = fh.read().splitlines()[:25]
    with open(os.path.join(ROOT, ".ci", "run"), encoding="utf-8") as fh:
        ci = fh.read()
    stage_one = ci[ci.index("# 1."):ci.index("# 2.")]
    commands = [line.strip() for line in first_screen if line.startswith("    python -m ")]
    assert commands == ['python -m pip install -e ".[test]"', "python -m pytest"]
    ci_commands = [line.replace(" --quiet", "") for line in stage_one.splitlines()]
    for command in commands:
        assert command in ci_commands, command


# --------------------------------------------------------------------- pages without the frameworks


_STAND_INS = r"""
import inspect, json, sys
sys.path.insert(0, sys.argv[1])
from sphinx.ext.autodoc.mock import mock
import conf

out = {}
with mock(["torch", "tensorflow", "keras", "jax"]):
    import emdtree.jax, emdtree.tensorflow, emdtree.torch
    for module in (emdtree.torch, emdtree.tensorflow, emdtree.jax):
        for name in module.__all__:
            obj = getattr(module, name)
            sig = conf._signature_over_stand_in(None, "class", name, obj, {}, "(*args, **kwargs)", None)
            out[module.__name__ + "." + name] = [inspect.isclass(obj) or inspect.isfunction(obj),
                                                 obj.__doc__ or "", sig and sig[0]]
print(json.dumps({"objects": out, "pages": conf.API_PAGES}))
"""


def test_framework_pages_are_built_without_the_frameworks():
    # the docs' stand-ins of the frameworks: a Keras loss registered by a decorator
    # turned into a stand-in itself, and the API pages were left out of such builds
    pytest.importorskip("sphinx")
    proc = subprocess.run([sys.executable, "-c", _STAND_INS, DOCS], capture_output=True, text=True,
                          cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    objects = found["objects"]
    assert sorted(objects) == ["emdtree.jax.emd_loss", "emdtree.tensorflow.EMDLoss",
                               "emdtree.tensorflow.emd_loss", "emdtree.torch.EMDLoss", "emdtree.torch.emd_loss"]
    for name, (is_object, doc, _) in objects.items():
        assert is_object, f"{name} is a stand-in, not the class or function"
        assert doc.startswith("EMD^rho"), name
    for name in ("emdtree.torch.EMDLoss", "emdtree.tensorflow.EMDLoss"):
        assert objects[name][2].startswith("(tree=None, rho=2.0, "), objects[name][2]
    for page in ("torch", "tensorflow", "jax"):
        assert page in found["pages"]
        assert os.path.exists(os.path.join(DOCS, "api", page + ".rst"))


def _check_docs():
    spec = importlib.util.spec_from_file_location("check_docs", os.path.join(ROOT, ".ci", "check_docs.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_check_docs_names_what_is_missing(tmp_path):
    check = _check_docs()
    pages = {"a.html": (["sec"], ["EMD^rho on a tree"]), "api/b.html": ([], [])}
    (tmp_path / "a.html").write_text('<h1 id="sec">x</h1><p>EMD^rho on\n a <b>tree</b></p>')
    assert check.problems(str(tmp_path), pages) == ["api/b.html: missing"]
    (tmp_path / "api").mkdir()
    (tmp_path / "api" / "b.html").write_text("")
    assert check.problems(str(tmp_path), pages) == []
    (tmp_path / "a.html").write_text('<h1 id="other">x</h1>')
    assert check.problems(str(tmp_path), pages) == ["a.html: no anchor id='sec'",
                                                    "a.html: no text 'EMD^rho on a tree'"]


def test_check_docs_pages_are_pages_of_the_docs():
    for name in _check_docs().PAGES:
        source = name.removesuffix(".html")
        if not source.startswith("api/generated/"):
            assert os.path.exists(os.path.join(DOCS, source + ".rst")), name
