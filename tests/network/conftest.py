"""Fixtures of the network tier: a private "host" network namespace, an "outside" peer, fake containers.

Root tests run berth's network layer inside a network namespace made for the test (``host_ns``): the
test's thread enters it with setns(2), so bridges, nftables tables, sysctls (ip_forward) and the name
servers berth starts all live there, and the machine's own network is neither touched nor reachable —
the only other addresses are those of namespaces the test makes. "Containers" are namespaces made with
``ip netns add``; ``outside`` is a namespace linked to the host namespace, playing the rest of the world
(198.51.100.2, with the host at 198.51.100.1).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator

import pytest
from nethelpers import HOST_ADDR, OUTSIDE_ADDR, Namespace, new_namespace, sh

from berth.kernel.syscalls import CLONE_NEWNET, setns


def need_network_tools() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: network namespaces, bridges and nftables are real here")
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")
    if not os.path.exists("/bin/busybox") and not shutil.which("busybox"):
        pytest.skip("busybox is not installed")


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
