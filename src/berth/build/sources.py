"""Where COPY, ADD and RUN --mount take files from: the context, an image's root (mounted read-only),
a URL. Paths are resolved inside their root (openat2 ``RESOLVE_IN_ROOT``), so a symlink in the context
or in an image never leads to the host's files; the last component of a source is taken as it is (a
symlink is copied as a symlink).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import os
import posixpath
import shutil
import stat
import tarfile
import time
from dataclasses import dataclass
from typing import Any

from berth.errors import InvalidArgument, NotFound, Unsupported


@dataclass
class Entry:
    name: str
    kind: str  # file, dir, symlink, tarmember
    path: str | None
    data: bytes | None
    mode: int
    mtime: float
    link: str = ""
    member: tarfile.TarInfo | None = None

    @classmethod
    def of(cls, name: str, path: str) -> Entry:
        st = os.lstat(path)
        mode = stat.S_IMODE(st.st_mode)
        if stat.S_ISDIR(st.st_mode):
            return cls(name, "dir", path, None, mode, st.st_mtime)
        if stat.S_ISLNK(st.st_mode):
            return cls(name, "symlink", path, None, mode, st.st_mtime, os.readlink(path))
        if stat.S_ISREG(st.st_mode):
            return cls(name, "file", path, None, mode, st.st_mtime)
        raise Unsupported(f"cannot copy {path}: not a file, directory or symlink")

    def meta(self, uid: int, gid: int, mode: int | None) -> list[Any]:
        size = len(self.data) if self.data is not None else (
            os.path.getsize(self.path) if self.kind == "file" and self.path else 0)
        return [self.name, self.kind, mode if mode is not None and self.kind != "symlink" else self.mode,
                uid, gid, self.link, size]

    def add(self, tf: tarfile.TarFile, uid: int, gid: int, mode: int | None, clamp: Any,
            archives: dict[str, tarfile.TarFile]) -> None:
        """Write the entry to ``tf``; ``archives`` holds the ADD archives opened so far (by path)."""
        if self.member is not None:
            assert self.path is not None
            src = archives.get(self.path)
            if src is None:
                src = archives[self.path] = tarfile.open(self.path, mode="r:")  # noqa: SIM115 - the caller closes it
            ti = copy.copy(self.member)
            ti.name, ti.linkname, ti.mtime = self.name, self.link if ti.islnk() else ti.linkname, clamp(ti.mtime)
            ti.pax_headers = {k: v for k, v in ti.pax_headers.items() if k not in ("path", "linkpath", "mtime")}
            tf.addfile(ti, src.extractfile(self.member) if ti.isfile() else None)
            return
        ti = tarfile.TarInfo(self.name)
        ti.uid, ti.gid = uid, gid
        ti.mtime = clamp(self.mtime)
        ti.mode = mode if mode is not None and self.kind != "symlink" else self.mode
        if self.kind == "dir":
            ti.type = tarfile.DIRTYPE
            tf.addfile(ti)
        elif self.kind == "symlink":
            ti.type, ti.linkname = tarfile.SYMTYPE, self.link
            tf.addfile(ti)
        elif self.data is not None:
            ti.size = len(self.data)
            tf.addfile(ti, io.BytesIO(self.data))
        else:
            assert self.path is not None
            with open(self.path, "rb") as f:
                ti.size = os.fstat(f.fileno()).st_size
                tf.addfile(ti, f)


def is_archive(path: str) -> bool:
    try:
        with tarfile.open(path, mode="r:*") as tf:
            return tf.next() is not None
    except (tarfile.TarError, OSError, EOFError):
        return False


def _gzip(path: str) -> Any:
    import gzip

    return gzip.open(path, "rb")


def _bzip2(path: str) -> Any:
    import bz2

    return bz2.open(path, "rb")


def _xz(path: str) -> Any:
    import lzma

    return lzma.open(path, "rb")


#: The compressions ADD undoes (Docker's: gzip, bzip2, xz), by their magic bytes.
_COMPRESSED = {b"\x1f\x8b": _gzip, b"BZh": _bzip2, b"\xfd7zXZ": _xz}


def archive_entries(path: str, dest: str, directory: str) -> list[Entry]:
    """The members of the archive ``path`` as entries under ``dest``. A compressed archive is first
    decompressed to a plain tar in ``directory``, so writing the members reads each one directly."""
    from berth.images.layer import clean_name

    plain = path
    with open(path, "rb") as f:
        head = f.read(6)
    opener = next((o for magic, o in _COMPRESSED.items() if head.startswith(magic)), None)
    if opener is not None:
        plain = os.path.join(directory, f"archive-{os.urandom(8).hex()}.tar")
        with opener(path) as src, open(plain, "wb") as out:
            shutil.copyfileobj(src, out, 1 << 20)
    out_entries = []
    with tarfile.open(plain, mode="r:") as tf:
        for m in tf:
            name = clean_name(m.name)
            if not name:
                continue
            link = posixpath.join(dest, clean_name(m.linkname)).lstrip("/") if m.islnk() else ""
            out_entries.append(Entry(posixpath.join(dest, name).lstrip("/"), "tarmember", plain, None, m.mode,
                                     m.mtime, link, m))
    return out_entries


def hash_file(digest: Any, path: str) -> None:
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)


def in_root(root: str, rel: str, what: str) -> str:
    """The host path of ``rel`` under ``root``, symlinks resolved inside ``root`` (never out of it)."""
    from berth.kernel.syscalls import RESOLVE_IN_ROOT, RESOLVE_NO_MAGICLINKS, openat2

    root_fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fd = openat2(root_fd, rel or ".", os.O_PATH, RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)
    except OSError as exc:
        raise NotFound(f"{what}: {exc.strerror or exc}") from None
    finally:
        os.close(root_fd)
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    finally:
        os.close(fd)


def copy_entry(src: str, dst: str) -> None:
    """Copy one file, directory (not its contents) or symlink, keeping mode, owner and times."""
    st = os.lstat(src)
    if stat.S_ISDIR(st.st_mode):
        os.makedirs(dst, exist_ok=True)
    elif stat.S_ISLNK(st.st_mode):
        os.symlink(os.readlink(src), dst)
    else:
        shutil.copyfile(src, dst, follow_symlinks=False)
    os.lchown(dst, st.st_uid, st.st_gid)
    if not stat.S_ISLNK(st.st_mode):
        os.chmod(dst, stat.S_IMODE(st.st_mode))
    os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)


def resolve_in(root: str, src: str) -> list[str]:
    """The paths a COPY --from source names in an image's root (wildcards expanded, resolved inside it)."""
    import fnmatch

    rel = posixpath.normpath("/" + src).lstrip("/")
    rel = "" if rel == "." else rel
    if not any(c in rel for c in "*?["):
        if not os.path.lexists(host_path(root, rel, f"COPY --from: {src}")):
            raise NotFound(f"COPY --from: {src} not found in the source image")
        return [rel]
    found = [""]
    for part in rel.split("/"):
        nxt = []
        for base in found:
            d = in_root(root, base, f"COPY --from: {src}")
            if os.path.isdir(d):
                nxt += [posixpath.join(base, n) for n in sorted(os.listdir(d)) if fnmatch.fnmatchcase(n, part)]
        found = nxt
    if not found:
        raise NotFound(f"COPY --from: no files match {src}")
    return found


def host_path(root: str, rel: str, what: str) -> str:
    """``rel`` under ``root``, its parent directories resolved inside ``root``; the last component is
    kept as it is (a symlink is copied as a symlink)."""
    if not rel:
        return root
    parent, name = posixpath.split(rel)
    return os.path.join(in_root(root, parent, what), name)


def is_git(src: str) -> bool:
    return src.startswith(("git@", "git://")) or (src.startswith(("http://", "https://")) and (
        src.split("#", 1)[0].endswith(".git")))


def download(url: str, dest: str, dest_dir: bool, checksum: str | None, directory: str) -> Entry:
    """ADD from a URL: the file, mode 0600, its time the server's Last-Modified (as Docker does);
    with ``--checksum=sha256:...`` the content must match. Not extracted even if it is an archive."""
    import email.utils
    import urllib.error
    import urllib.parse
    import urllib.request

    name = posixpath.basename(urllib.parse.urlsplit(url).path)
    if dest_dir and not name:
        raise InvalidArgument(f"ADD {url}: cannot tell a file name from the URL; give a destination file name")
    path = os.path.join(directory, "download")
    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=120) as resp, open(path, "wb") as f:
            while chunk := resp.read(1 << 20):
                f.write(chunk)
                digest.update(chunk)
            modified = resp.headers.get("Last-Modified")
    except urllib.error.HTTPError as exc:
        raise NotFound(f"ADD {url}: the server answered {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise NotFound(f"ADD {url}: {getattr(exc, 'reason', exc)}") from None
    got = f"sha256:{digest.hexdigest()}"
    if checksum is not None and checksum != got:
        raise InvalidArgument(f"ADD {url}: the content's digest is {got}, not the --checksum {checksum}")
    mtime = time.time()
    if modified:
        with contextlib.suppress(TypeError, ValueError):
            mtime = email.utils.parsedate_to_datetime(modified).timestamp()
    target = posixpath.join(dest, name) if dest_dir else dest
    return Entry(target.lstrip("/"), "file", path, None, 0o600, mtime)
