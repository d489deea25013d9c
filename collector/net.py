"""Socket-bypass figures for the window: per-connection deltas of the probe's cumulative
counters, attributed to workloads and to workload pairs."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

from ..probes.records import BypassReading, ConnRecord
from .model import BypassEvent, Connection, NetFigures, PeerTraffic
from .sockets import SocketOwners

DELTA_FIELDS = (
    "msgs_redirected", "bytes_redirected", "msgs_passed", "bytes_passed", "msgs_failed",
    "bytes_failed", "stack_bytes",
)  # fmt: skip


def ratio(bypass: int, stack: int) -> float | None:
    total = bypass + stack
    return bypass / total if total else None


def endpoint(e: tuple[str, int]) -> str:
    host, port = e
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def conn_delta(cur: ConnRecord, prev: ConnRecord | None) -> dict[str, int]:
    """What one connection end did in the window (a new cookie starts from zero). Never below
    zero: a figure read in the kernel between two of its updates (stack bytes are bytes acked
    less a FIN, counted at different callbacks) can step back by one, and an exported counter
    that goes down is a reset to Prometheus, which then counts it all again."""
    return {f: max(0, getattr(cur, f) - (getattr(prev, f) if prev else 0)) for f in DELTA_FIELDS}


@dataclass
class _Net:
    connections: int = 0
    eligible: int = 0
    enrolled: int = 0
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(DELTA_FIELDS, 0))
    eligible_stack: int = 0
    fallbacks: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    srtt_us_max: int | None = None
    peers: dict[str | None, list[int]] = field(default_factory=dict)  # key -> [conns, msgs, b, s]

    def figures(self) -> NetFigures:
        c = self.counts
        return NetFigures(
            connections=self.connections,
            eligible_connections=self.eligible,
            bypass_connections=self.enrolled,
            bypass_msgs=c["msgs_redirected"],
            bypass_bytes=c["bytes_redirected"],
            stack_bytes=c["stack_bytes"],
            eligible_stack_bytes=self.eligible_stack,
            passed_msgs=c["msgs_passed"],
            failed_msgs=c["msgs_failed"],
            fallbacks=dict(sorted(self.fallbacks.items())),
            bypass_ratio=ratio(c["bytes_redirected"], c["stack_bytes"]),
            srtt_us_max=self.srtt_us_max,
            peers=tuple(
                PeerTraffic(peer, n, msgs, b, s, ratio(b, s))
                for peer, (n, msgs, b, s) in sorted(
                    self.peers.items(), key=lambda kv: (kv[0] is None, kv[0] or "")
                )
            ),
        )


def empty_net() -> NetFigures:
    """A workload with no TCP connection in the window, measured."""
    return _Net().figures()


@dataclass(frozen=True)
class NetWindow:
    per_workload: dict[str, NetFigures]
    pids: dict[str, set[int]]  # workload key -> pids seen with connections
    connections: tuple[Connection, ...]
    events: tuple[BypassEvent, ...]
    events_total: int
    counters: dict[str, int]


class NetAccounting:
    """Keeps the previous reading; ``window()`` turns a new one into the window's figures."""

    def __init__(self, owners: SocketOwners, max_connections: int = 1000) -> None:
        self.owners = owners
        self.max_connections = max_connections
        self._prev: dict[int, ConnRecord] = {}
        self._fallbacks_prev: dict[str, int] = {}

    def window(
        self,
        reading: BypassReading,
        workload_of: Callable[[int], str | None],
        max_events: int,
    ) -> NetWindow:
        conns = reading.conns
        unknown = [(c.local, c.remote) for c in conns.values() if not c.pid]
        owners = self.owners.resolve(unknown) if unknown else {}
        pid_of = {k: c.pid or owners.get((c.local, c.remote), 0) for k, c in conns.items()}
        by_pair = {(c.local, c.remote): k for k, c in conns.items()}
        wl_of = {k: (workload_of(pid) if pid else None) for k, pid in pid_of.items()}

        groups: dict[str, _Net] = defaultdict(_Net)
        pids: dict[str, set[int]] = defaultdict(set)
        views = []
        for cookie, c in conns.items():
            d = conn_delta(c, self._prev.get(cookie))
            peer_cookie = by_pair.get((c.remote, c.local))
            peer_wl = wl_of.get(peer_cookie) if peer_cookie is not None else None
            wl = wl_of[cookie]
            views.append(
                Connection(
                    local=endpoint(c.local),
                    remote=endpoint(c.remote),
                    pid=pid_of[cookie] or None,
                    workload=wl,
                    peer_workload=peer_wl,
                    state="closed" if c.closed_ns else "open",
                    active=c.active,
                    eligible=c.eligible,
                    enrolled=c.enrolled,
                    fallback_reason=c.fallback_reason,
                    srtt_us=c.srtt_us,
                    redirected_msgs=c.msgs_redirected,
                    redirected_bytes=c.bytes_redirected,
                    passed_msgs=c.msgs_passed,
                    passed_bytes=c.bytes_passed,
                    failed_msgs=c.msgs_failed,
                    failed_bytes=c.bytes_failed,
                    stack_bytes=c.stack_bytes,
                    bypass_ratio=ratio(c.bytes_redirected, c.stack_bytes),
                )
            )
            if wl is None:
                continue
            g = groups[wl]
            pids[wl].add(pid_of[cookie])
            g.connections += 1
            g.eligible += c.eligible
            g.enrolled += c.enrolled
            for f, v in d.items():
                g.counts[f] += v
            if c.eligible:
                g.eligible_stack += d["stack_bytes"]
            if c.fallback_reason and (
                cookie not in self._prev or not self._prev[cookie].fallback_reason
            ):
                g.fallbacks[c.fallback_reason] += 1
            if c.srtt_us:
                g.srtt_us_max = max(g.srtt_us_max or 0, c.srtt_us)
            peer = g.peers.setdefault(peer_wl, [0, 0, 0, 0])
            peer[0] += 1
            peer[1] += d["msgs_redirected"]
            peer[2] += d["bytes_redirected"]
            peer[3] += d["stack_bytes"]

        # Open connections carry over; closed ones were read for the last time.
        self._prev = {k: c for k, c in conns.items() if not c.closed_ns}
        self.owners.forget((c.local, c.remote) for c in conns.values() if c.closed_ns)

        views.sort(key=lambda v: -(v.redirected_bytes + v.stack_bytes))
        events = []
        for e in reading.events[-max_events:] if max_events else []:
            pid = e.pid or pid_of.get(e.cookie, 0)
            events.append(
                BypassEvent(
                    ts_ns=e.ts_ns,
                    pid=pid or None,
                    workload=workload_of(pid) if pid else None,
                    kind=e.kind,
                    reason=e.reason,
                    local=endpoint(e.local),
                    remote=endpoint(e.remote),
                    bytes=e.bytes,
                )
            )
        counters = {
            f"bypass_fallback_{reason}": n - self._fallbacks_prev.get(reason, 0)
            for reason, n in reading.fallbacks.items()
        }
        self._fallbacks_prev = dict(reading.fallbacks)
        counters["connections_omitted"] = max(0, len(views) - self.max_connections)
        return NetWindow(
            per_workload={k: g.figures() for k, g in groups.items()},
            pids=dict(pids),
            connections=tuple(views[: self.max_connections]),
            events=tuple(events),
            events_total=len(reading.events),
            counters=counters,
        )
