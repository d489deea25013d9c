from __future__ import annotations

import math
import random

import pytest

from wasmtop.collector.quantiles import (
    bucket_bounds,
    bucket_of,
    exact_quantile,
    histogram_quantile,
)


def test_buckets_are_contiguous_and_at_most_an_eighth_wide():
    prev_high = 0
    for b in range(0, 8 * 60):
        low, high = bucket_bounds(b)
        assert low == prev_high
        assert high - low <= max(1, low / 8)
        prev_high = high


@pytest.mark.parametrize("value", [0, 1, 7, 8, 9, 15, 16, 17, 1000, 4_000_000, 2**40 + 12345])
def test_value_falls_in_its_bucket(value):
    low, high = bucket_bounds(bucket_of(value))
    assert low <= value < high


def test_histogram_quantiles_stay_within_one_sixteenth_of_exact():
    rng = random.Random(7)
    values = [int(rng.lognormvariate(14, 1.2)) for _ in range(5000)]
    hist: dict[int, int] = {}
    for v in values:
        hist[bucket_of(v)] = hist.get(bucket_of(v), 0) + 1
    for q in (0.5, 0.9, 0.99, 0.999):
        exact = exact_quantile(values, q)
        approx = histogram_quantile(hist, q, max(values))
        assert abs(approx - exact) <= exact / 16 + 1


def test_histogram_quantile_edges():
    assert math.isnan(histogram_quantile({}, 0.5))
    assert histogram_quantile({bucket_of(1000): 3}, 0.99, max_value=1000) <= 1000
    assert exact_quantile([5, 1, 3], 0.5) == 3
    assert math.isnan(exact_quantile([], 0.5))
