"""Push an image from the content store to a registry: blobs first, then manifests, children first.

Why this order: a registry accepts a manifest only when every blob it names is already there, and an
index only when its manifests are (distribution-spec, "Pushing Manifests"). For each blob the cheapest
way is taken: nothing if the registry has it (HEAD), a cross-repository mount if berth knows the blob
from another repository of the same registry (pulled from or pushed to it, see
:mod:`berth.registry.sources`, or named by the caller in ``mount_from``), else an upload — monolithic, or
chunked when ``chunk_size`` is given. Blobs go up on a small thread pool; manifests are PUT by digest
(children of an index) and finally by the tag.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from berth.content.store import ContentStore
from berth.errors import BerthError, InvalidArgument, NotFound, PermissionDenied, Unsupported
from berth.oci.digest import Digest
from berth.oci.image import (
    MEDIA_TYPE_IMAGE_INDEX,
    MEDIA_TYPE_IMAGE_MANIFEST,
    Descriptor,
    Index,
    Manifest,
    parse_manifest,
)
from berth.oci.reference import Reference
from berth.registry.client import Progress, ProgressCallback, RegistryClient
from berth.registry.sources import BlobSources

DEFAULT_WORKERS = 4
#: A blob is mounted from at most this many candidate repositories before it is uploaded.
_MAX_MOUNT_TRIES = 3


@dataclass(frozen=True)
class PushResult:
    """What a push did: the manifest pushed under ``reference``, and how each blob got there
    (``"exists"``, ``"mounted"``, ``"uploaded"``, or ``"foreign"`` for non-distributable layers left out)."""

    reference: Reference
    digest: Digest
    media_type: str
    size: int
    blobs: Mapping[Digest, str]
    manifests: tuple[Digest, ...]


def push(ref: str | Reference, store: ContentStore, manifest_digest: Digest,
         progress: ProgressCallback | None = None, *, client: RegistryClient | None = None,
         chunk_size: int | None = None, mount_from: Iterable[str] = (), sources: BlobSources | None = None,
         max_workers: int = DEFAULT_WORKERS) -> PushResult:
    """Push the manifest or index ``manifest_digest`` (and everything it references) from ``store`` to ``ref``.

    ``ref`` names the target repository and a tag (or the digest itself). ``mount_from`` names more
    repositories of the same registry to try mounting blobs from.
    """
    reference = Reference.parse(ref) if isinstance(ref, str) else ref
    if reference.digest is not None and reference.digest != manifest_digest:
        raise InvalidArgument(f"cannot push {manifest_digest} as {reference}: the digests differ")
    client = client or RegistryClient(reference.domain)
    sources = sources if sources is not None else BlobSources.for_store(store)
    job = _Push(client, store, reference, progress, chunk_size, list(mount_from), sources, max_workers)
    client.will_push(reference.path)
    data, media_type, _ = job.load(manifest_digest, "manifest")
    target = reference.tag if reference.tag else str(manifest_digest)
    job.push_tree(manifest_digest, target)
    return PushResult(reference, manifest_digest, media_type, len(data), dict(job.blobs), tuple(job.manifests))


class _Push:
    def __init__(self, client: RegistryClient, store: ContentStore, reference: Reference,
                 progress: ProgressCallback | None, chunk_size: int | None, mount_from: list[str],
                 sources: BlobSources, max_workers: int) -> None:
        self.client = client
        self.store = store
        self.reference = reference
        self.repo = reference.path
        self.progress = progress
        self.chunk_size = chunk_size
        self.mount_from = [_repo_of(r, reference.domain) for r in mount_from]
        self.sources = sources
        self.max_workers = max(1, max_workers)
        self.blobs: dict[Digest, str] = {}
        self.manifests: list[Digest] = []
        self._lock = threading.Lock()

    def load(self, digest: Digest, what: str) -> tuple[bytes, str, Manifest | Index]:
        try:
            data = self.store.read_bytes(digest, verify=True)
        except NotFound:
            raise NotFound(f"{what} {digest} is not in the content store (pull the image again)") from None
        try:
            doc = parse_manifest(data)
        except (InvalidArgument, Unsupported) as exc:
            raise InvalidArgument(f"cannot push {digest}: {exc}") from None
        media_type = doc.media_type or (MEDIA_TYPE_IMAGE_INDEX if isinstance(doc, Index) else MEDIA_TYPE_IMAGE_MANIFEST)
        return data, media_type, doc

    def push_tree(self, digest: Digest, target: str) -> None:
        data, media_type, doc = self.load(digest, "manifest")
        if isinstance(doc, Index):
            for child in doc.manifests:
                if child.digest in self.manifests:
                    continue
                if not self.store.exists(child.digest):
                    raise NotFound(
                        f"cannot push {self.reference}: manifest {child.digest} "
                        f"({child.platform or 'no platform'}) of the index is not in the content store; "
                        "pull all platforms first"
                    )
                self.push_tree(child.digest, str(child.digest))
        else:
            self._push_blobs(doc.children())
        self.client.put_manifest(self.repo, target, data, media_type)
        self.manifests.append(digest)

    def _push_blobs(self, descriptors: list[Descriptor]) -> None:
        todo: dict[Digest, Descriptor] = {}
        for desc in descriptors:
            if desc.digest not in self.blobs:
                todo.setdefault(desc.digest, desc)
        if not todo:
            return
        with ThreadPoolExecutor(max_workers=min(self.max_workers, len(todo)), thread_name_prefix="berth-push") as pool:
            list(pool.map(self._push_blob, todo.values()))  # re-raises the first failure

    def _push_blob(self, desc: Descriptor) -> None:
        digest = desc.digest
        client, repo, registry = self.client, self.repo, self.reference.domain
        if not self.store.exists(digest):
            if desc.urls:
                self._done(digest, "foreign")  # non-distributable: the registry need not have it
                return
            raise NotFound(f"cannot push {self.reference}: blob {digest} is not in the content store")
        if client.blob_exists(repo, digest):
            self._note(desc, "exists")
            return
        candidates = [r for r in [*self.mount_from, *self.sources.repositories(digest, registry)] if r != repo]
        for source in list(dict.fromkeys(candidates))[:_MAX_MOUNT_TRIES]:
            try:
                if client.mount_blob(repo, digest, source):
                    self._note(desc, "mounted")
                    return
            except (PermissionDenied, NotFound):
                continue  # no read access there, or it is gone: upload instead
        client.push_blob(repo, desc, self.store, chunk_size=self.chunk_size, progress=self.progress)
        self._note(desc, "uploaded", emit=False)

    def _note(self, desc: Descriptor, how: str, *, emit: bool = True) -> None:
        if emit and self.progress is not None:
            self.progress(Progress(desc.digest, desc.size, desc.size, "mounted" if how == "mounted" else "exists"))
        self.sources.record(desc.digest, self.reference.domain, self.repo)
        self._done(desc.digest, how)

    def _done(self, digest: Digest, how: str) -> None:
        with self._lock:
            self.blobs[digest] = how


def _repo_of(text: str, registry: str) -> str:
    """``mount_from`` entries may be bare repositories or references on the same registry."""
    if "/" in text:
        try:
            ref = Reference.parse(text, default_tag=None)
        except BerthError:
            return text
        if ref.domain == registry:
            return ref.path
    return text
