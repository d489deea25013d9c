"""Quantiles: from the probes' log-linear histograms, and exact ones over raw values."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

SUB_BUCKETS = 8  # per power of two; must match loglinear_bucket() in probes/common.bpf.h


def bucket_of(value: int) -> int:
    """The bucket the kernel puts ``value`` in (a Python twin of loglinear_bucket)."""
    if value < SUB_BUCKETS:
        return value
    lg = value.bit_length() - 1
    return (lg - 2) * SUB_BUCKETS + ((value >> (lg - 3)) & (SUB_BUCKETS - 1))


def bucket_bounds(bucket: int) -> tuple[int, int]:
    """[low, high) of a log-linear bucket. high - low <= low / 8 for every bucket."""
    if bucket < SUB_BUCKETS:
        return bucket, bucket + 1
    lg, sub = divmod(bucket, SUB_BUCKETS)
    lg += 2
    step = 1 << (lg - 3)
    low = (SUB_BUCKETS + sub) * step
    return low, low + step


def histogram_quantile(hist: Mapping[int, int], q: float, max_value: int | None = None) -> float:
    """The q-quantile of a bucket -> count histogram, as the midpoint of the bucket holding the
    nearest-rank sample (relative error <= 1/16), never above the known maximum."""
    total = sum(hist.values())
    if total == 0:
        return math.nan
    rank = max(1, math.ceil(q * total))
    seen = 0
    for bucket in sorted(hist):
        seen += hist[bucket]
        if seen >= rank:
            low, high = bucket_bounds(bucket)
            mid = (low + high - 1) / 2 if high - low > 1 else float(low)
            return min(mid, max_value) if max_value is not None else mid
    raise AssertionError("unreachable: rank exceeds total")


def exact_quantile(values: Sequence[float], q: float) -> float:
    """Nearest-rank quantile of raw values (no interpolation): an observed value."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q * len(ordered))) - 1]


def merge_histograms(parts: Iterable[Mapping[int, int]]) -> dict[int, int]:
    merged: dict[int, int] = {}
    for part in parts:
        for bucket, count in part.items():
            merged[bucket] = merged.get(bucket, 0) + count
    return merged
