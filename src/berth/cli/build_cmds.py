"""``berth build``: a Dockerfile and a context (a directory, or a tar on stdin) into an image."""

from __future__ import annotations

import os
import sys

from berth.cli.flags import Flag, parse
from berth.errors import InvalidArgument

TYPE_CHECKING = False
if TYPE_CHECKING:
    from berth.engine.engine import Engine

BUILD_FLAGS = [
    Flag("tag,t", "tag", True, True), Flag("file,f", "file", True), Flag("build-arg", "build_arg", True, True),
    Flag("target", "target", True), Flag("no-cache", "no_cache"), Flag("label", "label", True, True),
    Flag("iidfile", "iidfile", True), Flag("quiet,q", "quiet"), Flag("pull", "pull"),
    Flag("network", "network", True), Flag("format", "format", True), Flag("help", "help"),
]

BUILD_USAGE = """Usage: berth build [OPTIONS] CONTEXT|-

Build an image from a Dockerfile.

Options:
  -t, --tag NAME:TAG     name the image (repeatable)
  -f, --file PATH        the Dockerfile (default CONTEXT/Dockerfile)
      --build-arg K=V    set a build argument (repeatable)
      --target STAGE     build up to this stage
      --no-cache         do not use the build cache
      --label K=V        add a label to the image (repeatable)
      --iidfile FILE     write the image ID to FILE
  -q, --quiet            print only the image ID
      --pull             always pull the base images
"""


def _kv(items: list[str], flag: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        k, eq, v = item.partition("=")
        if not k:
            raise InvalidArgument(f"invalid {flag} {item!r}: use KEY=VALUE")
        if not eq:
            if k not in os.environ:
                continue
            v = os.environ[k]
        out[k] = v
    return out


class BuildCommands:
    if TYPE_CHECKING:
        @property
        def engine(self) -> Engine: ...
        def out(self, text: str) -> None: ...

    def cmd_build(self, argv: list[str]) -> int:
        opts, rest = parse(argv, BUILD_FLAGS, "build")
        if opts.get("help"):
            self.out(BUILD_USAGE)
            return 0
        if len(rest) != 1:
            raise InvalidArgument('"berth build" requires exactly 1 argument: the context (a directory or -)')
        if opts.get("format") not in (None, "oci", "docker"):
            raise InvalidArgument(f"unknown --format {opts['format']!r}: use oci or docker")
        epoch_text = os.environ.get("SOURCE_DATE_EPOCH")
        epoch = None
        if epoch_text:
            if not epoch_text.isdigit():
                raise InvalidArgument(f"SOURCE_DATE_EPOCH must be a number of seconds, not {epoch_text!r}")
            epoch = int(epoch_text)
        quiet = bool(opts.get("quiet"))
        image = self.engine.build(
            sys.stdin.buffer if rest[0] == "-" else rest[0], opts.get("file"), tags=opts.get("tag") or [],
            build_args=_kv(opts.get("build_arg") or [], "--build-arg"), target=opts.get("target"),
            no_cache=bool(opts.get("no_cache")), labels=_kv(opts.get("label") or [], "--label"), quiet=quiet,
            source_date_epoch=epoch, pull="always" if opts.get("pull") else "missing", output=sys.stdout)
        if opts.get("iidfile"):
            with open(opts["iidfile"], "w") as f:
                f.write(str(image.id))
        if quiet:
            self.out(f"{image.id}\n")
        return 0
