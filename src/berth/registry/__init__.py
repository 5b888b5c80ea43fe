"""The distribution-spec client (containers/image's role): pull into and push from the content store.

* :mod:`~berth.registry.auth` — credentials (berth's auth file, Docker's config.json, credential
  helpers), ``login``/``logout``, WWW-Authenticate, basic and bearer-token authentication.
* :mod:`~berth.registry.client` — :class:`RegistryClient`: one registry over pooled HTTP, with mirrors,
  insecure registries, retries, verified manifests and resumable, verified blob downloads; uploads.
* :mod:`~berth.registry.pull` / :mod:`~berth.registry.push` — whole images, blobs in parallel.
* :mod:`~berth.registry.sources` — where blobs came from, for cross-repository mounts.

Level L3: imports ``oci``, ``content`` and ``errors`` only. Names are imported lazily so
``import berth.registry`` stays cheap. The functions are used from their modules —
``from berth.registry.pull import pull`` — because re-exporting them here would clash with the submodule
names ``pull`` and ``push``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from berth.registry.auth import ANONYMOUS, Credentials, login, logout, lookup
    from berth.registry.client import Progress, RegistriesConfig, RegistryClient
    from berth.registry.pull import PullResult
    from berth.registry.push import PushResult
    from berth.registry.sources import BlobSources

_EXPORTS = {
    "ANONYMOUS": "auth", "Credentials": "auth", "login": "auth", "logout": "auth", "lookup": "auth",
    "Progress": "client", "RegistriesConfig": "client", "RegistryClient": "client",
    "PullResult": "pull", "PushResult": "push", "BlobSources": "sources",
}

__all__ = [
    "ANONYMOUS", "BlobSources", "Credentials", "Progress", "PullResult", "PushResult", "RegistriesConfig",
    "RegistryClient", "login", "logout", "lookup",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'berth.registry' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f"berth.registry.{module}"), name)
