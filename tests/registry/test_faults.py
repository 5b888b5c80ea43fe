"""Faults: registries that are down, lie, hang up midway, or send what berth must refuse."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

from berth.content import ContentStore
from berth.errors import BerthError, InvalidArgument, NotFound, PermissionDenied, Unsupported
from berth.oci.digest import Digest
from berth.oci.image import DOCKER_MANIFEST_V1_SIGNED, MEDIA_TYPE_IMAGE_MANIFEST
from berth.registry import Credentials, RegistryClient
from berth.registry.client import Progress
from berth.registry.pull import pull
from reg_helpers import FakeRegistry, RegistryServer, free_port, respond

pytestmark = pytest.mark.integration

FakeFactory = Callable[[], FakeRegistry]
REPO = "fault/app"


@pytest.fixture
def store(tmp_path: Path) -> ContentStore:
    return ContentStore(tmp_path / "content")


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def fake_image(fake: FakeRegistry, layers: list[bytes], *, layer_digests: list[str] | None = None,
               tag: str = "latest", serve_layers: bool = True) -> tuple[bytes, list[str]]:
    """Serve an OCI image of ``layers`` from ``fake``; the manifest bytes and the layer digests."""
    digests = layer_digests or [sha(layer) for layer in layers]
    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "rootfs": {"type": "layers", "diff_ids": [sha(d.encode()) for d in digests]}}).encode()
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": MEDIA_TYPE_IMAGE_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha(config),
                   "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": d, "size": len(data)}
                   for d, data in zip(digests, layers, strict=True)],
    }).encode()
    fake.add_manifest(REPO, tag, manifest, MEDIA_TYPE_IMAGE_MANIFEST)
    fake.add_manifest(REPO, sha(manifest), manifest, MEDIA_TYPE_IMAGE_MANIFEST)
    fake.add_blob(REPO, sha(config), config)
    if serve_layers:
        for digest, data in zip(digests, layers, strict=True):
            fake.add_blob(REPO, digest, data)
    return manifest, digests


def client_for(fake: FakeRegistry | str, **kwargs: object) -> RegistryClient:
    host = fake if isinstance(fake, str) else fake.host
    return RegistryClient(host, backoff=0.01, **kwargs)  # type: ignore[arg-type]


def range_route(data: bytes, *, cut_first_at: int | None = None, honour_range: bool = True,
                ) -> Callable[[BaseHTTPRequestHandler], None]:
    """Serve ``data`` with Range support; with ``cut_first_at`` the first response promises everything but
    hangs up after that many bytes."""
    state = {"cut": cut_first_at}

    def route(h: BaseHTTPRequestHandler) -> None:
        start = 0
        match = re.fullmatch(r"bytes=(\d+)-", h.headers.get("Range", ""))
        if match and honour_range:
            start = int(match.group(1))
        if state["cut"] is not None:
            cut, state["cut"] = state["cut"], None
            h.send_response(200)
            h.send_header("Content-Length", str(len(data)))
            h.end_headers()
            h.wfile.write(data[:cut])
            h.wfile.flush()
            h.close_connection = True
            h.connection.shutdown(socket.SHUT_RDWR)
            return
        if start:
            respond(h, 206, data[start:], {"Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}"})
        else:
            respond(h, 200, data, {})

    return route


# --- down, unknown ----------------------------------------------------------------------------------


def test_registry_down(store: ContentStore) -> None:
    host = f"127.0.0.1:{free_port()}"
    started = time.monotonic()
    with pytest.raises(BerthError, match=rf"cannot reach registry {host} .*connection refused \(tried 4 times\)"):
        pull(f"{host}/app:latest", store, client=client_for(host))
    assert time.monotonic() - started < 5
    assert list(store.walk()) == [] and store.ingests() == []


def test_unknown_image_and_blob(fake_registry: FakeFactory, store: ContentStore) -> None:
    fake = fake_registry()
    with pytest.raises(NotFound, match=rf"image {fake.host}/fault/app:latest not found \(NAME_UNKNOWN"):
        pull(f"{fake.host}/{REPO}", store, client=client_for(fake))
    layer = os.urandom(1000)
    fake_image(fake, [layer], serve_layers=False)
    with pytest.raises(NotFound, match=rf"blob {sha(layer)} of {fake.host}/fault/app not found"):
        pull(f"{fake.host}/{REPO}", store, client=client_for(fake))
    assert not store.exists(Digest.parse(sha(layer)))


def test_retries_then_gives_up(fake_registry: FakeFactory, store: ContentStore) -> None:
    fake = fake_registry()
    manifest, _ = fake_image(fake, [os.urandom(100)])
    answers = [503, 429, 200]

    def flaky(h: BaseHTTPRequestHandler) -> None:
        status = answers.pop(0) if answers else 503
        body = manifest if status == 200 else b'{"errors":[{"code":"UNAVAILABLE","message":"try later"}]}'
        respond(h, status, body, {"Content-Type": MEDIA_TYPE_IMAGE_MANIFEST, "Retry-After": "0"})

    fake.route("GET", f"/v2/{REPO}/manifests/latest", flaky)
    result = pull(f"{fake.host}/{REPO}", store, client=client_for(fake))
    assert str(result.digest) == sha(manifest)
    manifest_requests = [r for r in fake.requests if r.path == f"/v2/{REPO}/manifests/latest"]
    assert len(manifest_requests) == 3

    with pytest.raises(BerthError, match=r"answered HTTP 503 \(UNAVAILABLE: try later\)"):
        pull(f"{fake.host}/{REPO}", store, client=client_for(fake))


# --- lying and broken content -----------------------------------------------------------------------


def test_lying_blob_is_rejected_and_nothing_kept(fake_registry: FakeFactory, store: ContentStore) -> None:
    fake = fake_registry()
    good, bad = os.urandom(200_000), os.urandom(300_000)
    claimed = sha(os.urandom(300_000))  # same size, other bytes
    fake_image(fake, [good, bad], layer_digests=[sha(good), claimed])
    fake.add_blob(REPO, claimed, bad)
    with pytest.raises(InvalidArgument, match=rf"blob {claimed} of .* does not match its digest.*nothing was kept"):
        pull(f"{fake.host}/{REPO}", store, client=client_for(fake))
    assert not store.exists(Digest.parse(claimed))
    assert store.ingests() == []


def test_oversized_blob_is_rejected(fake_registry: FakeFactory, store: ContentStore) -> None:
    fake = fake_registry()
    layer = os.urandom(50_000)
    fake_image(fake, [layer])
    fake.add_blob(REPO, sha(layer), layer + b"trailing garbage")
    with pytest.raises(InvalidArgument, match=r"is corrupt: .*exceed the expected size.*nothing was kept"):
        pull(f"{fake.host}/{REPO}", store, client=client_for(fake))
    assert not store.exists(Digest.parse(sha(layer))) and store.ingests() == []


def test_truncated_blob_resumes_with_range(fake_registry: FakeFactory, store: ContentStore) -> None:
    """The registry redirects to a storage host that hangs up halfway; the download resumes with Range,
    and credentials never follow the redirect to the other host."""
    fake = fake_registry()
    layer = os.urandom(1_000_000)
    fake_image(fake, [layer])
    digest = sha(layer)
    user, password = "u", "p"
    expected = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
    port = fake.server.server_address[1]

    def redirect(h: BaseHTTPRequestHandler) -> None:
        if h.headers.get("Authorization") != expected:
            respond(h, 401, b"", {"WWW-Authenticate": 'Basic realm="fake"'})
        else:
            respond(h, 307, b"", {"Location": f"http://localhost:{port}/storage/{digest}"})

    fake.route("GET", f"/v2/{REPO}/blobs/{digest}", redirect)
    fake.route("GET", f"/storage/{digest}", range_route(layer, cut_first_at=400_000))
    events: list[Progress] = []
    result = pull(f"{fake.host}/{REPO}", store, progress=events.append,
                  client=client_for(fake, credentials=Credentials(user, password)))
    assert store.read_bytes(result.layers[0].digest, verify=True) == layer
    storage = [r for r in fake.requests if r.path.startswith("/storage/")]
    assert [r.headers.get("Range") for r in storage] == [None, "bytes=400000-"]
    assert all("Authorization" not in r.headers for r in storage), "credentials leaked to another host"
    assert any(e.status == "retrying" and e.done == 400_000 for e in events)
    assert store.ingests() == []


def test_resume_after_killed_pull(fake_registry: FakeFactory, store: ContentStore) -> None:
    """Partial data left by an earlier (killed) pull is continued, not downloaded again."""
    fake = fake_registry()
    layer = os.urandom(300_000)
    fake_image(fake, [layer])
    digest = Digest.parse(sha(layer))
    writer = store.writer(f"pull-{digest}", digest, len(layer))
    writer.write(layer[:123_456])
    writer.close()
    fake.route("GET", f"/v2/{REPO}/blobs/{digest}", range_route(layer))
    pull(f"{fake.host}/{REPO}", store, client=client_for(fake))
    assert store.read_bytes(digest, verify=True) == layer
    ranges = [r.headers.get("Range") for r in fake.requests if r.path == f"/v2/{REPO}/blobs/{digest}"]
    assert ranges == ["bytes=123456-"]


def test_server_ignoring_range_restarts_cleanly(fake_registry: FakeFactory, store: ContentStore) -> None:
    fake = fake_registry()
    layer = os.urandom(300_000)
    fake_image(fake, [layer])
    digest = Digest.parse(sha(layer))
    with store.writer(f"pull-{digest}", digest, len(layer)) as writer:
        writer.write(layer[:1000])
    fake.route("GET", f"/v2/{REPO}/blobs/{digest}", range_route(layer, honour_range=False))
    pull(f"{fake.host}/{REPO}", store, client=client_for(fake))
    assert store.read_bytes(digest, verify=True) == layer


def test_malformed_manifest(fake_registry: FakeFactory, store: ContentStore) -> None:
    fake = fake_registry()
    fake.add_manifest(REPO, "latest", b'{"schemaVersion": 2, "config": ', MEDIA_TYPE_IMAGE_MANIFEST)
    with pytest.raises(InvalidArgument, match=r"image .*/fault/app:latest: malformed manifest: invalid JSON"):
        pull(f"{fake.host}/{REPO}", store, client=client_for(fake))
    fake.add_manifest(REPO, "latest", b'{"schemaVersion": 2, "mediaType": "' + MEDIA_TYPE_IMAGE_MANIFEST.encode()
                      + b'", "layers": []}', MEDIA_TYPE_IMAGE_MANIFEST)
    with pytest.raises(InvalidArgument, match=r"malformed manifest: config: is required"):
        pull(f"{fake.host}/{REPO}", store, client=client_for(fake))
    assert list(store.walk()) == []


def test_schema1_is_unsupported(fake_registry: FakeFactory, store: ContentStore) -> None:
    fake = fake_registry()
    schema1 = json.dumps({"schemaVersion": 1, "name": REPO, "tag": "latest", "architecture": "amd64",
                          "fsLayers": [], "history": [], "signatures": []}).encode()
    fake.add_manifest(REPO, "latest", schema1, DOCKER_MANIFEST_V1_SIGNED)
    fake.add_manifest(REPO, "plain", schema1, "application/json")
    for tag in ("latest", "plain"):
        with pytest.raises(Unsupported, match=r"Docker schema 1 manifest, which berth does not support"):
            pull(f"{fake.host}/{REPO}:{tag}", store, client=client_for(fake))
    assert list(store.walk()) == []


def test_manifest_digest_lies(fake_registry: FakeFactory, store: ContentStore) -> None:
    fake = fake_registry()
    manifest, _ = fake_image(fake, [os.urandom(100)])
    other = sha(b"something else")
    fake.add_manifest(REPO, "latest", manifest, MEDIA_TYPE_IMAGE_MANIFEST, digest_header=other)
    with pytest.raises(InvalidArgument, match=rf"does not match the Docker-Content-Digest {other}"):
        pull(f"{fake.host}/{REPO}", store, client=client_for(fake))
    fake.add_manifest(REPO, other, manifest, MEDIA_TYPE_IMAGE_MANIFEST)
    with pytest.raises(InvalidArgument, match=r"does not match its digest"):
        pull(f"{fake.host}/{REPO}@{other}", store, client=client_for(fake))
    assert list(store.walk()) == []


def test_layer_count_must_match_config(fake_registry: FakeFactory, store: ContentStore) -> None:
    fake = fake_registry()
    layer = os.urandom(100)
    config = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}})
    manifest = json.dumps({"schemaVersion": 2, "mediaType": MEDIA_TYPE_IMAGE_MANIFEST,
                           "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                      "digest": sha(config.encode()), "size": len(config)},
                           "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                                       "digest": sha(layer), "size": len(layer)}]}).encode()
    fake.add_manifest(REPO, "latest", manifest, MEDIA_TYPE_IMAGE_MANIFEST)
    fake.add_blob(REPO, sha(config.encode()), config.encode())
    with pytest.raises(InvalidArgument, match=r"the manifest has 1 layers but the config lists 0 diff ids"):
        pull(f"{fake.host}/{REPO}", store, client=client_for(fake))


def test_one_failing_layer_fails_the_pull_with_its_own_error(fake_registry: FakeFactory,
                                                             store: ContentStore) -> None:
    fake = fake_registry()
    layers = [os.urandom(100_000) for _ in range(6)]
    _, digests = fake_image(fake, layers)
    del fake.routes[("GET", f"/v2/{REPO}/blobs/{digests[3]}")]
    with pytest.raises(NotFound, match=rf"blob {digests[3]}"):
        pull(f"{fake.host}/{REPO}", store, client=client_for(fake))


def test_forbidden(registry: RegistryServer, fake_registry: FakeFactory, store: ContentStore) -> None:
    fake = fake_registry()
    fake.add("GET", f"/v2/{REPO}/manifests/latest", 403,
             b'{"errors":[{"code":"DENIED","message":"requested access to the resource is denied"}]}',
             {"Content-Type": "application/json"})
    with pytest.raises(PermissionDenied, match=r"access denied by registry .*DENIED: requested access"):
        pull(f"{fake.host}/{REPO}", store, client=client_for(fake))


def test_insecure_registry_falls_back_to_http(fake_registry: FakeFactory, store: ContentStore) -> None:
    """An insecure registry is tried over https without verification, then over plain http."""
    fake = fake_registry()
    manifest, _ = fake_image(fake, [os.urandom(1000)])
    client = client_for(fake, insecure=True)
    assert client._upstream.base.startswith("https://")
    result = pull(f"{fake.host}/{REPO}", store, client=client)
    assert str(result.digest) == sha(manifest)
    assert client._upstream.base == f"http://{fake.host}"


def test_pull_killed_with_sigkill_resumes(fake_registry: FakeFactory, store: ContentStore) -> None:
    """A pull process killed halfway leaves its partial blob; the next pull continues it with Range."""
    fake = fake_registry()
    layer = os.urandom(4 << 20)
    fake_image(fake, [layer])
    digest = Digest.parse(sha(layer))
    slow = {"on": True}

    def route(h: BaseHTTPRequestHandler) -> None:
        if not slow["on"]:
            range_route(layer)(h)
            return
        h.send_response(200)
        h.send_header("Content-Length", str(len(layer)))
        h.end_headers()
        try:
            for i in range(0, len(layer), 64 << 10):
                h.wfile.write(layer[i:i + (64 << 10)])
                h.wfile.flush()
                time.sleep(0.02)
        except OSError:
            pass  # the client died

    fake.route("GET", f"/v2/{REPO}/blobs/{digest}", route)
    code = ("import sys; from berth.content import ContentStore; from berth.registry.pull import pull; "
            "pull(sys.argv[1], ContentStore(sys.argv[2]))")
    proc = subprocess.Popen([sys.executable, "-c", code, f"{fake.host}/{REPO}", str(store.root)])
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            partial = [i for i in store.ingests() if i.expected == digest and i.offset > 512 << 10]
            if partial:
                break
            time.sleep(0.02)
        else:
            pytest.fail("the pull never got going")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not store.exists(digest)
    [ingest] = [i for i in store.ingests() if i.expected == digest]
    slow["on"] = False
    pull(f"{fake.host}/{REPO}", store, client=client_for(fake))
    assert store.read_bytes(digest, verify=True) == layer
    last = [r for r in fake.requests if r.path == f"/v2/{REPO}/blobs/{digest}"][-1]
    offset = int(last.headers["Range"].removeprefix("bytes=").removesuffix("-"))
    assert offset >= ingest.offset > 0
    assert store.ingests() == []


def test_layers_download_in_parallel(fake_registry: FakeFactory, store: ContentStore) -> None:
    fake = fake_registry()
    layers = [os.urandom(20_000) for _ in range(7)]
    _, digests = fake_image(fake, layers)
    lock = threading.Lock()
    state = {"now": 0, "max": 0}

    def slow(data: bytes) -> Callable[[BaseHTTPRequestHandler], None]:
        def route(h: BaseHTTPRequestHandler) -> None:
            with lock:
                state["now"] += 1
                state["max"] = max(state["max"], state["now"])
            time.sleep(0.15)
            with lock:
                state["now"] -= 1
            respond(h, 200, data, {})

        return route

    for digest, data in zip(digests, layers, strict=True):
        fake.route("GET", f"/v2/{REPO}/blobs/{digest}", slow(data))
    started = time.monotonic()
    result = pull(f"{fake.host}/{REPO}", store, client=client_for(fake))
    assert len(result.layers) == 7
    assert state["max"] == 4, "four downloads at once"
    assert time.monotonic() - started < 7 * 0.15


def test_list_tags_follows_pagination(fake_registry: FakeFactory) -> None:
    fake = fake_registry()

    def tags(h: BaseHTTPRequestHandler) -> None:
        if "last=b" in h.path:
            respond(h, 200, b'{"name":"fault/app","tags":["c"]}', {"Content-Type": "application/json"})
        else:
            respond(h, 200, b'{"name":"fault/app","tags":["a","b"]}',
                    {"Content-Type": "application/json", "Link": f'</v2/{REPO}/tags/list?n=2&last=b>; rel="next"'})

    fake.route("GET", f"/v2/{REPO}/tags/list", tags)
    assert client_for(fake).list_tags(REPO, page_size=2) == ["a", "b", "c"]
    assert [r.path for r in fake.requests] == [f"/v2/{REPO}/tags/list?n=2", f"/v2/{REPO}/tags/list?n=2&last=b"]
