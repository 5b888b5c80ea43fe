"""Fixtures of the runtime tier: ``rt`` (berth-runtime bound to a private --root, with cleanup),
``cid`` (a host-unique container id) and ``console_server`` (the caller's end of --console-socket)."""

from __future__ import annotations

import shutil
import tempfile
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


@pytest.fixture(scope="session")
def userns_rootfs(busybox_rootfs: Path) -> Iterator[Path]:
    """The busybox rootfs where a user namespace's root (an unprivileged host uid) can reach it:
    pytest's base directory is 0700, so the shared rootfs under it is out of that uid's reach."""
    base = Path(tempfile.mkdtemp(prefix="berth-userns-"))
    base.chmod(0o755)
    shutil.copytree(busybox_rootfs, base / "rootfs", symlinks=True)
    yield base / "rootfs"
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def console_server(tmp_path: Path) -> Iterator[ConsoleServer]:
    server = ConsoleServer(tmp_path / "console.sock")
    yield server
    server.close()


