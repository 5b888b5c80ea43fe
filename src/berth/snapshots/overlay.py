"""The overlayfs snapshotter: every snapshot is an upper directory; its parents are the lower ones.

A committed snapshot's ``<id>/fs`` holds only what its layer changed, whiteouts in overlay's native form
(a 0:0 character device for a deleted entry, ``trusted.overlay.opaque=y`` on a directory that hides
its lower contents). An active snapshot on a parent mounts as
``overlay lowerdir=<parent fs>:<grandparent fs>:…,upperdir=<id>/fs,workdir=<id>/work``; one without
parent, or a view of a single layer, is a bind mount.

**The option length limit.** mount(2) copies its data argument into one page, so ``lowerdir=`` with
100 absolute paths of ~60 bytes does not fit in 4096 bytes. Two ways out were considered:

- short symlinks (``<root>/l/<short> -> ../<id>/fs``, as Docker's overlay2 does) — every lower still
  costs the absolute prefix unless the paths are also made relative, and the links are more state to
  keep consistent with the metadata;
- relative paths from the snapshot root — the directories are already named by short integers, so a
  lower costs ``"123/fs:"`` (7 bytes) and overlay's own limit of 500 layers fits in one page.

berth does the second, and only when it must: the options use absolute paths whenever they fit (so
the spec works with any mounter, e.g. as a mount in an OCI runtime config), and relative paths plus
``Mount.cwd`` (the snapshot root) otherwise. :func:`berth.snapshots.mount.mount_all` makes such a mount
from a thread that has unshared its working directory (``unshare(CLONE_FS)``), so the process-wide cwd
is never changed; the layer applier resolves the same paths against ``cwd``.
"""

from __future__ import annotations

import os

from berth.errors import Unsupported
from berth.snapshots.base import ACTIVE, VIEW, Info, Mount, Snapshotter

#: overlayfs refuses more lower layers than this (OVL_MAX_STACK).
MAX_LAYERS = 500
_UNSAFE = (",", ":", "\\")


def _option_limit() -> int:
    return os.sysconf("SC_PAGESIZE") - 1


class OverlaySnapshotter(Snapshotter):
    name = "overlayfs"
    independent_layers = True

    def __init__(self, root: str | os.PathLike[str]) -> None:
        super().__init__(root)
        # index=off as containerd does: the index feature ties an upper to one set of lowers and fails
        # mounts that share lowers; off is the kernel's usual default, set explicitly when it exists.
        self._extra: tuple[str, ...] = ("index=off",) if os.path.exists("/sys/module/overlay/parameters/index") \
            else ()
        self._relative_only = any(c in self._root for c in _UNSAFE)

    def work_path(self, snapshot_id: int) -> str:
        return os.path.join(self._root, str(snapshot_id), "work")

    def _make_tree(self, snapshot_id: int) -> None:
        super()._make_tree(snapshot_id)
        os.mkdir(self.work_path(snapshot_id), 0o700)

    def _mounts(self, info: Info, chain: list[int]) -> list[Mount]:
        own, parents = chain[0], chain[1:]
        if info.kind == ACTIVE:
            if not parents:
                return [Mount("bind", self.fs_path(own), ("rbind", "rw"))]
            return [self._overlay(parents, own)]
        layers = parents if info.kind == VIEW else chain
        if len(layers) <= 1:
            return [Mount("bind", self.fs_path(layers[0] if layers else own), ("rbind", "ro"))]
        return [self._overlay(layers, None)]

    def _overlay(self, lowers: list[int], upper: int | None) -> Mount:
        if len(lowers) > MAX_LAYERS:
            raise Unsupported(f"overlayfs stacks at most {MAX_LAYERS} layers; this snapshot has {len(lowers)}")

        def options(path: str) -> tuple[str, ...]:
            opts = [*self._extra, "lowerdir=" + ":".join(f"{path}{i}/fs" for i in lowers)]
            if upper is None:
                opts.insert(0, "ro")
            else:
                opts += [f"upperdir={path}{upper}/fs", f"workdir={path}{upper}/work"]
            return tuple(opts)

        if not self._relative_only:
            absolute = options(self._root + "/")
            if len(",".join(absolute)) <= _option_limit():
                return Mount("overlay", "overlay", absolute)
        relative = options("")
        if len(",".join(relative)) > _option_limit():
            raise Unsupported(f"overlay options for {len(lowers)} layers exceed the kernel's page-size limit")
        return Mount("overlay", "overlay", relative, cwd=self._root)
