"""Where berth keeps its state, per DESIGN.md, with every path overridable for tests."""

from __future__ import annotations

import os

#: Default state directory of ``berth-runtime`` (runc uses /run/runc).
RUNTIME_ROOT = "/run/berth-runtime"


def runtime_root() -> str:
    """Runtime state root: ``$XDG_RUNTIME_DIR/berth-runtime`` when rootless, else /run/berth-runtime."""
    if os.geteuid() != 0 and os.environ.get("XDG_RUNTIME_DIR"):
        return os.path.join(os.environ["XDG_RUNTIME_DIR"], "berth-runtime")
    return RUNTIME_ROOT
