"""berth.images.store: names, lookup, tags, removal with garbage collection, unpacking into snapshots."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from img_helpers import add_image, entry, layer

from berth.errors import Conflict, InvalidArgument, NotFound
from berth.images.store import ImageStore
from berth.oci.digest import Digest
from berth.oci.image import History
from berth.snapshots import CopySnapshotter
from berth.snapshots.mount import mount_all, overlay_supported, unmount
from support import need_root

BASE = layer([entry("dir", "etc"), entry("file", "etc/os-release", b"ID=berth\n"), entry("file", "bin/sh", b"elf")])
APP = layer([entry("file", "app/main", b"print(1)\n"), entry("whiteout", "bin/sh")], "zstd")
OTHER = layer([entry("file", "other", b"x")], None)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ImageStore]:
    s = ImageStore(tmp_path / "root", snapshotter_kind="copy")
    yield s
    s.close()


# --- names and lookup -----------------------------------------------------------------------------------


@pytest.mark.unit
def test_add_and_resolve(store: ImageStore) -> None:
    img = add_image(store, [BASE, APP], ["busybox", "localhost:5000/team/app:1.0"])
    assert img.names == ("docker.io/library/busybox:latest", "localhost:5000/team/app:1.0")
    assert img.diff_ids == (BASE[1], APP[1])
    assert img.chain_ids[0] == BASE[1] and len(img.chain_ids) == 2
    for text in ("busybox", "busybox:latest", "docker.io/library/busybox", "localhost:5000/team/app:1.0",
                 str(img.id), img.id.hex, img.id.hex[:12], f"busybox@{img.manifest_digest}"):
        assert store.get(text).id == img.id, text
    assert store.get(img.id).id == img.id
    assert f"docker.io/library/busybox@{img.manifest_digest}" in img.repo_digests
    with pytest.raises(NotFound):
        store.get("alpine")
    with pytest.raises(NotFound):
        store.get("busybox:other")
    assert [i.id for i in store.images()] == [img.id]


@pytest.mark.unit
def test_ambiguous_prefix(store: ImageStore) -> None:
    ids = {add_image(store, [OTHER], created=f"2024-01-{i:02d}T00:00:00Z").id.hex for i in range(1, 18)}
    assert len(ids) == 17
    firsts = [i[0] for i in ids]
    shared = next(c for c in firsts if firsts.count(c) > 1)  # 17 ids, 16 hex digits
    with pytest.raises(Conflict):
        store.get(shared)


@pytest.mark.unit
def test_tag_untag_and_moving_names(store: ImageStore) -> None:
    a = add_image(store, [BASE], ["app:1"])
    b = add_image(store, [BASE, APP], ["app:2"])
    store.tag("app:1", "app:latest")
    assert store.get("app").id == a.id
    store.tag(b.id, "app")  # a name points at one image: it moves
    assert store.get("app").id == b.id
    assert store.get(a.id).names == ("docker.io/library/app:1",)
    store.untag("app:1")
    assert store.get(a.id).names == ()
    assert [i.id for i in store.dangling()] == [a.id]
    with pytest.raises(NotFound):
        store.untag("app:1")
    with pytest.raises(InvalidArgument):
        store.tag(a.id, f"app@{a.manifest_digest}")


@pytest.mark.unit
def test_persists_across_reopen(tmp_path: Path) -> None:
    s = ImageStore(tmp_path / "root", snapshotter_kind="copy")
    img = add_image(s, [BASE], ["persist:me"])
    s.close()
    s = ImageStore(tmp_path / "root", snapshotter_kind="copy")
    assert s.get("persist:me") == img
    s.close()


@pytest.mark.unit
def test_mismatched_config_is_refused(store: ImageStore) -> None:
    with pytest.raises(InvalidArgument, match="diff_ids"):
        add_image(store, [BASE, APP], diff_ids=[BASE[1]])


# --- removal and GC ---------------------------------------------------------------------------------------


@pytest.mark.unit
def test_remove_by_name_untags_then_deletes(store: ImageStore) -> None:
    img = add_image(store, [BASE], ["one", "two"])
    result = store.remove("one")
    assert result.untagged == ["docker.io/library/one:latest"] and result.deleted == []
    result = store.remove("two")
    assert result.deleted == [img.id]
    assert not store.exists(img.id)
    assert list(store.content.walk()) == []  # every blob collected


@pytest.mark.unit
def test_remove_by_id_with_several_repositories(store: ImageStore) -> None:
    img = add_image(store, [BASE], ["one", "two"])
    with pytest.raises(Conflict):
        store.remove(img.id)
    assert store.remove(img.id, force=True).deleted == [img.id]


@pytest.mark.unit
def test_shared_blobs_and_snapshots_survive(store: ImageStore) -> None:
    base = add_image(store, [BASE], ["base"])
    app = add_image(store, [BASE, APP], ["app"])
    store.unpack(base)
    store.unpack(app)
    keys = {i.key for i in store.snapshots.walk()}
    assert keys == {str(c) for c in app.chain_ids}
    store.remove("app")
    assert {i.key for i in store.snapshots.walk()} == {str(base.chain_ids[0])}
    blobs = set(store.content.walk())
    assert blobs == {base.manifest_digest, base.id, base.layers[0].digest}
    store.remove("base")
    assert store.snapshots.walk() == [] and list(store.content.walk()) == []


@pytest.mark.unit
def test_lease_holds_off_collection(store: ImageStore) -> None:
    orphan = store.content.put_bytes(b"blob of an image being pulled")
    with store.lease():
        assert store.gc(wait=False) == 0
        assert store.content.exists(orphan)
    assert store.gc() > 0
    assert not store.content.exists(orphan)


@pytest.mark.unit
def test_gc_removes_unused_snapshots(store: ImageStore) -> None:
    img = add_image(store, [BASE, APP], ["app"])
    store.unpack(img)
    store.snapshots.prepare("extract-stale", None)
    store.prepare_rootfs(img, "container-1")
    with store._write() as db:  # the image vanished without its snapshots being freed (a crash)
        db.execute("DELETE FROM images")
    store.gc()
    # The container's snapshot keeps its parents. An extract snapshot seen by the collector (which holds
    # the lease every unpack holds) is debris of a killed unpack, however recent: it goes at once.
    assert {i.key for i in store.snapshots.walk()} == {*(str(c) for c in img.chain_ids), "container-1"}
    store.snapshots.remove("container-1")
    store.gc()
    assert store.snapshots.walk() == []


def test_gc_removes_a_parent_made_after_its_child(tmp_path: Path) -> None:
    """A layer unpacked while it downloads may be prepared before the layer below it (adopt): the
    parent then has the larger id, and must go all the same once its child went."""
    need_root()
    store = ImageStore(tmp_path / "root", snapshotter_kind="overlayfs")
    try:
        snaps = store.snapshots
        parent, child = "sha256:" + "a" * 64, "sha256:" + "b" * 64
        snaps.prepare("extract-child", None)
        snaps.prepare("extract-parent", None)
        snaps.commit(parent, "extract-parent")
        snaps.adopt("extract-child", parent)
        snaps.commit(child, "extract-child")
        assert snaps.stat(parent).id > snaps.stat(child).id
        store.gc()  # no image uses either
        assert snaps.walk() == []
    finally:
        store.close()


# --- inspection -------------------------------------------------------------------------------------------


@pytest.mark.unit
def test_inspect_and_history(store: ImageStore) -> None:
    history = [History(created="2024-01-01T00:00:00Z", created_by="ADD base"),
               History(created="2024-01-01T00:00:01Z", created_by="ENV X=1", empty_layer=True),
               History(created="2024-01-01T00:00:02Z", created_by="COPY app", comment="c")]
    img = add_image(store, [BASE, APP], ["busybox:1"], history=history)
    data = store.inspect("busybox:1")
    assert data["Id"] == str(img.id) and data["RepoTags"] == ["busybox:1"]
    assert data["RepoDigests"] == [f"busybox@{img.manifest_digest}"]
    assert data["RootFS"]["Layers"] == [str(BASE[1]), str(APP[1])]
    assert data["Os"] == "linux" and data["Architecture"] == "amd64"
    compressed = sum(d.size for d in img.layers)
    assert data["Size"] == compressed  # uncompressed sizes are learnt by unpacking
    store.unpack(img)
    assert store.size(img) == 2 * 10240
    hist = store.history(img)
    assert [h["created_by"] for h in hist] == ["COPY app", "ENV X=1", "ADD base"]
    assert [h["size"] for h in hist] == [10240, 0, 10240]
    assert hist[0]["diff_id"] == str(APP[1]) and hist[1]["diff_id"] is None


# --- unpacking ---------------------------------------------------------------------------------------------


@pytest.mark.unit
def test_unpack_copy_snapshotter(store: ImageStore, tmp_path: Path) -> None:
    img = add_image(store, [BASE, APP], ["app"])
    top = store.unpack(img)
    assert top == img.chain_ids[-1] and store.is_unpacked(img)
    mounts = store.snapshots.mounts(str(top))
    root = Path(mounts[0].source)
    assert (root / "etc/os-release").read_text() == "ID=berth\n"
    assert (root / "app/main").exists() and not (root / "bin/sh").exists()  # whiteout applied
    info = store.snapshots.stat(str(top))
    assert info.parent == str(img.chain_ids[0]) and info.labels["berth.diff-id"] == str(APP[1])
    # A second image on the same base unpacks only its own layer.
    other = add_image(store, [BASE, OTHER], ["other"])
    before = {i.key: i.id for i in store.snapshots.walk()}
    store.unpack(other)
    after = {i.key: i.id for i in store.snapshots.walk()}
    assert after[str(BASE[1])] == before[str(BASE[1])]
    assert len(after) == 3


@pytest.mark.unit
def test_unpack_verifies_diff_ids(store: ImageStore) -> None:
    lie = Digest.from_bytes(b"not this layer")
    img = add_image(store, [BASE], ["liar"], diff_ids=[lie])
    with pytest.raises(InvalidArgument, match="DiffID"):
        store.unpack(img)
    assert store.snapshots.walk() == []  # nothing half-made is kept
    assert not store.is_unpacked(img)


@pytest.mark.unit
def test_unpack_missing_blob(store: ImageStore) -> None:
    img = add_image(store, [BASE], ["x"])
    store.content.delete(img.layers[0].digest)
    with pytest.raises(NotFound):
        store.unpack(img)
    assert store.snapshots.walk() == []


@pytest.mark.root
def test_unpack_on_overlay_and_run_view(tmp_path: Path) -> None:
    if not overlay_supported(tmp_path / "root/snapshots"):
        pytest.skip("overlayfs is not usable here")
    store = ImageStore(tmp_path / "root")
    assert store.snapshots.name == "overlayfs"
    opaque = layer([entry("opaque", "etc"), entry("file", "etc/only", b"1"),
                    entry("file", "usr/bin/tool", b"t", mode=0o4755, uid=0)])
    img = add_image(store, [BASE, APP, opaque], ["stack"])
    store.unpack(img)
    mounts = store.prepare_rootfs(img, "ctr")
    target = tmp_path / "mnt"
    target.mkdir()
    mount_all(mounts, target)
    try:
        assert sorted(os.listdir(target)) == ["app", "bin", "etc", "usr"]
        assert os.listdir(target / "etc") == ["only"]  # opaque: the base's os-release is hidden
        assert os.listdir(target / "bin") == []  # whiteout: sh is gone
        assert stat.S_IMODE((target / "usr/bin/tool").stat().st_mode) == 0o4755
    finally:
        unmount(target)
    store.snapshots.remove("ctr")
    store.remove("stack")
    assert store.snapshots.walk() == []
    store.close()


@pytest.mark.unit
def test_explicit_snapshotter(tmp_path: Path) -> None:
    snaps = CopySnapshotter(tmp_path / "elsewhere")
    store = ImageStore(tmp_path / "root", snapshotter=snaps)
    img = add_image(store, [BASE], ["x"])
    store.unpack(img)
    assert snaps.exists(str(img.chain_ids[0]))
    store.close()
