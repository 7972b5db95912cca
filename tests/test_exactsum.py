"""ExactSum: chunks are added exactly, so the total does not depend on how values are split."""

import math

import numpy as np

from emdtree.evaluation.exactsum import ExactSum


def total(chunks):
    acc = ExactSum()
    for chunk in chunks:
        acc.add_values(np.asarray(chunk, dtype=np.float64))
    return acc.value


def test_cancellation_across_chunks():
    # fsum of the second chunk alone rounds 1 - 1e16 to -1e16: a rounded chunk sum would lose the 1
    assert total([[1e16], [1.0, -1e16]]) == 1.0 == total([[1e16, 1.0, -1e16]])


def test_any_split_and_merge_order_gives_the_correctly_rounded_sum():
    rng = np.random.default_rng(0)
    values = rng.standard_normal(2000) * 10.0 ** rng.integers(-12, 12, 2000)
    want = math.fsum(values.tolist())
    for seed in range(5):
        cuts = np.sort(np.random.default_rng(seed).integers(0, values.size, 7))
        chunks = np.split(values, cuts)
        assert total(chunks) == want
        parts = [ExactSum() for _ in chunks]
        for part, chunk in zip(parts, chunks):
            part.add_values(chunk)
        merged = ExactSum()
        for part in parts[::-1]:
            merged.merge(part)
        assert merged.value == want


def test_non_finite_values():
    assert math.isinf(total([[1.0, np.inf], [2.0]]))
    assert math.isnan(total([[1.0, np.nan]]))
    assert total([[]]) == 0.0
