"""Probe userspace parts that need no kernel: decoders, placeholders, format parsing."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from wasmtop.probes.decoders import CAPTURE_BYTES, DECODERS, DecodeError, comm
from wasmtop.probes.probeset import placeholders_in, render
from wasmtop.probes.records import PreemptionRecord, RequestRecord, WakeupRecord
from wasmtop.probes.sched import SchedProbe, prev_state_mask
from wasmtop.probes.tracectx import TraceCtxProbe

FMT_6_18 = (
    'print fmt: "prev_comm=%s prev_pid=%d prev_prio=%d prev_state=%s%s ==> next_comm=%s '
    'next_pid=%d next_prio=%d", REC->prev_comm, REC->prev_pid, REC->prev_prio, (REC->prev_state '
    "& ((((0x00000000 | 0x00000001 | 0x00000002 | 0x00000004 | 0x00000008 | 0x00000010 | "
    "0x00000020 | 0x00000040) + 1) << 1) - 1)) ? __print_flags(REC->prev_state & ((((0x00000000 "
    '| 0x00000001) + 1) << 1) - 1), "|", { 0x00000001, "S" }) : "R", REC->next_comm'
)
FMT_5_4 = (
    'print fmt: "...", REC->prev_comm, REC->prev_pid, REC->prev_prio, (REC->prev_state & '
    "((((0x0000 | 0x0001 | 0x0002 | 0x0004 | 0x0008 | 0x0010 | 0x0020 | 0x0040) + 1) << 1) - 1)) "
    '? __print_flags(...) : "R"'
)
FMT_4_9 = 'print fmt: "...", REC->prev_state & (2048-1) ? __print_flags(...) : "R"'


@pytest.mark.parametrize("text, mask", [(FMT_6_18, 0xFF), (FMT_5_4, 0xFF), (FMT_4_9, 0x7FF)])
def test_prev_state_mask_from_print_fmt(text, mask):
    assert prev_state_mask(text) == mask


def test_prev_state_mask_on_this_kernel():
    fmt = Path("/sys/kernel/tracing/events/sched/sched_switch/format")
    if not fmt.exists():
        pytest.skip("tracefs not mounted")
    assert prev_state_mask(fmt.read_text()) == 0xFF


def test_prev_state_mask_rejects_what_it_cannot_read():
    with pytest.raises(ValueError):
        prev_state_mask("print fmt: no state here")
    with pytest.raises(ValueError):
        prev_state_mask("REC->prev_state & (__import__('os'))")


def _pack_preempt(**over):
    f = dict(ts=1, delay=2_500_000, pid=10, tid=11, cpu=1, ppid=20, ptid=21, flags=0,
             comm=b"victim\0\0junk", pcomm=b"hog", trace=b"\x01" * 16,
             span=b"\x02" * 8, seq=7)  # fmt: skip
    f.update(over)
    return struct.pack("<QQIIIIII16s16s16s8sQ", *f.values())


@pytest.mark.parametrize(
    "data, expected",
    [
        (
            _pack_preempt(),
            PreemptionRecord(1, 2_500_000, 10, 11, 1, "victim", 20, 21, "hog", None, None, 7),
        ),
        (
            _pack_preempt(comm=b"\xff\xfe bad utf8", pcomm=b"x" * 16),
            PreemptionRecord(
                1, 2_500_000, 10, 11, 1, "\ufffd\ufffd bad utf8", 20, 21, "x" * 16, None, None, 7
            ),
        ),
        (  # the thread had a trace-context entry: its ids come along; without the flag, never
            _pack_preempt(flags=1),
            PreemptionRecord(
                1, 2_500_000, 10, 11, 1, "victim", 20, 21, "hog", b"\x01" * 16, b"\x02" * 8, 7
            ),  # fmt: skip
        ),
    ],
)
def test_preempt_event_decoder(data, expected):
    assert DECODERS["preempt_event"](data) == expected


def _pack_wakeup(**over):
    f = dict(ts=9, delay=3_000_000, seq=12, pid=10, tid=11, cpu=1, waker_pid=30, waker_tid=31,
             holder_pid=20, holder_tid=21, replaced_pid=20, replaced_tid=22, flags=0,
             comm=b"server", wcomm=b"client", rcomm=b"hog", trace=b"\x01" * 16,
             span=b"\x02" * 8)  # fmt: skip
    f.update(over)
    return struct.pack("<QQQIIIIIIIIII16s16s16s16s8s", *f.values())


@pytest.mark.parametrize(
    "data, expected",
    [
        (  # without the trace-context flag, the ids are never taken
            _pack_wakeup(),
            WakeupRecord(
                9,
                3_000_000,
                10,
                11,
                1,
                "server",
                30,
                31,
                "client",
                20,
                21,
                20,
                22,
                "hog",
                12,
                None,
                None,
            ),  # fmt: skip
        ),
        (  # woken from an idle CPU's interrupt: no waker, the idle task held the CPU
            _pack_wakeup(
                waker_pid=0, waker_tid=0, wcomm=b"swapper/1", holder_pid=0, holder_tid=0, flags=1
            ),  # fmt: skip
            WakeupRecord(
                9,
                3_000_000,
                10,
                11,
                1,
                "server",
                0,
                0,
                "swapper/1",
                0,
                0,
                20,
                22,
                "hog",
                12,
                b"\x01" * 16,
                b"\x02" * 8,
            ),  # fmt: skip
        ),
    ],
)
def test_wakeup_event_decoder(data, expected):
    assert DECODERS["wakeup_event"](data) == expected


@pytest.mark.parametrize("name", ["preempt_event", "wakeup_event", "request_event", "bypass_event"])
def test_decoder_refuses_wrong_sizes(name):
    size = DECODERS[name].size
    for wrong in (0, 1, size - 1, size + 1, 2 * size):
        with pytest.raises(DecodeError):
            DECODERS[name](bytes(wrong))


def _pack_request(**over):
    f = dict(start=5, end=9, wake=0, queued=0, seq=0, p0=7_000, p1=9_000, m0=2, m1=3, tgid=100,
             tid=101, end_tid=101, fd=7, nbytes=40, captured=4, status=200, start_flags=1,
             end_flags=1, read_sys=2, write_sys=5, ctx_trace=b"\x03" * 16, ctx_span=b"\x04" * 8,
             data=b"GET ")  # fmt: skip
    f.update(over)
    data = f.pop("data")  # sent as far as it goes: `captured` bytes
    return struct.pack("<QQQQQQQQQIIIiIHHBBBB4x16s8s", *f.values()) + data


# The request of _pack_request() as decoded: the captured bytes; scheduler figures
# at both ends, no trace context, no wake-up charged.
ANSWERED = RequestRecord(100, 7, 5, 9, 101, 101, 7_000, 9_000, 2, 3, 200, b"GET ", None, None,
                         queued_ns=0)  # fmt: skip


@pytest.mark.parametrize(
    "data, expected",
    [
        (  # only the captured bytes are kept; stats at both ends, no trace context
            _pack_request(),
            ANSWERED,
        ),
        (  # no scheduler entry at the read: unknown there, not zero; a trace context; no status
            _pack_request(start_flags=0, end_flags=3, status=0, fd=-1, end_tid=102),
            RequestRecord(
                100,
                -1,
                5,
                9,
                101,
                102,
                None,
                9_000,
                None,
                3,
                None,
                b"GET ",
                b"\x03" * 16,
                b"\x04" * 8,
            ),  # fmt: skip
        ),
        (  # the read blocked: woken at 4 after 3 ns on the run queue, its thread's wake-up 6
            _pack_request(wake=4, queued=3, seq=6),
            ANSWERED._replace(wake_ns=4, queued_ns=3, wakeup_seq=6),
        ),
        (  # not blocked, but charged the thread's uncharged wake-up (an event loop), 0 ns queued
            _pack_request(queued=0, seq=2),
            ANSWERED._replace(queued_ns=0, wakeup_seq=2),
        ),
    ],
)
def test_request_event_decoder(data, expected):
    assert DECODERS["request_event"](data) == expected


@pytest.mark.parametrize(
    "over",
    [
        dict(read_sys=0),
        dict(read_sys=4),
        dict(write_sys=8),
        dict(captured=513),
        dict(captured=3),
        dict(captured=5),
        dict(data=b"GET /" + bytes(508), captured=513),
    ],
)
def test_request_event_decoder_refuses_impossible_fields(over):
    with pytest.raises(DecodeError):
        DECODERS["request_event"](_pack_request(**over))


def test_every_decoder_size_is_compiled_into_its_probe():
    for probe, dec in ((SchedProbe(), "preempt_event"), (SchedProbe(), "wakeup_event"),
                       (TraceCtxProbe(), "request_event")):  # fmt: skip
        flag = f"-D{dec.upper()}_SIZE={DECODERS[dec].size}"
        assert flag in probe.cflags()
        assert f"_Static_assert(sizeof(struct {dec}) == {dec.upper()}_SIZE" in probe.source()
    assert f"-DCAPTURE_BYTES={CAPTURE_BYTES}" in TraceCtxProbe().cflags()


def test_comm_decoding():
    assert comm(b"abc\0def") == "abc"
    assert comm(b"") == ""


def test_render_fills_and_refuses_holes():
    assert render("if (@@A@@ || @@B@@)", {"A": "x", "B": "0"}) == "if (x || 0)"
    with pytest.raises(KeyError, match="@@B@@"):
        render("@@A@@ @@B@@", {"A": "1"})
    assert placeholders_in("@@A@@ @@B_2@@ @@c@@") == {"A", "B_2"}


@pytest.mark.parametrize(
    "options, tgid, cgroup",
    [
        ({}, "0", "0"),
        ({"pids": (42,)}, "tgid != 42", "0"),
        ({"pids": (1, 2)}, "tgid != 1 && tgid != 2", "0"),
    ],
)
def test_sched_filters_compile_in(options, tgid, cgroup):
    probe = SchedProbe(**options)
    text = probe.rendered()
    assert placeholders_in(text) == set()
    assert f"!({tgid}) && !({cgroup})" in text


def test_sched_sizes_compile_in():
    flags = SchedProbe(threshold_ns=1_000_000, ringbuf_pages=8, max_threads=100).cflags()
    assert "-DTHRESHOLD_NS=1000000ULL" in flags
    assert "-DRINGBUF_PAGES=8" in flags
    assert "-DMAX_THREADS=100" in flags
    assert "-DCTR_RB_ATTEMPTS=0" in flags and "-DCTR_MIGRATIONS_UNTRACKED=3" in flags


@pytest.mark.parametrize(
    "kwargs", [{"ringbuf_pages": 3}, {"ringbuf_pages": 0}, {"threshold_ns": -1}]
)
def test_sched_refuses_bad_options(kwargs):
    with pytest.raises(ValueError):
        SchedProbe(**kwargs)
