"""The way back from the Snapshot's JSON (``Snapshot.to_dict()``, docs/snapshot.md) to the frozen
records of model.py, for clients of the gRPC API (wasmtop --connect).

Generic, from the records' type hints: a field added to model.py needs nothing here. Tolerant
the way the contract allows a client to be: keys it does not know (a newer server) are ignored;
a missing key takes the field's default, or null when the field may be null; ``null`` stays
``None`` anywhere (the JSON writes non-finite floats as null). Only a missing key that has
neither is an error (ValueError naming where in the Snapshot).

The hints are read with ``ast`` rather than ``typing.get_type_hints``: model.py writes
``X | None``, which Python 3.9 cannot evaluate.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import sys
from collections.abc import Callable
from dataclasses import MISSING
from typing import Any

from .model import SCHEMA, Snapshot

Decoder = Callable[[Any, str], Any]  # (JSON value, where) -> value

_ABSENT = object()  # a key the JSON object lacks


def snapshot_from_dict(d: dict[str, Any]) -> Snapshot:
    """The Snapshot that ``Snapshot.to_dict()`` wrote (after a JSON round trip)."""
    if not isinstance(d, dict):
        raise ValueError(f"expected a Snapshot object, got {type(d).__name__}")
    schema = d.get("schema", SCHEMA)
    if schema != SCHEMA:
        raise ValueError(f"expected schema {SCHEMA!r}, got {schema!r}")
    return from_dict(Snapshot, d)


def from_dict(cls: type, d: Any, where: str = "snapshot") -> Any:
    """One record (a dataclass or NamedTuple of model.py) from its JSON object."""
    return _record_decoder(cls)(d, where)


# -- decoders, built once per type ---------------------------------------------------------------
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
        if value is None:
            return None
        if not isinstance(value, dict):
            raise ValueError(f"{where}: expected a {name} object, got {type(value).__name__}")
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
        t = hint[1]
        if t is float:
            return _float
        return lambda v, _w: v
    if kind == "record":
        return _record_decoder(hint[1])
    if kind == "optional":
        return _decoder(hint[1])  # None is let through by every decoder
    if kind == "tuple":
        items = [_decoder(h) for h in hint[1]]
        if hint[2]:  # tuple[X, ...]
            one = items[0]
            return lambda v, w: (
                None if v is None else tuple(one(x, f"{w}[{i}]") for i, x in enumerate(_list(v, w)))
            )
        return lambda v, w: (
            None
            if v is None
            else tuple(d(x, f"{w}[{i}]") for i, (d, x) in enumerate(zip(items, _list(v, w))))
        )
    if kind == "list":
        one = _decoder(hint[1])
        return lambda v, w: (
            None if v is None else [one(x, f"{w}[{i}]") for i, x in enumerate(_list(v, w))]
        )
    if kind == "dict":
        one = _decoder(hint[1])

        def decode_dict(v: Any, w: str) -> Any:
            if v is None:
                return None
            if not isinstance(v, dict):
                raise ValueError(f"{w}: expected an object, got {type(v).__name__}")
            return {k: one(x, f"{w}.{k}") for k, x in v.items()}

        return decode_dict
    raise AssertionError(hint)


def _float(v: Any, where: str) -> Any:
    if isinstance(v, int) and not isinstance(v, bool):
        return float(v)
    return v


def _list(v: Any, where: str) -> list:
    if not isinstance(v, list):
        raise ValueError(f"{where}: expected a list, got {type(v).__name__}")
    return v


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
