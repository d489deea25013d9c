"""Prometheus exposition: a custom collector over the SeriesBook (the latest Snapshot folded in).

Registration does not collect (``describe()`` is empty) and ``collect()`` builds fresh metric
families on each scrape, the way prometheus_client's own process collector does. Names follow the
Prometheus conventions: ``wasmtop_`` prefix, base units (seconds, bytes), counters end in
``_total`` (prometheus_client adds the suffix), histograms in seconds.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client.core import (
    CollectorRegistry,
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    SummaryMetricFamily,
)
from prometheus_client.exposition import generate_latest
from prometheus_client.process_collector import ProcessCollector

from .series import Family, Histogram, SeriesBook, Summary


class SnapshotCollector:
    def __init__(self, book: SeriesBook) -> None:
        self.book = book

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Iterator[Any]:
        for fam in self.book.families():
            yield _family(fam)


def _family(fam: Family) -> Any:
    labels = list(fam.label_names)
    if fam.kind == "histogram":
        out = HistogramMetricFamily(fam.name, fam.help, labels=labels)
        for sample in fam.samples:
            h = sample.value
            assert isinstance(h, Histogram)
            buckets = [(_le(b), c) for b, c in zip(h.bounds, h.counts)]
            buckets.append(("+Inf", h.count))
            out.add_metric(list(sample.labels), buckets, h.sum)
        return out
    if fam.kind == "summary":
        out = SummaryMetricFamily(fam.name, fam.help, labels=labels)
        for sample in fam.samples:
            sm = sample.value
            assert isinstance(sm, Summary)
            # prometheus_client's SummaryMetricFamily takes count and sum; quantiles are added
            # as samples of their own.
            out.add_metric(list(sample.labels), sm.count, sm.sum)
            for q, v in sm.quantiles:
                out.add_sample(fam.name, {**dict(zip(labels, sample.labels)), "quantile": q}, v)
        return out
    cls = CounterMetricFamily if fam.kind == "counter" else GaugeMetricFamily
    out = cls(fam.name, fam.help, labels=labels)
    for sample in fam.samples:
        out.add_metric(list(sample.labels), sample.value)
    return out


def _le(bound: float) -> str:
    return repr(float(bound))


def registry_for(book: SeriesBook, *, process: bool = True) -> CollectorRegistry:
    """A private registry with wasmtop's series and, with ``process``, the standard
    ``process_*`` series of the daemon itself (its own CPU time and resident memory)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(book))
    if process:
        ProcessCollector(registry=registry)
    return registry


def render(registry: CollectorRegistry) -> bytes:
    """The text exposition format (version 0.0.4) of everything in ``registry``."""
    return generate_latest(registry)
