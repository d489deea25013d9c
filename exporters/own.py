"""The daemon's families about itself: ``wasmtop_build_info`` and the standard ``process_*``
(the names and meanings of prometheus_client's process collector, read from /proc/self: the
daemon process alone, without the compiler children it starts)."""

from __future__ import annotations

import os
import platform
import re
import resource

from .. import __version__
from .series import Family, Sample

BCC_VERSION_FILE = "/usr/lib/python3/dist-packages/bcc/version.py"


def bcc_version(path: str = BCC_VERSION_FILE) -> str:
    """BCC's version as its Python module states it; "" when it cannot be read."""
    try:
        with open(path) as f:
            found = re.search(r"__version__\s*=\s*['\"]([^'\"]{1,40})['\"]", f.read(4096))
    except OSError:
        return ""
    return found.group(1) if found else ""


def build_info() -> Family:
    return Family(
        "wasmtop_build_info",
        "gauge",
        "1, with the versions of wasmtop, Python and BCC this daemon runs.",
        ("version", "python_version", "bcc_version"),
        [Sample((__version__, platform.python_version(), bcc_version()), 1.0)],
    )


def _boot_time_s() -> float:
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("btime "):
                return float(line.split()[1])
    return 0.0


def process_families(proc: str = "/proc/self") -> list[Family]:
    """CPU time, memory, file descriptors and start time of this process; [] when /proc cannot
    be read (never an error on /metrics)."""
    try:
        with open(f"{proc}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        open_fds = len(os.listdir(f"{proc}/fd"))
        boot_s = _boot_time_s()
    except (OSError, IndexError):
        return []
    ticks = os.sysconf("SC_CLK_TCK")
    # Fields after "(comm)": state is [0], so the stat(5) field N is fields[N - 3].
    utime, stime, start = int(fields[11]), int(fields[12]), int(fields[19])
    vsize, rss = int(fields[20]), int(fields[21])
    max_fds = resource.getrlimit(resource.RLIMIT_NOFILE)[0]

    def one(name: str, kind: str, text: str, value: float) -> Family:
        return Family(name, kind, text, (), [Sample((), float(value))])

    return [
        one("process_cpu_seconds", "counter", "User and system CPU time spent, in seconds.",
            (utime + stime) / ticks),
        one("process_virtual_memory_bytes", "gauge", "Virtual memory size in bytes.", vsize),
        one("process_resident_memory_bytes", "gauge", "Resident memory size in bytes.",
            rss * resource.getpagesize()),
        one("process_start_time_seconds", "gauge",
            "Start time of the process since the Unix epoch in seconds.", boot_s + start / ticks),
        one("process_open_fds", "gauge", "Number of open file descriptors.", open_fds),
        one("process_max_fds", "gauge", "Maximum number of open file descriptors.", max_fds),
    ]  # fmt: skip
