"""The terminal UI's screen as a pure function: width, order, filter, colour only past a rule's
threshold, detail view, keys."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

from rich.console import Console

from wasmtop.alerts.rules import load_all
from wasmtop.collector.model import DelayQuantiles
from wasmtop.rows import TOP_COLUMNS, columns_for
from wasmtop.top import Keys, handle, parse_keys
from wasmtop.view import ViewState, render, visible, workload_table

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
