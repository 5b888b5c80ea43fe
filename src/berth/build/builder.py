"""Executing a Dockerfile: stages, steps, layers, the build cache.

Every step (but ARG and FROM) ends in an image in the store, untagged until the end: a config
instruction makes an image with the same layers and a changed config; RUN runs the command in a real
container on the current image (berth's runtime; network ``none`` unless ``--network`` or
``RUN --network`` say ``host``; ``RUN --mount`` binds, caches and tmpfs for the step only) and
commits the container's changes as a layer; COPY, ADD and WORKDIR write a layer tar directly. The
last stage built (or ``--target``) is tagged only when every step succeeded. The steps' images are
*intermediate*: ``berth images`` hides them, as Docker does, unless a build returned them.

The cache maps a key to the image a step produced: the key hashes the parent image's ID, the
instruction after substitution, the build arguments a RUN sees (and its network and mounts) and, for
COPY/ADD, the content and metadata of the files copied (not their times). It lives in
``<image store root>/build-cache.db`` (SQLite), so it survives across builds; an entry whose image
was removed is a miss.

With ``SOURCE_DATE_EPOCH``, every ``created`` time is that instant and file times in new layers are
clamped to it, so building the same inputs twice gives the same image ID and manifest digest. Images
are OCI with plain layers; ``--format docker`` gives Docker's media types with gzip layers (compressed
once per layer, reproducibly, and remembered in the cache database).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import posixpath
import sqlite3
import stat
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TextIO

from berth.build.context import Context, Ignore
from berth.build.dockerfile import HEREDOC, Dockerfile, Instruction, expand, pairs, parse, syntax_error, words
from berth.build.mounts import RunMount, parse_mount
from berth.build.sources import (
    Entry,
    archive_entries,
    copy_entry,
    download,
    hash_file,
    host_path,
    in_root,
    is_archive,
    is_git,
    resolve_in,
)
from berth.errors import AlreadyExists, BerthError, InvalidArgument, NotFound, Unsupported
from berth.oci.digest import Digest
from berth.oci.image import (
    DOCKER_CONFIG,
    DOCKER_LAYER_FOREIGN_GZIP,
    DOCKER_LAYER_GZIP,
    DOCKER_MANIFEST_V2,
    MEDIA_TYPE_IMAGE_CONFIG,
    MEDIA_TYPE_LAYER,
    MEDIA_TYPE_LAYER_GZIP,
    ContainerConfig,
    Descriptor,
    History,
    ImageConfig,
    Manifest,
    Platform,
    layer_compression,
    normalize_arch,
)
from berth.record import replace as record_replace

if TYPE_CHECKING:
    from berth.engine.engine import Engine
    from berth.images.store import Image, ImageStore

DEFAULT_SHELL = ("/bin/sh", "-c")
#: Files the runtime creates as mount points in a RUN container; not part of the step's changes.
_RUNTIME_FILES = frozenset({"etc/hosts", "etc/resolv.conf", "etc/hostname", ".dockerenv"})
_CACHE_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS cache (key TEXT PRIMARY KEY, image_id TEXT NOT NULL, added REAL NOT NULL)",
    # Images a build returned: its steps' other images are intermediate, hidden as Docker hides them.
    "CREATE TABLE IF NOT EXISTS results (image_id TEXT PRIMARY KEY)",
    # gzip-compressed copies of plain layers, made once for --format docker (Docker's layers are gzip).
    "CREATE TABLE IF NOT EXISTS gzip (diff_id TEXT PRIMARY KEY, digest TEXT NOT NULL, size INTEGER NOT NULL)",
)
_CACHE_FILE = "build-cache.db"
#: The networks a RUN step may use (``--network`` of the build, ``RUN --network``).
_RUN_NETWORKS = ("default", "none", "host")


class BuildError(BerthError):
    """A step failed; ``exit_code`` is a failing RUN's status."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass
class BuildOptions:
    tags: list[str] = field(default_factory=list)
    build_args: dict[str, str] = field(default_factory=dict)
    target: str | None = None
    no_cache: bool = False
    labels: dict[str, str] = field(default_factory=dict)
    quiet: bool = False
    source_date_epoch: int | None = None
    pull: str = "missing"
    #: The network of RUN steps: None (the engine's default, ``none``), ``none``, ``host``, or a network.
    network: str | None = None
    #: ``oci`` or ``docker``: the media types of the final image's manifest, config and layers.
    format: str = "oci"


class BuildCache:
    def __init__(self, root: str) -> None:
        self._db = sqlite3.connect(os.path.join(root, _CACHE_FILE), timeout=60.0, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        for statement in _CACHE_SCHEMA:
            self._db.execute(statement)

    def get(self, key: str) -> str | None:
        row = self._db.execute("SELECT image_id FROM cache WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def put(self, key: str, image_id: str) -> None:
        self._db.execute("INSERT OR REPLACE INTO cache (key, image_id, added) VALUES (?, ?, ?)",
                         (key, image_id, time.time()))

    def mark_result(self, image_id: str) -> None:
        self._db.execute("INSERT OR IGNORE INTO results (image_id) VALUES (?)", (image_id,))

    def gzip_copy(self, diff_id: str) -> tuple[str, int] | None:
        row = self._db.execute("SELECT digest, size FROM gzip WHERE diff_id = ?", (diff_id,)).fetchone()
        return None if row is None else (str(row[0]), int(row[1]))

    def put_gzip_copy(self, diff_id: str, digest: str, size: int) -> None:
        self._db.execute("INSERT OR REPLACE INTO gzip (diff_id, digest, size) VALUES (?, ?, ?)",
                         (diff_id, digest, size))

    def intermediates(self) -> set[str]:
        rows = self._db.execute(
            "SELECT DISTINCT image_id FROM cache WHERE image_id NOT IN (SELECT image_id FROM results)").fetchall()
        return {str(r[0]) for r in rows}

    def close(self) -> None:
        self._db.close()


def intermediate_images(store_root: str) -> set[str]:
    """IDs of the images build steps made that no build returned (``berth images`` hides them)."""
    path = os.path.join(store_root, _CACHE_FILE)
    if not os.path.exists(path):
        return set()
    cache = BuildCache(store_root)
    try:
        return cache.intermediates()
    finally:
        cache.close()


@dataclass
class _Stage:
    index: int
    name: str | None
    instructions: list[Instruction]
    image: Image | None = None
    config: ImageConfig | None = None
    args: dict[str, str] = field(default_factory=dict)
    cmd_set: bool = False


def _rfc3339(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(int(t)))


def _host_platform() -> Platform:
    host = Platform.host()
    arch, variant = normalize_arch(os.uname().machine)
    return Platform(host.os, arch, variant or None)


#: Build arguments Docker accepts without an ARG: passed to RUN, never cached or recorded.
_PROXY_ARGS = frozenset({f(n) for n in ("HTTP_PROXY", "HTTPS_PROXY", "FTP_PROXY", "NO_PROXY", "ALL_PROXY")
                         for f in (str.upper, str.lower)})


def _platform_args() -> dict[str, str]:
    """BuildKit's automatic platform arguments (the build runs on and for the host's platform)."""
    plat = _host_platform()
    spec = f"{plat.os}/{plat.architecture}" + (f"/{plat.variant}" if plat.variant else "")
    out: dict[str, str] = {}
    for prefix in ("BUILD", "TARGET"):
        out.update({f"{prefix}PLATFORM": spec, f"{prefix}OS": plat.os, f"{prefix}ARCH": plat.architecture,
                    f"{prefix}VARIANT": plat.variant or ""})
    return out


def _key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


class _Sink:
    """A file that digests what is written to it."""

    def __init__(self, f: Any) -> None:
        self.f = f
        self.h = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.f.write(data)
        self.h.update(data)
        self.size += len(data)
        return len(data)

    def flush(self) -> None:
        self.f.flush()


class Builder:
    def __init__(self, engine: Engine, context: Context, dockerfile: str | Dockerfile,
                 options: BuildOptions | None = None, out: TextIO | None = None) -> None:
        self.engine = engine
        self.store: ImageStore = engine.image_store
        self.context = context
        self.df = dockerfile if isinstance(dockerfile, Dockerfile) else parse(dockerfile)
        self.opts = options or BuildOptions()
        self.out = out or sys.stdout
        self.escape = self.df.escape
        self.cache = BuildCache(str(self.store.root))
        self.step = 0
        self.total = 0
        self.stages: list[_Stage] = []
        self.meta_args: dict[str, str] = {}

    # -- output -------------------------------------------------------------------------------------

    def _say(self, text: str) -> None:
        if not self.opts.quiet:
            self.out.write(text + "\n")
            self.out.flush()

    def _now(self) -> str:
        epoch = self.opts.source_date_epoch
        return _rfc3339(epoch if epoch is not None else time.time())

    def _clamp(self, mtime: float) -> int:
        epoch = self.opts.source_date_epoch
        return int(mtime if epoch is None else min(mtime, epoch))

    # -- the build ----------------------------------------------------------------------------------

    def build(self) -> Image:
        try:
            return self._build()
        finally:
            self.cache.close()

    def _build(self) -> Image:
        meta, stage_lists = self.df.stages()
        self.meta_args.update(_platform_args())
        declared = {ins.args.partition("=")[0] for ins in self.df.instructions if ins.cmd == "ARG"}
        unused = sorted(set(self.opts.build_args) - declared - _PROXY_ARGS - set(self.meta_args))
        if unused:
            self._say(f"[Warning] One or more build-args {unused} were not consumed")
        for ins in meta:
            name, eq, default = ins.args.partition("=")
            value = self.opts.build_args.get(name)
            if value is None and eq:
                value = expand(default, self.meta_args, self.escape)
            if value is not None:
                self.meta_args[name] = value
        for idx, instructions in enumerate(stage_lists):
            w = instructions[0].args.split()
            self.stages.append(_Stage(idx, w[2].lower() if len(w) == 3 else None, instructions))
        target = self._target()
        needed = self._needed(target)
        self.total = sum(len(s.instructions) for s in self.stages if s.index in needed)
        for stage in self.stages:
            if stage.index in needed:
                self._run_stage(stage)
        assert target.image is not None
        image = target.image
        if self.opts.labels:
            labels = dict((target.config.config or ContainerConfig()).labels or {}) if target.config else {}
            labels.update(self.opts.labels)
            text = " ".join(f"{k}={json.dumps(v)}" for k, v in sorted(self.opts.labels.items()))
            self._config_step(target, f"LABEL {text}", lambda cc: record_replace(cc, labels=labels))
            assert target.image is not None
            image = target.image
        image = self._with_format(image)
        self.cache.mark_result(str(image.id))
        for tag in self.opts.tags:
            image = self.store.tag(image.id, tag)
            self._say(f"Successfully tagged {tag}")
        self._say(f"Successfully built {image.id.short()}")
        return image

    def _target(self) -> _Stage:
        if self.opts.target is None:
            return self.stages[-1]
        for s in self.stages:
            if s.name == self.opts.target.lower():
                return s
        raise NotFound(f"target stage {self.opts.target!r} could not be found")

    def _find_stage(self, ref: str, before: int) -> _Stage | None:
        """The stage ``ref`` (a name or an index) among the first ``before``; None if ``ref`` names no
        stage (it is an image then). An index that is not an earlier stage is an error."""
        for s in self.stages[:before]:
            if s.name == ref.lower() or (ref.isdigit() and int(ref) == s.index):
                return s
        if ref.isdigit():
            raise InvalidArgument(f"stage {ref} is not an earlier stage of this Dockerfile (this is stage {before})")
        return None

    def _needed(self, target: _Stage) -> set[int]:
        needed: set[int] = set()

        def visit(s: _Stage) -> None:
            if s.index in needed:
                return
            needed.add(s.index)
            base = expand(s.instructions[0].args.split()[0], self.meta_args, self.escape)
            dep = self._find_stage(base, s.index)
            if dep is not None:
                visit(dep)
            for ins in s.instructions:
                refs = [ins.flag("from")] if ins.cmd == "COPY" else []
                if ins.cmd == "RUN":
                    refs += [m.from_ref for m in self._mount_specs(ins)]
                for ref in refs:
                    if ref is None:
                        continue
                    try:
                        dep = self._find_stage(expand(ref, self.meta_args, self.escape), s.index)
                    except InvalidArgument as exc:
                        raise syntax_error(ins.line, f"{ins.cmd}: {exc}") from None
                    if dep is not None:
                        visit(dep)

        visit(target)
        return needed

    def _mount_specs(self, ins: Instruction) -> list[RunMount]:
        """``RUN --mount`` values parsed up front (a bad one fails the build before any step runs);
        variables of the stage are substituted again when the step runs."""
        out = []
        for spec in ins.flags.get("mount", []):
            try:
                out.append(parse_mount(expand(spec, self.meta_args, self.escape)))
            except BerthError as exc:
                if "$" in spec:  # may need the stage's ARG or ENV: checked when the step runs
                    continue
                raise type(exc)(f"Dockerfile:{ins.line}: RUN {exc}") from None
        return out

    def _run_stage(self, stage: _Stage) -> None:
        for ins in stage.instructions:
            self.step += 1
            self._say(f"Step {self.step}/{self.total} : {ins.original}")
            t0 = time.monotonic()
            cached = self._execute(stage, ins)
            took = time.monotonic() - t0
            ident = stage.image.id.short() if stage.image is not None else "scratch"
            self._say(f" ---> {'CACHED ' if cached else ''}{ident} {took:.2f}s")

    def _vars(self, stage: _Stage) -> dict[str, str]:
        env = dict(stage.args)
        cc = stage.config.config if stage.config is not None else None
        for item in (cc.env if cc is not None else None) or ():
            k, _, v = item.partition("=")
            env[k] = v
        return env

    def _execute(self, stage: _Stage, ins: Instruction) -> bool:
        try:
            return self._dispatch(stage, ins)
        except BuildError:
            raise
        except BerthError as exc:
            msg = str(exc)
            if msg.startswith("Dockerfile:"):
                raise
            raise type(exc)(f"Dockerfile:{ins.line}: {ins.cmd}: {msg}") from None

    def _dispatch(self, stage: _Stage, ins: Instruction) -> bool:
        cmd = ins.cmd
        if cmd == "FROM":
            self._from(stage, ins)
            return False
        if cmd == "ARG":
            name, eq, default = ins.args.partition("=")
            value = self.opts.build_args.get(name)
            if value is None:
                value = expand(default, self._vars(stage), self.escape) if eq else self.meta_args.get(name)
            if value is not None:
                stage.args[name] = value
            return False
        if cmd == "RUN":
            return self._run(stage, ins)
        if cmd in ("COPY", "ADD"):
            return self._copy(stage, ins)
        if cmd == "WORKDIR":
            return self._workdir(stage, ins)
        return self._config_instruction(stage, ins)

    # -- FROM -----------------------------------------------------------------------------------

    def _from(self, stage: _Stage, ins: Instruction) -> None:
        base = expand(ins.args.split()[0], self.meta_args, self.escape)
        dep = self._find_stage(base, stage.index)
        if dep is not None:
            stage.image, stage.config = dep.image, dep.config
        elif base.lower() == "scratch":
            plat = _host_platform()
            stage.image = None
            stage.config = ImageConfig(architecture=plat.architecture, os=plat.os, variant=plat.variant,
                                       diff_ids=(), config=ContainerConfig(env=(f"PATH={_DEFAULT_PATH}",)),
                                       history=())
        else:
            platform = ins.flag("platform")
            if platform is not None:
                platform = expand(platform, self.meta_args, self.escape) or None
            stage.image = self._image(base, platform, "FROM")
            stage.config = self.store.config(stage.image)
        triggers = list((stage.config.config.on_build if stage.config and stage.config.config else None) or ())
        if triggers and stage.image is not None:
            assert stage.config is not None and stage.config.config is not None
            stage.config = record_replace(
                stage.config, config=record_replace(stage.config.config, on_build=None))
            self._say(f"# Executing {len(triggers)} build trigger(s)")
            trigger_df = parse("\n".join(triggers), stages=False)
            for t in trigger_df.instructions:
                self._say(f" ---> Trigger: {t.original}")
                self._execute(stage, t)

    # -- committing -----------------------------------------------------------------------------

    def _cached(self, stage: _Stage, key: str) -> bool:
        if self.opts.no_cache:
            return False
        image_id = self.cache.get(key)
        if image_id is None:
            return False
        try:
            image = self.store.get(image_id)
        except NotFound:
            return False
        stage.image = image
        stage.config = self.store.config(image)
        return True

    def _commit(self, stage: _Stage, key: str, cc: ContainerConfig, created_by: str,
                layer: tuple[Descriptor, Digest] | None) -> None:
        assert stage.config is not None
        base = stage.config
        created = self._now()
        entry = History(created=created, created_by=created_by, comment="buildkit.dockerfile.v0",
                        empty_layer=None if layer is not None else True)
        diff_ids = base.diff_ids + ((layer[1],) if layer is not None else ())
        cfg = record_replace(base, diff_ids=diff_ids, created=created, config=cc,
                                  history=(*(base.history or ()), entry))
        layers = tuple(_oci_layer(d) for d in self.store.manifest(stage.image).layers) if stage.image else ()
        if layer is not None:
            layers += (layer[0],)
        with self.store.lease():
            config_bytes = cfg.to_json()
            config_digest = self.store.content.put_bytes(config_bytes)
            manifest = Manifest(config=Descriptor(MEDIA_TYPE_IMAGE_CONFIG, config_digest, len(config_bytes)),
                                layers=layers)
            manifest_digest = self.store.content.put_bytes(manifest.to_json())
            stage.image = self.store.add(manifest_digest)
        stage.config = cfg
        self.cache.put(key, str(stage.image.id))

    # -- --format ---------------------------------------------------------------------------------

    def _with_format(self, image: Image) -> Image:
        """The image with the manifest ``--format`` asks for (the same config, so the same ID)."""
        docker = self.opts.format == "docker"
        manifest = self.store.manifest(image)
        if (manifest.media_type == DOCKER_MANIFEST_V2) == docker:
            return image
        if docker:
            layers = tuple(self._docker_layer(d, diff_id) for d, diff_id in zip(manifest.layers, image.diff_ids,
                                                                                 strict=True))
            config = record_replace(manifest.config, media_type=DOCKER_CONFIG)
            converted = Manifest(config=config, layers=layers, media_type=DOCKER_MANIFEST_V2)
        else:
            converted = Manifest(config=record_replace(manifest.config, media_type=MEDIA_TYPE_IMAGE_CONFIG),
                                 layers=tuple(_oci_layer(d) for d in manifest.layers))
        with self.store.lease():
            return self.store.add(self.store.content.put_bytes(converted.to_json()))

    def _docker_layer(self, desc: Descriptor, diff_id: Digest) -> Descriptor:
        """A Docker layer descriptor: gzip as it is, a plain tar compressed once (and remembered)."""
        compression = layer_compression(desc.media_type)
        if compression == "gzip":
            return Descriptor(DOCKER_LAYER_GZIP, desc.digest, desc.size)
        if compression is not None:
            raise Unsupported(f"--format docker: layer {desc.digest} is {compression}-compressed, which Docker's "
                              "image format cannot describe; use --format oci")
        known = self.cache.gzip_copy(str(diff_id))
        if known is not None and self.store.content.exists(Digest.parse(known[0])):
            return Descriptor(DOCKER_LAYER_GZIP, Digest.parse(known[0]), known[1])
        import gzip

        with tempfile.TemporaryFile(dir=self.store.root) as f:
            sink = _Sink(f)
            # mtime=0: the same layer always compresses to the same bytes (reproducible digests)
            with self.store.content.open(desc.digest) as src, \
                    gzip.GzipFile(fileobj=sink, mode="wb", mtime=0) as gz:
                while chunk := src.read(1 << 20):
                    gz.write(chunk)
            digest = self._store_blob(f, sink)
        self.cache.put_gzip_copy(str(diff_id), str(digest), sink.size)
        return Descriptor(DOCKER_LAYER_GZIP, digest, sink.size)

    def _parent(self, stage: _Stage) -> str:
        return str(stage.image.id) if stage.image is not None else "scratch"

    def _cc(self, stage: _Stage) -> ContainerConfig:
        assert stage.config is not None
        return stage.config.config or ContainerConfig()

    def _config_step(self, stage: _Stage, text: str, change: Any) -> bool:
        key = _key("config", self._parent(stage), text, self.opts.source_date_epoch)
        if self._cached(stage, key):
            return True
        self._commit(stage, key, change(self._cc(stage)), text, None)
        return False

    def _layer_step(self, stage: _Stage, key: str, text: str, write: Any) -> bool:
        """A step adding a layer: ``write(f)`` writes the tar; it is stored and committed."""
        if self._cached(stage, key):
            return True
        with tempfile.TemporaryFile(dir=self.store.root) as f:
            sink = _Sink(f)
            write(sink)
            digest = self._store_blob(f, sink)
        self.store.record_diff_size(digest, sink.size)
        self._commit(stage, key, self._cc(stage), text, (Descriptor(MEDIA_TYPE_LAYER, digest, sink.size), digest))
        return False

    def _store_blob(self, f: Any, sink: _Sink) -> Digest:
        """Put the file ``sink`` wrote (and digested) in the content store, streaming it."""
        digest = Digest.parse(f"sha256:{sink.h.hexdigest()}")
        content = self.store.content
        if content.exists(digest):
            return digest
        try:
            w = content.writer(f"build-{digest.hex}-{os.urandom(8).hex()}", digest, sink.size)
        except AlreadyExists:
            return digest
        with w:
            f.seek(0)
            while chunk := f.read(1 << 20):
                w.write(chunk)
            w.commit()
        return digest

    # -- config instructions --------------------------------------------------------------------

    def _shell(self, stage: _Stage) -> tuple[str, ...]:
        return self._cc(stage).shell or DEFAULT_SHELL

    def _command(self, stage: _Stage, ins: Instruction) -> tuple[str, ...]:
        if ins.json is not None:
            return tuple(ins.json)
        return (*self._shell(stage), ins.args)

    def _config_instruction(self, stage: _Stage, ins: Instruction) -> bool:
        cmd, v, esc = ins.cmd, self._vars(stage), self.escape
        change: Any
        if cmd == "ENV":
            kv = pairs(ins.args, cmd, v, esc)
            text = "ENV " + " ".join(f"{k}={val}" for k, val in kv)

            def change(cc: ContainerConfig) -> ContainerConfig:
                env = {e.partition("=")[0]: e for e in (cc.env or ())}
                env.update({k: f"{k}={val}" for k, val in kv})
                return record_replace(cc, env=tuple(env.values()))
        elif cmd == "LABEL":
            kv = pairs(ins.args, cmd, v, esc)
            text = "LABEL " + " ".join(f"{k}={val}" for k, val in kv)

            def change(cc: ContainerConfig) -> ContainerConfig:
                return record_replace(cc, labels={**(cc.labels or {}), **dict(kv)})
        elif cmd == "MAINTAINER":
            text = f"MAINTAINER {ins.args}"

            def change(cc: ContainerConfig) -> ContainerConfig:
                return cc
        elif cmd == "EXPOSE":
            ports = []
            for w in words(ins.args, v, esc):
                port, _, proto = w.partition("/")
                if not port.replace("-", "").isdigit():
                    raise InvalidArgument(f"invalid port {w!r}")
                ports.append(f"{port}/{(proto or 'tcp').lower()}")
            text = "EXPOSE " + " ".join(ports)

            def change(cc: ContainerConfig) -> ContainerConfig:
                return record_replace(cc, exposed_ports=tuple(dict.fromkeys((*(cc.exposed_ports or ()),
                                                                                   *ports))))
        elif cmd == "USER":
            user = " ".join(words(ins.args, v, esc))
            text = f"USER {user}"

            def change(cc: ContainerConfig) -> ContainerConfig:
                return record_replace(cc, user=user)
        elif cmd == "VOLUME":
            vols = ins.json if ins.json is not None else words(ins.args, v, esc)
            vols = [expand(x, v, esc) for x in vols] if ins.json is not None else vols
            text = "VOLUME " + json.dumps(vols)

            def change(cc: ContainerConfig) -> ContainerConfig:
                return record_replace(cc, volumes=tuple(dict.fromkeys((*(cc.volumes or ()), *vols))))
        elif cmd == "STOPSIGNAL":
            sig = " ".join(words(ins.args, v, esc))
            text = f"STOPSIGNAL {sig}"

            def change(cc: ContainerConfig) -> ContainerConfig:
                return record_replace(cc, stop_signal=sig)
        elif cmd in ("CMD", "ENTRYPOINT"):
            argv = self._command(stage, ins) if (ins.json is not None or ins.args) else ()
            text = f"{cmd} {json.dumps(list(argv))}"
            if cmd == "CMD":
                stage.cmd_set = True

                def change(cc: ContainerConfig) -> ContainerConfig:
                    return record_replace(cc, cmd=argv or None)
            else:
                reset = not stage.cmd_set

                def change(cc: ContainerConfig) -> ContainerConfig:
                    return record_replace(cc, entrypoint=argv or None, cmd=None if reset else cc.cmd)
        elif cmd == "SHELL":
            assert ins.json is not None
            shell = tuple(ins.json)
            text = f"SHELL {json.dumps(list(shell))}"

            def change(cc: ContainerConfig) -> ContainerConfig:
                return record_replace(cc, shell=shell)
        elif cmd == "ONBUILD":
            trigger = ins.args
            text = f"ONBUILD {trigger}"

            def change(cc: ContainerConfig) -> ContainerConfig:
                return record_replace(cc, on_build=(*(cc.on_build or ()), trigger))
        elif cmd == "HEALTHCHECK":
            health = self._healthcheck(stage, ins)
            text = f"HEALTHCHECK {json.dumps(health, sort_keys=True)}"

            def change(cc: ContainerConfig) -> ContainerConfig:
                return record_replace(cc, healthcheck=health)
        else:  # pragma: no cover - the parser admits only known instructions
            raise syntax_error(ins.line, f"unknown instruction: {cmd}")
        return self._config_step(stage, text, change)

    def _healthcheck(self, stage: _Stage, ins: Instruction) -> dict[str, Any]:
        kind, _, rest = ins.args.partition(" ")
        if kind.upper() == "NONE":
            return {"Test": ["NONE"]}
        rest = rest.strip()
        sub = parse(f"CMD {rest}", stages=False).instructions[0]
        test = ["CMD", *sub.json] if sub.json is not None else ["CMD-SHELL", rest]
        health: dict[str, Any] = {"Test": test}
        for flag, field_name in (("interval", "Interval"), ("timeout", "Timeout"),
                                 ("start-period", "StartPeriod"), ("start-interval", "StartInterval")):
            value = ins.flag(flag)
            if value is not None:
                health[field_name] = _duration_ns(value, ins)
        retries = ins.flag("retries")
        if retries is not None:
            if not retries.isdigit():
                raise syntax_error(ins.line, f"HEALTHCHECK --retries must be a number, not {retries!r}")
            health["Retries"] = int(retries)
        return health

    # -- RUN --------------------------------------------------------------------------------------

    def _run(self, stage: _Stage, ins: Instruction) -> bool:
        if ins.heredocs and HEREDOC.fullmatch(ins.args.strip()):
            argv: tuple[str, ...] = (*self._shell(stage), ins.heredocs[0].content)
        elif ins.heredocs:
            script = ins.args + "\n" + "".join(h.content + h.name + "\n" for h in ins.heredocs)
            argv = (*self._shell(stage), script)
        else:
            argv = self._command(stage, ins)
        cc = self._cc(stage)
        env_names = {e.partition("=")[0] for e in (cc.env or ())}
        build_env = {k: val for k, val in sorted(stage.args.items()) if k not in env_names}
        text = "RUN " + (f"|{len(build_env)} " + " ".join(f"{k}={val}" for k, val in build_env.items()) + " "
                         if build_env else "") + " ".join(argv) + " # buildkit"
        security = ins.flag("security")
        if security not in (None, "sandbox"):
            raise Unsupported(f"RUN --security={security} is not supported (only sandbox)")
        network = self._run_network(ins)
        v = self._vars(stage)
        mounts = [parse_mount(expand(spec, v, self.escape)) for spec in ins.flags.get("mount", [])]
        sources = [self._mount_source(stage, m) for m in mounts]
        key = _key("run", self._parent(stage), list(argv), build_env, self.opts.source_date_epoch,
                   *([network] if network != "none" else []),
                   *([[m.kind, m.target, m.writable, m.size, m.cache_id, m.mode, m.uid, m.gid, src[1]]
                      for m, src in zip(mounts, sources, strict=True)]))
        if self._cached(stage, key):
            return True
        if stage.image is None:
            raise InvalidArgument("RUN needs a base image with a shell (the stage is FROM scratch with no files)")
        name = f"berth-build-{os.urandom(6).hex()}"
        env = [f"{k}={val}" for k, val in build_env.items()]
        # proxy settings reach RUN without an ARG, and stay out of the cache key and the history (Docker's rule)
        env += [f"{k}={val}" for k, val in sorted(self.opts.build_args.items())
                if k in _PROXY_ARGS and k not in build_env]
        opts: dict[str, Any] = {"name": name, "entrypoint": "", "env": env, "pull": "never", "network": network}
        with contextlib.ExitStack() as stack:
            if mounts:
                opts["binds"] = [self._bind(m, src[0], stack) for m, src in zip(mounts, sources, strict=True)
                                 if m.kind != "tmpfs"]
                opts["tmpfs"] = [f"{m.target}:{'size=' + m.size if m.size else ''}" for m in mounts
                                 if m.kind == "tmpfs"]
            return self._run_container(stage, ins, argv, key, text, name, opts, cc,
                                       {m.target.strip("/") for m in mounts})

    # -- RUN --mount ---------------------------------------------------------------------------------

    def _mount_source(self, stage: _Stage, m: RunMount) -> tuple[Any, str]:
        """What a mount shows and what the cache key learns of it: a bind from the context is keyed
        on its files' content and metadata, one from a stage or image on that image's ID."""
        if m.kind != "bind":
            return None, ""
        if m.from_ref is None:
            rel = self.context.clean(m.source)
            if rel and not self.context.included(rel) and not self.context.has_included_child(rel):
                raise NotFound(f"--mount: {m.source or '.'} is not in the build context (or is excluded)")
            path = in_root(self.context.root, rel, f"--mount source {m.source or '.'}")
            digest = hashlib.sha256()
            for inner in ["", *self._tree(path, rel, True, None)] if os.path.isdir(path) else [""]:
                entry = Entry.of(inner, os.path.join(path, inner) if inner else path)
                digest.update(json.dumps(entry.meta(0, 0, None)).encode())
                if entry.kind == "file" and entry.path is not None:
                    hash_file(digest, entry.path)
            return rel, digest.hexdigest()
        ref = expand(m.from_ref, self.meta_args, self.escape)
        image = self._source_image(ref, stage, "--mount from=")
        return image, str(image.id) if image is not None else "scratch"

    def _bind(self, m: RunMount, source: Any, stack: contextlib.ExitStack) -> dict[str, Any]:
        """The engine's bind for ``m``, made for this step (``stack`` undoes it)."""
        if m.kind == "cache":
            path = os.path.join(self.store.root, "build-mounts", hashlib.sha256(m.cache_id.encode()).hexdigest())
            if not os.path.isdir(path):
                os.makedirs(path, exist_ok=True)
                os.chown(path, m.uid, m.gid)
                os.chmod(path, m.mode)
            return {"source": path, "destination": m.target, "readonly": not m.writable}
        if m.from_ref is None:
            root, rel = self.context.root, str(source)
            plain = not self.context.ignore.rules
        else:
            root, rel = self._mount_image(source, stack), self.context.clean(m.source)
            plain = True
        path = in_root(root, rel, f"--mount source {m.source or '.'}")
        if plain and not m.writable:
            return {"source": path, "destination": m.target, "readonly": True}
        # a private copy: what .dockerignore hides stays hidden, and writes are thrown away
        tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="berth-build-mount-"))
        copy = os.path.join(tmp, "src")
        copy_entry(path, copy)
        if os.path.isdir(path):  # the context's view leaves ignored files out
            for inner in self._tree(path, rel, m.from_ref is None, None):
                copy_entry(os.path.join(path, inner), os.path.join(copy, inner))
        return {"source": copy, "destination": m.target, "readonly": not m.writable}

    def _run_network(self, ins: Instruction) -> str:
        """The RUN step's network: ``RUN --network`` (``default`` is the build's), else the build's."""
        wanted = ins.flag("network") or "default"
        if wanted not in _RUN_NETWORKS:
            raise syntax_error(ins.line, f"RUN --network={wanted}: use default, none or host")
        if wanted == "default":
            return self.opts.network or "none"
        return wanted

    def _run_container(self, stage: _Stage, ins: Instruction, argv: tuple[str, ...], key: str, text: str,
                       name: str, opts: dict[str, Any], cc: ContainerConfig, mount_points: set[str]) -> bool:
        assert stage.image is not None
        if cc.working_dir:
            opts["workdir"] = cc.working_dir
        if cc.user:
            opts["user"] = cc.user
        self._say(" ---> Running in " + name)
        with self._output() as captured:
            try:
                code = self.engine.run_attached(str(stage.image.id), list(argv), remove=False, **opts)
            except BaseException:
                with contextlib.suppress(BerthError):
                    self.engine.remove(name, force=True)
                raise
            output = captured() if code != 0 else ""
        try:
            if code != 0:
                if output:
                    sys.stderr.write(output)
                raise BuildError(f"Dockerfile:{ins.line}: the command '{' '.join(argv)}' returned a non-zero "
                                 f"code: {code}", code)
            container = self.engine.get(name)
            snaps = self.store.snapshots

            def write(sink: _Sink) -> None:
                from berth.images.diff import write_diff

                with tempfile.TemporaryFile(dir=self.store.root) as raw:
                    upper = snaps.fs_path(snaps.stat(container.id).id)
                    if snaps.name == "overlayfs":
                        write_diff(raw, upper, overlay=True)
                    else:
                        parents = snaps.parents(container.id)
                        lower = snaps.fs_path(snaps.stat(parents[0]).id) if parents else None
                        write_diff(raw, upper, lower)
                    raw.seek(0)
                    self._rewrite(raw, sink, mount_points)

            self.cache_miss_layer(stage, key, text, write)
        finally:
            with contextlib.suppress(BerthError):
                self.engine.remove(name, force=True)
        return False

    def cache_miss_layer(self, stage: _Stage, key: str, text: str, write: Any) -> None:
        saved = self.opts.no_cache
        self.opts.no_cache = True  # the cache was consulted already
        try:
            self._layer_step(stage, key, text, write)
        finally:
            self.opts.no_cache = saved

    def _rewrite(self, raw: Any, sink: _Sink, mount_points: set[str]) -> None:
        """Copy a RUN layer, dropping the runtime's mount-point files (and the empty mount points of
        ``RUN --mount``), clamping times."""
        with tarfile.open(fileobj=raw, mode="r|") as src, \
                tarfile.open(fileobj=sink, mode="w|", format=tarfile.PAX_FORMAT) as dst:  # type: ignore[call-overload]
            for m in src:
                name = m.name.removeprefix("./").strip("/")
                if (name in _RUNTIME_FILES or name in mount_points) and (m.isdir() or (m.isfile() and m.size == 0)):
                    continue
                m.mtime = self._clamp(m.mtime)
                m.pax_headers = {k: val for k, val in m.pax_headers.items() if k not in ("mtime", "atime", "ctime")}
                dst.addfile(m, src.extractfile(m) if m.isfile() else None)

    @contextlib.contextmanager
    def _output(self) -> Iterator[Any]:
        """In quiet mode, send the container's output (our fds 1 and 2) to a file, shown on failure."""
        if not self.opts.quiet:
            yield lambda: ""
            return
        with tempfile.TemporaryFile() as f:
            sys.stdout.flush()
            sys.stderr.flush()
            saved = os.dup(1), os.dup(2)
            os.dup2(f.fileno(), 1)
            os.dup2(f.fileno(), 2)
            try:
                def read() -> str:
                    f.seek(0)
                    return f.read().decode(errors="replace")

                yield read
            finally:
                os.dup2(saved[0], 1)
                os.dup2(saved[1], 2)
                os.close(saved[0])
                os.close(saved[1])

    # -- WORKDIR ------------------------------------------------------------------------------------

    def _image_paths(self, stage: _Stage) -> list[str]:
        """The unpacked layer directories of the stage's image, top first."""
        if stage.image is None:
            return []
        self.store.unpack(stage.image)
        snaps = self.store.snapshots
        return [str(snaps.fs_path(snaps.stat(str(c)).id)) for c in reversed(stage.image.chain_ids)]

    def _exists_dir(self, stage: _Stage, path: str) -> bool:
        rel = path.strip("/")
        if not rel:
            return True
        return any(os.path.isdir(os.path.join(d, rel)) and not os.path.islink(os.path.join(d, rel))
                   for d in self._image_paths(stage))

    def _workdir(self, stage: _Stage, ins: Instruction) -> bool:
        v = self._vars(stage)
        path = " ".join(words(ins.args, v, self.escape))
        cc = self._cc(stage)
        if not path.startswith("/"):
            path = posixpath.join(cc.working_dir or "/", path)
        path = posixpath.normpath(path)
        text = f"WORKDIR {path}"
        missing: list[str] = []
        rel = path.strip("/")
        parts = rel.split("/") if rel else []
        for n in range(1, len(parts) + 1):
            sub = "/".join(parts[:n])
            if missing or not self._exists_dir(stage, sub):
                missing.append(sub)

        def change(c: ContainerConfig) -> ContainerConfig:
            return record_replace(c, working_dir=path)

        if not missing:
            return self._config_step(stage, text, change)
        key = _key("workdir", self._parent(stage), text, self.opts.source_date_epoch)
        if self._cached(stage, key):
            return True
        now = self._clamp(time.time())

        def write(sink: _Sink) -> None:
            with tarfile.open(fileobj=sink, mode="w|", format=tarfile.PAX_FORMAT) as tf:  # type: ignore[call-overload]
                for sub in missing:
                    ti = tarfile.TarInfo(sub)
                    ti.type, ti.mode, ti.mtime = tarfile.DIRTYPE, 0o755, now
                    tf.addfile(ti)

        assert stage.config is not None
        stage.config = record_replace(stage.config, config=change(cc))
        self.cache_miss_layer(stage, key, text, write)
        return False

    # -- COPY / ADD -------------------------------------------------------------------------------

    def _copy(self, stage: _Stage, ins: Instruction) -> bool:
        for flag in ("parents", "keep-git-dir"):
            if ins.flag(flag) is not None:
                raise Unsupported(f"{ins.cmd} --{flag} is not supported")
        v = self._vars(stage)
        raw = ins.json if ins.json is not None else words(ins.args, None, self.escape)
        items = [expand(x, v, self.escape) for x in raw]
        srcs, dest = items[:-1], items[-1]
        cc = self._cc(stage)
        dest_dir = dest.endswith("/") or dest.endswith("/.") or dest == "." or len(srcs) > 1 or any(
            c in s for s in srcs for c in "*?[")
        if not dest.startswith("/"):
            dest = posixpath.join(cc.working_dir or "/", dest)
        dest = posixpath.normpath(dest)
        if not dest_dir and dest != "/" and self._exists_dir(stage, dest):
            dest_dir = True
        uid, gid = self._chown(stage, ins.flag("chown"), v)
        chmod = ins.flag("chmod")
        mode = None
        if chmod is not None:
            try:
                mode = int(chmod, 8)
            except ValueError:
                raise InvalidArgument(f"invalid --chmod {chmod!r}: use an octal mode") from None
        with contextlib.ExitStack() as stack:
            root, from_ctx = self._copy_root(stage, ins, stack, v)
            entries = self._entries(ins, srcs, dest, dest_dir, root, from_ctx, stack)
            digest = hashlib.sha256()
            hashed: set[str] = set()
            for e in entries:
                if e.kind == "tarmember" and e.path is not None and e.path not in hashed:
                    hashed.add(e.path)
                    hash_file(digest, e.path)
                digest.update(json.dumps(e.meta(uid, gid, mode)).encode())
                if e.path is not None and e.kind == "file":
                    hash_file(digest, e.path)
                elif e.data is not None:
                    digest.update(e.data)
            text = " ".join([ins.cmd, *ins.flags_text(), *items])
            key = _key("copy", self._parent(stage), text, digest.hexdigest(), self.opts.source_date_epoch)

            def write(sink: _Sink) -> None:
                archives: dict[str, tarfile.TarFile] = {}
                try:
                    with tarfile.open(fileobj=sink, mode="w|", format=tarfile.PAX_FORMAT) as tf:  # type: ignore[call-overload]
                        for e in entries:
                            e.add(tf, uid, gid, mode, self._clamp, archives)
                finally:
                    for archive in archives.values():
                        archive.close()

            return self._layer_step(stage, key, text + " # buildkit", write)

    def _chown(self, stage: _Stage, spec: str | None, v: dict[str, str]) -> tuple[int, int]:
        if spec is None:
            return 0, 0
        spec = expand(spec, v, self.escape)
        user, _, group = spec.partition(":")
        uid = self._lookup(stage, "etc/passwd", user)
        gid = self._lookup(stage, "etc/group", group) if group else (
            uid if user.isdigit() else self._primary_gid(stage, user))
        return uid, gid

    def _read_image_file(self, stage: _Stage, rel: str) -> str:
        for d in self._image_paths(stage):
            p = os.path.join(d, rel)
            if os.path.isfile(p):
                with open(p, encoding="utf-8", errors="replace") as f:
                    return f.read()
        return ""

    def _lookup(self, stage: _Stage, db: str, name: str) -> int:
        if name.isdigit():
            return int(name)
        for line in self._read_image_file(stage, db).splitlines():
            fields = line.split(":")
            if len(fields) > 2 and fields[0] == name and fields[2].isdigit():
                return int(fields[2])
        raise NotFound(f"--chown: {name!r} is not in the image's /{db}")

    def _primary_gid(self, stage: _Stage, user: str) -> int:
        for line in self._read_image_file(stage, "etc/passwd").splitlines():
            fields = line.split(":")
            if len(fields) > 3 and fields[0] == user and fields[3].isdigit():
                return int(fields[3])
        raise NotFound(f"--chown: {user!r} is not in the image's /etc/passwd")

    def _copy_root(self, stage: _Stage, ins: Instruction, stack: contextlib.ExitStack, v: dict[str, str]
                   ) -> tuple[str, bool]:
        src = ins.flag("from")
        if src is None:
            return self.context.root, True
        src = expand(src, {**self.meta_args, **v}, self.escape)
        return self._mount_image(self._source_image(src, stage, "--from"), stack), False

    def _source_image(self, ref: str, stage: _Stage, what: str) -> Image | None:
        """An earlier stage's image (None for an empty scratch stage), else an image by name."""
        dep = self._find_stage(ref, stage.index)
        if dep is not None:
            return dep.image
        return self._image(ref, None, what)

    def _image(self, ref: str, platform: str | None, what: str) -> Image:
        try:
            return self.engine.image(ref, pull=self.opts.pull, platform=platform)
        except BerthError as exc:
            raise type(exc)(f"{what} {ref!r} is neither a stage of this Dockerfile nor an image that could be "
                            f"found: {exc}") from None

    def _mount_image(self, image: Image | None, stack: contextlib.ExitStack) -> str:
        """A temporary directory with ``image``'s root filesystem mounted read-only (empty for None)."""
        tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="berth-build-from-"))
        if image is None:
            return tmp
        from berth.snapshots.mount import mount_all, unmount

        key = f"build-from-{os.urandom(8).hex()}"
        mounts = self.store.prepare_rootfs(image, key, readonly=True)
        stack.callback(self.store.snapshots.remove, key)
        mount_all(mounts, tmp)
        stack.callback(unmount, tmp, True)
        return tmp

    def _entries(self, ins: Instruction, srcs: list[str], dest: str, dest_dir: bool, root: str,
                 from_ctx: bool, stack: contextlib.ExitStack) -> list[Entry]:
        entries: list[Entry] = []
        heredocs = {h.name: h for h in ins.heredocs}
        excludes = ins.flags.get("exclude")
        exclude = Ignore(excludes) if excludes else None
        checksum = ins.flag("checksum")
        for src in srcs:
            if src.startswith("<<") and src.lstrip("<-").strip("'\"") in heredocs:
                h = heredocs[src.lstrip("<-").strip("'\"")]
                target = posixpath.join(dest, h.name) if dest_dir else dest
                entries.append(Entry(target.lstrip("/"), "file", None, h.content.encode(), 0o644, time.time()))
                continue
            if ins.cmd == "ADD" and is_git(src):
                raise Unsupported(f"ADD from a git repository is not supported: {src}")
            if ins.cmd == "ADD" and src.startswith(("http://", "https://")):
                tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="berth-build-add-"))
                entries.append(download(src, dest, dest_dir, checksum, tmp))
                continue
            if checksum is not None:
                raise InvalidArgument(f"ADD --checksum applies to URLs only, not to {src}")
            if "://" in src:
                raise Unsupported(f"{ins.cmd}: unsupported source {src} (ADD takes http:// and https:// URLs)")
            rels = self.context.resolve(src) if from_ctx else resolve_in(root, src)
            for rel in rels:
                if exclude is not None and rel and exclude.excluded(posixpath.basename(rel)):
                    continue
                path = host_path(root, rel, f"{ins.cmd} {src}")
                st = os.lstat(path)
                if stat.S_ISDIR(st.st_mode):
                    for inner in self._tree(path, rel, from_ctx, exclude):
                        entries.append(Entry.of(posixpath.join(dest, inner).lstrip("/"), os.path.join(path, inner)))
                    if dest != "/":
                        entries.append(Entry.of(dest.lstrip("/"), path))
                    continue
                target = posixpath.join(dest, posixpath.basename(rel)) if dest_dir else dest
                if ins.cmd == "ADD" and stat.S_ISREG(st.st_mode) and is_archive(path):
                    tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="berth-build-add-"))
                    entries.extend(archive_entries(path, dest, tmp))
                    continue
                entries.append(Entry.of(target.lstrip("/"), path))
        # parents before children, one entry a path (the last wins)
        unique: dict[str, Entry] = {}
        for e in entries:
            unique[e.name] = e
        return sorted(unique.values(), key=lambda e: e.name.split("/"))

    def _tree(self, top: str, rel: str, from_ctx: bool, exclude: Ignore | None) -> list[str]:
        """What is under the directory ``top`` (the source ``rel``), relative to it, parents first and
        sorted, never following symlinks; without what .dockerignore (for the context) and
        ``--exclude`` leave out. A left-out directory is not entered unless a ``!`` rule may bring
        something under it back."""
        ignore = self.context.ignore
        prune = not ((from_ctx and ignore.has_exceptions) or (exclude is not None and exclude.has_exceptions))
        out: list[str] = []

        def visit(sub: str) -> None:
            for name in sorted(os.listdir(os.path.join(top, sub) if sub else top)):
                inner = f"{sub}/{name}" if sub else name
                keep = not (from_ctx and ignore.excluded(f"{rel}/{inner}" if rel else inner)) and not (
                    exclude is not None and exclude.excluded(inner))
                if keep:
                    out.append(inner)
                p = os.path.join(top, inner)
                if (keep or not prune) and os.path.isdir(p) and not os.path.islink(p):
                    visit(inner)

        visit("")
        return out


_DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def _oci_layer(desc: Descriptor) -> Descriptor:
    """The OCI media type of a layer (a Docker gzip layer is the same blob as an OCI gzip one)."""
    if desc.media_type in (DOCKER_LAYER_GZIP, DOCKER_LAYER_FOREIGN_GZIP):
        return Descriptor(MEDIA_TYPE_LAYER_GZIP, desc.digest, desc.size, urls=desc.urls)
    return desc


def _duration_ns(text: str, ins: Instruction) -> int:
    units = {"ns": 1, "us": 1_000, "ms": 1_000_000, "s": 1_000_000_000, "m": 60_000_000_000, "h": 3_600_000_000_000}
    total = 0.0
    rest = text
    import re

    for num, unit in re.findall(r"([0-9.]+)(ns|us|ms|s|m|h)", text):
        total += float(num) * units[unit]
        rest = rest.replace(num + unit, "", 1)
    if rest or not text:
        raise syntax_error(ins.line, f"invalid duration {text!r} (use 30s, 1m30s, 500ms)")
    return int(total)


def build(engine: Engine, context: Context, dockerfile: str, options: BuildOptions | None = None,
          out: TextIO | None = None) -> Image:
    """Parse ``dockerfile`` (text) and build it in ``context``; returns the final image."""
    return Builder(engine, context, dockerfile, options, out).build()
