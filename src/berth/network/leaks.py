"""Enumerate everything berth's network layer has created, so a test (or ``berth system check``) can
assert that nothing is left: bridges and veths (found by their ``berth:`` alias or berth's veth
prefix); rules in berth's nftables table or iptables chains, and the table or chains themselves,
which should exist only while some network has containers; leases, DNS names and host ports in the
database; and name-server processes (by pid file, and by scanning /proc so that one that lost its
pid file is found too).

Everything is read in the caller's network namespace; the database and run directory are optional.
"""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass, field, fields

from berth.errors import Unsupported
from berth.network import bridge, dns
from berth.network.nat import firewall


@dataclass
class Leftovers:
    bridges: list[str] = field(default_factory=list)
    veths: list[str] = field(default_factory=list)
    nft_table: bool = False
    nft_rules: list[str] = field(default_factory=list)
    leases: list[str] = field(default_factory=list)
    dns_names: list[str] = field(default_factory=list)
    ports: list[str] = field(default_factory=list)
    dns_servers: list[int] = field(default_factory=list)
    pidfiles: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return any(getattr(self, f.name) for f in fields(self))

    def __str__(self) -> str:
        parts = [f"{f.name}={getattr(self, f.name)!r}" for f in fields(self) if getattr(self, f.name)]
        return "leftovers: " + (", ".join(parts) if parts else "none")


def find(db: str | None = None, run_dir: str | None = None, table: str = "berth") -> Leftovers:
    """What is left in this network namespace, in the database ``db`` and under ``run_dir``.
    ``nft_table`` means berth's nft table or its ``BERTH-*`` iptables chains exist."""
    out = Leftovers()
    for link in bridge.links():
        (out.bridges if link.kind == "bridge" else out.veths).append(link.name)
    for backend in ("nft", "iptables"):
        try:
            fw = firewall(table, backend=backend)
        except Unsupported:
            continue
        if fw.exists():
            out.nft_table = True
            out.nft_rules += [f"{backend} {r.chain}: {r.comment}" for r in fw.rules()]
    if db is not None and os.path.exists(db):
        conn = sqlite3.connect(db, timeout=10.0)
        try:
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if "net_leases" in tables:
                out.leases = [f"{n}/{c}" for n, c in conn.execute("SELECT network, container_id FROM net_leases")]
                names = conn.execute("SELECT network, container_id, name FROM net_names")
                out.dns_names = [f"{n}/{c}/{name}" for n, c, name in names]
                out.ports = [
                    f"{p}:{ip}:{port}->{c}" for p, ip, port, c in
                    conn.execute("SELECT proto, host_ip, host_port, container_id FROM net_ports")
                ]  # fmt: skip
        finally:
            conn.close()
    out.dns_servers = dns.processes(run_dir)
    if run_dir is not None:
        piddir = os.path.join(run_dir, "dns")
        if os.path.isdir(piddir):
            out.pidfiles = sorted(e for e in os.listdir(piddir) if e.endswith(".pid"))
    return out
