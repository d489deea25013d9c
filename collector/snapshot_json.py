"""The way back from the Snapshot's JSON (``Snapshot.to_dict()``, docs/snapshot.md) to the frozen
records of model.py, for clients of the gRPC API (wasmtop --connect).

Generic, from the records' type hints: a field added to model.py needs nothing here. Tolerant
the way the contract allows a client to be: keys it does not know (a newer server) are ignored;
a missing key takes the field's default, or null when the field may be null. Only a missing key
that has neither is an error (ValueError naming where in the Snapshot).

Strict about what it keeps, since the sender may be broken or hostile and every consumer (the
terminal UI above all) trusts the records' types: each value must be of its hint's type (``int``
and not a bool, in 64 bits; ``float`` finite, an integer accepted; ``str`` without lone
surrogates; ``bool``; a list where the record has a tuple), ``null`` only where the hint is
Optional, or ValueError naming the place. ``snapshot_from_json`` also bounds the JSON text
itself: nesting deeper than ``MAX_JSON_DEPTH`` is refused before it is parsed (Python's parser
would recurse into it).

The hints are read with ``ast`` rather than ``typing.get_type_hints``: model.py writes
``X | None``, which Python 3.9 cannot evaluate.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import json
import math
import re
import sys
from collections.abc import Callable
from dataclasses import MISSING
from typing import Any

from .model import SCHEMA, Snapshot

Decoder = Callable[[Any, str], Any]  # (JSON value, where) -> value

_ABSENT = object()  # a key the JSON object lacks
# Bounds of what a client accepts. The deepest a Snapshot nests is about 8 (snapshot, workloads,
# a workload, sched, waited_behind, one part ...; a probe's details a few more): 64 leaves room
# for a newer server and refuses "[[[[..." long before Python's parser would recurse out of stack.
MAX_JSON_DEPTH = 64
INT_MIN, INT_MAX = -(2**63), 2**64 - 1  # the kernel's counters are u64; signed values s64


def snapshot_from_json(text: str | bytes) -> Snapshot:
    """The Snapshot of a JSON text (a gRPC message's ``json``), or ValueError: not JSON, nested
    deeper than MAX_JSON_DEPTH, or not a Snapshot this client can read."""
    if isinstance(text, (bytes, bytearray)):
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ValueError(f"not UTF-8: {exc}") from None
    check_json_depth(text)
    try:
        value = json.loads(text, parse_constant=_refuse_constant)
    except RecursionError:  # cannot happen under the depth check; never let it escape
        raise ValueError("JSON nested too deeply") from None
    return snapshot_from_dict(value)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON (the Snapshot writes non-finite numbers as null)")


# For the depth check, on the UTF-8 bytes: an escape (backslash and the byte after it), every
# byte but brackets and quotes, and a string (once only brackets are left in it).
_ESCAPE = re.compile(rb"\\.", re.DOTALL)
_NOT_SKELETON = bytes(b for b in range(256) if b not in b'[]{}"')
_QUOTED = re.compile(rb'"[^"]*"')
_INNERMOST = re.compile(rb"\[\]|\{\}")


def check_json_depth(text: str | bytes, limit: int = MAX_JSON_DEPTH) -> None:
    """ValueError when arrays and objects in the JSON ``text`` nest deeper than ``limit``, or its
    brackets outside strings do not pair up (never valid JSON). Brackets inside strings do not
    count. Each pass removes the innermost pairs (a regex scan does not see the pairs its own
    removals make), so the passes until nothing is left are the depth: a handful of scans in C,
    not a Python loop over a Snapshot's megabytes."""
    data = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else bytes(text)
    if data.count(b"[") + data.count(b"{") <= limit:
        return
    if b"\\" in data:
        data = _ESCAPE.sub(b"", data)
    skeleton = data.translate(None, _NOT_SKELETON).replace(b'""', b"")
    skeleton = _QUOTED.sub(b"", skeleton)  # strings that held brackets
    for _ in range(limit):
        if not skeleton:
            return
        shorter = _INNERMOST.sub(b"", skeleton)
        if len(shorter) == len(skeleton):  # what is left does not pair up: an open run?
            _open_depth(skeleton, limit)
            raise ValueError("JSON brackets do not pair up")
        skeleton = shorter
    if skeleton:
        raise ValueError(f"JSON nested deeper than {limit} levels")


def _open_depth(skeleton: bytes, limit: int) -> None:
    """ValueError when the brackets left open at some point exceed ``limit`` ("[[[[..."
    unclosed)."""
    depth = 0
    for c in skeleton:
        depth += 1 if c in b"[{" else -1
        if depth > limit:
            raise ValueError(f"JSON nested deeper than {limit} levels")


def snapshot_from_dict(d: dict[str, Any]) -> Snapshot:
    """The Snapshot that ``Snapshot.to_dict()`` wrote (after a JSON round trip)."""
    if not isinstance(d, dict):
        raise ValueError(f"expected a Snapshot object, got {type(d).__name__}")
    schema = d.get("schema", SCHEMA)
    if schema != SCHEMA:
        raise ValueError(f"expected schema {SCHEMA!r}, got {_shown(schema)}")
    snap = from_dict(Snapshot, d)
    for name, probe in snap.probes.items():
        _check_probe(probe, f"snapshot.probes.{_shown_key(name)}")
    return snap


# The probes' blocks are free-form (docs/snapshot.md), but these keys are read by every client.
_PROBE_KEYS = {"status": str, "reason": str, "events": int, "lost": int, "attempts": int,
               "malformed": int}  # fmt: skip


def _check_probe(probe: dict[str, Any], where: str) -> None:
    for key, t in _PROBE_KEYS.items():
        v = probe.get(key)
        if v is not None:
            (_str if t is str else _int)(v, f"{where}.{key}")


def from_dict(cls: type, d: Any, where: str = "snapshot") -> Any:
    """One record (a dataclass or NamedTuple of model.py) from its JSON object."""
    return _record_decoder(cls)(d, where)


# -- decoders, built once per type ---------------------------------------------------------------
# Every decoder refuses null; the Optional hint's decoder lets it through.
@functools.cache
def _record_decoder(cls: type) -> Decoder:
    if dataclasses.is_dataclass(cls):
        spec = [
            (f.name, f.type, f.default is not MISSING or f.default_factory is not MISSING)
            for f in dataclasses.fields(cls)
        ]
    elif isinstance(cls, type) and issubclass(cls, tuple) and hasattr(cls, "_fields"):
        hints = getattr(cls, "__annotations__", {})
        spec = [(n, hints.get(n, "Any"), n in cls._field_defaults) for n in cls._fields]
    else:
        raise TypeError(f"{cls!r} is neither a dataclass nor a NamedTuple")
    fields = []  # (key, decoder, has a default, may be null)
    for key, annotation, has_default in spec:
        hint = _resolve(annotation, cls)
        fields.append((key, _decoder(hint), has_default, hint[0] in ("optional", "any")))
    name = cls.__name__

    def decode(value: Any, where: str) -> Any:
        if not isinstance(value, dict):
            raise ValueError(f"{where}: expected a {name} object, got {_type(value)}")
        kwargs = {}
        for key, decode_field, has_default, nullable in fields:
            v = value.get(key, _ABSENT)
            if v is not _ABSENT:
                kwargs[key] = decode_field(v, f"{where}.{key}")
            elif nullable and not has_default:
                kwargs[key] = None
            elif not has_default:  # left out: the constructor applies a default
                raise ValueError(f"{where}.{key}: missing (a {name} needs it)")
        return cls(**kwargs)

    return decode


def _decoder(hint: tuple) -> Decoder:
    kind = hint[0]
    if kind == "any":
        return lambda v, _w: v
    if kind == "scalar":
        return _SCALAR_DECODERS[hint[1]]
    if kind == "record":
        return _record_decoder(hint[1])
    if kind == "optional":
        inner = _decoder(hint[1])
        return lambda v, w: None if v is None else inner(v, w)
    if kind == "tuple":
        items = [_decoder(h) for h in hint[1]]
        if hint[2]:  # tuple[X, ...]
            one = items[0]
            return lambda v, w: tuple(one(x, f"{w}[{i}]") for i, x in enumerate(_list(v, w)))

        def decode_fixed(v: Any, w: str) -> tuple:
            v = _list(v, w)
            if len(v) != len(items):
                raise ValueError(f"{w}: expected {len(items)} items, got {len(v)}")
            return tuple(d(x, f"{w}[{i}]") for i, (d, x) in enumerate(zip(items, v)))

        return decode_fixed
    if kind == "list":
        one = _decoder(hint[1])
        return lambda v, w: [one(x, f"{w}[{i}]") for i, x in enumerate(_list(v, w))]
    if kind == "dict":
        one = _decoder(hint[1])

        def decode_dict(v: Any, w: str) -> Any:
            if not isinstance(v, dict):
                raise ValueError(f"{w}: expected an object, got {_type(v)}")
            out = {}
            for k, x in v.items():
                if not isinstance(k, str):
                    raise ValueError(f"{w}: a key is {_type(k)}, not a string")
                out[k] = one(x, f"{w}.{_shown_key(k)}")
            return out

        return decode_dict
    raise AssertionError(hint)


def _int(v: Any, where: str) -> int:
    if not isinstance(v, int) or isinstance(v, bool):
        raise ValueError(f"{where}: expected an integer, got {_type(v)}")
    if not INT_MIN <= v <= INT_MAX:
        raise ValueError(f"{where}: integer out of 64-bit range")
    return v


def _float(v: Any, where: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ValueError(f"{where}: expected a number, got {_type(v)}")
    if isinstance(v, int):
        _int(v, where)
    v = float(v)
    if not math.isfinite(v):
        raise ValueError(f"{where}: {v} is not a finite number")
    return v


_SURROGATE = re.compile(r"[\ud800-\udfff]")


def _str(v: Any, where: str) -> str:
    if not isinstance(v, str):
        raise ValueError(f"{where}: expected a string, got {_type(v)}")
    if _SURROGATE.search(v):  # JSON lets "\\ud800" through; no terminal or encoder takes it
        raise ValueError(f"{where}: a lone UTF-16 surrogate in a string")
    return v


def _bool(v: Any, where: str) -> bool:
    if not isinstance(v, bool):
        raise ValueError(f"{where}: expected true or false, got {_type(v)}")
    return v


_SCALAR_DECODERS: dict[type, Decoder] = {int: _int, float: _float, str: _str, bool: _bool,
                                         bytes: _str}  # fmt: skip


def _list(v: Any, where: str) -> list:
    if not isinstance(v, list):
        raise ValueError(f"{where}: expected a list, got {_type(v)}")
    return v


def _type(v: Any) -> str:
    """A JSON value's type, in JSON's words."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, (int, float)):
        return "a number"
    if isinstance(v, str):
        return "a string"
    if isinstance(v, list):
        return "a list"
    if isinstance(v, dict):
        return "an object"
    return type(v).__name__


def _shown(v: Any, limit: int = 40) -> str:
    """A value in an error message: its repr (which escapes control characters), cut short."""
    if not isinstance(v, str):
        return _type(v)
    text = repr(v)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _shown_key(k: str) -> str:
    """An object's key in a place name (``snapshot.counters.<key>``), cut short and escaped."""
    return k if _PLAIN_KEY.fullmatch(k) else _shown(k)


_PLAIN_KEY = re.compile(r"[\w.:/@-]{1,40}", re.ASCII)


# -- type hints, from their source text ---------------------------------------------------------
# A resolved hint is a small tuple: ("any",), ("scalar", type), ("record", cls),
# ("optional", hint), ("tuple", (hints...), variadic), ("list", hint), ("dict", value hint).
_SCALARS = {"int": int, "float": float, "str": str, "bool": bool, "bytes": bytes}


def _resolve(annotation: Any, owner: type) -> tuple:
    if hasattr(annotation, "__forward_arg__"):  # a NamedTuple keeps string hints as ForwardRef
        annotation = annotation.__forward_arg__
    elif not isinstance(annotation, str):
        annotation = annotation.__name__ if isinstance(annotation, type) else repr(annotation)
    namespace = vars(sys.modules[owner.__module__])
    return _hint(ast.parse(annotation, mode="eval").body, namespace)


def _hint(node: ast.expr, ns: dict[str, Any]) -> tuple:
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        return _union([_hint(n, ns) for n in _alternatives(node)])
    if isinstance(node, ast.Constant) and node.value is None:
        return ("none",)
    if isinstance(node, ast.Constant) and isinstance(node.value, str):  # a quoted forward ref
        return _hint(ast.parse(node.value, mode="eval").body, ns)
    if isinstance(node, (ast.Name, ast.Attribute)):
        name = _dotted(node)
        if name in _SCALARS:
            return ("scalar", _SCALARS[name])
        if name in ("Any", "typing.Any", "object"):
            return ("any",)
        if name in ("tuple", "Tuple", "typing.Tuple"):
            return ("tuple", (("any",),), True)
        if name in ("list", "List", "typing.List"):
            return ("list", ("any",))
        if name in ("dict", "Dict", "typing.Dict"):
            return ("dict", ("any",))
        obj = ns.get(name)
        if dataclasses.is_dataclass(obj) or (
            isinstance(obj, type) and issubclass(obj, tuple) and hasattr(obj, "_fields")
        ):
            return ("record", obj)
        if isinstance(obj, type) and obj in _SCALARS.values():
            return ("scalar", obj)
        return ("any",)  # an alias we do not know: the JSON value as it is
    if isinstance(node, ast.Subscript):
        base = _dotted(node.value)
        args = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
        if base in ("Optional", "typing.Optional"):
            return _union([_hint(args[0], ns), ("none",)])
        if base in ("Union", "typing.Union"):
            return _union([_hint(a, ns) for a in args])
        if base in ("tuple", "Tuple", "typing.Tuple"):
            if len(args) == 2 and isinstance(args[1], ast.Constant) and args[1].value is ...:
                return ("tuple", (_hint(args[0], ns),), True)
            return ("tuple", tuple(_hint(a, ns) for a in args), False)
        if base in ("list", "List", "typing.List", "Sequence", "collections.abc.Sequence"):
            return ("list", _hint(args[0], ns))
        if base in ("dict", "Dict", "typing.Dict", "Mapping", "collections.abc.Mapping"):
            return ("dict", _hint(args[-1], ns))
    return ("any",)


def _alternatives(node: ast.expr) -> list[ast.expr]:
    """The members of ``A | B | C`` (nested BinOps), left to right."""
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        return [*_alternatives(node.left), *_alternatives(node.right)]
    return [node]


def _union(parts: list[tuple]) -> tuple:
    others = [p for p in parts if p[0] != "none"]
    if len(others) != 1:
        return ("any",)  # X | Y: the JSON value as it is
    return ("optional", others[0]) if len(others) < len(parts) else others[0]


def _dotted(node: ast.expr) -> str:
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return node.id if isinstance(node, ast.Name) else ""
