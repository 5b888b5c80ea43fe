"""``Networks``: the one object the engine uses — networks, and containers joining and leaving them.

It composes the modules in an order chosen so that a berth killed at any instant leaves only
things that are tagged with the container or network they belong to, and that
:meth:`Networks.release_container` / :meth:`Networks.gc` can therefore remove:

1. the lease, names and host ports are recorded in one transaction (nothing else exists yet, and a
   taken port or address fails here, before anything is created);
2. under the network's lock: its bridge, firewall rules and name server are made if missing — the
   same lock serialises the tear-down that happens when the last container leaves, and a network
   with a committed lease is never torn down;
3. outside the lock (so parallel starts on one network proceed in parallel): the veth pair, then the
   container's port rules;

and on the way out the reverse: port rules, veth, lease; then, if that was the last lease, the
network's name server, rules and bridge. Bridges exist only while a network has containers, as
with Podman: after ``rm`` of the last container the host is as it was.

Locks are ``flock`` files under the run directory (tmpfs), so they vanish with a crashed holder.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from ipaddress import IPv4Address

from berth.errors import Conflict, InvalidArgument, NotFound, Unsupported
from berth.fsutil import file_lock
from berth.network import bridge, dns, files, ipam
from berth.network.ipam import IPAM, Lease, Network, Pool
from berth.network.nat import Firewall, firewall
from berth.network.ports import PortCheck, PortMapping, PortSpec, parse
from berth.record import field, record


def crash_point(step: str) -> None:
    """A testing aid for crash safety: ``BERTH_NET_CRASH_AT=STEP`` SIGKILLs this process at that point
    of a container's network set-up (netns, lease, infra, veth, ports, files), as an OOM kill would."""
    if os.environ.get("BERTH_NET_CRASH_AT") == step:
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


def default_run_dir() -> str:
    """/run/berth/network as root; rootless networking (slirp4netns/pasta) is not implemented."""
    if os.geteuid() != 0 and os.environ.get("XDG_RUNTIME_DIR"):
        return os.path.join(os.environ["XDG_RUNTIME_DIR"], "berth", "network")
    return "/run/berth/network"


@record(frozen=True)
class Settings:
    run_dir: str = field(default_factory=default_run_dir)
    pool: Pool = field(default_factory=Pool)
    default_network: str = "berth"
    bridge_prefix: str = "berth"
    table: str = "berth"
    mtu: int = 1500
    dns_domain: str = dns.DEFAULT_DOMAIN
    dns_port: int = 53
    #: Upstreams of the name servers (``IP`` or ``IP:PORT``); None = the host's, from ``resolv_conf``.
    dns_upstreams: tuple[str, ...] | None = None
    resolv_conf: str = "/etc/resolv.conf"
    #: ``auto`` (nft when installed, else iptables), ``nft`` or ``iptables``.
    firewall: str = "auto"


@record(frozen=True)
class Endpoint:
    """A container's presence on one network, as ``inspect`` shows it and the files need it."""

    network: str
    network_id: str
    container_id: str
    ifname: str
    ip: IPv4Address
    prefixlen: int
    gateway: IPv4Address | None  # None on internal networks: no default route
    mac: str
    host_ifname: str
    bridge: str
    names: tuple[str, ...]
    ports: tuple[PortMapping, ...]
    dns_server: IPv4Address | None  # berth's name server for this network, if it has one


class Networks:
    """Networks and endpoints over the state database at ``db`` (a path, or an autocommit connection)."""

    def __init__(self, db: str | os.PathLike[str] | sqlite3.Connection, settings: Settings | None = None) -> None:
        self.settings = s = settings or Settings()
        if isinstance(db, sqlite3.Connection):
            row = db.execute("PRAGMA database_list").fetchone()
            self.db_path = row[2]
        else:
            self.db_path = os.fspath(db)
        self.ipam = IPAM(db, pool=s.pool, default_network=s.default_network, bridge_prefix=s.bridge_prefix, mtu=s.mtu)
        self._firewall: Firewall | None = None

    @property
    def firewall(self) -> Firewall:
        if self._firewall is None:
            lock = os.path.join(self.settings.run_dir, "locks", "firewall.lock")
            self._firewall = firewall(self.settings.table, lock, self.settings.firewall)
        return self._firewall

    def _lock(self, network: str) -> file_lock:
        return file_lock(os.path.join(self.settings.run_dir, "locks", f"net-{network}.lock"))

    # -- networks ---------------------------------------------------------------------------------

    def create(
        self,
        name: str,
        *,
        subnet: str | None = None,
        gateway: str | None = None,
        ip_range: str | None = None,
        internal: bool = False,
        dns: bool = True,
        labels: Mapping[str, str] | None = None,
        mtu: int | None = None,
        driver: str = "bridge",
    ) -> Network:
        """``network create``; nothing is made on the host until a container joins."""
        avoid = bridge.host_subnets() if subnet is None else ()
        return self.ipam.create(
            name, subnet=subnet, gateway=gateway, ip_range=ip_range, internal=internal, dns=dns,
            labels=labels, mtu=mtu, driver=driver, avoid=avoid,
        )  # fmt: skip

    def get(self, name_or_id: str) -> Network:
        return self.ipam.get(name_or_id)

    def list_networks(self) -> list[Network]:
        return self.ipam.list_networks()

    def remove(self, name_or_id: str) -> Network:
        """``network rm``: Conflict while containers use it (and then nothing changes)."""
        net = self.ipam.get(name_or_id)
        with self._lock(net.name):
            removed = self.ipam.remove(net.name)
            self._teardown(removed)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(self.settings.run_dir, "dns", f"{removed.name}.log"))
        return removed

    def prune(self) -> list[str]:
        """Remove every user network no container uses; returns their names."""
        gone = []
        for net in self.ipam.list_networks():
            if not net.default and self.ipam.count_leases(net.name) == 0:
                with contextlib.suppress(NotFound, Conflict):
                    self.remove(net.name)
                    gone.append(net.name)
        return gone

    def _ensure_infra(self, net: Network) -> None:
        bridge.ensure_bridge(net)
        if not self.firewall.has_network(net):
            self.firewall.ensure_network(net)
        if net.dns:
            s = self.settings
            dns.start(
                net.name, net.gateway, self.db_path, s.run_dir, port=s.dns_port, domain=s.dns_domain,
                upstreams=s.dns_upstreams, resolv_conf=s.resolv_conf,
            )  # fmt: skip

    def _teardown(self, net: Network) -> None:
        dns.stop(net.name, self.settings.run_dir)
        self.firewall.remove_network(net)
        bridge.delete_bridge(net)

    # -- containers -------------------------------------------------------------------------------

    def connect(
        self,
        container_id: str,
        netns: bridge.NETNS,
        network: str | None = None,
        *,
        name: str | None = None,
        aliases: Sequence[str] = (),
        ip: str | None = None,
        mac: str | None = None,
        ifname: str = "eth0",
        publish: Sequence[PortSpec | str] = (),
        dns_servers: Sequence[str] = (),
        port_check: PortCheck | None = None,
    ) -> Endpoint:
        """Join the container whose network namespace is ``netns`` (a path or a pid) to ``network``.

        ``publish``: ``-p`` specs (strings or parsed); ports are checked and reserved before anything
        is created, and a taken one raises Conflict. ``dns_servers``: the container's ``--dns``, which
        berth's name server forwards its queries to. On any failure everything done is undone.
        """
        if os.geteuid() != 0:
            raise Unsupported("rootless networking is not implemented: use --network none or host")
        ipam.validate_container_id(container_id)
        net = self.ipam.get(network or self.settings.default_network)
        specs = [parse(p) if isinstance(p, str) else p for p in publish]
        if ip is not None and net.default:
            raise InvalidArgument("--ip needs a user-defined network")
        names = files.network_names(name, aliases, container_id) if net.dns else []
        with self._lock(net.name):
            lease = self.ipam.allocate(
                net.name, container_id, ip=ip, mac=mac, ifname=ifname, names=names,
                dns_servers=dns_servers, ports=specs, port_busy=port_check,
            )  # fmt: skip
            try:
                crash_point("lease")
                self._ensure_infra(net)
            except BaseException:
                self.ipam.release(net.name, container_id)
                if self.ipam.count_leases(net.name) == 0:
                    with contextlib.suppress(Exception):
                        self._teardown(net)
                raise
        try:
            crash_point("infra")
            host = bridge.attach(netns, net, container_id, lease.ip, lease.mac, ifname)
            crash_point("veth")
            if lease.ports:
                self.firewall.publish(container_id, net, lease.ip, lease.ports)
                crash_point("ports")
        except BaseException:
            with contextlib.suppress(Exception):
                self.disconnect(container_id, net.name)
            raise
        return self._endpoint(net, lease, host)

    def _endpoint(self, net: Network, lease: Lease, host: str | None = None) -> Endpoint:
        return Endpoint(
            network=net.name,
            network_id=net.id,
            container_id=lease.container_id,
            ifname=lease.ifname,
            ip=lease.ip,
            prefixlen=net.prefixlen,
            gateway=None if net.internal else net.gateway,
            mac=lease.mac,
            host_ifname=host or bridge.veth_name(lease.container_id, net),
            bridge=net.bridge,
            names=lease.names,
            ports=lease.ports,
            dns_server=net.gateway if net.dns else None,
        )

    def disconnect(self, container_id: str, network: str) -> bool:
        """Take the container off ``network``: rules, veth, lease, then the network's host side if it
        was the last. Idempotent; False when the container was not connected."""
        net = self.ipam.get(network)
        lease = self.ipam.lease(net.name, container_id)
        if lease is None or lease.ports:  # without a lease, rules may still be there after a crash
            self.firewall.unpublish(container_id, net.bridge)
        bridge.detach(container_id, net)
        released = self.ipam.release(net.name, container_id)
        self._teardown_if_idle(net)
        return released is not None

    def release_container(self, container_id: str) -> None:
        """Everything of the container on every network, including what a crash left without a lease
        (call it on ``rm``, and for containers found dead); safe to call any number of times."""
        for lease in self.ipam.leases(container_id=container_id):
            with contextlib.suppress(NotFound):
                self.disconnect(container_id, lease.network)
        self.firewall.unpublish(container_id)
        for link in bridge.links():
            if link.container_id == container_id:
                bridge.delete_link(link.name)

    def endpoints(self, container_id: str) -> list[Endpoint]:
        out = []
        for lease in self.ipam.leases(container_id=container_id):
            out.append(self._endpoint(self.ipam.get(lease.network), lease))
        return out

    def ports(self, container_id: str) -> list[PortMapping]:
        """``berth port``."""
        return [p for e in self.endpoints(container_id) for p in e.ports]

    def container_files(
        self,
        container_id: str,
        hostname: str,
        *,
        name: str | None = None,
        add_hosts: Sequence[str] = (),
        dns_servers: Sequence[str] = (),
        dns_search: Sequence[str] = (),
        dns_options: Sequence[str] = (),
    ) -> dict[str, str]:
        """The texts of /etc/hosts, /etc/hostname and /etc/resolv.conf for a container on bridge
        networks (or none): keys ``hosts``, ``hostname``, ``resolv.conf``."""
        eps = self.endpoints(container_id)
        gateway = next((str(e.gateway) for e in eps if e.gateway), None) or next(
            (str(self.ipam.get(e.network).gateway) for e in eps), None
        )
        resolvers = [str(e.dns_server) for e in eps if e.dns_server is not None][:3]
        hosts = files.hosts_file(
            hostname, addresses=[str(e.ip) for e in eps], names=[name] if name else [],
            add_hosts=add_hosts, host_gateway=gateway,
        )  # fmt: skip
        resolv = files.resolv_conf(
            dns=dns_servers, dns_search=dns_search, dns_options=dns_options, network_dns=resolvers,
            network_domain=self.settings.dns_domain if resolvers else None,
            host_resolv_conf=self.settings.resolv_conf,
        )  # fmt: skip
        return {"hosts": hosts, "hostname": files.hostname_file(hostname), "resolv.conf": resolv}

    # -- maintenance ------------------------------------------------------------------------------

    def teardown_idle(self) -> None:
        """Remove the host side (name server, rules, bridge) of every network no container uses, as
        the last container's leaving would have had it not been killed first."""
        for net in self.ipam.list_networks():
            if self.ipam.count_leases(net.name) == 0:  # no lock taken for a network in use
                self._teardown_if_idle(net)

    def _teardown_if_idle(self, net: Network) -> None:
        """The network's host side goes when no container holds a lease on it (counted under its lock)."""
        with self._lock(net.name):
            if self.ipam.count_leases(net.name) == 0:
                self._teardown(net)

    def gc(self, live_containers: Iterable[str] | None = None) -> None:
        """Bring the host in line with the database after crashes: with ``live_containers`` given,
        containers not in it lose their leases; networks without leases lose their host side; bridges,
        veths, rules and name servers that belong to nothing recorded are removed."""
        if live_containers is not None:
            live = set(live_containers)
            for lease in self.ipam.leases():
                if lease.container_id not in live:
                    self.release_container(lease.container_id)
        nets = {n.name: n for n in self.ipam.list_networks()}
        leased = {(lease.network, lease.container_id) for lease in self.ipam.leases()}
        in_use = {n for n, _ in leased}
        bridges_in_use = {nets[n].bridge for n in in_use}
        self.teardown_idle()
        for link in bridge.links():
            cid = link.container_id
            stray_bridge = link.kind == "bridge" and link.name not in bridges_in_use
            stray_veth = cid is not None and not any(c == cid for _, c in leased)
            if stray_bridge or stray_veth:
                bridge.delete_link(link.name)
        if self.firewall.exists():
            for rule in self.firewall.rules():
                if rule.container_id and not any(c == rule.container_id for _, c in leased):
                    self.firewall.unpublish(rule.container_id)
                elif rule.network and rule.network not in in_use:
                    self.firewall.remove_network(rule.network)
        for network in dns.running(self.settings.run_dir):
            if network not in in_use:
                dns.stop(network, self.settings.run_dir)
        running = set(dns.running(self.settings.run_dir).values())
        for pid in dns.processes(self.settings.run_dir):
            if pid not in running:
                dns.kill_stray(pid)
