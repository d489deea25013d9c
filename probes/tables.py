"""Maps read and written from userspace through bpf(2), with the interface the probes use.

The key and value types are ctypes structures built from the type descriptions BCC's compiler
emits for each map (JSON: ``["name", [[field, type], ...], "struct"]``, a base type as a string,
arrays as ``[field, type, [n]]``, bit fields as ``[field, type, bits]``), so a probe reads a map
as ``table.Key`` / ``table.Leaf`` objects whatever process compiled it. Per-CPU maps answer a
sequence of one value per possible CPU; ``sum(key)`` adds them up.

Only what the probes use is here: lookup, update, delete, iteration, batch lookup-and-delete.
"""

from __future__ import annotations

import ctypes
import errno
from collections.abc import Iterator
from typing import Any

from . import bpfobj

# enum bpf_map_type
HASH = 1
ARRAY = 2
PERCPU_HASH = 5
PERCPU_ARRAY = 6
LRU_HASH = 9
LRU_PERCPU_HASH = 10
LPM_TRIE = 11
ARRAY_OF_MAPS = 12
HASH_OF_MAPS = 13
SOCKHASH = 18
RINGBUF = 27
PER_CPU = frozenset({PERCPU_HASH, PERCPU_ARRAY, LRU_PERCPU_HASH})
ARRAYS = frozenset({ARRAY, PERCPU_ARRAY, ARRAY_OF_MAPS})
BATCH_ENTRIES = 1024  # entries per BPF_MAP_LOOKUP_BATCH call (more when a bucket needs it)
BATCH_BYTES = 1 << 18  # and at most this much room for their keys and values
_NO_BATCH = (errno.EINVAL, errno.EOPNOTSUPP, 524)  # 524: the kernel's ENOTSUPP


def _objects(array: Any, kind: Any, n: int) -> list[Any]:
    """The first n elements of a ctypes array as ctypes objects of ``kind``, as a lookup gives
    them (indexing an array of scalars gives plain ints)."""
    if issubclass(kind, ctypes._SimpleCData):
        return [kind(v) for v in array[:n]]
    return array[:n]  # structures and per-CPU arrays: views into the batch's buffer


_BASE_TYPES: dict[str, Any] = {
    "_Bool": ctypes.c_bool,
    "char": ctypes.c_char,
    "signed char": ctypes.c_byte,
    "unsigned char": ctypes.c_ubyte,
    "short": ctypes.c_short,
    "unsigned short": ctypes.c_ushort,
    "int": ctypes.c_int,
    "unsigned int": ctypes.c_uint,
    "long": ctypes.c_long,
    "unsigned long": ctypes.c_ulong,
    "long long": ctypes.c_longlong,
    "unsigned long long": ctypes.c_ulonglong,
    "wchar_t": ctypes.c_wchar,
    "float": ctypes.c_float,
    "double": ctypes.c_double,
    "long double": ctypes.c_longdouble,
    "__int128": ctypes.c_int64 * 2,
    "unsigned __int128": ctypes.c_uint64 * 2,
}


class DescError(ValueError):
    pass


def ctype_of(desc: Any) -> Any:
    """The ctypes type of a BCC type description (parsed JSON). Raises DescError."""
    try:
        return _ctype_of(desc)
    except (TypeError, ValueError, OverflowError, RecursionError) as exc:  # ctypes refused it
        if isinstance(exc, DescError):
            raise
        raise DescError(f"not a C type: {exc}") from None


def _ctype_of(desc: Any) -> Any:
    if isinstance(desc, str):
        try:
            return _BASE_TYPES[desc]
        except KeyError:
            raise DescError(f"unknown base type {desc!r}") from None
    if not (isinstance(desc, list) and len(desc) >= 2 and isinstance(desc[1], list)):
        raise DescError(f"not a type description: {str(desc)[:80]}")
    anon: list[str] = []
    fields: list[tuple[Any, ...]] = []
    for field in desc[1]:
        if not isinstance(field, list) or len(field) not in (2, 3) or not isinstance(field[0], str):
            raise DescError(f"not a field: {str(field)[:80]}")
        name = field[0]
        if len(field) == 2:
            fields.append((name, _ctype_of(field[1])))
        elif isinstance(field[2], list) and len(field[2]) == 1 and isinstance(field[2][0], int):
            fields.append((name, _ctype_of(field[1]) * field[2][0]))
        elif isinstance(field[2], int) and not isinstance(field[2], bool):
            fields.append((name, _ctype_of(field[1]), field[2]))
        elif field[2] in ("struct", "struct_packed", "union"):
            if not name:
                name = f"__anon{len(anon)}"
                anon.append(name)
            fields.append((name, _ctype_of(field)))
        else:
            raise DescError(f"not a field: {str(field)[:80]}")
    kind = desc[2] if len(desc) > 2 else "struct"
    base = ctypes.Union if kind == "union" else ctypes.Structure
    attrs: dict[str, Any] = {"_anonymous_": anon, "_fields_": fields}
    if kind == "struct_packed":
        attrs["_pack_"] = 1
    return type(str(desc[0]) or "anon", (base,), attrs)


def possible_cpus(path: str = "/sys/devices/system/cpu/possible") -> int:
    """How many CPUs the kernel may use (num_possible_cpus(): the CPUs in the possible mask):
    a per-CPU value comes in that many slots, not one per CPU online."""
    try:
        with open(path) as f:
            text = f.read().strip()
        n = 0
        for part in text.split(","):
            lo, _, hi = part.partition("-")
            n += int(hi or lo) - int(lo) + 1
        return n
    except (OSError, ValueError):
        import os

        return os.cpu_count() or 1


class Table:
    """One map, by fd (not owned: the loaded object closes it)."""

    def __init__(
        self, name: str, fd: int, map_type: int, max_entries: int, key: Any, leaf: Any
    ) -> None:
        self.name = name
        self.map_fd = fd
        self.map_type = map_type
        self.max_entries = max_entries
        self.Key = key
        self.sLeaf = leaf
        self.per_cpu = map_type in PER_CPU
        if self.per_cpu:
            self.total_cpu = possible_cpus()
            size = ctypes.sizeof(leaf)
            if size % 8 == 0:
                self.Leaf = leaf * self.total_cpu
            else:  # the kernel pads each CPU's value to 8 bytes: only integers are read so
                if not issubclass(leaf, ctypes._SimpleCData) or size > 8:
                    raise DescError(f"{name}: per-CPU value of {size} bytes not padded to 8")
                self.Leaf = ctypes.c_uint64 * self.total_cpu
        else:
            self.Leaf = leaf
        self._batch = True  # items() reads hash maps in batches until the kernel refuses

    # -- keys and values --------------------------------------------------------------------
    def _key(self, key: Any) -> Any:
        if isinstance(key, self.Key):
            return key
        if isinstance(key, int):
            return self.Key(key)
        if isinstance(key, ctypes._SimpleCData) and ctypes.sizeof(key) == ctypes.sizeof(self.Key):
            return self.Key.from_buffer_copy(key)
        raise TypeError(f"{self.name}: a key of type {type(key).__name__}")

    def _value(self, value: Any) -> Any:
        if isinstance(value, self.Leaf):
            return value
        if isinstance(value, int) and not self.per_cpu:
            return self.Leaf(value)
        if isinstance(value, ctypes._SimpleCData) and ctypes.sizeof(value) == ctypes.sizeof(
            self.Leaf
        ):
            return self.Leaf.from_buffer_copy(value)
        raise TypeError(f"{self.name}: a value of type {type(value).__name__}")

    def __getitem__(self, key: Any) -> Any:
        value = self.Leaf()
        if not bpfobj.map_lookup(self.map_fd, self._key(key), value):
            raise KeyError(key)
        return value

    def get(self, key: Any, default: Any = None) -> Any:
        try:
            return self[key]
        except KeyError:
            return default

    def __setitem__(self, key: Any, value: Any) -> None:
        bpfobj.map_update(self.map_fd, self._key(key), self._value(value))

    def __delitem__(self, key: Any) -> None:
        if self.map_type in ARRAYS and self.map_type != ARRAY_OF_MAPS:
            self[key] = self.Leaf()  # an array's slots cannot go: zeroed, as BCC does
            return
        if not bpfobj.map_delete(self.map_fd, self._key(key)):
            raise KeyError(key)

    def __contains__(self, key: Any) -> bool:
        return bpfobj.map_lookup(self.map_fd, self._key(key), self.Leaf())

    # -- iteration --------------------------------------------------------------------------
    def keys(self) -> Iterator[Any]:
        if self.map_type in ARRAYS:
            yield from (self.Key(i) for i in range(self.max_entries))
            return
        key = None
        while True:
            nxt = self.Key()
            if not bpfobj.map_next_key(self.map_fd, key, nxt):
                return
            yield nxt
            key = nxt

    def __iter__(self) -> Iterator[Any]:
        return self.keys()

    def items(self) -> list[tuple[Any, Any]]:
        """Every (key, value), a snapshot: an entry deleted meanwhile is left out. A hash map is
        read in batches (BPF_MAP_LOOKUP_BATCH, Linux 5.6+: a few system calls for the whole map
        where the walk below makes two per entry); the walk serves the rest."""
        if self.map_type not in ARRAYS and self._batch:
            try:
                got = self._items_batch()
            except bpfobj.BpfError as exc:
                if exc.errno not in _NO_BATCH:
                    raise
                self._batch = False  # this map type or kernel has no batch lookup
            else:
                if got is not None:
                    return got
        out = []
        for key in list(self.keys()):
            value = self.Leaf()
            if bpfobj.map_lookup(self.map_fd, key, value):
                out.append((key, value))
        return out

    def _items_batch(self) -> list[tuple[Any, Any]] | None:
        """items() in batches; None when the kernel's answers make no progress (the walk then
        serves this call)."""
        out: list[tuple[Any, Any]] = []
        token = ctypes.c_uint64(0)
        entry = ctypes.sizeof(self.Key) + ctypes.sizeof(self.Leaf)
        chunk = max(1, min(self.max_entries, BATCH_ENTRIES, BATCH_BYTES // entry))
        first = True
        while True:
            keys = (self.Key * chunk)()
            values = (self.Leaf * chunk)()
            try:
                n, done = bpfobj.map_lookup_batch(self.map_fd, token, keys, values, chunk, first)
            except bpfobj.BpfError as exc:
                # One bucket holds more than fits: nothing was copied, and the kernel wrote
                # that bucket's index as the position; retried with more room (a bucket holds
                # at most the map's entries).
                if exc.errno != errno.ENOSPC:
                    raise
                if chunk >= self.max_entries:
                    return None
                chunk = min(chunk * 4, self.max_entries)
                continue
            out.extend(zip(_objects(keys, self.Key, n), _objects(values, self.Leaf, n)))
            if done:
                return out
            if n == 0:  # not at the end and nothing copied: never from a correct kernel
                return None
            first = False

    def values(self) -> list[Any]:
        return [v for _, v in self.items()]

    def __len__(self) -> int:
        if self.map_type in ARRAYS:
            return self.max_entries
        return sum(1 for _ in self.keys())

    def sum(self, key: Any) -> Any:
        """A per-CPU entry's values added up (as one value of the map's scalar type)."""
        values = self[key]
        if not self.per_cpu:
            return values
        return self.sLeaf(sum(int(getattr(v, "value", v)) for v in values))

    def items_lookup_and_delete_batch(self, chunk: int = 1024) -> Iterator[tuple[int, int]]:
        """Take every entry out of the map, a chunk per call: (key, value) as the ctypes
        scalars' values. Raises BpfError on maps without batch operations."""
        while True:
            keys = (self.Key * chunk)()
            values = (self.Leaf * chunk)()
            n, done = bpfobj.map_lookup_and_delete_batch(self.map_fd, keys, values, chunk)
            for i in range(n):
                yield getattr(keys[i], "value", keys[i]), getattr(values[i], "value", values[i])
            if done or n == 0:
                return
