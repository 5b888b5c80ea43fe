"""Fixtures for the image commands end to end: a real registry (from tests/registry's helpers), fresh
berth roots, and the ``berth`` CLI pointed at one of them."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from reg_helpers import (
    isolate_registry_env,
)

BIN = Path(sys.executable).parent


@pytest.fixture(autouse=True)
def registry_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    return isolate_registry_env(tmp_path / "registry-env", monkeypatch)


@pytest.fixture(scope="session")
def rootfs_tar(tmp_path_factory: pytest.TempPathFactory, busybox_rootfs: Path) -> Path:
    tar = tmp_path_factory.mktemp("rootfs") / "rootfs.tar"
    with tarfile.open(tar, "w") as tf:
        tf.add(busybox_rootfs, arcname=".")
    return tar


Berth = Callable[..., "subprocess.CompletedProcess[str]"]


class Roots:
    """Fresh berth roots (storage and runtime state) for one test, removed afterwards."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.made: list[tuple[str, str]] = []

    def new(self) -> tuple[str, str]:
        n = len(self.made)
        root, runroot = str(self.base / f"root{n}"), f"/run/berth-test-{self.base.name}-{n}"
        self.made.append((root, runroot))
        return root, runroot

    def cli(self, root: str, runroot: str) -> Berth:
        def run(*args: str, input: str | bytes | None = None, timeout: float = 60,
                text: bool = True) -> subprocess.CompletedProcess[str]:
            return subprocess.run([str(BIN / "berth"), "--root", root, "--runroot", runroot, *args],
                                  capture_output=True, text=text, input=input, timeout=timeout)

        return run


@pytest.fixture
def roots(tmp_path: Path) -> Iterator[Roots]:
    r = Roots(tmp_path)
    yield r
    for root, runroot in r.made:
        from berth.engine.engine import Engine

        with Engine(root, runroot) as e:
            for c in e.containers():
                e.remove(c.id, force=True)
        shutil.rmtree(runroot, ignore_errors=True)


@pytest.fixture
def berth(roots: Roots, rootfs_tar: Path) -> Berth:
    """The CLI on a fresh root holding ``localhost/busybox:latest``."""
    run = roots.cli(*roots.new())
    res = run("import", str(rootfs_tar), "localhost/busybox:latest")
    assert res.returncode == 0, res.stderr
    return run
