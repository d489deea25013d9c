"""Ring-buffer record decoders: one small function each, registered by name.

A decoder's ``size`` is compiled into the BPF program (``-D<NAME>_SIZE``) and checked there with
``_Static_assert``, so a C struct that drifts from its decoder fails at load time.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any, Callable

from .records import PreemptionRecord


class DecodeError(ValueError):
    pass


@dataclass(frozen=True)
class Decoder:
    name: str
    layout: struct.Struct
    build: Callable[[tuple], Any]

    @property
    def size(self) -> int:
        return self.layout.size

    def __call__(self, data: bytes) -> Any:
        if len(data) != self.layout.size:
            raise DecodeError(f"{self.name}: {len(data)} bytes, expected {self.layout.size}")
        return self.build(self.layout.unpack(data))


DECODERS: dict[str, Decoder] = {}


def decoder(name: str, fmt: str) -> Callable[[Callable[[tuple], Any]], Decoder]:
    def register(build: Callable[[tuple], Any]) -> Decoder:
        dec = Decoder(name, struct.Struct(fmt), build)
        if name in DECODERS:
            raise ValueError(f"decoder {name!r} registered twice")
        DECODERS[name] = dec
        return dec

    return register


def comm(raw: bytes) -> str:
    """A kernel task comm: NUL-terminated, at most 16 bytes, not always valid UTF-8."""
    return raw.split(b"\0", 1)[0].decode("utf-8", "replace")


# struct preempt_event in sched.bpf.c
@decoder("preempt_event", "<QQIIIIII16s16s")
def preempt_event(f: tuple) -> PreemptionRecord:
    ts_ns, delay_ns, pid, tid, cpu, preemptor_pid, preemptor_tid, _pad, name, preemptor = f
    return PreemptionRecord(
        ts_ns=ts_ns,
        delay_ns=delay_ns,
        pid=pid,
        tid=tid,
        cpu=cpu,
        comm=comm(name),
        preemptor_pid=preemptor_pid,
        preemptor_tid=preemptor_tid,
        preemptor_comm=comm(preemptor),
    )
