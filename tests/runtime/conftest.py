"""Fixtures of the runtime tier: ``rt`` (berth-runtime bound to a private --root, with cleanup),
``cid`` (a host-unique container id) and ``console_server`` (the caller's end of --console-socket)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from rt_helpers import RT, ConsoleServer, new_id


@pytest.fixture
def rt(runtime_root: Path) -> Iterator[RT]:
    runtime = RT(runtime_root)
    yield runtime
    for cid in runtime.ids():
        runtime("delete", "--force", cid, check=False)
    # A container whose create never finished has a directory but no state.json.
    for leftover in runtime_root.iterdir() if runtime_root.exists() else []:
        if leftover.is_dir():
            runtime("delete", "--force", leftover.name, check=False)


@pytest.fixture
def cid() -> str:
    return new_id()


@pytest.fixture
def console_server(tmp_path: Path) -> Iterator[ConsoleServer]:
    server = ConsoleServer(tmp_path / "console.sock")
    yield server
    server.close()


