"""berth.images.diff: the changes of a tree as a layer, which applied to the parent gives the tree back."""

from __future__ import annotations

import hashlib
import io
import os
import stat
import tarfile
from pathlib import Path

import pytest
from img_helpers import entry, make_tar

from berth.images.diff import write_diff
from berth.images.layer import apply_layer
from berth.snapshots.copying import copy_tree
from berth.snapshots.mount import mount_all, overlay_supported, unmount
from berth.snapshots.overlay import OverlaySnapshotter


def tree(root: Path) -> dict[str, tuple[object, ...]]:
    """Everything a layer records about a tree, except directory mtimes."""
    result: dict[str, tuple[object, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            rel = str(p.relative_to(root))
            if stat.S_ISLNK(st.st_mode):
                result[rel] = ("link", os.readlink(p), st.st_uid)
            elif stat.S_ISDIR(st.st_mode):
                result[rel] = ("dir", st.st_mode, st.st_uid, st.st_gid)
            elif stat.S_ISREG(st.st_mode):
                result[rel] = ("file", st.st_mode, st.st_uid, hashlib.sha256(p.read_bytes()).hexdigest(),
                               int(st.st_mtime), sorted(os.listxattr(p)))
            else:
                result[rel] = ("node", st.st_mode, st.st_rdev)
    return result


BASE = [
    entry("dir", "etc"), entry("file", "etc/keep", b"same"), entry("file", "etc/change", b"old"),
    entry("file", "etc/chmod", b"x", mode=0o644), entry("dir", "gone"), entry("file", "gone/deep", b"d"),
    entry("file", "rm-me", b"r"), entry("symlink", "link", "etc/keep"), entry("dir", "untouched"),
    entry("file", "untouched/f", b"u"),
]


def change(root: Path) -> None:
    (root / "etc/change").write_bytes(b"new content")
    os.chmod(root / "etc/chmod", 0o600)
    import shutil

    shutil.rmtree(root / "gone")
    (root / "rm-me").unlink()
    (root / "link").unlink()
    (root / "link").symlink_to("etc/change")
    (root / "new/dir").mkdir(parents=True)
    (root / "new/dir/file").write_bytes(b"added")
    os.link(root / "new/dir/file", root / "new/hard")


@pytest.mark.unit
def test_diff_of_full_trees_round_trips(tmp_path: Path) -> None:
    lower, upper, check = tmp_path / "lower", tmp_path / "upper", tmp_path / "check"
    for d in (lower, upper, check):
        d.mkdir()
    apply_layer(io.BytesIO(make_tar(BASE)), lower)
    copy_tree(lower, upper)
    copy_tree(lower, check)
    change(upper)
    out = io.BytesIO()
    result = write_diff(out, upper, lower)
    assert result.diff_id.hex == hashlib.sha256(out.getvalue()).hexdigest()
    with tarfile.open(fileobj=io.BytesIO(out.getvalue())) as tf:
        names = tf.getnames()
        hard = tf.getmember("new/hard")
    assert ".wh.gone" in names and ".wh.rm-me" in names and "untouched" not in names
    assert "etc/keep" not in names and "etc" in names  # a parent of changes is written, its unchanged files not
    assert hard.islnk() and hard.linkname == "new/dir/file"
    assert names.index(".wh.gone") < names.index("etc")  # whiteouts before their siblings
    apply_layer(io.BytesIO(out.getvalue()), check)
    assert tree(check) == tree(upper)
    # No change, no entries.
    assert write_diff(io.BytesIO(), upper, upper).entries == 0


@pytest.mark.root
def test_diff_of_an_overlay_upper(tmp_path: Path) -> None:
    if not overlay_supported(tmp_path / "snaps"):
        pytest.skip("overlayfs is not usable here")
    s = OverlaySnapshotter(tmp_path / "snaps")
    base = s.prepare("base")
    apply_layer(io.BytesIO(make_tar(BASE)), base[0].source)
    s.commit("sha256:base", "base")
    mounts = s.prepare("ctr", "sha256:base")
    merged = tmp_path / "merged"
    merged.mkdir()
    mount_all(mounts, merged)
    try:
        change(merged)
        import shutil

        # Without redirect_dir, overlay refuses to rename a lower directory (EXDEV): mv copies it.
        shutil.move(merged / "untouched", merged / "untouched2")
        shutil.rmtree(merged / "etc")
        (merged / "etc").mkdir()  # recreated: overlay marks it opaque
        (merged / "etc/only").write_text("1")
        expected = tree(merged)
    finally:
        unmount(merged)
    out = io.BytesIO()
    write_diff(out, mounts[0].option("upperdir") or "", overlay=True)
    with tarfile.open(fileobj=io.BytesIO(out.getvalue())) as tf:
        names = tf.getnames()
    assert "etc/.wh..wh..opq" in names and ".wh.gone" in names
    check = tmp_path / "check"
    check.mkdir()
    copy_tree(s.fs_path(s.stat("sha256:base").id), check)
    apply_layer(io.BytesIO(out.getvalue()), check)
    assert tree(check) == expected
