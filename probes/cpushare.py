"""How much CPU the collector thread may take from the workloads it watches.

In ``idle`` mode (the default) the thread that drains the ring buffers runs as ``SCHED_IDLE``:
it gets the CPU time the workloads leave, so a burst of decoding never delays a request. When
that is not enough (a ring buffer filled past ``RAISE_AT_FILL`` of its size between two drains,
or a sleep between drains overran by ``LATE_S``: runnable, but not run), the thread returns to
normal scheduling until ``CALM_S`` pass without either; each raise is counted. ``normal`` never
yields.

Measured (docs/benchmarks.md): the example Wasm edge service on a 2-CPU machine served 0.915x
its requests/s with every probe on and normal scheduling, because each 100 ms drain delays the
load generator's next requests; with ``idle``, 0.958x, with no event lost.
"""

from __future__ import annotations

import os
import time

MODES = ("idle", "normal")
RAISE_AT_FILL = 0.25  # fraction of a ring buffer filled between two drains
LATE_S = 0.5  # a sleep overrunning by this much: the thread is being starved
CALM_S = 5.0  # back to idle after this long without either


class CpuShare:
    """Set and adapt the calling thread's scheduling policy (Linux applies it per thread)."""

    def __init__(self, mode: str = "idle") -> None:
        if mode not in MODES:
            raise ValueError(f"scheduling mode {mode!r}: expected one of {', '.join(MODES)}")
        self.mode = mode
        self.raised = 0  # times the thread left SCHED_IDLE to keep up
        self.failed = 0  # times the policy could not be set
        self.reason = ""  # why, the last time
        self.idle = False
        self._pressed_at = 0.0
        self._started = self._stopped = False

    def start(self) -> None:
        self._started = True
        if self.mode == "idle":
            self._set(idle=True)

    def begin_draining(self) -> None:
        """Before a drain: yield from the first drain on, not before. Attaching, building the
        collector and whatever a command does before its loop run at normal priority, so a
        saturated node does not hold them back."""
        if not self._started and not self._stopped:
            self.start()

    def stop(self) -> None:
        """Normal priority from here on (the window's end, detaching, output), and no yielding
        again."""
        self._stopped = True
        if self.idle:
            self._set(idle=False)

    def after_drain(self, fill: float) -> None:
        """Called after each drain with the largest fraction of a ring buffer it consumed."""
        self._update(pressed=fill >= RAISE_AT_FILL)

    def after_sleep(self, asked_s: float, slept_s: float) -> None:
        """Called after each sleep between drains: oversleeping means the thread is starved."""
        self._update(pressed=slept_s - asked_s > LATE_S)

    def _update(self, *, pressed: bool) -> None:
        if self.mode != "idle":
            return
        now = time.monotonic()
        if pressed:
            self._pressed_at = now
            if self.idle and self._set(idle=False):
                self.raised += 1
        elif not self.idle and not self.reason and now - self._pressed_at >= CALM_S:
            self._set(idle=True)

    def _set(self, *, idle: bool) -> bool:
        policy = os.SCHED_IDLE if idle else os.SCHED_OTHER
        try:
            os.sched_setscheduler(0, policy, os.sched_param(0))
        except OSError as exc:  # e.g. leaving SCHED_IDLE without CAP_SYS_NICE or RLIMIT_NICE
            self.failed += 1
            self.reason = f"cannot set {'SCHED_IDLE' if idle else 'SCHED_OTHER'}: {exc.strerror}"
            return False
        self.idle = idle
        return True
