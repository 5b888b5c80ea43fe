"""The network layer end to end on the real kernel: bridges, veths, nftables, the name server.

Each test runs inside its own "host" network namespace (see conftest.py), with namespaces made by
``ip netns add`` (or ``unshare --net``) playing containers, and ends by asserting that ``leaks`` finds
nothing: no bridge, veth, nft rule or table, lease, DNS name, host port or name-server process.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from dnslib import RCODE
from nethelpers import HOST_ADDR, OUTSIDE_ADDR, FakeUpstream, Namespace, addrs, ask, wait_tcp

from berth.errors import Conflict, InvalidArgument, NotFound
from berth.network import bridge, leaks
from berth.network.manager import Networks, Settings

pytestmark = [pytest.mark.root, pytest.mark.integration]

MakeNs = Callable[[], Namespace]


@pytest.fixture
def upstream(host_ns: Namespace) -> Iterator[FakeUpstream]:
    """The host's resolver, as far as berth's name servers know: a fake on 127.0.0.1."""
    u = FakeUpstream(answer="198.51.100.7")
    yield u
    u.close()


@pytest.fixture(params=["nft", "iptables"])
def nets(
    request: pytest.FixtureRequest, host_ns: Namespace, tmp_path: Path, upstream: FakeUpstream
) -> Iterator[Networks]:
    """berth's network layer over a private database and run directory, with each firewall backend."""
    if shutil.which(request.param) is None:
        pytest.skip(f"{request.param} is not installed")
    resolv = tmp_path / "host-resolv.conf"
    resolv.write_text("nameserver 127.0.0.53\nnameserver 198.51.100.53\nsearch corp.invalid\n")
    settings = Settings(
        run_dir=str(tmp_path / "run"), dns_upstreams=(f"127.0.0.1:{upstream.port}",), resolv_conf=str(resolv),
        firewall=request.param,
    )
    n = Networks(str(tmp_path / "berth.db"), settings)
    yield n
    # A safety net so that one failing test does not leave processes behind; tests assert on leaks first.
    n.gc(live_containers=[])


def assert_clean(nets: Networks) -> None:
    left = leaks.find(nets.db_path, nets.settings.run_dir)
    assert not left, str(left)


def serve_http(ns: Namespace, tmp_path: Path, text: str, ip: str, port: int = 80) -> None:
    root = tmp_path / f"www-{ns.name}-{port}"
    root.mkdir()
    (root / "index.html").write_text(text)
    ns.spawn("busybox", "httpd", "-f", "-p", f"0.0.0.0:{port}", "-h", str(root))
    wait_tcp(ip, port)


def fetch(ns: Namespace, url: str, timeout: float = 3.0) -> str | None:
    """GET ``url`` from inside ``ns`` (names resolve through its /etc/resolv.conf); None on failure."""
    code = f"import urllib.request; print(urllib.request.urlopen({url!r}, timeout={timeout}).read().decode(), end='')"
    proc = ns.py(code, timeout=timeout + 10)
    return proc.stdout if proc.returncode == 0 else None


def host_get(url: str, timeout: float = 3.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return str(r.read().decode())


def udp_echo(addr: tuple[str, int], timeout: float = 5.0) -> bytes | None:
    """Ask until answered: the first datagrams may arrive before the echo server is up."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
        u.settimeout(0.2)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            u.sendto(b"ping", addr)
            try:
                return u.recv(100)
            except TimeoutError:
                continue
    return None


def install_files(nets: Networks, ns: Namespace, cid: str, name: str, **kw: object) -> dict[str, str]:
    texts = nets.container_files(cid, name, name=name, **kw)  # type: ignore[arg-type]
    ns.etc("resolv.conf", texts["resolv.conf"])
    ns.etc("hosts", texts["hosts"])
    return texts


def test_two_containers_reach_each_other_by_ip_and_name(nets: Networks, make_ns: MakeNs, tmp_path: Path) -> None:
    net = nets.create("front")
    a, b = make_ns(), make_ns()
    ea = nets.connect("aaaa0001", a.path, "front", name="alpha")
    eb = nets.connect("bbbb0002", b.path, "front", name="beta", aliases=["db"])
    assert ea.ip != eb.ip and ea.gateway == net.gateway and eb.dns_server == net.gateway
    assert eb.names == ("beta", "db", "bbbb0002")
    files = install_files(nets, a, "aaaa0001", "alpha")
    assert f"nameserver {net.gateway}" in files["resolv.conf"]
    assert "search corp.invalid dns.berth" in files["resolv.conf"]
    assert f"{ea.ip}\talpha" in files["hosts"]
    out = a.run("ip", "-o", "-4", "addr", "show", "dev", "eth0").stdout
    assert f"{ea.ip}/24" in out
    assert "default via" in a.run("ip", "route").stdout

    serve_http(b, tmp_path, "hello from beta", str(eb.ip))
    assert fetch(a, f"http://{eb.ip}/") == "hello from beta"
    assert fetch(a, "http://beta/") == "hello from beta"
    assert fetch(a, "http://db.dns.berth/") == "hello from beta"
    assert fetch(a, "http://bbbb0002/") == "hello from beta"

    # A third container given by pid (an ``unshare --net`` process), resolvable at once.
    proc = subprocess.Popen(["unshare", "--net", "sleep", "60"])
    try:
        home = os.readlink("/proc/self/ns/net")
        deadline = time.monotonic() + 5
        while os.readlink(f"/proc/{proc.pid}/ns/net") == home and time.monotonic() < deadline:
            time.sleep(0.01)
        ec = nets.connect("cccc0003", proc.pid, "front", name="gamma")
        assert addrs(ask(str(net.gateway), 53, "gamma")) == [str(ec.ip)]
        ping = subprocess.run(["nsenter", "-t", str(proc.pid), "-n", "busybox", "ping", "-c1", "-W2", str(eb.ip)],
                              capture_output=True, check=False)  # fmt: skip
        assert ping.returncode == 0, ping
    finally:
        proc.kill()
        proc.wait()
    nets.release_container("cccc0003")

    # Names vanish with their container; the others stay.
    nets.release_container("bbbb0002")
    assert ask(str(net.gateway), 53, "beta.dns.berth").header.rcode == RCODE.NXDOMAIN
    assert fetch(a, "http://beta/", timeout=2) is None
    assert addrs(ask(str(net.gateway), 53, "alpha", tcp=True)) == [str(ea.ip)]
    # Names the network does not know go to the upstream.
    assert addrs(ask(str(net.gateway), 53, "www.example")) == ["198.51.100.7"]

    nets.release_container("aaaa0001")
    nets.release_container("aaaa0001")  # again: a no-op
    nets.remove("front")
    assert_clean(nets)


def test_networks_are_isolated_unless_a_container_joins_both(
    nets: Networks, make_ns: MakeNs, tmp_path: Path
) -> None:
    n1, n2 = nets.create("n1"), nets.create("n2")
    a, b, c = make_ns(), make_ns(), make_ns()
    ea = nets.connect("aaaa0001", a.path, "n1", name="alpha")
    eb = nets.connect("bbbb0002", b.path, "n2", name="beta")
    ec1 = nets.connect("cccc0003", c.path, "n1", name="both")
    ec2 = nets.connect("cccc0003", c.path, "n2", name="both", ifname="eth1")
    serve_http(a, tmp_path, "a", str(ea.ip))
    serve_http(b, tmp_path, "b", str(eb.ip))
    install_files(nets, c, "cccc0003", "both")

    assert fetch(a, f"http://{eb.ip}/", timeout=1) is None
    assert fetch(b, f"http://{ea.ip}/", timeout=1) is None
    # It is berth's rules that keep them apart (there are routes both ways): without them a reaches b.
    if nets.settings.firewall == "nft":
        subprocess.run(["nft", "flush", "chain", "inet", "berth", "forward"], check=True)
    else:
        subprocess.run(["iptables", "-F", "BERTH-FORWARD"], check=True)
    assert fetch(a, f"http://{eb.ip}/") == "b"
    nets.firewall.ensure_network(n1)
    nets.firewall.ensure_network(n2)
    assert fetch(a, f"http://{eb.ip}/", timeout=1) is None
    assert fetch(c, f"http://{ea.ip}/") == "a"
    assert fetch(c, f"http://{eb.ip}/") == "b"
    assert fetch(c, "http://alpha/") == "a" and fetch(c, "http://beta/") == "b"
    # Each network's name server knows only its own containers.
    assert ask(str(n1.gateway), 53, "beta.dns.berth").header.rcode == RCODE.NXDOMAIN
    assert addrs(ask(str(n2.gateway), 53, "both")) == [str(ec2.ip)]
    assert addrs(ask(str(n1.gateway), 53, "both")) == [str(ec1.ip)]
    assert {e.network for e in nets.endpoints("cccc0003")} == {"n1", "n2"}

    nets.disconnect("cccc0003", "n2")
    assert fetch(c, f"http://{eb.ip}/", timeout=1) is None
    for cid in ("aaaa0001", "bbbb0002", "cccc0003"):
        nets.release_container(cid)
    nets.remove("n1")
    nets.remove("n2")
    assert_clean(nets)


WHOAMI = textwrap.dedent("""
    import socket
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", 8000))
    s.listen()
    while True:
        c, addr = s.accept()
        c.recv(4096)
        c.sendall(b"HTTP/1.0 200 OK\\r\\n\\r\\n" + addr[0].encode())
        c.close()
""")


def test_outbound_is_masqueraded_and_internal_networks_have_no_way_out(
    nets: Networks, make_ns: MakeNs, outside: Namespace
) -> None:
    outside.spawn(sys.executable, "-I", "-c", WHOAMI)
    wait_tcp(OUTSIDE_ADDR, 8000)
    nets.create("ext")
    internal = nets.create("int", internal=True)
    e, i = make_ns(), make_ns()
    nets.connect("eeee0001", e.path, "ext")
    ei = nets.connect("iiii0002", i.path, "int", name="inside")
    assert ei.gateway is None

    # The outside sees the host's address, not the container's: masquerading.
    assert fetch(e, f"http://{OUTSIDE_ADDR}:8000/") == HOST_ADDR
    # No default route in the internal container ...
    assert "default" not in i.run("ip", "route").stdout
    assert fetch(i, f"http://{OUTSIDE_ADDR}:8000/", timeout=1) is None
    # ... and the firewall stops it even when a route is added by hand.
    i.run("ip", "route", "add", "default", "via", str(internal.gateway), check=True)
    assert fetch(i, f"http://{OUTSIDE_ADDR}:8000/", timeout=1) is None
    # It still has its network's name server, on the gateway address.
    assert addrs(ask(str(internal.gateway), 53, "inside")) == [str(ei.ip)]

    nets.release_container("eeee0001")
    nets.release_container("iiii0002")
    nets.prune()
    assert [n.name for n in nets.list_networks()] == []
    assert_clean(nets)


UDP_ECHO = textwrap.dedent("""
    import socket
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", 5353))
    while True:
        data, addr = s.recvfrom(100)
        s.sendto(b"echo:" + data, addr)
""")


def test_published_ports_from_the_host_loopback_and_outside(
    nets: Networks, make_ns: MakeNs, outside: Namespace, tmp_path: Path
) -> None:
    net = nets.create("web")
    w, x = make_ns(), make_ns()
    ew = nets.connect(
        "wwww0001", w.path, "web", name="w",
        publish=["8080:80", "127.0.0.1:8081:80", "9000-9001:80-81", "5353:5353/udp", "80"],
    )  # fmt: skip
    nets.connect("xxxx0002", x.path, "web", name="x")
    serve_http(w, tmp_path, "published", str(ew.ip))
    serve_http(w, tmp_path, "published81", str(ew.ip), port=81)
    w.spawn(sys.executable, "-I", "-c", UDP_ECHO)
    fixed = (8080, 8081, 9000)
    random_port = next(p.host_port for p in ew.ports if p.container_port == 80 and p.host_port not in fixed)
    assert sorted(str(p) for p in nets.ports("wwww0001")) == sorted(str(p) for p in ew.ports)

    # From the host itself: through loopback and through its own address.
    assert host_get("http://127.0.0.1:8080/") == "published"
    assert host_get(f"http://{HOST_ADDR}:8080/") == "published"
    assert host_get("http://127.0.0.1:8081/") == "published"
    assert host_get("http://127.0.0.1:9001/") == "published81"
    assert host_get(f"http://127.0.0.1:{random_port}/") == "published"
    assert udp_echo(("127.0.0.1", 5353)) == b"echo:ping"
    # From another host, only what is published on every address.
    assert fetch(outside, f"http://{HOST_ADDR}:8080/") == "published"
    assert fetch(outside, f"http://{HOST_ADDR}:8081/", timeout=1) is None
    # From another container, through the host's address and the gateway's; and from itself.
    assert fetch(x, f"http://{HOST_ADDR}:8080/") == "published"
    assert fetch(x, f"http://{net.gateway}:9000/") == "published"
    assert fetch(w, f"http://{HOST_ADDR}:8080/") == "published"

    nets.release_container("wwww0001")
    with pytest.raises(OSError):
        host_get("http://127.0.0.1:8080/", timeout=1)
    nets.release_container("xxxx0002")
    nets.remove("web")
    assert_clean(nets)


def test_a_taken_host_port_fails_before_anything_is_created(nets: Networks, make_ns: MakeNs) -> None:
    nets.create("p")
    a, b = make_ns(), make_ns()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for spec in (f"127.0.0.1:{port}:80", f"{port}:80"):
            with pytest.raises(Conflict, match=rf"{port}/tcp is already in use \(another program"):
                nets.connect("aaaa0001", a.path, "p", publish=[spec])
            assert_clean(nets)  # no lease, bridge, rule or name server was made
        assert "eth0" not in a.run("ip", "link").stdout
    nets.connect("aaaa0001", a.path, "p", publish=["18080:80"])
    with pytest.raises(Conflict, match=r"18080/tcp is already in use \(published by container aaaa0001"):
        nets.connect("bbbb0002", b.path, "p", publish=["127.0.0.1:18080:80"])
    assert "eth0" not in b.run("ip", "link").stdout
    with pytest.raises(InvalidArgument):
        nets.connect("bbbb0002", b.path, "p", publish=["18080:80/icmp"])
    with pytest.raises(NotFound):
        nets.connect("bbbb0002", b.path, "nosuch")
    nets.release_container("aaaa0001")
    nets.remove("p")
    assert_clean(nets)


def test_twenty_parallel_connects_get_distinct_addresses(nets: Networks, make_ns: MakeNs) -> None:
    nets.create("many")
    spaces = [make_ns() for _ in range(20)]
    with ThreadPoolExecutor(20) as pool:
        eps = list(pool.map(lambda k: nets_in_thread(nets, f"cont{k:04d}", spaces[k].path, f"c{k}"), range(20)))
    assert len({e.ip for e in eps}) == 20
    assert len(bridge.links()) == 21  # the bridge and 20 veths
    first, last = spaces[0], spaces[-1]
    assert first.run("busybox", "ping", "-c1", "-W2", str(eps[-1].ip)).returncode == 0
    assert addrs(ask(str(eps[0].dns_server), 53, "c19")) == [str(eps[-1].ip)]
    assert last.run("busybox", "ping", "-c1", "-W2", str(eps[0].ip)).returncode == 0
    with ThreadPoolExecutor(20) as pool:
        list(pool.map(lambda k: release_in_thread(nets, f"cont{k:04d}"), range(20)))
    nets.remove("many")
    assert_clean(nets)


def nets_in_thread(nets: Networks, cid: str, path: str, name: str) -> object:
    """Each thread its own Networks (its own database connection), as separate berth processes would."""
    return Networks(nets.db_path, nets.settings).connect(cid, path, "many", name=name)


def release_in_thread(nets: Networks, cid: str) -> None:
    Networks(nets.db_path, nets.settings).release_container(cid)


def test_removing_a_network_in_use_is_refused_and_changes_nothing(nets: Networks, make_ns: MakeNs) -> None:
    net = nets.create("busy")
    a = make_ns()
    nets.connect("aaaa0001", a.path, "busy")
    before = (bridge.links(), nets.firewall.rules())
    with pytest.raises(Conflict, match="in use by 1 container"):
        nets.remove("busy")
    assert (bridge.links(), nets.firewall.rules()) == before
    assert a.run("busybox", "ping", "-c1", "-W2", str(net.gateway)).returncode == 0
    nets.release_container("aaaa0001")
    nets.remove("busy")
    assert_clean(nets)


def test_default_network_and_per_container_dns(
    nets: Networks, make_ns: MakeNs, outside: Namespace
) -> None:
    a, b = make_ns(), make_ns()
    ea = nets.connect("aaaa0001", a.path)  # the default network
    assert ea.network == "berth" and ea.bridge == "berth0" and ea.dns_server is None
    files = install_files(nets, a, "aaaa0001", "alpha", add_hosts=["gw:host-gateway"])
    # No name server on the default network: the host's servers, minus loopback ones.
    assert "nameserver 198.51.100.53" in files["resolv.conf"] and "127.0.0.53" not in files["resolv.conf"]
    assert f"{ea.gateway}\tgw" in files["hosts"]
    # A user network container with --dns: berth's server forwards its queries there.
    own = FakeUpstream(answer="198.51.100.99", bind=OUTSIDE_ADDR, netns=outside.path, port=53)
    try:
        nets.create("u")
        eb = nets.connect("bbbb0002", b.path, "u", name="beta", dns_servers=[OUTSIDE_ADDR])
        install_files(nets, b, "bbbb0002", "beta", dns_servers=[OUTSIDE_ADDR])
        code = "import socket; print(socket.gethostbyname('www.example'), end='')"
        assert b.py(code).stdout == "198.51.100.99"
        assert own.queries == ["www.example."]
        # ... while the host itself asking the same server gets the default upstream.
        assert addrs(ask(str(eb.dns_server), 53, "www.example")) == ["198.51.100.7"]
    finally:
        own.close()
    nets.release_container("aaaa0001")
    nets.release_container("bbbb0002")
    nets.remove("u")
    assert_clean(nets)


CRASH = textwrap.dedent("""
    import os, signal, sys
    from berth.network import bridge
    from berth.network.manager import Networks, Settings
    db, run, netns, where, backend = sys.argv[1:]
    n = Networks(db, Settings(run_dir=run, dns_upstreams=("127.0.0.1:9",), firewall=backend))
    def die(*a, **k):
        os.kill(os.getpid(), signal.SIGKILL)
    if where == "publish":
        n.firewall.publish = die
    else:
        bridge.attach = die
    n.connect("dead0001", netns, "crash", name="dead", publish=["18081:80"])
""")


@pytest.mark.parametrize("where", ["publish", "attach"])
def test_sigkill_mid_setup_leaves_only_what_clean_up_finds(
    nets: Networks, make_ns: MakeNs, where: str
) -> None:
    nets.create("crash")
    a = make_ns()
    argv = [nets.db_path, nets.settings.run_dir, a.path, where, nets.settings.firewall]
    proc = subprocess.run([sys.executable, "-c", CRASH, *argv],
                          capture_output=True, text=True, check=False)  # fmt: skip
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    left = leaks.find(nets.db_path, nets.settings.run_dir)
    assert left.leases == ["crash/dead0001"] and left.ports and left.dns_servers and left.bridges
    assert bool(left.veths) == (where == "publish")
    if where == "publish":
        nets.release_container("dead0001")  # what ``rm`` does
    else:
        nets.gc(live_containers=[])  # what a clean-up at start-up does
    nets.remove("crash")
    assert_clean(nets)


def test_a_dead_container_namespace_takes_its_veth_along(nets: Networks, make_ns: MakeNs) -> None:
    nets.create("gone")
    a = make_ns()
    nets.connect("aaaa0001", a.path, "gone")
    subprocess.run(["ip", "netns", "del", a.name], check=True)
    deadline = time.monotonic() + 5
    while any(link.container_id for link in bridge.links()) and time.monotonic() < deadline:
        time.sleep(0.02)
    nets.release_container("aaaa0001")
    nets.remove("gone")
    assert_clean(nets)


def test_attach_errors_undo_themselves(nets: Networks, make_ns: MakeNs) -> None:
    nets.create("e")
    a = make_ns()
    a.run("ip", "link", "add", "eth0", "type", "veth", "peer", "name", "other0", check=True)
    with pytest.raises(Conflict, match="already has an interface named eth0"):
        nets.connect("aaaa0001", a.path, "e")
    with pytest.raises(NotFound, match="does not exist"):
        nets.connect("aaaa0001", "/run/netns/no-such-namespace", "e")
    nets.remove("e")
    assert_clean(nets)
