"""Quantiles of folded kernel-thread rows (wasmtop/fold.py) from summed histograms."""

from __future__ import annotations

import math

from wasmtop.collector.model import HistogramBucket
from wasmtop.fold import quantiles


def test_the_midpoint_of_the_bucket_that_holds_the_rank_capped_by_the_maximum() -> None:
    hist = [HistogramBucket(1.0, 2.0, 60), HistogramBucket(4.0, 8.0, 40)]
    q = quantiles(hist, [7.0, None])
    assert (q.p50, q.p99, q.max) == (1.4995, 5.9995, 7.0)
    assert quantiles(hist, [5.0]).p99 == 5.0


def test_an_open_or_infinite_bucket_gives_the_maximum_or_its_finite_bound_never_a_crash() -> None:
    """Seen by the Snapshot fuzz test: a bucket bound of infinity."""
    hist = [HistogramBucket(10.0, math.inf, 3)]
    assert quantiles(hist, [42.0]).p50 == 42.0
    assert quantiles(hist, []).p50 == 10.0
    assert quantiles([HistogramBucket(-math.inf, math.inf, 1)], []).p50 is None
    assert quantiles([HistogramBucket(math.nan, 1.0, 1)], [3.0]).p99 == 3.0
    # Finite in µs, infinite in ns (seen by the same fuzz test): open too, never an OverflowError.
    assert quantiles([HistogramBucket(1.0, 1e308, 1)], [5.0]).p50 == 5.0
    assert quantiles([HistogramBucket(1e308, 1e308, 1)], []).p50 is None
