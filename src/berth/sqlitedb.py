"""SQLite as every berth state database uses it.

There is no daemon: several berth processes write the same database at once, so each change is one
``BEGIN IMMEDIATE`` transaction (the write lock taken up front, waiting out other writers through
the busy timeout) in WAL mode, never a read-modify-write of a file.

Berth uses SQLite through the ``_sqlite3`` extension the ``sqlite3`` package wraps: the package
adds only date/time adapters berth does not use, and importing it brings ``datetime`` along
(~1 ms on every command, `berth run` included). Its exceptions and Row are re-exported here.
"""

from __future__ import annotations

import time

from berth.errors import InvalidArgument

TYPE_CHECKING = False
if TYPE_CHECKING:
    import sqlite3
    from typing import Any


def _lru_cache(maxsize: int) -> Any:
    """``functools.lru_cache`` as ``_sqlite3`` calls it: ``lru_cache(size)(connection)``, the C cache."""
    from _functools import _lru_cache_wrapper  # type: ignore[import-not-found]  # C, no stub

    return lambda function: _lru_cache_wrapper(function, maxsize, False, tuple)


def _import_sqlite3() -> None:
    """Import ``_sqlite3`` without ``functools``.

    CPython 3.10-3.12's ``_sqlite3`` imports ``functools`` only to take ``lru_cache`` for each
    connection's statement cache, and ``functools`` brings ``collections``, ``operator``,
    ``reprlib``, ``keyword`` and ``types``: ~1.2 ms of every berth command, `berth run` included,
    for one call that ends in the C ``_lru_cache_wrapper``. While the extension initialises, a
    stand-in ``functools`` offering that one call is in ``sys.modules``; the real one (if anything
    later imports it) is untouched. A ``functools`` already imported is used as it is.
    """
    import sys

    if "functools" in sys.modules:
        return
    stand_in = type(sys)("functools")
    stand_in.lru_cache = _lru_cache  # type: ignore[attr-defined]
    sys.modules["functools"] = stand_in
    try:
        import _sqlite3  # noqa: F401
    finally:
        if sys.modules.get("functools") is stand_in:
            del sys.modules["functools"]


try:
    _import_sqlite3()
    from _sqlite3 import Error, IntegrityError, OperationalError, Row
    from _sqlite3 import connect as _connect
except ImportError:  # an interpreter that builds the extension into the package
    from sqlite3 import Error, IntegrityError, OperationalError, Row
    from sqlite3 import connect as _connect

__all__ = ["Error", "IntegrityError", "OperationalError", "Row", "connect", "migrate", "write"]

# Checkpoint the WAL every 100 pages, not SQLite's 1,000. berth commands exit without closing their
# connections, so the first connection of each process finds no live wal-index and rebuilds it by
# reading every frame since the last checkpoint: ~1.5 µs a frame, up to 1.5 ms per database on every
# `berth run` with the default. A checkpoint of 100 frames (a few distinct pages) costs ~1 ms about
# every tenth command instead.
_WAL_PAGES = 100


def connect(path: str, migrations: list[str] | None = None, timeout: float = 60.0, *,
            threads: bool = False) -> sqlite3.Connection:
    """A connection as every berth database wants it: autocommit (transactions are explicit, see
    write()), rows by column name, foreign keys on, WAL with synchronous=NORMAL — a commit is atomic
    and survives a crash of any process; a power cut can lose the last commits, never consistency.
    With ``migrations``, the schema is brought up to date as migrate() does.

    WAL is a property of the file, so it is set only on a database nobody has set up yet
    (user_version 0): on every open it would cost a lock round (~0.5 ms on `berth run`'s path, per
    database). ``threads``: the connection is shared between threads (the caller serialises).
    """
    conn: sqlite3.Connection = _connect(path, timeout=timeout, isolation_level=None, check_same_thread=not threads)
    conn.row_factory = Row
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version == 0:
        _set_wal(conn, timeout)
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute(f"PRAGMA wal_autocheckpoint={_WAL_PAGES}")
    if migrations is not None and version != len(migrations):
        _migrate(conn, path, migrations)
    return conn


def _set_wal(conn: sqlite3.Connection, timeout: float) -> None:
    """Switch a new database to WAL. Another process or thread opening the same new file at that
    moment makes the switch fail at once with "database is locked" (the busy timeout does not
    cover it): try again until it succeeds (it is then WAL, whoever switched it) or ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except OperationalError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.01)


class write:  # lower case: used like a function, `with write(conn) as db:`
    """One write transaction that holds SQLite's write lock from its first statement; committed
    when the block ends, rolled back when it raises. ``lock`` (a threading lock) is held around it
    when threads share the connection. A class, not a contextlib generator: contextlib is not
    imported on `berth run`'s path."""

    def __init__(self, conn: sqlite3.Connection, lock: Any = None) -> None:
        self.conn = conn
        self.lock = lock

    def __enter__(self) -> sqlite3.Connection:
        if self.lock is not None:
            self.lock.acquire()
        try:
            self.conn.execute("BEGIN IMMEDIATE")
        except BaseException:
            if self.lock is not None:
                self.lock.release()
            raise
        return self.conn

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        try:
            self.conn.execute("COMMIT" if exc_type is None else "ROLLBACK")
        finally:
            if self.lock is not None:
                self.lock.release()


def migrate(conn: sqlite3.Connection, path: str, migrations: list[str]) -> None:
    """Bring the schema to version ``len(migrations)``: script N (statements separated by ";")
    takes a database from version N to N+1, recorded in ``PRAGMA user_version``. A database
    from a newer berth is refused rather than misread. A current one is seen without taking the
    write lock (every berth command opens its databases)."""
    if conn.execute("PRAGMA user_version").fetchone()[0] != len(migrations):
        _migrate(conn, path, migrations)


def _migrate(conn: sqlite3.Connection, path: str, migrations: list[str]) -> None:
    """migrate() once the schema was seen not current: the version is read again under the lock."""
    target = len(migrations)
    with write(conn) as db:
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version > target:
            raise InvalidArgument(f"{path}: schema version {version} is newer than this berth ({target})")
        for script in migrations[version:]:
            for statement in script.split(";"):
                if statement.strip():
                    db.execute(statement)
        db.execute(f"PRAGMA user_version = {target}")
