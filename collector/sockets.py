"""Which process owns a TCP socket, for the connections the kernel could not name (an accepted
socket in observe mode: its handshake completes in softirq context). Read the way ``ss -p``
does: the socket's inode from /proc/net/tcp{,6}, the inode's holder from /proc/PID/fd."""

from __future__ import annotations

import ipaddress
import os
import time
from collections.abc import Iterable
from pathlib import Path

Endpoint = tuple[str, int]
MAX_SOCKETS = 16_384  # FdSockets: sockets whose endpoints are kept (by inode), fds followed


def _endpoint(hex_addr: str) -> Endpoint:
    """An address:port field of /proc/net/tcp{,6}: the address in host-order 32-bit words."""
    addr, port = hex_addr.split(":")
    raw = bytes.fromhex(addr)
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    ip = ipaddress.ip_address(words)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return str(ip), int(port, 16)


def parse_proc_net_tcp(text: str) -> dict[tuple[Endpoint, Endpoint], int]:
    """(local, remote) -> socket inode, for every line with an inode."""
    out = {}
    for line in text.splitlines()[1:]:
        f = line.split()
        if len(f) < 10:
            continue
        try:
            inode = int(f[9])
            pair = (_endpoint(f[1]), _endpoint(f[2]))
        except ValueError:
            continue
        if inode:
            out[pair] = inode
    return out


def _tcp_tables(net: Path) -> dict[tuple[Endpoint, Endpoint], int]:
    """(local, remote) -> inode of the TCP sockets of a /proc/net or /proc/PID/net."""
    out: dict[tuple[Endpoint, Endpoint], int] = {}
    for name in ("tcp", "tcp6"):
        try:
            out.update(parse_proc_net_tcp((net / name).read_text()))
        except (OSError, UnicodeDecodeError):
            continue
    return out


class SocketOwners:
    """Resolves (local, remote) endpoints to a pid. Results are cached; the /proc walk runs at
    most once per ``resolve`` call and only for pairs not yet known."""

    def __init__(self, proc_root: str | Path = "/proc") -> None:
        self.proc = Path(proc_root)
        self._known: dict[tuple[Endpoint, Endpoint], int] = {}
        self.walks = 0

    def _inodes(self) -> dict[tuple[Endpoint, Endpoint], int]:
        return _tcp_tables(self.proc / "net")

    def _holders(self, wanted: set[int]) -> dict[int, int]:
        found: dict[int, int] = {}
        try:
            pids = [e for e in os.listdir(self.proc) if e.isdigit()]
        except OSError:
            return found
        for pid in pids:
            fd_dir = self.proc / pid / "fd"
            try:
                fds = os.listdir(fd_dir)
            except OSError:
                continue  # exited, or not ours to read
            for fd in fds:
                try:
                    link = os.readlink(fd_dir / fd)
                except OSError:
                    continue
                inode = socket_inode(link)
                if inode is not None and inode in wanted and inode not in found:
                    found[inode] = int(pid)
            if len(found) == len(wanted):
                break
        return found

    def resolve(self, pairs: Iterable[tuple[Endpoint, Endpoint]]) -> dict[tuple, int]:
        pairs = set(pairs)
        missing = pairs - self._known.keys()
        if missing:
            self.walks += 1
            inodes = {p: i for p, i in self._inodes().items() if p in missing}
            holders = self._holders(set(inodes.values()))
            for pair in missing:
                # 0: looked for and not found (gone, or another namespace); not walked again.
                self._known[pair] = holders.get(inodes.get(pair, -1), 0)
        return {p: self._known[p] for p in pairs if self._known.get(p)}

    def forget(self, pairs: Iterable[tuple[Endpoint, Endpoint]]) -> None:
        for pair in pairs:
            self._known.pop(pair, None)


def socket_inode(link: str) -> int | None:
    """The inode of a /proc/PID/fd link to a socket (``socket:[12345]``), else None."""
    if link.startswith("socket:[") and link.endswith("]"):
        try:
            return int(link[8:-1])
        except ValueError:
            return None
    return None


class FdSockets:
    """The TCP connection a process's fd held when one of its requests was answered, and that
    connection's endpoints, read from /proc. Exact or not said:

    - An fd is followed from the first time it is asked about: the socket it holds (its inode)
      and since when (``since_ns``: CLOCK_MONOTONIC, taken just after that readlink). While
      later readlinks show the same inode, the fd has held that one socket all along (a closed
      socket never comes back), so a request that started at or after ``since_ns``, and was
      captured before this readlink, was on it. An earlier request (a connection's first
      ~0.1 s, or one closed before the collector read its request: one request per
      connection) gets None, not another connection's endpoints after the fd was reused.
    - Endpoints come from the process's own /proc/PID/net/tcp{,6}, so a pod in its own
      network namespace is told its own addresses; each namespace is read at most once per
      batch, what was read is kept by inode (unique across namespaces), and a socket that
      was not in the tables when they were read for it (a Unix socket) is not looked for again.

    Each structure holds at most MAX_SOCKETS entries and is emptied when full."""

    def __init__(self, proc_root: str | Path = "/proc") -> None:
        self.proc = Path(proc_root)
        self._root = str(self.proc)  # fds are read by string: a Path costs microseconds
        self._held: dict[tuple[int, int], tuple[int, int]] = {}  # (pid, fd) -> (inode, since)
        self._pair_by_inode: dict[int, tuple[Endpoint, Endpoint]] = {}
        self._absent: set[int] = set()  # inodes not in the tables read for them
        self._batch: dict[tuple[int, int], tuple[int, int] | None] = {}
        self._read_netns: set[int] = set()

    def begin_batch(self) -> None:
        """A new batch of requests: each fd is read again, once."""
        self._batch.clear()
        self._read_netns.clear()

    def connection(self, pid: int, fd: int, start_ns: int) -> tuple[Endpoint, Endpoint] | None:
        """(local, remote) of the TCP connection ``fd`` of ``pid`` held for a request that
        started at ``start_ns`` (CLOCK_MONOTONIC) and is already captured; None when that is
        not certain, or it is no TCP socket."""
        held = self._batch.get((pid, fd), False)
        if held is False:
            held = self._batch[pid, fd] = self._follow(pid, fd)
        if held is None or start_ns < held[1]:
            return None
        return self._endpoints(pid, held[0])

    def _follow(self, pid: int, fd: int) -> tuple[int, int] | None:
        try:
            inode = socket_inode(os.readlink(f"{self._root}/{pid}/fd/{fd}"))
        except OSError:
            inode = None
        now = time.monotonic_ns()  # after the readlink: the fd held it at or before this
        if inode is None:
            self._held.pop((pid, fd), None)
            return None
        held = self._held.get((pid, fd))
        if held is None or held[0] != inode:
            if len(self._held) >= MAX_SOCKETS:
                self._held.clear()
            held = self._held[pid, fd] = (inode, now)
        return held

    def _endpoints(self, pid: int, inode: int) -> tuple[Endpoint, Endpoint] | None:
        pair = self._pair_by_inode.get(inode)
        if pair is not None or inode in self._absent:
            return pair
        try:
            netns = os.stat(self.proc / str(pid) / "ns" / "net").st_ino
        except OSError:
            return None
        if netns in self._read_netns:  # read this batch: the socket may be newer than that
            return None
        self._read_netns.add(netns)
        found = {i: p for p, i in _tcp_tables(self.proc / str(pid) / "net").items()}
        pair = found.get(inode)
        if len(self._pair_by_inode) + len(found) > MAX_SOCKETS:
            self._pair_by_inode.clear()
            if len(found) > MAX_SOCKETS:  # a namespace larger than the bound: the one asked
                found = {inode: pair} if pair is not None else {}
        self._pair_by_inode.update(found)
        if pair is None:
            if len(self._absent) >= MAX_SOCKETS:
                self._absent.clear()
            self._absent.add(inode)
        return pair
