"""cgroups v1 and v2 behind one interface: create a container's cgroup, apply OCI
``linux.resources``, add processes, freeze, kill, read statistics, remove it.

    cg = open_cgroup(spec["linux"].get("cgroupsPath"), container_id)
    cg.create()
    cg.apply(spec["linux"].get("resources"))
    cg.add(pid)
    save(cg.paths)            # later, from another process: open_paths(saved)

The host's layout is read from ``/proc/self/mountinfo``:

* ``unified`` — cgroup2 only: a :class:`~berth.kernel.cgroups.v2.V2Cgroup`.
* ``hybrid`` — controllers on v1 hierarchies plus a cgroup2 mount (usually
  ``/sys/fs/cgroup/unified``): a :class:`~berth.kernel.cgroups.v1.V1Cgroup` that also creates and
  joins its cgroup2 directory, using it for freezing/killing when v1 lacks a freezer and for the
  controllers only v2 has (hugetlb, rdma, ``unified`` keys).
* ``legacy`` — v1 only.

**cgroupsPath** (``open_cgroup``'s ``path``):

* absolute (``/a/b``): under each hierarchy's mount point;
* relative (``a/b``): under the cgroup this process is in, per hierarchy (``/proc/self/cgroup``);
* None or empty: ``/berth/<container id>``;
* ``slice:prefix:name`` (systemd's form): mapped to a plain path, without asking systemd (there
  is no D-Bus here): ``system.slice:berth:abc`` → ``/system.slice/berth-abc.scope``; a dashed
  slice nests the way systemd nests it (``a-b.slice`` → ``/a.slice/a-b.slice``); an empty slice is
  ``system.slice``, an empty name the container id. systemd does not know about such a scope and
  may, on a systemd host, move or remove it; ``features()`` accordingly reports ``systemd: false``.

This module does no policy: it does not kill processes before removing a cgroup, it does not
check a cgroup is empty before a container starts in it. Errors are berth's: InvalidArgument for
a bad field (named, like ``linux.resources.memory.limit: ...``), Unsupported for a controller or
file this kernel lacks, NotFound for a cgroup that does not exist.
"""

from __future__ import annotations

import os

from berth.errors import InvalidArgument, Unsupported
from berth.kernel.cgroups._common import SIGKILL, Cgroup, enter_files, read_bytes, validate_resources

TYPE_CHECKING = False
if TYPE_CHECKING:
    from berth.kernel.cgroups.v1 import V1Cgroup
    from berth.kernel.cgroups.v2 import V2Cgroup

__all__ = [
    "SIGKILL",
    "Cgroup",
    "Hierarchies",
    "enter_files",
    "features",
    "hierarchies",
    "layout",
    "open_cgroup",
    "open_paths",
    "resolve_path",
    "validate_resources",
]

DEFAULT_PARENT = "/berth"


def _unescape(field: str) -> str:
    """mountinfo octal escapes (``\\040`` for a space)."""
    if "\\" not in field:
        return field
    out = []
    i = 0
    while i < len(field):
        if field[i] == "\\" and i + 4 <= len(field) and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


class Hierarchies:
    """The cgroup mounts and this process's place in them, read once.

    ``v1`` maps each v1 controller (and named hierarchies, ``name=systemd``) to ``(mount point,
    mount root)``; ``v2`` is the cgroup2 ``(mount point, mount root)`` or None; ``own`` maps the
    same keys (``""`` for v2) to this process's cgroup path from ``/proc/self/cgroup``.
    """

    def __init__(self, mountinfo: str, proc_cgroup: str, known_controllers: set[str]) -> None:
        self.v1: dict[str, tuple[str, str]] = {}
        self.v2: tuple[str, str] | None = None
        self.own: dict[str, str] = {}
        for line in mountinfo.splitlines():
            before, sep, after = line.partition(" - ")
            if not sep:
                continue
            head, tail = before.split(), after.split()
            if len(head) < 5 or len(tail) < 3:
                continue
            root, mountpoint, fstype = _unescape(head[3]), _unescape(head[4]), tail[0]
            if fstype == "cgroup2":
                if self.v2 is None or (mountpoint == "/sys/fs/cgroup" != self.v2[0]):
                    self.v2 = (mountpoint, root)
            elif fstype == "cgroup":
                for option in tail[2].split(","):
                    if option in known_controllers or option.startswith("name="):
                        current = self.v1.get(option)
                        preferred = mountpoint.startswith("/sys/fs/cgroup/")
                        if current is None or (preferred and not current[0].startswith("/sys/fs/cgroup/")):
                            self.v1[option] = (mountpoint, root)
        for line in proc_cgroup.splitlines():
            parts = line.split(":", 2)
            if len(parts) != 3:
                continue
            _, controllers, path = parts
            if parts[0] == "0" and controllers == "":
                self.own[""] = path
            else:
                for controller in controllers.split(","):
                    if controller:
                        self.own[controller] = path

    @property
    def layout(self) -> str:
        if any(not name.startswith("name=") for name in self.v1):
            return "hybrid" if self.v2 is not None else "legacy"
        if self.v2 is not None:
            return "unified"
        raise Unsupported("no cgroup filesystem is mounted (neither cgroup nor cgroup2 in mountinfo)")

    def directory(self, key: str, path: str) -> str:
        """The directory of cgroup ``path`` (absolute or relative, as from :func:`resolve_path`) in
        the hierarchy of controller ``key`` (``""`` for cgroup2)."""
        mountpoint, mount_root = self.v2 if key == "" and self.v2 is not None else self.v1[key]
        if path.startswith("/"):
            rel = path
        else:
            base = self.own.get(key, "/")
            if base.endswith(" (deleted)"):
                base = base[: -len(" (deleted)")]
            if mount_root != "/":
                if base == mount_root or base.startswith(mount_root.rstrip("/") + "/"):
                    base = base[len(mount_root.rstrip("/")) :] or "/"
                else:
                    base = "/"  # our cgroup is outside what this mount shows
            rel = base.rstrip("/") + "/" + path
        rel = rel.rstrip("/")
        return mountpoint.rstrip("/") + rel if rel else mountpoint


_cached: Hierarchies | None = None


def hierarchies(refresh: bool = False) -> Hierarchies:
    """The host's cgroup mounts (cached for the process; ``refresh`` re-reads them)."""
    global _cached
    if _cached is None or refresh:
        mountinfo = os.fsdecode(read_bytes("/proc/self/mountinfo"))
        proc_cgroup = os.fsdecode(_read_if_any("/proc/self/cgroup"))
        known = {
            line.split()[0]
            for line in os.fsdecode(_read_if_any("/proc/cgroups")).splitlines()
            if line.strip() and not line.startswith("#")
        }
        _cached = Hierarchies(mountinfo, proc_cgroup, known)
    return _cached


def _read_if_any(path: str) -> bytes:
    try:
        return read_bytes(path)
    except FileNotFoundError:
        return b""


def layout() -> str:
    """``unified`` (cgroup2 only), ``hybrid`` (v1 controllers plus cgroup2) or ``legacy`` (v1)."""
    return hierarchies().layout


def features() -> dict[str, bool]:
    """The ``linux.cgroup`` object of ``runc features``: what this implementation supports,
    whatever the host has (the spec says so)."""
    return {"v1": True, "v2": True, "systemd": False, "systemdUser": False, "rdma": True}


def _expand_slice(name: str) -> str:
    if not name.endswith(".slice") or "/" in name:
        raise InvalidArgument(f"linux.cgroupsPath: {name!r} is not a systemd slice name")
    if name == "-.slice":
        return ""
    stem = name[: -len(".slice")]
    if not stem or stem.startswith("-") or stem.endswith("-") or "--" in stem:
        raise InvalidArgument(f"linux.cgroupsPath: {name!r} is not a systemd slice name")
    path = ""
    prefix = ""
    for part in stem.split("-"):
        prefix = f"{prefix}-{part}" if prefix else part
        path += f"/{prefix}.slice"
    return path


def _check_id(container_id: str) -> None:
    if not container_id or "/" in container_id or container_id in (".", "..") or "\0" in container_id:
        raise InvalidArgument(f"container id {container_id!r} cannot name a cgroup")


def resolve_path(path: str | None, container_id: str) -> str:
    """Normalize an OCI ``cgroupsPath``: ``/a/b`` stays absolute, ``a/b`` stays relative,
    None becomes ``/berth/<id>``, ``slice:prefix:name`` becomes ``/slice…/prefix-name.scope``.
    ``..`` components are refused."""
    _check_id(container_id)
    if not path:
        return f"{DEFAULT_PARENT}/{container_id}"
    if not isinstance(path, str):
        raise InvalidArgument(f"linux.cgroupsPath: expected a string, got {type(path).__name__}")
    if "\0" in path:
        raise InvalidArgument("linux.cgroupsPath: contains a NUL byte")
    if not path.startswith("/") and path.count(":") == 2:
        slice_name, prefix, name = path.split(":")
        if "/" in prefix or "/" in name:
            raise InvalidArgument(f"linux.cgroupsPath: {path!r} is not slice:prefix:name")
        parent = _expand_slice(slice_name or "system.slice")
        name = name or container_id
        if name.endswith(".slice"):
            return parent + "/" + name
        unit = f"{prefix}-{name}.scope" if prefix else f"{name}.scope"
        return parent + "/" + unit
    parts = [p for p in path.split("/") if p and p != "."]
    if ".." in parts:
        raise InvalidArgument(f"linux.cgroupsPath: {path!r} must not contain '..'")
    joined = "/".join(parts)
    if not joined:
        raise InvalidArgument(f"linux.cgroupsPath: {path!r} names a hierarchy's root, not a container's cgroup")
    return "/" + joined if path.startswith("/") else joined


def open_cgroup(path: str | None, container_id: str, *, version: int | None = None) -> Cgroup:
    """The cgroup for a container, from its OCI ``linux.cgroupsPath`` (see the module doc).

    ``version`` forces an implementation: 2 on a hybrid host drives the cgroup2 hierarchy alone
    (as on a unified host); 1 on a unified host is Unsupported. Nothing is created yet.
    """
    h = hierarchies()
    host = h.layout
    resolved = resolve_path(path, container_id)
    if version is None:
        version = 2 if host == "unified" else 1
    if version == 2:
        if h.v2 is None:
            raise Unsupported("cgroup v2 is not mounted on this host")
        from berth.kernel.cgroups.v2 import V2Cgroup

        return V2Cgroup(resolved, h.directory("", resolved), h.v2[0])
    if version != 1:
        raise InvalidArgument(f"cgroup version {version} does not exist")
    if host == "unified":
        raise Unsupported("this host has no cgroup v1 controllers (it is cgroup2-only)")
    from berth.kernel.cgroups.v1 import V1Cgroup

    dirs = {key: h.directory(key, resolved) for key in h.v1}
    unified = None
    if h.v2 is not None:
        from berth.kernel.cgroups.v2 import V2Cgroup

        unified = V2Cgroup(resolved, h.directory("", resolved), h.v2[0])
    return V1Cgroup(resolved, dirs, unified)


def open_paths(paths: dict[str, str]) -> V1Cgroup | V2Cgroup:
    """Re-open a cgroup from :attr:`Cgroup.paths` saved by the process that created it (a
    relative ``cgroupsPath`` resolves differently in a process sitting in another cgroup)."""
    if not paths or not all(isinstance(v, str) and v.startswith("/") for v in paths.values()):
        raise InvalidArgument(f"cgroup paths {paths!r} are not absolute directories")
    h = hierarchies()
    from berth.kernel.cgroups.v2 import V2Cgroup

    unified = None
    if "" in paths:
        directory = paths[""]
        mountpoint = h.v2[0] if h.v2 is not None else os.path.dirname(directory)
        unified = V2Cgroup(_relative(directory, mountpoint), directory, mountpoint)
    v1_dirs = {k: v for k, v in paths.items() if k != ""}
    if not v1_dirs:
        assert unified is not None
        return unified
    from berth.kernel.cgroups.v1 import V1Cgroup

    key, directory = next(iter(v1_dirs.items()))
    mountpoint = h.v1[key][0] if key in h.v1 else os.path.dirname(directory)
    return V1Cgroup(_relative(directory, mountpoint), v1_dirs, unified)


def _relative(directory: str, mountpoint: str) -> str:
    mountpoint = mountpoint.rstrip("/")
    if directory == mountpoint:
        return "/"
    if directory.startswith(mountpoint + "/"):
        return directory[len(mountpoint) :]
    return directory
