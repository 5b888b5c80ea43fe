"""The image commands end to end through the ``berth`` CLI and the Engine: push/pull through a real
registry, save/load in every format (read by skopeo too), history, prune, system df, login/logout, and
bad input giving one line and exit 125."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

from berth.engine.engine import Engine
from berth.snapshots.base import tree_usage
from reg_helpers import RegistryServer, need_tool

pytestmark = [pytest.mark.root, pytest.mark.integration]


def ok(res: subprocess.CompletedProcess[str]) -> str:
    assert res.returncode == 0, f"exit {res.returncode}: {res.stderr}"
    return res.stdout


def test_push_then_pull_into_fresh_root_and_run(berth: Any, roots: Any, registry: RegistryServer) -> None:
    ref = registry.ref("cli/busybox", "v1")
    ok(berth("tag", "localhost/busybox:latest", ref))
    out = ok(berth("push", ref))
    assert f"The push refers to repository [{registry.host}/cli/busybox]" in out
    assert out.splitlines()[-1].startswith("v1: digest: sha256:")
    pushed_digest = out.splitlines()[-1].split()[2]

    root, runroot = roots.new()
    fresh = roots.cli(root, runroot)
    out = ok(fresh("pull", ref))
    lines = out.splitlines()
    assert lines[0] == "v1: Pulling from cli/busybox"
    assert f"Digest: {pushed_digest}" in lines
    assert f"Status: Downloaded newer image for {ref}" in lines
    assert lines[-1] == ref
    assert any(line.endswith(": Pull complete") for line in lines)
    again = ok(fresh("pull", "-q", ref))
    assert again == ref + "\n"
    assert ok(fresh("run", "--rm", ref, "echo", "pulled-and-ran")) == "pulled-and-ran\n"

    with Engine(root, runroot) as e:  # the same through the Engine
        result = e.push(ref)
        assert str(result.digest) == pushed_digest
        assert set(result.blobs.values()) == {"exists"}


@pytest.mark.parametrize("form", ["docker-archive", "oci-archive", "oci-dir"])
def test_save_then_load_into_fresh_root(berth: Any, roots: Any, tmp_path: Path, form: str) -> None:
    dest = tmp_path / f"out.{form}"
    ok(berth("save", "--format", form, "-o", str(dest), "localhost/busybox:latest"))
    if form != "oci-dir":
        skopeo = need_tool("skopeo")
        info = json.loads(subprocess.run([skopeo, "inspect", f"{form}:{dest}"], check=True,
                                         capture_output=True, text=True).stdout)
        assert info["Os"] == "linux" and len(info["Layers"]) == 1
    root, runroot = roots.new()
    fresh = roots.cli(root, runroot)
    assert ok(fresh("load", "-i", str(dest))) == "Loaded image: localhost/busybox:latest\n"
    assert ok(fresh("run", "--rm", "localhost/busybox:latest", "echo", "loaded")) == "loaded\n"


def test_save_to_stdout_and_load_from_stdin(berth: Any, roots: Any) -> None:
    saved = berth("save", "localhost/busybox:latest", text=False)
    assert saved.returncode == 0, saved.stderr
    fresh = roots.cli(*roots.new())
    loaded = fresh("load", input=saved.stdout, text=False)
    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout == b"Loaded image: localhost/busybox:latest\n"


def test_history_columns(berth: Any) -> None:
    out = ok(berth("history", "localhost/busybox:latest"))
    header, *rows = out.splitlines()
    assert header.split() == ["IMAGE", "CREATED", "CREATED", "BY", "SIZE", "COMMENT"]
    assert rows and len(rows[0].split()[0]) == 12
    image_id = json.loads(ok(berth("image", "inspect", "localhost/busybox:latest")))[0]["Id"]
    assert rows[0].startswith(image_id.split(":")[1][:12])
    full = ok(berth("history", "--no-trunc", "-q", "localhost/busybox:latest")).split()
    assert full[0] == image_id
    entries = [json.loads(line) for line in ok(berth("history", "--format", "json", "localhost/busybox:latest"))
               .splitlines()]
    assert set(entries[0]) >= {"ID", "CreatedSince", "CreatedBy", "Size", "Comment"}
    assert ok(berth("image", "history", "--format", "{{.ID}}", "localhost/busybox:latest")).split()[0] == \
        image_id.split(":")[1][:12]


def test_image_prune_frees_disk(berth: Any, roots: Any, rootfs_tar: Path) -> None:
    root = roots.made[-1][0]
    ok(berth("import", str(rootfs_tar)))  # a dangling image (no name): same layer, another config
    assert ok(berth("run", "--rm", "localhost/busybox:latest", "true")) == ""  # unpacked: snapshots exist
    dangling = [i for i in json.loads(ok(berth("image", "inspect", *ok(berth("images", "-q")).split())))
                if not i["RepoTags"]]
    assert len(dangling) == 1
    out = ok(berth("image", "prune", "-f"))
    assert f"deleted: {dangling[0]['Id']}" in out and "Total reclaimed space:" in out
    assert ok(berth("images", "--format", "{{.Repository}}")).split() == ["localhost/busybox"]

    before = tree_usage(os.path.join(root, "content")).size + tree_usage(os.path.join(root, "snapshots")).size
    assert ok(berth("image", "prune", "-a")) == ("WARNING! This will remove all images without at least one "
                                                   "container associated to them.\nAre you sure you want to "
                                                   "continue? [y/N] ")  # no answer: nothing done
    out = ok(berth("image", "prune", "-a", "-f"))
    assert "untagged: localhost/busybox:latest" in out
    after = tree_usage(os.path.join(root, "content")).size + tree_usage(os.path.join(root, "snapshots")).size
    assert after < before - 500_000  # the busybox layer (~1 MB) and its snapshot are gone
    assert out.splitlines()[-1] != "Total reclaimed space: 0B"
    assert ok(berth("images", "-q")) == ""


def test_system_df(berth: Any) -> None:
    ok(berth("create", "--name", "df-test", "localhost/busybox:latest", "true"))
    out = ok(berth("system", "df"))
    lines = out.splitlines()
    assert lines[0].split() == ["TYPE", "TOTAL", "ACTIVE", "SIZE", "RECLAIMABLE"]
    assert [line.split()[:3] for line in lines[1:3]] == [["Images", "1", "1"], ["Containers", "1", "0"]]
    assert lines[3].split()[:4] == ["Local", "Volumes", "0", "0"]
    assert lines[4].split()[:4] == ["Build", "Cache", "0", "0"]
    rows = {r["Type"]: r for r in map(json.loads, ok(berth("system", "df", "--format", "json")).splitlines())}
    assert rows["Images"]["TotalCount"] == "1" and rows["Images"]["Reclaimable"] == "0B (0%)"
    assert rows["Images"]["Size"].endswith("MB")


def test_login_logout(berth: Any, registry_htpasswd: RegistryServer, registry_env: Path) -> None:
    host = registry_htpasswd.host
    bad = berth("login", "-u", registry_htpasswd.username, "--password-stdin", host, input="wrong\n")
    assert bad.returncode == 125 and bad.stderr.startswith("Error: ") and len(bad.stderr.splitlines()) == 1
    assert not (registry_env / "berth-auth.json").exists()
    out = ok(berth("login", "-u", registry_htpasswd.username, "--password-stdin", host,
                   input=registry_htpasswd.password + "\n"))
    assert out == "Login Succeeded\n"
    assert host in json.loads((registry_env / "berth-auth.json").read_text())["auths"]
    ref = registry_htpasswd.ref("auth/busybox")
    ok(berth("tag", "localhost/busybox:latest", ref))
    ok(berth("push", "-q", ref))
    assert ok(berth("logout", host)) == f"Removing login credentials for {host}\n"
    assert ok(berth("logout", host)) == f"Not logged in to {host}\n"
    denied = berth("push", ref)
    assert denied.returncode == 125 and denied.stderr.startswith("Error: ")


@pytest.mark.parametrize("args", [
    ["history", "no-such-image"],
    ["image", "inspect", "no-such-image"],
    ["save", "-o", "/tmp/never-written.tar", "no-such-image"],
    ["save", "--format", "tarball", "-o", "/tmp/never-written.tar", "localhost/busybox:latest"],
    ["load", "-i", "/nonexistent/image.tar"],
    ["push", "no-such-image"],
    ["image", "frobnicate"],
    ["system", "frobnicate"],
])
def test_bad_input_is_one_line_and_exit_125(berth: Any, args: list[str]) -> None:
    res = berth(*args)
    assert res.returncode == 125, (res.stdout, res.stderr)
    assert res.stderr.startswith("Error: ")
    assert len(res.stderr.strip().splitlines()) <= 2  # the message, and for unknown commands the help hint
    assert not os.path.exists("/tmp/never-written.tar")


def test_load_garbage_is_an_error(berth: Any, tmp_path: Path) -> None:
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"not an archive at all" * 100)
    res = berth("load", "-i", str(junk))
    assert res.returncode == 125 and len(res.stderr.splitlines()) == 1, res.stderr


def test_save_oci_dir_needs_output(berth: Any) -> None:
    res = berth("save", "--format", "oci-dir", "localhost/busybox:latest")
    assert res.returncode == 125 and "-o" in res.stderr


# --- images: columns, digests, filters ---------------------------------------------------------------


def test_the_digest_column_matches_every_kind_of_repository_name() -> None:
    """Docker Hub names outside library/ too (``bitnami/redis`` is stored as docker.io/bitnami/redis)."""
    from types import SimpleNamespace

    from berth.cli.image_cmds import _repo_digests

    d1, d2, d3 = ("sha256:" + c * 64 for c in "abc")
    img = SimpleNamespace(repo_digests=(f"docker.io/library/busybox@{d1}", f"docker.io/bitnami/redis@{d2}",
                                        f"localhost:5000/app@{d3}", f"docker.io/bitnami/redis@{d1}"))
    assert _repo_digests(img) == {"busybox": d1, "bitnami/redis": d2, "localhost:5000/app": d3}


def test_images_columns_digests_and_filters(berth: Any, rootfs_tar: Path, registry: RegistryServer,
                                            roots: Any) -> None:
    dangling_id = ok(berth("import", str(rootfs_tar))).strip()  # same rootfs, no name: dangling
    header = ok(berth("images")).splitlines()[0]
    assert header.split() == ["REPOSITORY", "TAG", "IMAGE", "ID", "CREATED", "SIZE"]
    assert ok(berth("images", "--filter", "dangling=true", "-q", "--no-trunc")) == dangling_id + "\n"
    named = ok(berth("images", "--filter", "dangling=false", "--format", "{{.Repository}}:{{.Tag}}"))
    assert named == "localhost/busybox:latest\n"
    assert ok(berth("images", "-f", "reference=localhost/*", "-q")) == ok(berth("images", "-q", "localhost/busybox"))
    assert ok(berth("images", "localhost/busybox:nope")).splitlines()[1:] == []
    row = json.loads(ok(berth("images", "--format", "json", "localhost/busybox")))
    assert set(row) >= {"ID", "Repository", "Tag", "Digest", "CreatedSince", "CreatedAt", "Size"}
    bad = berth("images", "--filter", "colour=blue")
    assert bad.returncode == 125 and len(bad.stderr.splitlines()) == 1

    ref = registry.ref("cli/digests", "v1")
    ok(berth("tag", "localhost/busybox:latest", ref))
    ok(berth("push", "-q", ref))
    fresh = roots.cli(*roots.new())
    out = ok(fresh("pull", ref))
    digest = next(line.split()[1] for line in out.splitlines() if line.startswith("Digest: "))
    table = ok(fresh("images", "--digests")).splitlines()
    assert table[0].split()[:3] == ["REPOSITORY", "TAG", "DIGEST"]
    assert table[1].split()[:3] == [f"{registry.host}/cli/digests", "v1", digest]


# --- pull: all tags, platform, progress on a terminal ---------------------------------------------------


def test_pull_all_tags_and_platform(berth: Any, roots: Any, registry: RegistryServer) -> None:
    repo = f"{registry.host}/cli/alltags"
    for tag in ("v1", "v2"):
        ok(berth("tag", "localhost/busybox:latest", f"{repo}:{tag}"))
        ok(berth("push", "-q", f"{repo}:{tag}"))
    fresh = roots.cli(*roots.new())
    out = ok(fresh("pull", "--all-tags", repo)).splitlines()
    assert [line for line in out if "Pulling from" in line] == ["v1: Pulling from cli/alltags",
                                                               "v2: Pulling from cli/alltags"]
    assert out[-1] == repo
    assert sorted(ok(fresh("images", "--format", "{{.Tag}}", repo)).split()) == ["v1", "v2"]
    bad = fresh("pull", "-a", f"{repo}:v1")
    assert bad.returncode == 125 and bad.stderr == "Error: tag can't be used with --all-tags/-a\n"

    wrong = fresh("pull", "--platform", "linux/arm64", f"{repo}:v1")
    assert wrong.returncode == 125 and "does not match the requested platform" in wrong.stderr
    assert len(wrong.stderr.splitlines()) == 1
    assert ok(fresh("pull", "-q", "--platform", "linux/amd64", f"{repo}:v2")) == f"{repo}:v2\n"


def test_pull_shows_bars_on_a_terminal(berth: Any, roots: Any, registry: RegistryServer) -> None:
    import pty

    ref = registry.ref("cli/tty", "v1")
    ok(berth("tag", "localhost/busybox:latest", ref))
    ok(berth("push", "-q", ref))
    root, runroot = roots.new()
    primary, secondary = pty.openpty()
    try:
        proc = subprocess.Popen([str(Path(sys.executable).parent / "berth"), "--root", root, "--runroot",
                                 runroot, "pull", ref], stdout=secondary, stderr=secondary, stdin=subprocess.DEVNULL)
        os.close(secondary)
        secondary = -1
        chunks = []
        while True:
            try:
                data = os.read(primary, 65536)
            except OSError:  # EIO: the other side closed
                break
            if not data:
                break
            chunks.append(data)
        assert proc.wait(60) == 0
    finally:
        os.close(primary)
        if secondary >= 0:
            os.close(secondary)
    shown = b"".join(chunks).decode(errors="replace")
    assert "━" in shown and "Pull complete" in shown  # rich's bars, not plain lines
    assert "Status: Downloaded newer image for" in shown


# --- interop: what berth pushes, skopeo reads and podman pulls and runs --------------------------------


def test_pushed_image_is_read_by_skopeo_and_run_by_podman(berth: Any, registry: RegistryServer,
                                                          tmp_path: Path) -> None:
    skopeo, podman = need_tool("skopeo"), need_tool("podman")
    runtime = need_tool("runc")
    ref = registry.ref("cli/interop", "v1")
    ok(berth("tag", "localhost/busybox:latest", ref))
    ok(berth("push", "-q", ref))
    pushed = json.loads(ok(berth("image", "inspect", ref)))[0]
    info = json.loads(subprocess.run([skopeo, "inspect", "--tls-verify=false", f"docker://{ref}"], check=True,
                                     capture_output=True, text=True).stdout)
    assert info["Os"] == "linux" and info["Architecture"] == "amd64"
    assert len(info["Layers"]) == 1
    assert info["Digest"] == pushed["RepoDigests"][0].split("@")[1]

    conf = tmp_path / "containers.conf"
    # Root here lacks CAP_SYS_RESOURCE (hard nofile 20000): podman's defaults would exceed it.
    conf.write_text('[containers]\ndefault_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]\n'
                    '[engine]\ncgroup_manager = "cgroupfs"\nevents_logger = "file"\n')
    env = {"CONTAINERS_CONF": str(conf), "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
    runroot = tempfile.mkdtemp(prefix="berth-pd-", dir="/run")  # podman wants a runroot under 50 characters
    argv0 = [podman, "--root", str(tmp_path / "proot"), "--runroot", runroot, "--storage-driver", "vfs",
             "--runtime", runtime]
    try:
        pulled = subprocess.run([*argv0, "pull", "-q", "--tls-verify=false", ref], capture_output=True, text=True,
                                env=env, timeout=120)
        assert pulled.returncode == 0, pulled.stderr
        assert pulled.stdout.strip() == pushed["Id"].split(":")[1]  # the same image ID: config digest
        ran = subprocess.run([*argv0, "run", "--rm", "--network", "none", ref, "echo", "pulled-by-podman"],
                             capture_output=True, text=True, env=env, timeout=120)
        assert ran.returncode == 0 and ran.stdout == "pulled-by-podman\n", ran.stderr
    finally:
        subprocess.run([*argv0, "system", "reset", "-f"], capture_output=True, env=env, timeout=120)
        shutil.rmtree(runroot, ignore_errors=True)
