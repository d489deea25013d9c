"""Rules evaluated on each Snapshot: per rule and workload (or probe) an alert goes
inactive -> pending -> firing -> resolved, the way Prometheus moves its alerts.

- A gauge (one value per evaluation) is active while its value crosses the threshold. With
  ``for: D`` it fires once it has been active for D; with ``consecutive: N`` once it has been
  active N evaluations in a row; with neither, at once.
- An event quantity (each preemption, each cold start) counts events: ``consecutive: N`` fires
  when N events of the workload in a row cross the threshold. An event that does not cross it
  resets the count. Preemptions shorter than the kernel's reporting threshold are not sent one by
  one, but the kernel numbers each thread's preemptions: a gap in a thread's numbers between two
  reported events places the shorter ones exactly; shorter ones that cannot be placed that way
  (of threads with no reported event after them) reset the count at the end of the window.
  An event rule is active in a window where an event crossed the threshold, and fires in the
  window where the run reaches N.
- ``keep_firing_for`` keeps a firing alert firing that long after its condition stopped holding.
- When a probe feeding a rule lost more than ``loss_ratio`` of its events in the window, the
  alert says so (``incomplete_data``): its value may be missing events.
- A gauge whose value covers less than the span its quantity needs (an RSS slope over 6 s of a
  300 s growth window) is not judged: its condition does not hold (no streak, no ``for`` clock,
  as for a missing value), and where the value as it stands would cross, the alert is listed as
  ``not_enough_data`` with the span it covers and the span it needs. Such an alert is never sent
  to Alertmanager (it is neither in ``firing`` nor in ``resolved``).
- wasmtop's own workloads (``Workload.wasmtop``) are never evaluated.

The result is a new Snapshot with ``alerts`` filled, plus what to tell Alertmanager.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import time
from collections import OrderedDict, defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..collector.model import (
    WORKLOAD_LABELS,
    Alert,
    Snapshot,
    Workload,
    reporting_threshold_ms,
    workload_labels,
)
from .notice import Notice, rfc3339
from .quantities import Events
from .rules import Rule, below_reporting_floor, expand

MAX_THREADS_PER_ALERT = 4096  # per-thread event numbers kept for one workload's run


@dataclass
class _Instance:
    labels: dict[str, str]
    streak: int = 0  # consecutive crossings: events, or evaluations for gauges
    active_since: float | None = None  # unix seconds: the condition began to hold
    last_true: float | None = None  # unix seconds: the condition last held (events: N reached)
    firing: bool = False
    value: float | None = None
    incomplete: str | None = None  # why the data is incomplete, when it is
    data: tuple[float, float] | None = None  # (covered, needed) s of a quantity with a span
    last_seq: OrderedDict = field(default_factory=OrderedDict)  # thread -> its event number


@dataclass(frozen=True)
class Evaluation:
    snapshot: Snapshot  # with alerts[] filled
    firing: list[Notice]  # every firing alert
    resolved: list[Notice]  # alerts that stopped firing at this evaluation


RULES_HELP = (
    "Alert rules being evaluated on the node (0: alerts.enabled is false; a rule below "
    "probes.sched.threshold_ms is loaded but not evaluated, and not counted)."
)


def default_node(env: Mapping[str, str] = os.environ) -> str:
    """The node's name when the config names none: the downward API's NODE_NAME, else the host
    name."""
    return env.get("NODE_NAME") or socket.gethostname()


def _workload_labels(w: Workload) -> dict[str, str]:
    """workload, namespace and pod, as the exporters label the workload's series."""
    return dict(zip(WORKLOAD_LABELS[:3], workload_labels(w)))


class Evaluator:
    def __init__(
        self,
        rules: Sequence[Rule],
        *,
        node: str,
        loss_ratio: float = 0.0,
        max_per_rule: int = 100,
        say: Callable[[str], None] | None = None,
    ) -> None:
        """``say``: told once per rule that cannot be evaluated (below), e.g. a log line."""
        self.rules = list(rules)
        self.say = say
        # Rules left out of the last evaluation, name -> why: a rule on preemption events
        # below the scheduler probe's reporting threshold, which the Snapshot carries in
        # probes.sched.threshold_ms (the kernel only counts those preemptions, so the rule
        # could never fire). One policy for `wasmtop snapshot`, `wasmtop` and the daemon.
        self.unevaluated: dict[str, str] = {}
        self._said: set[str] = set()
        self.node = node
        self.loss_ratio = loss_ratio
        self.max_per_rule = max_per_rule
        # Per rule (its identity), per workload key or "probe:NAME": the alert's state.
        self._state: dict[tuple[str, str], dict[str, _Instance]] = {
            r.identity: {} for r in self.rules
        }
        self._probe_totals: dict[str, tuple[int, int]] = {}
        self.suppressed: dict[str, int] = {}  # alertname -> instances left out, last evaluation

    def carry_over(self, old: Evaluator) -> None:
        """Keep the alert states of rules that are unchanged (a config reload)."""
        for r in self.rules:
            if r in old.rules:
                self._state[r.identity] = old._state[r.identity]
        self._probe_totals = dict(old._probe_totals)

    # -- one evaluation ----------------------------------------------------------------------
    def evaluate(self, snap: Snapshot, now: float | None = None) -> Evaluation:
        now = time.time() if now is None else now
        lost = self._window_losses(snap)
        events_of: dict[str, list[Any]] = defaultdict(list)
        for e in sorted(snap.events.preemptions, key=lambda e: e.ts_ns):
            if e.workload is not None:
                events_of[e.workload].append(e)
        alerts: list[Alert] = []
        firing: list[Notice] = []
        resolved: list[Notice] = []
        self.suppressed = {}
        self.unevaluated = self._unevaluable(snap)
        for rule in self.rules:
            if rule.name in self.unevaluated:
                continue
            q = rule.quantity
            states = self._state[rule.identity]
            if q.kind == "probe":
                subjects = [
                    (f"probe:{name}", {"probe": name}, float(lost[name][1]), None)
                    for name in snap.probes
                ]
            else:  # wasmtop's own workloads never alert: their cost is not the node's problem
                subjects = [
                    (w.key, _workload_labels(w), None, w) for w in snap.workloads if not w.wasmtop
                ]
            steps: dict[str, tuple[bool, bool]] = {}
            # Gauges over too short a span that would cross as they stand: (value, covered,
            # needed). Not judged; listed as not_enough_data.
            waiting: dict[str, tuple[float, float, float]] = {}
            # A subject without state is stepped on a fresh instance, kept only if it crosses:
            # the cap counts alert instances, not the subjects looked at.
            fresh: dict[str, _Instance] = {}
            for key, labels, value, w in subjects:
                inst = states.get(key)
                if inst is None:
                    inst = fresh[key] = _Instance(labels)
                inst.labels = labels
                complete = True
                if q.kind == "event":
                    assert q.events is not None and w is not None
                    evs = q.events(snap, w, events_of.get(w.key, []))
                    steps[key] = self._step_events(rule, inst, evs, now)
                    complete = evs.complete
                else:
                    if w is not None:
                        value = q.value(snap, w)
                        inst.data = q.data_span(w)
                        short = q.short_of_data(w)
                        if short is not None:
                            if value is not None and rule.crosses(value):
                                waiting[key] = (value, *short)
                            value = None  # not enough data yet: the condition does not hold
                    steps[key] = self._step_gauge(rule, inst, value, now)
                inst.incomplete = self._incomplete(q.probe, lost, complete)
            for key in states.keys() - steps.keys():
                inst = states[key]  # its workload is gone: nothing crosses any more
                if q.kind == "event":
                    steps[key] = self._step_events(rule, inst, Events([], 0, True), now)
                else:
                    steps[key] = self._step_gauge(rule, inst, None, now)
            unjudged: list[tuple[str, _Instance]] = []  # listed as not_enough_data
            for key, (crossing, ready) in steps.items():
                if key in fresh:
                    if not crossing:
                        if key in waiting:
                            unjudged.append((key, fresh[key]))
                        continue  # no state, no streak: nothing to remember
                    if len(states) >= self.max_per_rule:
                        self.suppressed[rule.name] = self.suppressed.get(rule.name, 0) + 1
                        continue
                    states[key] = fresh[key]
                inst = states[key]
                state = self._decide(rule, inst, crossing, ready, now)
                if state is not None:
                    alert = self._alert(rule, inst, state)
                    alerts.append(alert)
                    if state == "firing":
                        firing.append(self._notice(alert, inst, None))
                if inst.firing and state != "firing":
                    resolved.append(self._notice(self._alert(rule, inst, "firing"), inst, now))
                inst.firing = state == "firing"
                if state is None:
                    if key in waiting:
                        unjudged.append((key, inst))
                    inst.active_since = None
                    if not inst.streak:
                        del states[key]
            for key, inst in unjudged[: self.max_per_rule]:
                alerts.append(self._unjudged(rule, inst, *waiting[key], now))
            if len(unjudged) > self.max_per_rule:
                self.suppressed[rule.name] = (
                    self.suppressed.get(rule.name, 0) + len(unjudged) - self.max_per_rule
                )
        return Evaluation(dataclasses.replace(snap, alerts=tuple(alerts)), firing, resolved)

    def families(self) -> list[Any]:
        """Its figures for /metrics (exporters/series.py families)."""
        from ..exporters.series import Family, Sample

        return [
            Family(
                "wasmtop_alert_rules",
                "gauge",
                RULES_HELP,
                (),
                [Sample((), float(len(self.rules) - len(self.unevaluated)))],
            ),
            Family(
                "wasmtop_alerts_suppressed",
                "gauge",
                "Alert instances left out at the last evaluation by alerts.max_alerts_per_rule.",
                ("alertname",),
                [Sample((n,), float(c)) for n, c in sorted(self.suppressed.items())],
            ),
        ]

    def _unevaluable(self, snap: Snapshot) -> dict[str, str]:
        floor = reporting_threshold_ms(snap)
        out = {
            r.name: (
                f"its threshold {r.threshold:g} ms is below the scheduler probe's reporting "
                f"threshold {floor:g} ms (probes.sched.threshold_ms, --threshold-ms): shorter "
                "preemptions are counted, not reported one by one"
            )
            for r in below_reporting_floor(self.rules, floor)
        } if floor is not None else {}  # fmt: skip
        for name, why in out.items():
            if name not in self._said and self.say is not None:
                self.say(f"rule {name} not evaluated: {why}")
        self._said = set(out)
        return out

    # -- steps -------------------------------------------------------------------------------
    def _step_gauge(
        self, rule: Rule, inst: _Instance, value: float | None, now: float
    ) -> tuple[bool, bool]:
        """(the value crosses the threshold, the alert may fire)"""
        if value is None or not rule.crosses(value):
            inst.streak = 0
            return False, False
        inst.streak += 1
        inst.value = value
        if inst.active_since is None:
            inst.active_since = now
        if rule.for_s is not None:
            ready = now - inst.active_since >= rule.for_s
        else:
            ready = inst.streak >= rule.consecutive
        if ready:
            inst.last_true = now
        return True, ready

    def _step_events(
        self, rule: Rule, inst: _Instance, evs: Events, now: float
    ) -> tuple[bool, bool]:
        """(an event crossed the threshold, a run of N was reached) in this window"""
        placed = 0
        ready = crossed = False
        for ev in evs.items:
            if ev.thread is not None and ev.seq is not None:
                last = inst.last_seq.pop(ev.thread, None)
                if last is not None and ev.seq != last + 1:
                    inst.streak = 0  # shorter events of this thread came between
                    placed += max(0, ev.seq - last - 1)
                inst.last_seq[ev.thread] = ev.seq
                if len(inst.last_seq) > MAX_THREADS_PER_ALERT:
                    inst.last_seq.popitem(last=False)
            if not rule.crosses(ev.value):
                inst.streak = 0
                continue
            if inst.streak == 0 and not inst.firing and not crossed:
                inst.active_since = now
            inst.streak += 1
            crossed = True
            if inst.streak >= rule.consecutive:
                inst.value = max(inst.value or ev.value, ev.value) if ready else ev.value
                ready = True
            elif not ready:
                inst.value = ev.value
        if evs.hidden_below > placed:
            inst.streak = 0  # shorter events we cannot place: counted at the window's end
        if ready:
            inst.last_true = now
        return crossed, ready

    @staticmethod
    def _decide(rule: Rule, inst: _Instance, crossing: bool, ready: bool, now: float) -> str | None:
        if ready:
            return "firing"
        if inst.firing and inst.last_true is not None:
            if now - inst.last_true < rule.keep_firing_for_s:
                return "firing"
        return "pending" if crossing else None

    # -- helpers -----------------------------------------------------------------------------
    def _window_losses(self, snap: Snapshot) -> dict[str, tuple[int, int]]:
        """Per probe: (events, lost) in this window, from the Snapshot's running totals."""
        out: dict[str, tuple[int, int]] = {}
        for name, p in snap.probes.items():
            events, lost = int(p.get("events") or 0), int(p.get("lost") or 0)
            prev = self._probe_totals.get(name, (0, 0))
            if events < prev[0] or lost < prev[1]:
                prev = (0, 0)  # the probe restarted: its totals began again
            out[name] = (events - prev[0], lost - prev[1])
            self._probe_totals[name] = (events, lost)
        return out

    def _incomplete(
        self, probe: str | None, lost: dict[str, tuple[int, int]], complete: bool
    ) -> str | None:
        if probe is not None and probe in lost:
            events, n = lost[probe]
            if n and n / (events + n) > self.loss_ratio:
                return (
                    f"the {probe} probe lost {n} of {events + n} events in the window "
                    f"({100 * n / (events + n):.1f} %)"
                )
        if not complete:
            return "events of the window were left out of the Snapshot (collector.max_events)"
        return None

    def _unjudged(
        self, rule: Rule, inst: _Instance, value: float, covered: float, needed: float, now: float
    ) -> Alert:
        """The alert a value over too short a span would make: listed, never judged or sent."""
        note = (
            f"not enough data yet: the value covers {covered:.0f} s of the {needed:.0f} s "
            f"{rule.quantity.name} is taken over; the rule judges it once it covers them"
        )
        return self._alert(
            rule, inst, "not_enough_data", value=value, since=now, notes={"not_enough_data": note}
        )

    def _alert(
        self,
        rule: Rule,
        inst: _Instance,
        state: str,
        *,
        value: float | None = None,
        since: float | None = None,
        notes: dict[str, str] | None = None,
    ) -> Alert:
        """``value``, ``since``: instead of the instance's (an alert not judged)."""
        labels = {
            "alertname": rule.name,
            "severity": rule.severity,
            "node": self.node,
            **{k: v for k, v in inst.labels.items() if v},
            **dict(rule.labels),
        }
        value = inst.value if value is None else value
        since = inst.active_since if since is None else since
        annotations = {k: expand(v, labels, value) for k, v in rule.annotations}
        if inst.incomplete:
            annotations["incomplete_data"] = inst.incomplete
        annotations.update(notes or {})
        data = inst.data
        return Alert(
            name=rule.name,
            state=state,
            workload=inst.labels.get("workload"),
            value=value,
            threshold=rule.threshold,
            since=rfc3339(since if since is not None else time.time()),
            severity=rule.severity,
            quantity=rule.quantity.name,
            comparator=rule.comparator,
            probe=inst.labels.get("probe"),
            incomplete_data=inst.incomplete is not None,
            labels=dict(sorted(labels.items())),
            annotations=annotations,
            data_s=data[0] if data else None,
            data_needed_s=data[1] if data else None,
        )

    def _notice(self, alert: Alert, inst: _Instance, resolved_at: float | None) -> Notice:
        return Notice(
            labels=tuple(sorted(alert.labels.items())),
            annotations=tuple(sorted(alert.annotations.items())),
            starts_at_s=inst.active_since if inst.active_since is not None else time.time(),
            resolved_at_s=resolved_at,
        )
