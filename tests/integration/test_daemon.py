"""`wasmtop daemon` on the real kernel, scraped by a real Prometheus (issue: daemon and
exporters, tests 1, 2, 5 and 6). Every daemon here is stopped with SIGTERM and must exit 0
within 5 s leaving no program of ours loaded (tests/peers.py)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap

import bcrypt
import pytest
import yaml

from peers import daemon, free_port, get, metric_value, prometheus
from support import wait_for

pytestmark = pytest.mark.bpf

SLEEPER = textwrap.dedent(
    """
    import os, signal, time
    print("ready", flush=True)
    for _ in range(300):
        time.sleep(0.005)  # 300 voluntary switches
    os.kill(os.getpid(), signal.SIGSTOP)  # then frozen: its counters stop moving
    """
)


def test_prometheus_scrapes_the_kernel_figures_the_daemon_serves_and_promtool_is_content(
    tmp_path,
):
    with daemon(tmp_path, {"probes": {"bypass": {"mode": "off"}}}) as d:
        target = f"127.0.0.1:{d.port}"
        with prometheus(tmp_path, {"static_configs": [{"targets": [target]}]}) as prom:
            sleeper = subprocess.Popen([sys.executable, "-c", SLEEPER], stdout=subprocess.PIPE)
            try:
                assert sleeper.stdout.readline() == b"ready\n"
                selector = f'wasmtop_context_switches_total{{workload="pid:{sleeper.pid}"}}'

                def frozen_and_scraped() -> bool:
                    if not os.path.exists(f"/proc/{sleeper.pid}") or (
                        open(f"/proc/{sleeper.pid}/stat").read().split()[2] != "T"
                    ):
                        return False
                    served = metric_value(
                        get(f"{d.base}/metrics")[1],
                        "wasmtop_context_switches_total",
                        workload=f"pid:{sleeper.pid}",
                    )
                    scraped = prom.query(selector)
                    return bool(scraped) and float(scraped[0]["value"][1]) == served

                assert wait_for(frozen_and_scraped, timeout_s=60)
                value = float(prom.query(selector)[0]["value"][1])
                assert 300 <= value < 400  # its 300 sleeps, and a few more on its way
                for probe in ("sched", "tracectx", "lifecycle"):
                    assert prom.query(f'wasmtop_probe_up{{probe="{probe}"}}')[0]["value"][1] == "1"
                lost = prom.query("sum(wasmtop_probe_events_lost_total)")
                assert lost[0]["value"][1] == "0"
                assert prom.query('up{job="wasmtop"}')[0]["value"][1] == "1"
            finally:
                sleeper.kill()
                sleeper.wait()
        text = get(f"{d.base}/metrics")[1]
        check = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True)
        assert check.returncode == 0 and check.stdout == check.stderr == b"", check.stderr[:2000]
        status, body = get(f"{d.base}/readyz")
        ready = yaml.safe_load(body)
        assert status == 200 and ready["ready"] is True
        assert ready["probes"]["sched"]["status"] == "ok"
        assert get(f"{d.base}/healthz") == (200, b"ok\n")
        assert get(f"{d.base}/nope")[0] == 404


def test_sighup_with_a_bad_config_keeps_the_old_one_and_a_good_one_is_applied(tmp_path):
    with daemon(
        tmp_path, {"probes": {"bypass": {"mode": "off"}, "trace": {"enabled": False}}}
    ) as d:
        good = yaml.safe_load(d.config.read_text())
        d.config.write_text("metrics:\n  listen: 127.0.0.1:9464\n  max_workloads: lots\n")
        d.proc.send_signal(signal.SIGHUP)
        assert wait_for(
            lambda: (
                metric_value(
                    get(f"{d.base}/metrics")[1], "wasmtop_config_reloads_total", result="failed"
                )
                == 1
            )
        )
        assert "reload refused, the running config stays" in d.stderr_so_far()
        assert f"{d.config}:3: metrics.max_workloads: expected an integer" in d.stderr_so_far()
        text = get(f"{d.base}/metrics")[1]
        assert metric_value(text, "wasmtop_config_last_reload_successful") == 0
        assert metric_value(text, "wasmtop_exporter_max_workloads") == 1000  # still the old

        new_port = free_port()
        good["metrics"] = {"listen": f"127.0.0.1:{new_port}", "max_workloads": 7}
        d.config.write_text(yaml.safe_dump(good))
        d.proc.send_signal(signal.SIGHUP)
        new_base = f"http://127.0.0.1:{new_port}"

        def moved() -> bool:
            try:
                return get(f"{new_base}/metrics", timeout=2)[0] == 200
            except OSError:
                return False

        assert wait_for(moved)
        text = get(f"{new_base}/metrics")[1]
        assert metric_value(text, "wasmtop_config_reloads_total", result="ok") == 1
        assert metric_value(text, "wasmtop_config_last_reload_successful") == 1
        assert metric_value(text, "wasmtop_exporter_max_workloads") == 7
        with pytest.raises(OSError):
            get(f"{d.base}/metrics", timeout=2)  # the old address is closed
        assert d.proc.poll() is None
        d.port, d.base = new_port, new_base


def test_tls_and_basic_auth_refuse_strangers_and_prometheus_scrapes_with_credentials(
    tmp_path, tls_files
):
    cert, key = tls_files
    password = "s3cret-scrape"
    web = tmp_path / "web.yaml"
    web.write_text(
        yaml.safe_dump(
            {
                "tls_server_config": {"cert_file": str(cert), "key_file": str(key)},
                "basic_auth_users": {
                    "prom": bcrypt.hashpw(password.encode(), bcrypt.gensalt(4)).decode()
                },
            }
        )
    )
    config = {
        "probes": {"bypass": {"mode": "off"}, "trace": {"enabled": False}},
        "metrics": {"web_config_file": str(web)},
    }
    creds = ("prom", password)
    with daemon(tmp_path, config, scheme="https", ready_auth=creds, cafile=cert) as d:
        assert get(f"{d.base}/metrics", cafile=cert)[0] == 401
        assert get(f"{d.base}/metrics", cafile=cert, auth=("prom", "wrong"))[0] == 401
        assert get(f"{d.base}/metrics", cafile=cert, auth=("nobody", password))[0] == 401
        status, body = get(f"{d.base}/metrics", cafile=cert, auth=creds)
        assert status == 200 and b"wasmtop_probe_up" in body
        with pytest.raises(OSError):  # plain HTTP is not served
            get(f"http://127.0.0.1:{d.port}/metrics", timeout=3)
        scrape = {
            "scheme": "https",
            "tls_config": {"ca_file": str(cert)},
            "basic_auth": {"username": "prom", "password": password},
            "static_configs": [{"targets": [f"127.0.0.1:{d.port}"]}],
        }
        with prometheus(tmp_path, scrape) as prom:
            assert wait_for(lambda: prom.query('wasmtop_probe_up{probe="sched"}'), timeout_s=30)
            assert prom.query('up{job="wasmtop"}')[0]["value"][1] == "1"
        bad_scrape = {**scrape, "basic_auth": {"username": "prom", "password": "nope"}}
        (tmp_path / "bad").mkdir()
        with prometheus(tmp_path / "bad", bad_scrape) as prom:
            assert wait_for(
                lambda: any(t["health"] == "down" for t in prom.targets()), timeout_s=30
            )
            target = prom.targets()[0]
            assert "401" in target["lastError"]


def test_json_logs_parse_line_by_line_with_levels_and_fields(tmp_path):
    """`--log-format json`: every line the daemon writes, from its start to its stop, is one JSON
    object with time, level, logger and message; a refused reload is a warning."""
    config = {"probes": {"bypass": {"mode": "off"}, "trace": {"enabled": False}}}
    with daemon(tmp_path, config, args=("--log-format", "json")) as d:
        good = d.config.read_text()
        d.config.write_text("metrics:\n  max_workloads: lots\n")
        d.proc.send_signal(signal.SIGHUP)
        assert wait_for(lambda: "reload refused" in d.stderr_so_far())
        d.config.write_text(good)
    lines = d.stderr_so_far().splitlines()
    records = [json.loads(line) for line in lines]  # each line alone
    assert len(records) >= 5
    for r in records:
        assert {"time", "level", "logger", "message"} <= set(r), r
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", r["time"])
        assert r["level"] in ("debug", "info", "warning", "error")
    by_message = {r["message"].split(":")[0]: r for r in records}
    refused = by_message["reload refused, the running config stays"]
    assert (refused["level"], refused["logger"]) == ("warning", "wasmtop.daemon")
    assert "expected an integer" in refused["message"]
    assert any(r["message"].startswith("serving http://") and r["level"] == "info"
               for r in records)  # fmt: skip
    assert records[-1]["message"].startswith("stopping on signal 15")
