"""The Engine's named volumes (``berth volume ...`` and ``-v NAME:/path``), as a mixin."""

from __future__ import annotations

import os

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from berth.engine.db import Database
    from berth.volumes.store import Volume, VolumeStore


class VolumeOps:
    """Mixed into ``Engine``; uses its ``db``, ``root`` and ``containers``."""

    root: str
    _volumes: VolumeStore | None = None
    if TYPE_CHECKING:

        @property
        def db(self) -> Database: ...

    @property
    def volume_store(self) -> VolumeStore:
        if self._volumes is None:
            from berth.volumes.store import VolumeStore

            self._volumes = VolumeStore(self.db.conn, os.path.join(self.root, "volumes"))
        return self._volumes

    def volume_create(self, name: str | None = None, labels: dict[str, str] | None = None,
                      options: dict[str, str] | None = None) -> Volume:
        return self.volume_store.create(name, labels, options)

    def volumes(self) -> list[Volume]:
        return self.volume_store.list()

    def volume_users(self, name: str) -> list[str]:
        """Ids of the containers whose configuration mounts the volume."""
        users = []
        for c in self.containers():  # type: ignore[attr-defined]
            if any(v.get("name") == name for v in c.config.get("volumes") or []):
                users.append(c.id)
        return users

    def volume_remove(self, name: str, force: bool = False) -> None:
        self.volume_store.remove(name, [] if force else self.volume_users(name))

    def volume_prune(self) -> tuple[list[str], int]:
        """Remove every volume no container uses; return their names and the bytes freed."""
        removed, freed = [], 0
        for v in self.volumes():
            if not self.volume_users(v.name):
                freed += self.volume_store.usage(v.name)
                self.volume_store.remove(v.name)
                removed.append(v.name)
        return removed, freed

    def resolve_volumes(self, specs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """``-v NAME:/path`` entries → bind mounts of the volumes' directories (created on first use)."""
        binds = []
        for spec in specs:
            volume = self.volume_store.create(spec["name"], exist_ok=True)
            binds.append({"source": volume.mountpoint, "destination": spec["destination"],
                          "readonly": bool(spec.get("readonly"))})
        return binds
