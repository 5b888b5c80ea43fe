"""Unpacking layers while a pull downloads them (berth.images.unpack), against a fake registry on 127.0.0.1.

The registry route sends half a layer and then waits until a file from that half appears in the snapshot
being made: it can only appear if unpacking streams. Lying blobs must leave no snapshot behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest
from img_helpers import entry, layer

from berth.errors import InvalidArgument
from berth.images.store import ImageStore
from berth.images.unpack import PullUnpacker
from berth.oci.digest import Digest
from berth.oci.image import MEDIA_TYPE_IMAGE_MANIFEST
from berth.registry import RegistryClient
from berth.registry.pull import pull
from berth.snapshots.mount import mount_all, overlay_supported, unmount
from reg_helpers import FakeRegistry, respond

pytestmark = pytest.mark.integration
REPO = "stream/app"


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture
def fake() -> Iterator[FakeRegistry]:
    server = FakeRegistry()
    yield server
    server.close()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ImageStore]:
    s = ImageStore(tmp_path / "root", snapshotter_kind="copy")
    yield s
    s.close()


def serve(fake: FakeRegistry, layers: list[tuple[bytes, str, str]], blobs: dict[str, bytes] | None = None) -> None:
    """An OCI image of ``layers`` — (blob, diff id, media type) — the blobs served from ``blobs`` if given."""
    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "rootfs": {"type": "layers", "diff_ids": [str(d) for _b, d, _m in layers]}}).encode()
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": MEDIA_TYPE_IMAGE_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha(config),
                   "size": len(config)},
        "layers": [{"mediaType": m, "digest": sha(b), "size": len(b)} for b, _d, m in layers],
    }).encode()
    fake.add_manifest(REPO, "latest", manifest, MEDIA_TYPE_IMAGE_MANIFEST)
    fake.add_blob(REPO, sha(config), config)
    for blob, _d, _m in layers:
        if blobs is None or sha(blob) not in blobs:
            fake.add_blob(REPO, sha(blob), blob)
    for digest, data in (blobs or {}).items():
        fake.add_blob(REPO, digest, data)


def pull_and_unpack(fake: FakeRegistry, store: ImageStore) -> None:
    unpacker = PullUnpacker(store)
    try:
        result = pull(f"{fake.host}/{REPO}", store.content, client=RegistryClient(fake.host, backoff=0.01),
                      on_config=unpacker.configure, on_layer_stream=unpacker.stream)
    except BaseException:
        unpacker.abort()
        raise
    unpacker.finish()
    store.add(result.manifest_digest, [result.reference])


def found(root: Path, name: str) -> bool:
    """Whether ``name`` exists under ``root`` — while berth is busy there: os.walk skips directories
    that vanish under it (the snapshotter's overlay probe), where Path.rglob raises."""
    return any(name in files or name in dirs for _, dirs, files in os.walk(root))


def test_layers_unpack_while_they_download(fake: FakeRegistry, store: ImageStore, tmp_path: Path) -> None:
    base = layer([entry("dir", "etc"), entry("file", "etc/first", os.urandom(64)),
                  entry("file", "etc/shared", b"hello"), entry("file", "etc/gone", b"x"),
                  entry("file", "etc/last", os.urandom(3 << 20))], None)
    top = layer([entry("hardlink", "etc/again", "etc/shared"), entry("whiteout", "etc/gone"),
                 entry("file", "app", b"app")])
    serve(fake, [base, top])
    blob = base[0]
    snapshots = tmp_path / "root" / "snapshots"
    streamed = {}

    def slow(h: BaseHTTPRequestHandler) -> None:
        half = len(blob) // 2
        h.send_response(200)
        h.send_header("Content-Length", str(len(blob)))
        h.end_headers()
        h.wfile.write(blob[:half])
        h.wfile.flush()
        deadline = time.monotonic() + 10
        while not found(snapshots, "first") and time.monotonic() < deadline:
            time.sleep(0.02)
        streamed["first"] = found(snapshots, "first")
        h.wfile.write(blob[half:])

    fake.route("GET", f"/v2/{REPO}/blobs/{sha(blob)}", slow)
    pull_and_unpack(fake, store)
    assert streamed["first"], "the layer's first files did not appear before its download finished"
    image = store.images()[0]
    assert store.is_unpacked(image)
    assert [i.key for i in store.snapshots.walk()] == [str(c) for c in image.chain_ids]
    upper = next(p for p in snapshots.rglob("app"))
    assert (upper.parent / "etc" / "again").read_bytes() == b"hello"
    assert not (upper.parent / "etc" / "gone").exists()


def test_lying_layer_leaves_no_snapshot(fake: FakeRegistry, store: ImageStore, tmp_path: Path) -> None:
    """A valid layer served under another layer's digest is applied as it streams, then thrown away."""
    good = layer([entry("file", "good", b"good")])
    bad = layer([entry("file", "planted", os.urandom(1 << 20))], None)
    claimed = layer([entry("file", "planted", os.urandom(1 << 20))], None)
    serve(fake, [good, claimed], blobs={sha(claimed[0]): bad[0]})
    with pytest.raises(InvalidArgument, match="does not match its digest"):
        pull_and_unpack(fake, store)
    snapshots = tmp_path / "root" / "snapshots"
    assert not found(snapshots, "planted")
    assert all(not i.key.startswith("extract-") for i in store.snapshots.walk())
    assert all(i.expected != Digest.parse(sha(claimed[0])) for i in store.content.ingests())
    assert not store.content.exists(Digest.parse(sha(claimed[0])))


def test_download_that_restarts_is_unpacked_from_the_store(fake: FakeRegistry, store: ImageStore) -> None:
    """A registry ignoring Range makes the download start over: the streamed bytes are void, and the
    layer is unpacked once its blob is complete."""
    only = layer([entry("file", "etc/motd", b"hi\n"), entry("file", "big", os.urandom(1 << 20))], None)
    serve(fake, [only])
    digest = sha(only[0])
    with store.content.writer(f"pull-{digest}", Digest.parse(digest), len(only[0])) as writer:
        writer.write(only[0][:5000])

    def ignore_range(h: BaseHTTPRequestHandler) -> None:
        assert re.fullmatch(r"bytes=\d+-", h.headers.get("Range", ""))
        respond(h, 200, only[0], {})

    fake.route("GET", f"/v2/{REPO}/blobs/{digest}", ignore_range)
    pull_and_unpack(fake, store)
    assert store.is_unpacked(store.images()[0])


def test_pull_killed_while_unpacking_leaves_nothing_after_prune(fake: FakeRegistry, tmp_path: Path) -> None:
    """``berth pull`` SIGKILLed halfway through a layer it is unpacking: the half-made snapshot is debris
    that the next collection removes at once, and the next pull completes."""
    blob, diff_id, media = layer([entry("file", "etc/first", b"1"), entry("file", "big", os.urandom(2 << 20))], None)
    serve(fake, [(blob, diff_id, media)])
    release = threading.Event()

    def stalling(h: BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.send_header("Content-Length", str(len(blob)))
        h.end_headers()
        h.wfile.write(blob[:len(blob) // 2])
        h.wfile.flush()
        release.wait(30)
        h.close_connection = True

    fake.route("GET", f"/v2/{REPO}/blobs/{sha(blob)}", stalling)
    root, runroot = tmp_path / "root", f"/run/berth-test-{tmp_path.name}"
    argv = [str(Path(sys.executable).parent / "berth"), "--root", str(root), "--runroot", runroot]
    proc = subprocess.Popen([*argv, "pull", "-q", f"{fake.host}/{REPO}"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while not found(root / "snapshots", "first") and time.monotonic() < deadline:
            time.sleep(0.02)
        assert found(root / "snapshots", "first"), "the layer did not start unpacking while downloading"
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        release.set()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    store = ImageStore(root)
    try:
        assert any(i.key.startswith("extract-") for i in store.snapshots.walk())
        store.gc()
        assert store.snapshots.walk() == []
    finally:
        store.close()
    assert not found(root / "snapshots", "first")
    fake.add_blob(REPO, sha(blob), blob)
    done = subprocess.run([*argv, "pull", "-q", f"{fake.host}/{REPO}"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    store = ImageStore(root)
    try:
        assert store.is_unpacked(store.images()[0])
    finally:
        store.close()
    shutil.rmtree(runroot, ignore_errors=True)


def test_shared_base_and_repeated_layer(fake: FakeRegistry, store: ImageStore, tmp_path: Path) -> None:
    """The second image's base is in the store already (not downloaded, not streamed) and its top layer
    streams on it; a layer repeated in one image is downloaded once and unpacked at both places."""
    base = layer([entry("file", "etc/base", b"base")])
    top = layer([entry("file", "etc/top", b"top"), entry("whiteout", "etc/base")])
    serve(fake, [base])
    pull_and_unpack(fake, store)
    serve(fake, [base, top, base])
    pull_and_unpack(fake, store)
    image = next(i for i in store.images() if len(i.layers) == 3)
    assert store.is_unpacked(image)
    assert len({str(c) for c in image.chain_ids}) == 3
    assert {i.key for i in store.snapshots.walk()} == {str(c) for c in image.chain_ids}
    blob_gets = [r for r in fake.requests if r.path.endswith(sha(base[0]))]
    assert len(blob_gets) == 1  # the base blob was downloaded by the first pull only


@pytest.mark.root
def test_layers_apply_in_parallel_on_overlay(fake: FakeRegistry, tmp_path: Path) -> None:
    """On overlay the second layer applies while the first still downloads; it waits for the first only
    where it must look below (a hardlink into it, a directory it does not list, a whiteout)."""
    if not overlay_supported(tmp_path / "root/snapshots"):
        pytest.skip("overlayfs is not usable here")
    store = ImageStore(tmp_path / "root")
    try:
        assert store.snapshots.independent_layers
        base = layer([entry("dir", "locked", mode=0o700, uid=7), entry("file", "locked/old", b"old"),
                      entry("file", "etc/shared", b"hello"), entry("file", "etc/gone", b"x"),
                      entry("file", "big", os.urandom(2 << 20))], None)
        top = layer([entry("file", "marker", b"m"), entry("file", "locked/new", b"new"),
                     entry("hardlink", "etc/again", "etc/shared"), entry("whiteout", "etc/gone")], None)
        serve(fake, [base, top])
        snapshots = tmp_path / "root" / "snapshots"
        seen = {}

        def slow(h: BaseHTTPRequestHandler) -> None:
            blob = base[0]
            h.send_response(200)
            h.send_header("Content-Length", str(len(blob)))
            h.end_headers()
            h.wfile.write(blob[:1024])
            h.wfile.flush()
            deadline = time.monotonic() + 10
            while not found(snapshots, "marker") and time.monotonic() < deadline:
                time.sleep(0.02)
            seen["marker"] = found(snapshots, "marker")
            h.wfile.write(blob[1024:])

        fake.route("GET", f"/v2/{REPO}/blobs/{sha(base[0])}", slow)
        pull_and_unpack(fake, store)
        assert seen["marker"], "the second layer did not start before the first had downloaded"
        image = store.images()[0]
        assert store.snapshots.parents(str(image.chain_ids[1])) == [str(image.chain_ids[0])]
        target = tmp_path / "mnt"
        target.mkdir()
        mount_all(store.prepare_rootfs(image, "view", readonly=True), target)
        try:
            locked = (target / "locked").stat()
            assert (stat.S_IMODE(locked.st_mode), locked.st_uid) == (0o700, 7)  # the lower's metadata
            assert sorted(os.listdir(target / "locked")) == ["new", "old"]
            assert (target / "etc/again").read_bytes() == b"hello"
            assert sorted(os.listdir(target / "etc")) == ["again", "shared"]
            assert (target / "marker").read_bytes() == b"m"
        finally:
            unmount(target)
    finally:
        store.close()


@pytest.mark.root
def test_layer_applied_ahead_of_a_lying_parent_is_thrown_away(fake: FakeRegistry, tmp_path: Path) -> None:
    if not overlay_supported(tmp_path / "root/snapshots"):
        pytest.skip("overlayfs is not usable here")
    store = ImageStore(tmp_path / "root")
    try:
        claimed = layer([entry("file", "base", os.urandom(1 << 20))], None)
        lie = layer([entry("file", "planted", os.urandom(1 << 20))], None)
        top = layer([entry("file", "top-file", b"t")], None)
        serve(fake, [claimed, top], blobs={sha(claimed[0]): lie[0]})
        with pytest.raises(InvalidArgument, match="does not match its digest"):
            pull_and_unpack(fake, store)
        snapshots = tmp_path / "root" / "snapshots"
        assert not found(snapshots, "planted") and not found(snapshots, "top-file")
        assert store.snapshots.walk() == []
    finally:
        store.close()
