"""An Engine with private storage and a busybox image, for building on; a helper to write contexts."""

from __future__ import annotations

import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from berth.engine.engine import Engine

BIN = Path(sys.executable).parent
BASE = "localhost/busybox:latest"


@pytest.fixture(scope="module")
def build_dirs(tmp_path_factory: pytest.TempPathFactory, busybox_rootfs: Path) -> tuple[str, str]:
    base = tmp_path_factory.mktemp("build")
    root, runroot = str(base / "root"), f"/run/berth-test-{base.name}"
    tar = base / "rootfs.tar"
    with tarfile.open(tar, "w") as tf:
        tf.add(busybox_rootfs, arcname=".")
    with Engine(root, runroot) as e:
        e.import_image(str(tar), BASE)
    return root, runroot


@pytest.fixture
def engine(build_dirs: tuple[str, str]) -> Iterator[Engine]:
    e = Engine(*build_dirs)
    yield e
    for c in e.containers():
        e.remove(c.id, force=True)
    e.close()


@pytest.fixture
def berth(build_dirs: tuple[str, str]):  # type: ignore[no-untyped-def]
    root, runroot = build_dirs

    def run(*args: str, input: str | bytes | None = None, timeout: float = 60,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        import os

        return subprocess.run([str(BIN / "berth"), "--root", root, "--runroot", runroot, *args],
                              capture_output=True, text=isinstance(input, str) or input is None,
                              input=input, timeout=timeout, env={**os.environ, **(env or {})})

    return run


def write_context(root: Path, files: dict[str, str]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return root
