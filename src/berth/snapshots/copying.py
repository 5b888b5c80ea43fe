"""The copying snapshotter: where overlayfs is unavailable, each active snapshot is a full copy.

``prepare(key, parent)`` copies the parent's tree (everything: modes, owners, times, xattrs, devices,
hardlinks; file data with copy_file_range, so reflinking filesystems share blocks) into the new
snapshot, which mounts as a read-write bind mount. Whiteouts in layers applied here are plain deletions.
A view of a committed snapshot needs no copy: it is a read-only bind mount of the parent's tree.
"""

from __future__ import annotations

import errno
import os
import stat

from berth.snapshots.base import ACTIVE, VIEW, Info, Mount, Snapshotter

_O_PATH = getattr(os, "O_PATH", 0o10000000)
_CHUNK = 1 << 24


class CopySnapshotter(Snapshotter):
    name = "copy"

    def _populate(self, info: Info, chain: list[int]) -> None:
        if info.kind == ACTIVE and len(chain) > 1:
            copy_tree(self.fs_path(chain[1]), self.fs_path(chain[0]))

    def _mounts(self, info: Info, chain: list[int]) -> list[Mount]:
        if info.kind == ACTIVE:
            return [Mount("bind", self.fs_path(chain[0]), ("rbind", "rw"))]
        source = chain[1] if info.kind == VIEW and len(chain) > 1 else chain[0]
        return [Mount("bind", self.fs_path(source), ("rbind", "ro"))]


def copy_tree(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
    """Copy the tree ``src`` into the existing directory ``dst``, preserving everything a layer can hold.

    Symlinks are copied, never followed; hardlinked files stay hardlinked within ``dst``. ``dst``'s own
    mode, owner, times and xattrs become ``src``'s.
    """
    sfd = os.open(src, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        dfd = os.open(dst, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            _Copier(dfd).copy_dir(sfd, dfd, "")
        finally:
            os.close(dfd)
    finally:
        os.close(sfd)


class _Copier:
    def __init__(self, root_fd: int) -> None:
        self.root_fd = root_fd
        self.links: dict[tuple[int, int], str] = {}
        self.same_owner = os.geteuid() == 0

    def copy_dir(self, sfd: int, dfd: int, rel: str) -> None:
        with os.scandir(sfd) as it:
            entries = list(it)
        for entry in entries:
            name = entry.name
            st = os.stat(name, dir_fd=sfd, follow_symlinks=False)
            child = f"{rel}/{name}" if rel else name
            mode = st.st_mode
            if stat.S_ISDIR(mode):
                os.mkdir(name, 0o700, dir_fd=dfd)
                csfd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=sfd)
                try:
                    cdfd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
                    try:
                        self.copy_dir(csfd, cdfd, child)
                    finally:
                        os.close(cdfd)
                finally:
                    os.close(csfd)
                continue
            if st.st_nlink > 1:
                first = self.links.get((st.st_dev, st.st_ino))
                if first is not None:
                    os.link(first, name, src_dir_fd=self.root_fd, dst_dir_fd=dfd, follow_symlinks=False)
                    continue
                self.links[(st.st_dev, st.st_ino)] = child
            if stat.S_ISREG(mode):
                self._copy_file(sfd, dfd, name, st)
            elif stat.S_ISLNK(mode):
                os.symlink(os.readlink(name, dir_fd=sfd), name, dir_fd=dfd)
                if self.same_owner:
                    os.chown(name, st.st_uid, st.st_gid, dir_fd=dfd, follow_symlinks=False)
                _copy_xattrs(f"/proc/self/fd/{sfd}/{name}", f"/proc/self/fd/{dfd}/{name}", follow=False)
                os.utime(name, ns=(st.st_atime_ns, st.st_mtime_ns), dir_fd=dfd, follow_symlinks=False)
            else:  # devices, fifos, sockets
                os.mknod(name, stat.S_IFMT(mode) | 0o600, st.st_rdev, dir_fd=dfd)
                fd = os.open(name, _O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
                try:
                    self._metadata(f"/proc/self/fd/{fd}", None, st)
                    _copy_xattrs(f"/proc/self/fd/{sfd}/{name}", f"/proc/self/fd/{fd}", follow=True)
                    os.utime(f"/proc/self/fd/{fd}", ns=(st.st_atime_ns, st.st_mtime_ns))
                finally:
                    os.close(fd)
        # The directory itself, after its contents (which change its mtime).
        sst = os.fstat(sfd)
        self._metadata(None, dfd, sst)
        _copy_xattrs(sfd, dfd, follow=True)
        os.utime(dfd, ns=(sst.st_atime_ns, sst.st_mtime_ns))

    def _copy_file(self, sfd: int, dfd: int, name: str, st: os.stat_result) -> None:
        src = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=sfd)
        try:
            dst = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                          dir_fd=dfd)
            try:
                copy_data(src, dst, st.st_size)
                self._metadata(None, dst, st)
                _copy_xattrs(src, dst, follow=True)
                os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns))
            finally:
                os.close(dst)
        finally:
            os.close(src)

    def _metadata(self, path: str | None, fd: int | None, st: os.stat_result) -> None:
        """Owner, then mode (chown clears setuid bits, so the mode goes second)."""
        target: str | int = fd if fd is not None else path  # type: ignore[assignment]
        if self.same_owner:
            os.chown(target, st.st_uid, st.st_gid)
        os.chmod(target, stat.S_IMODE(st.st_mode))


def copy_data(src: int, dst: int, size: int) -> None:
    """Copy ``size`` bytes between file descriptors, in the kernel where it can."""
    remaining = size
    try:
        while remaining > 0:
            n = os.copy_file_range(src, dst, min(remaining, _CHUNK))
            if n == 0:
                break
            remaining -= n
        return
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            raise
    while True:
        chunk = os.read(src, 1 << 20)
        if not chunk:
            break
        view = memoryview(chunk)
        while view:
            view = view[os.write(dst, view):]


def _copy_xattrs(src: int | str, dst: int | str, follow: bool) -> None:
    try:
        names = os.listxattr(src, follow_symlinks=follow)
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM):
            return
        raise
    for name in names:
        try:
            value = os.getxattr(src, name, follow_symlinks=follow)
        except FileNotFoundError:  # the attribute went meanwhile
            continue
        try:
            os.setxattr(dst, name, value, follow_symlinks=follow)
        except FileNotFoundError:
            pass
        except OSError as exc:
            if exc.errno not in (errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM):
                raise
