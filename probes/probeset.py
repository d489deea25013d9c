"""What every probe loader shares: render and compile BCC text, isolate failures, attach and
detach, drain ring buffers, count losses in the kernel, and report each probe's own cost."""

from __future__ import annotations

import contextlib
import errno
import os
import re
import signal
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar

from . import features
from .compiled import (
    CompiledObject,
    CompileError,
    ObjectCache,
    cache_key,
    compile_batch_in_child,
    compile_in_child,
    fentry_check,
    object_cache,
    sockmap_check,
)
from .cpushare import CpuShare
from .decoders import DECODERS, decode_all
from .loader import LoadedObject
from .ringbuf import RingReader

OK, UNAVAILABLE, FAILED = "ok", "unavailable", "failed"

PLACEHOLDER = re.compile(r"@@([A-Z][A-Z0-9_]*)@@")
BASE_COUNTERS = ("RB_ATTEMPTS", "RB_LOST", "MAP_FULL")
HERE = Path(__file__).resolve().parent
_progress_lock = threading.Lock()
# Events held between drains and the collector's take; beyond this they are dropped and counted.
MAX_PENDING_EVENTS = 100_000


class ProbeUnavailable(Exception):
    """The kernel lacks something this probe needs; the message says what."""


def render(template: str, values: Mapping[str, str]) -> str:
    """Fill ``@@NAME@@`` placeholders; a placeholder without a value is an error, not a hole."""

    def fill(match: re.Match) -> str:
        name = match.group(1)
        if name not in values:
            raise KeyError(f"no value for placeholder @@{name}@@")
        return str(values[name])

    return PLACEHOLDER.sub(fill, template)


def placeholders_in(text: str) -> set[str]:
    return set(PLACEHOLDER.findall(text))


# In the compiler child only (probes/compile.py sets it from STDERR_FILE_ENV, which the parent
# names): the file captures write to, so that the parent can read what a capture held when the
# child died inside it. Everywhere else captures go to an anonymous temporary file.
child_stderr_file: str | None = None


@contextlib.contextmanager
def captured_stderr() -> Iterator[list[str]]:
    """Capture fd 2 (where libbcc and clang print) into the yielded list's single element."""
    out: list[str] = [""]
    saved = os.dup(2)
    named = child_stderr_file
    with open(named, "w+b") if named else tempfile.TemporaryFile(mode="w+b") as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield out
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            out[0] = tmp.read().decode("utf-8", "replace")
            tmp.truncate(0)  # a later death outside a capture must not show these words


def _tail(text: str, lines: int = 12) -> str:
    kept = [ln for ln in text.strip().splitlines() if ln.strip()]
    return "\n".join(kept[-lines:])


class LibbccError(RuntimeError):
    """A libbcc call failed; ``detail`` holds the last lines clang or the verifier printed."""

    def __init__(self, what: str, failure: Exception, detail: str) -> None:
        super().__init__(f"{what}: {failure}\n{detail}".strip())
        self.detail = detail
        self.failure = failure  # what the call raised


def capturing(what: str, action: Callable[[], Any]) -> Any:
    """Run a libbcc call; on failure raise LibbccError with what clang or the verifier printed."""
    failure: Exception | None = None
    with captured_stderr() as err:
        try:
            return action()
        except Exception as exc:
            failure = exc
    raise LibbccError(what, failure, _tail(err[0]))


def prog_stats(fd: int) -> tuple[int, int]:
    """(run_cnt, run_time_ns) of a loaded program, from its fdinfo (as bpftop shows them)."""
    cnt = ns = 0
    try:
        with open(f"/proc/self/fdinfo/{fd}") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key == "run_cnt":
                    cnt = int(value)
                elif key == "run_time_ns":
                    ns = int(value)
    except OSError:
        pass
    return cnt, ns


@dataclass(frozen=True)
class ProbeHealth:
    status: str
    reason: str
    events: int  # records received and decoded
    lost: int  # failed reservations in the kernel + records dropped in userspace
    attempts: int  # records the kernel tried to send: events + malformed + kernel losses
    malformed: int
    map_full: int
    run_count: int
    run_time_ns: int
    details: Mapping[str, Any] = field(default_factory=dict)  # probe-specific, e.g. bypass mode

    def as_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "reason": self.reason,
            "events": self.events,
            "lost": self.lost,
            "attempts": self.attempts,
            "malformed": self.malformed,
            "map_full": self.map_full,
            "run_count": self.run_count,
            "run_time_ns": self.run_time_ns,
            "ns_per_run": round(self.run_time_ns / self.run_count, 1) if self.run_count else None,
            **dict(self.details),
        }


class Probe:
    """One kernel program file and its userspace side, named alike (NAME.bpf.c + NAME.py).

    Subclasses declare what they attach as data and say what to compile in; this class does
    the rest. A probe that cannot load reports why and leaves the others running.
    """

    name: ClassVar[str]
    tracepoints: ClassVar[tuple[tuple[str, str], ...]] = ()  # (category:event, function)
    ringbuffers: ClassVar[tuple[tuple[str, str], ...]] = ()  # (map, decoder name)
    counters: ClassVar[tuple[str, ...]] = ()  # probe-specific per-CPU counters
    headers: ClassVar[tuple[str, ...]] = ()  # shared .bpf.h files prepended to the body

    def __init__(self) -> None:
        self.run_stats: dict[str, str] = {}  # why run_count/run_time_ns are not measured
        self.bpf: Any = None
        self.status = UNAVAILABLE
        self.reason = "not loaded"
        self.received = 0
        self.malformed = 0
        self.dropped = 0
        self._pending: list[Any] = []
        self._attached: list[str] = []
        self._attach_lock = threading.Lock()  # attach_points may run beside a stop
        self._stopped = False
        self._final_counters: dict[str, int] | None = None
        self._rings: list[tuple[RingReader, Any]] = []  # (reader, decoder) per ring buffer
        self._compiled: CompiledObject | None = None
        self._prepare_error: Exception | None = None
        self.program_source = ""  # "cache" or "compiler": where the loaded program came from
        self._cache: ObjectCache = ObjectCache(None)
        self._key = ""
        self._source: tuple[str, list[str]] = ("", [])
        self.progress: Callable[[str, str], None] | None = None  # (probe, stage) while starting

    # -- what gets compiled ---------------------------------------------------------------
    def placeholders(self) -> dict[str, str]:
        return {}

    def defines(self) -> dict[str, int | str]:
        return {}

    def counter_names(self) -> tuple[str, ...]:
        return BASE_COUNTERS + self.counters

    def cflags(self) -> list[str]:
        flags = {f"CTR_{name}": i for i, name in enumerate(self.counter_names())}
        flags["WASMTOP_NR_COUNTERS"] = len(self.counter_names())
        flags["EEXIST"] = errno.EEXIST  # what an insert of a key already there returns
        for _, dec in self.ringbuffers:
            flags[f"{dec.upper()}_SIZE"] = DECODERS[dec].size
        if "shared.bpf.h" in self.headers:
            flags["USER_REGS"] = int(features.user_regs())
        flags.update(self.defines())
        return [f"-D{k}={v}" for k, v in flags.items()]

    def body(self) -> str:
        return (HERE / f"{self.name}.bpf.c").read_text()

    def source(self) -> str:
        common = "\n".join((HERE / h).read_text() for h in ("common.bpf.h", *self.headers))
        body = self.body()
        asserts = "".join(
            f"_Static_assert(sizeof(struct {dec}) == {dec.upper()}_SIZE, "
            f'"struct {dec} does not match its decoder in probes/decoders.py");\n'
            for _, dec in self.ringbuffers
        )
        return f"{common}\n{body}\n{asserts}"

    def rendered(self) -> str:
        return render(self.source(), self.placeholders())

    def printable(self) -> str:
        """The program exactly as compiled, cflags first (wasmtop doctor --print-bpf)."""
        header = "".join(f"// cflag {flag}\n" for flag in self.cflags())
        return f"// probe {self.name}\n{header}{self.rendered()}"

    def check_kernel(self) -> None:
        """Raise ProbeUnavailable when the kernel lacks what this probe attaches to. Every probe
        reports through a BPF ring buffer: when one cannot be made, the reason is the kernel's
        (an old kernel, a missing capability, or a seccomp profile refusing bpf())."""
        ringbuf = features.check_ringbuf()
        if not ringbuf.ok:
            raise ProbeUnavailable(f"BPF ring buffer unavailable: {ringbuf.reason}")
        for tp, _ in self.tracepoints:
            if not features.has_tracepoints(tp):
                raise ProbeUnavailable(f"tracepoint {tp} not found (is tracefs mounted?)")

    # -- lifecycle ------------------------------------------------------------------------
    def lookup(self, cache: ObjectCache) -> bool:
        """Check the kernel and look for the compiled program in the cache. True: it must be
        compiled (``self._source``); False: found, or an error kept for start()."""
        self._compiled, self._prepare_error = None, None
        self._cache = cache
        try:
            self.check_kernel()
            text, cflags = self.rendered(), self.cflags()
            self._key = cache_key(text, cflags)
            obj = cache.get(self._key)
        except Exception as exc:
            self._prepare_error = exc
            return False
        if obj is None:
            self._source = (text, cflags)
            return True
        self._compiled, self.program_source = obj, "cache"
        self._report("cached")
        return False

    def compiled(self, result: CompiledObject | str | Exception) -> None:
        """What the compiler child answered for this probe: kept (and stored in the cache), or
        the error kept for start()."""
        if isinstance(result, CompiledObject):
            self._cache.put(self._key, result)
            self._compiled, self.program_source = result, "compiler"
        else:
            self._prepare_error = result if isinstance(result, Exception) else CompileError(result)

    def prepare(self, cache: ObjectCache | None = None) -> None:
        """The compiled program, from the cache or a compiler child of its own; an error is
        kept for start(). (A ProbeSet prepares its probes together: ProbeSet._prepare.)"""
        if self.lookup(cache if cache is not None else object_cache()):
            self._report("compiling")
            try:
                self.compiled(compile_in_child(*self._source))
            except Exception as exc:
                self.compiled(exc)

    def _report(self, stage: str) -> None:
        if self.progress is not None:
            with _progress_lock, contextlib.suppress(Exception):  # probes prepare side by side
                self.progress(self.name, stage)

    def start(self) -> None:
        """Compile (or find in the cache), load and attach. Never raises: the outcome is in
        status and reason."""
        try:
            if self._compiled is None and self._prepare_error is None:
                self.prepare()
            if self._prepare_error is not None:
                raise self._prepare_error
            assert self._compiled is not None
            self._report("loading")
            try:
                self._load_and_attach(self._compiled)
            except ProbeUnavailable:
                raise
            except Exception:
                if self.program_source != "cache":
                    raise
                # It passed the cache's checks and still did not load: not trusted again,
                # compiled once more; a second failure is the probe's.
                self.close()  # whatever the first attempt attached, detached
                self._stopped = False
                self._cache.discard(self._key, "unloadable")
                self.prepare(self._cache)
                if self._prepare_error is not None:
                    raise self._prepare_error from None
                assert self._compiled is not None
                self._load_and_attach(self._compiled)
        except ProbeUnavailable as exc:
            self.status, self.reason = UNAVAILABLE, str(exc)
            self.close()
        except Exception as exc:  # compiler, verifier, attach: reported, never fatal
            self.status, self.reason = FAILED, str(exc).strip()
            self.close()
        else:
            self.status, self.reason = OK, "attached"
        finally:
            self._compiled, self._prepare_error = None, None
        # How it ended; a probe that did not attach says why (the log's only word on it).
        self._report(self.status if self.status == OK else f"{self.status}: {self.reason}")

    def _load_and_attach(self, obj: CompiledObject) -> None:
        self.bpf = LoadedObject(obj)
        self.verify_maps()
        for map_name, dec in self.ringbuffers:
            fd = self.table(map_name).map_fd
            self._rings.append((RingReader(fd), DECODERS[dec]))
        capturing("load/attach failed", self.attach)

    def attach(self) -> None:
        self.attach_points(self.tracepoints)

    def attach_points(self, points: Sequence[tuple[str, str]]) -> None:
        """Attach these (tracepoint, function) pairs, those not attached yet; nothing once the
        probe was detached (a late call from another thread cannot undo a stop)."""
        with self._attach_lock:
            if self._stopped:
                return
            for tp, fn in points:
                if tp not in self._attached:
                    self.bpf.attach_tracepoint(tp=tp.encode(), fn_name=fn.encode())
                    self._attached.append(tp)

    def detach_points(self, points: Sequence[tuple[str, str]]) -> None:
        """Detach these tracepoints while the rest of the probe runs on."""
        with self._attach_lock:
            gone = [tp for tp, _ in points if tp in self._attached]
            for tp in gone:
                self._attached.remove(tp)
            if gone and self.bpf is not None:
                with contextlib.suppress(Exception):
                    self.bpf.detach_tracepoints(gone)

    def detach(self) -> None:
        """Undo every attachment; maps stay readable for a final drain and read."""
        with self._attach_lock:
            self._stopped = True
            gone, self._attached = self._attached, []
            if gone and self.bpf is not None:
                with contextlib.suppress(Exception):
                    self.bpf.detach_tracepoints(gone)

    def table(self, name: str) -> Any:
        return self.bpf[name]

    def verify_maps(self) -> None:
        """Fail at load time, not at read time, when a map the reader needs is missing."""
        for name in self.required_maps():
            try:
                self.table(name)
            except KeyError:
                raise RuntimeError(f"map {name!r} missing from {self.name}.bpf.c") from None

    def required_maps(self) -> Sequence[str]:
        return ["counters"] + [m for m, _ in self.ringbuffers]

    def close(self) -> None:
        self.detach()
        self._release()

    def _release(self) -> None:
        while self._rings:
            reader, _ = self._rings.pop()
            reader.close()
        if self.bpf is not None:
            with contextlib.suppress(Exception):
                self._final_counters = self._read_counters()
            with contextlib.suppress(Exception):
                self.bpf.cleanup()  # detaches whatever attach() got to, too
            self.bpf = None
            self._attached.clear()

    @property
    def loaded(self) -> bool:
        return self.bpf is not None and self.status == OK

    # -- ring buffers -------------------------------------------------------------------
    def drain(self) -> float:
        """Consume whatever the ring buffers hold; called on a timer, never per event.

        Returns the fraction of the ring buffer those records filled (how close it came to
        losing events between two drains)."""
        if self.bpf is None or not self._rings:
            return 0.0
        fill = 0.0
        pending = self._pending
        with _callbacks_running():  # a stop signal waits for the batch to be taken
            for reader, dec in self._rings:
                fill = max(fill, reader.pending_bytes() / reader.size)
                records, malformed = self.take_records(reader, dec)
                self.malformed += malformed
                self.received += len(records)
                room = max(0, MAX_PENDING_EVENTS - len(pending))
                if len(records) > room:  # the newest beyond the cap are dropped, counted
                    self.dropped += len(records) - room
                    del records[room:]
                pending += records
        return fill

    def take_records(self, reader: RingReader, dec: Any) -> tuple[list[Any], int]:
        """The records a ring holds, decoded, and how many were malformed; the ring's consumer
        position moves past all of them. A probe with a faster way for its records says so."""
        return decode_all(reader, dec)

    def pending_bytes(self) -> int:
        """Bytes of records waiting in this probe's ring buffers."""
        return sum(reader.pending_bytes() for reader, _ in self._rings)

    def take_events(self) -> list[Any]:
        events, self._pending = self._pending, []
        return events

    # -- counters and cost ----------------------------------------------------------------
    def _read_counters(self) -> dict[str, int]:
        table = self.table("counters")
        return {name: int(table.sum(i).value) for i, name in enumerate(self.counter_names())}

    def counter_values(self) -> dict[str, int]:
        if self.bpf is not None:
            return self._read_counters()
        return dict(self._final_counters or dict.fromkeys(self.counter_names(), 0))

    def details(self) -> dict[str, Any]:
        """Probe-specific health facts, merged into the Snapshot's probes block."""
        return {}

    def summary(self) -> str:
        """A word for the line that says the probes are attached (never waits for anything)."""
        return ""

    def program_fds(self) -> list[int]:
        if self.bpf is None:
            return []
        return [fn.fd for fn in list(self.bpf.funcs.values())]

    def health(self) -> ProbeHealth:
        ctr = self.counter_values()
        runs = ns = 0
        for fd in self.program_fds():
            c, t = prog_stats(fd)
            runs, ns = runs + c, ns + t
        return ProbeHealth(
            status=self.status,
            reason=self.reason,
            events=self.received,
            lost=ctr.get("RB_LOST", 0) + self.dropped,
            attempts=ctr.get("RB_ATTEMPTS", 0),
            malformed=self.malformed,
            map_full=ctr.get("MAP_FULL", 0),
            run_count=runs,
            run_time_ns=ns,
            details={**self.details(), **self.run_stats, "program": self.program_source},
        )


def sockmap_feature() -> features.Feature:
    """Accelerate mode's precondition, checked without wasmtop's probe: a compiler child
    redirects 1,000 bytes between two sockets of its own and asks FIONREAD and epoll."""
    ok, reason = sockmap_check()
    if not ok and not reason.startswith("no sk_msg redirect"):  # the self-test's own words
        reason += ": accelerate mode's self-test refuses it here (observe only)"
    return features.Feature(
        "sockmap_ingress", features.OK if ok else features.UNAVAILABLE, reason, False
    )


def fentry_feature() -> features.Feature:
    """fentry/fexit is optional: a compiler child loads a trivial program to see whether this
    kernel allows it (the answer is kept in the object cache)."""
    ok, reason = fentry_check("do_nanosleep")
    return features.Feature("fentry", features.OK if ok else features.UNAVAILABLE, reason, False)


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def ignore_stop_signals() -> None:
    """Once stopping, further SIGTERM/SIGINT/SIGHUP are ignored: raised in the middle of the
    detaching, they would leave attachments behind. (The handlers are restored afterwards by
    whoever installed them.)"""
    for sig in STOP_SIGNALS:
        try:
            signal.signal(sig, signal.SIG_IGN)
        except ValueError:  # not the main thread
            return


# A stop signal that arrives while a drain takes a batch of records. Raised in the middle, it
# would leave records decoded but the ring's consumer position not moved past them (the final
# drain would take them twice), or, while BCC calls Python back (ctypes callbacks print and drop
# exceptions), be lost with further signals already ignored. Inside a drain the handler only
# records the signal; Terminated is raised once the batch is taken.
_in_callbacks = 0
_deferred_signal: int | None = None


@contextlib.contextmanager
def _callbacks_running() -> Iterator[None]:
    global _in_callbacks, _deferred_signal
    _in_callbacks += 1
    try:
        yield
    finally:
        _in_callbacks -= 1
    if _deferred_signal is not None and not _in_callbacks:
        signum, _deferred_signal = _deferred_signal, None
        raise Terminated(signum)


def _raise_terminated(signum: int, _frame: object) -> None:
    global _deferred_signal
    ignore_stop_signals()  # a second signal must not interrupt the detaching
    if _in_callbacks:
        _deferred_signal = signum
        return
    raise Terminated(signum)


def raise_terminated_on(*signals: int) -> dict[int, Any]:
    """Make these signals raise Terminated in the main thread; the handlers they had, for
    restore_handlers(). Outside the main thread nothing changes (its owner handles signals)."""
    saved: dict[int, Any] = {}
    for sig in signals:
        try:
            saved[sig] = signal.signal(sig, _raise_terminated)
        except ValueError:
            break
    return saved


def restore_handlers(saved: dict[int, Any]) -> None:
    for sig, handler in saved.items():
        signal.signal(sig, handler)


class Terminated(BaseException):
    """Raised in the main thread on SIGTERM/SIGINT so every ``finally`` detaches."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class ProbeSet:
    """Start probes together; on exit (normal, exception, SIGTERM/SIGINT) undo every attach.

    ``with ProbeSet([SchedProbe()]) as probes: ...``
    """

    def __init__(
        self,
        probes: Sequence[Probe],
        *,
        handle_signals: bool = True,
        cpu: CpuShare | None = None,
        run_stats: bool = False,
        progress: Callable[[str, str], None] | None = None,
        cache: ObjectCache | None = None,
    ) -> None:
        """``run_stats``: time the probes' programs in the kernel (BPF_ENABLE_STATS) for their
        run_count/run_time_ns. Off by default: while it is on, the kernel times every BPF program
        on the host, not only wasmtop's (two clock reads per run), a tax on the whole node."""
        self.probes = list(probes)
        self.run_stats = run_stats
        self.cpu = cpu or CpuShare("normal")
        self.handle_signals = handle_signals
        self.progress = progress  # (probe name, stage): cached, compiling, loading, ok, ...
        self.cache = cache
        self._saved_handlers: dict[int, Any] = {}
        self._stats_fd = -1

    def __enter__(self) -> ProbeSet:
        if self.handle_signals:
            self._install_signal_handlers()
        try:
            why = ""
            if self.run_stats:
                self._stats_fd = features.enable_bpf_stats()
                if self._stats_fd < 0:
                    err = errno.errorcode.get(-self._stats_fd, str(-self._stats_fd))
                    why = (
                        f"off: BPF_ENABLE_STATS refused ({err}); it needs CAP_SYS_ADMIN, or "
                        "sysctl kernel.bpf_stats_enabled=1 on the host"
                    )
            else:
                why = (
                    "off: not asked for (--probe-stats, collector.probe_stats): while on, the "
                    "kernel times every BPF program on the host, not only wasmtop's"
                )
            if why and not features.bpf_stats_enabled():
                for probe in self.probes:  # run_count/run_time_ns stay 0: say they are not measured
                    probe.run_stats = {"run_stats": why}
            self._prepare()
            for probe in self.probes:
                # A signal during an attach would interrupt it between the kernel call and its
                # record, leaving something attached that detach does not know of: hold
                # SIGTERM/SIGINT until the probe is started, then let them stop everything.
                with self._signals_held():
                    probe.start()
            # Compiling and attaching run at normal priority; the first drain may yield.
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _prepare(self) -> None:
        """Find every probe's compiled program in the cache; compile the missing ones side by
        side, at most one compiler child per CPU, each with a share of them (a child's start and
        the compiler's set-up cost about 0.1 s: paid once per child, not per probe)."""
        cache = self.cache if self.cache is not None else object_cache()
        for probe in self.probes:
            probe.progress = self.progress
        misses = [p for p in self.probes if p.lookup(cache)]
        if not misses:
            return
        batches: list[list[Probe]] = [[] for _ in range(min(len(misses), os.cpu_count() or 1))]
        sizes = [0] * len(batches)
        for probe in sorted(misses, key=lambda p: -len(p._source[0])):  # longest first
            i = sizes.index(min(sizes))
            batches[i].append(probe)
            sizes[i] += len(probe._source[0])

        def compile_batch(batch: list[Probe]) -> None:
            for probe in batch:
                probe._report("compiling")
            try:
                results: list[Any] = compile_batch_in_child([p._source for p in batch])
            except Exception as exc:
                results = [exc] * len(batch)
            for probe, result in zip(batch, results):
                probe.compiled(result)

        if len(batches) == 1:
            compile_batch(batches[0])
            return
        with ThreadPoolExecutor(max_workers=len(batches), thread_name_prefix="compile") as pool:
            list(pool.map(compile_batch, batches))

    @contextlib.contextmanager
    def _signals_held(self) -> Iterator[None]:
        """A stop signal during an attach is deferred to the attach's end (the handler notes
        it and returns; Terminated is raised when the block ends), whichever thread the kernel
        delivered it to: blocking it in this thread would only send it to another."""
        if not self.handle_signals:
            yield
            return
        with _callbacks_running():
            yield

    def __exit__(self, *exc: object) -> None:
        try:
            self.cpu.stop()
            self.close()
        finally:
            if self._stats_fd >= 0:
                os.close(self._stats_fd)
                self._stats_fd = -1
            self._restore_signal_handlers()

    def __iter__(self) -> Iterator[Probe]:
        return iter(self.probes)

    def detach(self) -> None:
        """Detach every program (the probes side by side: each detach waits for the kernel),
        then drain what the ring buffers still hold."""
        self._detach_all()
        self.drain()

    def _detach_all(self) -> None:
        def detach(probe: Probe) -> None:
            with contextlib.suppress(Exception):
                probe.detach()

        threads = [
            threading.Thread(target=detach, args=(p,), name=f"detach-{p.name}") for p in self.probes
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    def pending_bytes(self) -> int:
        """Bytes of records waiting in the probes' ring buffers."""
        return sum(probe.pending_bytes() for probe in self.probes)

    def bulk(self) -> contextlib.AbstractContextManager[None]:
        """Around a drain and the work on what it took: yields the CPU when the rings hold a
        bulk (CpuShare.bulk)."""
        return self.cpu.bulk(self.pending_bytes())

    def drain(self) -> None:
        fill = 0.0
        for probe in self.probes:
            fill = max(fill, probe.drain())
        self.cpu.after_drain(fill)

    def close(self) -> None:
        self._detach_all()
        for probe in self.probes:
            with contextlib.suppress(Exception):
                probe.close()

    def _install_signal_handlers(self) -> None:
        self._saved_handlers = raise_terminated_on(signal.SIGTERM, signal.SIGINT)
        self.cpu.watch_stop_signals()

    def _restore_signal_handlers(self) -> None:
        self.cpu.unwatch_stop_signals()
        restore_handlers(self._saved_handlers)
        self._saved_handlers = {}


def sleep_draining(
    probes: ProbeSet,
    seconds: float,
    interval_s: float = 0.1,
    drain: Callable[[], None] | None = None,
    wait: Callable[[float], None] = time.sleep,
) -> None:
    """Sleep for ``seconds`` while draining ring buffers every ``interval_s`` (with ``drain``
    when given, e.g. a collector's poll that also consumes what was drained). ``wait`` does
    the sleeping: the terminal UI reads keys meanwhile."""
    deadline = time.monotonic() + seconds
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        asked = min(interval_s, remaining)
        probes.cpu.wait(wait, asked, probes.pending_bytes)  # idle and guarded when it may yield
        with probes.bulk():  # only a bulk drain yields the CPU
            (drain or probes.drain)()
