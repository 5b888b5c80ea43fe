"""The Engine as a library and through the ``berth`` CLI, on real containers."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from berth.engine.engine import Engine
from berth.errors import AlreadyExists, Conflict, InvalidArgument, NotFound

IMAGE = "localhost/busybox:latest"
pytestmark = [pytest.mark.root, pytest.mark.integration]


def test_library_run_wait_logs(engine: Engine) -> None:
    c = engine.run(IMAGE, ["sh", "-c", "echo hello; echo oops >&2; exit 3"], pull="never")
    assert engine.wait(c.id, 20) == 3
    logs = list(engine.logs(c.id))
    assert [(e["stream"], e["log"]) for e in logs] == [("stdout", "hello\n"), ("stderr", "oops\n")]
    assert engine.get(c.id).status == "exited"


def test_pid1_env_user_workdir(engine: Engine) -> None:
    c = engine.run(IMAGE, ["sh", "-c", "echo $$ $FOO $(id -u) $(pwd) $(hostname)"], pull="never",
                   env=["FOO=bar"], user="1000", workdir="/tmp", hostname="box")
    engine.wait(c.id, 20)
    assert "".join(e["log"] for e in engine.logs(c.id)).split() == ["1", "bar", "1000", "/tmp", "box"]


def test_default_capabilities_and_masks(engine: Engine) -> None:
    script = "grep CapEff /proc/self/status; cat /proc/keys | wc -c; ip link add x type dummy; echo rc=$?"
    c = engine.run(IMAGE, ["sh", "-c", script], pull="never")
    engine.wait(c.id, 20)
    out = "".join(e["log"] for e in engine.logs(c.id))
    assert "CapEff:\t00000000a80425fb" in out  # Docker's default set
    assert "rc=0" not in out  # no NET_ADMIN: the dummy link cannot be added


def test_memory_limit_oom_killed(engine: Engine) -> None:
    c = engine.run(IMAGE, ["sh", "-c", "x=a; while true; do x=$x$x; done"], pull="never", memory="16m")
    code = engine.wait(c.id, 60)
    assert code == 137
    info = engine.inspect(c.id)
    assert info["State"]["OOMKilled"] is True


def test_pids_limit_stops_fork_bomb(engine: Engine) -> None:
    script = "for i in $(seq 1 40); do sleep 5 & done; echo started $(ls /proc | grep -c '^[0-9]')"
    c = engine.run(IMAGE, ["sh", "-c", script], pull="never", pids_limit=10)
    engine.wait(c.id, 30)
    out = "".join(e["log"] for e in engine.logs(c.id))
    assert "can't fork" in out or "Resource temporarily unavailable" in out


def test_stop_remove_and_errors(engine: Engine) -> None:
    c = engine.run(IMAGE, ["sleep", "60"], pull="never", name="sleeper")
    with pytest.raises(AlreadyExists):
        engine.create(IMAGE, ["true"], pull="never", name="sleeper")
    with pytest.raises(Conflict):
        engine.remove("sleeper")
    assert engine.get("sleeper").status == "running"
    stopped = engine.stop("sleeper", timeout=1)  # sleep as pid 1 ignores SIGTERM: killed after 1 s
    assert stopped.status == "exited" and stopped.exit_code == 137
    engine.remove(c.id)
    with pytest.raises(NotFound):
        engine.get("sleeper")
    with pytest.raises(InvalidArgument):
        engine.create(IMAGE, ["true"], pull="never", memory="lots")
    with pytest.raises(NotFound):
        engine.create("localhost/missing:1", ["true"], pull="never")


def test_restart_on_failure(engine: Engine) -> None:
    c = engine.run(IMAGE, ["sh", "-c", "echo try; exit 2"], pull="never", restart="on-failure:2")
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and engine.get(c.id).status != "exited":
        time.sleep(0.1)
    c = engine.get(c.id)
    assert (c.status, c.exit_code, c.restart_count) == ("exited", 2, 2)
    assert [e["log"] for e in engine.logs(c.id)] == ["try\n"] * 3


def test_a_restarted_container_is_seen_with_its_new_init(engine: Engine) -> None:
    """After a restart the init's pid is the new one: inspect's Pid, and the namespaces a
    ``--network container:`` joins, are the running process's, not the first one's."""
    c = engine.run(IMAGE, ["sh", "-c", "[ -e /tmp/ran ] && exec sleep 60; touch /tmp/ran; exit 1"], pull="never",
                   restart="always", network="none")
    first = c.pid
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and engine.get(c.id).pid == first:
        time.sleep(0.1)
    again = engine.get(c.id)
    assert again.status == "running" and again.pid != first
    assert engine.inspect(c.id)["State"]["Pid"] == again.pid
    assert Path(f"/proc/{again.pid}/cmdline").read_bytes().split(b"\0")[0] == b"sleep"
    joined = engine.run(IMAGE, ["sleep", "60"], pull="never", network=f"container:{c.id}")
    assert os.readlink(f"/proc/{joined.pid}/ns/net") == os.readlink(f"/proc/{again.pid}/ns/net")
    for x in (joined, again):
        engine.remove(x.id, force=True)


def test_health_status(engine: Engine) -> None:
    c = engine.run(IMAGE, ["sleep", "30"], pull="never",
                   health={"test": ["true"], "interval": 0.2, "timeout": 2, "retries": 1})
    deadline = time.monotonic() + 10
    status = None
    while time.monotonic() < deadline:
        status = engine.inspect(c.id)["State"].get("Health", {}).get("Status")
        if status == "healthy":
            break
        time.sleep(0.1)
    assert status == "healthy"


def test_cli_run_exit_codes(berth) -> None:  # type: ignore[no-untyped-def]
    res = berth("run", "--rm", IMAGE, "sh", "-c", "echo out; exit 5")
    assert (res.returncode, res.stdout) == (5, "out\n")
    assert berth("run", "--rm", IMAGE, "no-such-cmd").returncode == 127
    assert berth("run", "--rm", IMAGE, "/etc/passwd").returncode == 126
    bad = berth("run", "--rm", "--no-such-flag", IMAGE)
    assert bad.returncode == 125 and "unknown flag" in bad.stderr
    assert berth("run", "--rm", "--pull", "never", "localhost/nothing", "true").returncode == 125
    assert berth("run", "--rm", "-i", IMAGE, "cat", input="piped\n").stdout == "piped\n"
    assert berth("ps", "-a", "-q").stdout == ""


def test_rm_containers_get_a_volatile_rootfs(berth) -> None:  # type: ignore[no-untyped-def]
    """A --rm container's writable layer is thrown away: its overlay skips syncing (volatile), so its
    unmount does not flush the host's disk. A kept container's layer is synced as usual."""
    def root_options(*flags: str) -> set[str]:
        res = berth("run", *flags, IMAGE, "cat", "/proc/self/mountinfo")
        assert res.returncode == 0, res.stderr
        root = next(line.split() for line in res.stdout.splitlines() if line.split()[4] == "/")
        return set(root[-1].split(","))

    volatile = {"volatile", "fsync=volatile"}  # the second spelling since Linux 6.6
    assert root_options("--rm") & volatile
    assert not root_options("--name", "kept") & volatile
    assert berth("rm", "kept").returncode == 0


def test_cli_detached_lifecycle(berth) -> None:  # type: ignore[no-untyped-def]
    cid = berth("run", "-d", "--name", "web", IMAGE, "sh", "-c", "echo ready; sleep 60").stdout.strip()
    assert len(cid) == 64
    time.sleep(0.3)
    assert "web" in berth("ps").stdout
    assert berth("ps", "--format", "{{.Names}} {{.State}}").stdout.strip() == "web running"
    assert berth("logs", "web").stdout == "ready\n"
    assert json.loads(berth("inspect", "web").stdout)[0]["State"]["Running"] is True
    assert berth("inspect", "--format", "{{.State.Status}}", "web").stdout.strip() == "running"
    rm = berth("rm", "web")
    assert rm.returncode == 1 and "running" in rm.stderr
    assert berth("stop", "-t", "1", "web").returncode == 0
    assert berth("wait", "web").stdout.strip() == "137"
    assert berth("rm", "web").returncode == 0
    assert berth("ps", "-a", "-q").stdout == ""


def test_cli_logs_since_and_tail(berth) -> None:  # type: ignore[no-untyped-def]
    cid = berth("run", "-d", IMAGE, "sh", "-c", "echo early; sleep 1.5; echo late").stdout.strip()
    assert berth("wait", cid).stdout.strip() == "0"
    assert berth("logs", "--since", "1s", cid).stdout == "late\n"
    assert berth("logs", "--since", "1m", cid).stdout == "early\nlate\n"
    assert berth("logs", "--tail", "1", cid).stdout == "late\n"
    assert berth("logs", "--since", "yesterday", cid).returncode == 125
    berth("rm", cid)


def test_cli_events(berth) -> None:  # type: ignore[no-untyped-def]
    cid = berth("run", "-d", "--name", "evt", IMAGE, "sh", "-c", "exit 3").stdout.strip()
    assert berth("wait", "evt").stdout.strip() == "3"
    berth("rm", "evt")
    res = berth("events", "--since", "1m", "--until", "0s", "--filter", "container=evt")
    actions = [line.split()[2] for line in res.stdout.splitlines()]
    assert actions == ["create", "start", "die", "destroy"]
    assert f"{cid} (exitCode=3, image={IMAGE}, name=evt)" in res.stdout
    assert berth("events", "--since", "1m", "--until", "0s", "--filter", "event=die",
                 "--format", "{{.Status}} {{.Actor.Attributes.name}}").stdout.splitlines()[-1] == "die evt"
