"""A STAND-IN for the Kubernetes API server, for tests only.

No Kubernetes API server can run on the machines these tests run on. This one serves
``GET /api/v1/pods`` over HTTPS the way kube-apiserver does (a ``PodList``, or with ``watch=1`` a
chunked stream of one watch event per line, ended after ``timeoutSeconds``), from the fixture
files in ``tests/fixtures/kubernetes`` (hand-written in the core/v1 JSON format, see the README
there). A test scripts the next answers (a status, an answer held back, a stream with garbage in
it or cut off mid-event) and pushes live events into an open watch.

It checks what the client sends, as the real server would: a request without
``Authorization: Bearer <token>`` gets a ``401`` Status, unless it came with a client
certificate the ``client_ca`` signed (kube-apiserver's ``--client-ca-file``; TLS verifies it).
What only wasmtop's contract asks for (the ``fieldSelector`` naming the node and leaving out
finished pods, bookmarks asked
for, a resourceVersion to watch from) is recorded in ``problems``, which a test asserts is
empty.
"""

from __future__ import annotations

import copy
import json
import queue
import select
import ssl
import threading
import time
import urllib.parse
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, NamedTuple

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "kubernetes"
NODE = "edge-1"  # the node of the fixture pods


def fixture(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


def pod_list(pods: list[dict], resource_version: str) -> dict:
    return {"kind": "PodList", "apiVersion": "v1",
            "metadata": {"resourceVersion": resource_version}, "items": pods}  # fmt: skip


def event(kind: str, pod: dict, resource_version: str | None = None) -> dict:
    obj = {"kind": "Pod", "apiVersion": "v1", **copy.deepcopy(pod)}
    if resource_version is not None:
        obj["metadata"]["resourceVersion"] = resource_version
    return {"type": kind, "object": obj}


@dataclass
class Reply:
    """One scripted answer. ``status`` 200 with ``lines``: a watch stream; ``end`` says how it
    ends: ``close`` (the last chunk, as at timeoutSeconds), ``hold`` (then live events until
    timeoutSeconds), ``stall`` (silence, timeoutSeconds ignored: a dead connection), ``cut``
    (half an event, then the connection drops). ``delay_s``: held back before the status line."""

    status: int = 200
    body: Any = None  # a list's PodList or an error's Status (JSON)
    lines: list[Any] = field(default_factory=list)  # dict: one event as JSON; bytes: as is
    end: str = "close"
    delay_s: float = 0.0


def status_reply(code: int) -> Reply:
    return Reply(code, fixture(f"status-{code}.json"))


class Seen(NamedTuple):
    kind: str  # list | watch
    query: dict[str, str]
    authorization: str
    client_cn: str | None = None  # the verified client certificate's common name
    at: float = 0.0  # time.monotonic() when it arrived


class KubeApiStandIn:
    def __init__(
        self,
        cert: Path,
        key: Path,
        *,
        token: str,
        node: str = NODE,
        pods: list[dict] | None = None,
        resource_version: str = "1200",
        client_ca: Path | None = None,
    ) -> None:
        self.token = token
        self.node = node
        listed = fixture("podlist.json")
        self.pods = listed["items"] if pods is None else pods
        self.resource_version = resource_version if pods is not None else (
            listed["metadata"]["resourceVersion"]
        )  # fmt: skip
        self.replies: dict[str, deque[Reply]] = {"list": deque(), "watch": deque()}
        self.seen: list[Seen] = []
        self.problems: list[str] = []
        self.live: queue.Queue[bytes] = queue.Queue()
        self.stopping = threading.Event()
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(cert), str(key))
        if client_ca is not None:
            ctx.verify_mode = ssl.CERT_OPTIONAL  # a token or a certificate, as the real one
            ctx.load_verify_locations(str(client_ca))
        self.httpd = _Server(("127.0.0.1", 0), _Handler)
        self.httpd.api = self
        self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.url = f"https://127.0.0.1:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def script(self, kind: str, *replies: Reply) -> None:
        self.replies[kind].extend(replies)

    def push(self, watch_event: dict) -> None:
        """An event for the watch stream that is open (or the next one to hold)."""
        self.live.put(json.dumps(watch_event).encode())

    def kinds(self) -> list[str]:
        return [s.kind for s in self.seen]

    def __enter__(self) -> KubeApiStandIn:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stopping.set()
        self.httpd.shutdown()
        self.httpd.server_close()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    api: KubeApiStandIn

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that hung up (a timeout, close()) is part of the tests


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, *_args: object) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802 - the http.server name
        api = self.server.api
        url = urllib.parse.urlsplit(self.path)
        query = dict(urllib.parse.parse_qsl(url.query))
        kind = "watch" if query.get("watch") in ("1", "true") else "list"
        auth = self.headers.get("Authorization", "")
        peer = self.connection.getpeercert() or {}
        cn = next((v for rdn in peer.get("subject", ()) for k, v in rdn if k == "commonName"), None)
        api.seen.append(Seen(kind, query, auth, cn, time.monotonic()))
        if url.path != "/api/v1/pods":
            api.problems.append(f"unexpected path {url.path}")
            return self._json(404, {"kind": "Status", "code": 404, "message": "not found"})
        if query.get("fieldSelector") != (
            f"spec.nodeName={api.node},status.phase!=Succeeded,status.phase!=Failed"
        ):
            api.problems.append(f"{kind} without the node's fieldSelector: {query}")
            return self._json(400, {"kind": "Status", "code": 400, "message": "fieldSelector"})
        if kind == "watch":
            for k, v in (("allowWatchBookmarks", "true"),):
                if query.get(k) != v:
                    api.problems.append(f"watch without {k}={v}: {query}")
            if not query.get("resourceVersion") or not query.get("timeoutSeconds", "").isdigit():
                api.problems.append(f"watch without resourceVersion or timeoutSeconds: {query}")
        if auth != f"Bearer {api.token}" and cn is None:
            return self._json(401, fixture("status-401.json"))
        reply = api.replies[kind].popleft() if api.replies[kind] else None
        if reply is None:
            reply = Reply(200, pod_list(api.pods, api.resource_version), end="hold")
        if reply.delay_s and api.stopping.wait(reply.delay_s):
            return
        if kind == "list" or reply.status != 200:
            return self._json(reply.status, reply.body)
        self._stream(reply, int(query.get("timeoutSeconds", "60")))

    def _json(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _client_left(self) -> bool:
        """A watching client sends nothing: a readable socket means it hung up."""
        if not select.select([self.connection], [], [], 0)[0]:
            return False
        try:
            return self.connection.recv(1) == b""
        except (OSError, ssl.SSLError):
            return True

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))

    def _stream(self, reply: Reply, timeout_s: int) -> None:
        api = self.server.api
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for line in reply.lines:
            self._chunk((line if isinstance(line, bytes) else json.dumps(line).encode()) + b"\n")
        if reply.end == "cut":  # a chunk that promises more than comes, then the socket closes
            self.wfile.write(b'200\r\n{"type":"MODIFIED","object":{"metadata":{"uid":"')
            self.close_connection = True
            return
        deadline = time.monotonic() + timeout_s
        if reply.end == "stall":
            api.stopping.wait()
            return
        while reply.end == "hold" and time.monotonic() < deadline and not api.stopping.is_set():
            if self._client_left():
                return  # leave the live events to the client's next watch
            try:
                line = api.live.get(timeout=0.05)
            except queue.Empty:
                continue
            self._chunk(line + b"\n")
        self.wfile.write(b"0\r\n\r\n")
