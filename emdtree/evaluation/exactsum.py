"""Exact running sums, so that streamed and merged metrics do not depend on
how the samples were split into batches or across workers."""

from __future__ import annotations

import math

import numpy as np


class ExactSum:
    """Running sum kept as non-overlapping partials (Shewchuk; the algorithm of
    :func:`math.fsum`), so that the order of additions and merges does not
    change the result."""

    __slots__ = ("partials",)

    def __init__(self) -> None:
        self.partials: list[float] = []

    def add(self, x: float) -> None:
        special = self.partials[-1] if self.partials and not math.isfinite(self.partials[-1]) else None
        if special is not None or not math.isfinite(x):
            # an infinity or a NaN absorbs the finite values (as in float addition);
            # the partials below cannot hold it, since inf - inf is NaN
            self.partials = [x if special is None else special + x if not math.isfinite(x) else special]
            return
        kept = []
        for y in self.partials:
            if abs(x) < abs(y):
                x, y = y, x
            hi = x + y
            lo = y - (hi - x)
            if lo:
                kept.append(lo)
            x = hi
        kept.append(x)
        self.partials = kept

    def add_values(self, values: np.ndarray) -> None:
        # math.fsum rounds the exact sum of the chunk; the rounding error is the exact
        # sum of the chunk and the rounded sum's negative, rounded again by the next
        # pass, and so on until nothing is left (each pass shrinks the remainder by
        # 2^-52 or more, typically two or three passes): the chunk is added exactly,
        # so the total does not depend on how the values were split into chunks
        if not values.size:
            return
        terms = np.asarray(values, dtype=np.float64).ravel().tolist()
        while True:
            s = math.fsum(terms)
            if s == 0.0:
                return
            self.add(s)
            if not math.isfinite(s):
                return
            terms.append(-s)

    def merge(self, other: ExactSum) -> None:
        for x in other.partials:
            self.add(x)

    @property
    def value(self) -> float:
        return math.fsum(self.partials)
