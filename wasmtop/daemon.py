"""`wasmtop daemon --config FILE`: probes, collector and exporters running until SIGTERM.

One thread owns the probes and the collector (the main thread: it takes the signals); the HTTP
server, the gRPC API and the OTLP exporter run in their own threads and only read what the loop
publishes (the SeriesBook, the latest Snapshot), so a slow scrape, a slow gRPC client or a dead
OTLP receiver never delays a ring-buffer drain.

SIGHUP re-reads the config and the web config. A bad file is reported and the running config
stays; a good one is applied: the HTTP listener, the gRPC API, the OTLP exporter and the
Kubernetes pod watcher are rebuilt when their sections changed, the probes are restarted when
theirs did (the series keep counting).

Pod metadata (namespace, name, RuntimeClass, container names) comes from the Kubernetes API
through a pod watcher on its own thread; the collector reads the cache it fills, which lives as
long as the daemon so that probe restarts and watcher rebuilds keep what is known.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from . import logs  # noqa: F401 - the log's default format, before any line
from .config import Config, ConfigError, config_relative, load
from .engine import EXIT_ENV, EXIT_OK, EXIT_USAGE, preflight, progress_logger
from .web import Endpoints, HttpServer, MetricsCache, WebConfig, load_web_config

_LOG = logging.getLogger("wasmtop.daemon")


def log(message: str, level: int = logging.INFO, **fields: Any) -> None:
    """One line of the daemon's log (wasmtop/logs.py: text or JSON); ``fields`` go into the
    JSON object beside the message."""
    _LOG.log(level, message, extra={"fields": fields} if fields else None)


def warn(message: str, **fields: Any) -> None:
    log(message, logging.WARNING, **fields)


def load_all(path: Path) -> tuple[Config, WebConfig, list[Any]]:
    """The config, the web config and the alert rules it names; ConfigError naming file and
    line. Nothing of a refused set is used: a reload applies all of it or none."""
    config = load(path)
    web = load_web_config(web_config_path(config, path))
    return config, web, load_rules(config, path)


def load_rules(config: Config, config_path: Path) -> list[Any]:
    """The rule files ``alerts.rule_files`` names (relative to the config file), or none when
    alerts are off. A rule the kernel cannot feed is loaded and left out of evaluation, said in
    the log (alerts/evaluate.py: one policy for every command)."""
    from .alerts.rules import load_all as load_rule_files

    a = config["alerts"]
    if not a["enabled"]:
        return []
    return load_rule_files([config_relative(p, str(config_path)) for p in a["rule_files"]])


def web_config_path(config: Config, config_path: Path) -> Path | None:
    """The web config file, relative to the config file's directory when relative."""
    value = config["metrics"]["web_config_file"]
    return None if value is None else config_relative(value, str(config_path))


def grpc_tls_files(config: Config, config_path: Path) -> tuple[str | None, str | None, str | None]:
    """grpc.tls_cert_file, tls_key_file and client_ca_file, relative to the config file's
    directory when relative (config.py has checked that they exist and go together)."""
    g = config["grpc"]

    def resolved(key: str) -> str | None:
        return None if g[key] is None else str(config_relative(g[key], str(config_path)))

    return resolved("tls_cert_file"), resolved("tls_key_file"), resolved("client_ca_file")


def kubernetes_settings(
    config: Config, config_path: Path, env: Mapping[str, str] = os.environ
) -> tuple[Any, str]:
    """(ApiSettings, how) when pod metadata is to be read from the API; else (None, why)
    (wasmtop/kubeconfig.py: the resolution `wasmtop` and `snapshot` share)."""
    from .kubeconfig import api_settings

    return api_settings(config["kubernetes"], config_path, env)


def _file_stamp(paths: Iterable[str | None]) -> tuple:
    """Files and their modification times (None: unreadable): a certificate rotated in place
    (cert-manager) changes it, and a reload then rebuilds what reads it."""
    out = []
    for path in paths:
        if path is not None:
            try:
                out.append((path, os.stat(path).st_mtime_ns))
            except OSError:
                out.append((path, None))
    return tuple(out)


def _tls_stamp(targets: Any) -> tuple:
    """The TLS files of OTLP targets (_file_stamp)."""
    if targets is None:
        return ()
    return _file_stamp(
        path for t in (targets.traces, targets.metrics)
        for path in (t.ca_file, t.client_cert, t.client_key)
    )  # fmt: skip


def node_resource() -> dict[str, str]:
    node = os.environ.get("NODE_NAME")
    return {"k8s.node.name": node} if node else {}


def node_name(config: Config) -> str:
    from .alerts.evaluate import default_node

    return config["alerts"]["node"] or default_node()


class Daemon:
    def __init__(self, config_path: Path, config: Config, web: WebConfig, rules: list[Any]) -> None:
        from .collector.kubernetes import PodCache
        from .exporters.series import SeriesBook

        self.config_path = config_path
        self.config = config
        self.web = web
        self.rules = rules
        self.evaluator: Any = None
        self.notifier: Any = None
        self.make_evaluator()
        m = config["metrics"]
        self.book = SeriesBook(m["max_workloads"], m["stale_after_s"])
        self.reload_requested = False
        self.reloads = {"ok": 0, "failed": 0}
        self.last_reload_ok = True
        self.probe_status: dict[str, dict[str, str]] = {}
        self.ready = False
        self.http: HttpServer | None = None
        # connections the /metrics server dropped, by why, from servers closed on reloads
        self.http_dropped_before: Counter = Counter()
        self.grpc: Any = None  # grpcapi.SnapshotServer, when grpc.enabled
        self.otlp: Any = None
        self.otlp_counts: dict[str, int] = {}  # what the exporters before this one counted
        self.otlp_stamp: tuple = ()  # its TLS files' modification times (_tls_stamp)
        self.grpc_stamp: tuple = ()  # the gRPC API's (_file_stamp)
        self.pods = PodCache()  # what the pod watcher learnt; read by every collector
        self.kube: Any = None  # collector.kubernetes.PodWatcher, while the API is watched
        # Rendered again for each Snapshot, and after each reload (its counters, the new
        # config's figures) even before the next Snapshot.
        generation = lambda: (  # noqa: E731 - what makes a render stale
            self.book.snapshots, self.reloads["ok"], self.reloads["failed"]
        )  # fmt: skip
        self.metrics = MetricsCache(self._render, generation)
        self.openmetrics = MetricsCache(lambda: self._render(openmetrics=True), generation)

    # -- what the endpoints read -------------------------------------------------------------
    def _render(self, openmetrics: bool = False) -> bytes:
        from .exporters.exposition import encode

        return encode([*self.book.families(), *self._own_families()], openmetrics=openmetrics)

    def _own_families(self) -> list[Any]:
        from .exporters.own import build_info, process_families
        from .exporters.series import Family, Sample

        fams = [
            Family(
                "wasmtop_config_reloads",
                "counter",
                "Config reloads (SIGHUP) by result; a failed one keeps the running config.",
                ("result",),
                [Sample((r,), float(n)) for r, n in self.reloads.items()],
            ),
            Family(
                "wasmtop_config_last_reload_successful",
                "gauge",
                "1 when the last config reload succeeded (or none was asked for).",
                (),
                [Sample((), 1.0 if self.last_reload_ok else 0.0)],
            ),
        ]
        dropped = Counter(self.http_dropped_before)
        if self.http is not None:
            dropped.update(self.http.refused)
        fams.append(
            Family(
                "wasmtop_http_connections_dropped",
                "counter",
                "Connections the /metrics server closed: busy (all its connection slots taken), "
                "peer (its address already held its share of them), slow (a request head still "
                "incomplete after its deadline), timeout (silent).",
                ("reason",),
                [Sample((r,), float(dropped[r])) for r in ("busy", "peer", "slow", "timeout")],
            )
        )
        fams += [build_info(), *process_families()]
        # Each component says what it counts (a prometheus_client custom collector's way).
        fams += self._alert_families()
        for component in (self.grpc, self.kube, self.otlp):
            if component is not None:
                fams += component.families()
        return fams

    def _alert_families(self) -> list[Any]:
        from .alerts.evaluate import RULES_HELP
        from .exporters.series import Family, Sample

        if self.evaluator is None:  # alerts.enabled: false: the same family, 0
            fams = [Family("wasmtop_alert_rules", "gauge", RULES_HELP, (), [Sample((), 0.0)])]
        else:
            fams = self.evaluator.families()
        if self.notifier is not None:
            fams += self.notifier.families()
        return fams

    def _readiness(self) -> tuple[bool, dict[str, Any]]:
        return self.ready, {"ready": self.ready, "probes": self.probe_status}

    # -- exporters ---------------------------------------------------------------------------
    def start_http(self) -> None:
        listen = self.config["metrics"]["listen"]
        endpoints = Endpoints(self.metrics, self._readiness, self.metrics.gzipped, self.openmetrics)
        self.http = HttpServer(listen, endpoints, self.web)
        log(f"serving {self.http.scheme}://{listen}/metrics, /healthz, /readyz")

    def start_grpc(self, old: Any = None) -> None:
        """The gRPC API (OSError when its address cannot be bound); ``old``: the server it
        replaces on a reload, whose counters and latest Snapshot carry over."""
        g = self.config["grpc"]
        if not g["enabled"]:
            self.grpc = None
            return
        from .config import group_id
        from .grpcapi import METHOD, SnapshotServer, unix_path

        cert, key, client_ca = grpc_tls_files(self.config, self.config_path)
        self.grpc_stamp = _file_stamp((cert, key, client_ca))
        group = None if g["socket_group"] is None else group_id(g["socket_group"])
        if g["socket_group"] is not None and group is None:  # removed since the config check
            raise OSError(
                f"cannot listen on {g['listen']}: grpc.socket_group: no group "
                f"{g['socket_group']!r} on this host"
            )
        self.grpc = SnapshotServer(
            g["listen"],
            tls_cert_file=cert,
            tls_key_file=key,
            client_ca_file=client_ca,
            socket_group=group,
            max_streams=g["max_streams"],
            max_streams_per_peer=g["max_streams_per_peer"],
        )
        if old is not None:
            self.grpc.carry_over(old)
        if unix_path(g["listen"]) is not None:
            how = f"mode 0660, group {g['socket_group']}" if group is not None else "mode 0600"
        elif client_ca:
            how = "TLS, client certificates required"
        else:
            how = "TLS, no client authentication" if cert else "plaintext, no authentication"
        log(f"serving gRPC {METHOD} on {g['listen']} ({how})")

    def otlp_targets(self, config: Config) -> tuple[Any, str | None]:
        """(targets or None, why not) of a config's ``otlp`` section over the environment,
        with the stamp of its TLS files (a rotated certificate changes it)."""
        from .exporters.otlp_settings import OtlpSettingsError, resolve

        o = dict(config["otlp"])
        for key in ("ca_file", "client_cert_file", "client_key_file"):
            if o[key] is not None:
                o[key] = str(config_relative(o[key], str(self.config_path)))
        try:
            return resolve(o), None
        except OtlpSettingsError as exc:
            return None, str(exc)

    def start_otlp(self, old: Any = None) -> None:
        """The OTLP exporter, when the ``otlp`` section or the OTEL_* environment names an
        endpoint (exporters/otlp_settings.py). A setting the environment gets wrong is said and
        leaves export off; it never stops the daemon. The counts of every exporter before this
        one go on (``self.otlp_counts``)."""
        if old is not None:
            self.otlp_counts = old.stats()  # its own and those it carried over
        o = self.config["otlp"]
        targets, why = self.otlp_targets(self.config)
        self.otlp_stamp = _tls_stamp(targets)
        if why is not None:
            self.otlp = None
            warn(f"OTLP export off: {why}")
            return
        if targets is None:
            self.otlp = None
            return
        from .exporters.otlp import OtlpExporter

        try:
            self.otlp = OtlpExporter(
                book=self.book,
                interval_s=o["interval_s"],
                max_queue_spans=o["max_queue_spans"],
                # In a DaemonSet the node's name comes through the downward API as NODE_NAME.
                resource=node_resource(),
                targets=targets,
                service_names=o["service_names"],
            )
        except Exception as exc:  # a CA or key file that cannot be read, an SDK refusal
            self.otlp = None
            warn(f"OTLP export off: {exc}")
            return
        self.otlp.carry_over(self.otlp_counts)
        t, m = targets.traces, targets.metrics
        where = t.endpoint if t.endpoint == m.endpoint else f"{t.endpoint} and {m.endpoint}"
        log(
            f"exporting OTLP ({t.protocol}) to {where} every {o['interval_s']:g} s "
            f"(endpoint from {t.source})",
            protocol=t.protocol, traces=t.endpoint, metrics=m.endpoint,
        )  # fmt: skip

    def start_kubernetes(self, old: Any = None) -> None:
        """The pod watcher, when the ``kubernetes`` section and the environment ask for it;
        ``old``: the watcher it replaces on a reload, whose counts go on. Never fails: an API
        server that cannot be reached is retried, counted and logged by the watcher."""
        from .collector.kubernetes import PodWatcher

        settings, how = kubernetes_settings(self.config, self.config_path)
        if settings is None:
            self.kube = None
            self.pods.clear()
            log(f"pod names from the Kubernetes API: {how}")
            return
        try:
            self.kube = PodWatcher(settings, self.pods, log=log, warn=warn, counts_from=old).start()
        except ValueError as exc:  # a server URL the watcher cannot use: said, never fatal
            self.kube = None
            warn(f"pod names from the Kubernetes API: off: {exc}")
            return
        log(f"watching the pods of node {settings.node} at {settings.server} ({settings.source})")

    def make_evaluator(self) -> None:
        """The evaluator for the current rules, keeping the states of unchanged rules."""
        from .alerts.evaluate import Evaluator

        a = self.config["alerts"]
        old = self.evaluator
        if not a["enabled"]:
            self.evaluator = None
            return
        self.evaluator = Evaluator(
            self.rules,
            node=node_name(self.config),
            loss_ratio=a["incomplete_data_loss_ratio"],
            max_per_rule=a["max_alerts_per_rule"],
            say=log,
        )
        if old is not None:
            self.evaluator.carry_over(old)

    def start_notifier(self) -> None:
        from .alerts.alertmanager import Notifier

        am = self.config["alertmanager"]
        old = self.notifier
        if not am["urls"]:
            self.notifier = None
            return
        self.notifier = Notifier(
            am["urls"],
            resend_interval_s=am["resend_interval_s"],
            eval_interval_s=self.config["collector"]["tick_s"],
        )
        if old is not None:
            self.notifier.carry_over(old)
        log(f"posting alerts to {', '.join(am['urls'])}")

    def stop_exporters(self) -> None:
        if self.http is not None:
            self.http_dropped_before.update(self.http.refused)
            self.http.close()
            self.http = None
        if self.grpc is not None:
            self.grpc.close()
            self.grpc = None
        if self.otlp is not None:
            self.otlp.close()
            self.otlp = None
        if self.notifier is not None:
            self.notifier.close()
            self.notifier = None
        if self.kube is not None:
            self.kube.close()
            self.kube = None

    # -- reload ------------------------------------------------------------------------------
    def reload(self) -> bool:
        """Apply a re-read config; True when the probes must restart."""
        self.reload_requested = False
        try:
            new, web, rules = load_all(self.config_path)
        except ConfigError as exc:
            return self.refuse_reload(str(exc))
        except Exception as exc:  # a bug in a loader must not end the daemon
            # The loaders raise ConfigError for any bad file (tests/unit/test_loaders_fuzz.py);
            # anything else is a bug in them, and still no reason to stop watching the node.
            return self.refuse_reload(f"unexpected {type(exc).__name__} reading the config: {exc}")
        old, self.config = self.config, new
        self.reloads["ok"] += 1
        self.last_reload_ok = True
        m = new["metrics"]
        self.book.set_limits(m["max_workloads"], m["stale_after_s"])
        if new["metrics"] != old["metrics"] or web != self.web:
            self.web = web
            assert self.http is not None
            self.http_dropped_before.update(self.http.refused)
            self.http.close()
            try:
                self.start_http()
            except OSError as exc:  # e.g. the new address is taken: serve on the old one
                kept = old["metrics"]["listen"]
                warn(f"cannot listen on {m['listen']}: {exc.strerror}; keeping {kept}")
                self.config["metrics"] = old["metrics"]
                self.start_http()
        # The section, or a TLS file rotated (or a client CA edited to revoke one).
        grpc_stamp = _file_stamp(grpc_tls_files(new, self.config_path))
        if new["grpc"] != old["grpc"] or (self.grpc is not None and grpc_stamp != self.grpc_stamp):
            self.reload_grpc(old)
        # The section, or what it resolves to with the environment, or a TLS file rotated.
        targets = self.otlp_targets(new)[0]
        running = self.otlp.targets if self.otlp is not None else None
        if (new["otlp"] != old["otlp"] or targets != running
                or _tls_stamp(targets) != self.otlp_stamp):  # fmt: skip
            previous = self.otlp
            if previous is not None:
                previous.close()  # its last spans and metrics, then the new one counts on
            self.start_otlp(previous)
        if rules != self.rules or new["alerts"] != old["alerts"]:
            self.rules = rules
            self.make_evaluator()
        tick_s = new["collector"]["tick_s"]
        if new["alertmanager"] != old["alertmanager"] or tick_s != old["collector"]["tick_s"]:
            if self.notifier is not None:
                self.notifier.close()  # then the new one takes over what it had not sent
            self.start_notifier()
        # The section, or what it resolves to (a kubeconfig edited or its certificate rotated).
        settings = kubernetes_settings(new, self.config_path)[0]
        if new["kubernetes"] != old["kubernetes"] or settings != getattr(
            self.kube, "settings", None
        ):
            previous, self.kube = self.kube, None
            if previous is not None:
                previous.close()  # before the new one writes to the same cache
            self.start_kubernetes(previous)
        restart = new["probes"] != old["probes"] or new["collector"] != old["collector"]
        log("config reloaded" + ("; restarting the probes" if restart else ""))
        return restart

    def refuse_reload(self, why: str) -> bool:
        """Count and log a refused reload; the running config stays. False: no restart."""
        self.reloads["failed"] += 1
        self.last_reload_ok = False
        warn(f"reload refused, the running config stays: {why}")
        return False

    def reload_grpc(self, old: Config) -> None:
        """Rebuild the gRPC API for a changed ``grpc`` section: its streams end (clients
        reconnect); an address that cannot be bound keeps the old section."""
        previous, self.grpc = self.grpc, None
        if previous is not None:
            previous.close()
        try:
            self.start_grpc(previous)
        except OSError as exc:
            warn(f"{exc}; keeping the previous grpc section")
            self.config["grpc"] = old["grpc"]
            try:
                self.start_grpc(previous)
            except OSError as again:  # the old address was taken meanwhile: no gRPC API
                warn(f"{again}; the gRPC API is off until the next reload")
                self.grpc = None

    # -- the loop ----------------------------------------------------------------------------
    def run_pipeline(self) -> bool:
        """Start the probes and tick until a reload needs new probes (True) or a signal stops
        everything (Terminated propagates, after every probe is detached)."""
        from .engine import Engine

        restart = False

        def stop() -> bool:
            nonlocal restart
            if self.reload_requested and self.reload():
                restart = True
            return restart

        with Engine.from_config(
            self.config, pods=self.pods, progress=progress_logger(log, warn)
        ) as engine:
            probes = engine.probes
            self.probe_status = {p.name: {"status": p.status, "reason": p.reason} for p in probes}
            attached = engine.attached
            log(
                "attached: "
                + ", ".join(f"{p.name} {p.status}" for p in probes)
                + ("" if attached else " (not ready)")
            )

            def on_snapshot(snapshot: Any) -> None:
                self.publish(snapshot)
                self.ready = attached  # ready once /metrics holds a Snapshot

            try:
                engine.run(on_snapshot, stop=stop)
            finally:
                self.ready = False
        return restart

    def publish(self, snapshot: Any) -> None:
        if self.evaluator is not None:
            evaluation = self.evaluator.evaluate(snapshot)
            snapshot = evaluation.snapshot
            if self.notifier is not None:
                self.notifier.observe(evaluation.firing, evaluation.resolved)  # never blocks
        self.book.add(snapshot)
        if self.grpc is not None:
            self.grpc.publish(snapshot)  # never blocks: streams encode and send it
        if self.otlp is not None:
            self.otlp.submit(snapshot)  # never blocks: it queues


def check(config_path: str) -> int:
    path = Path(config_path)
    try:
        config, _, rules = load_all(path)
    except ConfigError as exc:
        print(f"wasmtop: {exc}", file=sys.stderr)
        return EXIT_USAGE
    from .alerts.rules import below_reporting_floor

    web_path = web_config_path(config, path)
    floor = config["probes"]["sched"]["threshold_ms"]
    for r in below_reporting_floor(rules, floor):
        print(
            f"wasmtop: note: {r.where}: rule {r.name} will not be evaluated: its threshold "
            f"{r.threshold:g} ms is below probes.sched.threshold_ms ({floor:g} ms), under which "
            "the kernel counts preemptions without reporting them",
            file=sys.stderr,
        )
    print(
        f"{path}: valid"
        + (f" (web config {web_path})" if web_path else "")
        + (f", {len(rules)} alert rules" if config["alerts"]["enabled"] else ", alerts off")
    )
    return EXIT_OK


def run(config_path: str, log_level: str = "info", log_format: str = "text") -> int:
    from .logs import setup
    from .probes.probeset import Terminated

    setup(log_level, log_format)
    say = logging.getLogger("wasmtop").error  # "wasmtop: ..." in text, as the CLI says it
    path = Path(config_path)
    try:
        config, web, rules = load_all(path)
    except ConfigError as exc:
        say(str(exc))
        return EXIT_USAGE
    code = preflight(say)
    if code is not None:
        return code
    daemon = Daemon(path, config, web, rules)

    def on_hup(_signum: int, _frame: object) -> None:
        daemon.reload_requested = True

    signal.signal(signal.SIGHUP, on_hup)
    try:
        daemon.start_http()
    except OSError as exc:
        say(f"cannot listen on {config['metrics']['listen']}: {exc.strerror}")
        return EXIT_ENV
    try:
        daemon.start_grpc()
    except OSError as exc:
        say(f"{exc} (grpc.listen)")
        daemon.stop_exporters()
        return EXIT_ENV
    try:
        daemon.start_otlp()
        daemon.start_notifier()
        daemon.start_kubernetes()
        while daemon.run_pipeline():
            pass
    except Terminated as stop:
        log(f"stopping on signal {stop.signum}: probes detached")
    finally:
        daemon.stop_exporters()
    return EXIT_OK
