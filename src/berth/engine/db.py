"""The engine's state: one SQLite database (WAL) shared by every berth process.

There is no daemon, so fifty ``berth run -d`` may write at once: every write is one short
``BEGIN IMMEDIATE`` transaction with a generous busy timeout, never a read-modify-write of a file.
A container's immutable configuration (``containers``) is kept apart from its mutable state
(``container_state``), so a state update never rewrites what the user asked for.

Schema changes are migrations in ``MIGRATIONS``; ``PRAGMA user_version`` records how many ran.
"""

from __future__ import annotations

import time

from berth.errors import AlreadyExists, NotFound
from berth.oci import jsonc
from berth.sqlitedb import IntegrityError, connect, write

TYPE_CHECKING = False
if TYPE_CHECKING:
    import sqlite3
    from typing import Any

MIGRATIONS = [
    # 1: containers and their state
    """
    CREATE TABLE containers (
        id       TEXT PRIMARY KEY,            -- 64 hex digits
        name     TEXT NOT NULL UNIQUE,
        image    TEXT NOT NULL,               -- the reference the user gave
        image_id TEXT NOT NULL,               -- config digest
        created  REAL NOT NULL,               -- unix time
        config   TEXT NOT NULL                -- JSON: the options the container was created with
    );
    CREATE TABLE container_state (
        id            TEXT PRIMARY KEY REFERENCES containers(id) ON DELETE CASCADE,
        status        TEXT NOT NULL,          -- created, running, paused, exited
        pid           INTEGER NOT NULL DEFAULT 0,
        exit_code     INTEGER NOT NULL DEFAULT 0,
        oom_killed    INTEGER NOT NULL DEFAULT 0,
        started_at    REAL NOT NULL DEFAULT 0,
        finished_at   REAL NOT NULL DEFAULT 0,
        restart_count INTEGER NOT NULL DEFAULT 0,
        error         TEXT NOT NULL DEFAULT ''
    );
    """,
    # 2: the init's start time beside its pid (a recycled pid is never taken for the container, e.g.
    # after a reboot), and whether the user stopped it (unless-stopped is not restarted at boot)
    """
    ALTER TABLE container_state ADD COLUMN pid_start INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE container_state ADD COLUMN stopped_by_user INTEGER NOT NULL DEFAULT 0;
    """,
]

class Database:
    def __init__(self, path: str) -> None:
        self.conn = connect(path, MIGRATIONS)

    def close(self) -> None:
        self.conn.close()

    def add_container(self, cid: str, name: str, image: str, image_id: str, config: dict[str, Any]) -> None:
        try:
            with write(self.conn) as db:
                db.execute("INSERT INTO containers VALUES (?, ?, ?, ?, ?, ?)",
                           (cid, name, image, image_id, time.time(), jsonc.dumps(config)))
                db.execute("INSERT INTO container_state (id, status) VALUES (?, 'created')", (cid,))
        except IntegrityError:
            raise AlreadyExists(f'the container name "{name}" is already in use') from None

    def update_state(self, cid: str, **fields: Any) -> None:
        sets = ", ".join(f"{k} = ?" for k in fields)
        self.conn.execute(f"UPDATE container_state SET {sets} WHERE id = ?", (*fields.values(), cid))

    def update_config(self, cid: str, config: dict[str, Any]) -> None:
        """Replace the options a container was created with (``berth update`` changes its limits)."""
        self.conn.execute("UPDATE containers SET config = ? WHERE id = ?", (jsonc.dumps(config), cid))

    def rename(self, cid: str, name: str) -> None:
        try:
            self.conn.execute("UPDATE containers SET name = ? WHERE id = ?", (name, cid))
        except IntegrityError:
            raise AlreadyExists(f'the container name "{name}" is already in use') from None

    def remove_container(self, cid: str) -> None:
        self.conn.execute("DELETE FROM containers WHERE id = ?", (cid,))

    def rows(self) -> list[sqlite3.Row]:
        return self.conn.execute(
            "SELECT * FROM containers JOIN container_state USING (id) ORDER BY created DESC").fetchall()

    def find(self, ref: str) -> sqlite3.Row:
        """A container by name, full id or unique id prefix."""
        rows = self.conn.execute(
            "SELECT * FROM containers JOIN container_state USING (id) WHERE name = ? OR id = ?",
            (ref.lstrip("/"), ref)).fetchall()
        if not rows and ref and all(c in "0123456789abcdef" for c in ref):
            rows = self.conn.execute("SELECT * FROM containers JOIN container_state USING (id) WHERE id LIKE ?",
                                     (ref + "%",)).fetchall()
        if not rows:
            raise NotFound(f"no such container: {ref}")
        if len(rows) > 1:
            raise NotFound(f"container id prefix {ref} is ambiguous")
        return rows[0]
