"""Pull an image from a registry into the content store: resolve, select a platform, fetch in parallel.

Why a separate step from unpacking: the registry layer only moves verified bytes into the content
store (so it stays below ``images``, as DESIGN.md requires). The images layer unpacks while the bytes
arrive through ``on_layer_stream``: it gets a reader of each layer blob as it downloads, whose end comes
only after the blob's digest was verified (a mismatch makes it raise), so nothing unverified is kept.
``on_layer_committed`` tells when each blob is in the store.

Order of work: the tag (or digest) is resolved to a manifest; an index is narrowed to the manifest
for the wanted platform (the host's by default); the manifest(s) are stored, then the config is
fetched and checked against the manifest (one diff id per layer, the platform when one was asked
for), then the layers download on a small thread pool (``max_workers``, 4 by default). Every blob is
verified against its digest before it is committed; a failure cancels the other downloads, keeps their
partial data for the next attempt (which resumes with Range requests), and raises the first real error.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass

from berth.content.store import ContentStore, Follower
from berth.errors import InvalidArgument, NotFound, Unsupported
from berth.oci.digest import Digest
from berth.oci.image import (
    CONFIG_MEDIA_TYPES,
    Descriptor,
    ImageConfig,
    Index,
    Manifest,
    Platform,
    parse_manifest,
    select_platform,
)
from berth.oci.reference import Reference
from berth.registry.client import ProgressCallback, RegistryClient, TransferCancelled
from berth.registry.sources import BlobSources

DEFAULT_WORKERS = 4
#: Indexes may nest (an index of indexes); this bounds how deep berth follows them.
_MAX_INDEX_DEPTH = 4
#: Image configs are small JSON documents; a bigger one is refused before it is read into memory.
_MAX_CONFIG_SIZE = 8 << 20


@dataclass(frozen=True)
class PullResult:
    """What a pull stored.

    ``digest`` and ``media_type`` are what the reference resolved to (an index for a multi-platform
    image: Docker's "Digest:" line and repo digest); ``manifest_digest`` is the platform's manifest.
    """

    reference: Reference
    digest: Digest
    media_type: str
    manifest_digest: Digest
    manifest: Manifest
    config: Descriptor
    image_config: ImageConfig
    layers: tuple[Descriptor, ...]
    index: Index | None = None

    @property
    def pinned(self) -> Reference:
        """The reference pinned to what was pulled: ``repo@<digest>`` (plus the tag, if any)."""
        return self.reference.with_digest(self.digest)


LayerHook = Callable[[Descriptor], None]
StreamHook = Callable[[Descriptor, Follower], None]


def pull(ref: str | Reference, store: ContentStore, platform: Platform | str | None = None,
         progress: ProgressCallback | None = None, *, on_layer_committed: LayerHook | None = None,
         client: RegistryClient | None = None, max_workers: int = DEFAULT_WORKERS,
         sources: BlobSources | None = None, on_layer_stream: StreamHook | None = None,
         on_config: Callable[[Manifest, ImageConfig], None] | None = None) -> PullResult:
    """Pull ``ref`` (``busybox``, ``host:port/app:tag``, ``…@sha256:…``) into ``store``.

    ``platform`` (a :class:`Platform` or ``os/arch[/variant]``) picks from an index; by default the host's.
    Given explicitly, a single-platform image that cannot run on it is NotFound, as Docker reports.
    ``progress`` gets a :class:`~berth.registry.client.Progress` per chunk of every blob;
    ``on_layer_committed(descriptor)`` runs once per distinct layer blob as soon as it is in the store
    (or at once if it was there already). Both are called on worker threads.
    ``on_config(manifest, config)`` runs once the config is verified, before any layer downloads;
    ``on_layer_stream(descriptor, reader)`` once per layer blob that is downloaded (not one found in
    the store), on the worker thread that downloads it, before the download starts.
    """
    reference = Reference.parse(ref) if isinstance(ref, str) else ref
    wanted = Platform.parse(platform) if isinstance(platform, str) else platform
    client = client or RegistryClient(reference.domain)
    sources = sources if sources is not None else BlobSources.for_store(store)
    repo = reference.path
    name = str(reference)

    data, media_type, digest = client.get_manifest(repo, reference.api_reference)
    top_digest, top_media_type = digest, media_type
    doc = _parse(data, media_type, name)
    store.put_bytes(data, digest)
    index: Index | None = None
    depth = 0
    while isinstance(doc, Index):
        depth += 1
        if depth > _MAX_INDEX_DEPTH:
            raise InvalidArgument(f"image {name}: indexes nest more than {_MAX_INDEX_DEPTH} deep")
        index = doc
        entry = select_platform(doc, wanted)
        data, media_type, digest = client.get_manifest(repo, str(entry.digest))
        if len(data) != entry.size:
            raise InvalidArgument(
                f"image {name}: manifest {entry.digest} is {len(data)} bytes, the index says {entry.size}"
            )
        doc = _parse(data, media_type or entry.media_type, f"{reference.name}@{entry.digest}")
        store.put_bytes(data, digest)
    manifest = doc
    if manifest.config.media_type not in CONFIG_MEDIA_TYPES:
        raise Unsupported(
            f"image {name} is not a container image: its config has media type {manifest.config.media_type!r}"
        )
    if manifest.config.size > _MAX_CONFIG_SIZE:
        raise InvalidArgument(f"image {name}: its config is {manifest.config.size} bytes, too large")

    client.fetch_blob(repo, manifest.config, store, progress=progress)
    sources.record(manifest.config.digest, reference.domain, repo)
    image_config = _load_config(store, manifest, name)
    if wanted is not None and index is None and wanted.compatibility(image_config.platform) is None:
        raise NotFound(
            f"image {name} was found but does not match the requested platform: wanted {wanted}, "
            f"it is {image_config.platform}"
        )

    if on_config is not None:
        on_config(manifest, image_config)
    _fetch_layers(client, repo, reference.domain, manifest.layers, store, progress, on_layer_committed,
                  max_workers, sources, on_layer_stream)
    return PullResult(
        reference=reference,
        digest=top_digest,
        media_type=top_media_type,
        manifest_digest=digest,
        manifest=manifest,
        config=manifest.config,
        image_config=image_config,
        layers=manifest.layers,
        index=index,
    )


def _parse(data: bytes, media_type: str, name: str) -> Manifest | Index:
    try:
        return parse_manifest(data, media_type or None)
    except InvalidArgument as exc:
        raise InvalidArgument(f"image {name}: malformed {exc}") from None
    except Unsupported as exc:
        raise Unsupported(f"image {name}: {exc}") from None


def _load_config(store: ContentStore, manifest: Manifest, name: str) -> ImageConfig:
    raw = store.read_bytes(manifest.config.digest)
    try:
        config = ImageConfig.from_json(raw)
    except InvalidArgument as exc:
        raise InvalidArgument(f"image {name}: malformed {exc}") from None
    if len(config.diff_ids) != len(manifest.layers):
        raise InvalidArgument(
            f"image {name}: the manifest has {len(manifest.layers)} layers but the config lists "
            f"{len(config.diff_ids)} diff ids"
        )
    return config


def _fetch_layers(client: RegistryClient, repo: str, registry: str, layers: tuple[Descriptor, ...],
                  store: ContentStore, progress: ProgressCallback | None, hook: LayerHook | None,
                  max_workers: int, sources: BlobSources, on_stream: StreamHook | None) -> None:
    unique: dict[Digest, Descriptor] = {}
    for layer in layers:
        unique.setdefault(layer.digest, layer)
    if not unique:
        return
    cancel = threading.Event()

    def work(layer: Descriptor) -> None:
        if cancel.is_set():
            raise TransferCancelled(f"download of blob {layer.digest} cancelled")
        client.fetch_blob(repo, layer, store, progress=progress, cancel=cancel,
                          on_stream=None if on_stream is None else lambda reader: on_stream(layer, reader))
        sources.record(layer.digest, registry, repo)
        if hook is not None:
            hook(layer)

    first: BaseException | None = None
    with ThreadPoolExecutor(max_workers=max(1, min(max_workers, len(unique))),
                            thread_name_prefix="berth-pull") as pool:
        futures: list[Future[None]] = [pool.submit(work, layer) for layer in unique.values()]
        try:
            for future in as_completed(futures):
                if future.cancelled():
                    continue
                exc = future.exception()
                if exc is None:
                    continue
                # The first real error wins over the cancellations it causes in the other workers.
                if first is None or (isinstance(first, TransferCancelled) and not isinstance(exc, TransferCancelled)):
                    first = exc
                cancel.set()
                for other in futures:
                    other.cancel()
        except BaseException:
            cancel.set()
            for other in futures:
                other.cancel()
            raise
    if first is not None:
        raise first
