"""berth volume create|ls|inspect|rm|prune through the CLI and the library."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from berth.engine.engine import Engine
from berth.errors import AlreadyExists, InvalidArgument, NotFound

IMAGE = "localhost/busybox:latest"
pytestmark = [pytest.mark.root, pytest.mark.integration]


def test_volume_commands(berth) -> None:  # type: ignore[no-untyped-def]
    assert berth("volume", "create", "--label", "team=a", "data1").stdout == "data1\n"
    assert berth("volume", "create", "data1").returncode == 125  # already exists
    assert "data1" in berth("volume", "ls", "-q").stdout.split()
    info = json.loads(berth("volume", "inspect", "data1").stdout)[0]
    assert info["Name"] == "data1" and info["Labels"] == {"team": "a"} and info["Driver"] == "local"
    assert Path(info["Mountpoint"]).is_dir()
    assert berth("volume", "inspect", "--format", "{{.Driver}}", "data1").stdout == "local\n"
    Path(info["Mountpoint"], "f").write_bytes(b"x" * 2000)
    pruned = berth("volume", "prune", "-f")
    assert "data1" in pruned.stdout and "Total reclaimed space: 2kB" in pruned.stdout
    assert berth("volume", "inspect", "data1").returncode == 125
    assert berth("volume", "create", "bad/name").returncode == 125
    assert berth("volume", "rm", "nothing").returncode == 1


def test_volume_library_rules(engine: Engine) -> None:
    v = engine.volume_create("libvol")
    with pytest.raises(AlreadyExists):
        engine.volume_create("libvol")
    with pytest.raises(InvalidArgument):
        engine.volume_create("..")
    assert [x.name for x in engine.volumes()].count("libvol") == 1
    assert engine.volume_users("libvol") == []
    engine.volume_remove("libvol")
    with pytest.raises(NotFound):
        engine.volume_store.get(v.name)


def test_named_volume_shared_and_kept(berth) -> None:  # type: ignore[no-untyped-def]
    assert berth("run", "--rm", "-v", "shared:/data", IMAGE, "sh", "-c", "echo kept > /data/f").returncode == 0
    res = berth("run", "--rm", "--mount", "type=volume,source=shared,target=/in,readonly", IMAGE,
                "sh", "-c", "cat /in/f; touch /in/g")
    assert res.stdout == "kept\n" and res.returncode != 0  # read-only mount: touch fails
    holder = berth("create", "--name", "holder", "-v", "shared:/data", IMAGE, "true").stdout.strip()
    rm = berth("volume", "rm", "shared")
    assert rm.returncode == 1 and "in use" in rm.stderr
    berth("rm", holder)
    assert berth("volume", "rm", "shared").returncode == 0
    assert berth("run", "--rm", "-v", "rel/path:/x", IMAGE, "true").returncode == 125
