"""The SeriesBook (Snapshots folded into series) and the /metrics text written from it: counters
keep counting across windows, the series limit folds the excess into workload="other", stale
workloads go, and the text parses to exactly what prometheus_client's own encoder produces."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from wasmtop.exporters.exposition import encode
from wasmtop.exporters.prometheus import registry_for, render
from wasmtop.exporters.series import SeriesBook

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from synthetic import snapshot  # noqa: E402 - the benchmark's Snapshot builder


def samples(text: bytes) -> dict[tuple, float]:
    out = {}
    for fam in text_string_to_metric_families(text.decode()):
        for s in fam.samples:
            # An empty label value is the same series as no label (Prometheus semantics).
            labels = tuple(sorted((k, v) for k, v in s.labels.items() if v != ""))
            out[(s.name, labels)] = s.value
    return out


def value(book: SeriesBook, name: str, **labels: str) -> float:
    got = samples(encode(book.families()))
    key = (name, tuple(sorted(labels.items())))
    assert key in got, f"{key} not in {[k for k in got if k[0] == name][:5]}"
    return got[key]


def labels_of(w) -> dict[str, str]:
    return {"workload": w.key, "namespace": w.pod.namespace, "pod": w.pod.name,
            "container": w.pod.container, "runtime": w.runtime}  # fmt: skip


def test_counters_add_up_windows_and_gauges_show_the_latest():
    a, b = snapshot(3, seed=1), snapshot(3, seed=2)
    book = SeriesBook()
    book.add(a)
    book.add(b)
    wa, wb = a.workloads[1], b.workloads[1]
    assert wa.key == wb.key
    labels = labels_of(wa)
    assert value(book, "wasmtop_context_switches_total", **labels) == (
        wa.sched.switches + wb.sched.switches
    )
    assert value(book, "wasmtop_rss_bytes", **labels) == wb.runtime_metrics.rss_bytes
    assert value(book, "wasmtop_preempt_delay_seconds_count", **labels) == (
        wa.sched.preemptions + wb.sched.preemptions
    )
    assert value(book, "wasmtop_request_duration_seconds_bucket", le="0.01", **labels) == 20
    assert value(book, "wasmtop_request_latency_seconds", quantile="0.99", **labels) == 0.005
    # A summary's count only goes up: requests since start, as the histogram counts them.
    assert value(book, "wasmtop_request_latency_seconds_count", **labels) == 20
    assert value(book, "wasmtop_request_duration_seconds_count", **labels) == 20
    assert value(book, "wasmtop_wasm_calls_total", call="instantiate", **labels) == 20
    # throttled_us is a running total in the Snapshot: only its increase is added, and a
    # smaller total than before is a restart (all of it is increase).
    ta, tb = wa.runtime_metrics.throttled_us, wb.runtime_metrics.throttled_us
    expected_us = ta + (tb - ta if tb >= ta else tb)
    assert value(book, "wasmtop_cpu_throttled_seconds_total", **labels) == pytest.approx(
        expected_us / 1e6
    )
    assert value(book, "wasmtop_snapshots_total") == 2
    assert value(book, "wasmtop_probe_up", probe="tracectx") == 1


def test_preemption_buckets_are_rebinned_by_the_kernel_buckets_upper_edge():
    snap = snapshot(1)
    w = snap.workloads[0]
    book = SeriesBook()
    book.add(snap)
    labels = labels_of(w)
    for le in ("0.0001", "0.001", "0.01", "0.1"):
        expected = sum(b.count for b in w.sched.preempt_delay_hist if b.high_us / 1e6 <= float(le))
        got = value(book, "wasmtop_preempt_delay_seconds_bucket", le=le, **labels)
        assert got == expected, le


def test_beyond_the_series_limit_workloads_are_added_up_as_other_and_counted():
    snap = snapshot(5)
    book = SeriesBook(max_workloads=2)
    book.add(snap)
    book.add(snap)
    text = encode(book.families())
    got = samples(text)
    named = {dict(k[1]).get("workload") for k in got if k[0] == "wasmtop_context_switches_total"}
    assert named == {snap.workloads[0].key, snap.workloads[1].key, "other"}
    assert value(book, "wasmtop_context_switches_total", workload="other") == 2 * sum(
        w.sched.switches for w in snap.workloads[2:]
    )
    assert value(book, "wasmtop_exporter_workloads", state="other") == 3
    assert value(book, "wasmtop_exporter_workloads_aggregated_total") == 3  # each once
    assert not any(k[0] == "wasmtop_rss_bytes" and ("workload", "other") in k[1] for k in got)


def test_a_workload_gone_for_stale_after_s_loses_its_series_and_its_place():
    first, second = snapshot(2), snapshot(3)
    book = SeriesBook(max_workloads=2, stale_after_s=60)
    book.add(first, now=0)
    only_new = dataclasses.replace(second, workloads=second.workloads[2:])
    book.add(only_new, now=30)  # the limit is full: the newcomer goes to other
    assert value(book, "wasmtop_exporter_workloads", state="other") == 1
    book.add(only_new, now=100)  # the first two are stale now
    keys = {
        dict(k[1]).get("workload")
        for k in samples(encode(book.families()))
        if k[0] == "wasmtop_context_switches_total"
    }
    assert first.workloads[0].key not in keys and first.workloads[1].key not in keys


def test_the_fast_encoder_writes_what_prometheus_client_writes():
    book = SeriesBook(max_workloads=3)
    snap = snapshot(4)
    book.add(snap)
    book.add(snapshot(4, seed=9))
    ours = samples(encode(book.families()))
    reference = samples(render(registry_for(book, process=False)))
    assert ours == reference
    assert len(ours) > 200


def test_label_values_are_escaped():
    snap = snapshot(1)
    w = snap.workloads[0]
    odd = dataclasses.replace(w, key='pid:1 "quoted" \\ back\nline')
    book = SeriesBook()
    book.add(dataclasses.replace(snap, workloads=(odd,)))
    assert value(book, "wasmtop_context_switches_total", **{**labels_of(w), "workload": odd.key})


def test_promtool_finds_nothing_to_say_about_the_text(tmp_path):
    book = SeriesBook(max_workloads=5)
    book.add(snapshot(8))
    book.add(snapshot(8, seed=3))
    out = subprocess.run(
        ["promtool", "check", "metrics"], input=encode(book.families()), capture_output=True
    )
    assert out.returncode == 0 and out.stdout == out.stderr == b"", out.stderr[:2000]
