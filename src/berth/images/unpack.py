"""Unpacking an image's layers while a pull downloads them.

Why: decompressing and creating the files of a layer takes longer than downloading it from a nearby
registry, so waiting for each blob to be complete before starting adds the two. A :class:`PullUnpacker`
is handed to :func:`berth.registry.pull.pull` (``on_config``, ``on_layer_stream``): for each layer blob
that starts downloading it gets a reader of the bytes as they arrive, and applies them on a thread of its
own (see Order below).

Safety: the reader ends only after the content store verified the blob's digest, and raises if it did not
match; the snapshot is committed only after that end and after the DiffID matched the config. A failed
layer's half-applied snapshot is removed, so nothing unverified is kept.

Order: with overlay, each layer's snapshot holds only its own changes, so layers apply in parallel, each
as its bytes arrive; a layer looks at the ones below only for hardlinks into them, whiteouts and the
metadata of directories it does not list — there, and before its commit (which names its parent), it
waits for its parent (:meth:`~berth.images.store.ImageStore.unpack_layer`). With the copying snapshotter a
snapshot starts as a copy of its parent, so each layer waits for its parent first, its bytes downloading
meanwhile (they wait in the ingest file, not in memory). Layers the pull did not download (already in
the store, or a download that had to restart from zero) are unpacked from the content store by
:meth:`PullUnpacker.finish`, in order.
"""

from __future__ import annotations

import contextlib
import threading

from berth.content.store import Follower, IngestRestarted
from berth.images.store import ImageStore, LayerAbandoned
from berth.oci.digest import Digest
from berth.oci.image import Descriptor, ImageConfig, Manifest, chain_ids

_PENDING, _RUNNING, _DONE, _FALLBACK, _FAILED = "pending", "running", "done", "fallback", "failed"


class _Slot:
    """One layer of the image: its place in the chain, and how far its unpacking got."""

    def __init__(self, desc: Descriptor, diff_id: Digest, chain: Digest, parent: _Slot | None) -> None:
        self.desc = desc
        self.diff_id = diff_id
        self.chain = chain
        self.parent = parent
        self.state = _PENDING
        self.thread: threading.Thread | None = None
        self.error: BaseException | None = None


class PullUnpacker:
    """Streams the layers of one pull into snapshots. Use: ``configure`` and ``stream`` as the pull's
    hooks, then :meth:`finish` after it returns, or :meth:`abort` if it raised."""

    def __init__(self, store: ImageStore) -> None:
        self._store = store
        self._cond = threading.Condition()
        self._slots: list[_Slot] = []
        self._cancelled = False

    def configure(self, manifest: Manifest, config: ImageConfig) -> None:
        """The pull's ``on_config`` hook: lay out the chain of snapshots to make."""
        parent: _Slot | None = None
        for desc, diff_id, chain in zip(manifest.layers, config.diff_ids, chain_ids(config.diff_ids), strict=True):
            parent = _Slot(desc, diff_id, chain, parent)
            self._slots.append(parent)

    def stream(self, desc: Descriptor, reader: Follower) -> None:
        """The pull's ``on_layer_stream`` hook: start applying the layer from ``reader`` on a thread."""
        with self._cond:
            slot = next((s for s in self._slots if s.desc.digest == desc.digest and s.thread is None
                         and s.state == _PENDING), None)
            if slot is None or self._cancelled:
                reader.close()
                return
            slot.state = _RUNNING
            slot.thread = threading.Thread(target=self._run, args=(slot, reader), daemon=True,
                                           name=f"berth-unpack-{desc.digest.encoded[:12]}")
        slot.thread.start()

    def _parent_ready(self, slot: _Slot) -> bool:
        """Wait until ``slot``'s parent layer is unpacked; False if it never will be (failed, cancelled)."""
        parent = slot.parent
        with self._cond:
            while parent is not None and parent.state not in (_DONE, _FAILED) and not self._cancelled:
                self._cond.wait()
            return not self._cancelled and (parent is None or parent.state == _DONE)

    def _run(self, slot: _Slot, reader: Follower) -> None:
        state, error = _FAILED, None
        try:
            parent = slot.parent
            self._store.unpack_layer(slot.desc, slot.diff_id, slot.chain,
                                     None if parent is None else str(parent.chain), stream=reader,
                                     parent_ready=lambda: self._parent_ready(slot))
            state = _DONE
        except (IngestRestarted, LayerAbandoned):
            # The download started over (what was read is void), or the layer below failed or the pull
            # was cancelled: finish() unpacks it from the store, or reports the error below it.
            state = _FALLBACK
        except BaseException as exc:
            error = exc
        finally:
            reader.close()
            with self._cond:
                slot.state, slot.error = state, error
                self._cond.notify_all()

    def finish(self) -> None:
        """After the pull: wait for the streaming threads, unpack the layers they did not, in order;
        raise the first layer's error (the later ones are stopped)."""
        try:
            for slot in self._slots:
                with self._cond:
                    while slot.state == _RUNNING:
                        self._cond.wait()
                    state, error = slot.state, slot.error
                if state == _DONE:
                    continue
                if state == _FAILED:
                    assert error is not None
                    raise error
                try:
                    self._store.unpack_layer(slot.desc, slot.diff_id, slot.chain,
                                             None if slot.parent is None else str(slot.parent.chain))
                except BaseException as exc:
                    self._set(slot, _FAILED, exc)
                    raise
                self._set(slot, _DONE)
        except BaseException:
            self.abort()
            raise
        self._join()

    def abort(self) -> None:
        """Stop: threads waiting for a parent give up; those applying end when their download does
        (a failed pull ends every download) and remove their half-applied snapshots."""
        with self._cond:
            self._cancelled = True
            self._cond.notify_all()
        self._join()

    def _set(self, slot: _Slot, state: str, error: BaseException | None = None) -> None:
        with self._cond:
            slot.state, slot.error = state, error
            self._cond.notify_all()

    def _join(self) -> None:
        for slot in self._slots:
            if slot.thread is not None:
                with contextlib.suppress(RuntimeError):
                    slot.thread.join()

