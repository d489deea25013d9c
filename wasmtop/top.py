"""`wasmtop` / `wasmtop top`: the terminal UI, fed by the embedded collector or, with
``--connect``, by a daemon's gRPC stream of Snapshots.

One thread owns everything: it drains the probes, ticks the collector, reads keys and draws
(bpftop's shape); drawing is ``view.render`` of the latest Snapshot. The terminal is put back
on quit, on an exception and on SIGTERM (every exit goes through the ``with`` blocks), and the
probes are detached the same way. Not a terminal: a plain table per refresh instead.
"""

from __future__ import annotations

import argparse
import os
import select
import sys
import termios
import time
import tty
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .collector.model import Snapshot
from .engine import (
    EXIT_ENV,
    EXIT_OK,
    EXIT_USAGE,
    Engine,
    ProbeOptions,
    fail,
    preflight,
    rules_evaluator,
)

ONCE_REMOTE_WAIT_S = 10.0  # --once --connect: how long to wait for a daemon's Snapshot
ESCAPES = {"\x1b[A": "up", "\x1b[B": "down", "\x1bOA": "up", "\x1bOB": "down"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    from .args import add_collector_arguments, positive_seconds
    from .config import GRPC_SOCKET

    p.add_argument(
        "--connect",
        nargs="?",
        const=GRPC_SOCKET,
        metavar="unix:PATH|HOST:PORT",
        help="show a daemon's Snapshots (its gRPC API, grpc.listen) instead of running the "
        f"probes here; alone: this host's daemon ({GRPC_SOCKET}, root or "
        "grpc.socket_group); a lost connection shows a banner and is retried",
    )
    p.add_argument(
        "--ca-file",
        metavar="PEM",
        help="with --connect HOST:PORT: TLS, the daemon's certificate checked against this CA",
    )
    p.add_argument(
        "--cert-file",
        metavar="PEM",
        help="with --connect HOST:PORT: TLS with this client certificate (a daemon with "
        "grpc.client_ca_file requires one); with --key-file",
    )
    p.add_argument("--key-file", metavar="PEM", help="the client certificate's private key")
    p.add_argument(
        "--refresh",
        type=positive_seconds,
        default=1.0,
        metavar="SECONDS",
        help="seconds between Snapshots (default 1)",
    )
    p.add_argument(
        "--once",
        action="store_true",
        help="print one plain table after the first refresh and exit 0",
    )
    p.add_argument(
        "--filter",
        default="",
        metavar="WORDS",
        help="show only the workloads these words match (as the / key does): ns:NAME the "
        "pod's namespace, pod:NAME the start of its name, any other word part of its name; with "
        "--connect the daemon filters before sending",
    )
    p.add_argument(
        "--kernel-threads",
        action="store_true",
        help="list kernel threads (kworker, ksoftirqd, migration ...) one row each from the "
        "start, instead of folded into one kernel row; the K key switches between the two",
    )
    add_collector_arguments(p)


# -- keys --------------------------------------------------------------------------------------
class Keys:
    """Keys from a terminal in cbreak mode (restored on exit), read while waiting."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buffer = ""
        self._saved: Any = None

    def __enter__(self) -> Keys:
        self._saved = termios.tcgetattr(self.fd)
        tty.setcbreak(self.fd)
        return self

    def __exit__(self, *exc: object) -> None:
        termios.tcsetattr(self.fd, termios.TCSADRAIN, self._saved)

    def wait(self, seconds: float) -> None:
        """Sleep up to ``seconds``; return early once a key is pressed."""
        ready, _, _ = select.select([self.fd], [], [], max(0.0, seconds))
        if ready:
            self.buffer += os.read(self.fd, 1024).decode("utf-8", "replace")

    def take(self) -> list[str]:
        return parse_keys(self)


def parse_keys(keys: Keys) -> list[str]:
    out = []
    buf = keys.buffer
    while buf:
        for seq, name in ESCAPES.items():
            if buf.startswith(seq):
                out.append(name)
                buf = buf[len(seq) :]
                break
        else:
            ch, buf = buf[0], buf[1:]
            if ch == "\x1b" and buf.startswith("["):  # another escape sequence: skip it
                while buf and not buf[0].isalpha() and buf[0] != "~":
                    buf = buf[1:]
                buf = buf[1:]
                continue
            out.append({"\r": "enter", "\n": "enter", "\x1b": "esc", "\x7f": "backspace",
                        "\x08": "backspace"}.get(ch, ch))  # fmt: skip
    keys.buffer = ""
    return out


def handle(key: str, snap: Snapshot | None, state: Any) -> bool:
    """Apply one key to the view state; False to quit."""
    from . import view

    if state.editing_filter:
        if key == "enter":
            state.editing_filter = False
        elif key == "esc":
            state.editing_filter, state.filter = False, ""
        elif key == "backspace":
            state.filter = state.filter[:-1]
        elif len(key) == 1 and key.isprintable():
            state.filter += key
        return True
    if key == "q":
        return False
    if key == "?":
        state.help = not state.help
    elif key == "enter" and (state.detail or state.selected):
        state.detail = not state.detail
    elif key == "esc":
        state.detail = state.help = False
    elif key in ("up", "down") and snap is not None:
        view.move(snap, state, -1 if key == "up" else 1)
    elif key == "s":
        view.sort_next(state)
    elif key == "r":
        state.reverse = not state.reverse
    elif key == "/":
        state.editing_filter = True
    elif key == "p":
        state.paused = not state.paused
    elif key == "K":
        state.kernel_threads = not state.kernel_threads
    return True


# -- sources -----------------------------------------------------------------------------------
class Embedded:
    """Probes and collector in this process (the engine): a Snapshot every refresh."""

    def __init__(
        self, args: argparse.Namespace, evaluator: Any, say: Callable[[str], None] = print
    ) -> None:
        self.args = args
        self.evaluator = evaluator
        self.say = say  # a note for the screen (pod names: where from, or why none)
        self.banner: str | None = None
        self.starting: dict[str, str] = {}  # probe -> its loading step, while they load
        self.on_progress: Callable[[], None] | None = None  # redraw the start screen

    def _progress(self, probe: str, stage: str) -> None:
        from .engine import PROGRESS_WORDS

        self.starting[probe] = PROGRESS_WORDS.get(stage, stage)
        if self.on_progress is not None:
            self.on_progress()

    @contextmanager
    def running(self) -> Iterator[Callable[[Callable[[float], None]], Snapshot]]:
        from .kubeconfig import pod_names, wait_for_pod_list

        a = self.args
        with pod_names(a.kubeconfig, a.context, a.no_kubernetes, self.say) as pods:
            engine = Engine(
                ProbeOptions(threshold_ms=a.threshold_ms),
                tick_s=a.refresh,
                scheduling=a.scheduling,
                probe_stats=a.probe_stats,
                pods=pods,
                progress=self._progress,
            )
            with engine:
                if a.once:  # the one table shows the pods by name
                    wait_for_pod_list(pods, engine.drain_for, self.say)

                def next_snapshot(wait: Callable[[float], None]) -> Snapshot | None:
                    """Drain and wait (reading keys) until the next Snapshot is due."""
                    snap = engine.poll(wait)
                    return None if snap is None else self.evaluator.evaluate(snap).snapshot

                yield next_snapshot


class Remote:
    """A daemon's Snapshots over gRPC; the banner says when the connection is lost."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.banner: str | None = None

    @contextmanager
    def running(self) -> Iterator[Callable[[Callable[[float], None]], Snapshot]]:
        from .grpcapi import RemoteSnapshots

        remote = RemoteSnapshots(
            self.args.connect,
            ca_file=self.args.ca_file,
            cert_file=self.args.cert_file,
            key_file=self.args.key_file,
            filter=self.args.filter,
        )
        remote.start()

        def next_snapshot(wait: Callable[[float], None]) -> Snapshot | None:
            wait(0.1)
            snap = remote.latest(0.0)
            if remote.connected:
                self.banner = None
            else:
                why = remote.error or "connecting"
                self.banner = f" {self.args.connect}: {why}; reconnecting ... "
            return snap

        try:
            yield next_snapshot
        finally:
            remote.close()


def connect_arguments_error(args: argparse.Namespace) -> str | None:
    """What is wrong with --connect and its TLS files, for a person; None when nothing."""
    from .config import UNIX_PREFIX, grpc_listen, is_file

    tls_files = {
        "--ca-file": args.ca_file,
        "--cert-file": args.cert_file,
        "--key-file": args.key_file,
    }
    given = [flag for flag, value in tls_files.items() if value is not None]
    if not args.connect:
        return f"argument {given[0]}: only with --connect" if given else None
    try:
        grpc_listen(args.connect)
    except ValueError as exc:
        return f"argument --connect: {exc}"
    if given and args.connect.startswith(UNIX_PREFIX):
        return f"argument {given[0]}: TLS is for --connect HOST:PORT, not a unix socket"
    if (args.cert_file is None) != (args.key_file is None):
        return "argument --cert-file: expected both --cert-file and --key-file, or neither"
    for flag in given:
        if not is_file(Path(tls_files[flag])):
            return f"argument {flag}: expected a readable file, got {tls_files[flag]!r}"
    return None


@contextmanager
def terminated_on_sigterm() -> Iterator[None]:
    """SIGTERM, SIGINT and SIGHUP (the terminal closed) raise Terminated here too (the probes'
    ProbeSet does the same for the first two while it runs), so every exit path goes through
    the ``finally`` blocks: the terminal is restored and the probes detached."""
    from .probes.probeset import STOP_SIGNALS, raise_terminated_on, restore_handlers

    saved = raise_terminated_on(*STOP_SIGNALS)
    try:
        yield
    finally:
        restore_handlers(saved)


# -- the loop ----------------------------------------------------------------------------------
def main(args: argparse.Namespace) -> int:
    from .config import ConfigError
    from .filters import FilterError
    from .filters import parse as parse_filter
    from .probes.probeset import Terminated

    interactive = not args.once and sys.stdin.isatty() and sys.stdout.isatty()
    notes: list[str] = []  # the live screen shows them under the table

    def say(note: str) -> None:
        if interactive:
            notes.append(note)
        else:
            print(f"wasmtop: note: {note}", file=sys.stderr)

    try:
        evaluator = rules_evaluator(args.rules, say=say)
    except ConfigError as exc:
        return fail(str(exc), EXIT_USAGE)
    why = connect_arguments_error(args)
    if why is not None:
        return fail(why, EXIT_USAGE)
    try:
        parse_filter(args.filter)
    except FilterError as exc:
        return fail(f"argument --filter: {exc}", EXIT_USAGE)
    if args.connect:
        source: Any = Remote(args)
        if args.filter:  # the daemon filters: clearing / here cannot bring the rest back
            say(f"the daemon sends only what --filter {args.filter!r} matches")
    else:
        code = preflight()
        if code is not None:
            return code
        source = Embedded(args, evaluator, say)
    try:
        with terminated_on_sigterm():
            kernel_threads = args.kernel_threads
            if interactive:
                return _interactive(source, evaluator.rules, notes, kernel_threads, args.filter)
            return _plain(source, args.once, kernel_threads, args.filter)
    except Terminated as stop:
        return stop.exit_code


def _plain(source: Any, once: bool, kernel_threads: bool = False, filter: str = "") -> int:
    from .columns import header_lines, plain_lines
    from .view import ViewState, alerts_line, visible

    state = ViewState(kernel_threads=kernel_threads, filter=filter)
    shown: str | None = None
    # --once from a daemon that does not answer: say why and give up rather than hang.
    give_up = time.monotonic() + ONCE_REMOTE_WAIT_S if once and isinstance(source, Remote) else None
    with source.running() as next_snapshot:
        while True:
            snap = next_snapshot(time.sleep)
            if source.banner and source.banner != shown:  # each change once, not each retry
                print(source.banner.strip(), file=sys.stderr, flush=True)
            shown = source.banner
            if snap is None:
                if give_up is not None and time.monotonic() > give_up:
                    print(
                        f"wasmtop: no Snapshot from {source.args.connect} within "
                        f"{ONCE_REMOTE_WAIT_S:g} s",
                        file=sys.stderr,
                    )
                    return EXIT_ENV
                continue
            lines = header_lines(snap)
            lines.append(alerts_line(snap))
            lines += plain_lines(snap, visible(snap, state))
            print("\n".join(lines) + "\n", flush=True)
            if once:
                return EXIT_OK


def _interactive(
    source: Any, rules: Any, notes: list[str], kernel_threads: bool = False, filter: str = ""
) -> int:
    from rich.console import Console
    from rich.live import Live

    from .view import ViewState, keep_selection, render

    console = Console()
    state = ViewState(notes=notes, kernel_threads=kernel_threads, filter=filter)
    snap: Snapshot | None = None
    with (
        Keys(sys.stdin.fileno()) as keys,
        Live(console=console, screen=True, auto_refresh=False, transient=True) as live,
    ):

        def draw() -> None:
            state.width, state.height = console.size
            keep_selection(snap, state)
            state.banner = source.banner
            state.starting = dict(getattr(source, "starting", {}))
            live.update(render(snap, state, rules), refresh=True)

        # The probes load inside source.running(): the screen says which, and whether from the
        # cache or the compiler, instead of staying blank.
        source.on_progress = draw
        draw()
        with source.running() as next_snapshot:
            source.on_progress = None
            while True:
                fresh = next_snapshot(keys.wait)
                changed = fresh is not None and not state.paused
                if changed:
                    snap = fresh
                pressed = keys.take()
                for key in pressed:
                    keep_selection(snap, state)
                    if not handle(key, snap, state):
                        return EXIT_OK
                if changed or pressed or state.banner != source.banner:
                    draw()
