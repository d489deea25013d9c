"""The alert evaluator on built Snapshots: pending/firing/resolved transitions, "N in a row" for
events and for gauges, `for:` durations, per-workload independence, incomplete data."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest

from wasmtop.alerts.evaluate import Evaluator
from wasmtop.alerts.rules import load_all, parse
from wasmtop.collector.model import (
    ColdStarts,
    DelayQuantiles,
    Events,
    LatencyQuantiles,
    PreemptionEvent,
    Snapshot,
)
from wasmtop.collector.workloads import Pod

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from synthetic import snapshot  # noqa: E402 - the benchmark's Snapshot builder

BASE = snapshot(1)
TEMPLATE = BASE.workloads[0]


def workload(key: str, *, p99: float | None = None, preemptions: int = 0, over: int = 0,
             cold: tuple[float, ...] = (), pod: Pod | None = None):  # fmt: skip
    sched = dataclasses.replace(
        TEMPLATE.sched, preemptions=preemptions, preemptions_over_threshold=over
    )
    req = None
    if p99 is not None:
        req = dataclasses.replace(
            TEMPLATE.requests, latency_ms=LatencyQuantiles(1.0, 2.0, p99, p99, p99)
        )
    rt = TEMPLATE.runtime_metrics
    if cold:
        cs = ColdStarts(len(cold), cold[-1], cold[0], cold[-1], max(cold), len(cold), cold)
        rt = dataclasses.replace(rt, cold_start=cs, cold_start_ms=cold[-1])
    else:
        rt = dataclasses.replace(rt, cold_start=None, cold_start_ms=None)
    return dataclasses.replace(TEMPLATE, key=key, sched=sched, requests=req,
                               runtime_metrics=rt, pod=pod)  # fmt: skip


def preemption(key: str, tid: int, seq: int, delay_ms: float, ts: int) -> PreemptionEvent:
    return PreemptionEvent(ts_ns=ts, pid=tid, tid=tid, cpu=0, comm="victim",
                           delay_us=delay_ms * 1e3, preemptor_pid=1, preemptor_tid=1,
                           preemptor_comm="hog", workload=key, thread_preemptions=seq)  # fmt: skip


def snap(*workloads, events=(), probes=None, total=None) -> Snapshot:
    return dataclasses.replace(
        BASE,
        workloads=tuple(workloads),
        events=Events(preemptions=tuple(events), preemptions_total=total or len(events)),
        probes=probes if probes is not None else {"sched": {"events": 0, "lost": 0}},
    )


RULES = """
rules:
  - name: Preempted
    quantity: sched.preempt_delay_ms
    threshold: 50
    consecutive: 3
    severity: warning
    annotations: {summary: "{{ $labels.workload }} preempted {{ $value }} ms"}
  - name: SlowP99
    quantity: requests.latency_ms.p99
    threshold: 10
    for: 30s
    severity: critical
    annotations: {summary: "p99 {{ printf \\"%.1f\\" $value }} > {{ $threshold }}"}
  - name: SlowP99Thrice
    quantity: requests.latency_ms.p99
    threshold: 10
    consecutive: 3
    severity: warning
    annotations: {summary: s}
  - name: Lost
    quantity: probes.lost
    threshold: 0
    keep_firing_for: 10s
    severity: warning
    annotations: {summary: "{{ $labels.probe }} lost {{ $value }}"}
"""


def evaluator(name: str, **kw) -> Evaluator:
    return Evaluator([r for r in parse(RULES) if r.name == name], node="n1", **kw)


def states(ev) -> dict[str, str]:
    return {a.workload or a.probe: a.state for a in ev.snapshot.alerts}


def test_events_three_over_one_under_three_over():
    e = evaluator("Preempted")
    w = workload("pid:7", preemptions=3, over=3)
    # 3 over in a row, spread over two windows: pending, then firing on the third.
    r1 = e.evaluate(
        snap(w, events=[preemption("pid:7", 7, 1, 60, 1), preemption("pid:7", 7, 2, 70, 2)]),
        now=100,
    )
    assert states(r1) == {"pid:7": "pending"}
    assert r1.firing == [] and r1.resolved == []
    r2 = e.evaluate(snap(w, events=[preemption("pid:7", 7, 3, 80, 3)]), now=101)
    assert states(r2) == {"pid:7": "firing"}
    alert = r2.snapshot.alerts[0]
    assert (
        alert.value == 80
        and alert.threshold == 50
        and alert.annotations["summary"] == "pid:7 preempted 80 ms"
    )
    assert dict(r2.firing[0].labels) == {"alertname": "Preempted", "severity": "warning",
                                         "node": "n1", "workload": "pid:7"}  # fmt: skip
    assert r2.firing[0].starts_at_s == 100  # when the run began: the pending alert's start
    # One under (a reported event below the rule's threshold): the count starts over, and with
    # no run of 3 in this window the alert resolves.
    r3 = e.evaluate(snap(w, events=[preemption("pid:7", 7, 4, 20, 5),
                                    preemption("pid:7", 7, 5, 60, 6)]), now=102)  # fmt: skip
    assert states(r3) == {"pid:7": "pending"}
    assert [dict(n.labels)["alertname"] for n in r3.resolved] == ["Preempted"]
    assert r3.resolved[0].resolved_at_s == 102
    r4 = e.evaluate(snap(w, events=[preemption("pid:7", 7, 6, 60, 7)]), now=103)
    assert states(r4) == {"pid:7": "pending"}  # 2 in a row since the reset
    r5 = e.evaluate(snap(w, events=[preemption("pid:7", 7, 7, 90, 8)]), now=104)
    assert states(r5) == {"pid:7": "firing"} and r5.snapshot.alerts[0].value == 90


def test_a_shorter_preemption_between_two_reported_ones_resets_the_run():
    e = evaluator("Preempted")
    w = workload("pid:7", preemptions=4, over=3)
    # seq 1, 2, then 4: the thread's third preemption was below the kernel threshold.
    events = [preemption("pid:7", 7, 1, 60, 1), preemption("pid:7", 7, 2, 60, 2),
              preemption("pid:7", 7, 4, 60, 4)]  # fmt: skip
    assert states(e.evaluate(snap(w, events=events), now=1)) == {"pid:7": "pending"}
    # Without the gap the same three are a run.
    e2 = evaluator("Preempted")
    events[2] = preemption("pid:7", 7, 3, 60, 4)
    w3 = workload("pid:7", preemptions=3, over=3)
    assert states(e2.evaluate(snap(w3, events=events), now=1)) == {"pid:7": "firing"}


def test_shorter_preemptions_that_cannot_be_placed_reset_at_the_window_end():
    e = evaluator("Preempted")
    # Two reported, one shorter somewhere (e.g. of another thread): the run does not carry on.
    w = workload("pid:7", preemptions=3, over=2)
    e.evaluate(
        snap(w, events=[preemption("pid:7", 7, 1, 60, 1), preemption("pid:7", 8, 1, 60, 2)]), now=1
    )
    r = e.evaluate(snap(workload("pid:7", preemptions=1, over=1),
                        events=[preemption("pid:7", 7, 2, 60, 3)]), now=2)  # fmt: skip
    assert states(r) == {"pid:7": "pending"}


def test_workloads_are_independent():
    e = evaluator("Preempted")
    a, b = workload("pid:1", preemptions=2, over=2), workload("pid:2", preemptions=1, over=1)
    events = [preemption("pid:1", 1, 1, 60, 1), preemption("pid:2", 2, 1, 60, 2),
              preemption("pid:1", 1, 2, 60, 3)]  # fmt: skip
    assert states(e.evaluate(snap(a, b, events=events), now=1)) == {
        "pid:1": "pending",
        "pid:2": "pending",
    }
    r = e.evaluate(snap(workload("pid:1", preemptions=1, over=1), workload("pid:2", preemptions=1),
                        events=[preemption("pid:1", 1, 3, 60, 4)]), now=2)  # fmt: skip
    assert states(r) == {"pid:1": "firing"}  # pid:2 had a shorter one: its run is gone


def test_for_duration_pending_then_firing_then_resolved():
    e = evaluator("SlowP99")
    pod = Pod(namespace="edge", name="api-0", uid="u", container="app", container_id="c")
    seen = []
    for t, p99 in ((0, 12.0), (10, 15.0), (29, 11.0), (30, 12.5), (40, 13.0), (41, 9.0)):
        seen.append((t, states(e.evaluate(snap(workload("w", p99=p99, pod=pod)), now=1000 + t))))
    assert seen == [(0, {"w": "pending"}), (10, {"w": "pending"}), (29, {"w": "pending"}),
                    (30, {"w": "firing"}), (40, {"w": "firing"}), (41, {})]  # fmt: skip
    r = e.evaluate(snap(workload("w", p99=20.0, pod=pod)), now=1050)
    assert states(r) == {"w": "pending"}  # starts over: the 30 s count again
    alert = r.snapshot.alerts[0]
    assert alert.labels["namespace"] == "edge" and alert.labels["pod"] == "api-0"
    assert alert.annotations["summary"] == "p99 20.0 > 10"


def test_resolution_is_reported_once_with_its_time():
    e = evaluator("SlowP99")
    e.evaluate(snap(workload("w", p99=12.0)), now=0)
    assert len(e.evaluate(snap(workload("w", p99=12.0)), now=30).firing) == 1
    r = e.evaluate(snap(workload("w", p99=5.0)), now=31)
    assert [n.resolved_at_s for n in r.resolved] == [31] and r.firing == []
    assert e.evaluate(snap(workload("w", p99=5.0)), now=32).resolved == []


def test_gauge_consecutive_counts_evaluations():
    e = evaluator("SlowP99Thrice")
    got = [states(e.evaluate(snap(workload("w", p99=v)), now=t))
           for t, v in enumerate((11, 11, 9, 11, 11, 11))]  # fmt: skip
    assert got == [{"w": "pending"}, {"w": "pending"}, {}, {"w": "pending"}, {"w": "pending"},
                   {"w": "firing"}]  # fmt: skip


def test_a_vanished_workload_resolves():
    e = evaluator("SlowP99")
    e.evaluate(snap(workload("w", p99=12.0)), now=0)
    e.evaluate(snap(workload("w", p99=12.0)), now=30)
    r = e.evaluate(snap(), now=31)
    assert r.snapshot.alerts == () and len(r.resolved) == 1


def test_lost_events_fire_per_probe_keep_firing_for_and_resolve():
    e = evaluator("Lost")

    def probes(lost):
        return {"sched": {"events": 100, "lost": lost}, "tracectx": {"events": 5, "lost": 0}}

    assert states(e.evaluate(snap(probes=probes(0)), now=0)) == {}
    r = e.evaluate(snap(probes=probes(4)), now=1)  # 4 lost in this window
    assert states(r) == {"sched": "firing"}
    assert r.snapshot.alerts[0].annotations["summary"] == "sched lost 4"
    assert dict(r.firing[0].labels)["probe"] == "sched"
    assert states(e.evaluate(snap(probes=probes(4)), now=5)) == {"sched": "firing"}  # kept 10 s
    r = e.evaluate(snap(probes=probes(4)), now=11)
    assert states(r) == {} and len(r.resolved) == 1


def test_losses_of_the_feeding_probe_mark_the_alert_incomplete():
    e = evaluator("Preempted", loss_ratio=0.01)
    w = workload("pid:7", preemptions=3, over=3)
    events = [preemption("pid:7", 7, i, 60, i) for i in (1, 2, 3)]
    r = e.evaluate(snap(w, events=events, probes={"sched": {"events": 97, "lost": 3}}), now=1)
    a = r.snapshot.alerts[0]
    assert a.state == "firing" and a.incomplete_data
    assert (
        a.annotations["incomplete_data"]
        == "the sched probe lost 3 of 100 events in the window (3.0 %)"
    )
    # Below the ratio: complete.
    r = e.evaluate(snap(w, events=[preemption("pid:7", 7, i, 60, i) for i in (4, 5, 6)],
                        probes={"sched": {"events": 1097, "lost": 4}}), now=2)  # fmt: skip
    assert not r.snapshot.alerts[0].incomplete_data
    # Events cut by the Snapshot's cap: said too.
    r = e.evaluate(snap(w, events=[preemption("pid:7", 7, i, 60, i) for i in (7, 8, 9)], total=50,
                        probes={"sched": {"events": 1097, "lost": 4}}), now=3)  # fmt: skip
    assert r.snapshot.alerts[0].incomplete_data


def test_cold_starts_are_events():
    rule = [r for r in load_all([]) if r.name == "WasmtopColdStartSlow"]
    e = Evaluator(rule, node="n1")
    assert states(e.evaluate(snap(workload("w", cold=(3.0, 4.0))), now=0)) == {}
    r = e.evaluate(snap(workload("w", cold=(7.5,))), now=1)
    assert states(r) == {"w": "firing"}
    assert (
        r.snapshot.alerts[0]
        .annotations["description"]
        .startswith("A process of w took 7.5 ms from exec to its first listen (threshold 5 ms).")
    )
    # No new cold start: the alert stays for keep_firing_for (5 m), then resolves.
    assert states(e.evaluate(snap(workload("w")), now=200)) == {"w": "firing"}
    r = e.evaluate(snap(workload("w")), now=302)
    assert states(r) == {} and len(r.resolved) == 1


def woken(key: str, p99_ms: float | None, *, preempt_p99_ms: float | None = None,
          runq_us: float = 0.0, pod: Pod | None = None):  # fmt: skip
    """A workload whose threads' wake-up delay P99 is ``p99_ms`` (None: no wake-up in the
    window), its preemption delay P99 ``preempt_p99_ms``, run-queue delay ``runq_us``."""
    w = workload(key, pod=pod)
    us = None if p99_ms is None else p99_ms * 1e3
    pre = None if preempt_p99_ms is None else preempt_p99_ms * 1e3
    sched = dataclasses.replace(
        w.sched,
        wakeup_delay_us=DelayQuantiles(None if us is None else 300.0, us, us),
        preempt_delay_us=DelayQuantiles(pre, pre, pre),
        runq_delay_total_us=runq_us,
        wakeup_delay_total_us=0.0,
        preempt_delay_total_us=0.0,
    )
    return dataclasses.replace(w, sched=sched)


def test_the_shipped_wakeup_delay_rule_fires_after_30_s_above_10_ms_and_resolves():
    (rule,) = [r for r in load_all([]) if r.name == "WasmtopWakeupDelayP99"]
    e = Evaluator([rule], node="n1")
    pod = Pod(namespace="edge", name="api-0", uid="u", container="app", container_id="c")
    # "calm" sits exactly at the threshold (not above it) with a long preemption P99 (another
    # quantity); "quiet" had no wake-up in the window.
    others = (woken("calm", 10.0, preempt_p99_ms=80.0), woken("quiet", None, preempt_p99_ms=80.0))
    seen = [
        states(e.evaluate(snap(woken("slow", p99, pod=pod), *others), now=1000 + t))
        for t, p99 in ((0, 12.0), (15, 30.0), (29, 11.0), (30, 12.5))
    ]
    assert seen == [{"slow": "pending"}] * 3 + [{"slow": "firing"}]
    r = e.evaluate(snap(woken("slow", 12.5, pod=pod), *others), now=1031)
    (alert,) = r.snapshot.alerts
    assert (alert.state, alert.value, alert.threshold) == ("firing", 12.5, 10)
    assert alert.quantity == "sched.wakeup_delay_p99_ms" and alert.severity == "warning"
    assert alert.labels == {"alertname": "WasmtopWakeupDelayP99", "namespace": "edge",
                            "node": "n1", "pod": "api-0", "severity": "warning",
                            "workload": "slow"}  # fmt: skip
    assert alert.annotations["description"] == (
        "The P99 wake-up delay of slow is 12.50 ms (threshold 10 ms, the edge services' P99 "
        "budget): its threads were runnable but waited behind other tasks on their CPU."
    )
    assert alert.annotations["runbook_url"] == "docs/alerts.md#wasmtopwakeupdelayp99"
    assert r.firing[0].starts_at_s == 1000
    r = e.evaluate(snap(woken("slow", 9.0, pod=pod), *others), now=1032)
    assert states(r) == {} and len(r.resolved) == 1


def test_run_queue_delay_per_second_is_divided_by_the_snapshot_window():
    (rule,) = parse("""
rules:
  - name: Queued
    quantity: sched.runq_delay_seconds_per_second
    threshold: 0.5
    severity: warning
    annotations: {summary: "{{ $labels.workload }} queued {{ $value }} s/s"}
""")  # fmt: skip
    e = Evaluator([rule], node="n1")
    w = woken("w", 1.0, runq_us=1.5e6)  # 1.5 s of run-queue delay in the window
    r = e.evaluate(dataclasses.replace(snap(w), window_s=2.0), now=0)  # 0.75 s per second
    assert states(r) == {"w": "firing"}
    assert r.snapshot.alerts[0].annotations["summary"] == "w queued 0.75 s/s"
    r = e.evaluate(dataclasses.replace(snap(w), window_s=4.0), now=1)  # 0.375 s per second
    assert states(r) == {} and len(r.resolved) == 1


def test_instances_per_rule_are_capped_and_the_rest_counted():
    e = evaluator("SlowP99Thrice", max_per_rule=2)
    ws = [workload(f"w{i}", p99=20.0) for i in range(5)]
    for t in range(3):
        r = e.evaluate(snap(*ws), now=t)
    assert sum(a.state == "firing" for a in r.snapshot.alerts) == 2
    assert e.suppressed == {"SlowP99Thrice": 3}


def test_the_cap_counts_alerts_not_the_workloads_looked_at():
    """Workloads below the threshold take no slot: a slow workload late in the order alerts."""
    e = evaluator("SlowP99Thrice", max_per_rule=2)
    ws = [workload(f"calm{i}", p99=1.0) for i in range(5)] + [workload("zslow", p99=20.0)]
    for t in range(3):
        r = e.evaluate(snap(*ws), now=t)
    assert [(a.labels["workload"], a.state) for a in r.snapshot.alerts] == [("zslow", "firing")]
    assert e.suppressed == {}


@pytest.mark.parametrize("rules", [load_all([])])
def test_reload_keeps_the_state_of_unchanged_rules(rules):
    old = Evaluator(rules, node="n1")
    for t in (0, 30):
        old.evaluate(snap(workload("w", p99=12.0)), now=t)
    new = Evaluator(rules, node="n1")
    new.carry_over(old)
    r = new.evaluate(snap(workload("w", p99=12.0)), now=31)
    assert {a.name: a.state for a in r.snapshot.alerts}["WasmtopRequestLatencyP99"] == "firing"


def test_a_rule_below_the_snapshots_reporting_threshold_is_left_out_and_said_once():
    """One policy for every command: the threshold comes with the Snapshot
    (probes.sched.threshold_ms), and a preemption rule under it, which could never fire, is
    not evaluated; ``say`` hears it once, and again only after it became evaluable."""
    said: list[str] = []
    e = Evaluator(
        [r for r in parse(RULES) if r.name in ("Preempted", "SlowP99Thrice")],
        node="n",
        say=said.append,
    )
    w = workload("pid:7", preemptions=3, over=3, p99=20)
    events = [preemption("pid:7", 7, i, 60, i) for i in (1, 2, 3)]
    above = {"sched": {"events": 3, "lost": 0, "threshold_ms": 55.0}}
    for now in (100, 101):
        r = e.evaluate(snap(w, events=events, probes=above), now=now)
        assert e.unevaluated.keys() == {"Preempted"}
        assert {a.name for a in r.snapshot.alerts} == {"SlowP99Thrice"}
    assert said == [
        "rule Preempted not evaluated: its threshold 50 ms is below the scheduler probe's "
        "reporting threshold 55 ms (probes.sched.threshold_ms, --threshold-ms): shorter "
        "preemptions are counted, not reported one by one"
    ]
    at = {"sched": {"events": 3, "lost": 0, "threshold_ms": 50.0}}  # a rule at the floor is fed
    r = e.evaluate(snap(w, events=events, probes=at), now=102)
    assert e.unevaluated == {} and "Preempted" in {a.name for a in r.snapshot.alerts}
    e.evaluate(snap(w, events=events, probes=above), now=103)
    assert len(said) == 2


# -- wasmtop's own workloads; a quantity over less than the span it needs ---------------------
def growing(key: str, mb_per_min: float, covered_s: float, *, full_s: float = 300.0,
            own: bool = False):  # fmt: skip
    """A workload whose RSS grows ``mb_per_min``, the slope covering ``covered_s`` of a growth
    window of ``full_s``."""
    w = workload(key)
    rt = dataclasses.replace(w.runtime_metrics, rss_growth_mb_per_min=mb_per_min,
                             growth_window_s=covered_s, growth_window_full_s=full_s)  # fmt: skip
    return dataclasses.replace(w, runtime_metrics=rt, wasmtop=own)


def growth_rule() -> Evaluator:
    (rule,) = [r for r in load_all([]) if r.name == "WasmtopMemoryGrowth"]  # > 2 MB/min for 2m
    return Evaluator([rule], node="n1")


def test_wasmtop_own_workloads_never_alert_whatever_their_figures():
    rules = [r for r in parse(RULES) if r.name in ("Preempted", "SlowP99Thrice")]
    own, other = Evaluator(rules, node="n1"), Evaluator(rules, node="n1")
    growth_own, growth_other = growth_rule(), growth_rule()
    for t in range(6):
        events = [preemption("pid:7", 7, 3 * t + i, 900, 3 * t + i) for i in (1, 2, 3)]
        w = workload("pid:7", p99=500.0, preemptions=3, over=3)
        r_own = own.evaluate(snap(dataclasses.replace(w, wasmtop=True), events=events), now=t)
        r_other = other.evaluate(snap(w, events=events), now=t)
        g_own = growth_own.evaluate(snap(growing("pid:7", 80.0, 300.0, own=True)), now=60 * t)
        g_other = growth_other.evaluate(snap(growing("pid:7", 80.0, 300.0)), now=60 * t)
        assert r_own.snapshot.alerts == () and r_own.firing == [] and r_own.resolved == []
        assert g_own.snapshot.alerts == () and g_own.firing == []
    # The same figures on a workload that is not wasmtop's fire every rule.
    assert {a.name: a.state for a in r_other.snapshot.alerts} == {
        "Preempted": "firing",
        "SlowP99Thrice": "firing",
    }
    assert states(g_other) == {"pid:7": "firing"}


def test_a_workload_that_becomes_wasmtops_own_resolves_its_alerts():
    e = evaluator("SlowP99")
    e.evaluate(snap(workload("w", p99=12.0)), now=0)
    assert len(e.evaluate(snap(workload("w", p99=12.0)), now=30).firing) == 1
    r = e.evaluate(snap(dataclasses.replace(workload("w", p99=12.0), wasmtop=True)), now=31)
    assert r.snapshot.alerts == () and len(r.resolved) == 1


def test_a_growth_slope_over_a_short_span_is_not_judged_until_it_covers_the_window():
    e = growth_rule()
    seen = []
    # 40 MB/min (20 times the threshold) from the first seconds on; one evaluation every 10 s.
    for covered in (2.0, 6.0, 60.0, 150.0, 290.0):
        r = e.evaluate(snap(growing("svc", 40.0, covered), growing("flat", 0.5, covered)),
                       now=1000 + covered)  # fmt: skip
        assert r.firing == [] and r.resolved == []  # nothing to post to Alertmanager
        (alert,) = r.snapshot.alerts  # "flat" would not cross: not listed at all
        seen.append((alert.workload, alert.state, alert.value, alert.data_s, alert.data_needed_s))
        assert alert.annotations["not_enough_data"] == (
            f"not enough data yet: the value covers {covered:.0f} s of the 300 s "
            "runtime.rss_growth_mb_per_min is taken over; the rule judges it once it covers them"
        )
    assert seen == [("svc", "not_enough_data", 40.0, c, 300.0)
                    for c in (2.0, 6.0, 60.0, 150.0, 290.0)]  # fmt: skip
    # The window covered: judged from here on, pending, and firing after the rule's 2 minutes.
    got = []
    for t in (300, 360, 419, 420):
        r = e.evaluate(snap(growing("svc", 40.0, 300.0), growing("flat", 0.5, 300.0)), now=1000 + t)
        got.append((states(r), [a.data_s for a in r.snapshot.alerts], len(r.firing)))
    assert got == [({"svc": "pending"}, [300.0], 0), ({"svc": "pending"}, [300.0], 0),
                   ({"svc": "pending"}, [300.0], 0), ({"svc": "firing"}, [300.0], 1)]  # fmt: skip
    assert r.firing[0].starts_at_s == 1300  # pending began when the window was covered


def test_a_firing_growth_alert_whose_span_falls_short_again_resolves_and_waits():
    """E.g. a collector restarted by a reload: its growth samples begin again."""
    e = growth_rule()
    e.evaluate(snap(growing("svc", 40.0, 300.0)), now=0)
    assert len(e.evaluate(snap(growing("svc", 40.0, 300.0)), now=120).firing) == 1
    r = e.evaluate(snap(growing("svc", 40.0, 5.0)), now=121)
    assert [a.state for a in r.snapshot.alerts] == ["not_enough_data"] and r.firing == []
    assert len(r.resolved) == 1 and r.resolved[0].resolved_at_s == 121


def test_a_snapshot_that_does_not_say_the_growth_window_is_judged_as_before():
    """A daemon from before growth_window_full_s (it reads 0): the slope is taken as covering."""
    e = growth_rule()
    r = e.evaluate(snap(growing("svc", 40.0, 6.0, full_s=0.0)), now=0)
    assert states(r) == {"svc": "pending"}
    assert r.snapshot.alerts[0].data_s is None and r.snapshot.alerts[0].data_needed_s is None


def test_alerts_not_judged_are_capped_like_the_others():
    (rule,) = [r for r in load_all([]) if r.name == "WasmtopMemoryGrowth"]
    e = Evaluator([rule], node="n1", max_per_rule=2)
    r = e.evaluate(snap(*(growing(f"w{i}", 40.0, 6.0) for i in range(5))), now=0)
    assert [a.state for a in r.snapshot.alerts] == ["not_enough_data"] * 2
    assert e.suppressed == {"WasmtopMemoryGrowth": 3}
