"""Named volumes as Docker keeps them: a directory per volume (``<root>/volumes/<name>/_data``)
with its metadata in the engine's database, so create/rm race safely between berth processes.

Which containers use a volume is the engine's knowledge (their configs name it); this store only
refuses to remove a volume the caller says is in use.
"""

from __future__ import annotations

import os
import shutil
import time

from berth.errors import AlreadyExists, Conflict, InvalidArgument, NotFound
from berth.oci import jsonc
from berth.sqlitedb import IntegrityError, write

TYPE_CHECKING = False
if TYPE_CHECKING:
    import sqlite3
    from collections.abc import Sequence
    from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS volumes (
    name    TEXT PRIMARY KEY,
    driver  TEXT NOT NULL,
    created REAL NOT NULL,
    labels  TEXT NOT NULL,          -- JSON object
    options TEXT NOT NULL           -- JSON object
)
"""
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")


def check_name(name: str) -> None:
    if not name or not name[0].isalnum() or not _NAME_CHARS.issuperset(name) or len(name) > 255:
        raise InvalidArgument(f"invalid volume name {name!r}: use [a-zA-Z0-9][a-zA-Z0-9_.-]*")


class Volume:
    def __init__(self, row: sqlite3.Row, root: str) -> None:
        self.name: str = row["name"]
        self.driver: str = row["driver"]
        self.created: float = row["created"]
        self.labels: dict[str, str] = jsonc.loads(row["labels"])
        self.options: dict[str, str] = jsonc.loads(row["options"])
        self.mountpoint = os.path.join(root, self.name, "_data")

    def inspect(self) -> dict[str, Any]:
        from berth.monitor.logfile import timestamp

        return {"Name": self.name, "Driver": self.driver, "Mountpoint": self.mountpoint,
                "CreatedAt": timestamp(self.created), "Labels": self.labels, "Options": self.options,
                "Scope": "local"}


class VolumeStore:
    def __init__(self, conn: sqlite3.Connection, root: str) -> None:
        self.conn = conn
        self.root = root
        conn.execute(SCHEMA)

    def create(self, name: str | None = None, labels: dict[str, str] | None = None,
               options: dict[str, str] | None = None, exist_ok: bool = False) -> Volume:
        """Create a volume (a random name when none is given); ``exist_ok`` returns an existing one,
        as ``-v name:/path`` does for a name not yet created."""
        name = name or os.urandom(32).hex()
        check_name(name)
        if options:
            raise InvalidArgument(f"volume options are not supported by the local driver yet: {sorted(options)}")
        try:
            with write(self.conn) as db:
                db.execute("INSERT INTO volumes VALUES (?, 'local', ?, ?, ?)",
                           (name, time.time(), jsonc.dumps(labels or {}), jsonc.dumps(options or {})))
        except IntegrityError:
            if exist_ok:
                return self.get(name)
            raise AlreadyExists(f"volume {name} already exists") from None
        os.makedirs(os.path.join(self.root, name, "_data"), mode=0o755, exist_ok=True)
        return self.get(name)

    def get(self, name: str) -> Volume:
        row = self.conn.execute("SELECT * FROM volumes WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise NotFound(f"no such volume: {name}")
        return Volume(row, self.root)

    def list(self) -> list[Volume]:
        return [Volume(r, self.root) for r in self.conn.execute("SELECT * FROM volumes ORDER BY name")]

    def remove(self, name: str, in_use_by: Sequence[str] = ()) -> None:
        volume = self.get(name)
        if in_use_by:
            raise Conflict(f"volume {name} is in use by container(s) {', '.join(c[:12] for c in in_use_by)}")
        with write(self.conn) as db:
            db.execute("DELETE FROM volumes WHERE name = ?", (name,))
        shutil.rmtree(os.path.dirname(volume.mountpoint), ignore_errors=True)

    def usage(self, name: str) -> int:
        """Bytes under the volume's directory."""
        total = 0
        for dirpath, _dirs, files in os.walk(self.get(name).mountpoint):
            for f in files:
                try:
                    total += os.lstat(os.path.join(dirpath, f)).st_size
                except OSError:
                    pass
        return total
