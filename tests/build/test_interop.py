"""Images cross between berth and the other tools: one built by berth, pushed to the local registry,
is pulled and run by podman; one built by ``buildah bud`` is a berth Dockerfile's FROM (through the
registry, and through an oci-archive).

podman and buildah keep their storage under the test's temporary directory (vfs driver), so the
host's images and containers are never touched; their containers.conf keeps ulimits under this
host's hard limits and selects runc.
"""

from __future__ import annotations

import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from build.conftest import BASE, write_context
from reg_helpers import RegistryServer, isolate_registry_env
from support import need_tool

pytestmark = [pytest.mark.root, pytest.mark.integration]

Tool = Callable[..., "subprocess.CompletedProcess[str]"]
_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@pytest.fixture(autouse=True)
def registry_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    return isolate_registry_env(tmp_path / "registry-env", monkeypatch)


def _containers_conf(base: Path) -> Path:
    base.mkdir(parents=True, exist_ok=True)
    conf = base / "containers.conf"
    # root here lacks CAP_SYS_RESOURCE (hard nofile 20000): the tools' default ulimits would exceed it
    conf.write_text(
        '[containers]\ndefault_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]\n'
        '[engine]\ncgroup_manager = "cgroupfs"\nevents_logger = "file"\nruntime = "runc"\n'
    )
    return conf


def _tool(exe: str, base: Path, runroot: str) -> Tool:
    """``exe`` on private storage (``base/root``; ``runroot``: podman wants it under 50 characters)."""
    auth = base / "auth.json"
    env = {"CONTAINERS_CONF": str(_containers_conf(base)), "PATH": _PATH, "HOME": str(base),
           "REGISTRY_AUTH_FILE": str(auth)}
    auth.write_text("{}")
    argv0 = [exe, "--root", str(base / "root"), "--runroot", runroot, "--storage-driver", "vfs"]

    def run(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        res = subprocess.run([*argv0, *args], capture_output=True, text=True, env=env, timeout=timeout)
        if check and res.returncode != 0:
            raise AssertionError(f"{exe} {' '.join(args)} failed ({res.returncode}): {res.stderr}")
        return res

    return run


@pytest.fixture
def runroot() -> Iterator[str]:
    path = tempfile.mkdtemp(prefix="bt-", dir="/run")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def podman(tmp_path: Path, runroot: str) -> Any:
    need_tool("runc")
    need_tool("conmon")
    run = _tool(need_tool("podman"), tmp_path / "podman", runroot)
    yield run
    run("rm", "-af", "-t", "0", check=False)


@pytest.fixture
def buildah(tmp_path: Path, runroot: str) -> Tool:
    return _tool(need_tool("buildah"), tmp_path / "buildah", runroot)


def _ok(r):  # type: ignore[no-untyped-def]
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


APP = f"""FROM {BASE} AS build
WORKDIR /src
COPY greet.sh .
RUN chmod 0755 greet.sh && echo "built by berth" > /src/stamp

FROM {BASE}
ENV GREETING=hello
WORKDIR /app
COPY --from=build /src/ /app/
EXPOSE 8080
LABEL org.example.tool=berth
CMD ["/app/greet.sh"]
"""


@pytest.mark.parametrize("fmt", ["oci", "docker"])
def test_berth_built_image_runs_in_podman(berth, podman: Tool, registry: RegistryServer, tmp_path: Path,  # type: ignore[no-untyped-def]
                                          fmt: str) -> None:
    ctx = write_context(tmp_path / "ctx", {"Dockerfile": APP,
                                           "greet.sh": '#!/bin/sh\necho "$GREETING from $(pwd)"; cat stamp\n'})
    ref = registry.ref("build/app", fmt)
    _ok(berth("build", "--format", fmt, "-t", ref, str(ctx)))
    assert _ok(berth("push", ref)).splitlines()[-1].startswith(f"{fmt}: digest: sha256:")

    podman("pull", "--tls-verify=false", "-q", ref)
    out = podman("run", "--rm", "--network", "none", ref).stdout
    assert out == "hello from /app\nbuilt by berth\n"
    inspect = podman("image", "inspect", "--format",
                     "{{.Config.WorkingDir}} {{index .Config.Labels \"org.example.tool\"}} {{.Config.ExposedPorts}}",
                     ref).stdout.split()
    assert inspect[:2] == ["/app", "berth"] and "8080/tcp" in inspect[2]
    manifest = subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{ref}"],
                              capture_output=True, text=True, check=False)
    if manifest.returncode == 0:  # skopeo is optional here; podman already read it
        expected = "application/vnd.docker.distribution" if fmt == "docker" else "application/vnd.oci.image"
        assert expected in manifest.stdout


BUILDAH_DOCKERFILE = """FROM scratch
ADD rootfs.tar /
RUN echo "made by buildah" > /buildah.txt
ENV TOOL=buildah
WORKDIR /work
"""


def test_buildah_built_image_is_a_berth_base(berth, buildah: Tool, registry: RegistryServer,  # type: ignore[no-untyped-def]
                                             busybox_rootfs: Path, tmp_path: Path) -> None:
    bctx = tmp_path / "bctx"
    bctx.mkdir()
    with tarfile.open(bctx / "rootfs.tar", "w") as tf:
        tf.add(busybox_rootfs, arcname=".")
    (bctx / "Dockerfile").write_text(BUILDAH_DOCKERFILE)
    buildah("bud", "--layers", "--format", "docker", "--runtime", need_tool("runc"), "-t", "localhost/bh:1",
            str(bctx))

    # through the registry
    ref = registry.ref("build/buildah", "v1")
    buildah("push", "--tls-verify=false", "localhost/bh:1", f"docker://{ref}")
    df = f"""FROM {ref}
RUN cat /buildah.txt > /berth.txt && echo "$TOOL in $(pwd)" >> /berth.txt
CMD ["cat", "/berth.txt"]
"""
    ctx = write_context(tmp_path / "ctx", {"Dockerfile": df})
    _ok(berth("build", "-t", "on-buildah:1", str(ctx)))
    assert _ok(berth("run", "--rm", "on-buildah:1")) == "made by buildah\nbuildah in /work\n"

    # through an oci-archive loaded into berth
    archive = tmp_path / "bh.tar"
    buildah("push", "localhost/bh:1", f"oci-archive:{archive}:localhost/bh-archive:1")
    _ok(berth("load", "-i", str(archive)))
    ctx2 = write_context(tmp_path / "ctx2", {"Dockerfile": df.replace(ref, "localhost/bh-archive:1")})
    _ok(berth("build", "--pull=never", "-t", "on-buildah:2", str(ctx2)))
    assert _ok(berth("run", "--rm", "on-buildah:2")) == "made by buildah\nbuildah in /work\n"
