"""The terminal UI's screen: a pure function of a Snapshot and the view state.

``render(snapshot, state, rules)`` builds the whole screen (rich renderables) and never reads
anything else, so it can be tested by printing it into a string console; ``wasmtop/top.py``
owns the terminal, the keys and the source of Snapshots. Colour appears only where a value
crosses the threshold of an alert rule on its quantity.

Every string from the Snapshot is shown through ``safe()`` (or a columns.py helper that applies it):
comms, pod names, routes and keys are the workloads' own choice, and a Snapshot may come from a
remote daemon. Bars are clamped to their width, whatever the figures say.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from .alerts.quantities import QUANTITIES
from .collector.model import HistogramBucket, Snapshot, WaitedBehind, Workload
from .columns import TOP_COLUMNS, Column, columns_for, own_cost, reporting, workload_name
from .filters import FilterError, WorkloadFilter
from .filters import parse as parse_filter
from .fold import fold_kernel_threads
from .safe import safe

HELP = (
    ("q", "quit (probes are detached)"),
    ("↑ ↓", "select a workload"),
    ("enter", "detail of the selected workload / back"),
    ("s r", "sort by the next column; reverse the order"),
    ("/", "filter: words of the name; ns:NAME the pod's namespace; pod:NAME its name's start"),
    ("p", "pause / resume (the probes keep counting)"),
    ("K", "kernel threads one by one / folded into one kernel row"),
    ("?", "this help / back"),
)
# What the screen shows, below the keys in the help.
SHOWS = (
    ("PRE p99 ms", "preemption delay P99: preempted until it ran again"),
    ("RUNQ p99 ms", "wake-up delay P99: woken until it ran"),
    ("red", "a value past the threshold of an alert rule on it"),
    ("dim", "not enough data yet (a slope over less than its window)"),
    ("waits", "longest waits over the threshold: preempted (by whom), woken (behind the "
              "task it replaced; the holder at wake-up when another)"),
    ("detail", "CPU time per CPU; preemption and wake-up delay histograms; who it waited "
               "behind (ms, share of its run-queue wait); traces, preempted and queued ms"),
)  # fmt: skip
BAR = "█"
NOT_ENOUGH_DATA = "not_enough_data"  # an alert's state: listed, not judged (docs/alerts.md)


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
    kernel_threads: bool = False  # list kernel threads one by one (K), not as one kernel row
    starting: dict[str, str] = field(default_factory=dict)  # probe -> its loading step, in words


def rows(snap: Snapshot, state: ViewState) -> list[Workload]:
    """The table's rows before sorting: wasmtop's own workloads left out (the header shows
    their cost), the workloads the filter matches, and the kernel threads among them folded into
    one ``kernel`` row unless ``state.kernel_threads``."""
    chosen = active_filter(state)
    ws = [w for w in snap.workloads if not w.wasmtop and chosen.matches(w)]
    if state.kernel_threads:
        return ws
    threads = [w for w in ws if w.kernel_thread]
    if not threads:
        return ws
    return [w for w in ws if not w.kernel_thread] + [fold_kernel_threads(threads)]


def visible(snap: Snapshot, state: ViewState) -> list[Workload]:
    """The workloads the table lists, filtered and in order."""
    col = TOP_COLUMNS[state.sort]
    ws = rows(snap, state)

    def key(w: Workload) -> tuple:
        v = col.value(w)
        missing = v is None
        # Missing values always last, whichever the direction.
        return (missing != state.reverse, v if not missing else 0, w.key)

    return sorted(ws, key=key, reverse=state.reverse)


def active_filter(state: ViewState) -> WorkloadFilter:
    """The filter typed after / (wasmtop/filters.py); while it cannot be used (``ns:`` still
    without a name), none: the footer says why."""
    try:
        return parse_filter(state.filter)
    except FilterError:
        return WorkloadFilter()


def filter_error(state: ViewState) -> str | None:
    try:
        parse_filter(state.filter)
    except FilterError as exc:
        return str(exc)
    return None


def _selected(snap: Snapshot, state: ViewState) -> Workload | None:
    """The selected workload: a row of the table (the kernel row included), or a workload of
    the Snapshot no longer listed (folded or filtered after it was chosen)."""
    listed = next((w for w in rows(snap, state) if w.key == state.selected), None)
    return listed or next((w for w in snap.workloads if w.key == state.selected), None)


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


def _short_of_data(col: Column, w: Workload) -> bool:
    """The cell's quantity covers less than the span it is taken over (an RSS slope over 6 s
    of a 300 s window): not enough data yet, shown dim and never judged."""
    return any(
        QUANTITIES[name].short_of_data(w) is not None
        for name in col.quantities
        if name in QUANTITIES
    )


def _cell_style(col: Column, w: Workload, value: Any, rules: Sequence[Any]) -> str:
    if _short_of_data(col, w):
        return "dim"
    return "bold red" if _crossing(col, value, rules) else ""


def _bar(share: float, width: int) -> str:
    """A bar of ``share`` (0..1, clamped; NaN empty) of ``width`` characters."""
    if not share > 0:
        return ""
    return BAR * round(min(share, 1.0) * max(0, width))


def _count(value: Any) -> int:
    """A probe's counter as an int (0 when absent or not an integer)."""
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def header(snap: Snapshot, state: ViewState) -> list[Text]:
    firing = sum(1 for a in snap.alerts if a.state == "firing")
    pending = sum(1 for a in snap.alerts if a.state == "pending")
    unjudged = sum(1 for a in snap.alerts if a.state == NOT_ENOUGH_DATA)
    lost = sum(_count(p.get("lost")) for p in snap.probes.values())
    first = Text(f"wasmtop  {safe(snap.host)}  kernel {safe(snap.kernel)}  cpus {snap.cpus}  ")
    first.append(f"window {snap.window_s:.1f}s{reporting(snap)}")
    if state.paused:
        first.append("  PAUSED", style="bold yellow")
    probes = Text("probes ")
    for name, p in snap.probes.items():
        status = safe(p.get("status", "?"))
        probes.append(f"{safe(name)}:")
        probes.append(status, style="" if status == "ok" else "bold red")
        probes.append(" ")
    tail = Text(" lost ")
    tail.append(str(lost), style="bold red" if lost else "")
    tail.append("  alerts ")
    tail.append(f"{firing} firing", style="bold red" if firing else "")
    tail.append(f" {pending} pending")
    if unjudged:
        tail.append(f" {unjudged} not enough data", style="dim")
    # One line each, so the screen's height budget holds: a part that does not fit on the line
    # before goes on a line of its own. wasmtop's own cost goes beside the title when it fits.
    lines = [first, probes]
    own = own_cost(snap)
    parts = [tail]
    if own is not None:
        own_text = Text("  " + own, style="cyan")
        if len(first) + len(own_text) <= state.width:
            first.append_text(own_text)
        else:
            parts.append(own_text)
    for part in parts:
        if len(lines[-1]) + len(part) <= state.width:
            lines[-1].append_text(part)
        else:
            lines.append(part[len(part.plain) - len(part.plain.lstrip(" ")) :])
    for line in lines:
        line.no_wrap, line.overflow = True, "ellipsis"
    return lines


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
            cells.append(Text(c.text(v), style=_cell_style(c, w, v, rules)))
        table.add_row(*cells, style="reverse" if w.key == state.selected else "")
    return table


def alerts_line(snap: Snapshot) -> str:
    """The alerts' count by state, for plain output."""
    count = {state: sum(1 for a in snap.alerts if a.state == state)
             for state in ("firing", "pending", NOT_ENOUGH_DATA)}  # fmt: skip
    line = f"alerts  {count['firing']} firing, {count['pending']} pending"
    if count[NOT_ENOUGH_DATA]:
        line += f", {count[NOT_ENOUGH_DATA]} not enough data yet"
    return line


def alerts_pane(snap: Snapshot, lines: int) -> list[Text]:
    if not snap.alerts or lines <= 0:
        return []
    out = [Text("ALERTS", style="bold")]
    rank = {"firing": 0, "pending": 1}
    order = sorted(snap.alerts, key=lambda a: (rank.get(a.state, 2), a.name, a.workload or ""))
    # A kernel thread has no row of its own while folded: its alert names it.
    kthreads = {w.key: w.comm for w in snap.workloads if w.kernel_thread}
    for a in order[: lines - 1]:
        value = "-" if a.value is None else f"{a.value:.3g}"
        subject = a.workload or a.probe or ""
        if a.workload in kthreads:
            subject += f" (kernel thread {kthreads[a.workload]})"
        what = safe(f"{a.name} {subject} {value} {a.comparator} {a.threshold:g}")
        if a.state == NOT_ENOUGH_DATA:  # listed, not judged: dim, and how much data there is
            t = Text(f"{'waiting':<8}{what}", style="dim")
            if a.data_s is not None and a.data_needed_s is not None:
                t.append(f" (not enough data yet: {a.data_s:.0f} s of {a.data_needed_s:.0f} s)")
            out.append(t)
            continue
        t = Text(f"{safe(a.state):<8}", style="bold red" if a.state == "firing" else "yellow")
        t.append(what)
        if a.incomplete_data:
            t.append(" (incomplete data)", style="yellow")
        out.append(t)
    return out


def _task(comm: str | None, tid: int) -> str:
    return "idle" if tid == 0 else safe(f"{comm or '?'}[{tid}]")


def waits_pane(snap: Snapshot, lines: int, key: str | None = None) -> list[Text]:
    """The longest waits over the threshold, preemptions and wake-up waits together, each with
    its culprit: the preemptor, or the task a woken thread replaced when it finally ran."""
    ev = snap.events
    # On the main screen, not the waits of wasmtop's own threads (it is not a row either); the
    # waits it made others suffer are listed like any (it is their preemptor or holder).
    own = {w.key for w in snap.workloads if w.wasmtop}

    def shown(workload: str | None) -> bool:
        return workload == key if key is not None else workload not in own

    pre = [e for e in ev.preemptions if shown(e.workload)]
    woken = [e for e in ev.wakeup_waits if shown(e.workload)]
    if not (pre or woken) or lines <= 0:
        return []
    out = [Text(f"LONGEST WAITS over threshold ({ev.preemptions_total} preempted, "
                f"{ev.wakeup_waits_total} woken in window)", style="bold")]  # fmt: skip
    items: list[tuple[float, Text]] = []
    for e in pre:
        t = Text(f"{e.delay_us / 1e3:8.2f} ms  preempted  {safe(e.comm)}[{e.tid}] cpu{e.cpu} by ")
        t.append(safe(f"{e.preemptor_comm}[{e.preemptor_tid}]"))
        items.append((e.delay_us, _traced(t, e.trace_id)))
    for w in woken:
        t = Text(f"{w.delay_us / 1e3:8.2f} ms  woken      {safe(w.comm)}[{w.tid}] cpu{w.cpu} "
                 "behind ")  # fmt: skip
        t.append(_task(w.replaced_comm, w.replaced_tid))
        if w.replaced_workload:
            t.append(f" {safe(w.replaced_workload)}")
        if w.holder_tid != w.replaced_tid:
            t.append(f"  held at wake-up by {_task(w.holder_comm, w.holder_tid)}")
            if w.holder_workload:
                t.append(f" {safe(w.holder_workload)}")
        items.append((w.delay_us, _traced(t, w.trace_id)))
    for _, t in sorted(items, key=lambda item: -item[0])[: lines - 1]:
        t.no_wrap, t.overflow = True, "ellipsis"  # one line each: the pane's height is counted
        out.append(t)
    return out


def _traced(t: Text, trace_id: str | None) -> Text:
    if trace_id:
        t.append(f"  trace {safe(trace_id)}", style="cyan")
    return t


def _histogram(title: str, buckets: Sequence[HistogramBucket], bar_w: int) -> list[Text]:
    """A delay histogram's highest non-empty buckets, one bar each."""
    hist = [b for b in buckets if b.count]
    if not hist:
        return []
    out = [Text(title, style="bold")]
    top = max(b.count for b in hist)
    for b in hist[-8:]:
        label = f"<{b.high_us / 1e3:.2f} ms" if b.high_us < 1e6 else f"<{b.high_us / 1e6:.1f} s"
        share = b.count / top if top > 0 else 0.0
        out.append(Text(f"{label:>11} {b.count:6d} {_bar(share, bar_w)}"))
    return out


def _culprit(wb: WaitedBehind, w: Workload) -> str:
    if wb.kind != "workload":
        return safe({"idle": "idle (wake-up path)"}.get(wb.kind, wb.kind))
    name = wb.culprit or "?"
    if wb.comm and wb.comm not in name:
        name += f" {wb.comm}"
    return safe(name + (" (itself)" if wb.culprit == w.key else ""))


def waited_behind(w: Workload, width: int) -> list[Text]:
    """Who held the CPU while the workload's threads waited for it (wake-up and preemption)."""
    s = w.sched
    if s is None or not s.waited_behind:
        return []
    out = [Text(f"waited behind (run-queue wait {s.runq_delay_total_us / 1e3:.2f} ms: wake-up "
                f"{s.wakeup_delay_total_us / 1e3:.2f}, preemption "
                f"{s.preempt_delay_total_us / 1e3:.2f})", style="bold")]  # fmt: skip
    names = [_culprit(wb, w) for wb in s.waited_behind]
    name_w = min(max(len(n) for n in names), max(12, width // 2))
    bar_w = max(0, width - name_w - 22)
    for wb, name in sorted(zip(s.waited_behind, names), key=lambda p: -p[0].wait_ms):
        name = name if len(name) <= name_w else name[: name_w - 1] + "…"
        t = Text(f"{name:<{name_w}} {wb.wait_ms:9.2f} ms {100 * wb.share:5.1f} % ")
        t.append(_bar(wb.share, bar_w))
        t.no_wrap = True
        out.append(t)
    return out


def wasm_lines(w: Workload) -> list[RenderableType]:
    """The detail pane's WebAssembly lines: the runtime, how it was recognised, and its
    compile, instantiate and guest calls in the window (or why they are not measured)."""
    wasm = w.runtime_metrics.wasm if w.runtime_metrics else None
    if wasm is None:
        return []
    said = " ".join(x for x in (w.runtime, wasm.version) if x)
    if wasm.by:
        said += f", recognised by {wasm.by}"
    if wasm.library:
        said += f"; uprobes on {wasm.library}" + (f" ({wasm.api} API)" if wasm.api else "")
    out: list[RenderableType] = [Text(safe(f"WebAssembly: {said}"), style="bold")]
    if wasm.status != "ok" or wasm.reason:
        out.append(Text(safe(f"  {wasm.status}: {wasm.reason or ''}"), style="yellow"))
    for name, c in (("compile", wasm.compile), ("instantiate", wasm.instantiate),
                    ("guest calls", wasm.calls)):  # fmt: skip
        if c is None:
            continue
        figures = "  ".join(
            f"{label} {'-' if v is None else f'{v:.3f}'}"
            for label, v in (
                ("mean", c.mean_ms),
                ("p50", c.p50_ms),
                ("p99", c.p99_ms),
                ("max", c.max_ms),
            )  # fmt: skip
        )
        out.append(Text(f"  {name:<12} {c.count:6d} calls  {figures} ms"))
    return out


def detail(snap: Snapshot, state: ViewState, w: Workload | None) -> list[RenderableType]:
    if w is None:
        return [Text("the selected workload left the window (enter: back)", style="yellow")]
    width = max(20, state.width)
    out: list[RenderableType] = [
        Text(
            safe(f"{workload_name(w)}  {w.key}  {w.kind}" + (f"/{w.runtime}" if w.runtime else "")),
            style="bold",
        ),  # fmt: skip
        Text(f"pids {' '.join(map(str, w.pids[:12]))}" + (" ..." if len(w.pids) > 12 else "")),
    ]
    out += wasm_lines(w)
    s = w.sched
    if s is not None:
        out.append(Text("CPU time by CPU", style="bold"))
        total = sum(s.cpu_time_ns_by_cpu.values()) or 1
        bar_w = max(10, width - 24)
        for cpu, ns in sorted(s.cpu_time_ns_by_cpu.items(), key=lambda kv: _cpu_order(kv[0])):
            share = ns / total
            out.append(Text(f"cpu{safe(cpu):<3} {ns / 1e6:9.1f} ms {_bar(share, bar_w)}"))
        # The two delay histograms side by side (one under the other when narrow).
        half = width // 2 - 1
        pre = _histogram("preemption delay", s.preempt_delay_hist, max(4, half - 19))
        wake = _histogram("wake-up delay", s.wakeup_delay_hist, max(4, half - 19))
        if pre and wake and width >= 60:
            both = Table.grid(padding=(0, 2, 0, 0))
            both.add_column(width=half, no_wrap=True)
            both.add_column(width=half, no_wrap=True)
            both.add_row(Group(*pre), Group(*wake))
            out.append(both)
        else:
            out += _histogram("preemption delay", s.preempt_delay_hist, bar_w)
            out += _histogram("wake-up delay", s.wakeup_delay_hist, bar_w)
        out += waited_behind(w, width)
    traces = [t for t in snap.traces if t.workload == w.key]
    if traces:
        out.append(Text("recent traces (kernel interference)", style="bold"))
        for t in sorted(traces, key=lambda t: -t.duration_ms)[:5]:
            pre = "-" if t.preempted_ms is None else f"{t.preempted_ms:.2f}"
            queued = "-" if t.queued_ms is None else f"{t.queued_ms:.2f}"
            out.append(
                Text(
                    f"{safe(t.trace_id[:16])} {t.duration_ms:8.2f} ms  preempted {pre} ms  "
                    f"queued {queued} ms  "
                    f"migrations {t.migrations if t.migrations is not None else '-'}  "
                    f"{safe(t.method or '')} {safe(t.route)}"
                )  # fmt: skip
            )
    out += waits_pane(snap, 4, w.key)
    return out


def _cpu_order(cpu: str) -> tuple[int, int, str]:
    """CPUs in numeric order ("2" before "10"); a key that is not a number after them."""
    try:
        return (0, int(cpu), "")
    except ValueError:
        return (1, 0, cpu)


def footer(state: ViewState) -> Text:
    if state.editing_filter:
        t = Text(f"filter: {safe(state.filter)}█  (enter apply, esc clear; ns:NAME pod:NAME)",
                 style="bold")  # fmt: skip
        if (why := filter_error(state)) is not None:
            t.append(f"   {why}", style="bold red")
        return t
    t = Text("q quit  ↑↓ select  enter detail  s sort  r reverse  / filter  p pause  ? help",
             style="dim")  # fmt: skip
    if state.filter:
        t.append(f"   filter: {safe(state.filter)}", style="bold")
    return t


def render(snap: Snapshot | None, state: ViewState, rules: Sequence[Any] = ()) -> Group:
    """The whole screen for ``state.width`` x ``state.height``."""
    parts: list[RenderableType] = []
    if state.banner:
        parts.append(Text(safe(state.banner), style="bold white on red"))
    if snap is None:
        if state.starting:
            parts.append(Text("wasmtop: starting the probes ...", style="bold"))
            for probe, step in state.starting.items():
                parts.append(Text(safe(f"  {probe:<11} {step}")))
        parts.append(Text("waiting for the first Snapshot ..."))
        return Group(*parts)
    parts += header(snap, state)
    if state.help:
        table = Table(box=None, show_header=False)
        for k, what in HELP:
            table.add_row(Text(k, style="bold"), what)
        shows = Table(box=None, show_header=False)
        for k, what in SHOWS:
            shows.add_row(Text(k, style="bold"), what)
        parts += [Text(""), table, Text(""), shows]
    elif state.detail:
        parts += detail(snap, state, _selected(snap, state))
    else:
        free = state.height - len(parts) - 2  # the table's header and the footer
        alert_lines = min(len(snap.alerts) + 1, max(0, free // 4)) if snap.alerts else 0
        events = len(snap.events.preemptions) + len(snap.events.wakeup_waits)
        pre_lines = min(events + 1, max(0, free // 4)) if events else 0
        rows = max(1, free - alert_lines - pre_lines)
        parts.append(workload_table(snap, state, rules, rows))
        parts += alerts_pane(snap, alert_lines)
        parts += waits_pane(snap, pre_lines)
    for note in state.notes[-2:]:
        parts.append(Text(safe(note), style="yellow"))
    parts.append(footer(state))
    return Group(*parts)


def sort_next(state: ViewState, columns: Sequence[Column] = TOP_COLUMNS) -> None:
    """The next column that is on screen."""
    shown = columns_for(state.width)
    order = [i for i, c in enumerate(columns) if c in shown]
    later = [i for i in order if i > state.sort]
    state.sort = later[0] if later else order[0]
