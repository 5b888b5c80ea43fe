"""The OCI image model (image-spec) and its Docker v2 schema 2 twin, validated at the boundary.

Every document type has ``from_json(bytes | str | dict)``, which checks required fields and types and
raises :class:`~berth.errors.InvalidArgument` naming the offending field (``manifest: layers[1].size:
must be a non-negative integer``), and ``to_json()``, which returns canonical bytes: compact, fields in
the spec's order, maps sorted by key, UTF-8. Docker schema 1 manifests are recognised and refused with
:class:`~berth.errors.Unsupported`.

Unknown media types in descriptors are kept, never an error (the spec requires that); JSON objects with
duplicate keys are refused, since two parsers could read them differently.
"""

from __future__ import annotations

import os

# collections.abc re-exports this module; importing it directly keeps the `collections` package
# (~0.7 ms with what it imports) off `berth run`'s path.
from _collections_abc import Mapping

from berth.errors import InvalidArgument, NotFound, Unsupported
from berth.oci import jsonc
from berth.oci.digest import Digest
from berth.record import field, record, replace

TYPE_CHECKING = False  # `typing`, `re`, `json` and `platform` stay off `berth run`'s path (~6 ms)
if TYPE_CHECKING:
    from collections.abc import Iterable
    from typing import Any

# --- media types ------------------------------------------------------------------------------------

MEDIA_TYPE_DESCRIPTOR = "application/vnd.oci.descriptor.v1+json"
MEDIA_TYPE_LAYOUT_HEADER = "application/vnd.oci.layout.header.v1+json"
MEDIA_TYPE_IMAGE_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_TYPE_IMAGE_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_TYPE_IMAGE_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_TYPE_EMPTY = "application/vnd.oci.empty.v1+json"
MEDIA_TYPE_LAYER = "application/vnd.oci.image.layer.v1.tar"
MEDIA_TYPE_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
MEDIA_TYPE_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
MEDIA_TYPE_LAYER_NONDIST = "application/vnd.oci.image.layer.nondistributable.v1.tar"
MEDIA_TYPE_LAYER_NONDIST_GZIP = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
MEDIA_TYPE_LAYER_NONDIST_ZSTD = "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd"

DOCKER_MANIFEST_V2 = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_LAYER_FOREIGN_GZIP = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
DOCKER_PLUGIN_CONFIG = "application/vnd.docker.plugin.v1+json"
#: Docker schema 1 (signed and unsigned): recognised only to be refused.
DOCKER_MANIFEST_V1 = "application/vnd.docker.distribution.manifest.v1+json"
DOCKER_MANIFEST_V1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"

MANIFEST_MEDIA_TYPES = frozenset({MEDIA_TYPE_IMAGE_MANIFEST, DOCKER_MANIFEST_V2})
INDEX_MEDIA_TYPES = frozenset({MEDIA_TYPE_IMAGE_INDEX, DOCKER_MANIFEST_LIST})
CONFIG_MEDIA_TYPES = frozenset({MEDIA_TYPE_IMAGE_CONFIG, DOCKER_CONFIG})
SCHEMA1_MEDIA_TYPES = frozenset({DOCKER_MANIFEST_V1, DOCKER_MANIFEST_V1_SIGNED})

#: Layer media types berth can unpack, with their compression (None: plain tar).
LAYER_COMPRESSION: dict[str, str | None] = {
    MEDIA_TYPE_LAYER: None,
    MEDIA_TYPE_LAYER_GZIP: "gzip",
    MEDIA_TYPE_LAYER_ZSTD: "zstd",
    MEDIA_TYPE_LAYER_NONDIST: None,
    MEDIA_TYPE_LAYER_NONDIST_GZIP: "gzip",
    MEDIA_TYPE_LAYER_NONDIST_ZSTD: "zstd",
    DOCKER_LAYER_GZIP: "gzip",
    DOCKER_LAYER_FOREIGN_GZIP: "gzip",
}
LAYER_MEDIA_TYPES = frozenset(LAYER_COMPRESSION)

#: The blob ``{}`` that the empty descriptor points at.
EMPTY_JSON = b"{}"

# RFC 6838 section 4.2 restricted-name, for both type and subtype: an alphanumeric first character,
# then up to 126 of these.
_ALNUM = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789")
_NAME_CHARS = _ALNUM | frozenset("!#$&^_.+-")


def _is_media_type(value: str) -> bool:
    kind, slash, sub = value.partition("/")
    return bool(slash) and all(0 < len(part) <= 127 and part[0] in _ALNUM and _NAME_CHARS.issuperset(part)
                               for part in (kind, sub))

_INT64_MAX = 2**63 - 1


def is_manifest_type(media_type: str | None) -> bool:
    return media_type in MANIFEST_MEDIA_TYPES


def is_index_type(media_type: str | None) -> bool:
    return media_type in INDEX_MEDIA_TYPES


def is_layer_type(media_type: str | None) -> bool:
    return media_type in LAYER_MEDIA_TYPES


def layer_compression(media_type: str) -> str | None:
    """``"gzip"``, ``"zstd"`` or None (plain tar) for a layer media type; Unsupported otherwise."""
    try:
        return LAYER_COMPRESSION[media_type]
    except KeyError:
        raise Unsupported(f"unsupported layer media type {media_type!r}") from None


# --- validation helpers ------------------------------------------------------------------------------


def _load(data: bytes | bytearray | str | Mapping[str, Any], what: str) -> Mapping[str, Any]:
    if isinstance(data, Mapping):
        return data
    if not isinstance(data, bytes | bytearray | str):
        raise InvalidArgument(f"{what}: expected JSON bytes or an object, got {type(data).__name__}")
    try:
        doc = jsonc.loads(data, unique_keys=True)
    except (ValueError, RecursionError) as exc:
        raise InvalidArgument(f"{what}: invalid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise InvalidArgument(f"{what}: expected a JSON object, got {type(doc).__name__}")
    return doc


def _dump(doc: Mapping[str, Any]) -> bytes:
    return jsonc.dumps(doc, compact=True).encode()


def _b64(data: bytes) -> str:
    import binascii

    return binascii.b2a_base64(data, newline=False).decode()


def _where(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


class _Fields:
    """Typed access to one JSON object, errors naming ``what: path.key``."""

    def __init__(self, obj: Any, what: str, path: str = "") -> None:
        if not isinstance(obj, Mapping):
            raise InvalidArgument(f"{what}: {path or 'document'}: must be an object")
        self.obj = obj
        self.what = what
        self.path = path

    def fail(self, key: str, message: str) -> InvalidArgument:
        return InvalidArgument(f"{self.what}: {_where(self.path, key)}: {message}")

    def has(self, key: str) -> bool:
        return self.obj.get(key) is not None

    def raw(self, key: str, required: bool = False) -> Any:
        value = self.obj.get(key)
        if value is None and required:
            raise self.fail(key, "is required")
        return value

    def string(self, key: str, required: bool = False) -> str | None:
        value = self.raw(key, required)
        if value is not None and not isinstance(value, str):
            raise self.fail(key, "must be a string")
        return value

    def req_str(self, key: str) -> str:
        value = self.string(key, required=True)
        assert value is not None
        return value

    def media_type(self, key: str, required: bool = False) -> str | None:
        value = self.string(key, required)
        if value is not None and not _is_media_type(value):
            raise self.fail(key, f"{value!r} is not a valid media type (RFC 6838)")
        return value

    def boolean(self, key: str) -> bool | None:
        value = self.raw(key)
        if value is not None and not isinstance(value, bool):
            raise self.fail(key, "must be a boolean")
        return value

    def integer(self, key: str, required: bool = False, minimum: int | None = None) -> int | None:
        value = self.raw(key, required)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(key, "must be an integer")
        if minimum is not None and value < minimum:
            raise self.fail(key, f"must be at least {minimum}")
        if value > _INT64_MAX:
            raise self.fail(key, "is larger than a 64-bit integer")
        return value

    def digest(self, key: str, required: bool = False) -> Digest | None:
        value = self.string(key, required)
        if value is None:
            return None
        return _digest(value, self.fail, key)

    def str_list(self, key: str) -> tuple[str, ...] | None:
        value = self.raw(key)
        if value is None:
            return None
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.fail(key, "must be an array of strings")
        return tuple(value)

    def str_map(self, key: str) -> dict[str, str] | None:
        value = self.raw(key)
        if value is None:
            return None
        if not isinstance(value, Mapping) or not all(isinstance(v, str) for v in value.values()):
            raise self.fail(key, "must be an object of string values")
        return dict(value)

    def set_keys(self, key: str) -> tuple[str, ...] | None:
        """Go's ``map[string]struct{}`` (ExposedPorts, Volumes): the keys, in document order."""
        value = self.raw(key)
        if value is None:
            return None
        if not isinstance(value, Mapping) or not all(
            v is None or isinstance(v, Mapping) for v in value.values()
        ):
            raise self.fail(key, "must be an object whose values are {}")
        return tuple(value)

    def array(self, key: str, required: bool = False) -> list[Any] | None:
        value = self.raw(key, required)
        if value is not None and not isinstance(value, list):
            raise self.fail(key, "must be an array")
        return value

    def sub(self, key: str) -> _Fields | None:
        value = self.raw(key)
        if value is None:
            return None
        return _Fields(value, self.what, _where(self.path, key))

    def item(self, key: str, index: int, value: Any) -> _Fields:
        return _Fields(value, self.what, f"{_where(self.path, key)}[{index}]")

    def schema_version(self) -> None:
        version = self.integer("schemaVersion", required=True)
        if version == 1:
            raise Unsupported(
                f"{self.what}: schema 1 manifests are not supported; re-push as schema 2 or OCI"
            )
        if version != 2:
            raise self.fail("schemaVersion", f"must be 2, got {version}")


def _digest(value: str, fail: Any, key: str) -> Digest:
    try:
        return Digest.parse(value)
    except InvalidArgument:
        raise fail(key, f"{value!r} is not a valid digest") from None
    except Unsupported as exc:
        raise Unsupported(f"{fail(key, str(exc))}") from None


def _put(doc: dict[str, Any], key: str, value: Any) -> None:
    if value is not None:
        doc[key] = value


def _sorted_map(value: Mapping[str, Any] | None) -> dict[str, Any] | None:
    return None if value is None else {k: value[k] for k in sorted(value)}


# --- platforms ---------------------------------------------------------------------------------------

_KNOWN_OS = frozenset(
    {"linux", "windows", "darwin", "freebsd", "netbsd", "openbsd", "solaris", "illumos", "aix",
     "android", "ios", "plan9", "dragonfly", "js", "wasip1", "zos"}
)

_ARCH_ALIASES: dict[str, tuple[str, str]] = {
    "x86_64": ("amd64", ""), "x86-64": ("amd64", ""), "amd64": ("amd64", ""),
    "i386": ("386", ""), "i486": ("386", ""), "i586": ("386", ""), "i686": ("386", ""), "386": ("386", ""),
    "aarch64": ("arm64", ""), "arm64": ("arm64", ""), "aarch64_be": ("arm64be", ""),
    "armhf": ("arm", "v7"), "armel": ("arm", "v6"), "arm": ("arm", ""),
    "armv5l": ("arm", "v5"), "armv5tel": ("arm", "v5"), "armv5tejl": ("arm", "v5"),
    "armv6l": ("arm", "v6"), "armv7l": ("arm", "v7"), "armv8l": ("arm", "v8"),
    "ppc64le": ("ppc64le", ""), "ppc64": ("ppc64", ""), "s390x": ("s390x", ""),
    "riscv64": ("riscv64", ""), "mips64": ("mips64", ""), "mips64le": ("mips64le", ""),
    "loongarch64": ("loong64", ""), "loong64": ("loong64", ""),
}


def normalize_arch(architecture: str, variant: str = "") -> tuple[str, str]:
    """Canonical (architecture, variant).

    ``x86_64``→``amd64`` (``v1`` is dropped: it is the baseline), ``aarch64``→``arm64``/``v8``,
    ``arm``→``arm``/``v7``, ``armv6l``→``arm``/``v6``, a bare ``8`` variant→``v8``.
    """
    arch = architecture.lower()
    var = variant.lower()
    arch, implied = _ARCH_ALIASES.get(arch, (arch, ""))
    var = var or implied
    if var.isdigit():
        var = f"v{var}"
    if arch == "amd64":
        if var == "v1":
            var = ""
    elif arch == "arm64":
        if var in ("", "v8.0"):
            var = "v8"
        elif var == "v9.0":
            var = "v9"
    elif arch == "arm" and not var:
        var = "v7"
    return arch, var


def _variant_level(arch: str, variant: str) -> float | None:
    """An ordering of the variants of one architecture, older first; None when not ordered."""
    # "vMAJOR" or "vMAJOR.MINOR", decimal digits only
    major, dot, minor = (variant or "")[1:].partition(".")
    ok = (variant or "").startswith("v") and major.isdecimal() and major.isascii() and (
        not dot or (minor.isdecimal() and minor.isascii()))
    if arch == "amd64":
        if not variant:
            return 1.0
        return float(major) if ok and not dot else None
    if arch == "arm64" and ok:
        if int(major) == 8:
            return float(int(minor or 0))
        if int(major) == 9:
            return float(int(minor or 0) + 5)  # v9.x implements v8.(x+5)
        return None
    if arch == "arm" and ok and not dot:
        return float(major)
    return None


# x86-64 micro-architecture levels, as /proc/cpuinfo names the CPU flags each one needs.
_AMD64_LEVELS = (
    ("v2", {"cx16", "lahf_lm", "popcnt", "pni", "sse4_1", "sse4_2", "ssse3"}),
    ("v3", {"avx", "avx2", "bmi1", "bmi2", "f16c", "fma", "abm", "movbe", "xsave"}),
    ("v4", {"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"}),
)


def _amd64_level(cpuinfo: str) -> str:
    """The highest x86-64 level every flag of which the CPU has; "" for the baseline (v1)."""
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags = set(line.partition(":")[2].split())
            break
    level = ""
    for name, needed in _AMD64_LEVELS:
        if not needed <= flags:
            break
        level = name
    return level


_HOST: list[Platform] = []


def _host_platform() -> Platform:
    if not _HOST:
        uname = os.uname()
        arch, variant = normalize_arch(uname.machine or "unknown")
        if arch == "amd64":
            try:
                with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
                    variant = _amd64_level(f.read())
            except OSError:
                variant = ""
        _HOST.append(Platform(uname.sysname.lower(), arch, variant or None))
    return _HOST[0]


@record(frozen=True)
class Platform:
    """What an image needs to run: os/architecture[/variant], as in an index entry or a config."""

    os: str
    architecture: str
    variant: str | None = None
    os_version: str | None = None
    os_features: tuple[str, ...] | None = None
    features: tuple[str, ...] | None = None

    @classmethod
    def from_json(cls, data: bytes | str | Mapping[str, Any], *, what: str = "platform",
                  path: str = "") -> Platform:
        f = _Fields(_load(data, what), what, path)
        return cls(
            os=f.req_str("os"),
            architecture=f.req_str("architecture"),
            variant=f.string("variant"),
            os_version=f.string("os.version"),
            os_features=f.str_list("os.features"),
            features=f.str_list("features"),
        )

    def to_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"architecture": self.architecture, "os": self.os}
        _put(doc, "os.version", self.os_version)
        _put(doc, "os.features", None if self.os_features is None else list(self.os_features))
        _put(doc, "variant", self.variant)
        _put(doc, "features", None if self.features is None else list(self.features))
        return doc

    def to_json(self) -> bytes:
        return _dump(self.to_dict())

    @classmethod
    def parse(cls, text: str) -> Platform:
        """``os/arch[/variant]``, ``arch`` (host os) or ``os`` (host architecture), as in ``--platform``."""
        parts = text.strip().lower().split("/")
        if not all(parts) or len(parts) > 3:
            raise InvalidArgument(f"invalid platform {text!r}: expected os/arch[/variant]")
        if len(parts) == 1:
            host = cls.host()
            if parts[0] in _KNOWN_OS:
                if parts[0] == host.os:
                    return host
                return cls(parts[0], host.architecture, host.variant)
            arch, variant = normalize_arch(parts[0])
            return cls(host.os, arch, variant or None)
        os_name = parts[0]
        arch, variant = normalize_arch(parts[1], parts[2] if len(parts) == 3 else "")
        return cls(os_name, arch, variant or None)

    @classmethod
    def host(cls) -> Platform:
        """This machine, normalised: e.g. ``linux/amd64/v3`` (the x86-64 level from the CPU flags),
        ``linux/arm64/v8``, ``linux/arm/v7``."""
        return _host_platform()

    def normalized(self) -> Platform:
        arch, variant = normalize_arch(self.architecture, self.variant or "")
        return replace(self, os=self.os.lower(), architecture=arch, variant=variant or None)

    def matches(self, other: Platform) -> bool:
        """Same os, architecture and variant once both are normalised (``x86_64`` == ``amd64``)."""
        a, b = self.normalized(), other.normalized()
        return (a.os, a.architecture, a.variant) == (b.os, b.architecture, b.variant)

    def compatibility(self, image: Platform) -> int | None:
        """How well ``image`` runs on this (host) platform: 0 exact, higher is a worse fit, None cannot run.

        Older variants of the same architecture run on newer ones (amd64 v1 on v3, arm v6 on v7,
        arm64 v8 on v8.2); 386 runs on amd64 as a last resort.
        """
        host, img = self.normalized(), image.normalized()
        if host.os != img.os:
            return None
        if host.architecture == img.architecture:
            if host.variant == img.variant:
                return 0
            have = _variant_level(host.architecture, host.variant or "")
            want = _variant_level(img.architecture, img.variant or "")
            if have is not None and want is not None and want <= have:
                return 1 + int((have - want) * 10)
            if not img.variant:
                return 500  # a generic image on an architecture whose variants are not ordered
            return None
        if host.architecture == "amd64" and img.architecture == "386":
            return 1000
        return None

    def __str__(self) -> str:
        text = f"{self.os}/{self.architecture}"
        return f"{text}/{self.variant}" if self.variant else text


# --- descriptors -------------------------------------------------------------------------------------


@record(frozen=True)
class Descriptor:
    """A typed, sized, content-addressed pointer (descriptor.md)."""

    media_type: str
    digest: Digest
    size: int
    urls: tuple[str, ...] | None = None
    annotations: dict[str, str] | None = None
    data: bytes | None = None
    artifact_type: str | None = None
    platform: Platform | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.digest, Digest):
            raise InvalidArgument("descriptor: digest must be a Digest")
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 0:
            raise InvalidArgument("descriptor: size must be a non-negative integer")

    def __hash__(self) -> int:
        return hash((self.media_type, self.digest, self.size))

    @classmethod
    def for_bytes(cls, media_type: str, content: bytes, **extra: Any) -> Descriptor:
        """A descriptor of ``content``."""
        return cls(media_type, Digest.from_bytes(content), len(content), **extra)

    @classmethod
    def from_json(cls, data: bytes | str | Mapping[str, Any], *, what: str = "descriptor",
                  path: str = "") -> Descriptor:
        return cls._from_fields(_Fields(_load(data, what), what, path))

    @classmethod
    def _from_fields(cls, f: _Fields) -> Descriptor:
        media_type = f.media_type("mediaType", required=True)
        digest = f.digest("digest", required=True)
        size = f.integer("size", required=True, minimum=0)
        assert media_type is not None and digest is not None and size is not None
        embedded = None
        encoded = f.string("data")
        if encoded is not None:
            import binascii

            try:
                embedded = binascii.a2b_base64(encoded.encode(), strict_mode=True)
            except (binascii.Error, ValueError, UnicodeEncodeError):
                raise f.fail("data", "is not valid base64") from None
            if len(embedded) != size or not digest.matches(embedded):
                raise f.fail("data", "does not match the descriptor's digest and size")
        platform = None
        if f.has("platform"):
            sub = f.sub("platform")
            assert sub is not None
            platform = Platform.from_json(sub.obj, what=f.what, path=sub.path)
        return cls(
            media_type=media_type,
            digest=digest,
            size=size,
            urls=f.str_list("urls"),
            annotations=f.str_map("annotations"),
            data=embedded,
            artifact_type=f.media_type("artifactType"),
            platform=platform,
        )

    def to_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"mediaType": self.media_type, "digest": str(self.digest), "size": self.size}
        _put(doc, "urls", None if self.urls is None else list(self.urls))
        _put(doc, "annotations", _sorted_map(self.annotations))
        _put(doc, "data", None if self.data is None else _b64(self.data))
        _put(doc, "artifactType", self.artifact_type)
        _put(doc, "platform", None if self.platform is None else self.platform.to_dict())
        return doc

    def to_json(self) -> bytes:
        return _dump(self.to_dict())


def _descriptors(f: _Fields, key: str, required: bool) -> tuple[Descriptor, ...]:
    items = f.array(key, required=required) or []
    return tuple(Descriptor._from_fields(f.item(key, i, v)) for i, v in enumerate(items))


def _optional_descriptor(f: _Fields, key: str) -> Descriptor | None:
    sub = f.sub(key)
    return None if sub is None else Descriptor._from_fields(sub)


def _check_document_type(f: _Fields, expected: frozenset[str], kind: str) -> str | None:
    media_type = f.string("mediaType")
    if media_type in SCHEMA1_MEDIA_TYPES:
        raise Unsupported(f"{f.what}: schema 1 manifests ({media_type}) are not supported")
    if media_type is not None and media_type not in expected:
        if media_type in INDEX_MEDIA_TYPES:
            raise f.fail("mediaType", f"{media_type} is an index, not an image manifest")
        if media_type in MANIFEST_MEDIA_TYPES:
            raise f.fail("mediaType", f"{media_type} is an image manifest, not an index")
        raise f.fail("mediaType", f"{media_type!r} is not an {kind} media type")
    return media_type


# --- manifests and indexes ---------------------------------------------------------------------------


@record(frozen=True)
class Manifest:
    """An image manifest: one config and ordered layers (OCI, or Docker v2 schema 2)."""

    config: Descriptor
    layers: tuple[Descriptor, ...]
    media_type: str = MEDIA_TYPE_IMAGE_MANIFEST
    artifact_type: str | None = None
    subject: Descriptor | None = None
    annotations: dict[str, str] | None = None
    schema_version: int = 2

    @classmethod
    def from_json(cls, data: bytes | str | Mapping[str, Any]) -> Manifest:
        f = _Fields(_load(data, "manifest"), "manifest")
        f.schema_version()
        media_type = _check_document_type(f, MANIFEST_MEDIA_TYPES, "image manifest")
        if media_type is None and f.has("manifests"):
            raise InvalidArgument("manifest: document has 'manifests': it is an index, not an image manifest")
        config = _optional_descriptor(f, "config")
        if config is None:
            raise f.fail("config", "is required")
        layers = _descriptors(f, "layers", required=media_type == DOCKER_MANIFEST_V2)
        return cls(
            config=config,
            layers=layers,
            media_type=media_type or MEDIA_TYPE_IMAGE_MANIFEST,
            artifact_type=f.media_type("artifactType"),
            subject=_optional_descriptor(f, "subject"),
            annotations=f.str_map("annotations"),
        )

    def to_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"schemaVersion": self.schema_version, "mediaType": self.media_type}
        _put(doc, "artifactType", self.artifact_type)
        doc["config"] = self.config.to_dict()
        doc["layers"] = [layer.to_dict() for layer in self.layers]
        _put(doc, "subject", None if self.subject is None else self.subject.to_dict())
        _put(doc, "annotations", _sorted_map(self.annotations))
        return doc

    def to_json(self) -> bytes:
        return _dump(self.to_dict())

    def children(self) -> list[Descriptor]:
        """The blobs this manifest keeps alive: config then layers (not the weak ``subject``)."""
        return [self.config, *self.layers]


@record(frozen=True)
class Index:
    """An image index (OCI) or manifest list (Docker): manifests for several platforms."""

    manifests: tuple[Descriptor, ...]
    media_type: str = MEDIA_TYPE_IMAGE_INDEX
    artifact_type: str | None = None
    subject: Descriptor | None = None
    annotations: dict[str, str] | None = None
    schema_version: int = 2

    @classmethod
    def from_json(cls, data: bytes | str | Mapping[str, Any]) -> Index:
        f = _Fields(_load(data, "index"), "index")
        f.schema_version()
        media_type = _check_document_type(f, INDEX_MEDIA_TYPES, "index")
        if media_type is None and f.has("config"):
            raise InvalidArgument("index: document has 'config': it is an image manifest, not an index")
        return cls(
            manifests=_descriptors(f, "manifests", required=True),
            media_type=media_type or MEDIA_TYPE_IMAGE_INDEX,
            artifact_type=f.media_type("artifactType"),
            subject=_optional_descriptor(f, "subject"),
            annotations=f.str_map("annotations"),
        )

    def to_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"schemaVersion": self.schema_version, "mediaType": self.media_type}
        _put(doc, "artifactType", self.artifact_type)
        doc["manifests"] = [m.to_dict() for m in self.manifests]
        _put(doc, "subject", None if self.subject is None else self.subject.to_dict())
        _put(doc, "annotations", _sorted_map(self.annotations))
        return doc

    def to_json(self) -> bytes:
        return _dump(self.to_dict())

    def children(self) -> list[Descriptor]:
        return list(self.manifests)


def parse_manifest(data: bytes | str | Mapping[str, Any], media_type: str | None = None) -> Manifest | Index:
    """Parse a manifest or an index, choosing by its ``mediaType``, then ``media_type`` (e.g. the
    HTTP Content-Type), then its shape. Schema 1 is Unsupported."""
    doc = _load(data, "manifest")
    declared = doc.get("mediaType")
    kind = declared if isinstance(declared, str) else media_type
    if kind in SCHEMA1_MEDIA_TYPES or doc.get("schemaVersion") == 1:
        raise Unsupported("manifest: schema 1 manifests are not supported; re-push as schema 2 or OCI")
    if kind in INDEX_MEDIA_TYPES:
        return Index.from_json(doc)
    if kind in MANIFEST_MEDIA_TYPES:
        return Manifest.from_json(doc)
    if kind is not None and isinstance(declared, str):
        raise InvalidArgument(f"manifest: mediaType {kind!r} is neither an image manifest nor an index")
    if "manifests" in doc:
        return Index.from_json(doc)
    if "config" in doc:
        return Manifest.from_json(doc)
    raise InvalidArgument("manifest: neither 'config' nor 'manifests' is present")


def select_platform(index: Index, platform: Platform | None = None) -> Descriptor:
    """The index entry that best runs on ``platform`` (default: this host).

    Entries are ranked by :meth:`Platform.compatibility`; among equals the first in the index wins, as
    the spec asks. Entries without a platform are a last resort; entries whose media type is not a
    manifest or an index (attestations, artifacts) are never chosen. NotFound lists what there is.
    """
    want = platform or Platform.host()
    best: tuple[int, Descriptor] | None = None
    for entry in index.manifests:
        if entry.media_type not in MANIFEST_MEDIA_TYPES | INDEX_MEDIA_TYPES:
            continue
        rank = 10_000 if entry.platform is None else want.compatibility(entry.platform)
        if rank is not None and (best is None or rank < best[0]):
            best = (rank, entry)
    if best is None:
        available = sorted(
            {str(m.platform) for m in index.manifests if m.platform and m.platform.os != "unknown"}
        )
        raise NotFound(
            f"no image for platform {want} in the index (it has: {', '.join(available) or 'none'})"
        )
    return best[1]


# --- image configuration -----------------------------------------------------------------------------


@record(frozen=True)
class ContainerConfig:
    """The ``config`` section of an image config: the defaults a container starts with."""

    user: str | None = None
    exposed_ports: tuple[str, ...] | None = None
    env: tuple[str, ...] | None = None
    entrypoint: tuple[str, ...] | None = None
    cmd: tuple[str, ...] | None = None
    volumes: tuple[str, ...] | None = None
    working_dir: str | None = None
    labels: dict[str, str] | None = None
    stop_signal: str | None = None
    args_escaped: bool | None = None
    healthcheck: dict[str, Any] | None = None
    shell: tuple[str, ...] | None = None
    on_build: tuple[str, ...] | None = None
    #: Fields this model does not know (Docker's Hostname, Memory, …), kept for round-trips.
    extra: dict[str, Any] = field(default_factory=dict)

    _KNOWN = ("User", "ExposedPorts", "Env", "Entrypoint", "Cmd", "Volumes", "WorkingDir", "Labels",
              "StopSignal", "ArgsEscaped", "Healthcheck", "Shell", "OnBuild")

    @classmethod
    def _from_fields(cls, f: _Fields) -> ContainerConfig:
        healthcheck = f.raw("Healthcheck")
        if healthcheck is not None and not isinstance(healthcheck, Mapping):
            raise f.fail("Healthcheck", "must be an object")
        return cls(
            user=f.string("User"),
            exposed_ports=f.set_keys("ExposedPorts"),
            env=f.str_list("Env"),
            entrypoint=f.str_list("Entrypoint"),
            cmd=f.str_list("Cmd"),
            volumes=f.set_keys("Volumes"),
            working_dir=f.string("WorkingDir"),
            labels=f.str_map("Labels"),
            stop_signal=f.string("StopSignal"),
            args_escaped=f.boolean("ArgsEscaped"),
            healthcheck=None if healthcheck is None else dict(healthcheck),
            shell=f.str_list("Shell"),
            on_build=f.str_list("OnBuild"),
            extra={k: v for k, v in f.obj.items() if k not in cls._KNOWN},
        )

    def to_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {}
        _put(doc, "User", self.user)
        _put(doc, "ExposedPorts", None if self.exposed_ports is None else {p: {} for p in self.exposed_ports})
        _put(doc, "Env", None if self.env is None else list(self.env))
        _put(doc, "Entrypoint", None if self.entrypoint is None else list(self.entrypoint))
        _put(doc, "Cmd", None if self.cmd is None else list(self.cmd))
        _put(doc, "Volumes", None if self.volumes is None else {v: {} for v in self.volumes})
        _put(doc, "WorkingDir", self.working_dir)
        _put(doc, "Labels", _sorted_map(self.labels))
        _put(doc, "StopSignal", self.stop_signal)
        _put(doc, "ArgsEscaped", self.args_escaped)
        _put(doc, "Healthcheck", self.healthcheck)
        _put(doc, "Shell", None if self.shell is None else list(self.shell))
        _put(doc, "OnBuild", None if self.on_build is None else list(self.on_build))
        for key in sorted(self.extra):
            doc.setdefault(key, self.extra[key])
        return doc


@record(frozen=True)
class History:
    created: str | None = None
    author: str | None = None
    created_by: str | None = None
    comment: str | None = None
    empty_layer: bool | None = None

    @classmethod
    def _from_fields(cls, f: _Fields) -> History:
        return cls(
            created=f.string("created"),
            author=f.string("author"),
            created_by=f.string("created_by"),
            comment=f.string("comment"),
            empty_layer=f.boolean("empty_layer"),
        )

    def to_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {}
        _put(doc, "created", self.created)
        _put(doc, "author", self.author)
        _put(doc, "created_by", self.created_by)
        _put(doc, "comment", self.comment)
        _put(doc, "empty_layer", self.empty_layer)
        return doc


@record(frozen=True)
class ImageConfig:
    """The image configuration (config.md): platform, run defaults, the layers' diff ids, history."""

    architecture: str
    os: str
    diff_ids: tuple[Digest, ...]
    created: str | None = None
    author: str | None = None
    os_version: str | None = None
    os_features: tuple[str, ...] | None = None
    variant: str | None = None
    config: ContainerConfig | None = None
    history: tuple[History, ...] | None = None
    #: Top-level fields this model does not know (Docker's container_config, docker_version, …).
    extra: dict[str, Any] = field(default_factory=dict)

    _KNOWN = ("created", "author", "architecture", "os", "os.version", "os.features", "variant", "config",
              "rootfs", "history")

    @classmethod
    def from_json(cls, data: bytes | str | Mapping[str, Any]) -> ImageConfig:
        f = _Fields(_load(data, "image config"), "image config")
        rootfs = f.sub("rootfs")
        if rootfs is None:
            raise f.fail("rootfs", "is required")
        if rootfs.req_str("type") != "layers":
            raise rootfs.fail("type", f"must be 'layers', got {rootfs.obj['type']!r}")
        raw_ids = rootfs.array("diff_ids", required=True) or []
        diff_ids = []
        for i, value in enumerate(raw_ids):
            key = f"diff_ids[{i}]"
            if not isinstance(value, str):
                raise rootfs.fail(key, "must be a string")
            diff_ids.append(_digest(value, rootfs.fail, key))
        config_fields = f.sub("config")
        history = f.array("history")
        return cls(
            architecture=f.req_str("architecture"),
            os=f.req_str("os"),
            diff_ids=tuple(diff_ids),
            created=f.string("created"),
            author=f.string("author"),
            os_version=f.string("os.version"),
            os_features=f.str_list("os.features"),
            variant=f.string("variant"),
            config=None if config_fields is None else ContainerConfig._from_fields(config_fields),
            history=None if history is None else tuple(
                History._from_fields(f.item("history", i, h)) for i, h in enumerate(history)
            ),
            extra={k: v for k, v in f.obj.items() if k not in cls._KNOWN},
        )

    def to_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {}
        _put(doc, "created", self.created)
        _put(doc, "author", self.author)
        doc["architecture"] = self.architecture
        doc["os"] = self.os
        _put(doc, "os.version", self.os_version)
        _put(doc, "os.features", None if self.os_features is None else list(self.os_features))
        _put(doc, "variant", self.variant)
        _put(doc, "config", None if self.config is None else self.config.to_dict())
        doc["rootfs"] = {"type": "layers", "diff_ids": [str(d) for d in self.diff_ids]}
        _put(doc, "history", None if self.history is None else [h.to_dict() for h in self.history])
        for key in sorted(self.extra):
            doc.setdefault(key, self.extra[key])
        return doc

    def to_json(self) -> bytes:
        return _dump(self.to_dict())

    @property
    def platform(self) -> Platform:
        return Platform(self.os, self.architecture, self.variant, self.os_version, self.os_features)

    def chain_ids(self) -> list[Digest]:
        return chain_ids(self.diff_ids)


def chain_ids(diff_ids: Iterable[Digest]) -> list[Digest]:
    """The ChainID of each prefix of the layer stack (config.md).

    ``ChainID(L0) = DiffID(L0)``; ``ChainID(L0|…|Ln) = sha256(ChainID(L0|…|Ln-1) + " " + DiffID(Ln))``.
    """
    result: list[Digest] = []
    for diff_id in diff_ids:
        if not result:
            result.append(diff_id)
        else:
            result.append(Digest.from_bytes(f"{result[-1]} {diff_id}".encode()))
    return result
