"""The way back from a Snapshot's JSON to its records (collector/snapshot_json.py), which the gRPC
client relies on: exact after a round trip, every record type of model.py rebuilt, keys of a
newer server ignored, keys an older one lacks defaulted; and hostile input (wrong types, NaN,
deep nesting) refused with a ValueError naming the place, never another exception."""

from __future__ import annotations

import copy
import dataclasses
import json
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

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
from wasmtop.collector.snapshot_json import (
    check_json_depth,
    from_dict,
    snapshot_from_dict,
    snapshot_from_json,
)
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
            w0.runtime_metrics, cold_start=cold, first_accept=cold, first_accept_ms=5.25,
            growth_window_s=290.5, growth_window_full_s=300.0,
        ),
    )  # fmt: skip
    # A plain process beside the pods: no pod, no net, no runtime figures.
    w2 = dataclasses.replace(
        base.workloads[2], key="pid:4242", kind="process", runtime=None, pod=None, net=None,
        requests=None, runtime_metrics=None, pids=(4242, 4243), kernel_thread=True,
    )  # fmt: skip
    w1 = dataclasses.replace(base.workloads[1], wasmtop=True)  # wasmtop's own
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
        preemptions=(preemption,), wakeup_waits=(wait,),  # its thread's, within it (correlate.py)
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
    waiting = Alert(
        name="WasmtopMemoryGrowth", state="not_enough_data", workload=w0.key, value=40.5,
        threshold=2.0, since="2026-01-02T03:04:05Z", severity="warning",
        quantity="runtime.rss_growth_mb_per_min", comparator=">", probe=None,
        incomplete_data=False, labels={"alertname": "WasmtopMemoryGrowth", "workload": w0.key},
        annotations={"summary": "grows", "not_enough_data": "6 s of 300 s"}, data_s=6.0,
        data_needed_s=300.0,
    )  # fmt: skip
    probes = {
        **base.probes,
        "sockbypass": {"status": "ok", "mode": "observe"},
    }
    return dataclasses.replace(
        base,
        probes=probes,
        workloads=(w0, w1, w2),
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
        alerts=(alert, waiting),
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
    # A trace's events come back as the records they are, the same as the Snapshot's own.
    t0 = once.traces[0]
    assert t0.preemptions == once.events.preemptions and t0.wakeup_waits == once.events.wakeup_waits
    assert isinstance(t0.preemptions, tuple) and isinstance(t0.preemptions[0], PreemptionEvent)
    assert isinstance(t0.wakeup_waits[0], WakeupWaitEvent)
    d = s.to_dict()  # JSON: lists of the objects events.preemptions / events.wakeup_waits hold
    assert d["traces"][0]["preemptions"] == d["events"]["preemptions"]
    assert d["traces"][0]["wakeup_waits"] == d["events"]["wakeup_waits"]
    assert once.workloads[0].pod == s.workloads[0].pod and isinstance(once.workloads[0].pod, Pod)
    assert once.to_dict()["workloads"][0]["pod"]["runtime_class"] == "wasmtime-spin-v2"
    w = once.workloads[0]
    assert w.pids == (1000,) and isinstance(w.sched.allowed_cpus, tuple)
    assert w.sched.cpu_time_ns_by_cpu == s.workloads[0].sched.cpu_time_ns_by_cpu
    assert w.runtime_metrics.cold_start.window_ms == (4.0, 4.5)
    assert w.net.peers[1].peer is None and w.net.peers[0].bypass_ratio == 0.987654
    assert once.workload("pid:4242").pod is None and once.workload("pid:4242").net is None
    assert [(w.wasmtop, w.kernel_thread) for w in once.workloads] == [
        (False, False), (True, False), (False, True)
    ]  # fmt: skip
    assert w.runtime_metrics.growth_window_full_s == 300.0
    assert (once.alerts[1].state, once.alerts[1].data_s, once.alerts[1].data_needed_s) == (
        "not_enough_data", 6.0, 300.0
    )  # fmt: skip


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
    # A server from before the marks, the growth window's length and the alerts' data spans.
    old_alert = json.loads(s.to_json())["alerts"][1]
    for key in ("data_s", "data_needed_s"):
        del old_alert[key]
    assert from_dict(Alert, old_alert).data_s is None
    w1 = d["workloads"][1]
    del w1["wasmtop"], w1["runtime_metrics"]["growth_window_full_s"]
    got = snapshot_from_dict(d)
    assert not got.workloads[1].wasmtop
    assert got.workloads[1].runtime_metrics.growth_window_full_s == 0.0
    got = dataclasses.replace(got, workloads=(got.workloads[0], *s.workloads[1:]))
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
    del t["preemptions"], t["wakeup_waits"]  # a server from before traces carried their events
    assert from_dict(Trace, t).preemptions == () and from_dict(Trace, t).wakeup_waits == ()
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


def test_null_only_where_optional_and_integers_of_float_fields_become_floats():
    d = json.loads(trip(full_snapshot()).to_json())
    d["window_s"] = 2
    d["workloads"][0]["sched"]["cpu_skew_ratio"] = None  # float | None
    got = snapshot_from_dict(d)
    assert got.window_s == 2.0 and isinstance(got.window_s, float)
    assert got.workloads[0].sched.cpu_skew_ratio is None
    d["workloads"][0]["sched"]["affinity_stability"] = None  # a float, never null
    with pytest.raises(
        ValueError, match=r"workloads\[0\]\.sched\.affinity_stability: expected a number, got null"
    ):
        snapshot_from_dict(d)


# -- hostile or broken input: a value of the wrong type is refused where it is -------------------
def _set(d, path, value):
    *parents, last = path
    for p in parents:
        d = d[p]
    d[last] = value


WRONG = [
    # (where, value, message): each a crash site in the UI before the decoder checked types
    (("cpus",), "4", r"snapshot\.cpus: expected an integer, got a string"),
    (("cpus",), True, r"snapshot\.cpus: expected an integer, got a boolean"),
    (("cpus",), 4.5, r"snapshot\.cpus: expected an integer, got a number"),
    (("cpus",), 2**64, r"snapshot\.cpus: integer out of 64-bit range"),
    (("window_s",), "1.0", r"snapshot\.window_s: expected a number, got a string"),
    (("window_s",), float("nan"), r"snapshot\.window_s: nan is not a finite number"),
    (("window_s",), float("inf"), r"snapshot\.window_s: inf is not a finite number"),
    (("window_s",), 10**400, r"snapshot\.window_s: integer out of 64-bit range"),
    (("host",), 7, r"snapshot\.host: expected a string, got a number"),
    (("host",), "a\ud800b", r"snapshot\.host: a lone UTF-16 surrogate"),
    (("host",), None, r"snapshot\.host: expected a string, got null"),
    (("workloads",), {}, r"snapshot\.workloads: expected a list, got an object"),
    (("workloads",), None, r"snapshot\.workloads: expected a list, got null"),
    (("workloads", 0, "pids"), [1, "2"], r"snapshot\.workloads\[0\]\.pids\[1\]: expected an int"),
    (("workloads", 0, "comm"), ["x"], r"snapshot\.workloads\[0\]\.comm: expected a string"),
    (("workloads", 0, "sched", "preempt_delay_us", "p99"), "9",
     r"preempt_delay_us\.p99: expected a number, got a string"),
    (("workloads", 0, "sched", "cpu_time_ns_by_cpu", "0"), -1.5,
     r"cpu_time_ns_by_cpu\.0: expected an integer"),
    (("workloads", 0, "pod", "uid"), None, r"pod\.uid: expected a string, got null"),
    (("workloads", 0, "sched", "waited_behind", 0, "share"), [],
     r"waited_behind\[0\]\.share: expected a number, got a list"),
    (("events",), None, r"snapshot\.events: expected a Events object, got null"),
    (("traces", 0, "status"), "200", r"traces\[0\]\.status: expected an integer"),
    (("traces", 0, "bypassed"), 1, r"traces\[0\]\.bypassed: expected true or false, got a number"),
    (("traces", 0, "preemptions"), None, r"traces\[0\]\.preemptions: expected a list, got null"),
    (("traces", 0, "preemptions", 0, "ts_ns"), "1",
     r"traces\[0\]\.preemptions\[0\]\.ts_ns: expected an integer"),
    (("traces", 0, "wakeup_waits", 0), 5,
     r"traces\[0\]\.wakeup_waits\[0\]: expected a WakeupWaitEvent object, got a number"),
    (("alerts", 0, "labels", "x\x1b[2J"), 5, r"labels\.'x\\x1b\[2J': expected a string"),
    (("counters", "processes_vanished"), "2", r"counters\.processes_vanished: expected an int"),
    (("probes", "sched"), "ok", r"probes\.sched: expected an object, got a string"),
    (("probes", "sched", "lost"), "many", r"probes\.sched\.lost: expected an integer"),
    (("probes", "sched", "status"), 0, r"probes\.sched\.status: expected a string"),
    (("schema",), ["x"], r"expected schema 'wasmtop\.snapshot/v1', got a list"),
]  # fmt: skip


@pytest.mark.parametrize("path, value, message", WRONG)
def test_a_value_of_the_wrong_type_is_refused_naming_the_place(path, value, message):
    d = json.loads(trip(full_snapshot()).to_json())
    _set(d, path, value)
    with pytest.raises(ValueError, match=message):
        snapshot_from_dict(d)


def test_deep_nesting_and_non_json_numbers_are_refused_before_parsing():
    for text in ("[" * 996, "[" * 100_000 + "]" * 100_000, '{"a":' * 5000 + "1" + "}" * 5000):
        with pytest.raises(ValueError, match="JSON nested deeper than 64 levels"):
            snapshot_from_json(text)
    # Brackets inside strings are not nesting.
    s = trip(full_snapshot())
    deep_name = dataclasses.replace(s, host="[" * 500 + "{" * 500 + '"\\' + "]" * 3)
    assert snapshot_from_json(deep_name.to_json()) == deep_name
    assert snapshot_from_json(s.to_json(indent=None).encode()) == s
    check_json_depth("[" * 64 + "]" * 64)
    with pytest.raises(ValueError, match="nested deeper"):
        check_json_depth("[" * 65)
    for text, why in (
        ('{"cpus": NaN}', "NaN is not JSON"),
        ('{"cpus": -Infinity}', "-Infinity is not JSON"),
        ("{", "Expecting property name"),
        (b"\xff", "not UTF-8"),
        ("[]", "expected a Snapshot object, got list"),
    ):
        with pytest.raises(ValueError, match=why):
            snapshot_from_json(text)


# -- properties: a Snapshot or ValueError, never another exception -------------------------------
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()  # NaN and infinities included
    | st.text(max_size=12)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=16,
)
VALID = json.loads(trip(full_snapshot()).to_json())


def _paths(value, path=()):
    """Every place in a JSON value (its root included), as a path of keys and indexes."""
    yield path
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _paths(v, (*path, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _paths(v, (*path, i))


def mutated_snapshots(base=VALID):
    """The valid Snapshot dict ``base`` with one to four places replaced by an arbitrary JSON
    value, set to null, or deleted."""
    places = [p for p in _paths(base) if p]

    @st.composite
    def mutate(draw):
        d = copy.deepcopy(base)
        for _ in range(draw(st.integers(1, 4))):
            path = draw(st.sampled_from(places))
            how = draw(st.sampled_from(["replace", "null", "delete"]))
            try:
                parent = d
                for p in path[:-1]:
                    parent = parent[p]
                if how == "delete" and isinstance(parent, dict):
                    parent.pop(path[-1], None)
                else:
                    parent[path[-1]] = None if how == "null" else draw(json_values)
            except (KeyError, IndexError, TypeError):
                continue  # an earlier mutation removed or replaced the place
        return d

    return mutate()


def _depth(value):
    if isinstance(value, dict):
        return 1 + max(map(_depth, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(_depth, value), default=0)
    return 0


@given(
    st.recursive(
        st.integers() | st.text(st.sampled_from('[]{}"\\x\u00e9,:')),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner),
        max_leaves=30,
    ),
    st.integers(0, 6),
    st.booleans(),
)
def test_the_depth_check_agrees_with_the_parsed_depth(value, limit, ascii_only):
    text = json.dumps(value, ensure_ascii=ascii_only)
    if _depth(value) > limit:
        with pytest.raises(ValueError, match=f"nested deeper than {limit} levels"):
            check_json_depth(text, limit)
    else:
        check_json_depth(text, limit)


def decodes_or_refuses(value):
    try:
        snap = snapshot_from_dict(value)
    except ValueError:
        return None
    assert isinstance(snap, Snapshot)
    return snap


@given(json_values)
def test_any_json_value_is_a_snapshot_or_a_value_error(value):
    decodes_or_refuses(value)
    decodes_or_refuses({**VALID, "workloads": value})
    decodes_or_refuses({**VALID, "events": value, "traces": value, "alerts": value})


@given(mutated_snapshots())
def test_a_mutated_snapshot_is_a_snapshot_or_a_value_error(d):
    decodes_or_refuses(d)


# -- the client of `wasmtop --connect`: a hostile daemon's messages --------------------------------
class _Raw:
    """What SnapshotServer.publish() needs of a Snapshot, with JSON chosen by the test."""

    def __init__(self, text: str) -> None:
        self.text, self.schema, self.host, self.window_s, self.workloads = text, "", "x", 1.0, ()

    def to_json(self, indent=None) -> str:
        return self.text


def test_the_client_counts_and_shows_an_unreadable_snapshot_and_keeps_receiving():
    from peers import free_port
    from support import wait_for
    from wasmtop.grpcapi import RemoteSnapshots, SnapshotServer

    server = SnapshotServer(f"127.0.0.1:{free_port()}")
    try:
        server.publish(_Raw("[" * 996))
        with RemoteSnapshots(f"127.0.0.1:{server.port}", reconnect_max_s=0.2) as remote:
            assert wait_for(lambda: remote.unreadable >= 1, timeout_s=10)
            assert wait_for(lambda: not remote.connected, timeout_s=10)
            assert remote.error.startswith("unreadable Snapshot (")
            assert "nested deeper than 64" in remote.error
            # A string where an int belongs, and a name made to clear the screen.
            d = json.loads(trip(full_snapshot()).to_json())
            d["cpus"] = "\x1b[2J"
            server.publish(_Raw(json.dumps(d)))
            assert wait_for(lambda: "snapshot.cpus: expected an integer" in (remote.error or ""))
            assert "\x1b" not in remote.error
            good = full_snapshot()
            server.publish(good)
            got = remote.latest(10.0)
            assert got is not None and got.to_dict() == good.to_dict()
            assert remote.connected and remote._thread.is_alive()
            assert remote.unreadable >= 2
    finally:
        server.close(0.5)
