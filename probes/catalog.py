"""Every probe wasmtop ships, and the variants their compiled-in options produce."""

from __future__ import annotations

from . import features
from .lifecycle import LifecycleProbe
from .probeset import Probe, fentry_feature, sockmap_feature  # noqa: F401  (wasmtop doctor)
from .sched import SchedProbe
from .sockbypass import ACCELERATE, SockBypassProbe
from .tracectx import TraceCtxProbe


def default_probes() -> list[Probe]:
    sched = SchedProbe(trace_ctx=True)
    # tracectx after the probe whose map it shares
    return [sched, SockBypassProbe(), TraceCtxProbe(sched), LifecycleProbe()]


def probe_variants() -> list[tuple[str, Probe]]:
    """One instance per combination of compiled-in filters and shared maps, for --print-bpf and
    its test (loaded in this order: a probe that shares another's maps comes after it)."""
    variants: list[tuple[str, Probe]] = [
        ("sched: no filter", SchedProbe()),
        ("sched: pid filter", SchedProbe(pids=(1,))),
        ("sched: two pids, 1 ms threshold", SchedProbe(pids=(1, 2), threshold_ns=1_000_000)),
    ]
    if features.cgroup2_mount() is not None:
        variants += [
            ("sched: cgroup filter", SchedProbe(cgroup="/")),
            ("sched: pid and cgroup filters", SchedProbe(pids=(1,), cgroup="/")),
        ]
    sched = SchedProbe(trace_ctx=True)
    variants += [
        ("sched: trace-context map", sched),
        ("tracectx: sharing the scheduler probe's maps", TraceCtxProbe(sched)),
        ("tracectx: alone", TraceCtxProbe()),
        ("lifecycle", LifecycleProbe()),
        ("sockbypass: observe", SockBypassProbe()),
        ("sockbypass: accelerate, pod CIDR", SockBypassProbe(mode=ACCELERATE,
                                                             local_cidrs=("10.42.0.0/16",))),
    ]  # fmt: skip
    return variants
