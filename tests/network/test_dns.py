"""The per-network name server as a process, talking DNS on 127.0.0.1 (no root needed).

It is started and stopped exactly as the engine does (``dns.start``/``dns.stop``), with its upstreams
pointed at fake servers on 127.0.0.1, so nothing here ever leaves the machine.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import nethelpers
import pytest
from dnslib import RCODE, DNSRecord
from nethelpers import FakeUpstream, addrs, free_port

from berth.errors import Conflict
from berth.network import dns
from berth.network.ipam import IPAM

pytestmark = pytest.mark.unit


@pytest.fixture
def upstream() -> Iterator[FakeUpstream]:
    u = FakeUpstream()
    yield u
    u.close()


@pytest.fixture
def setup(tmp_path: Path, upstream: FakeUpstream) -> Iterator[tuple[IPAM, str, int]]:
    db = str(tmp_path / "berth.db")
    run = str(tmp_path / "run")
    i = IPAM(db)
    i.create("front", subnet="10.99.0.0/24")
    port = free_port()
    dns.start("front", "127.0.0.1", db, run, port=port, upstreams=[f"127.0.0.1:{upstream.port}"])
    yield i, run, port
    dns.stop("front", run)
    assert dns.processes(run) == []


def ask(port: int, name: str, qtype: str = "A", tcp: bool = False, timeout: float = 5.0) -> DNSRecord:
    return nethelpers.ask("127.0.0.1", port, name, qtype, tcp, timeout)


def test_names_appear_and_vanish(setup: tuple[IPAM, str, int]) -> None:
    i, _, port = setup
    assert ask(port, "web.dns.berth").header.rcode == RCODE.NXDOMAIN
    web = i.allocate("front", "c1", names=["web", "www"])
    other = i.allocate("front", "c2", names=["api", "www"])
    assert addrs(ask(port, "web")) == [str(web.ip)]
    assert addrs(ask(port, "WEB.dns.berth")) == [str(web.ip)]
    assert addrs(ask(port, "www")) == sorted([str(web.ip), str(other.ip)])
    assert addrs(ask(port, "web", tcp=True)) == [str(web.ip)]
    aaaa = ask(port, "web", "AAAA")
    assert aaaa.header.rcode == RCODE.NOERROR and not aaaa.rr
    ptr = ask(port, web.ip.reverse_pointer, "PTR")
    assert [str(rr.rdata) for rr in ptr.rr] == ["web.dns.berth."]
    assert ask(port, "nobody.dns.berth").header.rcode == RCODE.NXDOMAIN
    assert ask(port, "10.0.99.10.in-addr.arpa", "PTR").header.rcode == RCODE.NXDOMAIN
    i.release("front", "c1")
    assert ask(port, "web.dns.berth").header.rcode == RCODE.NXDOMAIN
    assert addrs(ask(port, "www")) == [str(other.ip)]


def test_forwarding(setup: tuple[IPAM, str, int], upstream: FakeUpstream) -> None:
    _, _, port = setup
    assert addrs(ask(port, "outside.example")) == ["198.51.100.7"]
    assert addrs(ask(port, "outside.example", tcp=True)) == ["198.51.100.7"]
    assert ask(port, "missing.test").header.rcode == RCODE.NXDOMAIN
    assert "outside.example." in upstream.queries


def test_servfail_quickly_when_upstreams_are_silent(tmp_path: Path) -> None:
    silent = FakeUpstream(silent=True)
    db, run = str(tmp_path / "db"), str(tmp_path / "run")
    IPAM(db).create("n", subnet="10.99.1.0/24")
    port = free_port()
    pid = dns.start("n", "127.0.0.1", db, run, port=port, upstreams=[f"127.0.0.1:{silent.port}"])
    try:
        assert dns.start("n", "127.0.0.1", db, run, port=port) == pid  # already running: the same one
        t = time.monotonic()
        assert ask(port, "slow.example", timeout=10).header.rcode == RCODE.SERVFAIL
        assert time.monotonic() - t < 3.5
    finally:
        assert dns.stop("n", run)
        silent.close()
    assert not dns.stop("n", run)
    assert dns.processes(run) == [] and dns.running(run) == {}


def test_start_reports_a_taken_port(tmp_path: Path) -> None:
    db, run = str(tmp_path / "db"), str(tmp_path / "run")
    IPAM(db).create("n", subnet="10.99.2.0/24")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        with pytest.raises(Conflict, match=r"cannot start the name server of network n.*Address already in use"):
            dns.start("n", "127.0.0.1", db, run, port=taken.getsockname()[1])
    assert dns.processes(run) == []


def test_stale_pidfile_is_ignored(tmp_path: Path) -> None:
    run = str(tmp_path / "run")
    path = Path(dns.pidfile_path(run, "n"))
    path.parent.mkdir(parents=True)
    path.write_text("1 12345\n")  # pid 1 with another start time: not our server
    assert dns.server_pid(run, "n") is None
    assert not dns.stop("n", run)
    assert not path.exists()
