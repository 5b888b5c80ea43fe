"""Bad input to ``berth-runtime``: malformed configs, bad ids, wrong states, bad command lines.

Each case must fail with a non-zero status and one line on stderr naming the problem and the field,
and leave nothing behind: no state directory under --root, no cgroup, no process, no mount on the
host. A container that already exists under the same id stays untouched and running.

A module-wide ``existing`` container (``sleep``) is created once; every case is tried both with a
fresh id and with the existing container's id.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from berth.runtime.spec_template import default_spec

pytestmark = [pytest.mark.root, pytest.mark.integration]

BERTH_RUNTIME = os.path.join(os.path.dirname(os.path.abspath(sys.executable)), "berth-runtime")


def new_id(prefix: str = "bad") -> str:
    return f"{prefix}{uuid.uuid4().hex[:12]}"


@dataclass
class Outcome:
    code: int
    out: str
    err: str

    def line(self) -> str:
        lines = [line for line in self.err.splitlines() if line.strip()]
        assert len(lines) == 1, f"expected exactly one line on stderr, got {self.err!r} (stdout {self.out!r})"
        assert lines[0].startswith("berth-runtime: "), lines[0]
        return lines[0]


@dataclass
class Env:
    base: Path
    root: Path
    rootfs: Path
    existing: str = ""
    existing_pid: int = 0
    existing_state: bytes = b""
    counter: list[int] = field(default_factory=lambda: [0])

    def argv(self, *args: str) -> list[str]:
        return [BERTH_RUNTIME, "--root", str(self.root), *args]

    def __call__(self, *args: str, timeout: float = 30, raw: bool = False) -> Outcome:
        """Run berth-runtime; stdout/stderr go to files, never pipes (a created container keeps them)."""
        argv = list(args) if raw else self.argv(*args)
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            proc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err, timeout=timeout,
                                  check=False)
            out.seek(0)
            err.seek(0)
            return Outcome(proc.returncode, out.read().decode(errors="replace"), err.read().decode(errors="replace"))

    def ok(self, *args: str) -> Outcome:
        res = self(*args)
        assert res.code == 0, f"{args} failed: {res.err}"
        return res

    def spec(self, args: list[str] | None = None) -> dict[str, Any]:
        spec = default_spec()
        spec["process"]["terminal"] = False
        spec["process"]["args"] = args or ["sleep", "60"]
        spec["root"] = {"path": str(self.rootfs), "readonly": True}
        return spec

    def bundle(self, edit: Callable[[dict[str, Any]], None] | None = None, raw: str | None = None,
               args: list[str] | None = None) -> Path:
        self.counter[0] += 1
        bundle = self.base / f"bundle{self.counter[0]}"
        bundle.mkdir()
        if raw is None:
            spec = self.spec(args)
            if edit is not None:
                edit(spec)
            raw = json.dumps(spec)
        (bundle / "config.json").write_text(raw)
        return bundle

    def status(self, cid: str) -> str:
        res = self("state", cid)
        if res.code:
            return "gone"
        status: str = json.loads(res.out)["status"]
        return status

    def wait_status(self, cid: str, want: str, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.status(cid) == want:
                return
            time.sleep(0.02)
        raise AssertionError(f"{cid} is {self.status(cid)}, expected {want}")


def cgroup_dirs(cid: str) -> list[str]:
    return glob.glob(f"/sys/fs/cgroup/*/berth/{cid}") + glob.glob(f"/sys/fs/cgroup/berth/{cid}")


def processes_mentioning(cid: str) -> list[int]:
    """Host processes in the container's cgroup, or with the id on their command line."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cgroup") as f:
                cgroup = f.read()
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().split(b"\0")
        except OSError:
            continue
        if f"/berth/{cid}\n" in cgroup or cid.encode() in cmdline:
            found.append(int(entry))
    return found


def host_mounts(*words: str) -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return sorted(line.split()[4] for line in f if any(w in line for w in words))


def needles(env: Env, cid: str = "") -> list[str]:
    """What a mount left behind by a container of ``cid`` would mention in the host's mountinfo."""
    return [str(env.base), *([cid] if len(cid) >= 8 else [])]


def assert_nothing_left(env: Env, cid: str, mounts_before: list[str]) -> None:
    if cid and "/" not in cid and cid not in (".", ".."):
        assert not os.path.lexists(env.root / cid), f"state directory of {cid} left behind"
        assert cgroup_dirs(cid) == [], f"cgroup of {cid} left behind"
        assert processes_mentioning(cid) == [], f"process of {cid} left behind"
    # Nothing else appeared under the root either (a bad id must not create some other directory).
    assert sorted(os.listdir(env.root)) == sorted([env.existing]), os.listdir(env.root)
    assert host_mounts(*needles(env, cid)) == mounts_before


def assert_existing_untouched(env: Env) -> None:
    state = json.loads(env.ok("state", env.existing).out)
    assert state["status"] == "running"
    assert state["pid"] == env.existing_pid
    assert (env.root / env.existing / "state.json").read_bytes() == env.existing_state
    assert os.path.exists(f"/proc/{env.existing_pid}")
    assert cgroup_dirs(env.existing), "the existing container's cgroup is gone"
    with open(f"/proc/{env.existing_pid}/cgroup") as f:
        assert f"/berth/{env.existing}\n" in f.read(), "the existing container left its cgroup"


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, busybox_rootfs: Path) -> Iterator[Env]:
    if os.geteuid() != 0:
        pytest.skip("needs root: namespaces, mounts and cgroups are real here")
    base = tmp_path_factory.mktemp("badinput")
    e = Env(base=base, root=base / "state", rootfs=busybox_rootfs)
    e.root.mkdir()
    e.existing = new_id("existing")
    e.ok("run", "-d", "--bundle", str(e.bundle()), e.existing)
    e.existing_pid = json.loads(e.ok("state", e.existing).out)["pid"]
    e.existing_state = (e.root / e.existing / "state.json").read_bytes()
    yield e
    for cid in os.listdir(e.root):
        e("delete", "--force", cid)
    shutil.rmtree(e.root, ignore_errors=True)


@pytest.fixture
def fresh(env: Env) -> Iterator[str]:
    """A new id; anything a failing test leaves under it is force-deleted afterwards."""
    cid = new_id()
    yield cid
    if (env.root / cid).exists():
        env("delete", "--force", cid)


# -- malformed or invalid config.json ----------------------------------------------------------------

Edit = Callable[[dict[str, Any]], None]


def _set(path: str, value: Any) -> Edit:
    def edit(spec: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        obj = spec
        for p in parents:
            obj = obj[p]
        obj[last] = value

    return edit


def _drop(path: str) -> Edit:
    def edit(spec: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        obj = spec
        for p in parents:
            obj = obj[p]
        del obj[last]

    return edit


def _append(path: str, value: Any) -> Edit:
    def edit(spec: dict[str, Any]) -> None:
        obj = spec
        for p in path.split("."):
            obj = obj[p]
        obj.append(value)

    return edit


def _host_core_pattern() -> str:
    with open("/proc/sys/kernel/core_pattern") as f:
        return f.read().strip()


# (id, edit or raw JSON text, substrings the error line must contain)
CONFIG_CASES: list[tuple[str, Edit | str, tuple[str, ...]]] = [
    ("bad-json", "{\"ociVersion\": \"1.3.0\",", ("config.json", "invalid JSON")),
    ("empty-file", "", ("config.json", "invalid JSON")),
    ("not-an-object", "[1, 2]", ("config.json", "expected an object")),
    ("not-utf8", "placeholder", ("config.json", "invalid JSON")),
    ("missing-ociVersion", _drop("ociVersion"), ("berth-runtime: ociVersion", "missing")),
    ("missing-root", _drop("root"), ("berth-runtime: root", "missing")),
    ("missing-root.path", _drop("root.path"), ("root.path", "missing")),
    ("missing-process.cwd", _drop("process.cwd"), ("process.cwd", "missing")),
    ("missing-process.user", _drop("process.user"), ("process.user", "missing")),
    ("missing-process", _drop("process"), ("process", "required")),
    ("uid-string", _set("process.user.uid", "0"), ("process.user.uid", "integer", '"0"')),
    ("uid-negative", _set("process.user.uid", -1), ("process.user.uid",)),
    ("uid-huge", _set("process.user.uid", 2**40), ("process.user.uid",)),
    ("gid-bool", _set("process.user.gid", True), ("process.user.gid", "integer")),
    ("args-string", _set("process.args", "sleep 60"), ("process.args", "array")),
    ("args-empty", _set("process.args", []), ("process.args",)),
    ("args-number", _set("process.args", ["sleep", 60]), ("process.args[1]", "string")),
    ("cwd-relative", _set("process.cwd", "tmp"), ("process.cwd", "absolute")),
    ("cwd-nul", _set("process.cwd", "/tm\x00p"), ("process.cwd", "NUL")),
    ("arg-nul", _set("process.args", ["sle\x00ep", "1"]), ("process.args[0]", "NUL")),
    ("env-nul", _set("process.env", ["A=b\x00c"]), ("process.env[0]", "NUL")),
    ("env-no-equals", _set("process.env", ["PATH"]), ("process.env[0]", "KEY=VALUE")),
    ("rlimit-soft-above-hard", _set("process.rlimits", [{"type": "RLIMIT_NOFILE", "soft": 10, "hard": 5}]),
     ("process.rlimits[0]", "soft")),
    ("rlimit-unknown", _set("process.rlimits", [{"type": "RLIMIT_BOGUS", "soft": 1, "hard": 1}]),
     ("process.rlimits[0].type", "RLIMIT_BOGUS")),
    ("oom-score-out-of-range", _set("process.oomScoreAdj", 5000), ("process.oomScoreAdj",)),
    ("unknown-namespace", _append("linux.namespaces", {"type": "bogus"}), ("linux.namespaces[", "bogus")),
    ("namespace-twice", _append("linux.namespaces", {"type": "pid"}), ("linux.namespaces[", "pid", "twice")),
    ("namespace-path-missing", _set("linux.namespaces", [{"type": "mount"}, {"type": "net", "path": "/nonexistent"}]),
     ("linux.namespaces",)),
    ("namespace-path-missing2", _set("linux.namespaces", [{"type": "mount"},
                                                          {"type": "network", "path": "/nonexistent/ns"}]),
     ("linux.namespaces", "/nonexistent/ns")),
    ("namespace-path-not-ns", _set("linux.namespaces", [{"type": "mount"},
                                                        {"type": "network", "path": "/etc/hostname"}]),
     ("linux.namespaces", "network")),
    ("unknown-capability", _append("process.capabilities.bounding", "CAP_BOGUS"),
     ("process.capabilities.bounding", "CAP_BOGUS")),
    ("capability-set-unknown", _set("process.capabilities.sideways", ["CAP_KILL"]),
     ("process.capabilities.sideways",)),
    ("relative-rootfs-missing", _set("root", {"path": "nonexistent-rootfs"}), ("root.path", "nonexistent-rootfs")),
    ("rootfs-is-a-file", _set("root", {"path": "/etc/hostname"}), ("root.path", "/etc/hostname")),
    ("seccomp-bad-action", _set("linux.seccomp", {"defaultAction": "SCMP_ACT_BOGUS"}),
     ("linux.seccomp.defaultAction", "SCMP_ACT_BOGUS")),
    ("seccomp-bad-syscall-action", _set("linux.seccomp", {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
        {"names": ["getpid"], "action": "SCMP_ACT_NOPE"}]}), ("linux.seccomp.syscalls[0].action", "SCMP_ACT_NOPE")),
    ("seccomp-bad-arch", _set("linux.seccomp", {"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_Z80"]}),
     ("linux.seccomp.architectures", "SCMP_ARCH_Z80")),
    ("resources-memory-string", _set("linux.resources.memory", {"limit": "lots"}), ("linux.resources.memory.limit",)),
    ("resources-shares-negative", _set("linux.resources.cpu", {"shares": -5}), ("linux.resources.cpu.shares",)),
    ("resources-pids-string", _set("linux.resources.pids", {"limit": "10"}), ("linux.resources.pids.limit",)),
    ("resources-device-bad-type", _set("linux.resources.devices", [{"allow": True, "type": "x", "access": "r"}]),
     ("linux.resources.devices[0]",)),
    ("mount-relative-destination", _append("mounts", {"destination": "rel", "type": "tmpfs", "source": "tmpfs"}),
     ("berth-runtime: mounts[7].destination", "absolute")),
    ("mount-bad-option", _append("mounts", {"destination": "/tmp/x", "type": "tmpfs", "source": "tmpfs",
                                            "options": ["size=lots"]}), ("mounts[7]", "/tmp/x")),
    ("mount-bind-source-missing", _append("mounts", {"destination": "/mnt", "type": "bind",
                                                     "source": "/nonexistent/src", "options": ["bind"]}),
     ("mounts[7]", "/nonexistent/src")),
    ("mount-unknown-fstype", _append("mounts", {"destination": "/mnt", "type": "bogusfs", "source": "x"}),
     ("mounts[7]", "/mnt")),
    ("mounts-without-mount-namespace", _set("linux.namespaces", [{"type": "pid"}]), ("mount namespace",)),
    ("uid-mappings-without-userns", _set("linux.uidMappings", [{"containerID": 0, "hostID": 1000, "size": 1}]),
     ("linux.uidMappings", "user namespace")),
    ("device-bad-type", _set("linux.devices", [{"path": "/dev/x", "type": "q", "major": 1, "minor": 3}]),
     ("linux.devices[0].type",)),
    ("device-major-string", _set("linux.devices", [{"path": "/dev/x", "type": "c", "major": "1", "minor": 3}]),
     ("linux.devices[0].major",)),
    ("sysctl-not-namespaced", lambda s: s["linux"].__setitem__("sysctl", {"kernel.core_pattern": _host_core_pattern()}),
     ("linux.sysctl.kernel.core_pattern",)),
    ("propagation-unknown", _set("linux.rootfsPropagation", "sideways"), ("linux.rootfsPropagation", "sideways")),
    ("hook-kind-unknown", _set("hooks", {"preboot": [{"path": "/bin/true"}]}), ("hooks.preboot",)),
    ("hook-relative-path", _set("hooks", {"prestart": [{"path": "true"}]}), ("hooks.prestart[0].path",)),
    ("prestart-hook-fails", _set("hooks", {"prestart": [{"path": "/bin/false"}]}), ("prestart",)),
    ("create-runtime-hook-fails", _set("hooks", {"createRuntime": [{"path": "/bin/false"}]}), ("createRuntime",)),
    ("create-container-hook-fails", _set("hooks", {"createContainer": [{"path": "/bin/false"}]}),
     ("createContainer",)),
    ("terminal-without-console-socket", _set("process.terminal", True), ("console-socket",)),
    ("hostname-number", _set("hostname", 7), ("berth-runtime: hostname", "string")),
    ("missing-command", _set("process.args", ["no-such-command"]), ("executable file not found", "no-such-command")),
    ("missing-command-path", _set("process.args", ["/no/such/command"]), ("/no/such/command",)),
    ("command-not-executable", _set("process.args", ["/etc/passwd"]), ("/etc/passwd", "permission denied")),
    ("cwd-not-a-directory", _set("process.cwd", "/etc/passwd"), ("process.cwd",)),
]


@pytest.mark.parametrize("case,bad,expect", CONFIG_CASES, ids=[c[0] for c in CONFIG_CASES])
def test_bad_config(env: Env, fresh: str, case: str, bad: Edit | str, expect: tuple[str, ...]) -> None:
    bundle = env.bundle(raw=bad) if isinstance(bad, str) else env.bundle(edit=bad)
    if case == "not-utf8":
        (bundle / "config.json").write_bytes(b"{\"ociVersion\": \"\xff\"}")
    mounts_before = host_mounts(*needles(env, fresh))

    res = env("create", "--bundle", str(bundle), fresh)

    assert res.code != 0, f"create with {case} succeeded"
    line = res.line()
    for needle in expect:
        assert needle in line, f"{needle!r} not in {line!r}"
    assert "Traceback" not in res.err and "Error:" not in line.split(": ", 1)[1][:20], line
    assert_nothing_left(env, fresh, mounts_before)
    if case.startswith("missing-command"):
        assert res.code in (126, 127), res.code

    # The same config under the id of an existing container: refused, the container untouched.
    res = env("create", "--bundle", str(bundle), env.existing)
    assert res.code != 0
    res.line()
    assert_existing_untouched(env)


def test_edge_values_are_accepted(env: Env, fresh: str) -> None:
    """The limits of each checked range are valid: RLIM_INFINITY as the spec's uint64 2^64-1 (what
    engines send for "unlimited"), oomScoreAdj at its bounds, the largest uid."""

    def edit(spec: dict[str, Any]) -> None:
        spec["process"]["rlimits"] = [{"type": "RLIMIT_CORE", "soft": 2**64 - 1, "hard": 2**64 - 1},
                                      {"type": "RLIMIT_NOFILE", "soft": 512, "hard": 1024}]
        spec["process"]["oomScoreAdj"] = 1000
        spec["process"]["user"] = {"uid": 2**32 - 2, "gid": 2**32 - 2, "umask": 0o7777}

    bundle = env.bundle(edit=edit, args=["sh", "-c", "ulimit -c; ulimit -n; cat /proc/self/oom_score_adj; id -u"])
    res = env("run", "--bundle", str(bundle), fresh)
    assert res.code == 0, res.err
    assert res.out.split() == ["unlimited", "512", "1000", str(2**32 - 2)]
    assert_nothing_left(env, fresh, host_mounts(*needles(env, fresh)))


def test_relative_bundle_and_rootfs_resolve_against_the_bundle(env: Env, fresh: str, tmp_path: Path) -> None:
    """A relative root.path is the bundle's; run from elsewhere, a missing one names that path."""
    bundle = env.bundle(edit=_set("root", {"path": "rootfs"}))
    mounts_before = host_mounts(*needles(env, fresh))
    res = env("create", "--bundle", str(bundle), fresh)
    assert res.code != 0
    line = res.line()
    assert "root.path" in line and str(bundle / "rootfs") in line
    assert_nothing_left(env, fresh, mounts_before)


def test_missing_bundle(env: Env, fresh: str) -> None:
    mounts_before = host_mounts(*needles(env, fresh))
    res = env("create", "--bundle", str(env.base / "no-such-bundle"), fresh)
    assert res.code != 0
    assert "no-such-bundle" in res.line()
    assert_nothing_left(env, fresh, mounts_before)


# -- ids ---------------------------------------------------------------------------------------------

BAD_IDS = ["a/b", "..", "../escape", ".", "", "x/../y", "/abs", "a\nb", "with space", "-", "\u00e9t\u00e9", "x" * 256]


@pytest.mark.parametrize("cid", BAD_IDS, ids=[repr(c)[:20] for c in BAD_IDS])
@pytest.mark.parametrize("command", ["create", "run"])
def test_bad_id(env: Env, cid: str, command: str) -> None:
    bundle = env.bundle()
    mounts_before = host_mounts(*needles(env))
    res = env(command, "--bundle", str(bundle), "--", cid)
    assert res.code != 0
    line = res.line()
    assert "id" in line, line
    assert_nothing_left(env, cid, mounts_before)
    assert not (env.root.parent / "escape").exists()
    assert glob.glob("/sys/fs/cgroup/*/escape") == []
    for other in ("state", "start", "kill", "delete", "pause"):
        res = env(other, "--", cid)
        assert res.code != 0
        res.line()
    assert_nothing_left(env, cid, mounts_before)
    assert_existing_untouched(env)


def test_create_of_an_existing_id(env: Env) -> None:
    mounts_before = host_mounts(*needles(env))
    for command in ("create", "run"):
        res = env(command, "--bundle", str(env.bundle()), env.existing)
        assert res.code != 0
        line = res.line()
        assert "already exists" in line and env.existing in line
    assert host_mounts(*needles(env)) == mounts_before
    assert_existing_untouched(env)


@pytest.mark.parametrize("args", [["no-such-command"], ["sleep", "60"]])
def test_create_in_the_cgroup_of_an_existing_container(env: Env, fresh: str, args: list[str]) -> None:
    """A cgroupsPath naming another container's (non-empty) cgroup is refused, and the failure's
    clean-up must not kill or remove what was already there."""
    bundle = env.bundle(edit=_set("linux.cgroupsPath", f"/berth/{env.existing}"), args=args)
    mounts_before = host_mounts(*needles(env, fresh))
    res = env("create", "--bundle", str(bundle), fresh)
    assert res.code != 0
    line = res.line()
    assert "cgroup" in line, line
    assert_nothing_left(env, fresh, mounts_before)
    assert_existing_untouched(env)


def test_parallel_creates_of_one_id(env: Env, fresh: str, tmp_path: Path) -> None:
    bundle = env.bundle()
    procs = []
    for i in range(4):
        with open(tmp_path / f"out{i}", "wb") as out, open(tmp_path / f"err{i}", "wb") as err:
            procs.append(subprocess.Popen(env.argv("create", "--bundle", str(bundle), fresh),
                                          stdin=subprocess.DEVNULL, stdout=out, stderr=err))
    codes = [p.wait(timeout=30) for p in procs]
    texts = [(tmp_path / f"err{i}").read_text() for i in range(4)]
    assert codes.count(0) == 1, (codes, texts)
    for code, text in zip(codes, texts, strict=True):
        if code:
            line = Outcome(code, "", text).line()
            assert fresh in line and ("already exists" in line or "being created" in line), line
    assert env.status(fresh) == "created"
    assert len(cgroup_dirs(fresh)) > 0
    env.ok("start", fresh)
    env.wait_status(fresh, "running")
    env.ok("delete", "--force", fresh)
    mounts_before = host_mounts(*needles(env, fresh))
    assert_nothing_left(env, fresh, mounts_before)


# -- wrong state -------------------------------------------------------------------------------------


def test_start_twice(env: Env, fresh: str) -> None:
    env.ok("create", "--bundle", str(env.bundle()), fresh)
    env.ok("start", fresh)
    pid = json.loads(env.ok("state", fresh).out)["pid"]
    res = env("start", fresh)
    assert res.code != 0
    line = res.line()
    assert fresh in line and "running" in line
    assert env.status(fresh) == "running"
    assert json.loads(env.ok("state", fresh).out)["pid"] == pid
    env.ok("delete", "--force", fresh)


def test_wrong_state_transitions_of_a_created_container(env: Env, fresh: str) -> None:
    env.ok("create", "--bundle", str(env.bundle()), fresh)
    for args, needle in ((("pause", fresh), "created"), (("resume", fresh), "created")):
        res = env(*args)
        assert res.code != 0, args
        assert needle in res.line()
        assert env.status(fresh) == "created"
    # A created container can still be started after all those refusals.
    env.ok("start", fresh)
    env.wait_status(fresh, "running")
    res = env("resume", fresh)
    assert res.code != 0 and "running" in res.line()
    env.ok("delete", "--force", fresh)


def test_wrong_state_transitions_of_a_stopped_container(env: Env, fresh: str) -> None:
    env.ok("create", "--bundle", str(env.bundle(args=["true"])), fresh)
    env.ok("start", fresh)
    env.wait_status(fresh, "stopped")
    for args in (("kill", fresh), ("kill", fresh, "KILL"), ("start", fresh), ("pause", fresh),
                 ("resume", fresh), ("exec", fresh, "true")):
        res = env(*args)
        assert res.code != 0, args
        line = res.line()
        assert "stopped" in line and fresh in line, line
        assert env.status(fresh) == "stopped"
    env.ok("delete", fresh)
    assert_nothing_left(env, fresh, host_mounts(*needles(env, fresh)))


def test_delete_of_a_running_container_needs_force(env: Env) -> None:
    res = env("delete", env.existing)
    assert res.code != 0
    line = res.line()
    assert env.existing in line and "running" in line
    assert_existing_untouched(env)


def test_bad_signal_leaves_the_container_alone(env: Env) -> None:
    for sig in ("SIGBOGUS", "0", "65", "9x", "SIG"):
        res = env("kill", env.existing, sig)
        assert res.code != 0, sig
        assert "signal" in res.line()
    assert_existing_untouched(env)


@pytest.mark.parametrize("command", ["state", "start", "kill", "delete", "pause", "resume", "ps", "exec", "update",
                                     "events"])
def test_commands_on_a_missing_container(env: Env, fresh: str, command: str) -> None:
    extra = {"exec": ["true"], "events": ["--stats"]}.get(command, [])
    args = [command, *extra[1:], fresh, *extra[:1]] if command == "exec" else [command, *extra, fresh]
    res = env(*args)
    assert res.code != 0
    line = res.line()
    assert fresh in line and "does not exist" in line, line
    assert_nothing_left(env, fresh, host_mounts(*needles(env, fresh)))


# -- the command line --------------------------------------------------------------------------------

CLI_CASES: list[tuple[list[str], tuple[str, ...]]] = [
    (["frobnicate"], ("frobnicate",)),
    (["create", "--bogus", "x"], ("--bogus",)),
    (["create", "--bundle"], ("--bundle",)),
    (["create", "-b"], ("-b",)),
    (["--root"], ("--root",)),
    (["--bogus-global", "list"], ("--bogus-global",)),
    (["--log-format", "xml", "list"], ("--log-format", "xml")),
    (["create"], ("create", "id")),
    (["create", "a", "b"], ("create",)),
    (["kill"], ("kill",)),
    (["exec", "--cwd"], ("--cwd",)),
    (["exec", "--user", "root", "EXISTING", "true"], ("--user",)),
    (["exec", "EXISTING"], ("command",)),
    (["exec", "--process", "/nonexistent.json", "EXISTING"], ("--process", "/nonexistent.json")),
    (["create", "--preserve-fds", "many", "x"], ("--preserve-fds",)),
    (["update", "--memory", "lots", "EXISTING"], ("--memory",)),
    (["update", "--pids-limit", "x", "EXISTING"], ("--pids-limit",)),
    (["update", "--resources", "/nonexistent.json", "EXISTING"], ("--resources",)),
    (["list", "--format", "yaml"], ("--format", "yaml")),
    (["events", "--interval", "soon", "EXISTING"], ("--interval",)),
]


@pytest.mark.parametrize("argv,expect", CLI_CASES, ids=[" ".join(c[0]) for c in CLI_CASES])
def test_bad_command_line(env: Env, argv: list[str], expect: tuple[str, ...]) -> None:
    argv = [env.existing if a == "EXISTING" else a for a in argv]
    mounts_before = host_mounts(*needles(env))
    res = env(*argv)
    assert res.code != 0
    line = res.line()
    for needle in expect:
        assert needle in line, f"{needle!r} not in {line!r}"
    assert_nothing_left(env, "", mounts_before)
    assert_existing_untouched(env)


def test_exec_process_file_with_bad_json(env: Env) -> None:
    bad = env.base / "process.json"
    for text, needle in (("{", "invalid JSON"), (json.dumps({"args": ["true"], "cwd": "/"}), "process.user"),
                         (json.dumps({"args": "true", "cwd": "/", "user": {"uid": 0, "gid": 0}}), "process.args")):
        bad.write_text(text)
        res = env("exec", "--process", str(bad), env.existing)
        assert res.code != 0
        assert needle in res.line()
    assert_existing_untouched(env)


def test_update_with_bad_resources(env: Env) -> None:
    bad = env.base / "resources.json"
    bad.write_text(json.dumps({"memory": {"limit": "lots"}}))
    res = env("update", "--resources", str(bad), env.existing)
    assert res.code != 0
    assert "memory.limit" in res.line()
    assert_existing_untouched(env)
