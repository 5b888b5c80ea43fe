"""/etc/hosts, /etc/hostname and /etc/resolv.conf as generated for containers."""

from __future__ import annotations

from pathlib import Path

import pytest

from berth.errors import InvalidArgument
from berth.network import files

pytestmark = pytest.mark.unit


def host_resolv(tmp_path: Path, text: str) -> str:
    path = tmp_path / "resolv.conf"
    path.write_text(text)
    return str(path)


def test_hostname_and_hosts() -> None:
    assert files.hostname_file("web-1") == "web-1\n"
    text = files.hosts_file(
        "abc123", addresses=["10.78.0.2"], names=["web"],
        add_hosts=["db:10.0.0.9", "gw:host-gateway", "v6,v6b:[2001:db8::1]"], host_gateway="10.78.0.1",
    )  # fmt: skip
    lines = text.splitlines()
    assert lines[0] == "127.0.0.1\tlocalhost"
    assert "10.78.0.2\tabc123 web" in lines
    assert lines[-3:] == ["10.0.0.9\tdb", "10.78.0.1\tgw", "2001:db8::1\tv6 v6b"]


@pytest.mark.parametrize("spec", ["nocolon", "bad_name:1.2.3.4", "x:999.1.1.1", "x:", ":1.2.3.4"])
def test_add_host_errors(spec: str) -> None:
    with pytest.raises(InvalidArgument):
        files.hosts_file("h", add_hosts=[spec])


def test_host_gateway_needs_a_network() -> None:
    with pytest.raises(InvalidArgument, match="host gateway"):
        files.parse_add_host("gw:host-gateway")


def test_invalid_hostname() -> None:
    with pytest.raises(InvalidArgument):
        files.hostname_file("-bad")


def test_resolv_conf_with_network_dns(tmp_path: Path) -> None:
    host = host_resolv(tmp_path, "nameserver 10.255.255.53\nsearch corp.example\noptions edns0\n")
    text = files.resolv_conf(network_dns=["10.78.0.1"], network_domain="dns.berth", host_resolv_conf=host)
    assert "nameserver 10.78.0.1" in text and "10.255.255.53" not in text
    assert "search corp.example dns.berth" in text and "options edns0" in text
    # --dns goes to berth's server as its upstream, the container still asks berth's server
    text = files.resolv_conf(dns=["9.9.9.9"], network_dns=["10.78.0.1"], host_resolv_conf=host)
    assert "nameserver 10.78.0.1" in text and "9.9.9.9" not in text


def test_resolv_conf_without_network_dns(tmp_path: Path) -> None:
    host = host_resolv(tmp_path, "nameserver 127.0.0.53\nnameserver 10.255.255.53\nsearch a.example\n")
    text = files.resolv_conf(host_resolv_conf=host)
    assert "nameserver 10.255.255.53" in text and "127.0.0.53" not in text and "search a.example" in text
    text = files.resolv_conf(dns=["1.1.1.1"], dns_search=["b.example"], dns_options=["ndots:2"], host_resolv_conf=host)
    assert text.splitlines()[1:] == ["search b.example", "nameserver 1.1.1.1", "options ndots:2"]
    assert "search" not in files.resolv_conf(dns_search=["."], host_resolv_conf=host)
    # --network host keeps the host's loopback resolver, which works there
    assert "127.0.0.53" in files.resolv_conf(host_network=True, host_resolv_conf=host)


def test_resolv_conf_only_loopback_servers(tmp_path: Path) -> None:
    host = host_resolv(tmp_path, "nameserver 127.0.0.1\n")
    text = files.resolv_conf(host_resolv_conf=host)
    assert "nameserver" not in text.replace("name server", "") and "Use --dns" in text


@pytest.mark.parametrize(("kw", "value"), [("dns", ["not-an-ip"]), ("dns_options", ["bad option"]),
                                            ("dns_search", ["-bad-"])])  # fmt: skip
def test_resolv_conf_errors(tmp_path: Path, kw: str, value: list[str]) -> None:
    with pytest.raises(InvalidArgument):
        files.resolv_conf(host_resolv_conf=host_resolv(tmp_path, ""), **{kw: value})  # type: ignore[arg-type]


def test_network_names() -> None:
    assert files.network_names("web", ["www", "web"], "0123456789abcdef") == ["web", "www", "0123456789ab"]
