"""berth.snapshots: metadata and lifecycle, the copying fallback, overlay mount specs and real overlay mounts."""

from __future__ import annotations

import os
import stat
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from berth.errors import AlreadyExists, BerthError, Conflict, InvalidArgument, NotFound, Unsupported
from berth.snapshots import (
    ACTIVE,
    COMMITTED,
    VIEW,
    CopySnapshotter,
    Mount,
    OverlaySnapshotter,
    Snapshotter,
    open_snapshotter,
)
from berth.snapshots.mount import mount_all, overlay_supported, unmount


def fs_of(mounts: list[Mount]) -> Path:
    """The directory to write to: a bind source or an overlay upper."""
    m = mounts[0]
    return Path(m.source if m.type == "bind" else m.resolve(m.option("upperdir") or ""))


def layer(s: Snapshotter, name: str, parent: str | None, files: dict[str, str]) -> None:
    key = f"extract-{name}"
    target = fs_of(s.prepare(key, parent))
    for path, text in files.items():
        (target / path).parent.mkdir(parents=True, exist_ok=True)
        (target / path).write_text(text)
    s.commit(name, key)


@pytest.fixture(params=["copy", "overlay"])
def snapshotter(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Snapshotter]:
    cls = CopySnapshotter if request.param == "copy" else OverlaySnapshotter
    s = cls(tmp_path / "snapshots")
    yield s
    s.close()


# --- lifecycle (no mounting) -------------------------------------------------------------------------------


@pytest.mark.unit
def test_lifecycle(snapshotter: Snapshotter) -> None:
    s = snapshotter
    layer(s, "sha256:l1", None, {"a": "1"})
    assert s.stat("sha256:l1").kind == COMMITTED
    assert not s.exists("extract-sha256:l1")
    mounts = s.prepare("ctr", "sha256:l1", labels={"owner": "test"})
    assert mounts[0].readonly is False
    info = s.stat("ctr")
    assert (info.kind, info.parent, info.labels) == (ACTIVE, "sha256:l1", {"owner": "test"})
    s.view("v", "sha256:l1")
    assert s.stat("v").kind == VIEW and s.mounts("v")[0].readonly
    assert [i.key for i in s.walk()] == ["sha256:l1", "ctr", "v"]
    assert s.parents("ctr") == ["sha256:l1"]

    with pytest.raises(AlreadyExists):
        s.prepare("ctr", "sha256:l1")
    with pytest.raises(NotFound):
        s.prepare("x", "sha256:nope")
    with pytest.raises(InvalidArgument):
        s.prepare("x", "ctr")  # parents must be committed
    with pytest.raises(InvalidArgument):
        s.commit("sha256:v", "v")  # views do not commit
    with pytest.raises(Conflict):
        s.remove("sha256:l1")  # it has children
    with pytest.raises(NotFound):
        s.mounts("missing")

    s.remove("ctr")
    s.remove("v")
    s.remove("sha256:l1")
    assert s.walk() == []
    assert sorted(p for p in os.listdir(s.root) if p.isdigit()) == []


@pytest.mark.unit
def test_commit_race_reports_already_exists(snapshotter: Snapshotter) -> None:
    s = snapshotter
    s.prepare("one")
    s.prepare("two")
    s.commit("sha256:same", "one")
    with pytest.raises(AlreadyExists):
        s.commit("sha256:same", "two")
    s.remove("two")


@pytest.mark.unit
def test_metadata_persists_and_cleanup_removes_orphans(tmp_path: Path) -> None:
    s = CopySnapshotter(tmp_path / "snaps")
    layer(s, "sha256:l1", None, {"f": "x"})
    s.close()
    (tmp_path / "snaps/999/fs").mkdir(parents=True)  # as a crash between commit and rmtree leaves it
    s = CopySnapshotter(tmp_path / "snaps")
    assert s.stat("sha256:l1").kind == COMMITTED
    assert s.cleanup() == 1
    assert not (tmp_path / "snaps/999").exists()
    assert Path(s.fs_path(s.stat("sha256:l1").id), "f").read_text() == "x"
    assert s.usage("sha256:l1").inodes == 1
    s.close()


@pytest.mark.unit
def test_concurrent_prepares_from_threads(tmp_path: Path) -> None:
    s = CopySnapshotter(tmp_path / "snaps")
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            layer(s, f"sha256:{i}", None, {"f": str(i)})
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len({i.id for i in s.walk()}) == 8


# --- the copying snapshotter ---------------------------------------------------------------------------------


@pytest.mark.unit
def test_copy_prepare_copies_everything(tmp_path: Path) -> None:
    s = CopySnapshotter(tmp_path / "snaps")
    base = fs_of(s.prepare("k"))
    (base / "dir").mkdir(mode=0o750)
    (base / "dir/file").write_text("data")
    os.chmod(base / "dir/file", 0o4711)
    os.link(base / "dir/file", base / "hard")
    os.symlink("/dir/file", base / "sym")
    os.mkfifo(base / "fifo")
    os.setxattr(base / "dir/file", "user.k", b"v")
    os.utime(base / "dir/file", (1_000_000, 1_000_000))
    os.utime(base / "dir", (2_000_000, 2_000_000))
    s.commit("sha256:base", "k")
    mounts = s.prepare("child", "sha256:base")
    assert mounts == [Mount("bind", mounts[0].source, ("rbind", "rw"))]
    child = Path(mounts[0].source)
    assert (child / "dir/file").read_text() == "data"
    st = (child / "dir/file").stat()
    assert stat.S_IMODE(st.st_mode) == 0o4711 and st.st_mtime == 1_000_000
    assert (child / "dir").stat().st_mtime == 2_000_000
    assert stat.S_IMODE((child / "dir").stat().st_mode) == 0o750
    assert (child / "hard").stat().st_ino == st.st_ino
    assert os.readlink(child / "sym") == "/dir/file"
    assert stat.S_ISFIFO((child / "fifo").lstat().st_mode)
    assert os.getxattr(child / "dir/file", "user.k") == b"v"
    (child / "dir/file").write_text("changed")  # the parent is untouched
    assert (base / "dir/file").read_text() == "data"
    # A view copies nothing: it is the parent, read-only.
    assert s.view("v", "sha256:base") == [Mount("bind", str(base), ("rbind", "ro"))]


# --- overlay mount specs -------------------------------------------------------------------------------------


@pytest.mark.unit
def test_overlay_mount_specs(tmp_path: Path) -> None:
    s = OverlaySnapshotter(tmp_path / "snaps")
    layer(s, "sha256:a", None, {"a": "1"})
    layer(s, "sha256:b", "sha256:a", {"b": "2"})
    a, b = s.stat("sha256:a").id, s.stat("sha256:b").id
    root = str(s.root)
    assert s.prepare("first") == [Mount("bind", f"{root}/{s.stat('first').id}/fs", ("rbind", "rw"))]
    m = s.prepare("ctr", "sha256:b")[0]
    c = s.stat("ctr").id
    assert m.type == "overlay" and m.cwd is None
    assert m.option("lowerdir") == f"{root}/{b}/fs:{root}/{a}/fs"  # nearest first
    assert m.option("upperdir") == f"{root}/{c}/fs"
    assert m.option("workdir") == f"{root}/{c}/work"
    assert s.view("v1", "sha256:a") == [Mount("bind", f"{root}/{a}/fs", ("rbind", "ro"))]
    v2 = s.view("v2", "sha256:b")[0]
    assert v2.readonly and v2.option("upperdir") is None and v2.option("lowerdir") == f"{root}/{b}/fs:{root}/{a}/fs"
    assert s.mounts("sha256:b")[0].option("lowerdir") == v2.option("lowerdir")


@pytest.mark.unit
def test_overlay_many_layers_use_relative_paths(tmp_path: Path) -> None:
    deep = tmp_path / ("long-directory-name-" * 4) / "snapshots"
    s = OverlaySnapshotter(deep)
    parent = None
    for i in range(150):
        key = f"sha256:{i}"
        s.prepare(f"k{i}", parent)
        s.commit(key, f"k{i}")
        parent = key
    m = s.prepare("top", parent)[0]
    assert m.cwd == str(deep)
    assert len(",".join(m.options)) < os.sysconf("SC_PAGESIZE")
    lowers = (m.option("lowerdir") or "").split(":")
    assert len(lowers) == 150 and all(not p.startswith("/") for p in lowers)
    assert os.path.isdir(m.resolve(lowers[-1]))


# --- real mounts (root) -------------------------------------------------------------------------------------


@pytest.fixture
def overlay_root(tmp_path: Path) -> Path:
    root = tmp_path / "snapshots"
    if not overlay_supported(root):
        pytest.skip("overlayfs is not usable here (needs root and the overlay filesystem)")
    return root


@pytest.mark.root
def test_overlay_mounts_stack_layers(overlay_root: Path, tmp_path: Path) -> None:
    s = open_snapshotter(overlay_root)
    assert isinstance(s, OverlaySnapshotter)
    layer(s, "sha256:a", None, {"etc/a": "a", "etc/shared": "old"})
    layer(s, "sha256:b", "sha256:a", {"etc/b": "b", "etc/shared": "new"})
    target = tmp_path / "mnt"
    target.mkdir()
    mounts = s.prepare("ctr", "sha256:b")
    mount_all(mounts, target)
    try:
        assert sorted(os.listdir(target / "etc")) == ["a", "b", "shared"]
        assert (target / "etc/shared").read_text() == "new"
        (target / "etc/written").write_text("by the container")
    finally:
        unmount(target)
    assert (fs_of(mounts) / "etc/written").read_text() == "by the container"
    ro = tmp_path / "ro"
    ro.mkdir()
    mount_all(s.view("v", "sha256:b"), ro)
    try:
        with pytest.raises(OSError):
            (ro / "x").write_text("no")
    finally:
        unmount(ro)
    assert open_snapshotter(overlay_root, "auto").name == "overlayfs"  # the kind is remembered
    with pytest.raises(InvalidArgument):
        open_snapshotter(overlay_root, "copy")


@pytest.mark.root
def test_overlay_mount_with_150_layers(overlay_root: Path, tmp_path: Path) -> None:
    deep = overlay_root / ("long-directory-name-" * 4)
    s = OverlaySnapshotter(deep)
    parent = None
    for i in range(150):
        layer(s, f"sha256:{i}", parent, {f"layer{i}": str(i), "top": str(i)})
        parent = f"sha256:{i}"
    mounts = s.prepare("ctr", parent)
    assert mounts[0].cwd is not None
    absolute_len = len(str(deep)) * 150
    assert absolute_len > os.sysconf("SC_PAGESIZE")  # absolute paths would not have fitted
    cwd = os.getcwd()
    target = tmp_path / "mnt"
    target.mkdir()
    mount_all(mounts, target)
    try:
        assert os.getcwd() == cwd  # the process's cwd was never changed
        names = os.listdir(target)
        assert len(names) == 151 and (target / "top").read_text() == "149"
        assert (target / "layer0").read_text() == "0"
    finally:
        unmount(target)


def _volatile(target: Path) -> bool:
    """Whether the overlay on ``target`` is volatile (shown as fsync=volatile since Linux 6.6)."""
    return bool({"volatile", "fsync=volatile"} & set(_mount_options(target)))


def _mount_options(target: Path) -> list[str]:
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if fields[4] == str(target):
                return fields[-1].split(",")  # the superblock's options
    raise AssertionError(f"{target} is not mounted")


@pytest.mark.root
def test_volatile_overlay_can_be_mounted_again_in_the_same_boot(overlay_root: Path, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A --rm container's overlay skips syncing (volatile); the kernel's mark of that, which would
    refuse any later mount of the layer, is cleared when it was left in this boot (the boot id noted
    beside the layer), kept otherwise, with the mount refused in words."""
    from berth.snapshots import mount as mountmod

    s = open_snapshotter(overlay_root)
    layer(s, "sha256:a", None, {"a": "a"})
    mounts = s.prepare("ctr", "sha256:a")
    target = tmp_path / "mnt"
    target.mkdir()
    mount_all(mounts, target, volatile=True)
    try:
        assert _volatile(target)
        (target / "written").write_text("kept")
    finally:
        unmount(target)
    mark = Path(mounts[0].resolve(mounts[0].option("workdir") or "")) / "work/incompat/volatile"
    assert mark.is_dir()  # what the kernel leaves behind
    mount_all(mounts, target)  # same boot: the mark goes, the layer mounts (not volatile now)
    try:
        assert not _volatile(target)
        assert (target / "written").read_text() == "kept"
    finally:
        unmount(target)
    mount_all(mounts, target, volatile=True)
    unmount(target)
    monkeypatch.setattr(mountmod, "_boot_id", lambda: b"another-boot")  # as if the host had restarted since
    with pytest.raises(BerthError, match=r"mounted volatile .* has restarted since"):
        mount_all(mounts, target)
    assert mark.is_dir() and not os.path.ismount(target)


@pytest.mark.unit
def test_copy_snapshotter_when_overlay_is_not_wanted(tmp_path: Path) -> None:
    s = open_snapshotter(tmp_path / "snaps", "copy")
    assert isinstance(s, CopySnapshotter)
    assert (tmp_path / "snaps/kind").read_text().strip() == "copy"
    with pytest.raises(InvalidArgument):
        open_snapshotter(tmp_path / "other", "zfs")


@pytest.mark.root
def test_new_root_opened_by_many_processes_at_once(tmp_path: Path) -> None:
    """Sixteen processes opening one new snapshot root race to record its kind; none may fail."""
    root = str(tmp_path / "snapshots")
    pids = []
    for _ in range(16):
        pid = os.fork()
        if pid == 0:
            try:
                open_snapshotter(root, "auto").close()
                os._exit(0)
            except BaseException:
                os._exit(1)
        pids.append(pid)
    assert [os.waitstatus_to_exitcode(os.waitpid(p, 0)[1]) for p in pids] == [0] * 16


# --- adopt: a parent given after the tree is filled ---------------------------------------------------------


@pytest.mark.unit
def test_adopt_gives_an_overlay_snapshot_its_parent_late(snapshotter: Snapshotter) -> None:
    s = snapshotter
    layer(s, "sha256:l1", None, {"a": "1"})
    target = fs_of(s.prepare("early", None))
    (target / "b").write_text("2")
    if not s.independent_layers:
        with pytest.raises(Unsupported):
            s.adopt("early", "sha256:l1")
        return
    with pytest.raises(InvalidArgument, match="not a committed"):
        s.adopt("early", "early")
    s.adopt("early", "sha256:l1")
    with pytest.raises(InvalidArgument, match="without a parent"):
        s.adopt("early", "sha256:l1")  # it has one now
    s.commit("sha256:l2", "early")
    assert s.parents("sha256:l2") == ["sha256:l1"]
    lowers = (s.mounts("sha256:l2")[0].option("lowerdir") or "").split(":")
    assert len(lowers) == 2 and lowers[1].endswith(f"{s.stat('sha256:l1').id}/fs")
    with pytest.raises(Conflict):
        s.remove("sha256:l1")  # now a parent


@pytest.mark.root
def test_snapshot_root_spreads_its_subdirectories(tmp_path: Path) -> None:
    """ext4's top-directory flag on the snapshots root (see spread_subdirectories)."""
    s = OverlaySnapshotter(tmp_path / "snapshots")
    try:
        attrs = subprocess.run(["lsattr", "-d", str(s.root)], capture_output=True, text=True)
        if attrs.returncode != 0:
            pytest.skip(f"lsattr cannot read flags here: {attrs.stderr.strip()}")
        assert "T" in attrs.stdout.split()[0]
    finally:
        s.close()
