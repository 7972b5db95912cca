"""Sphinx configuration of the emdtree documentation.

Build with ``python -m sphinx -W --keep-going -b html docs docs/_build/html``.
The build needs no network: intersphinx is not used.

Every build has every page, whatever is installed. The framework adapters
``emdtree.torch``, ``emdtree.tensorflow`` and ``emdtree.jax`` need their
framework to run, not to be documented: where a framework is absent, autodoc
imports the adapter against its stand-in of the framework
(``autodoc_mock_imports``), which is enough to read the docstrings. Guide
examples that need another optional package (scikit-bio, say) are wrapped in
``.. if-module:: <module>``, which renders its content only where the module
imports.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import shutil
import sys
from functools import lru_cache

from sphinx.util.docutils import SphinxDirective

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # build from a checkout without installing

import emdtree  # noqa: E402

# -- project -----------------------------------------------------------------

project = "emdtree"
author = "emdtree developers"
copyright = "emdtree developers"
version = release = emdtree.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    "numpydoc",
]

templates_path = ["_templates"]
exclude_patterns = ["_build", "figures", "Thumbs.db", ".DS_Store"]
root_doc = "index"
default_role = "code"
nitpicky = False

# -- optional modules ----------------------------------------------------------

# API pages (``api/<page>.rst``), the framework adapters' included: every build
# has them all, whatever is installed.
API_PAGES = [
    "core", "tree", "datasets", "sinkhorn", "pairwise", "io", "metrics", "torch", "tensorflow", "jax",
]

# The frameworks the adapters ``emdtree.torch``, ``emdtree.tensorflow`` and
# ``emdtree.jax`` import. Those that are not installed are replaced by
# autodoc's stand-ins while the adapters are imported for their docstrings.
FRAMEWORKS = ["torch", "tensorflow", "keras", "jax"]


@lru_cache(maxsize=None)
def module_available(name: str) -> bool:
    """True if ``name`` imports; a module that is absent or cannot import is left out."""
    try:
        importlib.import_module(name)
    except ImportError:
        return False
    return True


def installed(name: str) -> bool:
    """True if the top-level package ``name`` is installed (without importing it)."""
    return importlib.util.find_spec(name) is not None


# -- autosummary / autodoc -------------------------------------------------------

# Stubs go to api/generated/ at build time, made afresh by every build (see setup).
autosummary_generate = [f"api/{page}.rst" for page in API_PAGES]
autosummary_generate_overwrite = True
autosummary_imported_members = False
autodoc_mock_imports = [name for name in FRAMEWORKS if not installed(name)]
autodoc_typehints = "none"  # the numpydoc sections carry the types
autodoc_default_options = {"members": False}

# -- numpydoc -------------------------------------------------------------------

numpydoc_show_class_members = False  # the class template lists them
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False
numpydoc_validation_checks = {
    "all",
    "ES01",  # an extended summary is welcome, not required
    "SA01",  # See Also where it helps, not on every object
    "SA03",  # See Also descriptions may start in lower case
    "SA04",  # See Also entries without a description
    "PR04",  # parameters documented together ("p, q, tree : as in emd") carry no type of their own
    "RT02",  # "Returns" may name the value when a function returns several
    "GL01",  # summary may start on the line of the opening quotes
    "GL02",
    "SS05",  # summaries such as "Earth Mover's Distance ..." are noun phrases, not verbs
    "SS06",  # a summary may wrap onto a second line
    "PR08",  # parameter descriptions may start with a symbol such as ``p``
    "PR09",  # ... or end with a code span
    "RT03",  # a return value given as "name : type, shape" needs no further sentence
    "RT04",
    "RT05",
}
# Regular expressions on the full names of objects left out of the checks.
numpydoc_validation_exclude = {
    # instance attributes (``__slots__``), described in the Attributes section of Tree
    r"\.Tree\.(parents|weights|bins|names|node_names|layout)$",
    # one-line properties: an example would only repeat the summary
    r"\.Tree\.(n_nodes|n_bins|root|depth|is_chain)$",
    r"\.__init__$",
    r"\.__getattr__$",
    # framework hooks (torch's forward and extra_repr, Keras' call, get_config and
    # from_config) are described by the docstring of their class
    r"^emdtree\.(torch|tensorflow|jax)\.\w+\.(forward|extra_repr|call|get_config|from_config)$",
    # fields of named tuples, described in the Parameters section of their class
    r"^emdtree\.io\.(Table|Matrix)\.\w+$",
    r"^emdtree\.(_sinkhorn\.)?SinkhornResult\.\w+$",
}

# -- HTML -------------------------------------------------------------------------

html_theme = "pydata_sphinx_theme"
html_static_path = ["_static"]
html_title = f"emdtree {release}"
html_theme_options = {
    "navigation_with_keys": False,
    "show_toc_level": 2,
    "footer_start": ["copyright"],
    "footer_end": ["sphinx-version"],
}
html_show_sourcelink = False


# -- ``.. if-module::`` ---------------------------------------------------------


class IfModule(SphinxDirective):
    """Render the content only if the module named in the argument imports.

    For content that needs an optional module (a framework adapter, or a
    package such as scikit-bio in a doctest): it is left out of builds
    without that module.
    """

    required_arguments = 1
    has_content = True

    def run(self):
        if module_available(self.arguments[0]):
            return self.parse_content_to_nodes(allow_section_headings=True)
        return []


class IfDocument(SphinxDirective):
    """Render the content only if the page named in the argument exists in ``docs/``.

    For links to pages that are written separately and may not be there yet.
    """

    required_arguments = 1
    has_content = True

    def run(self):
        if os.path.exists(os.path.join(HERE, self.arguments[0] + ".rst")):
            return self.parse_content_to_nodes(allow_section_headings=True)
        return []


# -- the adapters against a stand-in framework --------------------------------------

# Members that a class inherits from its framework, which document the framework, not
# emdtree (torch.nn.Module's ``training`` flag, an annotation autosummary would list).
FRAMEWORK_MEMBERS = {"training"}


def _skip_framework_member(app, what, name, obj, skip, options):
    return True if name in FRAMEWORK_MEMBERS else None


def _signature_over_stand_in(app, what, name, obj, options, signature, return_annotation):
    """The signature of a class whose framework is a stand-in (``autodoc_mock_imports``):
    its own ``__init__``'s, where autodoc would show the stand-in's ``(*args, **kwargs)``."""
    if what != "class" or not inspect.isclass(obj) or "__init__" not in vars(obj):
        return None
    if not any(getattr(base, "__sphinx_mock__", False) for base in obj.__mro__[1:]):
        return None
    params = list(inspect.signature(vars(obj)["__init__"]).parameters.values())[1:]  # without self
    bare = [param.replace(annotation=inspect.Parameter.empty) for param in params]  # autodoc_typehints
    return str(inspect.Signature(bare)), None


def _remove_stubs(app):
    """Remove the stubs of an earlier build, which may list members that this build's
    packages do not have: a stale stub would be read too."""
    shutil.rmtree(os.path.join(HERE, "api", "generated"), ignore_errors=True)


def setup(app):
    app.connect("builder-inited", _remove_stubs, priority=400)  # before autosummary writes them
    app.connect("autodoc-skip-member", _skip_framework_member)
    app.connect("autodoc-process-signature", _signature_over_stand_in)
    app.add_directive("if-module", IfModule)
    app.add_directive("if-document", IfDocument)
    return {"parallel_read_safe": True}
