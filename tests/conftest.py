"""Fixtures every tier reuses: a busybox root filesystem, OCI bundles, tool and privilege checks.

The busybox rootfs is built once per session from Debian's busybox-static; bundles copy nothing but
point their ``root.path`` at a per-test copy only when a test needs to write to it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from berth.runtime.spec_template import default_spec
from support import need_tool

BUSYBOX = "/bin/busybox"
VENV_BIN = Path(sys.executable).parent

# Containers made without --network join the default bridge, as with Docker. The tests that are not
# about networking use none, as they were written for: a bridge costs each container ~100 ms of
# set-up and teardown. tests/engine/test_networking.py checks the real default explicitly.
os.environ.setdefault("BERTH_NETWORK", "none")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``root`` skip with a reason when not run as root, never silently pass."""
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="needs root: the real kernel is exercised")
    for item in items:
        if "root" in item.keywords:
            item.add_marker(skip)


def build_busybox_rootfs(dest: Path) -> Path:
    """Lay out a minimal rootfs: busybox and a symlink per applet, plus the usual empty dirs."""
    if not os.path.exists(BUSYBOX):
        pytest.skip("busybox-static is not installed (.ci/run installs it)")
    for d in ("bin", "sbin", "usr/bin", "usr/sbin", "etc", "proc", "sys", "dev", "tmp", "root", "var"):
        (dest / d).mkdir(parents=True, exist_ok=True)
    shutil.copy2(BUSYBOX, dest / "bin/busybox")
    applets = subprocess.run(
        [BUSYBOX, "--list-full"], check=True, capture_output=True, text=True
    ).stdout.split()
    for applet in applets:
        link = dest / applet
        if not link.exists() and not link.is_symlink():
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to("/bin/busybox")
    (dest / "etc/passwd").write_text(
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
        "app:x:1000:1000:app:/home/app:/bin/sh\n"
    )
    (dest / "etc/group").write_text("root:x:0:\ntty:x:5:\nnogroup:x:65534:\napp:x:1000:\nextra:x:2000:app\n")
    (dest / "tmp").chmod(0o1777)
    return dest


@pytest.fixture(scope="session")
def busybox_rootfs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A read-only-by-convention busybox rootfs shared by the whole session."""
    return build_busybox_rootfs(tmp_path_factory.mktemp("busybox") / "rootfs")


BundleFactory = Callable[..., Path]


@pytest.fixture
def make_bundle(tmp_path: Path, busybox_rootfs: Path) -> BundleFactory:
    """Return ``make(args, writable=False, **edit)`` creating a bundle whose config runs ``args``.

    ``edit`` is a callable receiving the spec dict to change it in place. With ``writable`` the
    rootfs is a private copy the container may change; otherwise the shared one is used read-only.
    """
    counter = iter(range(1000))

    def make(
        args: list[str] | None = None,
        *,
        writable: bool = False,
        edit: Callable[[dict[str, Any]], None] | None = None,
        terminal: bool = False,
    ) -> Path:
        bundle = tmp_path / f"bundle{next(counter)}"
        bundle.mkdir()
        spec = default_spec()
        spec["process"]["terminal"] = terminal
        spec["process"]["args"] = args or ["true"]
        if writable:
            shutil.copytree(busybox_rootfs, bundle / "rootfs", symlinks=True)
            spec["root"] = {"path": "rootfs", "readonly": False}
        else:
            spec["root"] = {"path": str(busybox_rootfs), "readonly": True}
        if edit is not None:
            edit(spec)
        (bundle / "config.json").write_text(json.dumps(spec, indent=2))
        return bundle

    return make


@pytest.fixture(scope="session")
def umoci_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bundle unpacked by an independent tool: umoci builds an OCI image from busybox and unpacks it."""
    umoci = need_tool("umoci")
    base = tmp_path_factory.mktemp("umoci")
    layout = base / "layout"
    rootfs = build_busybox_rootfs(base / "src")

    def run(*argv: str) -> None:
        subprocess.run([umoci, *argv], check=True, capture_output=True)

    run("init", "--layout", str(layout))
    run("new", "--image", f"{layout}:busybox")
    run("insert", "--image", f"{layout}:busybox", str(rootfs), "/")
    run("config", "--image", f"{layout}:busybox", "--config.cmd", "/bin/sh",
        "--config.env", "PATH=/bin:/sbin:/usr/bin:/usr/sbin")
    bundle = base / "bundle"
    run("unpack", "--image", f"{layout}:busybox", str(bundle))
    return bundle


@pytest.fixture
def runtime_root(tmp_path: Path) -> Iterator[Path]:
    """A private --root for berth-runtime so tests never see each other's containers."""
    root = tmp_path / "state"
    root.mkdir()
    yield root


ENGINE_IMAGE = "localhost/busybox:latest"


@pytest.fixture(scope="module")
def engine_dirs(tmp_path_factory: pytest.TempPathFactory, busybox_rootfs: Path) -> tuple[str, str]:
    """Private engine storage (root, runroot) holding ``localhost/busybox:latest``, per test module."""
    import tarfile

    from berth.engine.engine import Engine

    base = tmp_path_factory.mktemp("engine")
    root, runroot = str(base / "root"), f"/run/berth-test-{base.name}"
    tar = base / "rootfs.tar"
    with tarfile.open(tar, "w") as tf:
        tf.add(busybox_rootfs, arcname=".")
    with Engine(root, runroot) as e:
        e.import_image(str(tar), ENGINE_IMAGE)
    return root, runroot


@pytest.fixture
def engine(engine_dirs: tuple[str, str]) -> Iterator[Any]:
    """An Engine on ``engine_dirs``; containers a test leaves behind are removed."""
    from berth.engine.engine import Engine

    e = Engine(*engine_dirs)
    yield e
    for c in e.containers():
        e.remove(c.id, force=True)
    e.close()


@pytest.fixture
def berth(engine_dirs: tuple[str, str]) -> Callable[..., subprocess.CompletedProcess[Any]]:
    """Run the ``berth`` CLI on ``engine_dirs`` (text unless ``input`` is bytes)."""
    root, runroot = engine_dirs

    def run(*args: str, input: str | bytes | None = None, timeout: float = 60,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[Any]:
        return subprocess.run([str(VENV_BIN / "berth"), "--root", root, "--runroot", runroot, *args],
                              capture_output=True, text=not isinstance(input, bytes), input=input,
                              timeout=timeout, env={**os.environ, **(env or {})})

    return run


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Debian's docker-registry on a free 127.0.0.1 port (see tests/reg_helpers.py)."""
    from reg_helpers import start_registry

    server = start_registry(tmp_path_factory.mktemp("registry"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def registry_htpasswd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The same with HTTP basic auth: ``.username``, ``.password``, ``.creds``."""
    from reg_helpers import start_htpasswd_registry

    server = start_htpasswd_registry(tmp_path_factory.mktemp("registry-htpasswd"))
    yield server
    server.stop()
