"""Files as berth writes and removes them: durable replacement (the one way berth writes a file
others may read at any moment), flock helpers, and tree removal without shutil."""

from __future__ import annotations

import contextlib
import os

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path
    from typing import IO


@contextlib.contextmanager
def atomic_file(path: str | Path, mode: int = 0o644) -> Iterator[IO[bytes]]:
    """Yield a file to write; on success it is fsynced and renamed over ``path`` (then the
    directory is fsynced), on failure it is removed and ``path`` is untouched."""
    import tempfile

    directory = os.path.dirname(os.fspath(path)) or "."
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(os.fspath(path))}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


@contextlib.contextmanager
def file_lock(path: str | None) -> Iterator[None]:
    """Hold an exclusive flock on ``path`` (created if missing) for the block; None locks nothing.
    How daemonless berth processes serialise work on one shared object (a network, a table)."""
    if path is None:
        yield
        return
    import fcntl

    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


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
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        return
    try:
        _empty_dir(fd)
    finally:
        os.close(fd)
    with contextlib.suppress(FileNotFoundError):
        os.rmdir(path)


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
