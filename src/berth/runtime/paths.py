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

    Returns an O_PATH descriptor. The path is walked one component at a time from descriptors
    already resolved inside the root; a symlink met on the way (dangling or not, absolute or full of
    ``..``) is read and its target walked *inside the root*, the way securejoin does, so what is
    missing is created where the container will see it and never on the host. Creation uses
    ``*at`` calls with O_EXCL|O_NOFOLLOW, and the result is re-opened with RESOLVE_IN_ROOT.
    """
    path = clean(path)
    try:
        return open_in_root(root_fd, path)
    except FileNotFoundError:
        pass
    todo = [c for c in path.split("/") if c]
    done: list[str] = []
    links = 0
    while todo:
        name = todo.pop(0)
        if name == ".":
            continue
        if name == "..":
            if done:
                done.pop()
            continue
        parent_fd = open_in_root(root_fd, "/".join(done))
        try:
            try:
                st = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
            except FileNotFoundError:
                try:
                    if todo or is_dir:
                        os.mkdir(name, mode, dir_fd=parent_fd)
                    else:
                        os.close(os.open(name, os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_WRONLY | os.O_CLOEXEC,
                                         0o644, dir_fd=parent_fd))
                except FileExistsError:
                    todo.insert(0, name)  # raced with another creator: look again
                    continue
                done.append(name)
                continue
            if stat.S_ISLNK(st.st_mode):
                links += 1
                if links > 40:
                    raise OSError(errno.ELOOP, f"{path}: too many levels of symbolic links")
                target = os.readlink(name, dir_fd=parent_fd)
                if target.startswith("/"):
                    done = []
                todo[:0] = [c for c in target.split("/") if c]
                continue
            if todo and not stat.S_ISDIR(st.st_mode):
                raise OSError(errno.ENOTDIR, f"{path}: /{'/'.join([*done, name])} is not a directory")
            done.append(name)
        finally:
            os.close(parent_fd)
    return open_in_root(root_fd, "/".join(done))
