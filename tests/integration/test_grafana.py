"""The Grafana dashboards (grafana/): the committed JSON is what grafana/generate.py writes; each
dashboard is well formed (unique panel ids, a uid, the data source and node variables); and every
panel and variable query runs on a real Prometheus that has scraped a real daemon (with the
``node`` target label a cluster's scrape adds) while real workloads run: three CPU hogs pinned
to one CPU (preemptions), a process that flips between CPUs (migrations), a wasmtime HTTP server
under traced load over the socket bypass (requests, compile/instantiate, cold start) and a rule
that fires into a real Alertmanager. Template variables are substituted the way Grafana does."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import re
import subprocess
import sys
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import pytest

from peers import alertmanager, daemon, get, prometheus
from support import http_server, wait_for, workloads
from wasmtop.exporters import series

ROOT = Path(__file__).resolve().parents[2]
GRAFANA = ROOT / "grafana"
DASHBOARD_FILES = sorted((GRAFANA / "dashboards").glob("*.json"))
EXPECTED_UIDS = {
    "wasmtop-node-overview",
    "wasmtop-workload",
    "wasmtop-requests",
    "wasmtop-wasm-runtime",
    "wasmtop-alerts",
}
NODE_NAME = "edge-1.lab.example"  # dots: Grafana regex-escapes them in =~ matchers
# Grafana's built-in interval variables, as it would fill them for a 1 h range with the data
# source's scrape interval at 15 s ($__rate_interval = max(4 x scrape interval, ...)).
BUILTINS = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "1h"}
# Queries (dashboard, panel, refId) that may return nothing while their panel shows data: the
# cgroup memory limit is only exported for a cgroup that has one, and the test's processes run
# in cgroups without (RSS and cgroup memory use, queries A and B, must have data).
MAY_BE_EMPTY = {
    ("wasmtop-workload", "Resident memory", "C"),
    ("wasmtop-wasm-runtime", "Resident memory", "C"),
}


def load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def panels(dash: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, rows included, and the panels inside collapsed rows."""
    out = []
    for p in dash.get("panels", []):
        out.append(p)
        out.extend(p.get("panels", []))
    return out


def variables(dash: dict[str, Any]) -> list[dict[str, Any]]:
    return dash.get("templating", {}).get("list", [])


LABEL_VALUES = re.compile(r"^label_values\((?P<selector>.*),\s*(?P<label>[A-Za-z_]\w*)\s*\)$")
NOT_METRICS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or",
               "unless", "bool", "offset", "inf", "nan"}  # fmt: skip


def metric_names(promql: str) -> set[str]:
    """The metric names a PromQL expression (or a label_values() variable query) reads: what is
    left once strings, label matchers, ranges, grouping label lists, function names, keywords
    and numbers are taken out."""
    m = LABEL_VALUES.match(promql.strip())
    if m:
        promql = m["selector"]
    s = re.sub(r'"(?:[^"\\]|\\.)*"', '""', promql)
    s = re.sub(r"\{[^}]*\}", " ", s)
    s = re.sub(r"\[[^\]]*\]", " ", s)
    s = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", s)
    names = set()
    for word in re.finditer(r"(?<![\w.$])[A-Za-z_:][\w:]*", s):
        if s[word.end() :].lstrip().startswith("(") or word.group().lower() in NOT_METRICS:
            continue
        names.add(word.group())
    return names


def defined_sample_names() -> dict[str, str]:
    """Sample name -> family for every family exporters/series.py defines, with the suffixes
    of its type: counters only as NAME_total, histograms as _bucket, _sum, _count, summaries as
    NAME, _sum, _count, gauges as NAME."""
    out = {}
    for fams in (series.WORKLOAD_FAMILIES, series.HOST_FAMILIES):
        for name, (kind, _help, _labels) in fams.items():
            out.update(dict.fromkeys(_samples(name, kind), name))
    return out


def scraped_sample_names(text: str) -> dict[str, str]:
    """The same from the # TYPE lines of a real /metrics (a counter's TYPE name ends in
    _total in the 0.0.4 text format)."""
    out = {}
    for m in re.finditer(r"^# TYPE (\S+) (\S+)$", text, re.M):
        name, kind = m.groups()
        if kind == "counter":
            out[name] = name
        else:
            out.update(dict.fromkeys(_samples(name, kind), name))
    return out


def _samples(name: str, kind: str) -> list[str]:
    return {
        "counter": [f"{name}_total"],
        "gauge": [name],
        "histogram": [f"{name}_bucket", f"{name}_sum", f"{name}_count"],
        "summary": [name, f"{name}_sum", f"{name}_count"],
    }[kind]


def all_queries(dash: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, PromQL or label_values query) of every target and every query variable."""
    out = [
        (
            f"variable {v['name']}",
            v["query"] if isinstance(v["query"], str) else v["query"]["query"],
        )
        for v in variables(dash)
        if v["type"] == "query"
    ]
    for p in panels(dash):
        for t in p.get("targets", []):
            out.append((f"panel {p['title']!r} {t['refId']}", t["expr"]))
    return out


# -- without a kernel: the files themselves --------------------------------------------------
def test_the_committed_dashboards_are_the_generators_output_byte_for_byte(tmp_path, monkeypatch):
    pytest.importorskip("grafana_foundation_sdk", reason="the test extra: pip install -e '.[test]'")
    spec = importlib.util.spec_from_file_location("grafana_generate", GRAFANA / "generate.py")
    gen = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, gen)  # its dataclass looks itself up there
    spec.loader.exec_module(gen)
    rendered = gen.render()
    assert sorted(rendered) == [p.name for p in DASHBOARD_FILES]
    for path in DASHBOARD_FILES:
        assert path.read_bytes() == rendered[path.name].encode(), (
            f"{path.name} is out of date: run .venv/bin/python grafana/generate.py"
        )
    assert gen.main(["--check"]) == 0
    # --check tells a stale file apart, and a rewrite brings it back to the same bytes.
    for path in DASHBOARD_FILES:
        (tmp_path / path.name).write_bytes(path.read_bytes())
    stale = tmp_path / DASHBOARD_FILES[0].name
    stale.write_text(stale.read_text().replace('"refresh": "30s"', '"refresh": "5s"'))
    assert gen.main(["--check", "--out", str(tmp_path)]) == 1
    assert gen.main(["--out", str(tmp_path)]) == 0
    assert stale.read_bytes() == DASHBOARD_FILES[0].read_bytes()


def test_each_dashboard_has_a_uid_unique_panel_ids_and_the_datasource_and_node_variables():
    assert {load(p)["uid"] for p in DASHBOARD_FILES} == EXPECTED_UIDS
    for path in DASHBOARD_FILES:
        dash = load(path)
        where = path.name
        ids = [p["id"] for p in panels(dash)]
        assert len(ids) == len(set(ids)) and all(isinstance(i, int) and i > 0 for i in ids), where
        by_name = {v["name"]: v for v in variables(dash)}
        assert by_name["datasource"]["type"] == "datasource", where
        assert by_name["datasource"]["query"] == "prometheus", where
        node = by_name["node"]
        assert node["type"] == "query" and node["query"] == "label_values(wasmtop_probe_up, node)"
        assert node["includeAll"] and node["allValue"] == ".*", where
        for p in panels(dash):
            if p["type"] == "row":
                continue
            title = f"{where}: {p['title']}"
            assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, title
            assert p["targets"], title
            refs = [t["refId"] for t in p["targets"]]
            assert len(refs) == len(set(refs)) and all(refs), title
            # A unit on every panel that shows a number (tables take it per column).
            assert p["fieldConfig"]["defaults"].get("unit") or p["type"] == "heatmap", title
            if p["type"] == "heatmap":
                assert p["options"]["calculate"] is False and p["options"]["yAxis"]["unit"]
                assert [t["format"] for t in p["targets"]] == ["heatmap"], title
            for t in p["targets"]:
                assert t["datasource"]["uid"] == "${datasource}", title
                expr = t["expr"]
                assert 'node=~"$node"' in expr, f"{title}: {expr}"
                # Rates over Grafana's interval, never a fixed window.
                for rng in re.findall(r"\[([^\]]*)\]", expr):
                    assert rng in ("$__rate_interval", "$__range"), f"{title}: {expr}"


def test_the_provisioning_files_name_a_prometheus_source_and_the_folder_the_readme_fills():
    import yaml

    prov = GRAFANA / "provisioning"
    (source,) = yaml.safe_load((prov / "datasources/wasmtop.yaml").read_text())["datasources"]
    assert source["type"] == "prometheus" and source["url"].startswith("http")
    assert source["jsonData"]["timeInterval"] == "15s"  # the ServiceMonitor's interval
    (provider,) = yaml.safe_load((prov / "dashboards/wasmtop.yaml").read_text())["providers"]
    assert provider["type"] == "file" and provider["allowUiUpdates"] is False
    readme = (GRAFANA / "README.md").read_text()
    # Where the README copies and mounts the dashboards is where the provider reads them.
    path = provider["options"]["path"]
    assert f"grafana/dashboards/*.json {path}/" in readme
    assert f'"$PWD/grafana/dashboards:{path}:ro"' in readme


def test_the_metric_name_extractor_finds_every_name_and_only_names():
    cases = {
        'sum by (le, node) (rate(wasmtop_preempt_delay_seconds_bucket{node=~"$node", '
        'le="0.01"}[$__rate_interval]))': {"wasmtop_preempt_delay_seconds_bucket"},
        "count(wasmtop_alert_firing == 1) or vector(0)": {"wasmtop_alert_firing"},
        "histogram_quantile(0.99, sum by (le) (rate(x_bucket[1m]))) * 1e3 > bool 5": {"x_bucket"},
        "up{job='wasmtop'} and on (instance) node_cpu_seconds_total": {
            "up",
            "node_cpu_seconds_total",
        },
        'label_values(wasmtop_rss_bytes{node=~"$node", runtime!=""}, runtime)': {
            "wasmtop_rss_bytes"
        },
        "topk(10, a) / ignoring (le) group_left b offset 5m": {"a", "b"},
    }
    for expr, expected in cases.items():
        assert metric_names(expr) == expected, expr


def test_every_dashboard_metric_is_a_family_series_py_defines_or_the_daemon_serves_itself():
    """Names of the families series.py defines must carry their type's suffix (a counter only
    as _total); the daemon's own families (alerting, config reloads) are checked against a real
    scrape in the kernel test below."""
    defined = defined_sample_names()
    own = {"wasmtop_alert_rules", "wasmtop_alerts_suppressed", "wasmtop_alertmanager_posts_total",
           "wasmtop_alertmanager_retries_total", "wasmtop_alertmanager_alerts_sent_total",
           "wasmtop_config_reloads_total", "wasmtop_config_last_reload_successful"}  # fmt: skip
    used = set()
    for path in DASHBOARD_FILES:
        for where, query in all_queries(load(path)):
            for name in metric_names(query):
                assert name in defined or name in own, f"{path.name} {where}: {name}"
                used.add(name)
    # The dashboards cover the core of what series.py defines.
    families = {defined[n] for n in used if n in defined}
    assert families >= {"wasmtop_migrations", "wasmtop_preempt_delay_seconds",
                        "wasmtop_bypass_bytes", "wasmtop_probe_events_lost", "wasmtop_probe_up",
                        "wasmtop_request_latency_seconds", "wasmtop_cold_start_seconds",
                        "wasmtop_wasm_call_seconds", "wasmtop_rss_growth_bytes_per_second",
                        "wasmtop_alert_firing"}  # fmt: skip


# -- on the real kernel: a daemon, workloads, Prometheus ------------------------------------
# Crosses for every workload the scheduler probe saw. A rule tracks at most
# max_alerts_per_rule (3) instances, taken in workload-key order: those fire, the rest of the
# host's workloads are left out (wasmtop_alerts_suppressed).
RULES = """
rules:
  - name: Scheduled
    quantity: sched.affinity_stability
    comparator: ">="
    threshold: 0
    severity: info
    annotations:
      summary: "{{ $labels.workload }} was scheduled"
"""
# Keep-alive requests with a fresh traceparent each, one in three burning 2 ms of CPU.
LOAD = """
import http.client, os, sys, time
conn = http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]), timeout=10)
i = 0
while True:
    tp = f"00-{os.urandom(16).hex()}-{os.urandom(8).hex()}-01"
    conn.request("GET", "/burn?ms=2" if i % 3 == 0 else "/", headers={"traceparent": tp})
    conn.getresponse().read()
    i += 1
    time.sleep(0.01)
"""


@dataclass
class Live:
    prom: Any
    metrics: str  # the daemon's /metrics at the end
    server_workload: str
    otlp: Any = None  # the OTLP receiver the daemon exports its spans to


@contextmanager
def otlp_receiver() -> Iterator[Any]:
    from otlp_receiver import OtlpReceiver

    rx = OtlpReceiver()
    try:
        yield rx
    finally:
        rx.stop()


@contextmanager
def own_cgroup() -> Iterator[Path]:
    """This test process in a cgroup v2 directory of its own while it lasts, and so every
    process it starts (daemon, Prometheus, Alertmanager, workloads). The daemon's socket-bypass
    probe watches only that cgroup: its ring buffer then carries our connections, not those of
    every test on the host."""
    from wasmtop.probes import features

    root = features.cgroup2_mount()
    line = next(x for x in Path("/proc/self/cgroup").read_text().splitlines() if x[:3] == "0::")
    home = root / line[3:].lstrip("/")
    cg = root / f"wasmtop-grafana-{uuid.uuid4().hex[:8]}"
    cg.mkdir()
    try:
        (cg / "cgroup.procs").write_text(str(os.getpid()))
        yield cg
    finally:
        (home / "cgroup.procs").write_text(str(os.getpid()))
        # Our children are reaped by now; the kernel lets go of them just after.
        wait_for(lambda: not (cg / "cgroup.procs").read_text(), timeout_s=10)
        cg.rmdir()


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs two CPUs: one shared by the hogs, another to migrate to")
    tmp = tmp_path_factory.mktemp("grafana")
    (tmp / "rules.yaml").write_text(RULES)
    with own_cgroup() as cg, alertmanager(tmp) as am, otlp_receiver() as rx:
        from wasmtop.probes import features

        config = {
            "probes": {
                # Three hogs on one CPU wait about two time slices (> 5 ms) for it each time.
                "sched": {"threshold_ms": 5},
                "bypass": {
                    "mode": "accelerate",
                    "cgroup": str(cg.relative_to(features.cgroup2_mount())),
                },
            },
            "alerts": {"rule_files": ["rules.yaml"], "max_alerts_per_rule": 3},
            "alertmanager": {"urls": [am.url], "resend_interval_s": 1},
            "collector": {"probe_stats": True},  # the probe run-time panel has data
            "otlp": {"endpoint": rx.endpoint, "interval_s": 1},
        }
        with daemon(tmp, config) as d:
            for live in _running(d, tmp):
                yield dataclasses.replace(live, otlp=rx)
            # Our workloads are gone: let the daemon drain their last ring-buffer records before
            # it gets SIGTERM. (Its handler raises Terminated in whatever Python code runs;
            # inside bcc's ctypes ring-buffer callback that exception is printed and dropped,
            # and the daemon, ignoring further signals by then, is killed after 5 s.)
            time.sleep(1)


def _running(d: Any, tmp: Path) -> Iterator[Live]:
    cpu = max(os.sched_getaffinity(0))
    scrape = {
        "static_configs": [{"targets": [f"127.0.0.1:{d.port}"], "labels": {"node": NODE_NAME}}]
    }
    spec = [*[("hog", {"CPU": {cpu}})] * 3, ("flipper", {"FLIPS": 300})]
    # The server starts once the daemon runs: its exec and first listen are a cold start.
    with (
        prometheus(tmp, scrape, flags=("--enable-feature=exemplar-storage",)) as prom,
        workloads(*spec) as started,
        http_server("--wasm") as (server, port),
    ):
        for w in started:
            w.go()
        load = subprocess.Popen([sys.executable, "-c", LOAD, str(port)])
        try:
            wl = f'workload="pid:{server.pid}"'
            hog, flipper = started[0].pid, started[3].pid
            ready = [
                f'wasmtop_migrations_total{{workload="pid:{flipper}"}} > 0',
                f'wasmtop_preemptions_over_threshold_total{{workload="pid:{hog}"}} > 0',
                f"wasmtop_request_duration_seconds_count{{{wl}}} > 0",
                f'wasmtop_request_latency_seconds{{{wl}, quantile="0.99"}}',
                f"wasmtop_wasm_calls_total{{{wl}}} > 0",
                f"wasmtop_bypass_bytes_total{{{wl}}} > 0",
                f"wasmtop_cold_start_seconds{{{wl}}}",
                "wasmtop_alert_firing == 1",
                "wasmtop_alerts_suppressed > 0",
                'wasmtop_alertmanager_posts_total{outcome="ok"} > 0',
            ]

            def missing() -> list[str]:
                return [q for q in ready if not prom.query(q)]

            assert wait_for(lambda: not missing(), timeout_s=40, interval_s=0.5), (
                missing(),
                d.stderr_so_far()[-3000:],
            )
            # A few more scrapes, so every rate has points after the last series appeared.
            time.sleep(3)
            yield Live(prom, get(f"{d.base}/metrics")[1].decode(), f"pid:{server.pid}")
        finally:
            load.kill()
            load.wait()


def api(prom: Any, path: str, params: dict[str, Any]) -> Any:
    """A Prometheus API answer's data, asserting success with no error and no warning."""
    status, body = get(f"{prom.url}/api/v1/{path}?" + urllib.parse.urlencode(params, doseq=True))
    answer = json.loads(body)
    assert status == 200 and answer["status"] == "success", (path, params, answer)
    assert not answer.get("warnings"), (path, params, answer["warnings"])
    return answer["data"]


def regex_escape(value: str) -> str:
    """Grafana's prometheusSpecialRegexEscape: a value of a multi-value variable in =~."""
    value = value.replace("\\", "\\\\\\\\")
    return re.sub(r"[$^*{}\[\]'+?.()|]", lambda m: "\\\\" + m.group(), value)


def substitute(expr: str, chosen: dict[str, Optional[list[str]]]) -> str:
    """What Grafana sends for ``expr``: its built-in intervals, and each variable's value (None:
    All, the variable's allValue ``.*``; one value regex-escaped; several as (a|b))."""
    for name, value in BUILTINS.items():
        expr = expr.replace(name, value)

    def one(m: re.Match) -> str:
        name = m.group(1) or m.group(2)
        assert name in chosen, f"{expr}: ${name} is not a variable of the dashboard"
        values = chosen[name]
        if values is None:
            return ".*"
        escaped = [regex_escape(v) for v in values]
        return escaped[0] if len(escaped) == 1 else "(" + "|".join(escaped) + ")"

    out = re.sub(r"\$\{(\w+)\}|\$(\w+)", one, expr)
    assert "$" not in out, out
    return out


def resolve_variables(
    prom: Any, dash: dict[str, Any], wanted: dict[str, str], now: float
) -> dict[str, Optional[list[str]]]:
    """Each query variable in order, as Grafana refreshes them: label_values(SELECTOR, LABEL)
    with the variables before it substituted, asked of /api/v1/label/LABEL/values. A variable
    in ``wanted`` must offer that value and takes it; the others stay at All."""
    chosen: dict[str, Optional[list[str]]] = {}
    for var in variables(dash):
        if var["type"] != "query":
            continue
        m = LABEL_VALUES.match(var["query"])
        assert m, var["query"]
        selector = substitute(m["selector"], chosen)
        offered = api(
            prom,
            f"label/{m['label']}/values",
            {"match[]": selector, "start": now - 3600, "end": now},
        )
        if var["name"] in wanted:
            assert wanted[var["name"]] in offered, (var["name"], selector, offered)
            chosen[var["name"]] = [wanted[var["name"]]]
        else:
            chosen[var["name"]] = None
    return chosen


def run_panels(prom: Any, dash: dict[str, Any], chosen: dict, now: float) -> dict[str, list[bool]]:
    """Every target of every panel, as Grafana would run it over the last 30 s (range targets
    at a 1 s step, instant ones at now): panel title -> per target, whether it returned data."""
    out: dict[str, list[bool]] = {}
    for p in panels(dash):
        if p["type"] == "row":
            continue
        assert p["title"] not in out, f"{dash['uid']}: two panels titled {p['title']!r}"
        out[p["title"]] = []
        for t in p["targets"]:
            expr = substitute(t["expr"], chosen)
            if t.get("instant"):
                data = api(prom, "query", {"query": expr, "time": now})
                has_data = bool(data["result"])
            else:
                params = {"query": expr, "start": now - 30, "end": now, "step": 1}
                data = api(prom, "query_range", params)
                has_data = any(s["values"] for s in data["result"])
            out[p["title"]].append(has_data)
    return out


@pytest.mark.bpf
def test_every_panel_and_variable_query_runs_on_a_real_prometheus_and_has_data(live):
    """With node set to the scrape's node label and the other variables at All (Grafana's
    default), every query succeeds without warnings, and every panel shows data: the workloads
    produce every series the panels read."""
    now = time.time()
    results = {}
    for path in DASHBOARD_FILES:
        dash = load(path)
        chosen = resolve_variables(live.prom, dash, {"node": NODE_NAME}, now)
        assert chosen["node"] == [NODE_NAME]
        results[dash["uid"]] = run_panels(live.prom, dash, chosen, now)
    by_panel = {(uid, title): ok for uid, r in results.items() for title, ok in r.items()}
    empty_panels = sorted(k for k, ok in by_panel.items() if not any(ok))
    assert empty_panels == []
    # A panel of several queries may have one without data; only these, and why:
    empty_queries = sorted(
        (uid, title, chr(ord("A") + i))
        for (uid, title), ok in by_panel.items()
        for i, has in enumerate(ok)
        if not has
    )
    assert set(empty_queries) <= MAY_BE_EMPTY, empty_queries
    queries = sum(len(ok) for ok in by_panel.values())
    print(f"\n{len(results)} dashboards, {len(by_panel)} panels (all with data), {queries} "
          f"queries, {queries - len(empty_queries)} with data; empty: {empty_queries}")  # fmt: skip


@pytest.mark.bpf
def test_the_workload_drilldown_narrows_to_one_workload_and_keeps_its_data(live):
    """Choosing the wasm server in the workload variable (offered by its label_values query)
    leaves its request, memory and scheduling panels with data."""
    now = time.time()
    for uid in ("wasmtop-workload", "wasmtop-requests", "wasmtop-wasm-runtime"):
        dash = next(d for d in map(load, DASHBOARD_FILES) if d["uid"] == uid)
        wanted = {"node": NODE_NAME, "workload": live.server_workload}
        if uid == "wasmtop-wasm-runtime":
            wanted["runtime"] = "wasmtime"
        chosen = resolve_variables(live.prom, dash, wanted, now)
        results = run_panels(live.prom, dash, chosen, now)
        must = {
            "wasmtop-workload": ["CPU time", "Context switches / s", "Resident memory",
                                 "Requests / s", "Socket bypass share",
                                 "Bytes sent: bypass and network stack"],
            "wasmtop-requests": ["Requests / s", "Latency quantiles (exact, sliding window)",
                                 "Latency P99 and P99.9 from the histogram", "Request duration",
                                 "Mean request duration",
                                 "Time waiting after preemption per request"],
            "wasmtop-wasm-runtime": ["Last cold start", "Compile / instantiate calls / s",
                                     "Mean compile / instantiate latency", "Resident memory",
                                     "Runtimes"],
        }[uid]  # fmt: skip
        assert [t for t in must if not any(results[t])] == [], uid
        if uid == "wasmtop-workload":  # and the data is that workload's only
            cpu = next(p for p in panels(dash) if p["title"] == "CPU time")
            expr = substitute(cpu["targets"][0]["expr"], chosen)
            result = api(live.prom, "query", {"query": expr, "time": now})["result"]
            assert [r["metric"]["workload"] for r in result] == [live.server_workload]
            assert [r["metric"]["node"] for r in result] == [NODE_NAME]


@pytest.mark.bpf
def test_every_metric_the_dashboards_read_is_one_the_daemon_serves_or_defines(live):
    """Against a real /metrics (# TYPE lines), or series.py for a family with no sample in this
    run (a cgroup memory limit where there is none)."""
    served = scraped_sample_names(live.metrics)
    defined = defined_sample_names()
    assert "wasmtop_alertmanager_posts_total" in served and "wasmtop_alert_rules" in served
    for path in DASHBOARD_FILES:
        dash = load(path)
        for where, query in all_queries(dash):
            for name in metric_names(query):
                assert name.startswith("wasmtop_"), f"{path.name} {where}: {name}"
                assert name in served or name in defined, f"{path.name} {where}: {name}"


def test_a_latency_bucket_links_to_a_trace_the_otlp_receiver_got(live):
    """Prometheus, with exemplar storage on, scrapes OpenMetrics: the request-duration buckets
    of the traced server carry exemplars, and their trace ids are traces the OTLP receiver got
    as spans. (Preemption and wake-up buckets' exemplars: tests/unit/test_series.py.)"""
    now = time.time()
    wl = f'workload="{live.server_workload}"'
    found = api(live.prom, "query_exemplars", {
        "query": f"wasmtop_request_duration_seconds_bucket{{{wl}}}",
        "start": now - 600, "end": now + 60})  # fmt: skip
    exemplars = [e for one in found for e in one["exemplars"]]
    assert exemplars, found
    ids = {e["labels"]["trace_id"] for e in exemplars}
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)
    for one in found:  # each exemplar sits in its bucket
        le = float(one["seriesLabels"]["le"])
        assert all(float(e["value"]) <= le for e in one["exemplars"])
    spans = {s.trace_id.hex() for _, s in live.otlp.spans()}
    assert ids & spans, (sorted(ids)[:3], len(spans))


def test_every_latency_series_over_time_asks_for_exemplars():
    """A range query over the buckets of a histogram that carries trace ids shows them (the
    click from a P99 spike to the trace); instant ones (stat panels) have no points to mark."""
    histograms = ("wasmtop_request_duration_seconds_bucket", "wasmtop_preempt_delay_seconds_bucket",
                  "wasmtop_wakeup_delay_seconds_bucket")  # fmt: skip
    asked = 0
    for path in DASHBOARD_FILES:
        for p in panels(load(path)):
            for t in p.get("targets", []):
                expr = t.get("expr", "")
                if any(h in expr for h in histograms) and t.get("range"):
                    latency = 'le="' not in expr  # a ratio of bucket counts is no latency
                    assert t.get("exemplar", False) is latency, (path.name, p["title"], t["refId"])
                    asked += latency
    assert asked >= 10
