"""The daemon's config and web config: defaults, and an error naming file, line and what was
expected for each class of mistake."""

from __future__ import annotations

import subprocess
import textwrap
from pathlib import Path

import pytest

from support import wasmtop_cmd
from wasmtop.config import SCHEMA, ConfigError, defaults, load, parse, schema_keys
from wasmtop.web import load_web_config

ROOT = Path(__file__).resolve().parents[2]


def test_a_config_naming_only_metrics_listen_is_complete():
    config = parse('metrics:\n  listen: "127.0.0.1:9555"\n', "w.yaml")
    expected = defaults()
    expected["metrics"]["listen"] = "127.0.0.1:9555"
    assert config == expected
    assert config["probes"]["bypass"]["mode"] == "observe"
    assert config["otlp"]["endpoint"] is None
    assert parse("", "empty.yaml") == defaults()


@pytest.mark.parametrize(
    "text, message",
    [
        ("metrics:\n  listen: 9464\n", "w.yaml:2: metrics.listen: expected HOST:PORT"),
        ("metrics:\n  listen: ':99999'\n", "w.yaml:2: metrics.listen: expected HOST:PORT"),
        ("probes:\n  shed: {}\n", "w.yaml:2: probes.shed: unknown key (expected one of: sched"),
        ("colector:\n  tick_s: 1\n", "w.yaml:1: colector: unknown key"),
        ("collector:\n  tick_s: 0\n", "w.yaml:2: collector.tick_s: expected a number from 0.1 to 60"),
        ("collector:\n  tick_s: fast\n", "w.yaml:2: collector.tick_s: expected a number"),
        ("collector:\n  max_events: 1.5\n", "w.yaml:2: collector.max_events: expected an integer"),
        ("probes:\n  trace:\n    enabled: yes please\n", "w.yaml:3: probes.trace.enabled: expected true or false"),
        ("probes:\n  bypass:\n    mode: fast\n", "w.yaml:3: probes.bypass.mode: expected one of observe, accelerate, off"),
        ("probes:\n  sched:\n    pids: [1, -2]\n", "w.yaml:3: probes.sched.pids: item 1: expected an integer from 1 to 4194304"),
        ("probes:\n  sched:\n    ringbuf_pages: 48\n", "w.yaml:3: probes.sched.ringbuf_pages: expected a power of two"),
        ("probes:\n  trace:\n    comms: [averyveryverylongname]\n", "w.yaml:3: probes.trace.comms: item 0: expected a command name"),
        ("probes:\n  trace:\n    cgroups: [/no/such/cgroup]\n", "w.yaml:3: probes.trace.cgroups: item 0: cgroup /no/such/cgroup not found"),
        ("probes:\n  bypass:\n    interfaces: [lo]\n", "w.yaml:3: probes.bypass.interfaces: no longer used (stack bytes now come from each connection's TCP counters, on every interface): remove the key"),
        ("alertmanager:\n  urls: [localhost:9093]\n", "w.yaml:2: alertmanager.urls: item 0: expected an http:// or https:// URL"),
        ("alertmanager:\n  urls: [http://am:s3cret@am:9093]\n", "w.yaml:2: alertmanager.urls: item 0: expected a URL without user:password@"),
        ("otlp:\n  headers: [a, b]\n", "w.yaml:2: otlp.headers: expected a map of names to strings"),
        ("metrics: [1, 2]\n", "w.yaml:1: metrics: expected a map of keys"),
        ("metrics:\n  listen: a:1\n  listen: b:2\n", "w.yaml:3: metrics.listen: given twice"),
        ("metrics:\n  listen: [unclosed\n", "w.yaml:3: not valid YAML"),
        (
            "probes:\n  trace:\n    enabled: false\n    pids: [1]\n",
            "w.yaml:3: probes.trace.enabled: false, but probes.trace names processes",
        ),
        ("kubernetes:\n  enabled: maybe\n", "w.yaml:2: kubernetes.enabled: expected auto, true or false, got 'maybe'"),
        ("kubernetes:\n  api_server: http://10.43.0.1:443\n", "w.yaml:2: kubernetes.api_server: expected an https:// URL"),
        ("kubernetes:\n  api_server: https://10.43.0.1:99999\n", "w.yaml:2: kubernetes.api_server: expected an https:// URL"),
        ("kubernetes:\n  node_name: ''\n", "w.yaml:2: kubernetes.node_name: expected a non-empty string, got ''"),
        ("kubernetes:\n  timeout_s: 0\n", "w.yaml:2: kubernetes.timeout_s: expected a number from 0.1 to 300, got 0"),
        ("kubernetes:\n  resync_s: 0.5\n", "w.yaml:2: kubernetes.resync_s: expected a number from 1 to 86400, got 0.5"),
        ("kubernetes:\n  token_file: null\n", "w.yaml:2: kubernetes.token_file: expected a non-empty string, got None"),
        ("kubernetes:\n  watch: true\n", "w.yaml:2: kubernetes.watch: unknown key (expected one of: enabled, node_name"),
    ],
)  # fmt: skip
def test_each_mistake_names_file_line_key_and_expectation(text, message):
    with pytest.raises(ConfigError) as err:
        parse(text, "w.yaml")
    assert str(err.value).startswith(message), str(err.value)
    assert "s3cret" not in str(err.value)  # a password in a URL is never repeated


def test_kubernetes_enabled_is_auto_true_or_false():
    assert defaults()["kubernetes"]["enabled"] == "auto"
    for text, value in (("true", True), ("false", False), ("auto", "auto")):
        assert parse(f"kubernetes:\n  enabled: {text}\n")["kubernetes"]["enabled"] == value


def test_an_unreadable_file_says_so(tmp_path):
    with pytest.raises(ConfigError, match=r"nope.yaml: cannot read: No such file"):
        load(tmp_path / "nope.yaml")


def test_the_shipped_example_is_valid_and_documents_every_key():
    example = ROOT / "deploy/wasmtop.yaml"
    assert load(example) == defaults()  # every key at its default, as the file says
    text, doc = example.read_text(), (ROOT / "docs/config.md").read_text()
    for key in schema_keys():
        assert f"`{key}`" in doc, f"docs/config.md does not document {key}"
        spec = SCHEMA
        for part in key.split("."):
            spec = spec[part]
        if spec.doc.startswith("no longer used"):  # loads, for older files; not shown
            assert key.rsplit(".", 1)[-1] + ":" not in text, f"deploy/wasmtop.yaml shows {key}"
            continue
        assert key.rsplit(".", 1)[-1] + ":" in text, f"deploy/wasmtop.yaml lacks {key}"
    assert set(SCHEMA) <= {line.split(":")[0] for line in text.splitlines()}


def test_daemon_refuses_a_bad_config_with_exit_2_and_file_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("metrics:\n  listen: 127.0.0.1:9464\n  max_workloads: -1\n")
    for extra in ([], ["--check"]):
        out = subprocess.run(
            [*wasmtop_cmd(), "daemon", "--config", str(bad), *extra],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert out.returncode == 2
        assert f"{bad}:3: metrics.max_workloads: expected an integer >= 0, got -1" in out.stderr
    good = tmp_path / "good.yaml"
    good.write_text("metrics: {listen: '127.0.0.1:9464'}\n")
    out = subprocess.run(
        [*wasmtop_cmd(), "daemon", "--config", str(good), "--check"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0 and "valid" in out.stdout


def test_check_notes_a_rule_the_reporting_threshold_leaves_out_and_passes(tmp_path, capsys):
    from wasmtop.cli import main

    (tmp_path / "rules.yaml").write_text(
        "rules:\n  - name: Early\n    quantity: sched.preempt_delay_ms\n    threshold: 10\n"
        "    severity: page\n    annotations: {summary: s}\n"
    )
    config = tmp_path / "c.yaml"
    config.write_text(
        "probes:\n  sched:\n    threshold_ms: 25\nalerts:\n  rule_files: [rules.yaml]\n"
    )
    assert main(["daemon", "--check", "--config", str(config)]) == 0
    out, err = capsys.readouterr()
    assert "valid, 1 alert rules" in out
    assert err == (
        f"wasmtop: note: {tmp_path / 'rules.yaml'}:2: rule Early will not be evaluated: its "
        "threshold 10 ms is below probes.sched.threshold_ms (25 ms), under which the kernel "
        "counts preemptions without reporting them\n"
    )


# -- web config (exporter-toolkit format) -------------------------------------------------------


def write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


def test_web_config_reads_users_and_resolves_files_next_to_it(tmp_path, tls_files):
    cert, key = tls_files
    p = write(  # beside the certificate: a relative cert_file is relative to this file
        cert.parent,
        "web.yaml",
        f"""
        tls_server_config:
          cert_file: {cert.name}
          key_file: {key}
        basic_auth_users:
          prom: $2b$04$abcdefghijklmnopqrstuuJ5v6Qv3rW2H3b8c5d6e7f8g9h0i1j2k
        """,
    )
    web = load_web_config(p)
    assert web.tls and web.cert_file == cert and web.key_file == key
    assert list(web.users) == ["prom"]
    assert load_web_config(None).tls is False


@pytest.mark.parametrize(
    "text, message",
    [
        ("tls_server_config:\n  cert_file: x.crt\n", "tls_server_config: expected both cert_file and key_file"),
        ("basic_auth_users:\n  prom: plaintext\n", "basic_auth_users.prom: expected a bcrypt hash"),
        ("tls_server_config:\n  min_version: TLS10\n", "web.yaml:2: tls_server_config.min_version: expected one of TLS12, TLS13"),
        ("tls_config: {}\n", "web.yaml:1: tls_config: unknown key"),
        ("tls_server_config:\n  cert_file: missing.crt\n  key_file: missing.key\n", "tls_server_config.cert_file: expected a readable file"),
    ],
)  # fmt: skip
def test_web_config_mistakes_are_named(tmp_path, text, message):
    p = write(tmp_path, "web.yaml", text)
    with pytest.raises(ConfigError) as err:
        load_web_config(p)
    assert message in str(err.value)
    assert str(err.value).startswith(str(p))


def test_an_empty_interfaces_list_from_older_sample_configs_still_loads(tmp_path):
    old = tmp_path / "old.yaml"
    old.write_text("probes:\n  bypass:\n    mode: observe\n    interfaces: []\n")
    assert load(old) == defaults()
