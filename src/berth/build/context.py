"""The build context: a directory (or a tar read from stdin, unpacked to a temporary directory), with
the files ``.dockerignore`` leaves out made invisible to COPY and ADD.

.dockerignore rules (Docker's): one pattern a line, ``#`` comments; each pattern is cleaned and a
leading ``/`` dropped; ``*`` and ``?`` do not cross ``/``, ``**`` matches any number of directories;
a path is excluded when it, or one of its parent directories, matches; later lines win, and a
line starting with ``!`` re-includes what it matches.
"""

from __future__ import annotations

import fnmatch
import os
import posixpath
import re
import shutil
import tempfile
from typing import BinaryIO

from berth.errors import InvalidArgument, NotFound, Unsupported


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    out: list[str] = []
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "*":
            if pattern.startswith("**", i):
                i += 2
                if pattern.startswith("/", i):
                    out.append("(?:.*/)?")
                    i += 1
                else:
                    out.append(".*")
                continue
            out.append("[^/]*")
        elif ch == "?":
            out.append("[^/]")
        elif ch == "[":
            end = pattern.find("]", i + 1)
            if end < 0:
                raise InvalidArgument(f".dockerignore: bad pattern {pattern!r}")
            body = pattern[i + 1:end]
            if body.startswith("^") or body.startswith("!"):
                body = "^" + body[1:]
            out.append("[" + body.replace("\\", "\\\\") + "]")
            i = end
        elif ch == "\\" and i + 1 < len(pattern):
            out.append(re.escape(pattern[i + 1]))
            i += 1
        else:
            out.append(re.escape(ch))
        i += 1
    return re.compile("".join(out) + r"\Z")


class Ignore:
    def __init__(self, lines: list[str]) -> None:
        self.rules: list[tuple[bool, re.Pattern[str]]] = []
        for raw in lines:
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            negate = line.startswith("!")
            if negate:
                line = line[1:].strip()
            line = posixpath.normpath(line).lstrip("/")
            if line in ("", "."):
                continue
            self.rules.append((negate, _pattern_regex(line)))
        self.has_exceptions = any(neg for neg, _ in self.rules)

    def excluded(self, rel: str) -> bool:
        parts = rel.split("/")
        prefixes = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
        result = False
        for negate, rx in self.rules:
            if any(rx.match(p) for p in prefixes):
                result = not negate
        return result


class Context:
    """Files of the context by their path relative to its root (``a/b.txt``)."""

    def __init__(self, root: str, ignore_lines: list[str] | None = None) -> None:
        self.root = os.path.realpath(root)
        self._tmp: str | None = None
        if ignore_lines is None:
            path = os.path.join(self.root, ".dockerignore")
            ignore_lines = []
            if os.path.isfile(path):
                with open(path, encoding="utf-8") as f:
                    ignore_lines = f.read().splitlines()
        self.ignore = Ignore(ignore_lines)

    @classmethod
    def from_tar(cls, stream: BinaryIO) -> Context:
        """The context sent as a tar (plain, gzip, bzip2, xz or zstd), unpacked by the same hardened
        code as image layers: no entry lands outside the context, whatever its links and names."""
        from berth.images.layer import apply_layer

        tmp = tempfile.mkdtemp(prefix="berth-build-context-")
        try:
            apply_layer(stream, tmp, same_owner=False, whiteouts=False)
        except (InvalidArgument, Unsupported, OSError) as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            raise InvalidArgument(f"the build context on stdin cannot be unpacked: {exc}") from None
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        ctx = cls(tmp)
        ctx._tmp = tmp
        return ctx

    def close(self) -> None:
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def path(self, rel: str) -> str:
        return os.path.join(self.root, rel) if rel else self.root

    def clean(self, src: str) -> str:
        rel = posixpath.normpath("/" + src).lstrip("/")
        return "" if rel == "." else rel

    def included(self, rel: str) -> bool:
        return rel == "" or not self.ignore.excluded(rel)

    def walk(self, rel: str) -> list[str]:
        """``rel`` and everything under it that is not ignored, parents before children, sorted."""
        out: list[str] = []
        if rel and self.included(rel):
            out.append(rel)
        top = self.path(rel)
        if not os.path.isdir(top) or os.path.islink(top):
            return out
        if rel and not self.included(rel) and not self.ignore.has_exceptions:
            return out
        for name in sorted(os.listdir(top)):
            child = f"{rel}/{name}" if rel else name
            out.extend(self.walk(child))
        return out

    def resolve(self, src: str) -> list[str]:
        """The context paths a COPY source names (wildcards expanded); NotFound if none."""
        rel = self.clean(src)
        if any(c in rel for c in "*?["):
            matches = sorted(p for p in self._all() if _segment_match(p, rel))
            if not matches:
                raise NotFound(f"COPY: no source files were specified by {src!r} (or all are ignored)")
            return matches
        if not os.path.lexists(self.path(rel)) or (not self.included(rel) and not self.has_included_child(rel)):
            raise NotFound(f"COPY failed: file not found in build context or excluded by .dockerignore: {src}")
        return [rel]

    def has_included_child(self, rel: str) -> bool:
        return os.path.isdir(self.path(rel)) and len(self.walk(rel)) > 0

    def _all(self) -> list[str]:
        return self.walk("")


def _segment_match(path: str, pattern: str) -> bool:
    pp, ps = path.split("/"), pattern.split("/")
    return len(pp) == len(ps) and all(fnmatch.fnmatchcase(a, b) for a, b in zip(pp, ps, strict=True))
