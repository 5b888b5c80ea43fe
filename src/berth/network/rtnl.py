"""Route netlink for berth's few needs: pyroute2's message classes on a plain netlink socket.

pyroute2 is berth's netlink library, but ``import pyroute2`` runs its package ``__init__``, which
imports the whole library — IPRoute on asyncio, IPDB, NDB, conntrack, nftables, ethtool, wireless —
about 110 ms (``python -X importtime``), most of a bridge container's start-up cost. Even
``pyroute2.iproute.linux`` alone costs ~70 ms (asyncio, multiprocessing, unittest.mock). The message
classes (``ifinfmsg``, ``ifaddrmsg``, ``rtmsg``), which encode and decode every attribute, cost ~20 ms
when the package ``__init__`` is skipped: :func:`_light_import` registers the package module without
running it, and runs it on the first access to a name it defines (so ``from pyroute2 import IPRoute``
elsewhere in the same process still works). The socket side — send a request, read until the ack or
the end of a dump, turn NLMSG_ERROR into an exception — is the short class :class:`Rtnl`.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
import sys
from typing import Any

NETLINK_ROUTE = 0
NLM_F_REQUEST, NLM_F_MULTI, NLM_F_ACK = 0x1, 0x2, 0x4
NLM_F_DUMP = 0x300
NLM_F_EXCL, NLM_F_CREATE = 0x200, 0x400
NLMSG_ERROR, NLMSG_DONE = 2, 3
RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK = 16, 17, 18
RTM_NEWADDR, RTM_DELADDR, RTM_GETADDR = 20, 21, 22
RTM_NEWROUTE, RTM_GETROUTE = 24, 26
IFF_UP = 0x1
RT_TABLE_MAIN = 254
_HEADER = struct.Struct("=LHHLL")


class NetlinkError(OSError):
    """A request the kernel refused; ``code`` is the errno, as with pyroute2's own NetlinkError."""

    @property
    def code(self) -> int:
        return int(self.errno or 0)


def _light_import() -> None:
    """Make ``pyroute2`` importable without running its package ``__init__`` (see the module's docstring)."""
    if "pyroute2" in sys.modules:
        return
    from importlib.machinery import PathFinder

    spec = PathFinder.find_spec("pyroute2")
    if spec is None or spec.loader is None or not spec.submodule_search_locations:
        return  # not installed as a plain package: a normal import reports it
    import types

    package = types.ModuleType("pyroute2")
    package.__spec__ = spec
    package.__path__ = list(spec.submodule_search_locations)
    package.__file__ = spec.origin
    package.__package__ = "pyroute2"
    base = package.__path__[0]

    def __getattr__(name: str) -> Any:
        is_submodule = os.path.exists(os.path.join(base, name + ".py")) or os.path.isdir(os.path.join(base, name))
        if name.startswith("__") or is_submodule:
            raise AttributeError(name)  # a submodule: the import system loads it
        del package.__getattr__
        assert spec.loader is not None
        spec.loader.exec_module(package)  # the full library, for whoever asked for it
        return getattr(package, name)

    setattr(package, "__getattr__", __getattr__)  # noqa: B010 - PEP 562: the module's own __getattr__
    sys.modules["pyroute2"] = package


_light_import()
from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg  # noqa: E402
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg  # noqa: E402
from pyroute2.netlink.rtnl.rtmsg import rtmsg  # noqa: E402


class Rtnl:
    """One NETLINK_ROUTE socket in the namespace it was opened in; requests run one at a time."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_ROUTE)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        self.sock.bind((0, 0))
        self.seq = 0

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Rtnl:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(self, msg: Any, kind: int, flags: int = NLM_F_ACK) -> list[Any]:
        """Send ``msg`` as a ``kind`` request; the decoded answers (of a dump), or [] after an ack."""
        self.seq += 1
        msg["header"]["type"] = kind
        msg["header"]["flags"] = NLM_F_REQUEST | flags
        msg["header"]["sequence_number"] = self.seq
        msg.encode()
        self.sock.send(msg.data)
        cls = type(msg)
        out: list[Any] = []
        while True:
            data = self.sock.recv(1 << 20)
            offset = 0
            while offset < len(data):
                length, mtype, mflags, seq, _ = _HEADER.unpack_from(data, offset)
                if length < _HEADER.size:
                    raise NetlinkError(errno.EPROTO, "malformed netlink message")
                chunk = data[offset : offset + length]
                offset += (length + 3) & ~3
                if seq != self.seq:
                    continue
                if mtype == NLMSG_ERROR:
                    code = -struct.unpack_from("=i", chunk, _HEADER.size)[0]
                    if code:
                        raise NetlinkError(code, os.strerror(code))
                    return out
                if mtype == NLMSG_DONE:
                    return out
                answer = cls(chunk)
                answer.decode()
                out.append(answer)
                if not mflags & NLM_F_MULTI:
                    return out

    # -- links --------------------------------------------------------------------------------------

    def links(self) -> list[Any]:
        return self.request(ifinfmsg(), RTM_GETLINK, NLM_F_DUMP)

    def link(self, index: int) -> Any | None:
        msg = ifinfmsg()
        msg["index"] = index
        return self._get_link(msg)

    def link_named(self, name: str) -> Any | None:
        msg = ifinfmsg()
        msg["attrs"] = [("IFLA_IFNAME", name)]
        return self._get_link(msg)

    def index(self, name: str) -> int | None:
        found = self.link_named(name)
        return None if found is None else int(found["index"])

    def _get_link(self, msg: Any) -> Any | None:
        """The one link ``msg`` selects, or None when there is no such device."""
        try:
            found = self.request(msg, RTM_GETLINK, 0)
        except NetlinkError as e:
            if e.code == errno.ENODEV:
                return None
            raise
        return found[0] if found else None

    def add_link(self, name: str, kind: str, *, mtu: int, mac: str | None = None,
                 peer: dict[str, Any] | None = None) -> None:
        """A new link (``bridge``, or ``veth`` with ``peer`` = {ifname, net_ns_fd, address, mtu})."""
        msg = ifinfmsg()
        attrs: list[tuple[str, Any]] = [("IFLA_IFNAME", name), ("IFLA_MTU", mtu)]
        if mac:
            attrs.append(("IFLA_ADDRESS", mac))
        info: list[tuple[str, Any]] = [("IFLA_INFO_KIND", kind)]
        if peer is not None:
            peer_attrs = [("IFLA_IFNAME", peer["ifname"]), ("IFLA_MTU", peer["mtu"]),
                          ("IFLA_NET_NS_FD", peer["net_ns_fd"]), ("IFLA_ADDRESS", peer["address"])]
            info.append(("IFLA_INFO_DATA", {"attrs": [("VETH_INFO_PEER", {"attrs": peer_attrs})]}))
        attrs.append(("IFLA_LINKINFO", {"attrs": info}))
        msg["attrs"] = attrs
        self.request(msg, RTM_NEWLINK, NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL)

    def set_link(self, index: int, *, up: bool = False, master: int | None = None, alias: str | None = None,
                 hairpin: bool = False) -> None:
        """Change a link; ``hairpin`` (on a bridge port only) sends frames back out of the port they
        came in by."""
        msg = ifinfmsg()
        msg["index"] = index
        if up:
            msg["flags"] = msg["change"] = IFF_UP
        attrs: list[tuple[str, Any]] = []
        if master is not None:
            attrs.append(("IFLA_MASTER", master))
        if alias is not None:
            attrs.append(("IFLA_IFALIAS", alias))
        if hairpin:
            data = {"attrs": [("IFLA_BRPORT_MODE", 1)]}
            attrs.append(("IFLA_LINKINFO", {"attrs": [("IFLA_INFO_SLAVE_KIND", "bridge"),
                                                      ("IFLA_INFO_SLAVE_DATA", data)]}))
        msg["attrs"] = attrs
        self.request(msg, RTM_NEWLINK)

    def del_link(self, index: int) -> None:
        msg = ifinfmsg()
        msg["index"] = index
        self.request(msg, RTM_DELLINK)

    # -- addresses and routes -----------------------------------------------------------------------

    def addrs(self, index: int) -> list[tuple[str, int]]:
        """IPv4 (address, prefix length) pairs of a link."""
        msg = ifaddrmsg()
        msg["family"] = socket.AF_INET
        return [(a.get_attr("IFA_ADDRESS"), a["prefixlen"]) for a in self.request(msg, RTM_GETADDR, NLM_F_DUMP)
                if a["index"] == index]

    def addr(self, add: bool, index: int, address: str, prefixlen: int) -> None:
        msg = ifaddrmsg()
        msg["family"] = socket.AF_INET
        msg["prefixlen"] = prefixlen
        msg["index"] = index
        msg["attrs"] = [("IFA_LOCAL", address), ("IFA_ADDRESS", address)]
        if add:
            self.request(msg, RTM_NEWADDR, NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL)
        else:
            self.request(msg, RTM_DELADDR)

    def routes(self) -> list[Any]:
        """IPv4 routes of the main table."""
        msg = rtmsg()
        msg["family"] = socket.AF_INET
        return [r for r in self.request(msg, RTM_GETROUTE, NLM_F_DUMP)
                if (r.get_attr("RTA_TABLE") or r["table"]) == RT_TABLE_MAIN]

    def add_default_route(self, gateway: str, oif: int) -> None:
        msg = rtmsg()
        msg["family"] = socket.AF_INET
        msg["table"] = RT_TABLE_MAIN
        msg["proto"] = 3  # RTPROT_BOOT, as ip(8) and pyroute2 use for routes added by hand
        msg["scope"] = 0  # RT_SCOPE_UNIVERSE
        msg["type"] = 1  # RTN_UNICAST
        msg["attrs"] = [("RTA_GATEWAY", gateway), ("RTA_OIF", oif)]
        self.request(msg, RTM_NEWROUTE, NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL)
