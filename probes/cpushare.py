"""How much CPU the collector thread may take from the workloads it watches, and when.

Only the bulk decoding and the waits between drains yield. In ``idle`` mode (the default) the
thread that drains the ring buffers runs a drain (with the decoding and joining that follows it)
as ``SCHED_IDLE`` when the rings hold at least ``BULK_BYTES`` at its start: then it gets the CPU
time the workloads leave, and a burst of decoding never delays a request. Everything else runs
at normal priority: attaching, small drains (microseconds of work: not worth two policy
switches, and a starved small drain is what made a saturated node's wasmtop late), the window's
end, detaching and output.

The waits between drains sleep as ``SCHED_IDLE`` too (``wait``), under a guard. A thread that
sleeps and wakes at normal priority every 100 ms and then yields cost another CPU's server 1.7
points of busy time; one that sleeps and wakes idle, nothing measurable (docs/benchmarks.md).
The guard is a timer read by a thread of normal priority: if the wait has not returned
``GUARD_S`` after its length, that thread puts the sleeper back to normal priority (counted as
pressure, below), so on a full node a deadline or a key is noticed at most ``GUARD_S`` after
the wait's end: a best effort, as the guard's thread needs the interpreter lock, which a
starved thread holds for the few bytecodes between waking and going back to normal. Arming
and disarming the timer wakes nobody.

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
import ctypes
import os
import resource
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from .features import CAP_SYS_NICE, checked, effective_capabilities, libc

MODES = ("idle", "normal")
BULK_BYTES = 64 * 1024  # records waiting in the rings that make a drain worth yielding for
RAISE_AT_FILL = 0.25  # fraction of a ring buffer filled between two drains
LATE_S = 0.5  # a yielding drain that took this long: the thread is being starved
CALM_S = 5.0  # yield again after this long without pressure
GUARD_S = 0.05  # an idle wait this much past its length is put back to normal priority
STOPS = (signal.SIGTERM, signal.SIGINT)  # the signals that stop wasmtop (ProbeSet)


class CpuShare:
    """Set the calling thread's scheduling policy around bulk drains and in the waits between
    drains (Linux applies it per thread: other threads keep theirs)."""

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
        self._guard: _Guard | None = None  # the idle waits' guard, started at the first one
        self._guard_failed = False  # it could not be started, or broke: waits at normal priority
        self._may_leave: bool | None = None  # may_leave_idle(), asked at the first wait
        self._signals: tuple[int, ...] = ()

    def _may_yield(self) -> bool:
        return (
            self.mode == "idle"
            and not self._stopped
            and time.monotonic() - self._pressed_at >= CALM_S
            and not self._refused[True]
        )

    def wait(
        self, wait: Callable[[float], None], seconds: float, pending: Callable[[], int] = int
    ) -> None:
        """``wait(seconds)``, the sleep between two drains: as ``SCHED_IDLE`` under the guard
        when the thread may yield, else at normal priority. The guard is armed before the
        thread goes idle and disarmed after the wait has looked at ``pending()`` (the bytes the
        rings hold): for a bulk to come it stays idle into ``bulk``, else it is back to normal
        first, so no stretch is idle unguarded but the bulk drain (which LATE_S watches)."""
        guard = self._guard_for_idle()
        if guard is None:
            wait(seconds)
            return
        try:
            guard.arm(seconds + GUARD_S)
        except OSError:
            self._guard_broken(guard)
            wait(seconds)
            return
        went_idle = self.idle or self._set(idle=True)
        bulk_next = False  # a wait ended by an exception (a stop) leaves idle in any case
        try:
            wait(seconds)
            bulk_next = went_idle and not guard.fired() and pending() >= BULK_BYTES
        finally:
            if went_idle and not bulk_next:
                self._leave_idle(pressed=False)
            try:
                guard.disarm()
            except OSError:
                self._guard_broken(guard)
            if guard.take_fired():  # the guard raised the thread: it was not run in time
                self._leave_idle(pressed=True)

    def _guard_for_idle(self) -> _Guard | None:
        """The guard of the calling thread's idle waits; None when they must not (or cannot)
        be idle: not yielding now, no right to leave SCHED_IDLE, no guard to be had."""
        if not self._may_yield() or self._refused[False] or self._guard_failed:
            return None
        if self._may_leave is None:  # asked once: capabilities and limits do not change
            self._may_leave = may_leave_idle()
        if not self._may_leave:
            return None  # an idle wait it could not leave would starve keys and deadlines
        guard = self._guard
        if guard is not None and not guard.alive():
            self._guard_broken(guard)
            return None
        if guard is None:
            if self.idle:  # a thread started now would inherit SCHED_IDLE
                return None
            try:
                guard = self._guard = _Guard(threading.get_native_id())
            except (OSError, RuntimeError) as exc:
                self._guard_failed = True
                self.failed += 1
                self.reason = f"cannot start the idle waits' guard: {exc}"
                return None
        elif guard.tid != threading.get_native_id():
            return None  # another thread's guard: only that thread waits idle
        return guard

    def _guard_broken(self, guard: _Guard) -> None:
        """The guard's timer or thread failed: the waits stay at normal priority from now."""
        self._guard_failed = True
        self.failed += 1
        self.reason = "the idle waits' guard failed"
        guard.close()
        self._guard = None

    @contextmanager
    def bulk(self, pending_bytes: int) -> Iterator[None]:
        """Around a drain and the work on what it took: ``SCHED_IDLE`` for its duration when
        ``pending_bytes`` (what the rings hold) make it a bulk and nothing presses; normal
        priority otherwise (also after an idle ``wait``)."""
        yielding = (
            pending_bytes >= BULK_BYTES
            and self._may_yield()
            and (self.idle or self._set(idle=True))
        )
        if not yielding and self.idle:
            self._leave_idle(pressed=False)
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
        if self._guard is not None:
            self._guard.close()
            self._guard = None

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


def may_leave_idle() -> bool:
    """Whether this process may go back from SCHED_IDLE to normal scheduling (sched(7)):
    CAP_SYS_NICE in its effective set, or an RLIMIT_NICE that allows its nice value."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        if effective_capabilities() >> CAP_SYS_NICE & 1:
            return True
    soft = resource.getrlimit(resource.RLIMIT_NICE)[0]
    return soft == resource.RLIM_INFINITY or soft >= 20 - os.getpriority(os.PRIO_PROCESS, 0)


class _Guard:
    """A one-shot timer (a timerfd) whose expiry puts thread ``tid`` back to normal scheduling.
    A thread of normal priority blocks reading it: arming and disarming (timerfd_settime) wake
    it never, only an expiry does; closing expires it at once with ``closed`` set."""

    def __init__(self, tid: int) -> None:
        self.tid = tid
        self.fd = _timerfd_create()
        self.closed = False
        self._fired = False
        self._thread = threading.Thread(target=self._run, name="idle-wait-guard", daemon=True)
        try:
            self._thread.start()
        except RuntimeError:
            os.close(self.fd)
            raise

    def alive(self) -> bool:
        return self._thread.is_alive()

    def arm(self, seconds: float) -> None:
        _timerfd_settime(self.fd, max(seconds, 1e-6))

    def disarm(self) -> None:
        _timerfd_settime(self.fd, 0.0)

    def fired(self) -> bool:
        return self._fired

    def take_fired(self) -> bool:
        fired, self._fired = self._fired, False
        return fired

    def close(self) -> None:
        """Never raises (it runs on the way to detaching the probes)."""
        self.closed = True
        if not self._thread.is_alive():
            return  # it closed the fd on its way out
        with contextlib.suppress(OSError):
            _timerfd_settime(self.fd, 1e-6)  # the reader wakes, sees closed, closes the fd
        self._thread.join(timeout=1.0)

    def _run(self) -> None:
        try:
            while True:
                try:
                    os.read(self.fd, 8)  # blocks until the timer expires
                except OSError:
                    return  # broken: alive() says so, and the waits stay at normal priority
                if self.closed:
                    return
                self._fired = True
                with contextlib.suppress(OSError):  # the thread is gone, or no CAP_SYS_NICE
                    os.sched_setscheduler(self.tid, os.SCHED_OTHER, os.sched_param(0))
        finally:
            os.close(self.fd)


# timerfd_create(2) and timerfd_settime(2) through the C library (os has them from Python 3.13
# only): a CLOCK_MONOTONIC one-shot timer.
_CLOCK_MONOTONIC = 1
_TFD_CLOEXEC = 0o2000000


class _ITimerSpec(ctypes.Structure):
    _fields_ = [(n, ctypes.c_long) for n in ("i_sec", "i_nsec", "v_sec", "v_nsec")]


def _timerfd_create() -> int:
    return checked(libc().timerfd_create(_CLOCK_MONOTONIC, _TFD_CLOEXEC))


def _timerfd_settime(fd: int, seconds: float) -> None:
    """Expire once, ``seconds`` from now (0: disarm)."""
    whole = int(seconds)
    spec = _ITimerSpec(0, 0, whole, int((seconds - whole) * 1e9))
    checked(libc().timerfd_settime(fd, 0, ctypes.byref(spec), None))
