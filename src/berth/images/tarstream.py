"""A lean reader of tar streams for layer unpacking: headers parsed straight from decompressed chunks.

Why not :mod:`tarfile`: its stream mode copies every byte of file data through several Python buffers
and spends ~50 µs of interpreter time per entry — most of a layer apply once decompression runs on a
thread of its own. This reader keeps the decompressed chunks as they come, parses the 512-byte headers
with one ``struct`` call, and hands file contents to ``os.write`` as memoryview slices of those chunks:
no copy, and the GIL released for the whole write.

What it reads: ustar and GNU headers (names with their prefix, base-256 numbers), GNU long names and
long link names (``L``/``K``), PAX extended and global headers (``path``, ``linkpath``, ``size``,
``uid``, ``gid``, ``mtime``, ``atime`` and the rest kept in :attr:`Entry.pax_headers` — xattrs among
them). Sparse files (GNU ``S`` or PAX ``GNU.sparse.*``) and multi-volume archives are refused: image
layers never contain them. Extension headers larger than 1 MiB are refused before they are read.

The end: a zero block ends the archive, as it does for tarfile. A stream that ends right after the last
entry's data, without padding or end blocks, is complete too — Go's archive/tar (Docker, containerd,
podman) reads it so, and umoci writes such layers. A stream cut inside a header or inside an entry's
data is an error.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Iterator

from berth.errors import InvalidArgument, Unsupported

BLOCK = 512
#: Largest PAX or GNU long-name header accepted (they are read into memory whole).
MAX_HEADER = 1 << 20

REGULAR = frozenset(b"0\x007")
_KNOWN = frozenset(b"0\x0071234567")
_HEADER = struct.Struct("100s8s8s8s12s12s8sc100s6s2s32s32s8s8s155s12x")
#: The checksum field, read as eight spaces while summing a header.
_CHKSUM_SPACES = 8 * ord(" ")


class Entry:
    """One archive member, with the attribute names the layer applier uses (tarfile's own)."""

    __slots__ = ("devmajor", "devminor", "gid", "linkname", "mode", "mtime", "name", "pax_headers", "size",
                 "type", "uid")

    def __init__(self, name: str, linkname: str, type: int, mode: int, uid: int, gid: int, mtime: float,
                 size: int, devmajor: int, devminor: int, pax_headers: dict[str, str]) -> None:
        self.name = name
        self.linkname = linkname
        self.type = type
        self.mode = mode
        self.uid = uid
        self.gid = gid
        self.mtime = mtime
        self.size = size
        self.devmajor = devmajor
        self.devminor = devminor
        self.pax_headers = pax_headers

    def isreg(self) -> bool:
        return self.type in REGULAR

    def isdir(self) -> bool:
        return self.type == 0x35

    def issym(self) -> bool:
        return self.type == 0x32

    def islnk(self) -> bool:
        return self.type == 0x31

    def ischr(self) -> bool:
        return self.type == 0x33

    def isblk(self) -> bool:
        return self.type == 0x34

    def isfifo(self) -> bool:
        return self.type == 0x36

    @property
    def type_name(self) -> str:
        return chr(self.type)


def _str(field: bytes) -> str:
    end = field.find(b"\0")
    return (field if end < 0 else field[:end]).decode("utf-8", "surrogateescape")


def _num(field: bytes) -> int:
    """A numeric header field: octal text (NUL or space terminated), or GNU base-256."""
    if field and field[0] in (0x80, 0xFF):
        value = int.from_bytes(field[1:], "big")
        if field[0] == 0xFF:
            value -= 1 << (8 * (len(field) - 1))
        return value
    text = field.split(b"\0", 1)[0].strip()
    if not text:
        return 0
    try:
        return int(text, 8)
    except ValueError:
        raise InvalidArgument(f"layer has a bad tar header: invalid number {field!r}") from None


def _parse_pax(data: bytes) -> dict[str, str]:
    """PAX records: ``"<len> <key>=<value>\\n"``, the length counting the whole record."""
    out: dict[str, str] = {}
    pos = 0
    while pos < len(data) and data[pos] != 0:
        space = data.find(b" ", pos, pos + 20)
        try:
            length = int(data[pos:space]) if space > pos else 0
        except ValueError:
            length = 0
        end = pos + length
        if length <= 0 or end > len(data) or data[end - 1] != 0x0A:
            raise InvalidArgument("layer has a bad tar header: malformed PAX record")
        key, eq, value = data[space + 1:end - 1].partition(b"=")
        if not eq:
            raise InvalidArgument("layer has a bad tar header: PAX record without '='")
        out[key.decode("utf-8", "surrogateescape")] = value.decode("utf-8", "surrogateescape")
        pos = end
    return out


class TarReader:
    """Iterate over the entries of the tar stream made of the chunks ``next_chunk`` returns (b"" at the end).

    Between two entries the caller may :meth:`copy_to` or :meth:`skip` the current entry's data; what
    it leaves unread is skipped when the next entry is asked for.
    """

    def __init__(self, next_chunk: Callable[[], bytes]) -> None:
        self._next_chunk = next_chunk
        self._buf = memoryview(b"")
        self._pos = 0
        self._eof = False
        #: Bytes of the current entry's data not yet consumed, and the padding after them.
        self._remaining = 0
        self._padding = 0

    # -- the byte source ----------------------------------------------------------------------------

    def _fill(self) -> bool:
        """Make at least one byte available; False at the end of the stream."""
        while self._pos >= len(self._buf):
            if self._eof:
                return False
            chunk = self._next_chunk()
            if not chunk:
                self._eof = True
                return False
            self._buf, self._pos = memoryview(chunk), 0
        return True

    def _read(self, n: int) -> bytes:
        """Up to ``n`` bytes (fewer only at the end of the stream)."""
        parts: list[bytes] = []
        while n > 0 and self._fill():
            take = min(n, len(self._buf) - self._pos)
            parts.append(self._buf[self._pos:self._pos + take].tobytes())
            self._pos += take
            n -= take
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _discard(self, n: int) -> int:
        """Skip up to ``n`` bytes; return how many were skipped."""
        done = 0
        while done < n and self._fill():
            take = min(n - done, len(self._buf) - self._pos)
            self._pos += take
            done += take
        return done

    # -- entry data ---------------------------------------------------------------------------------

    def copy_to(self, fd: int) -> None:
        """Write the rest of the current entry's data to ``fd``."""
        while self._remaining > 0:
            if not self._fill():
                raise InvalidArgument("layer is truncated: the stream ends inside a file's data")
            take = min(self._remaining, len(self._buf) - self._pos)
            view = self._buf[self._pos:self._pos + take]
            while view:
                view = view[os.write(fd, view):]
            self._pos += take
            self._remaining -= take

    def _skip_data(self) -> None:
        if self._remaining and self._discard(self._remaining) != self._remaining:
            raise InvalidArgument("layer is truncated: the stream ends inside a file's data")
        self._remaining = 0
        # Padding missing at the very end is tolerated (see the module's docstring).
        self._discard(self._padding)
        self._padding = 0

    def _read_block_data(self, size: int, what: str) -> bytes:
        if size > MAX_HEADER:
            raise InvalidArgument(f"layer has a bad tar header: {what} of {size} bytes is too large")
        data = self._read(size)
        if len(data) != size:
            raise InvalidArgument(f"layer is truncated: the stream ends inside a {what}")
        self._discard(-size % BLOCK)
        return data

    # -- headers ------------------------------------------------------------------------------------

    def __iter__(self) -> Iterator[Entry]:
        global_pax: dict[str, str] = {}
        if not self._fill():
            raise InvalidArgument("layer is not a tar archive: it is empty")
        while True:
            self._skip_data()
            pax: dict[str, str] = {}
            long_name: str | None = None
            long_link: str | None = None
            while True:
                block = self._read(BLOCK)
                if not block:
                    return  # the end, without end-of-archive blocks
                if len(block) != BLOCK:
                    raise InvalidArgument("layer is truncated: the stream ends inside a tar header")
                if not any(block):
                    return
                fields = _HEADER.unpack(block)
                self._check_sum(block, fields[6])
                kind = fields[7][0]
                size = _num(fields[4])
                if size < 0:
                    raise InvalidArgument("layer has a bad tar header: negative size")
                if kind in (0x78, 0x58):  # x, X: PAX header for the next entry
                    pax.update(_parse_pax(self._read_block_data(size, "PAX header")))
                elif kind == 0x67:  # g: PAX global header
                    global_pax.update(_parse_pax(self._read_block_data(size, "PAX header")))
                elif kind == 0x4C:  # L: GNU long name
                    long_name = _str(self._read_block_data(size, "long name"))
                elif kind == 0x4B:  # K: GNU long link name
                    long_link = _str(self._read_block_data(size, "long link name"))
                else:
                    break
            entry = self._entry(fields, kind, size, {**global_pax, **pax} if global_pax else pax, long_name,
                                long_link)
            if entry.isreg() or kind not in _KNOWN:
                self._remaining = entry.size
                self._padding = -entry.size % BLOCK
            yield entry

    @staticmethod
    def _check_sum(block: bytes, field: bytes) -> None:
        stored = _num(field)
        unsigned = sum(block) - sum(block[148:156]) + _CHKSUM_SPACES
        if stored == unsigned:
            return
        signed = sum(struct.unpack("512b", block)) - sum(struct.unpack("8b", block[148:156])) + _CHKSUM_SPACES
        if stored != signed:
            raise InvalidArgument("layer has a bad tar header: checksum mismatch")

    @staticmethod
    def _entry(fields: tuple[bytes, ...], kind: int, size: int, pax: dict[str, str], long_name: str | None,
               long_link: str | None) -> Entry:
        if kind in (0x53, 0x4D):  # S: GNU sparse file, M: multi-volume continuation
            raise Unsupported(f"layer has a tar entry of type {chr(kind)!r} (sparse or multi-volume)")
        magic = fields[9]
        name = _str(fields[0])
        if magic == b"ustar\0" and fields[15][:1] != b"\0":
            prefix = _str(fields[15])
            if prefix:
                name = f"{prefix}/{name}"
        if long_name is not None:
            name = long_name
        linkname = long_link if long_link is not None else _str(fields[8])
        mtime: float = _num(fields[5])
        uid, gid = _num(fields[2]), _num(fields[3])
        if pax:
            if any(key.startswith("GNU.sparse.") for key in pax):
                raise Unsupported("layer has a sparse file (GNU.sparse PAX headers)")
            name = pax.get("path", name)
            linkname = pax.get("linkpath", linkname)
            try:
                size = int(pax.get("size", size))
                uid = int(pax.get("uid", uid))
                gid = int(pax.get("gid", gid))
                mtime = float(pax.get("mtime", mtime))
            except ValueError:
                raise InvalidArgument(f"layer entry {name[:200]!r}: bad number in its PAX header") from None
            if size < 0:
                raise InvalidArgument(f"layer entry {name[:200]!r}: negative size")
        if kind == 0 and name.endswith("/"):
            kind = 0x35  # an old-style directory: a regular entry named with a trailing slash
        if kind == 0x35 and len(name) > 1:
            name = name.rstrip("/")
        return Entry(name, linkname, kind if kind else 0x30, _num(fields[1]), uid, gid, mtime, size,
                     _num(fields[13]), _num(fields[14]), pax)
