"""The Engine's ``build`` (``berth build``, and the library's way to build), as a mixin: the CLI
sees the Engine only, the Dockerfile machinery lives in ``berth.build``."""

from __future__ import annotations

import os

from berth.errors import InvalidArgument

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, BinaryIO, TextIO

    from berth.images.store import Image


class BuildOps:
    def build(self, context: str | BinaryIO, dockerfile: str | None = None, *, tags: list[str] | None = None,
              build_args: dict[str, str] | None = None, target: str | None = None, no_cache: bool = False,
              labels: dict[str, str] | None = None, quiet: bool = False, source_date_epoch: int | None = None,
              pull: str = "missing", output: TextIO | None = None) -> Image:
        """Build the Dockerfile ``dockerfile`` (a path; default ``CONTEXT/Dockerfile``) of ``context``
        (a directory, or a tar stream) and tag the result with ``tags``."""
        from berth.build.builder import BuildOptions, build
        from berth.build.context import Context
        from berth.images.store import _tag_reference

        for t in tags or []:
            _tag_reference(t)  # a bad name fails before any work
        options = BuildOptions(tags=list(tags or []), build_args=dict(build_args or {}), target=target,
                               no_cache=no_cache, labels=dict(labels or {}), quiet=quiet,
                               source_date_epoch=source_date_epoch, pull=pull)
        if isinstance(context, str):
            if not os.path.isdir(context):
                raise InvalidArgument(f"the build context {context!r} is not a directory")
            ctx = Context(context)
        else:
            ctx = Context.from_tar(context)
        try:
            path = dockerfile or os.path.join(ctx.root, "Dockerfile")
            if not isinstance(context, str) and dockerfile and not os.path.isabs(path):
                path = os.path.join(ctx.root, path)
            try:
                with open(path, encoding="utf-8") as f:
                    text = f.read()
            except FileNotFoundError:
                raise InvalidArgument(f"cannot read the Dockerfile: {path} does not exist") from None
            engine: Any = self
            return build(engine, ctx, text, options, output)
        finally:
            ctx.close()
