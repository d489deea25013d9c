"""Alerts end to end on the real kernel (issue: alerts, tests 2 and 3): a victim thread is
preempted for longer than the threshold again and again by a SCHED_FIFO hog on its CPU; the
daemon's alert reaches a real Alertmanager with the right labels and resolves when the hog
stops; a real Prometheus loading the rendered rules fires the same alert into the same
Alertmanager. Also: a bad rule file at reload keeps the running rules."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from contextlib import contextmanager

import pytest

from peers import alertmanager, daemon, get, metric_value, prometheus
from support import wait_for, wasmtop_cmd

pytestmark = pytest.mark.bpf

CPU = str(max(os.sched_getaffinity(0)))
VICTIM = "\n".join(
    [
        "import os",
        f"os.sched_setaffinity(0, {{{CPU}}})",
        "print('ready', flush=True)",
        "while 1: pass",
    ]
)
# Runs 60 ms, sleeps 5 ms: each wake-up preempts the victim, which then waits about 60 ms.
HOG = textwrap.dedent(
    f"""
    import os, time
    os.sched_setaffinity(0, {{{CPU}}})
    os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(10))
    print("ready", flush=True)
    while True:
        end = time.monotonic() + 0.060
        while time.monotonic() < end:
            pass
        time.sleep(0.005)
    """
)
RULES = """
rules:
  - name: VictimPreempted
    quantity: sched.preempt_delay_ms
    threshold: 25
    consecutive: 3
    severity: page
    labels: {team: edge}
    annotations:
      summary: "{{ $labels.workload }} preempted more than {{ $threshold }} ms 3 times in a row"
      runbook_url: docs/alerts.md#wasmtoppreemptiondelay
"""
BASE = {
    "probes": {
        "sched": {"threshold_ms": 25},
        "bypass": {"mode": "off"},
        "trace": {"enabled": False},
        "lifecycle": {"enabled": False},
    },
    "alerts": {"rule_files": ["rules.yaml"], "node": "edge-node-1"},
}


@contextmanager
def running(code: str):
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    try:
        assert proc.stdout.readline() == b"ready\n"
        yield proc
    finally:
        proc.kill()
        proc.wait()


def victim_alerts(am, pid: int) -> list[dict]:
    return [
        a
        for a in am.alerts()
        if a["labels"].get("alertname") == "VictimPreempted"
        and a["labels"].get("workload") == f"pid:{pid}"
    ]


def expected_labels(pid: int) -> dict[str, str]:
    return {
        "alertname": "VictimPreempted",
        "severity": "page",
        "team": "edge",
        "node": "edge-node-1",
        "workload": f"pid:{pid}",
    }


def test_preempted_victim_alerts_alertmanager_and_resolves_when_contention_stops(tmp_path):
    (tmp_path / "rules.yaml").write_text(RULES)
    with alertmanager(tmp_path) as am:
        config = {**BASE, "alertmanager": {"urls": [am.url], "resend_interval_s": 1}}
        with daemon(tmp_path, config) as d, running(VICTIM) as victim:
            with running(HOG):
                assert wait_for(lambda: victim_alerts(am, victim.pid), timeout_s=60), (
                    d.stderr_so_far()
                )
                (alert,) = victim_alerts(am, victim.pid)
                assert alert["labels"] == expected_labels(victim.pid)
                assert alert["annotations"]["summary"] == (
                    f"pid:{victim.pid} preempted more than 25 ms 3 times in a row"
                )
                assert alert["status"]["state"] == "active"
                firing = metric_value(
                    get(f"{d.base}/metrics")[1],
                    "wasmtop_alert_firing",
                    alertname="VictimPreempted",
                    workload=f"pid:{victim.pid}",
                )
                assert firing in (0.0, 1.0)  # exported while pending or firing
            # The hog is gone: no more long preemptions, the alert resolves (keep_firing_for
            # is 0) and Alertmanager stops listing it.
            assert wait_for(lambda: not victim_alerts(am, victim.pid), timeout_s=30)
            text = get(f"{d.base}/metrics")[1]
            # Resolved: not firing (a last long preemption as the hog died may leave it pending).
            selector = {"alertname": "VictimPreempted", "workload": f"pid:{victim.pid}"}
            assert metric_value(text, "wasmtop_alert_firing", **selector) in (None, 0.0)
            assert metric_value(text, "wasmtop_alertmanager_posts_total", outcome="ok") >= 2
            assert metric_value(text, "wasmtop_alertmanager_posts_total", outcome="rejected") == 0


def test_prometheus_with_the_rendered_rules_fires_the_same_alert_into_alertmanager(tmp_path):
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    rendered = tmp_path / "rendered.yaml"
    render = [*wasmtop_cmd(), "rules", "render", str(rules), "--interval", "1", "--window", "10"]
    subprocess.run([*render, "-o", str(rendered)], check=True)
    check = subprocess.run(["promtool", "check", "rules", str(rendered)], capture_output=True)
    assert check.returncode == 0, check.stdout
    with alertmanager(tmp_path) as am:
        # The daemon does not post: whatever Alertmanager gets comes from Prometheus.
        with daemon(tmp_path, BASE) as d, running(VICTIM) as victim:
            scrape = {
                "static_configs": [
                    {"targets": [f"127.0.0.1:{d.port}"], "labels": {"node": "edge-node-1"}}
                ]
            }
            with (
                prometheus(
                    tmp_path,
                    scrape,
                    rule_files=(rendered,),
                    alertmanagers=(f"127.0.0.1:{am.port}",),
                ) as prom,
                running(HOG),
            ):
                assert wait_for(lambda: victim_alerts(am, victim.pid), timeout_s=90), (
                    prom.query("wasmtop_preempt_delay_seconds_count"),
                    d.stderr_so_far(),
                )
                (alert,) = victim_alerts(am, victim.pid)
                # The same label set as the node's alert: one alert in Alertmanager.
                assert alert["labels"] == expected_labels(victim.pid)
                # Sent by Prometheus: its rule's expression is the link back.
                port = prom.url.rsplit(":", 1)[1]
                assert f":{port}/graph?g0.expr=" in alert["generatorURL"]
                assert alert["annotations"]["summary"] == (
                    f"pid:{victim.pid} preempted more than 25 ms 3 times in a row"
                )


def test_a_bad_rule_file_at_reload_keeps_the_running_rules(tmp_path):
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    with daemon(tmp_path, BASE) as d:
        rules.write_text(RULES.replace("threshold: 25", "threshold: twenty"))
        d.proc.send_signal(1)  # SIGHUP
        assert wait_for(lambda: "reload refused" in d.stderr_so_far(), timeout_s=20)
        assert f"{rules}:5: rules[0].threshold: expected a number" in d.stderr_so_far()
        text = get(f"{d.base}/metrics")[1]
        assert metric_value(text, "wasmtop_config_reloads_total", result="failed") == 1
        assert metric_value(get(f"{d.base}/metrics")[1], "wasmtop_alert_rules") == 1
        # Below the kernel's reporting threshold: loaded, left out of evaluation (it could
        # never fire), said in the log, not counted as evaluated. The policy of every command.
        rules.write_text(RULES.replace("threshold: 25", "threshold: 10"))
        d.proc.send_signal(1)
        assert wait_for(lambda: (
            "rule VictimPreempted not evaluated: its threshold 10 ms is below the scheduler "
            "probe's reporting threshold 25 ms" in d.stderr_so_far()
        ), 20)  # fmt: skip
        assert metric_value(get(f"{d.base}/metrics")[1], "wasmtop_alert_rules") == 0
        # A good file is taken.
        rules.write_text(RULES + RULES.replace("rules:", "").replace("VictimPreempted", "Two"))
        d.proc.send_signal(1)
        assert wait_for(lambda: d.stderr_so_far().count("config reloaded") == 2, timeout_s=20)
        text = get(f"{d.base}/metrics")[1]
        assert metric_value(text, "wasmtop_alert_rules") == 2
        assert metric_value(text, "wasmtop_config_reloads_total", result="failed") == 1
        assert metric_value(text, "wasmtop_config_reloads_total", result="ok") == 2
