"""Helpers of the network tests: named network namespaces with processes in them, a fake upstream
name server, DNS queries, sockets made in another namespace.

Everything talks only to 127.0.0.1 or to addresses inside namespaces the tests create.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from dnslib import QTYPE, RCODE, RR, A, DNSRecord

from berth.kernel.syscalls import CLONE_NEWNET, setns

HOST_ADDR = "198.51.100.1"
OUTSIDE_ADDR = "198.51.100.2"
PY = sys.executable


def sh(*argv: str, check: bool = True, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=check, timeout=timeout)


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


def socket_in(netns_path: str | None, family: int = socket.AF_INET, kind: int = socket.SOCK_DGRAM) -> socket.socket:
    """A socket created in another network namespace (it stays there); this thread comes straight back."""
    if netns_path is None:
        return socket.socket(family, kind)
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    target = os.open(netns_path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        setns(target, CLONE_NEWNET)
        try:
            return socket.socket(family, kind)
        finally:
            setns(home, CLONE_NEWNET)
    finally:
        os.close(home)
        os.close(target)


def free_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1 right now."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u, socket.socket() as t:
            u.bind(("127.0.0.1", 0))
            port = u.getsockname()[1]
            try:
                t.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port")


class FakeUpstream:
    """Answers ``*.example`` with ``answer`` over UDP (or stays silent), in the given namespace."""

    def __init__(self, silent: bool = False, answer: str = "198.51.100.7", bind: str = "127.0.0.1",
                 netns: str | None = None, port: int = 0) -> None:  # fmt: skip
        self.sock = socket_in(netns)
        self.sock.bind((bind, port))
        self.port = self.sock.getsockname()[1]
        self.silent = silent
        self.answer = answer
        self.queries: list[str] = []
        threading.Thread(target=self.loop, daemon=True).start()

    def loop(self) -> None:
        while True:
            try:
                data, addr = self.sock.recvfrom(4096)
            except OSError:
                return
            q = DNSRecord.parse(data)
            self.queries.append(str(q.q.qname))
            if self.silent:
                continue
            reply = q.reply()
            if str(q.q.qname).endswith("example."):
                reply.add_answer(RR(q.q.qname, QTYPE.A, rdata=A(self.answer), ttl=60))
            else:
                reply.header.rcode = RCODE.NXDOMAIN
            try:
                self.sock.sendto(reply.pack(), addr)
            except OSError:
                return

    def close(self) -> None:
        self.sock.close()


def ask(server: str, port: int, name: str, qtype: str = "A", tcp: bool = False, timeout: float = 5.0) -> DNSRecord:
    q = DNSRecord.question(name, qtype)
    return DNSRecord.parse(q.send(server, port, tcp=tcp, timeout=timeout))


def addrs(reply: DNSRecord) -> list[str]:
    return sorted(str(rr.rdata) for rr in reply.rr if rr.rtype == QTYPE.A)


def wait_tcp(host: str, port: int, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection((host, port), timeout=0.5).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)
