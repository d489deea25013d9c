from __future__ import annotations

import base64
import random

import pytest

from wasmtop.collector.httpmsg import (
    CAPTURE_BYTES,
    PATH_MAX_CHARS,
    REASONS,
    Head,
    TraceParent,
    parse_head,
    parse_traceid_bytes,
    parse_traceparent,
)

TID = "4bf92f3577b34da6a3ce929d0e0e4736"
PID = "00f067aa0ba902b7"
TP = f"00-{TID}-{PID}-01"
TID_RAW = bytes.fromhex(TID)
PID_RAW = bytes.fromhex(PID)

# a second, different context, to tell which header a trace id came from
TID2 = "0af7651916cd43dd8448eb211c80319c"
PID2 = "b7ad6b7169203331"
TP2 = f"00-{TID2}-{PID2}-00"
TID2_RAW = bytes.fromhex(TID2)

# X-TraceID-Bytes of TID2, so a test can tell it apart from a traceparent carrying TID
XTB2 = base64.b64encode(TID2_RAW).decode()


def http(*lines: str, end: bool = True) -> bytes:
    """A head of CRLF-terminated lines, closed by a blank line unless end=False."""
    text = "".join(line + "\r\n" for line in lines) + ("\r\n" if end else "")
    return text.encode("latin-1")


# --- traceparent ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value, version, trace_id, parent_id, flags",
    [
        (TP, 0, TID_RAW, PID_RAW, 1),
        (f"00-{TID}-{PID}-00", 0, TID_RAW, PID_RAW, 0),
        (f"00-{TID}-{PID}-ff", 0, TID_RAW, PID_RAW, 0xFF),
        (f" \t{TP} \t", 0, TID_RAW, PID_RAW, 1),  # OWS around the value
        (f"01-{TID}-{PID}-01", 1, TID_RAW, PID_RAW, 1),  # future version, no extra fields
        (f"cc-{TID}-{PID}-09-what-the-future-will-be-like", 0xCC, TID_RAW, PID_RAW, 9),
        (f"fe-{TID}-{PID}-01-", 0xFE, TID_RAW, PID_RAW, 1),
        (TP2, 0, TID2_RAW, bytes.fromhex(PID2), 0),
    ],
)
def test_valid_traceparent(value, version, trace_id, parent_id, flags):
    assert parse_traceparent(value) == TraceParent(version, trace_id, parent_id, flags)


@pytest.mark.parametrize(
    "value, reason",
    [
        ("", "traceparent_bad_format"),
        ("garbage", "traceparent_bad_format"),
        (f"00-{TID}-{PID}", "traceparent_bad_format"),
        (f"00_{TID}_{PID}_01", "traceparent_bad_format"),
        (f"0-{TID}-{PID}-01", "traceparent_wrong_length"),
        (f"000-{TID}-{PID}-01", "traceparent_wrong_length"),
        (f"00-{TID[:-1]}-{PID}-01", "traceparent_wrong_length"),
        (f"00-{TID}0-{PID}-01", "traceparent_wrong_length"),
        (f"00-{TID}-{PID[:-1]}-01", "traceparent_wrong_length"),
        (f"00-{TID}-{PID}-1", "traceparent_wrong_length"),
        (f"00-{TID}-{PID}-001", "traceparent_wrong_length"),
        (f"{TP}-extra", "traceparent_wrong_length"),  # version 00 is exactly 55 characters
        (f"{TP}-", "traceparent_wrong_length"),
        (f"{TP}x", "traceparent_wrong_length"),
        (f"{TP} x", "traceparent_wrong_length"),
        (f"01-{TID}-{PID}-01x", "traceparent_wrong_length"),  # future extras must start with '-'
        (f"00-{TID} -{PID}-01", "traceparent_wrong_length"),  # OWS is only stripped outside
        (f"00-{TID.upper()}-{PID}-01", "traceparent_bad_hex"),
        (f"00-{TID}-{PID.upper()}-01", "traceparent_bad_hex"),
        (f"0A-{TID}-{PID}-01", "traceparent_bad_hex"),
        (f"00-{TID}-{PID}-0g", "traceparent_bad_hex"),
        (f"00-{TID[:-1]}z-{PID}-01", "traceparent_bad_hex"),
        (f"00-{TID[:-2]}_1-{PID}-01", "traceparent_bad_hex"),  # int(x, 16) would accept "_"
        (f"00-{TID[:-1]}\u00b2-{PID}-01", "traceparent_bad_hex"),  # latin-1 superscript two
        (f"00-{TID}-{PID[:-1]}\u00e9-01", "traceparent_bad_hex"),
        (f"ff-{TID}-{PID}-01", "traceparent_version_ff"),
        (f"00-{'0' * 32}-{PID}-01", "traceparent_zero_trace_id"),
        (f"00-{TID}-{'0' * 16}-01", "traceparent_zero_parent_id"),
    ],
)
def test_invalid_traceparent(value, reason):
    assert reason in REASONS
    assert parse_traceparent(value) == reason


# --- X-TraceID-Bytes -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value, expected",
    [
        ("S/kvNXezTaajzpKdDg5HNg==", TID_RAW),
        (" \tS/kvNXezTaajzpKdDg5HNg==\t ", TID_RAW),  # OWS
        (XTB2, TID2_RAW),
        ("S_kvNXezTaajzpKdDg5HNg==", "traceid_bytes_bad_base64"),  # urlsafe alphabet
        ("S/kvNXezTaajzpKdDg5HNg", "traceid_bytes_bad_base64"),  # padding missing
        ("S/kvNXezTaajzpKdDg5HNg=", "traceid_bytes_bad_base64"),
        ("S/kvNXez TaajzpKdDg5HNg==", "traceid_bytes_bad_base64"),
        ("S/kvNXezTaajzpKdDg5HN\u00e9==", "traceid_bytes_bad_base64"),  # non-ASCII
        ("", "traceid_bytes_wrong_length"),
        (base64.b64encode(TID_RAW[:12]).decode(), "traceid_bytes_wrong_length"),
        (base64.b64encode(TID_RAW + b"\x00").decode(), "traceid_bytes_wrong_length"),
        (TID, "traceid_bytes_wrong_length"),  # 32 hex digits are base64 of 24 bytes, not an id
        ("AAAAAAAAAAAAAAAAAAAAAA==", "traceid_bytes_zero_trace_id"),
    ],
)
def test_traceid_bytes(value, expected):
    assert parse_traceid_bytes(value) == expected


# --- heads ---------------------------------------------------------------------------------------

REQ = Head(
    kind="request",
    method="GET",
    path="/",
    status=None,
    complete=True,
    trace_id=None,
    parent_id=None,
    trace_flags=None,
    trace_source=None,
    tracestate=None,
    problems=(),
)
RESP = REQ._replace(kind="response", method=None, path=None, status=200)
WITH_TP = dict(trace_id=TID_RAW, parent_id=PID_RAW, trace_flags=1, trace_source="traceparent")
WITH_XTB2 = dict(trace_id=TID2_RAW, trace_source="x-traceid-bytes")

BIG_LINE = "X-Big: " + "a" * 10240


@pytest.mark.parametrize(
    "data, expected",
    [
        pytest.param(http("GET / HTTP/1.1", "Host: a"), REQ, id="no-trace-headers"),
        pytest.param(
            http("GET /api?x=1 HTTP/1.1", "Host: a", f"traceparent: {TP}"),
            REQ._replace(path="/api", **WITH_TP),
            id="request-traceparent",
        ),
        pytest.param(
            http("HTTP/1.1 200 OK", f"traceparent: {TP}", "Content-Length: 0"),
            RESP._replace(**WITH_TP),
            id="response-traceparent",
        ),
        pytest.param(
            http("HTTP/1.0 404"),
            RESP._replace(status=404),
            id="response-without-reason",
        ),
        pytest.param(
            http("POST /x HTTP/1.0", f"TraceParent: {TP}"),
            REQ._replace(method="POST", path="/x", **WITH_TP),
            id="name-mixed-case",
        ),
        pytest.param(
            http("GET / HTTP/1.1", f"TRACEPARENT:{TP}"),
            REQ._replace(**WITH_TP),
            id="name-upper-case-no-space",
        ),
        pytest.param(
            http("GET / HTTP/1.1", f"X-TRACEID-BYTES: {XTB2}"),
            REQ._replace(**WITH_XTB2),
            id="traceid-bytes-upper-case",
        ),
        pytest.param(
            http("GET / HTTP/1.1", f"x-traceid-bytes:\t{XTB2}\t"),
            REQ._replace(**WITH_XTB2),
            id="traceid-bytes-lower-case-tabs",
        ),
        pytest.param(
            f"GET /lf HTTP/1.1\nHost: a\ntraceparent: {TP}\n\n".encode(),
            REQ._replace(path="/lf", **WITH_TP),
            id="lf-only",
        ),
        pytest.param(
            f"HTTP/1.1 200 OK\r\ntraceparent: {TP}\n\r\n".encode(),
            RESP._replace(**WITH_TP),
            id="mixed-line-endings",
        ),
        pytest.param(
            http("GET / HTTP/1.1", "Host: a", end=False) + b"traceparent: 00-4bf92f3577b34da6",
            REQ._replace(complete=False, problems=("head_truncated",)),
            id="traceparent-cut-mid-value",
        ),
        pytest.param(
            # the whole value is there, but without its terminator it might go on
            http("GET / HTTP/1.1", end=False) + f"traceparent: {TP}".encode(),
            REQ._replace(complete=False, problems=("head_truncated",)),
            id="traceparent-unterminated",
        ),
        pytest.param(
            http("GET / HTTP/1.1", end=False) + f"traceparent: {TP}\r".encode(),
            REQ._replace(complete=False, problems=("head_truncated",)),
            id="traceparent-cut-between-cr-and-lf",
        ),
        pytest.param(
            http("GET / HTTP/1.1", "Host: a", end=False),
            REQ._replace(complete=False, problems=("head_truncated",)),
            id="head-cut-before-blank-line",
        ),
        pytest.param(
            http("GET / HTTP/1.1", f"traceparent: {TP}", end=False) + b"Host: exam",
            REQ._replace(complete=False, **WITH_TP),
            id="head-cut-after-traceparent",
        ),
        pytest.param(
            http("GET / HTTP/1.1", f"x-traceid-bytes: {XTB2}", end=False),
            REQ._replace(complete=False, **WITH_XTB2),
            id="head-cut-after-traceid-bytes",
        ),
        pytest.param(
            http("GET / HTTP/1.1", BIG_LINE, f"traceparent: {TP}")[:CAPTURE_BYTES],
            REQ._replace(complete=False, problems=("head_truncated",)),
            id="10KiB-line-cut-at-capture",
        ),
        pytest.param(
            http("GET / HTTP/1.1", f"traceparent: {TP}", BIG_LINE)[:CAPTURE_BYTES],
            REQ._replace(complete=False, **WITH_TP),
            id="traceparent-before-10KiB-line",
        ),
        pytest.param(
            http("GET / HTTP/1.1", f"X-TraceID-Bytes: {XTB2}", f"traceparent: {TP}"),
            REQ._replace(**WITH_TP),
            id="both-headers-traceparent-wins",
        ),
        pytest.param(
            http("GET / HTTP/1.1", f"traceparent: {TP.upper()}", f"X-TraceID-Bytes: {XTB2}"),
            REQ._replace(problems=("traceparent_bad_hex",), **WITH_XTB2),
            id="bad-traceparent-falls-back-to-traceid-bytes",
        ),
        pytest.param(
            http("GET / HTTP/1.1", f"traceparent: {TP}", "X-TraceID-Bytes: not base64!"),
            REQ._replace(problems=("traceid_bytes_bad_base64",), **WITH_TP),
            id="bad-traceid-bytes-still-reported",
        ),
        pytest.param(
            http("GET / HTTP/1.1", "traceparent: 00-bad", "X-TraceID-Bytes: AAAA", end=False),
            REQ._replace(
                complete=False,
                problems=(
                    "traceparent_bad_format",
                    "traceid_bytes_wrong_length",
                    "head_truncated",
                ),
            ),
            id="problems-in-order-found",
        ),
        pytest.param(
            http("GET / HTTP/1.1", f"traceparent: {TP}", f"traceparent:  {TP}\t"),
            REQ._replace(**WITH_TP),
            id="identical-traceparents",
        ),
        pytest.param(
            http("GET / HTTP/1.1", f"traceparent: {TP}", f"traceparent: {TP2}"),
            REQ._replace(problems=("traceparent_conflict",)),
            id="conflicting-traceparents",
        ),
        pytest.param(
            http(
                "GET / HTTP/1.1",
                f"traceparent: {TP}",
                f"traceparent: {TP2}",
                f"traceparent: {TP}",
                f"traceparent: 01-{TID}-{PID}-01",
                "tracestate: a=1",
            ),
            REQ._replace(problems=("traceparent_conflict",)),
            id="conflict-reported-once-and-drops-tracestate",
        ),
        pytest.param(
            http(
                "GET / HTTP/1.1",
                f"traceparent: {TP}",
                f"x-traceid-bytes: {XTB2}",
                f"traceparent: {TP2}",
            ),
            REQ._replace(problems=("traceparent_conflict",), **WITH_XTB2),
            id="conflict-falls-back-to-traceid-bytes",
        ),
        pytest.param(
            http(
                "GET / HTTP/1.1",
                f"x-traceid-bytes: {XTB2}",
                "x-traceid-bytes: S/kvNXezTaajzpKdDg5HNg==",
            ),
            REQ._replace(problems=("traceid_bytes_conflict",)),
            id="two-traceid-bytes-trust-neither",
        ),
        pytest.param(
            http("GET / HTTP/1.1", f"x-traceid-bytes: {XTB2}", f"X-TraceID-Bytes:  {XTB2}"),
            REQ._replace(**WITH_XTB2),
            id="a-copy-of-the-same-traceid-bytes-is-one",
        ),
        pytest.param(
            http(
                "GET / HTTP/1.1",
                f"traceparent: {TP}",
                "tracestate:  rojo=00f067aa0ba902b7, congo=t61rcWkgMzE \t",
            ),
            REQ._replace(tracestate="rojo=00f067aa0ba902b7, congo=t61rcWkgMzE", **WITH_TP),
            id="tracestate-pass-through",
        ),
        pytest.param(
            http("GET / HTTP/1.1", "TraceState: a=1", f"traceparent: {TP}", "tracestate: b=2"),
            REQ._replace(tracestate="a=1,b=2", **WITH_TP),
            id="tracestate-lines-joined",
        ),
        pytest.param(
            http("GET / HTTP/1.1", f"traceparent: ff{TP[2:]}", "tracestate: a=1"),
            REQ._replace(problems=("traceparent_version_ff",)),
            id="tracestate-dropped-with-invalid-traceparent",
        ),
        pytest.param(
            http("GET / HTTP/1.1", f"x-traceid-bytes: {XTB2}", "tracestate: a=1"),
            REQ._replace(**WITH_XTB2),
            id="tracestate-dropped-without-traceparent",
        ),
        pytest.param(
            http("GET / HTTP/1.1") + f"traceparent: {TP}\r\n".encode(),
            REQ,
            id="body-after-blank-line-ignored",
        ),
        pytest.param(
            http("GET / HTTP/1.1", f"X-Note: traceparent: {TP}", f"traceparent : {TP}"),
            REQ,
            id="lookalike-names-ignored",
        ),
        pytest.param(
            http("GET / HTTP/1.1", f"traceparent: 00-{'0' * 32}-{PID}-01"),
            REQ._replace(problems=("traceparent_zero_trace_id",)),
            id="zero-trace-id",
        ),
        pytest.param(
            http("GET / HTTP/1.1", "\x00\xff\x80 binary header line", f"traceparent: {TP}"),
            REQ._replace(**WITH_TP),
            id="binary-header-line-skipped",
        ),
    ],
)
def test_parse_head(data, expected):
    assert parse_head(data) == expected


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\r\n",
        b"\r\n\r\n",
        b"GET / HTTP/1.1",  # start line not terminated
        b"GET / HTTP/1.1\r",
        b"get / HTTP/1.1\r\n\r\n",
        b"Get / HTTP/1.1\r\n\r\n",
        b"GE / HTTP/1.1\r\n\r\n",
        b"ABCDEFGHIJKLMNOPQ / HTTP/1.1\r\n\r\n",  # 17-letter method
        b"M-SEARCH * HTTP/1.1\r\n\r\n",
        b"GET / HTTP/2.0\r\n\r\n",
        b"GET / HTTP/1.1 extra\r\n\r\n",
        b"GET / http/1.1\r\n\r\n",
        b"GET /\r\n\r\n",
        b"GET  / HTTP/1.1\r\n\r\n",
        b"POST  HTTP/1.1\r\n\r\n",
        b"GET\t/ HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.1 \r\n\r\n",
        b"GET /\xe9 HTTP/1.1\r\n\r\n",
        b"GET /\x00 HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.1\r\r\n\r\n",
        b"\xc0GET / HTTP/1.1\r\n\r\n",
        b"HTTP/1.1 20 OK\r\n\r\n",
        b"HTTP/1.1 2000 OK\r\n\r\n",
        b"HTTP/1.1 200OK\r\n\r\n",
        b"HTTP/1.1 2x0 OK\r\n\r\n",
        b"HTTP/1.1 \xb2\xb2\xb2 OK\r\n\r\n",  # latin-1 superscripts pass str.isdigit
        b"HTTP/1.1 200 \xc4rger\r\n\r\n",
        b"HTTP/1.2 200 OK\r\n\r\n",
        b"HTTP/2 200\r\n\r\n",
        b"http/1.1 200 OK\r\n\r\n",
        b"HTTP/1.1  200 OK\r\n\r\n",
        b"HTTP/1.1 200 OK",  # not terminated
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",  # a TLS ClientHello
    ],
)
def test_bad_start_line(data):
    assert parse_head(data) == "bad_start_line"


@pytest.mark.parametrize(
    ("data", "path"),
    [
        (b"GET /search?q=" + b"x" * 600, "/search"),  # a long query string: the capture cut it
        (b"POST /a/b#frag" + b"y" * 600, "/a/b"),
        (b"GET /" + b"a" * 600, "/" + "a" * (PATH_MAX_CHARS - 1)),  # the kept path is all there
        (b"GET http://host/p?" + b"z" * 600, "/p"),
    ],
)
def test_a_request_line_cut_by_the_capture_is_timed_with_its_head_incomplete(data, path):
    head = parse_head(data)
    assert head == Head("request", data.split()[0].decode(), path, None, False, None, None, None,
                        None, None, ("head_truncated",))  # fmt: skip


@pytest.mark.parametrize(
    "data",
    [
        b"GET /short",  # where its path ends is not known
        b"GET http://host/" + b"a" * 40,  # nor here: the authority does not count
        b"GET /a?b c",  # a space, and no version after it
        b"get /x?y",
        b"GET /\xe9?x",
    ],
)
def test_a_cut_line_whose_path_is_not_known_to_end_is_no_head(data):
    assert parse_head(data) == "bad_start_line"


@pytest.mark.parametrize(
    "line, kind, method, status",
    [
        ("PUT / HTTP/1.1", "request", "PUT", None),
        ("ABCDEFGHIJKLMNOP / HTTP/1.0", "request", "ABCDEFGHIJKLMNOP", None),  # 16 letters
        ("HTTP/1.1 503 Service Unavailable", "response", None, 503),
        ("HTTP/1.0 200 ", "response", None, 200),  # empty reason phrase
        ("HTTP/1.1 299 a\treason", "response", None, 299),
        ("HTTP/1.1 000", "response", None, 0),
    ],
)
def test_good_start_line(line, kind, method, status):
    head = parse_head(http(line))
    assert isinstance(head, Head)
    assert (head.kind, head.method, head.status) == (kind, method, status)


# --- paths ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "target, path",
    [
        ("/", "/"),
        ("/api/v1/items", "/api/v1/items"),
        ("/api/v1/items?id=3&x=4", "/api/v1/items"),
        ("/a#frag", "/a"),
        ("/a?x#y", "/a"),
        ("/a#x?y", "/a"),
        ("/?q", "/"),
        ("/redirect?to=http://x/y", "/redirect"),  # a URI in the query is not absolute-form
        ("/p/http://x/y", "/p/http://x/y"),
        ("http://example.com/x?y=1", "/x"),
        ("https://example.com:8443/x/y#z", "/x/y"),
        ("HTTP://EXAMPLE.COM/Up", "/Up"),
        ("http://example.com", "/"),
        ("http://example.com?q=/a", "/"),
        ("http://user@example.com#/a", "/"),
        ("*", "*"),
        ("example.com:443", "example.com:443"),  # CONNECT's authority-form
        ("/" + "a" * (PATH_MAX_CHARS - 1), "/" + "a" * (PATH_MAX_CHARS - 1)),
        ("/" + "a" * 100, "/" + "a" * (PATH_MAX_CHARS - 1)),
        ("/" + "b" * 40 + "?" + "q" * 100, "/" + "b" * 40),  # the query does not count
        ("http://h/" + "c" * 100, "/" + "c" * (PATH_MAX_CHARS - 1)),  # the host does not count
    ],
)
def test_request_path(target, path):
    head = parse_head(http(f"GET {target} HTTP/1.1"))
    assert isinstance(head, Head)
    assert head.path == path


def test_constants():
    assert CAPTURE_BYTES == 512
    assert PATH_MAX_CHARS == 64
    assert len(set(REASONS)) == len(REASONS) == 14


def test_a_tracestate_with_control_bytes_is_dropped_and_counted_the_trace_kept():
    head = parse_head(
        b"GET / HTTP/1.1\r\ntraceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        b"\r\ntracestate: a=b\x1b[2J\r\n\r\n"
    )
    assert head.trace_id is not None and head.tracestate is None
    assert head.problems == ("tracestate_bad_chars",)
    ok = parse_head(
        b"GET / HTTP/1.1\r\ntraceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        b"\r\ntracestate: a=b,\tc=d\r\n\r\n"
    )
    assert ok.tracestate == "a=b,\tc=d" and ok.problems == ()


# --- robustness ----------------------------------------------------------------------------------


def check_result(result):
    """Invariants every parse_head result must keep, whatever the input."""
    if isinstance(result, str):
        assert result == "bad_start_line"
        return
    assert isinstance(result, Head)
    assert result.kind in ("request", "response")
    assert set(result.problems) <= set(REASONS) - {"bad_start_line"}
    assert len(set(result.problems)) == len(result.problems)
    assert result.trace_id is None or len(result.trace_id) == 16
    assert (result.trace_source is None) == (result.trace_id is None)
    assert (result.parent_id is None) == (result.trace_source != "traceparent")
    assert result.tracestate is None or result.trace_source == "traceparent"
    assert ("head_truncated" in result.problems) == (
        not result.complete and result.trace_id is None
    )
    if result.kind == "request":
        assert result.method is not None and result.status is None
        assert result.path is not None and len(result.path) <= PATH_MAX_CHARS
    else:
        assert result.method is None and result.path is None and result.status is not None


VALID = (
    http(
        "POST http://svc.local/api/v1/run?x=1 HTTP/1.1",
        "Host: svc.local",
        f"traceparent: {TP}",
        "tracestate: a=1",
        f"X-TraceID-Bytes: {XTB2}",
        "Content-Length: 2",
    )
    + b"{}"
)


def mutate(rng: random.Random, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        op = rng.randrange(4)
        pos = rng.randrange(len(out) + 1)
        if op == 0 and pos < len(out):
            out[pos] = rng.randrange(256)
        elif op == 1:
            out.insert(pos, rng.choice(b"\r\n:- \t0af\x00\xff"))
        elif op == 2 and pos < len(out):
            del out[pos]
        else:
            del out[pos:]
    return bytes(out)


def test_random_input_never_raises():
    rng = random.Random(20240611)
    tokens = [b"\r\n", b"\n", b"\r", b":", b"-", b" ", b"\t", b"traceparent", b"x-traceid-bytes",
              b"tracestate", b"HTTP/1.1", b"GET", b"/", b"?", b"00", b"ff", TID.encode(),
              PID.encode(), XTB2.encode(), b"=", b"\xff", b"\x00"]  # fmt: skip
    heads = 0
    for i in range(4000):
        kind = i % 4
        if kind == 0:
            data = rng.randbytes(rng.randrange(CAPTURE_BYTES + 100))
        elif kind == 1:
            data = mutate(rng, VALID)
        elif kind == 2:
            data = b"GET / HTTP/1.1\r\n" + b"".join(rng.choices(tokens, k=rng.randrange(60)))
        else:
            data = b"HTTP/1.1 200 OK\n" + rng.randbytes(rng.randrange(CAPTURE_BYTES))
        result = parse_head(data)
        check_result(result)
        heads += isinstance(result, Head)
    # the mutated and token-built inputs must mostly get past the start line, or this test
    # would exercise nothing but the start-line check
    assert heads > 2000


def test_random_header_values_never_raise():
    rng = random.Random(5)
    alphabet = "0123456789abcdefABCDEF-+/=_ \t\u00e9\u00b2\x00"
    for _ in range(3000):
        value = "".join(rng.choices(alphabet, k=rng.randrange(70)))
        tp = parse_traceparent(value)
        assert isinstance(tp, TraceParent) or tp in REASONS
        tb = parse_traceid_bytes(value)
        assert (isinstance(tb, bytes) and len(tb) == 16) or tb in REASONS


def test_huge_input():
    data = http("GET / HTTP/1.1", "X-Big: " + "a" * (1 << 20), f"traceparent: {TP}")
    assert parse_head(data) == REQ._replace(**WITH_TP)
    check_result(parse_head(b"GET / HTTP/1.1\r\n" + b"\n" * (1 << 20)))
    check_result(parse_head(b"GET / HTTP/1.1\r\n" + bytes(range(256)) * 4096))


def test_every_prefix_of_a_head_is_never_misread():
    data = http("GET /p HTTP/1.1", "Host: a", f"traceparent: 01-{TID}-{PID}-01-{TID2}", "A: b")
    start_line_end = data.index(b"\n") + 1
    traceparent_end = data.index(b"\n", data.index(b"traceparent")) + 1
    for n in range(len(data) + 1):
        result = parse_head(data[:n])
        if n < start_line_end:
            assert result == "bad_start_line"
            continue
        check_result(result)
        assert result.complete == (n == len(data))
        if n < traceparent_end:
            assert result.trace_id is None and result.problems == ("head_truncated",)
        else:
            assert (result.trace_id, result.parent_id) == (TID_RAW, PID_RAW)
            assert result.problems == ()
