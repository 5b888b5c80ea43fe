"""Computing a layer: what a snapshot changed over its parent, as a tar changeset (for commit and build).

Two sources of changes:

- an **overlay upper directory** (``overlay=True``): everything in it is a change; a 0:0 character
  device becomes a ``.wh.<name>`` whiteout and a directory with ``trusted.overlay.opaque=y`` is written
  followed by ``.wh..wh..opq``;
- a **full tree against its parent's full tree** (the copying snapshotter): an entry is written when it
  is new or differs in type, mode, owner, size, modification time, device number, symlink target or
  xattrs (the comparison Docker's ``changes`` makes, content unread); an entry of the parent missing
  from the tree becomes a whiteout, listed before its siblings as layer.md asks.

Parent directories of a change are written too, so that the layer recreates them with their metadata.
Files that are hardlinked in the tree are written once and linked after. Times are truncated to
seconds and owner names left out, as Docker does, so equal trees give equal layers. The walk never
follows symlinks. The result is the uncompressed tar, written to ``out``; its DiffID is returned.
"""

from __future__ import annotations

import errno
import os
import stat
import tarfile
from dataclasses import dataclass
from typing import Any, BinaryIO

from berth.images.layer import OVERLAY_OPAQUE_XATTR, WHITEOUT_OPAQUE, WHITEOUT_PREFIX
from berth.oci.digest import Digest, Digester

_PRIVATE_XATTRS = ("trusted.overlay.", "user.overlay.")
_O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(frozen=True)
class DiffResult:
    diff_id: Digest
    size: int
    #: Entries written (whiteouts included).
    entries: int


class _Out:
    def __init__(self, out: BinaryIO) -> None:
        self._out = out
        self.digester = Digester()

    def write(self, data: bytes) -> int:
        self._out.write(data)
        self.digester.update(data)
        return len(data)


def write_diff(out: BinaryIO, upper: str | os.PathLike[str], lower: str | os.PathLike[str] | None = None, *,
               overlay: bool = False) -> DiffResult:
    """Write the changes of ``upper`` (over ``lower``, or as an overlay upper dir) to ``out`` as a tar."""
    sink = _Out(out)
    tf = tarfile.open(fileobj=sink, mode="w|", format=tarfile.PAX_FORMAT)  # type: ignore[call-overload]  # noqa: SIM115
    writer = _DiffWriter(tf, overlay)
    ufd = os.open(upper, _O_DIR)
    lfd = os.open(lower, _O_DIR) if lower is not None else None
    try:
        writer.walk("", ufd, lfd)
    except BaseException:
        tf.fileobj.closed = True  # no end-of-archive after a failure
        tf.closed = True
        raise
    finally:
        os.close(ufd)
        if lfd is not None:
            os.close(lfd)
    tf.close()
    return DiffResult(sink.digester.finish(), sink.digester.size, writer.entries)


class _DiffWriter:
    def __init__(self, tf: tarfile.TarFile, overlay: bool) -> None:
        self.tf = tf
        self.overlay = overlay
        self.entries = 0
        self.links: dict[tuple[int, int], str] = {}
        #: Directories whose header is written only if something below them changes.
        self.pending: list[tuple[str, int]] = []

    def walk(self, rel: str, ufd: int, lfd: int | None) -> None:
        unames = sorted(os.listdir(ufd))
        lnames = set(os.listdir(lfd)) if lfd is not None else set()
        for name in sorted(lnames.difference(unames)):
            self._emit_whiteout(_join(rel, name))
        for name in unames:
            path = _join(rel, name)
            ust = os.stat(name, dir_fd=ufd, follow_symlinks=False)
            lst = os.stat(name, dir_fd=lfd, follow_symlinks=False) if name in lnames and lfd is not None else None
            if self.overlay and stat.S_ISCHR(ust.st_mode) and ust.st_rdev == 0:
                self._emit_whiteout(path)
                continue
            if stat.S_ISSOCK(ust.st_mode):
                continue  # sockets are not part of images
            if stat.S_ISDIR(ust.st_mode):
                cfd = os.open(name, _O_DIR, dir_fd=ufd)
                try:
                    opaque = self.overlay and _getxattr(cfd, OVERLAY_OPAQUE_XATTR) == b"y"
                    same = lst is not None and stat.S_ISDIR(lst.st_mode) and not self.overlay and \
                        _same(ust, lst) and _xattrs(cfd) == _xattrs_at(lfd, name)
                    clfd = os.open(name, _O_DIR, dir_fd=lfd) if same and lfd is not None else None
                    try:
                        if same:
                            self.pending.append((path, cfd))
                        else:
                            self._emit(path, ust, cfd, name, ufd)
                            if opaque:
                                self._emit_marker(_join(path, WHITEOUT_OPAQUE))
                        depth = len(self.pending)
                        self.walk(path, cfd, clfd)
                        del self.pending[depth - 1 if same else depth:]
                    finally:
                        if clfd is not None:
                            os.close(clfd)
                finally:
                    os.close(cfd)
                continue
            if lst is not None and not self.overlay and _same(ust, lst) and _same_content(ufd, lfd, name, ust):
                continue
            self._emit(path, ust, None, name, ufd)

    # -- writing ------------------------------------------------------------------------------------------

    def _flush_parents(self) -> None:
        pending, self.pending = self.pending, []
        for path, fd in pending:
            self._emit(path, os.fstat(fd), fd, None, None)

    def _emit_whiteout(self, path: str) -> None:
        head, _, base = path.rpartition("/")
        self._emit_marker(_join(head, WHITEOUT_PREFIX + base))

    def _emit_marker(self, path: str) -> None:
        self._flush_parents()
        info = tarfile.TarInfo(path)
        info.mode = 0o644
        self.tf.addfile(info)
        self.entries += 1

    def _emit(self, path: str, st: os.stat_result, fd: int | None, name: str | None, dir_fd: int | None) -> None:
        self._flush_parents()
        info = tarfile.TarInfo(path)
        info.mode = stat.S_IMODE(st.st_mode)
        info.uid, info.gid = st.st_uid, st.st_gid
        info.mtime = st.st_mtime_ns // 1_000_000_000
        mode = st.st_mode
        xattr_src: Any = fd if fd is not None else f"/proc/self/fd/{dir_fd}/{name}"
        follow = fd is not None
        if stat.S_ISREG(mode) and st.st_nlink > 1:
            first = self.links.get((st.st_dev, st.st_ino))
            if first is not None:
                info.type = tarfile.LNKTYPE
                info.linkname = first
                self.tf.addfile(info)
                self.entries += 1
                return
            self.links[(st.st_dev, st.st_ino)] = path
        if stat.S_ISDIR(mode):
            info.type = tarfile.DIRTYPE
        elif stat.S_ISLNK(mode):
            info.type = tarfile.SYMTYPE
            assert name is not None
            info.linkname = os.readlink(name, dir_fd=dir_fd)
        elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
            info.type = tarfile.CHRTYPE if stat.S_ISCHR(mode) else tarfile.BLKTYPE
            info.devmajor, info.devminor = os.major(st.st_rdev), os.minor(st.st_rdev)
        elif stat.S_ISFIFO(mode):
            info.type = tarfile.FIFOTYPE
        if not stat.S_ISLNK(mode):
            xattrs = _xattrs(xattr_src, follow=follow)
            if xattrs:
                info.pax_headers = {f"SCHILY.xattr.{k}": v.decode("utf-8", "surrogateescape")
                                    for k, v in sorted(xattrs.items())}
        if stat.S_ISREG(mode):
            info.size = st.st_size
            assert name is not None
            src = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
            with os.fdopen(src, "rb") as f:
                self.tf.addfile(info, f)
        else:
            self.tf.addfile(info)
        self.entries += 1


def _join(parent: str, name: str) -> str:
    return f"{parent}/{name}" if parent else name


def _same(a: os.stat_result, b: os.stat_result) -> bool:
    if stat.S_IFMT(a.st_mode) != stat.S_IFMT(b.st_mode) or a.st_mode != b.st_mode:
        return False
    if (a.st_uid, a.st_gid) != (b.st_uid, b.st_gid):
        return False
    if stat.S_ISDIR(a.st_mode):
        return True
    return (a.st_size, a.st_mtime_ns // 1_000_000_000, a.st_rdev) == (b.st_size, b.st_mtime_ns // 1_000_000_000,
                                                                      b.st_rdev)


def _same_content(ufd: int, lfd: int | None, name: str, st: os.stat_result) -> bool:
    """What metadata cannot tell: a symlink's target, and xattrs."""
    if lfd is None:
        return False
    if stat.S_ISLNK(st.st_mode):
        return os.readlink(name, dir_fd=ufd) == os.readlink(name, dir_fd=lfd)
    return _xattrs(f"/proc/self/fd/{ufd}/{name}", follow=False) == _xattrs(f"/proc/self/fd/{lfd}/{name}",
                                                                           follow=False)


def _xattrs_at(dir_fd: int | None, name: str) -> dict[str, bytes]:
    return {} if dir_fd is None else _xattrs(f"/proc/self/fd/{dir_fd}/{name}", follow=False)


def _xattrs(target: int | str, follow: bool = True) -> dict[str, bytes]:
    try:
        names = os.listxattr(target, follow_symlinks=follow)
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM):
            return {}
        raise
    result = {}
    for n in names:
        if n.startswith(_PRIVATE_XATTRS):
            continue
        try:
            result[n] = os.getxattr(target, n, follow_symlinks=follow)
        except OSError:
            continue
    return result


def _getxattr(fd: int, name: str) -> bytes | None:
    try:
        return os.getxattr(fd, name)
    except OSError:
        return None

