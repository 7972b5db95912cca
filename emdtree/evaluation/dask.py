"""The streaming metrics on dask arrays: partial states where the data live.

One task per row chunk runs the NumPy code of the accumulator on its chunk,
in a fresh accumulator of the same settings (the *partial state*: counts and
exact sums, a few hundred bytes, or a few arrays of ``n_bins`` with
``per_class``); the partial states are merged in a tree of tasks, eight at a
time, and only the final state comes back to the caller, who merges it into
its accumulator. Row blocks are never gathered in one process.

The sums are exact (:class:`emdtree.evaluation.exactsum.ExactSum`), so the counts and
the overall means equal the in-memory ones bit for bit, and do not depend on
the order of the merges. Per-sample values are the same as in memory over the
same chunks (``chunk_size`` equal to the dask chunks); with other chunks the
EMD to a distribution target may differ in its last bit, as the kernels take
rows in vector tiles. The per-class float sums are float64 sums, whose last
bits depend on the order of the merges.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numba
import numpy as np

from ..engine.threads import start_layer
from .inputs import check_chunk_size

__all__ = ["update_dask"]

_SPLIT_EVERY = 8  # partial states merged per task of the reduction tree


def _fresh(acc: Any) -> Any:
    """An empty accumulator with ``acc``'s settings (sharing its immutable tree)."""
    return acc._empty()


def _chunk_state(template: Any, start: int, is_labels: bool, scores: np.ndarray, target: np.ndarray) -> Any:
    """The partial state of one chunk, computed on one thread of the worker that holds it."""
    acc = _fresh(template)
    start_layer()  # emdtree starts Numba's layer, leaving the host's OpenMP thread count as it was
    previous = numba.get_num_threads()
    numba.set_num_threads(1)  # the scheduler runs chunks side by side: no nested thread pools
    try:
        acc._add_chunk(np.asarray(scores), np.asarray(target), start, is_labels)
    finally:
        numba.set_num_threads(previous)
    return acc


def _merge_states(*states: Any) -> Any:
    """One state holding the samples of ``states`` (which are left unchanged)."""
    out = _fresh(states[0])
    for state in states:
        out.merge(state)
    return out


def _aligned(arrays: Sequence[Any], chunk_size: int | None) -> list[Any]:
    """Dask arrays whose row chunks match the first one's; 2-D arrays in one column chunk."""
    import dask.array as da

    lead = da.asarray(arrays[0])
    lead = lead.rechunk({0: check_chunk_size(chunk_size), 1: -1} if chunk_size is not None else {1: -1})
    if any(np.isnan(c) for c in lead.chunks[0]):
        raise ValueError("pred has unknown chunk sizes; call pred.compute_chunk_sizes() first")
    rest = [da.asarray(a).rechunk({0: lead.chunks[0]} | ({1: -1} if a.ndim == 2 else {})) for a in arrays[1:]]
    return [lead] + rest


def update_dask(acc: Any, pred: Any, target: Any, is_labels: bool,
                progress: Callable[[int], Any] | None) -> None:
    """Add dask (or mixed) ``pred`` and ``target`` to ``acc``, reducing on the active scheduler.

    ``acc`` is an :class:`~emdtree.metrics.EMDMetric` or a
    :class:`~emdtree.metrics.HierarchicalMetrics` whose argument checks
    have passed and whose ``n_bins`` is set.
    """
    import dask
    from dask.base import tokenize

    lead, other = _aligned([pred, target], acc.chunk_size)
    blocks_p = lead.to_delayed().ravel()
    blocks_t = other.to_delayed().ravel()
    token = tokenize(lead.name, other.name, type(acc).__name__, is_labels, repr(_settings(acc)))
    template = dask.delayed(_fresh(acc), pure=True, name=f"emdtree-metric-settings-{token}")
    states = []
    start = 0
    for i, (p, t) in enumerate(zip(blocks_p, blocks_t)):
        task = dask.delayed(_chunk_state, pure=True)
        key = f"emdtree-metric-chunk-{token}-{i}"
        states.append(task(template, start, is_labels, p, t, dask_key_name=key))
        start += lead.chunks[0][i]
    level = 0
    while len(states) > 1:
        merge = dask.delayed(_merge_states, pure=True)
        key = f"emdtree-metric-merge-{token}-{level}"
        states = [merge(*states[i:i + _SPLIT_EVERY], dask_key_name=f"{key}-{i}")
                  for i in range(0, len(states), _SPLIT_EVERY)]
        level += 1
    if not states:
        return
    (state,) = dask.compute(states[0])
    acc.merge(state)
    if progress is not None:
        for rows in lead.chunks[0]:
            progress(rows)


def _settings(acc: Any) -> tuple:
    return acc._settings()
