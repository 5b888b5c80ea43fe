"""A real engine drives berth-runtime: podman runs, execs into, stops and removes containers with it.

podman keeps its storage in a temporary directory, so the host's images and containers are never
touched; the image is imported from the session's busybox rootfs.
"""

from __future__ import annotations

import subprocess
import sys
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from support import need_tool

pytestmark = [pytest.mark.root, pytest.mark.integration]

BERTH_RUNTIME = str(Path(sys.executable).parent / "berth-runtime")
IMAGE = "localhost/berth-test-busybox:latest"

Podman = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture(scope="module")
def podman(tmp_path_factory: pytest.TempPathFactory, busybox_rootfs: Path) -> Podman:
    exe = need_tool("podman")
    need_tool("conmon")
    base = tmp_path_factory.mktemp("podman")
    conf = base / "containers.conf"
    # Root here lacks CAP_SYS_RESOURCE (hard nofile 20000): podman's defaults would exceed it.
    conf.write_text(
        '[containers]\ndefault_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]\n'
        '[engine]\ncgroup_manager = "cgroupfs"\nevents_logger = "file"\n'
    )
    env = {"CONTAINERS_CONF": str(conf), "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
    argv0 = [exe, "--root", str(base / "root"), "--runroot", str(base / "run"), "--storage-driver", "vfs",
             "--runtime", BERTH_RUNTIME]

    def run(*args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        res = subprocess.run([*argv0, *args], capture_output=True, text=True, env=env, timeout=timeout)
        if check and res.returncode != 0:
            raise AssertionError(f"podman {' '.join(args)} failed ({res.returncode}): {res.stderr}")
        return res

    tar = base / "rootfs.tar"
    with tarfile.open(tar, "w") as tf:
        tf.add(busybox_rootfs, arcname=".")
    run("import", str(tar), IMAGE)
    yield run
    run("rm", "-af", "-t", "0", check=False)


def test_podman_run_with_berth_runtime(podman: Podman) -> None:
    res = podman("run", "--rm", "--network", "none", IMAGE, "sh", "-c", "echo hello; echo $$")
    assert res.stdout.split() == ["hello", "1"]


def test_podman_exit_code(podman: Podman) -> None:
    res = podman("run", "--rm", "--network", "none", IMAGE, "sh", "-c", "exit 7", check=False)
    assert res.returncode == 7


def test_podman_exec_stop_rm(podman: Podman) -> None:
    script = "trap 'exit 0' TERM; while :; do sleep 0.1; done"
    cid = podman("run", "-d", "--name", "bt1", "--network", "none", IMAGE, "sh", "-c", script).stdout.strip()
    assert cid
    res = podman("exec", "bt1", "sh", "-c", "echo in; cat /proc/1/cmdline | tr '\\0' ' '")
    assert res.stdout.splitlines()[0] == "in"
    assert "while" in res.stdout
    missing = podman("exec", "bt1", "no-such-command", check=False)
    assert missing.returncode == 127
    inspect = podman("inspect", "--format", "{{.State.Status}}", "bt1").stdout.strip()
    assert inspect == "running"
    podman("stop", "-t", "5", "bt1")
    assert podman("inspect", "--format", "{{.State.Status}} {{.State.ExitCode}}", "bt1").stdout.split() == [
        "exited", "0"]
    podman("rm", "bt1")
    assert "bt1" not in podman("ps", "-a", "--format", "{{.Names}}").stdout.split()


def test_podman_tty(podman: Podman) -> None:
    res = podman("run", "--rm", "-t", "--network", "none", IMAGE, "sh", "-c", "test -t 0 && echo is-a-tty")
    assert "is-a-tty" in res.stdout
