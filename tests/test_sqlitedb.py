"""berth.sqlitedb: how every state database is opened and migrated."""

from __future__ import annotations

from pathlib import Path

import pytest

from berth.errors import InvalidArgument
from berth.sqlitedb import connect, migrate
from support import run_python

pytestmark = pytest.mark.unit

MIGRATIONS = ["CREATE TABLE a (x INTEGER); CREATE TABLE b (y TEXT)", "ALTER TABLE a ADD COLUMN z INTEGER"]


def test_migrations_run_in_order_once(tmp_path: Path) -> None:
    path = str(tmp_path / "s.db")
    conn = connect(path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    migrate(conn, path, MIGRATIONS[:1])
    migrate(conn, path, MIGRATIONS)
    migrate(conn, path, MIGRATIONS)  # current: nothing to do
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 2
    assert [r[1] for r in conn.execute("PRAGMA table_info(a)")] == ["x", "z"]


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = str(tmp_path / "s.db")
    conn = connect(path)
    migrate(conn, path, MIGRATIONS)
    with pytest.raises(InvalidArgument, match=r"s\.db: schema version 2 is newer than this berth \(1\)"):
        migrate(conn, path, MIGRATIONS[:1])
    with pytest.raises(InvalidArgument, match=r"s\.db: schema version 2 is newer than this berth \(1\)"):
        connect(path, MIGRATIONS[:1])  # what every component does on open


def test_connect_brings_the_schema_up_to_date(tmp_path: Path) -> None:
    path = str(tmp_path / "s.db")
    connect(path, MIGRATIONS[:1])
    conn = connect(path, MIGRATIONS)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 2
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert [r[1] for r in conn.execute("PRAGMA table_info(a)")] == ["x", "z"]


def test_many_threads_opening_a_new_database_at_once(tmp_path: Path) -> None:
    """Two openers of a new file race to switch it to WAL; the loser waits instead of failing."""
    import threading

    path = str(tmp_path / "new.db")
    errors: list[BaseException] = []
    barrier = threading.Barrier(8)

    def open_it() -> None:
        try:
            barrier.wait()
            conn = connect(path)
            migrate(conn, path, MIGRATIONS)
            conn.close()
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=open_it) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert connect(path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_sqlite_is_loaded_without_functools_yet_caches_statements(tmp_path: Path) -> None:
    """_sqlite3 asks functools for lru_cache only; a stand-in serves it and is gone afterwards."""
    out = run_python(
        "from berth.sqlitedb import connect\n"
        f"conn = connect({str(tmp_path / 'x.db')!r})\n"
        "conn.execute('CREATE TABLE t (v INTEGER)')\n"
        "for i in range(300):\n"
        "    conn.execute('INSERT INTO t VALUES (?)', (i,))\n"
        "    conn.execute(f'SELECT {i % 150}').fetchone()\n"
        "print(conn.execute('SELECT count(*), sum(v) FROM t').fetchone()[:],\n"
        "      'functools' in sys.modules, 'collections' in sys.modules)\n"
        "import functools\n"
        "print(functools.reduce(lambda a, b: a + b, [1, 2, 3]), hasattr(functools, 'partial'))\n")
    assert out.split("\n")[:2] == ["(300, 44850) False False", "6 True"]
