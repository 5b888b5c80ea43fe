"""The container's cgroup through a whole berth-runtime container, with each cgroup implementation:
device access modes (a rule's access string, "r", "w" or "rw", is all a node listed in
``linux.devices`` gets, as with runc: through the v1 devices controller and the cgroup v2 eBPF
filter), and a ``cgroupsPath`` that names a busy cgroup.

The cgroup version is forced by running berth-runtime's command line in an interpreter where
``open_cgroup`` is given the version (the runtime has no flag for it): on a hybrid host both
implementations run; a host that lacks one skips its half with the reason.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from berth.errors import Unsupported
from berth.kernel import cgroups

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "runtime"))
from rt_helpers import RT, new_id

pytestmark = pytest.mark.root

# Char devices outside the runtime's default allow-list whose open(2) needs no capability.
CANDIDATES = ("/dev/loop-control", "/dev/net/tun", "/dev/fuse")

FORCING_CLI = """\
import sys

import berth.kernel.cgroups as cgroups

version = int(sys.argv.pop(1))
open_cgroup = cgroups.open_cgroup
cgroups.open_cgroup = lambda path, container_id, version=version: open_cgroup(path, container_id, version=version)

from berth.runtime.cli import main

sys.exit(main())
"""


class ForcedRT(RT):
    """berth-runtime whose containers get cgroups of one ``version``."""

    def __init__(self, root: Path, cli: Path, version: int) -> None:
        super().__init__(root)
        self.cli = cli
        self.version = version

    def argv(self, *args: str, global_flags: tuple[str, ...] = ()) -> list[str]:
        return [sys.executable, str(self.cli), str(self.version), "--root", str(self.root), *global_flags, *args]


def _device() -> tuple[int, int]:
    for path in CANDIDATES:
        try:
            st = os.stat(path)
        except OSError:
            continue
        return os.major(st.st_rdev), os.minor(st.st_rdev)
    pytest.skip(f"none of {', '.join(CANDIDATES)} on this host")


def _need_version(version: int) -> None:
    h = cgroups.hierarchies()
    if version == 1 and h.layout == "unified":
        pytest.skip("cgroup v1 is not mounted on this host")
    if version == 2:
        if h.v2 is None:
            pytest.skip("cgroup v2 is not mounted on this host")
        probe = cgroups.open_cgroup(f"/berth-probe-{new_id()}", "probe", version=2)
        probe.create()
        try:
            probe.apply({"devices": [{"allow": True, "access": "rwm"}]})
        except Unsupported as exc:
            pytest.skip(f"no eBPF device filter here: {exc}")
        finally:
            probe.destroy()


@pytest.fixture(params=[1, 2], ids=["v1", "v2"])
def forced_rt(request: pytest.FixtureRequest, runtime_root: Path, tmp_path: Path) -> Iterator[ForcedRT]:
    _need_version(request.param)
    cli = tmp_path / "forced_cli.py"
    cli.write_text(FORCING_CLI)
    rt = ForcedRT(runtime_root, cli, request.param)
    yield rt
    for cid in rt.ids():
        rt("delete", "--force", cid, check=False)


SCRIPT = (
    "(: < /dev/xdev) 2>/dev/null && echo read-ok || echo read-denied;"
    "(: > /dev/xdev) 2>/dev/null && echo write-ok || echo write-denied;"
    "cat /proc/self/cgroup"
)


@pytest.mark.parametrize(
    ("access", "expected"),
    [
        ("r", ["read-ok", "write-denied"]),
        ("w", ["read-denied", "write-ok"]),
        ("rw", ["read-ok", "write-ok"]),
    ],
)
def test_listed_device_gets_only_its_access(
    forced_rt: ForcedRT, make_bundle: Callable[..., Path], access: str, expected: list[str]
) -> None:
    """The node the runtime makes for ``linux.devices`` is usable only as its device rule says."""
    major, minor = _device()

    def edit(spec: dict[str, Any]) -> None:
        linux = spec["linux"]
        linux["devices"] = [{"path": "/dev/xdev", "type": "c", "major": major, "minor": minor, "fileMode": 0o666}]
        linux["resources"]["devices"].append(
            {"allow": True, "type": "c", "major": major, "minor": minor, "access": access}
        )
        # Outside a cgroup namespace /proc/self/cgroup shows the host paths, and so which
        # implementation placed the container.
        linux["namespaces"] = [ns for ns in linux["namespaces"] if ns["type"] != "cgroup"]
        spec["mounts"] = [m for m in spec["mounts"] if m["type"] != "cgroup"]

    cid = new_id()
    result = forced_rt.run(make_bundle(["sh", "-c", SCRIPT], edit=edit), cid=cid)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[:2] == expected
    placed = {line.split(":", 2)[1]: line.split(":", 2)[2] for line in lines[2:]}
    if forced_rt.version == 1:
        assert placed["devices"] == f"/berth/{cid}"
    else:
        assert placed[""] == f"/berth/{cid}"
        assert placed.get("devices", "/") != f"/berth/{cid}"


def test_default_device_listed_at_its_path_follows_the_rules(
    forced_rt: ForcedRT, make_bundle: Callable[..., Path]
) -> None:
    """/dev/null listed in ``linux.devices`` with an "r" rule replaces the default "rwm" one, as in
    runc; listed at another path, the default still applies to the device number."""

    def edit(spec: dict[str, Any]) -> None:
        spec["linux"]["devices"] = [
            {"path": "/dev/null", "type": "c", "major": 1, "minor": 3, "fileMode": 0o666},
            {"path": "/dev/xnull", "type": "c", "major": 1, "minor": 3, "fileMode": 0o666},
        ]
        spec["linux"]["resources"]["devices"].append(
            {"allow": True, "type": "c", "major": 1, "minor": 3, "access": "r"}
        )

    script = "(: < /dev/xnull) && echo read-ok; (: > /dev/xnull) 2>/dev/null && echo write-ok || echo write-denied"
    result = forced_rt.run(make_bundle(["sh", "-c", script], edit=edit))
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["read-ok", "write-denied"]

    def other_path(spec: dict[str, Any]) -> None:
        edit(spec)
        spec["linux"]["devices"] = spec["linux"]["devices"][1:]

    result = forced_rt.run(make_bundle(["sh", "-c", script], edit=other_path))
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["read-ok", "write-ok"]


def test_busy_cgroups_path_is_refused_untouched(forced_rt: ForcedRT, make_bundle: Callable[..., Path]) -> None:
    """A cgroup that already holds processes is not taken over (nor removed when create fails)."""
    path = f"/berth-test-{new_id()}"
    busy = cgroups.open_cgroup(path, "busy", version=forced_rt.version)
    busy.create()
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        busy.add(sleeper.pid)

        def edit(spec: dict[str, Any]) -> None:
            spec["linux"]["cgroupsPath"] = path
            spec["linux"]["resources"]["pids"] = {"limit": 7}

        result = forced_rt.run(make_bundle(["true"], edit=edit))
        assert result.returncode != 0
        assert "is not empty (1 process in it)" in result.stderr
        assert sleeper.poll() is None
        assert busy.exists() and busy.pids() == [sleeper.pid]
        limit = os.path.join(busy.paths["pids" if forced_rt.version == 1 else ""], "pids.max")
        if os.path.exists(limit):
            with open(limit) as f:
                assert f.read().strip() == "max"
    finally:
        sleeper.kill()
        sleeper.wait()
        busy.destroy()
