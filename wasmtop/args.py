"""Command-line argument types, and the flags every command that runs the probes in this
process shares (`wasmtop snapshot`, `wasmtop`/`wasmtop top`). A flag and its config key accept
the same values and say the same thing about a bad one."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import Any

from . import config
from .engine import PROBE_NAMES
from .probes.sched import DEFAULT_THRESHOLD_MS


def number_arg(
    convert: Callable[[str], float], valid: Callable[[float], bool], expected: str
) -> Callable[[str], float]:
    """An argparse type: convert, check, and say what was expected when either fails."""

    def parse(text: str) -> float:
        try:
            value = convert(text)
        except ValueError:
            value = None
        if value is None or not math.isfinite(value) or not valid(value):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value

    return parse


positive_seconds = number_arg(float, lambda v: v > 0, "seconds > 0")
non_negative_ms = number_arg(float, lambda v: v >= 0, "milliseconds >= 0")
pid_arg = number_arg(int, lambda v: v > 0, "a process id > 0")
power_of_two = number_arg(int, lambda v: v >= 1 and not int(v) & (int(v) - 1), "a power of two")


def checked_arg(parse: Callable[[Any], Any]) -> Callable[[str], Any]:
    """An argparse type from a config check (wasmtop/config.py), so a flag and its config key
    accept the same values and say the same thing about a bad one."""

    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return convert


def probe_list(text: str) -> frozenset[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in PROBE_NAMES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"expected probe names from {', '.join(PROBE_NAMES)}, got {text!r}"
        )
    return frozenset(names)


cidr_arg = checked_arg(config.cidr)
comm_arg = checked_arg(config.comm_name)


def add_collector_arguments(p: argparse.ArgumentParser) -> None:
    """--threshold-ms, --scheduling, --probe-stats and --rules, alike wherever the collector
    runs in this process."""
    p.add_argument(
        "--threshold-ms",
        type=non_negative_ms,
        default=DEFAULT_THRESHOLD_MS,
        metavar="T",
        help="preemption delays and wake-up waits of at least T ms are reported one by one, "
        "with the task that preempted the thread or held its CPU "
        f"(default {DEFAULT_THRESHOLD_MS:g})",
    )
    p.add_argument(
        "--scheduling",
        choices=("idle", "normal"),
        default="idle",
        help="idle (default): the thread draining the ring buffers decodes a batch of 64 KiB "
        "or more as SCHED_IDLE, taking only CPU time the workloads leave, sleeps between "
        "batches as SCHED_IDLE under a guard that puts it back to normal priority 50 ms past "
        "the wait, and does everything else (handling keys, small batches, output) at normal "
        "priority; it stops yielding for 5 s when a ring buffer fills past 25%% between two "
        "drains or a yielding batch is starved (counted as collector_priority_raised); "
        "normal: never yields",
    )
    p.add_argument(
        "--probe-stats",
        action="store_true",
        help="measure the probes' own kernel run time (probes.NAME.run_time_ns, ns_per_run); "
        "off by default because while it is on the kernel times every BPF program on the host, "
        "not only wasmtop's",
    )
    p.add_argument(
        "--kubeconfig",
        metavar="FILE",
        help="name pods through the API server of this kubeconfig's current context (default: "
        "in a pod its service account; else $KUBECONFIG, ~/.kube/config, K3s's "
        "/etc/rancher/k3s/k3s.yaml; token or client-certificate users; see docs/config.md)",
    )
    p.add_argument("--context", metavar="NAME", help="the kubeconfig's context to use")
    p.add_argument(
        "--no-kubernetes",
        action="store_true",
        help="never ask an API server: pods are known by UID",
    )
    p.add_argument(
        "--rules",
        action="append",
        default=[],
        metavar="FILE",
        help="alert rule file evaluated on each Snapshot, into its alerts[] (repeatable; "
        "default: the shipped alerts/rules/default.yaml; see docs/alerts.md)",
    )
