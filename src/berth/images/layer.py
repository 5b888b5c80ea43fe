"""Applying an image layer — a tar changeset (image-spec layer.md) — onto a directory, safely.

:func:`apply_layer` reads the layer as a stream (gzip, zstd or plain tar, told apart by their magic
bytes; bzip2 and xz too, for ``import``), never holding more than a few buffers of it in memory, and
returns the layer's DiffID — the sha256 of the uncompressed stream, trailing padding included — computed
on the way. :func:`apply_to_mounts` applies onto a snapshot given the mounts its snapshotter returned.

Speed: one thread decompresses (gzip with ISA-L's inflate) and hashes, releasing the GIL; the caller's
thread parses the tar with :mod:`berth.images.tarstream` and writes file contents straight from the
decompressed buffers. A 307 MB, 11,100-entry layer applies in ~0.75 s here, faster than ``gzip -dc``.

What lands on disk: regular files, directories, symlinks, hardlinks, character and block devices, fifos;
numeric owners (when running as root), modes including setuid/setgid/sticky, modification times (files
after their contents, directories last, deepest first), and extended attributes from PAX headers
(``SCHILY.xattr.*``, and libarchive's ``LIBARCHIVE.xattr.*``), ``security.capability`` included.

Whiteouts: ``.wh.<name>`` deletes ``<name>`` from the layers below, ``.wh..wh..opq`` empties its
directory of lower content, whatever its position in the archive; entries of the same layer are never
hidden by its own whiteouts (layer.md). Onto a plain directory (the copying snapshotter, or a first
layer) they are deletions. Onto an overlay upper directory they become overlay's native form: a 0:0
character device, and the ``trusted.overlay.opaque=y`` xattr.

Hostile archives. Every path is cleaned lexically and must stay inside the root (``..`` that climbs
out is refused; a leading ``/`` is read as the root of the layer). Parent directories are opened with
openat2(RESOLVE_IN_ROOT | RESOLVE_NO_SYMLINKS) or walked with O_NOFOLLOW, and every entry is created
with ``*at`` calls relative to its parent's descriptor, so no symlink — from this layer or a lower one,
looping or not — is ever followed: an entry whose parent is a symlink is refused, not written through
it. Hardlink targets resolve the same way and must be in the tree. Names longer than the kernel's
limits, headers of absurd size, overlay's private xattrs (``trusted.overlay.*``, which could redirect
lookups) are refused or dropped. Device nodes that cannot be created without privilege are skipped
and reported in :attr:`ApplyResult.skipped`.
"""

from __future__ import annotations

import base64
import bz2
import contextlib
import errno
import lzma
import os
import queue
import shutil
import stat
import threading
import urllib.parse
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Protocol

import zstandard

from berth.errors import InvalidArgument, Unsupported
from berth.images.tarstream import Entry, TarReader
from berth.kernel.syscalls import RESOLVE_IN_ROOT, RESOLVE_NO_MAGICLINKS, RESOLVE_NO_SYMLINKS, openat2
from berth.oci.digest import Digest, Digester
from berth.snapshots.base import Mount


def _inflater() -> ModuleType:
    """ISA-L's zlib-compatible inflate, 2-3x faster than zlib's: decompression is the floor of unpacking
    a gzip layer. zlib (the same bytes, slower) where the isal package is missing."""
    try:
        from isal import isal_zlib
    except ImportError:  # pragma: no cover - isal is a declared dependency
        return zlib
    return isal_zlib


_inflate = _inflater()
#: What a corrupt stream raises (OSError also stands for real I/O errors: see apply_layer).
_STREAM_ERRORS: tuple[type[Exception], ...] = (EOFError, OSError, zstandard.ZstdError, lzma.LZMAError, zlib.error,
                                               _inflate.error)

WHITEOUT_PREFIX = ".wh."
WHITEOUT_META_PREFIX = ".wh..wh."
WHITEOUT_OPAQUE = ".wh..wh..opq"
OVERLAY_OPAQUE_XATTR = "trusted.overlay.opaque"

_O_PATH = getattr(os, "O_PATH", 0o10000000)
_RESOLVE = RESOLVE_IN_ROOT | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS
_NAME_MAX = 255
_PATH_MAX = 4096
_CHUNK = 1 << 20
#: Most bytes one inflate call may produce: bounds memory whatever the compression ratio.
_MAX_INFLATE = 2 << 20
_ENTRY_ERRNOS = frozenset({errno.ENOENT, errno.EEXIST, errno.ENOTDIR, errno.EISDIR, errno.ELOOP, errno.ENAMETOOLONG,
                           errno.EMLINK, errno.EINVAL, errno.ENOTEMPTY})
#: xattr namespaces a layer may not set: overlayfs's own (they steer its lookups).
_PRIVATE_XATTRS = ("trusted.overlay.", "user.overlay.")

_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\x1f\x8b", "gzip"),
    (b"\x28\xb5\x2f\xfd", "zstd"),
    (b"BZh", "bzip2"),
    (b"\xfd7zXZ\x00", "xz"),
)


class Readable(Protocol):
    def read(self, n: int = -1, /) -> bytes: ...


@dataclass
class ApplyResult:
    #: sha256 of the uncompressed tar stream: the layer's DiffID.
    diff_id: Digest
    #: Bytes of the uncompressed tar stream.
    size: int
    #: ``gzip``, ``zstd``, ``bzip2``, ``xz`` or None (plain tar).
    compression: str | None
    #: Tar entries processed (whiteouts included).
    entries: int = 0
    #: Entries not applied, each with the reason (device nodes without privilege, dropped xattrs, …).
    skipped: list[str] = field(default_factory=list)


# --- decompression ---------------------------------------------------------------------------------


def detect_compression(head: bytes) -> str | None:
    """The compression named by a stream's first bytes, or None for anything else (a plain tar)."""
    for magic, name in _MAGIC:
        if head.startswith(magic):
            return name
    return None


class _Prefixed:
    """A stream with bytes already read from it put back in front."""

    def __init__(self, head: bytes, rest: Readable) -> None:
        self._head = head
        self._rest = rest

    def read(self, n: int = -1, /) -> bytes:
        if self._head:
            if n < 0:
                data = self._head + self._rest.read()
                self._head = b""
                return data
            data, self._head = self._head[:n], self._head[n:]
            return data
        return self._rest.read(n)


class _Gunzip:
    """gzip decompression of every member of a stream (zero padding after them tolerated, as gzip's own
    reader does), with ISA-L's inflate when it is installed. Reads return whole pieces as inflated."""

    def __init__(self, raw: Readable) -> None:
        self._raw = raw
        self._d = _inflate.decompressobj(31)
        self._pending = b""
        self._pos = 0
        self._done = False

    def _more(self) -> bytes:
        while not self._done:
            if self._d.eof:
                data = self._d.unused_data
                while not data.strip(b"\0"):  # between members: nothing yet, or zero padding
                    data = self._raw.read(_CHUNK)
                    if not data:
                        self._done = True
                        return b""
                data = data.lstrip(b"\0")
                self._d = _inflate.decompressobj(31)
            else:
                data = self._d.unconsumed_tail or self._raw.read(_CHUNK)
                if not data:
                    raise EOFError("the gzip stream ends before its end-of-stream marker")
            out = self._d.decompress(data, _MAX_INFLATE)
            if out:
                return out
        return b""

    def read(self, n: int = -1, /) -> bytes:
        if n < 0:
            return b"".join(iter(lambda: self.read(_MAX_INFLATE), b""))
        if self._pos >= len(self._pending):
            self._pending, self._pos = self._more(), 0
        start = self._pos
        self._pos = min(len(self._pending), start + n)
        if start == 0 and self._pos == len(self._pending):
            return self._pending
        return self._pending[start:self._pos]


class _Hashing:
    """Reads the uncompressed stream on a thread of its own, digesting it on the way.

    Decompression (and sha256) release the GIL, as do the file-creating syscalls of the applier, so the
    two overlap as ``gzip -dc | tar -x`` does across processes. At most ``depth`` chunks are queued:
    memory stays bounded whatever the layer's size.
    """

    def __init__(self, inner: Readable, chunk: int = _MAX_INFLATE, depth: int = 4) -> None:
        self._inner = inner
        self._chunk = chunk
        self.digester = Digester()
        self._queue: queue.Queue[bytes | BaseException | None] = queue.Queue(depth)
        self._stop = threading.Event()
        self._eof = False
        self._thread = threading.Thread(target=self._produce, name="berth-layer-reader", daemon=True)
        self._thread.start()

    def _produce(self) -> None:
        try:
            while not self._stop.is_set():
                data = self._inner.read(self._chunk)
                if not data:
                    break
                self.digester.update(data)
                self._put(data)
            self._put(None)
        except BaseException as exc:
            self._put(exc)

    def _put(self, item: bytes | BaseException | None) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def next_chunk(self) -> bytes:
        """The next chunk the reading thread queued (never empty); b"" at the end. An error the
        thread met is raised here."""
        if self._eof:
            return b""
        item = self._queue.get()
        if item is None or isinstance(item, BaseException):
            self._eof = True
            if item is not None:
                raise item
            return b""
        return item

    def drain(self) -> None:
        while self.next_chunk():
            pass

    def close(self) -> None:
        self._stop.set()
        with contextlib.suppress(queue.Empty):
            while True:
                self._queue.get_nowait()
        self._thread.join()


def _read_head(stream: Readable, n: int) -> bytes:
    head = b""
    while len(head) < n:
        chunk = stream.read(n - len(head))
        if not chunk:
            break
        head += chunk
    return head


def decompressed(stream: Readable) -> tuple[Readable, str | None]:
    """Wrap ``stream`` so that reading it yields the uncompressed bytes; also name the compression."""
    head = _read_head(stream, 6)
    compression = detect_compression(head)
    raw: Any = _Prefixed(head, stream)
    if compression == "gzip":
        return _Gunzip(raw), compression
    if compression == "zstd":
        reader = zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True, closefd=False)
        return reader, compression
    if compression == "bzip2":
        return bz2.BZ2File(raw, "rb"), compression
    if compression == "xz":
        return lzma.LZMAFile(raw, "rb"), compression
    return raw, None


# --- paths -------------------------------------------------------------------------------------------


def clean_name(name: str) -> str:
    """A tar member name as a path relative to the root: ``""`` for the root, else ``a/b/c``.

    ``.`` and empty components and a leading ``/`` are dropped; ``..`` is applied lexically and may not
    climb above the root. Components over 255 bytes and paths over 4095 bytes are refused.
    """
    parts: list[str] = []
    for comp in name.split("/"):
        if comp in ("", "."):
            continue
        if comp == "..":
            if not parts:
                raise InvalidArgument(f"layer entry {name[:200]!r}: path climbs out of the root with '..'")
            parts.pop()
            continue
        if "\0" in comp:
            raise InvalidArgument(f"layer entry {name[:200]!r}: NUL byte in the name")
        if len(os.fsencode(comp)) > _NAME_MAX:
            raise InvalidArgument(f"layer entry {name[:200]!r}…: a component is longer than {_NAME_MAX} bytes")
        parts.append(comp)
    rel = "/".join(parts)
    if len(os.fsencode(rel)) >= _PATH_MAX:
        raise InvalidArgument(f"layer entry {name[:200]!r}…: path is longer than {_PATH_MAX - 1} bytes")
    return rel


def _join(parent: str, name: str) -> str:
    return f"{parent}/{name}" if parent else name


def _proc(fd: int, name: str | None = None) -> str:
    return f"/proc/self/fd/{fd}" if name is None else f"/proc/self/fd/{fd}/{name}"


def _lstat(dir_fd: int, name: str) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def _is_whiteout_device(st: os.stat_result | None) -> bool:
    return st is not None and stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


# --- applying --------------------------------------------------------------------------------------


Lowers = Sequence[str | os.PathLike[str]]


def apply_layer(stream: Readable, dest: str | os.PathLike[str], *, overlay: bool = False,
                lowers: Lowers | Callable[[], Lowers] = (), same_owner: bool | None = None,
                whiteouts: bool = True) -> ApplyResult:
    """Apply the layer read from ``stream`` onto the directory ``dest`` and return its DiffID and size.

    ``overlay`` writes whiteouts in overlayfs's native form, for ``dest`` being an overlay upper
    directory whose lower directories (nearest first) are ``lowers``: they are consulted, never
    written, to copy the metadata of parent directories the archive does not list and to copy up the
    targets of hardlinks into lower layers, and to skip whiteouts with nothing below. ``lowers`` may be a
    function, called (once) only when a lower is first needed — it may block: a pull applies a layer
    while its parent is still being applied, and most layers never need their lowers.
    ``same_owner`` (default: when running as root) applies the
    archive's numeric owners. ``whiteouts=False`` unpacks a plain archive (a build context), whose
    ``.wh.*`` names are files like any other. The archive is read to its end even when the tar ends early, so that the
    DiffID covers the whole stream. A failure leaves ``dest`` partly written: callers apply into a
    fresh snapshot and discard it.
    """
    body, compression = decompressed(stream)
    root_fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    lower_fds: list[int] = []

    def open_lowers() -> list[int]:
        for lower in lowers() if callable(lowers) else lowers:
            lower_fds.append(os.open(lower, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC))
        return lower_fds

    hashing: _Hashing | None = None
    try:
        hashing = _Hashing(body)
        applier = _Applier(root_fd, overlay, open_lowers, os.geteuid() == 0 if same_owner is None else same_owner,
                           whiteouts)
        reader = TarReader(hashing.next_chunk)
        try:
            for member in reader:
                applier.entries += 1
                applier.apply(reader, member)
            applier.finish()
        finally:
            applier.close()
        hashing.drain()
    except _STREAM_ERRORS as exc:
        if isinstance(exc, OSError) and exc.errno is not None:
            raise
        raise InvalidArgument(f"layer is not a valid {compression or 'tar'} stream: {exc}") from None
    finally:
        if hashing is not None:
            hashing.close()
        for fd in lower_fds:
            os.close(fd)
        os.close(root_fd)
    digester = hashing.digester
    return ApplyResult(digester.finish(), digester.size, compression, applier.entries, applier.skipped)


def apply_to_mounts(stream: Readable, mounts: Sequence[Mount], *, same_owner: bool | None = None) -> ApplyResult:
    """Apply a layer onto a snapshot described by its mounts, without mounting them.

    A single bind mount is a plain directory (whiteouts are deletions); a single overlay mount is
    written in its upper directory with native whiteouts, its lower directories consulted.
    """
    if len(mounts) != 1:
        raise Unsupported(f"cannot apply a layer onto {len(mounts)} mounts; expected one")
    m = mounts[0]
    if m.readonly:
        raise InvalidArgument("cannot apply a layer onto a read-only snapshot")
    if m.type == "bind":
        return apply_layer(stream, m.source, same_owner=same_owner)
    if m.type == "overlay":
        upper = m.option("upperdir")
        if upper is None:
            raise InvalidArgument("overlay mount without upperdir is read-only")
        return apply_layer(stream, m.resolve(upper), overlay=True, lowers=m.lower_dirs(), same_owner=same_owner)
    raise Unsupported(f"cannot apply a layer onto a {m.type!r} mount")


class _Applier:
    def __init__(self, root_fd: int, overlay: bool, lowers: Callable[[], list[int]], same_owner: bool,
                 whiteouts: bool) -> None:
        self.root_fd = root_fd
        self.overlay = overlay
        self._open_lowers = lowers
        self._lower_fds: list[int] | None = None
        self.same_owner = same_owner
        self.privileged = os.geteuid() == 0
        self.entries = 0
        self.skipped: list[str] = []
        #: Paths this layer created or changed: its own whiteouts never hide them.
        self.created: set[str] = set()
        #: Directory metadata applied at the end: path → (mode, atime_ns, mtime_ns).
        self.dirs: dict[str, tuple[int | None, int | None, int | None]] = {}
        self._cache_path: str | None = None
        self._cache_fd = -1
        self.root_opaque = False
        self.whiteouts = whiteouts  # False: .wh.* entries are plain files (an archive that is not a layer)

    # -- parents ----------------------------------------------------------------------------------

    def close(self) -> None:
        self._drop_cache()

    def lower_fds(self) -> list[int]:
        """Descriptors of the lower directories, nearest first, opened on first use (see apply_layer)."""
        if self._lower_fds is None:
            self._lower_fds = self._open_lowers()
        return self._lower_fds

    def _drop_cache(self) -> None:
        if self._cache_fd >= 0:
            os.close(self._cache_fd)
        self._cache_path, self._cache_fd = None, -1

    def parent_fd(self, parent: str, create: bool = True) -> int | None:
        """An O_PATH descriptor of the directory ``parent`` inside the root (cached; do not close).

        Missing directories are created when ``create``; None is returned otherwise. A symlink or a
        non-directory on the way is refused.
        """
        if parent == self._cache_path:
            return self._cache_fd
        self._drop_cache()
        try:
            fd = openat2(self.root_fd, parent or ".", _O_PATH | os.O_DIRECTORY, _RESOLVE)
        except FileNotFoundError:
            if not create:
                return None
            fd = self._make_parents(parent)
        except OSError as exc:
            raise self._bad_parent(parent, exc) from None
        self._cache_path, self._cache_fd = parent, fd
        return fd

    @staticmethod
    def _bad_parent(parent: str, exc: OSError) -> InvalidArgument:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.EXDEV):
            return InvalidArgument(
                f"layer entry under {parent!r}: a parent is a symlink or not a directory; "
                "refusing to write through it"
            )
        return InvalidArgument(f"layer entry under {parent!r}: {exc.strerror}")

    def _make_parents(self, parent: str) -> int:
        fd = os.open(".", _O_PATH | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=self.root_fd)
        done = ""
        try:
            for comp in parent.split("/"):
                done = _join(done, comp)
                try:
                    nfd = os.open(comp, _O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
                except FileNotFoundError:
                    self._implicit_dir(fd, comp, done)
                    nfd = os.open(comp, _O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
                except OSError as exc:
                    raise self._bad_parent(done, exc) from None
                os.close(fd)
                fd = nfd
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _implicit_dir(self, parent_fd: int, name: str, rel: str) -> None:
        """Create a directory the archive uses without listing it: with the metadata of the same
        directory in a lower layer when there is one (overlay would otherwise show ours), else 0755."""
        os.mkdir(name, 0o700, dir_fd=parent_fd)
        self._mark(rel)
        lower = self._lower_lookup(rel)
        if lower is None or not stat.S_ISDIR(lower[1].st_mode):
            self.dirs[rel] = (0o755, None, None)
            return
        lower_fd, st = lower
        fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent_fd)
        try:
            if self.same_owner:
                os.fchown(fd, st.st_uid, st.st_gid)
            src = openat2(lower_fd, rel, os.O_RDONLY | os.O_DIRECTORY, _RESOLVE)
            try:
                for xname in _listxattr(src):
                    if not xname.startswith(_PRIVATE_XATTRS):
                        with contextlib.suppress(OSError):
                            os.setxattr(fd, xname, os.getxattr(src, xname))
            finally:
                os.close(src)
        finally:
            os.close(fd)
        self.dirs[rel] = (stat.S_IMODE(st.st_mode), st.st_atime_ns, st.st_mtime_ns)

    def _lower_lookup(self, rel: str) -> tuple[int, os.stat_result] | None:
        """The nearest lower layer holding ``rel`` (stopping at a whiteout), with its lstat."""
        parent, _, name = rel.rpartition("/")
        for lower_fd in self.lower_fds():
            try:
                pfd = openat2(lower_fd, parent or ".", _O_PATH | os.O_DIRECTORY, _RESOLVE)
            except OSError:
                continue
            try:
                st = _lstat(pfd, name)
            finally:
                os.close(pfd)
            if st is None:
                continue
            if _is_whiteout_device(st):
                return None
            return lower_fd, st
        return None

    # -- entries ----------------------------------------------------------------------------------

    def apply(self, reader: TarReader, m: Entry) -> None:
        try:
            self._apply(reader, m)
        except OSError as exc:
            # What the archive asked for is impossible here (a link to a path it removed, an owner a user
            # namespace does not map, …): the layer's fault, named by its entry. I/O errors stay OSError.
            if exc.errno in _ENTRY_ERRNOS:
                raise InvalidArgument(f"layer entry {m.name[:200]!r}: {exc.strerror}") from None
            raise

    def _apply(self, reader: TarReader, m: Entry) -> None:
        rel = clean_name(m.name)
        if rel == "":
            if m.isdir():
                self._root_dir(m)
            else:
                self.skipped.append(f"{m.name}: the root of a layer can only be a directory")
            return
        parent, _, name = rel.rpartition("/")
        if name.startswith(WHITEOUT_PREFIX) and self.whiteouts:
            self._whiteout(parent, name, m)
            return
        if m.isreg():
            self._file(reader, m, parent, name, rel)
        elif m.isdir():
            self._dir(m, parent, name, rel)
        elif m.issym():
            self._symlink(m, parent, name, rel)
        elif m.islnk():
            self._hardlink(m, parent, name, rel)
        elif m.ischr() or m.isblk() or m.isfifo():
            self._node(m, parent, name, rel)
        else:
            self.skipped.append(f"{m.name}: unsupported tar entry type {m.type_name!r}")

    def _replace(self, pfd: int, name: str, keep_dir: bool = False) -> os.stat_result | None:
        """Clear the way for a new entry ``name``; return what was there (a kept directory stays)."""
        st = _lstat(pfd, name)
        if st is None:
            return None
        if stat.S_ISDIR(st.st_mode):
            if not keep_dir:
                shutil.rmtree(name, dir_fd=pfd)
        else:
            os.unlink(name, dir_fd=pfd)
        return st

    def _file(self, reader: TarReader, m: Entry, parent: str, name: str, rel: str) -> None:
        pfd = self._parent(parent)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        try:  # create first, look only on a clash: one syscall fewer per entry in the common case
            fd = os.open(name, flags, 0o600, dir_fd=pfd)
        except FileExistsError:
            self._replace(pfd, name)
            fd = os.open(name, flags, 0o600, dir_fd=pfd)
        try:
            reader.copy_to(fd)
            self._owner_mode_xattrs(fd, m)
            os.utime(fd, ns=_times(m))
        finally:
            os.close(fd)
        self._mark(rel)

    def _dir(self, m: Entry, parent: str, name: str, rel: str) -> None:
        pfd = self._parent(parent)
        old = None
        try:
            os.mkdir(name, 0o700, dir_fd=pfd)
        except FileExistsError:
            old = self._replace(pfd, name, keep_dir=True)
            if old is None or not stat.S_ISDIR(old.st_mode):
                os.mkdir(name, 0o700, dir_fd=pfd)
        fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=pfd)
        try:
            if self.same_owner:
                os.fchown(fd, m.uid, m.gid)
            self._xattrs(fd, m, follow=True)
            if self.overlay and _is_whiteout_device(old):
                # This layer deleted the directory, then made a new one: hide the lower one's contents.
                os.setxattr(fd, OVERLAY_OPAQUE_XATTR, b"y")
        finally:
            os.close(fd)
        atime, mtime = _times(m)
        self.dirs[rel] = (m.mode & 0o7777, atime, mtime)
        self._mark(rel)

    def _root_dir(self, m: Entry) -> None:
        if self.same_owner:
            os.fchown(self.root_fd, m.uid, m.gid)
        self._xattrs(self.root_fd, m, follow=True)
        atime, mtime = _times(m)
        self.dirs[""] = (m.mode & 0o7777, atime, mtime)

    def _symlink(self, m: Entry, parent: str, name: str, rel: str) -> None:
        if len(os.fsencode(m.linkname)) >= _PATH_MAX or "\0" in m.linkname:
            raise InvalidArgument(f"layer entry {m.name[:200]!r}: symlink target is too long or has a NUL")
        pfd = self._parent(parent)
        try:
            os.symlink(m.linkname, name, dir_fd=pfd)
        except FileExistsError:
            self._replace(pfd, name)
            os.symlink(m.linkname, name, dir_fd=pfd)
        if self.same_owner:
            os.chown(name, m.uid, m.gid, dir_fd=pfd, follow_symlinks=False)
        self._xattrs(_proc(pfd, name), m, follow=False)
        os.utime(name, ns=_times(m), dir_fd=pfd, follow_symlinks=False)
        self._mark(rel)

    def _hardlink(self, m: Entry, parent: str, name: str, rel: str) -> None:
        target = clean_name(m.linkname)
        if not target:
            raise InvalidArgument(f"layer entry {m.name[:200]!r}: hardlink to the root directory")
        tparent, _, tname = target.rpartition("/")
        tpfd = self.parent_fd(tparent, create=False)
        tst = None if tpfd is None else _lstat(tpfd, tname)
        if tst is None and self.overlay:
            self._copy_up(target)
            tst = self._parent_lstat(tparent, tname)
        if tst is None:
            raise InvalidArgument(
                f"layer entry {m.name[:200]!r}: hardlink target {m.linkname[:200]!r} is not in the layer"
            )
        if stat.S_ISDIR(tst.st_mode):
            raise InvalidArgument(f"layer entry {m.name[:200]!r}: hardlink to a directory")
        # Both parents resolved without symlinks: hold our own descriptor of the target's directory,
        # since opening the link's parent may replace the cached one.
        tpfd = openat2(self.root_fd, tparent or ".", _O_PATH | os.O_DIRECTORY, _RESOLVE)
        try:
            pfd = self._parent(parent)
            st = _lstat(pfd, name)
            if st is not None and (st.st_dev, st.st_ino) == (tst.st_dev, tst.st_ino):
                return
            self._replace(pfd, name)
            os.link(tname, name, src_dir_fd=tpfd, dst_dir_fd=pfd, follow_symlinks=False)
        finally:
            os.close(tpfd)
        self._mark(rel)

    def _parent_lstat(self, parent: str, name: str) -> os.stat_result | None:
        pfd = self.parent_fd(parent, create=False)
        return None if pfd is None else _lstat(pfd, name)

    def _copy_up(self, rel: str) -> None:
        """Copy a lower layer's non-directory ``rel`` into the upper directory (for a hardlink to it)."""
        found = self._lower_lookup(rel)
        if found is None or stat.S_ISDIR(found[1].st_mode):
            return
        lower_fd, st = found
        parent, _, name = rel.rpartition("/")
        pfd = self._parent(parent)
        lpfd = openat2(lower_fd, parent or ".", _O_PATH | os.O_DIRECTORY, _RESOLVE)
        try:
            if stat.S_ISREG(st.st_mode):
                src = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=lpfd)
                try:
                    dst = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                                  0o600, dir_fd=pfd)
                    try:
                        while chunk := os.read(src, _CHUNK):
                            view = memoryview(chunk)
                            while view:
                                view = view[os.write(dst, view):]
                        if self.same_owner:
                            os.fchown(dst, st.st_uid, st.st_gid)
                        os.fchmod(dst, stat.S_IMODE(st.st_mode))
                        for xname in _listxattr(src):
                            if not xname.startswith(_PRIVATE_XATTRS):
                                os.setxattr(dst, xname, os.getxattr(src, xname))
                        os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns))
                    finally:
                        os.close(dst)
                finally:
                    os.close(src)
            elif stat.S_ISLNK(st.st_mode):
                os.symlink(os.readlink(name, dir_fd=lpfd), name, dir_fd=pfd)
                if self.same_owner:
                    os.chown(name, st.st_uid, st.st_gid, dir_fd=pfd, follow_symlinks=False)
            else:
                os.mknod(name, stat.S_IFMT(st.st_mode) | 0o600, st.st_rdev, dir_fd=pfd)
                if self.same_owner:
                    os.chown(name, st.st_uid, st.st_gid, dir_fd=pfd, follow_symlinks=False)
                os.chmod(name, stat.S_IMODE(st.st_mode), dir_fd=pfd)
        finally:
            os.close(lpfd)
        self._mark(rel)

    def _node(self, m: Entry, parent: str, name: str, rel: str) -> None:
        kind = stat.S_IFCHR if m.ischr() else stat.S_IFBLK if m.isblk() else stat.S_IFIFO
        pfd = self._parent(parent)
        self._replace(pfd, name)
        try:
            os.mknod(name, kind | 0o600, os.makedev(m.devmajor, m.devminor) if kind != stat.S_IFIFO else 0,
                     dir_fd=pfd)
        except PermissionError:
            # Without CAP_MKNOD (rootless, a user namespace): skipped, as Docker and Podman do there.
            self.skipped.append(f"{m.name}: device node needs privilege")
            return
        fd = os.open(name, _O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=pfd)
        try:
            path = _proc(fd)
            if self.same_owner:
                os.chown(path, m.uid, m.gid)
            os.chmod(path, m.mode & 0o7777)
            self._xattrs(path, m, follow=True)
            os.utime(path, ns=_times(m))
        finally:
            os.close(fd)
        self._mark(rel)

    def _mark(self, rel: str) -> None:
        """Record ``rel`` and its ancestors as this layer's: its own whiteouts and opaques spare them."""
        created = self.created
        while rel and rel not in created:
            created.add(rel)
            rel = rel.rpartition("/")[0]

    def _parent(self, parent: str) -> int:
        fd = self.parent_fd(parent)
        assert fd is not None
        return fd

    # -- metadata -----------------------------------------------------------------------------------

    def _owner_mode_xattrs(self, fd: int, m: Entry) -> None:
        # Owner first: chown clears setuid/setgid bits and security.capability.
        if self.same_owner:
            os.fchown(fd, m.uid, m.gid)
        os.fchmod(fd, m.mode & 0o7777)
        self._xattrs(fd, m, follow=True)

    def _xattrs(self, target: int | str, m: Entry, follow: bool) -> None:
        if not m.pax_headers:
            return
        for xname, value in _pax_xattrs(m.pax_headers):
            if xname.startswith(_PRIVATE_XATTRS):
                self.skipped.append(f"{m.name}: xattr {xname} is reserved for overlayfs")
                continue
            try:
                os.setxattr(target, xname, value, follow_symlinks=follow)
            except OSError as exc:
                if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP) or (
                    exc.errno == errno.EPERM and (not self.privileged or not follow)
                ):
                    self.skipped.append(f"{m.name}: xattr {xname}: {exc.strerror}")
                    continue
                raise

    # -- whiteouts ----------------------------------------------------------------------------------

    def _whiteout(self, parent: str, name: str, m: Entry) -> None:
        if name == WHITEOUT_OPAQUE:
            self._opaque(parent)
            return
        if name.startswith(WHITEOUT_META_PREFIX):
            self.skipped.append(f"{m.name}: aufs metadata")
            return
        target = name[len(WHITEOUT_PREFIX):]
        if not target or target in (".", ".."):
            raise InvalidArgument(f"layer entry {m.name[:200]!r}: malformed whiteout")
        rel = _join(parent, target)
        if rel in self.created:
            # A whiteout hides lower layers only, never this layer's own entries. If this layer made a
            # directory there, what the lower layers had under it is hidden all the same — as it is
            # when the whiteout comes first and the directory is made afresh after it.
            pfd = self._parent(parent)
            st = _lstat(pfd, target)
            if st is not None and stat.S_ISDIR(st.st_mode):
                self._opaque(rel)
            return
        if self.overlay:
            if self.parent_fd(parent, create=False) is None and not self._in_lower(parent):
                return  # nothing below to hide
            pfd = self._parent(parent)
            self._replace(pfd, target)
            os.mknod(target, stat.S_IFCHR | 0o600, 0, dir_fd=pfd)
            return
        pfd_or_none = self.parent_fd(parent, create=False)
        if pfd_or_none is not None:
            self._replace(pfd_or_none, target)

    def _in_lower(self, rel: str) -> bool:
        if not rel:
            return True
        found = self._lower_lookup(rel)
        return found is not None and stat.S_ISDIR(found[1].st_mode)

    def _opaque(self, parent: str) -> None:
        if self.overlay and not parent:
            self.root_opaque = True  # overlayfs ignores the opaque xattr on its root: see finish()
            return
        pfd = self._parent(parent)
        if self.overlay:
            os.setxattr(_proc(pfd), OVERLAY_OPAQUE_XATTR, b"y")
            self._mark(parent)
            return
        self._empty_lower(pfd, parent)
        self._mark(parent)

    def _hide_lower_root(self) -> None:
        """An opaque root in overlay form: overlayfs does not honour ``trusted.overlay.opaque`` on the
        upper root, so each top-level name of the lower layers is hidden one by one — by a whiteout,
        or, where this layer has a directory of that name, by making that directory opaque."""
        names: set[str] = set()
        for lower_fd in self.lower_fds():
            names.update(os.listdir(lower_fd))
        for name in sorted(names):
            st = _lstat(self.root_fd, name)
            if st is None:
                os.mknod(name, stat.S_IFCHR | 0o600, 0, dir_fd=self.root_fd)
            elif stat.S_ISDIR(st.st_mode):
                fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self.root_fd)
                try:
                    os.setxattr(fd, OVERLAY_OPAQUE_XATTR, b"y")
                finally:
                    os.close(fd)

    def _empty_lower(self, dir_fd: int, rel: str) -> None:
        """Delete what a lower layer put under ``rel``, keeping what this layer created there."""
        fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=dir_fd)
        try:
            with os.scandir(fd) as it:
                names = [e.name for e in it]
            for name in names:
                child = _join(rel, name)
                st = _lstat(fd, name)
                if st is None:
                    continue
                if child in self.created:
                    if stat.S_ISDIR(st.st_mode):
                        cfd = os.open(name, _O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
                        try:
                            self._empty_lower(cfd, child)
                        finally:
                            os.close(cfd)
                    continue
                if stat.S_ISDIR(st.st_mode):
                    shutil.rmtree(name, dir_fd=fd)
                else:
                    os.unlink(name, dir_fd=fd)
        finally:
            os.close(fd)

    # -- the end ------------------------------------------------------------------------------------

    def finish(self) -> None:
        """Directory modes and times, deepest first, now that nothing more is created in them."""
        if self.root_opaque:
            self._hide_lower_root()
        self._drop_cache()
        for rel in sorted(self.dirs, key=lambda p: p.count("/") + (1 if p else 0), reverse=True):
            mode, atime, mtime = self.dirs[rel]
            try:
                fd = openat2(self.root_fd, rel or ".", os.O_RDONLY | os.O_DIRECTORY, _RESOLVE)
            except OSError:
                continue  # replaced or removed by a later entry
            try:
                if mode is not None:
                    os.fchmod(fd, mode)
                if mtime is not None:
                    os.utime(fd, ns=(atime if atime is not None else mtime, mtime))
            finally:
                os.close(fd)


def _times(m: Entry) -> tuple[int, int]:
    mtime = int(m.mtime * 1_000_000_000)
    atime = m.pax_headers.get("atime") if m.pax_headers else None
    try:
        atime_ns = int(float(atime) * 1_000_000_000) if atime else mtime
    except ValueError:
        atime_ns = mtime
    return atime_ns, mtime


def _pax_xattrs(headers: Mapping[str, str]) -> Iterable[tuple[str, bytes]]:
    for key, value in headers.items():
        if key.startswith("SCHILY.xattr."):
            yield key[len("SCHILY.xattr."):], value.encode("utf-8", "surrogateescape")
        elif key.startswith("LIBARCHIVE.xattr."):
            try:
                raw = base64.b64decode(value + "=" * (-len(value) % 4))
            except ValueError:
                continue
            yield urllib.parse.unquote(key[len("LIBARCHIVE.xattr."):]), raw


def _listxattr(fd: int) -> list[str]:
    try:
        return os.listxattr(fd)
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            return []
        raise

