"""`wasmtop rules render|check|test`: the alert rules as Prometheus sees them."""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from .config import ConfigError

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def add_parser(sub: argparse._SubParsersAction) -> None:
    from .args import positive_seconds

    p = sub.add_parser(
        "rules",
        help="alert rules: render them for Prometheus, check a rule file, run the rule tests",
        description="Alert rules (docs/alerts.md). The daemon evaluates them on the node; "
        "`render` writes the same alerts over the exported metrics for Prometheus.",
    )
    rsub = p.add_subparsers(dest="rules_command", metavar="SUBCOMMAND", required=True)
    r = rsub.add_parser(
        "render",
        help="write a Prometheus rule file (or PrometheusRule) of the rules",
        description="Write the rules as Prometheus alerting rules over the metrics the daemon "
        "exports. Without FILE, the shipped defaults (alerts/rules/default.yaml). Exit 2 when "
        "a rule cannot be expressed in PromQL (the message says which and why).",
    )
    r.add_argument("files", nargs="*", metavar="FILE", help="rule files (default: shipped)")
    r.add_argument(
        "--format",
        choices=("prometheus", "prometheusrule"),
        default="prometheus",
        help="prometheus: a rule file for rule_files; prometheusrule: a prometheus-operator "
        "PrometheusRule resource",
    )
    r.add_argument(
        "--interval",
        type=positive_seconds,
        default=30.0,
        metavar="SECONDS",
        help="the group's evaluation interval; `consecutive: N` on a gauge becomes "
        "for: (N-1) x interval (default 30)",
    )
    r.add_argument(
        "--window",
        type=positive_seconds,
        default=60.0,
        metavar="SECONDS",
        help="range of rate()/increase() for counters and events (default 60)",
    )
    r.add_argument("--name", default="wasmtop", help="PrometheusRule metadata.name")
    r.add_argument("--namespace", default=None, help="PrometheusRule metadata.namespace")
    r.add_argument("-o", "--output", metavar="PATH", help="write here instead of stdout")

    c = rsub.add_parser(
        "check",
        help="validate rule files: 0 valid, 2 not (file:line: what was expected)",
        description="Check rule files the way the daemon loads them. A rule that is valid on "
        "the node but cannot be rendered for Prometheus is reported as a note.",
    )
    c.add_argument("files", nargs="+", metavar="FILE")

    t = rsub.add_parser(
        "test",
        help="run the promtool unit tests of the rules (alerts/tests/)",
        description="Render the shipped rules and run `promtool test rules` on the shipped "
        "test files (or the given ones, whose rule_files name default.rules.yaml).",
    )
    t.add_argument("files", nargs="*", metavar="TEST_FILE")


def main(args: argparse.Namespace) -> int:
    from .alerts import render

    try:
        if args.rules_command == "render":
            return _render(args)
        if args.rules_command == "check":
            return _check(args.files)
        return _test(args.files)
    except (ConfigError, render.RenderError) as exc:
        print(f"wasmtop: {exc}", file=sys.stderr)
        return EXIT_USAGE


def _render(args: argparse.Namespace) -> int:
    from .alerts import render, rules

    loaded = rules.load_all(args.files)
    kw = {"interval_s": args.interval, "window_s": args.window}
    if args.format == "prometheusrule":
        doc = render.prometheus_rule(loaded, name=args.name, namespace=args.namespace, **kw)
    else:
        doc = render.rule_groups(loaded, **kw)
    text = render.to_yaml(doc)
    if args.output:
        Path(args.output).write_text(text)
    else:
        sys.stdout.write(text)
    return EXIT_OK


def _check(files: list[str]) -> int:
    from .alerts import render, rules

    for f in files:
        loaded = rules.load(f)
        notes = []
        for rule in loaded:
            try:
                render.expression(rule, 60.0)
            except render.RenderError as exc:
                notes.append(f"  note: not renderable for Prometheus: {exc}")
        print(f"{f}: {len(loaded)} rules valid")
        for n in notes:
            print(n)
    return EXIT_OK


def _test(files: list[str]) -> int:
    from .alerts import render, rules

    promtool = shutil.which("promtool")
    if promtool is None:
        print("wasmtop: promtool not found (Debian: apt-get install prometheus)", file=sys.stderr)
        return EXIT_FAILED
    shipped = Path(rules.__file__).parent / "tests"
    tests = [Path(f) for f in files] or sorted(shipped.glob("*.yaml"))
    with tempfile.TemporaryDirectory(prefix="wasmtop-rules-") as tmp:
        rendered = Path(tmp) / "default.rules.yaml"
        rendered.write_text(render.to_yaml(render.rule_groups(rules.load_all([]))))
        copies = []
        for t in tests:
            copy = Path(tmp) / t.name
            shutil.copyfile(t, copy)
            copies.append(str(copy))
        done = subprocess.run([promtool, "test", "rules", *copies], cwd=tmp)
    return EXIT_OK if done.returncode == 0 else EXIT_FAILED
