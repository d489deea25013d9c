"""Lifecycle probe: process cold start (exec -> first listen, exec -> first accepted connection)
and the latency of WebAssembly runtimes' compile, instantiate and guest calls.

Kernel side: ``lifecycle.bpf.c`` on sched_process_exec/fork/exit and, for listen and accept,
the socket tracepoints inet_sock_set_state and sk_data_ready where the kernel has them (else the
listen/accept syscall tracepoints, which tax every syscall on the node), plus uprobes on a
runtime's C API, or on the functions of its Rust API found in a file's symbol table, attached
per file as workloads that map one are found (``attach_library``). Calls of one kind nested on
a thread (a probed function calling another) are timed once, the outermost.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from . import features
from .probeset import Probe, capturing
from .records import LifecycleReading, WasmCalls

DEFAULT_MAX_PROCS = 16_384
DEFAULT_MAX_CALLS = 16_384
DEFAULT_MAX_LISTENERS = 4096  # listening sockets of processes exec'd while wasmtop runs, from
# their listen to their close or first connection
DEFAULT_RINGBUF_PAGES = 8  # cold starts are rare: 32 KiB holds ~680 (40 + 8 bytes) per drain

COMPILE, INSTANTIATE, CALL = "compile", "instantiate", "call"  # CALL: into the guest
_KIND_IDS = {1: COMPILE, 2: INSTANTIATE, 3: CALL}

# Per runtime: the C API functions whose latency is a compile or an instantiate.
RUNTIME_SYMBOLS: dict[str, dict[str, str]] = {
    "wasmtime": {
        "wasmtime_module_new": COMPILE,
        "wasmtime_instance_new": INSTANTIATE,
        "wasmtime_linker_instantiate": INSTANTIATE,
    },
    "wasmedge": {
        "WasmEdge_VMLoadWasmFromFile": COMPILE,
        "WasmEdge_VMLoadWasmFromBuffer": COMPILE,
        "WasmEdge_VMValidate": COMPILE,
        "WasmEdge_VMInstantiate": INSTANTIATE,
    },
}


@dataclass
class Library:
    """A runtime's file (a library, or an executable with the runtime in it) the uprobes are
    attached to, through its C API or its Rust API."""

    path: str
    runtime: str
    attached: list[str] = field(default_factory=list)  # functions, as people name them
    missing: list[str] = field(default_factory=list)  # functions the file lacks (and why)
    error: str | None = None
    api: str = "c"  # "c" (exported C API) or "rust" (symbols of the Rust API, demangled)
    kinds: set[str] = field(default_factory=set)  # the kinds of call some function is timed for


def file_identity(st: os.stat_result) -> tuple[int, ...]:
    """Which file this is, for offsets found in it: device, inode, and what a new file at a
    reused inode would not share. The mtime alone would not do (its owner can set it, and
    reproducible images set it to a constant); the ctime cannot be set."""
    return (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_size)


@dataclass(frozen=True)
class EntryPoint:
    """A function of a runtime's Rust API found in a file's symbol table."""

    symbol: str  # as mangled in the file (the uprobe resolves it)
    kind: str  # COMPILE, INSTANTIATE or CALL
    name: str  # as people name it: wasmtime::Module::new
    # Where it is: its first instruction's file offset and its return instructions'. Given,
    # the end of a call is a uprobe on each return instruction rather than a return probe,
    # which would replace the return address on the stack: a Rust panic unwinding through
    # such a frame aborts the process ("failed to initiate panic"). A call that leaves
    # another way (a tail call, unwinding) is found at the thread's next call of its kind and
    # counted in calls_unfinished.
    offset: int | None = None
    returns: tuple[int, ...] = ()


class LifecycleProbe(Probe):
    name = "lifecycle"
    process_tracepoints = (
        ("sched:sched_process_exec", "wasmtop_process_exec"),
        ("task:task_newtask", "wasmtop_task_newtask"),
        ("sched:sched_process_exit", "wasmtop_process_exit"),
    )
    syscall_tracepoints = (
        ("syscalls:sys_exit_listen", "wasmtop_listen"),
        ("syscalls:sys_exit_accept4", "wasmtop_accept4"),
        ("syscalls:sys_exit_accept", "wasmtop_accept"),
    )
    socket_tracepoints = tuple(
        zip(features.SOCK_STATE_TRACEPOINTS, ("wasmtop_sock_state", "wasmtop_sk_data_ready"))
    )
    ringbuffers = (("life_events", "life_event"),)
    counters = ("CALL_UNFINISHED",)

    def __init__(
        self,
        *,
        max_procs: int = DEFAULT_MAX_PROCS,
        max_calls: int = DEFAULT_MAX_CALLS,
        ringbuf_pages: int = DEFAULT_RINGBUF_PAGES,
        max_listeners: int = DEFAULT_MAX_LISTENERS,
        capture: str = "auto",
        guest_calls: bool = False,
    ) -> None:
        """``capture``: "socket" (listen and the first connection seen on socket tracepoints:
        TCP only), "syscalls" (the listen/accept syscall tracepoints: any socket family, at the
        cost of the slow syscall path for every task) or "auto" (socket where the kernel has
        the tracepoints). ``guest_calls``: time calls into the guest too (a Rust API's
        Func::call, TypedFunc::call): a uprobe and a return probe on every such call, which
        costs each one microseconds (docs/benchmarks.md), so off unless asked."""
        super().__init__()
        self.guest_calls = guest_calls
        self.capture = features.capture_mode(capture, features.socket_state_capture)
        self.tracepoints = (  # type: ignore[misc]
            *self.process_tracepoints,
            *(self.socket_tracepoints if self.capture == "socket" else self.syscall_tracepoints),
        )
        self.max_listeners = max_listeners
        if ringbuf_pages < 1 or ringbuf_pages & (ringbuf_pages - 1):
            raise ValueError("ringbuf_pages must be a power of two")
        self.max_procs = max_procs
        self.max_calls = max_calls
        self.ringbuf_pages = ringbuf_pages
        self.libraries: dict[tuple[int, int], Library] = {}  # (st_dev, st_ino) -> library
        self._uprobes: list[tuple[str, str, bool]] = []  # (path, symbol, return probe)

    def defines(self) -> dict[str, int | str]:
        return {
            "SOCK_STATE": int(self.capture == "socket"),
            "MAX_PROCS": self.max_procs,
            "MAX_LISTENERS": self.max_listeners,
            "EXIT_GROUP_DEAD": int(features.exit_has_group_dead()),
            "MAX_CALLS": self.max_calls,
            "RINGBUF_PAGES": self.ringbuf_pages,
        }

    def check_kernel(self) -> None:
        super().check_kernel()

    def required_maps(self) -> list[str]:
        return [*super().required_maps(), "procs", "calls_in_flight", "wasm_calls", "wasm_hist"]

    # -- uprobes on runtime libraries -----------------------------------------------------
    def attach_library(
        self,
        path: str,
        runtime: str,
        entry_points: Sequence[EntryPoint] | None = None,
        missing: Sequence[str] = (),
        identity: tuple[int, ...] | None = None,
    ) -> Library:
        """Attach the compile/instantiate/call uprobes to a runtime's file, once per file (a
        library mapped by many processes is one inode): its C API, or, given
        ``entry_points``, those functions of its Rust API (``missing``: what the file lacks,
        as found). Functions that cannot be attached are reported.

        The path (in a container's filesystem: its owner can rename anything there) is opened
        once, without blocking and without following a last symlink, and must be a regular
        file, of ``identity`` (file_identity) when given, as the offsets were found
        in: OSError (EINVAL, ESTALE) otherwise. Symbols are read and uprobes placed through
        that open file (/proc/self/fd/N), never through the path again: a FIFO renamed into
        place meanwhile would block BCC's open for good, another file would get offsets that
        are not its own."""
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOFOLLOW)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise OSError(errno.EINVAL, "not a regular file", path)
            if identity is not None and file_identity(st) != identity:
                raise OSError(errno.ESTALE, "changed since examined", path)
            key = (st.st_dev, st.st_ino)
            if key in self.libraries:
                return self.libraries[key]
            return self._attach_library(
                key, path, f"/proc/self/fd/{fd}", runtime, entry_points, missing
            )
        finally:
            os.close(fd)  # an attached uprobe holds the file itself

    def _attach_library(
        self,
        key: tuple[int, int],
        path: str,
        via: str,
        runtime: str,
        entry_points: Sequence[EntryPoint] | None,
        missing: Sequence[str],
    ) -> Library:
        lib = Library(path, runtime, api="c" if entry_points is None else "rust")
        lib.missing.extend(missing)
        self.libraries[key] = lib
        if self.bpf is None:
            lib.error = "probe not loaded"
            return lib
        if entry_points is None:
            symbols = RUNTIME_SYMBOLS.get(runtime, {})
            if not symbols:
                lib.error = f"no known C API for runtime {runtime!r}"
            entry_points = [EntryPoint(sym, kind, sym) for sym, kind in symbols.items()]
        elif not entry_points:
            lib.error = f"no function of {runtime}'s API found in its symbol table"
        elif not self.guest_calls:
            entry_points = [ep for ep in entry_points if ep.kind != CALL]
        copies: dict[str, int] = {}
        for ep in entry_points:
            try:
                if ep.offset is None:
                    self._attach_call(path, via, ep.symbol, ep.kind)
                else:
                    self._attach_located(path, via, ep)
            except Exception as exc:
                cause = getattr(exc, "failure", exc)
                if isinstance(cause, LookupError):  # not in the file (another version, stripped)
                    lib.missing.append(ep.name)
                else:  # found, but the kernel refused the uprobe
                    why = getattr(cause, "strerror", None) or str(cause)
                    lib.missing.append(f"{ep.name}: could not be attached: {why}")
            else:
                copies[ep.name] = copies.get(ep.name, 0) + 1
                lib.kinds.add(ep.kind)
        # A generic function is one copy per type it was compiled for: said once, counted.
        lib.attached = [n if c == 1 else f"{n} ({c} copies)" for n, c in copies.items()]
        return lib

    def _attach_call(self, path: str, via: str, sym: str, kind: str) -> None:
        """``via``: the file opened (/proc/self/fd/N), known by ``path`` to detach."""
        name, raw_sym = path.encode(), sym.encode()
        entry, ret = f"wasmtop_wasm_{kind}_entry".encode(), f"wasmtop_wasm_{kind}_return".encode()
        capturing(
            f"uprobe {sym}",
            lambda: self.bpf.attach_uprobe(name=name, sym=raw_sym, fn_name=entry, via=via),
        )
        self._uprobes.append((path, sym, False))
        try:
            capturing(
                f"uretprobe {sym}",
                lambda: self.bpf.attach_uretprobe(name=name, sym=raw_sym, fn_name=ret, via=via),
            )
        except Exception:
            self._detach_uprobe(path, sym, False)
            raise
        self._uprobes.append((path, sym, True))

    def _attach_located(self, path: str, via: str, ep: EntryPoint) -> None:
        """An entry point by its offsets: a uprobe on its first instruction and one on each of
        its return instructions (all or none)."""
        assert ep.offset is not None
        entry = f"wasmtop_wasm_{ep.kind}_entry".encode()
        ret = f"wasmtop_wasm_{ep.kind}_return".encode()
        done: list[str] = []
        try:
            # The returns first: a call that begins before its end can be seen never ends.
            for offset, program in (*((r, ret) for r in ep.returns), (ep.offset, entry)):
                key = f"{ep.symbol}@{offset:#x}"
                capturing(
                    f"uprobe {key}",
                    lambda: self.bpf.attach_uprobe_at(path, offset, key, program, via),  # noqa: B023
                )
                done.append(key)
                self._uprobes.append((path, key, False))
        except Exception:
            for key in done:
                self._detach_uprobe(path, key, False)
            raise

    def _detach_uprobe(self, path: str, sym: str, ret: bool) -> None:
        with contextlib.suppress(Exception):
            if ret:
                self.bpf.detach_uretprobe(name=path.encode(), sym=sym.encode())
            else:
                self.bpf.detach_uprobe(name=path.encode(), sym=sym.encode())
        with contextlib.suppress(ValueError):
            self._uprobes.remove((path, sym, ret))

    def detach(self) -> None:
        gone, self._uprobes = list(self._uprobes), []
        if gone and self.bpf is not None:
            with contextlib.suppress(Exception):
                self.bpf.detach_uprobes(gone)
        super().detach()

    def details(self) -> dict[str, Any]:
        return {
            "capture": self.capture,
            "guest_calls": self.guest_calls,
            "libraries": [
                {
                    "path": lib.path,
                    "runtime": lib.runtime,
                    "api": lib.api,
                    "attached": lib.attached,
                    "missing": lib.missing,
                    "error": lib.error,
                }
                for lib in self.libraries.values()
            ],  # fmt: skip
            # Calls whose return probe never fired (a panic unwound them, or their thread
            # switched stacks): found when the next call of their kind began on the thread.
            "calls_unfinished": self.counter_values().get("CALL_UNFINISHED", 0),
        }

    # -- reading --------------------------------------------------------------------------
    def read(self) -> LifecycleReading:
        """Cold starts since the previous read, and cumulative compile/instantiate/call figures."""
        self.drain()
        hist: dict[tuple[int, str], dict[int, int]] = defaultdict(dict)
        for k, v in self.table("wasm_hist").items():
            hist[(k.tgid, _KIND_IDS.get(k.kind, "?"))][k.bucket] = int(v.value)
        wasm = {}
        for k, v in self.table("wasm_calls").items():
            kind = _KIND_IDS.get(k.kind, "?")
            wasm[(k.tgid, kind)] = WasmCalls(
                tgid=k.tgid, kind=kind, count=v.count, total_ns=v.total_ns, max_ns=v.max_ns,
                hist=hist.get((k.tgid, kind), {}),
            )  # fmt: skip
        return LifecycleReading(
            ts_ns=time.monotonic_ns(), cold_starts=self.take_events(), wasm=wasm
        )

    def forget(self, tgids: set[int]) -> None:
        """Drop the compile/instantiate entries of processes that have exited (after a read)."""
        if self.bpf is None:
            return
        for name in ("wasm_calls", "wasm_hist"):
            table = self.table(name)
            for k in [k for k in table.keys() if k.tgid in tgids]:
                with contextlib.suppress(KeyError):
                    del table[k]
