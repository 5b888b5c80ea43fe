"""``berth-runtime exec``: a new process in a running container's namespaces and cgroup."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest
from rt_helpers import RT, cgroup_dir, wait_for, write_json

pytestmark = [pytest.mark.root, pytest.mark.integration]


@pytest.fixture
def running(rt: RT, make_bundle: Any, cid: str) -> str:
    def edit(spec: dict[str, Any]) -> None:
        spec["hostname"] = "exec-host"
        spec["process"]["env"].append("FROM_CONFIG=yes")
        spec["mounts"].append({"destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
                               "options": ["mode=1777"]})

    rt("run", "-d", "--bundle", str(make_bundle(["sleep", "1000"], edit=edit)), cid)
    return cid


def test_exec_sees_the_container(rt: RT, running: str) -> None:
    res = rt("exec", running, "sh", "-c", "cat /proc/1/cmdline | tr '\\0' ' '; echo; hostname;"
             "cat /proc/self/cgroup | sort; echo ===; cat /proc/1/cgroup | sort; echo $FROM_CONFIG")
    lines = res.stdout.split("===\n")
    first = lines[0].splitlines()
    assert first[0] == "sleep 1000 "
    assert first[1] == "exec-host"
    assert first[2:] == lines[1].splitlines()[:-1], "exec'd process is not in the container's cgroups"
    assert lines[1].splitlines()[-1] == "yes"


def test_exec_is_in_the_cgroup_on_the_host(rt: RT, running: str, tmp_path: Path) -> None:
    pid_file = tmp_path / "exec.pid"
    rt("exec", "-d", "--pid-file", str(pid_file), running, "sleep", "100")
    pid = int(pid_file.read_text())
    init = rt.state(running)["pid"]
    assert Path(f"/proc/{pid}/cmdline").read_bytes() == b"sleep\x00100\x00"
    for controller in ("memory", "pids", "cpu", "freezer", "devices"):
        assert cgroup_dir(pid, controller) == cgroup_dir(init, controller), controller
    for ns in ("pid", "net", "ipc", "uts", "mnt", "cgroup"):
        assert os.readlink(f"/proc/{pid}/ns/{ns}") == os.readlink(f"/proc/{init}/ns/{ns}"), ns
    assert pid in rt("ps", "--format", "json", running).json()


def test_exec_env_cwd_user(rt: RT, running: str) -> None:
    res = rt("exec", "--env", "A=1", "-e", "B=two words", "--cwd", "/etc", "--user", "1000:1000",
             running, "sh", "-c", 'echo "$A|$B"; pwd; id -u; id -g')
    assert res.stdout.splitlines() == ["1|two words", "/etc", "1000", "1000"]


def test_exec_additional_gids(rt: RT, running: str) -> None:
    res = rt("exec", "--user", "1000:1000", "--additional-gids", "2000", "-g", "3000", running,
             "grep", "Groups", "/proc/self/status")
    assert res.stdout.split()[1:] == ["2000", "3000"]


def test_exec_cap(rt: RT, running: str) -> None:
    from berth.kernel import caps

    bit = 1 << next(iter(caps.parse(["CAP_SYS_ADMIN"], "test")))
    without = rt("exec", running, "grep", "CapEff", "/proc/self/status").stdout.split()[1]
    with_cap = rt("exec", "--cap", "CAP_SYS_ADMIN", running, "grep", "CapEff", "/proc/self/status").stdout.split()[1]
    assert not int(without, 16) & bit
    assert int(with_cap, 16) & bit


def test_exec_process_json(rt: RT, running: str, tmp_path: Path) -> None:
    process = {
        "terminal": False,
        "user": {"uid": 1000, "gid": 1000, "additionalGids": [2000]},
        "args": ["sh", "-c", "echo $MSG; pwd; id -u; id -G; ulimit -n; umask"],
        "env": ["PATH=/bin:/usr/bin", "MSG=from-json"],
        "cwd": "/tmp",
        "rlimits": [{"type": "RLIMIT_NOFILE", "soft": 99, "hard": 99}],
        "capabilities": {"bounding": ["CAP_KILL"], "effective": [], "permitted": []},
    }
    proc_file = write_json(tmp_path / "process.json", process)
    res = rt("exec", "--process", str(proc_file), running)
    lines = res.stdout.splitlines()
    assert lines[:3] == ["from-json", "/tmp", "1000"]
    assert "2000" in lines[3].split()
    assert lines[4:] == ["99", "0022"]
    # A bad process file names the field.
    bad = write_json(tmp_path / "bad.json", {**process, "cwd": "relative"})
    res = rt("exec", "--process", str(bad), running, check=False)
    assert res.returncode != 0 and "cwd" in res.stderr


def test_exec_detach_pid_file(rt: RT, running: str, tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    res = rt("exec", "-d", "--pid-file", str(pid_file), running, "sh", "-c", "sleep 1000")
    assert res.returncode == 0
    pid = int(pid_file.read_text())
    assert b"sleep" in Path(f"/proc/{pid}/cmdline").read_bytes()
    os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("code", [0, 1, 42])
def test_exec_exit_codes(rt: RT, running: str, code: int) -> None:
    assert rt("exec", running, "sh", "-c", f"exit {code}", check=False).returncode == code


def test_exec_missing_command_is_127(rt: RT, running: str) -> None:
    res = rt("exec", running, "no-such-command", check=False)
    assert res.returncode == 127
    assert "no-such-command" in res.stderr
    res = rt("exec", running, "/no/such/path", check=False)
    assert res.returncode == 127


def test_exec_not_executable_is_126(rt: RT, running: str) -> None:
    assert rt("exec", running, "/etc/passwd", check=False).returncode == 126


def test_exec_signal_exit(rt: RT, running: str) -> None:
    assert rt("exec", running, "sh", "-c", "kill -KILL $$", check=False).returncode == 137


def test_exec_stdio(rt: RT, running: str) -> None:
    res = rt("exec", running, "sh", "-c", "read x; echo out:$x; echo err:$x >&2", input="data\n")
    assert res.stdout == "out:data\n" and res.stderr == "err:data\n"


def test_exec_forwards_signals(rt: RT, running: str) -> None:
    proc = rt.popen("exec", running, "sh", "-c", "trap 'exit 9' TERM; echo ready; while :; do sleep 0.05; done",
                    stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"ready\n"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 9
    finally:
        proc.kill()
        proc.wait()


def test_exec_in_stopped_or_missing_container_fails(rt: RT, make_bundle: Any, cid: str) -> None:
    rt.run(make_bundle(["true"]), "--keep", cid=cid)
    res = rt("exec", cid, "true", check=False)
    assert res.returncode != 0 and "stopped" in res.stderr
    res = rt("exec", "nonexistent-container", "true", check=False)
    assert res.returncode != 0 and "does not exist" in res.stderr


def test_exec_in_created_container(rt: RT, make_bundle: Any, cid: str) -> None:
    rt("create", "--bundle", str(make_bundle(["sleep", "1000"])), cid)
    # runc allows it: the namespaces exist, the init waits at the start barrier.
    assert rt("exec", cid, "hostname").stdout.strip() == "berth"
    assert rt.status(cid) == "created"


def test_exec_while_paused_fails(rt: RT, running: str) -> None:
    rt("pause", running)
    try:
        res = rt("exec", running, "true", check=False, timeout=10)
        assert res.returncode != 0 and "paused" in res.stderr
    finally:
        rt("resume", running)


def test_exec_respects_seccomp_and_no_new_privs(rt: RT, make_bundle: Any, cid: str) -> None:
    def edit(spec: dict[str, Any]) -> None:
        spec["mounts"].append({"destination": "/tmp", "type": "tmpfs", "source": "tmpfs"})
        spec["linux"]["seccomp"] = {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
            {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]}

    rt("run", "-d", "--bundle", str(make_bundle(["sleep", "1000"], edit=edit)), cid)
    res = rt("exec", cid, "sh", "-c", "mkdir /tmp/x 2>&1; grep -E 'NoNewPrivs|Seccomp:' /proc/self/status")
    assert "Operation not permitted" in res.stdout
    assert "NoNewPrivs:\t1" in res.stdout and "Seccomp:\t2" in res.stdout


def test_exec_many_concurrently(rt: RT, running: str) -> None:
    procs = [rt.popen("exec", running, "sh", "-c", f"echo {i}", stdout=subprocess.PIPE) for i in range(6)]
    outs = []
    for p in procs:
        out, _ = p.communicate(timeout=30)
        outs.append(out.decode().strip())
        assert p.returncode == 0
    assert sorted(outs) == [str(i) for i in range(6)]
    wait_for(lambda: rt.state(running)["status"] == "running", what="container still running")


def test_exec_into_user_namespace(rt: RT, make_bundle: Any, cid: str, userns_rootfs: Path) -> None:
    def edit(spec: dict[str, Any]) -> None:
        spec["root"]["path"] = str(userns_rootfs)
        spec["linux"]["namespaces"].append({"type": "user"})
        spec["linux"]["uidMappings"] = [{"containerID": 0, "hostID": 300000, "size": 65536}]
        spec["linux"]["gidMappings"] = [{"containerID": 0, "hostID": 300000, "size": 65536}]

    rt("run", "-d", "--bundle", str(make_bundle(["sleep", "1000"], edit=edit)), cid)
    res = rt("exec", cid, "sh", "-c", "cat /proc/self/uid_map; id -u; hostname")
    assert res.stdout.split() == ["0", "300000", "65536", "0", "berth"]
    res = rt("exec", "--user", "1000:1000", cid, "id", "-u")
    assert res.stdout.strip() == "1000"


def test_exec_without_pid_namespace(rt: RT, make_bundle: Any, cid: str) -> None:
    def edit(spec: dict[str, Any]) -> None:
        spec["linux"]["namespaces"] = [n for n in spec["linux"]["namespaces"] if n["type"] != "pid"]

    rt("run", "-d", "--bundle", str(make_bundle(["sleep", "1000"], edit=edit)), cid)
    res = rt("exec", cid, "sh", "-c", "echo $$")
    assert int(res.stdout) > 1


def test_join_user_namespace_by_path(rt: RT, make_bundle: Any, cid: str, userns_rootfs: Path) -> None:
    def first(spec: dict[str, Any]) -> None:
        spec["root"]["path"] = str(userns_rootfs)
        spec["linux"]["namespaces"].append({"type": "user"})
        spec["linux"]["uidMappings"] = [{"containerID": 0, "hostID": 400000, "size": 65536}]
        spec["linux"]["gidMappings"] = [{"containerID": 0, "hostID": 400000, "size": 65536}]

    rt("run", "-d", "--bundle", str(make_bundle(["sleep", "1000"], edit=first)), cid)
    pid = rt.state(cid)["pid"]

    def second(spec: dict[str, Any]) -> None:
        spec["root"]["path"] = str(userns_rootfs)
        spec["linux"]["namespaces"] = [{"type": t} for t in ("pid", "ipc", "uts", "mount")] + [
            {"type": "user", "path": f"/proc/{pid}/ns/user"}, {"type": "network", "path": f"/proc/{pid}/ns/net"}]

    res = rt.run(make_bundle(["sh", "-c", "cat /proc/self/uid_map; readlink /proc/self/ns/user;"
                                          "readlink /proc/self/ns/net"], edit=second))
    assert res.returncode == 0, res.stderr
    out = res.stdout.split()
    assert out[:3] == ["0", "400000", "65536"]
    assert out[3:] == [os.readlink(f"/proc/{pid}/ns/user"), os.readlink(f"/proc/{pid}/ns/net")]
