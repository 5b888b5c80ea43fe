"""Building on the shared engine fixtures (tests/conftest.py); a helper to write contexts."""

from __future__ import annotations

from pathlib import Path

BASE = "localhost/busybox:latest"


def write_context(root: Path, files: dict[str, str]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return root
