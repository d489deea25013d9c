"""Pod metadata from the Kubernetes API: which namespace, name and RuntimeClass a pod UID has,
and which container name a container id has, for the pods of this node.

The cgroup path of a process names its pod's UID and its container's id (workloads.py); the API
server knows the rest. One daemon thread (``PodWatcher``) lists the node's pods that have not
finished (``node_selector``), then watches them from the list's resourceVersion and applies
each event to a ``PodCache``. The collector only reads that cache: a lookup is a dict
read, never a request, so a slow or dead API server cannot delay a tick.

Failures never end the thread: every request ends with one counted outcome, a failed one is
retried after an exponential backoff with jitter (capped), and each kind of failure is logged
once. ``410 Gone`` or an ``ERROR`` event means the resourceVersion is too old: relist. The cache
is relisted every ``resync_s`` anyway, so an event lost to a bug or a garbled line is mended.

Standard library only (http.client, ssl): the Kubernetes client package would pull in a
dependency tree for two GET requests.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import random
import re
import socket
import ssl
import stat
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from .. import __version__

SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
TOKEN_FILE = f"{SERVICE_ACCOUNT_DIR}/token"
CA_FILE = f"{SERVICE_ACCOUNT_DIR}/ca.crt"

LIST, WATCH = "list", "watch"
# Outcomes of a request (one per request, counted when it ends).
OK = "ok"
UNAUTHORIZED = "unauthorized"  # 401, 403: a bad or expired token, or RBAC
GONE = "gone"  # 410: the resourceVersion is too old; relist
THROTTLED = "throttled"  # 429
CLIENT_ERROR = "client_error"  # any other 4xx
SERVER_ERROR = "server_error"  # 5xx
TIMEOUT = "timeout"  # no answer (or no data) within the timeout
CONNECTION_ERROR = "connection_error"  # refused, reset, unreachable, name not resolved
TLS_ERROR = "tls_error"  # handshake or verification failed, or the CA file does not load
BAD_RESPONSE = "bad_response"  # not the JSON asked for, or cut off mid-object
NO_TOKEN = "no_token"  # the token file cannot be read
OUTCOMES = (OK, UNAUTHORIZED, GONE, THROTTLED, CLIENT_ERROR, SERVER_ERROR, TIMEOUT,
            CONNECTION_ERROR, TLS_ERROR, BAD_RESPONSE, NO_TOKEN)  # fmt: skip
EVENT_TYPES = ("added", "modified", "deleted", "bookmark", "error")

BACKOFF_INITIAL_S = 0.5
BACKOFF_MAX_S = 30.0
KEEP_DELETED_S = 120.0  # a deleted pod's names stay for the final counts of its processes
# A node runs at most a few hundred pods, a pod's JSON is tens of KiB: answers past these are
# not a node's pods. Parsed JSON takes far more memory than its text (an empty object, 3 bytes
# of text, is a 64-byte dict), so the objects and arrays of an answer are bounded too, counted
# in its text before it is parsed.
MAX_BODY_BYTES = 32 << 20  # a list (MAX_PODS of ~8 KiB; finished pods are listed too)
MAX_EVENT_BYTES = 2 << 20  # one watch event
MAX_JSON_CONTAINERS = 1_000_000  # `{` and `[` in one answer (those inside strings count too)
MAX_PODS = 4096  # pods cached; more are dropped and counted
MAX_TOKEN_BYTES = 64 << 10
MAX_WATCH_S = 1800  # timeoutSeconds of one watch at most (the server closes it then)


@dataclass(frozen=True)
class PodMeta:
    """What the API says about one pod."""

    uid: str
    namespace: str
    name: str
    runtime_class: str | None  # spec.runtimeClassName
    containers: Mapping[str, str]  # container id (without the runtime:// prefix) -> name
    app: str | None = None  # label app.kubernetes.io/name, else app: the service it is part of


def container_id(raw: str) -> str:
    """``containerd://<id>``, ``cri-o://<id>``, ``docker://<id>`` -> ``<id>``."""
    return raw.split("://", 1)[1] if "://" in raw else raw


# The labels that name the service a pod is part of (the recommended label, then the older
# convention); a label value is at most 63 characters, kept so here whatever an API answers.
APP_LABELS = ("app.kubernetes.io/name", "app")
MAX_APP = 63
# What the API server itself allows in the names kept (DNS subdomains and labels, UIDs,
# container ids): at most this long, printable ASCII without spaces, quotes or backslashes.
# They become label values of every series of a workload: a longer or stranger one is not a
# pod's, and would bloat or break /metrics (a lone surrogate cannot even be encoded).
MAX_NAME = 253
MAX_LABEL = 63
MAX_ID = 128
_NAME_CHARS = re.compile(r"[!#-\[\]-~]+")  # printable ASCII but space, " and \


def _checked(value: Any, limit: int, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{what} is missing or not a string")
    if len(value) > limit or not _NAME_CHARS.fullmatch(value):
        raise ValueError(f"{what} is longer than {limit} or not a name's characters")
    return value


def parse_json(text: bytes) -> Any:
    """JSON from the API: ValueError for what is not JSON, nests past the interpreter's
    recursion limit, or holds more than MAX_JSON_CONTAINERS objects and arrays."""
    if text.count(b"{") + text.count(b"[") > MAX_JSON_CONTAINERS:
        raise ValueError(f"more than {MAX_JSON_CONTAINERS} objects and arrays")
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("nested too deep") from None


def pod_meta(obj: Any) -> PodMeta:
    """A PodMeta from a v1 Pod object (JSON); ValueError when it is not one."""
    if not isinstance(obj, dict):
        raise ValueError("not an object")
    meta, spec, status = obj.get("metadata"), obj.get("spec") or {}, obj.get("status") or {}
    if not isinstance(meta, dict) or not isinstance(spec, dict) or not isinstance(status, dict):
        raise ValueError("metadata, spec or status is not an object")
    uid = _checked(meta.get("uid"), MAX_ID, "metadata.uid")
    namespace = _checked(meta.get("namespace"), MAX_LABEL, "metadata.namespace")
    name = _checked(meta.get("name"), MAX_NAME, "metadata.name")
    runtime_class = spec.get("runtimeClassName")
    if runtime_class is not None:
        runtime_class = _checked(runtime_class, MAX_NAME, "spec.runtimeClassName")
    containers: dict[str, str] = {}
    for key in ("initContainerStatuses", "containerStatuses", "ephemeralContainerStatuses"):
        statuses = status.get(key) or []
        if not isinstance(statuses, list):
            raise ValueError(f"status.{key} is not a list")
        for s in statuses:
            if not isinstance(s, dict):
                raise ValueError(f"status.{key} holds an entry that is not an object")
            container = _checked(s.get("name"), MAX_LABEL, f"a name in status.{key}")
            raw = s.get("containerID")  # absent until the container was created
            if isinstance(raw, str) and raw:
                containers[_checked(container_id(raw), MAX_ID, "a containerID")] = container
    labels = meta.get("labels") or {}
    if not isinstance(labels, dict):
        raise ValueError("metadata.labels is not an object")
    app = next((v for k in APP_LABELS if isinstance(v := labels.get(k), str) and v), None)
    app = app and app[:MAX_APP]
    if app is not None and not _NAME_CHARS.fullmatch(app):
        app = None  # not a label value the API server allows: the pod's names are still good
    return PodMeta(uid, namespace, name, runtime_class or None, containers, app)


class PodCache:
    """Pod UID -> PodMeta for the pods of this node.

    One writer (the watcher thread) and any number of readers. Readers take no lock: a lookup
    is one ``dict.get`` of a dict that the writer swaps whole or changes one key at a time,
    which the interpreter does atomically. Deleted pods are kept ``keep_deleted_s`` more, so
    the last counts of their processes still carry their names.
    """

    def __init__(self, keep_deleted_s: float = KEEP_DELETED_S, max_pods: int = MAX_PODS) -> None:
        self.keep_deleted_s = keep_deleted_s
        self.max_pods = max_pods
        self.dropped = 0  # pods not cached because max_pods were (a list's rest, a watch's new)
        self._pods: dict[str, PodMeta] = {}
        self._deleted: dict[str, tuple[PodMeta, float]] = {}  # uid -> (pod, forget at)
        self._write = threading.Lock()  # writers only (a reload may briefly overlap two)
        self.synced = False  # listed, and the watch since then has not failed
        self.generation = 0  # bumped on every change, for readers that cache what they derived

    def get(self, uid: str) -> PodMeta | None:
        pod = self._pods.get(uid)
        if pod is not None:
            return pod
        gone = self._deleted.get(uid)
        if gone is not None and time.monotonic() < gone[1]:
            return gone[0]
        return None

    def __len__(self) -> int:
        return len(self._pods)

    def replace(self, pods: Iterable[PodMeta]) -> None:
        """A full list: pods not in it are deleted."""
        fresh: dict[str, PodMeta] = {}
        for p in pods:
            if len(fresh) < self.max_pods or p.uid in fresh:
                fresh[p.uid] = p
            else:
                self.dropped += 1
        with self._write:
            now = time.monotonic()
            deleted = self._live_deleted(now)
            for uid, pod in self._pods.items():
                if uid not in fresh:
                    deleted[uid] = (pod, now + self.keep_deleted_s)
            for uid in fresh:
                deleted.pop(uid, None)
            if fresh != self._pods:
                self.generation += 1
            self._pods, self._deleted = fresh, deleted

    def put(self, pod: PodMeta) -> None:
        with self._write:
            if pod.uid not in self._pods and len(self._pods) >= self.max_pods:
                self.dropped += 1
                return
            if self._pods.get(pod.uid) != pod:
                self._pods[pod.uid] = pod
                self.generation += 1
            if pod.uid in self._deleted:
                self._deleted = {k: v for k, v in self._deleted.items() if k != pod.uid}

    def delete(self, uid: str) -> None:
        with self._write:
            pod = self._pods.pop(uid, None)
            if pod is not None:
                deleted = self._live_deleted(time.monotonic())
                deleted[uid] = (pod, time.monotonic() + self.keep_deleted_s)
                self._deleted = deleted
                self.generation += 1

    def clear(self) -> None:
        """Forget everything (the API is no longer watched)."""
        with self._write:
            self._pods, self._deleted = {}, {}
            self.synced = False
            self.generation += 1

    def _live_deleted(self, now: float) -> dict[str, tuple[PodMeta, float]]:
        return {k: v for k, v in self._deleted.items() if v[1] > now}


@dataclass(frozen=True)
class ApiSettings:
    """Where the API server is and how wasmtop proves who it is: a bearer token (a file, read
    at every request since bound tokens rotate, or a kubeconfig's inline token), a client
    certificate, or both."""

    server: str  # https://HOST:PORT
    node: str  # the node whose pods are listed
    token_file: str | None
    ca_file: str | None  # None: ca_data, else the system's CA roots
    timeout_s: float = 10.0  # connect, the response's headers, and each read of a list
    resync_s: float = 300.0  # relist this often even when the watch runs fine
    backoff_initial_s: float = BACKOFF_INITIAL_S
    backoff_max_s: float = BACKOFF_MAX_S
    token: str | None = field(default=None, repr=False)  # a kubeconfig's inline token
    ca_data: str | None = None  # PEM, from a kubeconfig's certificate-authority-data
    client_cert: str | None = None  # PEM files of a client certificate and its key
    client_key: str | None = None
    client_cert_data: bytes | None = field(default=None, repr=False)  # or their PEM bytes
    client_key_data: bytes | None = field(default=None, repr=False)
    insecure: bool = False  # a kubeconfig's insecure-skip-tls-verify: said in the log
    source: str = "the pod's service account"  # for the log: where these came from


def in_cluster_server(env: Mapping[str, str] = os.environ) -> str | None:
    """``https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT`` inside a pod, else None."""
    host = env.get("KUBERNETES_SERVICE_HOST")
    if not host:
        return None
    port = env.get("KUBERNETES_SERVICE_PORT") or "443"
    return f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"


def node_selector(node: str) -> str:
    """The pods of ``node`` that may still run: a finished pod (a Job's, kept until it is
    cleaned up) has no process left to name, and on a node that runs many Jobs they would be
    most of the list. A pod that finishes leaves the watch as a deletion, and its names stay
    KEEP_DELETED_S for its processes' last counts."""
    return f"spec.nodeName={node},status.phase!=Succeeded,status.phase!=Failed"


def backoff_s(failures: int, initial_s: float, max_s: float, rand: Callable[[], float]) -> float:
    """Exponential backoff with jitter: the n-th failure in a row waits a random time between
    half and all of ``initial * 2**(n-1)``, capped at ``max_s``."""
    base = min(max_s, initial_s * 2 ** min(max(failures - 1, 0), 30))
    return base * (0.5 + 0.5 * rand())


class _Failure(Exception):
    def __init__(self, outcome: str, detail: str) -> None:
        super().__init__(f"{outcome}: {detail}")
        self.outcome = outcome
        self.detail = detail


class PodWatcher:
    """Lists and watches the node's pods into ``cache`` on a daemon thread until ``close()``.

    ``requests[(request, outcome)]``, ``events[type]`` and ``malformed[request]`` count what
    happened since start (``counts_from``: a watcher this one replaces, whose counts go on).
    """

    def __init__(
        self,
        settings: ApiSettings,
        cache: PodCache,
        *,
        log: Callable[[str], None] = lambda _msg: None,
        warn: Callable[[str], None] | None = None,
        counts_from: PodWatcher | None = None,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.settings = settings
        self.cache = cache
        self.log = log
        self.warn = warn if warn is not None else log  # failures; ``log`` the rest
        self.rand = rand
        self.requests: dict[tuple[str, str], int] = {}
        self.events: dict[str, int] = dict.fromkeys(EVENT_TYPES, 0)
        self.malformed: dict[str, int] = {LIST: 0, WATCH: 0}
        if counts_from is not None:
            self.requests = dict(counts_from.requests)
            self.events = dict(counts_from.events)
            self.malformed = dict(counts_from.malformed)
        parts = urllib.parse.urlsplit(settings.server)
        if parts.scheme != "https" or not parts.hostname:
            raise ValueError(f"expected an https:// URL of the API server, got {settings.server!r}")
        self._host, self._port = parts.hostname, parts.port or 443
        self._base_path = parts.path.rstrip("/")
        self._logged: set[str] = set()
        self._version: str | None = None  # resourceVersion to watch from; None: list first
        self._relist = False  # an event may have been lost: list before the next watch
        self._stop = threading.Event()
        self._conn_lock = threading.Lock()
        self._conn: http.client.HTTPSConnection | None = None
        self._thread = threading.Thread(target=self._run, name="wasmtop-kubernetes", daemon=True)

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> PodWatcher:
        self._thread.start()
        return self

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop the thread: a request in flight is cut off at once."""
        with self._conn_lock:
            self._stop.set()
            sock = self._conn.sock if self._conn is not None else None  # the thread may drop it
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout_s)
        self.cache.synced = False

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    # -- the loop ----------------------------------------------------------------------------
    def _run(self) -> None:
        s = self.settings
        next_list = 0.0
        failures = 0  # in a row
        while not self._stop.is_set():
            started = time.monotonic()
            wait = 0.0
            try:
                if self._version is None or self._relist or time.monotonic() >= next_list:
                    self._list()
                    next_list = time.monotonic() + s.resync_s
                remaining = max(1, min(MAX_WATCH_S, round(next_list - time.monotonic())))
                self._watch(remaining)
                if self._relist:  # it sent a line that was no event: back off as on a failure
                    failures += 1
                    wait = self._backoff(failures)
                else:
                    failures = 0  # only a whole list-and-watch round ends a run of failures
                    # A server that ends every watch at once must not make this a busy loop.
                    wait = max(0.0, started + s.backoff_initial_s - time.monotonic())
            except _Failure as f:
                if self._stop.is_set():  # closed: the cache may be a newer watcher's now
                    break
                self.cache.synced = False
                failures += 1
                if f.outcome == GONE:
                    self._version = None  # relist: at once the first time
                    wait = 0.0 if failures == 1 else self._backoff(failures - 1)
                else:  # the watch goes on from the last version it saw (or the list is retried)
                    wait = self._backoff(failures)
                self._log_once(f.outcome, f"{f.detail}; retrying with backoff")
            except Exception as exc:  # a bug must not end pod metadata for good
                if self._stop.is_set():
                    break
                self.cache.synced = False
                self._version = None
                failures += 1
                wait = self._backoff(failures)
                self._log_once("internal", f"unexpected {type(exc).__name__}: {exc}")
            if wait:
                self._stop.wait(wait)

    def _backoff(self, failures: int) -> float:
        s = self.settings
        return backoff_s(failures, s.backoff_initial_s, s.backoff_max_s, self.rand)

    def _log_once(self, kind: str, message: str) -> None:
        if kind not in self._logged:
            self._logged.add(kind)
            self.warn(f"kubernetes: {message} (logged once per kind of failure)")

    def _count(self, request: str, outcome: str) -> None:
        if self._stop.is_set():
            return  # cut off by close(): not the server's doing
        key = (request, outcome)
        self.requests[key] = self.requests.get(key, 0) + 1

    # -- requests ----------------------------------------------------------------------------
    def _path(self, **query: str) -> str:
        q = {"fieldSelector": node_selector(self.settings.node), **query}
        return f"{self._base_path}/api/v1/pods?{urllib.parse.urlencode(q)}"

    def _list(self) -> None:
        """List the node's pods into the cache; watch from the list's resourceVersion."""
        try:
            with self._request(LIST, self._path()) as resp:
                body = self._read_body(resp)
            try:
                doc = parse_json(body)
                version = doc["metadata"]["resourceVersion"]
                items = doc["items"]
                if not isinstance(version, str) or not isinstance(items, list):
                    raise TypeError("resourceVersion or items of the wrong type")
            except (ValueError, KeyError, TypeError) as exc:
                raise _Failure(BAD_RESPONSE, f"list pods: not a PodList ({exc})") from None
        except _Failure as f:
            self._count(LIST, f.outcome)
            raise
        pods = []
        for item in items:
            try:
                pods.append(pod_meta(item))
            except ValueError:
                self.malformed[LIST] += 1  # one odd pod does not spoil the others
        if self._stop.is_set():  # closed meanwhile: a watcher built since owns the cache
            raise _Failure(CONNECTION_ERROR, "closing")
        self.cache.replace(pods)
        self.cache.synced = True
        self._version, self._relist = version, False
        self._count(LIST, OK)
        if "synced" not in self._logged:
            self._logged.add("synced")
            self.log(f"kubernetes: {len(pods)} pods of node {self.settings.node} listed")

    def _watch(self, timeout_s: int) -> None:
        """Apply watch events until the server ends the stream. A line that is no event is
        counted and skipped, and the pods are listed again afterwards: what it said is lost."""
        assert self._version is not None
        path = self._path(
            watch="1",
            resourceVersion=self._version,
            allowWatchBookmarks="true",
            timeoutSeconds=str(timeout_s),
        )
        try:
            with self._request(WATCH, path) as resp:
                # From here on the cache follows every change again (a watch replays what
                # happened since the version it starts from).
                self.cache.synced = not self._relist
                # The server ends the stream after timeoutSeconds; wait that long for a line.
                self._settimeout(timeout_s + self.settings.timeout_s)
                while True:
                    line = self._read_line(resp)
                    if not line:
                        break
                    if not line.endswith(b"\n"):  # the stream broke off mid-event
                        raise _Failure(BAD_RESPONSE, "watch pods: the stream ended mid-event")
                    if line.strip() and not self._apply(line):
                        self.malformed[WATCH] += 1
                        self._relist = True
                        self.cache.synced = False
                        self._log_once("malformed", "watch pods: a line that is not a pod event")
        except _Failure as f:
            self._count(WATCH, f.outcome)
            raise
        self._count(WATCH, OK)

    def _apply(self, line: bytes) -> bool:
        """Apply one line of a watch stream; False when it is not a pod event."""
        try:
            event = parse_json(line)
        except ValueError:
            return False
        obj = event.get("object") if isinstance(event, dict) else None
        kind = event.get("type") if isinstance(obj, dict) else None
        if not isinstance(kind, str) or kind.lower() not in EVENT_TYPES:
            return False
        kind = kind.lower()
        if kind == "error":  # a Status: 410 Expired, or something else gone wrong
            self.events["error"] += 1
            code, message = obj.get("code"), obj.get("message", "")
            if code == 410:
                raise _Failure(GONE, f"watch pods: resourceVersion too old ({message})")
            outcome = outcome_of_status(code) if isinstance(code, int) else BAD_RESPONSE
            raise _Failure(outcome, f"watch pods: ERROR event {code}: {message}")
        meta = obj.get("metadata")
        version = meta.get("resourceVersion") if isinstance(meta, dict) else None
        if kind == "bookmark":
            if not isinstance(version, str) or not version:
                return False
            self.events["bookmark"] += 1
        else:
            try:
                pod = pod_meta(obj)
            except ValueError:
                return False
            self.events[kind] += 1
            if self._stop.is_set():  # closed meanwhile: a watcher built since owns the cache
                return True
            if kind == "deleted":
                self.cache.delete(pod.uid)
            else:
                self.cache.put(pod)
        if isinstance(version, str) and version:
            self._version = version  # a failed watch goes on from here
        return True

    # -- HTTP --------------------------------------------------------------------------------
    def _request(self, request: str, path: str) -> _Response:
        """Send a GET; the response once its status is 200, else _Failure."""
        s = self.settings
        token = s.token
        if s.token_file is not None:
            token = read_token(s.token_file)  # read each time: bound tokens are rotated
        context = _tls_context(s)
        conn = http.client.HTTPSConnection(
            self._host, self._port, timeout=s.timeout_s, context=context
        )
        with self._conn_lock:
            self._conn = conn  # close() shuts its socket down once there is one
        headers = {"Accept": "application/json", "User-Agent": f"wasmtop/{__version__}"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        what = f"{request} pods from {s.server}"
        try:
            conn.connect()
            with self._conn_lock:  # a close() before the socket existed could not cut it
                if self._stop.is_set():
                    raise _Failure(CONNECTION_ERROR, "closing")
            conn.request("GET", path, headers=headers)
            resp = conn.getresponse()
        except BaseException as exc:
            self._drop(conn)
            raise _failure_of(exc, what) from None
        status = resp.status
        if status == 200:
            return _Response(self, conn, resp, what)
        try:
            detail = resp.read(4096).decode(errors="replace")
            message = json.loads(detail).get("message", detail)
        except Exception:
            message = ""
        self._drop(conn)
        text = f"{what}: HTTP {status} {resp.reason}" + (f": {message}" if message else "")
        raise _Failure(outcome_of_status(status), text)

    def _settimeout(self, seconds: float) -> None:
        with self._conn_lock:
            sock = self._conn.sock if self._conn is not None else None
        if sock is not None:
            sock.settimeout(seconds)

    def _drop(self, conn: http.client.HTTPSConnection) -> None:
        with self._conn_lock:
            if self._conn is conn:
                self._conn = None
        conn.close()

    def _read_body(self, resp: _Response) -> bytes:
        try:
            body = resp.resp.read(MAX_BODY_BYTES + 1)
        except BaseException as exc:
            raise _failure_of(exc, resp.what) from None
        if len(body) > MAX_BODY_BYTES:
            raise _Failure(BAD_RESPONSE, f"{resp.what}: more than {MAX_BODY_BYTES} bytes")
        return body

    def _read_line(self, resp: _Response) -> bytes:
        try:
            line = resp.resp.readline(MAX_EVENT_BYTES + 1)
        except BaseException as exc:
            raise _failure_of(exc, resp.what) from None
        if len(line) > MAX_EVENT_BYTES:
            raise _Failure(BAD_RESPONSE, f"{resp.what}: an event of more than {MAX_EVENT_BYTES}")
        return line

    def families(self) -> list[Any]:
        """Its figures and its cache's for /metrics (exporters/series.py families)."""
        from ..exporters.series import Family, Sample

        k = self
        requests = dict(k.requests)  # the watcher thread adds keys: iterate a copy
        return [
            Family(
                "wasmtop_kubernetes_requests",
                "counter",
                "Requests to the Kubernetes API (list, watch) by outcome, counted when each ends.",
                ("request", "outcome"),
                [Sample(key, float(n)) for key, n in sorted(requests.items())],
            ),
            Family(
                "wasmtop_kubernetes_watch_events",
                "counter",
                "Pod watch events applied to the cache, by type.",
                ("type",),
                [Sample((t,), float(n)) for t, n in k.events.items()],
            ),
            Family(
                "wasmtop_kubernetes_malformed",
                "counter",
                "Pods of a list and lines of a watch stream that could not be read (ignored).",
                ("request",),
                [Sample((r,), float(n)) for r, n in k.malformed.items()],
            ),
            Family(
                "wasmtop_kubernetes_pods_dropped",
                "counter",
                f"Pods not cached because {self.cache.max_pods} were already (a list's rest, a "
                "watch's new ones).",
                (),
                [Sample((), float(self.cache.dropped))],
            ),
            Family(
                "wasmtop_kubernetes_pods",
                "gauge",
                "Pods of this node whose metadata is cached.",
                (),
                [Sample((), float(len(self.cache)))],
            ),
            Family(
                "wasmtop_kubernetes_cache_synced",
                "gauge",
                "1 when the pod cache was listed and the watch since then is up.",
                (),
                [Sample((), 1.0 if self.cache.synced else 0.0)],
            ),
        ]


def read_token(path: str) -> str:
    """A bearer token from a file: a regular file (a FIFO would block, /dev/zero never end) of
    at most MAX_TOKEN_BYTES of ASCII; else _Failure(NO_TOKEN)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise _Failure(NO_TOKEN, f"cannot read {path}: {exc.strerror}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise _Failure(NO_TOKEN, f"{path} is not a regular file")
        raw = os.read(fd, MAX_TOKEN_BYTES + 1)
    except OSError as exc:
        raise _Failure(NO_TOKEN, f"cannot read {path}: {exc.strerror}") from None
    finally:
        os.close(fd)
    if len(raw) > MAX_TOKEN_BYTES:
        raise _Failure(NO_TOKEN, f"{path} holds more than {MAX_TOKEN_BYTES} bytes")
    try:
        token = raw.decode("ascii").strip()
    except UnicodeDecodeError:
        raise _Failure(NO_TOKEN, f"{path} is not ASCII") from None
    if not token:
        raise _Failure(NO_TOKEN, f"{path} is empty")
    return token


class _Response:
    """A 200 response and its connection, closed on leaving the ``with``."""

    def __init__(
        self,
        watcher: PodWatcher,
        conn: http.client.HTTPSConnection,
        resp: http.client.HTTPResponse,
        what: str,
    ) -> None:
        self.watcher, self.conn, self.resp, self.what = watcher, conn, resp, what

    def __enter__(self) -> _Response:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.watcher._drop(self.conn)


def outcome_of_status(status: int) -> str:
    """The outcome of an HTTP status other than 200."""
    if status in (401, 403):
        return UNAUTHORIZED
    if status == 410:
        return GONE
    if status == 429:
        return THROTTLED
    if 400 <= status < 500:
        return CLIENT_ERROR
    if status >= 500:
        return SERVER_ERROR
    return BAD_RESPONSE


def _tls_context(s: ApiSettings) -> ssl.SSLContext:
    """The TLS context of one request: the server checked against the CA file, the CA data or
    the system's roots (not at all with ``insecure``), and the client certificate if any."""
    try:  # a kubeconfig's CA data wins over its CA file, as in client-go
        if s.ca_data is not None:
            context = ssl.create_default_context(cadata=s.ca_data)
        else:
            context = ssl.create_default_context(cafile=s.ca_file)
    except (OSError, ssl.SSLError, ValueError) as exc:
        what = f"the CA file {s.ca_file}" if s.ca_file else "the CA data"
        raise _Failure(TLS_ERROR, f"cannot load {what}: {exc}") from None
    if s.insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    try:
        # An encrypted key fails here: OpenSSL must never prompt on the terminal for it.
        if s.client_cert_data is not None and s.client_key_data is not None:
            with _memfile(s.client_cert_data) as cert, _memfile(s.client_key_data) as key:
                context.load_cert_chain(cert, key, password=_no_password)
        elif s.client_cert is not None:
            context.load_cert_chain(s.client_cert, s.client_key, password=_no_password)
    except (OSError, ssl.SSLError, ValueError) as exc:
        raise _Failure(TLS_ERROR, f"cannot load the client certificate: {exc}") from None
    return context


def _no_password() -> bytes:
    return b""


@contextlib.contextmanager
def _memfile(data: bytes) -> Iterator[str]:
    """A path to ``data`` that never touches a disk (an anonymous memory file), for
    ``load_cert_chain``, which reads only files: a kubeconfig's inline key stays in memory."""
    fd = os.memfd_create("wasmtop-kubeconfig", os.MFD_CLOEXEC)
    try:
        with open(fd, "wb", closefd=False) as f:
            f.write(data)
        yield f"/proc/self/fd/{fd}"
    finally:
        os.close(fd)


def _failure_of(exc: BaseException, what: str) -> _Failure:
    """The outcome of an exception raised while talking to the API server."""
    if isinstance(exc, _Failure):
        return exc
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return _Failure(TIMEOUT, f"{what}: no answer in time")
    if isinstance(exc, ssl.SSLError):  # before OSError: SSLError is one
        return _Failure(TLS_ERROR, f"{what}: {exc}")
    if isinstance(exc, http.client.IncompleteRead):
        return _Failure(BAD_RESPONSE, f"{what}: the response was cut off")
    if isinstance(exc, (http.client.HTTPException, ValueError)):
        return _Failure(BAD_RESPONSE, f"{what}: not HTTP ({type(exc).__name__}: {exc})")
    if isinstance(exc, OSError):
        return _Failure(CONNECTION_ERROR, f"{what}: {exc.strerror or exc}")
    raise exc  # KeyboardInterrupt and the like are not ours to count
