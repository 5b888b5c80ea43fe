"""``berth`` container commands beyond the life cycle in ``main`` (exec, top, stats, pause, cp...).

Each ``cmd_*`` method is found by ``main``'s dispatcher through the ``Cli`` class, which mixes this in.
"""

from __future__ import annotations


class ContainerCommands:
    """Mixed into ``cli.main.Cli``: ``self.engine``, ``self.out`` and ``parse`` are available."""
