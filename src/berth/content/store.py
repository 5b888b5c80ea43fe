"""The content store: blobs on disk addressed by their digest, written through resumable ingests.

Layout under ``root``::

    blobs/<algorithm>/<hex>      committed blobs, read-only (0444), never modified
    ingest/<sha256(ref)>/        one in-progress write per ingest ref
        lock                     flock(2)ed by the writer that owns the ref
        meta.json                the ref, expected digest and size, start time
        data                     the bytes received so far
    gc.lock                      commits hold it shared, the garbage collector exclusively

Writing: :meth:`ContentStore.writer` opens (or re-opens, at its current offset) the ingest of a *ref*,
a caller-chosen name such as ``pull-<digest>``. :meth:`Writer.commit` checks the size and digest, fsyncs,
and renames the data into ``blobs/`` atomically; on a mismatch it removes the ingest and raises
InvalidArgument, so nothing of the bad content is kept. Closing without committing keeps the partial data
for a later writer of the same ref to resume.

Reading while writing: :meth:`Writer.follow` gives a reader of an ingest's bytes from its start, as they
arrive — a pull unpacks a layer while it downloads. Its end comes only after :meth:`Writer.commit` has
verified the whole blob; if the ingest fails, restarts (a truncate) or closes uncommitted, the reader
raises :class:`IngestFailed`, so a consumer can never finish on unverified bytes.

Concurrency between processes: each ingest ref has a lock file taken with ``flock``. A second writer of
the same ref gets :class:`~berth.errors.Conflict` at once, or, when ``timeout`` is given, waits up to that
many seconds for the ref to be free — by then the first writer has usually committed, and the second
gets :class:`~berth.errors.AlreadyExists`. Readers never lock: blobs appear by atomic rename and are
never rewritten.

Garbage collection (:meth:`ContentStore.gc`) is mark and sweep from roots the caller supplies. It cannot
know about blobs a concurrent pull has committed but not yet recorded in an image: callers serialise GC
against such operations (the engine's lock) or pass ``blob_min_age``.
"""

from __future__ import annotations

import errno
import fcntl
import os
import time

from berth.errors import AlreadyExists, Conflict, InvalidArgument, NotFound
from berth.fsutil import file_lock
from berth.oci import jsonc
from berth.oci.digest import ALGORITHMS, Digest, Digester
from berth.record import record

# Reading a blob is on `berth run`'s path: pathlib, typing, hashlib and threading (~6 ms of imports)
# stay off it — paths are strings inside, and the writer's modules load when an ingest starts.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator
    from pathlib import Path
    from typing import Any, BinaryIO

_CHUNK = 1 << 20
_POLL = 0.02
#: Stale ingests (nobody wrote to them for this long) are removed by gc().
DEFAULT_INGEST_MAX_AGE = 24 * 3600.0


class IngestFailed(InvalidArgument):
    """What a :meth:`Writer.follow` reader raises when its ingest did not end in a verified commit."""


class IngestRestarted(IngestFailed):
    """The ingest was truncated (a registry that cannot resume): what was read is no longer its data."""


@record(frozen=True)
class BlobInfo:
    digest: Digest
    size: int
    #: When the blob was committed (seconds since the epoch).
    committed_at: float


@record(frozen=True)
class IngestStatus:
    ref: str
    offset: int
    expected: Digest | None
    total: int | None
    started_at: float
    updated_at: float


@record(frozen=True)
class Usage:
    blob_count: int
    blob_bytes: int
    ingest_count: int
    ingest_bytes: int

    @property
    def total_bytes(self) -> int:
        return self.blob_bytes + self.ingest_bytes


class ContentStore:
    """Content-addressed blobs under ``root`` (see the module docstring for layout and locking)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self._root = os.path.abspath(root)
        self._blobs = os.path.join(self._root, "blobs")
        self._ingest = os.path.join(self._root, "ingest")
        for d in (self._root, self._blobs, self._ingest):
            os.makedirs(d, mode=0o700 if d is self._root else 0o755, exist_ok=True)

    @property
    def root(self) -> Path:
        from pathlib import Path

        return Path(self._root)

    # -- paths --------------------------------------------------------------------------------------

    def blob_path(self, digest: Digest) -> Path:
        """Where the blob lives (whether or not it exists). For unpackers that want to mmap or sendfile."""
        from pathlib import Path

        return Path(self._blob_file(digest))

    def _blob_file(self, digest: Digest) -> str:
        if not isinstance(digest, Digest):
            raise InvalidArgument(f"expected a Digest, got {type(digest).__name__}")
        return os.path.join(self._blobs, digest.algorithm, digest.encoded)

    def _ingest_dir(self, ref: str) -> str:
        import hashlib

        return os.path.join(self._ingest, hashlib.sha256(ref.encode()).hexdigest())

    # -- reading ------------------------------------------------------------------------------------

    def exists(self, digest: Digest) -> bool:
        return os.path.isfile(self._blob_file(digest))

    def info(self, digest: Digest) -> BlobInfo:
        try:
            st = os.stat(self._blob_file(digest))
        except FileNotFoundError:
            raise NotFound(f"blob {digest} not found") from None
        return BlobInfo(digest, st.st_size, st.st_mtime)

    def open(self, digest: Digest) -> BinaryIO:
        """The blob opened for reading (binary, seekable). Raises NotFound."""
        try:
            return open(self._blob_file(digest), "rb")
        except FileNotFoundError:
            raise NotFound(f"blob {digest} not found") from None

    def read_bytes(self, digest: Digest, *, verify: bool = False) -> bytes:
        """The whole blob; with ``verify`` its digest is checked (InvalidArgument if the disk lies)."""
        with self.open(digest) as f:
            data = f.read()
        if verify and not digest.matches(data):
            raise InvalidArgument(f"blob {digest} is corrupt on disk: its content has another digest")
        return data

    def walk(self) -> Iterator[Digest]:
        """Every committed blob, in no particular order. Foreign files are skipped."""
        for algorithm in sorted(ALGORITHMS):
            try:
                names = os.listdir(os.path.join(self._blobs, algorithm))
            except FileNotFoundError:
                continue
            for name in names:
                try:
                    yield Digest(algorithm, name)
                except (InvalidArgument, ValueError):
                    continue

    # -- writing ------------------------------------------------------------------------------------

    def writer(self, ref: str, expected: Digest, size: int | None = None, *,
               timeout: float = 0.0) -> Writer:
        """Open the ingest ``ref`` for writing ``expected`` (of ``size`` bytes, when known).

        Re-opening a ref that has partial data continues at its :attr:`Writer.offset`; partial data
        recorded for a different expected digest or size is discarded. Raises AlreadyExists if the
        blob is already committed, Conflict if another writer holds the ref (after waiting up to
        ``timeout`` seconds).
        """
        if not isinstance(ref, str) or not ref or len(ref) > 4096 or "\0" in ref:
            raise InvalidArgument(f"invalid ingest ref {ref!r}")
        if not isinstance(expected, Digest):
            raise InvalidArgument(f"expected digest must be a Digest, got {type(expected).__name__}")
        if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 0):
            raise InvalidArgument(f"invalid size {size!r} for {expected}: must be a non-negative integer")
        if self.exists(expected):
            raise AlreadyExists(f"blob {expected} already exists")
        path = self._ingest_dir(ref)
        lock_fd = _lock_ingest(path, ref, timeout)
        try:
            if self.exists(expected):  # committed by the writer we waited for
                _remove_ingest(path)
                raise AlreadyExists(f"blob {expected} already exists")
            return Writer(self, ref, path, lock_fd, expected, size)
        except BaseException:
            os.close(lock_fd)
            raise

    def put_bytes(self, data: bytes, expected: Digest | None = None) -> Digest:
        """Store ``data`` and return its digest; if ``expected`` is given and differs, InvalidArgument
        and nothing is kept. Storing a blob that exists already is a no-op."""
        actual = Digest.from_bytes(data, expected.algorithm if expected is not None else "sha256")
        if expected is not None and actual != expected:
            raise InvalidArgument(f"content has digest {actual}, expected {expected}")
        if self.exists(actual):
            return actual
        try:
            w = self.writer(f"put-{actual}-{os.urandom(16).hex()}", actual, len(data))
        except AlreadyExists:
            return actual
        with w:
            w.write(data)
            w.commit()
        return actual

    def _commit_blob(self, data_path: str, digest: Digest) -> None:
        """Rename verified ingest data into place, durably. Holds gc.lock shared meanwhile."""
        target = self._blob_file(digest)
        try:
            os.mkdir(os.path.dirname(target), 0o755)
        except FileExistsError:
            pass
        with self._gc_lock(exclusive=False):
            os.utime(data_path)  # mtime = commit time: gc(blob_min_age=) and BlobInfo rely on it
            os.chmod(data_path, 0o444)
            os.replace(data_path, target)
            _fsync_dir(os.path.dirname(target))

    # -- ingests ------------------------------------------------------------------------------------

    def ingests(self) -> list[IngestStatus]:
        """The in-progress (or abandoned) writes."""
        result = []
        for entry in _listdir(self._ingest):
            status = _ingest_status(os.path.join(self._ingest, entry))
            if status is not None:
                result.append(status)
        return result

    def abort(self, ref: str, *, timeout: float = 0.0) -> None:
        """Throw away the partial data of ``ref``. NotFound if there is none; Conflict if it is in use."""
        path = self._ingest_dir(ref)
        if not os.path.isdir(path):
            raise NotFound(f"no ingest {ref!r}")
        fd = _lock_ingest(path, ref, timeout)
        try:
            _remove_ingest(path)
        finally:
            os.close(fd)

    # -- deleting and garbage collection ------------------------------------------------------------

    def delete(self, digest: Digest) -> int:
        """Remove a blob and return its size (for the garbage collector). NotFound if absent."""
        path = self._blob_file(digest)
        try:
            size = os.stat(path).st_size
            os.unlink(path)
        except FileNotFoundError:
            raise NotFound(f"blob {digest} not found") from None
        return size

    def gc(self, roots: Iterable[Digest], children: Callable[[Digest], Iterable[Digest]], *,
           ingest_max_age: float = DEFAULT_INGEST_MAX_AGE, blob_min_age: float = 0.0) -> int:
        """Delete every blob not reachable from ``roots`` and return the bytes freed.

        ``children(d)`` names the blobs that blob ``d`` references (a manifest's config and layers, an
        index's manifests); it is called once for every reachable blob that exists. Blobs committed
        less than ``blob_min_age`` seconds ago are spared. Ingests untouched for ``ingest_max_age``
        seconds and not held by a writer are removed too.
        """
        marked: set[Digest] = set()
        stack = list(roots)
        while stack:
            digest = stack.pop()
            if digest in marked:
                continue
            marked.add(digest)
            if self.exists(digest):
                stack.extend(d for d in children(digest) if d not in marked)
        freed = 0
        now = time.time()
        with self._gc_lock(exclusive=True):
            for digest in list(self.walk()):
                if digest in marked:
                    continue
                try:
                    st = os.stat(self._blob_file(digest))
                except FileNotFoundError:
                    continue
                if now - st.st_mtime < blob_min_age:
                    continue
                try:
                    freed += self.delete(digest)
                except NotFound:
                    pass
        for entry in _listdir(self._ingest):
            freed += _remove_stale_ingest(os.path.join(self._ingest, entry), now - ingest_max_age)
        return freed

    def disk_usage(self) -> Usage:
        blob_count = blob_bytes = 0
        for digest in self.walk():
            try:
                blob_bytes += os.stat(self._blob_file(digest)).st_size
            except FileNotFoundError:
                continue
            blob_count += 1
        ingest_count = ingest_bytes = 0
        for entry in _listdir(self._ingest):
            ingest_count += 1
            ingest_bytes += _tree_size(os.path.join(self._ingest, entry))
        return Usage(blob_count, blob_bytes, ingest_count, ingest_bytes)

    def _gc_lock(self, exclusive: bool) -> file_lock:
        return file_lock(os.path.join(self._root, "gc.lock"), shared=not exclusive)


class Writer:
    """One ingest in progress. Use as a context manager: leaving without commit() keeps the partial
    data for resumption and releases the ref; abort() throws it away."""

    def __init__(self, store: ContentStore, ref: str, path: str, lock_fd: int, expected: Digest,
                 size: int | None) -> None:
        """Made by :meth:`ContentStore.writer`, which owns ``lock_fd`` until this returns."""
        self.store = store
        self.ref = ref
        self.expected = expected
        self.total = size
        self._path = path
        self._lock_fd: int | None = None
        self._digester = Digester(expected.algorithm)
        #: For followers: bytes flushed to the file, and how the ingest ended (True: verified commit).
        import threading

        self._cond = threading.Condition()
        self._visible = 0
        self._outcome: bool | IngestFailed | None = None
        self._followed = False
        meta = _read_meta(path)
        if (
            meta is None
            or meta.get("ref") != ref
            or meta.get("expected") != str(expected)
            or (size is not None and meta.get("total") not in (None, size))
        ):
            self._reset()
        else:
            self.started_at = float(meta.get("started_at", time.time()))
            if size is None and isinstance(meta.get("total"), int):
                self.total = meta["total"]
            elif meta.get("total") is None and size is not None:
                self._write_meta()
        self._file = open(os.path.join(path, "data"), "a+b")  # noqa: SIM115 - lives as long as the writer
        try:
            self._rehash()
            if self.total is not None and self.offset > self.total:
                self._file.truncate(0)
                self._rehash()
        except BaseException:
            self._file.close()
            raise
        self._lock_fd = lock_fd

    # -- state --------------------------------------------------------------------------------------

    @property
    def offset(self) -> int:
        """Bytes received so far: where a resumed download continues."""
        return self._digester.size

    def digest(self) -> Digest:
        """The digest of the bytes received so far."""
        return self._digester.finish()

    def status(self) -> IngestStatus:
        return IngestStatus(self.ref, self.offset, self.expected, self.total, self.started_at, time.time())

    # -- writing ------------------------------------------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> int:
        self._check_open()
        if self.total is not None and self.offset + len(data) > self.total:
            raise InvalidArgument(
                f"ingest {self.ref!r}: {self.offset + len(data)} bytes exceed the expected size "
                f"{self.total} of {self.expected}"
            )
        self._file.write(data)
        self._digester.update(data)
        if self._followed:
            self._file.flush()
            self._publish()
        return len(data)

    def follow(self) -> Follower:
        """A reader of this ingest from its first byte, following the writes (see the module's docstring)."""
        self._check_open()
        self._file.flush()
        fd = os.open(os.path.join(self._path, "data"), os.O_RDONLY | os.O_CLOEXEC)
        self._followed = True
        self._publish()
        return Follower(self, fd)

    def _publish(self, outcome: bool | IngestFailed | None = None) -> None:
        with self._cond:
            if self._outcome is None:
                self._outcome = outcome
                if outcome is None or outcome is True:
                    self._visible = self.offset
            self._cond.notify_all()

    def truncate(self, offset: int = 0) -> None:
        """Discard the data from ``offset`` on (a server that cannot resume restarts at 0)."""
        self._check_open()
        if offset < 0 or offset > self.offset:
            raise InvalidArgument(f"ingest {self.ref!r}: cannot truncate to {offset} (have {self.offset})")
        self._file.flush()
        if self._followed and offset < self._visible:
            self._publish(IngestRestarted(f"ingest {self.ref!r} restarted at byte {offset}"))
        self._file.truncate(offset)
        self._rehash()

    def commit(self, size: int | None = None, expected: Digest | None = None) -> Digest:
        """Verify and store the blob; return its digest.

        ``size``/``expected`` may override what the writer was opened with. On a mismatch the ingest is
        removed and InvalidArgument raised. If the same blob was committed meanwhile by another ref,
        this one's data is dropped and the commit succeeds.
        """
        self._check_open()
        expected = expected or self.expected
        size = self.total if size is None else size
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
            actual = self._digester.finish()
            if size is not None and self.offset != size:
                raise InvalidArgument(
                    f"ingest {self.ref!r}: got {self.offset} bytes, expected {size} for {expected}"
                )
            if actual != expected:
                raise InvalidArgument(
                    f"ingest {self.ref!r}: content has digest {actual}, expected {expected}"
                )
            self._file.close()
            if not self.store.exists(expected):
                self.store._commit_blob(os.path.join(self._path, "data"), expected)
        except InvalidArgument as exc:
            self._publish(IngestFailed(str(exc)))
            self._file.close()
            _remove_ingest(self._path)  # bad content: keep nothing
            self._release()
            raise
        except BaseException:
            self.close()  # an I/O failure: keep the data for a retry
            raise
        _remove_ingest(self._path)
        self._release()
        self._publish(True)
        return expected

    def abort(self) -> None:
        """Throw the partial data away and release the ref."""
        if self._lock_fd is None:
            return
        self._publish(IngestFailed(f"ingest {self.ref!r} was aborted"))
        self._file.close()
        _remove_ingest(self._path)
        self._release()

    def close(self) -> None:
        """Release the ref, keeping the partial data for a later writer to resume."""
        if self._lock_fd is None:
            return
        self._publish(IngestFailed(f"ingest {self.ref!r} stopped at byte {self.offset} without a commit"))
        self._file.flush()
        self._file.close()
        self._release()

    def __del__(self) -> None:
        # A writer dropped without close() must not hold its ref for the rest of the process.
        try:
            self.close()
        except Exception:
            pass

    def __enter__(self) -> Writer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals ----------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._lock_fd is None:
            raise Conflict(f"ingest {self.ref!r} is closed")

    def _release(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _reset(self) -> None:
        for name in _listdir(self._path):
            if name != "lock":
                try:
                    os.unlink(os.path.join(self._path, name))
                except FileNotFoundError:
                    pass
        self.started_at = time.time()
        self._write_meta()

    def _write_meta(self) -> None:
        meta = {"ref": self.ref, "expected": str(self.expected), "total": self.total,
                "started_at": self.started_at}
        tmp = os.path.join(self._path, "meta.json.tmp")
        with open(tmp, "w") as f:
            f.write(jsonc.dumps(meta))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, os.path.join(self._path, "meta.json"))

    def _rehash(self) -> None:
        """Recompute the running digest from the data on disk (hash state cannot be saved)."""
        self._digester = Digester(self.expected.algorithm)
        self._file.seek(0)
        while chunk := self._file.read(_CHUNK):
            self._digester.update(chunk)
        self._file.seek(0, os.SEEK_END)


# --- ingest directories and their locks ------------------------------------------------------------


class Follower:
    """Reads an ingest as it is written: made by :meth:`Writer.follow`. Reads block until there is
    more data; the end of the stream is returned only once the blob was committed, verified."""

    def __init__(self, writer: Writer, fd: int) -> None:
        self._writer = writer
        self._fd = fd
        self._pos = 0

    def read(self, n: int = -1, /) -> bytes:
        w = self._writer
        with w._cond:
            while self._pos >= w._visible and w._outcome is None:
                w._cond.wait()
            visible, outcome = w._visible, w._outcome
        if isinstance(outcome, IngestFailed):
            raise outcome
        if self._pos < visible:
            want = visible - self._pos if n < 0 else min(n, visible - self._pos)
            data = os.pread(self._fd, want, self._pos)
            if not data:
                raise IngestFailed(f"ingest {w.ref!r}: its data file is shorter than written")
            self._pos += len(data)
            return data
        return b""

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


def _lock_ingest(path: str, ref: str, timeout: float) -> int:
    """Create (if needed) and flock the ingest directory ``path``; return the lock fd.

    Conflict if another writer still holds it after ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        # Not Path.mkdir(exist_ok=True): it raises if the directory vanishes between its mkdir and its
        # is_dir check, which is exactly what a committing writer does.
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            pass
        try:
            fd = _try_lock(path)
        except FileNotFoundError:
            continue  # removed between mkdir and open: make it again
        if fd is not None:
            return fd
        if time.monotonic() >= deadline:
            raise Conflict(f"ingest {ref!r} is being written by another writer; retry later")
        time.sleep(_POLL)


def _try_lock(path: str) -> int | None:
    """Flock ``path``/lock without waiting; None if another process holds it, FileNotFoundError if
    ``path`` is gone.

    The holder may unlink the lock file (commit, abort, gc) while we wait on it, so after locking we
    check that the path still names the inode we locked, and start over if not.
    """
    lock_path = os.path.join(path, "lock")
    while True:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        try:
            st = os.stat(lock_path)
            same = os.fstat(fd)
            if (st.st_dev, st.st_ino) == (same.st_dev, same.st_ino):
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)


def _remove_ingest(path: str) -> None:
    """Remove an ingest directory whose lock the caller holds: data first, the lock file last, so a
    waiter that gets the lock afterwards finds a fresh, empty ingest."""
    for name in _listdir(path):
        if name != "lock":
            try:
                os.unlink(os.path.join(path, name))
            except FileNotFoundError:
                pass
    try:
        os.unlink(os.path.join(path, "lock"))
    except FileNotFoundError:
        pass
    try:
        os.rmdir(path)
    except OSError as exc:
        if exc.errno not in (errno.ENOENT, errno.ENOTEMPTY):
            raise


def _remove_stale_ingest(path: str, cutoff: float) -> int:
    """Remove ``path`` if nobody holds it and nothing in it changed since ``cutoff``; bytes freed."""
    if _newest_mtime(path) >= cutoff:
        return 0
    try:
        fd = _try_lock(path)
    except OSError:  # gone, or not an ingest directory
        return 0
    if fd is None:
        return 0
    try:
        if _newest_mtime(path, skip_lock=True) >= cutoff:  # written to while we were looking
            return 0
        size = _tree_size(path)
        _remove_ingest(path)
        return size
    finally:
        os.close(fd)


def _read_meta(path: str) -> dict[str, Any] | None:
    try:
        with open(os.path.join(path, "meta.json"), "rb") as f:
            meta = jsonc.loads(f.read())
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


def _ingest_status(path: str) -> IngestStatus | None:
    meta = _read_meta(path)
    if meta is None or not isinstance(meta.get("ref"), str):
        return None
    try:
        st = os.stat(os.path.join(path, "data"))
        offset, updated = st.st_size, st.st_mtime
    except FileNotFoundError:
        offset, updated = 0, float(meta.get("started_at", 0.0))
    try:
        expected: Digest | None = Digest.parse(meta.get("expected", ""))
    except Exception:
        expected = None
    total = meta.get("total")
    return IngestStatus(
        ref=meta["ref"],
        offset=offset,
        expected=expected,
        total=total if isinstance(total, int) else None,
        started_at=float(meta.get("started_at", 0.0)),
        updated_at=updated,
    )


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except (FileNotFoundError, NotADirectoryError):
        return []


def _tree_size(path: str) -> int:
    total = 0
    for name in _listdir(path):
        try:
            total += os.lstat(os.path.join(path, name)).st_size
        except FileNotFoundError:
            pass
    return total


def _newest_mtime(path: str, skip_lock: bool = False) -> float:
    newest = 0.0
    for name in ["data", "meta.json"] if skip_lock else [".", *_listdir(path)]:
        try:
            newest = max(newest, os.lstat(os.path.join(path, name)).st_mtime)
        except FileNotFoundError:
            pass
    return newest


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
