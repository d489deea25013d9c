"""The socket-bypass probe's own addresses, read from /proc/net without a netlink library."""

from __future__ import annotations

import ipaddress
from pathlib import Path

from wasmtop.probes.sockbypass import host_addresses

FIB_TRIE = """Main:
  +-- 0.0.0.0/0 3 0 5
     |-- 0.0.0.0
        /0 universe UNICAST
     +-- 127.0.0.0/8 2 0 2
        +-- 127.0.0.0/31 1 0 0
           |-- 127.0.0.0
              /8 host LOCAL
           |-- 127.0.0.1
              /32 host LOCAL
     |-- 10.1.2.3
        /32 host LOCAL
     |-- 10.1.2.255
        /32 link BROADCAST
     |-- not-an-address
        /32 host LOCAL
Local:
  +-- 0.0.0.0/0 3 0 5
     |-- 10.1.2.3
        /32 host LOCAL
"""
IF_INET6 = """00000000000000000000000000000001 01 80 10 80       lo
fd000000000000000000000000000002 04 40 00 82     eth0
zz
"""


def test_local_routes_and_inet6_addresses_each_once(tmp_path: Path) -> None:
    (tmp_path / "fib_trie").write_text(FIB_TRIE)
    (tmp_path / "if_inet6").write_text(IF_INET6)
    assert host_addresses(str(tmp_path)) == [
        "127.0.0.1/32",
        "10.1.2.3/32",
        "::1/128",
        "fd00::2/128",
    ]


def test_missing_files_give_no_addresses(tmp_path: Path) -> None:
    assert host_addresses(str(tmp_path)) == []


def test_agrees_with_netlink_on_this_host() -> None:
    """The same set as RTM_GETADDR answers (pyroute2, the netlink library the tests use)."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        netlink = {
            str(ipaddress.ip_network(msg.get_attr("IFA_LOCAL") or msg.get_attr("IFA_ADDRESS")))
            for msg in ipr.get_addr()
        }
    assert set(host_addresses()) == {str(ipaddress.ip_network(n)) for n in netlink}
