"""Where each blob was pulled from (or pushed to), so a later push can mount instead of upload.

Why: the distribution spec lets a client ask a registry to link a blob it already holds in another
repository (``POST /v2/<name>/blobs/uploads/?mount=<digest>&from=<other>``). Pushing an image that was
pulled from ``reg/app`` to ``reg/app-copy`` then moves no layer bytes at all — but only if the client
remembers that the blob came from ``reg/app``. containerd keeps that as a label on the blob; berth's
content store has no labels, so this small side table does the job.

Layout: ``<root>/<algorithm>/<hex>`` holds one ``registry/repository`` per line, appended with
``O_APPEND`` (a line is one small write, so concurrent pulls cannot interleave inside it). Stale lines are
harmless: a mount that fails falls back to an upload. The default root is ``registry-sources/`` inside
the content store's root, beside (never inside) its ``blobs/`` and ``ingest/``.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from berth.content.store import ContentStore
from berth.oci.digest import Digest


class BlobSources:
    """A record of the repositories each blob is known to exist in."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    @classmethod
    def for_store(cls, store: ContentStore) -> BlobSources:
        return cls(store.root / "registry-sources")

    def _path(self, digest: Digest) -> Path:
        return self.root / digest.algorithm / digest.encoded

    def _read(self, digest: Digest) -> list[str]:
        try:
            with open(self._path(digest), encoding="utf-8") as f:
                return [line.strip() for line in f if line.strip()]
        except FileNotFoundError:
            return []

    def record(self, digest: Digest, registry: str, repository: str) -> None:
        """Note that ``digest`` exists in ``registry/repository``."""
        entry = f"{registry}/{repository}"
        if entry in self._read(digest):
            return
        path = self._path(digest)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            os.write(fd, (entry + "\n").encode())
        finally:
            os.close(fd)

    def repositories(self, digest: Digest, registry: str) -> list[str]:
        """The repositories of ``registry`` that ``digest`` is known to exist in, most recent first."""
        prefix = registry + "/"
        seen: list[str] = []
        for entry in reversed(self._read(digest)):
            if entry.startswith(prefix) and entry[len(prefix):] not in seen:
                seen.append(entry[len(prefix):])
        return seen

    def forget(self, digest: Digest) -> None:
        """Drop what is known about ``digest`` (when the blob leaves the store)."""
        with contextlib.suppress(FileNotFoundError):
            self._path(digest).unlink()
