"""config.json coverage: each field is set in a bundle and checked from inside the container."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from rt_helpers import RT, cgroup_dir, cgroup_path_dir, new_id, wait_for

pytestmark = [pytest.mark.root, pytest.mark.integration]

Edit = Callable[[dict[str, Any]], None]
SLEEP = ["sleep", "1000"]


def run_ok(rt: RT, make_bundle: Any, script: str, edit: Edit | None = None, writable: bool = False) -> str:
    """Run ``sh -c script`` in a container built with ``edit``; return its stdout, asserting exit 0."""
    res = rt.run(make_bundle(["sh", "-c", script], edit=edit, writable=writable))
    assert res.returncode == 0, f"exit {res.returncode}\nstdout: {res.stdout}\nstderr: {res.stderr}"
    return res.stdout


def add_mount(spec: dict[str, Any], **mount: Any) -> None:
    spec["mounts"].append(mount)


def ns_types(spec: dict[str, Any]) -> list[str]:
    return [n["type"] for n in spec["linux"]["namespaces"]]


def mountinfo_line(text: str, mountpoint: str) -> list[str]:
    """The fields of the last mountinfo line for ``mountpoint`` (the top of the stack)."""
    found = [f for f in (line.split() for line in text.splitlines()) if len(f) > 6 and f[4] == mountpoint]
    assert found, f"{mountpoint} not mounted:\n{text}"
    return found[-1]


def mount_options(text: str, mountpoint: str) -> set[str]:
    """Per-mount and super options of ``mountpoint`` from mountinfo text."""
    fields = mountinfo_line(text, mountpoint)
    sep = fields.index("-")
    return set(fields[5].split(",")) | set(fields[sep + 3].split(","))


def cap_mask(*names: str) -> int:
    from berth.kernel import caps

    return sum(1 << n for n in caps.parse(list(names), "test"))


def status_field(status: str, name: str) -> str:
    for line in status.splitlines():
        if line.startswith(name + ":"):
            return line.split(":", 1)[1].strip()
    raise AssertionError(f"{name} missing from /proc/self/status")


# --- root, mounts ----------------------------------------------------------------------------------


def test_root_readonly(rt: RT, make_bundle: Any) -> None:
    out = run_ok(rt, make_bundle, "touch /x 2>&1; cat /proc/self/mountinfo")
    assert "Read-only file system" in out
    assert "ro" in mountinfo_line(out, "/")[5].split(",")


def test_root_writable(rt: RT, make_bundle: Any) -> None:
    bundle = make_bundle(["sh", "-c", "echo hi > /written && cat /written"], writable=True)
    res = rt.run(bundle)
    assert res.returncode == 0, res.stderr
    assert (bundle / "rootfs/written").read_text() == "hi\n"


def test_bind_mounts(rt: RT, make_bundle: Any, tmp_path: Path) -> None:
    rw, ro, single = tmp_path / "rw", tmp_path / "ro", tmp_path / "file"
    rw.mkdir()
    ro.mkdir()
    (ro / "f").write_text("read-only\n")
    single.write_text("a file\n")

    def edit(spec: dict[str, Any]) -> None:
        add_mount(spec, destination="/mnt/rw", type="bind", source=str(rw), options=["rbind", "rw"])
        add_mount(spec, destination="/mnt/ro", type="none", source=str(ro), options=["bind", "ro", "nosuid"])
        add_mount(spec, destination="/etc/onefile", type="bind", source=str(single), options=["bind", "ro"])

    out = run_ok(rt, make_bundle, "echo from-inside > /mnt/rw/new; cat /mnt/ro/f; touch /mnt/ro/x 2>&1;"
                 "cat /etc/onefile; cat /proc/self/mountinfo", edit)
    assert (rw / "new").read_text() == "from-inside\n"
    assert "read-only\n" in out and "Read-only file system" in out and "a file\n" in out
    assert not (ro / "x").exists()
    assert {"ro", "nosuid"} <= mount_options(out, "/mnt/ro")
    assert "rw" in mount_options(out, "/mnt/rw")


def test_bind_relative_source_is_relative_to_bundle(rt: RT, make_bundle: Any) -> None:
    def edit(spec: dict[str, Any]) -> None:
        add_mount(spec, destination="/data", type="bind", source="data", options=["rbind", "ro"])

    bundle = make_bundle(["cat", "/data/x"], edit=edit)
    (bundle / "data").mkdir()
    (bundle / "data/x").write_text("bundle-relative\n")
    res = rt.run(bundle)
    assert res.returncode == 0, res.stderr
    assert res.stdout == "bundle-relative\n"


def test_rbind_includes_submounts_bind_does_not(rt: RT, make_bundle: Any, tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(src / "sub")], check=True)
    try:
        (src / "sub/inner").write_text("submount\n")

        def edit(spec: dict[str, Any]) -> None:
            add_mount(spec, destination="/r", type="bind", source=str(src), options=["rbind"])
            add_mount(spec, destination="/b", type="bind", source=str(src), options=["bind"])

        out = run_ok(rt, make_bundle, "cat /r/sub/inner; ls /b/sub | wc -l", edit)
        assert out.split() == ["submount", "0"]
    finally:
        subprocess.run(["umount", "-l", str(src / "sub")], check=False)


def test_tmpfs_proc_sysfs_devpts_mqueue_cgroup(rt: RT, make_bundle: Any) -> None:
    def edit(spec: dict[str, Any]) -> None:
        add_mount(spec, destination="/tmp", type="tmpfs", source="tmpfs",
                  options=["nosuid", "nodev", "noexec", "size=1m", "mode=1770"])

    out = run_ok(rt, make_bundle, "cat /proc/self/mountinfo; echo ===; stat -c '%a' /tmp; ls /sys/fs/cgroup;"
                 "echo ===; ls /sys/kernel | head -3; ls /dev/pts/ptmx; ls -l /dev/ptmx", edit)
    info, rest, more = out.split("===\n")
    fstypes = {}
    for line in info.splitlines():
        fields = line.split()
        fstypes[fields[4]] = fields[fields.index("-") + 1]
    assert fstypes["/proc"] == "proc"
    assert fstypes["/sys"] == "sysfs"
    assert fstypes["/dev"] == "tmpfs"
    assert fstypes["/dev/pts"] == "devpts"
    assert fstypes["/dev/shm"] == "tmpfs"
    assert fstypes["/dev/mqueue"] == "mqueue"
    assert fstypes["/tmp"] == "tmpfs"
    assert {"nosuid", "nodev", "noexec", "size=1024k"} <= mount_options(info, "/tmp")
    assert {"ro", "nosuid", "nodev", "noexec"} <= mount_options(info, "/sys")
    assert {"newinstance", "ptmxmode=666", "mode=620", "gid=5"} & mount_options(info, "/dev/pts")
    assert rest.splitlines()[0] == "1770"
    assert {"memory", "pids", "cpu", "devices", "freezer"} <= set(rest.split()[1:])
    assert fstypes["/sys/fs/cgroup/memory"] == fstypes["/sys/fs/cgroup/pids"] == "cgroup"
    if "/sys/fs/cgroup/unified" in fstypes:
        assert fstypes["/sys/fs/cgroup/unified"] == "cgroup2"
    assert "ro" in mount_options(info, "/sys/fs/cgroup/memory")
    assert "/dev/pts/ptmx" in more and "pts/ptmx" in more


def test_tmpfs_tmpcopyup(rt: RT, make_bundle: Any) -> None:
    """runc's and crun's tmpcopyup extension (podman asks for it): the tmpfs starts with the image's files."""
    def edit(spec: dict[str, Any]) -> None:
        spec["mounts"].append({"destination": "/etc", "type": "tmpfs", "source": "tmpfs",
                               "options": ["nosuid", "nodev", "tmpcopyup"]})
        spec["mounts"].append({"destination": "/var", "type": "tmpfs", "source": "tmpfs",
                               "options": ["notmpcopyup"]})

    out = run_ok(rt, make_bundle, "head -1 /etc/passwd; stat -c '%a %u' /etc/passwd; echo x > /etc/new && echo wrote;"
                 "ls -A /var | wc -l; grep ' /etc ' /proc/self/mountinfo", edit, writable=True)
    lines = out.splitlines()
    assert lines[0].startswith("root:x:0:0")
    assert lines[1] == "644 0"
    assert lines[2] == "wrote"
    assert lines[3].strip() == "0"
    assert " - tmpfs " in lines[4]


def test_cgroup_mount_shows_own_cgroup(rt: RT, make_bundle: Any, cid: str) -> None:
    def edit(spec: dict[str, Any]) -> None:
        spec["linux"]["resources"]["pids"] = {"limit": 123}

    res = rt.run(make_bundle(["cat", "/sys/fs/cgroup/pids/pids.max", "/proc/self/cgroup"], edit=edit), cid=cid)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0] == "123"
    # A cgroup namespace: the container sees its own cgroup as the root.
    assert all(line.endswith(":/") for line in lines[1:]), lines


def test_cgroup_mount_without_cgroupns(rt: RT, make_bundle: Any) -> None:
    def edit(spec: dict[str, Any]) -> None:
        spec["linux"]["namespaces"] = [n for n in spec["linux"]["namespaces"] if n["type"] != "cgroup"]
        spec["linux"]["resources"]["pids"] = {"limit": 321}

    res = rt.run(make_bundle(["cat", "/sys/fs/cgroup/pids/pids.max"], edit=edit))
    assert res.returncode == 0, res.stderr
    assert res.stdout == "321\n"


@pytest.mark.parametrize(("option", "field"), [("rshared", "shared:"), ("rslave", "master:"),
                                                 ("rprivate", None)])
def test_mount_propagation_options(rt: RT, make_bundle: Any, tmp_path: Path, option: str,
                                   field: str | None) -> None:
    src = tmp_path / "prop"
    src.mkdir()
    # A shared host mount, so that slave has a master to follow.
    subprocess.run(["mount", "--bind", str(src), str(src)], check=True)
    subprocess.run(["mount", "--make-shared", str(src)], check=True)
    try:
        def edit(spec: dict[str, Any]) -> None:
            add_mount(spec, destination="/p", type="bind", source=str(src), options=["rbind", option])

        out = run_ok(rt, make_bundle, "cat /proc/self/mountinfo", edit)
        optional = mountinfo_line(out, "/p")[6:]
        optional = optional[: optional.index("-")]
        if field is None:
            assert optional == [], optional
        else:
            assert any(o.startswith(field) for o in optional), optional
    finally:
        subprocess.run(["umount", "-l", str(src)], check=False)


def test_rshared_mount_propagates_back_to_host(rt: RT, make_bundle: Any, tmp_path: Path, cid: str) -> None:
    src = tmp_path / "shared"
    src.mkdir()
    subprocess.run(["mount", "--bind", str(src), str(src)], check=True)
    subprocess.run(["mount", "--make-shared", str(src)], check=True)
    try:
        def edit(spec: dict[str, Any]) -> None:
            add_mount(spec, destination="/s", type="bind", source=str(src), options=["rbind", "rshared"])
            spec["process"]["capabilities"]["bounding"].append("CAP_SYS_ADMIN")
            spec["process"]["capabilities"]["effective"].append("CAP_SYS_ADMIN")
            spec["process"]["capabilities"]["permitted"].append("CAP_SYS_ADMIN")
            spec["linux"]["rootfsPropagation"] = "rshared"

        (src / "m").mkdir()
        out = run_ok(rt, make_bundle, "mount -t tmpfs none /s/m && echo mounted", edit)
        assert "mounted" in out
        with open("/proc/self/mountinfo") as f:
            assert any(line.split()[4] == str(src / "m") for line in f)
    finally:
        subprocess.run(["umount", "-R", "-l", str(src)], check=False)


def test_rootfs_propagation(rt: RT, make_bundle: Any) -> None:
    def shared(spec: dict[str, Any]) -> None:
        spec["linux"]["rootfsPropagation"] = "shared"

    def private(spec: dict[str, Any]) -> None:
        spec["linux"]["rootfsPropagation"] = "private"

    out = run_ok(rt, make_bundle, "cat /proc/self/mountinfo", shared)
    assert any(o.startswith("shared:") for o in mountinfo_line(out, "/")[6:])
    out = run_ok(rt, make_bundle, "cat /proc/self/mountinfo", private)
    fields = mountinfo_line(out, "/")
    assert fields[6] == "-", fields


# --- process -----------------------------------------------------------------------------------------


def test_process_args_env_cwd(rt: RT, make_bundle: Any) -> None:
    def edit(spec: dict[str, Any]) -> None:
        spec["process"]["env"] = ["PATH=/bin:/usr/bin", "FOO=bar baz", "EMPTY="]
        spec["process"]["cwd"] = "/etc"

    res = rt.run(make_bundle(["sh", "-c", 'echo "$FOO|$EMPTY|$PATH|$HOME"; pwd; echo "$0" "$1"', "zero", "one"],
                             edit=edit))
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == ["bar baz||/bin:/usr/bin|/root", "/etc", "zero one"]


def test_cwd_created_if_missing(rt: RT, make_bundle: Any) -> None:
    def edit(spec: dict[str, Any]) -> None:
        spec["process"]["cwd"] = "/work/dir"

    out = run_ok(rt, make_bundle, "pwd", edit, writable=True)
    assert out == "/work/dir\n"


def test_user_groups_umask(rt: RT, make_bundle: Any) -> None:
    def edit(spec: dict[str, Any]) -> None:
        spec["process"]["user"] = {"uid": 1000, "gid": 1000, "additionalGids": [2000, 3000], "umask": 0o077}
        add_mount(spec, destination="/tmp", type="tmpfs", source="tmpfs", options=["mode=1777"])

    out = run_ok(rt, make_bundle, "id -u; id -g; id -G; umask; touch /tmp/f; stat -c %a /tmp/f; echo $HOME;"
                 "grep -E '^(Uid|Gid|Groups)' /proc/self/status", edit)
    lines = out.splitlines()
    assert lines[:3] == ["1000", "1000", "1000 2000 3000"] or lines[:3] == ["1000", "1000", "2000 3000"]
    assert lines[3] == "0077"
    assert lines[4] == "600"
    assert lines[5] == "/home/app"
    assert lines[6].split()[1:] == ["1000"] * 4
    assert lines[7].split()[1:] == ["1000"] * 4
    assert lines[8].split()[1:] == ["2000", "3000"]


def test_default_umask_is_0022(rt: RT, make_bundle: Any) -> None:
    assert run_ok(rt, make_bundle, "umask") == "0022\n"


def test_capability_sets_non_root(rt: RT, make_bundle: Any) -> None:
    def edit(spec: dict[str, Any]) -> None:
        spec["process"]["user"] = {"uid": 1000, "gid": 1000}
        spec["process"]["noNewPrivileges"] = False
        spec["process"]["capabilities"] = {
            "bounding": ["CAP_CHOWN", "CAP_NET_BIND_SERVICE", "CAP_KILL", "CAP_SYS_TIME"],
            "effective": ["CAP_NET_BIND_SERVICE", "CAP_KILL"],
            "permitted": ["CAP_NET_BIND_SERVICE", "CAP_KILL"],
            "inheritable": ["CAP_NET_BIND_SERVICE", "CAP_KILL"],
            "ambient": ["CAP_NET_BIND_SERVICE"],
        }

    status = run_ok(rt, make_bundle, "cat /proc/self/status", edit)
    assert int(status_field(status, "CapBnd"), 16) == cap_mask("CAP_CHOWN", "CAP_NET_BIND_SERVICE", "CAP_KILL",
                                                                "CAP_SYS_TIME")
    assert int(status_field(status, "CapInh"), 16) == cap_mask("CAP_NET_BIND_SERVICE", "CAP_KILL")
    # After exec a non-root process keeps exactly its ambient set as permitted and effective.
    for name in ("CapAmb", "CapPrm", "CapEff"):
        assert int(status_field(status, name), 16) == cap_mask("CAP_NET_BIND_SERVICE"), name


def test_capability_sets_root(rt: RT, make_bundle: Any) -> None:
    def edit(spec: dict[str, Any]) -> None:
        spec["process"]["capabilities"] = {k: ["CAP_CHOWN", "CAP_KILL"] for k in
                                           ("bounding", "effective", "permitted")}

    status = run_ok(rt, make_bundle, "cat /proc/self/status; chown 1:1 /dev/null 2>&1; echo chown=$?", edit)
    for name in ("CapBnd", "CapPrm", "CapEff"):
        assert int(status_field(status, name), 16) == cap_mask("CAP_CHOWN", "CAP_KILL"), name
    assert int(status_field(status, "CapInh"), 16) == 0
    assert int(status_field(status, "CapAmb"), 16) == 0


def test_capability_missing_denies(rt: RT, make_bundle: Any) -> None:
    def edit(spec: dict[str, Any]) -> None:
        spec["process"]["capabilities"] = {k: ["CAP_KILL"] for k in ("bounding", "effective", "permitted")}

    out = run_ok(rt, make_bundle, "hostname foo 2>&1; echo rc=$?", edit)
    assert "rc=1" in out


def test_rlimits(rt: RT, make_bundle: Any) -> None:
    def edit(spec: dict[str, Any]) -> None:
        spec["process"]["rlimits"] = [{"type": "RLIMIT_NOFILE", "soft": 123, "hard": 456},
                                      {"type": "RLIMIT_CORE", "soft": 0, "hard": 4096},
                                      {"type": "RLIMIT_NPROC", "soft": 777, "hard": 778}]

    out = run_ok(rt, make_bundle, "ulimit -n; ulimit -Hn; grep -E 'Max (core|processes)' /proc/self/limits", edit)
    lines = out.splitlines()
    assert lines[:2] == ["123", "456"]
    assert lines[2].split()[-3:-1] == ["0", "4096"]
    assert lines[3].split()[-3:-1] == ["777", "778"]


@pytest.mark.parametrize("nnp", [True, False])
def test_no_new_privileges(rt: RT, make_bundle: Any, nnp: bool) -> None:
    def edit(spec: dict[str, Any]) -> None:
        spec["process"]["noNewPrivileges"] = nnp

    status = run_ok(rt, make_bundle, "cat /proc/self/status", edit)
    assert status_field(status, "NoNewPrivs") == ("1" if nnp else "0")


def test_oom_score_adj(rt: RT, make_bundle: Any) -> None:
    def edit(spec: dict[str, Any]) -> None:
        spec["process"]["oomScoreAdj"] = 567

    assert run_ok(rt, make_bundle, "cat /proc/self/oom_score_adj", edit) == "567\n"


def test_hostname_domainname(rt: RT, make_bundle: Any) -> None:
    def edit(spec: dict[str, Any]) -> None:
        spec["hostname"] = "box.one"
        spec["domainname"] = "example.test"

    out = run_ok(rt, make_bundle, "hostname; cat /proc/sys/kernel/domainname", edit)
    assert out.split() == ["box.one", "example.test"]
    assert os.uname().nodename != "box.one"


# --- namespaces ----------------------------------------------------------------------------------------

NS_FILES = {"pid": "pid", "network": "net", "mount": "mnt", "ipc": "ipc", "uts": "uts", "cgroup": "cgroup",
            "user": "user", "time": "time"}


def _host_ns(name: str) -> str:
    return os.readlink(f"/proc/self/ns/{name}")


def test_every_namespace_new(rt: RT, make_bundle: Any, userns_rootfs: Path) -> None:
    def edit(spec: dict[str, Any]) -> None:
        spec["root"]["path"] = str(userns_rootfs)
        spec["linux"]["namespaces"] = [{"type": t} for t in NS_FILES]
        spec["linux"]["uidMappings"] = [{"containerID": 0, "hostID": 200000, "size": 65536}]
        spec["linux"]["gidMappings"] = [{"containerID": 0, "hostID": 200000, "size": 65536}]

    if not os.path.exists("/proc/self/ns/time"):
        pytest.skip("this kernel has no time namespaces")
    script = "; ".join(f"readlink /proc/self/ns/{n}" for n in NS_FILES.values())
    out = run_ok(rt, make_bundle, script, edit).split()
    for (kind, name), inside in zip(NS_FILES.items(), out, strict=True):
        assert inside.startswith(f"{name}:["), inside
        assert inside != _host_ns(name), f"{kind} namespace is the host's"


def test_shared_namespaces_are_the_hosts(rt: RT, make_bundle: Any) -> None:
    def edit(spec: dict[str, Any]) -> None:
        spec["linux"]["namespaces"] = [{"type": "mount"}]

    out = run_ok(rt, make_bundle, "for n in net uts mnt; do readlink /proc/self/ns/$n; done", edit).split()
    assert out[0] == _host_ns("net") and out[1] == _host_ns("uts")
    assert out[2] != _host_ns("mnt")


def test_join_namespaces_by_path(rt: RT, make_bundle: Any, cid: str) -> None:
    has_time = os.path.exists("/proc/self/ns/time")

    def first(spec: dict[str, Any]) -> None:
        spec["hostname"] = "first"
        if has_time:
            spec["linux"]["namespaces"].append({"type": "time"})

    rt("run", "-d", "--bundle", str(make_bundle(SLEEP, edit=first)), cid)
    pid = rt.state(cid)["pid"]
    joined = {"network": "net", "ipc": "ipc", "uts": "uts", "pid": "pid", "cgroup": "cgroup"}
    if has_time:
        joined["time"] = "time"

    def second(spec: dict[str, Any]) -> None:
        spec.pop("hostname", None)
        spec["linux"]["namespaces"] = [{"type": t, "path": f"/proc/{pid}/ns/{joined[t]}"} for t in joined]
        spec["linux"]["namespaces"].append({"type": "mount"})

    names = list(joined.values())
    out = run_ok(rt, make_bundle, f"for n in {' '.join(names)}; do readlink /proc/self/ns/$n; done; hostname;"
                 "ps -o comm | grep -c sleep", second).split()
    assert out[:len(names)] == [os.readlink(f"/proc/{pid}/ns/{n}") for n in names]
    assert out[len(names)] == "first"
    assert out[len(names) + 1] == "1"


def test_join_missing_namespace_path_fails(rt: RT, make_bundle: Any, cid: str) -> None:
    def edit(spec: dict[str, Any]) -> None:
        spec["linux"]["namespaces"] = [{"type": "network", "path": "/proc/999999999/ns/net"}, {"type": "mount"}]

    res = rt.run(make_bundle(["true"], edit=edit), cid=cid)
    assert res.returncode != 0 and "network" in res.stderr
    assert rt.status(cid) == "gone"


def test_user_namespace_mappings(rt: RT, make_bundle: Any, cid: str, tmp_path: Path, userns_rootfs: Path) -> None:
    def edit(spec: dict[str, Any]) -> None:
        spec["root"]["path"] = str(userns_rootfs)
        spec["linux"]["namespaces"].append({"type": "user"})
        spec["linux"]["uidMappings"] = [{"containerID": 0, "hostID": 100000, "size": 65536}]
        spec["linux"]["gidMappings"] = [{"containerID": 0, "hostID": 100000, "size": 65536}]

    out = tmp_path / "out"
    rt("create", "--bundle", str(make_bundle(["sh", "-c", "cat /proc/self/uid_map /proc/self/gid_map; id -u;"
                                                          "ls -ln /bin/busybox"], edit=edit)), cid, stdout=out)
    pid = rt.state(cid)["pid"]
    with open(f"/proc/{pid}/status") as f:
        status = f.read()
    assert status_field(status, "Uid").split() == ["100000"] * 4
    rt("start", cid)
    rt.wait_status(cid, "stopped")
    lines = out.read_text().splitlines()
    assert lines[0].split() == ["0", "100000", "65536"]
    assert lines[1].split() == ["0", "100000", "65536"]
    assert lines[2] == "0"
    # The rootfs is owned by host root, which is unmapped inside: overflow uid 65534.
    assert lines[3].split()[2] == "65534"


def test_user_namespace_with_non_root_user(rt: RT, make_bundle: Any, userns_rootfs: Path) -> None:
    def edit(spec: dict[str, Any]) -> None:
        spec["root"]["path"] = str(userns_rootfs)
        spec["linux"]["namespaces"].append({"type": "user"})
        spec["linux"]["uidMappings"] = [{"containerID": 0, "hostID": 100000, "size": 65536}]
        spec["linux"]["gidMappings"] = [{"containerID": 0, "hostID": 100000, "size": 65536}]
        spec["process"]["user"] = {"uid": 1000, "gid": 1000}

    assert run_ok(rt, make_bundle, "id -u; id -g", edit).split() == ["1000", "1000"]


def _userns(spec: dict[str, Any], rootfs: Path) -> None:
    spec["root"]["path"] = str(rootfs)
    spec["linux"]["namespaces"].append({"type": "user"})
    spec["linux"]["uidMappings"] = [{"containerID": 0, "hostID": 100000, "size": 65536}]
    spec["linux"]["gidMappings"] = [{"containerID": 0, "hostID": 100000, "size": 65536}]


def test_user_namespace_with_host_network_binds_sys(rt: RT, make_bundle: Any, userns_rootfs: Path) -> None:
    """sysfs cannot be mounted by a user namespace that does not own the network namespace: /sys is
    then a read-only bind of the host's, as with runc."""
    def edit(spec: dict[str, Any]) -> None:
        _userns(spec, userns_rootfs)
        spec["linux"]["namespaces"] = [n for n in spec["linux"]["namespaces"] if n["type"] != "network"]

    out = run_ok(rt, make_bundle, "ls /sys/kernel >/dev/null && echo listed; touch /sys/x 2>&1;"
                 "cat /proc/self/mountinfo", edit)
    assert "listed" in out and "Read-only file system" in out
    assert {"ro", "nosuid", "nodev", "noexec"} <= mount_options(out, "/sys")


def test_user_namespace_devices_and_cgroups(rt: RT, make_bundle: Any, userns_rootfs: Path) -> None:
    """In a user namespace device nodes cannot be made: they are bound from the host."""
    def edit(spec: dict[str, Any]) -> None:
        _userns(spec, userns_rootfs)
        spec["linux"]["devices"] = [{"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229}]
        spec["linux"]["namespaces"] = [n for n in spec["linux"]["namespaces"] if n["type"] != "cgroup"]
        spec["linux"]["resources"]["pids"] = {"limit": 55}

    if not os.path.exists("/dev/fuse"):
        pytest.skip("no /dev/fuse on this host")
    out = run_ok(rt, make_bundle, "stat -c '%t,%T' /dev/fuse /dev/null; echo > /dev/null && echo null-ok;"
                 "cat /sys/fs/cgroup/pids/pids.max", edit)
    assert out.split() == ["a,e5", "1,3", "null-ok", "55"]


# --- devices, sysctl, seccomp, masked and read-only paths, personality ------------------------------


def test_devices(rt: RT, make_bundle: Any) -> None:
    def edit(spec: dict[str, Any]) -> None:
        spec["linux"]["devices"] = [
            {"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229, "fileMode": 0o640, "uid": 0, "gid": 5},
            {"path": "/dev/my/fifo", "type": "p", "fileMode": 0o600},
        ]

    out = run_ok(rt, make_bundle, "stat -c '%F %a %t,%T %u %g' /dev/fuse /dev/my/fifo /dev/null /dev/zero "
                 "/dev/full /dev/random /dev/urandom /dev/tty; readlink /dev/fd; readlink /dev/stdin", edit)
    lines = out.splitlines()
    assert lines[0] == "character special file 640 a,e5 0 5"
    assert lines[1].startswith("fifo 600")
    assert all(line.startswith("character special file 666") for line in lines[2:8]), lines
    assert lines[8:] == ["/proc/self/fd", "/proc/self/fd/0"]


def test_device_cgroup(rt: RT, make_bundle: Any) -> None:
    """The default config denies every device but the defaults; an allow rule opens one more."""
    if not os.path.exists("/dev/loop-control"):
        pytest.skip("no loop-control on this host")

    def denied(spec: dict[str, Any]) -> None:
        # Bound from the host: only the resources.devices rules decide its access (as with runc).
        add_mount(spec, destination="/dev/loop-control", type="bind", source="/dev/loop-control",
                  options=["bind"])

    def allowed(spec: dict[str, Any]) -> None:
        denied(spec)
        spec["linux"]["resources"]["devices"].append({"allow": True, "type": "c", "major": 10, "minor": 237,
                                                      "access": "rw"})

    script = "echo > /dev/null && echo null-ok; (: < /dev/loop-control) && echo loop-ok"
    assert run_ok(rt, make_bundle, script + "; true", denied).split() == ["null-ok"]
    assert run_ok(rt, make_bundle, script, allowed).split() == ["null-ok", "loop-ok"]


def test_sysctl(rt: RT, make_bundle: Any) -> None:
    def edit(spec: dict[str, Any]) -> None:
        spec["linux"]["sysctl"] = {"net.ipv4.ip_forward": "1", "kernel.shmmax": "123456789",
                                   "net.ipv4.ping_group_range": "0 0"}

    host_forward = Path("/proc/sys/net/ipv4/ip_forward").read_text()
    host_shmmax = Path("/proc/sys/kernel/shmmax").read_text()
    out = run_ok(rt, make_bundle, "cat /proc/sys/net/ipv4/ip_forward /proc/sys/kernel/shmmax", edit)
    assert out.split() == ["1", "123456789"]
    assert Path("/proc/sys/net/ipv4/ip_forward").read_text() == host_forward
    assert Path("/proc/sys/kernel/shmmax").read_text() == host_shmmax


def test_seccomp_errno(rt: RT, make_bundle: Any) -> None:
    def edit(spec: dict[str, Any]) -> None:
        add_mount(spec, destination="/tmp", type="tmpfs", source="tmpfs")
        spec["linux"]["seccomp"] = {
            "defaultAction": "SCMP_ACT_ALLOW",
            "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]
            if os.uname().machine == "x86_64" else [],
            "syscalls": [
                {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13},
                {"names": ["rmdir"], "action": "SCMP_ACT_ERRNO"},
            ],
        }

    out = run_ok(rt, make_bundle, "mkdir /tmp/d 2>&1; echo rc=$?; touch /tmp/f && echo touched", edit)
    assert "Permission denied" in out and "rc=1" in out and "touched" in out


def test_seccomp_argument_filter(rt: RT, make_bundle: Any) -> None:
    """Deny personality(0xffffffff queries are allowed) only for one argument value."""
    def edit(spec: dict[str, Any]) -> None:
        add_mount(spec, destination="/tmp", type="tmpfs", source="tmpfs")
        spec["linux"]["seccomp"] = {
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [
                {"names": ["fchmodat", "fchmodat2"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1,
                 "args": [{"index": 2, "value": 0o777, "op": "SCMP_CMP_EQ"}]},
                {"names": ["chmod"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1,
                 "args": [{"index": 1, "value": 0o777, "op": "SCMP_CMP_EQ"}]},
            ],
        }

    out = run_ok(rt, make_bundle, "touch /tmp/f; chmod 755 /tmp/f && echo ok755; chmod 777 /tmp/f 2>&1;"
                 "stat -c %a /tmp/f", edit)
    lines = out.splitlines()
    assert lines[0] == "ok755"
    assert "Operation not permitted" in lines[1]
    assert lines[2] == "755"


def test_seccomp_default_errno_with_allow_list(rt: RT, make_bundle: Any) -> None:
    """An allow-list profile: everything busybox needs to echo is allowed, uname is not."""
    def edit(spec: dict[str, Any]) -> None:
        spec["linux"]["seccomp"] = {
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["uname"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38}],
        }

    res = rt.run(make_bundle(["sh", "-c", "uname -m 2>&1; echo after"], edit=edit))
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines()[-1] == "after"
    assert "x86_64" not in res.stdout


def test_seccomp_kill_and_flags(rt: RT, make_bundle: Any) -> None:
    def edit(spec: dict[str, Any]) -> None:
        spec["linux"]["seccomp"] = {
            "defaultAction": "SCMP_ACT_ALLOW",
            "flags": ["SECCOMP_FILTER_FLAG_LOG"],
            "syscalls": [{"names": ["sync"], "action": "SCMP_ACT_KILL_PROCESS"},
                         {"names": ["sethostname"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38}],
        }
        spec["linux"]["namespaces"] = [n for n in spec["linux"]["namespaces"] if n["type"] != "pid"]

    res = rt.run(make_bundle(["sh", "-c", "hostname x 2>&1; echo rc=$?"], edit=edit))
    assert res.returncode == 0 and "rc=1" in res.stdout, res
    # The filter kills the whole process with SIGSYS.
    assert rt.run(make_bundle(["sync"], edit=edit)).returncode == 128 + 31


def test_masked_and_readonly_paths(rt: RT, make_bundle: Any) -> None:
    def edit(spec: dict[str, Any]) -> None:
        spec["linux"]["maskedPaths"] = ["/proc/kcore", "/proc/meminfo", "/sys/firmware", "/proc/does-not-exist"]
        spec["linux"]["readonlyPaths"] = ["/proc/sys", "/proc/sysrq-trigger", "/nowhere"]

    out = run_ok(rt, make_bundle, "wc -c < /proc/meminfo; ls -A /sys/firmware | wc -l;"
                 "echo 1 > /proc/sys/net/ipv4/ip_forward 2>&1 || echo ro-denied; echo h > /proc/sysrq-trigger"
                 " 2>&1 || echo ro-denied2; cat /proc/self/mountinfo", edit)
    lines = out.splitlines()
    assert lines[0].strip() == "0"
    assert lines[1].strip() == "0"
    assert "ro-denied" in out and "ro-denied2" in out
    assert "ro" in mount_options(out, "/proc/sys")


def test_personality_linux32(rt: RT, make_bundle: Any) -> None:
    if os.uname().machine != "x86_64":
        pytest.skip("the i686 answer is x86_64's")
    def edit(spec: dict[str, Any]) -> None:
        spec["linux"]["personality"] = {"domain": "LINUX32"}

    assert run_ok(rt, make_bundle, "uname -m", edit) == "i686\n"
    assert run_ok(rt, make_bundle, "uname -m") == os.uname().machine + "\n"


# --- cgroups ---------------------------------------------------------------------------------------------


def test_cgroups_path_and_resources(rt: RT, make_bundle: Any, cid: str) -> None:
    path = f"/berth-test/{cid}"
    st = os.stat("/")
    dev = (os.major(st.st_dev), os.minor(st.st_dev))

    def edit(spec: dict[str, Any]) -> None:
        spec["linux"]["cgroupsPath"] = path
        spec["linux"]["resources"].update({
            "memory": {"limit": 64 << 20, "reservation": 32 << 20, "swap": 96 << 20},
            "cpu": {"shares": 256, "quota": 20000, "period": 100000, "cpus": "0", "mems": "0"},
            "pids": {"limit": 40},
            "blockIO": {"weight": 500, "throttleReadBpsDevice": [{"major": dev[0], "minor": dev[1], "rate": 1 << 20}],
                        "throttleWriteIOPSDevice": [{"major": dev[0], "minor": dev[1], "rate": 100}]},
        })

    rt("run", "-d", "--bundle", str(make_bundle(SLEEP, edit=edit)), cid)
    pid = rt.state(cid)["pid"]

    def read(controller: str, name: str) -> str:
        return (cgroup_path_dir(controller, path) / name).read_text().strip()

    assert cgroup_dir(pid, "memory") == cgroup_path_dir("memory", path)
    assert read("memory", "memory.limit_in_bytes") == str(64 << 20)
    assert read("memory", "memory.soft_limit_in_bytes") == str(32 << 20)
    if (cgroup_path_dir("memory", path) / "memory.memsw.limit_in_bytes").exists():
        assert read("memory", "memory.memsw.limit_in_bytes") == str(96 << 20)
    assert read("cpu", "cpu.shares") == "256"
    assert read("cpu", "cpu.cfs_quota_us") == "20000"
    assert read("cpu", "cpu.cfs_period_us") == "100000"
    assert read("cpuset", "cpuset.cpus") == "0"
    assert read("cpuset", "cpuset.mems") == "0"
    assert read("pids", "pids.max") == "40"
    assert str(pid) in read("pids", "cgroup.procs").split()
    if (cgroup_path_dir("blkio", path) / "blkio.bfq.weight").exists():
        assert read("blkio", "blkio.bfq.weight") == "500"
    assert read("blkio", "blkio.throttle.read_bps_device") == f"{dev[0]}:{dev[1]} {1 << 20}"
    assert read("blkio", "blkio.throttle.write_iops_device") == f"{dev[0]}:{dev[1]} 100"
    devices = read("devices", "devices.list").splitlines()
    assert "c 1:3 rwm" in devices and "a *:* rwm" not in devices
    rt("delete", "--force", cid)
    for controller in ("memory", "cpu", "pids", "cpuset", "devices", "freezer"):
        assert not cgroup_path_dir(controller, path).exists(), controller
        try:
            cgroup_path_dir(controller, "/berth-test").rmdir()
        except OSError:
            pass


def test_hugepage_limits(rt: RT, make_bundle: Any, cid: str) -> None:
    """hugetlb is only on the unified (v2) hierarchy of this hybrid host: it is driven there."""
    from berth.kernel.cgroups import hierarchies

    h = hierarchies()
    if "hugetlb" in h.v1:
        directory = cgroup_path_dir("hugetlb", f"/berth/{cid}")
        name = "hugetlb.2MB.limit_in_bytes"
    elif h.v2 is not None and "hugetlb" in Path(h.v2[0], "cgroup.controllers").read_text().split():
        directory = cgroup_path_dir("", f"/berth/{cid}")
        name = "hugetlb.2MB.max"
    else:
        pytest.skip("no hugetlb controller on this host")
    if not Path("/sys/kernel/mm/hugepages/hugepages-2048kB").exists():
        pytest.skip("no 2MB huge pages on this host")

    def edit(spec: dict[str, Any]) -> None:
        spec["linux"]["resources"]["hugepageLimits"] = [{"pageSize": "2MB", "limit": 4 << 21}]

    rt("run", "-d", "--bundle", str(make_bundle(SLEEP, edit=edit)), cid)
    assert (directory / name).read_text().strip() == str(4 << 21)


def test_relative_cgroups_path(rt: RT, make_bundle: Any, cid: str) -> None:
    def edit(spec: dict[str, Any]) -> None:
        spec["linux"]["cgroupsPath"] = f"berth-rel/{cid}"

    rt("run", "-d", "--bundle", str(make_bundle(SLEEP, edit=edit)), cid)
    pid = rt.state(cid)["pid"]
    directory = cgroup_dir(pid, "pids")
    assert str(directory).endswith(f"/berth-rel/{cid}")
    rt("delete", "--force", cid)
    assert not directory.exists()
    try:
        directory.parent.rmdir()
    except OSError:
        pass


def test_fork_bomb_is_stopped_by_pids_limit(rt: RT, make_bundle: Any, cid: str) -> None:
    def edit(spec: dict[str, Any]) -> None:
        spec["linux"]["resources"]["pids"] = {"limit": 24}

    bomb = "bomb() { bomb | bomb & }; bomb; exec sleep 1000"  # exec: the init itself needs no fork
    rt("run", "-d", "--bundle", str(make_bundle(["sh", "-c", bomb], edit=edit)), cid)
    directory = cgroup_path_dir("pids", f"/berth/{cid}")
    # The limit is reached and refused forks are counted, while the count never exceeds the limit.
    events = directory / "pids.events"
    if events.exists():
        wait_for(lambda: int(events.read_text().split()[1]) > 0, what="a refused fork")
    else:
        wait_for(lambda: int((directory / "pids.current").read_text()) == 24, what="the limit reached")
    for _ in range(10):
        assert int((directory / "pids.current").read_text()) <= 24
        time.sleep(0.05)
    # The host is unharmed and the bomb can be removed.
    rt("delete", "--force", cid, timeout=60)
    assert not directory.exists()


def test_memory_limit_oom_kills(rt: RT, make_bundle: Any, cid: str, tmp_path: Path) -> None:
    def edit(spec: dict[str, Any]) -> None:
        spec["linux"]["resources"]["memory"] = {"limit": 32 << 20}
        spec["linux"]["namespaces"] = [n for n in spec["linux"]["namespaces"] if n["type"] != "pid"]

    # dd allocates its whole block (100 MiB) and fills it from /dev/zero.
    res = rt.run(make_bundle(["dd", "if=/dev/zero", "of=/dev/null", "bs=100M", "count=1"], edit=edit),
                 "--keep", cid=cid)
    assert res.returncode == 137, res.stderr
    pid_dir = cgroup_path_dir("memory", f"/berth/{cid}")
    assert "oom_kill 1" in (pid_dir / "memory.oom_control").read_text()
    assert new_id() != cid
