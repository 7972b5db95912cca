"""Sphinx configuration of the emdtree documentation.

Build with ``python -m sphinx -W --keep-going -b html docs docs/_build/html``.
The build needs no network: intersphinx is not used.

The framework adapters ``emdtree.torch``, ``emdtree.tensorflow`` and
``emdtree.jax`` are optional (each needs its framework). Each has an API page
``api/<name>.rst``; the page is built only when its module imports, and guide
sections that describe such a module are wrapped in
``.. if-module:: emdtree.<name>``, which renders its content only in that
case. So the build passes with or without them. The same directive keeps
guide examples that need another optional package (scikit-bio, say) out of a
build without it.
"""

from __future__ import annotations

import importlib
import os
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

# API pages of the parts every installation has.
API_PAGES = ["core", "tree", "datasets", "sinkhorn", "pairwise", "io", "metrics"]

# API page (``api/<page>.rst``) of an optional module -> the module it documents.
OPTIONAL_PAGES = {
    "torch": "emdtree.torch",
    "tensorflow": "emdtree.tensorflow",
    "jax": "emdtree.jax",
}


@lru_cache(maxsize=None)
def module_available(name: str) -> bool:
    """True if ``name`` imports; a module that is absent or cannot import is left out."""
    try:
        importlib.import_module(name)
    except ImportError:
        return False
    return True


# ``tags`` is provided by Sphinx while it executes this file.
for _page, _module in OPTIONAL_PAGES.items():
    if module_available(_module):
        tags.add(f"has_{_page}")  # noqa: F821
    else:
        exclude_patterns.append(f"api/{_page}.rst")

# -- autosummary / autodoc -------------------------------------------------------

# Stubs go to api/generated/ at build time. Only pages whose modules import are
# scanned: a stub for a module that is not there would be a warning.
_API_PAGES = [f"api/{page}.rst" for page in API_PAGES] + [
    f"api/{page}.rst" for page, module in OPTIONAL_PAGES.items() if module_available(module)
]
autosummary_generate = _API_PAGES
autosummary_generate_overwrite = True
autosummary_imported_members = False
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
# Optional modules whose docstrings are checked like the core API (all of them
# now; the API_PAGES always are). A module added to OPTIONAL_PAGES later is
# built and shown, but its docstrings are checked only from the moment it is
# listed here.
VALIDATED_OPTIONAL = {"torch", "tensorflow", "jax"}

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
} | {rf"^emdtree\.{page}(\.|$)" for page in OPTIONAL_PAGES if page not in VALIDATED_OPTIONAL}

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


def setup(app):
    app.add_directive("if-module", IfModule)
    app.add_directive("if-document", IfDocument)
    return {"parallel_read_safe": True}
