"""Alertmanager client: tells every configured Alertmanager about firing and resolved alerts the
way Prometheus does, so an Alertmanager cannot tell wasmtop from a Prometheus server.

Sending rules (Prometheus ``rules/alerting.go``: ``needsSending``, ``sendAlerts``; and
``notifier/notifier.go``), keyed by the alert's labels:

* A firing alert is sent when first seen and then whenever more than ``resend_interval_s`` has
  passed since it was last sent (at an evaluation: with evaluations further apart, at each). Its
  ``endsAt`` is now + 4 times the larger of the two intervals: Alertmanager resolves an alert by
  itself once ``endsAt`` passes, so if wasmtop dies its alerts clear after four missed resends
  instead of firing forever, while one or two lost POSTs change nothing.
* A resolved alert is sent at once with ``endsAt`` = the resolution time, and sent again at every
  resend interval for ``resolved_resend_s`` (Prometheus: 15 min, here 5 min by default), so an
  Alertmanager that was down or restarted at the moment of resolution still hears of it. Then it
  is forgotten.
* An alert that was firing and is no longer reported at all (its rule was removed, its series
  vanished) is resolved at that evaluation: nothing is left to expire by ``endsAt`` alone.
* An alert that fires again after it resolved is a new alert and is sent at once.
* Every batch goes to every Alertmanager: an HA pair deduplicates by itself (gossip), and
  load-balancing would leave each member with half the picture.

Delivery differs from Prometheus on one point: Prometheus drops a batch that failed and relies on
the next resend, which for a resolution can mean a full resend interval of a stale page. Here each
Alertmanager has its own sender thread holding the latest payload per alert until it is accepted,
retrying with capped exponential backoff; a newer state of the same alert replaces the older one.
At most ``MAX_PENDING`` alerts wait per Alertmanager (beyond, the oldest resolutions go first,
counted): memory stays bounded however long an Alertmanager is down. A redirect is not followed
(urllib would repeat the POST as a GET without its body, which Alertmanager answers 200): it is
a failure, logged with its Location.
"""

from __future__ import annotations

import http.client
import json
import logging
import random
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Callable

from .. import logs  # noqa: F401 - the log's default format
from ..safe import safe
from .notice import Notice

Fingerprint = tuple[tuple[str, str], ...]

# Prometheus sends at most this many alerts per POST (notifier.go maxBatchSize).
MAX_BATCH = 256
_FIRST_BACKOFF_S = 0.5
_MAX_BACKOFF_S = 30.0
MAX_PENDING = 10_000  # alerts waiting for one Alertmanager
_ANSWER_BYTES = 64 * 1024  # of an answer, read at most
# Answers that refuse the alerts themselves (invalid, too large): dropped, not retried. Any
# other 4xx (401/403 of a proxy, 404 of a wrong path, 408) says nothing about the alerts: they
# wait and are retried, as after a 5xx or 429, and the status is logged once.
_REFUSED = frozenset((400, 413, 422))
_COUNTERS = (
    "posts_ok",
    "posts_failed",
    "alerts_sent",
    "rejected",
    "retries",
    "dropped_overflow",
)


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A 3xx comes back as an HTTPError instead of being followed: a POST repeated as a GET
    would be answered 200 with Alertmanager's alert list, every alert lost and counted sent."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


# No proxy from the environment: Alertmanagers are normally on the local network, and an
# http_proxy meant for the internet silently swallowing alerts is worse than no proxy support.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirects())


_LOG = logging.getLogger("wasmtop.alertmanager")  # formatted by wasmtop/logs.py (imported)


def _log(message: str) -> None:
    _LOG.warning(message)


@dataclass
class _Tracked:
    notice: Notice
    last_sent_s: float
    resolved_at_s: float | None = None


@dataclass(frozen=True)
class _Item:
    """One alert waiting to be posted. Firing alerts get their ``endsAt`` when the POST is built
    (``ends_at_s`` None), so one that waited through retries is not sent already expired."""

    notice: Notice
    ends_at_s: float | None

    def payload(self, now_s: float, valid_for_s: float) -> dict[str, Any]:
        # Never before startsAt (Alertmanager refuses such an alert): a clock stepped back
        # below an alert's start still sends one that lasts its validity from the start.
        ends = (
            self.ends_at_s
            if self.ends_at_s is not None
            else max(now_s, self.notice.starts_at_s) + valid_for_s
        )
        return self.notice.payload(ends)


class _Sender:
    """The thread posting to one Alertmanager, so one that hangs or is down delays only itself."""

    def __init__(
        self,
        url: str,
        *,
        valid_for_s: float,
        max_backoff_s: float,
        timeout_s: float,
        clock: Callable[[], float],
    ) -> None:
        self.url = url
        self._endpoint = url.rstrip("/") + "/api/v2/alerts"
        self._valid_for_s = valid_for_s
        self._max_backoff_s = max_backoff_s
        self._timeout_s = timeout_s
        self._clock = clock
        self._lock = threading.Lock()
        self._pending: dict[Fingerprint, _Item] = {}
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._deadline = 0.0  # monotonic; for the last flush in close()
        self._told: set[int] = set()  # statuses logged (redirects, other 4xx)
        self.counts = dict.fromkeys(_COUNTERS, 0)
        self._thread = threading.Thread(target=self._run, name=f"alertmanager {url}", daemon=True)
        self._thread.start()

    def enqueue(self, items: dict[Fingerprint, _Item]) -> None:
        with self._lock:
            self._pending.update(items)
            self._bound()
        self._wake.set()

    def _bound(self) -> None:
        """The oldest beyond MAX_PENDING dropped, counted: resolutions before firing alerts (a
        firing alert left unsaid is a page missed, a resolution left unsaid ends at its alert's
        ``endsAt``), each oldest first. Called with the lock held."""
        over = len(self._pending) - MAX_PENDING
        if over <= 0:
            return
        resolved = [fp for fp, it in self._pending.items() if it.ends_at_s is not None]
        firing = [fp for fp, it in self._pending.items() if it.ends_at_s is None]
        for fp in (resolved + firing)[:over]:
            del self._pending[fp]
        self.counts["dropped_overflow"] += over

    def unsent(self) -> dict[Fingerprint, _Item]:
        with self._lock:
            return dict(self._pending)

    def stop(self, deadline: float) -> None:
        self._deadline = deadline
        self._stop.set()
        self._wake.set()

    def join(self, deadline: float) -> None:
        self._thread.join(max(0.0, deadline - time.monotonic()))

    def _run(self) -> None:
        failures = 0
        while True:
            self._wake.wait()
            self._wake.clear()
            if self._stop.is_set():
                break
            outcome = self._post_pending(self._timeout_s)
            if outcome == "failed":
                failures += 1
                delay = min(self._max_backoff_s, _FIRST_BACKOFF_S * 2 ** (failures - 1))
                # Equal jitter: Alertmanager restarts do not get every client at the same instant.
                if self._stop.wait(delay * (0.5 + random.random() / 2)):
                    break
                self.counts["retries"] += 1
                self._wake.set()
            else:
                failures = 0
                if outcome == "more":
                    self._wake.set()
        self._flush_resolved()

    def _flush_resolved(self) -> None:
        """A resolution not delivered before shutdown leaves a page open until its ``endsAt``:
        try once more, within what close() allows. Firing alerts stay pending for carry_over()."""
        outcome = "more"
        while outcome == "more":
            left = self._deadline - time.monotonic()
            if left <= 0.05:
                return
            outcome = self._post_pending(min(self._timeout_s, left), resolved_only=True)

    def _post_pending(self, timeout_s: float, *, resolved_only: bool = False) -> str:
        """ "ok", "more" (ok, and more than one batch was waiting), "rejected" or "failed"."""
        with self._lock:
            waiting = [
                (fp, it)
                for fp, it in self._pending.items()
                if not resolved_only or it.ends_at_s is not None
            ]
        batch, more = waiting[:MAX_BATCH], len(waiting) > MAX_BATCH
        if not batch:
            return "ok"
        now = self._clock()
        body = json.dumps([it.payload(now, self._valid_for_s) for _, it in batch]).encode()
        status, detail = self._post(body, timeout_s)
        if status is not None and 200 <= status < 300:
            outcome = "more" if more else "ok"
            self.counts["posts_ok"] += 1
            self.counts["alerts_sent"] += len(batch)
        elif status in _REFUSED:
            # The same payload would be refused again: retrying would only block newer states.
            outcome = "more" if more else "rejected"
            self.counts["rejected"] += 1
            _log(f"{self._endpoint} rejected {len(batch)} alerts: HTTP {status}: {detail}")
        else:
            self.counts["posts_failed"] += 1
            if status is not None and status < 500 and status != 429 and status not in self._told:
                self._told.add(status)  # once each: it fails the same way at every retry
                why = (
                    f"to {detail or 'nowhere'}: not followed (alertmanager.urls must name the "
                    "address Alertmanager answers at)"
                    if status < 400
                    else f"({detail or 'no detail'}): no Alertmanager API there, or not for us"
                )
                _log(f"{self._endpoint} answered HTTP {status} {why}; retrying")
            return "failed"
        with self._lock:
            for fp, it in batch:
                if self._pending.get(fp) is it:  # not replaced by a newer state meanwhile
                    del self._pending[fp]
        return outcome

    def _post(self, body: bytes, timeout_s: float) -> tuple[int | None, str]:
        req = urllib.request.Request(
            self._endpoint,
            data=body,
            method="POST",
            headers={"Content-Type": "application/json"},
        )
        try:
            with _OPENER.open(req, timeout=timeout_s) as resp:
                resp.read(_ANSWER_BYTES)  # nothing in it is used: bounded
                return resp.status, ""
        except urllib.error.HTTPError as err:
            if 300 <= err.code < 400:
                return err.code, safe(err.headers.get("Location", ""))[:200]
            try:
                detail = err.read(500).decode(errors="replace").strip()
            except (OSError, http.client.HTTPException):
                detail = ""
            return err.code, detail
        except (OSError, http.client.HTTPException, ValueError) as exc:
            return None, str(exc)


class Notifier:
    """Decides which alerts Alertmanager must hear about (Prometheus' rules, module docstring) and
    hands them to one sender thread per Alertmanager, so the evaluation loop never waits on the
    network."""

    def __init__(
        self,
        urls: Sequence[str],
        *,
        resend_interval_s: float = 60.0,
        resolved_resend_s: float = 300.0,
        timeout_s: float = 5.0,
        eval_interval_s: float = 0.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        # The same Alertmanager listed twice gets each alert once.
        self.urls = tuple(dict.fromkeys(u.rstrip("/") for u in urls))
        self.resend_interval_s = resend_interval_s
        self.resolved_resend_s = resolved_resend_s
        self._clock = clock
        self._lock = threading.Lock()
        self._alerts: dict[Fingerprint, _Tracked] = {}
        self._closed = False
        self._senders = [
            _Sender(
                url,
                # Re-sent at evaluations only: valid for four of whichever comes later.
                valid_for_s=4 * max(resend_interval_s, eval_interval_s),
                max_backoff_s=min(resend_interval_s, _MAX_BACKOFF_S),
                timeout_s=timeout_s,
                clock=clock,
            )
            for url in self.urls
        ]

    def carry_over(self, old: Notifier) -> None:
        """Continue where ``old`` (the notifier before a config reload, already closed) stopped:
        firing alerts keep their resend schedule instead of all being re-sent at once, resolved
        ones keep being re-sent for the rest of their retention, and what ``old`` could not
        deliver to an Alertmanager that is still configured is delivered by this one, and its
        counters go on from where they were. Call it before the first observe()."""
        with old._lock:
            tracked = {fp: replace(t) for fp, t in old._alerts.items()}
        with self._lock:
            for fp, t in tracked.items():
                self._alerts.setdefault(fp, t)
        old_senders = {s.url: s for s in old._senders}
        for s in self._senders:
            if s.url in old_senders:
                was = old_senders[s.url]
                for k, n in was.counts.items():  # an Alertmanager kept: its counters go on
                    s.counts[k] += n
                unsent = was.unsent()
                if unsent:
                    s.enqueue(unsent)

    def observe(self, active: Sequence[Notice], resolved: Sequence[Notice]) -> None:
        """Called after every evaluation with the firing alerts and those that resolved at this
        evaluation; returns at once, the POSTs happen on the sender threads."""
        now = self._clock()
        out: dict[Fingerprint, _Item] = {}
        with self._lock:
            if self._closed:
                return
            seen: set[Fingerprint] = set()
            for n in active:
                fp = n.fingerprint
                seen.add(fp)
                t = self._alerts.get(fp)
                if t is None or t.resolved_at_s is not None:  # new, or firing again
                    self._alerts[fp] = _Tracked(n, now)
                    out[fp] = _Item(n, None)
                    continue
                t.notice = n  # annotations may have changed
                if self._due(now, t.last_sent_s):
                    t.last_sent_s = now
                    out[fp] = _Item(n, None)
            for n in resolved:
                fp = n.fingerprint
                if fp in seen:  # firing wins: the evaluator reported both at once
                    continue
                seen.add(fp)
                at = n.resolved_at_s if n.resolved_at_s is not None else now
                t = self._alerts.get(fp)
                if t is not None and t.resolved_at_s == at:
                    continue  # already known: keeps its resend schedule
                self._alerts[fp] = _Tracked(n, now, at)
                out[fp] = _Item(n, at)
            for fp, t in list(self._alerts.items()):
                if fp in seen:
                    continue
                if t.resolved_at_s is None:  # vanished without a resolution: resolve it now
                    t.resolved_at_s = now
                    t.notice = replace(t.notice, resolved_at_s=now)
                    t.last_sent_s = now
                    out[fp] = _Item(t.notice, now)
                elif now - t.resolved_at_s > self.resolved_resend_s:
                    del self._alerts[fp]
                elif self._due(now, t.last_sent_s):
                    t.last_sent_s = now
                    out[fp] = _Item(t.notice, t.resolved_at_s)
        if out:
            for s in self._senders:
                s.enqueue(out)

    def _due(self, now: float, last_sent_s: float) -> bool:
        """A re-send is due: the interval passed, or the clock stepped back past the last send
        (NTP, a restored VM), which would otherwise hold every re-send until it caught up while
        Alertmanager lets the alerts' endsAt pass."""
        return now - last_sent_s > self.resend_interval_s or now < last_sent_s

    def families(self) -> list[Any]:
        """Its figures for /metrics (exporters/series.py families)."""
        from ..exporters.series import Family, Sample

        stats = sorted(self.stats().items())
        # One unit per family: posts (by outcome), retries, alerts.
        posts = {"ok": "posts_ok", "failed": "posts_failed", "rejected": "rejected"}
        return [
            Family(
                "wasmtop_alertmanager_posts",
                "counter",
                "Posts to each Alertmanager since start, by outcome: ok, failed (retried with "
                "backoff), rejected (400, 413 or 422: the alerts refused, dropped, logged).",
                ("url", "outcome"),
                [Sample((url, o), float(by[k])) for url, by in stats for o, k in posts.items()],
            ),
            Family(
                "wasmtop_alertmanager_retries",
                "counter",
                "Posts to each Alertmanager made again after a failure, since start.",
                ("url",),
                [Sample((url,), float(by["retries"])) for url, by in stats],
            ),
            Family(
                "wasmtop_alertmanager_alerts_dropped",
                "counter",
                "Alerts dropped unsent from an Alertmanager's queue while it could not be "
                "reached, by reason: overflow (more than 10,000 waiting; resolutions go first).",
                ("url", "reason"),
                [Sample((url, "overflow"), float(by["dropped_overflow"])) for url, by in stats],
            ),
            Family(
                "wasmtop_alertmanager_alerts_sent",
                "counter",
                "Alerts (firing and resolved) each Alertmanager accepted, since start.",
                ("url",),
                [Sample((url,), float(by["alerts_sent"])) for url, by in stats],
            ),
        ]

    def stats(self) -> dict[str, dict[str, int]]:
        """Cumulative per-Alertmanager counters, for the daemon's own metrics: ``posts_failed``
        counts failures (retried), ``rejected`` the batches refused with 400, 413 or 422 and
        dropped, ``retries`` the attempts made after a failure."""
        return {s.url: dict(s.counts) for s in self._senders}

    def pending(self) -> dict[str, int]:
        """Alerts per Alertmanager not yet answered by it (accepted, or refused with a 4xx): one
        that only grows means that Alertmanager is unreachable, and 0 everywhere means everything
        observed so far has been dealt with."""
        return {s.url: len(s.unsent()) for s in self._senders}

    def close(self, timeout_s: float = 2.0) -> None:
        """Stop the sender threads, giving each one last chance, within ``timeout_s`` overall, to
        deliver resolutions still waiting (an undelivered one keeps a page open until its
        ``endsAt``). Firing alerts still waiting are left for carry_over()."""
        with self._lock:
            self._closed = True
        deadline = time.monotonic() + timeout_s
        for s in self._senders:
            s.stop(deadline)
        for s in self._senders:
            s.join(deadline)
