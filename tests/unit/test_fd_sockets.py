"""Which connection a process's fd held for a request (collector/sockets.py FdSockets), on a
fixture /proc: exact, or not said; each namespace's own tables; bounded."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from wasmtop.collector import sockets
from wasmtop.collector.sockets import FdSockets, socket_inode

HEADER = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"  # noqa: E501


def tcp_line(local: str, remote: str, inode: int) -> str:
    return f"   0: {local} {remote} 01 00000000:00000000 00:00000000 00000000     0        0 {inode} 1 0\n"  # noqa: E501


class FakeProc:
    """/proc/PID/fd/FD links, /proc/PID/ns/net (a file per namespace), /proc/PID/net/tcp{,6}."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "ns").mkdir(parents=True)

    def process(self, pid: int, netns: str, tcp: str = "", tcp6: str = "") -> None:
        d = self.root / str(pid)
        (d / "fd").mkdir(parents=True)
        (d / "ns").mkdir()
        (d / "net").mkdir()
        ns = self.root / "ns" / netns
        ns.touch()
        os.link(ns, d / "ns" / "net")  # the same inode for every process of a namespace
        (d / "net" / "tcp").write_text(HEADER + tcp)
        (d / "net" / "tcp6").write_text(HEADER + tcp6)

    def fd(self, pid: int, fd: int, target: str) -> None:
        link = self.root / str(pid) / "fd" / str(fd)
        if link.is_symlink():
            link.unlink()
        link.symlink_to(target)


@pytest.fixture
def proc(tmp_path):
    return FakeProc(tmp_path / "proc")


def test_a_followed_fd_gives_exact_endpoints_and_its_first_requests_none(proc):
    # 127.0.0.1:8080 <- 127.0.0.1:40000, inode 4242
    proc.process(10, "a", tcp=tcp_line("0100007F:1F90", "0100007F:9C40", 4242))
    proc.fd(10, 5, "socket:[4242]")
    book = FdSockets(proc.root)
    book.begin_batch()
    # A request that started before the fd was first followed: not certain, not said.
    assert book.connection(10, 5, 0) is None
    since = book._held[10, 5][1]
    book.begin_batch()
    assert book.connection(10, 5, since) == (("127.0.0.1", 8080), ("127.0.0.1", 40000))
    assert book.connection(10, 5, since - 1) is None  # still: it began before


def test_a_reused_fd_never_lends_the_new_connections_endpoints_to_an_old_request(proc):
    proc.process(10, "a", tcp=tcp_line("0100007F:1F90", "0100007F:9C40", 4242)
                 + tcp_line("0100007F:1F90", "0100007F:9C41", 4343))  # fmt: skip
    proc.fd(10, 5, "socket:[4242]")
    book = FdSockets(proc.root)
    book.begin_batch()
    book.connection(10, 5, 0)
    first_since = book._held[10, 5][1]
    proc.fd(10, 5, "socket:[4343]")  # closed, and the next accept took the same fd
    book.begin_batch()
    # A request that started while the fd still held 4242 (after it was followed) was
    # captured, but the fd now holds 4343: not said, rather than 4343's endpoints.
    assert book.connection(10, 5, first_since + 1) is None
    book.begin_batch()
    assert book.connection(10, 5, book._held[10, 5][1]) == (
        ("127.0.0.1", 8080), ("127.0.0.1", 40001))  # fmt: skip


def test_each_process_is_told_the_endpoints_of_its_own_network_namespace(proc):
    # The same inode numbers cannot repeat across namespaces; the same pair can.
    proc.process(10, "host", tcp=tcp_line("0100007F:1F90", "0100007F:9C40", 11))
    proc.process(20, "pod", tcp=tcp_line("0207D50A:1F90", "0107D50A:9C40", 22))
    proc.process(21, "pod", tcp6=tcp_line("0000000000000000FFFF00000307D50A:0050",
                                          "0000000000000000FFFF00000107D50A:A000", 23))  # fmt: skip
    for pid, inode in ((10, 11), (20, 22), (21, 23)):
        proc.fd(pid, 3, f"socket:[{inode}]")
    book = FdSockets(proc.root)
    for _ in range(2):
        book.begin_batch()
        got = {pid: book.connection(pid, 3, 10**18) for pid in (10, 20, 21)}
    assert got == {
        10: (("127.0.0.1", 8080), ("127.0.0.1", 40000)),
        20: (("10.213.7.2", 8080), ("10.213.7.1", 40000)),
        21: (("10.213.7.3", 80), ("10.213.7.1", 40960)),  # IPv4-mapped in tcp6
    }


def test_tables_are_read_once_per_namespace_and_batch_and_a_unix_socket_once(proc, monkeypatch):
    proc.process(10, "a", tcp=tcp_line("0100007F:1F90", "0100007F:9C40", 4242))
    proc.process(11, "a")
    proc.fd(10, 5, "socket:[4242]")
    proc.fd(10, 6, "socket:[999]")  # a Unix socket: in no TCP table
    proc.fd(11, 7, "socket:[5000]")  # a socket newer than this batch's read
    reads = []
    real = sockets._tcp_tables
    monkeypatch.setattr(sockets, "_tcp_tables", lambda net: reads.append(net) or real(net))
    book = FdSockets(proc.root)
    per_batch = []
    for _ in range(5):
        book.begin_batch()
        before = len(reads)
        for pid, fd in ((10, 5), (10, 6), (11, 7)):
            book.connection(pid, fd, 10**18)
        per_batch.append(len(reads) - before)
    # At most one read of namespace a per batch, for the first socket not known: 4242 (found),
    # then 999 (absent), then 5000 (absent); none after.
    assert per_batch == [1, 1, 1, 0, 0]
    assert {999, 5000} <= book._absent and 4242 in book._pair_by_inode


def test_links_that_are_no_socket_or_do_not_parse_are_none(proc):
    proc.process(10, "a")
    proc.fd(10, 1, "/dev/null")
    proc.fd(10, 2, "socket:[abc]")
    proc.fd(10, 3, "socket:[12")
    book = FdSockets(proc.root)
    book.begin_batch()
    assert [book.connection(10, fd, 10**18) for fd in (1, 2, 3, 4)] == [None] * 4
    assert [socket_inode(x) for x in ("socket:[7]", "socket:[]", "pipe:[7]")] == [7, None, None]


def test_every_structure_is_bounded(proc, monkeypatch):
    monkeypatch.setattr(sockets, "MAX_SOCKETS", 4)
    lines = "".join(tcp_line("0100007F:1F90", f"0100007F:{40000 + i:04X}", 100 + i)
                    for i in range(10))  # fmt: skip
    proc.process(10, "a", tcp=lines)
    for fd in range(10):
        proc.fd(10, fd, f"socket:[{100 + fd}]")
        proc.fd(10, 100 + fd, f"socket:[{900 + fd}]")  # absent ones
    book = FdSockets(proc.root)
    for _ in range(3):
        book.begin_batch()
        for fd in (*range(10), *range(100, 110)):
            book.connection(10, fd, 10**18)
            assert len(book._held) <= 4
            assert len(book._pair_by_inode) <= 4
            assert len(book._absent) <= 4
