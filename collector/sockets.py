"""Which process owns a TCP socket, for the connections the kernel could not name (an accepted
socket in observe mode: its handshake completes in softirq context). Read the way ``ss -p``
does: the socket's inode from /proc/net/tcp{,6}, the inode's holder from /proc/PID/fd."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Iterable
from pathlib import Path

Endpoint = tuple[str, int]
MAX_SOCKETS = 65_536  # sockets whose endpoints pair_of_fd keeps, by inode


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


class SocketOwners:
    """Resolves (local, remote) endpoints to a pid. Results are cached; the /proc walk runs at
    most once per ``resolve`` call and only for pairs not yet known."""

    def __init__(self, proc_root: str | Path = "/proc") -> None:
        self.proc = Path(proc_root)
        self._known: dict[tuple[Endpoint, Endpoint], int] = {}
        self._pair_by_inode: dict[int, tuple[Endpoint, Endpoint]] = {}
        self.walks = 0

    def _inodes(self, net: Path | None = None) -> dict[tuple[Endpoint, Endpoint], int]:
        """(local, remote) -> inode of the TCP sockets in ``net`` (a /proc/PID/net; default
        wasmtop's own namespace)."""
        out: dict[tuple[Endpoint, Endpoint], int] = {}
        for name in ("tcp", "tcp6"):
            try:
                out.update(parse_proc_net_tcp(((net or self.proc / "net") / name).read_text()))
            except OSError:
                continue
        return out

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
                if link.startswith("socket:["):
                    inode = int(link[8:-1])
                    if inode in wanted and inode not in found:
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

    def pair_of_fd(self, pid: int, fd: int) -> tuple[Endpoint, Endpoint] | None:
        """(local, remote) of the TCP socket a process holds as ``fd``, as its own network
        namespace names them (a pod's addresses, not the node's); None when the fd is closed,
        not a TCP socket, or its process's tables cannot be read. A socket not seen before
        re-reads that process's /proc/PID/net/tcp{,6}; what was read is kept, by socket inode
        (unique across namespaces), at most MAX_SOCKETS of them (emptied when full)."""
        try:
            link = os.readlink(self.proc / str(pid) / "fd" / str(fd))
        except OSError:
            return None
        if not link.startswith("socket:["):
            return None
        inode = int(link[8:-1])
        pair = self._pair_by_inode.get(inode)
        if pair is None:
            found = {i: p for p, i in self._inodes(self.proc / str(pid) / "net").items()}
            if len(self._pair_by_inode) + len(found) > MAX_SOCKETS:
                self._pair_by_inode = {}
            self._pair_by_inode.update(found)
            pair = found.get(inode)
        return pair

    def forget(self, pairs: Iterable[tuple[Endpoint, Endpoint]]) -> None:
        for pair in pairs:
            self._known.pop(pair, None)
