"""Making the mounts a snapshotter returns, for callers that need them mounted (the engine, tests).

Snapshotters themselves never call this. :func:`overlay_supported` is the one exception in spirit: it
makes a throw-away overlay mount to learn whether the kernel and the filesystem under the snapshot
root can host overlay snapshots, as containerd does before choosing a snapshotter.
"""

from __future__ import annotations

import os

from berth.kernel import syscalls as sc
from berth.snapshots.base import Mount

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable

CLONE_FS = 0x00000200

_FLAGS = {"ro": sc.MS_RDONLY, "rw": 0, "bind": sc.MS_BIND, "rbind": sc.MS_BIND | sc.MS_REC,
          "nosuid": sc.MS_NOSUID, "nodev": sc.MS_NODEV, "noexec": sc.MS_NOEXEC}


def _split(options: Iterable[str]) -> tuple[int, str]:
    flags = 0
    data = []
    for opt in options:
        if opt in _FLAGS:
            flags |= _FLAGS[opt]
        else:
            data.append(opt)
    return flags, ",".join(data)


def mount_all(mounts: Iterable[Mount], target: str | os.PathLike[str], *, volatile: bool = False) -> None:
    """Mount each spec on ``target``, in order (a read-only bind gets its remount).

    ``volatile``: the writable layer will be thrown away with its container (``--rm``), so an
    overlay gets the ``volatile`` option (Linux 5.10): it never syncs its upper directory, whose
    unmount would otherwise flush every dirty page of the filesystem under it (~0.3-4 ms per
    container, more on a busy disk). A kernel without the option refuses it; the mount is then
    made without it. Beside the layer goes the boot it was mounted in (see _clear_volatile_mark)."""
    target = os.fspath(target)
    for m in mounts:
        flags, data = _split(m.options)
        if m.type == "bind":
            sc.mount(m.source, target, None, flags & (sc.MS_BIND | sc.MS_REC))
            if flags & ~(sc.MS_BIND | sc.MS_REC):
                sc.mount(None, target, None, flags | sc.MS_REMOUNT | sc.MS_BIND)
            continue
        if m.type == "overlay":
            workdir = _work_dir(m)
            if workdir is not None:
                _clear_volatile_mark(workdir, target)
            if volatile and workdir is not None:
                try:
                    _mount(m, target, flags, data + ",volatile")
                except OSError as e:
                    if e.errno != _EINVAL:
                        raise
                else:
                    _note_boot(workdir)
                    continue
        _mount(m, target, flags, data)


_EINVAL = 22
_BOOT_FILE = "volatile-boot-id"  # beside an overlay's work directory: the boot it was last mounted volatile in


def _mount(m: Mount, target: str, flags: int, data: str) -> None:
    if m.cwd is None:
        sc.mount(m.source, target, m.type, flags, data or None)
    else:
        _mount_from(m.cwd, m.source, target, m.type, flags, data)


def _work_dir(m: Mount) -> str | None:
    """A writable overlay's work directory; None for a read-only one."""
    workdir = m.option("workdir")
    return None if workdir is None else m.resolve(workdir)


def _clear_volatile_mark(workdir: str, target: str) -> None:
    """A volatile overlay leaves ``WORKDIR/work/incompat/volatile`` behind, even when cleanly
    unmounted, and the kernel refuses to mount that upper directory again: it may have lost writes
    in a crash. Left in this boot (the boot id noted beside it says so), the mark only says the
    layer was volatile — no crash can have happened since — and it is removed. From another boot,
    the layer may be torn: the mount is refused, in words."""
    mark = os.path.join(workdir, "work", "incompat", "volatile")
    if not os.path.lexists(mark):
        return
    try:
        with open(_boot_file(workdir), "rb") as f:
            same_boot = f.read().strip() == _boot_id()
    except OSError:
        same_boot = False
    if not same_boot:
        from berth.errors import BerthError

        raise BerthError(f"{target}: its writable layer was mounted volatile (a --rm container's) and the host "
                         "has restarted since, so it may have lost writes: it cannot be mounted again")
    from berth.fsutil import remove_tree

    remove_tree(mark)


def _note_boot(workdir: str) -> None:
    with open(_boot_file(workdir), "wb") as f:  # torn or missing, it reads as another boot: refused
        f.write(_boot_id() + b"\n")


def _boot_file(workdir: str) -> str:
    return os.path.join(os.path.dirname(workdir), _BOOT_FILE)


def _boot_id() -> bytes:
    with open("/proc/sys/kernel/random/boot_id", "rb") as f:
        return f.read().strip()


def _mount_from(cwd: str, source: str, target: str, fstype: str, flags: int, data: str) -> None:
    """mount(2) with relative paths in ``data`` resolved from ``cwd``, without touching the process's cwd:
    a short-lived thread unshares its fs context (CLONE_FS) and chdirs alone."""
    error: list[BaseException] = []

    def run() -> None:
        try:
            sc.unshare(CLONE_FS)
            os.chdir(cwd)
            sc.mount(source, target, fstype, flags, data or None)
        except BaseException as exc:
            error.append(exc)

    import threading  # only for overlays whose options had to be made relative

    thread = threading.Thread(target=run, name="berth-mount")
    thread.start()
    thread.join()
    if error:
        raise error[0]


def unmount(target: str | os.PathLike[str], detach: bool = False) -> None:
    sc.umount2(os.fspath(target), sc.MNT_DETACH if detach else 0)


def overlay_supported(root: str | os.PathLike[str]) -> bool:
    """Whether overlay snapshots can live under ``root``: root privileges, the overlay filesystem, and a
    test mount with two lowers and an upper that succeeds on ``root``'s filesystem."""
    if os.geteuid() != 0:
        return False
    try:
        with open("/proc/filesystems") as f:
            if not any(line.split()[-1:] == ["overlay"] for line in f):
                return False
    except OSError:
        return False
    os.makedirs(root, exist_ok=True)
    import tempfile  # only for the one-time overlay probe

    tmp = tempfile.mkdtemp(prefix=".overlay-check-", dir=root)
    try:
        for d in ("l1", "l2", "u", "w", "m"):
            os.mkdir(os.path.join(tmp, d))
        data = f"lowerdir={tmp}/l1:{tmp}/l2,upperdir={tmp}/u,workdir={tmp}/w"
        try:
            sc.mount("overlay", f"{tmp}/m", "overlay", 0, data)
        except OSError:
            return False
        try:
            sc.umount2(f"{tmp}/m", sc.MNT_DETACH)
        except OSError:
            pass
        return True
    finally:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)

