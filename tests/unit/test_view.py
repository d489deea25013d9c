"""The terminal UI's screen as a pure function: width, order, filter, colour only past a rule's
threshold, detail view, keys; control characters in names escaped, and any Snapshot the decoder
accepts rendered without an exception (property tests)."""

from __future__ import annotations

import copy
import dataclasses
import functools
import io
import re
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rich.console import Console
from test_snapshot_json import VALID, decodes_or_refuses, json_values, mutated_snapshots

from wasmtop.alerts.rules import load_all
from wasmtop.collector import snapshot_json as sj
from wasmtop.collector.model import (
    SCHEMA,
    Alert,
    DelayQuantiles,
    Events,
    HistogramBucket,
    Migration,
    PreemptionEvent,
    Snapshot,
    Trace,
    WaitedBehind,
    WakeupWaitEvent,
)
from wasmtop.collector.snapshot_json import snapshot_from_dict
from wasmtop.collector.workloads import Pod
from wasmtop.columns import TOP_COLUMNS, columns_for, header_lines, plain_lines, plain_table
from wasmtop.filters import FilterError
from wasmtop.filters import parse as parse_filter
from wasmtop.safe import safe
from wasmtop.top import Keys, handle, parse_keys
from wasmtop.view import ViewState, keep_selection, render, visible, workload_table

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from synthetic import snapshot  # noqa: E402 - the benchmark's Snapshot builder

RULES = load_all([])


def with_p99(snap, values_ms):
    ws = []
    for w, ms in zip(snap.workloads, values_ms):
        q = DelayQuantiles(10.0, ms * 1e3, ms * 1e3)
        pid = 100 + len(ws)
        sched = dataclasses.replace(w.sched, preempt_delay_us=q)
        ws.append(dataclasses.replace(w, sched=sched, key=f"pid:{pid}", pids=(pid,)))
    return dataclasses.replace(snap, workloads=tuple(ws))


def screen(snap, state) -> tuple[str, Console]:
    console = Console(width=state.width, height=state.height, record=True, color_system="truecolor")
    console.print(render(snap, state, RULES))
    return console.export_text(), console


def test_80x24_fits_and_keeps_the_most_important_columns():
    snap = with_p99(snapshot(40), [1.0] * 40)
    state = ViewState(width=80, height=24)
    text, _ = screen(snap, state)
    lines = text.rstrip("\n").splitlines()
    assert len(lines) <= 24 and max(len(line) for line in lines) <= 80
    head = next(line for line in lines if line.startswith("WORKLOAD"))
    for must in ("INVOL/s", "PRE p99 ms", "REQ p99 ms", "MIGR/s"):
        assert must in head
    wide = [c.header for c in columns_for(200)]
    assert wide == [c.header for c in TOP_COLUMNS]  # a wide terminal shows every column


def test_order_follows_the_sort_column_and_reverse():
    snap = with_p99(snapshot(3), [5.0, 80.0, 20.0])
    state = ViewState()
    assert [w.key for w in visible(snap, state)] == ["pid:101", "pid:102", "pid:100"]
    handle("r", snap, state)
    assert [w.key for w in visible(snap, state)] == ["pid:100", "pid:102", "pid:101"]


def test_colour_only_where_a_value_crosses_a_rule_threshold():
    snap = with_p99(snapshot(2), [80.0, 5.0])  # the preemption rule's threshold is 50 ms
    table = workload_table(snap, ViewState(width=200), RULES, max_rows=10)
    col = next(c for c in table.columns if str(c.header).startswith("PRE p99 ms"))
    cells = {str(t): t.style for t in col._cells}
    assert cells == {"80.00": "bold red", "5.00": ""}
    # No rule on a quantity: never coloured.
    skew = next(c for c in table.columns if str(c.header).startswith("SKEW"))
    assert {t.style for t in skew._cells} == {""}


def test_filter_keys_and_detail():
    snap = with_p99(snapshot(3), [5.0, 80.0, 20.0])
    state = ViewState(width=120, height=40)
    for key in ["/", *"101", "enter"]:
        assert handle(key, snap, state)
    assert [w.key for w in visible(snap, state)] == ["pid:101"]
    state.selected = "pid:101"
    handle("enter", snap, state)
    text, _ = screen(snap, state)
    assert "CPU time by CPU" in text and "pid:101" in text and "preemption delay" in text
    handle("enter", snap, state)
    assert not state.detail
    assert handle("q", snap, state) is False


def test_escape_sequences_become_key_names():
    keys = Keys(-1)
    keys.buffer = "\x1b[Aj\x1b[B\r\x7f\x1b[5~q"
    assert parse_keys(keys) == ["up", "j", "down", "enter", "backspace", "q"]


def test_without_a_snapshot_it_waits_and_the_banner_shows():
    text, _ = screen(None, ViewState(banner="127.0.0.1:9465: connection refused; reconnecting"))
    assert "connection refused" in text and "waiting for the first Snapshot" in text


# -- wake-up delay: the RUNQ column, the detail's histograms and culprits, the waits pane ------
CULPRIT = "pod:shop/db-0/app"


def with_wakeups(snap, values_ms):
    """The workloads of ``snap`` with a wake-up delay P99 each (None: no wake-up measured) and
    a preemption delay P99 of 1 ms."""
    snap = with_p99(snap, [1.0] * len(values_ms))
    ws = []
    for w, ms in zip(snap.workloads, values_ms):
        q = (
            DelayQuantiles(None, None, None)
            if ms is None
            else DelayQuantiles(5.0, ms * 1e3, ms * 1e3)
        )
        ws.append(dataclasses.replace(w, sched=dataclasses.replace(w.sched, wakeup_delay_us=q)))
    return dataclasses.replace(snap, workloads=tuple(ws))


def wakeup_rules(tmp_path, threshold_ms):
    path = tmp_path / "rules.yaml"
    path.write_text(
        "rules:\n"
        "  - name: RunQueueP99\n"
        "    quantity: sched.wakeup_delay_p99_ms\n"
        '    comparator: ">"\n'
        f"    threshold: {threshold_ms}\n"
        "    severity: warning\n"
        "    annotations: {summary: slow wake-ups}\n"
    )
    return load_all([path])


def cell_under(text, header, marker):
    """The cell of the row holding ``marker`` under the right-aligned ``header`` (and its sort
    mark, if any)."""
    lines = text.splitlines()
    head = next(line for line in lines if line.startswith("WORKLOAD"))
    end = head.index(header) + len(header)
    end += head[end] in "▲▼"
    row = next(line for line in lines if marker in line)
    return row[:end].split()[-1]


def test_runq_column_shows_the_wakeup_p99_in_ms_beside_the_preemption_p99():
    snap = with_wakeups(snapshot(2), [7.25, None])
    for width in (80, 200):
        text, _ = screen(snap, ViewState(width=width, height=24))
        head = next(line for line in text.splitlines() if line.startswith("WORKLOAD"))
        assert re.search(r"PRE p99 ms▼\s+RUNQ p99 ms ", head), head
        assert cell_under(text, "RUNQ p99 ms", "pod-0") == "7.25"
        assert cell_under(text, "PRE p99 ms", "pod-0") == "1.00"  # not the wake-up P99
        assert cell_under(text, "RUNQ p99 ms", "pod-1") == "-"  # no wake-up measured


def test_runq_cell_is_red_only_above_a_rule_on_the_wakeup_p99(tmp_path):
    snap = with_wakeups(with_p99(snapshot(3), [80.0, 80.0, 80.0]), [25.0, 10.0, 4.0])
    table = workload_table(snap, ViewState(width=200), wakeup_rules(tmp_path, 10), max_rows=10)
    col = next(c for c in table.columns if str(c.header).startswith("RUNQ p99 ms"))
    assert {str(t): t.style for t in col._cells} == {"25.00": "bold red", "10.00": "", "4.00": ""}
    # A rule on the wake-up delay does not colour the preemption delay, whatever its value.
    pre = next(c for c in table.columns if str(c.header).startswith("PRE p99 ms"))
    assert {t.style for t in pre._cells} == {""}
    # Sorting by it: largest first.
    state = ViewState(sort=[c.header for c in TOP_COLUMNS].index("RUNQ p99 ms"))
    assert [w.key for w in visible(snap, state)] == ["pid:100", "pid:101", "pid:102"]


def runq_snapshot():
    """One workload that waited behind a database, itself, idle and unattributed, with an
    over-threshold wake-up wait and a preemption, and a traced request."""
    snap = with_wakeups(snapshot(2), [7.25, 1.0])
    w = snap.workloads[0]
    pre_hist = (HistogramBucket(1024.0, 2048.0, 31), HistogramBucket(2048.0, 4096.0, 48))
    wake_hist = (HistogramBucket(256.0, 512.0, 5), HistogramBucket(32768.0, 65536.0, 1))
    behind = (
        WaitedBehind("workload", CULPRIT, "postgres", 12.5, 0.386),
        WaitedBehind("workload", w.key, "wasmtime", 8.25, 0.255),
        WaitedBehind("idle", None, None, 1.5, 0.046),
        WaitedBehind("unattributed", None, None, 10.1, 0.312),
    )
    sched = dataclasses.replace(
        w.sched, preempt_delay_hist=pre_hist, wakeup_delay_hist=wake_hist, wakeups=6,
        wakeup_delay_total_us=20000.0, preempt_delay_total_us=12340.0,
        runq_delay_total_us=32340.0, waited_behind=behind,
    )  # fmt: skip
    w = dataclasses.replace(w, sched=sched)
    woken = WakeupWaitEvent(
        ts_ns=2, pid=100, tid=1002, cpu=0, comm="wasmtime", delay_us=73000.0, workload=w.key,
        waker_pid=0, waker_tid=0, waker_comm="swapper/0", holder_pid=55, holder_tid=56,
        holder_comm="kworker", holder_workload=None, replaced_pid=88, replaced_tid=89,
        replaced_comm="postgres", replaced_workload=CULPRIT, trace_id="ef" * 16,
    )  # fmt: skip
    preempted = PreemptionEvent(1, 100, 1001, 1, "wasmtime", 61000.0, 77, 77, "stress", w.key)
    trace = Trace("ab" * 16, "cd" * 8, None, "traceparent", 1, None, 100, 1001, w.key, 0, 80.0,
                  61.0, 2, True, "GET", "/x", 200, queued_ms=3.5, queued_wakeup=4)  # fmt: skip
    events = Events(preemptions=(preempted,), preemptions_total=4, wakeup_waits=(woken,),
                    wakeup_waits_total=2)  # fmt: skip
    return dataclasses.replace(
        snap, workloads=(w, *snap.workloads[1:]), events=events, traces=(trace,)
    )


def test_detail_shows_both_histograms_who_it_waited_behind_and_the_queued_ms():
    snap = runq_snapshot()
    key = snap.workloads[0].key
    for width in (80, 120):
        text, _ = screen(snap, ViewState(width=width, height=60, detail=True, selected=key))
        lines = text.splitlines()
        assert "preemption delay" in text and "wake-up delay" in text
        # Buckets of each histogram: <4.10 ms only preemptions, <0.51 ms only wake-ups.
        assert re.search(r"<4\.10 ms\s+48 █", text) and re.search(r"<0\.51 ms\s+5 █", text)
        assert "run-queue wait 32.34 ms: wake-up 20.00, preemption 12.34" in text
        line_of = {n: next(line for line in lines if line.startswith(n))
                   for n in (CULPRIT, key, "idle", "unattributed")}.get  # fmt: skip
        assert re.search(r"postgres\s+12\.50 ms\s+38\.6 %", line_of(CULPRIT))
        assert re.search(r"\(itself\)\s+8\.25 ms\s+25\.5 %", line_of(key))
        assert re.search(r"1\.50 ms\s+4\.6 %", line_of("idle"))
        assert re.search(r"10\.10 ms\s+31\.2 %", line_of("unattributed"))
        # Largest wait first.
        order = [n for n in (CULPRIT, "unattributed", key, "idle") for line in lines
                 if line.startswith(n)]  # fmt: skip
        assert order == [CULPRIT, "unattributed", key, "idle"]
        assert "preempted 61.00 ms  queued 3.50 ms" in text


def test_waits_pane_names_the_culprit_of_a_wakeup_wait_and_the_preemptor():
    snap = runq_snapshot()
    text, _ = screen(snap, ViewState(width=200, height=30))
    lines = text.splitlines()
    title = lines.index(next(line for line in lines if line.startswith("LONGEST WAITS")))
    assert "4 preempted, 2 woken" in lines[title]
    woken, preempted = lines[title + 1], lines[title + 2]  # longest first
    assert re.search(r"73\.00 ms\s+woken\s+wasmtime\[1002\] cpu0 behind postgres\[89\] "
                     rf"{CULPRIT}\s+held at wake-up by kworker\[56\]", woken)  # fmt: skip
    assert "trace " + "ef" * 16 in woken
    assert re.search(r"61\.00 ms\s+preempted\s+wasmtime\[1001\] cpu1 by stress\[77\]", preempted)
    # The holder at wake-up is named only when it is not the task the thread replaced; a
    # thread that ran on an idle CPU waited behind the idle task.
    ev = snap.events.wakeup_waits[0]
    same = dataclasses.replace(ev, holder_pid=88, holder_tid=89, holder_comm="postgres")
    idle = dataclasses.replace(ev, replaced_pid=0, replaced_tid=0, replaced_comm="swapper/0",
                               replaced_workload=None, delay_us=52000.0)  # fmt: skip
    events = dataclasses.replace(snap.events, wakeup_waits=(same, idle))
    snap = dataclasses.replace(snap, events=events)
    text, _ = screen(snap, ViewState(width=200, height=30))
    assert re.search(rf"73\.00 ms\s+woken .* behind postgres\[89\] {CULPRIT}  trace", text)
    assert "held at wake-up" not in text.split("52.00 ms")[0]
    assert re.search(r"52\.00 ms\s+woken .* behind idle\s+held at wake-up by kworker\[56\]", text)


def test_80x24_with_waits_still_fits():
    snap = runq_snapshot()
    snap = dataclasses.replace(snap, workloads=with_p99(snapshot(40), [1.0] * 40).workloads)
    text, _ = screen(snap, ViewState(width=80, height=24))
    lines = text.rstrip("\n").splitlines()
    assert len(lines) <= 24 and max(len(line) for line in lines) <= 80
    assert any(line.startswith("LONGEST WAITS") for line in lines)
    assert "woken" in text and "preempted" in text


def test_help_names_the_delay_columns_the_histograms_and_waited_behind():
    text, _ = screen(runq_snapshot(), ViewState(width=80, height=24, help=True))
    assert len(text.rstrip("\n").splitlines()) <= 24
    for words in ("RUNQ p99 ms", "wake-up delay", "preemption and wake-up delay histograms",
                  "waited behind", "sort by the next column"):  # fmt: skip
        assert words in " ".join(text.split()), words


# -- hostile names: nothing a workload names itself reaches the terminal as a control byte -------
EVIL = "\x1b[2J\x1b]0;owned\x07\x9b31m\x00\x7f\u202e\u2028"
CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\u2028\u2029]")


# The Snapshot's objects whose keys are data (names, CPUs, routes), not field names.
FREE_KEYS = {"probes", "cpu_time_ns_by_cpu", "fallbacks", "by_status", "by_route", "labels",
             "annotations", "counters"}  # fmt: skip


def _evil(value, free=False):
    """Every string of a Snapshot dict (data keys included) wrapped in control characters."""
    if isinstance(value, dict):
        return {
            (_evil(k) if free else k): (v if k == "schema" else _evil(v, k in FREE_KEYS))
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_evil(v) for v in value]
    if isinstance(value, str):
        return EVIL + value + EVIL
    return value


def hostile_snapshot():
    return snapshot_from_dict(_evil(runq_snapshot_dict()))


def runq_snapshot_dict():
    """The full Snapshot of test_snapshot_json with this file's waits and traces added."""
    runq = runq_snapshot().to_dict()
    d = copy.deepcopy(VALID)
    d["events"]["wakeup_waits"] += runq["events"]["wakeup_waits"]
    d["events"]["preemptions"] += runq["events"]["preemptions"]
    d["traces"] += runq["traces"]
    d["workloads"].append(runq["workloads"][0])
    return d


def every_screen(snap):
    """The text of every view of ``snap``: table at three sizes, help, detail of each workload,
    and the plain tables, with a hostile banner, filter and note too."""
    states = [
        ViewState(width=80, height=24),
        ViewState(width=600, height=80, paused=True, banner=EVIL, notes=[EVIL]),
        ViewState(width=20, height=6, filter=EVIL, editing_filter=True),
        ViewState(width=80, height=24, help=True),
        *(ViewState(width=w, height=60, detail=True, selected=k)
          for k in [x.key for x in snap.workloads][:4] + ["gone"] for w in (50, 600)),
    ]  # fmt: skip
    for state in states:
        keep_selection(snap, state)
        console = Console(width=state.width, height=state.height, file=io.StringIO(),
                          record=True, color_system=None, force_terminal=False)  # fmt: skip
        console.print(render(snap, state, RULES))
        yield console.export_text()
        yield console.file.getvalue()  # what a terminal would get, minus colours
    yield plain_table(snap)
    yield "\n".join(plain_lines(snap, visible(snap, ViewState())))
    yield "\n".join(header_lines(snap))


def test_control_characters_in_every_name_never_reach_the_terminal():
    snap = hostile_snapshot()
    w = snap.workloads[0]
    assert w.comm.startswith("\x1b[2J") and w.pod.name.startswith("\x1b[2J")  # kept as sent
    assert snap.events.wakeup_waits and snap.traces and snap.alerts
    shown = list(every_screen(snap))
    for text in shown:
        assert not CONTROL.search(text), repr(CONTROL.search(text))
    joined = "".join(shown)
    # Shown, escaped: the comm, the pod's name, routes, culprits, preemptors and holders.
    for name in ("wasmtime", "hog", "postgres", "kworker", "stress", "GET", "/x", "pod-0"):
        assert f"\\x1b[2J\\x1b]0;owned\\x07\\x9b31m\\x00\\x7f\\u202e\\u2028{name}" in joined, name


def test_safe_escapes_control_characters_visibly_and_leaves_the_rest():
    assert safe("\x1b[2Jtop") == "\\x1b[2Jtop"
    assert safe("a\tb\nc\x7f\x85\u202e") == "a\\x09b\\x0ac\\x7f\\x85\\u202e"
    assert safe("wasmtime-sp/in ü 日本 ✓") == "wasmtime-sp/in ü 日本 ✓"
    assert safe("\ud800") == "\\ud800" and safe(None) == "None" and safe(7) == "7"


@given(st.text(st.characters(exclude_categories=())))  # lone surrogates included
def test_safe_text_never_holds_a_control_character(text):
    out = safe(text)
    assert not CONTROL.search(out)
    out.encode("utf-8")  # raises on a lone surrogate
    if text.isprintable() and text.isascii():
        assert out == text


# -- any Snapshot the decoder accepts renders ------------------------------------------------------
def _names():
    return st.sampled_from(["pid:1", "pid:2", "ok", "workload", "idle", "firing", "0", "1"]) | (
        st.text(max_size=10)
    )


def _for_hint(hint):
    kind = hint[0]
    if kind == "any":
        return json_values
    if kind == "scalar":
        t = hint[1]
        if t is bool:
            return st.booleans()
        if t is int:
            return st.integers(-3, 3) | st.integers(sj.INT_MIN, sj.INT_MAX)
        if t is float:
            return st.floats(allow_nan=False, allow_infinity=False) | st.integers(-(2**63), 2**63)
        return _names()
    if kind == "optional":
        return st.none() | _for_hint(hint[1])
    if kind == "record":
        return _for_record(hint[1])
    if kind in ("tuple", "list"):
        item = hint[1][0] if kind == "tuple" else hint[1]
        return st.lists(st.deferred(lambda: _for_hint(item)), max_size=3)
    if kind == "dict":
        return st.dictionaries(_names(), _for_hint(hint[1]), max_size=3)
    raise AssertionError(hint)


@functools.cache
def _for_record(cls):
    """JSON of a record of ``cls`` with every field present and of its hint's type."""
    if dataclasses.is_dataclass(cls):
        spec = [(f.name, f.type) for f in dataclasses.fields(cls)]
    else:
        spec = [(n, cls.__annotations__[n]) for n in cls._fields]
    fields = {}
    for name, annotation in spec:
        if cls is Snapshot and name == "schema":
            fields[name] = st.just(SCHEMA)
        elif cls is Snapshot and name == "probes":
            probe = st.fixed_dictionaries(
                {"status": _names(), "events": st.integers(0, 2**64 - 1)},
                optional={"lost": st.integers(-(2**63), 2**64 - 1), "mode": json_values},
            )
            fields[name] = st.dictionaries(_names(), probe, max_size=3)
        else:
            hint = sj._resolve(annotation, cls)
            fields[name] = st.deferred(lambda hint=hint: _for_hint(hint))
    return st.fixed_dictionaries(fields)


def renders(snap):
    for _ in every_screen(snap):
        pass


@settings(suppress_health_check=[HealthCheck.too_slow])  # examples: tests/conftest.py's profile
@given(st.deferred(lambda: _for_record(Snapshot)))
def test_any_snapshot_of_the_right_types_is_accepted_and_renders(d):
    renders(snapshot_from_dict(d))


@given(st.deferred(lambda: mutated_snapshots(runq_snapshot_dict())))
def test_a_mutated_snapshot_the_decoder_accepts_renders(d):
    snap = decodes_or_refuses(d)
    if snap is not None:
        renders(snap)


def test_the_header_says_the_reporting_threshold_the_snapshot_was_taken_with():
    """From the Snapshot, so a --connect UI shows the daemon's threshold, not its own flag."""
    snap = snapshot(2)
    taken = dataclasses.replace(
        snap,
        probes={**snap.probes, "sched": {**snap.probes.get("sched", {}), "threshold_ms": 20.0}},
    )
    text, _ = screen(taken, ViewState(width=120, height=30))
    assert "reports >= 20 ms" in text.splitlines()[0]
    assert "reports >= 20 ms" in header_lines(taken)[0]
    without = dataclasses.replace(
        snap, probes={k: v for k, v in snap.probes.items() if k != "sched"}
    )
    assert "reports" not in screen(without, ViewState(width=120, height=30))[0].splitlines()[0]


def test_an_alert_without_enough_data_is_dimmed_and_not_counted_as_pending():
    from wasmtop.alerts.evaluate import Evaluator
    from wasmtop.view import alerts_line, alerts_pane

    base = with_p99(snapshot(2), [80.0, 1.0])
    ws = []
    for w, covered in zip(base.workloads, (6.0, 300.0)):
        rt = dataclasses.replace(w.runtime_metrics, rss_growth_mb_per_min=40.0,
                                 growth_window_s=covered, growth_window_full_s=300.0)  # fmt: skip
        ws.append(dataclasses.replace(w, runtime_metrics=rt))
    growth = [r for r in RULES if r.name == "WasmtopMemoryGrowth"]
    snap = Evaluator(growth, node="n").evaluate(dataclasses.replace(base, workloads=tuple(ws)),
                                                now=0).snapshot  # fmt: skip
    assert [(a.workload, a.state) for a in snap.alerts] == [
        ("pid:101", "pending"), ("pid:100", "not_enough_data")
    ]  # fmt: skip
    pane = alerts_pane(snap, 5)
    assert [(t.plain, t.style) for t in pane[1:]] == [
        ("pending WasmtopMemoryGrowth pid:101 40 > 2", "yellow"),
        ("waiting WasmtopMemoryGrowth pid:100 40 > 2 (not enough data yet: 6 s of 300 s)", "dim"),
    ]
    text, _ = screen(snap, ViewState(width=160, height=30))
    assert "alerts 0 firing 1 pending 1 not enough data" in text
    assert alerts_line(snap) == "alerts  0 firing, 1 pending, 1 not enough data yet"


def test_a_growth_cell_over_a_short_span_is_dim_and_never_red():
    base = with_p99(snapshot(3), [1.0, 1.0, 1.0])
    ws = []
    for w, (grow, covered) in zip(base.workloads, ((40.0, 6.0), (40.0, 300.0), (0.5, 6.0))):
        rt = dataclasses.replace(w.runtime_metrics, rss_growth_mb_per_min=grow,
                                 growth_window_s=covered, growth_window_full_s=300.0)  # fmt: skip
        ws.append(dataclasses.replace(w, runtime_metrics=rt))
    snap = dataclasses.replace(base, workloads=tuple(ws))
    table = workload_table(snap, ViewState(width=200), RULES, max_rows=10)
    col = next(c for c in table.columns if str(c.header).startswith("GROW MB/m"))
    name = next(c for c in table.columns if str(c.header).startswith("WORKLOAD"))
    styles = {str(n): (str(t), t.style) for n, t in zip(name._cells, col._cells)}
    assert styles == {
        "ns0/pod-0/app": ("40.00", "dim"),  # 20 times the threshold, but over 6 s of 300 s
        "ns1/pod-1/app": ("40.00", "bold red"),  # over the whole window: judged
        "ns2/pod-2/app": ("0.50", "dim"),
    }


# -- wasmtop itself and the kernel threads ----------------------------------------------------
def first_screen():
    """What a new user sees on an idle host: wasmtop itself (its own process), two kernel
    threads with figures of their own, and one service. The kernel threads' delay figures are
    made by the collector's own code from in-kernel log-linear histograms."""
    from wasmtop.collector.collector import delay_figures
    from wasmtop.collector.quantiles import bucket_of

    base = snapshot(4)
    kinds = {
        "pid:37": ("kworker/0:1", {bucket_of(3_000): 40, bucket_of(900_000): 2}, 900_500),
        "pid:15": ("migration/1", {bucket_of(5_000): 10, bucket_of(2_500_000): 1}, 2_510_000),
    }
    ws = []
    for w, key in zip(base.workloads, ("pid:37", "pid:15", "pid:4100", "pid:900")):
        pid = int(key[4:])
        w = dataclasses.replace(w, key=key, pids=(pid,), pod=None, kind="process", runtime=None)
        if key in kinds:
            comm, hist, top = kinds[key]
            q, buckets = delay_figures(hist, top)
            sched = dataclasses.replace(
                w.sched, preempt_delay_us=q, preempt_delay_hist=buckets,
                preemptions=sum(hist.values()), cpu_time_ns_by_cpu={"0": pid, "1": 2 * pid},
                migration_matrix=(Migration(0, 1, pid, "same_llc"),),
            )  # fmt: skip
            rt = dataclasses.replace(w.runtime_metrics, rss_bytes=0, cpu_percent=0.5, wasm=None)
            w = dataclasses.replace(w, comm=comm, sched=sched, runtime_metrics=rt, net=None,
                                    requests=None, kernel_thread=True)  # fmt: skip
        elif key == "pid:4100":
            rt = dataclasses.replace(w.runtime_metrics, rss_bytes=228_000_000, cpu_percent=3.1,
                                     rss_growth_mb_per_min=900.0, growth_window_s=6.0,
                                     growth_window_full_s=300.0)  # fmt: skip
            w = dataclasses.replace(w, comm="wasmtop", runtime_metrics=rt, wasmtop=True)
        else:
            w = dataclasses.replace(w, comm="edge-svc")
        ws.append(w)
    return dataclasses.replace(base, workloads=tuple(ws)), kinds


def test_kernel_threads_fold_into_one_row_summing_their_figures_and_k_lists_them():
    from wasmtop.collector.collector import delay_figures
    from wasmtop.collector.quantiles import merge_histograms

    snap, kinds = first_screen()
    state = ViewState(width=200, height=40)
    rows = {w.key: w for w in visible(snap, state)}
    assert rows.keys() == {"kernel", "pid:900"}  # wasmtop itself is not a row
    kernel = rows["kernel"]
    threads = [snap.workload("pid:37"), snap.workload("pid:15")]
    s = kernel.sched
    for name in ("switches", "involuntary", "migrations", "preemptions", "wakeups",
                 "runq_delay_total_us", "preempt_delay_total_us", "involuntary_per_s"):  # fmt: skip
        assert getattr(s, name) == sum(getattr(t.sched, name) for t in threads), name
    assert s.cpu_time_ns_by_cpu == {"0": 37 + 15, "1": 2 * (37 + 15)}
    assert [(m.from_cpu, m.to_cpu, m.count) for m in s.migration_matrix] == [(0, 1, 52)]
    # The quantiles are those the collector would read from the two histograms added up.
    merged = merge_histograms(hist for _, hist, _ in kinds.values())
    assert s.preempt_delay_us == delay_figures(merged, 2_510_000)[0]
    assert s.preempt_delay_hist == delay_figures(merged, 2_510_000)[1]
    assert sum(wb.share for wb in s.waited_behind) == pytest.approx(1.0)
    assert kernel.runtime_metrics.cpu_percent == 1.0 and kernel.runtime_metrics.rss_bytes == 0
    text, _ = screen(snap, state)
    row = next(line for line in text.splitlines() if line.startswith("kernel: 2 threads (K)"))
    assert " kernel " in row and "kworker" not in text
    # K: one row each, marked as kernel threads; K again: folded.
    assert handle("K", snap, state)
    assert {w.key for w in visible(snap, state)} == {"pid:37", "pid:15", "pid:900"}
    text, _ = screen(snap, state)
    assert "kworker/0:1[37]" in text and "migration/1[15]" in text and "kernel: 2" not in text
    handle("K", snap, state)
    assert {w.key for w in visible(snap, state)} == {"kernel", "pid:900"}


def test_the_filter_folds_the_kernel_threads_it_matches_and_kernel_matches_them_all():
    snap, _ = first_screen()
    state = ViewState(filter="kworker")
    (row,) = visible(snap, state)
    assert row.key == "kernel" and row.pids == (37,)
    state.filter = "kernel"
    (row,) = visible(snap, state)
    assert row.pids == (15, 37)
    state.filter, state.kernel_threads = "kernel", True
    assert {w.key for w in visible(snap, state)} == {"pid:37", "pid:15"}


def test_the_kernel_row_has_a_detail_and_a_kernel_thread_chosen_stays_shown_when_folded():
    snap, _ = first_screen()
    state = ViewState(width=120, height=40, selected="kernel")
    handle("enter", snap, state)
    text, _ = screen(snap, state)
    assert "kernel: 2 threads (K)  kernel" in text and "CPU time by CPU" in text
    assert "pids 15 37" in text
    state = ViewState(width=120, height=40, kernel_threads=True, selected="pid:37")
    handle("enter", snap, state)
    handle("K", snap, state)  # folded while its detail is open
    assert "kworker/0:1[37]" in screen(snap, state)[0]


def test_wasmtop_itself_is_in_the_header_not_a_row_and_never_red():
    snap, _ = first_screen()
    text, _ = screen(snap, ViewState(width=160, height=30))
    lines = text.splitlines()
    assert "wasmtop itself: cpu 3.1 %  rss 228.0 MB" in lines[0]
    assert not any("wasmtop[4100]" in line for line in lines)
    # Narrow, it still fits: the cost goes on a line of the header that has room.
    text, _ = screen(snap, ViewState(width=80, height=24))
    lines = text.rstrip("\n").splitlines()
    assert len(lines) <= 24 and max(len(line) for line in lines) <= 80
    assert any("wasmtop itself: cpu 3.1 %" in line for line in lines[:3])
    # Plain output says it too; the Snapshot's own table lists it, marked.
    assert header_lines(snap)[-1] == "wasmtop itself: cpu 3.1 %  rss 228.0 MB  pids 4100"
    table = plain_table(snap)
    own = next(line for line in table.splitlines() if line.startswith("wasmtop[4100]"))
    assert own.split()[1] == "wasmtop"
    kworker = next(line for line in table.splitlines() if line.startswith("kworker/0:1[37]"))
    assert kworker.split()[1] == "kernel"


def test_the_kernel_threads_flag_sets_how_the_ui_starts():
    from wasmtop.cli import build_parser

    assert build_parser().parse_args(["--kernel-threads"]).kernel_threads is True
    assert build_parser().parse_args(["top", "--kernel-threads"]).kernel_threads is True
    assert build_parser().parse_args([]).kernel_threads is False


def test_an_alert_on_a_folded_kernel_thread_names_the_thread():
    from wasmtop.alerts.evaluate import Evaluator
    from wasmtop.view import alerts_pane

    snap, _ = first_screen()
    wake = [r for r in RULES if r.name == "WasmtopWakeupDelayP99"]  # their p99 is 20 ms
    snap = Evaluator(wake, node="n").evaluate(snap, now=0).snapshot
    lines = [t.plain for t in alerts_pane(snap, 10)[1:]]
    assert lines == [
        "pending WasmtopWakeupDelayP99 pid:15 (kernel thread migration/1) 20 > 10",
        "pending WasmtopWakeupDelayP99 pid:37 (kernel thread kworker/0:1) 20 > 10",
        "pending WasmtopWakeupDelayP99 pid:900 20 > 10",
    ]
    # Wasmtop itself has the same wake-up delay, and no alert.
    assert snap.workload("pid:4100").sched.wakeup_delay_us.p99 == 20_000.0


def test_the_waits_pane_leaves_out_wasmtops_own_waits_but_not_those_it_caused():
    from wasmtop.view import waits_pane

    snap, _ = first_screen()

    def preempted(workload: str, tid: int, by: str, ms: float) -> PreemptionEvent:
        return PreemptionEvent(ts_ns=1, pid=tid, tid=tid, cpu=0, comm="x", delay_us=ms * 1e3,
                               preemptor_pid=9, preemptor_tid=9, preemptor_comm=by,
                               workload=workload)  # fmt: skip

    events = Events(preemptions=(preempted("pid:4100", 4101, "edge-svc", 80.0),
                                 preempted("pid:900", 900, "wasmtop", 60.0)),
                    preemptions_total=2)  # fmt: skip
    lines = [t.plain for t in waits_pane(dataclasses.replace(snap, events=events), 10)]
    assert len(lines) == 2 and "x[900] cpu0 by wasmtop[9]" in lines[1]


# -- the filter's ns: and pod: words (wasmtop/filters.py, shared with the gRPC Watch) ---------
def with_pods(snap):
    """Three workloads: edge/web-7d9c (two containers' worth: app), shop/web-1, a process."""
    pods = [Pod("edge", "web-7d9c", "u1", "app", "c1", None),
            Pod("shop", "web-1", "u2", "app", "c2", None), None]  # fmt: skip
    ws = [dataclasses.replace(w, pod=p, key=f"pod:u{i}" if p else w.key)
          for i, (w, p) in enumerate(zip(snap.workloads, pods))]  # fmt: skip
    return dataclasses.replace(snap, workloads=tuple(ws))


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("ns:edge", ["pod:u0"]),
        ("pod:web", ["pod:u0", "pod:u1"]),
        ("ns:edge ns:shop", ["pod:u0", "pod:u1"]),  # several of a kind: any
        ("ns:shop pod:web-7", []),  # kinds: all
        ("pod:web app", ["pod:u0", "pod:u1"]),  # and a plain word: part of the name
        ("ns:nope", []),
        ("", ["pod:u0", "pod:u1", "pid:102"]),
    ],
)
def test_ns_and_pod_words_narrow_the_table(text, shown):
    snap = with_pods(with_p99(snapshot(3), [5.0, 80.0, 20.0]))
    assert sorted(w.key for w in visible(snap, ViewState(filter=text))) == sorted(shown)
    assert sorted(w.key for w in parse_filter(text).apply(snap).workloads) == sorted(shown)


def test_filters_that_mean_the_same_are_one_filter():
    # One key for the gRPC API's encodings: order and repeats within a kind change nothing.
    assert parse_filter("app ns:shop pod:web ns:edge") == parse_filter(
        "ns:edge  pod:web APP ns:shop app pod:web"
    )
    assert parse_filter("a b") != parse_filter("a")


def test_a_filter_still_being_typed_shows_everything_and_says_why():
    snap = with_pods(with_p99(snapshot(3), [5.0, 80.0, 20.0]))
    state = ViewState(width=140, height=30)
    for key in ["/", *"ns:"]:
        handle(key, snap, state)
    assert len(visible(snap, state)) == 3
    text, _ = screen(snap, state)
    assert "ns: needs a name (ns:NAME)" in text
    for key in [*"edge", "enter"]:
        handle(key, snap, state)
    assert [w.key for w in visible(snap, state)] == ["pod:u0"]


def test_a_filtered_snapshot_keeps_only_its_workloads_alerts_and_traces():
    snap = with_pods(with_p99(snapshot(3), [5.0, 80.0, 20.0]))
    keys = [w.key for w in snap.workloads]
    alert = Alert("Preempted", "firing", keys[1], 80.0, 50.0, "2026-12-06T00:00:00Z", "warning",
                  "sched.preempt_p99_ms", ">", None, False, {}, {})  # fmt: skip
    probe_alert = dataclasses.replace(alert, workload=None)
    trace = Trace(*(None,) * (len(Trace._fields)))._replace(workload=keys[1])
    snap = dataclasses.replace(snap, alerts=(alert, probe_alert), traces=(trace,))
    kept = parse_filter("ns:edge").apply(snap)
    assert [w.key for w in kept.workloads] == [keys[0]]
    assert kept.alerts == (probe_alert,) and kept.traces == ()
    assert parse_filter("ns:shop").apply(snap).traces == (trace,)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=600))
def test_any_filter_text_is_a_filter_or_a_filter_error(text):
    try:
        chosen = parse_filter(text)
    except FilterError as exc:
        assert str(exc)
    else:
        snap = with_pods(snapshot(3))
        kept = [w.key for w in chosen.apply(snap).workloads]
        assert kept == [w.key for w in snap.workloads if w.key in kept]  # a subset, in order


def test_pod_words_match_a_uid_before_the_name_is_known_and_wasmtop_itself_stays():
    snap = with_pods(with_p99(snapshot(3), [5.0, 80.0, 20.0]))
    unnamed = dataclasses.replace(snap.workloads[1].pod, name=None, namespace=None)
    own = dataclasses.replace(snap.workloads[2], wasmtop=True)
    snap = dataclasses.replace(
        snap,
        workloads=(snap.workloads[0], dataclasses.replace(snap.workloads[1], pod=unnamed), own),
    )
    assert [w.key for w in parse_filter("pod:u2").apply(snap).workloads] == ["pod:u1", own.key]
    assert [w.key for w in parse_filter("ns:edge").apply(snap).workloads] == ["pod:u0", own.key]
    assert [w.key for w in visible(snap, ViewState(filter="ns:edge"))] == ["pod:u0"]  # not a row
