"""The terminal UI's screen: a pure function of a Snapshot and the view state.

``render(snapshot, state, rules)`` builds the whole screen (rich renderables) and never reads
anything else, so it can be tested by printing it into a string console; ``wasmtop/top.py``
owns the terminal, the keys and the source of Snapshots. Colour appears only where a value
crosses the threshold of an alert rule on its quantity.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from .collector.model import Snapshot, Workload
from .rows import TOP_COLUMNS, Column, columns_for, workload_name

HELP = (
    ("q", "quit (probes are detached)"),
    ("↑ ↓", "select a workload"),
    ("enter", "detail of the selected workload / back"),
    ("s", "sort by the next column"),
    ("r", "reverse the order"),
    ("/", "filter by name (enter applies, esc clears)"),
    ("p", "pause / resume (the probes keep counting)"),
    ("?", "this help / back"),
)
BAR = "█"


@dataclass
class ViewState:
    width: int = 80
    height: int = 24
    sort: int = 6  # index into TOP_COLUMNS (preemption p99)
    reverse: bool = True  # largest first
    selected: str | None = None  # workload key
    detail: bool = False
    help: bool = False
    paused: bool = False
    filter: str = ""
    editing_filter: bool = False
    banner: str | None = None  # e.g. connection lost
    refresh_s: float = 1.0
    notes: list[str] = field(default_factory=list)


def visible(snap: Snapshot, state: ViewState) -> list[Workload]:
    """The workloads the table lists, filtered and in order."""
    col = TOP_COLUMNS[state.sort]
    ws = [w for w in snap.workloads if state.filter.lower() in _label(w).lower()]

    def key(w: Workload) -> tuple:
        v = col.value(w)
        missing = v is None
        # Missing values always last, whichever the direction.
        return (missing != state.reverse, v if not missing else 0, w.key)

    return sorted(ws, key=key, reverse=state.reverse)


def _label(w: Workload) -> str:
    return f"{workload_name(w)} {w.key} {w.comm}"


def move(snap: Snapshot, state: ViewState, step: int) -> None:
    ws = visible(snap, state)
    if not ws:
        state.selected = None
        return
    keys = [w.key for w in ws]
    i = keys.index(state.selected) if state.selected in keys else (-1 if step > 0 else 0)
    state.selected = keys[max(0, min(len(keys) - 1, i + step))]


def keep_selection(snap: Snapshot | None, state: ViewState) -> None:
    """The selection stays on a listed workload (the first one when its own is filtered out or
    gone), except in the detail view, which keeps showing the one chosen."""
    if snap is None or state.detail:
        return
    keys = [w.key for w in visible(snap, state)]
    if state.selected not in keys:
        state.selected = keys[0] if keys else None


def _crossing(col: Column, value: Any, rules: Sequence[Any]) -> bool:
    if value is None or isinstance(value, str):
        return False
    return any(r.quantity.name in col.quantities and r.crosses(value) for r in rules)


def header(snap: Snapshot, state: ViewState) -> list[Text]:
    firing = sum(1 for a in snap.alerts if a.state == "firing")
    pending = len(snap.alerts) - firing
    lost = sum(int(p.get("lost") or 0) for p in snap.probes.values())
    first = Text(f"wasmtop  {snap.host}  kernel {snap.kernel}  cpus {snap.cpus}  ")
    first.append(f"window {snap.window_s:.1f}s")
    if state.paused:
        first.append("  PAUSED", style="bold yellow")
    probes = Text("probes ")
    for name, p in snap.probes.items():
        status = p.get("status", "?")
        probes.append(f"{name}:")
        probes.append(status, style="" if status == "ok" else "bold red")
        probes.append(" ")
    probes.append(" lost ")
    probes.append(str(lost), style="bold red" if lost else "")
    probes.append("  alerts ")
    probes.append(f"{firing} firing", style="bold red" if firing else "")
    probes.append(f" {pending} pending")
    return [first, probes]


def workload_table(snap: Snapshot, state: ViewState, rules: Sequence[Any], max_rows: int) -> Table:
    cols = columns_for(state.width)
    table = Table(box=None, padding=(0, 1, 0, 0), pad_edge=False, show_edge=False, expand=False)
    sort_col = TOP_COLUMNS[state.sort]
    for c in cols:
        mark = ("▼" if state.reverse else "▲") if c is sort_col else ""
        table.add_column(
            c.header + mark,
            width=c.width,
            justify="left" if c.left else "right",
            no_wrap=True,
            overflow="ellipsis",
            header_style="bold reverse" if c is sort_col else "bold",
        )
    ws = visible(snap, state)
    keys = [w.key for w in ws]
    start = 0
    if state.selected in keys and keys.index(state.selected) >= max_rows:
        start = keys.index(state.selected) - max_rows + 1
    for w in ws[start : start + max_rows]:
        cells = []
        for c in cols:
            v = c.value(w)
            cells.append(Text(c.text(v), style="bold red" if _crossing(c, v, rules) else ""))
        table.add_row(*cells, style="reverse" if w.key == state.selected else "")
    return table


def alerts_pane(snap: Snapshot, lines: int) -> list[Text]:
    if not snap.alerts or lines <= 0:
        return []
    out = [Text("ALERTS", style="bold")]
    order = sorted(snap.alerts, key=lambda a: (a.state != "firing", a.name, a.workload or ""))
    for a in order[: lines - 1]:
        t = Text(f"{a.state:<8}", style="bold red" if a.state == "firing" else "yellow")
        value = "-" if a.value is None else f"{a.value:.3g}"
        t.append(f"{a.name} {a.workload or a.probe or ''} {value} {a.comparator} {a.threshold:g}")
        if a.incomplete_data:
            t.append(" (incomplete data)", style="yellow")
        out.append(t)
    return out


def preemptions_pane(snap: Snapshot, lines: int, key: str | None = None) -> list[Text]:
    events = [e for e in snap.events.preemptions if key is None or e.workload == key]
    if not events or lines <= 0:
        return []
    out = [Text(f"PREEMPTIONS over threshold ({snap.events.preemptions_total} in window)",
                style="bold")]  # fmt: skip
    for e in sorted(events, key=lambda e: -e.delay_us)[: lines - 1]:
        t = Text(f"{e.delay_us / 1e3:8.2f} ms  {e.comm}[{e.tid}] cpu{e.cpu} by ")
        t.append(f"{e.preemptor_comm}[{e.preemptor_tid}]")
        if e.trace_id:
            t.append(f"  trace {e.trace_id}", style="cyan")
        out.append(t)
    return out


def detail(snap: Snapshot, state: ViewState, w: Workload | None) -> list[RenderableType]:
    if w is None:
        return [Text("the selected workload left the window (enter: back)", style="yellow")]
    width = max(20, state.width)
    out: list[RenderableType] = [
        Text(
            f"{workload_name(w)}  {w.key}  {w.kind}" + (f"/{w.runtime}" if w.runtime else ""),
            style="bold",
        ),  # fmt: skip
        Text(f"pids {' '.join(map(str, w.pids[:12]))}" + (" ..." if len(w.pids) > 12 else "")),
    ]
    s = w.sched
    if s is not None:
        out.append(Text("CPU time by CPU", style="bold"))
        total = sum(s.cpu_time_ns_by_cpu.values()) or 1
        bar_w = max(10, width - 24)
        for cpu, ns in sorted(s.cpu_time_ns_by_cpu.items(), key=lambda kv: int(kv[0])):
            share = ns / total
            out.append(Text(f"cpu{cpu:<3} {ns / 1e6:9.1f} ms {BAR * round(share * bar_w)}"))
        hist = [b for b in s.preempt_delay_hist if b.count]
        if hist:
            out.append(Text("preemption delay", style="bold"))
            top = max(b.count for b in hist)
            for b in hist[-8:]:
                label = (
                    f"<{b.high_us / 1e3:.2f} ms" if b.high_us < 1e6 else f"<{b.high_us / 1e6:.1f} s"
                )
                n = round(b.count / top * bar_w)
                out.append(Text(f"{label:>11} {b.count:6d} {BAR * n}"))
    traces = [t for t in snap.traces if t.workload == w.key]
    if traces:
        out.append(Text("recent traces (kernel interference)", style="bold"))
        for t in sorted(traces, key=lambda t: -t.duration_ms)[:5]:
            pre = "-" if t.preempted_ms is None else f"{t.preempted_ms:.2f}"
            out.append(
                Text(
                    f"{t.trace_id[:16]} {t.duration_ms:8.2f} ms  preempted {pre} ms  "
                    f"migrations {t.migrations if t.migrations is not None else '-'}  "
                    f"{t.method or ''} {t.route}"
                )  # fmt: skip
            )
    out += preemptions_pane(snap, 4, w.key)
    return out


def footer(state: ViewState) -> Text:
    if state.editing_filter:
        return Text(f"filter: {state.filter}█  (enter apply, esc clear)", style="bold")
    t = Text("q quit  ↑↓ select  enter detail  s sort  r reverse  / filter  p pause  ? help",
             style="dim")  # fmt: skip
    if state.filter:
        t.append(f"   filter: {state.filter}", style="bold")
    return t


def render(snap: Snapshot | None, state: ViewState, rules: Sequence[Any] = ()) -> Group:
    """The whole screen for ``state.width`` x ``state.height``."""
    parts: list[RenderableType] = []
    if state.banner:
        parts.append(Text(state.banner, style="bold white on red"))
    if snap is None:
        parts.append(Text("waiting for the first Snapshot ..."))
        return Group(*parts)
    parts += header(snap, state)
    if state.help:
        table = Table(box=None, show_header=False)
        for k, what in HELP:
            table.add_row(Text(k, style="bold"), what)
        parts += [Text(""), table]
    elif state.detail:
        w = next((w for w in snap.workloads if w.key == state.selected), None)
        parts += detail(snap, state, w)
    else:
        free = state.height - len(parts) - 2  # the table's header and the footer
        alert_lines = min(len(snap.alerts) + 1, max(0, free // 4)) if snap.alerts else 0
        pre_lines = min(len(snap.events.preemptions) + 1, max(0, free // 4))
        rows = max(1, free - alert_lines - pre_lines)
        parts.append(workload_table(snap, state, rules, rows))
        parts += alerts_pane(snap, alert_lines)
        parts += preemptions_pane(snap, pre_lines)
    for note in state.notes[-2:]:
        parts.append(Text(note, style="yellow"))
    parts.append(footer(state))
    return Group(*parts)


def sort_next(state: ViewState, columns: Sequence[Column] = TOP_COLUMNS) -> None:
    """The next column that is on screen."""
    shown = columns_for(state.width)
    order = [i for i, c in enumerate(columns) if c in shown]
    later = [i for i in order if i > state.sort]
    state.sort = later[0] if later else order[0]
