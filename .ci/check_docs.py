"""Check a built HTML documentation: every page named below exists and holds its anchors.

    python .ci/check_docs.py docs/_build/html

Run after a build without the deep-learning frameworks: the pages of the PyTorch,
TensorFlow/Keras and JAX adapters must be there with their content all the same.
An anchor is an ``id="..."`` of the page (a section heading, a documented object,
a named code block); a phrase is text of the page (HTML tags removed).
"""

from __future__ import annotations

import html
import os
import re
import sys

# page -> (anchors, phrases)
PAGES: dict[str, tuple[list[str], list[str]]] = {
    "index.html": ([], []),
    "losses.html": (["pytorch", "tensorflow-and-keras", "jax", "class-indices", "keras-emd2-ce",
                     "optax-training-loop"], ["optax.adam"]),
    "ordinal.html": (["ranked-probability-score", "ordinal-dlordinal"], ["dlordinal"]),
    "metrics.html": (["which-tree-distance", "distance-matrices-in-pandas"], ["keep_default_na=False"]),
    "api/torch.html": (["pytorch-emdtree-torch"], ["EMDLoss", "emd_loss"]),
    "api/tensorflow.html": (["tensorflow-emdtree-tensorflow"], ["EMDLoss", "emd_loss"]),
    "api/jax.html": (["jax-emdtree-jax"], ["emd_loss"]),
    "api/generated/emdtree.torch.EMDLoss.html": (["emdtree.torch.EMDLoss"],
                                                 ["EMD^rho on a tree as a", "tree=None"]),
    "api/generated/emdtree.torch.emd_loss.html": (["emdtree.torch.emd_loss"], ["Parameters"]),
    "api/generated/emdtree.tensorflow.EMDLoss.html": (["emdtree.tensorflow.EMDLoss"],
                                                      ["EMD^rho on a tree as a", "tree=None"]),
    "api/generated/emdtree.tensorflow.emd_loss.html": (["emdtree.tensorflow.emd_loss"], ["Parameters"]),
    "api/generated/emdtree.jax.emd_loss.html": (["emdtree.jax.emd_loss"], ["Parameters"]),
}


def _text(page: str) -> str:
    """The text of a page without tags or spaces between words' parts."""
    return re.sub(r"\s+", "", html.unescape(re.sub(r"<[^>]+>", "", page)))


def problems(root: str, pages: dict[str, tuple[list[str], list[str]]] = PAGES) -> list[str]:
    """One line per page that is missing, or anchor or phrase that a page lacks."""
    out = []
    for name, (anchors, phrases) in pages.items():
        path = os.path.join(root, name)
        if not os.path.isfile(path):
            out.append(f"{name}: missing")
            continue
        with open(path, encoding="utf-8") as fh:
            page = fh.read()
        ids = set(re.findall(r'\bid="([^"]+)"', page))
        out.extend(f"{name}: no anchor id={anchor!r}" for anchor in anchors if anchor not in ids)
        text = _text(page)
        out.extend(f"{name}: no text {phrase!r}" for phrase in phrases
                   if re.sub(r"\s+", "", phrase) not in text)
    return out


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    found = problems(argv[0])
    for line in found:
        print(f"check_docs: {line}", file=sys.stderr)
    if not found:
        print(f"check_docs: {len(PAGES)} pages with their anchors in {argv[0]}")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
