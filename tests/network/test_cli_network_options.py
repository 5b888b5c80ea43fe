"""``--network`` flags of run/create as the CLI hands them to the engine, and the light pyroute2 import."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest

from berth.cli.run_options import network_options
from berth.errors import InvalidArgument

pytestmark = pytest.mark.unit


def _opts(*values: str, **given: Any) -> dict[str, Any]:
    out = dict(given)
    network_options(list(values), out)
    return out


def test_first_network_is_primary_and_gets_ip_and_aliases() -> None:
    assert _opts("front", "back", ip="10.1.0.5", aliases=["web"]) == {
        "network": "front", "ip": "10.1.0.5", "aliases": ["web"],
        "networks": [{"name": "back", "aliases": [], "ip": None}],
    }
    assert _opts("bridge") == {"network": "bridge"}


def test_long_form() -> None:
    out = _opts("name=front,alias=a,alias=b,ip=10.1.0.7", "name=back,alias=c", aliases=["x"])
    assert out == {"network": "front", "aliases": ["x", "a", "b"], "ip": "10.1.0.7",
                   "networks": [{"name": "back", "aliases": ["c"], "ip": None}]}


@pytest.mark.parametrize("values", [("none", "front"), ("front", "host"), ("container:db", "front"),
                                    ("name=front,mac=x",), ("alias=a",)])
def test_bad_combinations(values: tuple[str, ...]) -> None:
    with pytest.raises(InvalidArgument):
        _opts(*values)


def test_ip_twice() -> None:
    with pytest.raises(InvalidArgument, match="conflicting"):
        _opts("name=front,ip=10.1.0.7", ip="10.1.0.8")


def test_netlink_import_skips_the_rest_of_pyroute2() -> None:
    """berth's netlink module loads pyroute2's message classes only (no asyncio, IPRoute, NDB), and
    the full library still imports afterwards in the same process."""
    code = ("import sys; import berth.network.rtnl; "
            "print(sorted(m for m in ('asyncio', 'pyroute2.ndb', 'pyroute2.iproute') if m in sys.modules)); "
            "from pyroute2 import IPRoute; print(IPRoute.__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out == "[]\nIPRoute\n"
