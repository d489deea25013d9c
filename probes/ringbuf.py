"""A BPF ring buffer read straight from its memory, a batch at a time.

The kernel's ring buffer (``BPF_MAP_TYPE_RINGBUF``) is shared memory: one read-write page
holding the consumer position, then a read-only page holding the producer position, then the
data pages, mapped twice in a row so that a record that wraps past the end is still contiguous.
Each record starts with an 8-byte header: its length, whose top two bits say BUSY (reserved,
not yet submitted) and DISCARD (given up by its program), and a page offset we do not need. A
record takes its length plus the header, rounded up to 8 bytes.

This is what libbpf's ``ring_buffer__consume`` does, without calling a Python function for every
record through ctypes (about 1.5 us each): ``consume()`` returns the submitted records between
the two positions as bytes and then moves the consumer position past them, once. It stops at the
first record still BUSY, so records are taken in order and none is skipped. The positions are
read and written with single aligned 8-byte accesses; x86-64 keeps those in order (the kernel
writes the record before it clears BUSY).
"""

from __future__ import annotations

import mmap
from typing import Callable, TypeVar

from . import bpfobj

T = TypeVar("T")

BUSY_BIT = 1 << 31
DISCARD_BIT = 1 << 30
HEADER_BYTES = 8


class RingReader:
    """The records of one ring buffer map (by fd), in the order they were submitted."""

    def __init__(self, fd: int, data_bytes: int | None = None) -> None:
        """``data_bytes``: the ring's size (a power-of-two number of pages); read from the map
        when not given."""
        size = data_bytes if data_bytes is not None else bpfobj.map_info(fd).max_entries
        page = mmap.PAGESIZE
        if size <= 0 or size & (size - 1) or size % page:
            raise ValueError(f"ring buffer of {size} bytes: not a power-of-two number of pages")
        self.size = size
        self._page = page
        self._mask = size - 1
        self._consumer = mmap.mmap(fd, page, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        try:
            self._data = mmap.mmap(
                fd, page + 2 * size, mmap.MAP_SHARED, mmap.PROT_READ, offset=page
            )
        except BaseException:
            self._consumer.close()
            raise
        self._consumer_view = memoryview(self._consumer).cast("Q")
        self._producer_view = memoryview(self._data)[:8].cast("Q")
        self._headers = memoryview(self._data).cast("I")  # 4-byte words: record lengths

    def pending_bytes(self) -> int:
        """Bytes between the consumer and the producer position (records not yet taken)."""
        return self._producer_view[0] - self._consumer_view[0]

    def consume(self, limit: int | None = None) -> list[bytes]:
        """The submitted records since the last call (at most ``limit``), each as bytes; the
        consumer position moves past them (and past discarded ones)."""
        cons = self._consumer_view[0]
        prod = self._producer_view[0]
        data, headers, page, mask = self._data, self._headers, self._page, self._mask
        out: list[bytes] = []
        append = out.append
        while cons < prod and (limit is None or len(out) < limit):
            off = page + (cons & mask)
            length = headers[off >> 2]
            if length & BUSY_BIT:
                break
            n = length & ~(BUSY_BIT | DISCARD_BIT)
            if not length & DISCARD_BIT:
                start = off + HEADER_BYTES
                append(data[start : start + n])
            cons += (n + HEADER_BYTES + 7) & ~7
        self._consumer_view[0] = cons
        return out

    def consume_with(self, take: Callable[[mmap.mmap, int, int, int, int], tuple[int, T]]) -> T:
        """What ``take(ring, page, mask, consumer, producer)`` makes of the records between the
        two positions, in one call (``ring``: the mapping from the producer's page on, ``mask``:
        the data size - 1); it returns the new consumer position with its answer, and the
        consumer position moves there. ``consume`` in compiled code: _tracefast.take_requests."""
        cons, out = take(
            self._data, self._page, self._mask, self._consumer_view[0], self._producer_view[0]
        )
        self._consumer_view[0] = cons
        return out

    def close(self) -> None:
        for view in (self._consumer_view, self._producer_view, self._headers):
            view.release()
        self._consumer.close()
        self._data.close()
