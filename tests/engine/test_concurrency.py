"""Many berth processes at once on one state database, and the truth after crashes."""

from __future__ import annotations

import json
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from berth.engine.engine import Engine

IMAGE = "localhost/busybox:latest"
pytestmark = [pytest.mark.root, pytest.mark.integration]


def test_fifty_parallel_detached_runs(berth, engine: Engine) -> None:  # type: ignore[no-untyped-def]
    def run(i: int):  # type: ignore[no-untyped-def]
        return berth("run", "-d", "--name", f"par{i}", IMAGE, "sleep", "30", timeout=120)

    with ThreadPoolExecutor(max_workers=16) as pool:
        results = list(pool.map(run, range(50)))
    failures = [r.stderr for r in results if r.returncode != 0]
    assert failures == []
    assert not any("locked" in r.stderr for r in results)
    names = {c.name for c in engine.containers() if c.status == "running"}
    assert names == {f"par{i}" for i in range(50)}
    ids = {r.stdout.strip() for r in results}
    assert len(ids) == 50


def test_monitor_killed_container_lives_on(berth, engine: Engine, engine_dirs: tuple[str, str]) -> None:  # type: ignore[no-untyped-def]
    cid = berth("run", "-d", IMAGE, "sleep", "2").stdout.strip()
    runroot = engine_dirs[1]
    monitor = json.loads(Path(runroot, "containers", cid, "monitor.pid").read_text())
    os.kill(monitor, signal.SIGKILL)
    time.sleep(0.3)
    assert engine.get(cid).status == "running"  # the container did not die with its monitor
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and engine.get(cid).status == "running":
        time.sleep(0.1)
    assert engine.get(cid).status == "exited"  # and once it ends, ps tells the truth


def test_reboot_truth_and_system_boot(berth, engine: Engine, engine_dirs: tuple[str, str]) -> None:  # type: ignore[no-untyped-def]
    """Kill every process of the containers and wipe their runtime state, as a reboot would: ps tells
    the truth, and `system boot` brings back always and unless-stopped (but not one stopped by hand)."""
    from berth.snapshots.mount import unmount

    always = berth("run", "-d", "--restart", "always", IMAGE, "sleep", "60").stdout.strip()
    unless = berth("run", "-d", "--restart", "unless-stopped", IMAGE, "sleep", "60").stdout.strip()
    stopped = berth("run", "-d", "--restart", "unless-stopped", IMAGE, "sleep", "60").stdout.strip()
    plain = berth("run", "-d", IMAGE, "sleep", "60").stdout.strip()
    berth("stop", "-t", "0", stopped)
    runroot = engine_dirs[1]
    for cid in (always, unless, plain):
        state = Path(runroot, "containers", cid)
        for name in ("monitor.pid", "pid"):
            pid = json.loads((state / name).read_text())
            os.kill(pid, signal.SIGKILL)
    time.sleep(0.5)
    for cid in (always, unless, plain, stopped):
        state = Path(runroot, "containers", cid)
        if (state / "rootfs").is_mount():
            unmount(state / "rootfs", detach=True)
        for f in state.iterdir():
            if f.is_file():
                f.unlink()
    for cid in (always, unless, plain):
        assert engine.get(cid).status == "exited"
    booted = berth("system", "boot").stdout.split()
    assert sorted(booted) == sorted([always, unless])
    assert engine.get(always).status == "running" and engine.get(unless).status == "running"
    assert engine.get(stopped).status == "exited" and engine.get(plain).status == "exited"
