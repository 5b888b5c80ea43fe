"""The Engine's ``build`` (``berth build``, and the library's way to build), as a mixin: the CLI
sees the Engine only, the Dockerfile machinery lives in ``berth.build``."""

from __future__ import annotations

import os

from berth.errors import InvalidArgument

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, BinaryIO, TextIO

    from berth.images.store import Image, ImageStore

#: RUN networks that need no lookup; any other name must be a network that exists.
_BUILTIN_NETWORKS = ("none", "host", "bridge")


class BuildOps:
    if TYPE_CHECKING:
        @property
        def image_store(self) -> ImageStore: ...
        @property
        def networks(self) -> Any: ...

    def build(self, context: str | BinaryIO, dockerfile: str | None = None, *, tags: list[str] | None = None,
              build_args: dict[str, str] | None = None, target: str | None = None, no_cache: bool = False,
              labels: dict[str, str] | None = None, quiet: bool = False, source_date_epoch: int | None = None,
              pull: str = "missing", output: TextIO | None = None, network: str | None = None,
              format: str = "oci", dockerfile_text: str | None = None) -> Image:
        """Build the Dockerfile ``dockerfile`` (a path; default ``CONTEXT/Dockerfile``; or the text
        ``dockerfile_text``) of ``context`` (a directory, or a tar stream) and tag the result with
        ``tags``. ``network`` is RUN steps' network (default ``none``); ``format`` ``oci`` or ``docker``."""
        from berth.build.builder import BuildOptions, build
        from berth.build.context import Context
        from berth.images.store import _tag_reference

        for t in tags or []:
            _tag_reference(t)  # a bad name fails before any work
        if format not in ("oci", "docker"):
            raise InvalidArgument(f"unknown format {format!r}: use oci or docker")
        if pull not in ("always", "missing", "never"):
            raise InvalidArgument(f"invalid pull policy {pull!r} (always, missing or never)")
        if network == "default":
            network = None
        if network is not None and network not in _BUILTIN_NETWORKS:
            self.networks.get(network)  # NotFound before any step runs
        options = BuildOptions(tags=list(tags or []), build_args=dict(build_args or {}), target=target,
                               no_cache=no_cache, labels=dict(labels or {}), quiet=quiet,
                               source_date_epoch=source_date_epoch, pull=pull, network=network, format=format)
        if isinstance(context, str):
            if not os.path.isdir(context):
                raise InvalidArgument(f"the build context {context!r} is not a directory")
            ctx = Context(context, _ignore_file(dockerfile))
        else:
            ctx = Context.from_tar(context)
        try:
            text = dockerfile_text
            if text is None:
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

    def build_intermediates(self) -> set[str]:
        """IDs of the untagged images build steps left for the cache (``berth images`` hides them)."""
        from berth.build.builder import intermediate_images

        return intermediate_images(str(self.image_store.root))


def _ignore_file(dockerfile: str | None) -> list[str] | None:
    """The lines of ``<Dockerfile>.dockerignore`` beside a named Dockerfile (BuildKit's rule: it wins
    over the context's .dockerignore), or None to use the context's."""
    if not dockerfile:
        return None
    try:
        with open(dockerfile + ".dockerignore", encoding="utf-8") as f:
            return f.read().splitlines()
    except FileNotFoundError:
        return None
