"""Socket-bypass parts that need no kernel: the event decoder, address forms, /proc/net/tcp,
owner lookup on a fixture /proc, and the window arithmetic per workload and per peer."""

from __future__ import annotations

import ipaddress
import os
import struct

import pytest

from wasmtop.collector.net import NetAccounting, endpoint, ratio
from wasmtop.collector.sockets import SocketOwners, parse_proc_net_tcp
from wasmtop.probes.decoders import DECODERS, DecodeError, ip_text
from wasmtop.probes.records import BypassReading, BypassRecord, ConnRecord
from wasmtop.probes.sockbypass import SockBypassProbe, lpm_key


def mapped(ip: str) -> bytes:
    return ipaddress.IPv6Address(f"::ffff:{ip}").packed


def event_bytes(kind: int, reason: int) -> bytes:
    return struct.pack(
        "<QQQIHH16s16sBB6x", 5, 9, 1000, 42, 8080, 40000, mapped("127.0.0.1"),
        ipaddress.IPv6Address("::1").packed, kind, reason,
    )  # fmt: skip


@pytest.mark.parametrize(
    "kind, reason, expected_kind, expected_reason",
    [(1, 0, "enrol", None), (2, 0, "first_redirect", None), (3, 1, "fallback", "map_full"),
     (3, 2, "fallback", "peer_missing"), (4, 0, "close", None)],
)  # fmt: skip
def test_bypass_event_decoder(kind, reason, expected_kind, expected_reason):
    rec = DECODERS["bypass_event"](event_bytes(kind, reason))
    assert rec == BypassRecord(
        ts_ns=5, cookie=9, pid=42, kind=expected_kind, reason=expected_reason,
        local=("127.0.0.1", 8080), remote=("::1", 40000), bytes=1000,
    )  # fmt: skip


@pytest.mark.parametrize("kind, reason", [(0, 0), (9, 0), (3, 77)])
def test_bypass_event_decoder_refuses_unknown_codes(kind, reason):
    with pytest.raises(DecodeError):
        DECODERS["bypass_event"](event_bytes(kind, reason))


def test_bypass_decoder_size_is_compiled_in():
    probe = SockBypassProbe()
    assert f"-DBYPASS_EVENT_SIZE={DECODERS['bypass_event'].size}" in probe.cflags()
    assert "_Static_assert(sizeof(struct bypass_event) == BYPASS_EVENT_SIZE" in probe.source()


def test_address_forms():
    assert ip_text(mapped("10.1.2.3")) == "10.1.2.3"
    assert ip_text(ipaddress.IPv6Address("fd00::2").packed) == "fd00::2"
    assert lpm_key("127.0.0.0/8") == (104, mapped("127.0.0.0"))
    assert lpm_key("10.42.0.7/16") == (112, mapped("10.42.0.0"))
    assert lpm_key("fd00::/64") == (64, ipaddress.IPv6Address("fd00::").packed)
    assert endpoint(("::1", 80)) == "[::1]:80" and endpoint(("1.2.3.4", 5)) == "1.2.3.4:5"
    assert ratio(0, 0) is None and ratio(3, 1) == 0.75


@pytest.mark.parametrize(
    "kwargs, message",
    [({"mode": "fast"}, "bypass mode must be one of"), ({"local_cidrs": ["10.0.0.0/33"]}, "10.0"),
     ({"ringbuf_pages": 3}, "power of two")],
)  # fmt: skip
def test_bypass_probe_refuses_bad_options(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SockBypassProbe(**kwargs)


def test_accelerate_is_compiled_in():
    assert "-DACCELERATE=1" in SockBypassProbe(mode="accelerate").cflags()
    assert "-DACCELERATE=0" in SockBypassProbe().cflags()


PROC_NET_TCP = """  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 0100007F:9C40 01 00000000:00000000 00:00000000 00000000     0        0 4242 1 0
   1: 0100007F:9C40 0100007F:1F90 01 00000000:00000000 00:00000000 00000000     0        0 0 1 0
   2: garbage
"""  # noqa: E501
PROC_NET_TCP6 = """  sl  local_address                         remote_address                        st
   0: 00000000000000000000000001000000:0050 00000000000000000000000001000000:A000 01 00000000:00000000 00:00000000 00000000     0        0 777 1
   1: 0000000000000000FFFF00000100007F:0051 0000000000000000FFFF00000100007F:A001 01 00000000:00000000 00:00000000 00000000     0        0 778 1
"""  # noqa: E501


def test_proc_net_tcp_parsing():
    assert parse_proc_net_tcp(PROC_NET_TCP) == {
        (("127.0.0.1", 8080), ("127.0.0.1", 40000)): 4242
    }  # the inode-0 line (no owner) and garbage are skipped
    assert parse_proc_net_tcp(PROC_NET_TCP6) == {
        (("::1", 80), ("::1", 40960)): 777,
        (("127.0.0.1", 81), ("127.0.0.1", 40961)): 778,
    }


def fake_proc(tmp_path):
    """A fixture /proc: pid 100 holds socket inode 4242, pid 200 holds 777."""
    (tmp_path / "net").mkdir()
    (tmp_path / "net/tcp").write_text(PROC_NET_TCP)
    (tmp_path / "net/tcp6").write_text(PROC_NET_TCP6)
    for pid, inode in ((100, 4242), (200, 777)):
        fd = tmp_path / str(pid) / "fd"
        fd.mkdir(parents=True)
        os.symlink(f"socket:[{inode}]", fd / "3")
        os.symlink("/dev/null", fd / "0")
    return tmp_path


def test_socket_owners_from_a_fixture_proc(tmp_path):
    owners = SocketOwners(fake_proc(tmp_path))
    a = (("127.0.0.1", 8080), ("127.0.0.1", 40000))
    b = (("::1", 80), ("::1", 40960))
    gone = (("127.0.0.1", 1), ("127.0.0.1", 2))
    assert owners.resolve([a, b, gone]) == {a: 100, b: 200}
    assert owners.walks == 1
    assert owners.resolve([a, gone]) == {a: 100}
    assert owners.walks == 1, "known and unresolvable pairs are not walked again"


def conn(cookie, local, remote, pid, **counts) -> ConnRecord:
    base = dict(
        msgs_redirected=0, bytes_redirected=0, msgs_passed=0, bytes_passed=0, msgs_failed=0,
        bytes_failed=0, stack_bytes=0, tcp_bytes_acked=0, tcp_bytes_received=0,
        active=True, eligible=True, enrolled=True, fallback_reason=None, srtt_us=0,
        established_ns=1, closed_ns=0,
    )  # fmt: skip
    base.update(counts)
    return ConnRecord(cookie=cookie, local=local, remote=remote, pid=pid, **base)


def test_window_per_workload_and_per_peer(tmp_path):
    net = NetAccounting(SocketOwners(fake_proc(tmp_path)))
    a, b = ("127.0.0.1", 40000), ("127.0.0.1", 8080)
    workload_of = {1: "pid:1", 100: "pid:100"}.get
    first = BypassReading(
        ts_ns=1, mode="accelerate",
        conns={
            1: conn(1, a, b, 1, msgs_redirected=10, bytes_redirected=1000),
            2: conn(2, b, a, 0, msgs_redirected=5, bytes_redirected=50, stack_bytes=50),
        },
        fallbacks={"map_full": 0},
    )  # fmt: skip
    w = net.window(first, workload_of, 100)
    client, server = w.per_workload["pid:1"], w.per_workload["pid:100"]
    assert client.bypass_msgs == 10 and client.bypass_bytes == 1000 and client.stack_bytes == 0
    assert client.bypass_ratio == 1.0
    # The accepted end had no pid in the kernel: found through the fixture /proc (inode 4242).
    assert server.bypass_bytes == 50 and server.stack_bytes == 50 and server.bypass_ratio == 0.5
    assert [(p.peer, p.bypass_bytes) for p in client.peers] == [("pid:100", 1000)]
    assert [(p.peer, p.stack_bytes) for p in server.peers] == [("pid:1", 50)]
    assert {c.workload for c in w.connections} == {"pid:1", "pid:100"}

    second = BypassReading(
        ts_ns=2, mode="accelerate",
        conns={
            1: conn(1, a, b, 1, msgs_redirected=15, bytes_redirected=1500, closed_ns=9),
            2: conn(2, b, a, 0, msgs_redirected=5, bytes_redirected=50, stack_bytes=50),
            3: conn(3, ("127.0.0.1", 1), ("10.9.9.9", 2), 1, eligible=False, enrolled=False,
                    stack_bytes=70),
        },
        fallbacks={"map_full": 3},
    )  # fmt: skip
    w = net.window(second, workload_of, 100)
    client = w.per_workload["pid:1"]
    assert client.bypass_msgs == 5 and client.bypass_bytes == 500, "only the window's share"
    assert client.connections == 2 and client.eligible_connections == 1
    assert client.stack_bytes == 70 and client.eligible_stack_bytes == 0
    assert {p.peer for p in client.peers} == {"pid:100", None}
    assert w.per_workload["pid:100"].bypass_bytes == 0, "nothing new on the accepted end"
    assert w.counters["bypass_fallback_map_full"] == 3
    assert [c.state for c in w.connections if c.local == "127.0.0.1:40000"] == ["closed"]


def test_cgroup_paths_resolve_under_the_mount_for_both_probes(tmp_path):
    from wasmtop.probes.features import cgroup_dir

    (tmp_path / "kubepods" / "pod1").mkdir(parents=True)
    want = tmp_path / "kubepods" / "pod1"
    assert cgroup_dir("kubepods/pod1", tmp_path) == want
    assert cgroup_dir("/kubepods/pod1", tmp_path) == want  # leading slash: still under the mount
    assert cgroup_dir(str(want), tmp_path) == want
    with pytest.raises(ValueError, match="not found under"):
        cgroup_dir("/nope", tmp_path)
