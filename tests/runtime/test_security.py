"""One test per class of past container-runtime escape, each against a real container.

* mount destinations that are symlinks out of the rootfs (runc CVE-2021-30465 and kin): every
  target resolves inside the root, as openat2(RESOLVE_IN_ROOT) does;
* overwriting the runtime's executable through /proc/PID/exe (CVE-2019-5736): the container only
  ever reaches a sealed in-memory trampoline, and the waiting init is not dumpable;
* file descriptors of the runtime leaking into the container, and a cwd reached through one
  (CVE-2024-21626);
* masked and read-only paths that could be bypassed (symlinks in the image, unmounting, remounting);
* device nodes of the host made with mknod (the device cgroup denies them whatever the config says).

The ``rt`` and ``cid`` fixtures come from tests/runtime/conftest.py.
"""

from __future__ import annotations

import glob
import hashlib
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.root, pytest.mark.integration]


# -- helpers ----------------------------------------------------------------------------------------


def host_mountpoints() -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return [line.split()[4] for line in f]


def mounts_under(prefix: Path) -> list[str]:
    return [m for m in host_mountpoints() if m == str(prefix) or m.startswith(str(prefix) + "/")]


def sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def cgroup_dirs(cid: str) -> list[str]:
    return glob.glob(f"/sys/fs/cgroup/*/berth/{cid}")


def processes_of(cid: str) -> list[int]:
    """Host pids in the container's default cgroup (``/berth/<id>`` in any hierarchy)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cgroup") as f:
                text = f.read()
        except OSError:
            continue
        if f"/berth/{cid}\n" in text:
            found.append(int(entry))
    return found


def assert_nothing_left(runtime_root: Path, cid: str) -> None:
    assert not (runtime_root / cid).exists(), f"state dir of {cid} left behind"
    assert cgroup_dirs(cid) == [], f"cgroups of {cid} left behind"
    assert processes_of(cid) == [], f"processes of {cid} left behind"


def one_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got: {stderr!r}"
    return lines[0]


def add_caps(spec: dict[str, Any], *names: str) -> None:
    for key in ("bounding", "effective", "permitted"):
        spec["process"]["capabilities"][key] += list(names)


def run_with_redirections(rt: Any, redirections: str, *args: str, timeout: float = 30) -> tuple[int, str, str]:
    """Run ``berth-runtime args`` from a shell that opens extra descriptors (``3<file 9<dir``) first,
    as a caller with inheritable descriptors would; stdout and stderr go to files, never pipes."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.run(["/bin/sh", "-c", f'exec "$@" {redirections}', "sh", *rt.argv(*args)],
                              stdin=subprocess.DEVNULL, stdout=out, stderr=err, timeout=timeout, check=False)
        out.seek(0)
        err.seek(0)
        return proc.returncode, out.read().decode(errors="replace"), err.read().decode(errors="replace")


def sleeper(make_bundle: Any, writable: bool = False, edit: Any = None) -> Path:
    bundle: Path = make_bundle(["sleep", "60"], writable=writable, edit=edit)
    return bundle


# -- 1. mount destinations that are symlinks out of the rootfs ----------------------------------------


def test_symlinked_mount_destinations_land_inside_the_rootfs(rt: Any, make_bundle: Any, tmp_path: Path) -> None:
    host = tmp_path / "hostdir"
    host.mkdir()
    (host / "keep").write_text("host")
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("host-file")
    src = tmp_path / "src"
    src.mkdir()
    (src / "planted").write_text("from-bind")

    def edit(spec: dict[str, Any]) -> None:
        spec["mounts"] += [
            # absolute symlink to a host-looking path
            {"destination": "/evil/x", "type": "tmpfs", "source": "tmpfs"},
            # relative symlink climbing far above the root
            {"destination": "/up/y", "type": "bind", "source": str(src), "options": ["bind"]},
            # a file bind whose destination is a symlink to a host file
            {"destination": "/evilfile", "type": "bind", "source": str(src / "planted"), "options": ["bind"]},
            # a symlinked *parent* of a destination that already exists in the image
            {"destination": "/dirlink/z", "type": "tmpfs", "source": "tmpfs"},
        ]

    script = f"cut -d' ' -f5 /proc/self/mountinfo; echo FILE=$(cat {hostfile})"
    bundle = make_bundle(["sh", "-c", script], writable=True, edit=edit)
    rootfs = bundle / "rootfs"
    (rootfs / "evil").symlink_to(str(host))
    (rootfs / "up").symlink_to("../../../../../../../../.." + str(host))
    (rootfs / "evilfile").symlink_to(str(hostfile))
    (rootfs / "dirlink").symlink_to("/" + str(host).lstrip("/"))
    mounts_before = mounts_under(tmp_path)

    res = rt.run(bundle)

    assert res.returncode == 0, res.stderr
    # Nothing reached the host: no new entry in the host directory, the file intact, no mount.
    assert sorted(p.name for p in host.iterdir()) == ["keep"]
    assert hostfile.read_text() == "host-file"
    assert mounts_under(tmp_path) == mounts_before
    # Everything landed inside the rootfs, at the symlinks' targets resolved within it.
    inside = rootfs / str(host).lstrip("/")
    assert (inside / "x").is_dir() and (inside / "y").is_dir() and (inside / "z").is_dir()
    assert (rootfs / str(hostfile).lstrip("/")).is_file()
    container_mounts = res.stdout.split()
    for name in ("x", "y", "z"):
        assert f"{host}/{name}" in container_mounts, res.stdout
    assert str(hostfile) in container_mounts
    assert "FILE=from-bind" in res.stdout


def test_dotdot_in_mount_destination_stays_inside(rt: Any, make_bundle: Any, tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.mkdir()

    def edit(spec: dict[str, Any]) -> None:
        spec["mounts"].append({"destination": "/../../../../../../../" + str(victim).lstrip("/") + "/dd",
                               "type": "tmpfs", "source": "tmpfs"})

    bundle = make_bundle(["true"], writable=True, edit=edit)
    res = rt.run(bundle)
    assert res.returncode == 0, res.stderr
    assert list(victim.iterdir()) == []
    assert (bundle / "rootfs" / str(victim).lstrip("/") / "dd").is_dir()


def test_symlink_loop_destination_is_a_clear_error(rt: Any, make_bundle: Any, cid: str) -> None:
    def edit(spec: dict[str, Any]) -> None:
        spec["mounts"].append({"destination": "/loop1/x", "type": "tmpfs", "source": "tmpfs"})

    bundle = make_bundle(["true"], writable=True, edit=edit)
    rootfs = bundle / "rootfs"
    (rootfs / "loop1").symlink_to("/loop2")
    (rootfs / "loop2").symlink_to("loop1")
    entries = sorted(os.listdir(rootfs))

    res = rt("create", "--bundle", str(bundle), cid, check=False)

    assert res.returncode != 0
    line = one_line(res.stderr)
    assert "/loop1/x" in line and "symbolic links" in line, line
    assert_nothing_left(rt.root, cid)
    assert sorted(os.listdir(rootfs)) == entries


# -- 2. /proc/self/exe must never be the host's interpreter -------------------------------------------

EVIL_SCRIPT = "#!/proc/self/exe\nimport os\nopen('/pwned', 'w').write('host interpreter ran me')\n"


def _plant_evil(rootfs: Path) -> None:
    """Plant ``#!/proc/self/exe`` scripts, and the host interpreter's loader and libraries at their
    host paths: should the kernel ever start the host's Python for them, it would really run."""
    for name in ("evil.sh", "bin/evilsh"):
        (rootfs / name).write_text(EVIL_SCRIPT)
        (rootfs / name).chmod(0o755)
    ldd = subprocess.run(["ldd", os.path.realpath(sys.executable)], capture_output=True, text=True, check=False)
    for line in ldd.stdout.splitlines():
        lib = line.split("=>")[-1].split("(")[0].strip()
        if lib.startswith("/") and os.path.exists(lib):
            dest = rootfs / lib.lstrip("/")
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(os.path.realpath(lib), dest)


def test_proc_self_exe_script_cannot_run_or_touch_the_host_interpreter(
    rt: Any, make_bundle: Any, cid: str
) -> None:
    interpreter = os.path.realpath(sys.executable)
    digest = sha256(interpreter)
    stat_before = os.stat(interpreter)

    bundle = make_bundle(["/evil.sh"], writable=True)
    _plant_evil(bundle / "rootfs")
    res = rt.run(bundle)
    assert res.returncode != 0
    assert "Python" not in res.stderr and "python" not in res.stderr
    assert not (bundle / "rootfs/pwned").exists()

    # The same through exec, racing a container process that tries to open every process's exe for
    # writing and records where any of them points.
    racer = (
        "end=$(( $(date +%s) + 30 )); "
        "while [ $(date +%s) -lt $end ]; do for p in /proc/[0-9]*; do "
        "[ $p = /proc/$$ ] && continue; "
        "l=$(readlink $p/exe 2>/dev/null) && echo \"$l\" >> /tmp/seen; "
        "(: >> $p/exe) 2>/dev/null && echo \"WROTE $p $l\" >> /tmp/wrote; "
        "done; done"
    )
    bundle2 = make_bundle(["sh", "-c", racer], writable=True)
    _plant_evil(bundle2 / "rootfs")
    rt("run", "-d", "--bundle", str(bundle2), cid)
    for _ in range(5):
        res = rt("exec", cid, "/bin/evilsh", check=False)
        assert res.returncode != 0
        assert "python" not in res.stderr.lower()
    rt("kill", cid, "KILL")
    seen = (bundle2 / "rootfs/tmp/seen").read_text() if (bundle2 / "rootfs/tmp/seen").exists() else ""
    assert "python" not in seen.lower(), seen
    assert not (bundle2 / "rootfs/tmp/wrote").exists(), (bundle2 / "rootfs/tmp/wrote").read_text()
    assert not (bundle2 / "rootfs/pwned").exists()

    assert sha256(interpreter) == digest
    stat_after = os.stat(interpreter)
    assert (stat_after.st_size, stat_after.st_mtime_ns) == (stat_before.st_size, stat_before.st_mtime_ns)


@pytest.mark.parametrize("nnp", [True, False])
def test_proc_self_exe_stays_sealed_when_seccomp_denies_execveat(rt: Any, make_bundle: Any, nnp: bool) -> None:
    """A profile that refuses execveat must not make the runtime exec the command itself (then
    /proc/self/exe would be the host's Python while the kernel looks up the script's interpreter)."""
    interpreter = os.path.realpath(sys.executable)
    digest = sha256(interpreter)

    def edit(spec: dict[str, Any]) -> None:
        spec["process"]["noNewPrivileges"] = nnp
        spec["linux"]["seccomp"] = {
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["execveat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}],
        }

    bundle = make_bundle(["/evil.sh"], writable=True, edit=edit)
    _plant_evil(bundle / "rootfs")
    res = rt.run(bundle)
    assert res.returncode != 0
    assert "python" not in res.stderr.lower(), res.stderr
    assert not (bundle / "rootfs/pwned").exists()
    assert sha256(interpreter) == digest
    # Ordinary commands still run under that profile.
    res = rt.run(make_bundle(["sh", "-c", "echo fine"], edit=edit))
    assert res.returncode == 0, res.stderr
    assert res.stdout == "fine\n"


def test_waiting_init_is_not_dumpable(rt: Any, make_bundle: Any, cid: str) -> None:
    """While created, pid 1 is the runtime's (Python) init: no container process may reach its exe,
    fds, memory or root through /proc."""
    rt("create", "--bundle", str(sleeper(make_bundle)), cid)
    probe = ("readlink /proc/1/exe && echo EXE-LINK-OK; cat /proc/1/exe >/dev/null && echo EXE-READ-OK; "
             "(: >> /proc/1/exe) && echo EXE-WRITE-OK; "
             "for f in /proc/1/fd/*; do readlink $f && echo FD-LINK-OK; cat $f >/dev/null && echo FD-OPEN-OK; "
             "ls $f/ && echo FD-DIR-OK; (: >> $f) && echo FD-WRITE-OK; done; "
             "ls /proc/1/root/ && echo ROOT-OK; cat /proc/1/environ && echo ENVIRON-OK; "
             "head -c1 /proc/1/mem && echo MEM-OK; echo done")
    res = rt("exec", cid, "sh", "-c", probe, check=False)
    assert res.returncode == 0, res.stderr
    assert "-OK" not in res.stdout, res.stdout
    assert res.stdout.strip().endswith("done")
    assert rt.status(cid) == "created"
    # The host (root, with CAP_SYS_PTRACE) sees that the waiting init's exe is the runtime's Python,
    # so the probe above guarded something real.
    init = rt.state(cid)["pid"]
    assert "python" in os.path.realpath(f"/proc/{init}/exe")


# -- 3. leaked descriptors ---------------------------------------------------------------------------

# The shell's own open descriptors, tested with a builtin so that listing opens none.
LIST_FDS = "for i in $(seq 0 255); do [ -e /proc/$$/fd/$i ] && printf '%s ' $i; done; echo"


def test_inherited_descriptors_do_not_reach_the_container(rt: Any, make_bundle: Any, tmp_path: Path,
                                                         cid: str) -> None:
    data = tmp_path / "data"
    data.write_text("preserved-data\n")
    bundle = make_bundle(["sh", "-c", LIST_FDS + "; [ -e /proc/$$/fd/3 ] && cat <&3; true"])

    code, out, err = run_with_redirections(rt, f"7<{tmp_path} 8<{data} 9<{tmp_path}", "run", "--bundle",
                                           str(bundle), cid + "a")
    assert code == 0, err
    assert out.splitlines()[0].split() == ["0", "1", "2"]

    # --preserve-fds 1 passes exactly fd 3 (and nothing above it).
    code, out, err = run_with_redirections(rt, f"3<{data} 9<{tmp_path}", "run", "--preserve-fds", "1",
                                           "--bundle", str(bundle), cid + "b")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split() == ["0", "1", "2", "3"]
    assert "preserved-data" in lines[1:]


@pytest.mark.parametrize("fd", range(3, 12))
def test_cwd_through_a_runtime_descriptor_is_refused(rt: Any, make_bundle: Any, fd: int, cid: str) -> None:
    def edit(spec: dict[str, Any]) -> None:
        spec["process"]["cwd"] = f"/proc/self/fd/{fd}"

    bundle = make_bundle(["pwd"], edit=edit)
    res = rt("create", "--bundle", str(bundle), cid, check=False)
    assert res.returncode != 0, f"create with cwd /proc/self/fd/{fd} succeeded"
    assert "process.cwd" in one_line(res.stderr)
    assert_nothing_left(rt.root, cid)


def test_cwd_through_a_preserved_host_directory_is_refused(rt: Any, make_bundle: Any, tmp_path: Path,
                                                           cid: str) -> None:
    def edit(spec: dict[str, Any]) -> None:
        spec["process"]["cwd"] = "/proc/self/fd/3"

    bundle = make_bundle(["pwd"], edit=edit)
    code, out, err = run_with_redirections(rt, f"3<{tmp_path}", "create", "--preserve-fds", "1",
                                           "--bundle", str(bundle), cid)
    assert code != 0, out
    assert "process.cwd" in one_line(err)
    assert_nothing_left(rt.root, cid)


def test_exec_cannot_reach_host_through_descriptors(rt: Any, make_bundle: Any, tmp_path: Path, cid: str) -> None:
    rt("run", "-d", "--bundle", str(sleeper(make_bundle)), cid)
    for fd in range(3, 12):
        res = rt("exec", "--cwd", f"/proc/self/fd/{fd}", cid, "pwd", check=False)
        assert res.returncode != 0, f"exec with cwd /proc/self/fd/{fd} ran in {res.stdout!r}"
        assert "process.cwd" in one_line(res.stderr)
    code, out, err = run_with_redirections(rt, f"3<{tmp_path}", "exec", "--preserve-fds", "1", "--cwd",
                                           "/proc/self/fd/3", cid, "pwd")
    assert code != 0, out
    assert "process.cwd" in one_line(err)
    # Without tricks exec sees 0, 1, 2, and the preserved fd 3 only.
    code, out, err = run_with_redirections(rt, f"3<{tmp_path} 9<{tmp_path}", "exec", "--preserve-fds", "1",
                                           cid, "sh", "-c", LIST_FDS)
    assert code == 0, err
    assert out.split() == ["0", "1", "2", "3"]
    code, out, err = run_with_redirections(rt, f"9<{tmp_path}", "exec", cid, "sh", "-c",
                                           LIST_FDS)
    assert code == 0, err
    assert out.split() == ["0", "1", "2"]
    assert rt.status(cid) == "running"


# -- 4. masked and read-only paths ------------------------------------------------------------------


def test_masked_and_readonly_paths_hold(rt: Any, make_bundle: Any) -> None:
    if not os.path.isdir("/sys/firmware") or not os.listdir("/sys/firmware"):
        pytest.skip("this kernel has an empty /sys/firmware: nothing to prove hidden")
    probe = (
        "echo KEYS=$(cat /proc/keys | wc -c); echo TIMER=$(cat /proc/timer_list | wc -c); "
        "echo KCORE=$(cat /proc/kcore 2>/dev/null | wc -c); "
        "echo FIRMWARE=$(ls -A /sys/firmware | wc -l); "
        "umount /proc/keys && echo UMOUNT-OK; umount -l /proc/timer_list && echo UMOUNT-LAZY-OK; "
        "umount /sys/firmware && echo UMOUNT-DIR-OK; "
        "mount -o remount,rw /proc/sys && echo REMOUNT-OK; "
        "mount -o remount,rw,bind /proc/sys && echo REMOUNT-BIND-OK; "
        "mount -t proc proc /tmp && echo NEWPROC-OK; "
        "v=$(cat /proc/sys/kernel/printk_ratelimit); echo $v > /proc/sys/kernel/printk_ratelimit "
        "&& echo SYSCTL-WRITE-OK; "
        "echo KEYS2=$(cat /proc/keys | wc -c); echo done"
    )

    def edit(spec: dict[str, Any]) -> None:
        add_caps(spec, "CAP_DAC_OVERRIDE", "CAP_CHOWN", "CAP_FOWNER", "CAP_SETUID", "CAP_SETGID", "CAP_MKNOD",
                 "CAP_NET_RAW", "CAP_SYS_CHROOT", "CAP_FSETID", "CAP_SETPCAP", "CAP_SETFCAP")
        spec["process"]["noNewPrivileges"] = False

    res = rt.run(make_bundle(["sh", "-c", probe], writable=True, edit=edit))
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert "-OK" not in out, out
    for key in ("KEYS", "TIMER", "KCORE", "FIRMWARE", "KEYS2"):
        assert f"{key}=0\n" in out, out
    assert out.rstrip().endswith("done")


def test_masked_paths_that_are_symlinks_resolve_inside_the_root(rt: Any, make_bundle: Any,
                                                              tmp_path: Path) -> None:
    hostdir = tmp_path / "secretdir"
    hostdir.mkdir()
    (hostdir / "secret").write_text("host secret")
    hostfile = tmp_path / "secretfile"
    hostfile.write_text("host secret file")

    def edit(spec: dict[str, Any]) -> None:
        spec["linux"]["maskedPaths"] += ["/masklink", "/maskfile", "/proc/self/../keys", "/gone/link"]
        spec["linux"]["readonlyPaths"] += ["/rolink"]

    probe = (f"echo DIR=$(ls -A /masklink | wc -l); echo FILE=$(cat /maskfile | wc -c); "
             f"echo TARGET=$(ls -A {hostdir} | wc -l); echo RO=$( (echo x > /rolink/w) 2>/dev/null && echo yes); "
             "echo KEYS=$(cat /proc/keys | wc -c); cut -d' ' -f5 /proc/self/mountinfo")
    bundle = make_bundle(["sh", "-c", probe], writable=True, edit=edit)
    rootfs = bundle / "rootfs"
    inside_dir = rootfs / str(hostdir).lstrip("/")
    inside_dir.mkdir(parents=True)
    (inside_dir / "inside").write_text("container file")
    inside_file = rootfs / str(hostfile).lstrip("/")
    inside_file.write_text("container file")
    (rootfs / "masklink").symlink_to(str(hostdir))
    (rootfs / "maskfile").symlink_to(str(hostfile))
    (rootfs / "rolink").symlink_to("../../../.." + str(hostdir))
    (rootfs / "gone").symlink_to(str(tmp_path / "does-not-exist"))
    before = mounts_under(tmp_path)

    res = rt.run(bundle)

    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert "DIR=0\n" in out and "FILE=0\n" in out and "TARGET=0\n" in out and "KEYS=0\n" in out, out
    assert "RO=\n" in out, out
    mountpoints = out.split()
    assert str(hostdir) in mountpoints and str(hostfile) in mountpoints
    # The host's files are untouched and nothing is mounted on them.
    assert (hostdir / "secret").read_text() == "host secret"
    assert sorted(os.listdir(hostdir)) == ["secret"]
    assert hostfile.read_text() == "host secret file"
    assert mounts_under(tmp_path) == before
    assert not (tmp_path / "does-not-exist").exists()


# -- 5. devices --------------------------------------------------------------------------------------


def _readable_on_host(tmp_path: Path, kind: str, major: int, minor: int) -> bool:
    """Whether the host itself can read the device (a sandbox may deny some): only then does a
    denial inside the container prove the device cgroup works."""
    node = tmp_path / f"probe-{kind}-{major}-{minor}"
    os.mknod(node, 0o600 | (stat.S_IFBLK if kind == "b" else stat.S_IFCHR), os.makedev(major, minor))
    try:
        fd = os.open(node, os.O_RDONLY | os.O_NONBLOCK)
        try:
            return len(os.read(fd, 8192)) > 0  # kmsg refuses buffers shorter than a record
        finally:
            os.close(fd)
    except OSError:
        return False
    finally:
        node.unlink()


def _host_devices(tmp_path: Path) -> list[tuple[str, int, int]]:
    """Devices a container must not reach unless its config allows them: the host's disks, and a
    character device that is harmless to read and needs no capability (cpu_dma_latency)."""
    found = []
    for entry in sorted(os.listdir("/sys/dev/block")):
        major, minor = (int(x) for x in entry.split(":"))
        if _readable_on_host(tmp_path, "b", major, minor):
            found.append(("b", major, minor))
    for major, minor in ((10, 259),):
        if _readable_on_host(tmp_path, "c", major, minor):
            found.append(("c", major, minor))
    if not found:
        pytest.skip("the host itself can read none of its disks nor /dev/cpu_dma_latency")
    return found


@pytest.mark.parametrize("rules", ["deny-all", "absent", "empty", "allowed"])
def test_host_devices_are_unusable(rt: Any, make_bundle: Any, tmp_path: Path, rules: str) -> None:
    """With CAP_MKNOD a container can make any node; the device cgroup must still deny its use
    unless the config allows it ("allowed" is the control proving the probe can succeed)."""
    devices = _host_devices(tmp_path)

    def edit(spec: dict[str, Any]) -> None:
        add_caps(spec, "CAP_MKNOD", "CAP_DAC_OVERRIDE")
        if rules == "absent":
            del spec["linux"]["resources"]
        elif rules == "empty":
            spec["linux"]["resources"]["devices"] = []
        elif rules == "allowed":
            spec["linux"]["resources"]["devices"] += [
                {"allow": True, "type": kind, "major": major, "minor": minor, "access": "rm"}
                for kind, major, minor in devices]

    probe = ""
    for i, (kind, major, minor) in enumerate(devices):
        probe += (f"mknod /tmp/d{i} {kind} {major} {minor}; mknod /dev/d{i} {kind} {major} {minor}; "
                  f"echo READ{i}=$(timeout 2 cat /tmp/d{i} 2>/dev/null | head -c 4 | wc -c); "
                  f"echo READDEV{i}=$(timeout 2 cat /dev/d{i} 2>/dev/null | head -c 4 | wc -c); ")
    probe += "echo ok > /dev/null && echo NULL-OK; echo ZERO=$(head -c 4 /dev/zero | wc -c)"
    res = rt.run(make_bundle(["sh", "-c", probe], writable=True, edit=edit))
    assert res.returncode == 0, res.stderr
    want = 4 if rules == "allowed" else 0
    for i in range(len(devices)):
        assert f"READ{i}={want}\n" in res.stdout and f"READDEV{i}={want}\n" in res.stdout, (devices[i], res.stdout)
    # The default devices work whatever the rules.
    assert "NULL-OK" in res.stdout and "ZERO=4" in res.stdout, res.stdout


def test_container_stays_confined_after_runtime_exits(rt: Any, make_bundle: Any, cid: str) -> None:
    """The runtime's state directory and lock are nowhere reachable from the running container."""
    rt("run", "-d", "--bundle", str(sleeper(make_bundle)), cid)
    time.sleep(0.1)
    res = rt("exec", cid, "sh", "-c", f"ls -d {rt.root} 2>/dev/null && echo STATE-VISIBLE; "
             "for p in /proc/[0-9]*/fd/*; do readlink $p; done 2>/dev/null | grep -c berth || true", check=False)
    assert res.returncode == 0, res.stderr
    assert "STATE-VISIBLE" not in res.stdout
    assert res.stdout.split()[-1] == "0", res.stdout
