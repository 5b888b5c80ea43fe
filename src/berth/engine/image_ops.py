"""The Engine's image operations beyond pull/import (push, save, load, history, prune, disk usage,
login), as a mixin so the Engine class stays readable."""

from __future__ import annotations


class ImageOps:
    """Mixed into ``Engine``; uses its ``image_store`` and ``root``."""
