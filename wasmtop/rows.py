"""Model-to-row conversion, in one place: every table (CLI, TUI) shows a workload the same way."""

from __future__ import annotations

from .collector.model import Snapshot, Workload

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
    if w.pod and w.pod.name:
        return f"{w.pod.namespace}/{w.pod.name}"
    if w.key.startswith("pid:"):
        return f"{w.comm}[{w.pids[0] if w.pids else '?'}]"
    return f"{w.comm} ({w.key.split(':', 1)[0]})"


def workload_row(w: Workload) -> tuple[str, ...]:
    s = w.sched
    kind = f"{w.kind}/{w.runtime}" if w.runtime else w.kind
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
        f"{name}:{p['status']} events={p['events']} lost={p['lost']}"
        for name, p in snap.probes.items()
    )
    return [
        f"host {snap.host}  kernel {snap.kernel}  cpus {snap.cpus}  window {snap.window_s:.1f}s",
        f"probes  {probes}",
    ]


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
