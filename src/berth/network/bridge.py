"""Bridges and veth pairs through netlink (pyroute2), in the caller's network namespace.

One Linux bridge per network holds the gateway address; each container joins with a veth pair whose
host end is a port of the bridge and whose other end is *created directly inside* the container's
network namespace under its final name (``eth0``), so no interface ever exists half-moved under a
temporary name. Everything berth creates carries an interface alias (``berth:net:NAME`` on bridges,
``berth:ctr:ID:BRIDGE`` on veths) and a name derived from the network or the container, so leftovers
after a crash can be enumerated and removed exactly (see ``leaks.py``).

Configuring the container's end needs a netlink socket *in* its namespace. pyroute2's own ``netns=``
support forks a helper process per socket; instead the calling thread enters the namespace with
setns(2) just long enough to open the socket (a netlink socket stays bound to the namespace it was
created in) and returns at once: about a millisecond, and other threads are unaffected.

Netlink goes through ``rtnl`` (pyroute2's message classes without the rest of the library, ~20 ms
instead of ~110 ms to import), loaded on first use, which ``--network none`` and ``host`` never pay.
"""

from __future__ import annotations

import errno
import os
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from ipaddress import IPv4Address, IPv4Network
from typing import TYPE_CHECKING

from berth.errors import Conflict, InvalidArgument, NotFound
from berth.kernel.syscalls import CLONE_NEWNET, setns
from berth.network.ipam import Network, mac_for
from berth.record import record

if TYPE_CHECKING:
    from berth.network.rtnl import Rtnl

NETNS = str | int  # a path (/run/netns/x, /proc/PID/ns/net) or a pid
ALIAS_NET = "berth:net:"
ALIAS_CTR = "berth:ctr:"
VETH_PREFIX = "bv"


@record(frozen=True)
class Link:
    """An interface berth made, as enumeration finds it."""

    name: str
    kind: str
    alias: str
    master: str | None = None

    @property
    def container_id(self) -> str | None:
        if self.alias.startswith(ALIAS_CTR):
            return self.alias[len(ALIAS_CTR) :].rsplit(":", 1)[0]
        return None

    @property
    def network(self) -> str | None:
        return self.alias[len(ALIAS_NET) :] if self.alias.startswith(ALIAS_NET) else None


def iproute() -> Rtnl:
    from berth.network.rtnl import Rtnl

    return Rtnl()


def _netlink_errno(exc: BaseException) -> int | None:
    code = getattr(exc, "code", None)
    return code if isinstance(code, int) else None


def _netns_path(netns: NETNS) -> str:
    if isinstance(netns, int):
        return f"/proc/{netns}/ns/net"
    return netns


@contextmanager
def netns_iproute(netns: NETNS) -> Iterator[Rtnl]:
    """A netlink socket that lives in ``netns``; the calling thread is back home when it is yielded."""
    path = _netns_path(netns)
    try:
        target = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NotFound(f"network namespace {path} does not exist") from None
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        from berth.network.rtnl import Rtnl

        setns(target, CLONE_NEWNET)
        try:
            ipr = Rtnl()
        finally:
            setns(home, CLONE_NEWNET)
    finally:
        os.close(home)
        os.close(target)
    try:
        yield ipr
    finally:
        ipr.close()


def veth_name(container_id: str, network: Network) -> str:
    """Host end of a container's veth on a network: ``bv`` + 9 characters of the container id + 4 of a
    hash of the bridge name, 15 characters in all (IFNAMSIZ); the alias carries the full id."""
    tag = f"{zlib.crc32(network.bridge.encode()) & 0xFFFF:04x}"
    return f"{VETH_PREFIX}{container_id[:9]}{tag}"


def _write_sysctl(path: str, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def _sysctl(path: str) -> str:
    with open(path) as f:
        return f.read().strip()


def ensure_bridge(network: Network) -> int:
    """Create the network's bridge if missing (idempotent), with exactly the gateway address, up.

    The bridge gets a fixed MAC (derived from the gateway address) because a bridge otherwise takes the
    lowest MAC of its ports and changes it as containers come and go, which breaks containers' ARP
    caches. ``route_localnet`` lets DNAT'd traffic from 127.0.0.1 leave through it (see ``nat.py``);
    forwarding is switched on for networks that have an outbound route.
    """
    with iproute() as ipr:
        link = ipr.link_named(network.bridge)
        if link is None:
            try:
                ipr.add_link(network.bridge, "bridge", mac=mac_for(network.gateway), mtu=network.mtu)
            except Exception as e:
                if _netlink_errno(e) != errno.EEXIST:
                    raise
            link = ipr.link_named(network.bridge)
            if link is None:
                raise Conflict(f"bridge {network.bridge} vanished while being created")
        index = int(link["index"])
        info = link.get_attr("IFLA_LINKINFO")
        if info is None or info.get_attr("IFLA_INFO_KIND") != "bridge":
            raise Conflict(f"interface {network.bridge} exists and is not a bridge")
        alias = f"{ALIAS_NET}{network.name}"
        if link.get_attr("IFLA_IFALIAS") != alias:
            ipr.set_link(index, alias=alias)
        want = (str(network.gateway), network.prefixlen)
        have = ipr.addrs(index)
        for addr, plen in have:
            if (addr, plen) != want:
                ipr.addr(False, index, addr, plen)
        if want not in have:
            ipr.addr(True, index, want[0], want[1])
        if not link["flags"] & 1:  # IFF_UP
            ipr.set_link(index, up=True)
    _write_sysctl(f"/proc/sys/net/ipv4/conf/{network.bridge}/route_localnet", "1")
    if not network.internal and _sysctl("/proc/sys/net/ipv4/ip_forward") != "1":
        _write_sysctl("/proc/sys/net/ipv4/ip_forward", "1")
    return index


def delete_bridge(network_or_bridge: Network | str) -> bool:
    """Delete the bridge (its ports with it); False when it was not there."""
    name = network_or_bridge if isinstance(network_or_bridge, str) else network_or_bridge.bridge
    with iproute() as ipr:
        return _delete(ipr, name)


def _delete(ipr: Rtnl, name: str) -> bool:
    index = ipr.index(name)
    if index is None:
        return False
    try:
        ipr.del_link(index)
    except Exception as e:
        if _netlink_errno(e) != errno.ENODEV:
            raise
        return False
    return True


def attach(
    netns: NETNS,
    network: Network,
    container_id: str,
    ip: IPv4Address | str,
    mac: str | None = None,
    ifname: str = "eth0",
    mtu: int | None = None,
) -> str:
    """Give the container in ``netns`` an interface ``ifname`` on ``network`` with address ``ip``.

    Brings the container's loopback up, sets MTU, MAC and address, and a default route through the
    gateway unless the network is internal or the container has one already (from the first network
    it joined). Returns the host end's name. On any failure the pair is
    deleted again, so a failed attach leaves nothing.
    """
    if not ifname or len(ifname) > 15 or "/" in ifname or ifname in (".", ".."):
        raise InvalidArgument(f"invalid interface name {ifname!r}")
    ip = IPv4Address(ip)
    if ip not in network.subnet:
        raise InvalidArgument(f"{ip} is not in subnet {network.subnet} of network {network.name}")
    mtu = mtu or network.mtu
    mac = mac or mac_for(ip)
    host = veth_name(container_id, network)
    path = _netns_path(netns)
    try:
        nsfd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NotFound(f"network namespace {path} does not exist") from None
    try:
        with iproute() as ipr:
            bridge = ipr.index(network.bridge)
            if bridge is None:
                raise NotFound(f"bridge {network.bridge} of network {network.name} does not exist")
            _delete(ipr, host)  # a leftover of a crashed attach of this same container
            try:
                peer = {"ifname": ifname, "net_ns_fd": nsfd, "address": mac, "mtu": mtu}
                ipr.add_link(host, "veth", mtu=mtu, peer=peer)
            except Exception as e:
                if _netlink_errno(e) == errno.EEXIST:
                    raise Conflict(f"the container already has an interface named {ifname}") from None
                raise
            try:
                index = ipr.index(host)
                assert index is not None
                ipr.set_link(index, master=bridge, alias=f"{ALIAS_CTR}{container_id}:{network.bridge}")
                # Hairpin: with br_netfilter loaded, a container's packet to its own published port is
                # DNAT'd while being bridged and must leave through the port it came in by.
                ipr.set_link(index, hairpin=True)
                ipr.set_link(index, up=True)
                with netns_iproute(path) as nsr:
                    lo = nsr.index("lo")
                    if lo is not None:
                        nsr.set_link(lo, up=True)
                    inner = nsr.index(ifname)
                    if inner is None:
                        raise NotFound(f"{ifname} did not appear in {path}")
                    nsr.addr(True, inner, str(ip), network.prefixlen)
                    nsr.set_link(inner, up=True)
                    if not network.internal:
                        try:
                            nsr.add_default_route(str(network.gateway), inner)
                        except Exception as e:
                            # On a second network the first one's default route stays, as with Docker.
                            if _netlink_errno(e) != errno.EEXIST:
                                raise
            except BaseException:
                _delete(ipr, host)
                raise
    finally:
        os.close(nsfd)
    return host


def detach(container_id: str, network: Network) -> bool:
    """Remove the container's veth on ``network`` (both ends go); False when it was already gone,
    as happens when the container's namespace died first and the kernel took the pair with it."""
    with iproute() as ipr:
        return _delete(ipr, veth_name(container_id, network))


def ensure_default_route(netns: NETNS, gateway: IPv4Address | str, ifname: str) -> bool:
    """Give the namespace a default route through ``gateway`` on ``ifname`` unless it has one (after
    the network that carried it was disconnected); True when one was added."""
    with netns_iproute(netns) as nsr:
        if any(r["dst_len"] == 0 for r in nsr.routes()):
            return False
        index = nsr.index(ifname)
        if index is None:
            raise NotFound(f"{ifname} does not exist in {_netns_path(netns)}")
        nsr.add_default_route(str(gateway), index)
    return True


def new_netns(path: str) -> None:
    """A new network namespace, bind-mounted on ``path`` (an existing empty file) to keep it alive,
    with ``lo`` up. The calling thread makes it with unshare(2) and returns to its own namespace at
    once: no ``unshare`` process to start."""
    from berth.kernel.syscalls import MS_BIND, mount, unshare

    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        unshare(CLONE_NEWNET)
        try:
            mount("/proc/thread-self/ns/net", path, None, MS_BIND)
            with iproute() as ipr:
                ipr.set_link(1, up=True)  # lo is always index 1 in a new namespace
        finally:
            setns(home, CLONE_NEWNET)
    finally:
        os.close(home)


def links() -> list[Link]:
    """Every bridge and veth berth made in this namespace, found by alias (or by berth's veth prefix)."""
    out = []
    with iproute() as ipr:
        dump = ipr.links()
        names = {m["index"]: m.get_attr("IFLA_IFNAME") for m in dump}
        for m in dump:
            alias = m.get_attr("IFLA_IFALIAS") or ""
            name = m.get_attr("IFLA_IFNAME")
            info = m.get_attr("IFLA_LINKINFO")
            kind = info.get_attr("IFLA_INFO_KIND") if info is not None else ""
            ours = alias.startswith((ALIAS_NET, ALIAS_CTR)) or (kind == "veth" and name.startswith(VETH_PREFIX))
            if ours:
                master = m.get_attr("IFLA_MASTER")
                out.append(Link(name, kind or "", alias, names.get(master) if master else None))
    return out


def delete_link(name: str) -> bool:
    with iproute() as ipr:
        return _delete(ipr, name)


def host_subnets() -> list[IPv4Network]:
    """IPv4 subnets routed on this host outside berth's bridges, for the pool to stay clear of."""
    out = []
    with iproute() as ipr:
        ours = {m["index"] for m in ipr.links() if (m.get_attr("IFLA_IFALIAS") or "").startswith(ALIAS_NET)}
        for r in ipr.routes():
            if r.get_attr("RTA_OIF") in ours or r["dst_len"] == 0:
                continue
            dst = r.get_attr("RTA_DST")
            if dst:
                out.append(IPv4Network(f"{dst}/{r['dst_len']}", strict=False))
    return out
