"""Building the container's filesystem view: mounts, devices, masked paths, pivot_root.

Runs in the container's init, in its new mount namespace, before pivot_root. Every target is
resolved inside the rootfs (see ``paths``) and mounted through ``/proc/self/fd/N``, so nothing in
the image can steer a mount onto the host.
"""

from __future__ import annotations

import os
import stat

from berth.errors import InvalidArgument
from berth.kernel import syscalls as sc
from berth.runtime.paths import clean, ensure_in_root, fd_path, open_in_root

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

# option → (clear?, flag). "clear" options remove the flag.
_FLAGS: dict[str, tuple[bool, int]] = {
    "ro": (False, sc.MS_RDONLY), "rw": (True, sc.MS_RDONLY),
    "nosuid": (False, sc.MS_NOSUID), "suid": (True, sc.MS_NOSUID),
    "nodev": (False, sc.MS_NODEV), "dev": (True, sc.MS_NODEV),
    "noexec": (False, sc.MS_NOEXEC), "exec": (True, sc.MS_NOEXEC),
    "sync": (False, sc.MS_SYNCHRONOUS), "async": (True, sc.MS_SYNCHRONOUS),
    "dirsync": (False, sc.MS_DIRSYNC), "remount": (False, sc.MS_REMOUNT),
    "mand": (False, sc.MS_MANDLOCK), "nomand": (True, sc.MS_MANDLOCK),
    "noatime": (False, sc.MS_NOATIME), "atime": (True, sc.MS_NOATIME),
    "nodiratime": (False, sc.MS_NODIRATIME), "diratime": (True, sc.MS_NODIRATIME),
    "relatime": (False, sc.MS_RELATIME), "norelatime": (True, sc.MS_RELATIME),
    "strictatime": (False, sc.MS_STRICTATIME), "nostrictatime": (True, sc.MS_STRICTATIME),
    "lazytime": (False, sc.MS_LAZYTIME), "nolazytime": (True, sc.MS_LAZYTIME),
    "nosymfollow": (False, sc.MS_NOSYMFOLLOW), "symfollow": (True, sc.MS_NOSYMFOLLOW),
    "bind": (False, sc.MS_BIND), "rbind": (False, sc.MS_BIND | sc.MS_REC),
}
#: Options runc and crun understand beyond mount(2)'s: ``tmpcopyup`` fills a tmpfs with what the
#: image has at its destination (podman asks for it on --tmpfs and --read-only's tmpfs mounts).
EXTENSIONS = ("tmpcopyup", "notmpcopyup")
PROPAGATION: dict[str, int] = {
    "private": sc.MS_PRIVATE, "rprivate": sc.MS_PRIVATE | sc.MS_REC,
    "shared": sc.MS_SHARED, "rshared": sc.MS_SHARED | sc.MS_REC,
    "slave": sc.MS_SLAVE, "rslave": sc.MS_SLAVE | sc.MS_REC,
    "unbindable": sc.MS_UNBINDABLE, "runbindable": sc.MS_UNBINDABLE | sc.MS_REC,
}
# Flags a bind remount must repeat, or the kernel refuses it inside a user namespace.
_LOCKED = sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC | sc.MS_RDONLY
_STATVFS_TO_MS = ((os.ST_RDONLY, sc.MS_RDONLY), (os.ST_NOSUID, sc.MS_NOSUID), (os.ST_NODEV, sc.MS_NODEV),
                  (os.ST_NOEXEC, sc.MS_NOEXEC))

#: Devices every container gets (runtime-spec config-linux.md, "Default Devices").
DEFAULT_DEVICES = (("null", 1, 3), ("zero", 1, 5), ("full", 1, 7), ("random", 1, 8), ("urandom", 1, 9),
                   ("tty", 5, 0))
DEFAULT_LINKS = (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"),
                 ("stderr", "/proc/self/fd/2"), ("core", "/proc/kcore"))


def parse_options(options: list[str]) -> tuple[int, int, str]:
    """Split mount options into (mount flags, propagation flags, data string)."""
    flags = prop = 0
    data: list[str] = []
    for opt in options:
        if opt in _FLAGS:
            clear, flag = _FLAGS[opt]
            flags = flags & ~flag if clear else flags | flag
        elif opt in PROPAGATION:
            prop |= PROPAGATION[opt]
        elif opt in EXTENSIONS:
            continue  # the runtime's own, never the filesystem's
        else:
            data.append(opt)
    return flags, prop, ",".join(data)


def _current_locked_flags(path: str) -> int:
    st = os.statvfs(path)
    return sum(ms for vfs, ms in _STATVFS_TO_MS if st.f_flag & vfs)


def remount_bind(path: str, flags: int) -> None:
    """Apply per-mount flags to a bind mount, keeping the locked flags it already carries."""
    locked = _current_locked_flags(path) & _LOCKED & ~sc.MS_RDONLY
    sc.mount(None, path, None, sc.MS_BIND | sc.MS_REMOUNT | flags | locked)


class RootfsBuilder:
    """Mounts one config's ``mounts``, devices and paths into ``rootfs`` (an absolute host path)."""

    def __init__(self, spec: dict[str, Any], rootfs: str, bundle: str, userns: bool, cgroupns: bool,
                 cgroup_paths: dict[str, str]) -> None:
        self.spec = spec
        self.rootfs = rootfs
        self.bundle = bundle
        self.userns = userns
        self.cgroupns = cgroupns
        self.cgroup_paths = cgroup_paths
        self.root_fd = os.open(rootfs, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)

    def prepare(self) -> None:
        """Detach from the host's propagation and make the rootfs a mount point of its own.

        By default every mount becomes a slave of the host's. With ``rootfsPropagation`` (as runc
        does) the namespace's mounts take that propagation instead, so that an ``rshared`` bind of a
        shared host mount stays its peer and mounts made in the container reach the host. The mount
        holding the rootfs is made private first: pivot_root refuses a shared parent, and the
        rootfs's own bind must not propagate out.
        """
        prop = self.spec.get("linux", {}).get("rootfsPropagation")
        sc.mount(None, "/", None, PROPAGATION[prop] if prop else sc.MS_REC | sc.MS_SLAVE)
        if prop:
            _make_parent_mount_private(self.rootfs)
        sc.mount(self.rootfs, self.rootfs, None, sc.MS_BIND | sc.MS_REC)
        sc.mount(None, self.rootfs, None, sc.MS_PRIVATE)
        os.close(self.root_fd)
        self.root_fd = os.open(self.rootfs, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)

    def mount_all(self) -> None:
        for i, m in enumerate(self.spec.get("mounts", [])):
            try:
                self._mount(m)
            except OSError as e:
                raise OSError(e.errno, f"mounts[{i}] ({m.get('destination')}): {e.strerror}") from None

    def _mount(self, m: dict[str, Any]) -> None:
        kind = m.get("type") or "none"
        options = m.get("options") or []
        flags, prop, data = parse_options(options)
        if kind == "bind":
            flags |= sc.MS_BIND
        dest = clean(m["destination"])
        if kind == "cgroup" or kind == "cgroup2":
            self._mount_cgroup(dest, flags, kind)
            return
        if flags & sc.MS_BIND:
            source = m.get("source") or ""
            if not source.startswith("/"):
                source = os.path.join(self.bundle, source)
            try:
                src_is_dir = stat.S_ISDIR(os.stat(source).st_mode)
            except FileNotFoundError:
                raise OSError(2, f"bind source {source} does not exist") from None
            fd = ensure_in_root(self.root_fd, dest, src_is_dir)
            try:
                sc.mount(source, fd_path(fd), None, flags & (sc.MS_BIND | sc.MS_REC))
            finally:
                os.close(fd)
            rest = flags & ~(sc.MS_BIND | sc.MS_REC)
            if rest:
                self._with_target(dest, lambda p: remount_bind(p, rest))
        else:
            fd = ensure_in_root(self.root_fd, dest, True)
            below = None
            try:
                if kind == "tmpfs" and "tmpcopyup" in options:
                    below = os.open(fd_path(fd), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
                self._mount_fs(m.get("source") or kind, fd_path(fd), kind, flags, data, dest)
                if below is not None:
                    src = below
                    self._with_target(dest, lambda p: _copy_up(src, p))
            finally:
                os.close(fd)
                if below is not None:
                    os.close(below)
        if prop:
            self._with_target(dest, lambda p: sc.mount(None, p, None, prop))

    def _mount_fs(self, source: str, target: str, kind: str, flags: int, data: str, dest: str) -> None:
        try:
            sc.mount(source, target, kind, flags, data or None)
        except PermissionError:
            if kind != "sysfs":
                raise
            # sysfs cannot be mounted in a user namespace that does not own the network namespace;
            # like runc, fall back to a recursive read-only bind of the host's /sys.
            sc.mount("/sys", target, None, sc.MS_BIND | sc.MS_REC)
            # ``target`` still names the directory under the new mount: re-resolve to remount it.
            self._with_target(dest, lambda p: remount_bind(p, (flags & ~sc.MS_REMOUNT) | sc.MS_RDONLY))

    def _with_target(self, dest: str, action: Any) -> None:
        """Re-resolve ``dest`` (a new mount now sits on it) and act on the top mount."""
        fd = open_in_root(self.root_fd, dest)
        try:
            action(fd_path(fd))
        finally:
            os.close(fd)

    def _mount_cgroup(self, dest: str, flags: int, kind: str) -> None:
        """Mount the cgroup filesystem(s) the way the host lays them out (v2, v1, or hybrid).

        In a cgroup namespace each hierarchy is mounted afresh (its root is the container's own
        cgroup); without one, the container's own directories are bind-mounted, never the host's
        whole tree.
        """
        from berth.kernel.cgroups import hierarchies

        flags &= ~(sc.MS_BIND | sc.MS_REC)
        h = hierarchies()
        by_mount: dict[str, list[str]] = {}
        for key, (mountpoint, _root) in h.v1.items():
            by_mount.setdefault(mountpoint, []).append(key)
        if h.v2 is not None:
            by_mount.setdefault(h.v2[0], []).append("")
        if kind == "cgroup2" or not h.v1:
            self._mount_hierarchy(dest, "", flags)
            return
        fd = ensure_in_root(self.root_fd, dest, True)
        try:
            sc.mount("tmpfs", fd_path(fd), "tmpfs", flags & ~sc.MS_RDONLY, "mode=755")
        finally:
            os.close(fd)
        for mountpoint, keys in by_mount.items():
            self._mount_hierarchy(dest + "/" + os.path.basename(mountpoint), ",".join(keys), flags)
        if flags & sc.MS_RDONLY:
            self._with_target(dest, lambda p: remount_bind(p, flags))

    def _mount_hierarchy(self, dest: str, controllers: str, flags: int) -> None:
        own = self.cgroup_paths.get(controllers.split(",")[0])
        if not self.cgroupns and own is None:
            return
        fd = ensure_in_root(self.root_fd, dest, True)
        try:
            if not self.cgroupns:
                assert own is not None
                sc.mount(own, fd_path(fd), None, sc.MS_BIND)
            elif controllers:
                sc.mount("cgroup", fd_path(fd), "cgroup", flags, controllers)
            else:
                sc.mount("cgroup2", fd_path(fd), "cgroup2", flags)
        finally:
            os.close(fd)
        if not self.cgroupns:
            self._with_target(dest, lambda p: remount_bind(p, flags))

    def make_cwd(self, cwd: str) -> None:
        """Create the process's cwd when the image lacks it, as runc does: as root, inside the root,
        before any read-only remount. Failing here is not fatal; chdir reports it as the user."""
        try:
            os.close(ensure_in_root(self.root_fd, cwd, True))
        except OSError:
            pass

    def make_devices(self) -> None:
        """Default devices and ``linux.devices``: mknod, or bind from the host inside a user namespace."""
        if self._dev_is_host_bind():
            return
        devices = [{"path": f"/dev/{n}", "type": "c", "major": ma, "minor": mi, "fileMode": 0o666,
                    "uid": 0, "gid": 0} for n, ma, mi in DEFAULT_DEVICES]
        devices += self.spec.get("linux", {}).get("devices", [])
        for d in devices:
            self._make_device(d)
        for name, target in DEFAULT_LINKS:
            self._symlink(f"/dev/{name}", target)
        if any(clean(m["destination"]) == "/dev/pts" for m in self.spec.get("mounts", [])):
            self._symlink("/dev/ptmx", "pts/ptmx")

    def _dev_is_host_bind(self) -> bool:
        for m in self.spec.get("mounts", []):
            if clean(m["destination"]) == "/dev":
                return m.get("type") == "bind" or "bind" in (m.get("options") or []) or \
                    "rbind" in (m.get("options") or [])
        return False

    def _symlink(self, path: str, target: str) -> None:
        parent_fd = ensure_in_root(self.root_fd, os.path.dirname(path), True)
        try:
            os.symlink(target, os.path.basename(path), dir_fd=parent_fd)
        except FileExistsError:
            pass
        finally:
            os.close(parent_fd)

    def _make_device(self, d: dict[str, Any]) -> None:
        path = clean(d["path"])
        kind = {"c": stat.S_IFCHR, "u": stat.S_IFCHR, "b": stat.S_IFBLK, "p": stat.S_IFIFO}[d["type"]]
        mode = d.get("fileMode", 0o666) & 0o7777
        if self.userns:
            host = path  # a user namespace cannot mknod; bind the host's node instead
            if not os.path.exists(host):
                raise OSError(2, f"{path}: no such device on the host to bind")
            fd = ensure_in_root(self.root_fd, path, False)
            try:
                sc.mount(host, fd_path(fd), None, sc.MS_BIND)
            finally:
                os.close(fd)
            return
        parent_fd = ensure_in_root(self.root_fd, os.path.dirname(path), True)
        name = os.path.basename(path)
        try:
            try:
                os.unlink(name, dir_fd=parent_fd)
            except FileNotFoundError:
                pass
            os.mknod(name, kind | mode, os.makedev(d.get("major", 0), d.get("minor", 0)), dir_fd=parent_fd)
            fd = os.open(name, os.O_PATH | os.O_NOFOLLOW, dir_fd=parent_fd)
            try:
                os.chmod(fd_path(fd), mode)
                os.chown(fd_path(fd), d.get("uid", 0), d.get("gid", 0))
            finally:
                os.close(fd)
        finally:
            os.close(parent_fd)

    def mask_paths(self, paths: list[str]) -> None:
        """Hide each path: a directory under an empty read-only tmpfs, a file under /dev/null."""
        null = _open_real_dev_null()
        try:
            for p in paths:
                try:
                    fd = open_in_root(self.root_fd, p)
                except (FileNotFoundError, NotADirectoryError):
                    continue
                try:
                    if stat.S_ISDIR(os.fstat(fd).st_mode):
                        sc.mount("tmpfs", fd_path(fd), "tmpfs", sc.MS_RDONLY, "size=0k")
                    else:
                        sc.mount(fd_path(null), fd_path(fd), None, sc.MS_BIND)
                finally:
                    os.close(fd)
        finally:
            os.close(null)

    def readonly_paths(self, paths: list[str]) -> None:
        for p in paths:
            try:
                fd = open_in_root(self.root_fd, p)
            except (FileNotFoundError, NotADirectoryError):
                continue
            try:
                sc.mount(fd_path(fd), fd_path(fd), None, sc.MS_BIND | sc.MS_REC)
            finally:
                os.close(fd)
            self._with_target(p, lambda t: remount_bind(t, sc.MS_RDONLY | sc.MS_NOSUID | sc.MS_NODEV
                                                        | sc.MS_NOEXEC))

    def pivot(self, no_pivot: bool) -> None:
        os.chdir(self.rootfs)
        if no_pivot:
            sc.mount(self.rootfs, "/", None, sc.MS_MOVE)
            os.chroot(".")
        else:
            old_root = os.open("/", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                sc.pivot_root(".", ".")
                # The old root is now stacked on "/"; detach it without telling the host. mount(2)
                # does not cross the mount stacked on the cwd when resolving ".", so step into the
                # old root first: rslave on the new root would undo the container's rshared mounts.
                os.fchdir(old_root)
                sc.mount(None, ".", None, sc.MS_SLAVE | sc.MS_REC)
                sc.umount2(".", sc.MNT_DETACH)
            finally:
                os.close(old_root)
        os.chdir("/")
        os.close(self.root_fd)

    def finish(self) -> None:
        """After pivot_root: root propagation and read-only root."""
        prop = self.spec.get("linux", {}).get("rootfsPropagation")
        if prop:
            sc.mount(None, "/", None, PROPAGATION[prop])
        if self.spec["root"].get("readonly"):
            remount_bind("/", sc.MS_RDONLY)


def _copy_up(src: int, target: str) -> None:
    """``tmpcopyup``: copy the directory ``src`` (the image's, now under the tmpfs) into ``target``."""
    dst = os.open(target, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        _copy_tree(src, dst)
    finally:
        os.close(dst)


def _copy_tree(src: int, dst: int) -> None:
    """Copy entries, modes and owners from directory ``src`` to ``dst``; symlinks are copied as
    links, never followed, and every name is opened relative to its directory's descriptor."""
    st = os.fstat(src)
    os.fchmod(dst, stat.S_IMODE(st.st_mode))
    _chown(dst, st.st_uid, st.st_gid)
    dir_flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    for name in os.listdir(src):
        est = os.stat(name, dir_fd=src, follow_symlinks=False)
        mode = est.st_mode
        if stat.S_ISDIR(mode):
            os.mkdir(name, 0o700, dir_fd=dst)
            s2 = os.open(name, dir_flags, dir_fd=src)
            try:
                d2 = os.open(name, dir_flags, dir_fd=dst)
                try:
                    _copy_tree(s2, d2)
                finally:
                    os.close(d2)
            finally:
                os.close(s2)
            continue
        if stat.S_ISLNK(mode):
            os.symlink(os.readlink(name, dir_fd=src), name, dir_fd=dst)
        elif stat.S_ISREG(mode):
            sfd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=src)
            try:
                dfd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                              dir_fd=dst)
                try:
                    offset = 0
                    while offset < est.st_size:
                        sent = os.sendfile(dfd, sfd, offset, est.st_size - offset)
                        if not sent:
                            break
                        offset += sent
                    os.fchmod(dfd, stat.S_IMODE(mode))
                finally:
                    os.close(dfd)
            finally:
                os.close(sfd)
        else:
            try:
                os.mknod(name, mode, est.st_rdev, dir_fd=dst)
            except PermissionError:
                continue  # a device node inside a user namespace: left out
        _chown(name, est.st_uid, est.st_gid, dst)


def _chown(path: str | int, uid: int, gid: int, dir_fd: int | None = None) -> None:
    """Owners are kept where they can be: in a user namespace an unmapped owner cannot be given."""
    try:
        if isinstance(path, int):
            os.fchown(path, uid, gid)
        else:
            os.chown(path, uid, gid, dir_fd=dir_fd, follow_symlinks=False)
    except OSError:
        pass


def _make_parent_mount_private(path: str) -> None:
    """Make the mount that ``path`` lies on private (in this namespace) if it is shared."""
    import codecs

    best, shared = "", False
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            mnt = fields[4]
            if "\\" in mnt:  # octal escapes (\040 for a space)
                mnt = codecs.escape_decode(mnt.encode())[0].decode()
            if (path == mnt or path.startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best):
                best = mnt  # the longest match; a later line is a mount stacked on an earlier one
                shared = any(o.startswith("shared:") for o in fields[6:fields.index("-")])
    if best and shared:
        sc.mount(None, best, None, sc.MS_PRIVATE)


def _open_real_dev_null() -> int:
    """The host's /dev/null, checked to be the real device: a masked path must never become a
    bind of something else (a planted symlink to a writable procfs file, say)."""
    fd = os.open("/dev/null", os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
    st = os.fstat(fd)
    if not stat.S_ISCHR(st.st_mode) or st.st_rdev != os.makedev(1, 3):
        os.close(fd)
        raise OSError(1, "/dev/null is not the null device; refusing to mask paths with it")
    return fd


def check_sysctl(name: str, namespaces: dict[str, str]) -> None:
    """Refuse sysctls that are not namespaced, as they would change the host."""
    ipc = name.startswith(("kernel.msg", "kernel.sem", "kernel.shm", "fs.mqueue.")) or name == "kernel.sem"
    if ipc and "ipc" in namespaces:
        return
    if name.startswith("net.") and "network" in namespaces:
        return
    if name in ("kernel.hostname", "kernel.domainname") and "uts" in namespaces:
        return
    raise InvalidArgument(f"linux.sysctl.{name}: not allowed (not namespaced, or its namespace is shared "
                          "with the host)")
