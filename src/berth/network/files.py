"""The contents of a container's /etc/hosts, /etc/hostname and /etc/resolv.conf.

Pure functions from the container's options and its network endpoints to file text; the engine
writes them beside the container's state and bind-mounts them, so the image's own files are never
changed. The rules follow Docker's, which is what images and users expect:

- hosts: localhost lines, one line for each of the container's addresses with its hostname (and
  name), then ``--add-host`` entries in order (``host-gateway`` means the first network's gateway).
- resolv.conf: on a network with berth's name server, that server is the only nameserver (it forwards
  to the container's ``--dns`` servers, recorded with the lease, or to the host's); otherwise the
  ``--dns`` servers, or else the host's, minus loopback ones, which would point into the container
  itself (systemd-resolved's stub is followed to the real upstreams it lists). ``--dns-search``
  replaces the host's search list (``.`` means none); berth's DNS domain is appended when it serves.
"""

from __future__ import annotations

import _socket

from berth.errors import InvalidArgument

# These files are written for every container, `--network none` included: no `re` or `ipaddress`
# (~4 ms of imports on `berth run`'s path) — character sets, and libc's inet_pton/inet_ntop.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

HOST_GATEWAY = "host-gateway"
SYSTEMD_RESOLVED_UPSTREAM = "/run/systemd/resolve/resolv.conf"
_ALNUM = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789")
_LABEL_CHARS = _ALNUM | {"-"}
_OPTION_CHARS = _ALNUM | frozenset("_-")


def validate_hostname(name: str) -> str:
    """Dot-separated labels of 1-63 letters, digits and inner hyphens; 253 characters at most."""
    if len(name) > 253 or not all(0 < len(label) <= 63 and label[0] in _ALNUM and label[-1] in _ALNUM
                                  and _LABEL_CHARS.issuperset(label) for label in name.split(".")):
        raise InvalidArgument(f"invalid hostname {name!r}")
    return name


def _valid_option(option: str) -> bool:
    """A resolv.conf option: NAME or NAME:NUMBER."""
    name, colon, value = option.partition(":")
    return bool(name) and _OPTION_CHARS.issuperset(name) and (
        not colon or (value.isdigit() and value.isascii()))


def canonical_ip(text: str) -> str | None:
    """``text`` as an IPv4 or IPv6 address in its canonical form (RFC 5952 for IPv6), or None."""
    for family in (_socket.AF_INET, _socket.AF_INET6):
        try:
            return str(_socket.inet_ntop(family, _socket.inet_pton(family, text)))
        except (OSError, ValueError):
            continue
    return None


def _is_loopback(address: str) -> bool:
    return address.startswith("127.") or address == "::1"


def _ip(text: str, what: str) -> str:
    address = canonical_ip(text)
    if address is None:
        raise InvalidArgument(f"invalid IP address {text!r} in {what}")
    return address


def parse_add_host(spec: str, host_gateway: str | None = None) -> tuple[str, str]:
    """``--add-host NAME:IP`` (also ``NAME=IP``, and ``NAME:[IPv6]``) → (name, ip)."""
    sep = "=" if "=" in spec else ":"
    name, found, ip = spec.partition(sep)
    if not found or not name or not ip:
        raise InvalidArgument(f"invalid --add-host {spec!r}: expected NAME:IP")
    for part in name.split(","):
        validate_hostname(part)
    if ip.startswith("[") and ip.endswith("]"):
        ip = ip[1:-1]
    if ip == HOST_GATEWAY:
        if host_gateway is None:
            raise InvalidArgument(f"--add-host {spec!r}: there is no host gateway without a bridge network")
        ip = host_gateway
    return " ".join(name.split(",")), _ip(ip, f"--add-host {spec!r}")


def hostname_file(hostname: str) -> str:
    return validate_hostname(hostname) + "\n"


def hosts_file(
    hostname: str,
    *,
    addresses: Sequence[str] = (),
    names: Sequence[str] = (),
    add_hosts: Sequence[str] = (),
    host_gateway: str | None = None,
    ipv6: bool = True,
) -> str:
    """/etc/hosts: ``addresses`` are the container's own (first network first), ``names`` extra names
    for them (the container name), ``add_hosts`` the raw ``--add-host`` values."""
    validate_hostname(hostname)
    lines = ["127.0.0.1\tlocalhost"]
    if ipv6:
        lines += ["::1\tlocalhost ip6-localhost ip6-loopback", "fe00::0\tip6-localnet", "ff00::0\tip6-mcastprefix",
                  "ff02::1\tip6-allnodes", "ff02::2\tip6-allrouters"]  # fmt: skip
    own = " ".join(dict.fromkeys([hostname, *(n for n in names if n and n != hostname)]))
    for addr in dict.fromkeys(addresses):
        lines.append(f"{_ip(addr, 'container address')}\t{own}")
    return "\n".join(lines) + "\n" + add_host_lines(add_hosts, host_gateway)


def add_host_lines(add_hosts: Sequence[str], host_gateway: str | None = None) -> str:
    """The /etc/hosts lines of ``--add-host`` values, in order."""
    return "".join("{1}\t{0}\n".format(*parse_add_host(spec, host_gateway)) for spec in add_hosts)


def read_resolv_conf(text: str) -> tuple[list[str], list[str], list[str]]:
    """(nameservers, search domains, options) of a resolv.conf; later ``search`` lines win, as in libc."""
    servers: list[str] = []
    search: list[str] = []
    options: list[str] = []
    for line in text.splitlines():
        fields = line.split("#", 1)[0].split(";", 1)[0].split()
        if len(fields) < 2:
            continue
        if fields[0] == "nameserver":
            address = canonical_ip(fields[1].split("%")[0])
            if address is not None:
                servers.append(address)
        elif fields[0] in ("search", "domain"):
            search = fields[1:]
        elif fields[0] == "options":
            options += fields[1:]
    return servers, search, options


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def resolv_conf(
    *,
    dns: Sequence[str] = (),
    dns_search: Sequence[str] = (),
    dns_options: Sequence[str] = (),
    network_dns: Sequence[str] = (),
    network_domain: str | None = None,
    host_network: bool = False,
    host_resolv_conf: str = "/etc/resolv.conf",
) -> str:
    """/etc/resolv.conf for a container.

    ``dns``, ``dns_search``, ``dns_options``: the user's flags. ``network_dns``: addresses of berth's
    name servers for the container's networks (their gateways), ``network_domain`` their domain.
    ``host_network``: ``--network host``, where the host's servers (even 127.0.0.53) work as they are.
    """
    dns = [_ip(s, "--dns") for s in dns]
    for option in dns_options:
        if not _valid_option(option):
            raise InvalidArgument(f"invalid --dns-option {option!r}")
    for domain in dns_search:
        if domain != ".":
            validate_hostname(domain.rstrip("."))
    host_servers, host_search, host_options = read_resolv_conf(_read(host_resolv_conf))
    if not host_network and host_servers and all(_is_loopback(s) for s in host_servers):
        upstream = read_resolv_conf(_read(SYSTEMD_RESOLVED_UPSTREAM))[0]
        if upstream:
            host_servers = upstream
    if not host_network:
        host_servers = [s for s in host_servers if not _is_loopback(s)]

    if network_dns:
        servers = [_ip(s, "network DNS") for s in network_dns]
    elif dns:
        servers = dns
    else:
        servers = host_servers
    if dns_search:
        search = [] if list(dns_search) == ["."] else [d.rstrip(".") for d in dns_search if d != "."]
    else:
        search = list(host_search)
    if network_dns and network_domain and network_domain not in search:
        search.append(network_domain)
    options = list(dns_options) if dns_options else list(host_options)

    lines = ["# Generated by berth."]
    if search:
        lines.append("search " + " ".join(dict.fromkeys(search)))
    lines += [f"nameserver {s}" for s in dict.fromkeys(servers)]
    if not servers:
        lines.append("# No usable name server: the host has none a container can reach. Use --dns.")
    if options:
        lines.append("options " + " ".join(dict.fromkeys(options)))
    return "\n".join(lines) + "\n"


def network_names(container_name: str | None, aliases: Iterable[str], container_id: str) -> list[str]:
    """The DNS names a container answers to on a user network: name, aliases, short id (as Docker)."""
    return list(dict.fromkeys(n for n in [container_name, *aliases, container_id[:12]] if n))
