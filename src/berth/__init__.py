"""berth: a container engine written in Python.

The package is layered (see DESIGN.md): ``oci`` (data) → ``kernel`` (syscalls) → ``runtime``,
``content``, ``snapshots`` → ``images``, ``registry``, ``network``, ``volumes`` → ``engine`` →
``api`` and ``cli``. Nothing is imported here eagerly, so ``berth-runtime`` starts fast.
"""

__version__ = "0.1.0"
