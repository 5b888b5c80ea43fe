"""berth's compiled modules in one file, so that a command does not look each one up.

Every berth command imports 50-60 of berth's own modules; through the standard path machinery each
costs ~35 µs before its code even runs (directory caches, path joins, a stat of the source, an open
and a read of its ``.pyc``, header checks), ~2 ms on `berth run`. ``scripts/install`` writes all of
them into one bundle in the virtual environment (``.venv/berth-code.bundle``); ``berth`` and
``berth-runtime`` put :class:`Bundle` first on ``sys.meta_path`` (not the long-lived supervisor,
which imports little), and it answers for the modules it holds with one ``pread`` and
``marshal.loads`` each.

A module whose source changed since the bundle was written (its size or mtime differ) is not
served: the standard machinery loads it from source, so an edited tree never runs stale code. The
bundle holds code objects only; a module's ``__file__`` is its source, as usual.
"""

from __future__ import annotations

import marshal
import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from types import ModuleType
    from typing import Any

_MAGIC = b"berth-code-bundle 2\n" + sys.implementation.cache_tag.encode() + b"\n"
#: A module's entry: (is a package, source path, its mtime_ns and size when compiled, offset and
#: length of its code in the bundle, its ``__cached__``).
_Entry = tuple[bool, str, int, int, int, int, str]


def write(package_dir: str, out: str) -> int:
    """Compile every module of the package at ``package_dir`` into the bundle ``out``; the count."""
    parent = os.path.dirname(os.path.abspath(package_dir))
    from importlib.util import cache_from_source

    index: dict[str, _Entry] = {}
    blobs: list[bytes] = []
    offset = 0
    for directory, dirs, files in os.walk(package_dir):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for name in sorted(files):
            if not name.endswith(".py"):
                continue
            path = os.path.join(directory, name)
            rel = os.path.relpath(path, parent)[:-3].split(os.sep)
            is_pkg = rel[-1] == "__init__"
            module = ".".join(rel[:-1] if is_pkg else rel)
            with open(path, "rb") as f:
                st = os.fstat(f.fileno())  # before reading: an edit meanwhile makes it stale, not hidden
                source = f.read()
            data = marshal.dumps(compile(source, path, "exec", dont_inherit=True))
            index[module] = (is_pkg, path, st.st_mtime_ns, st.st_size, offset, len(data), cache_from_source(path))
            blobs.append(data)
            offset += len(data)
    head = marshal.dumps(index)
    tmp = f"{out}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(_MAGIC + len(head).to_bytes(8, "little") + head)
        for blob in blobs:
            f.write(blob)
    os.replace(tmp, out)
    return len(index)


class Bundle:
    """A meta path finder and loader serving the modules of a bundle ``write`` made."""

    def __init__(self, path: str) -> None:
        # Read with pread from a descriptor kept open, not mapped: the `mmap` extension library
        # alone costs ~0.15 ms to load, and a command reads only the modules it imports.
        self.path = path
        self.fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            st = os.fstat(self.fd)
            self.identity = (st.st_dev, st.st_ino)
            head = os.pread(self.fd, len(_MAGIC) + 8, 0)
            if head[:len(_MAGIC)] != _MAGIC:
                raise ValueError(f"{path}: not a code bundle for this interpreter")
            size = int.from_bytes(head[len(_MAGIC):], "little")
            self.base = len(head) + size
            self.index: dict[str, _Entry] = marshal.loads(
                os.pread(self.fd, size, len(head)))
        except BaseException:
            os.close(self.fd)
            raise

    def _usable(self) -> bool:
        """Whether ``fd`` still reads this bundle. The runtime's child closes every inherited
        descriptor, and the number may since name another file: it is then opened again. If the
        path now holds another file (or none), the bundle serves nothing more in this process:
        the standard machinery takes over."""
        try:
            st = os.fstat(self.fd)
            if (st.st_dev, st.st_ino) == self.identity:
                return True
        except OSError:
            pass
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            self.index = {}
            return False
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) != self.identity:
            os.close(fd)
            self.index = {}
            return False
        self.fd = fd
        return True

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        entry = self.index.get(name)
        if entry is None:
            return None
        is_pkg, source, mtime_ns, size, _, _, cached = entry
        try:
            st = os.stat(source)
        except OSError:
            return None
        if st.st_mtime_ns != mtime_ns or st.st_size != size:
            return None  # edited since the bundle was written: the standard machinery loads it
        if not self._usable():
            return None
        spec = sys.modules["_frozen_importlib"].ModuleSpec(name, self, origin=source, is_package=is_pkg)
        if is_pkg:
            spec.submodule_search_locations = [os.path.dirname(source)]
        spec.has_location = True
        spec.cached = cached  # worked out when written: the import system would on every import
        return spec

    def create_module(self, spec: Any) -> None:
        return None  # the default module object

    def exec_module(self, module: ModuleType) -> None:
        _, _, _, _, offset, length, _ = self.index[module.__name__]
        exec(marshal.loads(os.pread(self.fd, length, self.base + offset)), module.__dict__)


def install(path: str) -> None:
    """Serve berth's modules from the bundle at ``path`` (nothing happens if there is none)."""
    try:
        bundle = Bundle(path)
    except (OSError, ValueError, EOFError):
        return
    sys.meta_path.insert(0, bundle)
