"""The ring-buffer reader (probes/ringbuf.py) against a real BPF ring buffer: every submitted
record once, in order, across many wraps of a one-page ring; discarded ones skipped; none lost
and none taken twice."""

from __future__ import annotations

import ctypes
import os
from collections.abc import Iterator

import pytest
from bcc import BPF

from support import no_programs_left
from wasmtop.probes.ringbuf import RingReader

# Each getppid() of this process submits BATCH records numbered on from the last one; every
# third is discarded by its program. 68-byte records take 80 bytes each in the ring (8-byte
# header, rounded up to 8), which does not divide a 4096-byte page, so records start at every
# offset of the ring as it wraps.
BATCH = 40
PROGRAM = r"""
BPF_RINGBUF_OUTPUT(ring, 1);
BPF_ARRAY(state, u64, 2); /* [0] the pid that triggers, [1] the next sequence number */

struct rec {
    u64 seq;
    u8 pad[60];
} __attribute__((packed)); /* 68 bytes: the reader must round each record up to 8 */

int emit(void *ctx)
{
    u32 zero = 0, one = 1;
    u64 *pid = state.lookup(&zero), *seq = state.lookup(&one);
    if (!pid || !seq || *pid != bpf_get_current_pid_tgid() >> 32)
        return 0;
    for (int i = 0; i < BATCH; i++) {
        struct rec *r = ring.ringbuf_reserve(sizeof(*r));
        if (!r)
            return 0;
        __builtin_memset(r, 0, sizeof(*r));
        r->seq = *seq;
        *seq += 1;
        if (r->seq % 3 == 2)
            ring.ringbuf_discard(r, 0);
        else
            ring.ringbuf_submit(r, BPF_RB_NO_WAKEUP);
    }
    return 0;
}
"""


@pytest.fixture
def ring() -> Iterator[tuple[BPF, RingReader]]:
    b = BPF(text=PROGRAM.encode(), cflags=[f"-DBATCH={BATCH}"])
    b.attach_tracepoint(tp=b"syscalls:sys_enter_getppid", fn_name=b"emit")
    b[b"state"][ctypes.c_int(0)] = ctypes.c_uint64(os.getpid())
    reader = RingReader(b[b"ring"].map_fd)
    try:
        yield b, reader
    finally:
        reader.close()
        b.cleanup()
    assert no_programs_left() == []


def seqs(records: list[bytes]) -> list[int]:
    return [int.from_bytes(r[:8], "little") for r in records]


def test_every_submitted_record_once_in_order_across_many_wraps(ring):
    _, reader = ring
    assert reader.size == os.sysconf("SC_PAGE_SIZE")  # read from the map
    taken: list[int] = []
    for _ in range(60):  # 60 x 40 records of 80 bytes: the page wraps about 47 times
        os.getppid()
        batch = reader.consume()
        assert all(len(r) == 68 for r in batch)
        taken += seqs(batch)
        assert reader.pending_bytes() == 0
    assert taken == [n for n in range(60 * BATCH) if n % 3 != 2]


def test_a_limit_leaves_the_rest_for_the_next_call(ring):
    _, reader = ring
    os.getppid()
    first = seqs(reader.consume(limit=5))
    assert first == [0, 1, 3, 4, 6] and reader.pending_bytes() > 0
    rest = seqs(reader.consume())
    assert rest == [n for n in range(7, BATCH) if n % 3 != 2]


def test_a_full_ring_drops_in_the_kernel_and_the_reader_takes_what_was_kept(ring):
    _, reader = ring
    for _ in range(3):  # 120 reservations of 80 bytes into 4096: the ring fills
        os.getppid()
    kept = seqs(reader.consume())
    assert 0 < len(kept) <= 4096 // 80 and kept == sorted(kept) and kept[0] == 0
    os.getppid()  # room again: the numbering goes on where the programs left off
    after = seqs(reader.consume())
    assert after and after[0] > kept[-1]
