"""The lean tar reader against Python's tarfile on the same archives (ustar, GNU, PAX) and bad streams."""

from __future__ import annotations

import io
import os
import tarfile

import pytest

from berth.errors import InvalidArgument, Unsupported
from berth.images.tarstream import Entry, TarReader

pytestmark = pytest.mark.unit


def _archive(fmt: int, *, end_blocks: bool = True) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:
        def add(name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"", **attrs: object) -> None:
            info = tarfile.TarInfo(name)
            info.type = kind
            info.size = len(data) if kind == tarfile.REGTYPE else 0
            info.mtime = 1_700_000_000
            info.mode = 0o4755 if kind == tarfile.REGTYPE else 0o755
            for key, value in attrs.items():
                setattr(info, key, value)
            tf.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)

        add("dir", tarfile.DIRTYPE)
        add("dir/small", data=b"hello")
        add("dir/block-exact", data=b"x" * 1024)
        add("d/" + "n" * 90 + "/" + "m" * 90 + "/file", data=b"deep")  # ustar prefix, GNU/PAX long name
        add("link", tarfile.SYMTYPE, linkname="dir/" + "t" * 120 if fmt != tarfile.USTAR_FORMAT else "dir/small")
        add("hard", tarfile.LNKTYPE, linkname="dir/small")
        add("dev", tarfile.CHRTYPE, devmajor=1, devminor=3)
        add("fifo", tarfile.FIFOTYPE)
        add("owned", data=b"o", uid=2_000_000 if fmt != tarfile.USTAR_FORMAT else 1000, gid=7)
        if fmt == tarfile.PAX_FORMAT:
            add("cap", data=b"c", pax_headers={"SCHILY.xattr.security.capability": "\x01\x00\x00\x02\udcff",
                                               "atime": "1600000000.5"})
    data = buf.getvalue()
    if not end_blocks:
        data = data.rstrip(b"\0")
    return data


def _ours(data: bytes, chunk: int) -> list[tuple[Entry, bytes]]:
    pieces = [data[i:i + chunk] for i in range(0, len(data), chunk)]
    feed = iter(pieces)
    reader = TarReader(lambda: next(feed, b""))
    out = []
    for entry in reader:
        if entry.isreg():
            r, w = os.pipe()
            try:
                reader.copy_to(w)
                os.close(w)
                w = -1
                body = os.read(r, 1 << 20)
            finally:
                os.close(r)
                if w >= 0:
                    os.close(w)
        else:
            body = b""
        out.append((entry, body))
    return out


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
@pytest.mark.parametrize("chunk", [1, 511, 4096, 1 << 20])
def test_reads_what_tarfile_reads(fmt: int, chunk: int) -> None:
    data = _archive(fmt)
    expected = []
    with tarfile.open(fileobj=io.BytesIO(data), mode="r|") as tf:
        for m in tf:
            f = tf.extractfile(m) if m.isreg() else None
            expected.append((m, f.read() if f is not None else b""))
    got = _ours(data, chunk)
    assert len(got) == len(expected)
    for (e, body), (m, want) in zip(got, expected, strict=True):
        assert (e.name, e.linkname, e.mode, e.uid, e.gid, e.size) == (m.name, m.linkname, m.mode, m.uid, m.gid,
                                                                      m.size)
        assert (e.isreg(), e.isdir(), e.issym(), e.islnk(), e.ischr(), e.isfifo()) == (
            m.isreg(), m.isdir(), m.issym(), m.islnk(), m.ischr(), m.isfifo())
        assert e.mtime == m.mtime and (e.devmajor, e.devminor) == (m.devmajor, m.devminor)
        assert body == want
        for key, value in m.pax_headers.items():
            assert e.pax_headers[key] == value


def test_stream_without_end_blocks_is_complete() -> None:
    got = _ours(_archive(tarfile.PAX_FORMAT, end_blocks=False), 4096)
    assert got[-1][0].name == "cap" and got[-1][1] == b"c"


@pytest.mark.parametrize("cut", [100, 512 + 3, 700])
def test_truncated_streams_are_errors(cut: int) -> None:
    data = _archive(tarfile.GNU_FORMAT)
    with pytest.raises(InvalidArgument, match="truncated"):
        _ours(data[:cut], 512)


def test_bad_checksum_and_empty_stream() -> None:
    data = bytearray(_archive(tarfile.GNU_FORMAT))
    data[0] ^= 0x01
    with pytest.raises(InvalidArgument, match="checksum"):
        _ours(bytes(data), 512)
    with pytest.raises(InvalidArgument, match="empty"):
        _ours(b"", 512)


def test_oversized_extension_header_is_refused_unread() -> None:
    info = tarfile.TarInfo("././@LongLink")
    info.type = tarfile.GNUTYPE_LONGNAME
    info.size = 1 << 30
    header = info.tobuf(tarfile.GNU_FORMAT)
    with pytest.raises(InvalidArgument, match="too large"):
        _ours(header + b"\0" * 4096, 512)


def test_sparse_files_are_refused() -> None:
    info = tarfile.TarInfo("sparse")
    info.type = tarfile.GNUTYPE_SPARSE
    with pytest.raises(Unsupported, match="sparse"):
        _ours(info.tobuf(tarfile.GNU_FORMAT) + b"\0" * 1024, 512)
