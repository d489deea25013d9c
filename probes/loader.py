"""A compiled probe loaded into the kernel without BCC: maps created, programs loaded and
attached through bpf(2) and perf_event_open(2), with the interface the probes use.

``LoadedObject`` answers what the probes ask of a loaded module: ``obj["map"]`` (a
probes/tables.py Table), ``load_func``, ``attach_tracepoint`` / ``detach_tracepoint``,
``attach_uprobe`` / ``attach_uretprobe`` and their detach, ``attach_func`` / ``detach_func``
(BPF_PROG_ATTACH), ``funcs`` and ``cleanup``. Every fd it opens it owns, and ``cleanup`` closes
them all, attachments first; a killed process leaves nothing either, since the kernel drops a
perf event's program when its fd closes.

Uprobe symbols are resolved with libbcc_bpf (BCC's loader library, which has no LLVM in it),
the same resolution BCC's own ``attach_uprobe`` uses.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import bpfobj, features, tables
from .compiled import CompiledObject, patched

# enum bpf_prog_type
PROG_KPROBE = 2
PROG_TRACEPOINT = 5
PROG_SOCK_OPS = 13
PROG_SK_MSG = 16
PROG_TRACING = 26

_PERF_TYPE_TRACEPOINT = 2
_PERF_FLAG_FD_CLOEXEC = 8
_PERF_EVENT_IOC_ENABLE = 0x2400
_PERF_EVENT_IOC_SET_BPF = 0x40042408
_SYS_PERF_EVENT_OPEN = {"x86_64": 298, "aarch64": 241}
_UPROBE_PMU = Path("/sys/bus/event_source/devices/uprobe")
_KPROBE_PMU = Path("/sys/bus/event_source/devices/kprobe")


class _PerfEventAttr(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_uint32),
        ("size", ctypes.c_uint32),
        ("config", ctypes.c_uint64),
        ("sample_period", ctypes.c_uint64),
        ("sample_type", ctypes.c_uint64),
        ("read_format", ctypes.c_uint64),
        ("flags", ctypes.c_uint64),
        ("wakeup_events", ctypes.c_uint32),
        ("bp_type", ctypes.c_uint32),
        ("config1", ctypes.c_uint64),
        ("config2", ctypes.c_uint64),
        ("_rest", ctypes.c_uint8 * 48),
    ]


def _perf_event_open(attr: _PerfEventAttr, pid: int, cpu: int) -> int:
    import platform

    nr = _SYS_PERF_EVENT_OPEN.get(platform.machine())
    if nr is None:
        raise OSError(errno.ENOSYS, f"perf_event_open on {platform.machine()}")
    return features.checked(
        _libc().syscall(nr, ctypes.byref(attr), pid, cpu, -1, _PERF_FLAG_FD_CLOEXEC)
    )


_own_libc: Any = None


def _libc() -> Any:
    """A libc handle of this module's own, so that setting a restype here changes no other
    module's calls."""
    global _own_libc
    if _own_libc is None:
        lib = ctypes.CDLL(None, use_errno=True)
        lib.syscall.restype = ctypes.c_long
        _own_libc = lib
    return _own_libc


_BPF_PERF_EVENT = 41  # enum bpf_attach_type: a BPF link on a perf event (Linux 5.15+)


def _set_bpf(perf_fd: int, prog_fd: int) -> int:
    """Put the program on the perf event: through a BPF link where the kernel has them (so it
    can come off again without closing the perf event), else PERF_EVENT_IOC_SET_BPF. Returns
    the link's fd, or -1. Closes perf_fd on failure."""
    import fcntl

    link = -1
    try:
        try:
            link = bpfobj.link_create(prog_fd, perf_fd, _BPF_PERF_EVENT)
        except bpfobj.BpfError:
            fcntl.ioctl(perf_fd, _PERF_EVENT_IOC_SET_BPF, prog_fd)
        fcntl.ioctl(perf_fd, _PERF_EVENT_IOC_ENABLE, 0)
    except BaseException:
        if link >= 0:
            os.close(link)  # it holds the perf event: the program would stay on
        os.close(perf_fd)
        raise
    return link


class _Symbol(ctypes.Structure):
    _fields_ = [
        ("name", ctypes.c_char_p),
        ("demangle_name", ctypes.c_char_p),
        ("module", ctypes.c_void_p),
        ("offset", ctypes.c_uint64),
    ]


_libbcc_bpf: Any = None
_libbcc_bpf_lock = threading.Lock()


def _symbols_lib() -> Any:
    global _libbcc_bpf
    with _libbcc_bpf_lock:
        if _libbcc_bpf is None:
            lib = ctypes.CDLL("libbcc_bpf.so.0", use_errno=True)
            lib.bcc_resolve_symname.argtypes = [
                ctypes.c_char_p, ctypes.c_char_p, ctypes.c_uint64, ctypes.c_int,
                ctypes.c_void_p, ctypes.POINTER(_Symbol),
            ]  # fmt: skip
            lib.bcc_resolve_symname.restype = ctypes.c_int
            lib.bcc_procutils_free.argtypes = [ctypes.c_void_p]
            _libbcc_bpf = lib
        return _libbcc_bpf


def resolve_symbol(path: str, symbol: str) -> tuple[str, int]:
    """(file, file offset) of a symbol of an executable or library, as a uprobe takes it."""
    lib = _symbols_lib()
    sym = _Symbol()
    if lib.bcc_resolve_symname(path.encode(), symbol.encode(), 0, 0, None, ctypes.byref(sym)) < 0:
        raise LookupError(f"could not determine address of symbol {symbol} in {path}")
    module = ctypes.cast(sym.module, ctypes.c_char_p).value or path.encode()
    lib.bcc_procutils_free(sym.module)
    return module.decode(), int(sym.offset)


def _uprobe_pmu() -> tuple[int, int]:
    """The uprobe PMU's perf type and the config bit that makes it a return probe."""
    try:
        pmu = int((_UPROBE_PMU / "type").read_text())
        fmt = (_UPROBE_PMU / "format" / "retprobe").read_text().strip()  # "config:0"
        return pmu, int(fmt.split(":")[1])
    except (OSError, ValueError, IndexError):
        raise OSError(errno.ENOENT, "no uprobe PMU in /sys/bus/event_source") from None


def _kprobe_pmu() -> int:
    """The kprobe PMU's perf type (a kernel with CONFIG_KPROBES)."""
    try:
        return int((_KPROBE_PMU / "type").read_text())
    except (OSError, ValueError):
        raise OSError(errno.ENOENT, "no kprobe PMU in /sys/bus/event_source") from None


def close_together(fds: list[int]) -> None:
    """Close fds side by side. Closing a BPF link on a perf event may wait for an RCU grace
    period in the kernel (about 35 ms here, where the wait is outside the kernel's mutex);
    closed from threads at once, the waits overlap instead of adding up."""
    if len(fds) <= 1:
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        return

    def close(fd: int) -> None:
        with contextlib.suppress(OSError):
            os.close(fd)

    started = []
    for fd in fds:
        t = threading.Thread(target=close, args=(fd,), name="detach")
        try:
            t.start()
        except RuntimeError:  # no thread to be had: close it here
            close(fd)
            continue
        started.append(t)
    for t in started:
        t.join()


_closers: list[Any] = []  # hand_off's children, reaped on the next hand-off
_closers_lock = threading.Lock()
_CAT = next((c for c in ("/usr/bin/cat", "/bin/cat") if os.access(c, os.X_OK)), None)


def hand_off(fds: list[int]) -> None:
    """Close perf event fds whose programs are already detached (their links closed), without
    waiting for the kernel to unregister their probes (a tracepoint's or uprobe's last perf
    event waits for RCU grace periods under a kernel mutex: 35-90 ms each, 0.85 s for a start's
    eleven tracepoints and six uprobes). A child process (``cat``, by its full path) takes
    copies and holds them until this process has closed its own, then exits: the waits happen
    in its exit, and this process goes on at once. Without ``cat``, or if the child cannot be
    started, the fds are closed here, side by side. Never raises."""
    if not fds:
        return
    import subprocess

    with _closers_lock:
        for done in [c for c in _closers if c.poll() is not None]:
            _closers.remove(done)
    child = None
    if _CAT is not None:
        try:
            child = subprocess.Popen(
                [_CAT], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL, pass_fds=fds, start_new_session=True,
            )  # fmt: skip
        except Exception:  # OSError, SubprocessError, RuntimeError at interpreter shutdown
            child = None
    if child is None:
        close_together(fds)
        return
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)  # not the last reference: the child holds one
    with contextlib.suppress(OSError):
        assert child.stdin is not None
        child.stdin.close()  # end of file: it exits, and the kernel's waits are its own
    with _closers_lock:
        _closers.append(child)


def settle(timeout_s: float = 10.0) -> bool:
    """Wait until every handed-off perf event is closed (the kernel has unregistered its probes):
    for whoever must see a quiet kernel next, as a test that times things does. True when all
    are done within the timeout."""
    import time

    deadline = time.monotonic() + timeout_s
    with _closers_lock:
        pending = list(_closers)
    for child in pending:
        try:
            child.wait(max(0.0, deadline - time.monotonic()))
        except Exception:
            return False
    with _closers_lock:
        for done in [c for c in _closers if c.poll() is not None]:
            _closers.remove(done)
        return not _closers


def release(attachments: list[tuple[int, int]]) -> None:
    """Detach (perf event fd, link fd) attachments: every program off its hook at once (the
    links closed side by side), then the bare perf events handed off. An attachment without a
    link (kernels before 5.15: PERF_EVENT_IOC_SET_BPF) still carries its program until its perf
    event closes, so those are closed here, before this returns."""
    close_together([link for _, link in attachments if link >= 0])
    close_together([perf for perf, link in attachments if link < 0])
    hand_off([perf for perf, link in attachments if link >= 0])


def _text(name: bytes | str) -> str:
    """A name as BCC's API takes it (bytes) or as this module keeps it (str)."""
    return name.decode() if isinstance(name, bytes) else name


@dataclass(frozen=True)
class Function:
    name: bytes
    fd: int


class LoadedObject:
    """A compiled object's maps made and its programs loaded on demand, in this process."""

    def __init__(self, obj: CompiledObject) -> None:
        self.obj = obj
        self.funcs: dict[bytes, Function] = {}
        self._map_fds: dict[str, int] = {}
        self._tables: dict[str, tables.Table] = {}
        self._perf: dict[Any, tuple[int, int]] = {}  # attachment -> (perf event fd, link fd)
        self._lock = threading.RLock()
        try:
            for spec in sorted(obj.maps, key=lambda m: m.inner is not None):
                inner = self._map_fds[spec.inner] if spec.inner else 0
                self._map_fds[spec.name] = bpfobj.map_create(
                    spec.type, spec.key_size, spec.value_size, spec.max_entries, spec.name,
                    spec.flags, inner,
                )  # fmt: skip
        except BaseException:
            self.cleanup()
            raise

    # -- maps ---------------------------------------------------------------------------
    def __getitem__(self, name: bytes | str) -> tables.Table:
        key = _text(name)
        table = self._tables.get(key)
        if table is None:
            spec = next((m for m in self.obj.maps if m.name == key), None)
            if spec is None:
                raise KeyError(key)
            key_type = tables.ctype_of(spec.key_desc) if spec.key_desc else ctypes.c_int
            leaf_type = tables.ctype_of(spec.leaf_desc) if spec.leaf_desc else ctypes.c_int
            if spec.type != tables.RINGBUF and (
                ctypes.sizeof(key_type) != spec.key_size
                or ctypes.sizeof(leaf_type) != spec.value_size
            ):  # a buffer of the wrong size would let the kernel write past it
                raise tables.DescError(f"map {key}: key or value type not of the map's size")
            table = tables.Table(
                key, self._map_fds[key], spec.type, spec.max_entries, key_type, leaf_type
            )
            self._tables[key] = table
        return table

    def map_fd(self, name: str) -> int:
        return self._map_fds[name]

    # -- programs -----------------------------------------------------------------------
    def load_func(self, name: bytes | str, prog_type: int) -> Function:
        raw = _text(name).encode()
        with self._lock:
            if raw in self.funcs:
                return self.funcs[raw]
            spec = self.obj.program(raw.decode())
            fd = bpfobj.prog_load(
                prog_type, patched(spec, self._map_fds), self.obj.license, spec.name,
                self.obj.kern_version,
            )  # fmt: skip
            fn = Function(raw, fd)
            self.funcs[raw] = fn
            return fn

    # -- tracepoints --------------------------------------------------------------------
    def _attach(self, key: tuple[Any, ...], attr: _PerfEventAttr, pid: int, prog_fd: int) -> None:
        """Open the perf event ``attr`` describes and put the program on it, once per key."""
        attr.size, attr.sample_period, attr.wakeup_events = 112, 1, 1
        with self._lock:
            if key in self._perf:
                raise FileExistsError(f"{' '.join(map(str, key))}: already attached")
            fd = _perf_event_open(attr, pid, 0 if pid == -1 else -1)
            self._perf[key] = (fd, _set_bpf(fd, prog_fd))

    def _detach(self, keys: list[tuple[Any, ...]]) -> None:
        with self._lock:
            gone = [a for a in (self._perf.pop(k, None) for k in keys) if a is not None]
        release(gone)

    def attach_tracepoint(self, tp: bytes | str, fn_name: bytes | str) -> None:
        tp = _text(tp)
        fn = self.load_func(fn_name, PROG_TRACEPOINT)
        root = features.tracefs_root()
        if root is None:
            raise OSError(errno.ENOENT, "tracefs not mounted")
        try:
            tp_id = int((root / "events" / tp.replace(":", "/") / "id").read_text())
        except (OSError, ValueError):
            raise OSError(errno.ENOENT, f"tracepoint {tp} not found") from None
        attr = _PerfEventAttr()
        attr.type, attr.config = _PERF_TYPE_TRACEPOINT, tp_id
        self._attach(("tp", tp), attr, -1, fn.fd)

    def detach_tracepoint(self, tp: bytes | str) -> None:
        self.detach_tracepoints([tp])

    def detach_tracepoints(self, tps: list[bytes | str]) -> None:
        """Detach these tracepoints together (see close_together); unknown ones are skipped."""
        self._detach([("tp", _text(tp)) for tp in tps])

    # -- uprobes ------------------------------------------------------------------------
    def _attach_uprobe(
        self, name: Any, sym: Any, fn_name: Any, ret: bool, pid: int, via: str | None
    ) -> None:
        path, symbol = _text(name), _text(sym)
        if via is not None:  # an open file: read and probed as it is, known by path
            module, offset = via, resolve_symbol(via, symbol)[1]
        else:
            module, offset = resolve_symbol(path, symbol)
        self._attach_uprobe_at(path, module, offset, symbol, fn_name, ret, pid)

    def attach_uprobe_at(
        self, path: str, offset: int, key: str, fn_name: Any, via: str | None = None
    ) -> None:
        """A uprobe on the instruction at file ``offset`` of ``path`` (no symbol resolved; of
        ``via`` instead when given, an open file's /proc/self/fd/N), known as ``key`` to
        detach_uprobe/detach_uprobes."""
        self._attach_uprobe_at(path, via or path, offset, key, fn_name, False, -1)

    def _attach_uprobe_at(
        self, path: str, module: str, offset: int, symbol: str, fn_name: Any, ret: bool, pid: int
    ) -> None:
        fn = self.load_func(fn_name, PROG_KPROBE)
        pmu, ret_bit = _uprobe_pmu()
        target = ctypes.create_string_buffer(module.encode())
        attr = _PerfEventAttr()
        attr.type = pmu
        attr.config = (1 << ret_bit) if ret else 0
        attr.config1 = ctypes.addressof(target)
        attr.config2 = offset
        self._attach(("uprobe", path, symbol, ret), attr, pid, fn.fd)

    def attach_uprobe(
        self, name: Any, sym: Any, fn_name: Any, pid: int = -1, via: str | None = None
    ) -> None:
        """BCC's attach_uprobe; ``via``: an open file (/proc/self/fd/N) to read and probe in
        place of the path ``name``, which still names it to detach."""
        self._attach_uprobe(name, sym, fn_name, False, pid, via)

    def attach_uretprobe(
        self, name: Any, sym: Any, fn_name: Any, pid: int = -1, via: str | None = None
    ) -> None:
        self._attach_uprobe(name, sym, fn_name, True, pid, via)

    def _detach_uprobe(self, name: Any, sym: Any, ret: bool) -> None:
        key = ("uprobe", _text(name), _text(sym), ret)
        with self._lock:
            if key not in self._perf:
                raise KeyError(f"{key[1]}:{key[2]}")
        self._detach([key])

    def detach_uprobes(self, probes: list[tuple[str, str, bool]]) -> None:
        """Detach these (path, symbol, return probe) together; unknown ones are skipped."""
        self._detach([("uprobe", path, sym, ret) for path, sym, ret in probes])

    def detach_uprobe(self, name: Any, sym: Any) -> None:
        self._detach_uprobe(name, sym, False)

    def detach_uretprobe(self, name: Any, sym: Any) -> None:
        self._detach_uprobe(name, sym, True)

    # -- kprobes ------------------------------------------------------------------------
    def attach_kprobe(self, event: bytes | str, fn_name: bytes | str) -> None:
        """A kprobe on the entry of kernel function ``event``, through the kprobe PMU: the
        kernel removes it when the perf event closes (nothing is written to kprobe_events)."""
        function = _text(event)
        fn = self.load_func(fn_name, PROG_KPROBE)
        target = ctypes.create_string_buffer(function.encode())
        attr = _PerfEventAttr()
        attr.type = _kprobe_pmu()
        attr.config1 = ctypes.addressof(target)
        attr.config2 = 0  # offset in the function
        self._attach(("kprobe", function), attr, -1, fn.fd)

    def detach_kprobe(self, event: bytes | str) -> None:
        self._detach([("kprobe", _text(event))])

    # -- BPF_PROG_ATTACH ----------------------------------------------------------------
    @staticmethod
    def attach_func(fn: Function, target_fd: int, attach_type: int) -> None:
        bpfobj.prog_attach(fn.fd, target_fd, attach_type)

    @staticmethod
    def detach_func(fn: Function, target_fd: int, attach_type: int) -> None:
        bpfobj.prog_detach(fn.fd, target_fd, attach_type)

    # -- the end ------------------------------------------------------------------------
    def attachments(self) -> int:
        return len(self._perf)

    def cleanup(self) -> None:
        """Close every attachment, program and map fd (attachments first)."""
        with self._lock:
            gone = list(self._perf.values())
            self._perf.clear()
        try:
            release(gone)
        finally:
            self._close_the_rest()

    def _close_the_rest(self) -> None:
        for fn in list(self.funcs.values()):
            try:
                os.close(fn.fd)
            except OSError:
                pass
        self.funcs.clear()
        self._tables.clear()
        while self._map_fds:
            _, fd = self._map_fds.popitem()
            try:
                os.close(fd)
            except OSError:
                pass
