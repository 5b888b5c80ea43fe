"""The image store: which images exist, their names, and their unpacked layers.

An image is identified by its ID, the digest of its config (as Docker and Podman do), and records the
manifest it came from, its layers, their DiffIDs and chain IDs. Names are normalised references
(``docker.io/library/busybox:latest``); a name points at one image at a time, and tagging a name moves it.
Blobs live in the :class:`~berth.content.ContentStore`, unpacked layers in a snapshotter, keyed by chain
ID so that images sharing a base share its snapshots.

Persistence: SQLite (``<root>/images.db``, WAL, schema version in ``PRAGMA user_version``), not a JSON
index. berth has no daemon, so a pull, a ``tag`` and an ``rmi`` in three processes may change the index
at once; SQLite gives each of them an atomic, isolated transaction and crash safety without a
read-modify-rewrite of one file under a lock, and lookups by name, ID prefix or digest are queries
rather than scans. Python ships it.

Deletion frees space only through garbage collection: the roots are every image's manifest (and index)
digest, a manifest's children its config and layers, read from this database rather than from the blobs.
Writers that put blobs in the content store before recording the image (pull, load, import) hold a
:meth:`ImageStore.lease` (a shared flock) meanwhile; the collector takes it exclusively, so it never
sweeps a blob whose image is still on its way.
"""

from __future__ import annotations

import _thread
import os
import time

from berth.content import ContentStore
from berth.errors import AlreadyExists, Conflict, InvalidArgument, NotFound
from berth.fsutil import file_lock
from berth.oci import jsonc
from berth.oci.digest import HEX, Digest
from berth.oci.image import (
    Descriptor,
    ImageConfig,
    Index,
    Manifest,
    chain_ids,
    parse_manifest,
)
from berth.oci.reference import Reference
from berth.record import field, record
from berth.snapshots import Mount, Snapshotter, open_snapshotter
from berth.sqlitedb import connect, write

# Looking an image up and preparing a container's root is on `berth run`'s path: paths are strings,
# rows are parsed by berth.oci.jsonc, and json, re, pathlib, typing and threading stay off it.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import sqlite3
    from collections.abc import Callable, Iterable, Sequence
    from pathlib import Path
    from typing import Any

    from berth.images.layer import Readable

_SCHEMA = [
    """CREATE TABLE images (
        id                  TEXT PRIMARY KEY,          -- config digest
        manifest_digest     TEXT NOT NULL,
        manifest_media_type TEXT NOT NULL,
        config_media_type   TEXT NOT NULL,
        index_digest        TEXT,
        created             TEXT,                      -- the config's "created"
        added               REAL NOT NULL,
        os                  TEXT NOT NULL,
        architecture        TEXT NOT NULL,
        variant             TEXT,
        layers              TEXT NOT NULL,             -- JSON: layer descriptors
        diff_ids            TEXT NOT NULL,             -- JSON: digests
        repo_digests        TEXT NOT NULL DEFAULT '[]' -- JSON: "repository@manifest digest"
    )""",
    """CREATE TABLE names (
        name     TEXT PRIMARY KEY,                     -- normalised reference with a tag
        image_id TEXT NOT NULL REFERENCES images(id) ON DELETE CASCADE,
        added    REAL NOT NULL
    )""",
    "CREATE INDEX names_image ON names(image_id)",
    "CREATE INDEX images_manifest ON images(manifest_digest)",
    """CREATE TABLE diffs (
        diff_id TEXT PRIMARY KEY,                      -- a layer's DiffID
        size    INTEGER NOT NULL                       -- bytes of its uncompressed tar
    )""",
]

def _is_hex_prefix(text: str) -> bool:
    """``[sha256:]`` then 1 to 64 lowercase hex digits."""
    hexpart = text.removeprefix("sha256:")
    return 0 < len(hexpart) <= 64 and HEX.issuperset(hexpart)

#: Active snapshots the store makes while unpacking (under a lease: the collector, which holds the lease
#: exclusively, knows every one it sees is debris of a killed process).
EXTRACT_PREFIX = "extract-"


class LayerAbandoned(InvalidArgument):
    """A layer applied ahead of its parent was given up: the parent failed or the pull was cancelled."""


@record(frozen=True)
class Image:
    id: Digest
    names: tuple[str, ...]
    manifest_digest: Digest
    manifest_media_type: str
    config_media_type: str
    layers: tuple[Descriptor, ...]
    diff_ids: tuple[Digest, ...]
    created: str | None
    added: float
    os: str
    architecture: str
    variant: str | None = None
    index_digest: Digest | None = None
    repo_digests: tuple[str, ...] = ()
    chain_ids: tuple[Digest, ...] = field(default=())

    @property
    def short_id(self) -> str:
        return self.id.short()

    @property
    def top_layer(self) -> Digest | None:
        """The chain ID of the whole layer stack: the snapshot a container's rootfs is prepared on."""
        return self.chain_ids[-1] if self.chain_ids else None

    def references(self) -> list[Reference]:
        return [Reference.parse(n) for n in self.names]


@record(frozen=True)
class RemoveResult:
    untagged: list[str] = field(default_factory=list)
    deleted: list[Digest] = field(default_factory=list)


class ImageStore:
    """Images under ``root``: ``images.db``, ``content/`` (blobs) and ``snapshots/`` (unpacked layers)."""

    def __init__(self, root: str | os.PathLike[str], *, content: ContentStore | None = None,
                 snapshotter: Snapshotter | None = None, snapshotter_kind: str = "auto") -> None:
        self._root = os.path.abspath(root)
        os.makedirs(self._root, mode=0o700, exist_ok=True)
        self.content = content if content is not None else ContentStore(os.path.join(self._root, "content"))
        self._snapshotter = snapshotter
        self._snapshotter_kind = snapshotter_kind
        self._lock = _thread.RLock()
        db_path = os.path.join(self._root, "images.db")
        self._db = connect(db_path, [";".join(_SCHEMA)], threads=True)

    @property
    def root(self) -> Path:
        from pathlib import Path

        return Path(self._root)

    @property
    def snapshots(self) -> Snapshotter:
        """The snapshotter, opened on first use (choosing overlayfs may need a test mount)."""
        if self._snapshotter is None:
            with self._lock:  # layers unpacking in parallel threads ask at once: open one, not two
                if self._snapshotter is None:
                    self._snapshotter = open_snapshotter(os.path.join(self._root, "snapshots"),
                                                         self._snapshotter_kind)
        return self._snapshotter

    def close(self) -> None:
        with self._lock:
            self._db.close()
        if self._snapshotter is not None:
            self._snapshotter.close()

    # -- adding -------------------------------------------------------------------------------------

    def add(self, manifest_digest: Digest, names: Iterable[str | Reference] = (), *,
            index_digest: Digest | None = None, repositories: Iterable[str] = ()) -> Image:
        """Record the image whose manifest (and config) are in the content store; tag it with ``names``.

        ``repositories`` (``docker.io/library/busybox``) are where it was pulled from, for RepoDigests.
        An image already present (same config) is updated to this manifest. Layers need not be present
        yet; :meth:`unpack` needs them.
        """
        manifest = self.read_manifest(manifest_digest)
        config_bytes = self.content.read_bytes(manifest.config.digest)
        config = ImageConfig.from_json(config_bytes)
        layers = list(manifest.layers)
        if len(layers) != len(config.diff_ids):
            raise InvalidArgument(
                f"image {manifest.config.digest}: the manifest has {len(layers)} layers, "
                f"the config {len(config.diff_ids)} diff_ids"
            )
        refs = [_tag_reference(n) for n in names]
        repos = {r.name for r in refs} | set(repositories)
        image_id = str(manifest.config.digest)
        now = time.time()
        with self._write() as db:
            row = db.execute("SELECT repo_digests FROM images WHERE id = ?", (image_id,)).fetchone()
            repo_digests = set(jsonc.loads(row["repo_digests"])) if row else set()
            repo_digests |= {f"{r}@{manifest_digest}" for r in repos}
            values = (
                str(manifest_digest), manifest.media_type, manifest.config.media_type,
                None if index_digest is None else str(index_digest), config.created, config.os,
                config.architecture, config.variant,
                jsonc.dumps([d.to_dict() for d in layers]), jsonc.dumps([str(d) for d in config.diff_ids]),
                jsonc.dumps(sorted(repo_digests)),
            )
            if row is None:
                db.execute(
                    "INSERT INTO images (manifest_digest, manifest_media_type, config_media_type, index_digest,"
                    " created, os, architecture, variant, layers, diff_ids, repo_digests, id, added)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", (*values, image_id, now))
            else:
                db.execute(
                    "UPDATE images SET manifest_digest = ?, manifest_media_type = ?, config_media_type = ?,"
                    " index_digest = ?, created = ?, os = ?, architecture = ?, variant = ?, layers = ?,"
                    " diff_ids = ?, repo_digests = ? WHERE id = ?", (*values, image_id))
            for ref in refs:
                db.execute("INSERT OR REPLACE INTO names (name, image_id, added) VALUES (?, ?, ?)",
                           (str(ref), image_id, now))
        return self.get(image_id)

    def read_manifest(self, digest: Digest) -> Manifest:
        doc = parse_manifest(self.content.read_bytes(digest))
        if isinstance(doc, Index):
            raise InvalidArgument(f"{digest} is an index, not an image manifest")
        return doc

    def config(self, image: Image | str) -> ImageConfig:
        img = image if isinstance(image, Image) else self.get(image)
        return ImageConfig.from_json(self.content.read_bytes(img.id))

    def config_bytes(self, image: Image) -> bytes:
        return self.content.read_bytes(image.id)

    def manifest(self, image: Image | str) -> Manifest:
        img = image if isinstance(image, Image) else self.get(image)
        return self.read_manifest(img.manifest_digest)

    def record_diff_size(self, diff_id: Digest, size: int) -> None:
        """Remember the uncompressed size of a layer (learnt when it is unpacked, loaded or exported)."""
        with self._write() as db:
            db.execute("INSERT OR REPLACE INTO diffs (diff_id, size) VALUES (?, ?)", (str(diff_id), size))

    def diff_size(self, diff_id: Digest) -> int | None:
        with self._lock:
            row = self._db.execute("SELECT size FROM diffs WHERE diff_id = ?", (str(diff_id),)).fetchone()
        return None if row is None else int(row[0])

    # -- lookup -------------------------------------------------------------------------------------

    def get(self, ref_or_id: str | Reference | Digest) -> Image:
        """The image named ``ref_or_id``: a name (``busybox``, ``host:5000/app:1``), ``name@digest``
        (the manifest or index digest), a full ID (``sha256:…``) or a unique ID prefix."""
        with self._lock:
            image_id = self._resolve(ref_or_id)
            return self._load(image_id)

    def exists(self, ref_or_id: str | Reference | Digest) -> bool:
        try:
            self.get(ref_or_id)
        except NotFound:
            return False
        return True

    def images(self) -> list[Image]:
        """Every image, newest first."""
        with self._lock:
            rows = self._db.execute("SELECT id FROM images ORDER BY added DESC").fetchall()
            return [self._load(r[0]) for r in rows]

    def _resolve(self, ref_or_id: str | Reference | Digest) -> str:
        db = self._db
        if isinstance(ref_or_id, Digest):
            text = str(ref_or_id)
        elif isinstance(ref_or_id, Reference):
            return self._resolve_reference(ref_or_id, str(ref_or_id))
        else:
            text = ref_or_id.strip()
        if not text:
            raise InvalidArgument("empty image name")
        full = text if text.startswith("sha256:") else f"sha256:{text}"
        if len(full) == 71:
            row = db.execute("SELECT id FROM images WHERE id = ?", (full,)).fetchone()
            if row is not None:
                return str(row[0])
        ref = None
        if not text.startswith("sha256:"):
            try:
                ref = Reference.parse(text)  # refuses a full image id: looked up below
            except InvalidArgument:
                pass
        if ref is not None:
            try:
                return self._resolve_reference(ref, text)
            except NotFound:
                pass
        if _is_hex_prefix(text):
            rows = db.execute("SELECT id FROM images WHERE id LIKE ? LIMIT 2", (full + "%",)).fetchall()
            if len(rows) == 1:
                return str(rows[0][0])
            if len(rows) > 1:
                raise Conflict(f"image ID prefix {text!r} is ambiguous")
        raise NotFound(f"image not known: {text}")

    def _resolve_reference(self, ref: Reference, text: str) -> str:
        db = self._db
        if ref.digest is not None:
            rows = db.execute("SELECT id, repo_digests FROM images WHERE manifest_digest = ? OR index_digest = ?",
                              (str(ref.digest), str(ref.digest))).fetchall()
            for row in rows:  # prefer an image known under that repository
                if any(rd.startswith(ref.name + "@") for rd in jsonc.loads(row["repo_digests"])):
                    return str(row["id"])
            if rows:
                return str(rows[0]["id"])
            raise NotFound(f"image not known: {text}")
        row = db.execute("SELECT image_id FROM names WHERE name = ?", (str(ref),)).fetchone()
        if row is None:
            raise NotFound(f"image not known: {text}")
        return str(row[0])

    def _load(self, image_id: str) -> Image:
        row = self._db.execute("SELECT * FROM images WHERE id = ?", (image_id,)).fetchone()
        if row is None:
            raise NotFound(f"image not known: {image_id}")
        names = tuple(r[0] for r in self._db.execute(
            "SELECT name FROM names WHERE image_id = ? ORDER BY added, name", (image_id,)))
        diff_ids = tuple(Digest.parse(d) for d in jsonc.loads(row["diff_ids"]))
        return Image(
            id=Digest.parse(row["id"]),
            names=names,
            manifest_digest=Digest.parse(row["manifest_digest"]),
            manifest_media_type=row["manifest_media_type"],
            config_media_type=row["config_media_type"],
            layers=tuple(Descriptor.from_json(d) for d in jsonc.loads(row["layers"])),
            diff_ids=diff_ids,
            created=row["created"],
            added=row["added"],
            os=row["os"],
            architecture=row["architecture"],
            variant=row["variant"],
            index_digest=None if row["index_digest"] is None else Digest.parse(row["index_digest"]),
            repo_digests=tuple(jsonc.loads(row["repo_digests"])),
            chain_ids=tuple(chain_ids(diff_ids)),
        )

    # -- names --------------------------------------------------------------------------------------

    def tag(self, ref_or_id: str | Reference | Digest, name: str | Reference) -> Image:
        """Point ``name`` at the image (moving it from another image if it was there)."""
        ref = _tag_reference(name)
        with self._write() as db:
            image_id = self._resolve(ref_or_id)
            db.execute("INSERT OR REPLACE INTO names (name, image_id, added) VALUES (?, ?, ?)",
                       (str(ref), image_id, time.time()))
            return self._load(image_id)

    def untag(self, name: str | Reference) -> Image:
        """Remove ``name``; the image stays (perhaps without names: dangling)."""
        ref = _tag_reference(name)
        with self._write() as db:
            row = db.execute("SELECT image_id FROM names WHERE name = ?", (str(ref),)).fetchone()
            if row is None:
                raise NotFound(f"no image is named {ref}")
            db.execute("DELETE FROM names WHERE name = ?", (str(ref),))
            return self._load(row[0])

    # -- removal and garbage collection ---------------------------------------------------------------

    def remove(self, ref_or_id: str | Reference | Digest, *, force: bool = False,
               collect: bool = True) -> RemoveResult:
        """``rmi``: given a name, untag it and delete the image if no name is left; given an ID, delete
        the image (Conflict if it has names in several repositories, unless ``force``).

        A deleted image's snapshots that no other image uses are removed (not those with children,
        e.g. a container's); with ``collect``, unreferenced blobs are then garbage collected.
        """
        result = RemoveResult()
        with self._write() as db:
            image_id = self._resolve(ref_or_id)
            image = self._load(image_id)
            by_name = self._is_name(ref_or_id, image)
            if by_name is not None and len(image.names) > 1:
                db.execute("DELETE FROM names WHERE name = ?", (by_name,))
                result.untagged.append(by_name)
                return result
            repos = {Reference.parse(n).name for n in image.names}
            if by_name is None and len(repos) > 1 and not force:
                raise Conflict(
                    f"image {image.short_id} is referenced in multiple repositories "
                    f"({', '.join(sorted(repos))}); remove it by name, or force"
                )
            result.untagged.extend(image.names)
            db.execute("DELETE FROM images WHERE id = ?", (image_id,))
            result.deleted.append(image.id)
            in_use = self._chains_in_use(db)
        self._free_snapshots(image.chain_ids, in_use)
        if collect:
            self.gc(wait=False)
        return result

    def _is_name(self, ref_or_id: str | Reference | Digest, image: Image) -> str | None:
        """The name ``ref_or_id`` denotes, if it is one of the image's names (not an ID)."""
        if isinstance(ref_or_id, Digest):
            return None
        try:
            ref = ref_or_id if isinstance(ref_or_id, Reference) else Reference.parse(ref_or_id)
        except InvalidArgument:
            return None
        return str(ref) if str(ref) in image.names else None

    def _chains_in_use(self, db: sqlite3.Connection) -> set[str]:
        used: set[str] = set()
        for row in db.execute("SELECT diff_ids FROM images"):
            used.update(str(c) for c in chain_ids(Digest.parse(d) for d in jsonc.loads(row[0])))
        return used

    def _free_snapshots(self, chains: Sequence[Digest], in_use: set[str]) -> None:
        for chain in reversed(chains):
            key = str(chain)
            if key in in_use:
                break  # its parents are in use too
            try:
                self.snapshots.remove(key)
            except NotFound:
                continue
            except Conflict:
                break  # something (a container, another image's layer) is built on it

    def dangling(self) -> list[Image]:
        return [img for img in self.images() if not img.names]

    def lease(self) -> file_lock:
        """Hold while putting blobs in the content store for an image not recorded yet."""
        return file_lock(os.path.join(self._root, "images.lock"), shared=True)

    def gc(self, *, wait: bool = True) -> int:
        """Delete blobs no image references and snapshots no image uses; return the bytes of blobs freed.

        Waits for leases to end (or, with ``wait=False``, does nothing while one is held: the next
        collection will do it).
        """
        with file_lock(os.path.join(self._root, "images.lock"), blocking=wait) as held:
            if not held:
                return 0
            with self._lock:
                rows = self._db.execute("SELECT manifest_digest, index_digest, id, layers FROM images").fetchall()
                in_use = self._chains_in_use(self._db)
            roots: list[Digest] = []
            children: dict[Digest, list[Digest]] = {}
            for row in rows:
                manifest = Digest.parse(row["manifest_digest"])
                roots.append(manifest)
                if row["index_digest"]:
                    roots.append(Digest.parse(row["index_digest"]))
                children[manifest] = [Digest.parse(row["id"])] + [
                    Digest.parse(d["digest"]) for d in jsonc.loads(row["layers"])
                ]
            freed = self.content.gc(roots, lambda d: children.get(d, []))
            self._gc_snapshots(in_use)
            return freed

    def _gc_snapshots(self, in_use: set[str]) -> None:
        if self._snapshotter is None and not os.path.exists(os.path.join(self._root, "snapshots")):
            return
        infos = self.snapshots.walk()
        by_key = {i.key: i for i in infos}
        children: dict[str, int] = {}
        for i in infos:
            if i.parent:
                children[i.parent] = children.get(i.parent, 0) + 1
        # Leaves first; a parent once its last child went. Not by id: a layer unpacked while it
        # downloads may be prepared before its parent (Snapshotter.adopt).
        todo = [i for i in infos if not children.get(i.key)]
        while todo:
            info = todo.pop()
            debris = info.key.startswith(EXTRACT_PREFIX)
            orphan = info.kind == "committed" and info.key.startswith("sha256:") and info.key not in in_use
            if not (debris or orphan):
                continue
            try:
                self.snapshots.remove(info.key)
            except (NotFound, Conflict):
                continue
            if info.parent:
                children[info.parent] -= 1
                if not children[info.parent] and info.parent in by_key:
                    todo.append(by_key[info.parent])
        self.snapshots.cleanup()

    # -- unpacking ----------------------------------------------------------------------------------

    def unpack(self, ref_or_id: str | Reference | Digest | Image) -> Digest | None:
        """Apply each layer of the image into a snapshot keyed by its chain ID, skipping those present;
        every layer's DiffID is checked against the config. Returns the top chain ID (None: no layers).
        """
        image = ref_or_id if isinstance(ref_or_id, Image) else self.get(ref_or_id)
        parent: str | None = None
        for desc, diff_id, chain in zip(image.layers, image.diff_ids, image.chain_ids, strict=True):
            self.unpack_layer(desc, diff_id, chain, parent)
            parent = str(chain)
        return image.top_layer

    def unpack_layer(self, desc: Descriptor, diff_id: Digest, chain: Digest, parent: str | None,
                     stream: Readable | None = None, parent_ready: Callable[[], bool] | None = None) -> None:
        """Apply one layer onto the snapshot ``parent`` and commit it as ``chain``.

        The layer is read from ``stream`` when given (a pull's download, followed as it arrives), else
        from the content store. The snapshot is committed only once its DiffID matches the config's —
        and, for a stream, once the stream has ended, which a pull's reader does only after the blob's
        digest was verified. On any failure the half-applied snapshot is removed.

        ``parent`` must be committed, unless ``parent_ready`` is given: a function that blocks until it
        is and says whether it is (False: it never will be; LayerAbandoned is raised). With a snapshotter
        whose layers are independent (overlay) the layer then applies at once, in parallel with its
        parent, waiting only where it must look below (:func:`~berth.images.layer.apply_layer`'s lazy
        lowers) and before its commit; otherwise it waits first.
        """
        key = str(chain)
        if self.snapshots.exists(key):
            return
        with self.lease():  # the collector never sees this snapshot half made
            if parent is not None and parent_ready is not None and not self.snapshots.exists(parent):
                if not self.snapshots.independent_layers:
                    self._wait_parent(parent_ready, parent)
                    parent_ready = None
            else:
                parent_ready = None
            self._apply_layer(desc, diff_id, key, parent, stream, parent_ready)

    @staticmethod
    def _wait_parent(parent_ready: Callable[[], bool], parent: str) -> None:
        if not parent_ready():
            raise LayerAbandoned(f"layer {parent} below was not unpacked")

    def _lower_dirs(self, parent: str) -> list[str]:
        """The directories of ``parent``'s layers, nearest first, as an overlay upper sees them below."""
        mounts = self.snapshots.mounts(parent)
        m = mounts[0]
        if m.type == "bind":
            return [m.source]
        return m.lower_dirs()

    def _apply_layer(self, desc: Descriptor, diff_id: Digest, key: str, parent: str | None,
                     stream: Readable | None, parent_ready: Callable[[], bool] | None) -> None:
        active = f"{EXTRACT_PREFIX}{os.urandom(16).hex()}-{key.partition(':')[2]}"  # not uuid: it imports platform
        mounts = self.snapshots.prepare(active, None if parent_ready is not None else parent,
                                        labels={"berth.layer": str(desc.digest)})
        try:
            import contextlib

            from berth.images.layer import apply_layer, apply_to_mounts  # only when a layer is missing

            source: Any = stream
            with contextlib.ExitStack() as stack:
                if source is None:
                    source = stack.enter_context(self.content.open(desc.digest))
                if parent_ready is not None and parent is not None:
                    ready, below = parent_ready, parent

                    def lowers() -> list[str]:
                        self._wait_parent(ready, below)
                        return self._lower_dirs(below)

                    result = apply_layer(source, mounts[0].source, overlay=True, lowers=lowers)
                    self._wait_parent(ready, below)
                    self.snapshots.adopt(active, below)
                else:
                    result = apply_to_mounts(source, mounts)
            if result.diff_id != diff_id:
                raise InvalidArgument(
                    f"layer {desc.digest}: its uncompressed content has DiffID {result.diff_id}, "
                    f"but the image config says {diff_id}"
                )
            self.record_diff_size(diff_id, result.size)
            try:
                self.snapshots.commit(key, active, labels={"berth.diff-id": str(diff_id)})
            except AlreadyExists:  # another process unpacked the same layer meanwhile
                self.snapshots.remove(active)
        except BaseException:
            try:
                self.snapshots.remove(active)
            except Exception:
                pass
            raise

    def is_unpacked(self, image: Image) -> bool:
        top = image.top_layer
        return top is None or self.snapshots.exists(str(top))

    def prepare_rootfs(self, image: Image | str, key: str, *, readonly: bool = False) -> list[Mount]:
        """Unpack the image if needed and make the snapshot ``key`` on it (a container's rootfs)."""
        img = image if isinstance(image, Image) else self.get(image)
        top = self.unpack(img)
        parent = None if top is None else str(top)
        if readonly:
            return self.snapshots.view(key, parent)
        return self.snapshots.prepare(key, parent)

    # -- inspection ---------------------------------------------------------------------------------

    def size(self, image: Image) -> int:
        """The image's size as Docker reports it: its layers uncompressed, when known; else compressed."""
        total = 0
        for desc, diff_id in zip(image.layers, image.diff_ids, strict=True):
            known = self.diff_size(diff_id)
            total += desc.size if known is None else known
        return total

    def history(self, image: Image | str) -> list[dict[str, Any]]:
        """The config's history, newest first (Docker's ``/images/{name}/history``), each entry with the
        size and DiffID of the layer it made (0 and None for ``empty_layer`` entries)."""
        img = image if isinstance(image, Image) else self.get(image)
        config = self.config(img)
        entries: list[dict[str, Any]] = []
        layer_index = 0
        for h in config.history or ():
            diff_id: Digest | None = None
            size = 0
            if not h.empty_layer and layer_index < len(img.diff_ids):
                diff_id = img.diff_ids[layer_index]
                known = self.diff_size(diff_id)
                size = img.layers[layer_index].size if known is None else known
                layer_index += 1
            entries.append({
                "created": h.created, "created_by": h.created_by or "", "author": h.author or "",
                "comment": h.comment or "", "empty_layer": bool(h.empty_layer), "size": size,
                "diff_id": None if diff_id is None else str(diff_id),
            })
        entries.reverse()
        return entries

    def inspect(self, image: Image | str) -> dict[str, Any]:
        """The image as ``docker image inspect`` shows it."""
        img = image if isinstance(image, Image) else self.get(image)
        config = self.config(img)
        size = self.size(img)
        return {
            "Id": str(img.id),
            "RepoTags": [Reference.parse(n).familiar() for n in img.names],
            "RepoDigests": [_familiar_digest(rd) for rd in img.repo_digests],
            "Created": config.created,
            "Author": config.author or "",
            "Config": {} if config.config is None else config.config.to_dict(),
            "Architecture": config.architecture,
            "Variant": config.variant,
            "Os": config.os,
            "Size": size,
            "VirtualSize": size,
            "RootFS": {"Type": "layers", "Layers": [str(d) for d in img.diff_ids]},
            "Metadata": {"LastTagTime": _iso(img.added)},
            "Digest": str(img.manifest_digest),
            "ManifestMediaType": img.manifest_media_type,
            "History": [h.to_dict() for h in config.history or ()],
        }

    # -- internals ----------------------------------------------------------------------------------

    def _write(self) -> write:
        return write(self._db, self._lock)


def _tag_reference(name: str | Reference) -> Reference:
    ref = name if isinstance(name, Reference) else Reference.parse(name)
    if ref.digest is not None:
        raise InvalidArgument(f"{ref}: a name with a digest cannot be a tag")
    if ref.tag is None:
        ref = ref.with_tag("latest")
    return ref


def _familiar_digest(repo_digest: str) -> str:
    repo, _, digest = repo_digest.partition("@")
    try:
        return f"{Reference.parse(repo).familiar_name}@{digest}"
    except InvalidArgument:
        return repo_digest


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts % 1 * 1e9):09d}Z"
