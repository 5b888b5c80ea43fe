"""The Engine's image operations beyond pull/import (push, save, load, history, prune, disk usage,
login), as a mixin so the Engine class stays readable."""

from __future__ import annotations

import os

from berth.errors import InvalidArgument, NotFound
from berth.record import field, record

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, BinaryIO

    from berth.engine.db import Database
    from berth.engine.engine import Container
    from berth.images.store import Image, ImageStore
    from berth.oci.digest import Digest
    from berth.registry.client import ProgressCallback
    from berth.registry.push import PushResult


@record
class PruneReport:
    """What ``image prune`` did: names untagged, image IDs deleted, bytes of disk given back."""

    untagged: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    reclaimed: int = 0


@record(frozen=True)
class DiskUsageRow:
    """One line of ``system df``: TYPE TOTAL ACTIVE SIZE RECLAIMABLE."""

    type: str
    total: int
    active: int
    size: int
    reclaimable: int


def _disk_bytes(root: str) -> int:
    """Bytes allocated under the store's content and snapshots directories."""
    from berth.snapshots.base import tree_usage

    return sum(tree_usage(os.path.join(root, d)).size for d in ("content", "snapshots"))


class ImageOps:
    """Mixed into ``Engine``; uses its ``image_store``, ``db``, ``root`` and ``containers``."""

    if TYPE_CHECKING:
        root: str

        @property
        def image_store(self) -> ImageStore: ...

        @property
        def db(self) -> Database: ...

        def containers(self, all: bool = True) -> list[Container]: ...

    def pull(self, ref: str, platform: str | None = None, progress: ProgressCallback | None = None) -> Image:
        """Pull ``ref`` and unpack its layers, as ``docker pull`` and ``podman pull`` do: each layer is
        unpacked while it downloads (:class:`~berth.images.unpack.PullUnpacker`), so a pulled image
        runs at once. The lease keeps a concurrent prune from sweeping what is not recorded yet."""
        from berth.images.unpack import PullUnpacker
        from berth.registry.pull import pull

        store = self.image_store
        with store.lease():
            unpacker = PullUnpacker(store)
            try:
                result = pull(ref, store.content, platform, progress, on_config=unpacker.configure,
                              on_layer_stream=unpacker.stream)
            except BaseException:
                unpacker.abort()
                raise
            unpacker.finish()
            index = result.digest if result.index is not None else None
            return store.add(result.manifest_digest, [result.reference], index_digest=index)

    def tags(self, repository: str) -> list[str]:
        """The tags the registry holds for ``repository`` (``busybox``, ``host:port/app``), sorted."""
        from berth.oci.reference import Reference
        from berth.registry.client import RegistryClient

        ref = Reference.parse(repository, default_tag=None)
        return sorted(set(RegistryClient(ref.domain).list_tags(ref.path)))

    def push(self, ref: str, progress: ProgressCallback | None = None) -> PushResult:
        """Push the image named ``ref`` to the registry its name points at (its manifest, config and
        layers; the platform manifest, not an index whose other members were never pulled)."""
        from berth.registry.push import push

        image = self.image_store.get(ref)
        return push(ref, self.image_store.content, image.manifest_digest, progress)

    def save(self, refs: list[str], dest: str | BinaryIO, format: str = "docker-archive") -> None:
        from berth.images.archive import FORMATS, save

        if format not in FORMATS:
            raise InvalidArgument(f"invalid output format {format!r}: use one of {', '.join(FORMATS)}")
        if not refs:
            raise InvalidArgument("no images to save")
        save(self.image_store, refs, dest, format)

    def load(self, source: str | BinaryIO) -> list[Image]:
        from berth.images.archive import load

        if isinstance(source, str) and not os.path.exists(source):
            raise NotFound(f"open {source}: no such file or directory")
        return load(self.image_store, source)

    def history(self, ref: str) -> list[dict[str, Any]]:
        """The image's history, newest first; the newest entry carries the image ID, the rest
        ``<missing>`` as Docker shows them (berth does not keep intermediate images)."""
        image = self.image_store.get(ref)
        entries = self.image_store.history(image)
        for i, entry in enumerate(entries):
            entry["id"] = str(image.id) if i == 0 else "<missing>"
        if not entries:  # an image without history: one line for the image itself
            entries.append({"id": str(image.id), "created": None, "created_by": "", "author": "", "comment": "",
                            "empty_layer": False, "size": self.image_store.size(image), "diff_id": None})
        return entries

    def image_inspect(self, ref: str) -> dict[str, Any]:
        return self.image_store.inspect(ref)

    def _images_in_use(self) -> set[str]:
        return {row["image_id"] for row in self.db.rows()}

    def prune_images(self, all: bool = False) -> PruneReport:
        """Remove dangling images (``all``: every image no container uses), then collect garbage: blobs
        and snapshots nothing refers to any more. ``reclaimed`` is measured on disk."""
        report = PruneReport()
        before = _disk_bytes(self.root)
        in_use = self._images_in_use()
        store = self.image_store
        for image in store.images():
            if str(image.id) in in_use or (image.names and not all):
                continue
            try:
                result = store.remove(image.id, force=True, collect=False)
            except NotFound:
                continue
            report.untagged += result.untagged
            report.deleted += [str(d) for d in result.deleted]
        store.gc()
        report.reclaimed = max(0, before - _disk_bytes(self.root))
        return report

    def disk_usage(self) -> list[DiskUsageRow]:
        """``system df``: images (shared layers counted once), containers (their writable layers),
        local volumes and build cache (none yet)."""
        store = self.image_store
        images = store.images()
        in_use = self._images_in_use()
        layer_size: dict[Digest, int] = {}
        used_layers: set[Digest] = set()
        active_images = 0
        for image in images:
            for desc, diff_id in zip(image.layers, image.diff_ids, strict=True):
                known = store.diff_size(diff_id)
                layer_size[diff_id] = desc.size if known is None else known
            if str(image.id) in in_use:
                active_images += 1
                used_layers.update(image.diff_ids)
        total = sum(layer_size.values())
        reclaimable = sum(s for d, s in layer_size.items() if d not in used_layers)
        rows = [DiskUsageRow("Images", len(images), active_images, total, reclaimable)]
        containers = self.containers()
        c_size = c_reclaim = 0
        for c in containers:
            try:
                size = store.snapshots.usage(c.id).size
            except (NotFound, OSError):
                size = 0
            c_size += size
            if not c.running:
                c_reclaim += size
        rows.append(DiskUsageRow("Containers", len(containers), sum(1 for c in containers if c.running),
                                 c_size, c_reclaim))
        rows.append(DiskUsageRow("Local Volumes", 0, 0, 0, 0))
        rows.append(DiskUsageRow("Build Cache", 0, 0, 0, 0))
        return rows

    # ------------------------------------------------------------------ registry credentials

    def login(self, registry: str, username: str, password: str) -> str:
        """Check the credentials against the registry's /v2/, then store them; the file's path."""
        from berth.registry.auth import Credentials, login, normalize_registry
        from berth.registry.client import RegistryClient

        registry = normalize_registry(registry)
        if not registry:
            raise InvalidArgument("login needs a registry: berth login [OPTIONS] SERVER")
        RegistryClient(registry, credentials=Credentials(username, password), tries=1).ping()
        return str(login(registry, username, password))

    def logout(self, registry: str) -> bool:
        from berth.registry.auth import logout, normalize_registry

        return logout(normalize_registry(registry))
