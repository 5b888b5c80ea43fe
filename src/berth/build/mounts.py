"""``RUN --mount=...``: the mounts a RUN step gets for its duration only (BuildKit's syntax).

- ``type=bind`` (the default): ``source`` from the context, or from a stage or an image (``from=``),
  read-only unless ``rw`` (then a private copy: writes are thrown away, as BuildKit does).
- ``type=cache``: a directory kept across builds under the store (by ``id``, default the target), so
  package managers' downloads survive; its contents are never part of the cache key or of a layer.
- ``type=tmpfs``: an empty tmpfs (``size=``).

Secrets and ssh agents have no source in a daemonless build yet: they are refused by name.
The mount points a mount makes in the image are dropped from the step's layer.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass

from berth.errors import InvalidArgument, Unsupported

_KEYS = {
    "type": "type", "target": "target", "dst": "target", "destination": "target", "source": "source",
    "src": "source", "from": "from", "readonly": "ro", "ro": "ro", "rw": "rw", "readwrite": "rw", "id": "id",
    "sharing": "sharing", "mode": "mode", "uid": "uid", "gid": "gid", "size": "size",
}


@dataclass(frozen=True)
class RunMount:
    kind: str  # bind, cache, tmpfs
    target: str
    source: str = ""
    from_ref: str | None = None
    writable: bool = False
    cache_id: str = ""
    mode: int = 0o755
    uid: int = 0
    gid: int = 0
    size: str = ""


def _flag(value: str) -> bool:
    if value in ("", "true", "1"):
        return True
    if value in ("false", "0"):
        return False
    raise InvalidArgument(f"{value!r} is not a boolean")


def _number(key: str, value: str, base: int = 10) -> int:
    try:
        return int(value, base)
    except ValueError:
        raise InvalidArgument(f"--mount {key}={value!r} is not a number") from None


def parse_mount(spec: str) -> RunMount:
    """One ``--mount`` value (variables already substituted) as a :class:`RunMount`."""
    fields: dict[str, str] = {}
    for item in spec.split(","):
        item = item.strip()
        if not item:
            continue
        key, eq, value = item.partition("=")
        name = _KEYS.get(key.lower())
        if name is None:
            raise InvalidArgument(f"--mount: unknown option {key!r}")
        fields[name] = value if eq else ""
    kind = fields.pop("type", "bind").lower()
    if kind in ("secret", "ssh"):
        raise Unsupported(f"--mount=type={kind} is not supported (no secret or ssh agent source yet)")
    if kind not in ("bind", "cache", "tmpfs"):
        raise InvalidArgument(f"--mount: unknown type {kind!r} (bind, cache or tmpfs)")
    target = fields.get("target", "")
    if not target:
        raise InvalidArgument("--mount: target is required")
    if not target.startswith("/"):
        raise InvalidArgument(f"--mount: target {target!r} must be an absolute path")
    target = posixpath.normpath(target)
    if target == "/":
        raise InvalidArgument("--mount: target may not be /")
    writable = _flag(fields["rw"]) if "rw" in fields else not _flag(fields["ro"]) if "ro" in fields else None
    if kind == "tmpfs":
        return RunMount("tmpfs", target, size=fields.get("size", ""))
    if kind == "cache":
        if "from" in fields:
            raise Unsupported("--mount=type=cache,from=... is not supported")
        sharing = fields.get("sharing", "shared")
        if sharing not in ("shared", "private", "locked"):
            raise InvalidArgument(f"--mount: sharing={sharing!r}: use shared, private or locked")
        return RunMount("cache", target, cache_id=fields.get("id") or target, writable=writable is not False,
                        mode=_number("mode", fields.get("mode", "755"), 8), uid=_number("uid", fields.get("uid", "0")),
                        gid=_number("gid", fields.get("gid", "0")))
    return RunMount("bind", target, source=fields.get("source", ""), from_ref=fields.get("from"),
                    writable=bool(writable))
