"""Rule files: every kind of mistake gets its file, line and expectation and exit 2 (through
`wasmtop rules check`, as a user runs it); the shipped rules are valid, documented, renderable,
and pass promtool."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from wasmtop.alerts import render, rules
from wasmtop.alerts.quantities import QUANTITIES
from wasmtop.cli import main

ROOT = Path(__file__).resolve().parents[2]
GOOD = """rules:
  - name: Slow
    quantity: requests.latency_ms.p99
    threshold: 10
    for: 30s
    severity: critical
    annotations:
      summary: slow
"""


def check(tmp_path, text, capsys) -> tuple[int, str]:
    f = tmp_path / "rules.yaml"
    f.write_text(text)
    code = main(["rules", "check", str(f)])
    out = capsys.readouterr()
    return code, (out.err + out.out).replace(str(f), "FILE")


# One mistake per row: (what is wrong, the file, the message expected).
BAD = [
    ("not YAML", "rules: [a, b", "FILE:1: not valid YAML"),
    ("empty file", "", "FILE:1: the file is empty: expected a map with a `rules:` list"),
    ("unknown top key", "rulez: []", "FILE:1: rulez: unknown key (expected one of: rules)"),
    ("rules not a list", "rules: {a: 1}", "FILE:1: rules: expected a list of rules"),
    ("rule not a map", "rules: [3]", "FILE:1: rules[0]: expected a map with name, quantity"),
    ("missing quantity", GOOD.replace("    quantity: requests.latency_ms.p99\n", ""),
     "FILE:2: rules[0]: quantity is missing: expected the Snapshot quantity watched"),
    ("unknown quantity", GOOD.replace("requests.latency_ms.p99", "requests.p99"),
     "FILE:3: rules[0].quantity: expected one of sched.preempt_delay_ms,"),
    ("unknown key", GOOD.replace("    for: 30s\n", "    fro: 30s\n"),
     "FILE:5: rules[0].fro: unknown key (expected one of: name, quantity, comparator"),
    ("threshold not a number", GOOD.replace("threshold: 10", "threshold: ten"),
     "FILE:4: rules[0].threshold: expected a number, got 'ten'"),
    ("bad comparator", GOOD.replace("    for: 30s\n", "    for: 30s\n    comparator: =>\n"),
     "FILE:6: rules[0].comparator: expected one of >, >=, <, <=, ==, !=, got '=>'"),
    ("bad duration", GOOD.replace("for: 30s", "for: 30 seconds"),
     "FILE:5: rules[0].for: expected a duration such as 30s, 5m or 1h30m, got '30 seconds'"),
    ("for and consecutive", GOOD.replace("    for: 30s\n", "    for: 30s\n    consecutive: 3\n"),
     "FILE:6: rules[0].consecutive: expected either for (a duration) or consecutive, not both"),
    ("consecutive zero", GOOD.replace("for: 30s", "consecutive: 0"),
     "FILE:5: rules[0].consecutive: expected an integer from 1 to 1000000, got 0"),
    ("for on events", GOOD.replace("requests.latency_ms.p99", "sched.preempt_delay_ms"),
     "FILE:5: rules[0].for: expected consecutive: sched.preempt_delay_ms counts events, not time"),
    ("< on events", GOOD.replace("requests.latency_ms.p99", "runtime.cold_start_ms")
     .replace("for: 30s", "comparator: <"),
     "FILE:5: rules[0].comparator: expected > or >=: runtime.cold_start_ms counts events above it"),
    ("bad name", GOOD.replace("name: Slow", "name: slow down"),
     "FILE:2: rules[0].name: expected a name of letters, digits and _"),
    ("reserved label", GOOD + "    labels: {workload: x}\n",
     "FILE:9: rules[0].labels.workload: expected a label name of letters, digits and _ other"),
    ("label not a string", GOOD + "    labels: {team: [a]}\n",
     "FILE:9: rules[0].labels.team: expected a string, got ['a']"),
    ("no summary", GOOD.replace("      summary: slow\n", "      description: slow\n"),
     "FILE:8: rules[0].annotations.summary is missing: expected a summary"),
    ("unknown template", GOOD.replace("summary: slow", "summary: '{{ .Value }}'"),
     "FILE:8: rules[0].annotations.summary: expected {{ $labels.NAME }}, {{ $value }}"),
    ("unpaired braces", GOOD.replace("summary: slow", "summary: '{{ $value'"),
     "FILE:8: rules[0].annotations.summary: expected {{ and }} in pairs"),
    ("bad annotation name", GOOD + "      runbook-url: https://wiki/x\n",
     "FILE:9: rules[0].annotations.runbook-url: expected an annotation name of letters, digits"),
    ("bad runbook", GOOD + "      runbook_url: see the wiki\n",
     "FILE:9: rules[0].annotations.runbook_url: expected an http(s):// URL or a docs/*.md path"),
    ("duplicate", GOOD + GOOD.replace("rules:\n", ""),
     "FILE:9: rules[1].name: Slow (severity critical) is already defined at FILE:2"),
    ("duplicate key", GOOD.replace("    for: 30s\n", "    for: 30s\n    for: 1m\n"),
     "FILE:6: rules[0].for: given twice"),
]  # fmt: skip


@pytest.mark.parametrize("what, text, message", BAD, ids=[b[0] for b in BAD])
def test_each_mistake_names_file_line_and_expectation(tmp_path, capsys, what, text, message):
    code, out = check(tmp_path, text, capsys)
    assert code == 2, out
    assert out.startswith("wasmtop: " + message), out


def test_a_missing_file_is_a_usage_error(tmp_path, capsys):
    assert main(["rules", "check", str(tmp_path / "nope.yaml")]) == 2
    assert "cannot read rule file: No such file or directory" in capsys.readouterr().err


def test_a_good_file_is_valid_and_a_note_says_what_prometheus_cannot_render(tmp_path, capsys):
    text = GOOD + GOOD.replace("rules:\n", "").replace("Slow", "Preempted").replace(
        "requests.latency_ms.p99", "sched.preempt_delay_ms"
    ).replace("for: 30s", "consecutive: 3").replace("threshold: 10", "threshold: 40")
    code, out = check(tmp_path, text, capsys)
    assert code == 0, out
    assert "FILE: 2 rules valid" in out
    assert "note: not renderable for Prometheus" in out and "threshold 40 ms" in out


def test_thresholds_are_substituted_and_templates_expand_like_prometheus():
    (r,) = rules.parse(
        GOOD.replace(
            "summary: slow",
            "summary: '{{ $labels.workload }} at {{ $value }} > {{$threshold}} "
            '({{ printf "%.1f" $value }}) {{ $labels.missing }}.\'',
        )
    )
    text = dict(r.annotations)["summary"]
    want = '{{ $labels.workload }} at {{ $value }} > 10 ({{ printf "%.1f" $value }})'
    assert text == want + " {{ $labels.missing }}."
    assert rules.expand(text, {"workload": "w"}, 12.0) == "w at 12 > 10 (12.0) ."
    assert rules.go_float(0.1 + 0.2) == "0.30000000000000004"


@pytest.mark.parametrize(
    "text, seconds", [("30s", 30), ("5m", 300), ("1h30m", 5400), ("500ms", 0.5), (90, 90)]
)
def test_durations(text, seconds):
    assert rules.duration(text) == seconds
    assert rules.duration(rules.prometheus_duration(seconds)) == seconds


def test_shipped_defaults_follow_the_design_table():
    got = {
        r.name: (r.quantity.name, r.comparator, r.threshold, r.consecutive, r.for_s)
        for r in rules.load_all([])
    }
    assert got == {
        "WasmtopColdStartSlow": ("runtime.cold_start_ms", ">", 5, 1, None),
        "WasmtopMemoryGrowth": ("runtime.rss_growth_mb_per_min", ">", 2, 1, 120),
        "WasmtopPreemptionDelay": ("sched.preempt_delay_ms", ">", 50, 3, None),
        "WasmtopWakeupDelayP99": ("sched.wakeup_delay_p99_ms", ">", 10, 1, 30),
        "WasmtopRequestLatencyP99": ("requests.latency_ms.p99", ">", 10, 1, 30),
        "WasmtopRequestLatencyP999": ("requests.latency_ms.p999", ">", 20, 1, 30),
        "WasmtopEventsLost": ("probes.lost", ">", 0, 1, None),
    }


def test_every_shipped_alert_has_a_runbook_section_and_every_quantity_is_documented():
    doc = (ROOT / "docs/alerts.md").read_text()
    anchors = {
        re.sub(r"[^a-z0-9_ -]", "", h.strip().lower()).replace(" ", "-")
        for h in re.findall(r"^#+ (.+)$", doc, re.M)
    }
    for r in rules.load_all([]):
        notes = dict(r.annotations)
        assert {"summary", "description", "runbook_url"} <= notes.keys()
        path, _, anchor = notes["runbook_url"].partition("#")
        assert path == "docs/alerts.md" and anchor in anchors, notes["runbook_url"]
        # and a row in the shipped rules' table, with its quantity
        assert f"| [{r.name}](#{anchor}) | `{r.quantity.name}` |" in doc, r.name
    for name in QUANTITIES:
        assert f"`{name}`" in doc, name


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed")
@pytest.mark.parametrize("fmt", ["prometheus", "prometheusrule"])
def test_rendered_rules_are_clean_for_promtool(tmp_path, capsys, fmt):
    out = tmp_path / "rules.yaml"
    assert main(["rules", "render", "--format", fmt, "-o", str(out)]) == 0
    doc = yaml.safe_load(out.read_text())
    groups = doc["groups"] if fmt == "prometheus" else doc["spec"]["groups"]
    if fmt == "prometheusrule":
        assert doc["kind"] == "PrometheusRule"
        out.write_text(yaml.safe_dump({"groups": groups}))
    done = subprocess.run(["promtool", "check", "rules", str(out)], capture_output=True, text=True)
    assert done.returncode == 0 and "SUCCESS: 7 rules found" in done.stdout, done.stdout
    for rule in groups[0]["rules"]:
        assert rule["labels"]["severity"] and rule["annotations"]["summary"]
        # every alert waits (for:, keep_firing_for, or its count of events)
        assert "for" in rule or "keep_firing_for" in rule or ">= 3" in rule["expr"], rule


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed")
def test_the_shipped_promtool_tests_pass(capfd):
    assert main(["rules", "test"]) == 0
    assert "SUCCESS" in capfd.readouterr().out


def test_render_refuses_what_prometheus_cannot_express():
    (r,) = rules.parse(
        GOOD.replace("requests.latency_ms.p99", "runtime.cold_start_ms").replace(
            "for: 30s", "consecutive: 2"
        )
    )
    with pytest.raises(render.RenderError, match="consecutive 2: expected 1"):
        render.rule_groups([r])
