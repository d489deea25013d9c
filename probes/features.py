"""What this kernel can do for wasmtop, checked on the machine rather than assumed."""

from __future__ import annotations

import ctypes
import errno
import functools
import gzip
import os
import platform
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

OK = "ok"
UNAVAILABLE = "unavailable"

# Effective capabilities (linux/capability.h).
CAP_SYS_ADMIN = 21
CAP_SYS_NICE = 23
CAP_PERFMON = 38
CAP_BPF = 39

SYS_BPF = {"x86_64": 321, "aarch64": 280}.get(platform.machine(), 321)
_BPF_MAP_CREATE = 0
_BPF_ENABLE_STATS = 32
_BPF_MAP_TYPE_RINGBUF = 27
_BPF_PROG_LOAD = 5
_BPF_PROG_TYPE_SOCK_OPS = 13
_FN_GET_CURRENT_PID_TGID = 14


@dataclass(frozen=True)
class Feature:
    name: str
    status: str  # "ok" | "unavailable"
    reason: str
    required: bool

    @property
    def ok(self) -> bool:
        return self.status == OK


def libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def checked(res: int, error: type[OSError] = OSError) -> int:
    """A C library call's result (through a handle with use_errno), or its errno raised as
    ``error`` when the call failed (returned a negative value)."""
    if res < 0:
        err = ctypes.get_errno()
        raise error(err, os.strerror(err))
    return res


def bpf_syscall(cmd: int, attr: bytes) -> int:
    """Raw bpf(2). Returns the result, or -errno."""
    buf = ctypes.create_string_buffer(attr, max(len(attr), 128))
    res = libc().syscall(SYS_BPF, cmd, buf, ctypes.sizeof(buf))
    return res if res >= 0 else -ctypes.get_errno()


def bpf_stats_enabled() -> bool:
    """kernel.bpf_stats_enabled: the host measures every program's run time already."""
    try:
        return Path("/proc/sys/kernel/bpf_stats_enabled").read_text().strip() == "1"
    except OSError:
        return False


def enable_bpf_stats() -> int:
    """Turn on per-program run time and count for as long as the returned fd stays open.

    BPF_ENABLE_STATS is scoped to the fd, so closing it leaves kernel.bpf_stats_enabled as it
    was. Returns the fd, or -errno.
    """
    return bpf_syscall(_BPF_ENABLE_STATS, (0).to_bytes(4, "little"))


def tracefs_root() -> Path | None:
    for root in (Path("/sys/kernel/tracing"), Path("/sys/kernel/debug/tracing")):
        if (root / "events").is_dir():
            return root
    return None


def tracepoint_format(tracepoint: str) -> str:
    """The `format` file of a tracepoint ("category:event"), or "" when it cannot be read."""
    root = tracefs_root()
    try:
        return (
            (root / "events" / tracepoint.replace(":", "/") / "format").read_text() if root else ""
        )
    except OSError:
        return ""


def exit_has_group_dead() -> bool:
    """sched_process_exit says when a thread group dies (Linux 6.9+)."""
    return "field:bool group_dead;" in tracepoint_format("sched:sched_process_exit")


# Where requests (trace context) and cold starts (lifecycle) are captured without a syscall
# tracepoint, which would put every task of the node on the slow syscall path.
SOCK_IO_TRACEPOINTS = ("sock:sock_recv_length", "sock:sock_send_length")  # Linux 6.3+
SOCK_STATE_TRACEPOINTS = ("sock:inet_sock_set_state", "sock:sk_data_ready")  # Linux 6.4+
CAPTURE_MODES = ("auto", "socket", "syscalls")


def capture_mode(wanted: str, socket_ok: Callable[[], bool]) -> str:
    """A probe's way of capturing: "socket", "syscalls", or for "auto" the first this kernel
    supports (``socket_ok`` says whether it supports socket capture)."""
    if wanted not in CAPTURE_MODES:
        raise ValueError(f"capture must be one of {', '.join(CAPTURE_MODES)}")
    if wanted != "auto":
        return wanted
    return "socket" if socket_ok() else "syscalls"


def socket_io_capture() -> bool:
    """The trace-context probe can capture on the socket tracepoints: they exist, and the
    caller's syscall registers can be read there."""
    return user_regs() and has_tracepoints(*SOCK_IO_TRACEPOINTS)


def socket_state_capture() -> bool:
    """The lifecycle probe can see listen and the first connection on socket tracepoints."""
    return has_tracepoints(*SOCK_STATE_TRACEPOINTS)


def has_tracepoints(*tracepoints: str) -> bool:
    """Every one of these tracepoints ("category:event") exists on this kernel."""
    root = tracefs_root()
    return root is not None and all(
        (root / "events" / tp.replace(":", "/")).is_dir() for tp in tracepoints
    )


def user_regs() -> bool:
    """A tracepoint program can read the calling thread's syscall registers: bpf_task_pt_regs
    and bpf_get_current_task_btf (Linux 5.15+, kernel BTF), with the x86-64 register layout
    probes/shared.bpf.h declares."""
    if platform.machine() != "x86_64" or not Path("/sys/kernel/btf/vmlinux").exists():
        return False
    return kernel_version() >= (5, 15)


def kernel_version(release: str | None = None) -> tuple[int, int]:
    """(major, minor) of the running kernel (or of ``release``); (0, 0) if unreadable."""
    m = re.match(r"(\d+)\.(\d+)", release or platform.release())
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


def cgroup2_mount(mounts: str = "/proc/mounts") -> Path | None:
    """The cgroup v2 mount point, wherever this host put it (hybrid layouts differ)."""
    try:
        with open(mounts) as f:
            for line in f:
                fields = line.split()
                if len(fields) >= 3 and fields[2] == "cgroup2":
                    return Path(fields[1])
    except OSError:
        return None
    return None


def cgroup_dir(path: str, cgroup_root: Path | None = None) -> Path:
    """A cgroup v2 directory named by a path under the cgroup2 mount (absolute paths that
    already start with the mount are taken as they are). ValueError when it does not exist."""
    root = cgroup_root or cgroup2_mount()
    if root is None:
        raise ValueError("no cgroup2 mount in /proc/mounts")
    rel = Path(path)
    full = rel if rel.is_absolute() and rel.is_relative_to(root) else root / str(rel).lstrip("/")
    if not full.is_dir():
        raise ValueError(f"cgroup {path} not found under {root}")
    return full


def effective_capabilities(status_path: str = "/proc/self/status") -> int:
    with open(status_path) as f:
        for line in f:
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    return 0


def missing_capabilities(caps: int | None = None) -> list[str]:
    """Capabilities wasmtop lacks to load tracing programs; [] when it has enough."""
    caps = effective_capabilities() if caps is None else caps

    def has(bit: int) -> bool:
        return bool(caps >> bit & 1)

    if has(CAP_SYS_ADMIN):
        return []
    return [
        name for bit, name in ((CAP_BPF, "CAP_BPF"), (CAP_PERFMON, "CAP_PERFMON")) if not has(bit)
    ]


def kernel_config(option: str, path: str = "/proc/config.gz") -> str | None:
    """Value of CONFIG_<option> ("y", "m", ...), "n" when unset, None when unknowable."""
    try:
        with gzip.open(path, "rt") as f:
            for line in f:
                if line.startswith(f"CONFIG_{option}="):
                    return line.strip().split("=", 1)[1]
                if line.startswith(f"# CONFIG_{option} is not set"):
                    return "n"
    except OSError:
        return None
    return "n"


def headers_dir(release: str | None = None) -> Path:
    return Path("/lib/modules") / (release or platform.release()) / "build"


KHEADERS = Path("/sys/kernel/kheaders.tar.xz")  # CONFIG_IKHEADERS: BCC unpacks it into /tmp


def check_kernel_headers() -> Feature:
    """The headers BCC compiles against, in BCC's order: $BCC_KERNEL_SOURCE, the running
    kernel's build directory, the kernel's own archive (CONFIG_IKHEADERS)."""
    source = os.environ.get("BCC_KERNEL_SOURCE")
    if source:
        if (Path(source) / "include").is_dir():
            return Feature("kernel_headers", OK, f"BCC_KERNEL_SOURCE={source}", True)
        return Feature(
            "kernel_headers", UNAVAILABLE, f"BCC_KERNEL_SOURCE={source} has no include/", True
        )
    build = headers_dir()
    if (build / "include").is_dir():
        return Feature("kernel_headers", OK, f"{build} -> {build.resolve()}", True)
    if KHEADERS.exists():
        return Feature("kernel_headers", OK, f"{KHEADERS} (CONFIG_IKHEADERS)", True)
    return Feature(
        "kernel_headers",
        UNAVAILABLE,
        f"{build} missing: run `make setup` (installs linux-headers-$(dpkg --print-architecture)"
        " and links it for this kernel), or set BCC_KERNEL_SOURCE to a kernel header tree",
        True,
    )


def headers_release(build: Path | None = None) -> str | None:
    """The kernel release a header tree was made for (include/generated/utsrelease.h)."""
    source = os.environ.get("BCC_KERNEL_SOURCE")
    tree = build if build is not None else Path(source) if source else headers_dir()
    try:
        text = (tree / "include" / "generated" / "utsrelease.h").read_text()
    except OSError:
        return None
    m = re.search(r'UTS_RELEASE\s+"([^"]+)"', text)
    return m.group(1) if m else None


def check_headers_match(build: Path | None = None, release: str | None = None) -> Feature:
    """Whether the headers BCC compiles against are the running kernel's own: only then could
    a probe read kernel structs (their layout differs between kernels). wasmtop's probes read
    none (tracepoint arguments and BPF contexts only), so they run either way."""
    running = release or platform.release()
    made_for = headers_release(build)
    if made_for == running:
        return Feature(
            "headers_match",
            OK,
            f"the headers are {running}'s own: struct-reading features could be used",
            False,
        )
    return Feature(
        "headers_match",
        UNAVAILABLE,
        f"the headers are {made_for or 'of an unknown kernel'}'s, the kernel is {running}: no"
        " probe may read a kernel struct (none does)",
        False,
    )


def check_ringbuf() -> Feature:
    attr = b"".join(
        v.to_bytes(4, "little") for v in (_BPF_MAP_TYPE_RINGBUF, 0, 0, 4096)
    )  # map_type, key_size, value_size, max_entries
    fd = bpf_syscall(_BPF_MAP_CREATE, attr)
    if fd >= 0:
        os.close(fd)
        return Feature("ringbuf", OK, "BPF_MAP_TYPE_RINGBUF created", True)
    name = errno.errorcode.get(-fd, str(-fd))
    why = {
        # bpf() itself refused: CAP_BPF missing, or a seccomp profile without the rule that
        # allows bpf() to CAP_BPF (containerd >= 1.6.9 and Docker >= 23 have it in their
        # RuntimeDefault; older profiles allow bpf() only to CAP_SYS_ADMIN).
        errno.EPERM: "bpf() refused: no CAP_BPF, or a seccomp profile that allows bpf() only"
        " to CAP_SYS_ADMIN (docs/deploy.md)",
        errno.EINVAL: "this kernel has no BPF ring buffer (needs Linux >= 5.8)",
        errno.ENOSYS: "bpf() is not available (a kernel without CONFIG_BPF_SYSCALL, or seccomp)",
    }.get(-fd, "needs Linux >= 5.8")
    reason = f"creating a ring buffer map failed: {name}: {why}"
    return Feature("ringbuf", UNAVAILABLE, reason, True)


def check_tracepoints() -> Feature:
    root = tracefs_root()
    if root is None:
        return Feature(
            "tracepoints",
            UNAVAILABLE,
            "tracefs not mounted: mount -t tracefs nodev /sys/kernel/tracing",
            True,
        )
    needed = ["sched:sched_switch", "sched:sched_migrate_task"]
    absent = [tp for tp in needed if not has_tracepoints(tp)]
    if absent:
        return Feature("tracepoints", UNAVAILABLE, f"missing in {root}: {', '.join(absent)}", True)
    return Feature("tracepoints", OK, f"{root}/events", True)


def check_bcc() -> Feature:
    """BCC's Python module, which the compiler child imports (found, not imported: the running
    process never loads the compiler)."""
    import importlib.util

    try:
        spec = importlib.util.find_spec("bcc")
    except (ImportError, ValueError):
        spec = None
    if spec is not None:
        return Feature("bcc", OK, f"{spec.origin or spec.name}", True)
    return Feature(
        "bcc",
        UNAVAILABLE,
        "BCC's Python module is not importable: install python3-bpfcc (Debian, Ubuntu) or "
        "python3-bcc (Fedora); in a virtual environment, make it visible there (`make setup` "
        "links Debian's into .venv)",
        True,
    )


def check_btf() -> Feature:
    if Path("/sys/kernel/btf/vmlinux").exists():
        return Feature("btf", OK, "/sys/kernel/btf/vmlinux", False)
    return Feature("btf", UNAVAILABLE, "no /sys/kernel/btf/vmlinux (CONFIG_DEBUG_INFO_BTF)", False)


def check_bpffs() -> Feature:
    try:
        with open("/proc/mounts") as f:
            if any(line.split()[1:3] == ["/sys/fs/bpf", "bpf"] for line in f):
                return Feature("bpffs", OK, "/sys/fs/bpf", False)
    except OSError:
        pass
    return Feature("bpffs", UNAVAILABLE, "not mounted: mount -t bpf bpf /sys/fs/bpf", False)


def check_capabilities() -> Feature:
    missing = missing_capabilities()
    if not missing:
        return Feature("capabilities", OK, "CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN)", True)
    return Feature(
        "capabilities",
        UNAVAILABLE,
        f"missing {' and '.join(missing)}: run as root or grant {', '.join(missing)}",
        True,
    )


def check_kprobes() -> Feature:
    root = tracefs_root()
    if root is not None and (root / "kprobe_events").exists():
        return Feature("kprobes", OK, f"{root}/kprobe_events", False)
    cfg = kernel_config("KPROBES")
    why = "kernel built without CONFIG_KPROBES" if cfg == "n" else "no kprobe_events in tracefs"
    return Feature("kprobes", UNAVAILABLE, why, False)


def check_bpf_stats() -> Feature:
    fd = enable_bpf_stats()
    if fd >= 0:
        os.close(fd)
        return Feature("bpf_stats", OK, "BPF_ENABLE_STATS (per-program run time and count)", False)
    return Feature("bpf_stats", UNAVAILABLE, f"BPF_ENABLE_STATS: {errno.errorcode.get(-fd)}", False)


def program_loads(prog_type: int, helper: int) -> int:
    """Whether this kernel loads a program of ``prog_type`` that calls ``helper`` (by its
    number): 0, or the errno of BPF_PROG_LOAD. Three instructions, no compiler."""
    insns = bytes.fromhex("85000000") + helper.to_bytes(4, "little")  # call helper
    insns += bytes.fromhex("b700000001000000")  # r0 = 1
    insns += bytes.fromhex("9500000000000000")  # exit
    code = ctypes.create_string_buffer(insns, len(insns))
    license = ctypes.create_string_buffer(b"GPL")
    attr = b"".join((
        prog_type.to_bytes(4, "little"),
        (len(insns) // 8).to_bytes(4, "little"),
        ctypes.addressof(code).to_bytes(8, "little"),
        ctypes.addressof(license).to_bytes(8, "little"),
    ))  # fmt: skip
    fd = bpf_syscall(_BPF_PROG_LOAD, attr)
    if fd >= 0:
        os.close(fd)
        return 0
    return -fd


@functools.cache
def _sockops_pid_errno() -> int:
    return program_loads(_BPF_PROG_TYPE_SOCK_OPS, _FN_GET_CURRENT_PID_TGID)


def sockops_pid() -> bool:
    """A sockops program may call bpf_get_current_pid_tgid (6.1 refuses it): the socket-bypass
    probe then names a connecting process at connect(); else from /proc. Loaded once."""
    return _sockops_pid_errno() == 0


def check_sockops_pid() -> Feature:
    code = _sockops_pid_errno()
    if code == 0:
        return Feature("sockops_pid", OK, "sockops programs call bpf_get_current_pid_tgid", False)
    why = errno.errorcode.get(code, str(code))
    if code in (errno.EPERM, errno.EACCES):
        return Feature("sockops_pid", UNAVAILABLE, f"bpf() refused ({why}): not allowed", False)
    return Feature(
        "sockops_pid",
        UNAVAILABLE,
        f"this kernel refuses bpf_get_current_pid_tgid in sockops programs ({why}): a connecting"
        " socket's process is found from /proc/PID/fd instead",
        False,
    )


def check_socket_capture() -> Feature:
    """Requests and cold starts can be captured without any syscall tracepoint (which would put
    every task of the node on the slow syscall path)."""
    if not has_tracepoints(*SOCK_IO_TRACEPOINTS):
        why = "no sock_recv_length/sock_send_length tracepoints (Linux < 6.3)"
    elif not user_regs():
        why = "no bpf_task_pt_regs with BTF on x86-64 (Linux >= 5.15)"
    elif not socket_state_capture():
        why = "no sk_data_ready tracepoint (Linux < 6.4)"
    else:
        return Feature("socket_capture", OK, "socket tracepoints + syscall registers", False)
    return Feature("socket_capture", UNAVAILABLE, f"{why}: syscall tracepoints instead", False)


def detect() -> list[Feature]:
    """Every feature check that needs no compiler. fentry is checked by loading (see runtime)."""
    return [
        check_capabilities(),
        check_tracepoints(),
        check_ringbuf(),
        check_bcc(),
        check_kernel_headers(),
        check_headers_match(),
        check_btf(),
        check_bpffs(),
        check_bpf_stats(),
        check_kprobes(),
        check_socket_capture(),
        check_sockops_pid(),
    ]
