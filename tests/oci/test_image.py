"""berth.oci.image: descriptors, manifests, indexes, configs and platforms, validated at the boundary."""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

import pytest

from berth.errors import InvalidArgument, NotFound, Unsupported
from berth.oci import image as oi
from berth.oci.digest import Digest
from berth.oci.image import (
    ContainerConfig,
    Descriptor,
    ImageConfig,
    Index,
    Manifest,
    Platform,
    chain_ids,
    normalize_arch,
    parse_manifest,
    select_platform,
)

pytestmark = pytest.mark.unit


def dg(seed: str) -> str:
    return "sha256:" + hashlib.sha256(seed.encode()).hexdigest()


# manifest.md's example, verbatim in substance.
OCI_MANIFEST: dict[str, Any] = {
    "schemaVersion": 2,
    "mediaType": "application/vnd.oci.image.manifest.v1+json",
    "config": {
        "mediaType": "application/vnd.oci.image.config.v1+json",
        "digest": "sha256:b5b2b2c507a0944348e0303114d8d93aaaa081732b86451d9bce1f432a537bc7",
        "size": 7023,
    },
    "layers": [
        {
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": "sha256:9834876dcfb05cb167a5c24953eba58c4ac89b1adf57f28f2f9d09af107ee8f0",
            "size": 32654,
        },
        {
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": "sha256:3c3a4604a545cdc127456d94e421cd355bca5b528f4a9c1905b15da2eb4a4c6b",
            "size": 16724,
        },
    ],
    "subject": {
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": "sha256:5b0bcabd1ed22e9fb1310cf6c2dec7cdef19f0ad69efa1f392e94a4333501270",
        "size": 7682,
    },
    "annotations": {"com.example.key2": "value2", "com.example.key1": "value1"},
}

# manifest-v2-2.md's image manifest.
DOCKER_MANIFEST: dict[str, Any] = {
    "schemaVersion": 2,
    "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
    "config": {
        "mediaType": "application/vnd.docker.container.image.v1+json",
        "size": 7023,
        "digest": "sha256:b5b2b2c507a0944348e0303114d8d93aaaa081732b86451d9bce1f432a537bc7",
    },
    "layers": [
        {
            "mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
            "size": 32654,
            "digest": "sha256:e692418e4cbaf90ca69d05a66403747baa33ee08806650b51fab815ad7fc331f",
        }
    ],
}


def entry(arch: str, os_: str = "linux", variant: str | None = None, *, media_type: str | None = None,
          seed: str | None = None) -> dict[str, Any]:
    platform: dict[str, Any] = {"architecture": arch, "os": os_}
    if variant:
        platform["variant"] = variant
    return {
        "mediaType": media_type or oi.MEDIA_TYPE_IMAGE_MANIFEST,
        "digest": dg(seed or f"{os_}/{arch}/{variant}"),
        "size": 500,
        "platform": platform,
    }


def make_index(*entries: dict[str, Any], media_type: str = oi.MEDIA_TYPE_IMAGE_INDEX) -> Index:
    return Index.from_json({"schemaVersion": 2, "mediaType": media_type, "manifests": list(entries)})


# --- media types ----------------------------------------------------------------------------------


def test_media_type_tables() -> None:
    assert oi.is_manifest_type(oi.DOCKER_MANIFEST_V2) and oi.is_manifest_type(oi.MEDIA_TYPE_IMAGE_MANIFEST)
    assert oi.is_index_type(oi.DOCKER_MANIFEST_LIST) and oi.is_index_type(oi.MEDIA_TYPE_IMAGE_INDEX)
    assert not oi.is_manifest_type(oi.DOCKER_MANIFEST_V1_SIGNED)
    assert oi.is_layer_type(oi.DOCKER_LAYER_GZIP)
    assert oi.layer_compression(oi.MEDIA_TYPE_LAYER) is None
    assert oi.layer_compression(oi.DOCKER_LAYER_GZIP) == "gzip"
    assert oi.layer_compression(oi.MEDIA_TYPE_LAYER_ZSTD) == "zstd"
    with pytest.raises(Unsupported, match="unsupported layer media type"):
        oi.layer_compression("application/vnd.example.thing")


# --- descriptors ----------------------------------------------------------------------------------


def test_descriptor_round_trip() -> None:
    doc = {
        "mediaType": oi.MEDIA_TYPE_IMAGE_MANIFEST,
        "digest": dg("m"),
        "size": 7682,
        "urls": ["https://example.com/example-manifest"],
        "annotations": {"b": "2", "a": "1"},
        "artifactType": "application/vnd.example.sbom.v1",
        "platform": {"architecture": "arm64", "os": "linux", "variant": "v8", "os.features": ["x"]},
    }
    d = Descriptor.from_json(json.dumps(doc).encode())
    assert d.digest == Digest.parse(dg("m"))
    assert d.urls == ("https://example.com/example-manifest",)
    assert d.platform == Platform("linux", "arm64", "v8", os_features=("x",))
    again = Descriptor.from_json(d.to_json())
    assert again == d
    # canonical: compact, annotations sorted
    assert b'"annotations":{"a":"1","b":"2"}' in d.to_json()
    assert b" " not in d.to_json()


def test_descriptor_for_bytes_and_embedded_data() -> None:
    d = Descriptor.for_bytes(oi.MEDIA_TYPE_EMPTY, oi.EMPTY_JSON, data=oi.EMPTY_JSON)
    assert str(d.digest) == "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
    assert d.size == 2
    assert d.to_dict()["data"] == "e30="
    assert Descriptor.from_json(d.to_json()).data == b"{}"
    bad = d.to_dict() | {"data": base64.b64encode(b"[]").decode()}
    with pytest.raises(InvalidArgument, match="descriptor: data: does not match"):
        Descriptor.from_json(bad)
    with pytest.raises(InvalidArgument, match="descriptor: data: is not valid base64"):
        Descriptor.from_json(d.to_dict() | {"data": "!!"})


def test_descriptor_hashable() -> None:
    d = Descriptor.from_json({"mediaType": "a/b", "digest": dg("x"), "size": 1, "annotations": {"k": "v"}})
    assert len({d, d}) == 1


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"mediaType": None}, "descriptor: mediaType: is required"),
        ({"digest": None}, "descriptor: digest: is required"),
        ({"size": None}, "descriptor: size: is required"),
        ({"mediaType": 5}, "descriptor: mediaType: must be a string"),
        ({"mediaType": "not a media type"}, "is not a valid media type"),
        ({"mediaType": "application/"}, "is not a valid media type"),
        ({"digest": "sha256:xyz"}, "descriptor: digest: 'sha256:xyz' is not a valid digest"),
        ({"size": -1}, "descriptor: size: must be at least 0"),
        ({"size": "12"}, "descriptor: size: must be an integer"),
        ({"size": 1.5}, "descriptor: size: must be an integer"),
        ({"size": True}, "descriptor: size: must be an integer"),
        ({"size": 2**63}, "larger than a 64-bit integer"),
        ({"urls": "https://x"}, "descriptor: urls: must be an array of strings"),
        ({"annotations": {"a": 1}}, "descriptor: annotations: must be an object of string values"),
        ({"annotations": []}, "descriptor: annotations: must be an object of string values"),
        ({"platform": {"os": "linux"}}, "descriptor: platform.architecture: is required"),
        ({"platform": "linux/amd64"}, "descriptor: platform: must be an object"),
        ({"platform": {"os": "linux", "architecture": "amd64", "os.features": "x"}},
         "descriptor: platform.os.features: must be an array of strings"),
    ],
)
def test_descriptor_validation_names_the_field(change: dict[str, Any], message: str) -> None:
    doc = {"mediaType": "application/octet-stream", "digest": dg("x"), "size": 1}
    doc.update(change)
    doc = {k: v for k, v in doc.items() if v is not None}
    with pytest.raises(InvalidArgument) as exc:
        Descriptor.from_json(doc)
    assert message in str(exc.value)


def test_descriptor_unsupported_digest_algorithm() -> None:
    with pytest.raises(Unsupported, match="descriptor: digest: unsupported digest algorithm"):
        Descriptor.from_json({"mediaType": "a/b", "digest": "sha384:" + "a" * 96, "size": 1})


def test_descriptor_unknown_media_type_is_kept() -> None:
    d = Descriptor.from_json({"mediaType": "application/vnd.example.unknown+x", "digest": dg("x"), "size": 0})
    assert d.media_type == "application/vnd.example.unknown+x"


# --- manifests ------------------------------------------------------------------------------------


def test_oci_manifest_parses() -> None:
    m = Manifest.from_json(json.dumps(OCI_MANIFEST).encode())
    assert m.media_type == oi.MEDIA_TYPE_IMAGE_MANIFEST
    assert m.config.media_type == oi.MEDIA_TYPE_IMAGE_CONFIG
    assert [layer.size for layer in m.layers] == [32654, 16724]
    assert m.subject is not None and m.subject.size == 7682
    assert m.annotations == {"com.example.key1": "value1", "com.example.key2": "value2"}
    assert m.children() == [m.config, *m.layers]


def test_manifest_to_json_is_canonical() -> None:
    m = Manifest.from_json(OCI_MANIFEST)
    out = m.to_json()
    assert Manifest.from_json(out) == m
    assert out == Manifest.from_json(json.dumps(OCI_MANIFEST, indent=4)).to_json()  # whitespace-independent
    keys = list(json.loads(out))
    assert keys == ["schemaVersion", "mediaType", "config", "layers", "subject", "annotations"]
    assert json.loads(out)["annotations"] == {"com.example.key1": "value1", "com.example.key2": "value2"}
    assert b"\n" not in out and b": " not in out


def test_docker_manifest_parses() -> None:
    m = Manifest.from_json(DOCKER_MANIFEST)
    assert m.media_type == oi.DOCKER_MANIFEST_V2
    assert m.config.media_type == oi.DOCKER_CONFIG
    assert m.layers[0].media_type == oi.DOCKER_LAYER_GZIP
    assert json.loads(m.to_json())["mediaType"] == oi.DOCKER_MANIFEST_V2


def test_manifest_without_media_type_is_oci() -> None:
    doc = {k: v for k, v in OCI_MANIFEST.items() if k != "mediaType"}
    assert Manifest.from_json(doc).media_type == oi.MEDIA_TYPE_IMAGE_MANIFEST


def test_artifact_manifest() -> None:
    empty = Descriptor.for_bytes(oi.MEDIA_TYPE_EMPTY, b"{}").to_dict()
    m = Manifest.from_json({"schemaVersion": 2, "mediaType": oi.MEDIA_TYPE_IMAGE_MANIFEST,
                            "artifactType": "application/vnd.example+type", "config": empty,
                            "layers": [empty]})
    assert m.artifact_type == "application/vnd.example+type"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"schemaVersion": None}, "manifest: schemaVersion: is required"),
        ({"schemaVersion": 3}, "manifest: schemaVersion: must be 2, got 3"),
        ({"schemaVersion": "2"}, "manifest: schemaVersion: must be an integer"),
        ({"config": None}, "manifest: config: is required"),
        ({"config": []}, "manifest: config: must be an object"),
        ({"layers": {}}, "manifest: layers: must be an array"),
        ({"layers": [{"mediaType": oi.MEDIA_TYPE_LAYER, "digest": dg("a"), "size": 1}, {
            "mediaType": oi.MEDIA_TYPE_LAYER, "digest": dg("b"), "size": -5}]},
         "manifest: layers[1].size: must be at least 0"),
        ({"layers": ["x"]}, "manifest: layers[0]: must be an object"),
        ({"config": {"mediaType": oi.MEDIA_TYPE_IMAGE_CONFIG, "size": 3}}, "manifest: config.digest: is required"),
        ({"mediaType": oi.MEDIA_TYPE_IMAGE_INDEX}, "is an index, not an image manifest"),
        ({"mediaType": "text/plain"}, "'text/plain' is not an image manifest media type"),
        ({"annotations": {"a": None, "b": 2}}, "manifest: annotations"),
        ({"subject": {"mediaType": "a/b"}}, "manifest: subject.digest: is required"),
    ],
)
def test_manifest_validation_names_the_field(change: dict[str, Any], message: str) -> None:
    doc = {k: v for k, v in (OCI_MANIFEST | change).items() if v is not None}
    with pytest.raises(InvalidArgument) as exc:
        Manifest.from_json(doc)
    assert message in str(exc.value)


def test_docker_manifest_requires_layers() -> None:
    doc = {k: v for k, v in DOCKER_MANIFEST.items() if k != "layers"}
    with pytest.raises(InvalidArgument, match="manifest: layers: is required"):
        Manifest.from_json(doc)


@pytest.mark.parametrize(
    "doc",
    [
        {"schemaVersion": 1, "name": "library/busybox", "tag": "latest", "fsLayers": []},
        {"schemaVersion": 2, "mediaType": oi.DOCKER_MANIFEST_V1_SIGNED, "config": {}},
        {"schemaVersion": 2, "mediaType": oi.DOCKER_MANIFEST_V1, "config": {}},
    ],
)
def test_schema1_is_unsupported(doc: dict[str, Any]) -> None:
    with pytest.raises(Unsupported, match="schema 1"):
        Manifest.from_json(doc)
    with pytest.raises(Unsupported, match="schema 1"):
        parse_manifest(doc)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "manifest: invalid JSON"),
        (b"{", "manifest: invalid JSON"),
        (b"[]", "manifest: expected a JSON object, got list"),
        (b'"x"', "manifest: expected a JSON object, got str"),
        (b'{"schemaVersion":2,"schemaVersion":2}', "duplicate key 'schemaVersion'"),
        (b"\xff\xfe", "manifest: invalid JSON"),
    ],
)
def test_bad_json(data: bytes, message: str) -> None:
    with pytest.raises(InvalidArgument) as exc:
        Manifest.from_json(data)
    assert message in str(exc.value)


def test_duplicate_keys_nested_are_rejected() -> None:
    data = json.dumps(OCI_MANIFEST).replace('"size": 7023', '"size": 7023, "size": 1').encode()
    with pytest.raises(InvalidArgument, match="duplicate key 'size'"):
        Manifest.from_json(data)


# --- indexes --------------------------------------------------------------------------------------


def test_index_round_trip() -> None:
    idx = make_index(entry("ppc64le"), entry("amd64"))
    assert [m.platform.architecture for m in idx.manifests if m.platform] == ["ppc64le", "amd64"]
    assert Index.from_json(idx.to_json()) == idx
    assert idx.children() == list(idx.manifests)


def test_docker_manifest_list() -> None:
    idx = make_index(entry("amd64", media_type=oi.DOCKER_MANIFEST_V2), media_type=oi.DOCKER_MANIFEST_LIST)
    assert idx.media_type == oi.DOCKER_MANIFEST_LIST


def test_index_validation() -> None:
    with pytest.raises(InvalidArgument, match="index: manifests: is required"):
        Index.from_json({"schemaVersion": 2, "mediaType": oi.MEDIA_TYPE_IMAGE_INDEX})
    with pytest.raises(InvalidArgument, match=r"index: manifests\[0\]\.platform\.os: is required"):
        Index.from_json({"schemaVersion": 2, "manifests": [
            {"mediaType": oi.MEDIA_TYPE_IMAGE_MANIFEST, "digest": dg("a"), "size": 1,
             "platform": {"architecture": "amd64"}}]})
    with pytest.raises(InvalidArgument, match="is an image manifest, not an index"):
        Index.from_json(OCI_MANIFEST)
    with pytest.raises(InvalidArgument, match="it is an image manifest, not an index"):
        Index.from_json({k: v for k, v in OCI_MANIFEST.items() if k != "mediaType"})
    # An empty index is valid.
    assert Index.from_json({"schemaVersion": 2, "manifests": []}).manifests == ()


def test_parse_manifest_dispatch() -> None:
    assert isinstance(parse_manifest(json.dumps(OCI_MANIFEST)), Manifest)
    assert isinstance(parse_manifest(make_index(entry("amd64")).to_json()), Index)
    no_type = {"schemaVersion": 2, "manifests": []}
    assert isinstance(parse_manifest(no_type), Index)
    assert isinstance(parse_manifest(no_type, oi.DOCKER_MANIFEST_LIST), Index)
    bare = {k: v for k, v in OCI_MANIFEST.items() if k != "mediaType"}
    assert isinstance(parse_manifest(bare, oi.MEDIA_TYPE_IMAGE_MANIFEST), Manifest)
    with pytest.raises(Unsupported):
        parse_manifest({"schemaVersion": 1}, None)
    with pytest.raises(Unsupported):
        parse_manifest({"signatures": []}, oi.DOCKER_MANIFEST_V1_SIGNED)
    with pytest.raises(InvalidArgument, match="neither an image manifest nor an index"):
        parse_manifest({"schemaVersion": 2, "mediaType": "application/json"})
    with pytest.raises(InvalidArgument, match="neither 'config' nor 'manifests'"):
        parse_manifest({"schemaVersion": 2})


# --- platforms ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("arch", "variant", "expected"),
    [
        ("x86_64", "", ("amd64", "")),
        ("x86-64", "", ("amd64", "")),
        ("AMD64", "", ("amd64", "")),
        ("amd64", "v1", ("amd64", "")),
        ("amd64", "v3", ("amd64", "v3")),
        ("aarch64", "", ("arm64", "v8")),
        ("arm64", "", ("arm64", "v8")),
        ("arm64", "8", ("arm64", "v8")),
        ("arm64", "v8.0", ("arm64", "v8")),
        ("arm64", "v8.2", ("arm64", "v8.2")),
        ("arm", "", ("arm", "v7")),
        ("arm", "6", ("arm", "v6")),
        ("armhf", "", ("arm", "v7")),
        ("armel", "", ("arm", "v6")),
        ("armv7l", "", ("arm", "v7")),
        ("armv6l", "", ("arm", "v6")),
        ("i686", "", ("386", "")),
        ("ppc64le", "", ("ppc64le", "")),
        ("s390x", "", ("s390x", "")),
        ("riscv64", "", ("riscv64", "")),
    ],
)
def test_normalize_arch(arch: str, variant: str, expected: tuple[str, str]) -> None:
    assert normalize_arch(arch, variant) == expected


def test_host_platform() -> None:
    host = Platform.host()
    assert host.os == "linux"
    assert host == host.normalized()
    assert host.architecture in {"amd64", "arm64", "arm", "386", "ppc64le", "s390x", "riscv64", "loong64"}
    if host.architecture == "arm64":
        assert host.variant == "v8" or (host.variant or "").startswith("v")
    assert host.compatibility(host) == 0


def test_amd64_level_detection() -> None:
    base = "flags\t\t: fpu sse sse2"
    v2 = base + " cx16 lahf_lm popcnt pni sse4_1 sse4_2 ssse3"
    v3 = v2 + " avx avx2 bmi1 bmi2 f16c fma abm movbe xsave"
    v4 = v3 + " avx512f avx512bw avx512cd avx512dq avx512vl"
    assert oi._amd64_level(base) == ""
    assert oi._amd64_level(v2) == "v2"
    assert oi._amd64_level(v3) == "v3"
    assert oi._amd64_level(v4) == "v4"
    assert oi._amd64_level(v2 + " avx512f avx512bw avx512cd avx512dq avx512vl") == "v2"  # levels stack


def test_platform_parse_and_str() -> None:
    assert str(Platform.parse("linux/amd64")) == "linux/amd64"
    assert Platform.parse("linux/x86_64") == Platform("linux", "amd64")
    assert str(Platform.parse("linux/arm64")) == "linux/arm64/v8"
    assert str(Platform.parse("linux/arm/v6")) == "linux/arm/v6"
    assert str(Platform.parse("Linux/ARM64/V8")) == "linux/arm64/v8"
    assert Platform.parse("arm64").os == Platform.host().os
    assert Platform.parse("linux") == Platform.host()
    assert Platform.parse("windows").os == "windows"
    for bad in ("", "linux/", "/amd64", "a/b/c/d"):
        with pytest.raises(InvalidArgument, match="invalid platform"):
            Platform.parse(bad)


def test_platform_matches() -> None:
    assert Platform("linux", "x86_64").matches(Platform("linux", "amd64"))
    assert Platform("linux", "aarch64").matches(Platform("linux", "arm64", "v8"))
    assert Platform("linux", "arm64").matches(Platform("linux", "arm64", "v8"))
    assert not Platform("linux", "arm", "v6").matches(Platform("linux", "arm"))
    assert not Platform("windows", "amd64").matches(Platform("linux", "amd64"))


def test_platform_compatibility() -> None:
    amd64_v3 = Platform("linux", "amd64", "v3")
    assert amd64_v3.compatibility(Platform("linux", "amd64", "v3")) == 0
    assert amd64_v3.compatibility(Platform("linux", "amd64")) is not None
    assert amd64_v3.compatibility(Platform("linux", "amd64", "v4")) is None
    v2 = amd64_v3.compatibility(Platform("linux", "amd64", "v2"))
    v1 = amd64_v3.compatibility(Platform("linux", "amd64"))
    i386 = amd64_v3.compatibility(Platform("linux", "386"))
    assert v2 is not None and v1 is not None and i386 is not None
    assert 0 < v2 < v1 < i386
    arm7 = Platform("linux", "arm", "v7")
    assert arm7.compatibility(Platform("linux", "arm", "v6")) is not None
    assert arm7.compatibility(Platform("linux", "arm", "v8")) is None
    arm64 = Platform("linux", "arm64")
    assert arm64.compatibility(Platform("linux", "arm64", "v8")) == 0
    assert arm64.compatibility(Platform("linux", "arm64", "v8.2")) is None
    assert Platform("linux", "arm64", "v9").compatibility(Platform("linux", "arm64", "v8.2")) is not None
    assert arm64.compatibility(Platform("linux", "amd64")) is None
    assert arm64.compatibility(Platform("windows", "arm64")) is None
    assert Platform("linux", "ppc64le").compatibility(Platform("linux", "ppc64le", "power9")) is None
    assert Platform("linux", "ppc64le", "power9").compatibility(Platform("linux", "ppc64le")) is not None


def test_select_platform_exact() -> None:
    idx = make_index(entry("ppc64le"), entry("amd64"), entry("arm64", variant="v8"), entry("arm", variant="v7"))
    assert select_platform(idx, Platform("linux", "amd64")).digest == Digest.parse(dg("linux/amd64/None"))
    assert select_platform(idx, Platform("linux", "aarch64")).digest == Digest.parse(dg("linux/arm64/v8"))
    assert select_platform(idx, Platform("linux", "arm", "v7")).platform == Platform("linux", "arm", "v7")


def test_select_platform_prefers_closest_variant_then_first() -> None:
    idx = make_index(entry("amd64", seed="generic"), entry("amd64", variant="v2"),
                     entry("amd64", variant="v3"), entry("amd64", seed="generic-2"))
    chosen = select_platform(idx, Platform("linux", "amd64", "v3"))
    assert chosen.platform == Platform("linux", "amd64", "v3")
    assert select_platform(idx, Platform("linux", "amd64", "v2")).platform == Platform("linux", "amd64", "v2")
    # Two equally good entries: the first wins, as image-index.md asks.
    assert select_platform(idx, Platform("linux", "amd64")).digest == Digest.parse(dg("generic"))


def test_select_platform_fallbacks() -> None:
    arm = make_index(entry("arm", variant="v5"), entry("arm", variant="v6"), entry("arm", variant="v8"))
    assert select_platform(arm, Platform("linux", "arm", "v7")).platform == Platform("linux", "arm", "v6")
    only386 = make_index(entry("386"))
    assert select_platform(only386, Platform("linux", "amd64")).platform == Platform("linux", "386")


def test_select_platform_skips_attestations_and_unknown_types() -> None:
    attestation = {"mediaType": oi.MEDIA_TYPE_IMAGE_MANIFEST, "digest": dg("att"), "size": 10,
                   "platform": {"architecture": "unknown", "os": "unknown"}}
    artifact = {"mediaType": "application/vnd.example.sbom", "digest": dg("sbom"), "size": 10,
                "platform": {"architecture": "amd64", "os": "linux"}}
    idx = make_index(artifact, attestation, entry("amd64"))
    assert select_platform(idx, Platform("linux", "amd64")).digest == Digest.parse(dg("linux/amd64/None"))


def test_select_platform_entry_without_platform_is_a_last_resort() -> None:
    bare = {"mediaType": oi.MEDIA_TYPE_IMAGE_MANIFEST, "digest": dg("bare"), "size": 10}
    idx = make_index(bare, entry("amd64"))
    assert select_platform(idx, Platform("linux", "amd64")).digest == Digest.parse(dg("linux/amd64/None"))
    assert select_platform(idx, Platform("linux", "s390x")).digest == Digest.parse(dg("bare"))


def test_select_platform_not_found_lists_what_there_is() -> None:
    idx = make_index(entry("ppc64le"), entry("arm", variant="v7"),
                     {"mediaType": oi.MEDIA_TYPE_IMAGE_MANIFEST, "digest": dg("att"), "size": 1,
                      "platform": {"architecture": "unknown", "os": "unknown"}})
    with pytest.raises(NotFound) as exc:
        select_platform(idx, Platform("linux", "amd64"))
    assert str(exc.value) == "no image for platform linux/amd64 in the index (it has: linux/arm/v7, linux/ppc64le)"


def test_select_platform_defaults_to_host() -> None:
    host = Platform.host()
    idx = make_index(entry("s390x" if host.architecture != "s390x" else "ppc64le"),
                     entry(host.architecture, variant=host.variant))
    assert select_platform(idx).platform == host


# --- image config ---------------------------------------------------------------------------------

CONFIG: dict[str, Any] = {
    "created": "2015-10-31T22:22:56.015925234Z",
    "author": "Alyssa P. Hacker <alyspdev@example.com>",
    "architecture": "amd64",
    "os": "linux",
    "config": {
        "User": "alice",
        "ExposedPorts": {"8080/tcp": {}},
        "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "FOO=oci_is_a"],
        "Entrypoint": ["/bin/my-app-binary"],
        "Cmd": ["--foreground", "--config", "/etc/my-app.d/default.cfg"],
        "Volumes": {"/var/job-result-data": {}, "/var/log/my-app-logs": {}},
        "WorkingDir": "/home/alice",
        "Labels": {"com.example.project.git.url": "https://example.com/project.git"},
        "StopSignal": "SIGRTMIN+3",
        "Hostname": "",  # a Docker field the model does not know
    },
    "rootfs": {
        "diff_ids": [
            "sha256:c6f988f4874bb0add23a778f753c65efe992244e148a1d2ec2a8b664fb66bbd1",
            "sha256:5f70bf18a086007016e948b04aed3b82103a36bea41755b6cddfaf10ace3c6ef",
        ],
        "type": "layers",
    },
    "history": [
        {"created": "2015-10-31T22:22:54.690851953Z",
         "created_by": "/bin/sh -c #(nop) ADD file:a3bc1e842b69636f9df5256c49c5374fb4eef1e2 in /"},
        {"created": "2015-10-31T22:22:55.613815829Z", "created_by": "/bin/sh -c #(nop) CMD [\"sh\"]",
         "empty_layer": True},
    ],
    "docker_version": "1.8.2",  # top-level extra
}


def test_image_config_parses() -> None:
    c = ImageConfig.from_json(json.dumps(CONFIG).encode())
    assert c.platform == Platform("linux", "amd64")
    assert c.config is not None
    assert c.config.user == "alice"
    assert c.config.exposed_ports == ("8080/tcp",)
    assert c.config.entrypoint == ("/bin/my-app-binary",)
    assert c.config.volumes == ("/var/job-result-data", "/var/log/my-app-logs")
    assert c.config.stop_signal == "SIGRTMIN+3"
    assert c.config.extra == {"Hostname": ""}
    assert [str(d) for d in c.diff_ids] == CONFIG["rootfs"]["diff_ids"]
    assert c.history is not None and c.history[1].empty_layer is True
    assert c.extra == {"docker_version": "1.8.2"}


def test_image_config_round_trip_keeps_unknown_fields() -> None:
    c = ImageConfig.from_json(CONFIG)
    out = json.loads(c.to_json())
    assert out == CONFIG
    assert ImageConfig.from_json(c.to_json()) == c


def test_image_config_nulls_are_absent() -> None:
    doc = CONFIG | {"config": {"Env": None, "Cmd": None, "Labels": None}, "history": None, "author": None}
    c = ImageConfig.from_json(doc)
    assert c.config == ContainerConfig()
    assert c.history is None and c.author is None


def test_minimal_image_config() -> None:
    c = ImageConfig.from_json({"architecture": "arm64", "os": "linux", "variant": "v8",
                               "rootfs": {"type": "layers", "diff_ids": []}})
    assert c.config is None and c.diff_ids == ()
    assert c.platform.matches(Platform("linux", "aarch64"))
    assert c.to_json() == (
        b'{"architecture":"arm64","os":"linux","variant":"v8","rootfs":{"type":"layers","diff_ids":[]}}'
    )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"architecture": None}, "image config: architecture: is required"),
        ({"os": 1}, "image config: os: must be a string"),
        ({"rootfs": None}, "image config: rootfs: is required"),
        ({"rootfs": {"type": "layers"}}, "image config: rootfs.diff_ids: is required"),
        ({"rootfs": {"type": "tar", "diff_ids": []}}, "image config: rootfs.type: must be 'layers', got 'tar'"),
        ({"rootfs": {"diff_ids": []}}, "image config: rootfs.type: is required"),
        ({"rootfs": {"type": "layers", "diff_ids": ["sha256:x"]}},
         "image config: rootfs.diff_ids[0]: 'sha256:x' is not a valid digest"),
        ({"rootfs": {"type": "layers", "diff_ids": [7]}}, "image config: rootfs.diff_ids[0]: must be a string"),
        ({"config": {"Env": "A=b"}}, "image config: config.Env: must be an array of strings"),
        ({"config": {"Cmd": ["a", 1]}}, "image config: config.Cmd: must be an array of strings"),
        ({"config": {"ExposedPorts": ["80/tcp"]}}, "image config: config.ExposedPorts: must be an object"),
        ({"config": {"ArgsEscaped": "yes"}}, "image config: config.ArgsEscaped: must be a boolean"),
        ({"config": {"Healthcheck": []}}, "image config: config.Healthcheck: must be an object"),
        ({"config": "x"}, "image config: config: must be an object"),
        ({"history": [{"empty_layer": 1}]}, "image config: history[0].empty_layer: must be a boolean"),
        ({"history": {}}, "image config: history: must be an array"),
    ],
)
def test_image_config_validation_names_the_field(change: dict[str, Any], message: str) -> None:
    doc = {k: v for k, v in (CONFIG | change).items() if v is not None}
    with pytest.raises(InvalidArgument) as exc:
        ImageConfig.from_json(doc)
    assert message in str(exc.value)


def test_chain_ids() -> None:
    a, b, c = (Digest.from_bytes(x) for x in (b"a", b"b", b"c"))
    ab = Digest.from_bytes(f"{a} {b}".encode())
    abc = Digest.from_bytes(f"{ab} {c}".encode())
    assert chain_ids([a, b, c]) == [a, ab, abc]
    assert chain_ids([]) == []
    cfg = ImageConfig("amd64", "linux", (a, b))
    assert cfg.chain_ids() == [a, ab]
