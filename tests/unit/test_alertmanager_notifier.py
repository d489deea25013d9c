"""The Alertmanager client against a real HTTP server on loopback that records what it is sent:
when each alert is (re)sent and with which endsAt (a fake clock decides), and how delivery copes
with Alertmanagers that are down, failing or refusing."""

from __future__ import annotations

import json
import socket
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from peers import free_port
from support import wait_for
from wasmtop.alerts.alertmanager import Notifier
from wasmtop.alerts.evaluate import Evaluator
from wasmtop.alerts.notice import Notice, rfc3339
from wasmtop.alerts.rules import load_all

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from synthetic import snapshot  # noqa: E402 - the benchmark's Snapshot builder

T0 = 1_700_000_000.0
RESEND = 60.0


class Clock:
    def __init__(self, t: float = T0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


class Recorder:
    """Stands in for Alertmanager's POST /api/v2/alerts: keeps every body, answers ``statuses``
    in turn (then 200)."""

    def __init__(self, port: int = 0, statuses: tuple[int, ...] = ()) -> None:
        self.posts: list[list[dict[str, Any]]] = []
        self.gets = 0  # GET /api/v2/alerts: Alertmanager lists its alerts
        self.paths: list[str] = []
        self.content_types: list[str] = []
        self.statuses = list(statuses)
        rec = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                rec.paths.append(self.path)
                rec.content_types.append(self.headers["Content-Type"])
                rec.posts.append(json.loads(body))
                status = rec.statuses.pop(0) if rec.statuses else 200
                self.send_response(status)
                if 300 <= status < 400:  # where a proxy in front would send it
                    self.send_header("Location", rec.url + "/alertmanager/api/v2/alerts")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_GET(self) -> None:
                rec.gets += 1
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"[]")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    def alerts(self) -> list[dict[str, Any]]:
        return [a for post in self.posts for a in post]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@contextmanager
def recorder(port: int = 0, statuses: tuple[int, ...] = ()) -> Iterator[Recorder]:
    rec = Recorder(port, statuses)
    try:
        yield rec
    finally:
        rec.close()


@contextmanager
def notifier(*urls: str, clock: Clock | None = None, **kw: Any) -> Iterator[Notifier]:
    n = Notifier(urls, clock=clock or Clock(), resend_interval_s=RESEND, **kw)
    try:
        yield n
    finally:
        n.close(timeout_s=1)


def alert(name: str = "WasmLatencyHigh", starts: float = T0 - 120, **labels: str) -> Notice:
    return Notice(
        labels=tuple(sorted({"alertname": name, "severity": "page", **labels}.items())),
        annotations=(("summary", f"{name} on node-a"),),
        starts_at_s=starts,
        resolved_at_s=None,
        generator_url="http://node-a:9100/alerts",
    )


def drain(n: Notifier) -> None:
    """Everything observed so far has been answered by every Alertmanager."""
    assert wait_for(lambda: not any(n.pending().values()), timeout_s=15), n.stats()


def test_first_sight_is_sent_at_once_as_prometheus_would():
    a = alert()
    with recorder() as rec, notifier(rec.url) as n:
        n.observe([a], [])
        drain(n)
        assert rec.paths == ["/api/v2/alerts"]
        assert rec.content_types == ["application/json"]
        assert rec.posts == [
            [
                {
                    "labels": {"alertname": "WasmLatencyHigh", "severity": "page"},
                    "annotations": {"summary": "WasmLatencyHigh on node-a"},
                    "startsAt": rfc3339(T0 - 120),
                    "endsAt": rfc3339(T0 + 4 * RESEND),
                    "generatorURL": "http://node-a:9100/alerts",
                }
            ]
        ]
        assert n.stats() == {
            rec.url: {"posts_ok": 1, "posts_failed": 0, "alerts_sent": 1, "rejected": 0,
                      "retries": 0, "dropped_overflow": 0}
        }  # fmt: skip


def test_firing_alert_is_resent_only_after_the_resend_interval_with_a_fresh_ends_at():
    clock = Clock()
    a = alert()
    with recorder() as rec, notifier(rec.url, clock=clock) as n:
        n.observe([a], [])
        drain(n)  # endsAt is computed when the POST is built: before the clock moves on
        for dt in range(1, 61):  # one evaluation a second; resent once *more* than 60 s passed
            clock.t = T0 + dt
            n.observe([a], [])
        drain(n)
        assert [x["endsAt"] for x in rec.alerts()] == [rfc3339(T0 + 240)]

        clock.t = T0 + 61
        n.observe([a], [])
        drain(n)
        assert [x["endsAt"] for x in rec.alerts()] == [rfc3339(T0 + 240), rfc3339(T0 + 301)]
        assert {x["startsAt"] for x in rec.alerts()} == {rfc3339(T0 - 120)}


def test_a_clock_stepped_back_does_not_hold_up_the_resends():
    clock = Clock()
    a = alert()
    with recorder() as rec, notifier(rec.url, clock=clock) as n:
        n.observe([a], [])
        drain(n)
        clock.t = T0 - 3600  # NTP stepped the clock back an hour, before the alert's start
        n.observe([a], [])
        drain(n)
        # Re-sent at once; its endsAt counts from its start (Alertmanager refuses one before).
        assert [x["endsAt"] for x in rec.alerts()] == [rfc3339(T0 + 240), rfc3339(T0 + 120)]
        clock.t = T0 - 3600 + 30  # and from there on, the interval as before
        n.observe([a], [])
        drain(n)
        assert len(rec.alerts()) == 2


def test_resolved_alert_is_sent_with_its_resolution_time_and_resent_for_five_minutes():
    clock = Clock()
    a = alert()
    with recorder() as rec, notifier(rec.url, clock=clock) as n:
        n.observe([a], [])
        drain(n)  # else the resolution replaces the waiting firing state: one POST
        clock.t = T0 + 10
        n.observe([], [replace(a, resolved_at_s=T0 + 9.5)])
        drain(n)
        assert [x["endsAt"] for x in rec.alerts()] == [rfc3339(T0 + 240), rfc3339(T0 + 9.5)]

        for dt in range(11, 1000):
            clock.t = T0 + dt
            n.observe([], [])
            drain(n)  # else resends of the same state merge into one POST
        resent = rec.alerts()[2:]
        # Every resend interval while less than 300 s since resolution: at +71, +132, +193, +254
        # (then +315 is more than 300 s after +9.5: forgotten).
        assert len(resent) == 4, resent
        assert {x["endsAt"] for x in resent} == {rfc3339(T0 + 9.5)}
        assert {x["startsAt"] for x in resent} == {rfc3339(T0 - 120)}


def test_alert_that_vanishes_without_resolution_is_resolved_at_that_evaluation():
    clock = Clock()
    a, b = alert("A"), alert("B")
    with recorder() as rec, notifier(rec.url, clock=clock) as n:
        n.observe([a, b], [])
        drain(n)
        clock.t = T0 + 5
        n.observe([b], [])
        drain(n)
        last = rec.alerts()[-1]
        assert last["labels"]["alertname"] == "A"
        assert last["endsAt"] == rfc3339(T0 + 5)
        assert len(rec.alerts()) == 3


def test_alert_firing_again_after_resolution_is_sent_at_once():
    clock = Clock()
    a = alert()
    with recorder() as rec, notifier(rec.url, clock=clock) as n:
        n.observe([a], [])
        drain(n)
        clock.t = T0 + 5
        n.observe([], [replace(a, resolved_at_s=T0 + 5)])
        drain(n)  # so the resolution is not merged away by the new firing state
        clock.t = T0 + 6
        again = replace(a, starts_at_s=T0 + 6)
        n.observe([again], [])
        drain(n)
        assert [(x["startsAt"], x["endsAt"]) for x in rec.alerts()] == [
            (rfc3339(T0 - 120), rfc3339(T0 + 240)),
            (rfc3339(T0 - 120), rfc3339(T0 + 5)),
            (rfc3339(T0 + 6), rfc3339(T0 + 246)),
        ]


def test_every_alertmanager_gets_every_alert():
    with recorder() as r1, recorder() as r2, notifier(r1.url, r2.url) as n:
        n.observe([alert("A"), alert("B")], [])
        drain(n)
        for rec in (r1, r2):
            assert sorted(x["labels"]["alertname"] for x in rec.alerts()) == ["A", "B"]


def test_a_down_or_hanging_alertmanager_does_not_hold_up_a_live_one():
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens: connection refused
    hang = socket.socket()  # accepts connections (backlog), never answers
    hang.bind(("127.0.0.1", 0))
    hang.listen(8)
    hanging = f"http://127.0.0.1:{hang.getsockname()[1]}"
    try:
        with recorder() as rec, notifier(dead, hanging, rec.url, timeout_s=60) as n:
            n.observe([alert()], [])
            assert wait_for(lambda: len(rec.alerts()) == 1, timeout_s=20)
            assert wait_for(lambda: n.stats()[dead]["posts_failed"] >= 2, timeout_s=20)
            assert n.stats()[rec.url]["posts_ok"] == 1
            assert n.stats()[hanging]["posts_ok"] == 0
            assert n.pending() == {dead: 1, hanging: 1, rec.url: 0}
    finally:
        hang.close()


def test_failed_posts_are_retried_and_delivered_once_the_alertmanager_is_up():
    clock = Clock()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    a = alert()
    with notifier(url, clock=clock) as n:
        n.observe([a], [])
        assert wait_for(lambda: n.stats()[url]["retries"] >= 2, timeout_s=20)
        clock.t = T0 + 100  # the POST that finally gets through is built now
        with recorder(port) as rec:
            drain(n)
            assert [x["endsAt"] for x in rec.alerts()] == [rfc3339(T0 + 100 + 240)]
        s = n.stats()[url]
        assert s["posts_failed"] >= 2 and s["retries"] >= 2
        assert s["posts_ok"] == 1 and s["alerts_sent"] == 1


def test_server_errors_and_429_are_retried():
    with recorder(statuses=(503, 429, 500)) as rec, notifier(rec.url) as n:
        n.observe([alert()], [])
        drain(n)
        assert len(rec.posts) == 4
        s = n.stats()[rec.url]
        assert (s["posts_failed"], s["retries"], s["posts_ok"], s["rejected"]) == (3, 3, 1, 0)


def test_a_400_is_counted_as_rejected_logged_and_not_retried(capfd: pytest.CaptureFixture):
    clock = Clock()
    with recorder(statuses=(400,)) as rec, notifier(rec.url, clock=clock) as n:
        n.observe([alert("A")], [])
        drain(n)
        clock.t = T0 + 1
        n.observe([alert("A"), alert("B")], [])
        drain(n)
        assert [[x["labels"]["alertname"] for x in post] for post in rec.posts] == [["A"], ["B"]]
        s = n.stats()[rec.url]
        assert (s["rejected"], s["posts_failed"], s["retries"], s["posts_ok"]) == (1, 0, 0, 1)
    err = capfd.readouterr().err
    assert err.count("rejected") == 1 and "HTTP 400" in err


def test_the_queue_of_an_alertmanager_that_is_down_is_bounded_and_drops_are_counted(monkeypatch):
    from wasmtop.alerts import alertmanager

    monkeypatch.setattr(alertmanager, "MAX_PENDING", 4)
    clock = Clock()
    url = f"http://127.0.0.1:{free_port()}"  # nobody listens
    with notifier(url, clock=clock) as n:
        n.observe([alert(f"A{i}") for i in range(3)], [])
        clock.t = T0 + 1
        n.observe([], [])  # the three vanish: resolved, and waiting
        clock.t = T0 + 2
        n.observe([alert(f"B{i}") for i in range(3)], [])
        # Six waiting, four kept: the two oldest resolutions went first.
        assert n.pending() == {url: 4}
        assert n.stats()[url]["dropped_overflow"] == 2
        waiting = n._senders[0].unsent()
        assert sorted(it.notice.labels[0][1] for it in waiting.values()) == ["A2", "B0", "B1", "B2"]


def test_a_rejected_batch_with_more_waiting_goes_on_to_the_rest_at_once():
    with recorder(statuses=(400,)) as rec, notifier(rec.url) as n:
        n.observe([alert(f"A{i}") for i in range(300)], [])
        drain(n)  # without another observe: the 44 after the refused 256 are posted
        assert [len(p) for p in rec.posts] == [256, 44]


def test_the_daemon_makes_endsat_cover_four_of_its_ticks(tmp_path):
    from wasmtop import daemon as daemon_module

    path = tmp_path / "c.yaml"
    path.write_text(
        "metrics:\n  listen: 127.0.0.1:0\ngrpc:\n  enabled: false\ncollector:\n  tick_s: 30\n"
        "alertmanager:\n  urls: [http://127.0.0.1:9]\n  resend_interval_s: 5\n"
    )
    d = daemon_module.Daemon(path, *daemon_module.load_all(path))
    try:
        d.start_notifier()
        assert d.notifier._senders[0]._valid_for_s == 4 * 30
        first = d.notifier
        path.write_text(path.read_text().replace("tick_s: 30", "tick_s: 60"))
        d.reload()  # only the tick changed: the notifier is rebuilt for it
        assert d.notifier is not first and d.notifier._senders[0]._valid_for_s == 4 * 60
    finally:
        d.notifier.close(timeout_s=0.5)


def test_ends_at_covers_four_evaluations_when_they_are_further_apart_than_the_resend():
    a = alert()
    with recorder() as rec, notifier(rec.url, eval_interval_s=2 * RESEND) as n:
        n.observe([a], [])
        drain(n)
        assert [x["endsAt"] for x in rec.alerts()] == [rfc3339(T0 + 8 * RESEND)]


@pytest.mark.parametrize("status", [413, 422])
def test_a_413_or_422_refuses_the_alerts_themselves_dropped_and_counted(status: int):
    with recorder(statuses=(status,)) as rec, notifier(rec.url) as n:
        n.observe([alert()], [])
        drain(n)
        s = n.stats()[rec.url]
        assert (s["rejected"], s["posts_failed"], s["posts_ok"], len(rec.posts)) == (1, 0, 0, 1)


@pytest.mark.parametrize("status", [301, 302, 303, 307, 401, 403, 404, 408])
def test_a_redirect_or_a_4xx_that_says_nothing_about_the_alerts_is_retried_and_logged_once(
    status: int, capfd: pytest.CaptureFixture
):
    # Followed, a 301-303 would repeat the POST as a GET without its body: answered 200 with
    # the alert list, the alert lost and counted sent. A proxy's 401/403, a wrong path's 404:
    # the alerts were never looked at; dropped, a resolution would leave a page open.
    with recorder(statuses=(status, status)) as rec, notifier(rec.url) as n:
        n.observe([alert()], [])
        drain(n)
        assert rec.gets == 0
        assert [x["labels"]["alertname"] for x in rec.alerts()] == ["WasmLatencyHigh"] * 3
        s = n.stats()[rec.url]
        counted = [s[k] for k in ("posts_failed", "retries", "rejected", "posts_ok", "alerts_sent")]
        assert counted == [2, 2, 0, 1, 1]
    err = capfd.readouterr().err
    assert err.count(f"HTTP {status}") == 1  # once, not at every retry
    if status < 400:
        assert "/alertmanager/api/v2/alerts: not followed" in err


def test_a_newer_state_replaces_the_waiting_one_while_an_alertmanager_is_down():
    clock = Clock()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    a = alert()
    with notifier(url, clock=clock) as n:
        n.observe([a], [])
        assert wait_for(lambda: n.stats()[url]["posts_failed"] >= 1, timeout_s=20)
        clock.t = T0 + 30
        n.observe([], [replace(a, resolved_at_s=T0 + 30)])
        assert n.pending() == {url: 1}
        with recorder(port) as rec:
            drain(n)
            assert [x["endsAt"] for x in rec.alerts()] == [rfc3339(T0 + 30)]


def test_more_than_256_alerts_go_in_several_posts():
    with recorder() as rec, notifier(rec.url) as n:
        n.observe([alert(instance=str(i)) for i in range(300)], [])
        drain(n)
        assert sorted(len(p) for p in rec.posts) == [44, 256]
        assert len({x["labels"]["instance"] for x in rec.alerts()}) == 300


def test_close_makes_a_last_attempt_to_deliver_resolutions():
    clock = Clock()
    a = alert()
    with recorder(statuses=(503,) * 3) as rec:
        n = Notifier([rec.url], clock=clock, resend_interval_s=RESEND)
        try:
            n.observe([a], [])
            assert wait_for(lambda: n.stats()[rec.url]["posts_failed"] >= 3, timeout_s=20)
            clock.t = T0 + 10
            n.observe([], [replace(a, resolved_at_s=T0 + 10)])
        finally:
            n.close(timeout_s=10)
        assert rec.alerts()[-1]["endsAt"] == rfc3339(T0 + 10)
        assert n.pending() == {rec.url: 0}
        n.observe([alert("B")], [])  # after close: ignored, no error
        assert n.pending() == {rec.url: 0}


def test_carry_over_keeps_the_resend_schedule_across_a_reload():
    clock = Clock()
    a, b = alert("A"), alert("B")
    with recorder() as rec:
        with notifier(rec.url, clock=clock) as old:
            old.observe([a, b], [])
            drain(old)
            clock.t = T0 + 20
            old.observe([a], [replace(b, resolved_at_s=T0 + 20)])
            drain(old)
        assert len(rec.alerts()) == 3
        posted = old.stats()[rec.url]
        assert posted["posts_ok"] == 2
        with notifier(rec.url, clock=clock) as new:
            new.carry_over(old)
            assert new.stats()[rec.url] == posted  # the counters go on, never back to 0
            clock.t = T0 + 30
            new.observe([a], [])
            drain(new)
            assert len(rec.alerts()) == 3  # nothing re-sent just because of the reload
            clock.t = T0 + 81
            new.observe([a], [])
            drain(new)
            # A's resend is due (+81 > +0 + 60), B's resolution is resent (+81 > +20 + 60).
            assert sorted((x["labels"]["alertname"], x["endsAt"]) for x in rec.alerts()[3:]) == [
                ("A", rfc3339(T0 + 81 + 240)),
                ("B", rfc3339(T0 + 20)),
            ]


def test_an_alert_without_enough_data_is_never_posted_until_the_rule_judges_it():
    """The daemon's path: each evaluation's firing and resolved alerts go to the notifier. A
    growth slope over a short span, twenty times the threshold, is listed in the Snapshot but
    reaches no Alertmanager; once it covers its window and has held for the rule's 2 minutes,
    it is posted, with startsAt when it was first judged."""
    base = snapshot(1)
    (rule,) = [r for r in load_all([]) if r.name == "WasmtopMemoryGrowth"]
    evaluator = Evaluator([rule], node="node-a")

    def growing(covered_s: float) -> Any:
        w = base.workloads[0]
        rt = replace(w.runtime_metrics, rss_growth_mb_per_min=40.0, growth_window_s=covered_s,
                     growth_window_full_s=300.0)  # fmt: skip
        return replace(base, workloads=(replace(w, runtime_metrics=rt),))

    clock = Clock()
    with recorder() as rec, notifier(rec.url, clock=clock) as n:
        for covered in range(0, 300, 10):
            clock.t = T0 + covered
            ev = evaluator.evaluate(growing(float(covered) + 0.5), now=clock.t)
            assert [a.state for a in ev.snapshot.alerts] == ["not_enough_data"]
            n.observe(ev.firing, ev.resolved)
        drain(n)
        assert rec.posts == []
        for t in range(300, 430, 10):
            clock.t = T0 + t
            ev = evaluator.evaluate(growing(300.0), now=clock.t)
            n.observe(ev.firing, ev.resolved)
        drain(n)
        (posted,) = rec.alerts()
        assert posted["labels"]["alertname"] == "WasmtopMemoryGrowth"
        assert posted["startsAt"] == rfc3339(T0 + 300)
        assert "not_enough_data" not in posted["annotations"]
