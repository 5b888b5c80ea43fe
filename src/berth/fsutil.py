"""Files as berth writes and removes them: durable replacement (the one way berth writes a file
others may read at any moment), flock helpers, and tree removal without shutil, now or later."""

from __future__ import annotations

import os

# Context managers are classes here, not contextlib generators: berth-runtime imports this module
# on every container start, and contextlib would bring functools and collections (~2 ms).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from pathlib import Path
    from typing import IO


class atomic_file:  # lower case: used like a function, `with atomic_file(path) as f`
    """Give a file to write; on success it is fsynced and renamed over ``path`` (then the directory
    is fsynced), on failure it is removed and ``path`` is untouched."""

    def __init__(self, path: str | Path, mode: int = 0o644) -> None:
        self.path = os.fspath(path)
        self.mode = mode

    def __enter__(self) -> IO[bytes]:
        import tempfile

        self.directory = os.path.dirname(self.path) or "."
        fd, self.tmp = tempfile.mkstemp(prefix=f".{os.path.basename(self.path)}.", suffix=".tmp",
                                        dir=self.directory)
        self.file = os.fdopen(fd, "wb")
        os.fchmod(fd, self.mode)
        return self.file

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        try:
            if exc_type is None:
                self.file.flush()
                os.fsync(self.file.fileno())
            self.file.close()
            if exc_type is None:
                os.replace(self.tmp, self.path)
        except BaseException:
            _unlink_quietly(self.tmp)
            raise
        if exc_type is not None:
            _unlink_quietly(self.tmp)
            return
        dir_fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


class file_lock:  # lower case: used like a function, `with file_lock(path):`
    """Hold an exclusive (or ``shared``) flock on ``path`` (created if missing) for the block; None
    locks nothing. How daemonless berth processes serialise work on one shared object (a network, a
    table) or keep a collector away while they use it. Not ``blocking``: the block is entered at
    once, with False (``with file_lock(p, blocking=False) as held``) when someone else holds it."""

    def __init__(self, path: str | None, *, shared: bool = False, blocking: bool = True) -> None:
        self.path = path
        self.shared = shared
        self.blocking = blocking
        self.fd: int | None = None

    def __enter__(self) -> bool:
        if self.path is None:
            return True
        import fcntl

        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(self.fd, (fcntl.LOCK_SH if self.shared else fcntl.LOCK_EX)
                        | (0 if self.blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(self.fd)
            self.fd = None
            return False
        except BaseException:
            os.close(self.fd)
            self.fd = None
            raise
        return True

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def replace_file(path: str, data: bytes, mode: int = 0o600) -> None:
    """Write-then-rename without fsync: a reader never sees half a file even if the writer dies
    mid-write. For state that describes processes (a power loss ends them too, so durability across
    one buys nothing) or caches; on a disk-backed /run an fsync would cost ~2 ms per container start."""
    tmp = f"{path}.tmp{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    try:
        os.rename(tmp, path)
    except BaseException:
        _unlink_quietly(tmp)
        raise


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def remove_tree(path: str) -> None:
    """Remove ``path`` and all below it, never following a symlink, whatever the modes inside (overlay
    leaves a mode-000 work/work). A missing ``path`` is no error. Why not shutil.rmtree: importing
    shutil brings bz2 and lzma along, and a container's removal is on ``berth run --rm``'s path."""
    try:
        fd = os.open(path, _DIR_FLAGS)
    except FileNotFoundError:
        return
    except OSError:  # a file or a symlink (ELOOP/ENOTDIR): remove the name itself
        _unlink_quietly(path)
        return
    try:
        _empty_dir(fd)
    finally:
        os.close(fd)
    try:
        os.rmdir(path)
    except FileNotFoundError:
        pass


class Trash:
    """Trees removed off the caller's path: ``take`` renames each into a ``.trash`` directory beside
    it at once (its name is free again, nothing reads it any more), ``empty`` has them removed by
    an ``rm`` the caller does not wait for.

    Why: removing a container's directories at the end of `berth run --rm` costs ~1 ms on disks
    where each directory freed is a synchronous discard; a rename costs ~10 µs and spawning ``rm``
    ~0.25 ms (posix_spawn, a vfork: unlike a fork it copies no page tables, and leaves no pages
    to copy on write while the caller goes on). A tree that cannot be renamed (another
    filesystem, a busy mount point) is removed at once. What a killed ``rm`` left behind goes with
    the next ``empty`` beside it: it removes every entry of its ``.trash`` directories.
    """

    #: Removers not reaped yet: each ``empty`` reaps the finished ones, so a long-lived process
    #: (the API service, a program using the library) keeps no zombies.
    _children: list[int] = []

    def __init__(self) -> None:
        self.trash_dirs: list[str] = []

    def take(self, path: str) -> None:
        trash = os.path.join(os.path.dirname(path), ".trash")
        dest = os.path.join(trash, f"{os.path.basename(path)}.{os.getpid()}-{os.urandom(4).hex()}")
        for attempt in (1, 2):
            try:
                os.rename(path, dest)
                break
            except FileNotFoundError:
                if not os.path.lexists(path):
                    return  # nothing to remove
                if attempt == 2:
                    remove_tree(path)
                    return
                try:
                    os.mkdir(trash, 0o700)
                except FileExistsError:
                    pass
            except OSError:
                remove_tree(path)
                return
        if trash not in self.trash_dirs:
            self.trash_dirs.append(trash)

    def empty(self) -> None:
        trash_dirs, self.trash_dirs = self.trash_dirs, []
        entries = []
        for trash in trash_dirs:
            try:
                entries += [os.path.join(trash, name) for name in os.listdir(trash)]
            except OSError:
                pass
        if not entries:
            return
        for pid in list(Trash._children):
            try:
                if os.waitpid(pid, os.WNOHANG)[0] == 0:
                    continue
            except ChildProcessError:
                pass  # reaped by someone else
            Trash._children.remove(pid)
        argv = ["rm", "-rf", "--one-file-system", "--", *entries]
        if os.geteuid() != 0:  # without CAP_DAC_OVERRIDE overlay's mode-000 work/work is opened up first
            argv = ["sh", "-c", 'chmod -R u+rwx -- "$@" 2>/dev/null; exec rm -rf --one-file-system -- "$@"',
                    "sh", *entries]
        null = [(os.POSIX_SPAWN_OPEN, fd, os.devnull, os.O_RDWR, 0) for fd in (0, 1, 2)]
        try:  # its own session, its stdio away from the caller's (a pipe reader would wait for it)
            pid = os.posix_spawnp(argv[0], argv, {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
                                  file_actions=null, setsid=True)
        except OSError:
            for entry in entries:  # no rm to be had: now
                remove_tree(entry)
            return
        Trash._children.append(pid)


def _empty_dir(dir_fd: int) -> None:
    with os.scandir(dir_fd) as it:
        entries = [(e.name, e.is_dir(follow_symlinks=False)) for e in it]
    for name, is_dir in entries:
        try:
            if not is_dir:
                os.unlink(name, dir_fd=dir_fd)
                continue
            try:
                sub = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
            except PermissionError:  # no search permission (without CAP_DAC_OVERRIDE): grant it
                os.chmod(name, 0o700, dir_fd=dir_fd, follow_symlinks=False)
                sub = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
            try:
                _empty_dir(sub)
            finally:
                os.close(sub)
            os.rmdir(name, dir_fd=dir_fd)
        except FileNotFoundError:
            continue  # removed meanwhile by someone else
