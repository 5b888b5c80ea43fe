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
      --pull[=POLICY]    pull base images: always (the bare flag), missing (default), never
      --network MODE     the network of RUN steps: none (default), host, bridge or a network
      --format FORMAT    the image's manifest: oci (default) or docker

CONTEXT is a directory, or - for a tar archive on stdin; -f - reads the Dockerfile from stdin.
With SOURCE_DATE_EPOCH set, times are clamped to it: the same inputs give the same image digest.
"""

#: ``--pull=VALUE`` spellings (podman's policies and Docker's boolean) as a pull policy.
_PULL = {"always": "always", "true": "always", "newer": "always", "missing": "missing", "false": "missing",
         "ifmissing": "missing", "never": "never"}


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
        pull = None
        plain: list[str] = []
        for arg in argv:  # --pull takes an optional value, which the flag parser has no way to say
            if arg.startswith("--pull="):
                pull = _PULL.get(arg[len("--pull="):].lower())
                if pull is None:
                    raise InvalidArgument(f"invalid {arg}: use always, missing or never")
            else:
                plain.append(arg)
        opts, rest = parse(plain, BUILD_FLAGS, "build")
        if opts.get("help"):
            self.out(BUILD_USAGE)
            return 0
        if len(rest) != 1:
            raise InvalidArgument('"berth build" requires exactly 1 argument: the context (a directory or -)')
        if opts.get("format") not in (None, "oci", "docker"):
            raise InvalidArgument(f"unknown --format {opts['format']!r}: use oci or docker")
        dockerfile, text = opts.get("file"), None
        if dockerfile == "-":
            if rest[0] == "-":
                raise InvalidArgument("the context and the Dockerfile cannot both be read from stdin")
            dockerfile, text = None, sys.stdin.read()
        epoch_text = os.environ.get("SOURCE_DATE_EPOCH")
        epoch = None
        if epoch_text:
            if not epoch_text.isdigit():
                raise InvalidArgument(f"SOURCE_DATE_EPOCH must be a number of seconds, not {epoch_text!r}")
            epoch = int(epoch_text)
        quiet = bool(opts.get("quiet"))
        if pull is None:
            pull = "always" if opts.get("pull") else "missing"
        image = self.engine.build(
            sys.stdin.buffer if rest[0] == "-" else rest[0], dockerfile, tags=opts.get("tag") or [],
            build_args=_kv(opts.get("build_arg") or [], "--build-arg"), target=opts.get("target"),
            no_cache=bool(opts.get("no_cache")), labels=_kv(opts.get("label") or [], "--label"), quiet=quiet,
            source_date_epoch=epoch, pull=pull, output=sys.stdout, network=opts.get("network"),
            format=opts.get("format") or "oci", dockerfile_text=text)
        if opts.get("iidfile"):
            with open(opts["iidfile"], "w") as f:
                f.write(str(image.id))
        if quiet:
            self.out(f"{image.id}\n")
        return 0
