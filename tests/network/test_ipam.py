"""IPAM over SQLite: subnets from the pool, leases, release exactly once, concurrency, schema version."""

from __future__ import annotations

import multiprocessing
import sqlite3
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any

import pytest

from berth.errors import AlreadyExists, Conflict, InvalidArgument, NotFound, PermissionDenied, Unsupported
from berth.network import ipam
from berth.network.ipam import IPAM, Pool
from berth.network.ports import parse

pytestmark = pytest.mark.unit


def never_busy(proto: str, ip: str, port: int) -> str | None:
    return None


@pytest.fixture
def db(tmp_path: Path) -> str:
    return str(tmp_path / "berth.db")


def test_default_network_and_pool(db: str) -> None:
    i = IPAM(db)
    default = i.get("bridge")
    assert default.name == "berth" and default.default and not default.dns
    assert default.subnet == IPv4Network("10.77.0.0/16") and default.gateway == IPv4Address("10.77.0.1")
    assert default.bridge == "berth0"
    a = i.create("a")
    b = i.create("b", avoid=[IPv4Network("10.78.1.0/24"), IPv4Network("0.0.0.0/0")])
    assert (a.subnet, a.bridge, a.dns) == (IPv4Network("10.78.0.0/24"), "berth1", True)
    assert b.subnet == IPv4Network("10.78.2.0/24") and b.bridge == "berth2"
    assert i.get(a.id[:12]) == a
    assert [n.name for n in i.list_networks()] == ["berth", "a", "b"]


def test_configurable_pool(db: str) -> None:
    i = IPAM(db, pool=Pool("172.30.0.0/24", "172.30.8.0/22", 26), bridge_prefix="bx")
    assert i.get("berth").subnet == IPv4Network("172.30.0.0/24")
    assert [i.create(f"n{k}").subnet for k in range(3)] == [
        IPv4Network("172.30.8.0/26"), IPv4Network("172.30.8.64/26"), IPv4Network("172.30.8.128/26")
    ]


def test_create_validation(db: str) -> None:
    i = IPAM(db)
    i.create("one", subnet="192.168.100.0/24")
    with pytest.raises(InvalidArgument, match=r"overlaps subnet 192\.168\.100\.0/24 of network 'one'"):
        i.create("two", subnet="192.168.0.0/16")
    with pytest.raises(InvalidArgument, match="overlaps"):
        i.create("two", subnet="192.168.100.128/25")
    with pytest.raises(AlreadyExists):
        i.create("one", subnet="192.168.101.0/24")
    for name in ("bridge", "host", "none", "berth", "-x", "a/b", ""):
        with pytest.raises(InvalidArgument):
            i.create(name)
    with pytest.raises(InvalidArgument, match="host bits"):
        i.create("x", subnet="10.1.2.3/24")
    with pytest.raises(InvalidArgument, match="not a host address"):
        i.create("x", subnet="10.1.2.0/24", gateway="10.1.3.1")
    with pytest.raises(InvalidArgument, match="not inside subnet"):
        i.create("x", subnet="10.1.2.0/24", ip_range="10.1.3.0/25")
    with pytest.raises(InvalidArgument, match="need --subnet"):
        i.create("x", gateway="10.1.2.1")
    with pytest.raises(Unsupported):
        i.create("x", subnet="fd00::/64")
    with pytest.raises(Unsupported):
        i.create("x", driver="macvlan")
    assert [n.name for n in i.list_networks()] == ["one"]  # errors changed nothing


def test_allocate_release_exactly_once(db: str) -> None:
    i = IPAM(db)
    net = i.create("n", subnet="10.9.0.0/29", gateway="10.9.0.6")
    got = [i.allocate("n", f"c{k}").ip for k in range(5)]
    assert got == [IPv4Address(f"10.9.0.{k}") for k in (1, 2, 3, 4, 5)]  # .0, .6 (gateway), .7 never
    with pytest.raises(Conflict, match="no free addresses"):
        i.allocate("n", "c5")
    with pytest.raises(AlreadyExists):
        i.allocate("n", "c0")
    assert i.release("n", "c2") is not None
    assert i.release("n", "c2") is None  # a second release is a no-op ...
    c9 = i.allocate("n", "c9")
    assert c9.ip == IPv4Address("10.9.0.3")
    assert i.release("n", "c2") is None  # ... and never frees the address now held by c9
    assert i.lease("n", "c9") is not None and i.count_leases(net.name) == 5


def test_round_robin_and_ip_range(db: str) -> None:
    i = IPAM(db)
    i.create("n", subnet="10.9.0.0/24", ip_range="10.9.0.128/30")
    a = i.allocate("n", "a")
    b = i.allocate("n", "b")
    assert (a.ip, b.ip) == (IPv4Address("10.9.0.128"), IPv4Address("10.9.0.129"))
    i.release("n", "a")
    assert i.allocate("n", "c").ip == IPv4Address("10.9.0.130")  # not the just-freed .128
    assert i.allocate("n", "d", ip="10.9.0.50").ip == IPv4Address("10.9.0.50")  # outside the range, in the subnet
    with pytest.raises(Conflict, match="already in use"):
        i.allocate("n", "e", ip="10.9.0.50")
    for bad in ("10.9.1.1", "10.9.0.1", "10.9.0.255", "nope"):
        with pytest.raises(InvalidArgument):
            i.allocate("n", "e", ip=bad)
    assert i.leases(container_id="e") == []


def test_names_and_ports_live_and_die_with_the_lease(db: str) -> None:
    i = IPAM(db)
    i.create("n")
    lease = i.allocate(
        "n", "c1", names=["web", "WWW"], mac="02:00:00:00:00:AA", dns_servers=["9.9.9.9"],
        ports=[parse("8080:80"), parse("127.0.0.1:5353:53/udp")], port_busy=never_busy,
    )  # fmt: skip
    assert lease.mac == "02:00:00:00:00:aa" and lease.dns_servers == ("9.9.9.9",)
    assert [str(p) for p in lease.ports] == ["80/tcp -> 0.0.0.0:8080", "53/udp -> 127.0.0.1:5353"]
    assert i.lookup("n", "www") == [lease.ip] and ipam.reverse(i.conn, "n", lease.ip) == ["web", "WWW"]
    assert ipam.client_dns_servers(i.conn, "n", lease.ip) == ["9.9.9.9"]
    with pytest.raises(Conflict, match="published by container c1"):
        i.allocate("n", "c2", ports=[parse("127.0.0.1:8080:80")], port_busy=never_busy)
    assert i.leases(container_id="c2") == []  # the failed allocation left nothing
    i.release("n", "c1")
    assert i.lookup("n", "web") == [] and i.orphans() == {}
    assert i.allocate("n", "c2", ports=[parse("8080:80")], port_busy=never_busy).ports


def test_bad_lease_input(db: str) -> None:
    i = IPAM(db)
    i.create("n")
    for kwargs in ({"mac": "zz"}, {"mac": "03:00:00:00:00:01"}, {"names": ["bad name"]}, {"dns_servers": ["x"]}):
        with pytest.raises(InvalidArgument):
            i.allocate("n", "c", **kwargs)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument):
        i.allocate("n", "bad/id")
    with pytest.raises(NotFound):
        i.allocate("nope", "c")


def test_remove(db: str) -> None:
    i = IPAM(db)
    i.create("n")
    i.allocate("n", "c1")
    with pytest.raises(Conflict, match="in use by 1 container"):
        i.remove("n")
    assert i.get("n")
    i.release("n", "c1")
    i.remove("n")
    with pytest.raises(NotFound):
        i.remove("n")
    with pytest.raises(PermissionDenied):
        i.remove("berth")


def test_schema_version(db: str) -> None:
    IPAM(db)
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT version FROM schema_versions WHERE component = 'network'").fetchone()[0] == 1
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.execute("UPDATE schema_versions SET version = 99 WHERE component = 'network'")
    conn.commit()
    with pytest.raises(Unsupported, match="schema 99"):
        IPAM(db)


def test_needs_autocommit_connection(db: str) -> None:
    with pytest.raises(ValueError):
        IPAM(sqlite3.connect(db))
    assert IPAM(ipam.open_db(db)).get("berth")


def _allocate_in_child(db: str, cid: str, barrier: Any, out: Any) -> None:
    i = IPAM(db)
    barrier.wait()
    out.put(str(i.allocate("n", cid, ports=[parse("80")], port_busy=never_busy).ip))


def test_twenty_parallel_allocations_get_distinct_addresses(db: str) -> None:
    IPAM(db).create("n")
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(20)
    out: multiprocessing.Queue[str] = ctx.Queue()
    procs = [ctx.Process(target=_allocate_in_child, args=(db, f"c{k}", barrier, out)) for k in range(20)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    ips = [out.get(timeout=5) for _ in procs]
    assert len(set(ips)) == 20
    i = IPAM(db)
    assert len({lease.ports[0].host_port for lease in i.leases("n")}) == 20


def test_works_on_the_engines_connection(db: str) -> None:
    """The engine's connection: autocommit, rows as sqlite3.Row, foreign keys enforced."""
    conn = sqlite3.connect(db, isolation_level=None)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("PRAGMA user_version = 7")  # the engine's own migrations count; untouched by ours
    i = IPAM(conn)
    net = i.create("n")
    lease = i.allocate("n", "c1", names=["web"], ports=[parse("8080:80")], port_busy=never_busy)
    assert i.lookup("n", "web") == [lease.ip] and i.get(net.id).name == "n"
    assert i.leases(container_id="c1")[0].ports == lease.ports
    with pytest.raises(Conflict):
        i.remove("n")
    assert i.release("n", "c1") is not None
    i.remove("n")
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 7
