"""An Engine with private storage, and the ``berth`` CLI pointed at it, with a busybox image imported."""

from __future__ import annotations

import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from berth.engine.engine import Engine

BIN = Path(sys.executable).parent
IMAGE = "localhost/busybox:latest"


@pytest.fixture(scope="module")
def engine_dirs(tmp_path_factory: pytest.TempPathFactory, busybox_rootfs: Path) -> tuple[str, str]:
    base = tmp_path_factory.mktemp("engine")
    root, runroot = str(base / "root"), f"/run/berth-test-{base.name}"
    tar = base / "rootfs.tar"
    with tarfile.open(tar, "w") as tf:
        tf.add(busybox_rootfs, arcname=".")
    with Engine(root, runroot) as e:
        e.import_image(str(tar), IMAGE)
    return root, runroot


@pytest.fixture
def engine(engine_dirs: tuple[str, str]) -> Iterator[Engine]:
    e = Engine(*engine_dirs)
    yield e
    for c in e.containers():
        e.remove(c.id, force=True)
    e.close()


@pytest.fixture
def berth(engine_dirs: tuple[str, str]):  # type: ignore[no-untyped-def]
    root, runroot = engine_dirs

    def run(*args: str, input: str | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(BIN / "berth"), "--root", root, "--runroot", runroot, *args],
                              capture_output=True, text=True, input=input, timeout=timeout)

    return run
