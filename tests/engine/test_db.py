"""The engine's SQLite state: migrations and the name uniqueness rule."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from berth.engine import db as dbmod
from berth.engine.db import Database
from berth.errors import AlreadyExists, NotFound

pytestmark = pytest.mark.unit


def test_upgrade_from_schema_1_keeps_rows(tmp_path: Path) -> None:
    path = str(tmp_path / "berth.db")
    conn = sqlite3.connect(path)
    conn.executescript(dbmod.MIGRATIONS[0])
    conn.execute("PRAGMA user_version = 1")
    conn.execute("INSERT INTO containers VALUES ('c1', 'old', 'img', 'sha256:x', 1.0, '{}')")
    conn.execute("INSERT INTO container_state (id, status) VALUES ('c1', 'exited')")
    conn.commit()
    conn.close()
    db = Database(path)
    row = db.find("old")
    assert (row["status"], row["pid_start"], row["stopped_by_user"]) == ("exited", 0, 0)
    assert db.conn.execute("PRAGMA user_version").fetchone()[0] == len(dbmod.MIGRATIONS)


def test_names_unique_and_lookup_by_prefix(tmp_path: Path) -> None:
    db = Database(str(tmp_path / "berth.db"))
    db.add_container("ab" * 32, "one", "img", "sha256:x", {})
    with pytest.raises(AlreadyExists):
        db.add_container("cd" * 32, "one", "img", "sha256:x", {})
    assert db.find("abab")["name"] == "one"
    with pytest.raises(NotFound):
        db.find("nothing")
