"""wasmtop as a user runs it: real processes, real kernel, exit codes and output."""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest

from support import (
    http_server,
    no_programs_left,
    our_programs,
    wait_for,
    wasmtop_cmd,
    workloads,
)

WASMTOP = wasmtop_cmd()
SCHED_FIELDS = {
    "switches", "involuntary", "migrations", "migrations_per_s", "affinity_stability",
    "cpu_skew_ratio", "allowed_cpus", "cpu_time_ns_by_cpu", "preempt_delay_us",
    "preemptions_over_threshold",
}  # fmt: skip


def run(
    *args: str, timeout: float = 120, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    full = {**os.environ, **env} if env else None
    return subprocess.run(
        [*WASMTOP, *args], capture_output=True, text=True, timeout=timeout, env=full
    )


HOG_RULE = """
rules:
  - name: HogPreempted
    quantity: sched.preempt_delay_ms
    threshold: 1
    consecutive: 3
    severity: info
    annotations: {summary: "{{ $labels.workload }} waited {{ $value }} ms"}
"""


def test_snapshot_json_follows_the_v1_contract_and_leaves_no_program_behind(tmp_path):
    rules = tmp_path / "rules.yaml"
    rules.write_text(HOG_RULE)
    with workloads(("hog", {"CPU": {1}}), ("hog", {"CPU": {1}})) as hogs:
        for h in hogs:
            h.go()
        res = run("snapshot", "--seconds", "1.5", "--format", "json", "--threshold-ms", "1",
                  "--rules", str(rules))  # fmt: skip
    assert res.returncode == 0, res.stderr
    snap = json.loads(res.stdout)
    assert snap["schema"] == "wasmtop.snapshot/v1"
    for field in ("host", "kernel", "cpus", "window_s", "probes", "workloads", "events",
                  "traces", "alerts"):  # fmt: skip
        assert field in snap
    assert 1.4 <= snap["window_s"] <= 3.0
    assert snap["probes"]["sched"]["status"] == "ok"
    by_pid = {p: w for w in snap["workloads"] for p in w["pids"]}
    for h in hogs:
        w = by_pid[h.pid]
        assert w["kind"] == "process" and w["key"] == f"pid:{h.pid}"
        sched = w["sched"]
        assert set(sched) >= SCHED_FIELDS
        assert sched["involuntary"] > 0
        assert set(sched["preempt_delay_us"]) == {"p50", "p99", "max"}
    hog_events = [e for e in snap["events"]["preemptions"] if e["pid"] in by_pid]
    assert hog_events and set(hog_events[0]) >= {
        "ts_ns",
        "pid",
        "tid",
        "cpu",
        "delay_us",
        "preemptor_pid",
        "preemptor_comm",
        "trace_id",
        "thread_preemptions",
    }
    # Two hogs on one CPU wait a timeslice (ms) each time: runs of 3 over 1 ms, counted with
    # the kernel's per-thread preemption numbers, fire the rule for each of them.
    firing = {a["workload"]: a for a in snap["alerts"] if a["state"] == "firing"}
    for h in hogs:
        alert = firing[f"pid:{h.pid}"]
        assert alert["name"] == "HogPreempted" and alert["value"] > 1
        assert alert["labels"]["alertname"] == "HogPreempted"
        assert alert["annotations"]["summary"].startswith(f"pid:{h.pid} waited ")
        seqs = [e["thread_preemptions"] for e in hog_events if e["pid"] == h.pid]
        assert seqs == sorted(seqs) and seqs[-1] >= len(seqs)
    assert no_programs_left() == []


def test_snapshot_refuses_a_bad_rule_file_before_loading_anything(tmp_path):
    rules = tmp_path / "rules.yaml"
    rules.write_text(HOG_RULE.replace("threshold: 1", "threshold: one"))
    res = run("snapshot", "--seconds", "1", "--rules", str(rules))
    assert res.returncode == 2
    assert res.stderr == f"wasmtop: {rules}:5: rules[0].threshold: expected a number, got 'one'\n"


def test_snapshot_table_format_shows_the_workloads():
    with workloads(("hog", {"CPU": {0}})) as (hog,):
        hog.go()
        res = run("snapshot", "--seconds", "1", "--format", "table", "--pid", str(hog.pid))
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0].startswith("host ")
    assert "sched:ok" in lines[1]
    header = lines[2]
    for col in ("WORKLOAD", "MIGR/s", "INVOL/s", "PREEMPT p50 us", "SKEW", "WAKEUP p99 us"):
        assert col in header
    rows = [ln for ln in lines[3:] if f"[{hog.pid}]" in ln]
    assert len(rows) == 1 and len(lines) == 4  # the pid filter left only the hog


def test_probes_loads_only_the_probes_asked_for():
    res = run("snapshot", "--seconds", "1", "--probes", "sched")
    assert res.returncode == 0, res.stderr
    snap = json.loads(res.stdout)
    assert list(snap["probes"]) == ["sched"] and snap["probes"]["sched"]["status"] == "ok"
    assert "attached: sched ok;" in res.stderr
    assert all(w["net"] is None and w["requests"] is None for w in snap["workloads"])
    assert no_programs_left() == []


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_detaches_everything(sig):
    proc = subprocess.Popen([*WASMTOP, "snapshot", "--seconds", "60"], stdout=subprocess.PIPE)
    try:
        # Signalled while the last probe is still attaching: held until its attach is
        # recorded, then everything is detached.
        assert wait_for(lambda: len(our_programs()) >= 2, timeout_s=60), "never attached"
        proc.send_signal(sig)
        assert proc.wait(timeout=30) == 128 + sig
    finally:
        if proc.poll() is None:
            proc.kill()
    assert no_programs_left() == []


@pytest.mark.parametrize(
    "args, message",
    [
        (["--seconds", "0"], "expected seconds > 0, got '0'"),
        (["--seconds", "-3"], "expected seconds > 0, got '-3'"),
        (["--seconds", "abc"], "expected seconds > 0, got 'abc'"),
        (["--seconds", "nan"], "expected seconds > 0, got 'nan'"),
        (["--pid", "4194304"], "no process 4194304"),
        (["--pid", "x"], "expected a process id > 0, got 'x'"),
        (["--pid", "0"], "expected a process id > 0, got '0'"),
        (["--threshold-ms", "-1"], "expected milliseconds >= 0"),
        (["--format", "xml"], "invalid choice: 'xml'"),
        (["--cgroup", "/no/such/cgroup"], "cgroup /no/such/cgroup not found"),
        (["--ringbuf-pages", "3"], "expected a power of two, got '3'"),
        (["--bypass", "fast"], "invalid choice: 'fast'"),
        (["--local-cidr", "10.0.0.300/8"], "expected an address range such as 10.42.0.0/16"),
        (["--trace-pid", "0"], "expected a process id > 0, got '0'"),
        (["--trace-pid", "4194304"], "--trace-pid: no process 4194304"),
        (["--trace-comm", "a-name-of-16-chr"], "expected a command name of 1 to 15 bytes"),
        (["--trace-cgroup", "/no/such/cgroup"], "cgroup /no/such/cgroup not found"),
        (["--no-trace", "--trace-comm", "x"], "not allowed with the --trace-* flags"),
        (["--growth-window-s", "0"], "expected seconds > 0, got '0'"),
        (["--probes", "sched,fast"], "expected probe names from sched, sockbypass, tracectx"),
        (["--probes", ""], "expected probe names from sched"),
        (["--probes", "sched", "--trace-comm", "x"], "the --trace-* flags need tracectx"),
        (["--probes", "sched", "--bypass", "accelerate"], "accelerate needs sockbypass"),
    ],
)
def test_bad_input_is_refused_with_a_message_and_exit_2(args, message):
    res = run("snapshot", *args)
    assert res.returncode == 2
    assert message in res.stderr
    assert res.stdout == ""
    assert "Traceback" not in res.stderr


@pytest.mark.skipif(not shutil.which("capsh"), reason="capsh (libcap2-bin) not installed")
def test_missing_capabilities_are_named():
    res = subprocess.run(
        [
            "capsh",
            "--drop=cap_bpf,cap_perfmon,cap_sys_admin",
            "--",
            "-c",
            " ".join([*WASMTOP, "snapshot", "--seconds", "1"]),
        ],  # fmt: skip
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 1
    assert "missing capability CAP_BPF and CAP_PERFMON" in res.stderr
    assert "Traceback" not in res.stderr


def test_doctor_reports_this_machine():
    res = run("doctor")
    assert res.returncode == 0, res.stdout + res.stderr
    lines = {ln.split()[1]: ln for ln in res.stdout.splitlines() if ln.strip()}
    assert re.search(r"^feature tracepoints\s+ok\s+required", lines["tracepoints"])
    assert re.search(r"^feature ringbuf\s+ok\s+required", lines["ringbuf"])
    assert re.search(r"^feature kprobes\s+unavailable\s+optional\s+\S", lines["kprobes"])
    assert "CONFIG_KPROBES" in lines["kprobes"]
    assert re.search(r"^feature fentry\s+unavailable\s+optional\s+\S", lines["fentry"])
    assert "Operation not permitted" in lines["fentry"]
    # 6.18 here: requests and cold starts are captured with no syscall tracepoint
    assert re.search(r"^feature socket_capture\s+ok\s+optional", lines["socket_capture"])
    # What the kernel matrix found 6.1 lacks, this kernel has (docs/kernels.md) ...
    assert re.search(r"^feature sockops_pid\s+ok\s+optional", lines["sockops_pid"])
    assert re.search(r"^feature sockmap_ingress\s+ok\s+optional\s+FIONREAD and epoll see",
                     lines["sockmap_ingress"])  # fmt: skip
    # ... and its headers are 6.1's, not its own.
    assert re.search(r"^feature headers_match\s+unavailable\s+optional\s+the headers are 6\.1",
                     lines["headers_match"])  # fmt: skip
    assert re.search(r"^probe\s+sched\s+ok", lines["sched"])
    assert re.search(r"^probe\s+sockbypass\s+ok", lines["sockbypass"])
    assert re.search(r"^probe\s+tracectx\s+ok", lines["tracectx"])
    assert re.search(r"^probe\s+lifecycle\s+ok", lines["lifecycle"])
    assert re.search(r"^cache\s+programs\s+ok\s+\S+: \d+ entries; this run", lines["programs"])
    assert no_programs_left() == []


def test_the_cache_is_filled_shown_used_and_cleared(tmp_path):
    """A start compiles into the cache; doctor then loads every probe from it; `wasmtop cache
    clear` empties it and the next start compiles again."""
    env = {"WASMTOP_CACHE_DIR": str(tmp_path)}
    first = run("doctor", env=env)
    assert first.returncode == 0, first.stderr
    assert "this run 0 hits, 4 compiled, rejected none" in first.stdout
    assert first.stdout.count("(program from the compiler)") == 4
    shown = run("cache", "show", env=env)
    assert f"{tmp_path}: 4 compiled program(s)" in shown.stdout
    again = run("doctor", env=env)
    assert "this run 4 hits, 0 compiled, rejected none" in again.stdout
    assert again.stdout.count("(program from the cache)") == 4
    cleared = run("cache", "clear", env=env)
    assert cleared.returncode == 0 and "removed 4 compiled program(s)" in cleared.stdout
    assert list(tmp_path.glob("*.bpfobj")) == []
    assert "0 hits, 4 compiled" in run("doctor", env=env).stdout
    assert no_programs_left() == []


def test_doctor_print_bpf_renders_every_variant_with_no_placeholder_left():
    res = run("doctor", "--print-bpf")
    assert res.returncode == 0
    variants = re.split(r"^// ===== (.+) =====$", res.stdout, flags=re.M)[1:]
    labels, texts = variants[0::2], variants[1::2]
    assert "sched: no filter" in labels and "sched: pid filter" in labels
    assert "sched: cgroup filter" in labels
    for label, text in zip(labels, texts):
        assert "@@" not in text, label
        if label.startswith("sched"):
            assert "// cflag -DTHRESHOLD_NS=" in text
            assert "int wasmtop_sched_switch(" in text
        elif label.startswith("tracectx"):
            assert "// cflag -DCAPTURE_BYTES=512" in text
            assert "int wasmtop_exit_recvmsg(" in text and "int wasmtop_enter_writev(" in text
        elif label.startswith("lifecycle"):
            assert "int wasmtop_process_exec(" in text
            assert "int wasmtop_wasm_instantiate_return(" in text
        else:
            assert "int wasmtop_sk_msg(" in text and "int wasmtop_sockops(" in text
            assert "SCHED_CLS" not in text and "__sk_buff" not in text  # nothing per packet
    assert "// cflag -DACCELERATE=1" in texts[labels.index("sockbypass: accelerate, pod CIDR")]
    no_filter = texts[labels.index("sched: no filter")]
    assert "!(0) && !(0)" in no_filter  # a disabled filter becomes 0
    assert "tgid != 1" in texts[labels.index("sched: pid filter")]
    assert "bpf_get_current_ancestor_cgroup_id(0)" in texts[labels.index("sched: cgroup filter")]
    # Shared maps are reached through map-in-map slots that userspace fills (the pinned
    # trace-context map, the scheduler probe's threads): BCC never opens a pin, which would
    # need CAP_SYS_ADMIN.
    ctx_slot = 'BPF_ARRAY_OF_MAPS(trace_ctx_slot, "trace_ctx_layout", 1)'
    for label, text in zip(labels, texts):
        assert "BPF_TABLE_PINNED" not in text, label
        if label.startswith(("sched", "tracectx")):
            assert ctx_slot in text, label
    shared = texts[labels.index("tracectx: sharing the scheduler probe's maps")]
    assert 'BPF_ARRAY_OF_MAPS(threads_slot, "threads_layout", 1)' in shared
    assert "// cflag -DTHREADS_COMPLETE=1" in shared
    alone = texts[labels.index("tracectx: alone")]
    assert "// cflag -DTHREADS_COMPLETE=0" in alone


def test_every_printed_variant_compiles_and_loads():
    from wasmtop.probes.catalog import probe_variants
    from wasmtop.probes.probeset import OK, ProbeSet

    variants = probe_variants()
    with ProbeSet([p for _, p in variants], handle_signals=False) as probes:
        for (label, _), probe in zip(variants, probes):
            assert probe.status == OK, f"{label}: {probe.reason}"
    assert no_programs_left() == []


def test_no_kernel_headers_says_how_to_get_them(monkeypatch, capsys):
    from wasmtop import cli
    from wasmtop.probes import features

    monkeypatch.setattr(features, "headers_dir", lambda release=None: features.Path("/nonexistent"))
    assert cli.main(["snapshot", "--seconds", "1"]) == 1
    err = capsys.readouterr().err
    assert "no kernel headers" in err and "make setup" in err and "linux-headers" in err


def test_unknown_command_usage_and_help():
    res = run("snapshot", "--help")
    assert res.returncode == 0
    assert "--seconds N" in res.stdout and "--threshold-ms T" in res.stdout
    res = run("nonsense")
    assert res.returncode == 2


def test_snapshot_accelerate_reports_bypassed_connections_per_workload():
    """A real client/server pair (two processes) talks over loopback while `wasmtop snapshot
    --bypass accelerate` watches: both ends are enrolled and their bytes skip the stack."""
    pair = subprocess.Popen(
        [sys.executable, "-c", PINGPONG], stdout=subprocess.PIPE, stdin=subprocess.PIPE, text=True
    )
    try:
        snap_proc = subprocess.Popen(
            [*WASMTOP, "snapshot", "--seconds", "4", "--bypass", "accelerate"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        attached = attached_line(snap_proc)  # printed once every probe is started
        assert "sockbypass ok (accelerate)" in attached, attached
        pair.stdin.write("go\n")
        pair.stdin.flush()
        assert pair.stdout.readline().strip() == "done 200"
        out, err = snap_proc.communicate(timeout=60)
        err = attached + err
    finally:
        pair.kill()
        pair.wait()
    assert snap_proc.returncode == 0, err
    snap = json.loads(out)
    probe = snap["probes"]["sockbypass"]
    assert probe["status"] == "ok" and probe["mode"] == "accelerate", probe
    assert probe["foreign_redirects"]["status"] == "unavailable"
    w = next(w for w in snap["workloads"] if pair.pid in w["pids"])
    net = w["net"]
    assert set(net) >= {"connections", "bypass_connections", "bypass_msgs", "bypass_bytes",
                        "stack_bytes"}  # fmt: skip
    assert net["connections"] == 2 and net["bypass_connections"] == 2
    assert net["bypass_msgs"] == 400  # 200 requests + 200 replies, one sendmsg each
    assert net["stack_bytes"] == 0 and net["bypass_ratio"] == 1.0
    kinds = [e["kind"] for e in snap["events"]["bypass"] if e["pid"] == pair.pid]
    assert kinds.count("enrol") == 2 and kinds.count("first_redirect") == 2
    conns = [c for c in snap["connections"] if c["pid"] == pair.pid]
    assert len(conns) == 2 and all(c["enrolled"] and c["bypass_ratio"] == 1.0 for c in conns)
    # The verdict program outlives the snapshot only while sockets it enrolled are open.
    assert no_programs_left() == []


def http_load(port: int, n: int, result: dict[str, tuple[int, int]], pace_s: float = 0.01) -> None:
    """n requests over one keep-alive connection, one every ``pace_s``, each with a fresh
    traceparent; per trace id, ``result`` gets when the client began the request and when it
    had the response (CLOCK_MONOTONIC ns, the kernel's clock)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    for i in range(n):
        trace_id = os.urandom(16).hex()
        t0 = time.monotonic_ns()
        conn.request("GET", f"/r{i % 2}", headers={
            "traceparent": f"00-{trace_id}-{os.urandom(8).hex()}-01"})  # fmt: skip
        conn.getresponse().read()
        result[trace_id] = (t0, time.monotonic_ns())
        # wasmtop tells a request's connection only from the first time it sees the fd on
        # (~0.1 s): the connection's first request may read null, the others never do.
        time.sleep(0.3 if i == 0 else pace_s)
    # Keep-alive: the connection outlives its last request a while, as clients' pools do
    # (wasmtop tells a bypassed connection by its open socket; a closed one reads null).
    time.sleep(0.3)
    conn.close()


def attached_line(proc: subprocess.Popen) -> str:
    """The "attached:" line of `wasmtop snapshot` (after where pod names come from, said once,
    and a line per probe: cache or compiler, and how its start ended)."""
    for line in proc.stderr:
        if line.startswith("wasmtop: attached:"):
            return line
        assert line.startswith(("wasmtop: probe ", "wasmtop: pod names")), line
    return ""


def snapshot_during(args: list[str], work) -> tuple[dict, str]:
    """Run `wasmtop snapshot ARGS`, do ``work`` once it has attached, return its JSON."""
    proc = subprocess.Popen([*WASMTOP, "snapshot", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        attached = attached_line(proc)
        work()
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, attached + err
    return json.loads(out), attached


def test_by_default_every_wasm_runtime_is_traced_and_its_bypassed_requests_say_so():
    sent: dict[str, tuple[int, int]] = {}
    with http_server("--wasm") as (server, port):
        snap, attached = snapshot_during(
            ["--seconds", "4", "--bypass", "accelerate"], lambda: http_load(port, 40, sent)
        )
    assert "tracectx ok" in attached and "sockbypass ok (accelerate)" in attached
    assert snap["probes"]["tracectx"]["traced_pids"] == [server.pid]
    w = next(w for w in snap["workloads"] if server.pid in w["pids"])
    assert w["kind"] == "wasm" and w["runtime"] == "wasmtime"
    assert w["requests"]["count"] == 40 and w["requests"]["by_status"] == {"200": 40}
    rt = w["runtime_metrics"]
    assert set(rt) >= {"rss_bytes", "rss_growth_mb_per_min", "cpu_percent", "throttled_us",
                       "cold_start_ms", "wasm"}  # fmt: skip
    assert rt["rss_bytes"] > 10_000_000 and rt["wasm"]["instantiate"]["count"] == 40
    assert set(w["requests"]["latency_ms"]) == {"p50", "p90", "p99", "p999", "max"}
    traces = {t["trace_id"]: t for t in snap["traces"]}
    assert traces.keys() == sent.keys()
    first = next(iter(sent))
    for trace_id, t in traces.items():
        # The span starts at the end of the request's read, within the client's exchange.
        # (Its end, with socket capture, is when the server's send returned: the client may
        # have its response by then.)
        t0, t1 = sent[trace_id]
        assert t["pid"] == server.pid and t0 < t["start_ns"] < t1 and t["duration_ms"] > 0
        if snap["probes"]["tracectx"]["capture"] == "syscalls":
            assert t["start_ns"] + t["duration_ms"] * 1e6 <= t1
        # its connection went socket to socket (said from the connection's second request on)
        assert t["bypassed"] is True or (trace_id == first and t["bypassed"] is None)
        assert t["client_address"] == "127.0.0.1" or trace_id == first
        assert set(t) >= {"trace_id", "span_id", "pid", "tid", "start_ns", "duration_ms",
                          "preempted_ms", "migrations", "bypassed"}  # fmt: skip
    assert no_programs_left() == []


def test_trace_comm_traces_processes_by_command_name(tmp_path):
    exe = tmp_path / "edgesrv"  # the process's comm is its executable's name
    exe.symlink_to(sys.executable)
    sent: dict[str, tuple[int, int]] = {}
    with http_server(exe=str(exe)) as (named, port), http_server() as (other, port_other):
        snap, _ = snapshot_during(
            ["--seconds", "3", "--trace-comm", "edgesrv"],
            lambda: (http_load(port, 10, sent), http_load(port_other, 10, {})),
        )
    assert snap["probes"]["tracectx"]["traced_pids"] == [named.pid]
    assert {t["pid"] for t in snap["traces"]} == {named.pid}
    assert {t["trace_id"] for t in snap["traces"]} == sent.keys()
    assert all(t["bypassed"] is False for t in snap["traces"])  # observe mode: none redirected


PINGPONG = """
import socket, sys
sys.stdin.readline()
srv = socket.create_server(("127.0.0.1", 0))
cli = socket.create_connection(srv.getsockname())
peer, _ = srv.accept()
for i in range(200):
    cli.sendall(b"ping %03d" % i)
    assert peer.recv(100) == b"ping %03d" % i
    peer.sendall(b"pong")
    assert cli.recv(100) == b"pong"
print("done", i + 1, flush=True)
sys.stdin.readline()
"""
