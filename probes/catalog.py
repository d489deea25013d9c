"""Every probe wasmtop ships, and the variants their compiled-in options produce."""

from __future__ import annotations

from . import features
from .runtime import LibbccError, Probe, capturing
from .sched import SchedProbe


def default_probes() -> list[Probe]:
    return [SchedProbe()]


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
    return variants


def fentry_feature() -> features.Feature:
    """fentry/fexit is optional: load a trivial program to see whether this kernel allows it."""
    try:
        from bcc import BPF
    except ImportError as exc:
        return features.Feature("fentry", features.UNAVAILABLE, f"bcc not importable: {exc}", False)
    if not BPF.support_kfunc():
        return features.Feature("fentry", features.UNAVAILABLE, "no BPF trampoline", False)
    try:
        bpf = capturing("", lambda: BPF(text=b"KFUNC_PROBE(do_nanosleep) { return 0; }"))
    except LibbccError as exc:
        detail = "; ".join(exc.detail.splitlines()[-2:]) or str(exc)
        return features.Feature(
            "fentry", features.UNAVAILABLE, f"loading an fentry program failed: {detail}", False
        )
    bpf.cleanup()
    return features.Feature("fentry", features.OK, "fentry program loaded", False)
