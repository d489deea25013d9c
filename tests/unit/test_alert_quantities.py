"""Alert quantities read the Snapshot fields their documentation names, and render to PromQL over
the metrics the daemon exports with the same meaning (same unit, same labels kept)."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from wasmtop.alerts import render
from wasmtop.alerts.evaluate import Evaluator
from wasmtop.alerts.quantities import QUANTITIES
from wasmtop.alerts.rules import parse
from wasmtop.collector.model import DelayQuantiles
from wasmtop.collector.workloads import Pod

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from synthetic import snapshot  # noqa: E402 - the benchmark's Snapshot builder

BASE = snapshot(1)
TEMPLATE = BASE.workloads[0]
BY = "node, workload, namespace, pod"


def with_sched(**figures):
    """The template workload with the given SchedFigures, and every other delay field set to
    something distinct, so reading the wrong one shows."""
    sched = dataclasses.replace(
        TEMPLATE.sched,
        **{
            "preempt_delay_us": DelayQuantiles(111.0, 222.0, 333.0),
            "preempt_delay_total_us": 7_000_000.0,
            "wakeup_delay_us": DelayQuantiles(444.0, 555.0, 666.0),
            "wakeup_delay_total_us": 9_000_000.0,
            "runq_delay_total_us": 0.0,
            **figures,
        },
    )
    return dataclasses.replace(TEMPLATE, sched=sched)


def test_wakeup_delay_p99_is_the_wakeup_p99_in_ms():
    q = QUANTITIES["sched.wakeup_delay_p99_ms"]
    assert (q.kind, q.unit, q.probe) == ("gauge", "ms", "sched")
    w = with_sched(wakeup_delay_us=DelayQuantiles(800.0, 12_345.0, 40_000.0))
    assert q.value(BASE, w) == pytest.approx(12.345)
    assert q.gauge is not None and q.gauge(w) == pytest.approx(12.345)  # what the TUI reads
    # No wake-up in the window, no scheduler figures: no value (the rule does not cross).
    assert q.value(BASE, with_sched(wakeup_delay_us=DelayQuantiles(None, None, None))) is None
    assert q.value(BASE, dataclasses.replace(TEMPLATE, sched=None)) is None


def test_run_queue_delay_per_second_is_the_window_total_over_window_s():
    q = QUANTITIES["sched.runq_delay_seconds_per_second"]
    assert (q.kind, q.unit, q.probe) == ("gauge", "s/s", "sched")
    w = with_sched(runq_delay_total_us=1_500_000.0)
    assert q.value(dataclasses.replace(BASE, window_s=2.0), w) == pytest.approx(0.75)
    assert q.value(dataclasses.replace(BASE, window_s=0.5), w) == pytest.approx(3.0)
    assert q.value(dataclasses.replace(BASE, window_s=2.0), with_sched()) == 0.0
    assert q.value(dataclasses.replace(BASE, window_s=0.0), w) is None
    assert q.value(BASE, dataclasses.replace(TEMPLATE, sched=None)) is None


def rule_on(quantity: str, threshold: float, summary: str = "s") -> str:
    return f"""rules:
  - name: Watch
    quantity: {quantity}
    threshold: {threshold}
    severity: warning
    annotations: {{summary: '{summary}'}}
"""


def test_the_new_quantities_render_over_the_exported_metrics_with_the_alert_labels():
    (p99,) = parse(rule_on("sched.wakeup_delay_p99_ms", 10))
    assert render.expression(p99, 60.0) == (
        f"histogram_quantile(0.99, sum by (le, {BY}) "
        "(rate(wasmtop_wakeup_delay_seconds_bucket[1m]))) * 1000 > 10"
    )
    (runq,) = parse(rule_on("sched.runq_delay_seconds_per_second", 0.25))
    assert render.expression(runq, 120.0) == (
        f"sum by ({BY}) (rate(wasmtop_runq_delay_seconds_total[2m])) > 0.25"
    )


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed")
def test_run_queue_delay_per_second_reads_the_same_on_the_node_and_in_prometheus(tmp_path):
    """One rule, two evaluators: the node on a Snapshot with 0.5 s of run-queue delay in a 1 s
    window, Prometheus on the counter growing 15 s every 30 s. Both fire, with the same value."""
    text = rule_on("sched.runq_delay_seconds_per_second", 0.4,
                   "{{ $labels.workload }} {{ printf \"%.3f\" $value }}")  # fmt: skip
    rules = parse(text)
    pod = Pod(namespace="edge", name="api-0", uid="u", container="app", container_id="c")
    w = dataclasses.replace(with_sched(runq_delay_total_us=500_000.0), key="pod:edge/api-0/app",
                            pod=pod)  # fmt: skip
    node = Evaluator(rules, node="n1").evaluate(
        dataclasses.replace(BASE, workloads=(w,), window_s=1.0), now=0
    )
    (alert,) = node.snapshot.alerts
    assert alert.state == "firing" and alert.annotations["summary"] == "pod:edge/api-0/app 0.500"

    (tmp_path / "rules.yaml").write_text(render.to_yaml(render.rule_groups(rules)))
    labels = {k: v for k, v in alert.labels.items() if k not in ("alertname", "severity")}
    series = ", ".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    test = {
        "rule_files": ["rules.yaml"],
        "evaluation_interval": "30s",
        "tests": [
            {
                "interval": "30s",
                "input_series": [
                    {
                        "series": f'wasmtop_runq_delay_seconds_total{{{series}, container="app"}}',
                        "values": "0+15x10",
                    },
                    {  # another workload, 0.2 s per second: below the threshold
                        "series": 'wasmtop_runq_delay_seconds_total{node="n1", workload="pid:9"}',
                        "values": "0+6x10",
                    },
                ],
                "alert_rule_test": [
                    {
                        "eval_time": "2m",
                        "alertname": "Watch",
                        "exp_alerts": [
                            {
                                "exp_labels": {"severity": "warning", **labels},
                                "exp_annotations": dict(alert.annotations),
                            }
                        ],
                    }
                ],
            }
        ],
    }
    (tmp_path / "test.yaml").write_text(yaml.safe_dump(test))
    done = subprocess.run(
        ["promtool", "test", "rules", str(tmp_path / "test.yaml")], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr
