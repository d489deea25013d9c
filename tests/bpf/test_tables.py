"""probes/tables.py against real maps: a hash map read in batches (BPF_MAP_LOOKUP_BATCH) gives
what the per-key walk gives, for scalar and structure keys, per-CPU values, and buckets larger
than a batch."""

from __future__ import annotations

import ctypes
import errno
import os

import pytest

from wasmtop.probes import bpfobj, tables


class Pair(ctypes.Structure):
    _fields_ = [("a", ctypes.c_uint32), ("b", ctypes.c_uint32)]


def plain(obj: object) -> object:
    if isinstance(obj, ctypes.Structure):
        return tuple(getattr(obj, f) for f, _ in obj._fields_)
    if isinstance(obj, ctypes.Array):
        return tuple(obj)
    return obj.value  # type: ignore[attr-defined]


def both_ways(table: tables.Table) -> tuple[list, list]:
    batched = table.items()
    assert table._batch  # the kernel took the batch lookup
    table._batch = False
    walked = table.items()
    table._batch = True
    return (sorted((plain(k), plain(v)) for k, v in batched),
            sorted((plain(k), plain(v)) for k, v in walked))  # fmt: skip


@pytest.mark.parametrize("map_type", [tables.HASH, tables.LRU_HASH, tables.PERCPU_HASH])
@pytest.mark.parametrize("entries", [0, 1, 1500])
def test_a_hash_map_read_in_batches_equals_the_walk(map_type, entries):
    fd = bpfobj.map_create(map_type, 4, 8, 4096, "batch")
    try:
        table = tables.Table("batch", fd, map_type, 4096, ctypes.c_uint32, ctypes.c_uint64)
        for i in range(entries):
            if table.per_cpu:
                table[i] = table.Leaf(*(1000 * i + cpu for cpu in range(table.total_cpu)))
            else:
                table[i] = 7 * i
        batched, walked = both_ways(table)
        assert batched == walked and len(batched) == entries
        assert all(isinstance(k, ctypes.c_uint32) for k, _ in table.items())
    finally:
        os.close(fd)


def test_structure_keys_and_buckets_larger_than_a_batch(monkeypatch):
    """With one entry per batch call, any bucket of two makes the kernel refuse (ENOSPC) until
    the batch grows: the answer is the same."""
    monkeypatch.setattr(tables, "BATCH_ENTRIES", 1)
    fd = bpfobj.map_create(tables.HASH, 8, 8, 512, "batch")
    try:
        table = tables.Table("batch", fd, tables.HASH, 512, Pair, Pair)
        for i in range(500):
            table[Pair(i, i + 1)] = Pair(2 * i, 3 * i)
        batched, walked = both_ways(table)
        assert batched == walked and len(batched) == 500
        assert batched[499] == ((499, 500), (998, 1497))
    finally:
        os.close(fd)


@pytest.mark.parametrize("answer", ["no progress", "bucket larger than the map"])
def test_a_batch_that_makes_no_progress_gives_way_to_the_walk(answer, monkeypatch):
    """Answers a correct kernel never gives (nothing copied before the end; ENOSPC with room
    for the whole map): that call is served by the walk, and batches are tried again next time."""
    fd = bpfobj.map_create(tables.HASH, 4, 8, 64, "batch")
    try:
        table = tables.Table("batch", fd, tables.HASH, 64, ctypes.c_uint32, ctypes.c_uint64)
        for i in range(10):
            table[i] = i

        def stuck(*_args: object) -> tuple[int, bool]:
            if answer == "no progress":
                return 0, False
            raise bpfobj.BpfError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        monkeypatch.setattr(bpfobj, "map_lookup_batch", stuck)
        assert sorted((k.value, v.value) for k, v in table.items()) == [(i, i) for i in range(10)]
        assert table._batch
    finally:
        os.close(fd)
