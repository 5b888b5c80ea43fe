"""IP address management: networks, leases, DNS names and host-port reservations in SQLite.

The database is the engine's (``/var/lib/berth/berth.db``), so this module takes a path or an open
connection and only ever touches its own ``net_*`` tables plus one row of ``schema_versions``.
Every change is one ``BEGIN IMMEDIATE`` transaction: the write lock is taken up front, so two berth
processes allocating at once serialise on SQLite instead of both reading "10.77.0.5 is free" and
colliding. A lease is keyed by (network, container): releasing it twice, or releasing it after the
address went to someone else, cannot free another container's address — "released exactly once".

DNS names and published host ports hang off the lease and vanish in the same transaction as it, so
the per-network DNS server (which reads these tables) never answers with an address that is free.

Schema (version 1), written here because it lives beside its code:

- ``net_networks``: one row per network; ``subnet_first``/``subnet_last`` as integers make the
  overlap check one query; ``next_ip`` is the allocation cursor (addresses are handed out
  round-robin so a just-freed address is not immediately reused while ARP and DNS caches remember it).
- ``net_leases``: (network, container_id) → ip (integer), mac, interface name, per-container
  upstream DNS servers (JSON) that the DNS server forwards to for this client.
- ``net_names``: (network, container_id, name) for DNS; names are case-insensitive.
- ``net_ports``: (proto, host_ip, host_port) → container and container port.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import sqlite3
import time
from collections.abc import Iterable, Mapping, Sequence
from ipaddress import IPv4Address, IPv4Network
from typing import Any

from berth.errors import AlreadyExists, Conflict, InvalidArgument, NotFound, PermissionDenied, Unsupported
from berth.network.ports import PortCheck, PortMapping, PortSpec, bindable, resolve
from berth.record import field, record
from berth.sqlitedb import write

SCHEMA_COMPONENT = "network"
SCHEMA_VERSION = 1

#: Names the engine maps to modes rather than networks; none may name a network.
RESERVED_NAMES = frozenset({"bridge", "host", "none", "default", "container", "private", "slirp4netns", "pasta"})
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_CID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_DNS_LABEL = r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
_DNS_NAME_RE = re.compile(rf"{_DNS_LABEL}(\.{_DNS_LABEL})*")
_THIS_NET = IPv4Network("0.0.0.0/8")
_MAC_RE = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}")

_SCHEMA_V1 = """
CREATE TABLE net_networks (
    name TEXT PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    driver TEXT NOT NULL,
    subnet TEXT NOT NULL,
    subnet_first INTEGER NOT NULL,
    subnet_last INTEGER NOT NULL,
    gateway TEXT NOT NULL,
    ip_range TEXT,
    internal INTEGER NOT NULL,
    dns INTEGER NOT NULL,
    bridge TEXT NOT NULL UNIQUE,
    mtu INTEGER NOT NULL,
    labels TEXT NOT NULL,
    is_default INTEGER NOT NULL,
    created REAL NOT NULL,
    next_ip INTEGER NOT NULL
);
CREATE TABLE net_leases (
    network TEXT NOT NULL REFERENCES net_networks(name),
    container_id TEXT NOT NULL,
    ip INTEGER NOT NULL,
    mac TEXT NOT NULL,
    ifname TEXT NOT NULL,
    dns_servers TEXT NOT NULL,
    created REAL NOT NULL,
    PRIMARY KEY (network, container_id),
    UNIQUE (network, ip)
);
CREATE INDEX net_leases_by_container ON net_leases(container_id);
CREATE TABLE net_names (
    network TEXT NOT NULL,
    container_id TEXT NOT NULL,
    name TEXT NOT NULL COLLATE NOCASE,
    PRIMARY KEY (network, container_id, name),
    FOREIGN KEY (network, container_id) REFERENCES net_leases(network, container_id)
);
CREATE INDEX net_names_by_name ON net_names(network, name);
CREATE TABLE net_ports (
    proto TEXT NOT NULL,
    host_ip TEXT NOT NULL,
    host_port INTEGER NOT NULL,
    network TEXT NOT NULL,
    container_id TEXT NOT NULL,
    container_port INTEGER NOT NULL,
    PRIMARY KEY (proto, host_ip, host_port),
    FOREIGN KEY (network, container_id) REFERENCES net_leases(network, container_id)
);
CREATE INDEX net_ports_by_container ON net_ports(network, container_id);
"""

_MIGRATIONS: dict[int, str] = {1: _SCHEMA_V1}


@record(frozen=True)
class Pool:
    """Where networks get their subnets when the user names none (all configurable).

    10.88/16 and 10.89/16 are Podman's, 172.17-31 and 192.168 are Docker's, 10.42-10.44 and
    10.96/12, 10.244/16 are common Kubernetes defaults; 10.77/16 and 10.78/15 collide with none.
    """

    default_subnet: str = "10.77.0.0/16"
    user_pool: str = "10.78.0.0/15"
    user_prefixlen: int = 24


@record(frozen=True)
class Network:
    name: str
    id: str
    driver: str
    subnet: IPv4Network
    gateway: IPv4Address
    ip_range: IPv4Network | None
    internal: bool
    dns: bool  # berth runs a name server for it (user networks; not the default one, as Docker)
    bridge: str
    mtu: int
    labels: Mapping[str, str]
    default: bool
    created: float

    @property
    def prefixlen(self) -> int:
        return self.subnet.prefixlen


@record(frozen=True)
class Lease:
    network: str
    container_id: str
    ip: IPv4Address
    mac: str
    ifname: str
    names: tuple[str, ...] = ()
    dns_servers: tuple[str, ...] = ()
    ports: tuple[PortMapping, ...] = field(default=())
    created: float = 0.0


def open_db(path: str | os.PathLike[str]) -> sqlite3.Connection:
    """Open the state database as the network layer needs it: autocommit (we say BEGIN ourselves),
    WAL so the DNS server's reads never block writers, and a busy timeout so writers queue."""
    conn = sqlite3.connect(os.fspath(path), timeout=30.0, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA busy_timeout=30000")
    return conn


def migrate(conn: sqlite3.Connection) -> None:
    """Bring the network tables to SCHEMA_VERSION; refuse a database from a newer berth."""
    conn.execute("CREATE TABLE IF NOT EXISTS schema_versions (component TEXT PRIMARY KEY, version INTEGER NOT NULL)")
    row = conn.execute("SELECT version FROM schema_versions WHERE component = ?", (SCHEMA_COMPONENT,)).fetchone()
    if row is not None and row[0] == SCHEMA_VERSION:
        return
    with write(conn):
        row = conn.execute("SELECT version FROM schema_versions WHERE component = ?", (SCHEMA_COMPONENT,)).fetchone()
        current = row[0] if row else 0
        if current > SCHEMA_VERSION:
            raise Unsupported(f"the state database has network schema {current}; this berth knows {SCHEMA_VERSION}")
        for version in range(current + 1, SCHEMA_VERSION + 1):
            for statement in _MIGRATIONS[version].split(";"):
                if statement.strip():
                    conn.execute(statement)
        conn.execute(
            "INSERT OR REPLACE INTO schema_versions (component, version) VALUES (?, ?)",
            (SCHEMA_COMPONENT, SCHEMA_VERSION),
        )


def _net(row: tuple[Any, ...]) -> Network:
    (name, nid, driver, subnet, gateway, ip_range, internal, dns, bridge, mtu, labels, default, created) = row
    return Network(
        name=name,
        id=nid,
        driver=driver,
        subnet=IPv4Network(subnet),
        gateway=IPv4Address(gateway),
        ip_range=IPv4Network(ip_range) if ip_range else None,
        internal=bool(internal),
        dns=bool(dns),
        bridge=bridge,
        mtu=mtu,
        labels=json.loads(labels),
        default=bool(default),
        created=created,
    )


_NET_COLUMNS = "name, id, driver, subnet, gateway, ip_range, internal, dns, bridge, mtu, labels, is_default, created"


def mac_for(ip: IPv4Address) -> str:
    """A MAC derived from the address (locally administered, unicast): a reused address keeps its
    MAC, so neighbours' ARP caches stay right without gratuitous ARP."""
    return "02:b7:" + ":".join(f"{b:02x}" for b in ip.packed)


def validate_container_id(cid: str) -> str:
    if not _CID_RE.fullmatch(cid):
        raise InvalidArgument(f"invalid container id {cid!r}")
    return cid


def validate_dns_name(name: str) -> str:
    if len(name) > 253 or not _DNS_NAME_RE.fullmatch(name):
        raise InvalidArgument(f"invalid DNS name {name!r}")
    return name


def _parse_net(text: str, what: str) -> IPv4Network:
    try:
        net = ipaddress.ip_network(text, strict=True)
    except ValueError as e:
        raise InvalidArgument(f"invalid {what} {text!r}: {e}") from None
    if not isinstance(net, IPv4Network):
        raise Unsupported(f"{what} {text}: IPv6 networks are not supported yet")
    if net.is_loopback or net.is_multicast or net.is_link_local or net.is_reserved or net.overlaps(_THIS_NET):
        raise InvalidArgument(f"{what} {text} cannot hold containers (loopback, link-local, multicast or reserved)")
    return net


class IPAM:
    """Networks and leases over one connection. Not thread-safe: give each thread its own IPAM."""

    def __init__(
        self,
        db: sqlite3.Connection | str | os.PathLike[str],
        *,
        pool: Pool | None = None,
        default_network: str = "berth",
        bridge_prefix: str = "berth",
        mtu: int = 1500,
    ) -> None:
        if isinstance(db, sqlite3.Connection):
            if db.isolation_level is not None:
                raise ValueError("IPAM needs an autocommit connection (isolation_level=None); see open_db()")
            self.conn = db
        else:
            self.conn = open_db(db)
        self.pool = pool or Pool()
        self.default_name = default_network
        self.bridge_prefix = bridge_prefix
        self.mtu = mtu
        migrate(self.conn)

    # -- networks ---------------------------------------------------------------------------------

    def _get(self, name_or_id: str) -> Network | None:
        if name_or_id == "bridge" and name_or_id != self.default_name:
            name_or_id = self.default_name  # Docker's and Podman's name for the default network
        row = self.conn.execute(f"SELECT {_NET_COLUMNS} FROM net_networks WHERE name = ?", (name_or_id,)).fetchone()
        if row is None and len(name_or_id) >= 3 and re.fullmatch(r"[0-9a-f]+", name_or_id):
            rows = self.conn.execute(
                f"SELECT {_NET_COLUMNS} FROM net_networks WHERE substr(id, 1, ?) = ?", (len(name_or_id), name_or_id)
            ).fetchall()
            if len(rows) > 1:
                raise InvalidArgument(f"network id prefix {name_or_id!r} is ambiguous")
            row = rows[0] if rows else None
        return _net(row) if row else None

    def get(self, name_or_id: str) -> Network:
        """A network by name, full id or unique id prefix; ``bridge`` means the default network,
        which is created on first use."""
        if name_or_id in (self.default_name, "bridge"):
            return self.ensure_default()
        net = self._get(name_or_id)
        if net is None:
            raise NotFound(f"network {name_or_id!r} not found")
        return net

    def list_networks(self) -> list[Network]:
        rows = self.conn.execute(f"SELECT {_NET_COLUMNS} FROM net_networks ORDER BY created, name").fetchall()
        return [_net(r) for r in rows]

    def ensure_default(self) -> Network:
        net = self._get(self.default_name)
        if net is not None:
            return net
        try:
            return self.create(self.default_name, subnet=self.pool.default_subnet, dns=False, _default=True)
        except AlreadyExists:  # another process made it first
            return self.get(self.default_name)

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
        avoid: Iterable[IPv4Network] = (),
        _default: bool = False,
    ) -> Network:
        """Record a network. Without ``subnet`` one is taken from the pool, skipping the subnets of
        other networks and ``avoid`` (the host's routes, so a container network never shadows a LAN).
        An explicit subnet overlapping another network's is refused with InvalidArgument."""
        if not _NAME_RE.fullmatch(name):
            raise InvalidArgument(f"invalid network name {name!r}: use letters, digits, '_', '.', '-'")
        if name in RESERVED_NAMES or (name == self.default_name and not _default):
            raise InvalidArgument(f"{name!r} is a reserved network name")
        if driver != "bridge":
            raise Unsupported(f"network driver {driver!r} is not supported (only bridge)")
        mtu = mtu or self.mtu
        if not 68 <= mtu <= 65535:
            raise InvalidArgument(f"invalid MTU {mtu}")
        if subnet is None and (gateway or ip_range):
            raise InvalidArgument("--gateway and --ip-range need --subnet")
        explicit = _parse_net(subnet, "subnet") if subnet else None
        if explicit is not None and explicit.prefixlen > 30:
            raise InvalidArgument(f"subnet {subnet} is too small: it needs room for a gateway and containers")
        rng = _parse_net(ip_range, "ip range") if ip_range else None
        labels = dict(labels or {})
        with write(self.conn):
            if self._get(name) is not None:
                raise AlreadyExists(f"network {name!r} already exists")
            if explicit is not None:
                clash = self._overlapping(explicit)
                if clash:
                    raise InvalidArgument(f"subnet {explicit} overlaps subnet {clash[1]} of network {clash[0]!r}")
                net = explicit
            else:
                net = self._pick_subnet(avoid)
            if rng is not None and not rng.subnet_of(net):
                raise InvalidArgument(f"ip range {rng} is not inside subnet {net}")
            if gateway:
                try:
                    gw = IPv4Address(gateway)
                except ValueError:
                    raise InvalidArgument(f"invalid gateway {gateway!r}") from None
                if gw not in net or gw in (net.network_address, net.broadcast_address):
                    raise InvalidArgument(f"gateway {gw} is not a host address of subnet {net}")
            else:
                gw = net.network_address + 1
            bridge = self._bridge_name(0 if _default else None)
            row = (
                name,
                os.urandom(32).hex(),
                driver,
                str(net),
                int(net.network_address),
                int(net.broadcast_address),
                str(gw),
                str(rng) if rng else None,
                int(internal),
                int(dns),
                bridge,
                mtu,
                json.dumps(labels, sort_keys=True),
                int(_default),
                time.time(),
                0,
            )
            self.conn.execute(f"INSERT INTO net_networks VALUES ({', '.join('?' * len(row))})", row)
        created = self._get(name)
        assert created is not None
        return created

    def _overlapping(self, net: IPv4Network) -> tuple[str, str] | None:
        row = self.conn.execute(
            "SELECT name, subnet FROM net_networks WHERE subnet_first <= ? AND subnet_last >= ? LIMIT 1",
            (int(net.broadcast_address), int(net.network_address)),
        ).fetchone()
        return (row[0], row[1]) if row else None

    def _pick_subnet(self, avoid: Iterable[IPv4Network]) -> IPv4Network:
        avoid = [a for a in avoid if a.prefixlen > 0]  # a default route is not a subnet in use
        pool = _parse_net(self.pool.user_pool, "pool")
        for candidate in pool.subnets(new_prefix=self.pool.user_prefixlen):
            if self._overlapping(candidate) is None and not any(candidate.overlaps(a) for a in avoid):
                return candidate
        raise Conflict(f"the address pool {pool} is exhausted: name a --subnet")

    def _bridge_name(self, index: int | None) -> str:
        if index is not None:
            return f"{self.bridge_prefix}{index}"
        used = {r[0] for r in self.conn.execute("SELECT bridge FROM net_networks")}
        n = 1
        while f"{self.bridge_prefix}{n}" in used:
            n += 1
        name = f"{self.bridge_prefix}{n}"
        if len(name) > 15:
            raise Conflict("no free bridge name")
        return name

    def remove(self, name_or_id: str) -> Network:
        """Forget a network; Conflict while any container holds a lease on it (and nothing changes)."""
        if name_or_id in (self.default_name, "bridge"):
            raise PermissionDenied(f"{self.default_name} is the default network and cannot be removed")
        with write(self.conn):
            net = self._get(name_or_id)
            if net is None:
                raise NotFound(f"network {name_or_id!r} not found")
            if net.default:
                raise PermissionDenied(f"{net.name} is the default network and cannot be removed")
            users = [
                r[0]
                for r in self.conn.execute(
                    "SELECT container_id FROM net_leases WHERE network = ? ORDER BY created", (net.name,)
                )
            ]
            if users:
                shown = ", ".join(u[:12] for u in users[:5]) + (", ..." if len(users) > 5 else "")
                raise Conflict(f"network {net.name} is in use by {len(users)} container(s): {shown}")
            self.conn.execute("DELETE FROM net_networks WHERE name = ?", (net.name,))
        return net

    # -- leases -----------------------------------------------------------------------------------

    def allocate(
        self,
        network: str,
        container_id: str,
        *,
        ip: str | None = None,
        mac: str | None = None,
        ifname: str = "eth0",
        names: Sequence[str] = (),
        dns_servers: Sequence[str] = (),
        ports: Sequence[PortSpec] = (),
        port_busy: PortCheck | None = None,
    ) -> Lease:
        """Lease an address (the requested one, or the next free one) and reserve host ports, atomically.

        Host ports are checked against berth's own reservations and by binding them (``port_busy``
        overrides the latter for tests); a taken port raises Conflict and nothing is recorded.
        """
        validate_container_id(container_id)
        names = tuple(dict.fromkeys(validate_dns_name(n) for n in names if n))
        for server in dns_servers:
            try:
                ipaddress.ip_address(server)
            except ValueError:
                raise InvalidArgument(f"invalid DNS server {server!r}") from None
        if mac is not None:
            mac = mac.lower()
            if not _MAC_RE.fullmatch(mac) or int(mac[:2], 16) & 1:
                raise InvalidArgument(f"invalid MAC address {mac!r}")
        net = self.get(network)
        with write(self.conn):
            if self._get(net.name) is None:
                raise NotFound(f"network {network!r} not found")
            held = self.conn.execute(
                "SELECT ip FROM net_leases WHERE network = ? AND container_id = ?", (net.name, container_id)
            ).fetchone()
            if held:
                raise AlreadyExists(f"container {container_id[:12]} is already connected to network {net.name}")
            addr = self._pick_ip(net, ip)
            mac = mac or mac_for(addr)
            now = time.time()
            self.conn.execute(
                "INSERT INTO net_leases VALUES (?, ?, ?, ?, ?, ?, ?)",
                (net.name, container_id, int(addr), mac, ifname, json.dumps(list(dns_servers)), now),
            )
            self.conn.executemany(
                "INSERT INTO net_names VALUES (?, ?, ?)", [(net.name, container_id, n) for n in names]
            )
            mappings: list[PortMapping] = []
            if ports:
                if net.internal:
                    raise InvalidArgument(f"ports cannot be published on internal network {net.name}")
                mappings = resolve(ports, lambda p, i, q: self._port_busy(p, i, q, port_busy))
                self.conn.executemany(
                    "INSERT INTO net_ports VALUES (?, ?, ?, ?, ?, ?)",
                    [(m.proto, m.host_ip, m.host_port, net.name, container_id, m.container_port) for m in mappings],
                )
        return Lease(net.name, container_id, addr, mac, ifname, names, tuple(dns_servers), tuple(mappings), now)

    def _port_busy(self, proto: str, host_ip: str, port: int, probe: PortCheck | None) -> str | None:
        row = self.conn.execute(
            "SELECT container_id, network FROM net_ports WHERE proto = ? AND host_port = ?"
            " AND (host_ip = ? OR host_ip = '0.0.0.0' OR ? = '0.0.0.0') LIMIT 1",
            (proto, port, host_ip, host_ip),
        ).fetchone()
        if row:
            return f"published by container {row[0][:12]}"
        if probe is not None:
            return probe(proto, host_ip, port)
        if ":" in host_ip:
            raise Unsupported(f"publishing on IPv6 address {host_ip} is not supported yet")
        return None if bindable(proto, host_ip, port) else "another program is bound to it"

    def _pick_ip(self, net: Network, requested: str | None) -> IPv4Address:
        used = {r[0] for r in self.conn.execute("SELECT ip FROM net_leases WHERE network = ?", (net.name,))}
        subnet = net.subnet
        reserved = {int(subnet.network_address), int(subnet.broadcast_address), int(net.gateway)}
        if requested is not None:
            try:
                addr = IPv4Address(requested)
            except ValueError:
                raise InvalidArgument(f"invalid IP address {requested!r}") from None
            if addr not in subnet:
                raise InvalidArgument(f"address {addr} is not in subnet {subnet} of network {net.name}")
            if int(addr) in reserved:
                raise InvalidArgument(f"address {addr} is reserved in network {net.name}")
            if int(addr) in used:
                raise Conflict(f"address {addr} is already in use in network {net.name}")
            return addr
        span = net.ip_range or subnet
        first, last = int(span.network_address), int(span.broadcast_address)
        if span.prefixlen < 31 and span == subnet:
            first, last = first + 1, last - 1
        cursor = self.conn.execute("SELECT next_ip FROM net_networks WHERE name = ?", (net.name,)).fetchone()[0]
        start = cursor if first <= cursor <= last else first
        size = last - first + 1
        for step in range(size):
            candidate = first + (start - first + step) % size
            if candidate not in used and candidate not in reserved:
                self.conn.execute("UPDATE net_networks SET next_ip = ? WHERE name = ?", (candidate + 1, net.name))
                return IPv4Address(candidate)
        raise Conflict(f"no free addresses left in network {net.name} ({span})")

    def release(self, network: str, container_id: str) -> Lease | None:
        """Free a container's lease with its names and ports; None when it holds none (already freed)."""
        with write(self.conn):
            lease = self._lease(network, container_id)
            if lease is None:
                return None
            self.conn.execute("DELETE FROM net_ports WHERE network = ? AND container_id = ?", (network, container_id))
            self.conn.execute("DELETE FROM net_names WHERE network = ? AND container_id = ?", (network, container_id))
            cur = self.conn.execute(
                "DELETE FROM net_leases WHERE network = ? AND container_id = ?", (network, container_id)
            )
            if cur.rowcount != 1:  # pragma: no cover - guarded by the write lock
                raise Conflict(f"lease of {container_id[:12]} on {network} changed underneath")
        return lease

    def _lease(self, network: str, container_id: str) -> Lease | None:
        row = self.conn.execute(
            "SELECT ip, mac, ifname, dns_servers, created FROM net_leases WHERE network = ? AND container_id = ?",
            (network, container_id),
        ).fetchone()
        if row is None:
            return None
        names = tuple(
            r[0]
            for r in self.conn.execute(
                "SELECT name FROM net_names WHERE network = ? AND container_id = ? ORDER BY rowid",
                (network, container_id),
            )
        )
        ports = tuple(
            PortMapping(*r)
            for r in self.conn.execute(
                "SELECT proto, host_ip, host_port, container_port FROM net_ports"
                " WHERE network = ? AND container_id = ? ORDER BY rowid",
                (network, container_id),
            )
        )
        return Lease(
            network, container_id, IPv4Address(row[0]), row[1], row[2], names, tuple(json.loads(row[3])), ports, row[4]
        )

    def lease(self, network: str, container_id: str) -> Lease | None:
        return self._lease(self.get(network).name, container_id)

    def leases(self, network: str | None = None, container_id: str | None = None) -> list[Lease]:
        query, args = "SELECT network, container_id FROM net_leases", []
        where = []
        if network is not None:
            where.append("network = ?")
            args.append(self.get(network).name)
        if container_id is not None:
            where.append("container_id = ?")
            args.append(container_id)
        if where:
            query += " WHERE " + " AND ".join(where)
        rows = self.conn.execute(query + " ORDER BY created, rowid", args).fetchall()
        return [lease for n, c in rows if (lease := self._lease(n, c)) is not None]

    def all_ports(self) -> dict[str, list[PortMapping]]:
        """Container id → its published ports, in one query (``ps``)."""
        out: dict[str, list[PortMapping]] = {}
        for cid, *mapping in self.conn.execute(
            "SELECT container_id, proto, host_ip, host_port, container_port FROM net_ports ORDER BY rowid"
        ):
            out.setdefault(cid, []).append(PortMapping(*mapping))
        return out

    def count_leases(self, network: str) -> int:
        return int(self.conn.execute("SELECT count(*) FROM net_leases WHERE network = ?", (network,)).fetchone()[0])

    # -- what the DNS server and leak checks read ----------------------------------------------------

    def lookup(self, network: str, name: str) -> list[IPv4Address]:
        return lookup(self.conn, network, name)

    def orphans(self) -> dict[str, int]:
        """Rows that no lease owns (only after hand edits or a bug): table → count."""
        out = {}
        for table in ("net_names", "net_ports"):
            n = self.conn.execute(
                f"SELECT count(*) FROM {table} t WHERE NOT EXISTS (SELECT 1 FROM net_leases l"
                " WHERE l.network = t.network AND l.container_id = t.container_id)"
            ).fetchone()[0]
            if n:
                out[table] = n
        return out


def lookup(conn: sqlite3.Connection, network: str, name: str) -> list[IPv4Address]:
    """Addresses of containers on ``network`` called ``name`` (container name, alias or short id)."""
    rows = conn.execute(
        "SELECT l.ip FROM net_names n JOIN net_leases l ON l.network = n.network AND l.container_id = n.container_id"
        " WHERE n.network = ? AND n.name = ? ORDER BY l.created",
        (network, name),
    ).fetchall()
    return [IPv4Address(r[0]) for r in dict.fromkeys(rows)]


def lookup_for_client(conn: sqlite3.Connection, network: str, client: IPv4Address, name: str) -> list[IPv4Address]:
    """What a container asking ``network``'s server sees: names on that network first, else names on
    the other networks the asking container (found by its address) is also connected to — a container
    on two networks resolves both, as with Docker; everyone else sees only the one network."""
    own = lookup(conn, network, name)
    if own:
        return own
    rows = conn.execute(
        "SELECT l2.ip FROM net_leases me"
        " JOIN net_leases mine ON mine.container_id = me.container_id AND mine.network != me.network"
        " JOIN net_names n ON n.network = mine.network AND n.name = ?"
        " JOIN net_leases l2 ON l2.network = n.network AND l2.container_id = n.container_id"
        " WHERE me.network = ? AND me.ip = ? ORDER BY l2.created",
        (name, network, int(client)),
    ).fetchall()
    return [IPv4Address(r[0]) for r in dict.fromkeys(rows)]


def reverse(conn: sqlite3.Connection, network: str, ip: IPv4Address) -> list[str]:
    rows = conn.execute(
        "SELECT n.name FROM net_leases l JOIN net_names n ON l.network = n.network AND l.container_id = n.container_id"
        " WHERE l.network = ? AND l.ip = ? ORDER BY n.rowid",
        (network, int(ip)),
    ).fetchall()
    return [r[0] for r in rows]


def client_dns_servers(conn: sqlite3.Connection, network: str, ip: IPv4Address) -> list[str]:
    row = conn.execute("SELECT dns_servers FROM net_leases WHERE network = ? AND ip = ?", (network, int(ip))).fetchone()
    return list(json.loads(row[0])) if row else []
