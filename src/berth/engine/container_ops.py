"""The Engine's container operations beyond the life cycle (exec, top, stats, pause, rename, update,
prune, export, diff, commit, cp), as a mixin so the Engine class stays readable.

Every path a user names inside a container is resolved with openat2(RESOLVE_IN_ROOT) from a
descriptor of the container's rootfs (``berth.runtime.paths``), so a symlink planted in the container
(``/leak -> /etc/shadow``, ``/dir -> /root``) is followed *inside* the container and never reaches
the host's files.
"""

from __future__ import annotations

import os
import stat
import time

from berth.errors import BerthError, Conflict, InvalidArgument, NotFound

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, BinaryIO

    from berth.engine.db import Database
    from berth.engine.engine import Container
    from berth.images.store import Image, ImageStore

_CHUNK = 1 << 20
_O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC


class ContainerOps:
    """Mixed into ``Engine``; uses its ``db``, ``image_store``, ``runtime_argv`` and ``get``."""

    if TYPE_CHECKING:
        @property
        def db(self) -> Database: ...
        @property
        def image_store(self) -> ImageStore: ...

        def get(self, ref: str) -> Container: ...
        def containers(self, all: bool = True) -> list[Container]: ...
        def runtime_argv(self, name: str) -> list[str]: ...
        def container_runtime_argv(self, opts: dict[str, Any]) -> list[str]: ...
        def _runtime(self, c: Container, *args: str) -> str: ...
        def _bundle_dir(self, cid: str) -> str: ...
        def remove(self, ref: str, force: bool = False) -> None: ...
        def start(self, ref: str) -> Container: ...

    # ------------------------------------------------------------------ helpers

    def boot(self) -> list[str]:
        """After a reboot (an init system calls ``berth system boot``): settle every container's state,
        then start the ``always`` ones and the ``unless-stopped`` ones the user had not stopped.
        Returns the ids started."""
        started = []
        for c in self.containers():
            policy = (c.config.get("restart") or "no").partition(":")[0]
            if c.running or policy not in ("always", "unless-stopped"):
                continue
            if policy == "unless-stopped" and c.stopped_by_user:
                continue
            self.start(c.id)
            started.append(c.id)
        return started

    def _running(self, ref: str, action: str) -> Container:
        c = self.get(ref)
        if c.status == "paused":
            raise Conflict(f"cannot {action} container {c.name}: it is paused (unpause it first)")
        if c.status != "running":
            raise Conflict(f"cannot {action} container {c.name}: it is not running")
        return c

    def _oci_config(self, c: Container) -> dict[str, Any]:
        from berth.oci import jsonc

        with open(os.path.join(self._bundle_dir(c.id), "config.json"), "rb") as f:
            doc: dict[str, Any] = jsonc.loads(f.read())
        return doc

    def _write_oci_config(self, c: Container, doc: dict[str, Any]) -> None:
        from berth.fsutil import atomic_file
        from berth.oci import jsonc

        with atomic_file(os.path.join(self._bundle_dir(c.id), "config.json"), 0o600) as f:
            f.write(jsonc.dumps(doc).encode())

    def _rootfs(self, c: Container) -> str:
        """The container's merged filesystem on the host, mounted if it is not."""
        rootfs = os.path.join(c.state_dir, "rootfs")
        if not os.path.ismount(rootfs):
            from berth.snapshots.mount import mount_all

            os.makedirs(rootfs, mode=0o755, exist_ok=True)
            mount_all(self.image_store.snapshots.mounts(c.id), rootfs)
        return rootfs

    def _root_fd(self, c: Container) -> int:
        return os.open(self._rootfs(c), _O_DIR)

    # ------------------------------------------------------------------ exec

    def exec(self, ref: str, command: list[str], *, interactive: bool = False, tty: bool = False,
             detach: bool = False, env: list[str] | None = None, user: str | None = None,
             workdir: str | None = None) -> int:
        """Run ``command`` in the running container; return its exit status (0 once started with
        ``detach``). A missing command raises CommandNotFound (127), an unrunnable one CannotInvoke (126)."""
        import subprocess
        import tempfile

        from berth.engine.engine import _log_errors, _raise_runtime_error
        from berth.oci import jsonc

        if not command:
            raise InvalidArgument('"berth exec" requires a command')
        c = self._running(ref, "exec in")
        process = dict(self._oci_config(c)["process"])
        process["args"] = list(command)
        process["terminal"] = bool(tty and not detach)
        process.pop("consoleSize", None)
        if process["terminal"]:
            from berth.runtime.console import caller_size

            size = caller_size()
            if size is not None:
                process["consoleSize"] = size  # set before the command runs, not after
        if env:
            merged = {e.partition("=")[0]: e for e in process.get("env", [])}
            for item in env:
                key, eq, _ = item.partition("=")
                if not eq:  # -e NAME takes the caller's value, as Docker does
                    if key not in os.environ:
                        continue
                    item = f"{key}={os.environ[key]}"
                merged[key] = item
            process["env"] = list(merged.values())
        if user:
            process["user"] = self._resolve_user(c, user)
        if workdir:
            if not workdir.startswith("/"):
                raise InvalidArgument(f"invalid --workdir {workdir!r}: it must be an absolute path")
            process["cwd"] = workdir
        work = tempfile.mkdtemp(prefix="exec-", dir=c.state_dir)
        proc_file = os.path.join(work, "process.json")
        log = os.path.join(work, "runtime.log")
        with open(proc_file, "w") as f:
            f.write(jsonc.dumps(process))
        argv = [*self.container_runtime_argv(c.config), "--log", log, "--log-format", "json", "exec",
                "--process", proc_file]
        if detach:
            argv.append("--detach")
        receiver = None
        try:
            if process["terminal"]:
                # With a console socket the runtime detaches (runc insists): it sends the pty master
                # and leaves the process to us, its subreaper, to relay and wait for.
                from berth.kernel.syscalls import PR_SET_CHILD_SUBREAPER, prctl
                from berth.runtime.console import Receiver, relay
                from berth.runtime.lifecycle import wait_exit

                prctl(PR_SET_CHILD_SUBREAPER, 1)
                receiver = Receiver()
                pid_file = os.path.join(work, "pid")
                argv += ["--detach", "--pid-file", pid_file, "--console-socket", receiver.path]
                code = subprocess.run([*argv, c.id], stdin=subprocess.DEVNULL).returncode
                if code == 0:
                    with open(pid_file) as f:
                        pid = int(f.read())
                    code = relay(receiver.master(), pid, wait_exit)
            else:
                stdin = None if interactive else subprocess.DEVNULL
                code = subprocess.run([*argv, c.id], stdin=stdin).returncode
            errors = _log_errors(log) if code != 0 else []
        finally:
            if receiver is not None:
                receiver.close()
            import shutil

            shutil.rmtree(work, ignore_errors=True)
        if errors:
            _raise_runtime_error(errors)
        return code

    def _resolve_user(self, c: Container, spec: str) -> dict[str, Any]:
        """``USER[:GROUP]`` by name or number, from the container's own /etc/passwd and /etc/group."""
        name, _, group = spec.partition(":")
        passwd = self._read_db(c, "passwd")
        uid = gid = None
        for fields in passwd:
            if len(fields) >= 4 and name in (fields[0], fields[2]):
                uid, gid = int(fields[2]), int(fields[3])
                break
        if uid is None:
            if not name.isdigit():
                raise InvalidArgument(f"unable to find user {name}: no matching entries in passwd file")
            uid, gid = int(name), 0
        if group:
            for fields in self._read_db(c, "group"):
                if len(fields) >= 3 and group in (fields[0], fields[2]):
                    gid = int(fields[2])
                    break
            else:
                if not group.isdigit():
                    raise InvalidArgument(f"unable to find group {group}: no matching entries in group file")
                gid = int(group)
        return {"uid": uid, "gid": gid}

    def _read_db(self, c: Container, name: str) -> list[list[str]]:
        from berth.runtime.paths import open_in_root

        root = self._root_fd(c)
        try:
            fd = open_in_root(root, f"/etc/{name}", os.O_RDONLY)
        except OSError:
            return []
        finally:
            os.close(root)
        with os.fdopen(fd, encoding="utf-8", errors="replace") as f:
            return [line.rstrip("\n").split(":") for line in f if line.strip() and not line.startswith("#")]

    # ------------------------------------------------------------------ top, stats, pause, update

    def top(self, ref: str, ps_args: list[str] | None = None) -> str:
        """``ps`` output limited to the container's processes (the runtime's ``ps``)."""
        c = self.get(ref)
        if not c.running:
            raise Conflict(f"container {c.name} is not running")
        return self._runtime(c, "ps", c.id, *(ps_args or ["-ef"]))

    def runtime_stats(self, ref: str) -> dict[str, Any]:
        """One sample of the runtime's ``events --stats`` (runc's shape)."""
        import json

        c = self.get(ref)
        if not c.running:
            raise Conflict(f"container {c.name} is not running")
        out = self._runtime(c, "events", "--stats", c.id)
        data: dict[str, Any] = json.loads(out.splitlines()[0])["data"]
        return data

    def stats(self, refs: list[str] | None = None, interval: float = 0.5) -> list[dict[str, Any]]:
        """Docker's ``stats --no-stream`` figures for ``refs`` (default: the running containers), CPU %
        measured over ``interval`` seconds."""
        cs = [self.get(r) for r in refs] if refs else self.containers(all=False)
        first: dict[str, tuple[float, int]] = {}
        for c in cs:
            if c.running:
                try:
                    first[c.id] = (time.monotonic(), self.runtime_stats(c.id)["cpu"]["usage"]["total"])
                except BerthError:
                    pass
        if first:
            time.sleep(interval)
        host_mem = _host_memory()
        out = []
        for c in cs:
            row: dict[str, Any] = {"id": c.id, "name": c.name, "cpu_percent": 0.0, "mem_usage": 0, "mem_limit": 0,
                                   "mem_percent": 0.0, "pids": 0}
            if c.id in first:
                try:
                    data = self.runtime_stats(c.id)
                except BerthError:
                    data = None
                if data is not None:
                    t0, cpu0 = first[c.id]
                    elapsed = max(time.monotonic() - t0, 1e-6)
                    row["cpu_percent"] = max(0.0, (data["cpu"]["usage"]["total"] - cpu0) / 1e9 / elapsed * 100)
                    mem = data["memory"]
                    usage = int(mem["usage"]["usage"])
                    inactive = int((mem.get("raw") or {}).get("inactive_file", 0))
                    usage = max(0, usage - inactive)  # Docker's "used" memory leaves the page cache out
                    limit = int(mem["usage"]["limit"])
                    if not limit or limit >= host_mem:
                        limit = host_mem
                    row.update(mem_usage=usage, mem_limit=limit, mem_percent=usage / limit * 100 if limit else 0.0,
                               pids=int(data["pids"]["current"]))
            out.append(row)
        return out

    def pause(self, ref: str) -> None:
        c = self._running(ref, "pause")
        self._runtime(c, "pause", c.id)
        self.db.update_state(c.id, status="paused")

    def unpause(self, ref: str) -> None:
        c = self.get(ref)
        if c.status != "paused":
            raise Conflict(f"container {c.name} is not paused")
        self._runtime(c, "resume", c.id)
        self.db.update_state(c.id, status="running")

    def rename(self, ref: str, new_name: str) -> None:
        from berth.engine.engine import _valid_name

        c = self.get(ref)
        new_name = new_name.lstrip("/")
        if not _valid_name(new_name):
            raise InvalidArgument(f"invalid container name {new_name!r}: use [a-zA-Z0-9][a-zA-Z0-9_.-]*")
        if new_name == c.name:
            raise InvalidArgument(f"renaming a container with the same name as its current name: {new_name}")
        self.db.rename(c.id, new_name)

    def update(self, ref: str, *, memory: str | int | None = None, cpus: str | float | None = None,
               pids_limit: str | int | None = None, cpu_shares: str | int | None = None) -> Container:
        """Change a container's limits: live through the runtime when it runs, and in its stored
        configuration so that the next start keeps them."""
        import json
        import tempfile

        from berth.engine.spec import parse_size

        c = self.get(ref)
        resources: dict[str, Any] = {}
        opts: dict[str, Any] = {}
        if memory is not None:
            limit = parse_size(str(memory), "--memory")
            resources.setdefault("memory", {})["limit"] = limit
            opts["memory"] = str(memory)
        if cpus is not None:
            try:
                n = float(cpus)
            except ValueError:
                raise InvalidArgument(f"invalid --cpus {cpus!r}: expected a number") from None
            if n < 0:
                raise InvalidArgument(f"invalid --cpus {cpus!r}: must be positive")
            resources.setdefault("cpu", {}).update(period=100000, quota=int(n * 100000) if n else -1)
            opts["cpus"] = str(cpus)
        if cpu_shares is not None:
            try:
                resources.setdefault("cpu", {})["shares"] = int(cpu_shares)
            except ValueError:
                raise InvalidArgument(f"invalid --cpu-shares {cpu_shares!r}: expected a number") from None
            opts["cpu_shares"] = str(cpu_shares)
        if pids_limit is not None:
            try:
                resources["pids"] = {"limit": int(pids_limit)}
            except ValueError:
                raise InvalidArgument(f"invalid --pids-limit {pids_limit!r}: expected a number") from None
            opts["pids_limit"] = str(pids_limit)
        if not resources:
            raise InvalidArgument("you must provide one or more flags when using this command")
        if c.running:
            fd, path = tempfile.mkstemp(prefix="update-", suffix=".json", dir=c.state_dir)
            try:
                with os.fdopen(fd, "w") as f:
                    json.dump(resources, f)
                self._runtime(c, "update", "--resources", path, c.id)
            finally:
                os.unlink(path)
        doc = self._oci_config(c)
        stored = doc.setdefault("linux", {}).setdefault("resources", {})
        for section, values in resources.items():
            stored.setdefault(section, {}).update(values)
        self._write_oci_config(c, doc)
        self.db.update_config(c.id, {**c.config, **opts})
        return self.get(c.id)

    def prune(self) -> tuple[list[str], int]:
        """Remove every stopped container; return their ids and the bytes their layers held."""
        removed, reclaimed = [], 0
        for c in self.containers():
            if c.status not in ("exited", "created"):
                continue
            try:
                reclaimed += self.image_store.snapshots.usage(c.id).size
            except (BerthError, OSError):
                pass
            try:
                self.remove(c.id)
            except (NotFound, Conflict):
                continue
            removed.append(c.id)
        return removed, reclaimed

    # ------------------------------------------------------------------ filesystem: diff, export, commit

    def _write_changes(self, c: Container, out: BinaryIO) -> Any:
        """Write the container's changes over its image as a layer tar; returns write_diff's result."""
        from berth.images.diff import write_diff

        snaps = self.image_store.snapshots
        upper = snaps.fs_path(snaps.stat(c.id).id)
        if snaps.name == "overlayfs":
            return write_diff(out, upper, overlay=True)
        parents = snaps.parents(c.id)
        lower = snaps.fs_path(snaps.stat(parents[0]).id) if parents else None
        return write_diff(out, upper, lower)

    def _lowers(self, c: Container) -> list[str]:
        snaps = self.image_store.snapshots
        return [str(snaps.fs_path(snaps.stat(k).id)) for k in snaps.parents(c.id)]

    def diff(self, ref: str) -> list[tuple[str, str]]:
        """Docker's ``diff``: (kind, path) with kind A (added), C (changed) or D (deleted), by path."""
        import tarfile
        import tempfile

        from berth.images.layer import WHITEOUT_OPAQUE, WHITEOUT_PREFIX

        c = self.get(ref)
        lowers = self._lowers(c)
        changes: dict[str, str] = {}
        with tempfile.TemporaryFile(dir=c.state_dir) as f:
            self._write_changes(c, f)
            f.seek(0)
            with tarfile.open(fileobj=f, mode="r|") as tf:
                for member in tf:
                    path = "/" + member.name.strip("/").removeprefix("./")
                    if path == "/" or member.name in (".", "./"):
                        continue
                    parent, _, base = path.rpartition("/")
                    if base == WHITEOUT_OPAQUE:
                        changes.setdefault(parent or "/", "C")
                        continue
                    if base.startswith(WHITEOUT_PREFIX):
                        changes[f"{parent}/{base[len(WHITEOUT_PREFIX):]}"] = "D"
                        continue
                    in_lower = any(os.path.lexists(os.path.join(low, path.lstrip("/"))) for low in lowers)
                    changes[path] = "C" if in_lower else "A"
        return sorted(((kind, path) for path, kind in changes.items()), key=lambda kp: kp[1])

    def export(self, ref: str, out: BinaryIO) -> None:
        """Write the container's whole filesystem to ``out`` as a tar (symlinks as symlinks)."""
        import tarfile

        c = self.get(ref)
        rootfs = self._rootfs(c)
        with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tf:
            for name in sorted(os.listdir(rootfs)):
                tf.add(os.path.join(rootfs, name), arcname=name, filter=_plain)

    def commit(self, ref: str, repository: str | None = None, *, message: str | None = None,
               author: str | None = None, changes: list[str] | None = None, pause: bool = True) -> Image:
        """A new image: the container's image plus one layer of its changes, with the container's
        command and environment as defaults, ``changes`` (Dockerfile CMD, ENTRYPOINT, ENV, WORKDIR,
        USER, LABEL, EXPOSE, STOPSIGNAL) applied, and a history entry appended."""
        import tempfile

        from berth.images.archive import _ingest
        from berth.oci.image import (
            MEDIA_TYPE_IMAGE_CONFIG,
            MEDIA_TYPE_LAYER,
            ContainerConfig,
            Descriptor,
            History,
            Manifest,
        )
        from berth.record import replace as record_replace

        c = self.get(ref)
        store = self.image_store
        if repository is not None:
            from berth.images.store import _tag_reference

            _tag_reference(repository)  # a bad name fails before any work
        base = store.get(c.image_id)
        base_cfg = store.config(base)
        base_manifest = store.manifest(base)
        cc = base_cfg.config or ContainerConfig()
        if c.config.get("command"):
            cc = record_replace(cc, cmd=tuple(c.config["command"]))
        if c.config.get("env"):
            merged = {e.partition("=")[0]: e for e in (cc.env or ())}
            merged.update({e.partition("=")[0]: e for e in c.config["env"]})
            cc = record_replace(cc, env=tuple(merged.values()))
        for change in changes or []:
            cc = _apply_change(cc, change)
        paused = False
        if pause and c.status == "running":
            try:
                self._runtime(c, "pause", c.id)
                paused = True
            except BerthError:
                pass
        try:
            with store.lease(), tempfile.TemporaryFile(dir=store.root) as f:
                result = self._write_changes(c, f)
                f.seek(0)
                _ingest(store.content, f, result.diff_id, result.size)
        finally:
            if paused:
                self._runtime(c, "resume", c.id)
        store.record_diff_size(result.diff_id, result.size)
        created = _rfc3339(time.time())
        command = " ".join(c.config.get("command") or [])
        history = (*(base_cfg.history or ()), History(created=created, author=author,
                                                      created_by=command or None, comment=message))
        new_cfg = record_replace(base_cfg, diff_ids=(*base_cfg.diff_ids, result.diff_id), created=created,
                                      config=cc, history=history, author=author or base_cfg.author)
        with store.lease():
            config_bytes = new_cfg.to_json()
            config_digest = store.content.put_bytes(config_bytes)
            manifest = Manifest(
                config=Descriptor(MEDIA_TYPE_IMAGE_CONFIG, config_digest, len(config_bytes)),
                layers=(*base_manifest.layers, Descriptor(MEDIA_TYPE_LAYER, result.diff_id, result.size)),
            )
            manifest_digest = store.content.put_bytes(manifest.to_json())
            return store.add(manifest_digest, [repository] if repository else [])

    # ------------------------------------------------------------------ cp

    def copy_from(self, ref: str, src: str, dest: str) -> None:
        """``cp CONTAINER:SRC DEST``: every lookup of SRC is confined to the container's root."""
        from berth.runtime.paths import O_PATH, open_in_root

        c = self.get(ref)
        root = self._root_fd(c)
        try:
            try:
                fd = open_in_root(root, src, O_PATH)
            except FileNotFoundError:
                raise NotFound(f"could not find the file {src} in container {c.name}") from None
        finally:
            os.close(root)
        try:
            name = os.path.basename(src.rstrip("/")) or "rootfs"
            target = os.path.join(dest, name) if os.path.isdir(dest) else dest
            if stat.S_ISDIR(os.fstat(fd).st_mode):
                if src.endswith("/.") and os.path.isdir(dest):
                    target = dest
                _copy_tree_out(fd, target)
            else:
                if dest.endswith("/") and not os.path.isdir(dest):
                    raise InvalidArgument(f"destination directory {dest} does not exist")
                _copy_entry_out(fd, target)
        finally:
            os.close(fd)

    def copy_to(self, ref: str, src: str, dest: str) -> None:
        """``cp SRC CONTAINER:DEST``: DEST and each entry made under it are resolved inside the root."""
        import posixpath

        from berth.runtime.paths import O_PATH, clean, open_in_root

        c = self.get(ref)
        if not os.path.lexists(src):
            raise NotFound(f"no such file or directory: {src}")
        dest_clean = clean(dest)
        root = self._root_fd(c)
        try:
            try:
                fd = open_in_root(root, dest_clean, O_PATH)
                is_dir = stat.S_ISDIR(os.fstat(fd).st_mode)
                os.close(fd)
            except FileNotFoundError:
                is_dir = False
                try:
                    parent = open_in_root(root, posixpath.dirname(dest_clean), O_PATH)
                except FileNotFoundError:
                    raise NotFound(f"could not find the directory {posixpath.dirname(dest_clean)} "
                                   f"in container {c.name}") from None
                os.close(parent)
                if dest.endswith("/"):
                    raise NotFound(f"could not find the directory {dest_clean} in container {c.name}") from None
            name = os.path.basename(os.path.normpath(src))
            if is_dir and not (src.endswith("/.") and os.path.isdir(src)):
                target = posixpath.join(dest_clean, name)
            else:
                target = dest_clean
            _copy_in(root, src, target)
        finally:
            os.close(root)


# ---------------------------------------------------------------------- helpers


def _plain(info: Any) -> Any:
    info.uname = info.gname = ""
    return info


def _host_memory() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _rfc3339(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1e9):09d}Z"


def _apply_change(cc: Any, change: str) -> Any:
    """One ``commit -c`` instruction (Dockerfile syntax) applied to a ContainerConfig."""
    import json
    import shlex

    from berth.record import replace as record_replace

    word, _, arg = change.strip().partition(" ")
    word, arg = word.upper(), arg.strip()

    def command() -> tuple[str, ...]:
        if arg.startswith("["):
            try:
                parsed = json.loads(arg)
            except ValueError:
                parsed = None
            if isinstance(parsed, list) and all(isinstance(x, str) for x in parsed):
                return tuple(parsed)
        return ("/bin/sh", "-c", arg)

    if word == "CMD":
        return record_replace(cc, cmd=command())
    if word == "ENTRYPOINT":
        return record_replace(cc, entrypoint=command())
    if word == "WORKDIR":
        return record_replace(cc, working_dir=arg)
    if word == "USER":
        return record_replace(cc, user=arg)
    if word == "STOPSIGNAL":
        return record_replace(cc, stop_signal=arg)
    if word in ("ENV", "LABEL"):
        parts = shlex.split(arg)
        if len(parts) >= 2 and "=" not in parts[0]:
            pairs = [(parts[0], " ".join(parts[1:]))]
        else:
            pairs = [p.partition("=")[::2] for p in parts]
        if word == "ENV":
            merged = {e.partition("=")[0]: e for e in (cc.env or ())}
            merged.update({k: f"{k}={v}" for k, v in pairs})
            return record_replace(cc, env=tuple(merged.values()))
        return record_replace(cc, labels={**(cc.labels or {}), **dict(pairs)})
    if word == "EXPOSE":
        ports = [p if "/" in p else p + "/tcp" for p in arg.split()]
        return record_replace(cc, exposed_ports=tuple(dict.fromkeys([*(cc.exposed_ports or ()), *ports])))
    raise InvalidArgument(f"invalid --change {change!r}: CMD, ENTRYPOINT, ENV, WORKDIR, USER, LABEL, EXPOSE "
                          "and STOPSIGNAL can be changed")


def _reopen(fd: int, flags: int) -> int:
    """Open for reading what an O_PATH descriptor (already resolved inside the root) names."""
    return os.open(f"/proc/self/fd/{fd}", flags | os.O_CLOEXEC)


def _copy_entry_out(fd: int, target: str) -> None:
    """Copy one non-directory entry, named by an O_PATH descriptor, to the host path ``target``."""
    st = os.fstat(fd)
    if stat.S_ISLNK(st.st_mode):
        link = os.readlink("", dir_fd=fd)
        if os.path.lexists(target) and not os.path.isdir(target):
            os.unlink(target)
        os.symlink(link, target)
        return
    if not stat.S_ISREG(st.st_mode):
        raise InvalidArgument(f"cannot copy {target}: not a regular file, directory or symlink")
    src = _reopen(fd, os.O_RDONLY)
    try:
        dst = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, stat.S_IMODE(st.st_mode))
        try:
            while chunk := os.read(src, _CHUNK):
                os.write(dst, chunk)
            os.fchmod(dst, stat.S_IMODE(st.st_mode))
        finally:
            os.close(dst)
        os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    finally:
        os.close(src)


def _copy_tree_out(dir_fd: int, target: str) -> None:
    """Copy a directory (O_PATH descriptor) to ``target``; entries below are opened with O_NOFOLLOW
    relative to their parent, so nothing in the tree can lead outside it."""
    from berth.runtime.paths import O_PATH

    st = os.fstat(dir_fd)
    os.makedirs(target, exist_ok=True)
    listing = _reopen(dir_fd, _O_DIR)
    try:
        names = sorted(os.listdir(listing))
    finally:
        os.close(listing)
    for name in names:
        child = os.open(name, O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
        try:
            if stat.S_ISDIR(os.fstat(child).st_mode):
                _copy_tree_out(child, os.path.join(target, name))
            else:
                _copy_entry_out(child, os.path.join(target, name))
        finally:
            os.close(child)
    os.chmod(target, stat.S_IMODE(st.st_mode))


def _copy_in(root: int, src: str, target: str) -> None:
    """Copy the host path ``src`` to the container path ``target`` (resolved inside ``root``)."""
    import posixpath

    from berth.kernel.syscalls import RESOLVE_IN_ROOT, RESOLVE_NO_MAGICLINKS
    from berth.kernel.syscalls import openat2 as _openat2
    from berth.runtime.paths import O_PATH, ensure_in_root, open_in_root

    st = os.lstat(src)
    rel = target.lstrip("/") or "."
    if stat.S_ISDIR(st.st_mode):
        fd = ensure_in_root(root, target, is_dir=True)
        try:
            if not stat.S_ISDIR(os.fstat(fd).st_mode):
                raise InvalidArgument(f"cannot overwrite non-directory {target} with directory {src}")
        finally:
            os.close(fd)
        for name in sorted(os.listdir(src)):
            _copy_in(root, os.path.join(src, name), posixpath.join(target, name))
        fd = open_in_root(root, target, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fchmod(fd, stat.S_IMODE(st.st_mode))
        finally:
            os.close(fd)
        return
    parent = open_in_root(root, posixpath.dirname(target), O_PATH)
    try:
        name = posixpath.basename(target)
        if stat.S_ISLNK(st.st_mode):
            try:
                existing = os.stat(name, dir_fd=parent, follow_symlinks=False)
                if stat.S_ISDIR(existing.st_mode):
                    raise InvalidArgument(f"cannot overwrite directory {target} with a symlink")
                os.unlink(name, dir_fd=parent)
            except FileNotFoundError:
                pass
            os.symlink(os.readlink(src), name, dir_fd=parent)
            return
        if not stat.S_ISREG(st.st_mode):
            raise InvalidArgument(f"cannot copy {src}: not a regular file, directory or symlink")
    finally:
        os.close(parent)
    # The kernel resolves the whole path, a final symlink included, inside the root.
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    dst = _openat2(root, rel, flags, RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS, stat.S_IMODE(st.st_mode))
    try:
        with open(src, "rb") as f:
            while chunk := f.read(_CHUNK):
                os.write(dst, chunk)
        os.fchmod(dst, stat.S_IMODE(st.st_mode))
        os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns))
    finally:
        os.close(dst)
