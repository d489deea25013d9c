"""The Alertmanager client against two real Alertmanagers (Debian's 0.25), as an HA pair is
configured: both must list what wasmtop fires, exactly, and drop what it resolves, and one of
them going away must not cost the other anything.

Observed with 0.25: an alert posted with ``endsAt`` in the past is accepted and no longer listed
by ``GET /api/v2/alerts`` at all (neither by default, nor with ``active=true`` or
``active=false``), so "resolved" is checked as "gone from the list"."""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

from peers import alertmanager
from support import wait_for
from wasmtop.alerts.alertmanager import Notifier
from wasmtop.alerts.notice import Notice, rfc3339


def notice(name: str, starts_at_s: float) -> Notice:
    return Notice(
        labels=(("alertname", name), ("instance", "node-a:9100"), ("severity", "page")),
        annotations=(("runbook", "docs/alerts.md#" + name.lower()), ("summary", "p99 over 5 ms")),
        starts_at_s=starts_at_s,
        resolved_at_s=None,
        generator_url="http://node-a:9100/alerts",
    )


def listed(am: Any, name: str, **filters: bool) -> list[dict[str, Any]]:
    return [a for a in am.alerts(**filters) if a["labels"].get("alertname") == name]


def test_both_alertmanagers_list_the_alert_exactly_and_drop_it_when_resolved(tmp_path):
    with alertmanager(tmp_path) as am1, alertmanager(tmp_path) as am2:
        n = Notifier([am1.url, am2.url], resend_interval_s=60)
        try:
            started = round(time.time() - 30, 3)
            firing = notice("WasmtopP99High", started)
            n.observe([firing], [])
            for am in (am1, am2):
                assert wait_for(lambda am=am: listed(am, "WasmtopP99High"), timeout_s=20)
                (got,) = listed(am, "WasmtopP99High", active=True)
                assert got["labels"] == dict(firing.labels)
                assert got["annotations"] == dict(firing.annotations)
                assert got["startsAt"] == rfc3339(started)
                assert got["endsAt"] > rfc3339(time.time() + 120)  # now + 4 x 60 s when sent
                assert got["generatorURL"] == firing.generator_url
                assert got["status"]["state"] == "active"

            resolved_at = round(time.time(), 3)
            n.observe([], [replace(firing, resolved_at_s=resolved_at)])
            for am in (am1, am2):
                assert wait_for(lambda am=am: not listed(am, "WasmtopP99High"), timeout_s=20)
                assert listed(am, "WasmtopP99High", active=False) == []
            assert wait_for(lambda: not any(n.pending().values()), timeout_s=20)
            for url in (am1.url, am2.url):
                s = n.stats()[url]
                assert (s["posts_ok"], s["alerts_sent"], s["posts_failed"]) == (2, 2, 0)
        finally:
            n.close()


def test_one_alertmanager_stopping_does_not_hold_up_the_other(tmp_path):
    with alertmanager(tmp_path) as am1, alertmanager(tmp_path) as am2:
        n = Notifier([am1.url, am2.url], resend_interval_s=60, timeout_s=5)
        try:
            first = notice("WasmtopMigrationsHigh", round(time.time() - 10, 3))
            n.observe([first], [])
            for am in (am1, am2):
                assert wait_for(lambda am=am: listed(am, "WasmtopMigrationsHigh"), timeout_s=20)

            am2.stop()
            second = notice("WasmtopPreemptionHigh", round(time.time(), 3))
            n.observe([first, second], [])
            assert wait_for(lambda: listed(am1, "WasmtopPreemptionHigh"), timeout_s=20)
            assert wait_for(lambda: n.stats()[am2.url]["posts_failed"] >= 2, timeout_s=20)

            n.observe([second], [])  # first vanished: resolved now
            assert wait_for(lambda: not listed(am1, "WasmtopMigrationsHigh"), timeout_s=20)
            assert listed(am1, "WasmtopPreemptionHigh")
            assert n.pending()[am1.url] == 0
            assert n.pending()[am2.url] == 2  # both states wait for am2 to come back
            assert n.stats()[am1.url]["posts_failed"] == 0
        finally:
            n.close(timeout_s=2)
