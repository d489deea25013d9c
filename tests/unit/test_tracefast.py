"""The compiled trace-context path (probes/_tracefast.c) against the Python it replaces, on the
same inputs, hostile ones included: ring-buffer records (right, truncated, too long, garbage,
discarded, still busy, wrapping past the end of the ring) and captured heads. Every field must be
equal, every malformed record counted the same, and nothing may raise. Also: the batch-at-a-time
feed of RequestTracker against a request-at-a-time reference."""

from __future__ import annotations

import mmap
import os
import random
import struct
import types

import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_parsers_fuzz import FAST_NAMES, FAST_TARGETS, FAST_VALUES, TP, request_heads

from wasmtop.collector import httpmsg
from wasmtop.collector.correlate import OTHER_ROUTE, RequestTracker
from wasmtop.collector.httpmsg import Head, _fast_head, parse_head, parse_head_general
from wasmtop.probes import decoders, probeset
from wasmtop.probes.decoders import (
    _READ_MASK,
    _WRITE_MASK,
    CAPTURE_BYTES,
    DECODERS,
    DecodeError,
    request_event,
    take_request_events,
)
from wasmtop.probes.fastpath import tracefast
from wasmtop.probes.records import RequestRecord
from wasmtop.probes.ringbuf import BUSY_BIT, DISCARD_BIT, RingReader

pytestmark = pytest.mark.skipif(tracefast is None, reason="probes/_tracefast.c not built")

FMT = "<QQQQQQQQQIIIiIHHBBBB4x16s8s"  # then `captured` bytes of data, at most CAPTURE_BYTES
FIXED = struct.calcsize(FMT)
SIZE = FIXED + CAPTURE_BYTES
HEAD = b"GET /item HTTP/1.1\r\nHost: h\r\ntraceparent: " + TP + b"\r\n\r\n"


def c_head(data: bytes) -> Head | None:
    return tracefast.fast_head(Head, data)


def c_record(data: bytes) -> RequestRecord | None:
    return tracefast.request_record(data, RequestRecord, CAPTURE_BYTES, _READ_MASK, _WRITE_MASK)


def py_record(data: bytes) -> RequestRecord | None:
    try:
        return request_event(data)
    except DecodeError:
        return None


def pack(rng: random.Random, **over: object) -> bytes:
    """A request_event with random figures: flags, syscalls and captured length mostly valid
    (the record is sent as far as its data goes: ``captured`` should be what follows)."""
    head = over.pop("head", HEAD)
    data = over.pop("data", head + rng.randbytes(rng.choice([0, 0, 40, CAPTURE_BYTES - len(head)])))
    f = dict(
        start=rng.getrandbits(64), end=rng.getrandbits(64),
        wake=rng.choice([0, rng.getrandbits(64)]), queued=rng.getrandbits(64),
        seq=rng.choice([0, 1, rng.getrandbits(64)]), p0=rng.getrandbits(64),
        p1=rng.getrandbits(64), m0=rng.getrandbits(64), m1=rng.getrandbits(64),
        tgid=rng.getrandbits(32), tid=rng.getrandbits(32), end_tid=rng.getrandbits(32),
        fd=rng.randint(-(2**31), 2**31 - 1), nbytes=rng.getrandbits(32),
        captured=rng.choice([len(data)] * 4 + [0, len(head), CAPTURE_BYTES, CAPTURE_BYTES + 1,
                                                65535, rng.getrandbits(16)]),
        status=rng.choice([0, 200, 404, 65535]), start_flags=rng.getrandbits(8),
        end_flags=rng.getrandbits(8), read_sys=rng.choice([1, 2, 3, 8, 0, 4, 63, 64, 255]),
        write_sys=rng.choice([4, 5, 6, 7, 0, 1, 8, 64, 255]), ctx_trace=rng.randbytes(16),
        ctx_span=rng.randbytes(8),
    )  # fmt: skip
    f.update(over)
    return struct.pack(FMT, *f.values()) + data


# -- one record ----------------------------------------------------------------------------------


def test_the_layout_is_the_decoders():
    assert DECODERS["request_event"].size == SIZE == 128 + CAPTURE_BYTES
    assert DECODERS["request_event"].layout.size == FIXED == 128


def test_records_decode_to_the_same_fields_or_are_refused_alike():
    rng = random.Random(19)
    decoded = refused = 0
    for _ in range(5000):
        data = pack(rng)
        c, py = c_record(data), py_record(data)
        assert c == py and type(c) is type(py), data
        if c is not None:
            assert all(type(a) is type(b) for a, b in zip(c, py))
        decoded += c is not None
        refused += c is None
    assert decoded > 300 and refused > 300  # both branches, often


@given(st.binary(min_size=FIXED, max_size=SIZE))
def test_garbage_of_a_possible_length_decodes_alike(data):
    assert c_record(data) == py_record(data)


@pytest.mark.parametrize("n", [0, 1, 7, 127, SIZE + 1, SIZE + 8, 2 * SIZE])
def test_a_record_of_an_impossible_length_is_refused_alike(n):
    data = (pack(random.Random(n)) * 3)[:n]
    assert c_record(data) is None and py_record(data) is None


@pytest.mark.parametrize("cut", [-1, 1])
def test_a_record_whose_length_disagrees_with_captured_is_refused_alike(cut):
    rng = random.Random(3)
    data = pack(rng, read_sys=2, write_sys=5, data=HEAD, captured=len(HEAD))
    assert c_record(data) == py_record(data) != None  # noqa: E711
    wrong = data[:cut] if cut < 0 else data + b"x"
    assert c_record(wrong) is None and py_record(wrong) is None


# -- heads ---------------------------------------------------------------------------------------


@given(request_heads() | st.binary(max_size=CAPTURE_BYTES))
def test_the_compiled_head_fast_path_answers_as_the_python_one(data):
    c = c_head(data)
    assert c == _fast_head(data)
    assert c is None or c == parse_head_general(data)
    if c is not None:
        assert all(type(a) is type(b) for a, b in zip(c, _fast_head(data)))


def test_the_compiled_head_fast_path_on_every_combination_of_the_pieces():
    taken = 0
    for target in FAST_TARGETS:
        for name in FAST_NAMES:
            for value in FAST_VALUES:
                for extra in (b"", b"Host: a\r\n", b"traceparent: " + TP + b"\r\n"):
                    head = b"GET " + target + b" HTTP/1.1\r\n" + name + b": " + value + b"\r\n"
                    for data in (head + extra + b"\r\n", head + extra, (head + extra)[:-1]):
                        for cut in range(0, len(data) + 1, 7):
                            assert c_head(data[:cut]) == _fast_head(data[:cut]), data[:cut]
                        c = c_head(data)
                        assert c == _fast_head(data), data
                        taken += c is not None
    assert taken > 100


HOST_LINES = [b"Host: a.b", b"host:a.b:81", b"HOST: \t[::1]:8080 \t", b"Host:", b"Hostx: a",
              b"X-Host: a", b"Host: a\rb", b"Host: \xff\xfe"]  # fmt: skip


@given(
    st.sampled_from([b"GET / HTTP/1.1", b"GET / HTTP/1.0", b"GET / HTTP/1.x", b"GET /", b""]),
    st.lists(st.sampled_from(HOST_LINES) | st.binary(max_size=40), max_size=4),
    st.sampled_from([b"\r\n\r\n", b"\r\n", b"", b"\n\n"]),
    st.binary(max_size=60),
)
def test_the_compiled_request_meta_answers_as_the_python_one(start, lines, end, body):
    """A traced request's HTTP version and Host header: C and Python alike on start lines,
    Host lines (cut, empty, twice, misspelt, in the body) and arbitrary bytes between them."""
    from wasmtop.collector.correlate import request_meta_py

    data = start + b"".join(b"\r\n" + x for x in lines) + end + body
    for cut in (len(data), len(data) - 1, len(data) // 2):
        assert tracefast.request_meta(data[:cut]) == request_meta_py(data[:cut]), data[:cut]


def test_request_meta_finds_the_first_host_line_of_the_head_only():
    from wasmtop.collector.correlate import request_meta_py

    for meta in (tracefast.request_meta, request_meta_py):
        assert meta(b"GET / HTTP/1.1\r\nX: 1\r\nhOsT: \t a:1 \r\nHost: b\r\n\r\n") == (
            "1.1",
            b"a:1",
        )
        assert meta(b"GET / HTTP/1.0\r\n\r\nHost: a\r\n") == ("1.0", None)  # the body
        assert meta(b"GET / HTTP/1.1\r\nHost: a") == ("1.1", None)  # cut by the capture
        assert meta(b"\xff" * 400) == (None, None)
    with pytest.raises(TypeError):
        tracefast.request_meta("GET / HTTP/1.1\r\n")  # type: ignore[arg-type]


def test_the_compiled_head_fast_path_is_bounded_on_large_hostile_input():
    for data in (b"GET / HTTP/1.1\r\n" + b"\n" * (1 << 20), b"GET /" + b"a" * (1 << 20),
                 b"GET / HTTP/1.1\r\n" + bytes(range(256)) * 4096,
                 b"GET / HTTP/1.1\r\n" + b"\ntraceparent:" * 50_000):  # fmt: skip
        assert c_head(data) == _fast_head(data)
    with pytest.raises(TypeError):
        c_head("GET / HTTP/1.1\r\n\r\n")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        tracefast.fast_head(tuple, b"GET / HTTP/1.1\r\n\r\n")


def test_parse_head_uses_the_compiled_path():
    assert httpmsg.fast_head.func is tracefast.fast_head  # type: ignore[attr-defined]
    assert parse_head(HEAD) == parse_head_general(HEAD)


# -- a ring --------------------------------------------------------------------------------------


class Ring:
    """A memfd laid out as a BPF ring buffer map (consumer page, producer page, data twice)."""

    def __init__(self, pages: int = 4) -> None:
        self.page = mmap.PAGESIZE
        self.size = pages * self.page
        self.fd = os.memfd_create("ring")
        os.ftruncate(self.fd, 2 * self.page + 2 * self.size)
        self.map = mmap.mmap(self.fd, 2 * self.page + 2 * self.size)
        self.prod = 0

    def put(self, raw: bytes, flags: int = 0, length: int | None = None) -> None:
        """A record at the producer position (written in both copies of the data, as the
        kernel's double mapping shows it)."""
        n = len(raw) if length is None else length
        rec = struct.pack("<II", n | flags, 0) + raw
        rec += bytes(-len(rec) % 8)
        for copy in (0, self.size):
            for i, b in enumerate(rec):
                at = (self.prod + i) % self.size + copy
                if at < 2 * self.size:
                    self.map[2 * self.page + at] = b
        self.prod += len(rec) if length is None else (n + 8 + 7) & ~7
        self.map[self.page : self.page + 8] = struct.pack("<Q", self.prod)

    def set_positions(self, cons: int) -> None:
        self.map[0:8] = struct.pack("<Q", cons)
        self.prod = cons
        self.map[self.page : self.page + 8] = struct.pack("<Q", cons)

    def consumer(self) -> int:
        return struct.unpack("<Q", self.map[0:8])[0]

    def close(self) -> None:
        self.map.close()
        os.close(self.fd)


def valid(rng: random.Random) -> bytes:
    data = HEAD + rng.randbytes(rng.choice([0, 100, CAPTURE_BYTES - len(HEAD)]))
    return pack(rng, read_sys=2, write_sys=5, data=data, captured=len(data))


def fill(ring: Ring, rng: random.Random) -> None:
    for _ in range(8):
        kind = rng.random()
        if kind < 0.4:
            ring.put(valid(rng))
        elif kind < 0.5:
            ring.put(pack(rng))  # refused by its fields, often
        elif kind < 0.6:
            ring.put(pack(rng), DISCARD_BIT)
        elif kind < 0.8:
            ring.put(pack(rng)[: rng.randint(0, SIZE + 1)])  # truncated, or one byte too few
        else:
            ring.put(pack(rng) + rng.randbytes(rng.randint(1, 64)))  # too long


def take_both(ring: Ring, monkeypatch: pytest.MonkeyPatch) -> tuple:
    """take_request_events compiled and in Python on the same ring: records, malformed counts
    and where each left the consumer position."""
    out = []
    start = ring.consumer()
    for compiled in (True, False):
        ring.map[0:8] = struct.pack("<Q", start)
        reader = RingReader(ring.fd, ring.size)
        with monkeypatch.context() as m:
            if not compiled:
                m.setattr(decoders, "tracefast", None)
            records, malformed = take_request_events(reader)
        out.append((records, malformed, ring.consumer()))
        reader.close()
    return tuple(out)


@pytest.mark.parametrize("seed", range(40))
def test_a_ring_of_mixed_records_is_taken_alike(seed, monkeypatch):
    rng = random.Random(seed)
    ring = Ring()
    try:
        # start anywhere, so that records wrap past the end of the data pages
        ring.set_positions(rng.randrange(0, 3 * ring.size, 8))
        fill(ring, rng)
        if rng.random() < 0.5:
            ring.put(pack(rng), BUSY_BIT)  # not yet submitted: both stop before it
            fill(ring, rng)
        compiled, python = take_both(ring, monkeypatch)
        assert compiled == python
        assert compiled[2] <= ring.prod
    finally:
        ring.close()


def test_a_length_past_the_mapping_is_malformed_not_a_crash(monkeypatch):
    ring = Ring(pages=1)
    try:
        ring.put(valid(random.Random(1)))
        ring.put(b"x" * 16, length=(1 << 30) - 1)  # a header no kernel writes
        compiled, python = take_both(ring, monkeypatch)
        assert compiled == python and compiled[1] == 1 and len(compiled[0]) == 1
    finally:
        ring.close()


def test_take_requests_refuses_what_is_not_a_ring():
    with pytest.raises(ValueError):
        tracefast.take_requests(bytes(100), 4096, 4095, 0, 8, RequestRecord, CAPTURE_BYTES, 0, 0)
    with pytest.raises(TypeError):
        tracefast.take_requests(bytes(3 * 4096), 4096, 4095, 0, 8, tuple, CAPTURE_BYTES, 0, 0)
    with pytest.raises(ValueError):  # a mask too small for one record header
        tracefast.take_requests(bytes(12), 8, 1, 1, 8, RequestRecord, CAPTURE_BYTES, 0, 0)


def test_the_probe_drain_counts_as_the_generic_one(monkeypatch):
    """Probe.drain with TraceCtxProbe.take_records (a ring at a time) and with
    Probe.take_records (a record at a time) on the same ring: the same records pending,
    received, malformed and dropped."""
    from wasmtop.probes.tracectx import TraceCtxProbe

    monkeypatch.setattr(probeset, "MAX_PENDING_EVENTS", 5)
    rng = random.Random(7)
    ring = Ring(pages=8)
    try:
        for _ in range(3):
            fill(ring, rng)
        seen = []
        for take in (TraceCtxProbe.take_records, probeset.Probe.take_records):
            ring.map[0:8] = struct.pack("<Q", 0)
            probe = TraceCtxProbe(capture="syscalls")
            probe.bpf = object()
            probe.take_records = types.MethodType(take, probe)  # type: ignore[method-assign]
            reader = RingReader(ring.fd, ring.size)
            probe._rings = [(reader, DECODERS["request_event"])]
            fill_fraction = probe.drain()
            seen.append((probe.take_events(), probe.received, probe.malformed, probe.dropped,
                         fill_fraction, ring.consumer()))  # fmt: skip
            reader.close()
        assert seen[0] == seen[1]
        assert seen[0][3] > 0  # some were dropped: the cap was reached
    finally:
        ring.close()


# -- the tracker, a batch at a time --------------------------------------------------------------


def record(i: int, rng: random.Random) -> RequestRecord:
    path = rng.choice(["/a", "/b", "/c/1", "/c/2", "/d", "/e?q", "/f#x"])
    method = rng.choice(["GET", "GET", "POST", "BREW"])
    headers = rng.choice(["", f"traceparent: {TP.decode()}\r\n", "tracestate: a=b\r\n"])
    data = f"{method} {path} HTTP/1.1\r\nHost: h\r\n{headers}\r\n".encode()
    if rng.random() < 0.1:
        data = data[: rng.randint(0, len(data))]
    tid = 10 + i % 3
    return RequestRecord(
        tgid=rng.choice([100, 200, 300]), fd=5, start_ns=1000 * i, end_ns=1000 * i + 500,
        tid=tid, end_tid=rng.choice([tid, tid, tid + 1]), preempt_start_ns=rng.choice([None, 5]),
        preempt_end_ns=rng.choice([None, 50]), migrations_start=1, migrations_end=2,
        status=rng.choice([200, 404, None]), data=data,
        ctx_trace_id=rng.choice([None, bytes(range(16))]), ctx_span_id=bytes(range(8)),
        wake_ns=rng.choice([None, 1000 * i - 100, 1000 * i + 100]),
    )  # fmt: skip


def workload_of(pid: int) -> str | None:
    return None if pid == 300 else f"pid:{pid}"


@pytest.mark.parametrize("seed", range(10))
def test_feed_names_routes_as_one_request_at_a_time_would(seed):
    """A batch fed at once (its route cache) against the same requests fed one at a time (no
    cache: RequestTracker._route for each), with a tight cap on named routes and on the window;
    and take_traced against take."""
    rng = random.Random(seed)
    batches = [[record(100 * b + i, rng) for i in range(60)] for b in range(4)]
    fast, slow, traced = (RequestTracker(max_paths=3, max_window_requests=50) for _ in range(3))
    others = 0
    for batch in batches:
        fast.feed(batch, workload_of)
        taken = fast.take()
        for rec in batch:
            slow.feed([rec], workload_of)
        assert taken == slow.take()
        traced.feed(batch, workload_of)
        kept, n = traced.take_traced(7)
        assert kept == [r for r in taken if r.trace_id is not None][:7]
        assert n == sum(r.trace_id is not None for r in taken)
        now = batch[-1].end_ns
        assert fast.figures(now) == slow.figures(now) == traced.figures(now)
        assert fast.counters == slow.counters == traced.counters
        others += sum(r.route == OTHER_ROUTE for r in taken)
    assert others and fast.counters["requests_paths_other"]
    assert fast.counters["requests_method_other"]


def windows_of(tracker: RequestTracker) -> dict:
    return {
        key: (list(w.entries), dict(w.pids), dict(w.routes), dict(w.statuses), sorted(w.named),
              w.evicted, w.evicted_until_ns, list(w.ended))
        for key, w in tracker._windows.items()
    }  # fmt: skip


@pytest.mark.parametrize("seed", range(20))
def test_the_compiled_feed_fills_windows_and_counters_as_the_python_loop(seed, monkeypatch):
    """The same batches through RequestTracker.feed with the compiled common case and without it
    (the Python loop alone): the same Requests, windows (entries in order, evictions, named
    routes, per-route and per-status counts), figures and counters. The records mix what the
    compiled path takes with what it must hand back: truncated heads, other methods, requests
    answered by another thread, a process without a workload, routes beyond the cap."""
    from wasmtop.collector import correlate

    rng = random.Random(seed)
    batches = [[record(100 * b + i, rng) for i in range(80)] for b in range(5)]
    compiled, python = (RequestTracker(max_paths=4, max_window_requests=60) for _ in range(2))
    fast = correlate._feed_known
    assert fast is tracefast.feed_known
    taken = 0

    def counted(records, i, *args):  # noqa: ANN001, ANN202
        nonlocal taken
        end = fast(records, i, *args)
        taken += end - i
        return end

    for batch in batches:
        with monkeypatch.context() as m:
            m.setattr(correlate, "_feed_known", counted)
            compiled.feed(batch, workload_of)
        with monkeypatch.context() as m:
            m.setattr(correlate, "_feed_known", None)
            python.feed(batch, workload_of)
        assert compiled.take() == python.take()
        assert windows_of(compiled) == windows_of(python)
        now = batch[-1].end_ns
        assert compiled.figures(now) == python.figures(now)
        assert compiled.counters == python.counters
    assert compiled.counters["requests_cross_thread"] and compiled.counters["requests_paths_other"]
    assert any(w[5] for w in windows_of(compiled).values())  # the window cap evicted some
    assert taken > 0  # the compiled path took its common case (few here: the mix is hostile)


def plain_request(i: int, path: str) -> RequestRecord:
    return RequestRecord(
        tgid=7, fd=3, start_ns=100 * i, end_ns=100 * i + 50, tid=7, end_tid=7,
        preempt_start_ns=None, preempt_end_ns=None, migrations_start=None, migrations_end=None,
        status=200, data=f"GET {path} HTTP/1.1\r\nHost: h\r\n\r\n".encode(), ctx_trace_id=None,
        ctx_span_id=None,
    )  # fmt: skip


@pytest.mark.parametrize("compiled", [True, False])
def test_a_route_whose_place_was_evicted_mid_batch_is_named_again(compiled, monkeypatch):
    """One named route and one request in the window at most: /a is named, /b is not (the cap)
    and its entry evicts /a's, which gives /a's place back; /x takes it. The last /a of the
    same batch is then "other", as it would be fed on its own: the batch's route cache does not
    keep a name its window gave back."""
    from wasmtop.collector import correlate

    if not compiled:
        monkeypatch.setattr(correlate, "_feed_known", None)
    batch = [plain_request(i, p) for i, p in enumerate(["/a", "/b", "/x", "/a"])]
    at_once, one_by_one = (RequestTracker(max_paths=1, max_window_requests=1) for _ in range(2))
    at_once.feed(batch, workload_of)
    for rec in batch:
        one_by_one.feed([rec], workload_of)
    routes = [r.route for r in at_once.take()]
    assert routes == [r.route for r in one_by_one.take()]
    assert routes == ["GET /a", OTHER_ROUTE, "GET /x", OTHER_ROUTE]
    assert at_once.counters == one_by_one.counters
    assert at_once.counters["requests_paths_other"] == 2
    assert windows_of(at_once) == windows_of(one_by_one)


def test_the_compiled_feed_takes_the_common_case_and_stops_at_the_rest():
    """feed_known on its own: it takes plain requests of a known process and named route, and
    stops (returning the index) at a record Python must feed: an unknown process, a route not
    named, a head with a problem, a request answered by another thread, a record that is not a
    RequestRecord."""
    tracker = RequestTracker()
    plain = RequestRecord(
        tgid=7, fd=3, start_ns=100, end_ns=300, tid=7, end_tid=7, preempt_start_ns=None,
        preempt_end_ns=None, migrations_start=None, migrations_end=None, status=200,
        data=b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n", ctx_trace_id=None, ctx_span_id=None,
    )  # fmt: skip
    tracker.feed([plain], workload_of)  # Python names the route and makes the window
    tracker.take()
    head = parse_head(plain.data)
    workloads = {7: ("pid:7", 0)}
    named = {("pid:7", 0, "GET", "/a"): "GET /a"}
    stops = [
        plain._replace(tgid=8),  # not identified in this batch
        plain._replace(data=b"GET /b HTTP/1.1\r\n\r\n"),  # a route not named yet
        plain._replace(data=b"GET /a HTTP/1.1\r\nHost: h\r\n"),  # head_truncated
        plain._replace(data=b"get /a HTTP/1.1\r\n\r\n"),  # not the fast path's
        plain._replace(end_tid=9),  # answered by another thread
        tuple(plain)[:-1],  # not a RequestRecord
    ]
    conn = object()  # handed to each kept request as it is
    for stop in stops:
        done: list = []
        batch = [plain, plain._replace(start_ns=200, wake_ns=150), stop, plain]
        taken = tracefast.feed_known(
            batch, 0, Head, workloads, named, tracker._windows, done, conn, 100
        )
        assert taken == 2, stop
        assert done == [(batch[0], head, "pid:7", "GET /a", conn),
                        (batch[1], head, "pid:7", "GET /a", conn)]  # fmt: skip
    win = tracker._windows["pid:7"]
    # the first feed's request, then two per stop; the woken one from its wake-up
    assert list(win.entries)[:3] == [(300, 200, "GET /a", 200, 7), (300, 200, "GET /a", 200, 7),
                                     (300, 150, "GET /a", 200, 7)]  # fmt: skip
    assert win.routes["GET /a"] == win.statuses[200] == 1 + 2 * len(stops)
    assert win.pids == {7: 1 + 2 * len(stops)}
    # a wake-up of 0 is none, and one after the start does not move it
    before = len(win.entries)
    late = [plain._replace(wake_ns=0), plain._replace(wake_ns=150, start_ns=120)]
    assert (
        tracefast.feed_known(late, 0, Head, workloads, named, tracker._windows, [], conn, 100) == 2
    )
    assert [e[1] for e in list(win.entries)[before:]] == [200, 180]
    # a route that gave its place back, or a workload without a window: Python decides
    win.named.discard("GET /a")
    assert (
        tracefast.feed_known([plain], 0, Head, workloads, named, tracker._windows, [], conn, 9) == 0
    )
    win.named.add("GET /a")
    other = {7: ("pid:other", 0)}
    named_other = {("pid:other", 0, "GET", "/a"): "GET /a"}
    assert (
        tracefast.feed_known([plain], 0, Head, other, named_other, tracker._windows, [], conn, 9)
        == 0
    )
    assert (
        tracefast.feed_known([plain], 1, Head, workloads, named, tracker._windows, [], conn, 9) == 1
    )
    with pytest.raises(ValueError):
        tracefast.feed_known([plain], -1, Head, workloads, named, tracker._windows, [], conn, 9)
    with pytest.raises(TypeError):
        tracefast.feed_known((plain,), 0, Head, workloads, named, tracker._windows, [], None, 1)
