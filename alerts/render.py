"""Rules rendered as a Prometheus rule file (or a PrometheusRule resource): the same alerts,
computed by Prometheus from the exported metrics, so a cluster can alert centrally instead of,
or as well as, on each node.

An alert keeps the labels ``node, workload, namespace, pod`` (``node, probe`` for probe
quantities), the ones the node puts on its own alerts: when both send, Alertmanager sees one
alert. Prometheus gets ``node`` from the scrape (the ServiceMonitor in deploy/ relabels the
node name into it).

What differs from the node, by necessity (docs/alerts.md says it too):
- ``consecutive: N`` on a gauge becomes ``for: (N-1) x interval`` (N evaluations in a row);
- ``consecutive: N`` on preemptions becomes "at least N preemptions above the threshold within
  ``window``", counted from the preemption-delay histogram, whose bounds the threshold must be;
- cold starts: the last cold start above the threshold, when one happened within ``window``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import yaml

from .quantities import PROBE_BY, WORKLOAD_BY
from .rules import Rule, go_float, prometheus_duration


class RenderError(ValueError):
    """A rule that cannot be expressed over the exported metrics: ``str()`` says why."""


def expression(rule: Rule, window_s: float) -> str:
    q = rule.quantity
    window = prometheus_duration(window_s)
    by = PROBE_BY if q.kind == "probe" else WORKLOAD_BY
    threshold = go_float(rule.threshold)
    if q.name == "sched.preempt_delay_ms":
        le = [b for b in q.bounds_s if abs(b * 1e3 - rule.threshold) < 1e-9]
        if not le:
            bounds = ", ".join(go_float(b * 1e3) for b in q.bounds_s)
            raise RenderError(
                f"{rule.where}: {rule.name}: threshold {threshold} ms: expected one of the "
                f"preemption-delay histogram bounds ({bounds} ms) to count it in Prometheus"
            )
        count = q.promql.format(by=by, window=window, le=repr(le[0]))
        return f"{count} >= {rule.consecutive}"
    if q.name == "runtime.cold_start_ms":
        if rule.consecutive != 1:
            raise RenderError(
                f"{rule.where}: {rule.name}: consecutive {rule.consecutive}: expected 1; "
                "Prometheus sees only the last cold start, not each one"
            )
        return q.promql.format(by=by, window=window, cmp=rule.comparator, threshold=threshold)
    return f"{q.promql.format(by=by, window=window)} {rule.comparator} {threshold}"


def alerting_rule(rule: Rule, interval_s: float, window_s: float) -> dict[str, Any]:
    out: dict[str, Any] = {"alert": rule.name, "expr": expression(rule, window_s)}
    if rule.for_s:
        out["for"] = prometheus_duration(rule.for_s)
    elif rule.quantity.kind != "event" and rule.consecutive > 1:
        out["for"] = prometheus_duration((rule.consecutive - 1) * interval_s)
    if rule.keep_firing_for_s:
        out["keep_firing_for"] = prometheus_duration(rule.keep_firing_for_s)
    out["labels"] = {"severity": rule.severity, **dict(rule.labels)}
    out["annotations"] = dict(rule.annotations)
    return out


def rule_groups(
    rules: Sequence[Rule], *, interval_s: float = 30.0, window_s: float = 60.0
) -> dict[str, Any]:
    return {
        "groups": [
            {
                "name": "wasmtop",
                "interval": prometheus_duration(interval_s),
                "rules": [alerting_rule(r, interval_s, window_s) for r in rules],
            }
        ]
    }


def prometheus_rule(
    rules: Sequence[Rule],
    *,
    name: str = "wasmtop",
    namespace: str | None = None,
    interval_s: float = 30.0,
    window_s: float = 60.0,
) -> dict[str, Any]:
    """The same groups as a prometheus-operator PrometheusRule resource."""
    metadata: dict[str, Any] = {"name": name, "labels": {"app.kubernetes.io/name": "wasmtop"}}
    if namespace:
        metadata["namespace"] = namespace
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": metadata,
        "spec": rule_groups(rules, interval_s=interval_s, window_s=window_s),
    }


def to_yaml(doc: dict[str, Any]) -> str:
    return yaml.safe_dump(doc, sort_keys=False, width=10_000, allow_unicode=True)
