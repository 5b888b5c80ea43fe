"""SQLite as every berth state database uses it.

There is no daemon: several berth processes write the same database at once, so each change is one
``BEGIN IMMEDIATE`` transaction (the write lock taken up front, waiting out other writers through
the busy timeout) in WAL mode, never a read-modify-write of a file.
"""

from __future__ import annotations

import contextlib
import sqlite3

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator


@contextlib.contextmanager
def write(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One write transaction that holds SQLite's write lock from its first statement."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
