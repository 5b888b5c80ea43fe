"""berth.images.layer: applying tar changesets — file types, metadata, whiteouts, hostile archives."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import stat
import tarfile
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
from img_helpers import compress, entry, make_tar

from berth.errors import InvalidArgument
from berth.images.layer import ApplyResult, apply_layer, apply_to_mounts, clean_name, detect_compression
from berth.snapshots import Mount
from berth.snapshots.mount import mount_all, unmount

ROOT = os.geteuid() == 0
# security.capability v2 with cap_net_raw (bit 13) permitted and effective.
CAP_NET_RAW = bytes.fromhex("01000002" "00200000" "00000000" "00000000" "00000000")


@pytest.fixture
def dest(tmp_path: Path) -> Path:
    d = tmp_path / "rootfs"
    d.mkdir()
    return d


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A directory beside the rootfs that hostile layers try to reach."""
    d = tmp_path / "outside"
    d.mkdir()
    (d / "secret").write_text("host secret\n")
    return d


def apply(dest: Path, entries: list[Any], compression: str | None = None, **kw: Any) -> ApplyResult:
    return apply_layer(io.BytesIO(compress(make_tar(entries), compression)), dest, **kw)


# --- formats and the DiffID ----------------------------------------------------------------------------


@pytest.mark.unit
@pytest.mark.parametrize("compression", [None, "gzip", "zstd"])
def test_file_types_and_diff_id(dest: Path, compression: str | None) -> None:
    raw = make_tar([
        entry("dir", "etc", mode=0o755),
        entry("file", "etc/hostname", b"berth\n", mode=0o640),
        entry("file", "usr/bin/tool", b"#!/bin/sh\n", mode=0o755),  # parents not listed
        entry("symlink", "etc/alias", "hostname"),
        entry("symlink", "abs", "/etc/hostname"),
        entry("hardlink", "etc/hostname.bak", "etc/hostname"),
        entry("fifo", "run/pipe", mode=0o600),
    ])
    blob = compress(raw, compression)
    assert detect_compression(blob) == compression
    result = apply_layer(io.BytesIO(blob), dest)
    assert result.diff_id.hex == hashlib.sha256(raw).hexdigest()
    assert result.size == len(raw)
    assert result.compression == compression
    assert (dest / "etc/hostname").read_bytes() == b"berth\n"
    assert stat.S_IMODE((dest / "etc/hostname").stat().st_mode) == 0o640
    assert stat.S_IMODE((dest / "usr/bin/tool").stat().st_mode) == 0o755
    assert stat.S_IMODE((dest / "usr").stat().st_mode) == 0o755
    assert os.readlink(dest / "etc/alias") == "hostname"
    assert os.readlink(dest / "abs") == "/etc/hostname"
    assert (dest / "etc/hostname.bak").stat().st_ino == (dest / "etc/hostname").stat().st_ino
    assert stat.S_ISFIFO((dest / "run/pipe").lstat().st_mode)


@pytest.mark.unit
def test_diff_id_covers_the_whole_stream(dest: Path) -> None:
    raw = make_tar([entry("file", "a", b"x")], trailer=b"\0" * 4096)
    result = apply_layer(io.BytesIO(gzip.compress(raw)), dest)
    assert result.diff_id.hex == hashlib.sha256(raw).hexdigest()
    assert result.size == len(raw)


@pytest.mark.unit
def test_missing_end_of_archive_is_tolerated(dest: Path) -> None:
    """umoci (like any Go archive/tar writer not closed) ends a layer right after the last data byte."""
    cut = make_tar([entry("dir", "d"), entry("file", "d/a", b"xyz")])[: 2 * 512 + 3]
    result = apply_layer(io.BytesIO(gzip.compress(cut)), dest)
    assert (dest / "d/a").read_bytes() == b"xyz"
    assert result.diff_id.hex == hashlib.sha256(cut).hexdigest()


@pytest.mark.unit
def test_truncated_data_is_an_error(dest: Path) -> None:
    cut = make_tar([entry("file", "a", b"x" * 5000)])[: 2 * 512 + 1000]
    with pytest.raises(InvalidArgument):
        apply_layer(io.BytesIO(cut), dest)


@pytest.mark.unit
def test_times_files_and_directories(dest: Path) -> None:
    apply(dest, [
        entry("dir", "d", mtime=1_000_000_000),
        entry("file", "d/f", b"1", mtime=1_100_000_000),
        entry("dir", "d/sub", mtime=1_200_000_000),
        entry("file", "d/sub/g", b"2", mtime=1_300_000_000),
        entry("symlink", "d/l", "f", mtime=1_400_000_000),
    ])
    assert (dest / "d").stat().st_mtime == 1_000_000_000  # set after its children were created
    assert (dest / "d/f").stat().st_mtime == 1_100_000_000
    assert (dest / "d/sub").stat().st_mtime == 1_200_000_000
    assert (dest / "d/sub/g").stat().st_mtime == 1_300_000_000
    assert (dest / "d/l").lstat().st_mtime == 1_400_000_000


@pytest.mark.unit
def test_read_only_directory_gets_its_mode_last(dest: Path) -> None:
    apply(dest, [entry("dir", "ro", mode=0o555), entry("file", "ro/f", b"x", mode=0o444)], same_owner=False)
    assert stat.S_IMODE((dest / "ro").stat().st_mode) == 0o555
    assert (dest / "ro/f").read_bytes() == b"x"


@pytest.mark.unit
def test_replacing_entries(dest: Path) -> None:
    apply(dest, [entry("dir", "x"), entry("file", "x/in", b"1"), entry("file", "y", b"2"), entry("symlink", "z", "y")])
    apply(dest, [entry("file", "x", b"now a file"), entry("dir", "y"), entry("file", "z", b"not a link")])
    assert (dest / "x").read_bytes() == b"now a file"
    assert (dest / "y").is_dir()
    assert not (dest / "z").is_symlink() and (dest / "z").read_bytes() == b"not a link"


@pytest.mark.unit
def test_streaming_keeps_memory_small(dest: Path) -> None:
    """A 48 MiB file goes to disk in chunks: the layer is never held in memory."""
    size = 48 << 20
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tf:
        info = tarfile.TarInfo("big")
        info.size = size
        tf.addfile(info, io.BytesIO(bytes(size)))
    blob = gzip.compress(raw.getvalue(), compresslevel=1)
    del raw
    tracemalloc.start()
    try:
        apply_layer(io.BytesIO(blob), dest)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (dest / "big").stat().st_size == size
    assert peak < 20 << 20, f"peak {peak} bytes"  # bounded buffers, not the 48 MiB file


@pytest.mark.unit
@pytest.mark.parametrize("blob", [b"not a tar at all" * 100, gzip.compress(b"x" * 5000)[:-20],
                                  b"\x28\xb5\x2f\xfd" + b"junk"])
def test_corrupt_streams_are_invalid(dest: Path, blob: bytes) -> None:
    with pytest.raises(InvalidArgument):
        apply_layer(io.BytesIO(blob), dest)


# --- ownership, modes, xattrs, devices (root) ------------------------------------------------------------


@pytest.mark.root
def test_owner_setuid_and_capabilities(dest: Path) -> None:
    apply(dest, [
        entry("dir", "bin", uid=0, gid=0),
        entry("file", "bin/su", b"elf", mode=0o4755, uid=0, gid=0),
        entry("file", "bin/ping", b"elf", mode=0o755, uid=1000, gid=1000,
              xattrs={"security.capability": CAP_NET_RAW, "user.note": b"hello"}),
        entry("file", "home/app/x", b"", mode=0o2640, uid=1000, gid=2000),
        entry("dir", "tmp", mode=0o1777),
    ], "gzip")
    su = (dest / "bin/su").stat()
    assert stat.S_IMODE(su.st_mode) == 0o4755
    ping = (dest / "bin/ping").stat()
    assert (ping.st_uid, ping.st_gid) == (1000, 1000)
    assert os.getxattr(dest / "bin/ping", "security.capability") == CAP_NET_RAW
    assert os.getxattr(dest / "bin/ping", "user.note") == b"hello"
    x = (dest / "home/app/x").stat()
    assert (x.st_uid, x.st_gid, stat.S_IMODE(x.st_mode)) == (1000, 2000, 0o2640)
    assert stat.S_IMODE((dest / "tmp").stat().st_mode) == 0o1777


@pytest.mark.root
def test_device_nodes(dest: Path) -> None:
    apply(dest, [entry("char", "dev/null", dev=(1, 3), mode=0o666),
                 entry("block", "dev/loop9", dev=(7, 9), mode=0o660)])
    null = (dest / "dev/null").lstat()
    assert stat.S_ISCHR(null.st_mode) and os.major(null.st_rdev) == 1 and os.minor(null.st_rdev) == 3
    assert stat.S_IMODE(null.st_mode) == 0o666
    loop = (dest / "dev/loop9").lstat()
    assert stat.S_ISBLK(loop.st_mode) and os.minor(loop.st_rdev) == 9


@pytest.mark.root
def test_device_nodes_are_skipped_without_privilege(dest: Path) -> None:
    """As an unprivileged user: devices are skipped and reported, the rest (a fifo too) applied."""
    os.chown(dest, 65534, 65534)
    blob = make_tar([entry("char", "dev/null", dev=(1, 3)), entry("fifo", "pipe"), entry("file", "f", b"ok")])
    dir_fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY)
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child drops to nobody; the rootfs is reached through its descriptor
        try:
            os.close(rfd)
            os.setgroups([])
            os.setresgid(65534, 65534, 65534)
            os.setresuid(65534, 65534, 65534)
            result = apply_layer(io.BytesIO(blob), f"/proc/self/fd/{dir_fd}")
            os.write(wfd, "\n".join(result.skipped).encode())
        finally:
            os._exit(0)
    os.close(wfd)
    os.close(dir_fd)
    with os.fdopen(rfd, "rb") as r:
        out = r.read().decode()
    os.waitpid(pid, 0)
    assert "dev/null: device node needs privilege" in out
    assert not (dest / "dev/null").exists()
    assert stat.S_ISFIFO((dest / "pipe").lstat().st_mode)
    assert (dest / "f").read_bytes() == b"ok"
    assert (dest / "f").stat().st_uid == 65534


@pytest.mark.root
def test_overlay_private_xattrs_are_dropped(dest: Path) -> None:
    private = {"trusted.overlay.redirect": b"/etc", "trusted.overlay.opaque": b"y"}
    result = apply(dest, [entry("dir", "d", xattrs=private)], overlay=True)
    assert all("reserved for overlayfs" in s for s in result.skipped) and len(result.skipped) == 2
    assert "trusted.overlay.redirect" not in os.listxattr(dest / "d")


# --- whiteouts -----------------------------------------------------------------------------------------


def base_layer(dest: Path) -> None:
    apply(dest, [
        entry("file", "file1", b"1"),
        entry("file", "a/file2", b"2"),
        entry("file", "b/deep/x", b"3"),
        entry("file", "c/file3", b"4"),
        entry("file", "bin/tool", b"5"),
        entry("file", "bin/tools/one", b"6"),
    ])


@pytest.mark.unit
def test_whiteouts_delete_lower_entries(dest: Path) -> None:
    base_layer(dest)
    apply(dest, [entry("whiteout", "file1"), entry("whiteout", "a/file2"), entry("whiteout", "b"),
                 entry("file", "file4", b"new"), entry("whiteout", "nonexistent/thing")])
    assert sorted(p.name for p in dest.iterdir()) == ["a", "bin", "c", "file4"]
    assert list((dest / "a").iterdir()) == []
    assert (dest / "c/file3").exists()
    assert not (dest / "nonexistent").exists()  # a whiteout never creates directories


@pytest.mark.unit
@pytest.mark.parametrize("opaque_first", [True, False])
def test_opaque_directory_hides_only_lower_content(dest: Path, opaque_first: bool) -> None:
    base_layer(dest)
    new = [entry("dir", "bin"), entry("file", "bin/fresh", b"7"), entry("file", "bin/tools/two", b"8")]
    entries = [entry("opaque", "bin"), *new] if opaque_first else [*new, entry("opaque", "bin")]
    apply(dest, entries)
    assert sorted(str(p.relative_to(dest)) for p in (dest / "bin").rglob("*")) == [
        "bin/fresh", "bin/tools", "bin/tools/two"]


@pytest.mark.unit
def test_whiteout_never_hides_its_own_layer(dest: Path) -> None:
    apply(dest, [entry("file", "kept", b"1"), entry("whiteout", "kept")])
    assert (dest / "kept").read_bytes() == b"1"


@pytest.mark.unit
@pytest.mark.parametrize("whiteout_first", [True, False])
def test_directory_deleted_and_recreated_in_one_layer(dest: Path, whiteout_first: bool) -> None:
    base_layer(dest)
    new = [entry("dir", "bin"), entry("file", "bin/fresh", b"7")]
    apply(dest, [entry("whiteout", "bin"), *new] if whiteout_first else [*new, entry("whiteout", "bin")])
    assert os.listdir(dest / "bin") == ["fresh"]


@pytest.mark.root
def test_overlay_whiteouts_are_native(tmp_path: Path) -> None:
    lower, upper = tmp_path / "lower", tmp_path / "upper"
    lower.mkdir()
    upper.mkdir()
    base_layer(lower)
    os.chown(lower / "c", 123, 456)
    result = apply(upper, [entry("whiteout", "file1"), entry("whiteout", "c/file3"), entry("opaque", "bin"),
                           entry("file", "bin/fresh", b"x"), entry("whiteout", "not/in/lower")],
                   overlay=True, lowers=[lower])
    assert not result.skipped
    wh = (upper / "file1").lstat()
    assert stat.S_ISCHR(wh.st_mode) and wh.st_rdev == 0
    assert stat.S_ISCHR((upper / "c/file3").lstat().st_mode)
    # c/ was not listed: made in the upper with the lower directory's owner, so overlay shows it unchanged.
    assert ((upper / "c").stat().st_uid, (upper / "c").stat().st_gid) == (123, 456)
    assert os.getxattr(upper / "bin", "trusted.overlay.opaque") == b"y"
    assert not (upper / "not").exists()
    assert (lower / "file1").exists()  # lower layers are never written


@pytest.mark.root
def test_overlay_opaque_root(tmp_path: Path) -> None:
    """overlayfs ignores the opaque xattr on its root; an opaque root layer still hides everything below."""
    lower, upper, work, merged = (tmp_path / d for d in ("lower", "upper", "work", "merged"))
    for d in (lower, upper, work, merged):
        d.mkdir()
    base_layer(lower)
    apply(upper, [entry("file", "new", b"n"), entry("file", "bin/fresh", b"f"), entry("opaque", "")],
          overlay=True, lowers=[lower])
    mount_all([Mount("overlay", "overlay", (f"lowerdir={lower}", f"upperdir={upper}", f"workdir={work}"))], merged)
    try:
        assert sorted(os.listdir(merged)) == ["bin", "new"]
        assert os.listdir(merged / "bin") == ["fresh"]
    finally:
        unmount(merged)


@pytest.mark.root
def test_overlay_hardlink_to_a_lower_file_copies_it_up(tmp_path: Path) -> None:
    lower, upper = tmp_path / "lower", tmp_path / "upper"
    lower.mkdir()
    upper.mkdir()
    apply(lower, [entry("file", "usr/bin/x", b"lower data", mode=0o4755, uid=7, gid=8)])
    apply(upper, [entry("hardlink", "usr/bin/y", "usr/bin/x")], overlay=True, lowers=[lower])
    x, y = (upper / "usr/bin/x").stat(), (upper / "usr/bin/y").stat()
    assert x.st_ino == y.st_ino and x.st_nlink == 2
    assert (upper / "usr/bin/x").read_bytes() == b"lower data"
    assert (stat.S_IMODE(x.st_mode), x.st_uid, x.st_gid) == (0o4755, 7, 8)
    assert (lower / "usr/bin/x").stat().st_nlink == 1


@pytest.mark.root
def test_apply_to_overlay_mounts_resolves_relative_paths(tmp_path: Path) -> None:
    for d in ("1/fs", "2/fs", "2/work"):
        (tmp_path / d).mkdir(parents=True)
    (tmp_path / "1/fs/old").write_text("x")
    mount = Mount("overlay", "overlay", ("lowerdir=1/fs", "upperdir=2/fs", "workdir=2/work"), cwd=str(tmp_path))
    apply_to_mounts(io.BytesIO(make_tar([entry("whiteout", "old"), entry("file", "new", b"y")])), [mount])
    assert stat.S_ISCHR((tmp_path / "2/fs/old").lstat().st_mode)
    assert (tmp_path / "2/fs/new").read_text() == "y"
    with pytest.raises(InvalidArgument):
        apply_to_mounts(io.BytesIO(make_tar([])), [Mount("bind", str(tmp_path), ("rbind", "ro"))])


# --- hostile archives ----------------------------------------------------------------------------------


def nothing_escaped(tmp_path: Path, outside: Path) -> None:
    assert sorted(p.name for p in outside.iterdir()) == ["secret"]
    assert (outside / "secret").read_text() == "host secret\n"
    assert (outside / "secret").stat().st_nlink == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["outside", "rootfs"]


@pytest.mark.unit
@pytest.mark.parametrize("name", ["../escape", "a/../../escape", "./../outside/secret", "../../../../etc/berth-test"])
def test_dotdot_cannot_climb_out(dest: Path, outside: Path, tmp_path: Path, name: str) -> None:
    with pytest.raises(InvalidArgument, match="climbs out"):
        apply(dest, [entry("file", name, b"pwned")])
    nothing_escaped(tmp_path, outside)
    assert clean_name("a/b/../c") == "a/c"


@pytest.mark.unit
def test_absolute_paths_stay_inside(dest: Path, outside: Path, tmp_path: Path) -> None:
    apply(dest, [entry("file", f"{outside}/secret", b"pwned"), entry("file", "/etc/berth-abs-test", b"inside")])
    assert (dest / str(outside).lstrip("/") / "secret").read_bytes() == b"pwned"
    assert (dest / "etc/berth-abs-test").read_bytes() == b"inside"
    assert not Path("/etc/berth-abs-test").exists()
    nothing_escaped(tmp_path, outside)


@pytest.mark.unit
@pytest.mark.parametrize("target", ["absolute", "relative"])
def test_symlink_then_file_through_it(dest: Path, outside: Path, tmp_path: Path, target: str) -> None:
    link = str(outside) if target == "absolute" else "../outside"
    with pytest.raises(InvalidArgument, match="symlink"):
        apply(dest, [entry("symlink", "evil", link), entry("file", "evil/pwned", b"pwned")])
    with pytest.raises(InvalidArgument, match="symlink"):
        apply(dest, [entry("dir", "evil/sub")])  # also for a directory, and in a later layer
    with pytest.raises(InvalidArgument, match="symlink"):
        apply(dest, [entry("whiteout", "evil/secret")])
    nothing_escaped(tmp_path, outside)


@pytest.mark.unit
def test_file_replacing_a_symlink_does_not_write_through_it(dest: Path, outside: Path, tmp_path: Path) -> None:
    apply(dest, [entry("symlink", "link", str(outside / "secret"))])
    apply(dest, [entry("file", "link", b"replaced"), entry("symlink", "dirlink", str(outside))])
    apply(dest, [entry("dir", "dirlink"), entry("file", "dirlink/x", b"inside")])
    assert (dest / "link").read_bytes() == b"replaced"
    assert (dest / "dirlink/x").read_bytes() == b"inside"
    nothing_escaped(tmp_path, outside)


@pytest.mark.unit
@pytest.mark.parametrize("linkname", ["../outside/secret", "OUTSIDE/secret", "viasym/secret"])
def test_hardlinks_cannot_reach_outside(dest: Path, outside: Path, tmp_path: Path, linkname: str) -> None:
    linkname = linkname.replace("OUTSIDE", str(outside))  # absolute: read as inside the root, where it is absent
    with pytest.raises(InvalidArgument):
        apply(dest, [entry("symlink", "viasym", str(outside)), entry("hardlink", "stolen", linkname)])
    assert not (dest / "stolen").exists()
    nothing_escaped(tmp_path, outside)


@pytest.mark.unit
def test_hardlink_replacing_its_own_target_directory(dest: Path) -> None:
    with pytest.raises(InvalidArgument, match="layer entry 'x'"):
        apply(dest, [entry("dir", "x"), entry("file", "x/y", b"1"), entry("hardlink", "x", "x/y")])


@pytest.mark.unit
def test_hardlink_to_a_symlink_links_the_symlink(dest: Path, outside: Path, tmp_path: Path) -> None:
    apply(dest, [entry("symlink", "s", str(outside / "secret")), entry("hardlink", "h", "s")])
    assert os.readlink(dest / "h") == str(outside / "secret")
    nothing_escaped(tmp_path, outside)


@pytest.mark.unit
def test_symlink_loops(dest: Path, outside: Path, tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="symlink"):
        apply(dest, [entry("symlink", "a", "b"), entry("symlink", "b", "a"), entry("symlink", "self", "self"),
                     entry("file", "a/x", b"loop")])
    with pytest.raises(InvalidArgument, match="symlink"):
        apply(dest, [entry("file", "self/x", b"loop")])
    assert os.readlink(dest / "self") == "self"
    nothing_escaped(tmp_path, outside)


@pytest.mark.unit
@pytest.mark.parametrize("name", ["x" * 256, "/".join(["d" * 200] * 21), "ok/" + "y" * 300 + "/z"])
def test_over_long_names(dest: Path, outside: Path, tmp_path: Path, name: str) -> None:
    with pytest.raises(InvalidArgument, match="longer than"):
        apply(dest, [entry("file", name, b"x")])
    with pytest.raises(InvalidArgument, match="too long"):
        apply(dest, [entry("symlink", "s", "t" * 5000)])
    nothing_escaped(tmp_path, outside)


@pytest.mark.unit
def test_huge_extension_header_is_refused(dest: Path) -> None:
    """A PAX header claiming gigabytes would be read into memory whole: refused at the header."""
    raw = bytearray(make_tar([entry("file", "f", b"x", xattrs={"user.a": b"b"})]))
    header = tarfile.TarInfo("././@PaxHeader")
    header.type = tarfile.XHDTYPE
    header.size = 4 << 30
    forged = header.tobuf(tarfile.USTAR_FORMAT)
    with pytest.raises(InvalidArgument):
        apply_layer(io.BytesIO(forged + bytes(raw)), dest)


@pytest.mark.unit
def test_errors_name_the_entry(dest: Path) -> None:
    with pytest.raises(InvalidArgument) as info:
        apply(dest, [entry("hardlink", "x", "missing")])
    assert "missing" in str(info.value)
