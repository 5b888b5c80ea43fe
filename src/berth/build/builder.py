"""Executing a Dockerfile: stages, steps, layers, the build cache.

Every step (but ARG and FROM) ends in an image in the store, untagged until the end: a config
instruction makes an image with the same layers and a changed config; RUN runs the command in a real
container on the current image (berth's runtime, network ``none``) and commits the container's
changes as a layer; COPY, ADD and WORKDIR write a layer tar directly. The last stage built (or
``--target``) is tagged only when every step succeeded.

The cache maps a key to the image a step produced: the key hashes the parent image's ID, the
instruction after substitution, the build arguments a RUN sees and, for COPY/ADD, the content and
metadata of the files copied. It lives in ``<image store root>/build-cache.db`` (SQLite), so it
survives across builds; an entry whose image was removed is a miss.

With ``SOURCE_DATE_EPOCH``, every ``created`` time is that instant and file times in new layers are
clamped to it, so building the same inputs twice gives the same image ID and manifest digest.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
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

from berth.build.context import Context
from berth.build.dockerfile import HEREDOC, Dockerfile, Instruction, expand, pairs, parse, syntax_error, words
from berth.errors import BerthError, InvalidArgument, NotFound, Unsupported
from berth.oci.digest import Digest
from berth.oci.image import (
    MEDIA_TYPE_IMAGE_CONFIG,
    MEDIA_TYPE_LAYER,
    ContainerConfig,
    Descriptor,
    History,
    ImageConfig,
    Manifest,
    Platform,
    normalize_arch,
)
from berth.record import replace as record_replace

if TYPE_CHECKING:
    from berth.engine.engine import Engine
    from berth.images.store import Image, ImageStore

DEFAULT_SHELL = ("/bin/sh", "-c")
#: Files the runtime creates as mount points in a RUN container; not part of the step's changes.
_RUNTIME_FILES = frozenset({"etc/hosts", "etc/resolv.conf", "etc/hostname", ".dockerenv"})
_CACHE_SCHEMA = "CREATE TABLE IF NOT EXISTS cache (key TEXT PRIMARY KEY, image_id TEXT NOT NULL, added REAL NOT NULL)"


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


class BuildCache:
    def __init__(self, root: str) -> None:
        self._db = sqlite3.connect(os.path.join(root, "build-cache.db"), timeout=60.0, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(_CACHE_SCHEMA)

    def get(self, key: str) -> str | None:
        row = self._db.execute("SELECT image_id FROM cache WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def put(self, key: str, image_id: str) -> None:
        self._db.execute("INSERT OR REPLACE INTO cache (key, image_id, added) VALUES (?, ?, ?)",
                         (key, image_id, time.time()))

    def close(self) -> None:
        self._db.close()


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
        for s in self.stages[:before]:
            if s.name == ref.lower() or (ref.isdigit() and int(ref) == s.index):
                return s
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
                src = ins.flag("from")
                if ins.cmd == "COPY" and src is not None:
                    dep = self._find_stage(expand(src, self.meta_args, self.escape), s.index)
                    if dep is not None:
                        visit(dep)

        visit(target)
        return needed

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
                platform = expand(platform, self.meta_args, self.escape)
            stage.image = self.engine.image(base, pull=self.opts.pull, platform=platform)
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
        layers = tuple(self.store.manifest(stage.image).layers) if stage.image is not None else ()
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
            f.seek(0)
            data = f.read()
        digest = self.store.content.put_bytes(data)
        self.store.record_diff_size(digest, len(data))
        self._commit(stage, key, self._cc(stage), text, (Descriptor(MEDIA_TYPE_LAYER, digest, len(data)), digest))
        return False

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
        key = _key("run", self._parent(stage), list(argv), build_env, self.opts.source_date_epoch)
        if self._cached(stage, key):
            return True
        if stage.image is None:
            raise InvalidArgument("RUN needs a base image with a shell (the stage is FROM scratch with no files)")
        name = f"berth-build-{os.urandom(6).hex()}"
        env = [f"{k}={val}" for k, val in build_env.items()]
        opts: dict[str, Any] = {"name": name, "entrypoint": "", "env": env, "pull": "never"}
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
        try:
            if code != 0:
                output = captured()
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
                    self._rewrite(raw, sink)

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

    def _rewrite(self, raw: Any, sink: _Sink) -> None:
        """Copy a RUN layer, dropping the runtime's mount-point files, clamping times."""
        with tarfile.open(fileobj=raw, mode="r|") as src, \
                tarfile.open(fileobj=sink, mode="w|", format=tarfile.PAX_FORMAT) as dst:  # type: ignore[call-overload]
            for m in src:
                name = m.name.removeprefix("./").strip("/")
                if name in _RUNTIME_FILES and m.isfile() and m.size == 0:
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
            entries = self._entries(ins, srcs, dest, dest_dir, root, from_ctx)
            digest = hashlib.sha256()
            archives: set[str] = set()
            for e in entries:
                if e.kind == "tarmember" and e.path is not None and e.path not in archives:
                    archives.add(e.path)
                    with open(e.path, "rb") as f:
                        while chunk := f.read(1 << 20):
                            digest.update(chunk)
                digest.update(json.dumps(e.meta(uid, gid, mode)).encode())
                if e.path is not None and e.kind == "file":
                    with open(e.path, "rb") as f:
                        while chunk := f.read(1 << 20):
                            digest.update(chunk)
                elif e.data is not None:
                    digest.update(e.data)
            text = " ".join([ins.cmd, *ins.flags_text(), *items])
            key = _key("copy", self._parent(stage), text, digest.hexdigest(), self.opts.source_date_epoch)

            def write(sink: _Sink) -> None:
                with tarfile.open(fileobj=sink, mode="w|", format=tarfile.PAX_FORMAT) as tf:  # type: ignore[call-overload]
                    for e in entries:
                        e.add(tf, uid, gid, mode, self._clamp)

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
        dep = self._find_stage(src, stage.index)
        image: Image | None
        image = dep.image if dep is not None else self.engine.image(src, pull=self.opts.pull)
        tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="berth-build-from-"))
        if image is None:
            return tmp, False
        from berth.snapshots.mount import mount_all, unmount

        key = f"build-from-{os.urandom(8).hex()}"
        mounts = self.store.prepare_rootfs(image, key, readonly=True)
        stack.callback(self.store.snapshots.remove, key)
        mount_all(mounts, tmp)
        stack.callback(unmount, tmp, True)
        return tmp, False

    def _entries(self, ins: Instruction, srcs: list[str], dest: str, dest_dir: bool, root: str,
                 from_ctx: bool) -> list[_Entry]:
        entries: list[_Entry] = []
        heredocs = {h.name: h for h in ins.heredocs}
        for src in srcs:
            if src.startswith("<<") and src.lstrip("<-").strip("'\"") in heredocs:
                h = heredocs[src.lstrip("<-").strip("'\"")]
                target = posixpath.join(dest, h.name) if dest_dir else dest
                entries.append(_Entry(target.lstrip("/"), "file", None, h.content.encode(), 0o644, time.time()))
                continue
            if ins.cmd == "ADD" and ("://" in src or src.startswith("git@")):
                raise Unsupported(f"ADD from a URL or git repository is not supported: {src}")
            if from_ctx:
                rels = self.context.resolve(src)
                walk = self.context.walk
            else:
                rels = _resolve_in(root, src)

                def walk(rel: str) -> list[str]:
                    return _walk_all(root, rel)
            for rel in rels:
                path = os.path.join(root, rel) if rel else root
                st = os.lstat(path)
                if stat.S_ISDIR(st.st_mode):
                    base = dest
                    for sub in walk(rel):
                        if sub == rel:
                            continue
                        inner = sub[len(rel):].lstrip("/") if rel else sub
                        entries.append(_Entry.of(posixpath.join(base, inner).lstrip("/"), os.path.join(root, sub)))
                    if base != "/":
                        entries.append(_Entry.of(base.lstrip("/"), path))
                    continue
                target = posixpath.join(dest, posixpath.basename(rel)) if dest_dir else dest
                if ins.cmd == "ADD" and stat.S_ISREG(st.st_mode) and _is_archive(path):
                    entries.extend(_archive_entries(path, dest))
                    continue
                entries.append(_Entry.of(target.lstrip("/"), path))
        # parents before children, one entry a path (the last wins)
        unique: dict[str, _Entry] = {}
        for e in entries:
            unique[e.name] = e
        return sorted(unique.values(), key=lambda e: e.name.split("/"))


_DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass
class _Entry:
    name: str
    kind: str  # file, dir, symlink, tarmember
    path: str | None
    data: bytes | None
    mode: int
    mtime: float
    link: str = ""
    member: tarfile.TarInfo | None = None

    @classmethod
    def of(cls, name: str, path: str) -> _Entry:
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

    def add(self, tf: tarfile.TarFile, uid: int, gid: int, mode: int | None, clamp: Any) -> None:
        if self.member is not None:
            ti = self.member
            ti.name = self.name
            with open(self.path or "", "rb") as f, tarfile.open(fileobj=f, mode="r:*") as src:
                for m in src:
                    if m.name == self.link:
                        ti.mtime = clamp(ti.mtime)
                        tf.addfile(ti, src.extractfile(m) if m.isfile() else None)
                        return
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


def _is_archive(path: str) -> bool:
    try:
        with tarfile.open(path, mode="r:*") as tf:
            return tf.next() is not None
    except (tarfile.TarError, OSError, EOFError):
        return False


def _archive_entries(path: str, dest: str) -> list[_Entry]:
    from berth.images.layer import clean_name

    out = []
    with tarfile.open(path, mode="r:*") as tf:
        for m in tf:
            name = clean_name(m.name)
            if not name or name == ".":
                continue
            target = posixpath.join(dest, name).lstrip("/")
            out.append(_Entry(target, "tarmember", path, None, m.mode, m.mtime, m.name, m))
    return out


def _resolve_in(root: str, src: str) -> list[str]:
    import fnmatch

    rel = posixpath.normpath("/" + src).lstrip("/")
    rel = "" if rel == "." else rel
    if not any(c in rel for c in "*?["):
        if not os.path.lexists(os.path.join(root, rel)):
            raise NotFound(f"COPY --from: {src} not found in the source image")
        return [rel]
    parts = rel.split("/")
    found = [""]
    for part in parts:
        nxt = []
        for base in found:
            d = os.path.join(root, base)
            if os.path.isdir(d):
                nxt += [posixpath.join(base, n) for n in sorted(os.listdir(d)) if fnmatch.fnmatchcase(n, part)]
        found = nxt
    if not found:
        raise NotFound(f"COPY --from: no files match {src}")
    return found


def _walk_all(root: str, rel: str) -> list[str]:
    out = [rel]
    top = os.path.join(root, rel) if rel else root
    if os.path.isdir(top) and not os.path.islink(top):
        for name in sorted(os.listdir(top)):
            out.extend(_walk_all(root, f"{rel}/{name}" if rel else name))
    return out


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
