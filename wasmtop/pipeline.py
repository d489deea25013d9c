"""Which probes to start, and with what: one place for `wasmtop snapshot` and the daemon."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .config import Config

PROBE_NAMES = ("sched", "sockbypass", "tracectx", "lifecycle")


@dataclass(frozen=True)
class ProbeOptions:
    sched: bool = True
    threshold_ms: float = 50.0
    pids: tuple[int, ...] = ()
    cgroup: str | None = None
    ringbuf_pages: int | None = None
    bypass_mode: str = "observe"  # observe | accelerate | off
    local_cidrs: tuple[str, ...] = ()
    interfaces: tuple[str, ...] = ()
    bypass_cgroup: str | None = None
    trace: bool = True
    trace_pids: tuple[int, ...] = ()
    trace_comms: tuple[str, ...] = ()
    trace_cgroups: tuple[str, ...] = ()
    lifecycle: bool = True

    @classmethod
    def from_config(cls, config: Config) -> ProbeOptions:
        p = config["probes"]
        sched, bypass, trace = p["sched"], p["bypass"], p["trace"]
        return cls(
            threshold_ms=sched["threshold_ms"],
            pids=tuple(sched["pids"]),
            cgroup=sched["cgroup"],
            ringbuf_pages=sched["ringbuf_pages"],
            bypass_mode=bypass["mode"],
            local_cidrs=tuple(bypass["local_cidrs"]),
            interfaces=tuple(bypass["interfaces"]),
            bypass_cgroup=bypass["cgroup"],
            trace=trace["enabled"],
            trace_pids=tuple(trace["pids"]),
            trace_comms=tuple(trace["comms"]),
            trace_cgroups=tuple(trace["cgroups"]),
            lifecycle=p["lifecycle"]["enabled"],
        )


def build_probes(opts: ProbeOptions) -> tuple[list[Any], Any]:
    """The probes to start, in start order, and the trace selector (None without tracing)."""
    from .probes.sched import DEFAULT_RINGBUF_PAGES, SchedProbe

    probes: list[Any] = []
    sched = None
    if opts.sched:
        sched = SchedProbe(
            threshold_ns=round(opts.threshold_ms * 1e6),
            pids=list(opts.pids),
            cgroup=opts.cgroup,
            ringbuf_pages=opts.ringbuf_pages or DEFAULT_RINGBUF_PAGES,
            trace_ctx=opts.trace,
        )
        probes.append(sched)
    if opts.bypass_mode != "off":
        from .probes.sockbypass import SockBypassProbe

        probes.append(
            SockBypassProbe(
                mode=opts.bypass_mode,
                cgroup=opts.bypass_cgroup,
                local_cidrs=list(opts.local_cidrs),
                interfaces=list(opts.interfaces),
            )
        )
    selector = None
    if opts.trace:
        from .collector.correlate import TraceSelector
        from .probes.tracectx import TraceCtxProbe

        selector = TraceSelector(
            frozenset(opts.trace_pids), frozenset(opts.trace_comms), tuple(opts.trace_cgroups)
        )
        # After the scheduler probe: it shares that probe's per-thread map (without it,
        # requests are captured and their interference is unknown).
        probes.append(TraceCtxProbe(sched, cgroups=list(opts.trace_cgroups)))
    if opts.lifecycle:
        from .probes.lifecycle import LifecycleProbe

        probes.append(LifecycleProbe())
    return probes, selector
