"""Loading a YAML file into checked Python values, every error a ConfigError
``FILE:LINE: key: expected ..., got ...``.

A schema is a nested dict of section names and ``Key`` (a default, a parse function that raises
``ValueError("expected ...")``, a doc line); ``walk`` checks a mapping node against it key by
key, with the line of each node, so a message names file, line and dotted key. The general
validators are here (``number``, ``choice``, ``optional``, ``nonempty_text``, ``str_map``, lists
and booleans); the daemon's config (wasmtop/config.py), the web config (wasmtop/web.py) and the
alert rules (alerts/rules.py) build their schemas and cross checks on them.

Caps, checked before anything recursive (PyYAML's constructor, repr) walks the input: a file of
at most MAX_FILE_BYTES, at most MAX_DEPTH levels of nesting, no alias inside the node it names;
an integer with no upper bound at most MAX_INT; a value quoted in a message is cut short
(``shown``).
"""

from __future__ import annotations

import copy
import math
import reprlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A bad config: ``str()`` is ``FILE:LINE: key.path: what was expected, got what``.

    The one exception the loaders (the daemon's config's, the web config's and the alert
    rules') raise for a bad file, whatever is wrong with it: unreadable, not UTF-8, not YAML, a
    tag or an alias YAML cannot construct, a wrong type, a number out of range or not finite."""


# Deeper than this is no config (the schema is 3 levels deep, a rule file 4): refused before
# anything recursive (PyYAML's constructor, repr) walks it.
MAX_DEPTH = 50
# The largest integer accepted where a key names no upper bound (a signed 64-bit integer).
MAX_INT = 2**63 - 1
_SHOWN = reprlib.Repr()
_SHOWN.maxlevel, _SHOWN.maxstring, _SHOWN.maxother, _SHOWN.maxlong = 3, 80, 80, 40
_SHOWN.maxlist = _SHOWN.maxdict = _SHOWN.maxtuple = _SHOWN.maxset = 6


def shown(v: Any) -> str:
    """``repr(v)`` cut short: a message never quotes a huge value whole (aliases can make a
    small file construct a huge one)."""
    return _SHOWN.repr(v)


@dataclass(frozen=True)
class Key:
    default: Any
    parse: Callable[[Any], Any]  # raises ValueError("expected ...") on a bad value
    doc: str


def number(kind: type, low: float | None = None, high: float | None = None) -> Callable:
    """A finite number (an integer: at most MAX_INT when no ``high`` is given) in range."""
    words = "an integer" if kind is int else "a number"
    if low is not None and high is not None:
        expected = f"{words} from {_plain(low)} to {_plain(high)}"
    elif low is not None:
        expected = f"{words} >= {_plain(low)}"
    else:
        expected = words

    def parse(v: Any) -> Any:
        if not isinstance(v, (int, float)) or isinstance(v, bool):
            raise ValueError(f"expected {expected}, got {shown(v)}")
        if isinstance(v, float) and not math.isfinite(v):
            raise ValueError(f"expected {expected}, got {shown(v)} (not a finite number)")
        if kind is int and not (isinstance(v, int) or v.is_integer()):
            raise ValueError(f"expected {expected}, got {shown(v)}")
        if (low is not None and v < low) or (high is not None and v > high):
            raise ValueError(f"expected {expected}, got {shown(v)}")
        if kind is int:
            if high is None and v > MAX_INT:
                raise ValueError(f"expected {expected} up to {MAX_INT}, got {shown(v)}")
            return int(v)
        try:
            return float(v)
        except OverflowError:  # an integer literal beyond any float
            raise ValueError(f"expected {expected}, got {shown(v)} (too large)") from None

    return parse


def _plain(x: float) -> str:
    """3600000 rather than 3.6e+06; 0.1 as 0.1."""
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def _bool(v: Any) -> bool:
    if not isinstance(v, bool):
        raise ValueError(f"expected true or false, got {shown(v)}")
    return v


def choice(*choices: str) -> Callable[[Any], str]:
    def parse(v: Any) -> str:
        if v not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}, got {shown(v)}")
        return v

    return parse


def nonempty_text(v: Any) -> str:
    if not isinstance(v, str) or not v:
        raise ValueError(f"expected a non-empty string, got {shown(v)}")
    return v


def optional(parse: Callable[[Any], Any]) -> Callable[[Any], Any]:
    return lambda v: None if v is None else parse(v)


def _list(parse: Callable[[Any], Any]) -> Callable[[Any], list]:
    def parse_list(v: Any) -> list:
        if not isinstance(v, list):
            raise ValueError(f"expected a list, got {shown(v)}")
        out = []
        for i, item in enumerate(v):
            try:
                out.append(parse(item))
            except ValueError as exc:
                raise ValueError(f"item {i}: {exc}") from None
        return out

    return parse_list


def str_map(v: Any) -> dict[str, str]:
    if not isinstance(v, dict) or not all(
        isinstance(k, str) and isinstance(x, (str, int)) and not isinstance(x, bool)
        for k, x in v.items()
    ):
        raise ValueError(f"expected a map of names to strings, got {shown(v)}")
    return {k: str(x) for k, x in v.items()}


def defaults(schema: Mapping[str, Any]) -> dict:
    """Every key of ``schema`` at its default (nested like the schema; defaults deep-copied)."""
    return {
        k: defaults(v) if isinstance(v, dict) else copy.deepcopy(v.default)
        for k, v in schema.items()
    }


MAX_FILE_BYTES = 1 << 20  # a config, web config or rule file: 1 MiB is far more than any needs


def read_tree(path: str | Path, what: str = "") -> yaml.Node | None:
    """A YAML file's node tree; ConfigError naming the file when it cannot be read, is not
    UTF-8 or not YAML."""
    try:
        with open(path, "rb") as f:  # at most one byte past the cap: /dev/zero ends here too
            data = f.read(MAX_FILE_BYTES + 1)
    except (OSError, ValueError) as exc:  # ValueError: a NUL in the path
        why = getattr(exc, "strerror", None) or str(exc)
        raise ConfigError(f"{path}: cannot read{what}: {why}") from None
    if len(data) > MAX_FILE_BYTES:
        raise ConfigError(f"{path}: expected at most {MAX_FILE_BYTES} bytes, got more")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ConfigError(
            f"{path}:{line}: expected UTF-8 text, got byte 0x{data[exc.start]:02x}"
        ) from None
    return compose(text, str(path))


def compose(text: str, name: str) -> yaml.Node | None:
    """The YAML node tree (nodes know their lines); ConfigError on a syntax error, on nesting
    deeper than MAX_DEPTH and on an alias inside the node it names (recursive)."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        if mark is not None:
            line = f"{mark.line + 1}:"
        elif isinstance(getattr(exc, "position", None), int):  # ReaderError: a bad character
            line = f"{text[: exc.position].count(chr(10)) + 1}:"
        else:
            line = ""
        problem = getattr(exc, "problem", None) or getattr(exc, "reason", None) or str(exc)
        raise ConfigError(f"{name}:{line} not valid YAML: {problem}") from None
    except RecursionError:  # PyYAML's composer recurses once per level of nesting
        raise ConfigError(
            f"{name}: expected at most {MAX_DEPTH} levels of nesting, got far more"
        ) from None
    if root is not None:
        _check_shape(root, name)
    return root


def _check_shape(root: yaml.Node, name: str) -> None:
    """Refuse nesting deeper than MAX_DEPTH and recursive aliases (``&a [*a]``), without
    recursion and in time linear in the nodes (aliases share nodes: each is measured once)."""
    height: dict[int, int] = {}  # levels of nesting from a node down, once measured
    on_path: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, leaving = stack.pop()
        subs = _subnodes(node)
        if leaving:
            on_path.discard(id(node))
            height[id(node)] = 1 + max((height[id(n)] for n in subs), default=0)
            if height[id(node)] > MAX_DEPTH:
                for _ in range(MAX_DEPTH):  # down to the level past the limit, for the line
                    node = max(_subnodes(node), key=lambda n: height[id(n)])
                raise ConfigError(
                    f"{node_where(name, node)}: expected at most {MAX_DEPTH} levels of nesting"
                )
            continue
        if id(node) in on_path:
            raise ConfigError(
                f"{node_where(name, node)}: an alias inside the node it names: expected no "
                "recursive alias"
            )
        if id(node) in height:
            continue
        on_path.add(id(node))
        stack.append((node, True))
        stack.extend((n, False) for n in subs if id(n) not in height)


def _subnodes(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.ScalarNode):
        return []
    return [n for item in node.value for n in (item if isinstance(item, tuple) else (item,))]


def node_where(name: str, node: yaml.Node) -> str:
    """``FILE:LINE`` of a node, for messages."""
    return f"{name}:{node.start_mark.line + 1}"


def walk(node: yaml.Node, schema: Mapping[str, Any], out: dict, path: tuple, name: str) -> None:
    dotted = ".".join(path) or "the top level"
    if not isinstance(node, yaml.MappingNode):
        raise ConfigError(f"{node_where(name, node)}: {dotted}: expected a map of keys")
    seen: set[str] = set()
    for key_node, value_node in node.value:
        where = node_where(name, key_node)
        if not isinstance(key_node, yaml.ScalarNode):  # "? [a]\n: 1"
            raise ConfigError(
                f"{where}: {dotted}: expected a key name (one of: {', '.join(schema)}), "
                "got a list or a map as a key"
            )
        key = key_node.value
        full = ".".join((*path, key))
        if key not in schema:
            raise ConfigError(
                f"{where}: {full}: unknown key (expected one of: {', '.join(schema)})"
            )
        if key in seen:
            raise ConfigError(f"{where}: {full}: given twice")
        seen.add(key)
        spec = schema[key]
        if isinstance(spec, dict):
            if isinstance(value_node, yaml.ScalarNode) and value_node.tag.endswith(":null"):
                continue  # "section:" with nothing under it: all defaults
            walk(value_node, spec, out[key], (*path, key), name)
            continue
        value = construct(value_node, full, name)
        try:
            out[key] = spec.parse(value)
        except ValueError as exc:
            raise ConfigError(f"{node_where(name, value_node)}: {full}: {exc}") from None


_CONSTRUCT_ERRORS = (ValueError, KeyError, AttributeError, TypeError, OverflowError)


def construct(node: yaml.Node, full: str, name: str) -> Any:
    """The Python value of a node; ConfigError when YAML cannot make one (a tag it does not
    know, ``!!bool x``, ``!!timestamp x``, a date such as 2001-13-45, ``<<`` merging a non-map,
    an integer of more digits than Python converts)."""
    try:
        return yaml.SafeLoader("").construct_object(node, deep=True)
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or str(exc)
        at = getattr(exc, "problem_mark", None)
        where = f"{name}:{at.line + 1}" if at is not None else node_where(name, node)
        raise ConfigError(f"{where}: {full}: expected a value YAML can read: {problem}") from None
    # What PyYAML's scalar constructors let through on a malformed scalar with an explicit tag
    # or a date-like form: !!bool x (KeyError), !!timestamp x (AttributeError), 2001-13-45,
    # !!int x and 5000 digits (ValueError), !!float on an integer too large (OverflowError).
    except _CONSTRUCT_ERRORS:
        bad = _first_bad_scalar(node)
        tag = (bad or node).tag.replace("tag:yaml.org,2002:", "!!")
        text = f"{tag} {shown(bad.value)}" if bad is not None else tag
        where = node_where(name, bad if bad is not None else node)
        raise ConfigError(f"{where}: {full}: expected a value YAML can read, got {text}") from None


def _first_bad_scalar(node: yaml.Node) -> yaml.ScalarNode | None:
    """The first scalar under ``node`` that does not construct alone, for the message."""
    stack, seen = [node], set()
    while stack:
        n = stack.pop()
        if id(n) in seen:
            continue
        seen.add(id(n))
        if isinstance(n, yaml.ScalarNode):
            try:
                yaml.SafeLoader("").construct_object(n)
            except (yaml.YAMLError, *_CONSTRUCT_ERRORS):
                return n
        else:
            stack.extend(reversed(_subnodes(n)))
    return None


def child(node: yaml.Node, key: str) -> yaml.Node | None:
    """The value node of ``key`` in a mapping node; None when absent (or not a mapping)."""
    if not isinstance(node, yaml.MappingNode):
        return None
    return next((v for k, v in node.value if getattr(k, "value", None) == key), None)


def _line_of(root: yaml.Node, path: tuple[str, ...]) -> int:
    node = root
    for key in path:
        found = child(node, key)
        if found is None:
            break
        node = found
    return node.start_mark.line + 1


def is_file(p: Path) -> bool:
    """``p.is_file()``, False rather than an error for a name the system refuses (too long,
    a NUL byte)."""
    try:
        return p.is_file()
    except (OSError, ValueError):
        return False


def config_relative(value: str, config_name: str) -> Path:
    """A path from the config: relative ones are relative to the config file's directory."""
    p = Path(value)
    return p if p.is_absolute() else Path(config_name).parent / p
