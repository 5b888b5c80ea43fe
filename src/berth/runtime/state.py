"""Per-container runtime state on disk, and the truth about a container's status.

``<root>/<id>/state.json`` is written once, atomically, when ``create`` succeeds; it records the
init's pid *with its start time*, so a recycled pid is never mistaken for the container. The status
is never stored: it is derived from the process (gone or a zombie → stopped), the exec fifo (present
→ created) and the cgroup freezer (frozen → paused), so it stays true across runtime crashes.
"""

from __future__ import annotations

import fcntl
import os
import time

from berth.errors import InvalidArgument, NotFound
from berth.fsutil import replace_file
from berth.oci import jsonc as json

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

_ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.+-")
STATE_FILE = "state.json"
FIFO = "exec.fifo"


def check_id(cid: str) -> None:
    if not cid:
        raise InvalidArgument("container id cannot be empty")
    if len(cid) > 255:  # it names a directory under --root and a cgroup: NAME_MAX
        raise InvalidArgument(f"invalid container id {cid[:16]!r}...: longer than 255 characters")
    if not cid[0].isalnum() or not _ID_CHARS.issuperset(cid) or ".." in cid:
        raise InvalidArgument(f"invalid container id {cid!r}: use letters, digits and _ . + - only")


def proc_start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot, or None when gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    rest = data[data.rindex(b")") + 2:].split()
    if rest[0] in (b"Z", b"X"):
        return None
    return int(rest[19])


class Record:
    """What ``create`` learned and later commands need (a plain class: dataclasses cost start-up)."""

    def __init__(self, id: str, pid: int, pid_start: int, bundle: str, rootfs: str, created: str, owner: str,
                 config: dict[str, Any], cgroup_paths: dict[str, str],
                 annotations: dict[str, str] | None = None) -> None:
        self.id = id
        self.pid = pid
        self.pid_start = pid_start
        self.bundle = bundle
        self.rootfs = rootfs
        self.created = created
        self.owner = owner
        self.config = config
        self.cgroup_paths = cgroup_paths
        self.annotations = annotations or {}

    def cgroup(self) -> Any:
        """The container's cgroup, reopened from the directories ``create`` recorded."""
        from berth.kernel.cgroups import open_paths

        return open_paths(self.cgroup_paths)

    def to_json(self) -> bytes:
        return json.dumps(self.__dict__).encode()


class StateDir:
    """One container's directory under the runtime root, with an exclusive lock for mutations."""

    def __init__(self, root: str, cid: str) -> None:
        check_id(cid)
        self.id = cid
        self.path = os.path.join(root, cid)
        self._lock_fd: int | None = None

    @property
    def fifo(self) -> str:
        return os.path.join(self.path, FIFO)

    def exists(self) -> bool:
        return os.path.isdir(self.path)

    def lock(self) -> None:
        try:
            self._lock_fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise NotFound(f"container {self.id} does not exist") from None
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        if not os.path.isdir(self.path):  # deleted while we waited
            raise NotFound(f"container {self.id} does not exist")

    def unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def load(self) -> Record | None:
        """The record, or None while ``create`` has not finished (status "creating")."""
        try:
            with open(os.path.join(self.path, STATE_FILE), "rb") as f:
                return Record(**json.loads(f.read()))
        except FileNotFoundError:
            if not self.exists():
                raise NotFound(f"container {self.id} does not exist") from None
            return None

    def save(self, record: Record) -> None:
        replace_file(os.path.join(self.path, STATE_FILE), record.to_json())

    def status(self, record: Record | None) -> str:
        if record is None:
            return "creating"
        if proc_start_time(record.pid) != record.pid_start:
            return "stopped"
        if os.path.exists(self.fifo):
            return "created"
        try:
            if record.cgroup().state() == "frozen":
                return "paused"
        except Exception:
            pass
        return "running"


def now_rfc3339() -> str:
    t = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1e9):09d}Z"


def oci_state(record: Record | None, cid: str, status: str, bundle: str = "") -> dict[str, Any]:
    """The state object of the runtime spec (what ``state`` prints and hooks read on stdin)."""
    if record is None:
        return {"ociVersion": "1.3.0", "id": cid, "status": status, "pid": 0, "bundle": bundle}
    state: dict[str, Any] = {
        "ociVersion": record.config.get("ociVersion", "1.3.0"),
        "id": record.id,
        "status": status,
        "pid": record.pid if status not in ("stopped",) else 0,
        "bundle": record.bundle,
        "rootfs": record.rootfs,
        "created": record.created,
        "owner": record.owner,
    }
    if record.annotations:
        state["annotations"] = record.annotations
    return state
