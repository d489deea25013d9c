"""Every probe wasmtop ships, and the variants their compiled-in options produce."""

from __future__ import annotations

from . import features
from .runtime import Probe, fentry_feature  # noqa: F401  (wasmtop doctor)
from .sched import SchedProbe
from .sockbypass import ACCELERATE, SockBypassProbe


def default_probes() -> list[Probe]:
    return [SchedProbe(), SockBypassProbe()]


def probe_variants() -> list[tuple[str, Probe]]:
    """One instance per combination of compiled-in filters, for --print-bpf and its test."""
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
    variants += [
        ("sockbypass: observe", SockBypassProbe()),
        ("sockbypass: accelerate, pod CIDR", SockBypassProbe(mode=ACCELERATE,
                                                             local_cidrs=("10.42.0.0/16",))),
    ]  # fmt: skip
    return variants
