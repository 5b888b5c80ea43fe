"""``berth`` image commands beyond the basics in ``main`` (push, save, load, history, login...).

Each ``cmd_*`` method is found by ``main``'s dispatcher through the ``Cli`` class, which mixes this in.
"""

from __future__ import annotations


class ImageCommands:
    """Mixed into ``cli.main.Cli``: ``self.engine``, ``self.out`` and ``parse`` are available."""
