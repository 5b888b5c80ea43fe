"""Content-addressed blob storage (containerd's content store): see :mod:`berth.content.store`."""

from berth.content.store import BlobInfo, ContentStore, IngestStatus, Usage, Writer

__all__ = ["BlobInfo", "ContentStore", "IngestStatus", "Usage", "Writer"]
