"""How much CPU the collector thread may take from the workloads it watches, and when.

Only the bulk decoding yields. In ``idle`` mode (the default) the thread that drains the ring
buffers runs a drain (with the decoding and joining that follows it) as ``SCHED_IDLE`` when the
rings hold at least ``BULK_BYTES`` at its start: then it gets the CPU time the workloads leave,
and a burst of decoding never delays a request. Everything else runs at normal priority:
attaching, the waits between drains (so a deadline or a key is noticed on time), small drains
(microseconds of work: not worth two policy switches, and a starved small drain is what made a
saturated node's wasmtop late), the window's end, detaching and output.

Under pressure the thread stops yielding until ``CALM_S`` pass without any: a ring buffer filled
past ``RAISE_AT_FILL`` of its size between two drains, or a yielding drain took ``LATE_S`` of
wall time (runnable, but not run: the CPUs are full). Each episode is counted (``raised``).
``normal`` never yields.

Measured (docs/benchmarks.md): the example edge service served 0.985x its requests/s with
every probe on (yielding only bulk drains), 0.996x yielding throughout, 0.951x never yielding;
on a node saturated by CPU-bound processes, ``snapshot --seconds 3`` took 1.22x its idle time
(yielding only bulk drains), 1.77x yielding throughout.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

MODES = ("idle", "normal")
BULK_BYTES = 64 * 1024  # records waiting in the rings that make a drain worth yielding for
RAISE_AT_FILL = 0.25  # fraction of a ring buffer filled between two drains
LATE_S = 0.5  # a yielding drain that took this long: the thread is being starved
CALM_S = 5.0  # yield again after this long without pressure
STOPS = (signal.SIGTERM, signal.SIGINT)  # the signals that stop wasmtop (ProbeSet)


class CpuShare:
    """Set the calling thread's scheduling policy around bulk drains (Linux applies it per
    thread: other threads keep theirs)."""

    def __init__(self, mode: str = "idle") -> None:
        if mode not in MODES:
            raise ValueError(f"scheduling mode {mode!r}: expected one of {', '.join(MODES)}")
        self.mode = mode
        self.raised = 0  # episodes of pressure that stopped the yielding (for CALM_S)
        self.failed = 0  # times the policy could not be set
        self.reason = ""  # why, the last time
        self.idle = False
        self._pressed_at = -CALM_S
        self._stopped = False
        self._refused = {True: False, False: False}  # the kernel said no to entering / leaving
        self._watch: tuple[int, int, object] | None = None  # (read fd, write fd, old wakeup fd)
        self._signals: tuple[int, ...] = ()

    @contextmanager
    def bulk(self, pending_bytes: int) -> Iterator[None]:
        """Around a drain and the work on what it took: ``SCHED_IDLE`` for its duration when
        ``pending_bytes`` (what the rings hold) make it a bulk and nothing presses."""
        yielding = (
            self.mode == "idle"
            and not self._stopped
            and pending_bytes >= BULK_BYTES
            and time.monotonic() - self._pressed_at >= CALM_S
            and not self._refused[True]
            and (self.idle or self._set(idle=True))
        )
        t0 = time.monotonic()
        try:
            yield
        finally:
            if yielding:
                starved = time.monotonic() - t0 > LATE_S  # runnable, and not run
                self._leave_idle(pressed=starved)

    def after_drain(self, fill: float) -> None:
        """Called after each drain with the largest fraction of a ring buffer it consumed."""
        if fill >= RAISE_AT_FILL:
            self._leave_idle(pressed=True)

    def watch_stop_signals(self, signals: tuple[int, ...] = STOPS) -> None:
        """A stop signal must not wait for a starved idle thread: Python runs its handler in
        the main thread, which a bulk drain may hold at SCHED_IDLE on a node whose CPUs are
        full. While the main thread is idle it blocks the stop signals (see _set), so the
        kernel delivers them to another thread, whose C-level handler writes the wakeup byte:
        the watcher, of normal priority, wakes, puts the main thread back to normal scheduling
        at once and stops the yielding. Bytes for other signals are passed on to the wakeup fd
        that was there before. Call from the main thread, at normal priority (the watcher
        inherits it)."""
        if self.mode != "idle" or self._watch is not None:
            return
        r, w = os.pipe()
        os.set_blocking(w, False)
        try:
            old = signal.set_wakeup_fd(w, warn_on_full_buffer=False)
        except ValueError:  # not the main thread: signals are not ours to watch
            os.close(r)
            os.close(w)
            return
        self._watch = (r, w, old)
        self._signals = signals
        main = threading.get_native_id()

        def watch() -> None:
            try:
                while numbers := os.read(r, 64):  # b"": unwatched, the write end closed
                    if isinstance(old, int) and old >= 0:  # the wakeup fd's owner before us
                        with contextlib.suppress(OSError):
                            os.write(old, numbers)
                    if not set(numbers) & set(signals):  # e.g. SIGHUP: a reload, not a stop
                        continue
                    self._stopped = True  # no yielding from here on
                    with contextlib.suppress(OSError):
                        os.sched_setscheduler(main, os.SCHED_OTHER, os.sched_param(0))
            except OSError:
                pass
            finally:
                os.close(r)  # here, never while this thread could still read it

        threading.Thread(target=watch, name="stop-signal-watch", daemon=True).start()

    def unwatch_stop_signals(self) -> None:
        if self._watch is None:
            return
        _, w, old = self._watch
        try:
            signal.set_wakeup_fd(old)  # type: ignore[arg-type]
        except ValueError:  # not the main thread: ours stays the wakeup fd, so w stays open
            return
        self._watch = None
        os.close(w)  # the watcher reads end of file, closes its end and returns

    def stop(self) -> None:
        """Normal priority from here on (the window's end, detaching, output), and no yielding
        again."""
        self._stopped = True
        if self.idle:
            self._set(idle=False)

    def _leave_idle(self, *, pressed: bool) -> None:
        """Back to normal scheduling (without CAP_SYS_NICE the kernel refuses: counted, and the
        thread stays idle); ``pressed``: and no yielding for CALM_S, counted once per episode."""
        new_episode = False
        if pressed and self.mode == "idle":
            now = time.monotonic()
            new_episode = now - self._pressed_at >= CALM_S
            self._pressed_at = now
        if self.idle and self._refused[False]:
            return  # refused before: do not ask (and count) again on every drain
        left = not self.idle or self._set(idle=False)
        if new_episode and left:
            self.raised += 1

    def _set(self, *, idle: bool) -> bool:
        policy = os.SCHED_IDLE if idle else os.SCHED_OTHER
        try:
            os.sched_setscheduler(0, policy, os.sched_param(0))
        except OSError as exc:  # e.g. leaving SCHED_IDLE without CAP_SYS_NICE or RLIMIT_NICE
            self.failed += 1
            self.reason = f"cannot set {'SCHED_IDLE' if idle else 'SCHED_OTHER'}: {exc.strerror}"
            self._refused[idle] = True  # asked once: the answer will not change
            return False
        self.idle = idle
        if self._watch is not None and self._signals:
            # While this thread may be starved, the kernel gives a stop signal to another
            # thread (the watcher: its C handler writes the wakeup byte there); Python still
            # runs the signal's handler here.
            with contextlib.suppress(ValueError, OSError):
                how = signal.SIG_BLOCK if idle else signal.SIG_UNBLOCK
                signal.pthread_sigmask(how, set(self._signals))
        return True
