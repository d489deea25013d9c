"""Every loader fails one way: a malformed config, web config or rule file is a ConfigError
naming the file (and the line where one applies), `wasmtop daemon --check` and `wasmtop rules
check` exit 2 without a traceback, and a SIGHUP with such a file leaves the daemon running with
its last good config, the refusal counted.

First the fuzzing findings of the hardening issue, one row each (each used to raise something
else than ConfigError, or to pass a number that is not finite); then property-based tests that
generate YAML by structure (keys of the real schemas, scalar and tag mutations, aliases, deep
nesting, random bytes) and check that each loader returns a value or raises ConfigError. The
examples are few by default; `make fuzz` runs many more (tests/conftest.py, profile `fuzz`).
"""

from __future__ import annotations

import json
import math
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from support import wasmtop_cmd
from wasmtop import daemon
from wasmtop.alerts import render, rules
from wasmtop.alerts.quantities import QUANTITIES
from wasmtop.cli import main
from wasmtop.config import SCHEMA, ConfigError, Key, load
from wasmtop.web import WEB_SCHEMA, load_web_config

LONG = "x" * 300  # a file name longer than any file system takes (ENAMETOOLONG)
DIGITS = "9" * 400  # an integer no float holds
GOOD_RULE = (
    "rules:\n  - name: Slow\n    quantity: requests.latency_ms.p99\n    threshold: 10\n"
    "    for: 30s\n    severity: critical\n    annotations:\n      summary: slow\n"
)

# (what, the config file c.yaml, other files beside it, what `daemon --check` says after
# "wasmtop: "). Paths in the message are relative to the directory of the files.
CONFIG_FINDINGS: list[tuple[str, str | bytes, dict[str, str | bytes], str]] = [
    ("complex key (TypeError)", "? [a]\n: 1\n", {},
     "c.yaml:1: the top level: expected a key name (one of: probes, collector"),
    ("impossible date (ValueError)", "collector:\n  tick_s: 2001-13-45\n", {},
     "c.yaml:2: collector.tick_s: expected a value YAML can read, got !!timestamp '2001-13-45'"),
    ("unknown tag (ConstructorError)", "collector:\n  tick_s: !foo x\n", {},
     "c.yaml:2: collector.tick_s: expected a value YAML can read: could not determine a "
     "constructor for the tag '!foo'"),
    ("!!bool x (KeyError)", "collector:\n  tick_s: !!bool x\n", {},
     "c.yaml:2: collector.tick_s: expected a value YAML can read, got !!bool 'x'"),
    ("!!timestamp x (AttributeError)", "collector:\n  tick_s: !!timestamp x\n", {},
     "c.yaml:2: collector.tick_s: expected a value YAML can read, got !!timestamp 'x'"),
    ("400-digit integer (OverflowError)", f"collector:\n  max_events: {DIGITS}\n", {},
     "c.yaml:2: collector.max_events: expected an integer >= 0 up to 9223372036854775807, "
     "got 999"),
    ("400-digit number (OverflowError)", f"metrics:\n  stale_after_s: {DIGITS}\n", {},
     "c.yaml:2: metrics.stale_after_s: expected a number >= 1, got 999"),
    ("recursive alias in a map", "collector: &a\n  tick_s: *a\n", {},
     "c.yaml:1: an alias inside the node it names: expected no recursive alias"),
    ("recursive alias in a list", "otlp:\n  headers: &a [*a]\n", {},
     "c.yaml:2: an alias inside the node it names: expected no recursive alias"),
    ("not UTF-8 (UnicodeDecodeError)", b"collector:\n  tick_s: \xff\n", {},
     "c.yaml:2: expected UTF-8 text, got byte 0xff"),
    ("nested 1000 deep (RecursionError)", "otlp:\n  headers: " + "[" * 1000 + "]" * 1000, {},
     "c.yaml: expected at most 50 levels of nesting"),
    ("300-character TLS file name (OSError)",
     f"grpc:\n  listen: 127.0.0.1:9465\n  tls_cert_file: {LONG}\n  tls_key_file: {LONG}\n"
     "  allow_unauthenticated: true\n", {},
     "c.yaml:3: grpc.tls_cert_file: expected a readable file, got 'xxx"),
    ("300-character cgroup (OSError)", f"probes:\n  sched:\n    cgroup: /{LONG}\n", {},
     "c.yaml:3: probes.sched.cgroup: "),
    ("threshold_ms .nan", "probes: {sched: {threshold_ms: .nan}}\n", {},
     "c.yaml:1: probes.sched.threshold_ms: expected a number from 0 to 3600000, got nan "
     "(not a finite number)"),
    ("stale_after_s .nan", "metrics: {stale_after_s: .nan}\n", {},
     "c.yaml:1: metrics.stale_after_s: expected a number >= 1, got nan (not a finite number)"),
    ("tick_s .inf", "collector: {tick_s: .inf}\n", {},
     "c.yaml:1: collector.tick_s: expected a number from 0.1 to 60, got inf "
     "(not a finite number)"),
    ("web config: complex key", "metrics:\n  web_config_file: w.yaml\n",
     {"w.yaml": "? [a]\n: 1\n"}, "w.yaml:1: the top level: expected a key name"),
    ("web config: not UTF-8", "metrics:\n  web_config_file: w.yaml\n",
     {"w.yaml": b"basic_auth_users:\n  \xfe: x\n"}, "w.yaml:2: expected UTF-8 text, got byte 0xfe"),
    ("web config: 300-character cert file", "metrics:\n  web_config_file: w.yaml\n",
     {"w.yaml": f"tls_server_config:\n  cert_file: {LONG}\n  key_file: {LONG}\n"},
     "w.yaml: tls_server_config.cert_file: expected a readable file, got 'xxx"),
    ("rule file: for .inf", "alerts:\n  rule_files: [r.yaml]\n",
     {"r.yaml": GOOD_RULE.replace("for: 30s", "for: .inf")},
     "r.yaml:5: rules[0].for: expected a duration from 0 to 8760h (a year), got inf"),
    ("a route template that is no path", "collector:\n  route_templates: ['users/{id}']\n", {},
     "c.yaml:2: collector.route_templates: item 0: expected a path such as /users/{id}/orders"),
    ("route templates of a workload pattern, one no path",
     "collector:\n  route_templates:\n    shop/*: ['/a/{id}', 'b']\n", {},
     "c.yaml:3: collector.route_templates: shop/*: item 1: expected a path such as /users/{id}"),
    ("route templates that are one string", "collector:\n  route_templates: /users/{id}\n", {},
     "c.yaml:2: collector.route_templates: expected a list of route templates, or a map of"),
    ("an OTLP endpoint of another scheme", "otlp:\n  endpoint: ftp://x:1\n", {},
     "c.yaml:2: otlp.endpoint: expected HOST:PORT or an http(s)://HOST:PORT URL"),
]  # fmt: skip

# (what, the rule file r.yaml, what `rules check` says after "wasmtop: ")
RULE_FINDINGS: list[tuple[str, str | bytes, str]] = [
    ("complex key (TypeError)", "? [a]\n: 1\n", "r.yaml:1: the top level: expected a key name"),
    ("complex key in a rule", GOOD_RULE + "    ? [a]\n    : 1\n",
     "r.yaml:9: rules[0]: expected a key name (one of: name, quantity"),
    ("impossible date", GOOD_RULE.replace("threshold: 10", "threshold: 2001-13-45"),
     "r.yaml:4: rules[0].threshold: expected a value YAML can read, got !!timestamp '2001-13-45'"),
    ("unknown tag", GOOD_RULE.replace("threshold: 10", "threshold: !foo x"),
     "r.yaml:4: rules[0].threshold: expected a value YAML can read: could not determine"),
    ("!!bool x", GOOD_RULE.replace("threshold: 10", "threshold: !!bool x"),
     "r.yaml:4: rules[0].threshold: expected a value YAML can read, got !!bool 'x'"),
    ("!!timestamp x", GOOD_RULE.replace("threshold: 10", "threshold: !!timestamp x"),
     "r.yaml:4: rules[0].threshold: expected a value YAML can read, got !!timestamp 'x'"),
    ("400-digit threshold", GOOD_RULE.replace("threshold: 10", f"threshold: {DIGITS}"),
     "r.yaml:4: rules[0].threshold: expected a number, got 999"),
    ("recursive alias", "rules: &a [*a]\n",
     "r.yaml:1: an alias inside the node it names: expected no recursive alias"),
    ("not UTF-8", GOOD_RULE.replace("slow\n", "sl\xffw\n").encode("latin-1"),
     "r.yaml:8: expected UTF-8 text, got byte 0xff"),
    ("nested 1000 deep", "rules: " + "[" * 1000 + "]" * 1000,
     "r.yaml: expected at most 50 levels of nesting"),
    ("threshold .nan", GOOD_RULE.replace("threshold: 10", "threshold: .nan"),
     "r.yaml:4: rules[0].threshold: expected a number, got nan (not a finite number)"),
    ("for .inf", GOOD_RULE.replace("for: 30s", "for: .inf"),
     "r.yaml:5: rules[0].for: expected a duration from 0 to 8760h (a year), got inf"),
    ("for of a million years", GOOD_RULE.replace("for: 30s", "for: 8760000000h"),
     "r.yaml:5: rules[0].for: expected a duration from 0 to 8760h (a year), got '8760000000h'"),
    ("for of 5000 digits", GOOD_RULE.replace("for: 30s", f"for: {'9' * 5000}s"),
     "r.yaml:5: rules[0].for: expected a duration from 0 to 8760h (a year), got '999"),
    ("keep_firing_for .nan", GOOD_RULE + "    keep_firing_for: .nan\n",
     "r.yaml:9: rules[0].keep_firing_for: expected a duration from 0 to 8760h (a year), got nan"),
    ("consecutive of 400 digits", GOOD_RULE.replace("for: 30s", f"consecutive: {DIGITS}"),
     "r.yaml:5: rules[0].consecutive: expected an integer from 1 to 1000000, got 999"),
    ("quantity a list", GOOD_RULE.replace("requests.latency_ms.p99", "[a]"),
     "r.yaml:3: rules[0].quantity: expected one of sched.preempt_delay_ms"),
]  # fmt: skip


def write_files(d: Path, files: dict[str, str | bytes]) -> None:
    for name, content in files.items():
        data = content if isinstance(content, bytes) else content.encode()
        (d / name).write_bytes(data)


def said(capsys: pytest.CaptureFixture, d: Path) -> str:
    out = capsys.readouterr()
    return (out.err + out.out).replace(f"{d}/", "")


@pytest.mark.parametrize(
    "what, text, others, message", CONFIG_FINDINGS, ids=[r[0] for r in CONFIG_FINDINGS]
)
def test_daemon_check_refuses_each_finding_with_exit_2_and_file_line(
    tmp_path, capsys, what, text, others, message
):
    write_files(tmp_path, {"c.yaml": text, **others})
    code = main(["daemon", "--check", "--config", str(tmp_path / "c.yaml")])
    out = said(capsys, tmp_path)
    assert code == 2, out
    assert out.startswith("wasmtop: " + message), out
    assert out.count("\n") == 1, out  # one line, no traceback


def test_daemon_check_in_a_process_of_its_own_exits_2_without_a_traceback(tmp_path):
    for what, text, others, message in (CONFIG_FINDINGS[0], CONFIG_FINDINGS[9]):
        write_files(tmp_path, {"c.yaml": text, **others})
        out = subprocess.run(
            [*wasmtop_cmd(), "daemon", "--check", "--config", str(tmp_path / "c.yaml")],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert out.returncode == 2, (what, out.stderr)
        assert out.stderr == f"wasmtop: {tmp_path}/{message}" + out.stderr.split(message)[1]
        assert "Traceback" not in out.stderr


def test_a_file_name_too_long_is_exit_2_for_daemon_check_and_rules_check(tmp_path, capsys):
    name = str(tmp_path / LONG)
    assert main(["daemon", "--check", "--config", name]) == 2
    assert capsys.readouterr().err == f"wasmtop: {name}: cannot read: File name too long\n"
    assert main(["rules", "check", name]) == 2
    assert capsys.readouterr().err == (
        f"wasmtop: {name}: cannot read rule file: File name too long\n"
    )


@pytest.mark.parametrize("what, text, message", RULE_FINDINGS, ids=[r[0] for r in RULE_FINDINGS])
def test_rules_check_refuses_each_finding_with_exit_2_and_file_line(
    tmp_path, capsys, what, text, message
):
    write_files(tmp_path, {"r.yaml": text})
    code = main(["rules", "check", str(tmp_path / "r.yaml")])
    out = said(capsys, tmp_path)
    assert code == 2, out
    assert out.startswith("wasmtop: " + message), out
    assert out.count("\n") == 1, out


def test_rules_render_refuses_an_infinite_for_rather_than_crashing(tmp_path, capsys):
    write_files(tmp_path, {"r.yaml": GOOD_RULE.replace("for: 30s", "for: .inf")})
    assert main(["rules", "render", str(tmp_path / "r.yaml")]) == 2
    assert said(capsys, tmp_path).startswith("wasmtop: r.yaml:5: rules[0].for: expected")


# -- the reload path (SIGHUP): the daemon's own reload(), no probes started ---------------------


@pytest.fixture
def running(tmp_path) -> daemon.Daemon:
    """A daemon as `run` builds it from a good config, nothing started."""
    path = tmp_path / "c.yaml"
    path.write_text("metrics: {listen: '127.0.0.1:0'}\n")
    config, web, loaded = daemon.load_all(path)
    return daemon.Daemon(path, config, web, loaded)


@pytest.mark.parametrize(
    "what, text, others, message", CONFIG_FINDINGS, ids=[r[0] for r in CONFIG_FINDINGS]
)
def test_a_reload_with_each_finding_keeps_the_running_config_and_counts_the_refusal(
    running, tmp_path, capsys, what, text, others, message
):
    config, web, loaded = running.config, running.web, running.rules
    write_files(tmp_path, {"c.yaml": text, **others})
    assert running.reload() is False  # no probe restart
    assert running.config is config and running.web is web and running.rules is loaded
    assert running.reloads == {"ok": 0, "failed": 1} and running.last_reload_ok is False
    log = said(capsys, tmp_path)
    assert log.startswith(f"wasmtop daemon: reload refused, the running config stays: {message}")
    metrics = running.metrics().decode()
    assert 'wasmtop_config_reloads_total{result="failed"} 1' in metrics
    assert "wasmtop_config_last_reload_successful 0" in metrics


def test_an_unexpected_exception_in_a_loader_is_a_refused_reload_too(running, monkeypatch, capsys):
    def broken(path: Path) -> Any:
        raise RuntimeError("a bug in a loader")

    config = running.config
    monkeypatch.setattr(daemon, "load_all", broken)
    assert running.reload() is False
    assert running.config is config and running.reloads == {"ok": 0, "failed": 1}
    assert capsys.readouterr().err == (
        "wasmtop daemon: reload refused, the running config stays: unexpected RuntimeError "
        "reading the config: a bug in a loader\n"
    )


# -- property-based: generated files give a value or ConfigError, nothing else ------------------

hypothesis = pytest.importorskip("hypothesis")
st = hypothesis.strategies
given = hypothesis.given

# Scalars as YAML text: plain, quoted, special floats, tags PyYAML knows and does not, dates
# that are not dates, aliases (to anchors that may be missing, or be the node itself).
SPECIAL = [
    ".nan", ".NaN", ".inf", "-.inf", "1e999", "-1e999", DIGITS, "-" + DIGITS, "9" * 5000,
    "2001-13-45", "2001-02-30", "2001-01-01", "2001-01-01 25:61:61", "~", "null", "true",
    "yes", "off", "''", '""', "0x1F", "0o17", "0b101", "1_000", "1:30", "190:20:30",
    "!!bool x", "!!timestamp x", "!foo x", "!!int x", "!!float x", "!!float " + DIGITS,
    "!!binary x", "!!binary AAAA", "!!set {a}", "!!omap [a]", "!!pairs [a]", "!!str 1",
    "!!python/object:os.system x", "!!null x", "!!merge x", "!<tag:x> y", "*a", "*b", "*nope",
    "{<<: 1}", "{<<: [1]}", "{<<: *a}", "? [a]", "[? [a] : 1]", "-1", "0", "1", "0.05", "60",
    "127.0.0.1:9464", "'[::1]:1'", "http://x", "https://10.0.0.1:443", "https://[::1", "lo",
    "10.0.0.0/8", "/", "'\\0'", '"\\0"', '"\\ud800"', "30s", "5m", "1h30m", "500ms", "0s",
    "99999999999999h", LONG, "$2b$04$abc", "'{{ $value }}'", "'{{ .Value }}'", "'{{'",
]  # fmt: skip
scalars = st.one_of(
    st.sampled_from(SPECIAL),
    st.integers().map(str),
    st.floats().map(repr),
    st.text(max_size=12).map(json.dumps),  # double-quoted, escapes and all
    st.text(alphabet="abcxyz019._-/:$ ", min_size=1, max_size=12),
)


def flow_list(items: list[str]) -> str:
    return "[" + ", ".join(items) + "]"


def flow_map(pairs: list[tuple[str, str]]) -> str:
    return "{" + ", ".join(f"{k}: {v}" for k, v in pairs) + "}"


def anchored(values: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """A value, sometimes with an anchor a later (or inner: recursive) *a names."""
    return st.tuples(st.sampled_from(["", "", "", "&a ", "&b "]), values).map("".join)


values = st.recursive(
    scalars,
    lambda inner: anchored(
        st.one_of(
            st.lists(inner, max_size=4).map(flow_list),
            st.lists(st.tuples(scalars, inner), max_size=4).map(flow_map),
        )
    ),
    max_leaves=12,
)


def documents(schema: dict[str, Any], good: Callable[[str, Key], st.SearchStrategy[str]]):
    """A flow-style document with keys of ``schema`` (some unknown, some twice), each value
    either good for its key, a section, or any generated value."""

    def section(s: dict[str, Any], depth: int) -> st.SearchStrategy[str]:
        def value(key: str) -> st.SearchStrategy[str]:
            spec = s[key]
            if isinstance(spec, dict):
                return st.one_of(section(spec, depth + 1), values, st.just("~"))
            return st.one_of(good(key, spec), good(key, spec), values)

        key_names = sorted(s) + ["unknown", "? [a]"]
        pair = st.sampled_from(key_names).flatmap(
            lambda k: (
                value(k).map(lambda v, k=k: (k, v)) if k in s else values.map(lambda v: (k, v))
            )
        )
        return anchored(st.lists(pair, max_size=6).map(flow_map))

    return section(schema, 0)


def config_good(key: str, spec: Key) -> st.SearchStrategy[str]:
    default = spec.default
    if isinstance(default, bool) or default is None:
        return st.sampled_from(["true", "false", "~", "auto"])
    if isinstance(default, (int, float)):
        return st.one_of(
            st.just(repr(default)), st.integers(-5, 10**7).map(str), st.floats().map(repr)
        )
    if isinstance(default, list):
        return st.lists(st.one_of(st.integers(0, 5000).map(str), scalars), max_size=3).map(
            flow_list
        )
    return st.one_of(st.just(json.dumps(default)), scalars)


def mutated(texts: st.SearchStrategy[str]) -> st.SearchStrategy[bytes]:
    """A text, encoded, with a few bytes changed, dropped or inserted (or cut short)."""

    @st.composite
    def mutate(draw: Callable) -> bytes:
        data = bytearray(draw(texts).encode())
        for _ in range(draw(st.integers(0, 4))):
            at = draw(st.integers(0, len(data)))
            op = draw(st.sampled_from(["set", "drop", "insert", "cut"]))
            byte = draw(st.sampled_from([0x00, 0x0A, 0x22, 0x26, 0x2A, 0x3A, 0x5B, 0x7B, 0xFF]))
            if op == "insert" or (op == "set" and at == len(data)):
                data[at:at] = bytes([byte])
            elif op == "set":
                data[at] = byte
            elif op == "drop":
                del data[at : at + 1]
            else:
                del data[at:]
        return bytes(data)

    return mutate()


def nested(opening: str, closing: str) -> st.SearchStrategy[bytes]:
    # Deeper than ~330 levels, PyYAML recurses out (0.3 s at 1000: the rows above cover it).
    return st.integers(1, 400).map(lambda n: (opening * n + closing * n).encode())


def files(documents: st.SearchStrategy[str], wrap: Callable[[str], str] = lambda x: x):
    """Bytes of a file: a generated document (block style around it, or not), mutated, random
    bytes, or nested deep."""
    return st.one_of(
        documents.map(lambda t: wrap(t).encode()),
        mutated(documents.map(wrap)),
        st.binary(max_size=200),
        nested("[", "]").map(lambda b: b"rules: " + b),
        nested("{a: ", "}"),
        nested("- ", "x"),
    )


@pytest.fixture(scope="module")
def workdir() -> Path:
    with tempfile.TemporaryDirectory(prefix="wasmtop-fuzz-") as d:
        yield Path(d)


def loads_or_config_error(loader: Callable[[Path], Any], data: bytes, path: Path) -> Any:
    path.write_bytes(data)
    try:
        return loader(path)
    except ConfigError as exc:
        assert str(exc).startswith(f"{path}:"), str(exc)  # FILE:LINE: or FILE:
        assert "\n" not in str(exc).strip() or "YAML" in str(exc), str(exc)
        return None


def numbers_in(value: Any) -> list[float]:
    if isinstance(value, dict):
        return [n for v in value.values() for n in numbers_in(v)]
    if isinstance(value, list):
        return [n for v in value for n in numbers_in(v)]
    return [value] if isinstance(value, float) else []


@given(files(documents(SCHEMA, config_good)))
def test_the_config_loader_gives_a_config_or_a_config_error(workdir, data):
    config = loads_or_config_error(load, data, workdir / "c.yaml")
    if config is not None:
        assert all(math.isfinite(n) for n in numbers_in(config))


def web_good(key: str, spec: Key) -> st.SearchStrategy[str]:
    if key == "basic_auth_users":
        hashes = st.sampled_from(["$2b$04$" + "a" * 53, "$2y$10$x", "plain", "1", "~"])
        return st.lists(st.tuples(scalars, hashes), max_size=3).map(flow_map)
    if key in ("client_auth_type", "min_version"):
        return st.sampled_from(["NoClientCert", "RequireAndVerifyClientCert", "TLS12", "TLS13"])
    return st.sampled_from(["c.yaml", "missing.crt", LONG, "/", "'\\0'", "~", "''"])


@given(files(documents(WEB_SCHEMA, web_good)))
def test_the_web_config_loader_gives_a_web_config_or_a_config_error(workdir, data):
    loads_or_config_error(load_web_config, data, workdir / "w.yaml")


RULE_KEYS: dict[str, Any] = {
    **{k: v for k, v in rules.RULE_SCHEMA.items() if isinstance(v, Key)},
    "labels": {"team": Key("", str, ""), "workload": Key("", str, ""), "on": Key("", str, "")},
    "annotations": {
        "summary": Key("", str, ""),
        "description": Key("", str, ""),
        "runbook_url": Key("", str, ""),
    },
}


def rule_good(key: str, spec: Key) -> st.SearchStrategy[str]:
    options: dict[str, list[str]] = {
        "name": ["Slow", "Slow", "slow down", "_x"],
        "quantity": sorted(QUANTITIES),
        "comparator": ["'>'", "'>='", "'<'", "'=='", "'=>'"],
        "severity": ["critical", "warning", "info"],
        "runbook_url": ["docs/alerts.md#x", "https://x", "see wiki"],
    }
    if key in options:
        return st.sampled_from(options[key])
    if key in ("threshold", "consecutive"):
        return st.one_of(st.integers(-2, 10**7).map(str), st.floats().map(repr), scalars)
    if key in ("for", "keep_firing_for"):
        durations = ["30s", "5m", "1h30m", "500ms", "0s", "8760h", "8761h", "1e9"]
        return st.one_of(st.sampled_from(durations), st.floats().map(repr), scalars)
    return st.one_of(
        st.sampled_from(["'{{ $value }} over {{ $threshold }}'", "'{{ $labels.workload }}'"]),
        scalars,
    )


def rule_files() -> st.SearchStrategy[bytes]:
    rule = documents(RULE_KEYS, rule_good)
    body = st.lists(rule, max_size=3).map(flow_list)
    return files(st.one_of(body, values), wrap=lambda t: f"rules: {t}\n")


@given(rule_files())
def test_the_rule_loader_gives_rules_or_a_config_error(workdir, data):
    loaded = loads_or_config_error(rules.load, data, workdir / "r.yaml")
    for rule in loaded or []:  # what `rules check` and `rules render` do next
        for n in (rule.threshold, rule.for_s or 0.0, rule.keep_firing_for_s):
            assert math.isfinite(n)
        try:
            render.alerting_rule(rule, 30.0, 60.0)
        except render.RenderError:
            pass


def test_a_file_past_the_size_cap_is_refused_without_reading_it_all(tmp_path):
    from wasmtop.config import MAX_FILE_BYTES, ConfigError, load

    big = tmp_path / "big.yaml"
    big.write_text("# " + "x" * MAX_FILE_BYTES + "\n")
    with pytest.raises(ConfigError, match=f"{big}: expected at most {MAX_FILE_BYTES} bytes"):
        load(big)
    with pytest.raises(ConfigError, match="expected at most"):
        load("/dev/zero")  # endless: read up to the cap, then refused
