"""Write the per-thread trace context that wasmtop reads in the kernel.

Standalone example (Python standard library only: ``ctypes`` + ``os``); copy it into any
project. It talks to the kernel through the raw ``bpf(2)`` system call, so it needs neither
BCC nor libbpf.

The map
-------
While wasmtop runs it pins a BPF hash map (``BPF_MAP_TYPE_HASH``) at
``/sys/fs/bpf/wasmtop/trace_ctx``:

* key: ``u32``, the kernel thread id (``gettid()``, ``threading.get_native_id()``) of the
  thread that handles a request;
* value: 24 bytes, the 16 raw bytes of the W3C trace id followed by the 8 raw bytes of the
  span id (the binary form of the hex fields of a ``traceparent`` header, not the hex text);
* ``max_entries``: chosen by wasmtop; do not assume a value. An update fails with E2BIG
  when the map is full, which is what happens when entries are set and never cleared.

Who writes it, and when
-----------------------
The WebAssembly runtime (or a privileged sidecar acting for it) writes it; wasmtop only
reads. Set the entry for the thread that handles a request when the request starts, and
delete it when the request ends (``TraceContextMap.request`` does both). While the entry is
there, wasmtop's scheduler probe stamps over-threshold preemption events of that thread
with the trace id, and its trace-context probe attaches it to requests read on that thread.
A stale entry attributes later, unrelated work to the old trace, so always clear it.

The context is per thread, not per request: a thread that interleaves several requests (an
event loop) must set the context each time it resumes a request. The thread id must be the
one the kernel sees from the initial PID namespace; inside a container with its own PID
namespace ``gettid()`` returns a different number (the first field of ``NSpid:`` in
``/proc/<pid>/task/<tid>/status``, read from the host's /proc, is the one to use).

Privileges
----------
Run it with CAP_BPF (or as root). Opening the pinned map needs read and write access to the
pinned file, which is root-only (mode 0600) unless wasmtop's operator changes it, and on
kernels before 6.5 with ``kernel.unprivileged_bpf_disabled`` set (the usual default) every
bpf(2) call needs CAP_BPF or CAP_SYS_ADMIN. Open the map once per process and share the
object between threads; every call after that is a single system call.

Command line
------------
``python trace_ctx_writer.py --trace-id 32HEX --span-id 16HEX [--busy-ms N] [--path P]``
sets the context for the current thread, optionally spins the CPU for N ms (a stand-in for
handling a request), then clears it.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import errno
import os
import platform
import sys
import threading
import time
from collections.abc import Iterator

DEFAULT_PATH = "/sys/fs/bpf/wasmtop/trace_ctx"

TRACE_ID_SIZE = 16
SPAN_ID_SIZE = 8
KEY_SIZE = 4
VALUE_SIZE = TRACE_ID_SIZE + SPAN_ID_SIZE

# bpf(2) commands (include/uapi/linux/bpf.h, enum bpf_cmd)
BPF_MAP_LOOKUP_ELEM = 1
BPF_MAP_UPDATE_ELEM = 2
BPF_MAP_DELETE_ELEM = 3
BPF_OBJ_GET = 7
BPF_OBJ_GET_INFO_BY_FD = 15

BPF_ANY = 0  # update flag: create or replace

_SYSCALL_NR = {"x86_64": 321, "amd64": 321, "aarch64": 280, "arm64": 280}


class _ObjGetAttr(ctypes.Structure):
    _fields_ = [
        ("pathname", ctypes.c_uint64),
        ("bpf_fd", ctypes.c_uint32),
        ("file_flags", ctypes.c_uint32),
    ]


class _MapElemAttr(ctypes.Structure):
    _fields_ = [
        ("map_fd", ctypes.c_uint32),
        ("_pad", ctypes.c_uint32),
        ("key", ctypes.c_uint64),
        ("value", ctypes.c_uint64),
        ("flags", ctypes.c_uint64),
    ]


class _InfoAttr(ctypes.Structure):
    _fields_ = [
        ("bpf_fd", ctypes.c_uint32),
        ("info_len", ctypes.c_uint32),
        ("info", ctypes.c_uint64),
    ]


class _MapInfo(ctypes.Structure):
    # Leading fields of struct bpf_map_info; the kernel fills at most info_len bytes.
    _fields_ = [
        ("type", ctypes.c_uint32),
        ("id", ctypes.c_uint32),
        ("key_size", ctypes.c_uint32),
        ("value_size", ctypes.c_uint32),
        ("max_entries", ctypes.c_uint32),
        ("map_flags", ctypes.c_uint32),
        ("name", ctypes.c_char * 16),
    ]


_libc = None


def _bpf(cmd: int, attr: ctypes.Structure) -> int:
    """Call bpf(cmd, &attr, sizeof(attr)); return the result or raise OSError(errno)."""
    global _libc
    machine = platform.machine().lower()
    nr = _SYSCALL_NR.get(machine)
    if nr is None:
        raise OSError(
            errno.ENOSYS,
            f"bpf(2) syscall number unknown for machine {machine!r} "
            "(this example supports x86_64 and aarch64)",
        )
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
        _libc.syscall.restype = ctypes.c_long
    ret = _libc.syscall(
        ctypes.c_long(nr),
        ctypes.c_long(cmd),
        ctypes.c_void_p(ctypes.addressof(attr)),
        ctypes.c_ulong(ctypes.sizeof(attr)),
    )
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return ret


def _fail(exc: OSError, what: str, hint: str = "") -> OSError:
    """An OSError with the same errno and a message that says what failed."""
    msg = f"{what}: {exc.strerror}"
    if hint:
        msg += f" ({hint})"
    return OSError(exc.errno, msg)


def _tid(tid: int | None) -> int:
    if tid is None:
        return threading.get_native_id()
    if not 0 < tid < 2**32:
        raise ValueError(f"tid must be a positive u32, got {tid}")
    return tid


class TraceContextMap:
    """The pinned wasmtop ``trace_ctx`` map, opened for reading and writing.

    One object can be shared by all threads of a process. Methods that take ``tid`` default
    to the calling thread's kernel thread id.
    """

    def __init__(self, path: str = DEFAULT_PATH) -> None:
        self.path = path
        self._fd = -1
        path_buf = ctypes.create_string_buffer(os.fsencode(path))
        attr = _ObjGetAttr(pathname=ctypes.addressof(path_buf))
        try:
            self._fd = _bpf(BPF_OBJ_GET, attr)
        except OSError as exc:
            hints = {
                errno.ENOENT: "is wasmtop running?",
                errno.EPERM: "needs CAP_BPF or root",
                errno.EACCES: "not a pinned BPF object, or no read/write access to it; "
                "pinned files are usually root-only",
                errno.EINVAL: "not a pinned BPF map; is /sys/fs/bpf a bpf filesystem?",
            }
            raise _fail(exc, f"open {path}", hints.get(exc.errno, "")) from None
        try:
            info = _MapInfo()
            iattr = _InfoAttr(
                bpf_fd=self._fd, info_len=ctypes.sizeof(info), info=ctypes.addressof(info)
            )
            try:
                _bpf(BPF_OBJ_GET_INFO_BY_FD, iattr)
            except OSError as exc:
                raise _fail(exc, f"read map info of {path}") from None
            if info.key_size != KEY_SIZE or info.value_size != VALUE_SIZE:
                raise OSError(
                    errno.EINVAL,
                    f"{path}: key_size {info.key_size}, value_size {info.value_size}; "
                    f"expected {KEY_SIZE} and {VALUE_SIZE} (u32 tid -> 16-byte trace id "
                    "+ 8-byte span id); is this wasmtop's trace_ctx map?",
                )
        except BaseException:
            self.close()
            raise
        self.map_type = info.type
        self.max_entries = info.max_entries
        self.name = info.name.decode(errors="replace")

    def _fd_or_raise(self) -> int:
        if self._fd < 0:
            raise ValueError(f"{self.path}: map is closed")
        return self._fd

    def set(self, trace_id: bytes, span_id: bytes, tid: int | None = None) -> None:
        """Create or replace the context of thread ``tid`` (16-byte trace id, 8-byte span id)."""
        trace_id, span_id = bytes(trace_id), bytes(span_id)
        if len(trace_id) != TRACE_ID_SIZE:
            raise ValueError(f"trace_id must be {TRACE_ID_SIZE} bytes, got {len(trace_id)}")
        if len(span_id) != SPAN_ID_SIZE:
            raise ValueError(f"span_id must be {SPAN_ID_SIZE} bytes, got {len(span_id)}")
        tid = _tid(tid)
        key = ctypes.c_uint32(tid)
        value = ctypes.create_string_buffer(trace_id + span_id, VALUE_SIZE)
        attr = _MapElemAttr(
            map_fd=self._fd_or_raise(),
            key=ctypes.addressof(key),
            value=ctypes.addressof(value),
            flags=BPF_ANY,
        )
        try:
            _bpf(BPF_MAP_UPDATE_ELEM, attr)
        except OSError as exc:
            hint = ""
            if exc.errno == errno.E2BIG:
                hint = f"map is full, max_entries {self.max_entries}; are entries cleared?"
            elif exc.errno in (errno.EPERM, errno.EACCES):
                hint = "needs CAP_BPF or root"
            raise _fail(exc, f"set trace context of tid {tid} in {self.path}", hint) from None

    def get(self, tid: int | None = None) -> tuple[bytes, bytes] | None:
        """The (trace_id, span_id) of thread ``tid``, or None if it has no context."""
        tid = _tid(tid)
        key = ctypes.c_uint32(tid)
        value = ctypes.create_string_buffer(VALUE_SIZE)
        attr = _MapElemAttr(
            map_fd=self._fd_or_raise(), key=ctypes.addressof(key), value=ctypes.addressof(value)
        )
        try:
            _bpf(BPF_MAP_LOOKUP_ELEM, attr)
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                return None
            raise _fail(exc, f"read trace context of tid {tid} from {self.path}") from None
        raw = value.raw
        return raw[:TRACE_ID_SIZE], raw[TRACE_ID_SIZE:]

    def clear(self, tid: int | None = None) -> None:
        """Delete the context of thread ``tid``; a thread without one is not an error."""
        tid = _tid(tid)
        key = ctypes.c_uint32(tid)
        attr = _MapElemAttr(map_fd=self._fd_or_raise(), key=ctypes.addressof(key))
        try:
            _bpf(BPF_MAP_DELETE_ELEM, attr)
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                return
            raise _fail(exc, f"clear trace context of tid {tid} in {self.path}") from None

    @contextlib.contextmanager
    def request(self, trace_id: bytes, span_id: bytes) -> Iterator[None]:
        """Set the calling thread's context for the ``with`` body, then clear it.

        Not nestable: the exit clears the thread's entry, whatever was there before.
        """
        self.set(trace_id, span_id)
        try:
            yield
        finally:
            self.clear()

    def close(self) -> None:
        """Close the map's file descriptor (the map itself stays, owned by wasmtop)."""
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)

    def __enter__(self) -> TraceContextMap:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._fd < 0 else f"fd={self._fd}"
        return f"TraceContextMap({self.path!r}, {state})"


def _hex_id(text: str, size: int, what: str) -> bytes:
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        raw = b""
    if len(text) != 2 * size or len(raw) != size:
        raise argparse.ArgumentTypeError(
            f"expected {2 * size} hex digits ({size} bytes) for the {what}, got {text!r}"
        )
    if raw == bytes(size):
        raise argparse.ArgumentTypeError(f"an all-zero {what} is invalid in W3C trace context")
    return raw


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=(
            "Set the W3C trace context of the current thread in wasmtop's pinned trace_ctx "
            "map, optionally burn CPU as if handling a request, then clear it. While the "
            "context is set, wasmtop attributes this thread's preemptions and requests to "
            "the trace id. Needs CAP_BPF (or root) and a running wasmtop."
        ),
        epilog=(
            "example: %(prog)s --trace-id 4bf92f3577b34da6a3ce929d0e0e4736 "
            "--span-id 00f067aa0ba902b7 --busy-ms 200"
        ),
    )
    parser.add_argument(
        "--path", default=DEFAULT_PATH, help=f"pinned map path (default: {DEFAULT_PATH})"
    )
    parser.add_argument(
        "--trace-id",
        required=True,
        metavar="32HEX",
        type=lambda s: _hex_id(s, TRACE_ID_SIZE, "trace id"),
        help="W3C trace id, 32 hex digits (the second field of a traceparent header)",
    )
    parser.add_argument(
        "--span-id",
        required=True,
        metavar="16HEX",
        type=lambda s: _hex_id(s, SPAN_ID_SIZE, "span id"),
        help="W3C span (parent) id, 16 hex digits (the third field of a traceparent header)",
    )
    parser.add_argument(
        "--busy-ms",
        type=int,
        default=0,
        metavar="N",
        help="spin the CPU for N milliseconds while the context is set (default: 0)",
    )
    args = parser.parse_args(argv)
    if args.busy_ms < 0:
        parser.error("--busy-ms must not be negative")

    tid = threading.get_native_id()
    try:
        with TraceContextMap(args.path) as tmap:
            with tmap.request(args.trace_id, args.span_id):
                print(
                    f"set tid {tid} (pid {os.getpid()}) -> trace {args.trace_id.hex()} "
                    f"span {args.span_id.hex()} in {args.path}",
                    flush=True,
                )
                if args.busy_ms:
                    end = time.monotonic() + args.busy_ms / 1000
                    spins = 0
                    while time.monotonic() < end:
                        spins += 1
                    print(f"busy for {args.busy_ms} ms ({spins} iterations)", flush=True)
            print(f"cleared tid {tid}", flush=True)
    except OSError as exc:
        print(f"error: {exc.strerror}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
