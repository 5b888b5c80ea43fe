"""Images to and from files: OCI image layouts (a directory, or a tar of one), docker-archive (the format
of ``docker save``, docker-image-spec "Combined Image JSON + Filesystem Changeset Format"), and
``import`` of a plain root filesystem tar as a one-layer image.

Reading. :func:`load` tells the formats apart by their contents (``oci-layout`` or ``manifest.json``),
accepts archives compressed as a whole (``docker save | gzip``), and copies every blob into the content
store verified against its digest — an OCI blob against its name, a docker-archive layer against the
DiffID its config lists — so nothing unverified is ever recorded. Archives are read with random access
(a pipe is spooled to a temporary file first): in docker-archive, ``manifest.json`` usually comes last.
Paths named inside an archive are looked up among its members, never on the host; in a layout directory
they are opened with openat2(RESOLVE_IN_ROOT).

Writing. :func:`save` streams: blobs go from the content store into the tar, never staged on disk.
docker-archive layers must be uncompressed tars, so compressed blobs are decompressed on the way (their
size, needed by the tar header first, is known once a layer has been unpacked or loaded, and counted in
a first pass otherwise). OCI layouts hold the blobs exactly as stored, manifests byte for byte, so
digests and signatures survive. Names follow Docker and containerd: docker-archive ``RepoTags`` in
familiar form, OCI ``org.opencontainers.image.ref.name`` the tag and ``io.containerd.image.name`` the
full name.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import tarfile
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any, BinaryIO, Protocol

from berth.content import ContentStore
from berth.errors import AlreadyExists, InvalidArgument, NotFound
from berth.fsutil import atomic_file
from berth.images.layer import clean_name, decompressed, detect_compression
from berth.images.store import Image, ImageStore
from berth.kernel.syscalls import RESOLVE_IN_ROOT, RESOLVE_NO_MAGICLINKS, openat2
from berth.oci.digest import Digest, Digester
from berth.oci.image import (
    INDEX_MEDIA_TYPES,
    MANIFEST_MEDIA_TYPES,
    MEDIA_TYPE_IMAGE_CONFIG,
    MEDIA_TYPE_IMAGE_INDEX,
    MEDIA_TYPE_IMAGE_MANIFEST,
    MEDIA_TYPE_LAYER,
    MEDIA_TYPE_LAYER_GZIP,
    MEDIA_TYPE_LAYER_ZSTD,
    ContainerConfig,
    Descriptor,
    History,
    ImageConfig,
    Index,
    Manifest,
    Platform,
    normalize_arch,
    select_platform,
)
from berth.oci.reference import Reference

DOCKER_ARCHIVE = "docker-archive"
OCI_ARCHIVE = "oci-archive"
OCI_DIR = "oci-dir"
FORMATS = (DOCKER_ARCHIVE, OCI_ARCHIVE, OCI_DIR)

ANNOTATION_REF_NAME = "org.opencontainers.image.ref.name"
ANNOTATION_CONTAINERD_NAME = "io.containerd.image.name"
#: JSON documents (manifest.json, index.json, configs, manifests) larger than this are refused.
_MAX_JSON = 64 << 20
_CHUNK = 1 << 20

_LAYER_MEDIA_TYPES = {None: MEDIA_TYPE_LAYER, "gzip": MEDIA_TYPE_LAYER_GZIP, "zstd": MEDIA_TYPE_LAYER_ZSTD}


# --- sources: a directory or a tar archive ------------------------------------------------------------


class _Tree(Protocol):
    def open(self, path: str) -> IO[bytes]: ...

    def exists(self, path: str) -> bool: ...

    def size(self, path: str) -> int: ...


def _read_json(tree: _Tree, path: str) -> Any:
    if tree.size(path) > _MAX_JSON:
        raise InvalidArgument(f"{path}: larger than {_MAX_JSON} bytes")
    with tree.open(path) as f:
        data = f.read()
    try:
        return json.loads(data)
    except ValueError as exc:
        raise InvalidArgument(f"{path}: invalid JSON: {exc}") from None


class _DirTree:
    """Files of a directory, opened without leaving it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)

    def close(self) -> None:
        os.close(self._fd)

    def _open_fd(self, path: str) -> int:
        try:
            return openat2(self._fd, clean_name(path) or ".", os.O_RDONLY, RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)
        except FileNotFoundError:
            raise NotFound(f"{self.root}: {path} is missing") from None

    def open(self, path: str) -> IO[bytes]:
        return os.fdopen(self._open_fd(path), "rb")

    def exists(self, path: str) -> bool:
        try:
            os.close(self._open_fd(path))
        except NotFound:
            return False
        return True

    def size(self, path: str) -> int:
        fd = self._open_fd(path)
        try:
            return os.fstat(fd).st_size
        finally:
            os.close(fd)


class _TarTree:
    """Members of a tar archive opened for random access; links resolved among its members."""

    def __init__(self, fileobj: IO[bytes]) -> None:
        try:
            self._tf = tarfile.open(fileobj=fileobj, mode="r:")  # noqa: SIM115 - closed by close()
        except tarfile.TarError as exc:
            raise InvalidArgument(f"not a tar archive: {exc}") from None
        self._members: dict[str, tarfile.TarInfo] = {}
        for m in self._tf.getmembers():
            with contextlib.suppress(InvalidArgument):
                self._members[clean_name(m.name)] = m

    def close(self) -> None:
        self._tf.close()

    def _member(self, path: str) -> tarfile.TarInfo:
        name = clean_name(path)
        for _ in range(16):
            m = self._members.get(name)
            if m is None:
                raise NotFound(f"the archive has no {path}")
            if m.issym():
                name = clean_name(os.path.join(os.path.dirname(name), m.linkname))
            elif m.islnk():
                name = clean_name(m.linkname)
            elif m.isreg():
                return m
            else:
                raise InvalidArgument(f"{path} in the archive is not a regular file")
        raise InvalidArgument(f"{path} in the archive: too many links")

    def open(self, path: str) -> IO[bytes]:
        f = self._tf.extractfile(self._member(path))
        assert f is not None
        return f

    def exists(self, path: str) -> bool:
        try:
            self._member(path)
        except (NotFound, InvalidArgument):
            return False
        return True

    def size(self, path: str) -> int:
        return self._member(path).size


@contextlib.contextmanager
def _open_source(store: ImageStore, source: str | os.PathLike[str] | BinaryIO) -> Iterator[_Tree]:
    """A directory or an archive (plain, or compressed as a whole; a file or any stream)."""
    if isinstance(source, (str, os.PathLike)) and os.path.isdir(source):
        tree = _DirTree(Path(source))
        try:
            yield tree
        finally:
            tree.close()
        return
    with contextlib.ExitStack() as stack:
        f: IO[bytes] = stack.enter_context(open(source, "rb")) if isinstance(source, (str, os.PathLike)) \
            else source
        seekable = _seekable(f)
        start = f.tell() if seekable else 0
        head = _peek(f)
        if detect_compression(head) is not None or not seekable:
            spool = stack.enter_context(_spool_file(store))
            body, _ = decompressed(_Rewound(head, f))
            while chunk := body.read(_CHUNK):
                spool.write(chunk)
            spool.seek(0)
            f = spool
        else:
            f.seek(start)
        tar = _TarTree(f)
        stack.callback(tar.close)
        yield tar


class _Rewound:
    def __init__(self, head: bytes, rest: IO[bytes]) -> None:
        self._head, self._rest = head, rest

    def read(self, n: int = -1, /) -> bytes:
        if self._head:
            data, self._head = (self._head, b"") if n < 0 else (self._head[:n], self._head[n:])
            return data
        return self._rest.read(n)


def _peek(f: IO[bytes]) -> bytes:
    head = b""
    while len(head) < 6:
        chunk = f.read(6 - len(head))
        if not chunk:
            break
        head += chunk
    return head


def _seekable(f: IO[bytes]) -> bool:
    try:
        return f.seekable()
    except (AttributeError, ValueError):
        return False


@contextlib.contextmanager
def _spool_file(store: ImageStore) -> Iterator[IO[bytes]]:
    tmp = store.root / "tmp"
    tmp.mkdir(mode=0o700, exist_ok=True)
    with tempfile.TemporaryFile(dir=tmp) as f:
        yield f


# --- loading -------------------------------------------------------------------------------------------


def load(store: ImageStore, source: str | os.PathLike[str] | BinaryIO, *, platform: Platform | None = None,
         default_name: str | None = None) -> list[Image]:
    """Load every image of an OCI layout (directory or archive) or a docker-archive; return them.

    ``platform`` chooses among the manifests of a multi-platform index (default: this host).
    ``default_name`` is the repository for OCI entries whose ``ref.name`` is only a tag.
    """
    with store.lease(), _open_source(store, source) as tree:
        if tree.exists("oci-layout") and tree.exists("index.json"):
            return _load_oci(store, tree, platform, default_name)
        if tree.exists("manifest.json"):
            return _load_docker(store, tree)
        raise InvalidArgument("neither an OCI image layout (oci-layout, index.json) nor a docker archive "
                              "(manifest.json)")


def _blob_path(digest: Digest) -> str:
    return f"blobs/{digest.algorithm}/{digest.encoded}"


def _copy_blob(content: ContentStore, tree: _Tree, desc: Descriptor) -> None:
    if content.exists(desc.digest):
        return
    path = _blob_path(desc.digest)
    if not tree.exists(path):
        raise NotFound(f"the layout lacks blob {desc.digest} ({desc.media_type})")
    with tree.open(path) as src:
        _ingest(content, src, desc.digest, desc.size)


def _ingest(content: ContentStore, src: Any, digest: Digest, size: int | None) -> None:
    """Copy a stream into the content store as ``digest`` (verified; a mismatch keeps nothing)."""
    try:
        writer = content.writer(f"load-{digest}", digest, size, timeout=600)
    except AlreadyExists:
        return
    with writer:
        writer.truncate(0)
        while chunk := src.read(_CHUNK):
            writer.write(chunk)
        writer.commit()


def _load_oci(store: ImageStore, tree: _Tree, platform: Platform | None, default_name: str | None) -> list[Image]:
    layout = _read_json(tree, "oci-layout")
    if not isinstance(layout, dict) or not isinstance(layout.get("imageLayoutVersion"), str):
        raise InvalidArgument("oci-layout: imageLayoutVersion is missing")
    index = Index.from_json(_read_json(tree, "index.json"))
    # Entries of one name that differ only by platform are one multi-platform image: pick one.
    groups: dict[tuple[str, ...], list[Descriptor]] = {}
    for desc in index.manifests:
        if desc.media_type in MANIFEST_MEDIA_TYPES | INDEX_MEDIA_TYPES:
            groups.setdefault(tuple(_oci_names(desc, default_name)), []).append(desc)
    images = []
    for names, descs in groups.items():
        if len(descs) > 1 and all(d.platform is not None for d in descs):
            descs = [select_platform(Index(tuple(descs)), platform)]
        for desc in descs:
            images.append(_load_oci_entry(store, tree, desc, list(names), platform))
    return images


def _load_oci_entry(store: ImageStore, tree: _Tree, desc: Descriptor, names: list[str],
                    platform: Platform | None) -> Image:
    content = store.content
    index_digest = None
    for _ in range(8):
        if desc.media_type not in INDEX_MEDIA_TYPES:
            break
        _copy_blob(content, tree, desc)
        index_digest = desc.digest
        desc = select_platform(Index.from_json(content.read_bytes(desc.digest)), platform)
    _copy_blob(content, tree, desc)
    manifest = store.read_manifest(desc.digest)
    for child in manifest.children():
        _copy_blob(content, tree, child)
    return store.add(desc.digest, names, index_digest=index_digest)


def _oci_names(desc: Descriptor, default_name: str | None) -> list[str]:
    annotations = desc.annotations or {}
    full = annotations.get(ANNOTATION_CONTAINERD_NAME)
    if full:
        return [str(_tag(full))]
    ref_name = annotations.get(ANNOTATION_REF_NAME)
    if not ref_name:
        return []
    if "/" not in ref_name and ":" not in ref_name:  # a bare tag
        return [str(_tag(f"{default_name}:{ref_name}"))] if default_name else []
    return [str(_tag(ref_name))]


def _tag(text: str) -> Reference:
    ref = Reference.parse(text)
    if ref.digest is not None:
        ref = ref.with_digest(None) if ref.tag else ref.with_digest(None).with_tag("latest")
    return ref


def _load_docker(store: ImageStore, tree: _Tree) -> list[Image]:
    entries = _read_json(tree, "manifest.json")
    if not isinstance(entries, list):
        raise InvalidArgument("manifest.json: expected an array")
    images = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or not isinstance(entry.get("Config"), str) or not isinstance(
            entry.get("Layers"), list
        ):
            raise InvalidArgument(f"manifest.json[{i}]: Config and Layers are required")
        images.append(_load_docker_entry(store, tree, entry))
    return images


def _load_docker_entry(store: ImageStore, tree: _Tree, entry: dict[str, Any]) -> Image:
    content = store.content
    if tree.size(entry["Config"]) > _MAX_JSON:
        raise InvalidArgument(f"{entry['Config']}: larger than {_MAX_JSON} bytes")
    with tree.open(entry["Config"]) as f:
        config_bytes = f.read()
    config = ImageConfig.from_json(config_bytes)
    paths = entry["Layers"]
    if len(paths) != len(config.diff_ids) or not all(isinstance(p, str) for p in paths):
        raise InvalidArgument(
            f"manifest.json: {entry['Config']} lists {len(config.diff_ids)} diff_ids but the entry "
            f"{len(paths)} layers"
        )
    layers = [_load_docker_layer(store, tree, path, diff_id) for path, diff_id in zip(paths, config.diff_ids,
                                                                                          strict=True)]
    config_digest = content.put_bytes(config_bytes)
    manifest = Manifest(
        config=Descriptor(MEDIA_TYPE_IMAGE_CONFIG, config_digest, len(config_bytes)),
        layers=tuple(layers),
        media_type=MEDIA_TYPE_IMAGE_MANIFEST,
    )
    manifest_digest = content.put_bytes(manifest.to_json())
    tags = entry.get("RepoTags") or []
    names = [str(_tag(t)) for t in tags if isinstance(t, str)]
    return store.add(manifest_digest, names)


def _load_docker_layer(store: ImageStore, tree: _Tree, path: str, diff_id: Digest) -> Descriptor:
    content = store.content
    size = tree.size(path)
    with tree.open(path) as f:
        compression = detect_compression(_peek(f))
    if compression is None:
        # An uncompressed layer is its own DiffID: verified while it is stored.
        if not content.exists(diff_id):
            with tree.open(path) as f:
                try:
                    _ingest(content, f, diff_id, size)
                except InvalidArgument:
                    raise InvalidArgument(f"{path}: the layer does not match its DiffID {diff_id}") from None
        store.record_diff_size(diff_id, size)
        return Descriptor(MEDIA_TYPE_LAYER, diff_id, size)
    if compression not in _LAYER_MEDIA_TYPES:
        raise InvalidArgument(f"{path}: a {compression}-compressed layer cannot be stored as an OCI layer")
    digester = Digester()
    with tree.open(path) as f:
        while chunk := f.read(_CHUNK):
            digester.update(chunk)
    digest = digester.finish()
    with tree.open(path) as f:
        _ingest(content, f, digest, size)
    return Descriptor(_LAYER_MEDIA_TYPES[compression], digest, size)


# --- import of a root filesystem ----------------------------------------------------------------------


def import_rootfs(store: ImageStore, source: str | os.PathLike[str] | BinaryIO, *,
                  names: Sequence[str] = (), config: ContainerConfig | None = None,
                  platform: Platform | None = None, comment: str | None = None,
                  created_by: str = "berth import") -> Image:
    """Make a one-layer image from a root filesystem tar (plain, gzip, zstd, bzip2 or xz).

    gzip and zstd tars are stored as they are (a layer of that media type); others are stored
    uncompressed. The image's platform is this host's unless ``platform`` says otherwise.
    """
    content = store.content
    with store.lease(), contextlib.ExitStack() as stack:
        f: IO[bytes]
        if isinstance(source, (str, os.PathLike)):
            f = stack.enter_context(open(source, "rb"))
        elif _seekable(source):
            f = source
        else:
            f = stack.enter_context(_spool_file(store))
            shutil.copyfileobj(source, f, _CHUNK)
            f.seek(0)
        start = f.tell()
        # Pass 1: the blob's digest, the DiffID, and a check that it is a tar at all.
        raw = _Counting(f)
        body, compression = decompressed(raw)
        diff = _Counting(body)
        try:
            with tarfile.open(fileobj=diff, mode="r|") as tf:  # type: ignore[call-overload]
                for _ in tf:
                    pass
        except tarfile.TarError as exc:
            raise InvalidArgument(f"not a tar archive: {exc}") from None
        while diff.read(_CHUNK):
            pass
        diff_id = diff.digester.finish()
        # Pass 2: store the blob.
        f.seek(start)
        if compression in _LAYER_MEDIA_TYPES:
            digest, size = raw.digester.finish(), raw.digester.size
            _ingest(content, f, digest, size)
            media_type = _LAYER_MEDIA_TYPES[compression]
        else:
            digest, size = diff_id, diff.digester.size
            body, _ = decompressed(f)
            _ingest(content, body, digest, size)
            media_type = MEDIA_TYPE_LAYER
        store.record_diff_size(diff_id, diff.digester.size)
        plat = platform or _host_platform()
        created = _now()
        image_config = ImageConfig(
            architecture=plat.architecture,
            os=plat.os,
            variant=plat.variant,
            diff_ids=(diff_id,),
            created=created,
            config=config,
            history=(History(created=created, created_by=created_by, comment=comment),),
        )
        config_bytes = image_config.to_json()
        config_digest = content.put_bytes(config_bytes)
        manifest = Manifest(
            config=Descriptor(MEDIA_TYPE_IMAGE_CONFIG, config_digest, len(config_bytes)),
            layers=(Descriptor(media_type, digest, size),),
        )
        manifest_digest = content.put_bytes(manifest.to_json())
        return store.add(manifest_digest, names)


class _Counting:
    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.digester = Digester()

    def read(self, n: int = -1, /) -> bytes:
        data: bytes = self._inner.read(n)
        self.digester.update(data)
        return data


def _host_platform() -> Platform:
    host = Platform.host()
    arch, variant = normalize_arch(os.uname().machine)
    return Platform(host.os, arch, variant or None)


def _now() -> str:
    ns = time.time_ns()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ns // 1_000_000_000)) + f".{ns % 1_000_000_000:09d}Z"


# --- saving ------------------------------------------------------------------------------------------------


def save(store: ImageStore, refs: Sequence[str | Digest | Image], dest: str | os.PathLike[str] | BinaryIO,
         format: str = DOCKER_ARCHIVE) -> None:
    """Write images to ``dest`` (a path, or a binary stream for the archive formats).

    Each of ``refs`` is a name (written with that name) or an ID (written without one).
    """
    if format not in FORMATS:
        raise InvalidArgument(f"unknown archive format {format!r} (one of {', '.join(FORMATS)})")
    chosen: list[tuple[Image, list[str]]] = []
    for ref in refs:
        image = ref if isinstance(ref, Image) else store.get(ref)
        names = list(image.names) if isinstance(ref, Image) else [] if isinstance(ref, Digest) \
            else _names_for(ref, image)
        for seen, seen_names in chosen:
            if seen.id == image.id:
                seen_names.extend(n for n in names if n not in seen_names)
                break
        else:
            chosen.append((image, names))
    if not chosen:
        raise InvalidArgument("no images to save")
    if format == OCI_DIR:
        if not isinstance(dest, (str, os.PathLike)):
            raise InvalidArgument("oci-dir needs a directory path")
        _write_oci(store, chosen, _DirWriter(Path(dest)))
        return
    with contextlib.ExitStack() as stack:
        if isinstance(dest, (str, os.PathLike)):
            out: Any = stack.enter_context(atomic_file(Path(dest)))
        else:
            out = dest
        writer = _TarWriter(out)
        if format == OCI_ARCHIVE:
            _write_oci(store, chosen, writer)
        else:
            _write_docker(store, chosen, writer)
        writer.close()


def _names_for(ref: str, image: Image) -> list[str]:
    try:
        parsed = Reference.parse(ref)
    except InvalidArgument:
        return []
    if parsed.digest is None and str(parsed) in image.names:
        return [str(parsed)]
    return []


class _Writer(Protocol):
    def add(self, path: str, data: bytes) -> None: ...

    def add_stream(self, path: str, size: int, stream: Any) -> None: ...

    def has(self, path: str) -> bool: ...


class _TarWriter:
    def __init__(self, out: Any) -> None:
        self._tf = tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT)  # noqa: SIM115
        self._written: set[str] = set()
        self._dirs: set[str] = set()
        self._mtime = int(time.time())

    def _parents(self, path: str) -> None:
        parts = path.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            d = "/".join(parts[:i])
            if d not in self._dirs:
                info = tarfile.TarInfo(d)
                info.type = tarfile.DIRTYPE
                info.mode = 0o755
                info.mtime = self._mtime
                self._tf.addfile(info)
                self._dirs.add(d)

    def has(self, path: str) -> bool:
        return path in self._written

    def add(self, path: str, data: bytes) -> None:
        self.add_stream(path, len(data), io.BytesIO(data))

    def add_stream(self, path: str, size: int, stream: Any) -> None:
        self._parents(path)
        info = tarfile.TarInfo(path)
        info.size = size
        info.mode = 0o644
        info.mtime = self._mtime
        self._tf.addfile(info, stream)
        self._written.add(path)

    def close(self) -> None:
        self._tf.close()


class _DirWriter:
    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def has(self, path: str) -> bool:
        return (self.root / path).exists()

    def add(self, path: str, data: bytes) -> None:
        self.add_stream(path, len(data), io.BytesIO(data))

    def add_stream(self, path: str, size: int, stream: Any) -> None:
        target = self.root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp")
        with open(tmp, "wb") as f:
            copied = 0
            while copied < size:
                chunk = stream.read(min(_CHUNK, size - copied))
                if not chunk:
                    break
                f.write(chunk)
                copied += len(chunk)
            if copied != size:
                raise InvalidArgument(f"{path}: wrote {copied} bytes, expected {size}")
        os.replace(tmp, target)


def _write_oci(store: ImageStore, chosen: list[tuple[Image, list[str]]], out: _Writer) -> None:
    content = store.content
    out.add("oci-layout", json.dumps({"imageLayoutVersion": "1.0.0"}).encode())
    entries: list[Descriptor] = []
    for image, names in chosen:
        manifest_bytes = content.read_bytes(image.manifest_digest)
        manifest = store.read_manifest(image.manifest_digest)
        for desc in [manifest.config, *manifest.layers]:
            path = _blob_path(desc.digest)
            if not out.has(path):
                with content.open(desc.digest) as f:
                    out.add_stream(path, content.info(desc.digest).size, f)
        path = _blob_path(image.manifest_digest)
        if not out.has(path):
            out.add(path, manifest_bytes)
        platform = Platform(image.os, image.architecture, image.variant)
        base = Descriptor(image.manifest_media_type, image.manifest_digest, len(manifest_bytes), platform=platform)
        if not names:
            entries.append(base)
        for name in names:
            ref = Reference.parse(name)
            annotations = {ANNOTATION_CONTAINERD_NAME: str(ref), ANNOTATION_REF_NAME: ref.tag or "latest"}
            entries.append(Descriptor(base.media_type, base.digest, base.size, annotations=annotations,
                                      platform=platform))
    index = Index(tuple(entries), media_type=MEDIA_TYPE_IMAGE_INDEX)
    out.add("index.json", index.to_json())


def _write_docker(store: ImageStore, chosen: list[tuple[Image, list[str]]], out: _TarWriter) -> None:
    content = store.content
    manifest_json = []
    repositories: dict[str, dict[str, str]] = {}
    for image, names in chosen:
        layer_paths = []
        for desc, diff_id in zip(image.layers, image.diff_ids, strict=True):
            path = f"{diff_id.encoded}.tar"
            layer_paths.append(path)
            if not out.has(path):
                _write_docker_layer(store, desc, diff_id, path, out)
        config_path = f"{image.id.encoded}.json"
        if not out.has(config_path):
            out.add(config_path, content.read_bytes(image.id))
        tags = [Reference.parse(n).familiar() for n in names]
        manifest_json.append({"Config": config_path, "RepoTags": tags or None, "Layers": layer_paths})
        for name in names:
            ref = Reference.parse(name)
            if image.diff_ids:
                repositories.setdefault(ref.familiar_name, {})[ref.tag or "latest"] = image.diff_ids[-1].encoded
    out.add("manifest.json", json.dumps(manifest_json).encode())
    if repositories:
        out.add("repositories", json.dumps(repositories).encode())


def _write_docker_layer(store: ImageStore, desc: Descriptor, diff_id: Digest, path: str, out: _TarWriter) -> None:
    content = store.content
    with content.open(desc.digest) as f:
        compression = detect_compression(_peek(f))
    if compression is None:
        with content.open(desc.digest) as f:
            out.add_stream(path, content.info(desc.digest).size, f)
        return
    size = store.diff_size(diff_id)
    if size is None:  # count it first: a tar header comes before its data
        with content.open(desc.digest) as f:
            body, _ = decompressed(f)
            size = 0
            while chunk := body.read(_CHUNK):
                size += len(chunk)
        store.record_diff_size(diff_id, size)
    with content.open(desc.digest) as f:
        body, _ = decompressed(f)
        checked = _Counting(body)
        out.add_stream(path, size, checked)
        if checked.digester.finish() != diff_id:
            raise InvalidArgument(f"layer {desc.digest} does not decompress to its DiffID {diff_id}")
