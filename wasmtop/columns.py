"""The table columns, in one place: every table (CLI, TUI) shows a workload the same way.
Every name in a cell has been through ``safe()``: comms, pod names and keys are chosen by whoever
runs the workload, and a control character in one would reach the terminal."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .alerts.quantities import QUANTITIES, attribute
from .collector.model import Snapshot, Workload, reporting_threshold_ms
from .fold import KERNEL_KEY
from .safe import safe

# (header with unit, width) in display order.
COLUMNS = (
    ("WORKLOAD", 28),
    ("KIND", 14),
    ("PIDS", 6),
    ("SW/s", 8),
    ("INVOL/s", 8),
    ("MIGR/s", 8),
    ("STABILITY", 9),
    ("SKEW", 5),
    ("PREEMPT p50 us", 14),
    ("p99 us", 9),
    ("max us", 9),
    (">THR", 5),
    ("WAKEUP p99 us", 13),
    ("WAKEUP max us", 13),
    ("RUNQ ms", 8),
    ("CONNS", 5),
    ("BYPASS %", 8),
    ("REQS", 6),
    ("REQ p99 ms", 10),
)


def _num(value: float | None, digits: int = 1) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}f}"


def workload_name(w: Workload) -> str:
    """The workload's name for a person, safe to print."""
    if w.key == KERNEL_KEY and w.kernel_thread:  # the terminal UI's folded kernel threads
        return f"kernel: {len(w.pids)} thread{'s' if len(w.pids) != 1 else ''} (K)"
    if w.pod and w.pod.name:
        # namespace/pod, and /container when known: two containers of a pod are two rows.
        return safe("/".join(p for p in (w.pod.namespace, w.pod.name, w.pod.container) if p))
    if w.key.startswith("pid:"):
        return safe(f"{w.comm}[{w.pids[0] if w.pids else '?'}]")
    return safe(f"{w.comm} ({w.key.split(':', 1)[0]})")


def workload_row(w: Workload) -> tuple[str, ...]:
    s = w.sched
    kind = kind_text(w)
    if s is None:
        return (
            (workload_name(w), kind, str(len(w.pids)))
            + ("-",) * (len(COLUMNS) - 7)
            + net_cells(w)
            + request_cells(w)
        )
    return (
        workload_name(w),
        kind,
        str(len(w.pids)),
        _num(s.switches_per_s),
        _num(s.involuntary_per_s),
        _num(s.migrations_per_s),
        _num(s.affinity_stability, 3),
        _num(s.cpu_skew_ratio, 2),
        _num(s.preempt_delay_us.p50),
        _num(s.preempt_delay_us.p99),
        _num(s.preempt_delay_us.max),
        str(s.preemptions_over_threshold),
        _num(s.wakeup_delay_us.p99),
        _num(s.wakeup_delay_us.max),
        _num(s.runq_delay_total_us / 1e3, 2),
        *net_cells(w),
        *request_cells(w),
    )


def request_cells(w: Workload) -> tuple[str, str]:
    """Requests answered in the window and their p99 latency ("-" when none was traced)."""
    if w.requests is None:
        return ("-", "-")
    return (str(w.requests.count), _num(w.requests.latency_ms.p99, 2))


def net_cells(w: Workload) -> tuple[str, str]:
    """Connections, and the share of sent bytes that took the bypass ("-" without traffic)."""
    if w.net is None:
        return ("-", "-")
    share = w.net.bypass_ratio
    return (str(w.net.connections), "-" if share is None else f"{100 * share:.1f}")


def header_lines(snap: Snapshot) -> list[str]:
    probes = "  ".join(
        f"{safe(name)}:{safe(p.get('status', '?'))} events={safe(p.get('events', '-'))} "
        f"lost={safe(p.get('lost', '-'))}"
        for name, p in snap.probes.items()
    )
    lines = [
        f"host {safe(snap.host)}  kernel {safe(snap.kernel)}  cpus {snap.cpus}  "
        f"window {snap.window_s:.1f}s{reporting(snap)}",
        f"probes  {probes}",
    ]
    own = own_cost(snap, pids=True)
    return lines + [own] if own is not None else lines


def own_cost(snap: Snapshot, *, pids: bool = False) -> str | None:
    """What wasmtop itself costs (its own workloads: ``Workload.wasmtop``), or None when the
    Snapshot has none: "wasmtop itself: cpu 3.1 %  rss 228.4 MB" (and "  pids 4100 4150")."""
    own = [w for w in snap.workloads if w.wasmtop]
    if not own:
        return None
    figures = [w.runtime_metrics for w in own if w.runtime_metrics is not None]
    cpu = [r.cpu_percent for r in figures if r.cpu_percent is not None]
    rss = sum(r.rss_bytes for r in figures) / 1e6 if figures else None
    text = f"wasmtop itself: cpu {_num(sum(cpu) if cpu else None)} %  rss {_num(rss)} MB"
    if pids:
        listed = sorted({p for w in own for p in w.pids})
        text += "  pids " + " ".join(map(str, listed[:4])) + (" ..." if len(listed) > 4 else "")
    return text


def reporting(snap: Snapshot) -> str:
    """ "  reports >= T ms": the threshold above which the scheduler probe reported each
    preemption and wake-up wait (the Snapshot says it, also from a daemon), or ""."""
    t = reporting_threshold_ms(snap)
    return "" if t is None else f"  reports >= {t:g} ms"


def plain_table(snap: Snapshot, sort_key: str = "involuntary_per_s") -> str:
    """A plain-text table of the Snapshot (``--format table``, piped output)."""

    def order(w: Workload) -> float:
        return -(getattr(w.sched, sort_key, 0) or 0) if w.sched else 0

    rows = [tuple(h for h, _ in COLUMNS)] + [
        workload_row(w) for w in sorted(snap.workloads, key=order)
    ]
    widths = [max(width, *(len(r[i]) for r in rows)) for i, (_, width) in enumerate(COLUMNS)]
    lines = header_lines(snap)
    for r in rows:
        lines.append("  ".join(cell.ljust(widths[i]) if i < 2 else cell.rjust(widths[i])
                               for i, cell in enumerate(r)))  # fmt: skip
    return "\n".join(lines)


# -- the terminal UI's workload table --------------------------------------------------------
@dataclass(frozen=True)
class Column:
    """One column of the terminal UI's workload table. ``value`` is in the unit of the alert
    quantities named in ``quantities`` (so a rule's threshold can colour the cell) and is the
    sort key; ``text`` formats it for the header's unit."""

    header: str  # with its unit
    width: int  # one more than the header: room for the sort mark
    value: Callable[[Workload], Any]
    text: Callable[[Any], str]
    quantities: tuple[str, ...] = ()
    priority: int = 0  # narrow terminals drop the highest numbers first
    left: bool = False


def measure(
    header: str,
    width: int,
    quantity: str,
    text: Callable[[Any], str],
    priority: int,
    also: tuple[str, ...] = (),
) -> Column:
    """A column showing an alert quantity's value, read the way the rules read it."""
    read = QUANTITIES[quantity].gauge
    assert read is not None, quantity
    return Column(header, width, read, text, (quantity, *also), priority)


def _fixed(digits: int, scale: float = 1.0) -> Callable[[Any], str]:
    return lambda v: "-" if v is None else f"{v * scale:.{digits}f}"


def kind_text(w: Workload) -> str:
    """The KIND cell: wasmtop's own workloads and kernel threads say so."""
    if w.wasmtop:
        return "wasmtop"
    if w.kernel_thread:
        return "kernel"
    return safe(f"{w.kind}/{w.runtime}" if w.runtime else w.kind)


# At 80 columns: WORKLOAD, MIGR/s, INVOL/s, PRE p99 ms, RUNQ p99 ms, REQ p99 ms.
TOP_COLUMNS = (
    Column("WORKLOAD", 24, workload_name, str, left=True),
    Column("KIND", 13, kind_text, str, priority=7, left=True),
    measure("MIGR/s", 7, "sched.migrations_per_s", _fixed(1), 3),
    measure("STABIL", 7, "sched.affinity_stability", _fixed(3), 8),
    measure("SKEW", 5, "sched.cpu_skew_ratio", _fixed(2), 9),
    measure("INVOL/s", 8, "sched.involuntary_per_s", _fixed(1), 1),
    measure("PRE p99 ms", 11, "sched.preempt_delay_p99_ms", _fixed(2), 0,
            also=("sched.preempt_delay_ms",)),
    # Wake-up delay (woken until running), beside the preemption delay.
    measure("RUNQ p99 ms", 12, "sched.wakeup_delay_p99_ms", _fixed(2), 2),
    measure("BYPASS %", 9, "net.bypass_ratio", _fixed(1, 100), 10),
    measure("RSS MB", 7, "runtime.rss_mb", _fixed(1), 6),
    measure("GROW MB/m", 10, "runtime.rss_growth_mb_per_min", _fixed(2), 5),
    # The last cold start (the rules watch each one as an event).
    Column("COLD ms", 8, attribute("runtime_metrics", "cold_start_ms"), _fixed(1),
           ("runtime.cold_start_ms",), priority=11),
    measure("REQ p99 ms", 11, "requests.latency_ms.p99", _fixed(2), 4),
)  # fmt: skip


def columns_for(width: int, columns: Sequence[Column] = TOP_COLUMNS) -> list[Column]:
    """The columns that fit in ``width`` characters (one space between), most important
    first kept, in display order."""
    kept: set[int] = set()
    used = 0
    for i in sorted(range(len(columns)), key=lambda i: columns[i].priority):
        need = columns[i].width + (1 if kept else 0)
        if used + need > width:
            continue
        kept.add(i)
        used += need
    return [c for i, c in enumerate(columns) if i in kept]


def plain_lines(snap: Snapshot, workloads: Sequence[Workload], width: int = 200) -> list[str]:
    """The terminal UI's table as plain text (piped output, `--once`)."""
    cols = columns_for(width)
    out = [" ".join(c.header.ljust(c.width) if c.left else c.header.rjust(c.width) for c in cols)]
    for w in workloads:
        cells = []
        for c in cols:
            text = c.text(c.value(w))[: c.width] if c.left else c.text(c.value(w))
            cells.append(text.ljust(c.width) if c.left else text.rjust(c.width))
        out.append(" ".join(cells))
    return out
