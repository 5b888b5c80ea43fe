"""Building layers and images for the image tests: tars made with Python's tarfile, gzip and zstd."""

from __future__ import annotations

import gzip
import io
import tarfile
from collections.abc import Iterable, Sequence
from typing import Any

import zstandard

from berth.images.store import Image, ImageStore
from berth.oci.digest import Digest
from berth.oci.image import (
    MEDIA_TYPE_IMAGE_CONFIG,
    MEDIA_TYPE_LAYER,
    MEDIA_TYPE_LAYER_GZIP,
    MEDIA_TYPE_LAYER_ZSTD,
    Descriptor,
    History,
    ImageConfig,
    Manifest,
)

MEDIA = {None: MEDIA_TYPE_LAYER, "gzip": MEDIA_TYPE_LAYER_GZIP, "zstd": MEDIA_TYPE_LAYER_ZSTD}


def entry(kind: str, name: str, data: bytes | str = b"", **kw: Any) -> tarfile.TarInfo | tuple[tarfile.TarInfo, bytes]:
    """A tar entry: kind is file, dir, symlink, hardlink, char, block, fifo, whiteout, opaque."""
    info = tarfile.TarInfo(name)
    info.mtime = kw.get("mtime", 1_600_000_000)
    info.uid = kw.get("uid", 0)
    info.gid = kw.get("gid", 0)
    payload = b""
    if kind == "file":
        payload = data.encode() if isinstance(data, str) else data
        info.size = len(payload)
        info.mode = kw.get("mode", 0o644)
    elif kind == "dir":
        info.type = tarfile.DIRTYPE
        info.mode = kw.get("mode", 0o755)
    elif kind == "symlink":
        info.type = tarfile.SYMTYPE
        info.linkname = str(data)
        info.mode = 0o777
    elif kind == "hardlink":
        info.type = tarfile.LNKTYPE
        info.linkname = str(data)
    elif kind in ("char", "block"):
        info.type = tarfile.CHRTYPE if kind == "char" else tarfile.BLKTYPE
        info.devmajor, info.devminor = kw.get("dev", (1, 3))
        info.mode = kw.get("mode", 0o666)
    elif kind == "fifo":
        info.type = tarfile.FIFOTYPE
        info.mode = kw.get("mode", 0o644)
    elif kind == "whiteout":
        head, _, base = name.rpartition("/")
        info.name = f"{head}/.wh.{base}" if head else f".wh.{base}"
        info.mode = 0o644
    elif kind == "opaque":
        info.name = f"{name.rstrip('/')}/.wh..wh..opq"
        info.mode = 0o644
    else:
        raise ValueError(kind)
    xattrs = kw.get("xattrs")
    if xattrs:
        info.pax_headers = {
            f"SCHILY.xattr.{k}": v.decode("utf-8", "surrogateescape") for k, v in xattrs.items()
        }
    return (info, payload) if kind == "file" else info


def make_tar(entries: Iterable[Any], trailer: bytes = b"") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for e in entries:
            if isinstance(e, tuple):
                tf.addfile(e[0], io.BytesIO(e[1]))
            else:
                tf.addfile(e)
    return buf.getvalue() + trailer


def compress(data: bytes, compression: str | None) -> bytes:
    if compression == "gzip":
        return gzip.compress(data, compresslevel=1)
    if compression == "zstd":
        return zstandard.ZstdCompressor().compress(data)
    return data


def layer(entries: Iterable[Any], compression: str | None = "gzip") -> tuple[bytes, Digest, str]:
    """(blob, diff_id, media type) of a layer made of ``entries``."""
    raw = make_tar(entries)
    return compress(raw, compression), Digest.from_bytes(raw), MEDIA[compression]


def add_image(store: ImageStore, layers: Sequence[tuple[bytes, Digest, str]], names: Sequence[str] = (),
              *, created: str = "2024-01-02T03:04:05Z", diff_ids: Sequence[Digest] | None = None,
              history: Sequence[History] | None = None) -> Image:
    """Put the layers, a config and a manifest in the store's content and record the image."""
    descs = []
    for blob, _diff, media_type in layers:
        descs.append(Descriptor(media_type, store.content.put_bytes(blob), len(blob)))
    config = ImageConfig(
        architecture="amd64", os="linux", created=created,
        diff_ids=tuple(diff_ids if diff_ids is not None else [d for _b, d, _m in layers]),
        history=tuple(history) if history is not None else tuple(
            History(created=created, created_by=f"layer {i}") for i in range(len(layers))
        ),
    )
    config_bytes = config.to_json()
    config_desc = Descriptor(MEDIA_TYPE_IMAGE_CONFIG, store.content.put_bytes(config_bytes), len(config_bytes))
    manifest = Manifest(config=config_desc, layers=tuple(descs))
    manifest_digest = store.content.put_bytes(manifest.to_json())
    return store.add(manifest_digest, names)
