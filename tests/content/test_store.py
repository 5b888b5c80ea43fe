"""berth.content.store: verified, atomic, resumable, process-safe blob storage with mark-and-sweep GC."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import queue
import stat
import threading
import time
from collections.abc import Callable, Iterable
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier
from pathlib import Path

import pytest

from berth.content import ContentStore
from berth.content.store import Follower, IngestFailed, IngestRestarted
from berth.errors import AlreadyExists, Conflict, InvalidArgument, NotFound
from berth.oci.digest import Digest

pytestmark = pytest.mark.unit

MP = multiprocessing.get_context("fork")


@pytest.fixture
def store(tmp_path: Path) -> ContentStore:
    return ContentStore(tmp_path / "content")


def ingest_entries(store: ContentStore) -> list[str]:
    return os.listdir(store.root / "ingest")


# --- basic storage --------------------------------------------------------------------------------


def test_put_and_read(store: ContentStore) -> None:
    data = b"hello, berth"
    d = store.put_bytes(data)
    assert d == Digest.from_bytes(data)
    assert store.exists(d)
    assert store.read_bytes(d) == data
    assert store.read_bytes(d, verify=True) == data
    with store.open(d) as f:
        f.seek(7)
        assert f.read() == b"berth"
    info = store.info(d)
    assert info.digest == d and info.size == len(data)
    assert info.committed_at <= time.time()
    path = store.root / "blobs" / "sha256" / d.encoded
    assert store.blob_path(d) == path
    assert stat.S_IMODE(path.stat().st_mode) == 0o444
    assert list(store.walk()) == [d]
    assert ingest_entries(store) == []


def test_put_existing_is_a_no_op(store: ContentStore) -> None:
    d = store.put_bytes(b"x")
    mtime = store.blob_path(d).stat().st_mtime_ns
    assert store.put_bytes(b"x", d) == d
    assert store.blob_path(d).stat().st_mtime_ns == mtime


def test_put_with_expected_digest(store: ContentStore) -> None:
    d = Digest.from_bytes(b"right")
    assert store.put_bytes(b"right", d) == d
    with pytest.raises(InvalidArgument, match="expected sha256:"):
        store.put_bytes(b"wrong", Digest.from_bytes(b"other"))
    assert list(store.walk()) == [d]
    assert ingest_entries(store) == []


def test_sha512_blobs(store: ContentStore) -> None:
    d = Digest.from_bytes(b"x", "sha512")
    assert store.put_bytes(b"x", d) == d
    assert store.blob_path(d).parent.name == "sha512"
    assert list(store.walk()) == [d]


def test_missing_blob(store: ContentStore) -> None:
    d = Digest.from_bytes(b"absent")
    assert not store.exists(d)
    for call in (store.info, store.open, store.read_bytes, store.delete):
        with pytest.raises(NotFound, match=f"blob {d} not found"):
            call(d)


def test_corruption_on_disk_is_detected_when_verifying(store: ContentStore) -> None:
    d = store.put_bytes(b"good")
    path = store.blob_path(d)
    path.chmod(0o644)
    path.write_bytes(b"evil")
    with pytest.raises(InvalidArgument, match="corrupt"):
        store.read_bytes(d, verify=True)


def test_walk_skips_foreign_files(store: ContentStore) -> None:
    d = store.put_bytes(b"a")
    (store.root / "blobs" / "sha256" / "not-a-digest").write_text("x")
    (store.root / "blobs" / "md5").mkdir()
    (store.root / "blobs" / "md5" / ("a" * 32)).write_text("x")
    assert list(store.walk()) == [d]


# --- ingest: resume, verification, atomicity ------------------------------------------------------


def test_resume_after_partial_write(store: ContentStore) -> None:
    data = os.urandom(300_000)
    d = Digest.from_bytes(data)
    with store.writer("pull-layer", d, len(data)) as w:
        assert w.offset == 0
        w.write(data[:100_000])
        assert w.offset == 100_000
    # Closed without commit: nothing visible, the partial data kept.
    assert not store.exists(d)
    [status] = store.ingests()
    assert (status.ref, status.offset, status.expected, status.total) == ("pull-layer", 100_000, d, len(data))
    with store.writer("pull-layer", d) as w:  # size remembered from the first open
        assert w.offset == 100_000
        assert w.total == len(data)
        assert w.digest() == Digest.from_bytes(data[:100_000])
        w.write(data[100_000:])
        assert w.commit() == d
    assert store.read_bytes(d) == data
    assert store.ingests() == []
    assert ingest_entries(store) == []


def test_resume_after_writer_process_dies(store: ContentStore) -> None:
    data = os.urandom(50_000)
    d = Digest.from_bytes(data)

    def die_mid_write() -> None:
        w = store.writer("crashy", d, len(data))
        w.write(data[:20_000])
        w._file.flush()
        os._exit(3)  # no close, no cleanup: the kernel drops the lock

    p = MP.Process(target=die_mid_write)
    p.start()
    p.join(30)
    assert p.exitcode == 3
    with store.writer("crashy", d, len(data)) as w:
        assert w.offset == 20_000
        w.write(data[20_000:])
        w.commit()
    assert store.read_bytes(d) == data


def test_reopen_with_other_expected_digest_starts_over(store: ContentStore) -> None:
    with store.writer("ref", Digest.from_bytes(b"first")) as w:
        w.write(b"fir")
    with store.writer("ref", Digest.from_bytes(b"second")) as w:
        assert w.offset == 0
        w.write(b"second")
        w.commit()
    assert store.read_bytes(Digest.from_bytes(b"second")) == b"second"


def test_reopen_with_other_size_starts_over(store: ContentStore) -> None:
    d = Digest.from_bytes(b"abcdef")
    with store.writer("ref", d, 7) as w:
        w.write(b"abc")
    with store.writer("ref", d, 6) as w:
        assert w.offset == 0


def test_digest_mismatch_keeps_nothing(store: ContentStore) -> None:
    expected = Digest.from_bytes(b"the real thing")
    w = store.writer("bad", expected)
    w.write(b"something else")
    with pytest.raises(InvalidArgument, match=r"content has digest sha256:\w+, expected sha256:"):
        w.commit()
    assert not store.exists(expected)
    assert list(store.walk()) == []
    assert ingest_entries(store) == []
    # The ref is free and fresh again.
    with store.writer("bad", expected) as w2:
        assert w2.offset == 0


def test_size_mismatch_keeps_nothing(store: ContentStore) -> None:
    data = b"0123456789"
    d = Digest.from_bytes(data)
    w = store.writer("short", d, 11)
    w.write(data)
    with pytest.raises(InvalidArgument, match="got 10 bytes, expected 11"):
        w.commit()
    assert list(store.walk()) == [] and ingest_entries(store) == []


def test_write_beyond_expected_size_is_refused(store: ContentStore) -> None:
    d = Digest.from_bytes(b"abc")
    with store.writer("big", d, 3) as w:
        w.write(b"ab")
        with pytest.raises(InvalidArgument, match="exceed the expected size 3"):
            w.write(b"cd")
        assert w.offset == 2
        w.write(b"c")
        w.commit()
    assert store.exists(d)


def test_commit_size_and_digest_overrides(store: ContentStore) -> None:
    data = b"unknown until the end"
    placeholder = Digest.from_bytes(b"placeholder")
    with store.writer("push", placeholder) as w:
        w.write(data)
        assert w.commit(size=len(data), expected=Digest.from_bytes(data)) == Digest.from_bytes(data)
    assert store.exists(Digest.from_bytes(data))


def test_truncate(store: ContentStore) -> None:
    data = b"abcdef"
    d = Digest.from_bytes(data)
    with store.writer("t", d) as w:
        w.write(b"abcXYZ")
        w.truncate(3)
        assert w.offset == 3
        w.write(b"def")
        w.commit()
        with pytest.raises(Conflict, match="closed"):
            w.write(b"more")
    assert store.read_bytes(d) == data


def test_writer_for_existing_blob_is_already_exists(store: ContentStore) -> None:
    d = store.put_bytes(b"present")
    with pytest.raises(AlreadyExists, match=f"blob {d} already exists"):
        store.writer("again", d)


def test_commit_when_another_ref_committed_the_same_blob(store: ContentStore) -> None:
    data = b"same bytes"
    d = Digest.from_bytes(data)
    w1 = store.writer("one", d)
    w2 = store.writer("two", d)
    w1.write(data)
    w2.write(data)
    assert w1.commit() == d
    assert w2.commit() == d
    assert store.read_bytes(d) == data
    assert ingest_entries(store) == []


def test_abort(store: ContentStore) -> None:
    d = Digest.from_bytes(b"x")
    with store.writer("gone", d) as w:
        w.write(b"partial")
        w.abort()
    assert ingest_entries(store) == []
    with store.writer("later", d) as w:
        w.write(b"x")
    store.abort("later")
    assert store.ingests() == []
    with pytest.raises(NotFound, match="no ingest 'later'"):
        store.abort("later")


@pytest.mark.parametrize("ref", ["", "a\0b", 5])
def test_invalid_refs(store: ContentStore, ref: object) -> None:
    with pytest.raises(InvalidArgument, match="invalid ingest ref"):
        store.writer(ref, Digest.from_bytes(b"x"))  # type: ignore[arg-type]


def test_invalid_size(store: ContentStore) -> None:
    with pytest.raises(InvalidArgument, match="invalid size"):
        store.writer("r", Digest.from_bytes(b"x"), -1)


def test_refs_with_any_characters(store: ContentStore) -> None:
    ref = "docker.io/library/busybox:latest/../../layer sha256:abc"
    d = Digest.from_bytes(b"z")
    with store.writer(ref, d) as w:
        w.write(b"z")
    assert [s.ref for s in store.ingests()] == [ref]
    assert all(len(name) == 64 for name in ingest_entries(store))


# --- concurrency ----------------------------------------------------------------------------------


def test_second_writer_of_a_ref_gets_conflict(store: ContentStore) -> None:
    d = Digest.from_bytes(b"x")
    w = store.writer("busy", d)
    with pytest.raises(Conflict, match="ingest 'busy' is being written by another writer"):
        store.writer("busy", d)
    start = time.monotonic()
    with pytest.raises(Conflict):
        store.writer("busy", d, timeout=0.2)
    assert time.monotonic() - start >= 0.2
    w.close()
    store.writer("busy", d).close()


def _slow_writer(root: str, data: bytes, hold: float) -> None:
    store = ContentStore(root)
    with store.writer("shared-ref", Digest.from_bytes(data), len(data)) as w:
        w.write(data[:10])
        time.sleep(hold)
        w.write(data[10:])
        w.commit()


def test_waiting_writer_finds_the_blob_committed(store: ContentStore) -> None:
    data = os.urandom(1000)
    d = Digest.from_bytes(data)
    p = MP.Process(target=_slow_writer, args=(str(store.root), data, 0.5))
    p.start()
    deadline = time.monotonic() + 10
    while not store.ingests() and time.monotonic() < deadline:
        time.sleep(0.01)
    with pytest.raises(Conflict):
        store.writer("shared-ref", d)
    with pytest.raises(AlreadyExists):
        store.writer("shared-ref", d, timeout=10)
    p.join(10)
    assert p.exitcode == 0
    assert store.read_bytes(d, verify=True) == data


def _race(root: str, ref: str, data: bytes, timeout: float, barrier: Barrier, results: Queue[str]) -> None:
    try:
        results.put(_race_once(root, ref, data, timeout, barrier))
    except BaseException as exc:  # report, never leave the parent waiting
        results.put(f"error: {exc!r}")


def _race_once(root: str, ref: str, data: bytes, timeout: float, barrier: Barrier) -> str:
    store = ContentStore(root)
    barrier.wait(30)
    d = Digest.from_bytes(data)
    try:
        w = store.writer(ref, d, len(data), timeout=timeout)
    except Conflict:
        return "conflict"
    except AlreadyExists:
        return "exists"
    with w:
        for i in range(0, len(data), 4096):
            w.write(data[i : i + 4096])
            time.sleep(0.001)
        w.commit()
    return "committed"


def _run_race(store: ContentStore, refs: list[str], data: bytes, timeout: float,
              during: Callable[[], object] | None = None) -> list[str]:
    barrier = MP.Barrier(len(refs))
    results: Queue[str] = MP.Queue()
    procs = [MP.Process(target=_race, args=(str(store.root), ref, data, timeout, barrier, results))
             for ref in refs]
    for p in procs:
        p.start()
    outcomes: list[str] = []
    deadline = time.monotonic() + 60
    while len(outcomes) < len(procs) and time.monotonic() < deadline:
        if during is not None:
            during()
        with contextlib.suppress(queue.Empty):
            outcomes.append(results.get(timeout=0.001 if during else 1))
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    assert len(outcomes) == len(procs), outcomes
    return sorted(outcomes)


def test_concurrent_writers_of_one_ref_without_waiting(store: ContentStore) -> None:
    data = os.urandom(200_000)
    outcomes = _run_race(store, ["same"] * 6, data, timeout=0)
    assert "committed" in outcomes
    assert set(outcomes) <= {"committed", "conflict", "exists"}
    assert store.read_bytes(Digest.from_bytes(data), verify=True) == data
    assert ingest_entries(store) == []


def test_concurrent_writers_of_one_ref_waiting(store: ContentStore) -> None:
    data = os.urandom(200_000)
    outcomes = _run_race(store, ["same"] * 6, data, timeout=30)
    assert outcomes == ["committed"] + ["exists"] * 5
    assert store.read_bytes(Digest.from_bytes(data), verify=True) == data
    assert ingest_entries(store) == []


def test_concurrent_writers_of_one_blob_under_different_refs(store: ContentStore) -> None:
    data = os.urandom(200_000)
    outcomes = _run_race(store, [f"ref-{i}" for i in range(6)], data, timeout=0)
    assert set(outcomes) <= {"committed", "exists"} and "committed" in outcomes
    assert store.read_bytes(Digest.from_bytes(data), verify=True) == data
    assert list(store.walk()) == [Digest.from_bytes(data)]
    assert ingest_entries(store) == []


def test_gc_concurrent_with_writers(store: ContentStore) -> None:
    data = os.urandom(300_000)
    d = Digest.from_bytes(data)
    freed: list[int] = []

    def collect() -> None:  # the most aggressive collector: every unlocked ingest is stale
        freed.append(store.gc({d}, lambda _: [], ingest_max_age=0))

    outcomes = _run_race(store, ["same"] * 4, data, timeout=30, during=collect)
    assert outcomes == ["committed"] + ["exists"] * 3
    assert len(freed) > 1
    assert store.read_bytes(d, verify=True) == data
    assert ingest_entries(store) == []


# --- garbage collection ---------------------------------------------------------------------------


def graph(edges: dict[Digest, list[Digest]]) -> tuple[Callable[[Digest], Iterable[Digest]], list[Digest]]:
    calls: list[Digest] = []

    def children(d: Digest) -> Iterable[Digest]:
        calls.append(d)
        return edges.get(d, [])

    return children, calls


def test_gc_frees_unreferenced(store: ContentStore) -> None:
    layer1 = store.put_bytes(b"layer-one" * 100)
    layer2 = store.put_bytes(b"layer-two" * 100)
    config = store.put_bytes(b'{"config":1}')
    manifest = store.put_bytes(b'{"manifest":1}')
    index = store.put_bytes(b'{"index":1}')
    orphan_config = store.put_bytes(b'{"orphan":1}')
    store.put_bytes(b"orphan-layer" * 50)  # nothing references it
    missing = Digest.from_bytes(b"referenced but never pulled")
    children, calls = graph({
        index: [manifest, missing],
        manifest: [config, layer1, layer2],
        orphan_config: [layer1],
    })
    before = store.disk_usage()
    freed = store.gc({index}, children)
    assert freed == len(b'{"orphan":1}') + len(b"orphan-layer" * 50)
    assert set(store.walk()) == {index, manifest, config, layer1, layer2}
    assert missing not in calls  # children() is only asked about blobs that exist
    assert len(calls) == len(set(calls))  # each at most once
    after = store.disk_usage()
    assert before.blob_bytes - after.blob_bytes == freed
    assert after.blob_count == 5


def test_gc_survives_cycles_and_frees_everything_without_roots(store: ContentStore) -> None:
    a, b = store.put_bytes(b"a"), store.put_bytes(b"b")
    children, _ = graph({a: [b], b: [a]})
    assert store.gc({a}, children) == 0
    assert store.gc(set(), children) == 2
    assert list(store.walk()) == []


def test_gc_spares_young_blobs(store: ContentStore) -> None:
    old = store.put_bytes(b"old")
    young = store.put_bytes(b"young")
    past = time.time() - 3600
    os.utime(store.blob_path(old), (past, past))
    children, _ = graph({})
    assert store.gc(set(), children, blob_min_age=60) == 3
    assert list(store.walk()) == [young]


def test_gc_removes_stale_ingests_but_not_fresh_or_active_ones(store: ContentStore) -> None:
    d = Digest.from_bytes(b"whatever")
    with store.writer("stale", d) as w:
        w.write(b"12345")
    with store.writer("fresh", d) as w:
        w.write(b"123")
    active = store.writer("active", d)
    active.write(b"1234567")
    past = time.time() - 2 * 86400
    for status in store.ingests():
        if status.ref in ("stale", "active"):
            path = store._ingest_dir(status.ref)
            for name in [*os.listdir(path), "."]:
                os.utime(os.path.join(path, name), (past, past))
    children, _ = graph({})
    freed = store.gc(set(), children, ingest_max_age=86400)
    assert freed >= 5
    assert sorted(s.ref for s in store.ingests()) == ["active", "fresh"]
    active.write(b"8")  # the active writer is undisturbed
    assert active.offset == 8
    active.close()


def test_gc_propagates_children_errors_before_deleting(store: ContentStore) -> None:
    root = store.put_bytes(b"root")
    other = store.put_bytes(b"other")

    def children(d: Digest) -> Iterable[Digest]:
        raise InvalidArgument("manifest: invalid JSON")

    with pytest.raises(InvalidArgument):
        store.gc({root}, children)
    assert set(store.walk()) == {root, other}


def test_disk_usage(store: ContentStore) -> None:
    assert store.disk_usage().total_bytes == 0
    store.put_bytes(b"x" * 1000)
    with store.writer("partial", Digest.from_bytes(b"y")) as w:
        w.write(b"y" * 500)
    usage = store.disk_usage()
    assert (usage.blob_count, usage.blob_bytes, usage.ingest_count) == (1, 1000, 1)
    assert usage.ingest_bytes >= 500
    assert usage.total_bytes == usage.blob_bytes + usage.ingest_bytes


def test_size_learned_on_resume_is_remembered(store: ContentStore) -> None:
    data = b"0123456789"
    d = Digest.from_bytes(data)
    with store.writer("learn", d) as w:
        w.write(data[:4])
    with store.writer("learn", d, len(data)) as w:
        assert w.offset == 4  # no size before: compatible, resume
    with store.writer("learn", d) as w:
        assert (w.offset, w.total) == (4, len(data))
        w.write(data[4:])
        w.commit()
    assert store.read_bytes(d) == data


def test_partial_data_longer_than_size_restarts(store: ContentStore) -> None:
    d = Digest.from_bytes(b"abc")
    with store.writer("long", d) as w:
        w.write(b"abcdef")
    with store.writer("long", d, 3) as w:  # a size appears that the partial data already exceeds
        assert w.offset == 0


def test_dropped_writer_releases_its_ref(store: ContentStore) -> None:
    d = Digest.from_bytes(b"x")
    w = store.writer("dropped", d)
    w.write(b"x")
    del w
    with store.writer("dropped", d) as again:
        assert again.offset == 1


# --- following an ingest while it is written ----------------------------------------------------------


def _read_all_in_thread(reader: Follower) -> tuple[threading.Thread, list[bytes | BaseException]]:
    out: list[bytes | BaseException] = []

    def run() -> None:
        try:
            while chunk := reader.read(1000):
                out.append(chunk)
            out.append(b"<end>")
        except BaseException as exc:
            out.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out


def test_follower_sees_writes_and_ends_only_after_a_verified_commit(store: ContentStore) -> None:
    data = os.urandom(10_000)
    digest = Digest.from_bytes(data)
    with store.writer("f", digest, len(data)) as w:
        w.write(data[:3000])  # written before following: read from the file
        thread, out = _read_all_in_thread(w.follow())
        w.write(data[3000:])
        time.sleep(0.1)
        assert thread.is_alive(), "the reader ended before the commit verified the blob"
        assert b"".join(c for c in out if isinstance(c, bytes)) == data
        w.commit()
    thread.join(5)
    assert out[-1] == b"<end>"


@pytest.mark.parametrize("how", ["mismatch", "truncate", "close", "abort"])
def test_follower_fails_when_the_ingest_does(store: ContentStore, how: str) -> None:
    data = os.urandom(5000)
    digest = Digest.from_bytes(data if how != "mismatch" else b"other" * 1000)
    w = store.writer("f", digest, len(data))
    w.write(data[:2000])
    thread, out = _read_all_in_thread(w.follow())
    time.sleep(0.05)
    if how == "mismatch":
        w.write(data[2000:])
        with pytest.raises(InvalidArgument):
            w.commit()
    elif how == "truncate":
        w.truncate(0)
    elif how == "close":
        w.close()
    else:
        w.abort()
    thread.join(5)
    assert isinstance(out[-1], IngestRestarted if how == "truncate" else IngestFailed)
    w.close()
