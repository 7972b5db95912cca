"""Read and write trees in Newick format.

The parser is a single pass over a regular-expression tokenizer with an
explicit stack, so arbitrarily deep trees parse without recursion.  Positions
in error messages are 0-based offsets into the string (plus 1-based line and
column for text that spans several lines).
"""

from __future__ import annotations

import errno
import math
import os
import re
from collections.abc import Sequence

import numpy as np

from .builders import TreeArrays, leaves_of

__all__ = ["parse_newick", "read_newick", "to_newick"]

_TOKEN = re.compile(
    r"""
      (\s+)                       # 1: whitespace
    | (\[[^\]]*\])                # 2: comment
    | ([(),:;])                   # 3: punctuation
    | '([^']*(?:''[^']*)*)'       # 4: quoted label, '' is a quote
    | ([^\s()\[\]':;,]+)          # 5: unquoted label or number
    | (.)                         # 6: stray ']', unterminated quote or comment
    """,
    re.VERBOSE | re.DOTALL,
)
_UNQUOTED = re.compile(r"[^\s()\[\]':;,_]+")
_STRAY = {"'": "unterminated quoted label", "[": "unterminated comment"}

# Parser states: what may come next.
_NODE = 0  # a subtree: '(' or a tip
_LABEL = 1  # after a tip or ')': a label, ':', ',', ')' or ';'
_COLON = 2  # after a label: ':', ',', ')' or ';'
_LENGTH = 3  # after ':': a number
_END = 4  # after a length: ',', ')' or ';'
_DONE = 5  # after ';'


def _at(text: str, pos: int) -> str:
    """Describe a position of the text for an error message."""
    if "\n" not in text:
        return f"position {pos}"
    line = text.count("\n", 0, pos) + 1
    column = pos - text.rfind("\n", 0, pos)
    return f"position {pos} (line {line}, column {column})"


def parse_newick(text: str, default_length: float | None = None) -> TreeArrays:
    """Parse one tree in Newick format.

    Parameters
    ----------
    text : str
        Newick text, e.g. ``"((A:1,B:2)AB:0.5,'C d':3);"``.  Comments in
        square brackets and whitespace between tokens are ignored, ``_`` in
        an unquoted label is a space, single-quoted labels may contain any
        character (``''`` is a quote), and the trailing ``;`` may be left
        out.  Labels are always strings, even when they look like numbers.
        The branch length of the root, if any, is ignored.
    default_length : float, optional
        Length of the branches written without one.  When None, a tree with
        no branch lengths at all gets length 1.0 on every branch, and a tree
        where only some branches lack a length is an error.

    Returns
    -------
    TreeArrays
        Nodes in pre-order of appearance (the root is node 0), ``weights``
        the branch lengths, ``bins`` the tips in order of appearance and
        ``names`` their labels.  A tree whose tips are all unlabelled has
        ``names=None``.  ``node_names`` holds every node's label (None where
        unlabelled), or is None when no node has a label.

    Raises
    ------
    ValueError
        For malformed text (with its position), a negative or invalid branch
        length, a missing branch length (see ``default_length``), two tips
        with the same label, or an unlabelled tip in a tree whose other tips
        are labelled (bins are identified by their tips' labels).
    TypeError
        If ``text`` is not a string.
    """
    if not isinstance(text, str):
        raise TypeError(f"expected Newick text as str, got {type(text).__name__}")
    if text.startswith("\ufeff"):  # a byte-order mark, from a file read as plain UTF-8
        text = " " + text[1:]  # keeps the positions in messages
    if default_length is not None:
        default_length = float(default_length)
        if not math.isfinite(default_length) or default_length < 0:
            raise ValueError(f"default_length must be finite and >= 0, got {default_length!r}")
    parents: list[int] = []
    labels: list[str | None] = []
    lengths: list[float | None] = []
    starts: list[int] = []
    stack: list[int] = []
    cur = -1
    state = _NODE

    def node(i: int) -> str:
        kind = "tip" if i == len(parents) - 1 or parents[i + 1] != i else "internal node"
        if labels[i] is not None:
            return f"{kind} {labels[i]!r} at {_at(text, starts[i])}"
        return f"unlabelled {kind} at {_at(text, starts[i])}"

    for m in _TOKEN.finditer(text):
        kind = m.lastindex
        if kind <= 2:
            continue
        tok = m.group(kind)
        if state == _DONE:
            raise ValueError(f"unexpected {tok!r} after the closing ';' at {_at(text, m.start())}")
        if state == _NODE:
            if kind == 3 and tok == "(":
                parents.append(stack[-1] if stack else -1)
                labels.append(None)
                lengths.append(None)
                starts.append(m.start())
                stack.append(len(parents) - 1)
                continue
            cur = len(parents)
            parents.append(stack[-1] if stack else -1)
            labels.append(None)
            lengths.append(None)
            starts.append(m.start())
            state = _LABEL
        if state == _LENGTH:
            if kind != 5:
                raise ValueError(f"expected a branch length after ':' at {_at(text, m.start())}, got {tok!r}")
            try:
                if "_" in tok:
                    raise ValueError
                x = float(tok)
            except ValueError:
                raise ValueError(f"invalid branch length {tok!r} at {_at(text, m.start())}") from None
            if not math.isfinite(x):
                raise ValueError(f"branch length {tok!r} at {_at(text, m.start())} is not finite")
            if x < 0:
                raise ValueError(
                    f"negative branch length {tok} at {_at(text, m.start())} for the {node(cur)}"
                )
            lengths[cur] = x + 0.0
            state = _END
        elif kind >= 4:
            if kind == 6:
                what = _STRAY.get(tok, f"unexpected {tok!r}")
                raise ValueError(f"{what} at {_at(text, m.start())}")
            if state != _LABEL:
                raise ValueError(
                    f"unexpected label {tok!r} at {_at(text, m.start())} "
                    "(a missing ',' or a label with spaces that should be quoted?)"
                )
            labels[cur] = tok.replace("_", " ") if kind == 5 else tok.replace("''", "'")
            state = _COLON
        elif tok == ":":
            if state == _END:
                raise ValueError(f"second branch length at {_at(text, m.start())}")
            state = _LENGTH
        elif tok == ",":
            if not stack:
                raise ValueError(f"',' outside any parentheses at {_at(text, m.start())}")
            state = _NODE
        elif tok == ")":
            if not stack:
                raise ValueError(f"unmatched ')' at {_at(text, m.start())}")
            cur = stack.pop()
            state = _LABEL
        elif tok == ";":
            if stack:
                raise ValueError(
                    f"';' at {_at(text, m.start())} before the '(' "
                    f"at {_at(text, starts[stack[-1]])} is closed"
                )
            state = _DONE
        else:
            raise ValueError(f"unexpected '(' at {_at(text, m.start())} (a missing ','?)")
    if not parents:
        raise ValueError("the Newick text holds no tree")
    if state == _LENGTH:
        raise ValueError("the Newick text ends where a branch length was expected")
    if stack:
        raise ValueError(f"the '(' at {_at(text, starts[stack[-1]])} is never closed")
    return _arrays(parents, labels, lengths, default_length, node, lambda i: _at(text, starts[i]))


def _arrays(parents, labels, lengths, default_length, node, where) -> TreeArrays:
    """Check lengths and tip labels and pack the parsed lists into arrays."""
    lengths[0] = 0.0
    missing = [i for i, x in enumerate(lengths) if x is None]
    if missing:
        if default_length is None and len(missing) == len(lengths) - 1:
            default_length = 1.0
        elif default_length is None:
            raise ValueError(
                f"the {node(missing[0])} has no branch length while other branches have one; "
                "give default_length to fill in missing lengths"
            )
        for i in missing:
            lengths[i] = default_length
    par = np.array(parents, dtype=np.int64)
    bins = leaves_of(par)
    tips = [labels[b] for b in bins.tolist()]
    names = None
    if any(t is not None for t in tips):
        first: dict[str, int] = {}
        for b, t in zip(bins.tolist(), tips):
            if t is None:
                raise ValueError(f"the tip at {where(b)} has no label while other tips have one")
            if t in first:
                raise ValueError(f"two tips are labelled {t!r}: the {node(first[t])} and the {node(b)}")
            first[t] = b
        names = tips
    node_names = None if all(x is None for x in labels) else labels
    return TreeArrays(par, np.array(lengths, dtype=np.float64), bins, names, node_names)


def read_newick(source: str | os.PathLike[str], default_length: float | None = None) -> TreeArrays:
    """Read a Newick tree from a file or a string.

    Parameters
    ----------
    source : str or os.PathLike
        A path (``os.PathLike``, or a ``str`` naming an existing file, or one
        without ``(`` and ``;``) to a UTF-8 file holding one tree, or Newick
        text (which ends with ``;`` when it could be mistaken for a file name
        such as ``tree(1).nwk``).
    default_length : float, optional
        See :func:`parse_newick`.

    Returns
    -------
    TreeArrays
        See :func:`parse_newick`.

    Raises
    ------
    FileNotFoundError
        If ``source`` is a path that does not exist.  A one-node tree given as
        text must therefore end with ``;``.
    ValueError
        See :func:`parse_newick`.
    """
    if isinstance(source, str):
        if ("(" in source or ";" in source) and not _names_a_file(source):
            return parse_newick(source, default_length)
    elif not isinstance(source, os.PathLike):
        raise TypeError(f"expected Newick text or a path, got {type(source).__name__}")
    path = os.fspath(source)
    try:
        with open(path, encoding="utf-8-sig") as f:
            text = f.read()
    except FileNotFoundError:
        hint = "" if "(" in path else " (Newick text must contain '(' or ';')"
        raise FileNotFoundError(errno.ENOENT, f"no such Newick file{hint}", path) from None
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path!r} is not UTF-8 text (byte {exc.start}): not a Newick file") from None
    return parse_newick(text, default_length)


_FILE_SUFFIXES = (".nwk", ".newick", ".tre", ".tree", ".nw", ".txt", ".nex", ".phy")


def _names_a_file(source: str) -> bool:
    """Whether a string with '(' or ';' is a file name (``tree(1).nwk``) rather than Newick text."""
    if len(source) > 4096 or "\n" in source or "\0" in source:
        return False
    if os.path.isfile(source):
        return True
    # a missing file, not text: "tree(1).nwk" should say the file does not exist
    return ";" not in source and os.path.splitext(source)[1].lower() in _FILE_SUFFIXES


def _quote(name: str) -> str:
    """Write a label, quoting it when it is not a plain unquoted label."""
    if _UNQUOTED.fullmatch(name):
        return name
    return "'" + name.replace("'", "''") + "'"


def to_newick(
    parents: np.ndarray,
    weights: np.ndarray | None = None,
    bins: np.ndarray | None = None,
    names: Sequence[str] | None = None,
    node_names: Sequence[str | None] | None = None,
) -> str:
    """Write a tree in Newick format.

    Parameters
    ----------
    parents : array_like of int
        Parent of each node, ``-1`` at the single root.
    weights : array_like of float, optional
        Cost of the edge from each node to its parent, written as branch
        lengths with full precision; None writes no lengths.
    bins : array_like of int, optional
        The bins; they must be exactly the leaves (default: the leaves).
    names : sequence of str, optional
        Labels of the bins.
    node_names : sequence of (str or None), optional
        Labels of the nodes (a bin's label is taken from ``names`` if given).

    Returns
    -------
    str
        Newick text ending with ``;``.  Children are written in node order,
        so :func:`parse_newick` gives back the same arrays when the nodes are
        numbered in that pre-order and the bins are the leaves in node order.

    Raises
    ------
    ValueError
        If the parents do not form a tree, a bin is an internal node or a leaf
        is not a bin (Newick has tips only at leaves), or the sizes disagree.
    """
    parents = np.asarray(parents)
    if parents.ndim != 1 or parents.size == 0 or not np.issubdtype(parents.dtype, np.integer):
        raise ValueError("parents must be a non-empty 1-d integer array")
    n = parents.shape[0]
    plist = parents.tolist()
    roots = [i for i, p in enumerate(plist) if p == -1]
    if len(roots) != 1:
        raise ValueError(f"parents must have exactly one root (-1), found {len(roots)}")
    children: list[list[int]] = [[] for _ in range(n)]
    for v, p in enumerate(plist):
        if p != -1:
            if not 0 <= p < n:
                raise ValueError(f"parents[{v}] = {p} is not a node")
            children[p].append(v)
    label: list[str | None] = [None] * n
    if node_names is not None:
        if len(node_names) != n:
            raise ValueError(f"node_names has {len(node_names)} entries for {n} nodes")
        label = list(node_names)
    leaves = [v for v in range(n) if not children[v]]
    if bins is None:
        bins = leaves
    else:
        bins = np.asarray(bins).tolist()
        outside = [b for b in bins if not 0 <= b < n]
        if outside:
            raise ValueError(f"bin node {outside[0]} is not a node of a tree with {n} nodes")
        inner = [b for b in bins if children[b]]
        if inner:
            raise ValueError(f"bin node {inner[0]} is not a leaf; Newick can only write bins as tips")
        if len(set(bins)) != len(bins):
            raise ValueError("bins contain a node twice")
        if len(bins) != len(leaves):
            missing = min(set(leaves) - set(bins))
            raise ValueError(f"leaf {missing} is not a bin; Newick writes every leaf as a tip")
    if names is not None:
        if len(names) != len(bins):
            raise ValueError(f"names has {len(names)} entries for {len(bins)} bins")
        for b, name in zip(bins, names):
            label[b] = name
    text = label_text = ["" if x is None else _quote(str(x)) for x in label]
    if weights is not None:
        w = np.asarray(weights, dtype=np.float64)
        if w.shape != (n,):
            raise ValueError(f"weights has shape {w.shape} for {n} nodes")
        ok = np.isfinite(w) & (w >= 0)
        ok[roots[0]] = True
        if not ok.all():
            v = int(np.flatnonzero(~ok)[0])
            raise ValueError(f"weights[{v}] = {float(w[v])!r} is not a finite cost >= 0")
        text = [t + ":" + repr(x) for t, x in zip(text, w.tolist())]
        text[roots[0]] = label_text[roots[0]]
    out: list[str] = []
    todo: list[int] = [roots[0]]  # node v, ~v to close node v, n for a comma
    written = 0
    while todo:
        v = todo.pop()
        if v == n:
            out.append(",")
        elif v < 0:
            out.append(")" + text[~v])
        elif children[v]:
            written += 1
            out.append("(")
            todo.append(~v)
            for c in reversed(children[v]):
                todo.append(c)
                todo.append(n)
            todo.pop()
        else:
            written += 1
            out.append(text[v])
    if written != n:
        raise ValueError("parents contain a cycle: some nodes are not below the root")
    out.append(";")
    return "".join(out)
