"""Socket-bypass probe: local TCP connections, and the bytes that skip or cross the stack.

Kernel side: ``sockbypass.bpf.c``. A sockops program on a cgroup v2 directory (through a BPF
link, so the attachment ends with this process even if it is killed), and in accelerate mode an
sk_msg verdict program on the SOCKHASH that redirects each sendmsg to the peer socket. The bytes
a connection sent through the stack are its TCP counters, as the sockops callbacks last saw them:
no program runs per packet.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import functools
import hashlib
import ipaddress
import os
import select
import socket
import struct
import termios
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Callable

from . import bpfobj, btf, features, loader
from .compiled import fentry_check
from .decoders import FALLBACK_REASONS, ip_text
from .probeset import OK, Probe, ProbeUnavailable, fentry_feature
from .records import BypassReading, ConnRecord

OBSERVE, ACCELERATE = "observe", "accelerate"
MODES = (OBSERVE, ACCELERATE)
DEFAULT_MAX_CONNS = 65_536
DEFAULT_MAX_BYPASS = 65_536
DEFAULT_RINGBUF_PAGES = 16
LOOPBACK_NETS = ("127.0.0.0/8", "::1/128")
SOCKET_PROG_TYPES = frozenset({"sock_ops", "sk_msg", "sk_skb"})

SO_COOKIE = 57

KINDS = {"ENROL": 1, "FIRST_REDIRECT": 2, "FALLBACK": 3, "CLOSE": 4}

# The kernel's redirect path, where a program counting other agents' redirects would attach.
FOREIGN_REDIRECT_FN = "tcp_bpf_sendmsg_redir"
MAX_FOREIGN_PROCS = 1024  # processes whose foreign redirects are counted (least recent evicted)


# The kernel's enrolment flag (`mode` map, index 0).
MODE_OFF, MODE_ON, MODE_SELF_TEST = 0, 1, 2


def stack_payload(bytes_acked: int, active: bool, fin_acked: bool) -> int:
    """Payload bytes a connection end sent through the TCP stack and had acknowledged: the
    kernel's bytes_acked (RFC 4898 HCThruOctetsAcked) less the sequence numbers that carry no
    payload, the connecting side's SYN and an acknowledged FIN. Retransmissions count once."""
    return max(0, bytes_acked - active - fin_acked)


def socket_cookie(sock: socket.socket) -> int:
    return struct.unpack("Q", sock.getsockopt(socket.SOL_SOCKET, SO_COOKIE, 8))[0]


def host_addresses(proc_net: str = "/proc/net") -> list[str]:
    """This host's own addresses (wasmtop's network namespace), as /32 and /128 networks: the
    IPv4 ones are the kernel's local /32 routes (fib_trie), the IPv6 ones if_inet6's list."""
    found: dict[str, None] = {}
    try:
        with open(f"{proc_net}/fib_trie") as f:
            last = ""
            for line in f:
                text = line.strip()
                if text.startswith("|--"):
                    last = text[3:].strip()
                elif text == "/32 host LOCAL" and last:
                    with contextlib.suppress(ValueError):
                        found[f"{ipaddress.IPv4Address(last)}/32"] = None
    except OSError:
        pass
    try:
        with open(f"{proc_net}/if_inet6") as f:
            for line in f:
                raw = line.split()[0] if line.strip() else ""
                with contextlib.suppress(ValueError):
                    found[f"{ipaddress.IPv6Address(bytes.fromhex(raw))}/128"] = None
    except OSError:
        pass
    return list(found)


def lpm_key(net: str) -> tuple[int, bytes]:
    """(prefix length, 16 address bytes) of a network in the probe's IPv6 form."""
    n = ipaddress.ip_network(net, strict=False)
    if n.version == 4:
        return n.prefixlen + 96, ipaddress.IPv6Address(f"::ffff:{n.network_address}").packed
    return n.prefixlen, n.network_address.packed


def fionread(sock: socket.socket) -> int:
    """Bytes waiting to be read on a socket (FIONREAD), redirected ones included."""
    return struct.unpack("i", fcntl.ioctl(sock, termios.FIONREAD, b"\0" * 4))[0]


def recv_exact(sock: socket.socket, n: int) -> bytes:
    chunks, got = [], 0
    while got < n:
        chunk = sock.recv(min(1 << 20, n - got))
        if not chunk:
            break
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def redirected_delivery(cli: socket.socket, peer: socket.socket) -> str | None:
    """Send 1,000 bytes from ``cli``, which a redirect delivers to ``peer``'s ingress queue:
    None when epoll wakes, FIONREAD counts them and they arrive unaltered, else which did not
    (in the words doctor's ``sockmap_ingress`` and the self-test both report)."""
    payload = os.urandom(1000)
    cli.sendall(payload)
    ep = select.epoll()
    try:
        ep.register(peer.fileno(), select.EPOLLIN)
        if not ep.poll(2.0):
            return "epoll reported no readiness for a redirected message"
    finally:
        ep.close()
    pending = fionread(peer)
    if pending != len(payload):
        return f"FIONREAD reported {pending} of {len(payload)} redirected bytes pending"
    if recv_exact(peer, len(payload)) != payload:
        return "a redirected message arrived altered"
    return None


def accelerate_self_test(probe: SockBypassProbe) -> str | None:
    """Check, on a loopback pair, the side effects other bypass agents had: FIONREAD missing
    redirected bytes, epoll not waking, large transfers corrupted. None = passed, else why not."""
    srv = socket.create_server(("127.0.0.1", 0))
    probe.enrol_only_port(srv.getsockname()[1])
    cli = socket.create_connection(srv.getsockname(), timeout=5)
    peer, _ = srv.accept()
    peer.settimeout(5)
    try:
        probe.ignore_cookies({socket_cookie(cli), socket_cookie(peer)})
        conn = probe.conn(socket_cookie(cli))
        if conn is None or not conn.enrolled:
            why = conn.fallback_reason if conn else "no connection record"
            return f"a loopback connection was not enrolled in the bypass map ({why})"
        failure = redirected_delivery(cli, peer)
        if failure is not None:
            return failure
        conn = probe.conn(socket_cookie(cli))
        if conn is None or conn.msgs_redirected == 0:
            return "sendmsg on an enrolled socket was not redirected"
        # A large transfer both ways at once: 8 MiB each, compared by digest.
        big = {s: os.urandom(8 << 20) for s in (cli, peer)}
        got: dict[socket.socket, str] = {}

        def receive(sock: socket.socket, n: int) -> None:
            got[sock] = hashlib.sha256(recv_exact(sock, n)).hexdigest()

        readers = [threading.Thread(target=receive, args=(s, 8 << 20)) for s in (cli, peer)]
        writers = [threading.Thread(target=s.sendall, args=(big[s],)) for s in (cli, peer)]
        for t in readers + writers:
            t.start()
        for t in readers + writers:
            t.join(30)
        if any(t.is_alive() for t in readers + writers):
            return "a large redirected transfer stalled"
        for sender, receiver in ((cli, peer), (peer, cli)):
            if got.get(receiver) != hashlib.sha256(big[sender]).hexdigest():
                return "a large redirected transfer arrived altered"
        return None
    finally:
        for s in (cli, peer, srv):
            s.close()


class SockBypassProbe(Probe):
    name = "sockbypass"
    ringbuffers = (("bypass_events", "bypass_event"),)
    counters = (
        "FALLBACK_MAP_FULL", "FALLBACK_PEER_MISSING", "FALLBACK_DATA_BEFORE_ENROL",
        "FALLBACK_ENROL_FAILED", "MSG_UNTRACKED",
    )  # fmt: skip

    def __init__(
        self,
        *,
        mode: str = OBSERVE,
        cgroup: str | None = None,
        local_cidrs: Sequence[str] = (),
        include_host_addresses: bool = True,
        max_conns: int = DEFAULT_MAX_CONNS,
        max_bypass: int = DEFAULT_MAX_BYPASS,
        ringbuf_pages: int = DEFAULT_RINGBUF_PAGES,
        self_test: Callable[[SockBypassProbe], str | None] = accelerate_self_test,
    ) -> None:
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"bypass mode must be one of {', '.join(MODES)}, not {mode!r}")
        if ringbuf_pages < 1 or ringbuf_pages & (ringbuf_pages - 1):
            raise ValueError("ringbuf_pages must be a power of two")
        for net in local_cidrs:
            ipaddress.ip_network(net, strict=False)  # ValueError names the bad one
        self.requested_mode = mode
        self.mode = OBSERVE
        self.mode_reason = "observe mode (default): nothing is redirected"
        self.cgroup = cgroup
        self.local_cidrs = tuple(local_cidrs)
        self.include_host_addresses = include_host_addresses
        self.max_conns = max_conns
        self.max_bypass = max_bypass
        self.ringbuf_pages = ringbuf_pages
        self.self_test = self_test
        self.local_nets: list[str] = []
        self.local_nets_skipped = 0  # networks the table had no room for
        self.other_programs: list[bpfobj.Program] = []
        self.other_programs_reason = "not checked"
        self._foreign: dict[str, str] = {"status": "unavailable", "reason": "not checked"}
        self._foreign_check: threading.Thread | None = None
        self._links: list[int] = []
        self._skmsg: tuple[Any, int] | None = None
        self._ignored: set[int] = set()

    # -- compiled in ----------------------------------------------------------------------
    @functools.cached_property
    def foreign_kprobe(self) -> bool:
        """Other agents' redirects are counted by a kprobe (the kernel has kprobes); asked
        once, when the program is compiled, not when the probe is built."""
        return features.check_kprobes().ok

    @functools.cached_property
    def foreign_bytes_arg(self) -> int:
        """The argument of tcp_bpf_sendmsg_redir that holds the bytes, from the kernel's BTF
        (its signature changed): 0 when it cannot be told, and only messages are counted."""
        arity = btf.kernel_function_arity(FOREIGN_REDIRECT_FN) if self.foreign_kprobe else None
        return {5: 4, 4: 3}.get(arity or 0, 0)

    def defines(self) -> dict[str, int | str]:
        flags: dict[str, int | str] = {
            "MAX_CONNS": self.max_conns,
            "MAX_BYPASS": self.max_bypass,
            # Room for every network known now (a kube-proxy IPVS node holds one local address
            # per Service) and as many again that appear later; 1024 at least.
            "MAX_NETS": max(1024, 2 * len(self._wanted_nets())),
            "RINGBUF_PAGES": self.ringbuf_pages,
            "ACCELERATE": int(self.requested_mode == ACCELERATE),
            "SOCKOPS_PID": int(features.sockops_pid()),
            "FOREIGN_KPROBE": int(self.foreign_kprobe),
            "FOREIGN_BYTES_ARG": self.foreign_bytes_arg,
            "MAX_FOREIGN_PROCS": MAX_FOREIGN_PROCS,
            "AF_INET": socket.AF_INET,
            "AF_INET6": socket.AF_INET6,
            "IPPROTO_TCP": socket.IPPROTO_TCP,
            "E2BIG": errno.E2BIG,
            "ENOMEM": errno.ENOMEM,
        }
        flags.update({f"REASON_{r.upper()}": i for i, r in FALLBACK_REASONS.items()})
        flags.update({f"KIND_{k}": v for k, v in KINDS.items()})
        flags["MODE_SELF_TEST"] = MODE_SELF_TEST
        return flags

    def check_kernel(self) -> None:
        super().check_kernel()
        if self.cgroup_path() is None:
            raise ProbeUnavailable("no cgroup v2 mount in /proc/mounts (sockops attaches there)")

    def cgroup_path(self) -> Path | None:
        root = features.cgroup2_mount()
        if root is None or not self.cgroup:
            return root
        return features.cgroup_dir(self.cgroup, root)

    def required_maps(self) -> list[str]:
        return [*super().required_maps(), "conns", "conn_cookie", "local_nets", "mode",
                "connect_pid"]  # fmt: skip

    # -- attach / detach ------------------------------------------------------------------
    def attach(self) -> None:
        # Before loading ours: everything of these types now loaded belongs to someone else.
        try:
            self.other_programs = bpfobj.programs(SOCKET_PROG_TYPES)
            self.other_programs_reason = ""
        except bpfobj.BpfError as exc:  # EPERM: listing programs needs CAP_SYS_ADMIN
            self.other_programs = []
            self.other_programs_reason = (
                f"not listed: BPF_PROG_GET_NEXT_ID: {exc.strerror} (needs CAP_SYS_ADMIN)"
            )
        self._fill_local_nets()
        self._set_mode(MODE_OFF)  # accelerate allows enrolment once its self-test has passed
        ops = self.bpf.load_func(b"wasmtop_sockops", loader.PROG_SOCK_OPS)
        path = self.cgroup_path()
        cg = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            self._links.append(bpfobj.link_create(ops.fd, cg, bpfobj.ATTACH_CGROUP_SOCK_OPS))
        except bpfobj.BpfError as exc:
            hint = " (another program holds this hook without multi-attach)" if (
                exc.errno == errno.EPERM) else ""  # fmt: skip
            raise RuntimeError(f"attaching sockops to {path}: {exc.strerror}{hint}") from None
        finally:
            os.close(cg)
        if self.requested_mode == ACCELERATE:
            msg = self.bpf.load_func(b"wasmtop_sk_msg", loader.PROG_SK_MSG)
            map_fd = self.table("sock_hash").map_fd
            self.bpf.attach_func(msg, map_fd, bpfobj.ATTACH_SK_MSG_VERDICT)
            self._skmsg = (msg, map_fd)
        if self.foreign_kprobe:
            self._count_foreign()
        else:
            # Why other agents' redirects cannot be counted here: a compiler child's answer on
            # a cold cache (about 0.3 s of a CPU), found out beside the start, not before it.
            self._foreign_check = threading.Thread(
                target=self._check_foreign, name="foreign-redirects", daemon=True
            )
            self._foreign_check.start()
        if self.requested_mode == ACCELERATE:
            self._accelerate()

    def _count_foreign(self) -> None:
        try:
            self.bpf.attach_kprobe(FOREIGN_REDIRECT_FN, b"wasmtop_foreign_redirect")
        except (OSError, KeyError, bpfobj.BpfError, RuntimeError) as exc:  # symbol, verifier
            why = getattr(exc, "strerror", None) or str(exc)
            self._foreign = {
                "status": "unavailable",
                "reason": f"kprobe on {FOREIGN_REDIRECT_FN}: {why}",
            }
            return
        how = "" if self.foreign_bytes_arg else " (messages only: its bytes argument unknown)"
        self._foreign = {"status": OK, "reason": f"kprobe on {FOREIGN_REDIRECT_FN}{how}"}

    def foreign_counts(self) -> dict[int, tuple[int, int]]:
        """Other agents' redirects since wasmtop attached: sending pid -> (messages, bytes);
        empty where they are not counted (``foreign_redirects`` says why)."""
        if self._foreign.get("status") != OK or self.bpf is None:
            return {}
        return {k.value: (v.msgs, v.bytes) for k, v in self.table("foreign_redirects").items()}

    def _check_foreign(self) -> None:
        try:
            self._foreign = self._foreign_redirects()
        except Exception as exc:  # the check failing is an answer too
            self._foreign = {"status": "unavailable", "reason": f"check failed: {exc}"}

    @property
    def foreign_redirects(self) -> dict[str, Any]:
        """Counting other agents' redirects: ``status`` and ``reason`` (waits for the check
        started at attach), and where counted, ``msgs`` and ``bytes`` in all and ``by_pid``
        (sending process -> [messages, bytes], at most MAX_FOREIGN_PROCS of them)."""
        if self._foreign_check is not None:
            self._foreign_check.join(60)
        out: dict[str, Any] = dict(self._foreign)
        if out.get("status") == OK:
            counts = self.foreign_counts()
            known = bool(self.foreign_bytes_arg)  # else bytes are not counted: null
            out["msgs"] = sum(m for m, _ in counts.values())
            out["bytes"] = sum(b for _, b in counts.values()) if known else None
            out["by_pid"] = {
                str(pid): [m, b if known else None] for pid, (m, b) in sorted(counts.items())
            }
        return out

    def _set_mode(self, value: int, port: int = 0) -> None:
        """Set the kernel's enrolment flag (MODE_*), and the self-test's port with it."""
        table = self.table("mode")
        table[ctypes.c_int(1)] = ctypes.c_uint32(port)
        table[ctypes.c_int(0)] = ctypes.c_uint32(value)

    def enrol_only_port(self, port: int) -> None:
        """While the self-test runs: enrol only loopback connections to or from ``port``
        (its own), never a user's socket, which could not be taken out again if it failed."""
        self._set_mode(MODE_SELF_TEST, port)

    def _accelerate(self) -> None:
        try:
            failure = self.self_test(self)
        except Exception as exc:  # the test itself broke: that is a failure too
            failure = f"self-test error: {exc}"
        if failure is None:
            self._set_mode(MODE_ON)
            self.mode = ACCELERATE
            self.mode_reason = "accelerate: self-test passed (FIONREAD, epoll, 2x8 MiB transfer)"
            return
        self._detach_skmsg()
        self.mode = OBSERVE
        self.mode_reason = f"accelerate refused: {failure}; observing only"

    def _wanted_nets(self) -> list[str]:
        """The networks whose addresses are local: loopback, the configured CIDRs, and this
        host's own addresses (read afresh each call), each once."""
        nets = list(LOOPBACK_NETS) + list(self.local_cidrs)
        if self.include_host_addresses:
            nets += host_addresses()
        return list(dict.fromkeys(nets))

    def _fill_local_nets(self) -> None:
        table = self.table("local_nets")
        self.local_nets = []
        for net in self._wanted_nets():
            prefixlen, addr = lpm_key(net)
            key = table.Key(prefixlen, (ctypes.c_uint32 * 4).from_buffer_copy(addr))
            try:
                table[key] = ctypes.c_uint8(1)
            except Exception:  # full: addresses added since the compile; named in details
                self.local_nets_skipped += 1
                continue
            self.local_nets.append(net)

    def _detach_skmsg(self) -> None:
        """Stop redirecting, and leave enrolled sockets where they are.

        The mode flag turns the verdict into "pass" and stops enrolment at once. Sockets
        already in the map stay there until they close: taking one out would discard the
        redirected bytes its application has not read yet (the kernel purges the socket's
        ingress queue), and they read that queue before the stack's, so nothing is reordered.
        The map and the verdict program are freed by the kernel when the last of them closes.
        """
        if self._skmsg is not None and self.bpf is not None:
            with contextlib.suppress(Exception):
                self._set_mode(MODE_OFF)
            msg, map_fd = self._skmsg
            with contextlib.suppress(Exception):
                self.bpf.detach_func(msg, map_fd, bpfobj.ATTACH_SK_MSG_VERDICT)
        self._skmsg = None

    def detach(self) -> None:
        super().detach()
        if self._foreign.get("status") == OK and self.bpf is not None:
            with contextlib.suppress(Exception):  # the counts stay readable; nothing is counted
                self.bpf.detach_kprobe(FOREIGN_REDIRECT_FN)
        while self._links:
            os.close(self._links.pop())
        self._detach_skmsg()

    def _foreign_redirects(self) -> dict[str, str]:
        """Why other agents' redirects cannot be counted on a kernel without kprobes: they
        can only be seen on the kernel's redirect path (a kprobe on tcp_bpf_sendmsg_redir,
        which is what counts them where there are kprobes; fentry would also do)."""
        reasons = []
        fentry = fentry_feature()
        if fentry.ok:
            ok, why = fentry_check(FOREIGN_REDIRECT_FN)
            if ok:
                why = "loads, but the counting is built on a kprobe"
            reasons.append(f"fentry on {FOREIGN_REDIRECT_FN}: {why}")
        else:
            reasons.append(f"fentry: {fentry.reason}")
        kprobes = features.check_kprobes()
        reasons.append(f"kprobes: {kprobes.reason}" if not kprobes.ok else "kprobes: not tried")
        return {"status": "unavailable", "reason": "; ".join(reasons)}

    # -- reading --------------------------------------------------------------------------
    def ignore_cookies(self, cookies: set[int]) -> None:
        """Connections of wasmtop's own (the self-test): never reported."""
        self._ignored |= cookies

    def conn(self, cookie: int) -> ConnRecord | None:
        table = self.table("conns")
        try:
            value = table[table.Key(cookie)]
        except KeyError:
            return None
        return self._record(cookie, value)

    def redirecting_pairs(
        self,
    ) -> dict[tuple[tuple[str, int], tuple[str, int]], list[tuple[int, bool]]]:
        """(local, remote) of every connection end -> (its process, 0 when not known; whether
        its sends go socket to socket: enrolled, and at least one message redirected) of each
        end with those endpoints: two network namespaces can hold the same pair."""
        out: dict[tuple[tuple[str, int], tuple[str, int]], list[tuple[int, bool]]] = {}
        for v in self.table("conns").values():
            out.setdefault(self._endpoints(v.key), []).append(
                (v.pid, bool(v.enrolled and v.msgs_redirected))
            )
        return out

    @staticmethod
    def _endpoints(key: Any) -> tuple[tuple[str, int], tuple[str, int]]:
        return (
            (ip_text(bytes(key.local_ip)), key.local_port),
            (ip_text(bytes(key.remote_ip)), key.remote_port),
        )

    def _record(self, cookie: int, v: Any) -> ConnRecord:
        local, remote = self._endpoints(v.key)
        return ConnRecord(
            cookie=cookie,
            local=local,
            remote=remote,
            pid=v.pid,
            active=bool(v.active),
            eligible=bool(v.eligible),
            enrolled=bool(v.enrolled),
            fallback_reason=FALLBACK_REASONS.get(v.fallback_reason),
            srtt_us=v.srtt_us,
            established_ns=v.established_ns,
            closed_ns=v.closed_ns,
            msgs_redirected=v.msgs_redirected,
            bytes_redirected=v.bytes_redirected,
            msgs_passed=v.msgs_passed,
            bytes_passed=v.bytes_passed,
            msgs_failed=v.msgs_failed,
            bytes_failed=v.bytes_failed,
            stack_bytes=stack_payload(v.tcp_bytes_acked, bool(v.active), bool(v.fin_acked)),
            tcp_bytes_acked=v.tcp_bytes_acked,
            tcp_bytes_received=v.tcp_bytes_received,
        )

    def read(self) -> BypassReading:
        """Read every connection record (cumulative counters). A closed connection is reported
        once, then its entries are removed from the kernel maps."""
        self.drain()
        now = time.monotonic_ns()
        events = [e for e in self.take_events() if e.cookie not in self._ignored]
        conns_table = self.table("conns")
        conns: dict[int, ConnRecord] = {}
        for k, v in list(conns_table.items()):
            cookie = k.value
            if cookie not in self._ignored:
                conns[cookie] = self._record(cookie, v)
            if v.closed_ns:  # reported once, now
                with contextlib.suppress(KeyError):
                    del conns_table[k]
                self._ignored.discard(cookie)
        ctr = self.counter_values()
        fallbacks = {r: ctr.get(f"FALLBACK_{r.upper()}", 0) for r in FALLBACK_REASONS.values()}
        return BypassReading(
            ts_ns=now,
            mode=self.mode,
            conns=conns,
            events=events,
            fallbacks=fallbacks,
        )

    def summary(self) -> str:
        return self.mode

    def details(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "mode_reason": self.mode_reason,
            "local_nets": self.local_nets,
            "local_nets_skipped": self.local_nets_skipped,
            "other_programs": [
                {"id": p.id, "type": p.type, "name": p.name} for p in self.other_programs
            ],
            "other_programs_reason": self.other_programs_reason,
            "foreign_redirects": self.foreign_redirects,
        }
