"""Trace attribution: parse the requests the trace-context probe paired in the kernel (request
head read -> response write on one connection), join each with its trace id and the exact kernel
interference its thread suffered in between (and, per Snapshot, with its thread's over-threshold
events: ``attach_events``), and keep a sliding window of request latencies per workload for exact
quantiles."""

from __future__ import annotations

import os
import random
import re
from bisect import bisect_left
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import accumulate
from typing import NamedTuple, TypeVar, Union

from ..probes.fastpath import tracefast
from ..probes.records import RequestRecord, fields_in_order, new_record
from .httpmsg import PATH_MAX_CHARS, REASONS, Head, parse_head
from .model import (
    DURATION_BOUNDS_MS,
    Events,
    LatencyQuantiles,
    PreemptionEvent,
    RequestFigures,
    Trace,
    WakeupWaitEvent,
)
from .quantiles import exact_quantile
from .sockets import Endpoint
from .workloads import matches

DEFAULT_WINDOW_S = 60.0
DEFAULT_MAX_WINDOW_REQUESTS = 100_000  # per workload; beyond it the oldest leave early (said so)
DEFAULT_MAX_PATHS = 100  # named routes per workload at once; the rest count as "other"
OTHER_ROUTE = "other"
# Methods a route may name; any other (the kernel only checks a request's first 4 bytes, so
# "POSTAAB /" reaches here) is counted under OTHER_ROUTE, whatever its path.
METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE",
                     "PATCH"))  # fmt: skip
ID_SEGMENT = ":id"
# The last segment of a path that reached PATH_MAX_CHARS: it may have been cut inside, and what
# is left of a token is no route (and what is left of a word would make one up).
CUT_SEGMENT = ":cut"
# A path segment that names one thing rather than a route: a number, a UUID, a long hex string,
# or a long token of letters and digits (an id, a session, a reset-password secret). Folded to
# ":id" so that neither it nor the count of distinct ones leaves the node. (A trace keeps the
# path as sent, its span's url.path, only with collector.keep_paths: an operator's choice.)
_ID_LIKE = re.compile(
    r"[0-9]+|[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
    r"|[0-9a-fA-F]{16,}|(?=[A-Za-z0-9_\-=.~%]*[0-9])[A-Za-z0-9_\-=.~%]{20,}"
)


def may_be_cut(path: str) -> bool:
    """A path as long as the parser keeps: it may have been cut inside its last segment."""
    return len(path) >= PATH_MAX_CHARS


def route_path(path: str) -> str:
    """The route of a request path: id-like segments folded to ":id", and the last one to
    ":cut" when the path is as long as the parser keeps (it may have been cut inside it)."""
    segs = [ID_SEGMENT if _ID_LIKE.fullmatch(seg) else seg for seg in path.split("/")]
    if may_be_cut(path) and len(segs) > 1:
        segs[-1] = CUT_SEGMENT
    return "/".join(segs)


# "METHOD route" by (method, path): the same few paths come again and again, and folding one
# costs a regular-expression match per segment. Emptied when full (any path may come, so it is
# bounded, and emptying keeps the common ones coming back at once).
MAX_ROUTE_CACHE = 4096
_route_cache: dict[tuple[str, str], str] = {}


def http_version(data: bytes) -> str | None:
    """The HTTP version a request's start line names ("1.1", "1.0"), or None."""
    end = data.find(b"\r\n", 0, 300)
    line = data[:end] if end >= 0 else b""
    v = line[-3:]
    if line[-9:-3] == b" HTTP/" and v[1:2] == b"." and v[:1].isdigit() and v[2:].isdigit():
        return v.decode()
    return None


def request_meta_py(data: bytes) -> tuple[str | None, bytes | None]:
    """(HTTP version, the value of the first Host header line of the head, blanks trimmed):
    what probes/_tracefast.c request_meta gives in one pass, each None when not said."""
    blank = data.find(b"\r\n\r\n")
    head = data if blank < 0 else data[: blank + 2]  # each header line with its CRLF
    at = head.lower().find(b"\r\nhost:")
    end = head.find(b"\r\n", at + 7) if at >= 0 else -1
    return http_version(data), head[at + 7 : end].strip(b" \t") if end >= 0 else None


request_meta = getattr(tracefast, "request_meta", None) or request_meta_py
# RequestTracker.feed's common case, compiled (probes/_tracefast.c), or None: a record that is
# a request head the fast path reads with no problem, of a process identified in this batch,
# whose route this batch has named and still holds its place in its window, read and answered
# by one thread. The Python loop in feed does the same for every record, and the rest.
_feed_known = getattr(tracefast, "feed_known", None)

_HOST_NAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.\-_]*[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\]")
MAX_HOSTS = 4096  # Host header values parsed, kept (emptied when full)
_hosts: dict[bytes, tuple[str, int] | None] = {}


def parse_host(value: bytes | None) -> tuple[str, int] | None:
    """(server.address, server.port) of a Host header's value, as OTel's HTTP server
    conventions ask (port 80, the scheme's, when it names none), or None when it is no valid
    name or port. The same few values come again and again: kept, bounded."""
    if value is None:
        return None
    if value in _hosts:
        return _hosts[value]
    found = None
    if len(value) <= 261:  # 255 for a name, ":" and a port
        text = value.decode("ascii", "replace")
        host, sep, port = text.rpartition(":") if not text.endswith("]") else ("", "", "")
        if not sep or "]" in port:
            host, port = text, "80"
        if _HOST_NAME.fullmatch(host) and port.isdigit() and 0 < int(port) < 65536:
            found = host.strip("[]"), int(port)
    if len(_hosts) >= MAX_HOSTS:
        _hosts.clear()
    _hosts[value] = found
    return found


def http_host(data: bytes) -> tuple[str, int] | None:
    """(server.address, server.port) from a request's Host header, or None."""
    return parse_host(request_meta(data)[1])


def compile_templates(templates: Iterable[str]) -> tuple[tuple[tuple[str | None, ...], str], ...]:
    """Route templates (``/users/{id}/orders``) as segment tuples, ``None`` where a ``{name}``
    segment matches any one segment, in the order given (the first that matches wins)."""
    out = []
    for template in templates:
        segs = tuple(
            None if seg.startswith("{") and seg.endswith("}") else seg
            for seg in template.split("/")
        )
        out.append((segs, template))
    return tuple(out)


def template_route(templates: tuple, path: str) -> str | None:
    """The first template ``path`` matches, or None."""
    segs = path.split("/")
    for want, template in templates:
        if len(want) == len(segs) and all(w is None or w == g for w, g in zip(want, segs)):
            return template
    return None


def method_route(method: str, path: str) -> str:
    """ "METHOD route" of a request (``route_path`` of its path)."""
    key = (method, path)
    route = _route_cache.get(key)
    if route is None:
        if len(_route_cache) >= MAX_ROUTE_CACHE:
            _route_cache.clear()
        route = _route_cache[key] = f"{method} {route_path(path)}"
    return route


# A connection's (local, remote) endpoints (None: not known) and whether it took the socket
# bypass (None: not known).
ConnInfo = tuple[Union[tuple[Endpoint, Endpoint], None], Union[bool, None]]
NO_CONNECTION: ConnInfo = (None, None)
_NO_PAIR = (None, None)  # an absent (version, Host), (address, port)
_NO_ENDPOINTS = (_NO_PAIR, _NO_PAIR)


def _meta(data: bytes) -> tuple[str | None, tuple[str, int] | None]:
    """A traced request's HTTP version and Host (address, port): one pass over its head."""
    version, host = request_meta(data)
    return version, parse_host(host)


_SPAN_IDS = random.Random(os.urandom(16))
_BOUNDS_NS = [round(b * 1e6) for b in DURATION_BOUNDS_MS]


class Request(NamedTuple):  # built once per request: a NamedTuple costs a fraction of a dataclass
    """A request answered: from the wake-up that let its thread read it (when the read blocked
    for it), else the end of the read that brought its head, to the start of the write that
    began its response (server side)."""

    pid: int
    tid: int
    fd: int
    workload: str | None
    start_ns: int
    end_ns: int
    method: str | None
    route: str  # "METHOD path", or "other" beyond the per-workload cap
    status: int | None
    trace_id: bytes | None
    parent_id: bytes | None
    span_id: bytes | None  # the runtime's, from the trace-context map
    trace_source: str | None  # traceparent | x-traceid-bytes | trace_ctx
    trace_flags: int | None
    tracestate: str | None
    preempted_ns: int | None  # None: the thread changed, or the scheduler probe had no entry
    migrations: int | None
    bypassed: bool | None
    queued_ns: int | None = None  # run-queue wait of the wake-up charged to it (RequestRecord)
    queued_wakeup: int | None = None
    read_end_ns: int | None = None  # when the read that brought its head returned
    path: str | None = None  # the request's path as sent (no query string, at most 64 chars)
    version: str | None = None  # HTTP version of a traced request's start line ("1.1")
    # (local, remote) of its connection as its network namespace names them; None: closed
    # before the collector read it, or not TCP.
    host: tuple[str, int] | None = None  # a traced request's Host header (address, port)
    endpoints: tuple[Endpoint, Endpoint] | None = None

    @property
    def duration_ns(self) -> int:
        return self.end_ns - self.start_ns


# Request and Trace are built positionally once per request (``_request``, ``trace_of``).
fields_in_order(Request, (
    "pid", "tid", "fd", "workload", "start_ns", "end_ns", "method", "route", "status", "trace_id",
    "parent_id", "span_id", "trace_source", "trace_flags", "tracestate", "preempted_ns",
    "migrations", "bypassed", "queued_ns", "queued_wakeup", "read_end_ns", "path", "version",
    "host", "endpoints"), "correlate.RequestTracker._request")  # fmt: skip
# feed and _enter unpack RequestRecords by position.
fields_in_order(RequestRecord, (
    "tgid", "fd", "start_ns", "end_ns", "tid", "end_tid", "preempt_start_ns", "preempt_end_ns",
    "migrations_start", "migrations_end", "status", "data", "ctx_trace_id", "ctx_span_id",
    "wake_ns", "queued_ns", "wakeup_seq"), "correlate.RequestTracker.feed")  # fmt: skip
fields_in_order(Trace, (
    "trace_id", "span_id", "parent_span_id", "source", "trace_flags", "tracestate", "pid", "tid",
    "workload", "start_ns", "duration_ms", "preempted_ms", "migrations", "bypassed", "method",
    "route", "status", "queued_ms", "queued_wakeup", "read_end_ns", "preemptions",
    "wakeup_waits", "path", "version", "server_address", "server_port", "local_address",
    "local_port", "client_address", "client_port"), "correlate.trace_of")  # fmt: skip


@dataclass
class _Window:
    """Completed requests of one workload whose end lies in the sliding window."""

    # (end_ns, duration_ns, route, status, pid)
    entries: deque = field(default_factory=deque)
    pids: Counter = field(default_factory=Counter)  # processes that answered them: entries each
    routes: Counter = field(default_factory=Counter)
    statuses: Counter = field(default_factory=Counter)
    # Named routes holding a place under the cap: taken by a route's first request, given back
    # when its last request leaves the window (or when the route was named but its requests
    # not yet taken in), so a route that keeps getting traffic keeps its name and one that
    # stopped makes room, whoever came first.
    named: set[str] = field(default_factory=set)
    evicted: int = 0  # left the window early because of the cap
    evicted_until_ns: int = 0  # end time of the newest of those
    ended: list[int] = field(default_factory=list)  # durations added since the last figures

    def evict(self, cap: int) -> None:
        """The oldest entries beyond ``cap`` leave early (counted)."""
        while len(self.entries) > cap:
            end, *_ = self._pop()
            self.evicted += 1
            self.evicted_until_ns = max(self.evicted_until_ns, end)

    def _pop(self) -> tuple:
        entry = self.entries.popleft()
        _, _, route, status, pid = entry
        for counter, key in ((self.routes, route), (self.statuses, status), (self.pids, pid)):
            counter[key] -= 1
            if not counter[key]:
                del counter[key]
        if route not in self.routes:
            self.named.discard(route)
        return entry

    def expire(self, since_ns: int) -> None:
        while self.entries and self.entries[0][0] < since_ns:
            self._pop()


class RequestTracker:
    """Feed it captured messages in time order; take completed requests and window figures."""

    def __init__(
        self,
        *,
        window_s: float = DEFAULT_WINDOW_S,
        max_window_requests: int = DEFAULT_MAX_WINDOW_REQUESTS,
        max_paths: int = DEFAULT_MAX_PATHS,
        route_templates: Iterable[str] | Mapping[str, Iterable[str]] = (),
        keep_paths: bool = False,
    ) -> None:
        if window_s <= 0 or max_window_requests < 1 or max_paths < 0:
            raise ValueError("window and caps must be positive")
        # Routes as the services name them (collector.route_templates), before the default
        # folding of id-like segments: one list for every workload, or lists by shell pattern
        # over a workload's names. Each distinct combination of lists is a numbered set (set 0
        # holds a plain list's templates, or none); a (set, method, path) answer is kept,
        # bounded as the default's.
        if isinstance(route_templates, Mapping):
            self._patterns = tuple(
                (pattern, compile_templates(ts)) for pattern, ts in route_templates.items()
            )
            self._sets: list[tuple] = [()]
        else:
            self._patterns = ()
            self._sets = [compile_templates(route_templates)]
        self._per_workload = bool(self._patterns)
        self._set_number: dict[tuple, int] = {s: i for i, s in enumerate(self._sets)}
        self._set_of_names: dict[tuple[str, ...], int] = {}
        # The path as sent on each Request and Trace (a span's url.path) only when asked for:
        # a path may hold a secret (a reset token) that the route folds away (docs/tracing.md).
        self.keep_paths = keep_paths
        self._templated: dict[tuple[int, str, str], str] = {}
        self.window_ns = int(window_s * 1e9)
        self.max_window_requests = max_window_requests
        self.max_paths = max_paths
        # fed, not yet taken: (record, head, workload, route, connection_of) each
        self._done: list[tuple] = []
        self._windows: dict[str, _Window] = {}
        # Since start: every header problem by reason, and requests not fully attributed.
        self.counters: Counter = Counter({f"trace_header_{r}": 0 for r in REASONS})
        self.counters["requests_paths_other"] = 0
        self.counters["requests_method_other"] = 0
        self.counters["requests_cross_thread"] = 0

    # -- feeding --------------------------------------------------------------------------
    def feed(
        self,
        records: Iterable[RequestRecord],
        workload_of: Callable[[int], str | None],
        connection_of: Callable[[int, int, int], ConnInfo] = lambda *_: NO_CONNECTION,
        identity_of: Callable[[int], tuple[str | None, Sequence[str]]] | None = None,
    ) -> None:
        """Parse and attribute captured requests (counting every header problem), and enter
        each into its workload's window; they wait, as small tuples, for ``take`` or
        ``take_traced``, which make Requests of them.
        ``connection_of(pid, fd, start_ns)`` (the endpoints of the connection the fd held for
        the request, and whether it took the socket bypass) is asked then, only for the
        Requests made. ``identity_of(pid)``: its workload and the names its workload's route
        templates are chosen by (``workload_names``), asked instead of ``workload_of`` when the
        templates are per workload. Either is asked once per process and batch."""
        workloads: dict[int, tuple[str | None, int]] = {}  # (workload, its template set)
        per_workload = self._per_workload
        if per_workload and len(self._sets) > MAX_ROUTE_CACHE:  # never within a batch
            self._sets = [()]
            self._set_number = {(): 0}
            self._set_of_names.clear()
            self._templated.clear()
        # "METHOD route" of (workload, method, path) in this batch, once named: while the route
        # holds its place in its window's named set (an eviction by the cap can give it back
        # mid-batch), the answer is the same as _route's, without its work. Routes not named
        # are asked each time.
        named: dict[tuple, str] = {}
        counters = self.counters
        done = self._done
        records = records if type(records) is list else list(records)
        fast, cap, windows = _feed_known, self.max_window_requests, self._windows
        i, n = 0, len(records)
        while i < n:
            if fast is not None:
                # The common case, compiled: every record it takes is fed and entered as the
                # loop below would; it stops at the first it does not, which the loop feeds.
                i = fast(records, i, Head, workloads, named, windows, done, connection_of, cap)
                if i >= n:
                    break
            rec = records[i]
            i += 1
            # RequestRecord's fields by position: no attribute lookup per field and request
            (tgid, _fd, _start, _end, tid, end_tid, _p0, _p1, _m0, _m1, _status, data, _ctx,
             _span, _wake, _queued, _seq) = rec  # fmt: skip
            head = parse_head(data)
            if isinstance(head, str):
                counters[f"trace_header_{head}"] += 1
                continue
            if head.kind != "request":  # the kernel paired it by its first bytes only
                counters["trace_header_bad_start_line"] += 1
                continue
            for problem in head.problems:
                counters[f"trace_header_{problem}"] += 1
            known = workloads.get(tgid)
            if known is None:  # once per process and batch: identifying is not free
                if per_workload and identity_of is not None:
                    wl, names = identity_of(tgid)
                    known = workloads[tgid] = (wl, self._template_set(names))
                else:
                    known = workloads[tgid] = (workload_of(tgid), 0)
            workload, tset = known
            if tid != end_tid:
                counters["requests_cross_thread"] += 1  # per-thread figures do not subtract
            key = (workload, tset, head.method, head.path)
            route = named.get(key)
            win = self._window(workload)
            # A route named in this batch may have given its place back since (an eviction):
            # then _route decides again, as it would for a request fed on its own.
            if route is None or route not in win.named:
                route = self._route(workload, tset, head)
                if route != OTHER_ROUTE:
                    named[key] = route
            done.append((rec, head, workload, route, connection_of))
            # Into the window now, as the compiled path does: an eviction that gives a route's
            # name back counts for the next request of this batch.
            self._enter(win, rec, route)

    def _route(self, workload: str | None, tset: int, head: Head) -> str:
        if head.method not in METHODS:
            self.counters["requests_method_other"] += 1
            return OTHER_ROUTE
        route = self._method_route(tset, head.method, head.path or "")
        win = self._window(workload)
        if route not in win.named:
            if len(win.named) >= self.max_paths:
                self.counters["requests_paths_other"] += 1
                return OTHER_ROUTE
            win.named.add(route)
        return route

    def _method_route(self, tset: int, method: str, path: str) -> str:
        templates = self._sets[tset]
        if not templates or may_be_cut(path):
            # A path the parser may have cut matches no template: its last segment, or the
            # segments after it, are not known (route_path makes that segment :cut).
            return method_route(method, path)
        key = (tset, method, path)
        route = self._templated.get(key)
        if route is None:
            if len(self._templated) >= MAX_ROUTE_CACHE:
                self._templated.clear()
            template = template_route(templates, path)
            route = f"{method} {template}" if template else method_route(method, path)
            self._templated[key] = route
        return route

    def _template_set(self, names: Sequence[str]) -> int:
        """The number of the template set of a workload with these names: the templates of
        every pattern that matches one of them, in the order configured."""
        names = tuple(names)
        tset = self._set_of_names.get(names)
        if tset is None:
            if len(self._set_of_names) >= MAX_ROUTE_CACHE:
                self._set_of_names.clear()
            chosen = tuple(
                t for pattern, ts in self._patterns if matches(pattern, names) for t in ts
            )
            tset = self._set_number.get(chosen)
            if tset is None:  # at most one set per combination of patterns: bounded
                tset = self._set_number[chosen] = len(self._sets)
                self._sets.append(chosen)
            self._set_of_names[names] = tset
        return tset

    def _window(self, workload: str | None) -> _Window:
        win = self._windows.get(workload or "")
        if win is None:  # not setdefault: that would build a _Window on every call
            win = self._windows[workload or ""] = _Window()
        return win

    def _request(
        self,
        rec: RequestRecord,
        head: Head,
        workload: str | None,
        route: str,
        connection_of: Callable[[int, int, int], ConnInfo],
    ) -> Request:
        # RequestRecord's fields by position: one unpack rather than an attribute lookup each
        (tgid, fd, start, end, tid, end_tid, p0, p1, m0, m1, status, data, ctx_trace, ctx_span,
         wake, queued, seq) = rec  # fmt: skip
        preempted = migrations = None
        if tid == end_tid and p1 is not None:
            # No entry at the read, one at the write: the first switch-out fell inside.
            preempted = p1 - (p0 or 0)
            migrations = m1 - (m0 or 0)  # type: ignore[operator]
        trace_id, source, span_id = head.trace_id, head.trace_source, None
        if ctx_trace is not None:
            if trace_id is None:
                trace_id, source = ctx_trace, "trace_ctx"
            if ctx_trace == trace_id:  # the runtime's span is of another trace's otherwise
                span_id = ctx_span
        endpoints, bypassed = connection_of(tgid, fd, start)
        # Fields in Request's order, built without NamedTuple.__new__'s Python call: pid, tid,
        # fd, workload, start_ns, end_ns, method, route, status, trace_id, parent_id, span_id,
        # trace_source, trace_flags, tracestate, preempted_ns, migrations, bypassed, queued_ns,
        # queued_wakeup, read_end_ns, path, version, host, endpoints.
        return new_record(  # type: ignore[no-any-return]
            Request,
            (tgid, tid, fd, workload, wake if wake and wake <= start else start, end,
             head.method, route, status, trace_id, head.parent_id, span_id, source,
             head.trace_flags, head.tracestate, preempted, migrations, bypassed, queued, seq,
             start, head.path if self.keep_paths else None,
             *(_NO_PAIR if trace_id is None else _meta(data)), endpoints),
        )  # fmt: skip

    # -- taking ---------------------------------------------------------------------------
    def take(self) -> list[Request]:
        """Requests completed since the previous take (each entered its window when fed)."""
        done, self._done = self._done, []
        request = self._request
        return [request(*entry) for entry in done]

    def take_traced(self, limit: int) -> tuple[list[Request], int]:
        """``take`` for who keeps only the requests with a trace id, at most ``limit`` of them:
        those Requests (the first ones, in take's order) and how many there were in all. Every
        request entered its window when fed, as with ``take``; no Request is made for the rest."""
        done, self._done = self._done, []
        kept: list[Request] = []
        traced = 0
        for entry in done:
            if entry[1].trace_id is not None or entry[0].ctx_trace_id is not None:
                traced += 1
                if len(kept) < limit:
                    kept.append(self._request(*entry))
        return kept, traced

    def _enter(self, win: _Window, rec: RequestRecord, route: str) -> None:
        """A fed request into its workload's window: its entry, its duration among those ended
        since the last figures, its route and status counted; the oldest beyond the cap
        evicted (probes/_tracefast.c feed_one does the same)."""
        (tgid, _fd, start, end, _tid, _end_tid, _p0, _p1, _m0, _m1, status, _data, _ctx, _span,
         wake, _queued, _seq) = rec  # fmt: skip
        if wake and wake <= start:
            start = wake
        win.pids[tgid] += 1
        win.entries.append((end, end - start, route, status, tgid))
        win.ended.append(end - start)
        win.routes[route] += 1
        win.statuses[status] += 1
        if len(win.entries) > self.max_window_requests:
            win.evict(self.max_window_requests)

    def figures(self, now_ns: int) -> dict[str, RequestFigures]:
        """Per workload: exact latency quantiles over the requests that ended in the window."""
        since = now_ns - self.window_ns
        out: dict[str, RequestFigures] = {}
        for key, win in list(self._windows.items()):
            win.expire(since)
            if not win.entries:
                if win.evicted_until_ns < since:
                    del self._windows[key]
                continue
            complete = win.evicted_until_ns < since
            out[key] = window_figures(win, self.window_ns / 1e9, complete=complete)
        return out

    def pids_of(self, workload: str) -> set[int]:
        win = self._windows.get(workload)
        return set(win.pids) if win else set()


def window_figures(win: _Window, window_s: float, *, complete: bool) -> RequestFigures:
    """The window's quantiles, and the requests that ended since the previous call (bucketed
    for cumulative histograms: exporters add these up, Snapshot after Snapshot)."""
    durations = sorted(d for _, d, *_ in win.entries)
    ended, win.ended = win.ended, []

    def q(p: float) -> float:
        return exact_quantile(durations, p) / 1e6

    return RequestFigures(
        count=len(durations),
        window_s=window_s,
        latency_ms=LatencyQuantiles(
            p50=q(0.50), p90=q(0.90), p99=q(0.99), p999=q(0.999), max=durations[-1] / 1e6
        ),
        complete=complete,
        evicted=win.evicted,
        by_status={str(k): v for k, v in sorted(win.statuses.items(), key=lambda kv: str(kv[0]))},
        by_route=dict(sorted(win.routes.items())),
        sum_ms=sum(durations) / 1e6,
        ended=len(ended),
        ended_duration_sum_ms=sum(ended) / 1e6,
        ended_buckets=duration_buckets(ended),
    )


def duration_buckets(durations_ns: list[int]) -> tuple[int, ...]:
    """Counts of durations at or below each bound of DURATION_BOUNDS_MS (cumulative, as a
    Prometheus histogram's ``le`` buckets; the +Inf bucket is the count)."""
    counts = [0] * len(DURATION_BOUNDS_MS)
    for d in durations_ns:
        i = bisect_left(_BOUNDS_NS, d)
        if i < len(counts):
            counts[i] += 1
    return tuple(accumulate(counts))


def trace_of(r: Request) -> Trace:
    """The Snapshot's view of a request that carries a trace id."""
    assert r.trace_id is not None
    # wasmtop's own span for this request when none was given (random, as W3C asks; not a
    # secret, so not a getrandom syscall per request).
    span = r.span_id or _SPAN_IDS.getrandbits(64).to_bytes(8, "big")
    (pid, tid, _fd, workload, start_ns, end_ns, method, route, status, trace_id, parent_id,
     _span, source, flags, tracestate, preempted_ns, migrations, bypassed, queued_ns,
     queued_wakeup, read_end_ns, path, version, _host, endpoints) = r  # fmt: skip
    (local_address, local_port), (client_address, client_port) = endpoints or _NO_ENDPOINTS
    # Fields in Trace's order (checked at import, above).
    return new_record(  # type: ignore[no-any-return]
        Trace,
        (trace_id.hex(), span.hex(), parent_id.hex() if parent_id else None, source or "",
         flags, tracestate, pid, tid, workload, start_ns, (end_ns - start_ns) / 1e6,
         None if preempted_ns is None else preempted_ns / 1e6, migrations, bypassed, method,
         route, status, None if queued_ns is None else queued_ns / 1e6, queued_wakeup,
         read_end_ns, (), (), path, version, *(r.host or _NO_PAIR), local_address, local_port,
         client_address, client_port),
    )  # fmt: skip


_Event = TypeVar("_Event", bound=Union[PreemptionEvent, WakeupWaitEvent])


def attach_events(traces: Iterable[Trace], events: Events) -> tuple[Trace, ...]:
    """The traces of a Snapshot, each carrying its thread's over-threshold events of the same
    Snapshot (``Trace.preemptions``, ``Trace.wakeup_waits``): the entries of
    ``events.preemptions`` and ``events.wakeup_waits`` of its process and thread whose ``ts_ns``
    lies between the request's start and end (``start_ns + duration_ms``, both included), in the
    order ``events`` lists them. Only the events the Snapshot kept (``max_events``) can be
    attached; an event may belong to more than one trace (requests of one thread that overlap)."""
    preempted = _by_tid(events.preemptions)
    waited = _by_tid(events.wakeup_waits)
    out = []
    for t in traces:
        p = _within(t, preempted.get(t.tid))
        w = _within(t, waited.get(t.tid))
        if p != t.preemptions or w != t.wakeup_waits:  # most traces have none: kept as they are
            t = t._replace(preemptions=p, wakeup_waits=w)
        out.append(t)
    return tuple(out)


def _by_tid(events: Iterable[_Event]) -> dict[int, list[_Event]]:
    out: dict[int, list[_Event]] = {}
    for ev in events:
        out.setdefault(ev.tid, []).append(ev)
    return out


def _within(t: Trace, candidates: list[_Event] | None) -> tuple[_Event, ...]:
    """The events of the trace's process and thread between its start and its end."""
    if not candidates:
        return ()
    end = t.start_ns + round(t.duration_ms * 1e6)  # the end of the span OTLP sends
    return tuple(e for e in candidates if e.pid == t.pid and t.start_ns <= e.ts_ns <= end)


@dataclass
class TraceSelector:
    """Which processes the trace-context probe traces: the pids asked for, processes whose comm
    was asked for, and, when nothing was asked for, every process of a WebAssembly runtime."""

    pids: frozenset[int] = frozenset()
    comms: frozenset[str] = frozenset()
    cgroups: tuple[str, ...] = ()

    @property
    def wasm_default(self) -> bool:
        return not (self.pids or self.comms or self.cgroups)

    def wants(self, pid: int, comm: str | None, kind: str | None) -> bool:
        if pid in self.pids:
            return True
        if comm is not None and comm in self.comms:
            return True
        return self.wasm_default and kind == "wasm"
