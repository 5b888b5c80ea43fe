"""Resolving paths inside a container's root without ever leaving it.

Mount destinations, masked paths and device nodes are named by a config but land inside a rootfs
the container's image controls. A symlink in that rootfs (``/proc -> /``, ``/dev -> /host/etc``)
must never redirect a mount to the host, so every lookup goes through openat2(RESOLVE_IN_ROOT) from a
descriptor of the rootfs, and the mount is made on ``/proc/self/fd/N`` of the resolved descriptor —
the kernel's answer to the class of runtime escapes that raced or followed symlinks.
"""

from __future__ import annotations

import errno
import os
import posixpath
import stat

from berth.kernel.syscalls import RESOLVE_IN_ROOT, RESOLVE_NO_MAGICLINKS, openat2

_RESOLVE = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS
O_PATH = getattr(os, "O_PATH", 0o10000000)


def clean(path: str) -> str:
    """Normalise a container path lexically; the result is absolute and free of ``..``."""
    return posixpath.normpath("/" + path).replace("//", "/")


def open_in_root(root_fd: int, path: str, flags: int = O_PATH) -> int:
    """Open ``path`` as seen from inside the root; symlinks are resolved relative to that root."""
    rel = clean(path).lstrip("/") or "."
    return openat2(root_fd, rel, flags, _RESOLVE)


def fd_path(fd: int) -> str:
    return f"/proc/self/fd/{fd}"


def ensure_in_root(root_fd: int, path: str, is_dir: bool = True, mode: int = 0o755) -> int:
    """Open ``path`` in the root, creating it (and missing parents) as a directory or an empty file.

    Returns an O_PATH descriptor. Creation happens with ``*at`` calls on descriptors already
    resolved inside the root, with O_EXCL|O_NOFOLLOW, so a planted symlink is never followed out.
    """
    path = clean(path)
    try:
        return open_in_root(root_fd, path)
    except FileNotFoundError:
        pass
    parent, name = posixpath.split(path)
    parent_fd = ensure_in_root(root_fd, parent, True) if parent != "/" else os.dup(root_fd)
    try:
        try:
            if is_dir:
                os.mkdir(name, mode, dir_fd=parent_fd)
            else:
                os.close(os.open(name, os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_WRONLY, 0o644,
                                 dir_fd=parent_fd))
        except FileExistsError:
            pass
        try:
            return open_in_root(root_fd, path)
        except FileNotFoundError:
            raise OSError(errno.ENOENT, f"{path}: is a dangling symlink inside the container") from None
    finally:
        os.close(parent_fd)


def is_dir_fd(fd: int) -> bool:
    return stat.S_ISDIR(os.fstat(fd).st_mode)
