"""berth-runtime's lifecycle on the real kernel: run, create/start/state/kill/delete, list, ps,
pause/resume, update, events, spec, features and the global flags engines pass."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from rt_helpers import RT, cgroup_dir, cgroup_path_dir, new_id, wait_file, wait_for, write_json

pytestmark = [pytest.mark.root, pytest.mark.integration]

SLEEP = ["sleep", "1000"]


def _no_pidns(spec: dict[str, Any]) -> None:
    spec["linux"]["namespaces"] = [n for n in spec["linux"]["namespaces"] if n["type"] != "pid"]


# --- run -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("code", [0, 3])
def test_run_exit_code_propagates(rt: RT, make_bundle: Any, code: int) -> None:
    res = rt.run(make_bundle(["sh", "-c", f"exit {code}"]))
    assert res.returncode == code, res.stderr


def test_run_signal_exit_is_128_plus_n(rt: RT, make_bundle: Any) -> None:
    # Without a pid namespace the shell is not an init, so its own SIGTERM kills it.
    res = rt.run(make_bundle(["sh", "-c", "kill -TERM $$; sleep 5"], edit=_no_pidns))
    assert res.returncode == 128 + signal.SIGTERM, res.stderr


def test_run_killed_from_outside_is_137(rt: RT, make_bundle: Any, cid: str) -> None:
    proc = rt.popen("run", "--bundle", str(make_bundle(SLEEP)), cid, stdout=subprocess.DEVNULL)
    try:
        rt.wait_status(cid, "running")
        rt("kill", cid, "KILL")
        assert proc.wait(timeout=10) == 137
    finally:
        proc.kill()
        proc.wait()
    assert rt.status(cid) == "gone"


def test_run_forwards_signals_to_the_container(rt: RT, make_bundle: Any, cid: str) -> None:
    script = "trap 'echo got-term; exit 7' TERM; echo ready; while :; do sleep 0.05; done"
    proc = rt.popen("run", "--bundle", str(make_bundle(["sh", "-c", script])), cid,
                    stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"ready\n"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 7
        assert proc.stdout.read() == b"got-term\n"
    finally:
        proc.kill()
        proc.wait()


def test_run_pid_1_is_the_command(rt: RT, make_bundle: Any) -> None:
    res = rt.run(make_bundle(["sh", "-c", "echo $$; cat /proc/1/cmdline | tr '\\0' ' '"]))
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == ["1", "sh -c echo $$; cat /proc/1/cmdline | tr '\\0' ' ' "]


def test_run_stdio_passes_through(rt: RT, make_bundle: Any) -> None:
    res = rt("run", "--bundle", str(make_bundle(["sh", "-c", "read x; echo out:$x; echo err:$x >&2"])),
             new_id(), input="hello\n", check=False)
    assert res.returncode == 0
    assert res.stdout == "out:hello\n"
    assert res.stderr == "err:hello\n"


def test_run_detach_and_pid_file(rt: RT, make_bundle: Any, cid: str, tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    start = time.monotonic()
    rt("run", "-d", "--pid-file", str(pid_file), "--bundle", str(make_bundle(SLEEP)), cid)
    assert time.monotonic() - start < 10
    state = rt.state(cid)
    assert state["status"] == "running"
    assert int(pid_file.read_text()) == state["pid"]
    assert Path(f"/proc/{state['pid']}/cmdline").read_bytes() == b"sleep\x001000\x00"
    rt("delete", "--force", cid)
    assert rt.status(cid) == "gone"


def test_run_keep_leaves_a_stopped_container(rt: RT, make_bundle: Any, cid: str) -> None:
    res = rt.run(make_bundle(["true"]), "--keep", cid=cid)
    assert res.returncode == 0, res.stderr
    state = rt.state(cid)
    assert state["status"] == "stopped"
    rt("delete", cid)
    assert rt.status(cid) == "gone"


def test_run_without_keep_deletes(rt: RT, make_bundle: Any, cid: str) -> None:
    assert rt.run(make_bundle(["true"]), cid=cid).returncode == 0
    assert rt.status(cid) == "gone"
    assert not (rt.root / cid).exists()


# --- create / start / state / kill / delete --------------------------------------------------------


def _annotated(spec: dict[str, Any]) -> None:
    spec["annotations"] = {"org.example.key": "value"}


def test_create_start_state_kill_delete(rt: RT, make_bundle: Any, cid: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    bundle = make_bundle(["sh", "-c", "echo started; exec sleep 1000"], edit=_annotated)
    rt("create", "--bundle", str(bundle), cid, stdout=out)
    state = rt.state(cid)
    assert state["status"] == "created"
    assert state["id"] == cid
    assert state["bundle"] == str(bundle)
    assert state["annotations"] == {"org.example.key": "value"}
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$", state["created"]), state["created"]
    pid = state["pid"]
    assert pid > 0 and Path(f"/proc/{pid}").exists()
    time.sleep(0.2)
    assert out.read_text() == "", "the process ran before start"
    # The state survives the runtime process exiting (every rt call is a fresh process).
    rt("start", cid)
    wait_file(out, contains="started")
    state = rt.state(cid)
    assert state["status"] == "running" and state["pid"] == pid
    cgroups = cgroup_dir(pid, "memory")
    assert cgroups.is_dir()
    res = rt("start", cid, check=False)
    assert res.returncode != 0 and "running" in res.stderr
    rt("kill", cid, "KILL")
    rt.wait_status(cid, "stopped")
    assert rt.state(cid)["pid"] == 0 or not Path(f"/proc/{pid}/cmdline").read_bytes()
    rt("delete", cid)
    assert rt.status(cid) == "gone"
    assert not cgroups.exists()
    assert not (rt.root / cid).exists()


def test_state_creating_during_create_hooks(rt: RT, make_bundle: Any, cid: str, tmp_path: Path) -> None:
    seen = tmp_path / "seen.json"
    cmd = f"{' '.join(rt.argv('state', cid))} > {seen}"

    def hook(spec: dict[str, Any]) -> None:
        spec["hooks"] = {"createRuntime": [{"path": "/bin/sh", "args": ["sh", "-c", cmd]}]}

    rt("create", "--bundle", str(make_bundle(SLEEP, edit=hook)), cid)
    assert json.loads(seen.read_text())["status"] == "creating"
    assert rt.status(cid) == "created"


@pytest.mark.parametrize("sig", ["KILL", "SIGKILL", "9", "SIGTERM", "TERM", "15", ""])
def test_kill_signal_names(rt: RT, make_bundle: Any, cid: str, sig: str) -> None:
    # The init handles TERM (an init ignores signals it has no handler for) and exits.
    script = "trap 'exit 0' TERM; while :; do sleep 0.05; done"
    rt("run", "-d", "--bundle", str(make_bundle(["sh", "-c", script])), cid)
    rt("kill", cid, *([sig] if sig else []))
    rt.wait_status(cid, "stopped")


def test_kill_all(rt: RT, make_bundle: Any, cid: str) -> None:
    rt("run", "-d", "--bundle", str(make_bundle(["sh", "-c", "sleep 1000 & sleep 1000 & wait"])), cid)
    pid = rt.state(cid)["pid"]
    procs = cgroup_dir(pid, "pids") / "cgroup.procs"
    wait_for(lambda: len(procs.read_text().split()) == 3, what="three processes")
    rt("kill", "--all", cid, "KILL")
    rt.wait_status(cid, "stopped")
    wait_for(lambda: procs.read_text().split() == [], what="an empty cgroup")


def test_kill_stopped_container_fails(rt: RT, make_bundle: Any, cid: str) -> None:
    rt.run(make_bundle(["true"]), "--keep", cid=cid)
    res = rt("kill", cid, "KILL", check=False)
    assert res.returncode != 0 and "stopped" in res.stderr


def test_delete_running_needs_force(rt: RT, make_bundle: Any, cid: str) -> None:
    rt("run", "-d", "--bundle", str(make_bundle(["sh", "-c", "sleep 1000 & wait"])), cid)
    pid = rt.state(cid)["pid"]
    cg = cgroup_dir(pid, "pids")
    res = rt("delete", cid, check=False)
    assert res.returncode != 0 and "running" in res.stderr
    assert rt.status(cid) == "running"
    rt("delete", "--force", cid)
    assert rt.status(cid) == "gone"
    assert not Path(f"/proc/{pid}/cmdline").exists() or not Path(f"/proc/{pid}/cmdline").read_bytes()
    assert not cg.exists()


def test_delete_created_container(rt: RT, make_bundle: Any, cid: str) -> None:
    rt("create", "--bundle", str(make_bundle(SLEEP)), cid)
    pid = rt.state(cid)["pid"]
    rt("delete", "--force", cid)
    assert rt.status(cid) == "gone"
    assert not Path(f"/proc/{pid}/cmdline").exists() or not Path(f"/proc/{pid}/cmdline").read_bytes()


def test_delete_force_of_missing_container_succeeds(rt: RT) -> None:
    assert rt("delete", "--force", new_id(), check=False).returncode == 0
    assert rt("delete", new_id(), check=False).returncode != 0


# --- list / ps -------------------------------------------------------------------------------------


def test_list_formats(rt: RT, make_bundle: Any) -> None:
    a, b = new_id("a"), new_id("b")
    bundle = make_bundle(SLEEP)
    rt("create", "--bundle", str(bundle), a)
    rt("run", "-d", "--bundle", str(bundle), b)
    assert sorted(rt("list", "-q").stdout.split()) == sorted([a, b])
    table = rt("list").stdout.splitlines()
    assert table[0].split() == ["ID", "PID", "STATUS", "BUNDLE", "CREATED", "OWNER"]
    rows = {line.split()[0]: line.split() for line in table[1:]}
    assert rows[a][2] == "created" and rows[b][2] == "running"
    assert rows[a][3] == str(bundle)
    listed = {s["id"]: s for s in rt("list", "--format", "json").json()}
    assert listed[a]["status"] == "created" and listed[b]["status"] == "running"
    assert listed[b]["pid"] == rt.state(b)["pid"]
    assert rt("list", "--format=json").json() == rt("list", "-f", "json").json()


def test_list_empty_root(tmp_path: Path) -> None:
    empty = RT(tmp_path / "never-created")
    assert empty("list", "--format", "json").json() in ([], None)
    assert empty("list", "-q").stdout == ""


def test_ps(rt: RT, make_bundle: Any, cid: str) -> None:
    rt("run", "-d", "--bundle", str(make_bundle(["sh", "-c", "sleep 1000 & wait"])), cid)
    pid = rt.state(cid)["pid"]
    pids = wait_for(lambda: (p := rt("ps", "--format", "json", cid).json()) and len(p) == 2 and p,
                    what="two processes")
    assert pid in pids
    table = rt("ps", cid).stdout.splitlines()
    assert "PID" in table[0].split()
    col = table[0].split().index("PID")
    assert sorted(int(line.split()[col]) for line in table[1:]) == sorted(pids)
    assert any("sleep 1000" in line for line in table[1:])
    # Arguments after the id are ps(1)'s own, as with runc.
    custom = rt("ps", cid, "-e", "-o", "pid,args").stdout.splitlines()
    assert custom[0].split() == ["PID", "COMMAND"]
    assert sorted(int(line.split()[0]) for line in custom[1:]) == sorted(pids)


# --- pause / resume / update / events --------------------------------------------------------------


def test_pause_resume(rt: RT, make_bundle: Any, cid: str) -> None:
    rt("run", "-d", "--bundle", str(make_bundle(SLEEP)), cid)
    pid = rt.state(cid)["pid"]
    rt("pause", cid)
    assert rt.state(cid)["status"] == "paused"
    assert (cgroup_dir(pid, "freezer") / "freezer.state").read_text().strip() == "FROZEN"
    assert rt("pause", cid, check=False).returncode != 0
    rt("resume", cid)
    assert rt.state(cid)["status"] == "running"
    assert (cgroup_dir(pid, "freezer") / "freezer.state").read_text().strip() == "THAWED"
    assert rt("resume", cid, check=False).returncode != 0
    # A paused container can be force-deleted.
    rt("pause", cid)
    rt("delete", "--force", cid)
    assert rt.status(cid) == "gone"


def test_update_flags(rt: RT, make_bundle: Any, cid: str) -> None:
    rt("run", "-d", "--bundle", str(make_bundle(SLEEP)), cid)
    pid = rt.state(cid)["pid"]
    rt("update", "--memory", "64M", "--pids-limit", "42", "--cpu-quota", "50000", "--cpu-period", "100000",
       "--cpu-share", "512", cid)
    assert (cgroup_dir(pid, "memory") / "memory.limit_in_bytes").read_text().strip() == str(64 << 20)
    assert (cgroup_dir(pid, "pids") / "pids.max").read_text().strip() == "42"
    assert (cgroup_dir(pid, "cpu") / "cpu.cfs_quota_us").read_text().strip() == "50000"
    assert (cgroup_dir(pid, "cpu") / "cpu.cfs_period_us").read_text().strip() == "100000"
    assert (cgroup_dir(pid, "cpu") / "cpu.shares").read_text().strip() == "512"


def test_update_resources_file(rt: RT, make_bundle: Any, cid: str, tmp_path: Path) -> None:
    rt("run", "-d", "--bundle", str(make_bundle(SLEEP)), cid)
    pid = rt.state(cid)["pid"]
    res = write_json(tmp_path / "r.json", {"memory": {"limit": 100 << 20}, "pids": {"limit": 77},
                                           "cpu": {"quota": 30000, "period": 100000}})
    rt("update", "--resources", str(res), cid)
    assert (cgroup_dir(pid, "memory") / "memory.limit_in_bytes").read_text().strip() == str(100 << 20)
    assert (cgroup_dir(pid, "pids") / "pids.max").read_text().strip() == "77"
    assert (cgroup_dir(pid, "cpu") / "cpu.cfs_quota_us").read_text().strip() == "30000"
    # From stdin, too (runc's "-r -").
    rt("update", "-r", "-", cid, input=json.dumps({"pids": {"limit": 88}}))
    assert (cgroup_dir(pid, "pids") / "pids.max").read_text().strip() == "88"


def test_update_devices_stays_deny_first(rt: RT, make_bundle: Any, cid: str, tmp_path: Path) -> None:
    """An allow-only device update must not open every device (it applies on top of deny-all)."""
    rt("run", "-d", "--bundle", str(make_bundle(SLEEP)), cid)
    pid = rt.state(cid)["pid"]
    res = write_json(tmp_path / "d.json", {"devices": [{"allow": True, "type": "c", "major": 10, "minor": 200,
                                                        "access": "rwm"}]})
    rt("update", "--resources", str(res), cid)
    rules = (cgroup_dir(pid, "devices") / "devices.list").read_text().splitlines()
    assert "a *:* rwm" not in rules
    assert "c 10:200 rwm" in rules


def test_update_is_seen_inside(rt: RT, make_bundle: Any, cid: str, tmp_path: Path) -> None:
    rt("run", "-d", "--bundle", str(make_bundle(SLEEP)), cid)
    rt("update", "--pids-limit", "33", cid)
    res = rt("exec", cid, "cat", "/sys/fs/cgroup/pids/pids.max", check=False)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "33"


def test_update_stopped_fails(rt: RT, make_bundle: Any, cid: str) -> None:
    rt.run(make_bundle(["true"]), "--keep", cid=cid)
    res = rt("update", "--pids-limit", "10", cid, check=False)
    assert res.returncode != 0 and "stopped" in res.stderr


def test_events_stats(rt: RT, make_bundle: Any, cid: str) -> None:
    rt("run", "-d", "--bundle", str(make_bundle(["sh", "-c", "sleep 1000 & wait"])), cid)
    lines = rt("events", "--stats", cid).stdout.splitlines()
    assert len(lines) == 1
    event = json.loads(lines[0])
    assert event["type"] == "stats" and event["id"] == cid
    data = event["data"]
    assert data["memory"]["usage"]["usage"] > 0
    assert data["pids"]["current"] >= 1
    assert "cpu" in data


def test_events_stream_ends_when_container_goes(rt: RT, make_bundle: Any, cid: str) -> None:
    rt("run", "-d", "--bundle", str(make_bundle(SLEEP)), cid)
    proc = rt.popen("events", "--interval", "100ms", cid, stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        assert json.loads(proc.stdout.readline())["type"] == "stats"
        rt("delete", "--force", cid)
        assert proc.wait(timeout=10) == 0
    finally:
        proc.kill()
        proc.wait()


# --- spec / features / version / global flags -------------------------------------------------------


def _bundle_from_spec_command(rt: RT, tmp_path: Path, busybox_rootfs: Path, *flags: str) -> Path:
    bundle = tmp_path / "specbundle"
    bundle.mkdir()
    rt("spec", "--bundle", str(bundle), *flags)
    (bundle / "rootfs").symlink_to(busybox_rootfs)
    return bundle


def test_spec_runs(rt: RT, tmp_path: Path, busybox_rootfs: Path) -> None:
    bundle = _bundle_from_spec_command(rt, tmp_path, busybox_rootfs)
    spec = json.loads((bundle / "config.json").read_text())
    assert spec["process"]["terminal"] is True and spec["root"]["path"] == "rootfs"
    # Like `runc spec`: refuses to overwrite.
    assert rt("spec", "--bundle", str(bundle), check=False).returncode != 0
    spec["process"]["terminal"] = False
    spec["process"]["args"] = ["sh", "-c", "hostname; id -u"]
    write_json(bundle / "config.json", spec)
    res = rt.run(bundle)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["berth", "0"]


def test_spec_in_cwd(rt: RT, tmp_path: Path) -> None:
    rt("spec", cwd=tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["ociVersion"]


def test_spec_rootless_runs(rt: RT, tmp_path: Path, busybox_rootfs: Path) -> None:
    bundle = _bundle_from_spec_command(rt, tmp_path, busybox_rootfs, "--rootless")
    spec = json.loads((bundle / "config.json").read_text())
    assert any(n["type"] == "user" for n in spec["linux"]["namespaces"])
    spec["process"]["terminal"] = False
    spec["process"]["args"] = ["sh", "-c", "cat /proc/self/uid_map; id -u"]
    write_json(bundle / "config.json", spec)
    res = rt.run(bundle)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["0", str(os.getuid()), "1", "0"]


def test_features(rt: RT) -> None:
    feats = rt("features").json()
    assert feats["ociVersionMin"] == "1.0.0"
    assert feats["ociVersionMax"].startswith("1.")
    assert set(feats["hooks"]) == {"prestart", "createRuntime", "createContainer", "startContainer",
                                   "poststart", "poststop"}
    linux = feats["linux"]
    assert set(linux["namespaces"]) >= {"pid", "network", "mount", "ipc", "uts", "user", "cgroup"}
    assert "CAP_SYS_ADMIN" in linux["capabilities"]
    assert {"bind", "rbind", "ro", "rprivate", "tmpcopyup"} <= set(feats["mountOptions"])
    assert linux["cgroup"]["v1"] is True and linux["cgroup"]["v2"] is True
    assert linux["seccomp"]["enabled"] is True
    assert "SCMP_ACT_ERRNO" in linux["seccomp"]["actions"]


def test_version(rt: RT) -> None:
    for flag in ("--version", "-v"):
        res = rt(flag)
        assert "berth-runtime version" in res.stdout
        assert re.search(r"spec: 1\.\d+\.\d+", res.stdout)


def test_global_flags_engines_pass(rt: RT, make_bundle: Any, tmp_path: Path) -> None:
    log = tmp_path / "log.json"
    flags = ("--systemd-cgroup", "--log", str(log), "--log-format", "json", "--debug")
    res = rt("run", "--bundle", str(make_bundle(["echo", "ok"])), new_id(), global_flags=flags)
    assert res.stdout == "ok\n"
    # Errors are logged as JSON lines.
    res = rt("state", new_id(), global_flags=flags, check=False)
    assert res.returncode != 0
    entry = json.loads(log.read_text().splitlines()[-1])
    assert entry["level"] == "error" and "does not exist" in entry["msg"]


def test_systemd_cgroups_path(rt: RT, make_bundle: Any, cid: str) -> None:
    def edit(spec: dict[str, Any]) -> None:
        spec["linux"]["cgroupsPath"] = f"system.slice:berthtest:{cid}"

    rt("run", "-d", "--bundle", str(make_bundle(SLEEP, edit=edit)), cid, global_flags=("--systemd-cgroup",))
    pid = rt.state(cid)["pid"]
    cg = cgroup_dir(pid, "pids")
    assert str(cg).endswith(f"/system.slice/berthtest-{cid}.scope")
    rt("delete", "--force", cid)
    assert not cg.exists()


def test_unknown_flags_and_commands_are_clear_errors(rt: RT) -> None:
    for argv in (("--no-such-flag", "list"), ("frobnicate",), ("list", "--bogus")):
        res = rt(*argv, check=False)
        assert res.returncode != 0
        assert "Traceback" not in res.stderr
        assert len(res.stderr.strip().splitlines()) == 1, res.stderr


def test_help(rt: RT) -> None:
    res = rt("--help")
    assert "create" in res.stdout and "features" in res.stdout


def test_state_of_missing_container(rt: RT) -> None:
    res = rt("state", new_id(), check=False)
    assert res.returncode != 0 and "does not exist" in res.stderr


def test_umoci_bundle_runs(rt: RT, umoci_bundle: Path, tmp_path: Path) -> None:
    spec = json.loads((umoci_bundle / "config.json").read_text())
    bundle = tmp_path / "umoci"
    bundle.mkdir()
    spec["root"]["path"] = str(umoci_bundle / spec["root"]["path"])
    spec["process"]["args"] = ["echo", "hello from umoci"]
    spec["process"]["terminal"] = False
    write_json(bundle / "config.json", spec)
    res = rt.run(bundle)
    assert res.returncode == 0, res.stderr
    assert res.stdout == "hello from umoci\n"


def test_no_pivot(rt: RT, make_bundle: Any) -> None:
    res = rt.run(make_bundle(["sh", "-c", "ls /; echo done"]), "--no-pivot")
    assert res.returncode == 0, res.stderr
    assert "bin" in res.stdout.split() and res.stdout.endswith("done\n")


def test_preserve_fds(rt: RT, make_bundle: Any, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.write_text("passed-fd\n")
    argv = rt.argv("run", "--preserve-fds", "1", "--bundle", str(make_bundle(["sh", "-c", "cat <&3"])), new_id())
    # The shell opens fd 3 for the runtime, as systemd's socket activation would hand it over.
    res = subprocess.run(["sh", "-c", 'exec 3<"$0"; exec "$@"', str(data), *argv], capture_output=True,
                         text=True, timeout=30, stdin=subprocess.DEVNULL, check=False)
    assert res.returncode == 0, res.stderr
    assert res.stdout == "passed-fd\n"


def test_listen_fds(rt: RT, make_bundle: Any, tmp_path: Path) -> None:
    """The CLI contract's LISTEN_FDS: systemd socket activation passes fds 3.. to the container."""
    (tmp_path / "a").write_text("first\n")
    (tmp_path / "b").write_text("second\n")
    (tmp_path / "c").write_text("preserved\n")
    script = 'echo "$LISTEN_FDS $LISTEN_PID"; cat <&3; cat <&4; cat <&5'
    argv = rt.argv("run", "--preserve-fds", "1", "--bundle", str(make_bundle(["sh", "-c", script])), new_id())
    shell = 'exec 3<"$0/a" 4<"$0/b" 5<"$0/c"; export LISTEN_FDS=2 LISTEN_PID=$$; exec "$@"'
    res = subprocess.run(["sh", "-c", shell, str(tmp_path), *argv], capture_output=True, text=True, timeout=30,
                         stdin=subprocess.DEVNULL, check=False)
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == ["2 1", "first", "second", "preserved"]


def test_listen_fds_for_another_process_are_ignored(rt: RT, make_bundle: Any, tmp_path: Path) -> None:
    (tmp_path / "a").write_text("first\n")
    argv = rt.argv("run", "--bundle", str(make_bundle(["sh", "-c", 'echo "[$LISTEN_FDS]"; cat <&3'])), new_id())
    shell = 'exec 3<"$0/a"; export LISTEN_FDS=1 LISTEN_PID=1; exec "$@"'
    res = subprocess.run(["sh", "-c", shell, str(tmp_path), *argv], capture_output=True, text=True, timeout=30,
                         stdin=subprocess.DEVNULL, check=False)
    assert res.stdout.splitlines() == ["[]"]
    assert res.returncode != 0


# --- edge cases of the lifecycle ---------------------------------------------------------------------


def test_run_missing_command_is_127_and_leaves_nothing(rt: RT, make_bundle: Any, cid: str) -> None:
    res = rt.run(make_bundle(["no-such-command"]), cid=cid)
    assert res.returncode == 127
    assert "no-such-command" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert rt.status(cid) == "gone"
    assert not (rt.root / cid).exists()


def test_create_missing_command_fails_create(rt: RT, make_bundle: Any, cid: str) -> None:
    res = rt("create", "--bundle", str(make_bundle(["/bin/nope"])), cid, check=False)
    assert res.returncode != 0 and "/bin/nope" in res.stderr
    assert rt.status(cid) == "gone"


def test_kill_created_container(rt: RT, make_bundle: Any, cid: str) -> None:
    rt("create", "--bundle", str(make_bundle(SLEEP)), cid)
    rt("kill", cid, "KILL")
    rt.wait_status(cid, "stopped")
    res = rt("start", cid, check=False)
    assert res.returncode != 0 and "stopped" in res.stderr
    rt("delete", cid)
    assert rt.status(cid) == "gone"


def test_run_from_bundle_cwd_and_relative_pid_file(rt: RT, make_bundle: Any, cid: str) -> None:
    bundle = make_bundle(SLEEP)
    rt("create", cid, "--pid-file", "rel.pid", cwd=bundle)
    state = rt.state(cid)
    assert state["bundle"] == str(bundle)
    assert int((bundle / "rel.pid").read_text()) == state["pid"]


def test_detached_container_that_exits(rt: RT, make_bundle: Any, cid: str) -> None:
    rt("run", "-d", "--bundle", str(make_bundle(["true"])), cid)
    rt.wait_status(cid, "stopped")
    state = rt.state(cid)
    assert state["pid"] == 0 or not Path(f"/proc/{state['pid']}").exists()
    assert [s["status"] for s in rt("list", "--format", "json").json()] == ["stopped"]
    assert rt("events", "--stats", cid, check=False).returncode != 0
    assert rt("ps", "--format", "json", cid).json() in ([], None)
    rt("delete", cid)
    assert rt.status(cid) == "gone"


def test_delete_stopped_kills_leftover_processes(rt: RT, make_bundle: Any, cid: str) -> None:
    """Without a pid namespace the init's children outlive it: delete must still clean the cgroup."""
    rt("run", "-d", "--bundle", str(make_bundle(["sh", "-c", "sleep 1000 & exit 0"], edit=_no_pidns)), cid)
    rt.wait_status(cid, "stopped")
    cg = cgroup_path_dir("pids", f"/berth/{cid}")
    leftovers = [int(p) for p in (cg / "cgroup.procs").read_text().split()]
    assert len(leftovers) == 1
    rt("delete", cid)
    assert _dead(leftovers[0])
    assert not cg.exists()


def _dead(pid: int) -> bool:
    """Gone, or a zombie waiting for whoever it was reparented to."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat[stat.rindex(")") + 2] in "ZX"


def test_run_returns_when_init_exits(rt: RT, make_bundle: Any) -> None:
    start = time.monotonic()
    res = rt.run(make_bundle(["sh", "-c", "sleep 100 & echo bg"], edit=_no_pidns))
    assert res.returncode == 0 and res.stdout == "bg\n"
    assert time.monotonic() - start < 20


def test_update_more_flags(rt: RT, make_bundle: Any, cid: str) -> None:
    rt("run", "-d", "--bundle", str(make_bundle(SLEEP)), cid)
    pid = rt.state(cid)["pid"]
    mem = cgroup_dir(pid, "memory")
    rt("update", "--memory", "100m", "--memory-swap", "200m", "--memory-reservation", "50m",
       "--cpuset-cpus", "0", "--blkio-weight", "300", cid)
    assert (mem / "memory.limit_in_bytes").read_text().strip() == str(100 << 20)
    assert (mem / "memory.soft_limit_in_bytes").read_text().strip() == str(50 << 20)
    if (mem / "memory.memsw.limit_in_bytes").exists():
        assert (mem / "memory.memsw.limit_in_bytes").read_text().strip() == str(200 << 20)
    assert (cgroup_dir(pid, "cpuset") / "cpuset.cpus").read_text().strip() == "0"
    # Unlimited again.
    rt("update", "--memory-swap", "-1", "--memory", "-1", "--pids-limit", "-1", cid)
    assert int((mem / "memory.limit_in_bytes").read_text()) > 1 << 40
    assert (cgroup_dir(pid, "pids") / "pids.max").read_text().strip() == "max"
    res = rt("update", "--memory", "lots", cid, check=False)
    assert res.returncode != 0 and "--memory" in res.stderr


def test_update_paused_container(rt: RT, make_bundle: Any, cid: str) -> None:
    rt("run", "-d", "--bundle", str(make_bundle(SLEEP)), cid)
    pid = rt.state(cid)["pid"]
    rt("pause", cid)
    rt("update", "--pids-limit", "9", cid)
    assert (cgroup_dir(pid, "pids") / "pids.max").read_text().strip() == "9"
    assert rt.state(cid)["status"] == "paused"


def test_log_text_format(rt: RT, tmp_path: Path) -> None:
    log = tmp_path / "runtime.log"
    res = rt("state", "missing-one", global_flags=("--log", str(log)), check=False)
    assert res.returncode != 0
    assert "level=error" in log.read_text() and "missing-one" in log.read_text()
