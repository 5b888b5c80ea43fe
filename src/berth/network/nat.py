"""Masquerading, isolation and published ports in berth's own nftables table (``inet berth``).

berth never edits anyone else's rules: it owns one table, whose base chains hook forward, prerouting
(raw and nat), output (nat) and postrouting (nat). Each rule carries a comment naming what it is for —
``berth:net:NAME`` for a network, ``berth:ctr:ID:BRIDGE`` for a container's published ports — so removal
deletes exactly those rules by handle and leftovers are enumerable. Every change is one ``nft -f -``
transaction (through libnftables, in-process): the kernel applies it whole or not at all, so a
killed berth never leaves half a network.

Per network (bridge B, subnet S):
- not internal: replies and DNAT'd (published) traffic may enter B from elsewhere, anything else routed
  into B is dropped — which is what isolates networks from each other, since a connection from another
  bridge is neither; S leaving through any other interface is masqueraded.
- internal: nothing is routed into or out of B at all (and containers get no default route either).

Published ports are DNAT rules in one chain, jumped to for packets addressed to the host itself
(``fib daddr type local``) both from prerouting (other hosts, other containers) and from output (the
host's own processes). Reaching them through 127.0.0.1 is done in the kernel, not by a userspace
proxy: after DNAT in output a packet from 127.0.0.1 must leave through the bridge, which the kernel
allows once ``route_localnet`` is set on the bridge, and the packet is then masqueraded to the
gateway address so the container can answer it. The price of a proxy — a process per port, a copy of
every byte, the client address hidden from the container for all traffic — buys nothing here; the
price of route_localnet is that containers could otherwise send to the host's 127.0.0.0/8, so a raw
prerouting rule drops exactly that. Hairpin traffic (a container to a published port of its own
network) is masqueraded to the gateway too, so the answer comes back the way the question went.

Where the ``nft`` command is absent, the same rules go through ``iptables`` (``IptablesFirewall``): chains
``BERTH-*`` in the filter, nat and raw tables, with the same comments.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
from collections.abc import Iterable
from ipaddress import IPv4Address
from typing import Any

from berth.errors import BerthError, Unsupported
from berth.fsutil import file_lock
from berth.network.ipam import Network
from berth.network.ports import PortMapping
from berth.record import record

COMMENT_NET = "berth:net:"
COMMENT_CTR = "berth:ctr:"


@record(frozen=True)
class Rule:
    chain: str
    handle: int
    comment: str
    spec: str = ""  # iptables: the rule as iptables-save prints it, which is how it is deleted

    @property
    def container_id(self) -> str | None:
        if self.comment.startswith(COMMENT_CTR):
            return self.comment[len(COMMENT_CTR) :].rsplit(":", 1)[0]
        return None

    @property
    def network(self) -> str | None:
        return self.comment[len(COMMENT_NET) :] if self.comment.startswith(COMMENT_NET) else None


class _Firewall:
    """What both backends share: finding a network's rules by their comment."""

    def rules(self) -> list[Rule]:
        raise NotImplementedError

    def has_network(self, net: Network) -> bool:
        return any(r.comment == network_comment(net) for r in self.rules())

    def _network_rules(self, net: Network | str) -> tuple[list[Rule], list[Rule]]:
        """(the network's rules, every other rule)."""
        comment = network_comment(net) if isinstance(net, Network) else f"{COMMENT_NET}{net}"
        rules = self.rules()
        return [r for r in rules if r.comment == comment], [r for r in rules if r.comment != comment]


def _quote(comment: str) -> str:
    if '"' in comment or "\\" in comment or "\n" in comment:
        raise ValueError(f"unsafe nft comment {comment!r}")
    return f'"{comment}"'


def network_comment(net: Network) -> str:
    return f"{COMMENT_NET}{net.name}"


def container_comment(container_id: str, bridge: str) -> str:
    return f"{COMMENT_CTR}{container_id}:{bridge}"


class Libnftables:
    """The nftables library that the ``nft`` command is a thin shell around, called in-process through
    ctypes: the same text commands and JSON listings as ``nft -f -`` and ``nft -j list``, without a
    fork and exec per change (~4 ms each, and a container's start and removal make several)."""

    JSON = 1 << 4  # NFT_CTX_OUTPUT_JSON
    HANDLE = 1 << 3  # NFT_CTX_OUTPUT_HANDLE

    def __init__(self) -> None:
        import ctypes

        try:
            lib = ctypes.CDLL("libnftables.so.1")
        except OSError as e:
            raise Unsupported(f"libnftables is not installed: {e}") from None
        lib.nft_ctx_new.restype = ctypes.c_void_p
        lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
        for name in ("nft_ctx_buffer_output", "nft_ctx_buffer_error"):
            getattr(lib, name).argtypes = [ctypes.c_void_p]
        lib.nft_ctx_output_set_flags.argtypes = [ctypes.c_void_p, ctypes.c_uint]
        lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        for name in ("nft_ctx_get_output_buffer", "nft_ctx_get_error_buffer"):
            getattr(lib, name).argtypes = [ctypes.c_void_p]
            getattr(lib, name).restype = ctypes.c_char_p
        lib.nft_ctx_free.argtypes = [ctypes.c_void_p]
        self.lib = lib
        self.ctx = lib.nft_ctx_new(0)
        lib.nft_ctx_buffer_output(self.ctx)
        lib.nft_ctx_buffer_error(self.ctx)

    def run(self, commands: str, json: bool = False) -> tuple[int, str, str]:
        """(status, output, errors) of ``commands`` as one transaction; ``json`` asks for JSON output."""
        self.lib.nft_ctx_output_set_flags(self.ctx, self.JSON | self.HANDLE if json else 0)
        status = self.lib.nft_run_cmd_from_buffer(self.ctx, commands.encode())
        out = (self.lib.nft_ctx_get_output_buffer(self.ctx) or b"").decode()
        err = (self.lib.nft_ctx_get_error_buffer(self.ctx) or b"").decode()
        return status, out, err

    def __del__(self) -> None:
        if getattr(self, "ctx", None):
            self.lib.nft_ctx_free(self.ctx)


class NftFirewall(_Firewall):
    """berth's table, driven through libnftables (text in, JSON out)."""

    def __init__(self, table: str = "berth", lock_path: str | None = None) -> None:
        self.nft = Libnftables()  # Unsupported where libnftables is missing
        self.table = table
        self.lock_path = lock_path
        self.t = f"inet {table}"

    # -- plumbing ---------------------------------------------------------------------------------

    def _apply(self, script: str) -> None:
        status, _, err = self.nft.run(script)
        if status != 0:
            raise BerthError(f"nft failed: {err.strip()}\n--- script ---\n{script}")

    def _list(self) -> list[dict[str, Any]]:
        status, out, err = self.nft.run(f"list table inet {self.table}", json=True)
        if status != 0:
            if "No such file or directory" in err:
                return []
            raise BerthError(f"nft failed: {err.strip()}")
        return [item for item in json.loads(out).get("nftables", []) if isinstance(item, dict)]

    def _locked(self) -> file_lock:
        return file_lock(self.lock_path)

    def exists(self) -> bool:
        return bool(self._list())

    def rules(self) -> list[Rule]:
        """Every commented rule in berth's table."""
        out = []
        for item in self._list():
            rule = item.get("rule")
            if rule and rule.get("comment"):
                out.append(Rule(rule["chain"], int(rule["handle"]), rule["comment"]))
        return out

    def _base(self) -> list[str]:
        t = self.t
        return [
            f"add table {t}",
            f"add chain {t} forward {{ type filter hook forward priority filter; policy accept; }}",
            f"add chain {t} prerouting_raw {{ type filter hook prerouting priority raw; policy accept; }}",
            f"add chain {t} prerouting_nat {{ type nat hook prerouting priority dstnat; policy accept; }}",
            f"add chain {t} output_nat {{ type nat hook output priority -100; policy accept; }}",
            f"add chain {t} postrouting_nat {{ type nat hook postrouting priority srcnat; policy accept; }}",
            f"add chain {t} published",
            # The two jumps are the only rules of their chains: flushing and re-adding them in the same
            # transaction keeps this idempotent even when two processes run it at once.
            f"flush chain {t} prerouting_nat",
            f"flush chain {t} output_nat",
            f"add rule {t} prerouting_nat fib daddr type local jump published",
            f"add rule {t} output_nat fib daddr type local jump published",
        ]

    def _delete(self, rules: Iterable[Rule]) -> list[str]:
        return [f"delete rule {self.t} {r.chain} handle {r.handle}" for r in rules]

    # -- networks ---------------------------------------------------------------------------------

    def network_rules(self, net: Network) -> list[str]:
        t, b, s, c = self.t, f'"{net.bridge}"', str(net.subnet), f"comment {_quote(network_comment(net))}"
        lines = [f"add rule {t} prerouting_raw iifname {b} ip daddr 127.0.0.0/8 drop {c}"]
        if net.internal:
            lines += [
                f"add rule {t} forward iifname {b} oifname != {b} drop {c}",
                f"add rule {t} forward oifname {b} iifname != {b} drop {c}",
            ]
        else:
            lines += [
                f"add rule {t} forward oifname {b} iifname != {b} ct state established,related accept {c}",
                f"add rule {t} forward oifname {b} iifname != {b} ct status dnat accept {c}",
                f"add rule {t} forward oifname {b} iifname != {b} drop {c}",
                f"add rule {t} postrouting_nat ip saddr {s} oifname != {b} masquerade {c}",
                f"add rule {t} postrouting_nat oifname {b} ip saddr {s} ct status dnat masquerade {c}",
                f"add rule {t} postrouting_nat oifname {b} ip saddr 127.0.0.0/8 ct status dnat masquerade {c}",
            ]
        return lines

    def ensure_network(self, net: Network) -> None:
        """Install (or re-install, replacing what is there) the network's rules, and the table."""
        with self._locked():
            old = [r for r in self.rules() if r.comment == network_comment(net)]
            self._apply("\n".join([*self._base(), *self._delete(old), *self.network_rules(net)]) + "\n")

    def remove_network(self, net: Network | str) -> None:
        """Delete the network's rules; the table goes too once no network has rules in it."""
        with self._locked():
            mine, rest = self._network_rules(net)
            if not rest:
                if self.exists():
                    self._apply(f"delete table {self.t}\n")
            elif mine:
                self._apply("\n".join(self._delete(mine)) + "\n")

    # -- published ports ------------------------------------------------------------------------------

    def publish(self, container_id: str, net: Network, ip: IPv4Address, mappings: Iterable[PortMapping]) -> None:
        c = f"comment {_quote(container_comment(container_id, net.bridge))}"
        lines = []
        for m in mappings:
            if ":" in m.host_ip:
                raise Unsupported(f"publishing on IPv6 address {m.host_ip} is not supported yet")
            match = "" if m.host_ip in ("", "0.0.0.0") else f"ip daddr {m.host_ip} "
            lines.append(
                f"add rule {self.t} published {match}{m.proto} dport {m.host_port} "
                f"dnat ip to {ip}:{m.container_port} {c}"
            )
        if lines:
            self._apply("\n".join(lines) + "\n")

    def unpublish(self, container_id: str, bridge: str | None = None) -> int:
        """Delete the container's port rules (on one bridge, or all); returns how many went."""
        if bridge is not None:
            wanted = [r for r in self.rules() if r.comment == container_comment(container_id, bridge)]
        else:
            wanted = [r for r in self.rules() if r.container_id == container_id]
        if wanted:
            self._apply("\n".join(self._delete(wanted)) + "\n")
        return len(wanted)


class IptablesFirewall(_Firewall):
    """The same rules through ``iptables`` (the nf_tables flavour where it exists; legacy works too),
    for hosts without the ``nft`` command. Chains ``BERTH-*`` in the filter, nat and raw tables are
    jumped to from the built-in ones; every change is one ``iptables-restore --noflush`` per table,
    which the kernel applies atomically. Rules are deleted by repeating their exact specification as
    ``iptables-save`` prints it, so nothing but berth's rules is ever touched."""

    CHAINS = {
        "filter": [("BERTH-FORWARD", "FORWARD", "")],
        "raw": [("BERTH-PREROUTING", "PREROUTING", "")],
        "nat": [
            ("BERTH-PUBLISHED", "PREROUTING", "-m addrtype --dst-type LOCAL "),
            ("BERTH-PUBLISHED", "OUTPUT", "-m addrtype --dst-type LOCAL "),
            ("BERTH-POSTROUTING", "POSTROUTING", ""),
        ],
    }

    def __init__(self, table: str = "berth", lock_path: str | None = None, iptables: str | None = None) -> None:
        found = iptables or shutil.which("iptables")
        if found is None:
            raise Unsupported("iptables is not installed")
        self.iptables = found
        self.restore = os.path.join(os.path.dirname(found), os.path.basename(found) + "-restore")
        self.save = os.path.join(os.path.dirname(found), os.path.basename(found) + "-save")
        self.table = table  # berth's chains have fixed names; kept for a uniform interface
        self.lock_path = lock_path

    def _locked(self) -> file_lock:
        return file_lock(self.lock_path)

    def _dump(self, table: str) -> list[str]:
        proc = subprocess.run([self.save, "-t", table], capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise BerthError(f"{self.save} failed: {proc.stderr.strip()}")
        return proc.stdout.splitlines()

    def _apply(self, scripts: dict[str, list[str]]) -> None:
        for table, lines in scripts.items():
            if not lines:
                continue
            script = f"*{table}\n" + "\n".join(lines) + "\nCOMMIT\n"
            proc = subprocess.run(
                [self.restore, "--noflush", "-w"], input=script, capture_output=True, text=True, check=False
            )
            if proc.returncode != 0:
                raise BerthError(f"iptables-restore failed: {proc.stderr.strip()}\n--- script ---\n{script}")

    def _state(self) -> dict[str, tuple[set[str], list[str]]]:
        """table → (chains that exist, the ``-A`` lines)."""
        out = {}
        for table in self.CHAINS:
            lines = self._dump(table)
            chains = {line[1:].split()[0] for line in lines if line.startswith(":")}
            out[table] = (chains, [line for line in lines if line.startswith("-A ")])
        return out

    @staticmethod
    def _comment(line: str) -> str | None:
        words = shlex.split(line)
        if "--comment" in words:
            i = words.index("--comment")
            if i + 1 < len(words):
                return words[i + 1]
        return None

    def exists(self) -> bool:
        return any(c.startswith("BERTH-") for chains, _ in self._state().values() for c in chains)

    def rules(self) -> list[Rule]:
        out = []
        for table, (_, lines) in self._state().items():
            for n, line in enumerate(lines):
                comment = self._comment(line)
                if comment and comment.startswith((COMMENT_NET, COMMENT_CTR)):
                    out.append(Rule(f"{table}/{line.split()[1]}", n, comment, line))
        return out

    def _base(self, state: dict[str, tuple[set[str], list[str]]]) -> dict[str, list[str]]:
        scripts: dict[str, list[str]] = {}
        for table, jumps in self.CHAINS.items():
            chains, lines = state[table]
            script = scripts.setdefault(table, [])
            for chain in dict.fromkeys(c for c, _, _ in jumps):
                if chain not in chains:
                    script.append(f":{chain} - [0:0]")
            for chain, parent, match in jumps:
                jump = f"-A {parent} {match}-j {chain}".replace("  ", " ")
                if not any(_same(jump, line) for line in lines):
                    script.append(jump.replace("-A ", "-I ", 1))
        return scripts

    def network_rules(self, net: Network) -> dict[str, list[str]]:
        b, s, c = net.bridge, str(net.subnet), f'-m comment --comment "{network_comment(net)}"'
        out: dict[str, list[str]] = {"raw": [f"-A BERTH-PREROUTING -i {b} -d 127.0.0.0/8 {c} -j DROP"]}
        if net.internal:
            out["filter"] = [
                f"-A BERTH-FORWARD -i {b} ! -o {b} {c} -j DROP",
                f"-A BERTH-FORWARD -o {b} ! -i {b} {c} -j DROP",
            ]
        else:
            out["filter"] = [
                f"-A BERTH-FORWARD -o {b} ! -i {b} -m conntrack --ctstate RELATED,ESTABLISHED {c} -j ACCEPT",
                f"-A BERTH-FORWARD -o {b} ! -i {b} -m conntrack --ctstate DNAT {c} -j ACCEPT",
                f"-A BERTH-FORWARD -o {b} ! -i {b} {c} -j DROP",
            ]
            out["nat"] = [
                f"-A BERTH-POSTROUTING -s {s} ! -o {b} {c} -j MASQUERADE",
                f"-A BERTH-POSTROUTING -o {b} -s {s} -m conntrack --ctstate DNAT {c} -j MASQUERADE",
                f"-A BERTH-POSTROUTING -o {b} -s 127.0.0.0/8 -m conntrack --ctstate DNAT {c} -j MASQUERADE",
            ]
        return out

    def _deletes(self, rules: Iterable[Rule]) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for r in rules:
            out.setdefault(r.chain.split("/")[0], []).append("-D " + r.spec[3:])
        return out

    def ensure_network(self, net: Network) -> None:
        with self._locked():
            state = self._state()
            old = [r for r in self.rules() if r.comment == network_comment(net)]
            scripts = self._base(state)
            for table, lines in self._deletes(old).items():
                scripts.setdefault(table, []).extend(lines)
            for table, lines in self.network_rules(net).items():
                scripts.setdefault(table, []).extend(lines)
            self._apply(scripts)

    def remove_network(self, net: Network | str) -> None:
        with self._locked():
            mine, rest = self._network_rules(net)
            if rest:
                self._apply(self._deletes(mine))
                return
            state = self._state()
            scripts: dict[str, list[str]] = {}
            for table, jumps in self.CHAINS.items():
                chains, lines = state[table]
                script = scripts.setdefault(table, [])
                for chain, parent, match in jumps:
                    jump = f"-A {parent} {match}-j {chain}"
                    script += ["-D " + line[3:] for line in lines if _same(jump, line)]
                for chain in dict.fromkeys(c for c, _, _ in jumps):
                    if chain in chains:
                        script += [f"-F {chain}", f"-X {chain}"]
            self._apply(scripts)

    def publish(self, container_id: str, net: Network, ip: IPv4Address, mappings: Iterable[PortMapping]) -> None:
        c = f'-m comment --comment "{container_comment(container_id, net.bridge)}"'
        lines = []
        for m in mappings:
            if ":" in m.host_ip:
                raise Unsupported(f"publishing on IPv6 address {m.host_ip} is not supported yet")
            match = "" if m.host_ip in ("", "0.0.0.0") else f"-d {m.host_ip} "
            lines.append(
                f"-A BERTH-PUBLISHED {match}-p {m.proto} -m {m.proto} --dport {m.host_port} {c} "
                f"-j DNAT --to-destination {ip}:{m.container_port}"
            )
        self._apply({"nat": lines})

    def unpublish(self, container_id: str, bridge: str | None = None) -> int:
        if bridge is not None:
            wanted = [r for r in self.rules() if r.comment == container_comment(container_id, bridge)]
        else:
            wanted = [r for r in self.rules() if r.container_id == container_id]
        self._apply(self._deletes(wanted))
        return len(wanted)


def _same(rule: str, line: str) -> bool:
    """Whether two ``-A`` lines say the same, whatever iptables-save adds (``-m tcp``) or quotes."""
    return [w for w in shlex.split(rule) if w not in ("-m", "tcp", "udp")] == [
        w for w in shlex.split(line) if w not in ("-m", "tcp", "udp")
    ]


Firewall = NftFirewall | IptablesFirewall


def firewall(table: str = "berth", lock_path: str | None = None, backend: str = "auto") -> Firewall:
    """The firewall backend: nftables through libnftables when it is installed, else ``iptables``.

    ``backend`` forces one (``nft`` or ``iptables``), for tests and for hosts where an admin prefers it.
    """
    if backend not in ("auto", "nft", "iptables"):
        raise ValueError(f"unknown firewall backend {backend!r}")
    if backend != "iptables":
        try:
            return NftFirewall(table, lock_path)
        except Unsupported:
            if backend == "nft":
                raise
    if shutil.which("iptables") is None:
        raise Unsupported("neither nftables nor iptables is installed: install nftables")
    return IptablesFirewall(table, lock_path)
