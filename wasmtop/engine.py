"""Running wasmtop: which probes start and with what settings, the checks before they load, the
alert rules, and the one loop that drains the probes and ticks the collector.

`wasmtop snapshot` (cli.py), `wasmtop` (top.py) and `wasmtop daemon` (daemon.py) all run through
here and never import each other:

    with Engine(options, tick_s=1.0) as engine:      # probes built, loaded, attached
        engine.run(on_snapshot)                      # the daemon: a Snapshot every tick
        snap = engine.poll(wait)                     # top: one turn at a time, reading keys
        snap = engine.last_snapshot()                # snapshot: the window ends, detach, tick

Exit codes: 0 done; 1 this host cannot run it (capability, kernel feature, headers: the message
says which); 2 bad input; 128+N stopped by signal N (probes detached first).
"""

from __future__ import annotations

import gc
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .probes.sched import DEFAULT_THRESHOLD_MS

EXIT_OK, EXIT_ENV, EXIT_USAGE = 0, 1, 2
PROBE_NAMES = ("sched", "sockbypass", "tracectx", "lifecycle")
OBSERVE_EVERY_S = 1.0  # processes' identities (comm, cgroup, libraries) are learnt this often
DRAIN_EVERY_S = 0.1  # ring buffers are drained this often


def fail(message: str, code: int) -> int:
    """Say ``message`` on stderr as wasmtop's, and return ``code`` (an exit code)."""
    print(f"wasmtop: {message}", file=sys.stderr)
    return code


_fail = fail  # preflight's own ``fail`` shadows it


def preflight(say: Callable[[str], None] | None = None) -> int | None:
    """Reasons this host cannot load probes, as an exit code (after saying them: on stderr, or
    through ``say``, the daemon's log), or None."""
    from .probes import features

    def fail(message: str, code: int) -> int:
        if say is None:
            return _fail(message, code)
        say(message)
        return code

    missing = features.missing_capabilities()
    if missing:
        return fail(
            f"missing capability {' and '.join(missing)}: run as root, or grant "
            f"{', '.join(missing)} (CAP_SYS_ADMIN on kernels older than 5.8)",
            EXIT_ENV,
        )
    headers = features.check_kernel_headers()
    if not headers.ok:
        return fail(f"no kernel headers: {headers.reason}", EXIT_ENV)
    bcc = features.check_bcc()
    if not bcc.ok:
        return fail(bcc.reason, EXIT_ENV)
    return None


# -- which probes, with what ----------------------------------------------------------------------
@dataclass(frozen=True)
class ProbeOptions:
    """Every setting compiled into or given to the probes. Each probe reports the ones it runs
    with in its block of the Snapshot (``probes.NAME``), so whoever reads a Snapshot (the
    rules, the terminal UI, a ``--connect`` client) knows them without being told."""

    sched: bool = True
    threshold_ms: float = DEFAULT_THRESHOLD_MS
    pids: tuple[int, ...] = ()
    cgroup: str | None = None
    ringbuf_pages: int | None = None
    bypass_mode: str = "observe"  # observe | accelerate | off
    local_cidrs: tuple[str, ...] = ()
    bypass_cgroup: str | None = None
    trace: bool = True
    trace_pids: tuple[int, ...] = ()
    trace_comms: tuple[str, ...] = ()
    trace_cgroups: tuple[str, ...] = ()
    lifecycle: bool = True
    guest_calls: bool = False  # the lifecycle probe times calls into the guest too

    @classmethod
    def from_config(cls, config: Any) -> ProbeOptions:
        p = config["probes"]
        sched, bypass, trace = p["sched"], p["bypass"], p["trace"]
        return cls(
            threshold_ms=sched["threshold_ms"],
            pids=tuple(sched["pids"]),
            cgroup=sched["cgroup"],
            ringbuf_pages=sched["ringbuf_pages"],
            bypass_mode=bypass["mode"],
            local_cidrs=tuple(bypass["local_cidrs"]),
            bypass_cgroup=bypass["cgroup"],
            trace=trace["enabled"],
            trace_pids=tuple(trace["pids"]),
            trace_comms=tuple(trace["comms"]),
            trace_cgroups=tuple(trace["cgroups"]),
            lifecycle=p["lifecycle"]["enabled"],
            guest_calls=p["lifecycle"]["guest_calls"],
        )


def build_probes(opts: ProbeOptions) -> tuple[list[Any], Any]:
    """The probes to start, in start order, and the trace selector (None without tracing)."""
    from .probes.sched import DEFAULT_RINGBUF_PAGES, SchedProbe

    probes: list[Any] = []
    sched = None
    if opts.sched:
        sched = SchedProbe(
            threshold_ns=round(opts.threshold_ms * 1e6),
            pids=list(opts.pids),
            cgroup=opts.cgroup,
            ringbuf_pages=opts.ringbuf_pages or DEFAULT_RINGBUF_PAGES,
            trace_ctx=opts.trace,
        )
        probes.append(sched)
    if opts.bypass_mode != "off":
        from .probes.sockbypass import SockBypassProbe

        probes.append(
            SockBypassProbe(
                mode=opts.bypass_mode,
                cgroup=opts.bypass_cgroup,
                local_cidrs=list(opts.local_cidrs),
            )
        )
    selector = None
    if opts.trace:
        from .collector.correlate import TraceSelector
        from .probes.tracectx import TraceCtxProbe

        selector = TraceSelector(
            frozenset(opts.trace_pids), frozenset(opts.trace_comms), tuple(opts.trace_cgroups)
        )
        # After the scheduler probe: it shares that probe's per-thread map (without it,
        # requests are captured and their interference is unknown).
        probes.append(TraceCtxProbe(sched, cgroups=list(opts.trace_cgroups)))
    if opts.lifecycle:
        from .probes.lifecycle import LifecycleProbe

        probes.append(LifecycleProbe(guest_calls=opts.guest_calls))
    return probes, selector


# -- alert rules ------------------------------------------------------------------------------
def rules_evaluator(
    files: Sequence[str | Path],
    *,
    say: Callable[[str], None],
    node: str | None = None,
    loss_ratio: float = 0.0,
    max_per_rule: int = 100,
) -> Any:
    """An evaluator of the given rule files (the shipped ones when none is given); ConfigError
    naming file and line when one is wrong.

    One policy everywhere for a rule the kernel cannot feed (a preemption threshold below the
    scheduler probe's reporting threshold, which the Snapshot carries in
    ``probes.sched.threshold_ms``): it is not evaluated, and ``say`` is told once which and why.
    """
    from .alerts.evaluate import Evaluator, default_node
    from .alerts.rules import load_all

    return Evaluator(
        load_all(files),
        node=node or default_node(),
        loss_ratio=loss_ratio,
        max_per_rule=max_per_rule,
        say=say,
    )


# -- the loop ---------------------------------------------------------------------------------
# The cyclic garbage collector's gen-0 threshold while probes run (CPython's default: 700). Each
# traced request allocates a few objects that live for the request window, so at the default a
# busy node ran a gen-0 pass every ~200 requests and full passes over the windows and everything
# loaded at start (BCC, the compiled programs' tables): 152 ms of collections per 105,000
# requests, 38 ms with this and the freeze (docs/benchmarks.md).
GC_GEN0_THRESHOLD = 20_000


def settle_garbage_collector() -> tuple[int, int, int]:
    """Once everything is loaded: what start-up made lives as long as the probes run, so it
    leaves the collector's books (gc.freeze), and collections come every 20,000 new objects.
    Returns the thresholds before, for ``unsettle_garbage_collector``."""
    before = gc.get_threshold()
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_GEN0_THRESHOLD, before[1], before[2])
    return before  # type: ignore[return-value]


def unsettle_garbage_collector(before: tuple[int, int, int]) -> None:
    """When the probes stop (a reload starts new ones): what was frozen can be collected
    again, and the thresholds are as they were."""
    gc.unfreeze()
    gc.set_threshold(*before)


class Engine:
    """The probes of ``options``, loaded and attached on ``with``, and a collector over them;
    detached on the way out, whatever the way (exception, SIGTERM: ``Terminated``).

    ``tick_s``: how often ``poll``/``run`` hand out a Snapshot. ``scheduling``: the collector
    thread's CPU policy (``idle`` | ``normal``); ``probe_stats``: time the probes' programs in
    the kernel; ``max_events``, ``growth_window_s``, ``pods``: the collector's."""

    def __init__(
        self,
        options: ProbeOptions,
        *,
        tick_s: float = 1.0,
        scheduling: str = "idle",
        probe_stats: bool = False,
        max_events: int | None = None,
        growth_window_s: float | None = None,
        pods: Any = None,
        progress: Callable[[str, str], None] | None = None,
        route_templates: Sequence[str] | Mapping[str, Sequence[str]] = (),
        keep_paths: bool = False,
    ) -> None:
        self.options = options
        self.progress = progress  # (probe, stage) while the probes load: see ProbeSet
        self.tick_s = tick_s
        self.scheduling = scheduling
        self.probe_stats = probe_stats
        self._collector_args: dict[str, Any] = {"pods": pods}
        if max_events is not None:
            self._collector_args["max_events"] = max_events
        if growth_window_s is not None:
            self._collector_args["growth_window_s"] = growth_window_s
        if route_templates or keep_paths:
            from .collector.correlate import RequestTracker

            self._collector_args["requests"] = RequestTracker(
                route_templates=route_templates, keep_paths=keep_paths
            )
        self.probes: Any = None  # probes.probeset.ProbeSet, once entered
        self.collector: Any = None
        self._probe_set: Any = None
        self._due = 0.0
        self._observed = 0.0

    @classmethod
    def from_config(
        cls, config: Any, *, pods: Any = None, progress: Callable[[str, str], None] | None = None
    ) -> Engine:
        c = config["collector"]
        return cls(
            ProbeOptions.from_config(config),
            tick_s=c["tick_s"],
            scheduling=c["scheduling"],
            probe_stats=c["probe_stats"],
            max_events=c["max_events"],
            growth_window_s=c["growth_window_s"],
            pods=pods,
            progress=progress,
            route_templates=c["route_templates"],
            keep_paths=c["keep_paths"],
        )

    def __enter__(self) -> Engine:
        from .collector.collector import Collector
        from .probes.cpushare import CpuShare
        from .probes.probeset import ProbeSet

        selected, selector = build_probes(self.options)
        self._probe_set = ProbeSet(
            selected,
            cpu=CpuShare(self.scheduling),
            run_stats=self.probe_stats,
            progress=self.progress,
        )
        self.probes = self._probe_set.__enter__()
        try:
            self.collector = Collector(self.probes, trace_selector=selector, **self._collector_args)
        except BaseException:
            self._probe_set.__exit__(*sys.exc_info())
            raise
        self._gc_before = settle_garbage_collector()
        self._due = time.monotonic() + self.tick_s
        self._observed = time.monotonic()
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self._probe_set.__exit__(*exc)
        finally:
            unsettle_garbage_collector(self._gc_before)

    @property
    def attached(self) -> bool:
        """At least one probe runs and none failed to load."""
        from .probes.probeset import FAILED, OK

        return any(p.status == OK for p in self.probes) and not any(
            p.status == FAILED for p in self.probes
        )

    def drain_for(self, seconds: float, wait: Callable[[float], None] = time.sleep) -> None:
        """Drain the ring buffers every DRAIN_EVERY_S for ``seconds`` (``wait`` does the
        waiting: the terminal UI reads keys meanwhile), learning process identities every
        OBSERVE_EVERY_S."""
        from .probes.probeset import sleep_draining

        deadline = time.monotonic() + seconds
        while True:
            now = time.monotonic()
            if now - self._observed >= OBSERVE_EVERY_S:
                with self.probes.bulk():
                    self.collector.observe()
                self._observed = now
            left = deadline - now
            if left <= 0:
                return
            step = min(left, self._observed + OBSERVE_EVERY_S - now)
            sleep_draining(self.probes, step, DRAIN_EVERY_S, drain=self.collector.poll, wait=wait)

    def poll(self, wait: Callable[[float], None] = time.sleep) -> Any:
        """One turn of the loop: drain for up to DRAIN_EVERY_S, and return the Snapshot when
        one is due (every ``tick_s``), else None."""
        self.drain_for(max(0.0, min(DRAIN_EVERY_S, self._due - time.monotonic())), wait)
        if time.monotonic() < self._due:
            return None
        self._due = max(self._due + self.tick_s, time.monotonic())
        return self.collector.tick()

    def run(
        self,
        on_snapshot: Callable[[Any], None],
        *,
        stop: Callable[[], bool] = lambda: False,
        wait: Callable[[float], None] = time.sleep,
    ) -> None:
        """The loop: a Snapshot to ``on_snapshot`` every ``tick_s`` until ``stop()`` says so
        (asked every turn) or a signal ends it (``Terminated`` propagates)."""
        while not stop():
            snap = self.poll(wait)
            if snap is not None:
                on_snapshot(snap)

    def last_snapshot(self) -> Any:
        """The window ends now: the probes are detached (their books close exactly), then the
        collector takes its Snapshot."""
        end_ns = time.monotonic_ns()  # detaching takes a while: the window ends here
        self.probes.cpu.stop()  # the window's end, detaching and output at normal priority
        self.probes.detach()
        return self.collector.tick(end_ns)


PROGRESS_WORDS = {
    "cached": "program from the cache",
    "compiling": "compiling (not in the cache yet)",
    "loading": "loading",
    "ok": "attached",
}


def progress_text(probe: str, stage: str) -> str:
    """One probe's loading step in words, for logs and the UI's start screen."""
    return f"probe {probe}: {PROGRESS_WORDS.get(stage, stage)}"


def progress_logger(
    say: Callable[[str], None], warn: Callable[[str], None] | None = None
) -> Callable[[str, str], None]:
    """A ProbeSet progress callback for a log: where each probe's program came from (cache or
    compiler) and how its start ended (through ``warn`` when it did not attach); the steps in
    between are for the UI."""

    def report(probe: str, stage: str) -> None:
        if stage == "loading":
            return
        failed = warn is not None and stage.startswith(("failed", "unavailable"))
        (warn if failed else say)(progress_text(probe, stage))

    return report
