"""wasmtop command line: the parser, `wasmtop snapshot`, `wasmtop doctor`, and the dispatch to
`wasmtop`/`top` (top.py), `daemon` (daemon.py) and `rules` (rulescmd.py). Those import the
engine (engine.py) and the argument types (args.py), never this module.

Exit codes (engine.py): 0 done; 1 this host cannot run it (capability, kernel feature, headers:
the message says which); 2 bad input; 128+N stopped by signal N (probes detached first).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from . import __version__, config
from . import args as argtypes
from .engine import (
    EXIT_ENV,
    EXIT_OK,
    EXIT_USAGE,
    PROBE_NAMES,
    Engine,
    ProbeOptions,
    fail,
    preflight,
    progress_logger,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wasmtop",
        description="eBPF monitoring for latency-sensitive WebAssembly edge workloads: CPU "
        "migrations and preemption per workload, measured in the kernel. Without a command: "
        "the terminal UI (`wasmtop top`).",
    )
    parser.add_argument("--version", action="version", version=f"wasmtop {__version__}")
    from . import top

    # `wasmtop` alone (or with these flags) is `wasmtop top`.
    top.add_arguments(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    top.add_arguments(
        sub.add_parser(
            "top",
            help="the terminal UI (the default command): workloads, alerts, preemptions",
            description="A live view of this host's workloads (or a daemon's, with --connect): "
            "keys q quit, up/down select, enter detail, s sort, r reverse, / filter, p pause, "
            "K kernel threads one by one, ? help. While the probes load it says which, and "
            "whether from the program cache or the compiler. When stdout is not a terminal, a "
            "plain table is printed each refresh.",
        )
    )

    snap = sub.add_parser(
        "snapshot",
        help="watch this host for a while and print one Snapshot",
        description="Attach the probes, watch for --seconds, detach, and print one Snapshot "
        "(schema wasmtop.snapshot/v1, see docs/snapshot.md).",
    )
    snap.add_argument(
        "--seconds",
        type=argtypes.positive_seconds,
        default=5.0,
        metavar="N",
        help="length of the observation window in seconds (default 5)",
    )
    snap.add_argument(
        "--format",
        choices=("json", "table"),
        default="json",
        help="json (the v1 contract) or a plain table (default json)",
    )
    snap.add_argument(
        "--pid",
        type=argtypes.pid_arg,
        action="append",
        default=[],
        metavar="P",
        help="only these processes (repeatable); filtered in the kernel",
    )
    snap.add_argument(
        "--cgroup",
        metavar="PATH",
        help="only tasks in this cgroup v2 subtree (path under the cgroup2 mount)",
    )
    snap.add_argument(
        "--ringbuf-pages",
        type=argtypes.power_of_two,
        default=None,
        metavar="N",
        help="ring-buffer size in pages, a power of two (default 64)",
    )
    snap.add_argument(
        "--probes",
        type=argtypes.probe_list,
        default=None,
        metavar="LIST",
        help="load only these probes, comma-separated, of sched (scheduler: switches, "
        "migrations, preemption and wake-up delay), sockbypass, tracectx (HTTP requests and "
        "trace ids) and lifecycle (cold start, WebAssembly compile/instantiate); default: all. "
        "E.g. --probes sched measures the scheduler probe alone",
    )
    snap.add_argument(
        "--bypass",
        choices=("observe", "accelerate", "off"),
        default="observe",
        help="socket bypass of local TCP connections: observe counts what a bypass would "
        "take off the stack and redirects nothing; accelerate redirects eligible connections "
        "socket to socket (after a self-test; refused with the reason if it fails); off does "
        "not load the probe (default observe)",
    )
    snap.add_argument(
        "--local-cidr",
        type=argtypes.cidr_arg,
        action="append",
        default=[],
        metavar="CIDR",
        help="addresses that are on this host besides loopback and its own addresses, e.g. "
        "the node's pod CIDR (repeatable); only connections with both ends local are eligible",
    )
    snap.add_argument(
        "--bypass-cgroup",
        metavar="PATH",
        help="attach the socket-bypass sockops program to this cgroup v2 directory (path "
        "under the cgroup2 mount) instead of the root: only its sockets are seen",
    )
    snap.add_argument(
        "--trace-pid",
        type=argtypes.pid_arg,
        action="append",
        default=[],
        metavar="P",
        help="capture HTTP requests of this process (repeatable); without any --trace-* flag, "
        "every process of a WebAssembly runtime is traced",
    )
    snap.add_argument(
        "--trace-comm",
        action="append",
        type=argtypes.comm_arg,
        default=[],
        metavar="NAME",
        help="capture HTTP requests of processes with this command name (repeatable)",
    )
    snap.add_argument(
        "--trace-cgroup",
        action="append",
        default=[],
        metavar="PATH",
        help="capture HTTP requests of every process in this cgroup v2 subtree (path under the "
        "cgroup2 mount; repeatable)",
    )
    snap.add_argument(
        "--wasm-guest-calls",
        action="store_true",
        help="time calls into WebAssembly guests too, where a host uses wasmtime's Rust API "
        "(Func::call, TypedFunc::call): each such call then costs microseconds more",
    )
    snap.add_argument(
        "--no-trace",
        action="store_true",
        help="do not load the trace-context probe nor pin the trace-context map",
    )
    snap.add_argument(
        "--growth-window-s",
        type=argtypes.positive_seconds,
        default=300.0,
        metavar="S",
        help="RSS growth (MB/min) is the least-squares slope over the last S seconds of "
        "samples, one a second (default 300; a snapshot shorter than S covers its own length)",
    )
    argtypes.add_collector_arguments(snap)
    snap.add_argument("--no-alerts", action="store_true", help="do not evaluate alert rules")
    snap.add_argument(
        "--max-events",
        type=int,
        default=1000,
        metavar="N",
        help="over-threshold events kept in the Snapshot; the rest are counted",
    )

    daemon = sub.add_parser(
        "daemon",
        help="run until stopped: probes, Prometheus /metrics, OTLP export (config file)",
        description="Run the probes and the collector until SIGTERM, serving /metrics, /healthz "
        "and /readyz and exporting OTLP as the config says (docs/config.md; every key has a "
        "default). SIGHUP reloads the config: a bad one is reported and the running one stays. "
        "Exit 2 on a bad config at start (file:line: what was expected).",
    )
    daemon.add_argument(
        "--config",
        required=True,
        metavar="FILE",
        help="YAML config, e.g. deploy/wasmtop.yaml (a file with only metrics.listen is valid)",
    )
    daemon.add_argument(
        "--log-level",
        choices=("debug", "info", "warning", "error"),
        default="info",
        help="the least important log lines written (default info)",
    )
    daemon.add_argument(
        "--log-format",
        choices=("text", "json"),
        default="text",
        help="text: 'wasmtop daemon: message' lines (under systemd each carries its syslog "
        "priority for journald); json: one object per line with time, level, logger, message "
        "and fields (README.md, The daemon)",
    )
    daemon.add_argument(
        "--check",
        action="store_true",
        help="check the config (and its web config) and exit: 0 valid, 2 not",
    )

    from . import rulescmd

    rulescmd.add_parser(sub)

    doctor = sub.add_parser(
        "doctor",
        help="check what this kernel supports and whether every probe loads",
        description="One line per kernel feature and per probe: ok, unavailable (the kernel "
        "lacks it: says what) or failed (with the compiler or verifier message). Exit 1 if a "
        "required feature is missing.",
    )
    doctor.add_argument(
        "--print-bpf",
        action="store_true",
        help="print the BPF C of every probe variant exactly as compiled",
    )

    cache = sub.add_parser(
        "cache",
        help="show or empty the cache of compiled probe programs",
        description="Probes are compiled once (by a short-lived compiler process) and kept, "
        "keyed by their source, the kernel and BCC, in $WASMTOP_CACHE_DIR, else "
        "/var/cache/wasmtop where writable, else ~/.cache/wasmtop. `show` lists the entries, "
        "`clear` removes them (the next start compiles again). WASMTOP_CACHE=off: no cache.",
    )
    cache.add_argument("action", choices=("show", "clear"), help="what to do")
    return parser


def cmd_cache(args: argparse.Namespace) -> int:
    from .probes.compiled import object_cache

    cache = object_cache()
    if cache.dir is None:
        print("wasmtop cache: off (WASMTOP_CACHE=off)")
        return EXIT_OK
    entries = cache.entries()
    if args.action == "clear":
        n = cache.clear()
        print(f"wasmtop cache: removed {n} compiled program(s) from {cache.dir}")
        return EXIT_OK
    size = sum(p.stat().st_size for p in entries if p.exists())
    print(f"wasmtop cache: {cache.dir}: {len(entries)} compiled program(s), {size / 1024:.0f} KiB")
    for p in entries:
        print(f"  {p.name}  {p.stat().st_size / 1024:.0f} KiB")
    return EXIT_OK


def cache_line(width: int) -> str:
    """doctor's line about the compiled-program cache."""
    from .probes.compiled import object_cache

    cache = object_cache()
    if cache.dir is None:
        return (
            f"cache   {'programs':<{width}}  off          every start compiles (WASMTOP_CACHE=off)"
        )
    st = cache.stats
    writable = os.access(cache.dir, os.W_OK) if cache.dir.exists() else False
    rejected = ", ".join(f"{k} {v}" for k, v in st.rejected.items()) or "none"
    return (
        f"cache   {'programs':<{width}}  {'ok' if writable else 'read-only':<11}  {cache.dir}: "
        f"{len(cache.entries())} entries; this run {st.hits} hits, {st.misses} compiled, "
        f"rejected {rejected}"
    )


def cmd_snapshot(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from .probes import features

    for pid in args.pid:
        if not os.path.exists(f"/proc/{pid}"):
            parser.error(f"argument --pid: no process {pid}")
    cgroups = [("--cgroup", args.cgroup), ("--bypass-cgroup", args.bypass_cgroup)]
    cgroups += [("--trace-cgroup", c) for c in args.trace_cgroup]
    for flag, cgroup in cgroups:
        if cgroup:
            try:
                features.cgroup_dir(cgroup)
            except ValueError as exc:
                parser.error(f"argument {flag}: {exc}")
    for pid in args.trace_pid:
        if not os.path.exists(f"/proc/{pid}"):
            parser.error(f"argument --trace-pid: no process {pid}")
    if args.no_trace and (args.trace_pid or args.trace_comm or args.trace_cgroup):
        parser.error("argument --no-trace: not allowed with the --trace-* flags")
    wanted = args.probes if args.probes is not None else frozenset(PROBE_NAMES)
    if "tracectx" not in wanted and (args.trace_pid or args.trace_comm or args.trace_cgroup):
        parser.error("argument --probes: the --trace-* flags need tracectx")
    if "sockbypass" not in wanted and args.bypass == "accelerate":
        parser.error("argument --probes: --bypass accelerate needs sockbypass")
    if args.max_events < 0:
        parser.error("argument --max-events: expected a count >= 0")
    evaluator = None
    if args.rules and args.no_alerts:
        parser.error("argument --no-alerts: not allowed with --rules")
    if not args.no_alerts:
        try:
            evaluator = rules_evaluator_for_cli(args.rules)
        except config.ConfigError as exc:
            return fail(str(exc), EXIT_USAGE)
    code = preflight()
    if code is not None:
        return code

    from .columns import plain_table
    from .probes.probeset import OK, Terminated

    options = ProbeOptions(
        sched="sched" in wanted,
        threshold_ms=args.threshold_ms,
        pids=tuple(args.pid),
        cgroup=args.cgroup,
        ringbuf_pages=args.ringbuf_pages,
        bypass_mode=args.bypass if "sockbypass" in wanted else "off",
        local_cidrs=tuple(args.local_cidr),
        bypass_cgroup=args.bypass_cgroup,
        trace=not args.no_trace and "tracectx" in wanted,
        trace_pids=tuple(args.trace_pid),
        trace_comms=tuple(args.trace_comm),
        trace_cgroups=tuple(args.trace_cgroup),
        lifecycle="lifecycle" in wanted,
        guest_calls=args.wasm_guest_calls,
    )
    from .kubeconfig import pod_names, wait_for_pod_list

    def say(line: str) -> None:
        print(f"wasmtop: {line}", file=sys.stderr)

    try:
        with pod_names(args.kubeconfig, args.context, args.no_kubernetes, say) as pods:
            engine = Engine(
                options,
                tick_s=args.seconds,
                scheduling=args.scheduling,
                probe_stats=args.probe_stats,
                max_events=args.max_events,
                growth_window_s=args.growth_window_s,
                pods=pods,
                progress=progress_logger(say),
            )
            with engine:
                probes = engine.probes
                if not any(p.status == OK for p in probes):
                    for p in probes:
                        say(f"probe {p.name}: {p.status}: {p.reason}")
                    return EXIT_ENV
                status = ", ".join(
                    f"{p.name} {p.status}" + (f" ({word})" if (word := p.summary()) else "")
                    for p in probes
                )
                say(f"attached: {status}; watching for {args.seconds:g} s")
                engine.drain_for(args.seconds)
                wait_for_pod_list(pods, engine.drain_for, say)
                snapshot = engine.last_snapshot()
    except Terminated as stop:
        return stop.exit_code
    if evaluator is not None:
        snapshot = evaluator.evaluate(snapshot).snapshot
    if args.format == "json":
        print(snapshot.to_json())
    else:
        print(plain_table(snapshot))
    return EXIT_OK


def rules_evaluator_for_cli(files: Sequence[str]) -> object:
    """The rule files' evaluator for a command run at a terminal: notes on stderr."""
    from .engine import rules_evaluator

    return rules_evaluator(files, say=lambda note: print(f"wasmtop: note: {note}", file=sys.stderr))


def cmd_doctor(args: argparse.Namespace) -> int:
    from .probes import features
    from .probes.catalog import fentry_feature, probe_variants, sockmap_feature
    from .probes.probeset import OK, ProbeSet

    if args.print_bpf:
        for label, probe in probe_variants():
            print(f"// ===== {label} =====")
            print(probe.printable())
        return EXIT_OK

    found = features.detect()
    if all(f.ok for f in found if f.name in ("capabilities", "kernel_headers", "bcc")):
        found += [fentry_feature(), sockmap_feature()]
    width = max(len(f.name) for f in found)
    for f in found:
        need = "required" if f.required else "optional"
        print(f"feature {f.name:<{width}}  {f.status:<11}  {need}  {f.reason}")
    missing = [f.name for f in found if f.required and not f.ok]
    if not missing:
        from .probes.catalog import default_probes

        with ProbeSet(default_probes()) as probes:
            for p in probes:
                h = p.health()
                first = p.reason.splitlines()[0] if p.reason else ""
                if h.status == OK:
                    first += f" (program from the {p.program_source})"
                print(f"probe   {p.name:<{width}}  {h.status:<11}  {first}")
                for line in p.reason.splitlines()[1:]:
                    print(f"        {line}")
                if h.status != OK:
                    missing.append(f"probe {p.name}")
        print(cache_line(width))
    if missing:
        print(f"wasmtop doctor: not ready: {', '.join(missing)}", file=sys.stderr)
        return EXIT_ENV
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "snapshot":
        return cmd_snapshot(args, parser)
    if args.command == "doctor":
        return cmd_doctor(args)
    if args.command == "cache":
        return cmd_cache(args)
    if args.command == "daemon":
        from . import daemon

        if args.check:
            return daemon.check(args.config)
        return daemon.run(args.config, args.log_level, args.log_format)
    if args.command == "rules":
        from . import rulescmd

        return rulescmd.main(args)
    from . import top

    return top.main(args)  # `wasmtop` and `wasmtop top`
