"""Layer snapshots keyed by chain ID (containerd's snapshotters): overlayfs, and a copying fallback.

Snapshotters return :class:`Mount` specs and never mount anything themselves; see
:mod:`berth.snapshots.base` for the model and :mod:`berth.snapshots.mount` for mounting the specs.
"""

from __future__ import annotations

import os

from berth.errors import InvalidArgument, Unsupported
from berth.snapshots.base import ACTIVE, COMMITTED, VIEW, Info, Mount, Snapshotter, Usage
from berth.snapshots.overlay import OverlaySnapshotter

TYPE_CHECKING = False
if TYPE_CHECKING:
    from berth.snapshots.copying import CopySnapshotter

__all__ = ["ACTIVE", "COMMITTED", "VIEW", "CopySnapshotter", "Info", "Mount", "OverlaySnapshotter",
           "Snapshotter", "Usage", "open_snapshotter"]


def open_snapshotter(root: str | os.PathLike[str], kind: str = "auto") -> Snapshotter:
    """The snapshotter ``kind`` (``overlayfs``, ``copy`` or ``auto``) rooted at ``root``.

    ``auto`` picks overlayfs when :func:`~berth.snapshots.mount.overlay_supported` says the kernel and
    the filesystem allow it, else the copying fallback. A root keeps the kind it was created with
    (recorded in ``<root>/kind``): the trees of one are not valid for the other.
    """
    from berth.snapshots.mount import overlay_supported

    marker = os.path.join(root, "kind")
    try:
        with open(marker) as f:
            recorded = f.read().strip()
    except FileNotFoundError:
        recorded = ""
    if kind == "auto":
        kind = recorded or ("overlayfs" if overlay_supported(root) else "copy")
    if recorded and recorded != kind:
        raise InvalidArgument(f"{root} holds {recorded} snapshots, not {kind}")
    if kind == "overlayfs":
        if not recorded and not overlay_supported(root):
            raise Unsupported(f"overlayfs is not usable under {root}")
        snapshotter: Snapshotter = OverlaySnapshotter(root)
    elif kind == "copy":
        from berth.snapshots.copying import CopySnapshotter

        snapshotter = CopySnapshotter(root)
    else:
        raise InvalidArgument(f"unknown snapshotter {kind!r} (overlayfs, copy)")
    if not recorded:
        # Several berth processes may open a new root at once: each writes its own temporary file
        # (they all write the same kind, the same test having decided it).
        from berth.fsutil import atomic_file

        with atomic_file(marker) as f:
            f.write((kind + "\n").encode())
    return snapshotter


def __getattr__(name: str) -> object:
    """``CopySnapshotter`` is loaded on first use: hosts with overlayfs (and `berth run`) never need it."""
    if name == "CopySnapshotter":
        from berth.snapshots.copying import CopySnapshotter

        return CopySnapshotter
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
