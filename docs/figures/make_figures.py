"""Write the documentation figures into ``docs/_static/figures/``.

Run from anywhere: ``python docs/figures/make_figures.py``. The PNGs are
committed, so building the documentation does not need to run this.
"""

from __future__ import annotations

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(os.path.dirname(HERE), "_static", "figures")

if HERE not in sys.path:
    sys.path.insert(0, HERE)

import fig_gradients  # noqa: E402
import fig_ordinal  # noqa: E402
import fig_shift  # noqa: E402
import fig_tree  # noqa: E402

FIGURES = {
    "chain_gradients.png": fig_gradients.draw,
    "tree_flow.png": fig_tree.draw,
    "bump_shift.png": fig_shift.draw,
    "ordinal.png": fig_ordinal.draw,
}


def main(out: str = OUT) -> list[str]:
    """Write every figure into ``out``; return the paths written."""
    import matplotlib

    matplotlib.use("Agg")
    os.makedirs(out, exist_ok=True)
    written = []
    for name, draw in FIGURES.items():
        path = os.path.join(out, name)
        draw(path)
        written.append(path)
        print(path)
    return written


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else OUT)
