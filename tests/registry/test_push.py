"""Pushes to a real registry, read back by skopeo: mounts, monolithic and chunked uploads, indexes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from berth.content import ContentStore
from berth.errors import InvalidArgument, NotFound
from berth.oci.digest import Digest
from berth.oci.image import Descriptor
from berth.registry import BlobSources, RegistryClient
from berth.registry.client import Progress
from berth.registry.pull import pull
from berth.registry.push import push
from reg_helpers import PushedImage, RegistryServer, skopeo, skopeo_raw

pytestmark = pytest.mark.integration


@pytest.fixture
def store(tmp_path: Path) -> ContentStore:
    return ContentStore(tmp_path / "content")


def upload_lines(registry: RegistryServer, repo: str) -> list[str]:
    """Access-log lines of blob upload requests (POST/PATCH/PUT on /blobs/uploads/) to ``repo``."""
    return [line for line in registry.access_lines() if f" /v2/{repo}/blobs/uploads/" in line]


def skopeo_inspect(ref: str) -> dict[str, object]:
    return dict(json.loads(skopeo("inspect", "--tls-verify=false", f"docker://{ref}")))


def test_push_pulled_image_mounts_across_repositories(registry: RegistryServer, test_images: dict[str, PushedImage],
                                                      store: ContentStore) -> None:
    image = test_images["v2s2"]
    pulled = pull(image.ref, store)
    dest = registry.ref("copies/mounted", "v1")
    events: list[Progress] = []
    result = push(dest, store, pulled.digest, progress=events.append)

    assert result.digest == pulled.digest
    blobs = [pulled.config.digest, *(layer.digest for layer in pulled.layers)]
    assert {result.blobs[d] for d in blobs} == {"mounted"}
    assert {e.status for e in events} == {"mounted"}
    lines = upload_lines(registry, "copies/mounted")
    assert lines and all("mount=" in line and '" 201 ' in line for line in lines), lines

    # skopeo reads back the very same manifest, under the new name.
    assert skopeo_raw(dest) == image.raw
    info = skopeo_inspect(dest)
    assert info["Digest"] == str(pulled.digest)
    assert info["Layers"] == [str(layer.digest) for layer in pulled.layers]

    # Pushing again finds everything in place.
    again = push(dest, store, pulled.digest)
    assert set(again.blobs.values()) == {"exists"}


@pytest.mark.parametrize("chunk_size", [None, 64 << 10])
def test_push_uploads(chunk_size: int | None, registry: RegistryServer, test_images: dict[str, PushedImage],
                      store: ContentStore, tmp_path: Path) -> None:
    """With no known source to mount from, blobs are uploaded: in one PUT, or PATCH chunk by chunk."""
    image = test_images["zstd"]
    pulled = pull(image.ref, store, sources=BlobSources(tmp_path / "pull-sources"))
    repo = f"copies/upload-{'chunked' if chunk_size else 'monolithic'}"
    dest = registry.ref(repo, "v1")
    events: list[Progress] = []
    result = push(dest, store, pulled.digest, progress=events.append, chunk_size=chunk_size,
                  sources=BlobSources(tmp_path / "empty-sources"))
    assert set(result.blobs.values()) == {"uploaded"}
    lines = upload_lines(registry, repo)
    patches = [line for line in lines if '"PATCH ' in line]
    big = max(pulled.layers, key=lambda d: d.size)
    if chunk_size:
        assert len(patches) >= big.size // chunk_size, "the big layer went up in chunks"
        assert all('" 202 ' in line for line in patches)
    else:
        assert patches == []
    assert not any("mount=" in line for line in lines)
    big_events = [e for e in events if e.digest == big.digest]
    assert big_events[-1].status == "done" and big_events[-1].done == big.size
    if chunk_size:
        assert len([e for e in big_events if e.status == "uploading"]) > 2
    assert skopeo_raw(dest) == image.raw


def test_push_index_pushes_children_first(registry: RegistryServer, test_images: dict[str, PushedImage],
                                          store: ContentStore) -> None:
    image = test_images["index"]
    with pytest.raises(NotFound, match="pull all platforms first"):
        first = pull(image.ref, store, platform="linux/amd64")
        push(registry.ref("copies/index", "partial"), store, first.digest)
    for platform in ("linux/amd64", "linux/arm64"):
        result = pull(image.ref, store, platform=platform)
    dest = registry.ref("copies/index", "v1")
    pushed = push(dest, store, result.digest)
    children = [Digest.parse(m["digest"]) for m in json.loads(image.raw)["manifests"]]
    assert list(pushed.manifests) == [*children, result.digest]
    assert skopeo_raw(dest) == image.raw
    for child in children:
        assert skopeo_raw(f"{registry.host}/copies/index@{child}")


def test_push_by_digest_and_errors(registry: RegistryServer, test_images: dict[str, PushedImage],
                                   store: ContentStore) -> None:
    pulled = pull(test_images["oci"].ref, store)
    dest = f"{registry.host}/copies/bydigest@{pulled.digest}"
    result = push(dest, store, pulled.digest)
    assert result.reference.tag is None
    assert skopeo_raw(dest) == test_images["oci"].raw
    with pytest.raises(InvalidArgument, match="the digests differ"):
        push(f"{registry.host}/copies/bydigest@{Digest.from_bytes(b'x')}", store, pulled.digest)
    with pytest.raises(NotFound, match="not in the content store"):
        push(registry.ref("copies/missing"), store, Digest.from_bytes(b"no such manifest"))


def test_client_push_primitives(registry: RegistryServer, store: ContentStore) -> None:
    client = RegistryClient(registry.host)
    data = b"a small blob for the primitives test\n" * 1000
    digest = store.put_bytes(data)
    desc = Descriptor("application/octet-stream", digest, len(data))
    assert not client.blob_exists("prims/a", digest)
    client.push_blob("prims/a", desc, store, chunk_size=10_000)
    assert client.blob_exists("prims/a", digest)
    assert not client.mount_blob("prims/b", digest, "prims/none"), "unknown source: no mount (202 cancelled)"
    assert client.mount_blob("prims/b", digest, "prims/a")
    assert client.blob_exists("prims/b", digest)
