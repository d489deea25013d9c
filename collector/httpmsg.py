"""HTTP/1.x heads captured by the kernel: start line, request path and trace context.

The kernel copies the first CAPTURE_BYTES of a socket read or write that starts like an HTTP/1.x
request or response. This module turns those bytes into a Head. Its input is whatever a peer put on
the wire, cut at an arbitrary byte, so nothing here raises: every problem becomes one of the
REASONS strings, which callers count.
"""

from __future__ import annotations

import base64
import re
from functools import partial
from typing import Callable, NamedTuple

from ..probes.decoders import CAPTURE_BYTES  # noqa: F401  (the kernel's capture size)
from ..probes.fastpath import tracefast
from ..probes.records import fields_in_order, new_record

PATH_MAX_CHARS = 64  # paths longer than this are truncated (query string dropped first)

# every reason a head or a trace header is rejected; callers count them by these names
REASONS = (
    # not "METHOD SP target SP HTTP/1.x" / "HTTP/1.x SP 3DIGIT ...", or not terminated in the data
    "bad_start_line",
    # no blank line within the captured bytes, and no trace id in the complete lines
    "head_truncated",
    # not version-traceid-parentid-flags separated by '-'
    "traceparent_bad_format",
    # a field of the wrong length (version 2, trace id 32, parent id 16, flags 2), or version 00
    # with anything after the flags
    "traceparent_wrong_length",
    # a non-lowercase-hex character in any field
    "traceparent_bad_hex",
    "traceparent_version_ff",
    "traceparent_zero_trace_id",
    "traceparent_zero_parent_id",
    # two traceparent headers with different values
    "traceparent_conflict",
    "traceid_bytes_bad_base64",
    # decodes to other than exactly 16 bytes
    "traceid_bytes_wrong_length",
    # 16 zero bytes: no trace (W3C: an all-zero trace id is invalid)
    "traceid_bytes_zero_trace_id",
    # two X-TraceID-Bytes headers with different values
    "traceid_bytes_conflict",
    # a tracestate value with a byte outside printable ASCII (W3C allows 0x20-0x7e and tab):
    # dropped, so no control byte reaches a span or a terminal
    "tracestate_bad_chars",
)

TRACE_SOURCE_TRACEPARENT = "traceparent"
TRACE_SOURCE_TRACEID_BYTES = "x-traceid-bytes"

_OWS = " \t"
_ZERO_ID = bytes(16)
# Explicit character classes, not int(x, 16) or str.isdigit: those accept "_", surrounding
# whitespace, uppercase and non-ASCII digits such as latin-1's superscripts. Regular expressions
# rather than per-character Python loops: this runs once per captured request.
_LOWER_HEX = re.compile(r"[0-9a-f]*\Z")
_STATUS = re.compile(r"[0-9]{3}\Z")
_REASON = re.compile(r"(?: [\t -~]*)?\Z")
# method SP target SP version: visible ASCII only, single spaces, nothing else.
_METHOD_TARGET = r"([A-Z]{3,16}) ([!-~]+)"
_REQUEST_LINE = re.compile(_METHOD_TARGET + r" HTTP/1\.[01]\Z")
# The same line cut inside its target (no version, no line end).
_CUT_REQUEST_LINE = re.compile(_METHOD_TARGET + r"\Z")
_ABSOLUTE_FORM = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://")
_RESPONSE_PREFIXES = ("HTTP/1.0 ", "HTTP/1.1 ")

# The common case, version 00 and well formed, in one match; anything else takes the checks that
# name the fault.
_TRACESTATE_CHARS = re.compile(r"[\t -~]*\Z")
_TRACEPARENT_00 = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})\Z")
_ZERO_TRACE_ID, _ZERO_PARENT_ID = "0" * 32, "0" * 16

# A line that is empty or only "\r", after the start line: the end of the head.
_BLANK_LINE = re.compile(r"\n\r?\n")
_TRACE_HEADER = re.compile(
    r"^(traceparent|x-traceid-bytes|tracestate):(.*)$", re.IGNORECASE | re.ASCII | re.MULTILINE
)

# lengths of a traceparent's trace id, parent id and flags
_TRACEPARENT_LENGTHS = (32, 16, 2)


# NamedTuples, not dataclasses: built once per captured request, and a frozen dataclass costs
# several times as much to construct.
class TraceParent(NamedTuple):
    version: int
    trace_id: bytes  # 16 raw bytes
    parent_id: bytes  # 8 raw bytes
    flags: int


class Head(NamedTuple):
    kind: str  # "request" or "response"
    method: str | None  # requests
    path: str | None  # requests: target without query string, truncated to PATH_MAX_CHARS
    status: int | None  # responses
    complete: bool  # the blank line ending the head was inside the captured bytes
    trace_id: bytes | None  # 16 raw bytes, from traceparent, else from X-TraceID-Bytes
    parent_id: bytes | None  # 8 raw bytes, traceparent only
    trace_flags: int | None
    trace_source: str | None  # "traceparent" | "x-traceid-bytes" | None
    tracestate: str | None  # verbatim, only with a valid traceparent; several lines joined by ","
    problems: tuple[str, ...]  # reasons from REASONS, each at most once, in order found


# The fast path builds a Head positionally (``_fast_head``).
fields_in_order(Head, ("kind", "method", "path", "status", "complete", "trace_id", "parent_id",
                       "trace_flags", "trace_source", "tracestate", "problems"),
                "httpmsg._fast_head")  # fmt: skip


def _is_lower_hex(text: str) -> bool:
    return _LOWER_HEX.match(text) is not None


def parse_traceparent(value: str) -> TraceParent | str:
    """A W3C Trace Context level 1 ``traceparent`` value, or the reason it is invalid.

    Checks run structure, then field lengths, then hex, then the values, so a value with several
    faults reports the first in that order.
    """
    if not isinstance(value, str):
        return "traceparent_bad_format"
    value = value.strip(_OWS)
    fast = _TRACEPARENT_00.match(value)
    if fast:
        trace_id, parent_id, flags = fast.groups()
        if trace_id != _ZERO_TRACE_ID and parent_id != _ZERO_PARENT_ID:
            return TraceParent(0, bytes.fromhex(trace_id), bytes.fromhex(parent_id), int(flags, 16))
    parts = value.split("-")
    if len(parts) < 4:
        return "traceparent_bad_format"
    version, trace_id, parent_id, flags = parts[:4]
    if len(version) != 2:
        return "traceparent_wrong_length"
    for text, length in zip((trace_id, parent_id, flags), _TRACEPARENT_LENGTHS):
        if len(text) != length:
            return "traceparent_wrong_length"
    # Version 00 is exactly 55 characters; only a future version may append fields, and the
    # split above already guarantees those begin with '-' right after the flags.
    if version == "00" and len(parts) > 4:
        return "traceparent_wrong_length"
    if not all(_is_lower_hex(text) for text in (version, trace_id, parent_id, flags)):
        return "traceparent_bad_hex"
    if version == "ff":
        return "traceparent_version_ff"
    if trace_id == "0" * 32:
        return "traceparent_zero_trace_id"
    if parent_id == "0" * 16:
        return "traceparent_zero_parent_id"
    return TraceParent(
        version=int(version, 16),
        trace_id=bytes.fromhex(trace_id),
        parent_id=bytes.fromhex(parent_id),
        flags=int(flags, 16),
    )


def parse_traceid_bytes(value: str) -> bytes | str:
    """The 16-byte trace id of an ``X-TraceID-Bytes`` value (padded standard base64), or the
    reason it is invalid."""
    if not isinstance(value, str):
        return "traceid_bytes_bad_base64"
    try:
        raw = base64.b64decode(value.strip(_OWS), validate=True)
    except ValueError:  # binascii.Error, and non-ASCII text
        return "traceid_bytes_bad_base64"
    if len(raw) != 16:
        return "traceid_bytes_wrong_length"
    if raw == _ZERO_ID:
        return "traceid_bytes_zero_trace_id"
    return raw


def _request_path(target: str) -> str:
    if target != "*":
        match = _ABSOLUTE_FORM.match(target)
        if match:
            rest = target[match.end() :]
            authority_end = len(rest)
            for sep in "/?#":
                i = rest.find(sep)
                if 0 <= i < authority_end:
                    authority_end = i
            # an absolute URI with no path after its authority means "/"
            target = rest[authority_end:] if rest.startswith("/", authority_end) else "/"
        for sep in "?#":
            target = target.split(sep, 1)[0]
    return target[:PATH_MAX_CHARS]


def _parse_start_line(line: str) -> tuple[str, str | None, str | None, int | None] | None:
    """(kind, method, path, status), or None when the line is not an HTTP/1.x start line."""
    if line.startswith(_RESPONSE_PREFIXES):
        status, reason = line[9:12], line[12:]
        if not _STATUS.match(status) or not _REASON.match(reason):
            return None
        return "response", None, None, int(status)
    request = _REQUEST_LINE.match(line)
    if request is None:
        return None
    return "request", request.group(1), _request_path(request.group(2)), None


# The common case, read straight from the bytes: a request line with an origin-form target
# ("GET /path HTTP/1.1"), at most one traceparent (version 00, well formed) and no tracestate or
# X-TraceID-Bytes header. Anything else (and anything these checks are not sure of) takes the
# general parser below; a property test holds the two to the same answer on arbitrary heads.
# "METHOD /path[?query] HTTP/1.x": the path up to the first "?" or "#" in its own group
_FAST_START = re.compile(
    rb"([A-Z]{3,16}) (/[!-\x22\x24-\x3e\x40-~]*)(?:[?#][!-~]*)? HTTP/1\.[01]\r?\n"
)
_FAST_BLANK_LINE = re.compile(rb"\n\r?\n")
_FAST_TRACEPARENT_LINE = re.compile(rb"\ntraceparent:", re.IGNORECASE)
_FAST_OTHER_TRACE_LINE = re.compile(rb"\n(?:tracestate|x-traceid-bytes):", re.IGNORECASE)
_FAST_TRACEPARENT = re.compile(rb"[ \t]*00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})[ \t]*\r?\Z")
_ZERO_TRACE_ID_B, _ZERO_PARENT_ID_B = b"0" * 32, b"0" * 16
_METHOD_TEXT: dict[bytes, str] = {}  # method bytes -> str, bounded by _MAX_METHODS
_MAX_METHODS = 64
_TRUNCATED = ("head_truncated",)


def _fast_head(data: bytes) -> Head | None:
    """The Head of a common request head, or None when the general parser must decide."""
    start = _FAST_START.match(data)
    if start is None or _FAST_OTHER_TRACE_LINE.search(data) is not None:
        return None
    first_end = start.end() - 1  # the start line's "\n"
    # the end of the header lines: through the "\n" that starts the blank line, or through the
    # last complete line when the capture cut the head
    blank = _FAST_BLANK_LINE.search(data, first_end)
    headers_end = blank.start() + 1 if blank is not None else data.rfind(b"\n") + 1
    trace_id = parent_id = flags = source = None
    tp = _FAST_TRACEPARENT_LINE.search(data, first_end)
    if tp is not None:
        at = tp.start()
        eol = data.find(b"\n", at + 1)
        if eol < 0 or eol >= headers_end or _FAST_TRACEPARENT_LINE.search(data, eol) is not None:
            return None  # after the head, unterminated, or several: for the general parser
        value = _FAST_TRACEPARENT.match(data, at + 13, eol)
        if value is None:
            return None
        tid, pid, fl = value.groups()
        if tid == _ZERO_TRACE_ID_B or pid == _ZERO_PARENT_ID_B:
            return None
        trace_id, parent_id = bytes.fromhex(tid.decode()), bytes.fromhex(pid.decode())
        flags, source = int(fl, 16), TRACE_SOURCE_TRACEPARENT
    raw_method = start.group(1)
    method = _METHOD_TEXT.get(raw_method)
    if method is None:
        method = raw_method.decode()
        if len(_METHOD_TEXT) < _MAX_METHODS:
            _METHOD_TEXT[raw_method] = method
    complete = blank is not None
    problems = () if complete or trace_id is not None else _TRUNCATED
    path = start.group(2)[:PATH_MAX_CHARS].decode()
    return new_record(  # type: ignore[no-any-return]
        Head,
        ("request", method, path, None, complete, trace_id, parent_id, flags, source, None,
         problems),
    )  # fmt: skip


# fast_head(data: bytes) -> Head | None: _fast_head, compiled when _tracefast is built (the same
# answers, held to parse_head_general by the same property test).
fast_head: Callable[[bytes], Head | None] = (
    _fast_head if tracefast is None else partial(tracefast.fast_head, Head)
)


def parse_head(data: bytes) -> Head | str:
    """The Head of captured bytes, or "bad_start_line" when they are not an HTTP/1.x head."""
    if type(data) is bytes:
        fast = fast_head(data)
        if fast is not None:
            return fast
    return parse_head_general(data)


def _cut_request_line(text: str) -> Head | str:
    """A request line that the capture cut (a long query string: no line end in the captured
    bytes) still names its method and, once its target reached ``?``, ``#`` or PATH_MAX_CHARS,
    all of the path that is kept: the request is timed, its head incomplete (``head_truncated``:
    any trace header was in the part cut off). Anything else without a line end is no head."""
    match = _CUT_REQUEST_LINE.match(text)
    if match is None:
        return "bad_start_line"
    target = match.group(2)
    path = _request_path(target)
    if not ("?" in target or "#" in target or len(path) >= PATH_MAX_CHARS):
        return "bad_start_line"  # where the path ends is not known
    return Head("request", match.group(1), path, None, False, None, None, None, None, None,
                ("head_truncated",))  # fmt: skip


def parse_head_general(data: bytes) -> Head | str:
    """parse_head for every input: the reference the fast path is held to."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        return "bad_start_line"
    # latin-1 maps every byte to one character, so decoding cannot fail and offsets stay bytes
    text = bytes(data).decode("latin-1")
    first_end = text.find("\n")
    if first_end < 0:
        return _cut_request_line(text)
    if first_end == 0:  # an empty start line
        return "bad_start_line"
    start = _parse_start_line(text[: first_end - (text[first_end - 1] == "\r")])
    if start is None:
        return "bad_start_line"
    kind, method, path, status = start
    # Only terminated lines up to the blank line ending the head are header lines; the
    # unterminated tail may be a header cut mid-value and is never read.
    blank = _BLANK_LINE.search(text, first_end)
    complete = blank is not None
    headers = text[first_end + 1 : blank.start() + 1 if blank else text.rfind("\n") + 1]

    problems: list[str] = []

    def problem(reason: str) -> None:
        if reason not in problems:
            problems.append(reason)

    first_traceparent: str | None = None
    traceparent: TraceParent | None = None
    conflict = False
    traceid_bytes: bytes | None = None
    first_traceid_bytes: str | None = None
    tracestates: list[str] = []

    # One scan in C for the three headers of interest, instead of a Python loop over every
    # header line. No stripping of the name: "traceparent : x" is a malformed header that a
    # server must reject (RFC 9112 section 5.1), so it carries no trace context.
    for match in _TRACE_HEADER.finditer(headers):
        name = match.group(1).lower()
        value = match.group(2)
        if value.endswith("\r"):
            value = value[:-1]
        value = value.strip(_OWS)
        if name == "traceparent":
            if first_traceparent is None:
                first_traceparent = value
                parsed = parse_traceparent(value)
                if isinstance(parsed, TraceParent):
                    traceparent = parsed
                else:
                    problem(parsed)
            elif value != first_traceparent:
                # two different parents: either could be stale, so trust neither
                conflict = True
                problem("traceparent_conflict")
        elif name == "x-traceid-bytes":
            # as traceparent: copies of one value are one; two values, and either is stale
            if first_traceid_bytes is None:
                first_traceid_bytes = value
                parsed_bytes = parse_traceid_bytes(value)
                if isinstance(parsed_bytes, bytes):
                    traceid_bytes = parsed_bytes
                else:
                    problem(parsed_bytes)
            elif value != first_traceid_bytes:
                traceid_bytes = None
                problem("traceid_bytes_conflict")
        elif value:  # tracestate
            tracestates.append(value)

    if conflict:
        traceparent = None

    trace_id = parent_id = trace_flags = trace_source = tracestate = None
    if traceparent is not None:
        trace_id = traceparent.trace_id
        parent_id = traceparent.parent_id
        trace_flags = traceparent.flags
        trace_source = TRACE_SOURCE_TRACEPARENT
        # tracestate is only meaningful alongside the traceparent it extends
        tracestate = ",".join(tracestates) or None
        if tracestate is not None and not _TRACESTATE_CHARS.match(tracestate):
            problem("tracestate_bad_chars")
            tracestate = None
    elif traceid_bytes is not None:
        trace_id = traceid_bytes
        trace_source = TRACE_SOURCE_TRACEID_BYTES

    if not complete and trace_id is None:
        # the trace header may sit in the part the capture cut off; count it apart from
        # heads that really carry none
        problem("head_truncated")

    return Head(
        kind=kind,
        method=method,
        path=path,
        status=status,
        complete=complete,
        trace_id=trace_id,
        parent_id=parent_id,
        trace_flags=trace_flags,
        trace_source=trace_source,
        tracestate=tracestate,
        problems=tuple(problems),
    )
