"""berth-monitor supervising real containers through berth-runtime: logs, exit codes, restarts,
health checks, and its memory next to conmon's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from berth.monitor.logfile import LogWriter, follow, read_entries

pytestmark = [pytest.mark.root, pytest.mark.integration]

BIN = Path(sys.executable).parent


def spawn_monitor(tmp_path: Path, make_bundle: Any, args: list[str], name: str = "m", **cfg: Any) -> tuple[
        Path, str]:
    bundle = make_bundle(args)
    state = tmp_path / f"state-{name}"
    state.mkdir()
    rt_root = tmp_path / "rt"
    config = {"id": f"{name}-{os.getpid()}", "bundle": str(bundle),
              "runtime": [str(BIN / "berth-runtime"), "--root", str(rt_root)],
              "log_path": str(state / "ctr.log"), **cfg}
    (state / "monitor.json").write_text(json.dumps(config))
    r, w = os.pipe()
    os.set_inheritable(w, True)
    subprocess.Popen([str(BIN / "berth-monitor"), str(state)], env={**os.environ, "BERTH_SYNC_FD": str(w)},
                     pass_fds=(w,), start_new_session=True, stdin=subprocess.DEVNULL)
    os.close(w)
    with os.fdopen(r) as f:
        line = f.readline().strip()
    return state, line


def wait_file(path: Path, timeout: float = 10) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            return json.loads(path.read_text())
        time.sleep(0.05)
    raise AssertionError(f"{path} did not appear")


def test_logs_and_exit_code(tmp_path: Path, make_bundle: Any) -> None:
    state, line = spawn_monitor(tmp_path, make_bundle,
                                ["sh", "-c", "echo out1; echo err1 >&2; printf partial; exit 3"])
    assert line.startswith("started ")
    exit_info = wait_file(state / "exit.json")
    assert exit_info["exitCode"] == 3
    assert exit_info["oomKilled"] is False
    entries = read_entries(str(state / "ctr.log"))
    by_stream = {(e["stream"], e["log"]) for e in entries}
    assert ("stdout", "out1\n") in by_stream
    assert ("stderr", "err1\n") in by_stream
    assert ("stdout", "partial") in by_stream
    assert all(e["time"].endswith("Z") for e in entries)


def test_create_error_reported(tmp_path: Path, make_bundle: Any) -> None:
    _state, line = spawn_monitor(tmp_path, make_bundle, ["no-such-command"])
    assert line.startswith("error ")
    assert "no-such-command" in line


def test_restart_on_failure_limit(tmp_path: Path, make_bundle: Any) -> None:
    state, line = spawn_monitor(tmp_path, make_bundle, ["sh", "-c", "echo run; exit 1"],
                                restart={"name": "on-failure", "max": 2})
    assert line.startswith("started ")
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        info = json.loads((state / "exit.json").read_text()) if (state / "exit.json").exists() else {}
        if info.get("restartCount") == 2:
            break
        time.sleep(0.1)
    assert info == {**info, "restartCount": 2, "exitCode": 1}
    time.sleep(0.5)
    runs = [e for e in read_entries(str(state / "ctr.log")) if e["log"] == "run\n"]
    assert len(runs) == 3  # the first run and two restarts


def test_health_transitions(tmp_path: Path, make_bundle: Any) -> None:
    def writable_bundle(args: list[str]) -> Path:
        return make_bundle(args, writable=True)

    script = "touch /tmp/ok; sleep 1.2; rm /tmp/ok; sleep 30"
    state, line = spawn_monitor(tmp_path, writable_bundle, ["sh", "-c", script], name="h",
                                health={"test": ["test", "-e", "/tmp/ok"], "interval": 0.3, "timeout": 2,
                                        "retries": 2})
    assert line.startswith("started ")
    statuses = set()
    deadline = time.monotonic() + 8
    while time.monotonic() < deadline and "unhealthy" not in statuses:
        if (state / "health.json").exists():
            statuses.add(json.loads((state / "health.json").read_text())["Status"])
        time.sleep(0.05)
    assert {"starting", "healthy", "unhealthy"} <= statuses
    cid = json.loads((state / "monitor.json").read_text())["id"]
    subprocess.run([str(BIN / "berth-runtime"), "--root", str(tmp_path / "rt"), "kill", cid, "KILL"], check=False)
    assert wait_file(state / "exit.json")["exitCode"] == 137


def test_log_rotation_and_follow(tmp_path: Path) -> None:
    path = tmp_path / "r.log"
    writer = LogWriter(str(path), max_size=2000, max_files=3)
    seen: list[str] = []
    done = False
    import threading

    def reader() -> None:
        for entry in follow(str(path), stop=lambda: done, poll=0.01):
            seen.append(entry["log"])

    t = threading.Thread(target=reader)
    t.start()
    for i in range(60):
        writer.feed("stdout", f"line {i:03d}\n".encode())
        time.sleep(0.002)
    writer.close()
    time.sleep(0.2)
    done = True
    t.join(5)
    assert (tmp_path / "r.log.1").exists() and (tmp_path / "r.log.2").exists()
    assert not (tmp_path / "r.log.3").exists()
    assert seen == [f"line {i:03d}\n" for i in range(60)]
    kept = [e["log"] for e in read_entries(str(path))]
    assert kept == [f"line {i:03d}\n" for i in range(60 - len(kept), 60)]


def _pss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    raise AssertionError("no Pss")


def test_monitor_memory_is_small(tmp_path: Path, make_bundle: Any) -> None:
    """Not a benchmark: a guard that the monitor stays lean (an idle interpreter alone is ~2.8 MiB)."""
    state, line = spawn_monitor(tmp_path, make_bundle, ["sleep", "30"], name="mem")
    assert line.startswith("started ")
    pid = int(json.loads((state / "monitor.pid").read_text()))
    assert _pss_kib(pid) < 6 * 1024
    cid = json.loads((state / "monitor.json").read_text())["id"]
    subprocess.run([str(BIN / "berth-runtime"), "--root", str(tmp_path / "rt"), "kill", cid, "KILL"], check=True)
    assert wait_file(state / "exit.json")["exitCode"] == 137
