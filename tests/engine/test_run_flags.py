"""Every ``run``/``create`` flag of the engine issue, accepted and taking effect, seen from inside
real containers (a table: flags, a command, what it must print); then the commands around them —
restart, rm -v, system info/prune, version — and Go-template ``--format`` on ps, inspect and images."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from berth.engine.engine import Engine

IMAGE = "localhost/busybox:latest"
pytestmark = [pytest.mark.root, pytest.mark.integration]
CG = "/sys/fs/cgroup"


def _cgroup_v1() -> bool:
    return os.path.isdir(f"{CG}/memory") and not os.path.exists(f"{CG}/cgroup.controllers")


MEMORY = (f"cat {CG}/memory/memory.limit_in_bytes {CG}/memory/memory.memsw.limit_in_bytes" if _cgroup_v1()
          else f"cat {CG}/memory.max {CG}/memory.swap.max")
CPU = (f"cat {CG}/cpu/cpu.cfs_quota_us {CG}/cpu/cpu.shares {CG}/cpuset/cpuset.cpus {CG}/pids/pids.max"
       if _cgroup_v1() else f"cat {CG}/cpu.max {CG}/cpu.weight {CG}/cpuset.cpus {CG}/pids.max")

# (flags, command run with sh -c, expected stdout)
FLAG_TABLE: list[tuple[list[str], str, str]] = [
    (["-e", "A=1", "--env", "B=two words"], 'echo "$A|$B"', "1|two words\n"),
    (["-t"], "tty", "/dev/pts/0\n"),  # text mode reads the terminal's \r\n as \n
    (["-w", "/tmp"], "pwd", "/tmp\n"),
    (["--workdir=/var"], "pwd", "/var\n"),
    (["-u", "1000:2000"], "id -u; id -g", "1000\n2000\n"),
    (["--user", "nobody"], "id -un", "nobody\n"),
    (["-h", "box"], "hostname", "box\n"),
    (["--hostname", "other"], "echo $HOSTNAME", "other\n"),
    (["--tmpfs", "/scratch:size=1m"], "grep -c ' /scratch tmpfs ' /proc/mounts; df -k /scratch | tail -1 | "
     "awk '{print $2}'", "1\n1024\n"),
    (["--mount", "type=tmpfs,target=/t2"], "grep -c ' /t2 tmpfs ' /proc/mounts", "1\n"),
    (["--read-only"], "touch /x 2>/dev/null || echo read-only", "read-only\n"),
    (["--read-only", "--tmpfs", "/w"], "touch /w/x && echo writable-tmpfs", "writable-tmpfs\n"),
    (["--memory", "64m", "--memory-swap", "128m"], MEMORY,
     "67108864\n134217728\n" if _cgroup_v1() else "67108864\n67108864\n"),
    (["--cpus", "0.5", "--cpu-shares", "512", "--cpuset-cpus", "0", "--pids-limit", "33"], CPU,
     "50000\n512\n0\n33\n" if _cgroup_v1() else "50000 100000\n20\n0\n33\n"),
    (["--ulimit", "nofile=1024:2048", "--ulimit", "nproc=50"], "ulimit -n; ulimit -Hn; ulimit -u", "1024\n2048\n50\n"),
    (["--cap-add", "NET_ADMIN"], "ip addr add 10.9.9.9/32 dev lo && echo net-admin", "net-admin\n"),
    ([], "ip addr add 10.9.9.9/32 dev lo 2>/dev/null || echo no-net-admin", "no-net-admin\n"),
    (["--cap-drop", "CHOWN"], "chown 1 /tmp 2>/dev/null || echo no-chown", "no-chown\n"),
    (["--cap-drop", "ALL"], "grep CapEff /proc/self/status | awk '{print $2}'", "0000000000000000\n"),
    (["--privileged"], "grep Seccomp: /proc/self/status | awk '{print $2}'; ip addr add 10.9.9.9/32 dev lo && echo ok",
     "0\nok\n"),
    ([], "grep Seccomp: /proc/self/status | awk '{print $2}'", "2\n"),
    (["--security-opt", "seccomp=unconfined"], "grep Seccomp: /proc/self/status | awk '{print $2}'", "0\n"),
    (["--security-opt", "no-new-privileges"], "grep NoNewPrivs /proc/self/status | awk '{print $2}'", "1\n"),
    (["--init"], "cat /proc/1/cmdline | tr '\\0' ' '; echo; echo $$", "/run/berth-init -- sh -c "),
    (["--device", "/dev/null:/dev/mynull"], "echo x > /dev/mynull && ls /dev/mynull", "/dev/mynull\n"),
    (["--network", "none"], "ls /sys/class/net", "lo\n"),
    (["--network", "host"], "readlink /proc/self/ns/net", os.readlink("/proc/self/ns/net") + "\n"),
    (["--runtime", "runc"], "cat /proc/1/cmdline | tr '\\0' ' '", "sh -c "),
    (["--pull", "never", "--platform", "linux/" + {"x86_64": "amd64", "aarch64": "arm64"}.get(os.uname().machine,
                                                                                            os.uname().machine)],
     "echo pulled-never", "pulled-never\n"),
]


@pytest.mark.parametrize(("flags", "script", "expected"), FLAG_TABLE, ids=[" ".join(f[0]) or f[1][:20]
                                                                             for f in FLAG_TABLE])
def test_run_flag_takes_effect(berth: Any, flags: list[str], script: str, expected: str) -> None:
    if "runc" in flags and shutil.which("runc") is None:
        pytest.skip("runc is not installed")
    r = berth("run", "--rm", *flags, IMAGE, "sh", "-c", script)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(expected) if expected.endswith(" ") else r.stdout == expected, r.stdout


def test_seccomp_profile_file_and_pull_always(berth: Any, tmp_path: Path) -> None:
    profile = tmp_path / "profile.json"
    profile.write_text(json.dumps({"defaultAction": "SCMP_ACT_ALLOW",
                                   "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO"}]}))
    r = berth("run", "--rm", "--security-opt", f"seccomp={profile}", IMAGE, "sh", "-c",
              "mkdir /tmp/x 2>/dev/null || echo denied; touch /tmp/y && echo touched")
    assert r.stdout == "denied\ntouched\n", r.stderr
    # --pull always goes to the registry even for an image held locally (none answers here).
    r = berth("run", "--rm", "--pull", "always", IMAGE, "true")
    assert r.returncode == 125 and "registry" in r.stderr


def test_init_reaps_and_forwards(berth: Any) -> None:
    """With --init the command is PID 1's child, zombies are reaped and the exit status passes through."""
    r = berth("run", "--rm", "--init", IMAGE, "sh", "-c", "echo $$; (sleep 0.1 &); sleep 0.5; "
              "ps -o stat | grep -c Z; exit 6")
    assert (r.returncode, r.stdout) == (6, "2\n0\n")
    r = berth("run", "--rm", "--init", "--pull", "never", IMAGE, "sleep", "30", timeout=20,
              env={"BERTH_INIT": "/nonexistent"})
    assert r.returncode == 125 and "--init" in r.stderr


def test_flags_seen_by_inspect(engine: Engine, berth: Any, tmp_path: Path) -> None:
    env_file = tmp_path / "env"
    env_file.write_text("# comment\nFROM_FILE=yes\n\n")
    host_dir = tmp_path / "bind"
    host_dir.mkdir()
    (host_dir / "f").write_text("on host\n")
    r = berth("run", "-d", "--name", "insp", "-l", "tier=web", "--label", "x=y", "--env-file", str(env_file),
              "--entrypoint", "/bin/sh", "-v", f"{host_dir}:/in:ro", "-v", "namedvol:/named",
              "--mount", f"type=bind,source={host_dir},target=/in2", "--restart", "on-failure:3",
              "--stop-signal", "USR1", "--stop-timeout", "2", "--health-cmd", "true", "--health-interval", "1s",
              "--health-retries", "2", "--health-timeout", "5s", "--health-start-period", "0s",
              "--log-opt", "max-size=1k", "--log-opt", "max-file=2", "--init",
              IMAGE, "-c", "trap 'echo usr1; exit 0' USR1; while :; do echo aaaaaaaaaaaaaaaaaaaaaaaa; sleep 0.01; "
                           "done")
    assert r.returncode == 0, r.stderr
    info = json.loads(berth("inspect", "insp").stdout)[0]
    assert info["Config"]["Labels"] == {"tier": "web", "x": "y"}
    assert "FROM_FILE=yes" in info["Config"]["Env"]
    assert info["Path"] == "/bin/sh" and info["Config"]["Entrypoint"] == "/bin/sh"
    assert info["HostConfig"]["RestartPolicy"] == {"Name": "on-failure", "MaximumRetryCount": 3}
    assert info["HostConfig"]["Init"] is True and info["HostConfig"]["LogConfig"]["Config"]["max-size"] == "1k"
    mounts = {m["Destination"]: m["RW"] for m in info["Mounts"]}
    assert (mounts["/in"], mounts["/named"], mounts["/in2"]) == (False, True, True)
    assert engine.exec("insp", ["sh", "-c", "cat /in/f; touch /in/g 2>/dev/null || echo ro"]) == 0
    deadline = time.monotonic() + 10
    while berth("inspect", "-f", "{{.State.Health.Status}}", "insp").stdout.strip() != "healthy":
        assert time.monotonic() < deadline
        time.sleep(0.2)
    time.sleep(1.0)  # enough output to rotate a 1k log with 2 files
    log = Path(info["LogPath"])
    assert log.with_name(log.name + ".1").exists() and not log.with_name(log.name + ".2").exists()
    start = time.monotonic()
    assert berth("stop", "insp").returncode == 0
    assert time.monotonic() - start < 2  # USR1 (--stop-signal) ended it before --stop-timeout
    assert engine.get("insp").exit_code == 0
    assert "usr1\n" in berth("logs", "insp").stdout


def test_bad_flag_values_are_one_line_errors(berth: Any) -> None:
    for flags in (["--memory", "lots"], ["--restart", "always", "--rm"], ["--restart", "sometimes"],
                  ["--pull", "maybe"], ["--device", "/etc/passwd"],
                  ["--device", "/dev/null:rel"], ["--ulimit", "nofile=9:1"], ["--security-opt", "bogus"],
                  ["--runtime", "no-such-runtime"], ["--cpus", "-1"], ["--detach-keys", "alt-x"],
                  ["--cap-add", "NOT_A_CAP"]):
        r = berth("run", "--rm", *flags, IMAGE, "true")
        assert r.returncode == 125 and r.stderr.count("\n") == 1 and r.stderr.startswith("Error: "), (flags, r.stderr)
    assert berth("ps", "-a", "-q").stdout == ""


def test_restart_command(engine: Engine, berth: Any) -> None:
    engine.run(IMAGE, ["sh", "-c", "echo started; sleep 300"], pull="never", name="rs")
    pid = engine.get("rs").pid
    r = berth("restart", "-t", "1", "rs")
    assert (r.returncode, r.stdout) == (0, "rs\n")
    c = engine.get("rs")
    assert c.status == "running" and c.pid != pid
    engine.stop("rs", 1)
    assert berth("restart", "rs").returncode == 0 and engine.get("rs").status == "running"  # stopped: starts
    assert berth("restart", "nosuch").returncode == 1
    assert berth("restart", "-t", "soon", "rs").returncode == 125


def test_rm_v_removes_anonymous_volumes_only(engine: Engine, berth: Any) -> None:
    before = {v.name for v in engine.volumes()}
    engine.volume_create("keepme")
    berth("create", "--name", "vols", "-v", "/anon", "--mount", "type=volume,target=/anon2", "-v", "keepme:/k",
          IMAGE, "true")
    berth("start", "vols")
    names = {v.name for v in engine.volumes()} - before
    assert len(names) == 3 and "keepme" in names
    engine.wait("vols", 10)
    assert berth("rm", "-v", "vols").returncode == 0
    assert {v.name for v in engine.volumes()} - before == {"keepme"}
    # run --rm in the foreground (no -i, -t or -d: berth itself is the container's parent) likewise
    assert berth("run", "--rm", "-v", "/anon", "-v", "keepme:/k", IMAGE, "true").returncode == 0
    assert {v.name for v in engine.volumes()} - before == {"keepme"}
    engine.volume_remove("keepme")


def test_system_info_version_prune(engine: Engine, berth: Any) -> None:
    engine.run(IMAGE, ["sleep", "300"], pull="never", name="alive")
    dead = engine.run(IMAGE, ["true"], pull="never", name="dead")
    engine.wait(dead.id, 10)
    engine.volume_create("unused")
    info = json.loads(berth("system", "info", "--format", "json").stdout)
    for key in ("ID", "Containers", "ContainersRunning", "ContainersStopped", "Images", "Driver", "KernelVersion",
                "OperatingSystem", "OSType", "Architecture", "NCPU", "MemTotal", "DockerRootDir", "Runtimes",
                "DefaultRuntime", "CgroupVersion", "ServerVersion"):
        assert key in info
    assert (info["Containers"], info["ContainersRunning"], info["ContainersStopped"]) == (2, 1, 1)
    assert "berth" in info["Runtimes"] and info["NCPU"] >= 1
    r = berth("info", "--format", "{{.ContainersRunning}} {{.OSType}} {{json .DefaultRuntime}}")
    assert r.stdout == '1 linux "berth"\n'
    assert berth("system", "info").stdout.startswith("Server:\n Containers: 2\n")
    assert berth("system", "info", "--bogus").returncode == 125

    from berth import __version__

    assert berth("version", "--format", "{{.Client.Version}}").stdout == f"{__version__}\n"
    assert json.loads(berth("version", "--format", "json").stdout)["Client"]["Os"] == "linux"
    assert __version__ in berth("version").stdout

    assert berth("system", "prune", input="n\n").stdout.endswith("[y/N] ")
    assert engine.get("dead")
    r = berth("system", "prune", "-f")
    assert r.returncode == 0 and dead.id in r.stdout and "unused" not in r.stdout
    assert [c.name for c in engine.containers()] == ["alive"]
    assert any(v.name == "unused" for v in engine.volumes())
    r = berth("system", "prune", "-f", "--volumes")
    assert "Deleted Volumes:\n" in r.stdout and "\nunused\n" in r.stdout
    assert berth("images", "-q").stdout.strip()  # the image in use stays, even with -a
    r = berth("system", "prune", "-a", "-f")
    assert r.returncode == 0 and berth("images", "-q").stdout.strip()


def test_format_fields_on_ps_inspect_images(engine: Engine, berth: Any) -> None:
    c = engine.run(IMAGE, ["sleep", "300"], pull="never", name="fmt", labels={"k": "v"})
    assert berth("ps", "--format", "{{.ID}}").stdout == c.id[:12] + "\n"
    row = json.loads(berth("ps", "--format", "{{json .}}").stdout)
    assert row["Names"] == "fmt" and row["State"] == "running" and row["Labels"] == {"k": "v"}
    assert json.loads(berth("ps", "--format", "json").stdout)["ID"] == c.id[:12]
    r = berth("ps", "--format", "table {{.Names}}\t{{.Status}}")
    assert r.stdout.splitlines()[0].split() == ["NAMES", "STATUS"] and r.stdout.splitlines()[1].startswith("fmt\tUp")
    assert berth("inspect", "--format", "{{.State.Status}} {{.Id}}", "fmt").stdout == f"running {c.id}\n"
    assert berth("inspect", "-f", "{{json .Config.Labels}}", "fmt").stdout == '{"k": "v"}\n'
    assert json.loads(berth("inspect", "-f", "{{json .}}", "fmt").stdout)["Name"] == "/fmt"
    assert json.loads(berth("inspect", "--format", "json", "fmt").stdout)[0]["Id"] == c.id
    images = berth("images", "--format", "{{.Repository}}:{{.Tag}} {{.ID}}").stdout.split()
    assert images[0] == IMAGE and len(images[1]) == 12
    assert json.loads(berth("images", "--format", "{{json .}}").stdout.splitlines()[0])["Tag"] == "latest"


def test_runsc_runtime(engine: Engine, berth: Any) -> None:
    """gVisor, in Debian as runsc: berth drives it through runc's command line like any runtime."""
    runsc = shutil.which("runsc")
    if runsc is None:
        pytest.skip("runsc (gVisor) is not installed: apt-get install runsc")
    probe = subprocess.run([runsc, "--version"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"runsc does not run here: {probe.stderr.strip()}")
    # gVisor's sandbox network mode refuses berth's bridge namespaces: the sandbox has none here.
    r = berth("run", "--rm", "--runtime", "runsc", "--network", "none", IMAGE, "sh", "-c", "uname -r; echo $$; exit 3")
    if r.returncode == 125:
        pytest.skip(f"gVisor cannot run on this kernel/VM: {r.stderr.strip()}")
    kernel = r.stdout.split()[0]
    assert (r.returncode, r.stdout.split()[1]) == (3, "1")
    assert kernel != os.uname().release  # gVisor's own kernel answered, not the host's
    berth("run", "-d", "--name", "gv", "--runtime", "runsc", "--network", "none", IMAGE, "sh", "-c",
          "echo logged; sleep 300")
    assert berth("exec", "gv", "sh", "-c", "echo in-sandbox").stdout == "in-sandbox\n"
    assert berth("inspect", "-f", "{{.HostConfig.Runtime}}", "gv").stdout == "runsc\n"
    assert berth("stop", "-t", "1", "gv").returncode == 0
    assert berth("logs", "gv").stdout == "logged\n"
    assert engine.get("gv").status == "exited"
