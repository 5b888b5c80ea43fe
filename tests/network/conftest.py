"""Fixtures of the network tier: a private "host" network namespace, an "outside" peer, fake containers.

Root tests run berth's network layer inside a network namespace made for the test (``host_ns``): the
test's thread enters it with setns(2), so bridges, nftables tables, sysctls (ip_forward) and the name
servers berth starts all live there, and the machine's own network is neither touched nor reachable —
the only other addresses are those of namespaces the test makes. "Containers" are namespaces made with
``ip netns add``; ``outside`` is a namespace linked to the host namespace, playing the rest of the world
(198.51.100.2, with the host at 198.51.100.1).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from berth.kernel.syscalls import CLONE_NEWNET, setns

HOST_ADDR = "198.51.100.1"
OUTSIDE_ADDR = "198.51.100.2"
PY = sys.executable


def sh(*argv: str, check: bool = True, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=check, timeout=timeout)


def need_network_tools() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: network namespaces, bridges and nftables are real here")
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")
    if not os.path.exists("/bin/busybox") and not shutil.which("busybox"):
        pytest.skip("busybox is not installed")


@dataclass
class Namespace:
    """A named network namespace with processes started in it; removed with them at the end."""

    name: str
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def path(self) -> str:
        return f"/run/netns/{self.name}"

    def run(self, *argv: str, check: bool = False, timeout: float = 20) -> subprocess.CompletedProcess[str]:
        return sh("ip", "netns", "exec", self.name, *argv, check=check, timeout=timeout)

    def py(self, code: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
        return self.run(PY, "-I", "-c", code, timeout=timeout)

    def spawn(self, *argv: str) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            ["ip", "netns", "exec", self.name, *argv],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        self.procs.append(proc)
        return proc

    def etc(self, name: str, text: str) -> None:
        """A file ``ip netns exec`` bind-mounts over /etc/NAME inside this namespace."""
        d = Path("/etc/netns") / self.name
        d.mkdir(parents=True, exist_ok=True)
        (d / name).write_text(text)

    def close(self) -> None:
        for proc in self.procs:
            proc.kill()
            proc.wait()
        shutil.rmtree(Path("/etc/netns") / self.name, ignore_errors=True)
        with contextlib.suppress(OSError):
            Path("/etc/netns").rmdir()  # only when empty: another test may be using it
        sh("ip", "netns", "del", self.name, check=False)


def new_namespace(prefix: str) -> Namespace:
    ns = Namespace(f"{prefix}-{uuid.uuid4().hex[:8]}")
    sh("ip", "netns", "add", ns.name)
    sh("ip", "netns", "exec", ns.name, "ip", "link", "set", "lo", "up")
    return ns


@pytest.fixture
def host_ns() -> Iterator[Namespace]:
    """Run the test inside a fresh network namespace playing the host."""
    need_network_tools()
    ns = new_namespace("bth")
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    target = os.open(ns.path, os.O_RDONLY | os.O_CLOEXEC)
    setns(target, CLONE_NEWNET)
    os.close(target)
    try:
        yield ns
    finally:
        setns(home, CLONE_NEWNET)
        os.close(home)
        ns.close()


@pytest.fixture
def outside(host_ns: Namespace) -> Iterator[Namespace]:
    """A namespace linked to the host namespace: the world beyond the host, at 198.51.100.2."""
    ns = new_namespace("bto")
    peer = f"bto{ns.name[-8:]}"
    sh("ip", "link", "add", "bt-out", "type", "veth", "peer", "name", peer)
    sh("ip", "link", "set", peer, "netns", ns.name)
    sh("ip", "addr", "add", f"{HOST_ADDR}/24", "dev", "bt-out")
    sh("ip", "link", "set", "bt-out", "up")
    ns.run("ip", "link", "set", peer, "name", "eth0", check=True)
    ns.run("ip", "addr", "add", f"{OUTSIDE_ADDR}/24", "dev", "eth0", check=True)
    ns.run("ip", "link", "set", "eth0", "up", check=True)
    yield ns
    ns.close()


@pytest.fixture
def make_ns() -> Iterator[Callable[[], Namespace]]:
    """``make_ns()`` → a fresh namespace playing a container; all are removed at the end."""
    made: list[Namespace] = []

    def make() -> Namespace:
        ns = new_namespace("btc")
        made.append(ns)
        return ns

    yield make
    for ns in made:
        ns.close()
