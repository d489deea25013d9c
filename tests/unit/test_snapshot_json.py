"""The way back from a Snapshot's JSON to its records (collector/snapshot_json.py), which the gRPC
client relies on: exact after a round trip, every record type of model.py rebuilt, keys of a
newer server ignored, keys an older one lacks defaulted."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import pytest

from wasmtop.collector import model
from wasmtop.collector.model import (
    Alert,
    BypassEvent,
    ColdStarts,
    Connection,
    Events,
    Migration,
    PeerTraffic,
    PreemptionEvent,
    Snapshot,
    Trace,
    Unattributed,
    WaitedBehind,
    WakeupWaitEvent,
)
from wasmtop.collector.snapshot_json import from_dict, snapshot_from_dict
from wasmtop.collector.workloads import Pod

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from synthetic import snapshot  # noqa: E402 - the benchmark's Snapshot builder


def full_snapshot() -> Snapshot:
    """bench/synthetic.py's Snapshot with what it leaves empty filled in too."""
    base = snapshot(3)
    migration = Migration(from_cpu=0, to_cpu=1, count=7, distance="same_llc")
    cold = ColdStarts(count=2, last_ms=4.5, p50_ms=4.0, p99_ms=4.5, max_ms=4.5, total=9,
                      window_ms=(4.0, 4.5))  # fmt: skip
    w0 = base.workloads[0]
    w0 = dataclasses.replace(
        w0,
        cgroup="/kubepods/pod-0/app",
        pod=dataclasses.replace(w0.pod, runtime_class="wasmtime-spin-v2"),
        sched=dataclasses.replace(
            w0.sched,
            migration_matrix=(migration,),
            cpu_skew_ratio=None,
            waited_behind=(
                WaitedBehind("workload", "pid:4242", "hog", 12.5, 0.625),
                WaitedBehind("unattributed", None, None, 7.5, 0.375),
            ),
        ),
        net=dataclasses.replace(
            w0.net,
            fallbacks={"map_full": 1},
            peers=(
                PeerTraffic("pid:2", 1, 2, 300, 4, 0.987654),
                PeerTraffic(None, 1, 0, 0, 9, None),
            ),
        ),
        runtime_metrics=dataclasses.replace(
            w0.runtime_metrics, cold_start=cold, first_accept=cold, first_accept_ms=5.25
        ),
    )
    # A plain process beside the pods: no pod, no net, no runtime figures.
    w2 = dataclasses.replace(
        base.workloads[2], key="pid:4242", kind="process", runtime=None, pod=None, net=None,
        requests=None, runtime_metrics=None, pids=(4242, 4243),
    )  # fmt: skip
    preemption = PreemptionEvent(
        ts_ns=123, pid=1000, tid=1001, cpu=1, comm="wasmtime", delay_us=61234.5, preemptor_pid=9,
        preemptor_tid=9, preemptor_comm="hog", workload=w0.key, trace_id="ab" * 16,
        span_id="cd" * 8, thread_preemptions=3,
    )  # fmt: skip
    wait = WakeupWaitEvent(
        ts_ns=125, pid=1000, tid=1001, cpu=1, comm="wasmtime", delay_us=12000.5, workload=w0.key,
        waker_pid=7, waker_tid=8, waker_comm="client", holder_pid=4242, holder_tid=4243,
        holder_comm="hog", holder_workload="pid:4242", replaced_pid=4242, replaced_tid=4243,
        replaced_comm="hog", replaced_workload="pid:4242", trace_id="ab" * 16, span_id=None,
        thread_wakeups=17,
    )  # fmt: skip
    bypass = BypassEvent(ts_ns=124, pid=1000, workload=w0.key, kind="fallback", reason="map_full",
                         local="127.0.0.1:8080", remote="127.0.0.1:50000", bytes=0)  # fmt: skip
    trace = Trace(
        trace_id="0af7651916cd43dd8448eb211c80319c", span_id="b7ad6b7169203331",
        parent_span_id=None, source="traceparent", trace_flags=1, tracestate="k=v", pid=1000,
        tid=1001, workload=w0.key, start_ns=99, duration_ms=3.25, preempted_ms=1.5,
        migrations=0, bypassed=None, method="GET", route="GET /", status=200, queued_ms=0.75,
        queued_wakeup=17, read_end_ns=100,
    )  # fmt: skip
    connection = Connection(
        local="127.0.0.1:8080", remote="127.0.0.1:50000", pid=None, workload=None,
        peer_workload="pid:4242", state="open", active=False, eligible=True, enrolled=False,
        fallback_reason=None, srtt_us=40, redirected_msgs=0, redirected_bytes=0, passed_msgs=2,
        passed_bytes=10, failed_msgs=0, failed_bytes=0, stack_bytes=512, bypass_ratio=0.0,
    )  # fmt: skip
    alert = Alert(
        name="WasmtopPreemptionDelay", state="firing", workload=w0.key, value=61.2345,
        threshold=50.0, since="2026-01-02T03:04:05Z", severity="warning",
        quantity="preempt_delay_ms", comparator=">", probe=None, incomplete_data=False,
        labels={"alertname": "WasmtopPreemptionDelay", "workload": w0.key},
        annotations={"summary": "preempted"},
    )  # fmt: skip
    probes = {
        **base.probes,
        "sockbypass": {"status": "ok", "interfaces": ["lo"], "mode": "observe"},
    }
    return dataclasses.replace(
        base,
        probes=probes,
        workloads=(w0, base.workloads[1], w2),
        events=Events(
            preemptions=(preemption,),
            bypass=(bypass,),
            preemptions_total=4,
            bypass_total=1,
            wakeup_waits=(wait,),
            wakeup_waits_total=2,
        ),  # fmt: skip
        traces=(trace,),
        traces_total=1,
        alerts=(alert,),
        migrations=(migration,),
        connections=(connection,),
        unattributed=Unattributed(processes=1, switches=2, migrations=3, preemptions=4),
        counters={"processes_vanished": 2, "requests_open": 0},
    )


def trip(s: Snapshot) -> Snapshot:
    return snapshot_from_dict(json.loads(s.to_json(indent=None)))


def record_types(value: object, seen: set[type]) -> set[type]:
    """The dataclasses and NamedTuples in a record graph."""
    if dataclasses.is_dataclass(value) or hasattr(value, "_fields"):
        seen.add(type(value))
        items = (
            [getattr(value, f.name) for f in dataclasses.fields(value)]
            if dataclasses.is_dataclass(value)
            else list(value)
        )
        for v in items:
            record_types(v, seen)
    elif isinstance(value, (tuple, list)):
        for v in value:
            record_types(v, seen)
    elif isinstance(value, dict):
        for v in value.values():
            record_types(v, seen)
    return seen


def test_a_full_snapshot_survives_json_exactly_after_the_first_rounding():
    s = full_snapshot()
    once = trip(s)
    assert trip(once) == once  # to_dict rounds floats to 6 digits: exact from then on
    assert once.to_dict() == s.to_dict()  # and the first trip lost nothing the JSON carries
    # Every record type of model.py (and Pod) was in it and came back as itself.
    expected = {
        t for t in vars(model).values()
        if isinstance(t, type) and t.__module__ == model.__name__
        and (dataclasses.is_dataclass(t) or hasattr(t, "_fields"))
    } | {Pod}  # fmt: skip
    assert record_types(once, set()) == expected
    assert once.alerts[0] == s.alerts[0] and isinstance(once.alerts[0], Alert)
    assert isinstance(once.traces[0], Trace) and once.traces[0] == s.traces[0]
    assert once.workloads[0].pod == s.workloads[0].pod and isinstance(once.workloads[0].pod, Pod)
    assert once.to_dict()["workloads"][0]["pod"]["runtime_class"] == "wasmtime-spin-v2"
    w = once.workloads[0]
    assert w.pids == (1000,) and isinstance(w.sched.allowed_cpus, tuple)
    assert w.sched.cpu_time_ns_by_cpu == s.workloads[0].sched.cpu_time_ns_by_cpu
    assert w.runtime_metrics.cold_start.window_ms == (4.0, 4.5)
    assert w.net.peers[1].peer is None and w.net.peers[0].bypass_ratio == 0.987654
    assert once.workload("pid:4242").pod is None and once.workload("pid:4242").net is None


def test_a_snapshot_of_exact_values_is_equal_at_once():
    s = Snapshot(host="h", kernel="6.1", cpus=4, window_s=1.0, probes={}, workloads=())
    assert trip(s) == s
    s = dataclasses.replace(full_snapshot(), probes={})  # JSON-native probes, 6-digit floats
    assert trip(trip(s)) == trip(s)


def test_keys_of_a_newer_server_are_ignored():
    s = trip(full_snapshot())
    d = json.loads(s.to_json())
    d["new_top_level"] = {"x": 1}
    d["workloads"][0]["new_block"] = [1, 2]
    d["workloads"][0]["sched"]["new_figure"] = 0.5
    d["workloads"][0]["pod"]["node"] = "edge-1"
    d["events"]["preemptions"][0]["new_field"] = True
    d["traces"][0]["new_field"] = "x"
    d["alerts"][0]["fingerprint"] = "abc"
    d["unattributed"]["threads"] = 5
    assert snapshot_from_dict(d) == s


def test_keys_an_older_server_lacks_take_their_defaults_or_null():
    s = trip(full_snapshot())
    d = json.loads(s.to_json())
    for key in ("events", "traces", "traces_total", "alerts", "migrations", "connections",
                "unattributed", "counters", "schema"):  # fmt: skip
        del d[key]
    w = d["workloads"][0]
    for key in ("net", "requests", "runtime_metrics"):  # defaulted to null
        del w[key]
    del w["sched"]["cpu_skew_ratio"]  # no default, but may be null
    del w["pod"]["namespace"]
    del w["pod"]["runtime_class"]  # a server from before pod metadata
    got = snapshot_from_dict(d)
    assert got.events == Events() and got.traces == () and got.alerts == ()
    assert got.unattributed == Unattributed() and got.counters == {}
    assert got.schema == model.SCHEMA
    g0 = got.workloads[0]
    assert g0.net is None and g0.requests is None and g0.runtime_metrics is None
    assert g0.sched.cpu_skew_ratio is None and g0.pod.namespace is None
    assert g0.pod.runtime_class is None and s.workloads[0].pod.runtime_class == "wasmtime-spin-v2"
    assert g0.sched == dataclasses.replace(s.workloads[0].sched, cpu_skew_ratio=None)
    assert got.workloads[1:] == s.workloads[1:]
    # NamedTuple fields without a default but nullable; one with neither is an error.
    t = json.loads(s.to_json())["traces"][0]
    del t["parent_span_id"]
    assert from_dict(Trace, t).parent_span_id is None
    del t["route"]
    with pytest.raises(ValueError, match=r"snapshot\.route: missing \(a Trace needs it\)"):
        from_dict(Trace, t)


def test_a_missing_required_key_or_a_wrong_shape_names_where():
    d = json.loads(trip(full_snapshot()).to_json())
    del d["workloads"][1]["sched"]["switches"]
    with pytest.raises(ValueError, match=r"snapshot\.workloads\[1\]\.sched\.switches: missing"):
        snapshot_from_dict(d)
    d = json.loads(trip(full_snapshot()).to_json())
    d["workloads"][0]["sched"] = [1, 2]
    with pytest.raises(
        ValueError, match=r"snapshot\.workloads\[0\]\.sched: expected a SchedFigures"
    ):
        snapshot_from_dict(d)
    with pytest.raises(ValueError, match="expected schema 'wasmtop.snapshot/v1', got 'x/v2'"):
        snapshot_from_dict({**d, "schema": "x/v2"})


def test_null_stays_none_and_integers_of_float_fields_become_floats():
    d = json.loads(trip(full_snapshot()).to_json())
    d["window_s"] = 2
    d["workloads"][0]["sched"]["affinity_stability"] = None  # to_dict writes NaN as null
    got = snapshot_from_dict(d)
    assert got.window_s == 2.0 and isinstance(got.window_s, float)
    assert got.workloads[0].sched.affinity_stability is None
