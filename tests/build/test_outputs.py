"""What a build leaves: image formats, hidden intermediate images, and the sources COPY/ADD take
(URLs, --exclude, a Dockerfile on stdin, symlinks that point out of the context)."""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from berth.engine.engine import Engine
from berth.oci.image import DOCKER_CONFIG, DOCKER_LAYER_GZIP, DOCKER_MANIFEST_V2, MEDIA_TYPE_IMAGE_MANIFEST
from build.conftest import BASE, write_context

pytestmark = [pytest.mark.root, pytest.mark.integration]


def _ok(r):  # type: ignore[no-untyped-def]
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


def test_format_docker_and_oci(berth, engine: Engine, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    ctx = write_context(tmp_path / "ctx", {
        "Dockerfile": f"FROM {BASE}\nCOPY f.txt /\nRUN cat /f.txt > /g.txt\nCMD [\"cat\", \"/g.txt\"]\n",
        "f.txt": "format\n",
    })
    env = {"SOURCE_DATE_EPOCH": "1700000000"}
    iid = _ok(berth("build", "-q", "--format", "docker", "-t", "fmt:docker", str(ctx), env=env)).strip()
    store = engine.image_store
    manifest = store.manifest(store.get("fmt:docker"))
    assert manifest.media_type == DOCKER_MANIFEST_V2 and manifest.config.media_type == DOCKER_CONFIG
    assert {layer.media_type for layer in manifest.layers} == {DOCKER_LAYER_GZIP}
    assert _ok(berth("run", "--rm", "fmt:docker")) == "format\n"
    # the same build again (cached) gives the same manifest: the compressed layers are reproducible
    again = _ok(berth("build", "-q", "--format", "docker", str(ctx), env=env)).strip()
    assert again == iid and store.get(iid).manifest_digest == store.get("fmt:docker").manifest_digest

    _ok(berth("build", "-q", "--format", "oci", "-t", "fmt:oci", str(ctx), env=env))
    manifest = store.manifest(store.get("fmt:oci"))
    assert manifest.media_type == MEDIA_TYPE_IMAGE_MANIFEST
    assert all(layer.media_type.startswith("application/vnd.oci.image.layer") for layer in manifest.layers)
    bad = berth("build", "--format", "squashfs", str(ctx))
    assert bad.returncode == 125 and "--format" in bad.stderr


def test_intermediate_images_are_hidden(berth, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    ctx = write_context(tmp_path / "ctx", {"Dockerfile": f"FROM {BASE}\nENV A=1\nRUN echo a > /a\nLABEL x=y\n"})
    before = set(_ok(berth("images", "-q")).split())
    before_all = set(_ok(berth("images", "-a", "-q")).split())
    iid = _ok(berth("build", "-q", str(ctx))).strip()
    after = set(_ok(berth("images", "-q")).split())
    assert after - before == {iid[len("sha256:"):][:12]}  # the untagged result shows, its steps do not
    assert len(set(_ok(berth("images", "-a", "-q")).split()) - before_all) == 3  # -a: the ENV and RUN steps too
    table = _ok(berth("images"))
    assert table.count("<none>") == 2  # the one untagged result: repository and tag


def test_pull_policies(berth, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    ctx = write_context(tmp_path / "ctx", {"Dockerfile": f"FROM {BASE}\nRUN true\n"})
    r = berth("build", "--pull=always", str(ctx))  # localhost/busybox exists only here: the pull fails
    assert r.returncode == 125 and "FROM 'localhost/busybox:latest'" in r.stderr
    _ok(berth("build", "--pull=never", str(ctx)))
    _ok(berth("build", "--pull=missing", str(ctx)))
    r = berth("build", "--pull=sometimes", str(ctx))
    assert r.returncode == 125 and "invalid --pull=sometimes" in r.stderr


@pytest.fixture
def http_files() -> Iterator[tuple[str, dict[str, bytes]]]:
    """A tiny HTTP server on 127.0.0.1 serving ``files`` (path → bytes), with a Last-Modified."""
    files: dict[str, bytes] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = files.get(self.path)
            if body is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Last-Modified", "Tue, 14 Nov 2023 22:13:20 GMT")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", files
    server.shutdown()
    server.server_close()


def test_add_from_url(berth, tmp_path: Path, http_files) -> None:  # type: ignore[no-untyped-def]
    base, files = http_files
    files["/dl/tool.sh"] = b"echo downloaded\n"
    files["/dl/data.tar"] = b"not extracted\n"
    good = "sha256:" + hashlib.sha256(b"echo downloaded\n").hexdigest()
    ctx = write_context(tmp_path / "ctx", {"Dockerfile": f"""FROM {BASE}
ADD --checksum={good} {base}/dl/tool.sh /opt/
ADD {base}/dl/data.tar /opt/renamed.tar
CMD ["sh", "-c", "stat -c '%a %Y' /opt/tool.sh; sh /opt/tool.sh; cat /opt/renamed.tar"]
"""})
    _ok(berth("build", "-t", "url:1", str(ctx)))
    assert _ok(berth("run", "--rm", "url:1")) == "600 1700000000\ndownloaded\nnot extracted\n"
    # the content is the cache key: a changed download rebuilds that step
    files["/dl/data.tar"] = b"changed\n"
    out = _ok(berth("build", "-t", "url:1", str(ctx)))
    assert "CACHED" in out.split("Step 2/4")[1].split("Step 3/4")[0]
    assert "CACHED" not in out.split("Step 3/4")[1].split("Step 4/4")[0]

    bad = write_context(tmp_path / "bad", {"Dockerfile": f"FROM {BASE}\nADD --checksum=sha256:{'0' * 64} "
                                                         f"{base}/dl/tool.sh /opt/\n"})
    r = berth("build", "-t", "url:bad", str(bad))
    assert r.returncode == 125 and "not the --checksum" in r.stderr
    missing = write_context(tmp_path / "missing", {"Dockerfile": f"FROM {BASE}\nADD {base}/nope /opt/\n"})
    r = berth("build", str(missing))
    assert r.returncode == 125 and "404" in r.stderr


def test_copy_exclude_and_dockerfile_on_stdin(berth, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    ctx = write_context(tmp_path / "ctx", {"src/a.txt": "a", "src/b.log": "b", "src/d/c.log": "c",
                                           "src/d/keep.txt": "k"})
    df = f'FROM {BASE}\nCOPY --exclude=*.log --exclude=d/*.log src/ /src/\nCMD ["find", "/src", "-type", "f"]\n'
    _ok(berth("build", "-f", "-", "-t", "excl:1", str(ctx), input=df))
    assert sorted(_ok(berth("run", "--rm", "excl:1")).split()) == ["/src/a.txt", "/src/d/keep.txt"]
    r = berth("build", "-f", "-", "-", input=df)
    assert r.returncode == 125 and "both be read from stdin" in r.stderr


def test_copy_never_follows_symlinks_out_of_the_context(berth, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("host secret\n")
    ctx = write_context(tmp_path / "ctx", {"Dockerfile": f"FROM {BASE}\nCOPY link/secret.txt /got.txt\n"})
    (ctx / "link").symlink_to(outside)
    r = berth("build", "-t", "escape:1", str(ctx))
    assert r.returncode != 0, r.stdout
    assert "host secret" not in r.stdout + r.stderr
    mount = write_context(tmp_path / "ctx2", {"Dockerfile": f"FROM {BASE}\n"
                                                            "RUN --mount=source=link,target=/m cat /m/secret.txt\n"})
    (mount / "link").symlink_to(outside)
    r = berth("build", str(mount))
    assert r.returncode != 0 and "host secret" not in r.stdout + r.stderr


def test_config_history_lists_every_step(berth, engine: Engine, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    ctx = write_context(tmp_path / "ctx", {"Dockerfile": f"FROM {BASE}\nENV A=1\nRUN echo a > /a\n"})
    _ok(berth("build", "-t", "hist:1", str(ctx)))
    cfg = json.loads(engine.image_store.config_bytes(engine.image_store.get("hist:1")))
    created_by = [h["created_by"] for h in cfg["history"]][-2:]
    assert created_by[0] == "ENV A=1" and created_by[1].startswith("RUN /bin/sh -c echo a > /a")


@pytest.mark.parametrize("compression", ["", "gz", "bz2", "xz"])
def test_add_extracts_local_archives(berth, tmp_path: Path, compression: str) -> None:  # type: ignore[no-untyped-def]
    import io
    import tarfile
    import time

    long_dir = "d" * 120
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=f"w:{compression}", format=tarfile.PAX_FORMAT) as tf:
        for i in range(2000):
            data = f"{i}\n".encode()
            ti = tarfile.TarInfo(f"many/{i:04d}.txt")
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
        data = b"long\n"
        ti = tarfile.TarInfo(f"{long_dir}/{'f' * 120}.txt")  # a PAX path header
        ti.size = len(data)
        tf.addfile(ti, io.BytesIO(data))
        ln = tarfile.TarInfo("many/link.txt")
        ln.type, ln.linkname = tarfile.LNKTYPE, "many/0007.txt"
        tf.addfile(ln)
    name = f"pkg.tar{'.' + compression if compression else ''}"
    ctx = write_context(tmp_path / "ctx", {"Dockerfile": f"FROM {BASE}\nADD {name} /opt/\n"})
    (ctx / name).write_bytes(buf.getvalue())
    t0 = time.monotonic()
    _ok(berth("build", "-t", f"arch:{compression or 'plain'}", str(ctx)))
    assert time.monotonic() - t0 < 20  # each member is read once, not searched for
    out = _ok(berth("run", "--rm", f"arch:{compression or 'plain'}", "sh", "-c",
                    f"ls /opt/many | wc -l; cat /opt/many/link.txt; stat -c %h /opt/many/0007.txt; "
                    f"cat /opt/{long_dir}/{'f' * 120}.txt"))
    assert out.split() == ["2001", "7", "2", "long"]


def test_dockerfile_specific_ignore_file_wins(berth, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    ctx = write_context(tmp_path / "ctx", {
        "a.txt": "a", "b.txt": "b", ".dockerignore": "a.txt\n", "app.Dockerfile.dockerignore": "b.txt\n",
        "app.Dockerfile": f'FROM {BASE}\nCOPY . /c/\nCMD ["ls", "/c"]\n',
    })
    _ok(berth("build", "-f", str(ctx / "app.Dockerfile"), "-t", "ign:1", str(ctx)))
    assert "a.txt" in _ok(berth("run", "--rm", "ign:1")).split()
    assert "b.txt" not in _ok(berth("run", "--rm", "ign:1")).split()
