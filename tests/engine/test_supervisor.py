"""One supervisor (``berth-monitor RUNROOT``) for every container of a runroot: each keeps its own
logs, exit code, health and restart policy; a supervisor killed with SIGKILL takes no container
down, and the next ``berth`` command has a new one adopt them."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from berth.engine.engine import Engine
from berth.monitor.client import supervised

IMAGE = "localhost/busybox:latest"
pytestmark = [pytest.mark.root, pytest.mark.integration]


def _monitor_pid(runroot: str, cid: str) -> int:
    return int(json.loads(Path(runroot, "containers", cid, "monitor.pid").read_text()))


def _until(cond: Any, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.05)
    return False


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text())
    except (FileNotFoundError, ValueError):  # not there yet, or being written
        return None


def _log(engine: Engine, cid: str) -> str:
    return "".join(e["log"] for e in engine.logs(cid))


def test_ten_containers_share_one_supervisor(berth: Any, engine: Engine, engine_dirs: tuple[str, str]) -> None:
    runroot = engine_dirs[1]
    ids = [berth("run", "-d", IMAGE, "sh", "-c", f"echo out{i}; echo err{i} >&2; sleep 1; exit {i}").stdout.strip()
           for i in range(10)]
    pids = {_monitor_pid(runroot, cid) for cid in ids}
    assert len(pids) == 1  # one supervisor for all ten
    assert all(supervised(str(Path(runroot, "containers", cid))) for cid in ids)
    for i, cid in enumerate(ids):
        assert engine.wait(cid, 20) == i
        entries = list(engine.logs(cid))
        assert {(e["stream"], e["log"]) for e in entries} == {("stdout", f"out{i}\n"), ("stderr", f"err{i}\n")}
    # Done for good: monitor.pid goes, and the supervisor leaves once it has nothing to supervise.
    assert not any(Path(runroot, "containers", cid, "monitor.pid").exists() for cid in ids)
    (pid,) = pids
    assert _until(lambda: not Path(f"/proc/{pid}").exists() or b") Z" in Path(f"/proc/{pid}/stat").read_bytes())
    assert not Path(runroot, "monitor.sock").exists()


def test_supervisor_sigkill_leaves_containers_running_and_is_adopted(
        berth: Any, engine: Engine, engine_dirs: tuple[str, str]) -> None:
    runroot = engine_dirs[1]
    script = "i=0; while true; do echo tick$i; i=$((i+1)); sleep 0.1; done"
    a = berth("run", "-d", IMAGE, "sh", "-c", script).stdout.strip()
    b = berth("run", "-d", "--restart", "on-failure", IMAGE, "sh", "-c", script).stdout.strip()
    assert _until(lambda: "tick3" in _log(engine, a) and "tick3" in _log(engine, b))
    old = _monitor_pid(runroot, a)
    assert _monitor_pid(runroot, b) == old
    os.kill(old, signal.SIGKILL)
    time.sleep(1.0)  # they keep printing into their FIFOs, with nobody reading
    assert _until(lambda: not Path(f"/proc/{old}").exists() or b") Z" in Path(f"/proc/{old}/stat").read_bytes())
    before = _log(engine, a).count("tick")
    # The next command notices the orphans and a new supervisor adopts them.
    out = berth("ps", "--format", "{{.ID}} {{.Status}}").stdout
    assert a[:12] in out and b[:12] in out
    new = _monitor_pid(runroot, a)
    assert new != old and _monitor_pid(runroot, b) == new
    assert engine.get(a).status == "running" and engine.get(b).status == "running"
    # Logging resumes, with what the FIFO held while no one read it.
    assert _until(lambda: _log(engine, a).count("tick") > before + 10)
    ticks = [int(e["log"][4:]) for e in engine.logs(a) if e["log"].startswith("tick")]
    assert ticks == sorted(ticks) and ticks[-1] - ticks[0] + 1 == len(ticks)  # nothing lost
    # The exit of an adopted container is seen; its status cannot be known.
    berth("kill", a)
    assert engine.wait(a, 15) == -1
    assert "unknown" in engine.get(a).error
    # Its restart policy still applies: on-failure restarts it (under the new supervisor).
    state_b = Path(runroot, "containers", b)
    first_init = int((state_b / "pid").read_text())
    berth("kill", b)
    assert _until(lambda: (state_b / "exit.json").exists() and _read_int(state_b / "pid") not in (None, first_init)
                  and engine.get(b).status == "running")
    assert json.loads((state_b / "exit.json").read_text())["exitCode"] == -1
    assert _monitor_pid(runroot, b) == new
    berth("rm", "-f", a, b)


def test_health_and_restart_stay_per_container(berth: Any, engine: Engine) -> None:
    healthy = berth("run", "-d", "--health-cmd", "true", "--health-interval", "0.3s", IMAGE,
                    "sleep", "30").stdout.strip()
    sick = berth("run", "-d", "--health-cmd", "false", "--health-interval", "0.3s", "--health-retries", "1",
                 IMAGE, "sleep", "30").stdout.strip()
    flaky = berth("run", "-d", "--restart", "on-failure:2", IMAGE, "sh", "-c", "exit 5").stdout.strip()
    plain = berth("run", "-d", IMAGE, "sh", "-c", "exit 6").stdout.strip()

    def health(cid: str) -> str:
        return str(engine.inspect(cid)["State"].get("Health", {}).get("Status"))

    assert _until(lambda: health(healthy) == "healthy" and health(sick) == "unhealthy")
    assert _until(lambda: engine.get(flaky).status == "exited")
    assert (engine.get(flaky).restart_count, engine.get(flaky).exit_code) == (2, 5)
    assert (engine.get(plain).restart_count, engine.wait(plain, 10)) == (0, 6)
    assert health(healthy) == "healthy"  # the others' exits and restarts did not disturb it
    berth("rm", "-f", healthy, sick, flaky, plain)
