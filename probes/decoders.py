"""Ring-buffer record decoders: one small function each, registered by name.

A decoder's ``size`` is compiled into the BPF program (``-D<NAME>_SIZE``) and checked there with
``_Static_assert``, so a C struct that drifts from its decoder fails at load time. A record may
end in a variable-length tail (``tail``: at most that many bytes, sent only as far as used): the
fixed part is the layout, the tail is handed to the build as its last field.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any, Callable

from .fastpath import tracefast
from .records import (
    BypassRecord,
    ColdStartRecord,
    PreemptionRecord,
    RequestRecord,
    WakeupRecord,
    fields_in_order,
    new_record,
)
from .ringbuf import RingReader


class DecodeError(ValueError):
    pass


@dataclass(frozen=True)
class Decoder:
    name: str
    layout: struct.Struct
    build: Callable[[tuple], Any]
    tail: int = 0  # at most this many bytes after the layout (the C struct's last array)

    @property
    def size(self) -> int:
        """The C struct's size: the layout and a full tail."""
        return self.layout.size + self.tail

    def __call__(self, data: bytes) -> Any:
        fixed = self.layout.size
        if self.tail:
            if not fixed <= len(data) <= fixed + self.tail:
                raise DecodeError(
                    f"{self.name}: {len(data)} bytes, expected {fixed} to {fixed + self.tail}"
                )
            return self.build((*self.layout.unpack_from(data), data[fixed:]))
        if len(data) != fixed:
            raise DecodeError(f"{self.name}: {len(data)} bytes, expected {fixed}")
        return self.build(self.layout.unpack(data))


DECODERS: dict[str, Decoder] = {}


def decoder(name: str, fmt: str, tail: int = 0) -> Callable[[Callable[[tuple], Any]], Decoder]:
    def register(build: Callable[[tuple], Any]) -> Decoder:
        dec = Decoder(name, struct.Struct(fmt), build, tail)
        if name in DECODERS:
            raise ValueError(f"decoder {name!r} registered twice")
        DECODERS[name] = dec
        return dec

    return register


def comm(raw: bytes) -> str:
    """A kernel task comm: NUL-terminated, at most 16 bytes, not always valid UTF-8."""
    return raw.split(b"\0", 1)[0].decode("utf-8", "replace")


PREEMPT_F_TRACE_CTX = 1


# struct preempt_event in sched.bpf.c
@decoder("preempt_event", "<QQIIIIII16s16s16s8sQ")
def preempt_event(f: tuple) -> PreemptionRecord:
    ts_ns, delay_ns, pid, tid, cpu, preemptor_pid, preemptor_tid, flags, name, preemptor = f[:10]
    trace_id, span_id = f[10:12] if flags & PREEMPT_F_TRACE_CTX else (None, None)
    return PreemptionRecord(
        ts_ns=ts_ns,
        delay_ns=delay_ns,
        pid=pid,
        tid=tid,
        cpu=cpu,
        comm=comm(name),
        preemptor_pid=preemptor_pid,
        preemptor_tid=preemptor_tid,
        preemptor_comm=comm(preemptor),
        trace_id=trace_id,
        span_id=span_id,
        thread_preemptions=f[12],
    )


# struct wakeup_event in sched.bpf.c
@decoder("wakeup_event", "<QQQIIIIIIIIII16s16s16s16s8s")
def wakeup_event(f: tuple) -> WakeupRecord:
    (ts_ns, delay_ns, seq, pid, tid, cpu, waker_pid, waker_tid, holder_pid, holder_tid,
     replaced_pid, replaced_tid, flags, name, waker, replaced, trace_id, span_id) = f  # fmt: skip
    if not flags & PREEMPT_F_TRACE_CTX:
        trace_id = span_id = None
    return WakeupRecord(
        ts_ns=ts_ns,
        delay_ns=delay_ns,
        pid=pid,
        tid=tid,
        cpu=cpu,
        comm=comm(name),
        waker_pid=waker_pid,
        waker_tid=waker_tid,
        waker_comm=comm(waker),
        holder_pid=holder_pid,
        holder_tid=holder_tid,
        replaced_pid=replaced_pid,
        replaced_tid=replaced_tid,
        replaced_comm=comm(replaced),
        thread_wakeups=seq,
        trace_id=trace_id,
        span_id=span_id,
    )


BYPASS_KINDS = {1: "enrol", 2: "first_redirect", 3: "fallback", 4: "close"}
FALLBACK_REASONS = {1: "map_full", 2: "peer_missing", 3: "data_before_enrol", 4: "enrol_failed"}


def ip_text(words: bytes) -> str:
    """16 bytes of an IPv6 address as printed; IPv4-mapped ones as dotted IPv4."""
    import ipaddress

    addr = ipaddress.IPv6Address(words)
    return str(addr.ipv4_mapped) if addr.ipv4_mapped else str(addr)


# struct bypass_event in sockbypass.bpf.c
@decoder("bypass_event", "<QQQIHH16s16sBB6x")
def bypass_event(f: tuple) -> BypassRecord:
    ts_ns, cookie, nbytes, pid, lport, rport, lip, rip, kind, reason = f
    if kind not in BYPASS_KINDS or (reason and reason not in FALLBACK_REASONS):
        raise DecodeError(f"bypass_event: kind {kind}, reason {reason}")
    return BypassRecord(
        ts_ns=ts_ns,
        cookie=cookie,
        pid=pid,
        kind=BYPASS_KINDS[kind],
        reason=FALLBACK_REASONS.get(reason),
        local=(ip_text(lip), lport),
        remote=(ip_text(rip), rport),
        bytes=nbytes,
    )


CAPTURE_BYTES = 512  # bytes of an HTTP message's start copied by tracectx.bpf.c
# The calls tracectx.bpf.c (SYS_*) reads a request with, and writes a response with.
READ_SYSCALLS = {1: "read", 2: "recvfrom", 3: "recvmsg", 8: "readv"}
WRITE_SYSCALLS = {4: "write", 5: "sendto", 6: "sendmsg", 7: "writev"}
_HAVE_STATS, _HAVE_CTX = 1, 2


# struct request_event in tracectx.bpf.c: sent up to its `captured` bytes of data[] only
@decoder("request_event", "<QQQQQQQQQIIIiIHHBBBB4x16s8s", tail=CAPTURE_BYTES)
def request_event(f: tuple) -> RequestRecord:
    (start, end, wake, queued, seq, p_start, p_end, m_start, m_end, tgid, tid, end_tid, fd, _nbytes,
     captured, status, start_flags, end_flags, read_sys, write_sys, ctx_trace, ctx_span,
     data) = f  # fmt: skip
    if read_sys not in READ_SYSCALLS or write_sys not in WRITE_SYSCALLS or captured != len(data):
        raise DecodeError(f"request_event: syscalls {read_sys}/{write_sys}, {captured} bytes")
    s0, s1 = start_flags & _HAVE_STATS, end_flags & _HAVE_STATS
    ctx = end_flags & _HAVE_CTX
    # RequestRecord's fields in order (one per request: no NamedTuple.__new__ Python call):
    # tgid, fd, start_ns, end_ns, tid, end_tid, preempt_start_ns, preempt_end_ns,
    # migrations_start, migrations_end, status, data, ctx_trace_id, ctx_span_id, wake_ns,
    # queued_ns (0: none charged; None: not known), wakeup_seq.
    return new_record(  # type: ignore[no-any-return]
        RequestRecord,
        (tgid, fd, start, end, tid, end_tid, p_start if s0 else None, p_end if s1 else None,
         m_start if s0 else None, m_end if s1 else None, status or None, data,
         ctx_trace if ctx else None, ctx_span if ctx else None, wake or None,
         queued if seq else (0 if s0 else None), seq or None),
    )  # fmt: skip


_READ_MASK = sum(1 << s for s in READ_SYSCALLS)
_WRITE_MASK = sum(1 << s for s in WRITE_SYSCALLS)


def decode_all(reader: RingReader, dec: Decoder) -> tuple[list[Any], int]:
    """Every record a ring holds, decoded, and how many ``dec`` refused (malformed); the ring's
    consumer position moves past all of them."""
    records: list[Any] = []
    malformed = 0
    for raw in reader.consume():
        try:
            records.append(dec(raw))
        except DecodeError:
            malformed += 1
    return records, malformed


def take_request_events(reader: RingReader) -> tuple[list[RequestRecord], int]:
    """The ``request_event`` records a ring holds, decoded, and how many were malformed (those
    ``request_event`` refuses); the ring's consumer position moves past all of them. In one
    compiled call when _tracefast is built (no bytes object per record), else through
    ``RingReader.consume`` and ``request_event``: the same records, the same count."""
    if tracefast is None:
        return decode_all(reader, request_event)

    def take(ring: Any, page: int, mask: int, cons: int, prod: int) -> tuple[int, Any]:
        cons, records, malformed = tracefast.take_requests(  # type: ignore[union-attr]
            ring, page, mask, cons, prod, RequestRecord, CAPTURE_BYTES, _READ_MASK, _WRITE_MASK
        )
        return cons, (records, malformed)

    return reader.consume_with(take)


fields_in_order(RequestRecord, (
    "tgid", "fd", "start_ns", "end_ns", "tid", "end_tid", "preempt_start_ns", "preempt_end_ns",
    "migrations_start", "migrations_end", "status", "data", "ctx_trace_id", "ctx_span_id",
    "wake_ns", "queued_ns", "wakeup_seq"), "decoders.request_event")  # fmt: skip


LIFE_KINDS = {1: "listen", 2: "accept"}


# struct life_event in lifecycle.bpf.c
@decoder("life_event", "<QQII16s")
def life_event(f: tuple) -> ColdStartRecord:
    exec_ns, ts_ns, tgid, kind, name = f
    if kind not in LIFE_KINDS or ts_ns < exec_ns:
        raise DecodeError(f"life_event: kind {kind}, exec {exec_ns} after {ts_ns}")
    return ColdStartRecord(tgid=tgid, comm=comm(name), kind=LIFE_KINDS[kind], exec_ns=exec_ns,
                           ts_ns=ts_ns)  # fmt: skip
