"""The pod watcher (collector/kubernetes.py) against a stand-in Kubernetes API server over real
HTTPS (tests/kube_standin.py: no API server can run here; it replays hand-written v1 JSON from
tests/fixtures/kubernetes and checks the token and the node's fieldSelector on every request).

Each test scripts what the server answers and waits for what the watcher must make of it: the
cache, the counted outcomes, the requests it sent next. Nothing here measures time; timeouts
and backoffs are small so each test takes about a second."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from kube_standin import NODE, KubeApiStandIn, Reply, event, fixture, pod_list, status_reply

from support import wait_for
from wasmtop.collector.kubernetes import ApiSettings, PodCache, PodWatcher, pod_meta

TOKEN = "eyJhbGciOiJSUzI1NiJ9.stand-in-token"
HELLO, NGINX = fixture("podlist.json")["items"]
ADDED, MODIFIED, DELETED, BOOKMARK = fixture("watch-events.json")
SPIN = ADDED["object"]
HELLO_UID, NGINX_UID, SPIN_UID = (p["metadata"]["uid"] for p in (HELLO, NGINX, SPIN))


@pytest.fixture
def api(tls_files) -> Iterator[KubeApiStandIn]:
    cert, key = tls_files
    with KubeApiStandIn(cert, key, token=TOKEN) as server:
        yield server
    assert server.problems == []  # every request carried the node's fieldSelector and so on


class Watched:
    """A running PodWatcher on ``api`` and what it logged."""

    def __init__(self, api: KubeApiStandIn, tmp_path: Path, cafile: Path, **settings: object):
        token_file = tmp_path / "token"
        if not token_file.exists():
            token_file.write_text(TOKEN + "\n")
        options = {"token_file": str(token_file), "ca_file": str(cafile), "timeout_s": 0.5,
                   "resync_s": 60.0, "backoff_initial_s": 0.02, "backoff_max_s": 0.1,
                   **settings}  # fmt: skip
        self.cache = PodCache()
        self.logs: list[str] = []
        self.watcher = PodWatcher(
            ApiSettings(api.url, NODE, **options), self.cache, log=self.logs.append
        )

    def __enter__(self) -> Watched:
        self.watcher.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.watcher.close()
        assert not self.watcher.running

    def count(self, request: str, outcome: str) -> int:
        return self.watcher.requests.get((request, outcome), 0)

    def logged(self, word: str) -> list[str]:
        return [line for line in self.logs if word in line]


@pytest.fixture
def watched(api, tmp_path, tls_files):
    def make(**settings: object) -> Watched:
        return Watched(api, tmp_path, tls_files[0], **settings)

    return make


def test_list_then_watch_applies_added_modified_deleted_and_bookmark(api, watched):
    api.script("watch", Reply(lines=[ADDED, MODIFIED, DELETED, BOOKMARK], end="close"))
    with watched() as w:
        # The stream ended as at timeoutSeconds: the watch goes on from the bookmark's version.
        assert wait_for(lambda: api.kinds() == ["list", "watch", "watch"], timeout_s=10)
        assert w.cache.synced
        hello, spin = w.cache.get(HELLO_UID), w.cache.get(SPIN_UID)
        assert (spin.namespace, spin.name, spin.runtime_class) == (
            "edge", "spin-hello-6c8d9f7b5-q8w2r", "wasmtime-spin-v2"
        )  # fmt: skip
        # MODIFIED: the sidecar that started has its container id now, beside the others.
        assert sorted(hello.containers.values()) == ["app", "fetch-module", "log-shipper"]
        assert hello == pod_meta(MODIFIED["object"])
        # DELETED: gone from the node's pods; its names stay a while for its last figures.
        assert len(w.cache) == 2 and w.cache.get(NGINX_UID).name == "nginx-proxy-0"
        assert w.watcher.events == {"added": 1, "modified": 1, "deleted": 1, "bookmark": 1,
                                    "error": 0}  # fmt: skip
        assert (w.count("list", "ok"), w.count("watch", "ok")) == (1, 1)
    versions = [s.query.get("resourceVersion") for s in api.seen]
    assert versions == [None, "1200", "1250"]  # the list's, then the bookmark's
    assert all(s.authorization == f"Bearer {TOKEN}" for s in api.seen)
    # This node's pods, not the finished ones (a Job's, until it is cleaned up)
    selector = f"spec.nodeName={NODE},status.phase!=Succeeded,status.phase!=Failed"
    assert all(s.query["fieldSelector"] == selector for s in api.seen)
    assert all(s.query["allowWatchBookmarks"] == "true" for s in api.seen[1:])
    assert w.logs == [f"kubernetes: 2 pods of node {NODE} listed"]


def test_410_gone_and_an_error_event_relist_from_the_new_version(api, watched):
    api.script(
        "list",
        Reply(body=pod_list([HELLO, NGINX], "1200")),
        Reply(body=pod_list([HELLO], "1300")),
        Reply(body=pod_list([HELLO, SPIN], "1400")),
    )
    api.script(
        "watch",
        status_reply(410),  # the answer to the watch itself
        Reply(lines=[{"type": "ERROR", "object": fixture("status-410.json")}], end="hold"),
    )
    with watched() as w:
        assert wait_for(lambda: len(api.seen) >= 6, timeout_s=10)
        assert api.kinds()[:6] == ["list", "watch", "list", "watch", "list", "watch"]
        assert [s.query.get("resourceVersion") for s in api.seen[1:6:2]] == ["1200", "1300",
                                                                               "1400"]  # fmt: skip
        assert wait_for(lambda: w.cache.synced)
        assert w.cache.get(SPIN_UID) is not None and len(w.cache) == 2  # the third list's pods
        assert w.count("watch", "gone") == 2 and w.watcher.events["error"] == 1
        assert w.count("list", "ok") == 3
        assert len(w.logged("resourceVersion too old")) + len(w.logged("410")) == 1


def test_401_is_counted_and_retried_until_the_token_file_holds_a_valid_token(
    api, watched, tmp_path
):
    (tmp_path / "token").write_text("expired-token\n")
    with watched() as w:
        assert wait_for(lambda: w.count("list", "unauthorized") >= 3, timeout_s=10)
        assert not w.cache.synced and len(w.cache) == 0
        assert len(w.logged("401")) == 1  # logged once, however often it happens
        (tmp_path / "token").write_text(TOKEN + "\n")  # the kubelet rotated the token
        assert wait_for(lambda: w.cache.synced, timeout_s=10)
        assert len(w.cache) == 2 and w.count("list", "ok") == 1
    tokens = [s.authorization for s in api.seen]
    assert tokens[0] == "Bearer expired-token" and tokens[-1] == f"Bearer {TOKEN}"


def test_server_errors_are_counted_retried_and_the_watcher_recovers(api, watched):
    api.script("list", status_reply(500), status_reply(500), Reply(503, {"kind": "Status"}))
    api.script("watch", status_reply(500))
    with watched() as w:
        assert wait_for(lambda: w.cache.synced and w.count("watch", "server_error") == 1, 10)
        assert w.count("list", "server_error") == 3 and w.count("list", "ok") == 1
        assert api.kinds()[:6] == ["list", "list", "list", "list", "watch", "watch"]
        # The failed watch is retried from the version it had: no relist.
        assert api.seen[5].query["resourceVersion"] == "1200"
        assert len(w.logged("server_error")) == 0 and len(w.logged("HTTP 500")) == 1


def test_an_answer_held_past_timeout_s_is_a_timeout_and_retried(api, watched):
    api.script("list", Reply(body=pod_list([HELLO], "1200"), delay_s=5.0))
    api.script("watch", Reply(delay_s=5.0), Reply(end="stall"))
    with watched(timeout_s=0.2, resync_s=1.0) as w:
        # list: held -> timeout; list again; watch: held -> timeout; watch again: a stream that
        # goes silent past timeoutSeconds (1 s) + timeout_s -> timeout; then a healthy watch.
        assert wait_for(lambda: w.count("watch", "timeout") == 2, timeout_s=15)
        assert w.count("list", "timeout") == 1 and w.count("list", "ok") >= 1
        assert wait_for(lambda: w.cache.synced, timeout_s=10)
        assert len(w.cache) == 2
        assert len(w.logged("no answer in time")) == 1


def test_garbage_and_truncated_lines_are_counted_skipped_and_relisted_a_cut_stream_resumed(
    api, watched
):
    truncated = b'{"type":"MODIFIED","object":{"metadata":{"uid":"' + HELLO_UID.encode()
    garbage = [b"<html><body>502 Bad Gateway</body></html>", truncated]
    api.script("watch", Reply(lines=[ADDED, *garbage, MODIFIED], end="close"),
               Reply(lines=[DELETED], end="cut"))  # fmt: skip
    with watched() as w:
        assert wait_for(lambda: len(api.seen) >= 5, timeout_s=10)
        # list, watch (garbled: read on, then relist), list, watch (cut: resumed), watch
        assert api.kinds()[:5] == ["list", "watch", "list", "watch", "watch"]
        assert api.seen[4].query["resourceVersion"] == "1203"  # the DELETED event's
        assert w.watcher.malformed == {"list": 0, "watch": 2}
        assert w.watcher.events["modified"] == 1  # the event after the garbage was applied
        assert w.watcher.events["deleted"] == 1
        assert w.count("watch", "ok") == 1 and w.count("watch", "bad_response") == 1
        assert wait_for(lambda: w.cache.synced)
        assert w.cache.get(NGINX_UID) is not None and len(w.cache) == 1  # deleted after relist


def test_a_server_that_garbles_every_watch_gets_relists_with_backoff_not_in_a_loop(api, watched):
    garbled = Reply(lines=[b"<html><body>502 Bad Gateway</body></html>"], end="close")
    api.script("watch", *[garbled] * 4)
    with watched(backoff_initial_s=0.2, backoff_max_s=5.0) as w:
        assert wait_for(lambda: api.kinds().count("list") >= 4, timeout_s=30)
        assert w.watcher.malformed["watch"] >= 3
    lists = [s.at for s in api.seen if s.kind == "list"]
    gaps = [b - a for a, b in zip(lists, lists[1:], strict=False)]
    # After the third garbled round in a row: at least half of 0.2 s x 2**2 (a lower bound: a
    # loaded machine only makes it longer). Without backoff it was the 0.2 s floor.
    assert gaps[2] >= 0.4, gaps


def test_a_pod_that_is_not_one_is_skipped_the_rest_of_the_list_is_kept(api, watched):
    odd = {"metadata": {"name": "no-uid", "namespace": "edge"}}
    api.script("list", Reply(body=pod_list([odd, HELLO], "1200")), Reply(body="not a list"))
    api.script("watch", Reply(lines=[event("ADDED", odd)], end="close"))
    with watched() as w:
        assert wait_for(lambda: w.count("list", "bad_response") == 1, timeout_s=10)
        assert w.watcher.malformed == {"list": 1, "watch": 1}
        assert w.cache.get(HELLO_UID) is not None
        assert wait_for(lambda: w.cache.synced and len(w.cache) == 2)  # the default list


def test_close_cuts_a_request_in_flight_and_counts_nothing_for_it(api, watched):
    api.script("watch", Reply(end="stall"))
    with watched() as w:
        assert wait_for(lambda: api.kinds() == ["list", "watch"] and w.cache.synced)
        w.watcher.close()
        assert not w.watcher.running and not w.cache.synced
        assert w.watcher.requests == {("list", "ok"): 1}


@pytest.mark.parametrize(
    "setting, outcome, message",
    [
        ("token_file", "no_token", "cannot read"),
        ("ca_file", "tls_error", "cannot load the CA file"),
        ("system_roots", "tls_error", "CERTIFICATE_VERIFY_FAILED"),  # self-signed: not trusted
    ],
)
def test_an_unreadable_token_or_an_untrusted_server_is_counted_and_nothing_is_asked(
    api, watched, tmp_path, setting, outcome, message
):
    change = {"system_roots": {"ca_file": None}}.get(setting, {setting: str(tmp_path / "gone")})
    with watched(**change) as w:
        assert wait_for(lambda: w.count("list", outcome) >= 2, timeout_s=10)
        assert len(w.logged(message)) == 1 and not w.cache.synced
    assert api.seen == []  # no request reached the server, so no token went out
