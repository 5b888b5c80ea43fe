"""What every snapshotter shares: the mount spec it returns, snapshot metadata, and its SQLite file.

A snapshot is a directory tree identified by a *key*. Three kinds exist (containerd's model):

- **active** — writable, made by :meth:`Snapshotter.prepare` on top of an optional committed parent;
- **view** — read-only, made by :meth:`Snapshotter.view` from a committed parent;
- **committed** — made from an active snapshot by :meth:`Snapshotter.commit`, under a new name (the
  image store uses the layer's chain ID). It is read-only by convention and may be the parent of others.

The snapshotter never mounts anything itself: ``prepare``/``view``/``mounts`` return :class:`Mount`
specs which the caller mounts (see :mod:`berth.snapshots.mount`) or, like the layer applier, reads to
find the directories to write to.

Layout under the snapshotter's root (``<berth root>/snapshots``)::

    metadata.db          SQLite (WAL): one row per snapshot, schema version in PRAGMA user_version
    <id>/fs              the snapshot's tree (overlay: its upper directory)
    <id>/work            overlay's work directory (overlay snapshotter only)

``<id>`` is a small integer that SQLite allocates (AUTOINCREMENT: never reused), so paths stay short.
Metadata changes run in ``BEGIN IMMEDIATE`` transactions, which makes them safe between processes as
well as threads: berth has no daemon, two commands may unpack at once. Directories are created inside
the transaction that inserts their row and deleted after the row's removal is committed; a crash in
between leaves an orphan directory that :meth:`Snapshotter.cleanup` removes.
"""

from __future__ import annotations

import _thread
import os
import stat
import sys
import time

from berth.errors import AlreadyExists, Conflict, InvalidArgument, NotFound, Unsupported
from berth.fsutil import remove_tree
from berth.oci import jsonc
from berth.record import field, record
from berth.sqlitedb import connect, write

# Preparing and removing a container's snapshot is on `berth run`'s path: paths are strings and the
# labels go through berth.oci.jsonc, so pathlib, json, re, typing and threading (~8 ms) stay off it.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import sqlite3
    from collections.abc import Mapping
    from pathlib import Path
    from typing import Any

    from berth.fsutil import Trash

_FS_IOC_GETFLAGS = 0x80086601
_FS_IOC_SETFLAGS = 0x40086602
_FS_TOPDIR_FL = 0x00020000


def spread_subdirectories(path: str) -> bool:
    """Mark ``path`` the top of directory hierarchies (ext4's ``chattr +T``); whether it now is.

    Why: ext4 puts a new directory's inode in its parent's block group, and, without a journal (as on
    this host), skips the inodes of that group deleted in the last minutes one by one: after a prune or
    a removed container, creating each file of the next unpacked layer there cost 150-250 µs instead of
    7 µs. Under a "top" directory ext4 spreads new subdirectories (each snapshot) over groups with free
    space and few directories, as it does at the root of the filesystem, so a new layer rarely lands
    where many files were just deleted. Elsewhere (another filesystem, no privilege) nothing changes.
    """
    import fcntl

    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        buf = bytearray(4)
        fcntl.ioctl(fd, _FS_IOC_GETFLAGS, buf, True)
        flags = int.from_bytes(buf, sys.byteorder)
        if not flags & _FS_TOPDIR_FL:
            fcntl.ioctl(fd, _FS_IOC_SETFLAGS, (flags | _FS_TOPDIR_FL).to_bytes(4, sys.byteorder))
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


ACTIVE = "active"
VIEW = "view"
COMMITTED = "committed"
KINDS = (ACTIVE, VIEW, COMMITTED)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS snapshots (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    key     TEXT NOT NULL UNIQUE,
    kind    TEXT NOT NULL CHECK (kind IN ('active', 'view', 'committed')),
    parent  INTEGER REFERENCES snapshots(id),
    created REAL NOT NULL,
    updated REAL NOT NULL,
    labels  TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS snapshots_parent ON snapshots(parent);
"""


@record(frozen=True)
class Mount:
    """One mount the caller performs: ``mount -t <type> <source> -o <options>``.

    ``cwd`` is set only when relative paths in ``options`` must be resolved from that directory (an
    overlay whose absolute option string would not fit in the kernel's one-page limit); the mount
    helper makes the mount from there, and the layer applier resolves them against it.
    """

    type: str
    source: str
    options: tuple[str, ...] = ()
    cwd: str | None = None

    def option(self, name: str) -> str | None:
        """The value of ``name=value`` in the options, or None."""
        prefix = name + "="
        for opt in self.options:
            if opt.startswith(prefix):
                return opt[len(prefix):]
        return None

    @property
    def readonly(self) -> bool:
        return "ro" in self.options

    def resolve(self, path: str) -> str:
        """An option path made absolute (relative ones are relative to ``cwd``)."""
        if os.path.isabs(path) or self.cwd is None:
            return path
        return os.path.join(self.cwd, path)

    def lower_dirs(self) -> list[str]:
        """An overlay's lower directories, nearest first, made absolute."""
        return [self.resolve(p) for p in (self.option("lowerdir") or "").split(":") if p]

    def to_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"type": self.type, "source": self.source, "options": list(self.options)}
        if self.cwd is not None:
            doc["cwd"] = self.cwd
        return doc


@record(frozen=True)
class Info:
    key: str
    kind: str
    parent: str | None
    created: float
    updated: float
    labels: dict[str, str] = field(default_factory=dict)
    #: The numeric id naming the snapshot's directory.
    id: int = 0


@record(frozen=True)
class Usage:
    """Disk use of one snapshot's own tree (not its parents'): bytes allocated and inodes."""

    size: int
    inodes: int


class Snapshotter:
    """Metadata and lifecycle common to every snapshotter; subclasses say how trees are made and mounted."""

    #: Name used in logs and ``system df``.
    name = "base"
    #: Whether a snapshot's tree holds only its own layer's changes (overlay's upper directories), so that
    #: an active snapshot made without a parent may be filled first and given its parent later (adopt).
    independent_layers = False

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self._root = os.path.abspath(root)
        os.makedirs(self._root, mode=0o700, exist_ok=True)
        db_path = os.path.join(self._root, "metadata.db")
        if not os.path.exists(db_path):  # a new store (a check only: berth run opens one)
            spread_subdirectories(self._root)
        self._lock = _thread.RLock()
        self._db = connect(db_path, [_SCHEMA], threads=True)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- public API -----------------------------------------------------------------------------------

    def prepare(self, key: str, parent: str | None = None, labels: Mapping[str, str] | None = None) -> list[Mount]:
        """Create the active snapshot ``key`` on top of the committed ``parent``; return its mounts."""
        return self._create(key, ACTIVE, parent, labels)

    def view(self, key: str, parent: str | None = None, labels: Mapping[str, str] | None = None) -> list[Mount]:
        """Create a read-only view ``key`` of the committed ``parent``; return its mounts."""
        return self._create(key, VIEW, parent, labels)

    def commit(self, name: str, key: str, labels: Mapping[str, str] | None = None) -> Info:
        """Turn the active snapshot ``key`` into the committed snapshot ``name``.

        AlreadyExists if ``name`` exists (another process committed the same layer first: the caller
        removes its own ``key``); InvalidArgument if ``key`` is not active.
        """
        _check_key(name)
        with self._write() as db:
            row = self._row(db, key)
            if row["kind"] != ACTIVE:
                raise InvalidArgument(f"snapshot {key!r} is a {row['kind']} snapshot; only active ones commit")
            if self._find(db, name) is not None:
                raise AlreadyExists(f"snapshot {name!r} already exists")
            merged = {**jsonc.loads(row["labels"]), **(labels or {})}
            db.execute("UPDATE snapshots SET key = ?, kind = ?, updated = ?, labels = ? WHERE id = ?",
                       (name, COMMITTED, time.time(), _labels_json(merged), row["id"]))
        return self.stat(name)

    def adopt(self, key: str, parent: str) -> None:
        """Give the active snapshot ``key``, made without a parent, the committed ``parent``.

        Why: a pull fills a layer's snapshot while the layer below is still being applied; it can only
        say which snapshot is below once that one is committed. Only snapshotters with
        ``independent_layers`` can: a copying snapshot's tree starts as a copy of its parent's.
        """
        if not self.independent_layers:
            raise Unsupported(f"the {self.name} snapshotter cannot give a snapshot a parent after it is made")
        _check_key(parent)
        with self._write() as db:
            row = self._row(db, key)
            if row["kind"] != ACTIVE or row["parent_key"] is not None:
                raise InvalidArgument(f"snapshot {key!r} is not an active snapshot without a parent")
            prow = self._row(db, parent)
            if prow["kind"] != COMMITTED:
                raise InvalidArgument(f"parent {parent!r} is not a committed snapshot")
            db.execute("UPDATE snapshots SET parent = ?, updated = ? WHERE id = ?",
                       (prow["id"], time.time(), row["id"]))

    def remove(self, key: str, trash: Trash | None = None) -> None:
        """Remove a snapshot and its tree (into ``trash`` when given, see fsutil.Trash). Conflict if
        other snapshots are built on it."""
        with self._write() as db:
            row = self._row(db, key)
            children = db.execute("SELECT key FROM snapshots WHERE parent = ? LIMIT 3", (row["id"],)).fetchall()
            if children:
                names = ", ".join(repr(c[0]) for c in children)
                raise Conflict(f"snapshot {key!r} has children ({names}); remove them first")
            db.execute("DELETE FROM snapshots WHERE id = ?", (row["id"],))
        self._remove_dir(row["id"], trash)

    def mounts(self, key: str) -> list[Mount]:
        """The mounts of ``key``: read-write for an active snapshot, read-only for a view or a committed one."""
        with self._lock:
            info = self._info(self._row(self._db, key))
            chain = self._chain(info.id)
        return self._mounts(info, chain)

    def stat(self, key: str) -> Info:
        with self._lock:
            return self._info(self._row(self._db, key))

    def exists(self, key: str) -> bool:
        with self._lock:
            return self._find(self._db, key) is not None

    def walk(self) -> list[Info]:
        """Every snapshot, oldest first."""
        with self._lock:
            rows = self._db.execute(_SELECT + " ORDER BY s.id").fetchall()
        return [self._info(r) for r in rows]

    def parents(self, key: str) -> list[str]:
        """The keys of ``key``'s ancestors, nearest first."""
        with self._lock:
            row = self._row(self._db, key)
            return [self._key_of(i) for i in self._chain(row["id"])[1:]]

    def usage(self, key: str) -> Usage:
        """Bytes and inodes of the snapshot's own tree (hardlinks counted once)."""
        return tree_usage(self.fs_path(self.stat(key).id))

    @property
    def root(self) -> Path:
        from pathlib import Path

        return Path(self._root)

    def fs_path(self, snapshot_id: int) -> str:
        """The snapshot's tree (the upper directory of an overlay snapshot)."""
        return os.path.join(self._root, str(snapshot_id), "fs")

    def cleanup(self) -> int:
        """Remove directories no snapshot owns (left by a crash); return how many."""
        spread_subdirectories(self._root)  # for roots made before berth set it
        removed = 0
        with self._write() as db:
            ids = {r[0] for r in db.execute("SELECT id FROM snapshots")}
            for name in os.listdir(self._root):
                if name.isdigit() and int(name) not in ids:
                    self._remove_dir(int(name))
                    removed += 1
        return removed

    # -- subclass hooks -------------------------------------------------------------------------------

    def _make_tree(self, snapshot_id: int) -> None:
        """Create ``<id>/`` and what the snapshot kind needs in it (called inside the write transaction)."""
        os.mkdir(os.path.join(self._root, str(snapshot_id)), 0o700)
        os.mkdir(self.fs_path(snapshot_id), 0o755)

    def _populate(self, info: Info, chain: list[int]) -> None:
        """Fill a new snapshot's tree from its parents (after the row is committed). Default: nothing."""

    def _mounts(self, info: Info, chain: list[int]) -> list[Mount]:
        raise NotImplementedError

    # -- internals ------------------------------------------------------------------------------------

    def _create(self, key: str, kind: str, parent: str | None, labels: Mapping[str, str] | None) -> list[Mount]:
        _check_key(key)
        if parent is not None:
            _check_key(parent)
        now = time.time()
        with self._write() as db:
            if self._find(db, key) is not None:
                raise AlreadyExists(f"snapshot {key!r} already exists")
            parent_id = None
            if parent is not None:
                prow = self._row(db, parent)
                if prow["kind"] != COMMITTED:
                    raise InvalidArgument(f"parent {parent!r} is not a committed snapshot")
                parent_id = prow["id"]
            cur = db.execute(
                "INSERT INTO snapshots (key, kind, parent, created, updated, labels) VALUES (?, ?, ?, ?, ?, ?)",
                (key, kind, parent_id, now, now, _labels_json(labels or {})),
            )
            snapshot_id = cur.lastrowid
            assert snapshot_id is not None
            try:
                self._make_tree(snapshot_id)
            except BaseException:
                self._remove_dir(snapshot_id)
                raise
        info = self.stat(key)
        with self._lock:
            chain = self._chain(snapshot_id)
        try:
            self._populate(info, chain)
        except BaseException:
            try:
                self.remove(key)
            except Exception:
                pass
            raise
        return self._mounts(info, chain)

    def _chain(self, snapshot_id: int) -> list[int]:
        """``snapshot_id`` followed by its ancestors' ids, nearest first."""
        rows = self._db.execute(
            "WITH RECURSIVE up(id, parent, depth) AS ("
            " SELECT id, parent, 0 FROM snapshots WHERE id = ?"
            " UNION ALL SELECT s.id, s.parent, up.depth + 1 FROM snapshots s JOIN up ON s.id = up.parent)"
            " SELECT id FROM up ORDER BY depth",
            (snapshot_id,),
        ).fetchall()
        return [r[0] for r in rows]

    def _key_of(self, snapshot_id: int) -> str:
        row = self._db.execute("SELECT key FROM snapshots WHERE id = ?", (snapshot_id,)).fetchone()
        if row is None:
            raise NotFound(f"snapshot #{snapshot_id} not found")
        return str(row[0])

    def _find(self, db: sqlite3.Connection, key: str) -> sqlite3.Row | None:
        row: sqlite3.Row | None = db.execute(_SELECT + " WHERE s.key = ?", (key,)).fetchone()
        return row

    def _row(self, db: sqlite3.Connection, key: str) -> sqlite3.Row:
        row = self._find(db, key)
        if row is None:
            raise NotFound(f"snapshot {key!r} not found")
        return row

    @staticmethod
    def _info(row: Any) -> Info:
        return Info(key=row["key"], kind=row["kind"], parent=row["parent_key"], created=row["created"],
                    updated=row["updated"], labels=jsonc.loads(row["labels"]), id=row["id"])

    def _write(self) -> write:
        """A write transaction, exclusive between threads and processes."""
        return write(self._db, self._lock)

    def _remove_dir(self, snapshot_id: int, trash: Trash | None = None) -> None:
        path = os.path.join(self._root, str(snapshot_id))
        if trash is not None:
            trash.take(path)
        else:
            remove_tree(path)


_SELECT = ("SELECT s.id AS id, s.key AS key, s.kind AS kind, p.key AS parent_key, s.created AS created,"
           " s.updated AS updated, s.labels AS labels"
           " FROM snapshots s LEFT JOIN snapshots p ON p.id = s.parent")


def _check_key(key: str) -> None:
    if not isinstance(key, str) or not key or len(key) > 1024 or "\0" in key:
        raise InvalidArgument(f"invalid snapshot key {key!r}")


def _labels_json(labels: Mapping[str, str]) -> str:
    """Labels as stored: keys sorted, so equal label sets are equal rows."""
    return jsonc.dumps(dict(sorted(labels.items())))


def tree_usage(path: str | os.PathLike[str]) -> Usage:
    """Bytes allocated (st_blocks) and inodes under ``path``, hardlinks counted once, symlinks not followed."""
    size = inodes = 0
    seen: set[tuple[int, int]] = set()
    stack = [os.fspath(path)]
    while stack:
        top = stack.pop()
        try:
            it = os.scandir(top)
        except (FileNotFoundError, NotADirectoryError):
            continue
        with it:
            for entry in it:
                st = entry.stat(follow_symlinks=False)
                if st.st_nlink > 1 and not stat.S_ISDIR(st.st_mode):
                    ident = (st.st_dev, st.st_ino)
                    if ident in seen:
                        continue
                    seen.add(ident)
                inodes += 1
                size += st.st_blocks * 512
                if stat.S_ISDIR(st.st_mode):
                    stack.append(entry.path)
    return Usage(size, inodes)
