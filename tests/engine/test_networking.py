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
    r = berth("run", "--rm", "-p", "8080:80", IMAGE, "true")
    assert r.returncode == 125 and "bridge" in r.stderr
    assert berth("network", "create", "gone").returncode == 0
    assert berth("network", "prune", "-f").stdout == "Deleted Networks:\ngone\n"
