"""Reading kubeconfigs (wasmtop/kubeconfig.py): kubectl's file order and merging, the current
context's cluster and user, paths relative to the file, every error with file and line, and
any input at all a ConfigError or an answer (hypothesis)."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wasmtop.config import defaults
from wasmtop.kubeconfig import (
    K3S_KUBECONFIG,
    NOT_IN_A_POD,
    KubeconfigError,
    api_settings,
    kubeconfig_paths,
    load,
)
from wasmtop.yamlcheck import ConfigError

CA = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def kubeconfig(tmp_path: Path, user: dict, name: str = "config",
               server: str = "https://k3s:6443", current: str = "edge") -> Path:  # fmt: skip
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "current-context": current,
        "clusters": [{"name": "k3s", "cluster": {
            "server": server, "certificate-authority-data": b64(CA)}}],
        "contexts": [{"name": "edge", "context": {"cluster": "k3s", "user": "admin"}}],
        "users": [{"name": "admin", "user": user}],
    }  # fmt: skip
    path = tmp_path / name
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def line_of(path: Path, text: str) -> int:
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if text in line)


INLINE = {"client-certificate-data": b64("CERT-PEM"), "client-key-data": b64("KEY-PEM")}


def test_the_current_contexts_server_ca_and_token(tmp_path):
    path = kubeconfig(tmp_path, {"token": "s3cret"})
    creds = load([path])
    assert (creds.server, creds.context, creds.path) == ("https://k3s:6443", "edge", str(path))
    assert creds.ca_data == CA and creds.token == "s3cret" and not creds.insecure


def test_client_certificate_files_are_relative_to_the_kubeconfig(tmp_path):
    path = kubeconfig(tmp_path, {"client-certificate": "pki/me.crt", "client-key": "/abs/me.key"})
    creds = load([path])
    assert (creds.client_cert, creds.client_key) == (str(tmp_path / "pki/me.crt"), "/abs/me.key")
    creds = load([kubeconfig(tmp_path, INLINE)])
    assert (creds.client_cert_data, creds.client_key_data) == (b"CERT-PEM", b"KEY-PEM")


def test_kubeconfig_files_merge_as_kubectl_merges_them(tmp_path):
    first = write(tmp_path / "a", "current-context: edge\n")  # only the context to use
    second = kubeconfig(tmp_path, {"tokenFile": "token"}, name="b", current="other")
    creds = load([tmp_path / "missing", first, second])
    assert creds.context == "edge" and creds.token_file == str(tmp_path / "token")
    env = {"KUBECONFIG": f"{first}:{second}", "HOME": "/nonexistent"}
    assert kubeconfig_paths(None, env) == [first, second]
    assert kubeconfig_paths(None, {"HOME": "/h"}) == [Path("/h/.kube/config"), Path(K3S_KUBECONFIG)]
    assert kubeconfig_paths("~/k.yaml", env) == [Path("~/k.yaml").expanduser()]
    assert load([tmp_path / "missing"]) is None


@pytest.mark.parametrize(
    ("user", "server", "at", "expected"),
    [
        ({"exec": {"command": "aws"}}, "https://k3s:6443", "exec:",
         "user 'admin' gets its credentials from an exec plugin, which wasmtop does not run"),
        ({"auth-provider": {"name": "gcp"}}, "https://k3s:6443", "auth-provider:",
         "user 'admin' gets its credentials from an auth-provider plugin"),
        ({"username": "a", "password": "b"}, "https://k3s:6443", "username:",
         "username and password are not supported"),
        ({"token": "t"}, "http://k3s:8080", "server:", "cluster.server: expected an https://"),
        ({"client-certificate": "a.crt"}, "https://k3s:6443", "client-certificate:",
         "a client certificate and its key together"),
        ({"client-certificate-data": "%%", "client-key-data": "eA=="}, "https://k3s:6443",
         "client-certificate-data:", "client-certificate-data: expected base64"),
    ],
)  # fmt: skip
def test_what_wasmtop_cannot_use_is_refused_with_file_and_line(
    tmp_path, user, server, at, expected
):
    path = kubeconfig(tmp_path, user, server=server)
    with pytest.raises(KubeconfigError) as err:
        load([path])
    assert str(err.value).startswith(f"{path}:{line_of(path, at)}: "), str(err.value)
    assert expected in str(err.value)


def test_a_context_or_cluster_that_is_not_there_is_named(tmp_path):
    path = kubeconfig(tmp_path, {"token": "t"}, current="nowhere")
    line = line_of(path, "current-context:")
    with pytest.raises(KubeconfigError, match=f":{line}: context 'nowhere': expected it under"):
        load([path])
    with pytest.raises(KubeconfigError, match="context 'other': expected it under contexts"):
        load([kubeconfig(tmp_path, {"token": "t"})], "other")
    path.write_text(path.read_text().replace("cluster: k3s", "cluster: gone"))
    with pytest.raises(KubeconfigError, match="cluster 'gone': expected it under clusters"):
        load([path], "edge")


def test_the_shared_resolution_uses_a_kubeconfig_off_a_pod(tmp_path):
    path = kubeconfig(tmp_path, INLINE)
    k = {**defaults()["kubernetes"], "kubeconfig": str(path), "node_name": "edge-1"}
    s, how = api_settings(k, tmp_path / "wasmtop.yaml", {})
    assert (s.server, s.node, s.token, s.token_file) == ("https://k3s:6443", "edge-1", None, None)
    assert (s.client_cert_data, s.client_key_data, s.ca_data) == (b"CERT-PEM", b"KEY-PEM", CA)
    assert how == f"kubeconfig {path}, context edge, node edge-1"
    assert "KEY-PEM" not in repr(s) and "CERT-PEM" not in repr(s)  # secrets stay out of logs
    # $KUBECONFIG when the config names none; a service account wins over it in a pod.
    k = {**defaults()["kubernetes"], "node_name": "edge-1"}
    assert api_settings(k, tmp_path / "w.yaml", {"KUBECONFIG": str(path)})[0].server == s.server
    (tmp_path / "token").write_text("t\n")
    pod = {"KUBERNETES_SERVICE_HOST": "10.43.0.1", "KUBECONFIG": str(path)}
    s, how = api_settings({**k, "token_file": str(tmp_path / "token")}, tmp_path / "w.yaml", pod)
    assert s.server == "https://10.43.0.1:443" and how.startswith("the pod's service account")
    # Named but missing, malformed, or nothing at all: off, and why.
    missing = {**k, "kubeconfig": "nope.yaml"}
    assert api_settings(missing, tmp_path / "w.yaml", {}) == (
        None, f"off: no kubeconfig at {tmp_path / 'nope.yaml'}")  # fmt: skip
    (tmp_path / "bad").write_text("clusters: [\n")
    off, why = api_settings({**k, "kubeconfig": "bad"}, tmp_path / "w.yaml", {})
    assert off is None and why.startswith(f"off: {tmp_path / 'bad'}:2") and "not valid YAML" in why
    assert api_settings(k, tmp_path / "w.yaml", {"HOME": str(tmp_path)}) == (None, NOT_IN_A_POD)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.one_of(
    st.text(max_size=400),
    st.recursive(
        st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=20)),
        lambda inner: st.one_of(
            st.lists(inner, max_size=4),
            st.dictionaries(st.sampled_from(
                ["clusters", "users", "contexts", "name", "cluster", "user", "context", "server",
                 "current-context", "token", "tokenFile", "client-certificate-data",
                 "client-key-data", "certificate-authority-data", "insecure-skip-tls-verify",
                 "exec"]), inner, max_size=5),
        ),
        max_leaves=30,
    ).map(yaml.safe_dump),
))  # fmt: skip
def test_any_kubeconfig_is_an_answer_or_a_config_error(tmp_path, text):
    path = tmp_path / "hostile"
    path.write_text(text)
    try:
        creds = load([path])
    except ConfigError as exc:
        assert str(exc).startswith(str(path))
    else:
        assert creds is None or creds.server.startswith("https://")


def test_what_kubectl_accepts_wasmtop_accepts_as_kubectl_reads_it(tmp_path):
    # An empty current-context (kubectl config unset current-context) is no context: the next
    # file's counts, or the one passed.
    first = write(tmp_path / "a", 'current-context: ""\n')
    second = kubeconfig(tmp_path, {"token": "t"}, name="b")
    assert load([first, second]).context == "edge"
    # A name's first definition wins: the first file's cluster, not the second's.
    third = kubeconfig(tmp_path, {"token": "t"}, name="c", server="https://other:6443")
    assert load([second, third]).server == "https://k3s:6443"
    # Base64 data folded over lines; a user with no credentials is anonymous.
    cert = b64("CERT-PEM")
    folded = {"client-certificate-data": f"{cert[:4]}\n{cert[4:]}", "client-key-data": b64("K")}
    folded = kubeconfig(tmp_path, folded)
    assert load([folded]).client_cert_data == b"CERT-PEM"
    anonymous = load([kubeconfig(tmp_path, {})])
    assert (anonymous.token, anonymous.token_file, anonymous.client_cert) == (None, None, None)
    # What is said about a kubeconfig never shows its secrets.
    assert "KEY-PEM" not in repr(load([kubeconfig(tmp_path, INLINE)]))
    assert "s3cret" not in repr(load([kubeconfig(tmp_path, {"token": "s3cret"})]))


@pytest.mark.parametrize("server", ["https://", "https://h:abc", "https://[::1", "https://h:0"])
def test_a_server_the_watcher_could_not_use_is_refused_when_read(tmp_path, server):
    path = kubeconfig(tmp_path, {"token": "t"}, server=server)
    with pytest.raises(KubeconfigError, match=r"cluster.server: expected an https://HOST\[:PORT\]"):
        load([path])


def test_an_unreadable_or_odd_path_is_said_not_raised(tmp_path):
    k = {**defaults()["kubernetes"], "node_name": "edge-1"}
    for path, why in ((tmp_path, "cannot read"), (tmp_path / "f/x", "no kubeconfig at")):
        (tmp_path / "f").write_text("")
        off, how = api_settings({**k, "kubeconfig": str(path)}, tmp_path / "w.yaml", {})
        assert off is None and why in how, how
    assert kubeconfig_paths("~nosuchuser-wasmtop/config", {}) == [
        Path("~nosuchuser-wasmtop/config")
    ]


def test_a_kubeconfig_named_explicitly_wins_over_the_pods_service_account(tmp_path):
    path = kubeconfig(tmp_path, {"token": "t"})
    k = {**defaults()["kubernetes"], "kubeconfig": str(path), "token_file": "/nonexistent"}
    s, how = api_settings(k, tmp_path / "w.yaml", {"KUBERNETES_SERVICE_HOST": "10.43.0.1"})
    assert s.server == "https://k3s:6443" and how.startswith(f"kubeconfig {path}")
