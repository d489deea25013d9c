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

from wasmtop.collector.model import (
    DelayQuantiles,
    HistogramBucket,
    SchedFigures,
    Snapshot,
    WaitedBehind,
    Workload,
)
from wasmtop.collector.workloads import Pod
from wasmtop.exporters.exposition import encode
from wasmtop.exporters.prometheus import registry_for, render
from wasmtop.exporters.series import MAX_NAMED_CULPRITS, SeriesBook

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


# -- wake-up delay, run-queue delay and who held the CPU -------------------------------------
# Hand-built Snapshots, read back through a private CollectorRegistry (prometheus_client's own
# encoder and sample lookup), so every expected value below is worked out by hand.
POD = Pod(namespace="shop", name="cart-1", uid="u1", container="app", container_id="c1")
WL = "pod:u1/c1"
WL_LABELS = {"workload": WL, "namespace": "shop", "pod": "cart-1", "container": "app",
             "runtime": "wasmtime"}  # fmt: skip
# Kernel buckets (µs) and the bound each must land under: the upper edge decides.
KERNEL_HIST = (
    HistogramBucket(4.0, 4.25, 3),  # <= 10 µs
    HistogramBucket(9.5, 10.0, 2),  # upper edge exactly 10 µs: still <= 10 µs
    HistogramBucket(10.0, 10.5, 1),  # just above: <= 100 µs
    HistogramBucket(1024.0, 1088.0, 5),  # <= 2.5 ms
    HistogramBucket(1_500_000.0, 1_600_000.0, 1),  # above 1 s: only in +Inf (the count)
)
# The same, cumulative per le, for one Snapshot.
KERNEL_HIST_LE = {"1e-05": 5, "0.0001": 6, "0.0005": 6, "0.001": 6, "0.0025": 11, "0.005": 11,
                  "0.01": 11, "0.025": 11, "0.05": 11, "0.1": 11, "0.25": 11, "0.5": 11,
                  "1.0": 11, "+Inf": 12}  # fmt: skip


def sched(**kw) -> SchedFigures:
    fields = dict(
        switches=10, involuntary=2, migrations=0, migrations_per_s=0.0, switches_per_s=10.0,
        involuntary_per_s=2.0, affinity_stability=0.0, cpu_skew_ratio=None, allowed_cpus=(0,),
        cpu_time_ns_by_cpu={"0": 1000}, preempt_delay_us=DelayQuantiles(None, None, None),
        preemptions=0, preempt_delay_total_us=0.0, preemptions_over_threshold=0,
        preempt_delay_hist=(), migration_matrix=(),
    )  # fmt: skip
    fields.update(kw)
    return SchedFigures(**fields)


def workload(key: str = WL, pod: Pod | None = POD, **kw) -> Workload:
    return Workload(key=key, kind="wasm", runtime="wasmtime", comm="wasmtime", pids=(1,),
                    cgroup=None, pod=pod, sched=sched(**kw))  # fmt: skip


def snap(*workloads: Workload) -> Snapshot:
    return Snapshot(host="h", kernel="6.1", cpus=2, window_s=1.0, probes={},
                    workloads=workloads)  # fmt: skip


def get(registry, name: str, labels: dict[str, str] = WL_LABELS, **extra: str) -> float | None:
    return registry.get_sample_value(name, {**labels, **extra})


def test_wakeup_delay_histogram_rebins_kernel_buckets_like_the_preemption_histogram():
    w = workload(
        wakeups=12, wakeup_delay_total_us=9876.5, wakeup_delay_hist=KERNEL_HIST,
        # The preemption histogram from the same kernel buckets: the same code, the same bins.
        preemptions=12, preempt_delay_total_us=9876.5, preempt_delay_hist=KERNEL_HIST,
    )  # fmt: skip
    book = SeriesBook()
    registry = registry_for(book, process=False)
    book.add(snap(w))
    book.add(snap(w))
    for le, n in KERNEL_HIST_LE.items():
        got = get(registry, "wasmtop_wakeup_delay_seconds_bucket", le=le)
        assert got == 2 * n, le
        assert get(registry, "wasmtop_preempt_delay_seconds_bucket", le=le) == got
    assert get(registry, "wasmtop_wakeup_delay_seconds_count") == 24
    assert get(registry, "wasmtop_wakeup_delay_seconds_sum") == pytest.approx(2 * 0.0098765)
    # Exactly the preemption histogram's bounds, and nothing but them.
    les = {
        s.labels["le"]
        for fam in registry.collect()
        if fam.name == "wasmtop_wakeup_delay_seconds"
        for s in fam.samples
        if s.name.endswith("_bucket")
    }
    assert les == set(KERNEL_HIST_LE)
    assert samples(encode(book.families())) == samples(render(registry))


def test_wakeups_over_threshold_and_run_queue_delay_are_counters_in_seconds():
    book = SeriesBook()
    registry = registry_for(book, process=False)
    book.add(snap(workload(wakeups_over_threshold=3, runq_delay_total_us=2500.0)))
    book.add(snap(workload(wakeups_over_threshold=4, runq_delay_total_us=1500.0)))
    assert get(registry, "wasmtop_wakeups_over_threshold_total") == 7
    assert get(registry, "wasmtop_runq_delay_seconds_total") == pytest.approx(0.004)
    # No wake-up in these windows: the histogram is there, empty.
    assert get(registry, "wasmtop_wakeup_delay_seconds_count") == 0
    assert get(registry, "wasmtop_wakeup_delay_seconds_bucket", le="+Inf") == 0


def behind(*parts: tuple[str, float]) -> tuple[WaitedBehind, ...]:
    """("pid:7", 2.5) -> a culprit workload's 2.5 ms; ("idle", 1.0) -> the kind's."""
    return tuple(
        WaitedBehind(c, None, None, ms, 0.0)
        if c in ("idle", "other", "unattributed")
        else WaitedBehind("workload", c, "hog", ms, 0.0)
        for c, ms in parts
    )


def culprits(registry, workload_labels: dict[str, str]) -> dict[str, float]:
    out = {}
    for fam in registry.collect():
        if fam.name == "wasmtop_waited_behind_seconds":
            for s in fam.samples:
                labels = dict(s.labels)
                culprit = labels.pop("culprit")
                if labels == workload_labels:
                    out[culprit] = s.value
    return out


def test_waited_behind_has_one_series_per_listed_culprit_which_expires_when_not_listed():
    book = SeriesBook(stale_after_s=60)
    registry = registry_for(book, process=False)
    first = behind(("pid:7", 2.5), ("pod:u2/c2", 1.25), ("idle", 0.5), ("other", 0.75),
                   ("unattributed", 0.25))  # fmt: skip
    book.add(snap(workload(waited_behind=first)), now=0)
    book.add(snap(workload(waited_behind=behind(("pid:7", 1.5), ("idle", 0.5)))), now=30)
    assert culprits(registry, WL_LABELS) == pytest.approx(
        {
            "pid:7": 0.004,
            "pod:u2/c2": 0.00125,
            "idle": 0.001,
            "other": 0.00075,
            "unattributed": 0.00025,
        }  # fmt: skip
    )
    # pod:u2/c2, other and unattributed were last listed at 0: at 61 they are stale and go; the
    # workload itself, still seen, keeps its series.
    book.add(snap(workload(waited_behind=behind(("pid:7", 1.0)))), now=61)
    assert culprits(registry, WL_LABELS) == pytest.approx({"pid:7": 0.005, "idle": 0.001})
    assert get(registry, "wasmtop_context_switches_total") == 30
    # A culprit listed again starts from zero (its series was gone).
    book.add(snap(workload(waited_behind=behind(("pod:u2/c2", 2.0)))), now=62)
    assert culprits(registry, WL_LABELS)["pod:u2/c2"] == pytest.approx(0.002)
    assert samples(encode(book.families())) == samples(render(registry))


def test_waited_behind_under_workload_other_names_no_culprit_workload():
    book = SeriesBook(max_workloads=1)
    registry = registry_for(book, process=False)
    named = workload(waited_behind=behind(("pid:7", 1.0)))
    # Folded into workload="other": culprit workloads add up as culprit="other", so that
    # series stays bounded however many workloads are folded there.
    folded = [
        workload(key=f"pid:{100 + i}", pod=None,
                 waited_behind=behind((f"pid:{200 + i}", 1.0), ("other", 0.5), ("idle", 0.25)))
        for i in range(3)
    ]  # fmt: skip
    book.add(snap(named, *folded))
    assert culprits(registry, WL_LABELS) == pytest.approx({"pid:7": 0.001})
    other = {"workload": "other", "namespace": "", "pod": "", "container": "", "runtime": ""}
    assert culprits(registry, other) == pytest.approx({"other": 0.0045, "idle": 0.00075})


def test_a_workloads_series_names_at_most_max_named_culprits_at_once():
    """A node that starts processes all the time could name new culprits every tick, each a
    series kept for stale_after_s: beyond the cap they add up as culprit="other"."""
    book = SeriesBook(stale_after_s=60)
    registry = registry_for(book, process=False)
    for t in range(MAX_NAMED_CULPRITS + 4):
        book.add(snap(workload(waited_behind=behind((f"pid:{1000 + t}", 1.0)))), now=t)
    got = culprits(registry, WL_LABELS)
    assert len(got) == MAX_NAMED_CULPRITS + 1  # the first ones, and "other"
    assert got["other"] == pytest.approx(0.004)
    assert "pid:1000" in got and f"pid:{1000 + MAX_NAMED_CULPRITS}" not in got
    # A culprit named already goes on under its name; once the first ones expire, new
    # culprits are named again.
    book.add(snap(workload(waited_behind=behind(("pid:1000", 1.0)))), now=30)
    assert culprits(registry, WL_LABELS)["pid:1000"] == pytest.approx(0.002)
    book.add(snap(workload()), now=100)  # past stale_after_s: the first ones expire
    book.add(snap(workload(waited_behind=behind(("pid:5000", 1.0)))), now=101)
    assert set(culprits(registry, WL_LABELS)) == {"pid:5000"}


def test_an_alert_not_judged_for_lack_of_data_has_no_alert_series():
    from wasmtop.collector.model import Alert

    def alert(workload: str, state: str) -> Alert:
        return Alert(name="WasmtopMemoryGrowth", state=state, workload=workload, value=40.0,
                     threshold=2.0, since="2026-01-01T00:00:00Z", severity="warning",
                     quantity="runtime.rss_growth_mb_per_min", comparator=">", probe=None,
                     incomplete_data=False,
                     labels={"alertname": "WasmtopMemoryGrowth", "severity": "warning",
                             "workload": workload}, annotations={})  # fmt: skip

    snap = dataclasses.replace(
        snapshot(1),
        alerts=(alert("a", "firing"), alert("b", "pending"), alert("c", "not_enough_data")),
    )
    book = SeriesBook()
    book.add(snap)
    got = {dict(k[1]).get("workload"): v for k, v in samples(encode(book.families())).items()
           if k[0] == "wasmtop_alert_firing"}  # fmt: skip
    assert got == {"a": 1.0, "b": 0.0}


def test_openmetrics_carries_the_same_samples_and_exemplars_of_traced_observations():
    """With OpenMetrics (what Prometheus asks for first), each histogram bucket carries the
    latest traced observation that fell in it: a request's duration, and the preemptions of its
    thread while it ran, with the request's trace id. The whole text parses with
    prometheus_client's strict OpenMetrics parser, and its samples are the text format's."""
    import dataclasses

    from prometheus_client.openmetrics.parser import (
        text_string_to_metric_families as openmetrics_families,
    )

    from wasmtop.collector.model import PreemptionEvent, Trace
    from wasmtop.exporters.exposition import encode_openmetrics

    base = snapshot(3, seed=1)
    w = base.workloads[0]
    preempted = PreemptionEvent(ts_ns=1, pid=w.pids[0], tid=w.pids[0], cpu=0, comm=w.comm,
                                delay_us=3_000.0, workload=w.key, preemptor_pid=9,
                                preemptor_tid=9, preemptor_comm="hog")  # fmt: skip
    trace = Trace(
        trace_id="0af7651916cd43dd8448eb211c80319c", span_id="b7ad6b7169203331",
        parent_span_id=None, source="traceparent", trace_flags=1, tracestate=None,
        pid=w.pids[0], tid=w.pids[0], workload=w.key, start_ns=0, duration_ms=7.0,
        preempted_ms=3.0, migrations=0, bypassed=None, method="GET", route="GET /a", status=200,
        preemptions=(preempted,),
    )  # fmt: skip
    book = SeriesBook()
    book.add(dataclasses.replace(base, traces=(trace,)))
    text = encode_openmetrics(book.families()).decode()
    assert text.endswith("# EOF\n")
    exemplars = {}
    parsed = {}
    for fam in openmetrics_families(text):  # raises on anything OpenMetrics refuses
        for s in fam.samples:
            labels = tuple(sorted((k, v) for k, v in s.labels.items() if v != ""))
            parsed[(s.name, labels)] = s.value
            if s.exemplar is not None and s.labels.get("workload") == w.key:
                exemplars[(s.name, s.labels["le"])] = (s.exemplar.labels, s.exemplar.value)
    assert parsed == samples(encode(book.families()))  # the same samples as the text format
    tid = {"trace_id": trace.trace_id}
    assert exemplars == {
        ("wasmtop_request_duration_seconds_bucket", "0.01"): (tid, 0.007),  # 7 ms <= 10 ms
        ("wasmtop_preempt_delay_seconds_bucket", "0.005"): (tid, 0.003),  # 3 ms <= 5 ms
    }
