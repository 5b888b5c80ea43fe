"""Pulls from a real registry (docker-registry) of images skopeo pushed: v2s2, OCI, zstd, an index."""

from __future__ import annotations

import itertools
import json
import threading
from pathlib import Path

import pytest

from berth.content import ContentStore
from berth.errors import NotFound
from berth.oci.digest import Digest
from berth.oci.image import (
    DOCKER_LAYER_GZIP,
    DOCKER_MANIFEST_V2,
    MEDIA_TYPE_IMAGE_INDEX,
    MEDIA_TYPE_IMAGE_MANIFEST,
    MEDIA_TYPE_LAYER_GZIP,
    MEDIA_TYPE_LAYER_ZSTD,
    Descriptor,
    Platform,
)
from berth.registry import RegistryClient
from berth.registry.client import Progress
from berth.registry.pull import pull
from reg_helpers import PushedImage, RegistryServer

pytestmark = pytest.mark.integration

EXPECTED = {
    "v2s2": (DOCKER_MANIFEST_V2, DOCKER_LAYER_GZIP),
    "oci": (MEDIA_TYPE_IMAGE_MANIFEST, MEDIA_TYPE_LAYER_GZIP),
    "zstd": (MEDIA_TYPE_IMAGE_MANIFEST, MEDIA_TYPE_LAYER_ZSTD),
}


@pytest.fixture
def store(tmp_path: Path) -> ContentStore:
    return ContentStore(tmp_path / "content")


def assert_complete(store: ContentStore, result_layers: tuple[Descriptor, ...], config: Descriptor) -> None:
    for desc in (config, *result_layers):
        assert store.exists(desc.digest)
        assert store.info(desc.digest).size == desc.size
        store.read_bytes(desc.digest, verify=True)
    assert store.ingests() == []


@pytest.mark.parametrize("kind", ["v2s2", "oci", "zstd"])
@pytest.mark.parametrize("by", ["tag", "digest"])
def test_pull_single_platform(kind: str, by: str, test_images: dict[str, PushedImage], store: ContentStore) -> None:
    image = test_images[kind]
    ref = image.ref if by == "tag" else image.by_digest
    result = pull(ref, store)
    manifest_type, layer_type = EXPECTED[kind]
    assert str(result.digest) == image.digest
    assert result.manifest_digest == result.digest
    assert result.media_type == manifest_type
    assert result.index is None
    assert [layer.media_type for layer in result.layers] == [layer_type, layer_type]
    assert store.read_bytes(result.digest) == image.raw
    assert_complete(store, result.layers, result.config)
    assert result.image_config.architecture == "amd64"
    assert len(result.image_config.diff_ids) == 2
    assert result.pinned.digest == result.digest


def test_pull_reports_progress_and_layers(test_images: dict[str, PushedImage], store: ContentStore) -> None:
    events: list[Progress] = []
    committed: list[Descriptor] = []
    lock = threading.Lock()

    def on_progress(event: Progress) -> None:
        with lock:
            events.append(event)

    def on_layer(desc: Descriptor) -> None:
        assert store.exists(desc.digest), "the hook runs after the commit"
        with lock:
            committed.append(desc)

    result = pull(test_images["oci"].ref, store, progress=on_progress, on_layer_committed=on_layer)
    assert sorted(d.digest for d in committed) == sorted(layer.digest for layer in result.layers)
    for layer in result.layers:
        mine = [e for e in events if e.digest == layer.digest]
        assert mine[-1].status == "done" and mine[-1].done == mine[-1].total == layer.size
        assert any(e.status == "downloading" for e in mine)
        assert all(a.done <= b.done for a, b in itertools.pairwise(mine))

    # Again: everything is there already, nothing moves, the hook still sees every layer.
    events.clear()
    committed.clear()
    again = pull(test_images["oci"].ref, store, progress=on_progress, on_layer_committed=on_layer)
    assert again.digest == result.digest
    assert {e.status for e in events} == {"exists"}
    assert len(committed) == 2


def test_pull_index_selects_host_platform(test_images: dict[str, PushedImage], store: ContentStore) -> None:
    host = Platform.host()
    if host.os != "linux" or host.architecture not in ("amd64", "arm64"):
        pytest.skip(f"the test index has linux/amd64 and linux/arm64, not {host}")
    image = test_images["index"]
    result = pull(image.ref, store)
    assert str(result.digest) == image.digest
    assert result.media_type == MEDIA_TYPE_IMAGE_INDEX
    assert result.index is not None and len(result.index.manifests) == 2
    assert result.manifest_digest != result.digest
    assert result.image_config.architecture == host.architecture
    assert store.exists(result.digest) and store.exists(result.manifest_digest)
    assert_complete(store, result.layers, result.config)


@pytest.mark.parametrize("platform", ["linux/arm64", "linux/amd64", "arm64"])
def test_pull_index_platform_override(platform: str, test_images: dict[str, PushedImage], store: ContentStore) -> None:
    image = test_images["index"]
    result = pull(image.by_digest, store, platform=platform)
    want = Platform.parse(platform)
    assert result.image_config.architecture == want.architecture
    entry = next(m for m in json.loads(image.raw)["manifests"] if m["platform"]["architecture"] == want.architecture)
    assert str(result.manifest_digest) == entry["digest"]


def test_pull_index_unknown_platform(test_images: dict[str, PushedImage], store: ContentStore) -> None:
    with pytest.raises(NotFound, match=r"linux/s390x.*linux/amd64.*linux/arm64"):
        pull(test_images["index"].ref, store, platform=Platform("linux", "s390x"))


def test_pull_single_platform_mismatch(test_images: dict[str, PushedImage], store: ContentStore) -> None:
    with pytest.raises(NotFound, match=r"does not match the requested platform: wanted linux/arm64"):
        pull(test_images["oci"].ref, store, platform="linux/arm64")


def test_pull_unknown_image(registry: RegistryServer, test_images: dict[str, PushedImage],
                            store: ContentStore) -> None:
    with pytest.raises(NotFound, match=rf"image {registry.host}/test/nope:latest not found"):
        pull(registry.ref("test/nope"), store)
    with pytest.raises(NotFound, match=r"image .*/test/oci:no-such-tag not found .*MANIFEST_UNKNOWN"):
        pull(registry.ref("test/oci", "no-such-tag"), store)
    assert list(store.walk()) == []


def test_pull_through_mirror(registry: RegistryServer, test_images: dict[str, PushedImage], store: ContentStore,
                             registry_env: Path) -> None:
    """A registry that does not exist, mirrored by the local one: the pull never leaves the mirror."""
    (registry_env / "registries.json").write_text(json.dumps({"mirrors": {"mirrored.invalid": [registry.host]}}))
    result = pull("mirrored.invalid/test/oci:latest", store)
    assert str(result.digest) == test_images["oci"].digest
    assert_complete(store, result.layers, result.config)


def test_client_basics(registry: RegistryServer, test_images: dict[str, PushedImage]) -> None:
    client = RegistryClient(registry.host)
    assert client._upstream.base == f"http://{registry.host}", "loopback speaks plain http"
    client.ping()
    assert "latest" in client.list_tags("test/oci")
    desc = client.resolve("test/index", "latest")
    assert str(desc.digest) == test_images["index"].digest
    assert desc.media_type == MEDIA_TYPE_IMAGE_INDEX
    layer = json.loads(test_images["oci"].raw)["layers"][0]
    assert client.blob_exists("test/oci", Digest.parse(layer["digest"]))
    assert not client.blob_exists("test/oci", Digest.from_bytes(b"nothing"))
