"""HTTP/1.x heads captured by the kernel: start line, request path and trace context.

The kernel copies the first CAPTURE_BYTES of a socket read or write that starts like an HTTP/1.x
request or response. This module turns those bytes into a Head. Its input is whatever a peer put on
the wire, cut at an arbitrary byte, so nothing here raises: every problem becomes one of the
REASONS strings, which callers count.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass

from ..probes.decoders import CAPTURE_BYTES  # noqa: F401  (the kernel's capture size)

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
)

TRACE_SOURCE_TRACEPARENT = "traceparent"
TRACE_SOURCE_TRACEID_BYTES = "x-traceid-bytes"

_OWS = " \t"
# An explicit set, not int(x, 16) or str.isdigit: those accept "_", surrounding whitespace,
# uppercase and non-ASCII digits such as latin-1's superscripts.
_LOWER_HEX = frozenset("0123456789abcdef")
_DIGITS = frozenset("0123456789")
_METHOD = re.compile(r"[A-Z]{3,16}\Z")
_ABSOLUTE_FORM = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://")
_HTTP_VERSIONS = ("HTTP/1.0", "HTTP/1.1")
_RESPONSE_PREFIXES = ("HTTP/1.0 ", "HTTP/1.1 ")

# lengths of a traceparent's trace id, parent id and flags
_TRACEPARENT_LENGTHS = (32, 16, 2)


@dataclass(frozen=True)
class TraceParent:
    version: int
    trace_id: bytes  # 16 raw bytes
    parent_id: bytes  # 8 raw bytes
    flags: int


@dataclass(frozen=True)
class Head:
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


def _is_lower_hex(text: str) -> bool:
    return all(c in _LOWER_HEX for c in text)


def parse_traceparent(value: str) -> TraceParent | str:
    """A W3C Trace Context level 1 ``traceparent`` value, or the reason it is invalid.

    Checks run structure, then field lengths, then hex, then the values, so a value with several
    faults reports the first in that order.
    """
    if not isinstance(value, str):
        return "traceparent_bad_format"
    parts = value.strip(_OWS).split("-")
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
    return raw


def _is_visible_ascii(text: str) -> bool:
    return all(" " <= c <= "~" for c in text)


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
        if len(status) != 3 or not all(c in _DIGITS for c in status):
            return None
        if reason and (reason[0] != " " or not all(c == "\t" or " " <= c <= "~" for c in reason)):
            return None
        return "response", None, None, int(status)
    if not _is_visible_ascii(line):
        return None
    parts = line.split(" ")
    if len(parts) != 3:
        return None
    method, target, version = parts
    if not _METHOD.match(method) or not target or version not in _HTTP_VERSIONS:
        return None
    return "request", method, _request_path(target), None


def _complete_lines(text: str) -> tuple[list[str], bool]:
    """The terminated lines of ``text`` up to the blank line ending the head, and whether that
    blank line was seen. The unterminated tail is dropped: it may be a header cut mid-value."""
    lines: list[str] = []
    start = 0
    while True:
        end = text.find("\n", start)
        if end < 0:
            return lines, False
        line = text[start:end]
        if line.endswith("\r"):
            line = line[:-1]
        if not line and lines:
            return lines, True
        lines.append(line)
        start = end + 1


def parse_head(data: bytes) -> Head | str:
    """The Head of captured bytes, or "bad_start_line" when they are not an HTTP/1.x head."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        return "bad_start_line"
    # latin-1 maps every byte to one character, so decoding cannot fail and offsets stay bytes
    lines, complete = _complete_lines(bytes(data).decode("latin-1"))
    if not lines:
        return "bad_start_line"
    start = _parse_start_line(lines[0])
    if start is None:
        return "bad_start_line"
    kind, method, path, status = start

    problems: list[str] = []

    def problem(reason: str) -> None:
        if reason not in problems:
            problems.append(reason)

    first_traceparent: str | None = None
    traceparent: TraceParent | None = None
    conflict = False
    traceid_bytes: bytes | None = None
    seen_traceid_bytes = False
    tracestates: list[str] = []

    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if not colon:
            continue
        # no stripping of the name: "traceparent : x" is a malformed header that a server must
        # reject (RFC 9112 section 5.1), so it carries no trace context
        name = name.lower()
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
            # the first occurrence is the one used; later copies are ignored
            if not seen_traceid_bytes:
                seen_traceid_bytes = True
                parsed_bytes = parse_traceid_bytes(value)
                if isinstance(parsed_bytes, bytes):
                    traceid_bytes = parsed_bytes
                else:
                    problem(parsed_bytes)
        elif name == "tracestate":
            if value:
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
