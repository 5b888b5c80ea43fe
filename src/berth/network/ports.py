"""Published-port specs: ``-p [IP:][HOSTPORT:]PORT[/tcp|udp]`` with ranges, and ``-P`` from EXPOSE.

Parsing is pure and strict so that a malformed flag fails with one clear line before anything is
created. Choosing concrete host ports (for ``-P``, for an empty host port, or for a host range mapped
to one container port) needs to know which ports are free; that is :func:`resolve`'s job, with the
freeness test passed in, so the database check and the bind probe stay with their owners.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
from collections.abc import Callable, Iterable, Sequence

from berth.errors import Conflict, InvalidArgument
from berth.record import record

TYPE_CHECKING = False
if TYPE_CHECKING:
    import random

PROTOCOLS = ("tcp", "udp")
#: Where ports for ``-P`` and for an empty host port are drawn from; the kernel's default
#: ephemeral range, which outbound connections also use, is avoided (Docker uses the same idea).
RANDOM_PORTS = range(40000, 50000)


@record(frozen=True)
class PortSpec:
    """One ``-p`` flag as written: host ports may be 0 (any), ranges are inclusive."""

    container_start: int
    container_end: int
    proto: str = "tcp"
    host_ip: str = ""  # "" = every address of the host
    host_start: int = 0  # 0 = let berth choose
    host_end: int = 0

    @property
    def container_ports(self) -> range:
        return range(self.container_start, self.container_end + 1)

    @property
    def host_ports(self) -> range:
        return range(self.host_start, self.host_end + 1)

    def __str__(self) -> str:
        host = _span(self.host_start, self.host_end) if self.host_start else ""
        ip = f"[{self.host_ip}]" if ":" in self.host_ip else self.host_ip
        prefix = f"{ip}:{host}:" if self.host_ip else (f"{host}:" if host else "")
        return f"{prefix}{_span(self.container_start, self.container_end)}/{self.proto}"


@record(frozen=True)
class PortMapping:
    """One concrete forwarded port: what the nft rules, the database and ``berth port`` show."""

    proto: str
    host_ip: str  # "0.0.0.0" for every address
    host_port: int
    container_port: int

    def __str__(self) -> str:
        return f"{self.container_port}/{self.proto} -> {self.host_ip}:{self.host_port}"


def _span(a: int, b: int) -> str:
    """A port or a range, as Docker writes them: ``80``, ``8000-8002``."""
    return str(a) if a == b else f"{a}-{b}"


def format_ports(mappings: Iterable[PortMapping]) -> str:
    """The PORTS column of ``ps``, as Docker prints it: ``0.0.0.0:8080->80/tcp``, with consecutive
    ports folded into ranges (``0.0.0.0:9000-9002->9000-9002/udp``), ordered by container port."""
    ordered = sorted(mappings, key=lambda m: (m.host_ip, m.proto, m.container_port, m.host_port))
    groups: list[list[PortMapping]] = []
    for m in ordered:
        last = groups[-1][-1] if groups else None
        if (last is not None and (last.host_ip, last.proto) == (m.host_ip, m.proto)
                and m.container_port == last.container_port + 1 and m.host_port == last.host_port + 1):
            groups[-1].append(m)
        else:
            groups.append([m])

    groups.sort(key=lambda g: (g[0].container_port, g[0].host_port, g[0].proto, g[0].host_ip))
    return ", ".join(
        f"{g[0].host_ip}:{_span(g[0].host_port, g[-1].host_port)}->"
        f"{_span(g[0].container_port, g[-1].container_port)}/{g[0].proto}"
        for g in groups
    )


def _port_range(text: str, what: str, spec: str) -> tuple[int, int]:
    first, sep, last = text.partition("-")
    try:
        start = int(first, 10)
        end = int(last, 10) if sep else start
    except ValueError:
        raise InvalidArgument(f"invalid {what} port {text!r} in port spec {spec!r}") from None
    if not (1 <= start <= 65535 and 1 <= end <= 65535):
        raise InvalidArgument(f"{what} port {text!r} in port spec {spec!r} is outside 1-65535")
    if end < start:
        raise InvalidArgument(f"{what} port range {text!r} in port spec {spec!r} ends before it starts")
    return start, end


def _split_ip(spec: str, body: str) -> tuple[str, str]:
    """Split off a leading host IP, bracketed when it is IPv6 (``[::1]:80:80``)."""
    if body.startswith("["):
        end = body.find("]")
        if end < 0 or body[end + 1 : end + 2] != ":":
            raise InvalidArgument(f"invalid IPv6 address in port spec {spec!r}: write it as [ADDR]:HOST:PORT")
        return body[1:end], body[end + 2 :]
    parts = body.split(":")
    if len(parts) <= 2:
        return "", body
    if len(parts) == 3:
        return parts[0], ":".join(parts[1:])
    raise InvalidArgument(f"invalid port spec {spec!r}: too many ':' (an IPv6 host address needs [brackets])")


def parse(spec: str) -> PortSpec:
    """Parse one ``-p`` value; every malformed form raises InvalidArgument naming the spec."""
    if not spec or spec.strip() != spec:
        raise InvalidArgument(f"invalid port spec {spec!r}")
    body, slash, proto = spec.partition("/")
    proto = proto.lower() if slash else "tcp"
    if proto not in PROTOCOLS:
        raise InvalidArgument(f"invalid protocol {proto!r} in port spec {spec!r}: use tcp or udp")
    ip, ports = _split_ip(spec, body)
    if ip:
        try:
            ip = str(ipaddress.ip_address(ip))
        except ValueError:
            raise InvalidArgument(f"invalid host IP {ip!r} in port spec {spec!r}") from None
    host_text, colon, cont_text = ports.rpartition(":")
    if not colon:
        host_text, cont_text = "", ports
    if not cont_text:
        raise InvalidArgument(f"port spec {spec!r} names no container port")
    c_start, c_end = _port_range(cont_text, "container", spec)
    h_start = h_end = 0
    if host_text:
        h_start, h_end = _port_range(host_text, "host", spec)
        h_len, c_len = h_end - h_start, c_end - c_start
        if c_len and h_len != c_len:
            raise InvalidArgument(
                f"port spec {spec!r}: host range {host_text} and container range {cont_text} differ in length"
            )
    return PortSpec(c_start, c_end, proto, ip, h_start, h_end)


def parse_all(specs: Iterable[str]) -> list[PortSpec]:
    return [parse(s) for s in specs]


def from_exposed(exposed: Iterable[str]) -> list[PortSpec]:
    """``-P``: every EXPOSEd port (``80``, ``80/tcp``, ``8000-8010/udp``) gets a port chosen by berth."""
    out = []
    for item in exposed:
        port, slash, proto = item.partition("/")
        proto = proto.lower() if slash else "tcp"
        if proto not in PROTOCOLS:
            raise InvalidArgument(f"invalid protocol {proto!r} in exposed port {item!r}")
        start, end = _port_range(port, "exposed", item)
        out.append(PortSpec(start, end, proto))
    return out


#: ``busy(proto, host_ip, port)``: None when the port may be taken now, else who holds it.
PortCheck = Callable[[str, str, int], "str | None"]


def resolve(specs: Sequence[PortSpec], busy: PortCheck, rng: random.Random | None = None) -> list[PortMapping]:
    """Turn specs into one mapping per container port, choosing host ports where the spec leaves them open.

    A fixed host port that is not free raises Conflict naming it: the container must not start. Two
    specs of one request claiming the same host port is an InvalidArgument.
    """
    if rng is None:
        import random  # only when some host port is left for berth to choose

        rng = random.Random()
    out: list[PortMapping] = []
    taken: set[tuple[str, str, int]] = set()

    def claim(proto: str, ip: str, port: int) -> None:
        clash = any(p == proto and q == port and (i == ip or "0.0.0.0" in (i, ip)) for p, i, q in taken)
        if clash:
            raise InvalidArgument(f"host port {ip}:{port}/{proto} is published twice")
        taken.add((proto, ip, port))

    def usable(proto: str, ip: str, port: int) -> bool:
        return (proto, ip, port) not in taken and all(
            not (p == proto and q == port and "0.0.0.0" in (i, ip)) for p, i, q in taken
        ) and busy(proto, ip, port) is None

    for spec in specs:
        ip = spec.host_ip or "0.0.0.0"
        if spec.host_start and spec.host_end - spec.host_start == spec.container_end - spec.container_start:
            for host, cont in zip(spec.host_ports, spec.container_ports, strict=True):
                claim(spec.proto, ip, host)
                holder = busy(spec.proto, ip, host)
                if holder is not None:
                    raise Conflict(f"host port {ip}:{host}/{spec.proto} is already in use ({holder})")
                out.append(PortMapping(spec.proto, ip, host, cont))
        elif spec.host_start:  # a host range for one container port: the first free one
            for host in spec.host_ports:
                if usable(spec.proto, ip, host):
                    claim(spec.proto, ip, host)
                    out.append(PortMapping(spec.proto, ip, host, spec.container_start))
                    break
            else:
                raise Conflict(f"no free host port in {ip}:{spec.host_start}-{spec.host_end}/{spec.proto}")
        else:
            for cont in spec.container_ports:
                for _ in range(200):
                    host = rng.choice(RANDOM_PORTS)
                    if usable(spec.proto, ip, host):
                        break
                else:
                    raise Conflict(f"could not find a free host port for {cont}/{spec.proto}")
                claim(spec.proto, ip, host)
                out.append(PortMapping(spec.proto, ip, host, cont))
    return out


def bindable(proto: str, host_ip: str, port: int) -> bool:
    """Whether some other program holds this port: try to bind it, in the caller's network namespace.

    TCP uses SO_REUSEADDR so that connections lingering in TIME_WAIT do not count, while a listener
    still does; UDP does not, since there SO_REUSEADDR would let two sockets share the port.
    """
    family = socket.AF_INET6 if ":" in host_ip else socket.AF_INET
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    with socket.socket(family, kind) as s:
        if proto == "tcp":
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host_ip, port))
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                return False
            if e.errno == errno.EADDRNOTAVAIL:
                raise InvalidArgument(f"host IP {host_ip} is not an address of this host") from None
            raise
    return True
