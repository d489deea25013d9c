"""The Kubernetes manifests (issue: Kubernetes, test 1): every resource validates against the
Kubernetes OpenAPI schemas, the DaemonSet grants exactly what docs/deploy.md lists, and the
generated pieces (ConfigMap files, PrometheusRule) match what they are generated from."""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from support import wasmtop_cmd

ROOT = Path(__file__).resolve().parents[2]
KUBE = ROOT / "deploy/kubernetes"
BASE = KUBE / "base"
OPERATOR = KUBE / "components/prometheus-operator"
BUILDS = ["base", "overlays/example", "overlays/legacy-kernel"]
K8S_VERSION = "1.37.0"  # the newest kubernetes-validate knows: a current Kubernetes
CRDS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
}
DOC = (ROOT / "docs/deploy.md").read_text()

needs_kubectl = pytest.mark.skipif(
    shutil.which("kubectl") is None, reason="kubectl (with kustomize) is not installed"
)


def kustomize(build: str) -> list[dict]:
    out = subprocess.run(
        ["kubectl", "kustomize", str(KUBE / build)], capture_output=True, text=True, check=True
    ).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def base_files() -> list[dict]:
    """The base's resources as written (each file a complete manifest)."""
    kz = yaml.safe_load((BASE / "kustomization.yaml").read_text())
    docs = []
    for name in kz["resources"]:
        docs += [d for d in yaml.safe_load_all((BASE / name).read_text()) if d]
    return docs


def operator_files() -> list[dict]:
    """The Prometheus Operator component's resources as written."""
    kz = yaml.safe_load((OPERATOR / "kustomization.yaml").read_text())
    assert kz["kind"] == "Component"
    docs = []
    for name in kz["resources"]:
        docs += [d for d in yaml.safe_load_all((OPERATOR / name).read_text()) if d]
    return docs


def one(docs: list[dict], kind: str) -> dict:
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, (kind, len(found))
    return found[0]


def validate(docs: list[dict]) -> set[tuple[str, str]]:
    """Validate every core resource strictly (unknown fields refused); return the kinds seen."""
    kinds = set()
    for doc in docs:
        key = (doc["apiVersion"], doc["kind"])
        kinds.add(key)
        if key in CRDS:
            continue  # not in the Kubernetes schemas: checked by the tests below
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    return kinds


def documented_capabilities() -> list[str]:
    return re.findall(r"^\| `([A-Z_]+)` \|", DOC, flags=re.M)


def test_every_file_of_the_base_validates_as_written():
    kinds = validate(base_files())
    assert {k for _, k in kinds} == {
        "Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "DaemonSet",
        "Service",
    }  # fmt: skip
    assert {k for _, k in validate(operator_files())} == {"ServiceMonitor", "PrometheusRule"}


@needs_kubectl
def test_the_base_needs_only_core_apis_and_the_example_adds_the_operators_objects():
    """`kubectl apply -k deploy/kubernetes/base` works on a cluster without the Prometheus
    Operator's CRDs: every object is of an API every cluster serves."""
    core = {"v1", "apps/v1", "rbac.authorization.k8s.io/v1"}
    assert {d["apiVersion"] for d in kustomize("base")} <= core
    example = {(d["apiVersion"], d["kind"]) for d in kustomize("overlays/example")}
    assert CRDS <= example


@needs_kubectl
@pytest.mark.parametrize("build", BUILDS)
def test_every_kustomize_build_validates(build):
    docs = kustomize(build)
    kinds = {k for _, k in validate(docs)}
    assert "ConfigMap" in kinds and "DaemonSet" in kinds
    # The generated ConfigMap is the one the DaemonSet mounts (hash suffix and all).
    cm = one(docs, "ConfigMap")
    ds = one(docs, "DaemonSet")
    volumes = {v["name"]: v for v in ds["spec"]["template"]["spec"]["volumes"]}
    assert volumes["config"]["configMap"]["name"] == cm["metadata"]["name"]
    assert all(d["metadata"].get("namespace") in (None, "wasmtop") for d in docs)


@needs_kubectl
@pytest.mark.parametrize("build", BUILDS)
def test_the_config_the_pod_sees_is_valid(build, tmp_path):
    """The ConfigMap's files, written out as the pod mounts them, pass `wasmtop daemon --check`
    (which loads the rule files it names, relative to the config)."""
    cm = one(kustomize(build), "ConfigMap")
    assert set(cm["data"]) == {"wasmtop.yaml", "rules.yaml"}
    for name, text in cm["data"].items():
        (tmp_path / name).write_text(text)
    check = subprocess.run(
        [*wasmtop_cmd(), "daemon", "--check", "--config", str(tmp_path / "wasmtop.yaml")],
        capture_output=True,
        text=True,
    )
    assert check.returncode == 0, check.stderr
    assert "7 alert rules" in check.stdout + check.stderr
    config = yaml.safe_load(cm["data"]["wasmtop.yaml"])
    assert config["metrics"]["listen"] == "0.0.0.0:9464"  # scraped from the node's address
    # The gRPC API: a socket in the /run/wasmtop mount, not a port on the node's network.
    mounts = {m["mountPath"] for m in container(kustomize(build))["volumeMounts"]}
    listen = config["grpc"]["listen"]
    assert listen.startswith("unix:") and str(Path(listen[5:]).parent) in mounts


def container(docs: list[dict]) -> dict:
    (c,) = one(docs, "DaemonSet")["spec"]["template"]["spec"]["containers"]
    return c


def test_the_daemonset_is_not_privileged_and_adds_exactly_the_documented_capabilities():
    docs = base_files()
    pod = one(docs, "DaemonSet")["spec"]["template"]["spec"]
    text = (BASE / "daemonset.yaml").read_text()
    assert not re.search(r"^\s*privileged:\s*true", text, flags=re.M)
    sc = container(docs)["securityContext"]
    assert sc.get("privileged", False) is False
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"]["drop"] == ["ALL"]
    documented = documented_capabilities()
    assert documented == ["BPF", "PERFMON", "NET_ADMIN", "SYS_PTRACE", "SYS_NICE"]
    assert sorted(sc["capabilities"]["add"]) == sorted(documented)
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert "SYS_ADMIN" not in sc["capabilities"]["add"]


def test_the_legacy_kernel_overlay_is_the_only_build_with_sys_admin():
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl (with kustomize) is not installed")
    adds = {b: container(kustomize(b))["securityContext"]["capabilities"]["add"] for b in BUILDS}
    assert [b for b, a in adds.items() if "SYS_ADMIN" in a] == ["overlays/legacy-kernel"]
    assert "BPF" not in adds["overlays/legacy-kernel"]  # no such capability before 5.8
    assert "SYS_RESOURCE" in adds["overlays/legacy-kernel"]  # memlock accounting before 5.11
    assert adds["overlays/example"] == adds["base"]


def test_it_runs_on_every_node_with_the_node_name_and_the_documented_mounts():
    docs = base_files()
    pod = one(docs, "DaemonSet")["spec"]["template"]["spec"]
    assert pod["tolerations"] == [{"operator": "Exists"}]
    assert "nodeSelector" not in pod and "affinity" not in pod
    assert pod["hostPID"] is True and pod["hostNetwork"] is True
    env = {e["name"]: e for e in container(docs)["env"]}
    assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    # Every host path mounted is in docs/deploy.md's mount table and in the Dockerfile's header.
    host = {v["hostPath"]["path"] for v in pod["volumes"] if "hostPath" in v}
    table = set(re.findall(r"^\| `(/[^`]+)`(?:, `(/[^`]+)`)? \|", DOC, flags=re.M))
    documented = {p for row in table for p in row if p} - {"/proc"}
    assert host == documented
    dockerfile = (ROOT / "deploy/Dockerfile").read_text()
    assert all(f"#   {p}" in dockerfile or f", {p}" in dockerfile for p in host), host
    mounts = {m["name"]: m for m in container(docs)["volumeMounts"]}
    writable = {m["mountPath"] for m in mounts.values() if not m.get("readOnly")}
    assert writable == {"/sys/fs/bpf", "/run/wasmtop", "/tmp", "/var/cache/wasmtop"}


def test_resources_cover_the_measured_memory():
    res = container(base_files())["resources"]
    measured = re.search(r"\| `wasmtop daemon`[^|]*\| ([\d.]+) MiB \| ([\d.]+) MiB \|",
                         (ROOT / "docs/benchmarks.md").read_text())  # fmt: skip
    assert measured, "docs/benchmarks.md lost its daemon memory row"
    hwm_mib = float(measured.group(2))

    def mib(q: str) -> float:
        return float(q[:-2]) * (1024 if q.endswith("Gi") else 1)

    assert mib(res["requests"]["memory"]) > hwm_mib
    assert mib(res["limits"]["memory"]) >= 2 * mib(res["requests"]["memory"])
    assert "cpu" in res["requests"] and "cpu" in res["limits"]


def test_service_servicemonitor_and_container_name_the_same_ports():
    docs = base_files()
    ports = {p["name"]: p["containerPort"] for p in container(docs)["ports"]}
    assert ports == {"metrics": 9464}  # gRPC: a Unix socket in /run/wasmtop, no port
    svc = one(docs, "Service")["spec"]
    assert svc["clusterIP"] == "None"  # headless: one endpoint per node
    assert {p["name"]: p["port"] for p in svc["ports"]} == ports
    assert all(p["targetPort"] == p["name"] for p in svc["ports"])
    sm = one(operator_files(), "ServiceMonitor")["spec"]
    labels = one(docs, "DaemonSet")["spec"]["template"]["metadata"]["labels"]
    assert sm["selector"]["matchLabels"].items() <= labels.items()
    (endpoint,) = sm["endpoints"]
    assert endpoint["port"] == "metrics" and endpoint["path"] == "/metrics"
    # The node's name becomes the `node` label the rendered rules group by.
    assert {
        "sourceLabels": ["__meta_kubernetes_pod_node_name"],
        "targetLabel": "node",
        "action": "replace",
    } in endpoint["relabelings"]
    # ...and the operator's target labels of the wasmtop pod never replace the workload's own.
    drop = [r for r in endpoint["relabelings"] if r.get("action") == "labeldrop"]
    assert [set(r["regex"].strip("()").split("|")) for r in drop] == [
        {"namespace", "pod", "container", "service", "endpoint"}
    ]
    assert not endpoint.get("honorLabels")  # a scraped `node` must not override the relabel


def test_the_rbac_reads_pods_and_nothing_else():
    docs = base_files()
    role = one(docs, "ClusterRole")
    assert role["rules"] == [
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}
    ]
    binding = one(docs, "ClusterRoleBinding")
    sa = one(docs, "ServiceAccount")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": sa["metadata"]["name"], "namespace": "wasmtop"}
    ]
    ds = one(docs, "DaemonSet")["spec"]["template"]["spec"]
    assert ds["serviceAccountName"] == sa["metadata"]["name"]


def test_the_configmap_rules_are_the_shipped_rules():
    assert (BASE / "config/rules.yaml").read_bytes() == (
        ROOT / "alerts/rules/default.yaml"
    ).read_bytes()


def test_the_prometheusrule_is_what_wasmtop_rules_render_writes(tmp_path):
    out = tmp_path / "pr.yaml"
    subprocess.run(
        [*wasmtop_cmd(), "rules", "render", str(BASE / "config/rules.yaml"), "--format",
         "prometheusrule", "--name", "wasmtop", "--namespace", "wasmtop", "-o", str(out)],
        check=True,
    )  # fmt: skip
    assert (OPERATOR / "prometheusrule.yaml").read_text() == out.read_text(), (
        "regenerate it: the command is in docs/deploy.md"
    )
    # And Prometheus accepts its rules (promtool, on the spec's groups).
    rule = yaml.safe_load(out.read_text())
    assert rule["metadata"]["namespace"] == "wasmtop"
    groups = tmp_path / "groups.yaml"
    groups.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    check = subprocess.run(
        ["promtool", "check", "rules", str(groups)], capture_output=True, text=True
    )
    assert check.returncode == 0 and "SUCCESS: 7 rules found" in check.stdout, check.stdout


CRD_VALIDATOR = Path(__file__).resolve().parent / "crd"


def crd_validate(docs: list[dict]) -> subprocess.CompletedProcess:
    if shutil.which("node") is None or not (CRD_VALIDATOR / "node_modules").is_dir():
        pytest.skip("node or the CRD validator's packages are missing (make crd-validator)")
    return subprocess.run(
        ["node", str(CRD_VALIDATOR / "validate.mjs")],
        input=json.dumps(docs),
        capture_output=True,
        text=True,
    )


def test_servicemonitor_and_prometheusrule_validate_against_the_operators_crd_schemas():
    crs = [d for d in operator_files() if (d["apiVersion"], d["kind"]) in CRDS]
    run = crd_validate(crs)
    assert run.returncode == 0, run.stdout + run.stderr
    assert sorted(run.stdout.split("\n")[:-1]) == [
        "ok PrometheusRule wasmtop",
        "ok ServiceMonitor wasmtop",
    ]
    # The validator refuses what the operator would: a relabel action that does not exist.
    broken = copy.deepcopy(one(crs, "ServiceMonitor"))
    broken["spec"]["endpoints"][0]["relabelings"][0]["action"] = "rename"
    run = crd_validate([broken])
    assert run.returncode == 1 and "relabelings/0/action" in run.stdout


def test_the_plain_prometheus_scrape_config_does_what_the_servicemonitor_does():
    """Without the Operator: deploy/prometheus/scrape-wasmtop.yaml keeps the Service's metrics
    endpoints and sets `node` from the same source as the ServiceMonitor. (promtool here is
    built without Kubernetes service discovery, so Prometheus's own check cannot run on it.)"""
    (job,) = yaml.safe_load((ROOT / "deploy/prometheus/scrape-wasmtop.yaml").read_text())[
        "scrape_configs"
    ]
    (sd,) = job["kubernetes_sd_configs"]
    assert sd["role"] == "endpoints" and sd["namespaces"]["names"] == ["wasmtop"]
    svc = one(base_files(), "Service")
    keep, node = job["relabel_configs"]
    assert keep["action"] == "keep" and keep["regex"] == f"{svc['metadata']['name']};metrics"
    assert [p["name"] for p in svc["spec"]["ports"]] == ["metrics"]
    (endpoint,) = one(operator_files(), "ServiceMonitor")["spec"]["endpoints"]
    same = next(r for r in endpoint["relabelings"] if r.get("targetLabel") == "node")
    assert node["source_labels"] == same["sourceLabels"] and node["target_label"] == "node"
    assert job["metrics_path"] == endpoint["path"]


@needs_kubectl
@pytest.mark.parametrize("doc", ["README.md", "docs/deploy.md"])
def test_the_overlay_the_quick_start_writes_builds_the_base_with_the_pushed_image(tmp_path, doc):
    """The kustomization the README's Kubernetes steps write (a heredoc), written beside a copy
    of deploy/, builds: the base's objects, with the image renamed to the registry's."""
    text = (ROOT / doc).read_text()
    body = text.split("cat > my-wasmtop/kustomization.yaml <<'EOF'\n", 1)[1].split("\nEOF\n")[0]
    (tmp_path / "deploy").symlink_to(ROOT / "deploy")
    (tmp_path / "my-wasmtop").mkdir()
    (tmp_path / "my-wasmtop/kustomization.yaml").write_text(body.replace("REGISTRY", "reg.io"))
    out = subprocess.run(["kubectl", "kustomize", str(tmp_path / "my-wasmtop")],
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    objects = list(yaml.safe_load_all(out))
    assert {o["kind"] for o in objects} == {o["kind"] for o in kustomize("base")}
    (ds,) = [o for o in objects if o["kind"] == "DaemonSet"]
    (c,) = ds["spec"]["template"]["spec"]["containers"]
    assert c["image"] == "reg.io/wasmtop:0.1.0"
