"""berth: a container engine written in Python.

The package is layered (see DESIGN.md): ``oci`` (data) → ``kernel`` (syscalls) → ``runtime``,
``content``, ``snapshots`` → ``images``, ``registry``, ``network``, ``volumes`` → ``engine`` →
``api`` and ``cli``. Nothing is imported here eagerly, so ``berth-runtime`` starts fast.
"""

__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    """``berth.Engine`` without importing the engine until it is asked for."""
    if name == "Engine":
        from berth.engine.engine import Engine

        return Engine
    raise AttributeError(f"module 'berth' has no attribute {name!r}")
