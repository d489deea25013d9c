"""A stop signal that lands while BCC runs our ring-buffer callbacks is not lost.

Python runs a signal handler in whatever Python code runs next; during a drain that is our
callback, called by libbcc through ctypes, and an exception raised there is printed and dropped.
The SIGTERM would be gone (further ones already ignored) and the process killed later with its
probes attached. Here the callback itself receives the SIGTERM, on the real kernel's ring buffer."""

from __future__ import annotations

import os
import signal
import time

import pytest

from support import workloads
from wasmtop.probes.probeset import ProbeSet, Terminated, raise_terminated_on, restore_handlers
from wasmtop.probes.sched import SchedProbe

pytestmark = pytest.mark.usefixtures("two_cpus")


class SignalOnFirstRecord(list):
    """The probe's pending-record list: the first records added (one at a time or a batch)
    send this process SIGTERM, so the handler runs in the middle of the drain."""

    def append(self, item: object) -> None:
        if not self:
            os.kill(os.getpid(), signal.SIGTERM)
        super().append(item)

    def __iadd__(self, items: object) -> SignalOnFirstRecord:  # type: ignore[override]
        if not self and items:
            os.kill(os.getpid(), signal.SIGTERM)
        return super().__iadd__(items)  # type: ignore[arg-type]


def test_sigterm_during_a_ring_buffer_callback_stops_after_the_drain():
    sched = SchedProbe(threshold_ns=0)  # every preemption is an event
    with (
        workloads(("hog", {"CPU": {1}}), ("hog", {"CPU": {1}})) as hogs,
        ProbeSet([sched], handle_signals=False),
    ):
        for h in hogs:
            h.go()
        time.sleep(0.3)  # two hogs on one CPU: preemption events wait in the ring buffer
        sched._pending = SignalOnFirstRecord()
        saved = raise_terminated_on(signal.SIGTERM)
        try:
            with pytest.raises(Terminated) as stopped:
                sched.drain()
        finally:
            restore_handlers(saved)
        records = len(sched._pending)
    assert stopped.value.signum == signal.SIGTERM
    # Raised after ring_buffer_consume() returned: every record of the drain was taken.
    assert records >= 2 and records == sched.received
