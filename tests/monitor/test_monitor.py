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

from berth.monitor.client import request
from berth.monitor.logfile import LogWriter, follow, read_entries

pytestmark = [pytest.mark.root, pytest.mark.integration]

BIN = Path(sys.executable).parent


def spawn_monitor(tmp_path: Path, make_bundle: Any, args: list[str], name: str = "m", **cfg: Any) -> tuple[
        Path, str]:
    """Hand a container to the supervisor of ``tmp_path/run`` (started on first use), as the engine does."""
    bundle = make_bundle(args)
    state = tmp_path / f"state-{name}"
    state.mkdir()
    rt_root = tmp_path / "rt"
    runroot = tmp_path / "run"
    runroot.mkdir(exist_ok=True)
    config = {"id": f"{name}-{os.getpid()}", "bundle": str(bundle),
              "runtime": [str(BIN / "berth-runtime"), "--root", str(rt_root)],
              "log_path": str(state / "ctr.log"), **cfg}
    (state / "monitor.json").write_text(json.dumps(config))
    return state, request(str(runroot), "take", str(state), str(BIN / "berth-monitor"))


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


def test_a_health_check_printing_a_lot_passes_and_keeps_4096_bytes(tmp_path: Path, make_bundle: Any) -> None:
    """The check's stdout blocks like any pipe's (a non-blocking one made it fail with EAGAIN once
    64 KiB were unread), and the supervisor keeps only the first 4096 bytes of what it reads."""
    check = "dd if=/dev/zero bs=1048576 count=4 2>/dev/null"  # megabyte writes: past any pipe's room
    state, line = spawn_monitor(tmp_path, make_bundle, ["sleep", "30"], name="loud",
                                health={"test": ["sh", "-c", check], "interval": 0.3, "timeout": 10, "retries": 1})
    assert line.startswith("started ")
    deadline = time.monotonic() + 15
    health: dict[str, Any] = {}
    while time.monotonic() < deadline and health.get("Status") != "healthy":
        if (state / "health.json").exists():
            health = json.loads((state / "health.json").read_text())
        time.sleep(0.05)
    assert health["Status"] == "healthy", health
    assert all(len(entry["Output"]) <= 4096 for entry in health["Log"])
    assert health["Log"][0]["ExitCode"] == 0
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


def _private_dirty_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Private_Dirty:"):
            return int(line.split()[1])
    raise AssertionError("no Private_Dirty")


def _idle_interpreter_kib() -> int:
    """An idle ``python3 -IS`` of the same interpreter: the floor any Python supervisor stands on."""
    idle = subprocess.Popen([sys.executable, "-IS", "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        time.sleep(0.5)
        return _private_dirty_kib(idle.pid)
    finally:
        idle.communicate(b"")


def test_monitor_memory_is_small(tmp_path: Path, make_bundle: Any) -> None:
    """Not a benchmark: a guard that the supervisor stays lean. Its own memory (private dirty: PSS
    also counts a share of the interpreter's pages, which depends on what else runs) is an idle
    interpreter's and ~0.45 MiB more (0.65 when it imported ``os`` and more). A container's end
    (its OOM check, its events) must not grow it either: that work runs in a forked child, so the
    cgroup code (~0.4 MiB) never enters the supervisor. bench/monitor_bench.py has the figures."""
    state, line = spawn_monitor(tmp_path, make_bundle, ["sleep", "30"], name="mem")
    assert line.startswith("started ")
    pid = int(json.loads((state / "monitor.pid").read_text()))
    time.sleep(0.3)
    started = _private_dirty_kib(pid)
    assert started < _idle_interpreter_kib() + 576, started
    events = tmp_path / "events.log"
    for i in range(3):  # a few ends, each with an exit.json and events written
        ended, line = spawn_monitor(tmp_path, make_bundle, ["sh", "-c", "exit 3"], name=f"end{i}",
                                    events={"path": str(events), "name": f"end{i}", "image": "busybox"})
        assert line.startswith("started ")
        assert wait_file(ended / "exit.json")["exitCode"] == 3
        deadline = time.monotonic() + 10
        while (ended / "monitor.pid").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
    assert [json.loads(e)["Action"] for e in events.read_text().splitlines()] == ["die"] * 3
    assert _private_dirty_kib(pid) < started + 96, (started, _private_dirty_kib(pid))
    cid = json.loads((state / "monitor.json").read_text())["id"]
    subprocess.run([str(BIN / "berth-runtime"), "--root", str(tmp_path / "rt"), "kill", cid, "KILL"], check=True)
    assert wait_file(state / "exit.json")["exitCode"] == 137


def test_supervisor_imports_stay_light() -> None:
    """What the long-lived supervisor imports (a terminal's console included) is paid for by every
    container: none of the standard library's heavier modules (``os`` and its ``collections.abc``,
    ``json``, ``ctypes``...), none of berth's outside ``berth.monitor`` but ``berth.oci.jsonc``, and not
    the attach module's client side."""
    import berth

    src = str(Path(berth.__file__).parent.parent)
    code = (f"import sys; sys.path[:0] = [{src!r}]; base = set(sys.modules); "
            "import berth.monitor.main, berth.monitor.console; print(*sorted(set(sys.modules) - base))")
    loaded = set(subprocess.run([sys.executable, "-IS", "-c", code], check=True, capture_output=True,
                                text=True).stdout.split())
    assert "berth.monitor.main" in loaded
    heavy = {"os", "_collections_abc", "collections", "json", "ctypes", "socket", "sqlite3", "typing", "re",
             "enum", "heapq", "tempfile", "signal", "berth.monitor.attach", "berth.monitor.client"}
    assert not loaded & heavy
    allowed = {"berth.oci", "berth.oci.jsonc", "berth.monitor", *(
        f"berth.monitor.{m}" for m in ("main", "loop", "container", "logfile", "sockets", "console"))}
    assert {m for m in loaded if m.startswith("berth.")} <= allowed


def test_attach_socket_stdin_output_and_exit(tmp_path: Path, make_bundle: Any) -> None:
    """The attach protocol at the monitor's level: a state directory too deep for sun_path, a
    container held at create until the client says start, stdin closed when the client's ends."""
    from berth.monitor import attach
    from berth.monitor.sockets import connect

    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    state, line = spawn_monitor(deep, make_bundle, ["sh", "-c", "echo early; tr a-z A-Z; echo done >&2; exit 4"],
                                name="att", stdin=True, stdin_once=True, attach_first=True)
    assert line.startswith("started ") and len(str(state / "attach")) > 108
    time.sleep(0.3)
    assert not (state / "exit.json").exists()  # held until a client asks
    sock = connect(str(state))
    sock.sendall(b"s")
    sock.sendall(b"ihello\n")
    sock.sendall(b"e")
    got: dict[bytes, bytes] = {b"1": b"", b"2": b""}
    code = None
    while code is None:
        msg = sock.recv(attach.MAX_MESSAGE)
        assert msg, "closed without an exit status"
        if msg[:1] == b"x":
            code = int(msg[1:])
        else:
            got[msg[:1]] += msg[1:]
    sock.close()
    assert (code, got[b"1"], got[b"2"]) == (4, b"early\nHELLO\n", b"done\n")
    assert wait_file(state / "exit.json")["exitCode"] == 4


def test_one_containers_trouble_leaves_the_others(tmp_path: Path, make_bundle: Any) -> None:
    """One supervisor for all: a bad request, a broken config and a failing create each get their
    error, while a container already supervised keeps logging under the same supervisor."""
    state, line = spawn_monitor(tmp_path, make_bundle, ["sh", "-c", "while true; do echo tick; sleep 0.05; done"],
                                name="steady")
    assert line.startswith("started ")
    pid = int(json.loads((state / "monitor.pid").read_text()))
    broken = tmp_path / "state-broken"
    broken.mkdir()
    (broken / "monitor.json").write_text("{not json")
    runroot, program = str(tmp_path / "run"), str(BIN / "berth-monitor")
    assert request(runroot, "take", str(broken), program).startswith("error ")
    assert request(runroot, "frobnicate", str(broken), program).startswith("error unknown request")
    _state, line = spawn_monitor(tmp_path, make_bundle, ["no-such-command"], name="bad")
    assert line.startswith("error ")
    assert request(runroot, "take", str(state), program) == "error the container is already supervised"
    before = len(read_entries(str(state / "ctr.log")))
    time.sleep(0.5)
    assert len(read_entries(str(state / "ctr.log"))) > before + 3
    assert int(json.loads((state / "monitor.pid").read_text())) == pid
    cid = json.loads((state / "monitor.json").read_text())["id"]
    subprocess.run([str(BIN / "berth-runtime"), "--root", str(tmp_path / "rt"), "kill", cid, "KILL"], check=True)
    assert wait_file(state / "exit.json")["exitCode"] == 137
    assert not (state / "monitor.pid").exists()  # done for good


def test_supervisor_holds_none_of_its_starters_descriptors(tmp_path: Path, make_bundle: Any) -> None:
    """A library user's inheritable pipe must not stay open in the long-lived supervisor (its
    reader would never see the end)."""
    r, w = os.pipe()
    os.set_inheritable(w, True)
    try:
        state, line = spawn_monitor(tmp_path, make_bundle, ["sleep", "30"], name="fds")
        assert line.startswith("started ")
        pid = int(json.loads((state / "monitor.pid").read_text()))
        held = {os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")}
        assert os.readlink(f"/proc/self/fd/{w}") not in held
    finally:
        os.close(r)
        os.close(w)
    cid = json.loads((state / "monitor.json").read_text())["id"]
    subprocess.run([str(BIN / "berth-runtime"), "--root", str(tmp_path / "rt"), "kill", cid, "KILL"], check=True)
    assert wait_file(state / "exit.json")["exitCode"] == 137
