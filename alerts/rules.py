"""Alert rule files: schema, loading, and errors that name file, line and expectation.

The format is documented in docs/alerts.md. A file is checked whole before any of it is used:
one bad rule refuses the file, and a daemon that is reloading keeps the rules it had.
Checking reuses the YAML checker (wasmtop/yamlcheck.py), so the messages read the same.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..yamlcheck import (
    ConfigError,
    Key,
    child,
    choice,
    compose,
    defaults,
    node_where,
    nonempty_text,
    number,
    read_tree,
    shown,
)
from ..yamlcheck import walk as walk_map
from .quantities import QUANTITIES, Quantity

DEFAULT_RULES = Path(__file__).parent / "rules" / "default.yaml"

COMPARATORS: dict[str, Callable[[float, float], bool]] = {
    ">": lambda v, t: v > t,
    ">=": lambda v, t: v >= t,
    "<": lambda v, t: v < t,
    "<=": lambda v, t: v <= t,
    "==": lambda v, t: v == t,
    "!=": lambda v, t: v != t,
}
# Labels the evaluator sets itself: a rule cannot override them.
RESERVED_LABELS = ("alertname", "severity", "node", "workload", "namespace", "pod", "probe")


class _Required:
    def __deepcopy__(self, memo: dict) -> _Required:  # yamlcheck.defaults() deep-copies defaults
        return self


_REQUIRED = _Required()
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_DURATION = re.compile(r"(?:(\d+)h)?(?:(\d+)m(?!s))?(?:(\d+)s)?(?:(\d+)ms)?")
# The template forms both the node and Prometheus expand the same way.
_TEMPLATE = re.compile(r"\{\{(.*?)\}\}", re.S)
_FORMS = re.compile(
    r"\s*(?:\$labels\.(?P<label>[A-Za-z_]\w*)|(?P<value>\$value)|(?P<threshold>\$threshold)"
    r'|printf\s+"%\.(?P<digits>\d)f"\s+\$value)\s*'
)
_THRESHOLD = re.compile(r"\{\{\s*\$threshold\s*\}\}")
TEMPLATE_FORMS = '{{ $labels.NAME }}, {{ $value }}, {{ $threshold }} or {{ printf "%.2f" $value }}'


@dataclass(frozen=True)
class Rule:
    name: str
    quantity: Quantity
    comparator: str
    threshold: float
    for_s: float | None  # active this long before firing (gauges)
    consecutive: int  # this many in a row before firing (events; gauges: evaluations)
    keep_firing_for_s: float
    severity: str
    labels: tuple[tuple[str, str], ...]
    annotations: tuple[tuple[str, str], ...]  # {{ $threshold }} already replaced
    # Where it is written, for messages; not part of what the rule is (a rule moved within its
    # file is the same rule, and keeps its alert states across a reload).
    where: str = field(compare=False)  # FILE:LINE
    path: str = field(compare=False)  # rules[N] in its file

    @property
    def identity(self) -> tuple[str, str]:
        return (self.name, self.severity)

    def crosses(self, value: float) -> bool:
        return COMPARATORS[self.comparator](value, self.threshold)


def below_reporting_floor(rules: Sequence[Rule], floor_ms: float) -> list[Rule]:
    """Rules on preemption events with a threshold under the kernel's reporting threshold: the
    events they need never arrive one by one (the kernel only counts them)."""
    return [
        r for r in rules if r.quantity.name == "sched.preempt_delay_ms" and r.threshold < floor_ms
    ]


MAX_DURATION_S = 8760 * 3600  # a year: longer is a mistake (and Prometheus stops at 292 y)


def duration(v: Any) -> float:
    """Seconds from a Prometheus duration (``30s``, ``5m``, ``1h30m``, ``500ms``) or a number
    of seconds; finite, from 0 to MAX_DURATION_S."""
    in_range = "expected a duration from 0 to 8760h (a year)"
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        if not (isinstance(v, int) or math.isfinite(v)) or not 0 <= v <= MAX_DURATION_S:
            raise ValueError(f"{in_range}, got {shown(v)}")
        return float(v)
    m = _DURATION.fullmatch(v) if isinstance(v, str) and v else None
    if not m or not any(m.groups()):
        raise ValueError(f"expected a duration such as 30s, 5m or 1h30m, got {shown(v)}")
    if any(len(g or "") > 12 for g in m.groups()):  # int() of 5000 digits is an error
        raise ValueError(f"{in_range}, got {shown(v)}")
    h, mi, s, ms = (int(g or 0) for g in m.groups())
    seconds = h * 3600 + mi * 60 + s + ms / 1000
    if seconds > MAX_DURATION_S:
        raise ValueError(f"{in_range}, got {shown(v)}")
    return seconds


def prometheus_duration(seconds: float) -> str:
    ms = round(seconds * 1000)
    if ms % 1000:
        return f"{ms}ms"
    s = ms // 1000
    out = ""
    for unit, size in (("h", 3600), ("m", 60), ("s", 1)):
        if s >= size:
            out += f"{s // size}{unit}"
            s %= size
    return out or "0s"


def _name(v: Any) -> str:
    if not isinstance(v, str) or not _NAME.fullmatch(v):
        raise ValueError(f"expected a name of letters, digits and _ (not first), got {shown(v)}")
    return v


def _quantity(v: Any) -> Quantity:
    if not isinstance(v, str) or v not in QUANTITIES:
        raise ValueError(f"expected one of {', '.join(QUANTITIES)}, got {shown(v)}")
    return QUANTITIES[v]


def _label_value(v: Any) -> str:
    if not isinstance(v, (str, int, float)) or isinstance(v, bool):
        raise ValueError(f"expected a string, got {shown(v)}")
    return str(v)


def template(v: Any) -> str:
    text = nonempty_text(v)
    for m in _TEMPLATE.finditer(text):
        if not _FORMS.fullmatch(m.group(1)):
            raise ValueError(f"expected {TEMPLATE_FORMS} inside {{{{ }}}}, got {shown(m.group(0))}")
    if "{{" in _TEMPLATE.sub("", text) or "}}" in _TEMPLATE.sub("", text):
        raise ValueError(f"expected {{{{ and }}}} in pairs, got {shown(text)}")
    return text


def _runbook(v: Any) -> str:
    text = template(v)
    if not re.match(r"(https?://\S+|docs/\S+\.md(#\S*)?)$", text):
        raise ValueError(f"expected an http(s):// URL or a docs/*.md path, got {shown(v)}")
    return text


RULE_SCHEMA: dict[str, Any] = {
    "name": Key(_REQUIRED, _name, "the alert's name (its alertname label)"),
    "quantity": Key(_REQUIRED, _quantity, "the Snapshot quantity watched (docs/alerts.md)"),
    "comparator": Key(">", choice(*COMPARATORS), "how the value is compared to the threshold"),
    "threshold": Key(_REQUIRED, number(float), "in the quantity's unit"),
    "for": Key(None, lambda v: None if v is None else duration(v), "active this long first"),
    "consecutive": Key(
        None, lambda v: None if v is None else number(int, 1, 1_000_000)(v), "N in a row"
    ),
    "keep_firing_for": Key(0.0, duration, "stay firing this long after the condition clears"),
    "severity": Key(_REQUIRED, _name, "its severity label, e.g. critical, warning, info"),
    "labels": {},  # filled per rule: any label names (checked), string values
    "annotations": {},  # filled per rule: summary required, description, runbook_url, ...
}


def load(path: str | Path) -> list[Rule]:
    """Read and check a rule file; ConfigError naming file and line."""
    return _checked(read_tree(path, " rule file"), str(path))


def load_all(paths: Sequence[str | Path]) -> list[Rule]:
    """Rules of several files (the shipped defaults when none is given); names must not repeat
    across them."""
    rules: list[Rule] = []
    for path in paths or [DEFAULT_RULES]:
        rules += load(path)
    return _unique(rules)


def _unique(rules: list[Rule]) -> list[Rule]:
    seen: dict[tuple[str, str], str] = {}
    for rule in rules:
        if rule.identity in seen:
            raise ConfigError(
                f"{rule.where}: {rule.path}.name: {rule.name} (severity {rule.severity}) is "
                f"already defined at {seen[rule.identity]}: expected a name not used yet"
            )
        seen[rule.identity] = rule.where
    return rules


def parse(text: str, name: str = "<rules>") -> list[Rule]:
    return _checked(compose(text, name), name)


def _checked(root: yaml.Node | None, name: str) -> list[Rule]:
    if root is None:
        raise ConfigError(f"{name}:1: the file is empty: expected a map with a `rules:` list")
    if isinstance(root, yaml.MappingNode):  # the top level's keys, not yet their values
        keys_only = [(k, yaml.ScalarNode("tag:yaml.org,2002:null", "")) for k, _ in root.value]
        walk_map(
            yaml.MappingNode(root.tag, keys_only), {"rules": Key(None, _any, "")}, {}, (), name
        )
    else:
        walk_map(root, {}, {}, (), name)  # ConfigError: expected a map of keys
    items = child(root, "rules")
    if not isinstance(items, yaml.SequenceNode):
        where = node_where(name, items if items is not None else root)
        raise ConfigError(f"{where}: rules: expected a list of rules")
    return _unique([_rule(node, f"rules[{i}]", name) for i, node in enumerate(items.value)])


def _any(v: Any) -> Any:
    return v


def _free_map(node: yaml.Node | None, parse: Callable[[Any], Any]) -> dict[str, Key]:
    """A schema accepting the keys a map has (checked by ``parse``), so each value's error
    names its own line."""
    if not isinstance(node, yaml.MappingNode):
        return {}
    return {k.value: Key(None, parse, "") for k, _ in node.value if isinstance(k.value, str)}


def _rule(node: yaml.Node, path: str, name: str) -> Rule:
    where = node_where(name, node)
    if not isinstance(node, yaml.MappingNode):
        raise ConfigError(f"{where}: {path}: expected a map with name, quantity, threshold, ...")
    labels_node, notes_node = child(node, "labels"), child(node, "annotations")
    annotation_parsers = {"runbook_url": _runbook}
    schema = {
        **RULE_SCHEMA,
        "labels": _free_map(labels_node, _label_value),
        "annotations": {
            k: Key(None, annotation_parsers.get(k, template), "")
            for k in _free_map(notes_node, template)
        },
    }
    out = defaults(schema)
    walk_map(node, schema, out, (path,), name)
    for key, spec in RULE_SCHEMA.items():
        if isinstance(spec, Key) and out[key] is _REQUIRED:
            raise ConfigError(f"{where}: {path}: {key} is missing: expected {spec.doc}")
    for label in out["labels"]:
        if label in RESERVED_LABELS or not _NAME.fullmatch(label) or label.startswith("__"):
            line = node_where(name, labels_node)
            raise ConfigError(
                f"{line}: {path}.labels.{label}: expected a label name of letters, digits and _ "
                f"other than {', '.join(RESERVED_LABELS)} (wasmtop sets those)"
            )
    for note in out["annotations"]:
        # Alertmanager validates annotations as a label set (and Prometheus its rule files so):
        # a name such as runbook-url would have every alert of the rule refused.
        if not _NAME.fullmatch(note):
            key = next(k for k, _ in notes_node.value if k.value == note)
            line = node_where(name, key)
            raise ConfigError(
                f"{line}: {path}.annotations.{note}: expected an annotation name of letters, "
                "digits and _ (Alertmanager before 0.27, and in classic mode, refuses others)"
            )
    if "summary" not in out["annotations"]:
        line = node_where(name, notes_node if notes_node is not None else node)
        raise ConfigError(f"{line}: {path}.annotations.summary is missing: expected a summary")
    q: Quantity = out["quantity"]
    cmp = out["comparator"]

    def fail(key: str, expected: str) -> ConfigError:
        at = child(node, key)
        line = node_where(name, at if at is not None else node)
        return ConfigError(f"{line}: {path}.{key}: {expected}")

    if out["for"] is not None and out["consecutive"] is not None:
        raise fail("consecutive", "expected either for (a duration) or consecutive, not both")
    if q.kind == "event":
        if out["for"] is not None:
            raise fail("for", f"expected consecutive: {q.name} counts events, not time")
        if cmp not in (">", ">="):
            raise fail("comparator", f"expected > or >=: {q.name} counts events above it")
    threshold = out["threshold"]
    notes = {k: _THRESHOLD.sub(f"{threshold:g}", v) for k, v in out["annotations"].items()}
    return Rule(
        name=out["name"],
        quantity=q,
        comparator=cmp,
        threshold=threshold,
        for_s=out["for"],
        consecutive=out["consecutive"] or 1,
        keep_firing_for_s=out["keep_firing_for"],
        severity=out["severity"],
        labels=tuple(sorted(out["labels"].items())),
        annotations=tuple(notes.items()),
        where=where,
        path=path,
    )


def expand(text: str, labels: dict[str, str], value: float | None) -> str:
    """A template filled in the way Prometheus fills it: a missing label is empty, $value is
    printed like Go prints a float64."""

    def one(m: re.Match) -> str:
        f = _FORMS.fullmatch(m.group(1))
        if f is None:  # checked at load; keep the text rather than fail at alert time
            return m.group(0)
        if f.group("label"):
            return labels.get(f.group("label"), "")
        if value is None:
            return ""
        if f.group("digits"):
            return f"{value:.{int(f.group('digits'))}f}"
        return go_float(value)

    return _TEMPLATE.sub(one, text)


def go_float(v: float) -> str:
    """Go's %v of a float64 (what ``{{ $value }}`` prints): shortest digits, no ``.0``."""
    if v != v:
        return "NaN"
    if v in (float("inf"), float("-inf")):
        return "+Inf" if v > 0 else "-Inf"
    text = repr(float(v))
    return text[:-2] if text.endswith(".0") else text
