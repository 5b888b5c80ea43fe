"""Port specs as users write them for ``-p`` and ``-P``, and how host ports are chosen."""

from __future__ import annotations

import random
import socket

import pytest

from berth.errors import Conflict, InvalidArgument
from berth.network.ports import PortMapping, PortSpec, bindable, from_exposed, parse, resolve

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("spec", "want"),
    [
        ("80", PortSpec(80, 80)),
        ("8080:80", PortSpec(80, 80, "tcp", "", 8080, 8080)),
        ("8080:80/udp", PortSpec(80, 80, "udp", "", 8080, 8080)),
        ("127.0.0.1:8080:80/udp", PortSpec(80, 80, "udp", "127.0.0.1", 8080, 8080)),
        ("127.0.0.1::80", PortSpec(80, 80, "tcp", "127.0.0.1")),
        ("8000-8010:80-90", PortSpec(80, 90, "tcp", "", 8000, 8010)),
        ("8000-8010:80", PortSpec(80, 80, "tcp", "", 8000, 8010)),
        ("80-82", PortSpec(80, 82)),
        ("[::1]:8080:80", PortSpec(80, 80, "tcp", "::1", 8080, 8080)),
        ("0.0.0.0:53:53/UDP", PortSpec(53, 53, "udp", "0.0.0.0", 53, 53)),
    ],
)
def test_parse(spec: str, want: PortSpec) -> None:
    assert parse(spec) == want


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ("", "invalid port spec"),
        ("80/sctp", "protocol"),
        ("abc", "container port"),
        ("8080:", "no container port"),
        ("0:80", "outside 1-65535"),
        ("8080:70000", "outside 1-65535"),
        ("90-80", "ends before"),
        ("8000-8002:80-90", "differ in length"),
        ("1.2.3.4.5:80:80", "host IP"),
        ("a:b:c:d", "too many"),
        ("[::1:80:80", "IPv6"),
        (" 80", "invalid port spec"),
        ("8080:80-81", "differ in length"),
    ],
)
def test_parse_errors_are_clear(spec: str, words: str) -> None:
    with pytest.raises(InvalidArgument, match=words):
        parse(spec)


def test_exposed() -> None:
    assert from_exposed(["80/tcp", "53/udp", "9000-9001"]) == [
        PortSpec(80, 80), PortSpec(53, 53, "udp"), PortSpec(9000, 9001)
    ]
    with pytest.raises(InvalidArgument):
        from_exposed(["80/icmp"])


def test_str_round_trips() -> None:
    for text in ("8080:80/tcp", "127.0.0.1:8000-8001:80-81/udp", "80/tcp", "[::1]:1:2/tcp"):
        assert str(parse(text)) == text


def never_busy(proto: str, ip: str, port: int) -> str | None:
    return None


def test_resolve_fixed_range_and_random() -> None:
    specs = [parse("8000-8001:80-81"), parse("9000-9005:90"), parse("100/udp")]
    busy = {("tcp", "0.0.0.0", 9000), ("tcp", "0.0.0.0", 9001)}
    got = resolve(specs, lambda p, i, q: "x" if (p, i, q) in busy else None, random.Random(1))
    assert got[:3] == [
        PortMapping("tcp", "0.0.0.0", 8000, 80), PortMapping("tcp", "0.0.0.0", 8001, 81),
        PortMapping("tcp", "0.0.0.0", 9002, 90),
    ]
    assert got[3].proto == "udp" and got[3].container_port == 100 and 40000 <= got[3].host_port < 50000


def test_resolve_refuses_taken_and_duplicate_ports() -> None:
    with pytest.raises(Conflict, match=r"0.0.0.0:8080/tcp is already in use \(someone\)"):
        resolve([parse("8080:80")], lambda p, i, q: "someone")
    with pytest.raises(InvalidArgument, match="published twice"):
        resolve([parse("8080:80"), parse("127.0.0.1:8080:81")], never_busy)
    # the same port number on different protocols is fine
    assert len(resolve([parse("53:53/udp"), parse("53:53/tcp")], never_busy)) == 2


def test_bindable_sees_a_listener() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert not bindable("tcp", "127.0.0.1", port)
        assert not bindable("tcp", "0.0.0.0", port)
    assert bindable("tcp", "127.0.0.1", port)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
        u.bind(("127.0.0.1", 0))
        assert not bindable("udp", "127.0.0.1", u.getsockname()[1])
    with pytest.raises(InvalidArgument, match="not an address of this host"):
        bindable("tcp", "203.0.113.7", 80)


def test_ps_column_folds_ranges_and_orders_by_container_port() -> None:
    from berth.network.ports import format_ports

    mappings = [PortMapping("udp", "0.0.0.0", 9001, 53), PortMapping("tcp", "0.0.0.0", 8080, 80),
                PortMapping("udp", "0.0.0.0", 9002, 54), PortMapping("tcp", "127.0.0.1", 7000, 7000),
                PortMapping("udp", "0.0.0.0", 9000, 52), PortMapping("tcp", "0.0.0.0", 8443, 443)]
    assert format_ports(mappings) == ("0.0.0.0:9000-9002->52-54/udp, 0.0.0.0:8080->80/tcp, "
                                      "0.0.0.0:8443->443/tcp, 127.0.0.1:7000->7000/tcp")
    assert format_ports([]) == ""
