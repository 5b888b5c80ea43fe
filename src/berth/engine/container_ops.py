"""The Engine's container operations beyond the life cycle (exec, top, stats, pause, rename, update,
prune, export, diff, commit, cp), as a mixin so the Engine class stays readable."""

from __future__ import annotations


class ContainerOps:
    """Mixed into ``Engine``; uses its ``db``, ``image_store``, ``runtime_argv`` and ``get``."""
