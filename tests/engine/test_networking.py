"""Networking end to end: bridge networks, published ports, names between containers, isolation,
``--internal``, port conflicts, and nothing left on the host afterwards."""

from __future__ import annotations

import os
import shutil
import socket
import time
import urllib.request
from typing import Any

import pytest

from berth.engine.engine import Engine
from berth.kernel.syscalls import MNT_DETACH, umount2
from berth.network import leaks

IMAGE = "localhost/busybox:latest"
pytestmark = [pytest.mark.root, pytest.mark.integration]


@pytest.fixture(autouse=True)
def _needs_networking() -> None:
    if os.geteuid() != 0:
        pytest.skip("bridge networking needs root")
    if shutil.which("unshare") is None:
        pytest.skip("util-linux unshare is not installed")
    if shutil.which("nft") is None and shutil.which("iptables") is None:
        pytest.skip("neither nft nor iptables is installed")


@pytest.fixture
def net_engine(engine: Engine) -> Any:
    """The engine; afterwards its containers and user networks are removed and nothing may be left."""
    yield engine
    for c in engine.containers():
        engine.remove(c.id, force=True)
    for n in engine.network_list():
        if not n.default:
            engine.network_remove(n.name)
    found = leaks.find(os.path.join(engine.root, "berth.db"), os.path.join(engine.runroot, "network"))
    assert not found, str(found)
    assert not os.listdir(os.path.join(engine.runroot, "netns"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _fetch(url: str, timeout: float = 10) -> str:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                return str(r.read().decode())
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def _web(engine: Engine, name: str, network: str, **opts: Any) -> str:
    cmd = ["sh", "-c", f"mkdir -p /www && echo hello from {name} > /www/index.html && exec httpd -f -p 80 -h /www"]
    return engine.run(IMAGE, cmd, pull="never", name=name, network=network, **opts).id


def _exec(berth: Any, name: str, *cmd: str) -> Any:
    return berth("exec", name, *cmd, timeout=30)


def _get(berth: Any, client: str, ip: str, tries: int = 20) -> Any:
    """wget http://IP/ from the container ``client``, retrying while the server starts."""
    loop = f"for i in $(seq {tries}); do timeout 3 wget -qO- http://{ip}:80/ && exit 0; sleep 0.2; done; exit 1"
    return _exec(berth, client, "sh", "-c", loop)


def _resolve(berth: Any, client: str, name: str) -> str:
    """``name``'s address as the container ``client`` sees it through its resolv.conf."""
    r = _exec(berth, client, "sh", "-c", f"nslookup {name} | sed -n '/^Name/,$p' | awk '/^Address/ {{print $NF}}'")
    assert r.returncode == 0 and r.stdout.strip(), (r.stdout, r.stderr)
    return str(r.stdout.split()[0])


def test_published_port_reaches_container_from_host(net_engine: Engine, berth: Any) -> None:
    port = _free_port()
    r = berth("run", "-d", "--name", "pub", "--network", "bridge", "-p", f"127.0.0.1:{port}:80", IMAGE,
              "sh", "-c", "mkdir -p /www && echo published > /www/index.html && exec httpd -f -p 80 -h /www")
    assert r.returncode == 0, r.stderr
    assert _fetch(f"http://127.0.0.1:{port}/") == "published\n"
    assert berth("port", "pub").stdout == f"80/tcp -> 127.0.0.1:{port}\n"
    assert berth("port", "pub", "80").stdout == f"127.0.0.1:{port}\n"
    info = net_engine.inspect("pub")["NetworkSettings"]
    assert info["Ports"] == {"80/tcp": [{"HostIp": "127.0.0.1", "HostPort": str(port)}]}
    # stop and start again: same namespace, same mapping
    net_engine.stop("pub", timeout=2)
    net_engine.start("pub")
    assert _fetch(f"http://127.0.0.1:{port}/") == "published\n"
    hosts = _exec(berth, "pub", "cat", "/etc/hosts", "/etc/hostname").stdout
    assert "pub" in hosts
    # the namespace lives on tmpfs: gone (as after a reboot), start makes and connects a new one
    net_engine.stop("pub", timeout=2)
    c = net_engine.get("pub")
    umount2(net_engine.netns_path(c.id), MNT_DETACH)
    os.unlink(net_engine.netns_path(c.id))
    net_engine.start("pub")
    assert _fetch(f"http://127.0.0.1:{port}/") == "published\n"


def test_port_in_use_is_an_error_before_start(net_engine: Engine, berth: Any) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = berth("run", "-d", "--name", "busy", "--network", "bridge", "-p", f"127.0.0.1:{port}:80", IMAGE,
                  "sleep", "300")
    assert r.returncode == 125 and r.stderr.startswith("Error: ") and str(port) in r.stderr, r.stderr
    assert berth("ps", "-aq").stdout == ""


def test_names_on_a_user_network_and_isolation(net_engine: Engine, berth: Any) -> None:
    assert berth("network", "create", "--label", "team=a", "front").returncode == 0
    assert berth("network", "create", "back").returncode == 0
    ls = berth("network", "ls", "--format", "{{.Name}}").stdout.split()
    assert {"front", "back"} <= set(ls)
    _web(net_engine, "web", "front", aliases=["www"])
    net_engine.run(IMAGE, ["sleep", "300"], pull="never", name="client", network="front")
    net_engine.run(IMAGE, ["sleep", "300"], pull="never", name="outsider", network="back")
    # busybox-static calls glibc NSS (segfaulting without libnss in the image) for host names and for
    # the "http" service, and -T crashes it: names are resolved with busybox nslookup and URLs carry the port.
    r = _get(berth, "client", _resolve(berth, "client", "web"))
    assert r.stdout == "hello from web\n", (_resolve(berth, "client", "web"), r.stderr)
    assert _get(berth, "client", _resolve(berth, "client", "www")).stdout == "hello from web\n"
    web_ip = net_engine.inspect("web")["NetworkSettings"]["Networks"]["front"]["IPAddress"]
    assert _exec(berth, "outsider", "nslookup", "web").returncode != 0
    r = _get(berth, "outsider", web_ip, tries=2)
    assert r.returncode != 0 and r.stdout == ""
    inspect = berth("network", "inspect", "--format", "{{.Labels.team}}", "front")
    assert inspect.stdout == "a\n"
    rm = berth("network", "rm", "front")
    assert rm.returncode == 1 and "Error" in rm.stderr  # still in use


def test_internal_network_has_no_way_out(net_engine: Engine, berth: Any) -> None:
    assert berth("network", "create", "--internal", "--subnet", "10.231.7.0/24", "sealed").returncode == 0
    _web(net_engine, "inner", "sealed", ip="10.231.7.10")
    net_engine.run(IMAGE, ["sleep", "300"], pull="never", name="peer", network="sealed")
    r = _get(berth, "peer", "10.231.7.10")
    assert r.stdout == "hello from inner\n"
    route = _exec(berth, "peer", "ip", "route").stdout
    assert "default" not in route


def test_none_host_and_cleanup(net_engine: Engine, berth: Any) -> None:
    r = berth("run", "--rm", "--network", "none", IMAGE, "ip", "-o", "link")
    assert r.returncode == 0 and "eth0" not in r.stdout
    r = berth("run", "--rm", "--network", "bridge", "--dns-search", "example.test", "--add-host", "db:10.9.9.9",
              IMAGE, "sh", "-c", "cat /etc/resolv.conf /etc/hosts; ip -o -4 addr show eth0")
    assert r.returncode == 0, r.stderr
    assert "search example.test" in r.stdout and "10.9.9.9" in r.stdout and "db" in r.stdout
    assert "inet " in r.stdout
    r = berth("run", "--rm", "--network", "none", "-p", "8080:80", IMAGE, "true")
    assert r.returncode == 125 and "bridge" in r.stderr
    # With no --network (and no BERTH_NETWORK), a container is on the default bridge network, as with Docker.
    r = berth("run", "--rm", IMAGE, "sh", "-c", "ip -o -4 addr show eth0", env={"BERTH_NETWORK": ""})
    assert r.returncode == 0 and "inet " in r.stdout, r.stderr
    assert berth("network", "create", "gone").returncode == 0
    assert berth("network", "prune", "-f").stdout == "Deleted Networks:\ngone\n"


def _lines(berth: Any, name: str, *cmd: str) -> list[str]:
    r = _exec(berth, name, *cmd)
    assert r.returncode == 0, r.stderr
    return [line for line in r.stdout.splitlines() if line.strip()]


def test_connect_and_disconnect_a_running_container(net_engine: Engine, berth: Any) -> None:
    assert berth("network", "create", "--subnet", "10.231.8.0/24", "live").returncode == 0
    _web(net_engine, "site", "live", aliases=["www"])
    net_engine.run(IMAGE, ["sleep", "300"], pull="never", name="roamer", network="bridge")
    r = berth("network", "connect", "--alias", "rover", "--ip", "10.231.8.50", "live", "roamer")
    assert r.returncode == 0 and r.stdout == "", r.stderr
    assert "10.231.8.50/24" in _exec(berth, "roamer", "ip", "-o", "-4", "addr", "show", "eth1").stdout
    # the new interface reaches the network by name, and the network resolves the new names
    assert _get(berth, "roamer", _resolve(berth, "roamer", "www")).stdout == "hello from site\n"
    assert _resolve(berth, "site", "rover") == "10.231.8.50" == _resolve(berth, "site", "roamer")
    hosts = _lines(berth, "roamer", "cat", "/etc/hosts")
    own = [line.split()[0] for line in hosts if "roamer" in line.split()[1:]]
    bridge_ip = net_engine.inspect("roamer")["NetworkSettings"]["Networks"]["berth"]["IPAddress"]
    assert own == [bridge_ip, "10.231.8.50"], hosts
    assert "nameserver 10.231.8.1" in _lines(berth, "roamer", "cat", "/etc/resolv.conf")
    again = berth("network", "connect", "live", "roamer")
    assert again.returncode == 125 and "already connected" in again.stderr
    # leaving the network that carried the default route: the other one takes it over
    assert berth("network", "disconnect", "bridge", "roamer").returncode == 0
    assert _exec(berth, "roamer", "ip", "route").stdout.startswith("default via 10.231.8.1 dev eth1")
    assert "eth0" not in _exec(berth, "roamer", "ip", "-o", "link").stdout
    assert [line.split()[0] for line in _lines(berth, "roamer", "cat", "/etc/hosts") if "roamer" in line] == [
        "10.231.8.50"]
    # and the last one: its names vanish at once
    assert berth("network", "disconnect", "live", "roamer").returncode == 0
    assert _exec(berth, "site", "nslookup", "rover").returncode != 0
    gone = berth("network", "disconnect", "live", "roamer")
    assert gone.returncode == 125 and "not connected" in gone.stderr
    assert berth("network", "disconnect", "-f", "live", "roamer").returncode == 0
    # a container without a bridge network cannot be connected
    net_engine.run(IMAGE, ["sleep", "300"], pull="never", name="hermit", network="none")
    r = berth("network", "connect", "live", "hermit")
    assert r.returncode == 125 and "--network none" in r.stderr


def test_several_networks_and_the_ports_column(net_engine: Engine, berth: Any) -> None:
    assert berth("network", "create", "--subnet", "10.231.9.0/24", "one").returncode == 0
    assert berth("network", "create", "--internal", "--subnet", "10.231.10.0/24", "two").returncode == 0
    tcp, udp = _free_port(), 45100
    r = berth("run", "-d", "--name", "multi", "--network", "one", "--network", "name=two,alias=second,ip=10.231.10.9",
              "-p", f"127.0.0.1:{tcp}:80", "-p", f"{udp}-{udp + 2}:9000-9002/udp", IMAGE, "sleep", "300")
    assert r.returncode == 0, r.stderr
    addrs = _exec(berth, "multi", "ip", "-o", "-4", "addr").stdout
    assert "eth0" in addrs and "10.231.9." in addrs and "eth1" in addrs and "10.231.10.9/24" in addrs
    assert _exec(berth, "multi", "ip", "route").stdout.startswith("default via 10.231.9.1 dev eth0")
    net_engine.run(IMAGE, ["sleep", "300"], pull="never", name="peer2", network="two")
    assert _resolve(berth, "peer2", "second") == "10.231.10.9"
    ports = f"127.0.0.1:{tcp}->80/tcp, 0.0.0.0:{udp}-{udp + 2}->9000-9002/udp"
    assert berth("ps", "--format", "{{.Names}} {{.Ports}}").stdout.splitlines()[-1] == f"multi {ports}"
    assert ports in berth("ps").stdout
    assert berth("port", "multi", "9001/udp").stdout == f"0.0.0.0:{udp + 1}\n"
    # the namespace gone (as after a reboot): start joins both networks again, same names and --ip
    net_engine.stop("multi", timeout=2)
    umount2(net_engine.netns_path(net_engine.get("multi").id), MNT_DETACH)
    net_engine.start("multi")
    assert "10.231.10.9/24" in _exec(berth, "multi", "ip", "-o", "-4", "addr", "show", "eth1").stdout
    assert _resolve(berth, "peer2", "second") == "10.231.10.9"
    assert ports in berth("ps").stdout
    bad = berth("run", "--rm", "--network", "one", "--network", "none", IMAGE, "true")
    assert bad.returncode == 125 and "conflicting options" in bad.stderr
    twice = berth("run", "--rm", "--network", "one", "--network", "one", IMAGE, "true")
    assert twice.returncode == 125 and "only once" in twice.stderr


def test_container_mode_shares_the_namespace(net_engine: Engine, berth: Any) -> None:
    assert berth("network", "create", "shared").returncode == 0
    _web(net_engine, "owner", "shared", hostname="ownerhost")
    r = berth("run", "--rm", "--network", "container:owner", IMAGE, "sh", "-c",
              "for i in $(seq 20); do wget -qO- http://127.0.0.1:80/ && break; sleep 0.2; done; hostname")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "hello from owner\nownerhost\n"
    bad = berth("run", "--rm", "--network", "container:owner", "-p", "8080:80", IMAGE, "true")
    assert bad.returncode == 125 and "conflicting options" in bad.stderr
    net_engine.stop("owner", timeout=2)
    stopped = berth("run", "--rm", "--network", "container:owner", IMAGE, "true")
    assert stopped.returncode == 125 and "not running" in stopped.stderr


def test_etc_files_without_a_bridge(net_engine: Engine, berth: Any) -> None:
    r = berth("run", "--rm", "--network", "none", "--hostname", "solo", "--dns", "10.3.3.3", "--dns-search",
              "corp.test", "--add-host", "db:10.9.9.9", IMAGE, "cat", "/etc/hosts", "/etc/resolv.conf", "/etc/hostname")
    assert r.returncode == 0, r.stderr
    assert "10.9.9.9\tdb\n" in r.stdout and "nameserver 10.3.3.3\n" in r.stdout
    assert "search corp.test\n" in r.stdout and r.stdout.endswith("solo\n")
    r = berth("run", "--rm", "--network", "host", "--add-host", "db:10.9.9.8", IMAGE, "sh", "-c",
              "hostname; cat /etc/hosts")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("\n", 1)[0] == socket.gethostname() and "10.9.9.8\tdb\n" in r.stdout


STEPS = ("netns", "lease", "infra", "veth", "ports", "files")


@pytest.mark.parametrize("step", STEPS)
def test_sigkill_mid_setup_leaves_nothing(net_engine: Engine, berth: Any, step: str) -> None:
    """berth killed at each step of a container's network set-up: the next berth command finds the
    dead process's marker and removes everything, the half-made container included."""
    assert berth("network", "create", "crashnet").returncode == 0
    _web(net_engine, "survivor", "crashnet")  # another container keeps the network's host side up
    r = berth("run", "-d", "--name", "victim", "--network", "crashnet", "-p", f"{_free_port()}:80", IMAGE,
              "sleep", "300", env={"BERTH_NET_CRASH_AT": step})
    assert r.returncode == -9, (r.returncode, r.stderr)
    assert berth("network", "ls").returncode == 0  # the next command cleans up
    assert berth("ps", "-a", "--format", "{{.Names}}").stdout == "survivor\n"
    survivor = net_engine.get("survivor").id
    found = leaks.find(os.path.join(net_engine.root, "berth.db"), os.path.join(net_engine.runroot, "network"))
    assert {lease.split("/")[1] for lease in found.leases} == {survivor}
    assert all(survivor in rule for rule in found.nft_rules if "berth:ctr:" in rule), found.nft_rules
    assert len(found.veths) == 1 and len(found.dns_servers) == 1
    assert os.listdir(os.path.join(net_engine.runroot, "netns")) == [survivor]
    assert not os.listdir(os.path.join(net_engine.runroot, "network", "pending"))


def test_sigkill_at_any_moment_leaves_nothing(net_engine: Engine, berth: Any, engine_dirs: Any) -> None:
    """berth run killed from outside after growing delays: after the next command, only containers
    that exist hold anything, and removing them leaves the host clean (checked by the fixture)."""
    import signal
    import subprocess
    import sys

    assert berth("network", "create", "timed").returncode == 0
    root, runroot = engine_dirs
    argv = [os.path.join(os.path.dirname(sys.executable), "berth"), "--root", root, "--runroot", runroot, "run",
            "-d", "--network", "timed", "-p", "80", IMAGE, "sleep", "300"]
    pending = os.path.join(runroot, "network", "pending")
    interrupted = 0
    for step in range(1, 16):
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(step * 0.04)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        interrupted += bool(os.path.isdir(pending) and os.listdir(pending))
        assert berth("network", "ls").returncode == 0
        existing = set(berth("ps", "-aq", "--no-trunc").stdout.split())
        found = leaks.find(os.path.join(root, "berth.db"), os.path.join(runroot, "network"))
        assert {lease.split("/")[1] for lease in found.leases} <= existing, (step, found)
        assert set(os.listdir(os.path.join(runroot, "netns"))) <= existing, step
    assert interrupted, "no kill landed inside the network set-up"
