"""``Engine``: containers and images as one Python API, with no daemon behind it.

Every berth command, the API services and library users go through an ``Engine``. State lives in
``<root>/berth.db`` (containers), ``<root>/images.db`` and ``<root>/content`` (images), and
``<runroot>/containers/<id>/`` (what a running container's monitor reports). Running containers are
owned by the runroot's supervisor process (``berth.monitor``), so the Engine object can come and go.

    import berth
    engine = berth.Engine()
    c = engine.run("busybox", ["echo", "hello"])
    engine.wait(c.id)
    print("".join(e["log"] for e in engine.logs(c.id)))
"""

from __future__ import annotations

import os
import sys
import time

from berth.engine.build_ops import BuildOps
from berth.engine.container_ops import ContainerOps, _host_memory
from berth.engine.image_ops import ImageOps
from berth.engine.network_ops import NetworkOps
from berth.engine.volume_ops import VolumeOps
from berth.errors import BerthError, Conflict, InvalidArgument, NotFound
from berth.oci import jsonc

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import Any, NoReturn

    from berth.engine.db import Database
    from berth.images.store import Image, ImageStore
    from berth.network.manager import Networks

DEFAULT_ROOT = "/var/lib/berth"
DEFAULT_RUNROOT = "/run/berth"


class Container:
    """A snapshot of one container's record and state (refresh by asking the Engine again)."""

    def __init__(self, row: Any, state_dir: str) -> None:
        self.id: str = row["id"]
        self.name: str = row["name"]
        self.image: str = row["image"]
        self.image_id: str = row["image_id"]
        self.created: float = row["created"]
        self.config: dict[str, Any] = jsonc.loads(row["config"])
        self.status: str = row["status"]
        self.pid: int = row["pid"]
        self.pid_start: int = row["pid_start"]
        self.stopped_by_user: bool = bool(row["stopped_by_user"])
        self.exit_code: int = row["exit_code"]
        self.oom_killed: bool = bool(row["oom_killed"])
        self.started_at: float = row["started_at"]
        self.finished_at: float = row["finished_at"]
        self.restart_count: int = row["restart_count"]
        self.error: str = row["error"]
        self.state_dir = state_dir

    @property
    def running(self) -> bool:
        return self.status in ("running", "paused", "restarting")

    def __repr__(self) -> str:
        return f"<Container {self.id[:12]} {self.name} {self.status}>"


def _bin(name: str) -> str:
    """A berth program installed beside the running interpreter, else from PATH."""
    beside = os.path.join(os.path.dirname(sys.executable), name)
    if os.path.exists(beside):
        return beside
    import shutil

    found = shutil.which(name)
    if found is None:
        raise BerthError(f"{name} is not installed")
    return found


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return False
    return data[data.rindex(b")") + 2:][:1] not in (b"Z", b"X")


def _read_json(path: str) -> Any:
    try:
        with open(path, "rb") as f:
            return jsonc.loads(f.read())
    except (FileNotFoundError, ValueError):
        return None


def _parse_time(stamp: str) -> float:
    import calendar

    base, _, frac = stamp.rstrip("Z").partition(".")
    return calendar.timegm(time.strptime(base, "%Y-%m-%dT%H:%M:%S")) + float("0." + (frac or "0"))


class Engine(ImageOps, ContainerOps, NetworkOps, VolumeOps, BuildOps):
    def __init__(self, root: str | None = None, runroot: str | None = None, runtime: str | None = None) -> None:
        self.root = os.path.abspath(root or os.environ.get("BERTH_ROOT") or DEFAULT_ROOT)
        self.runroot = os.path.abspath(runroot or os.environ.get("BERTH_RUNROOT") or DEFAULT_RUNROOT)
        self.default_runtime = runtime or os.environ.get("BERTH_RUNTIME") or "berth"
        os.makedirs(self.root, mode=0o711, exist_ok=True)
        os.makedirs(os.path.join(self.runroot, "containers"), mode=0o711, exist_ok=True)
        self._db: Database | None = None
        self._images: ImageStore | None = None
        self._networks: Networks | None = None

    # ------------------------------------------------------------------ plumbing

    @property
    def db(self) -> Database:
        if self._db is None:
            from berth.engine.db import Database

            self._db = Database(os.path.join(self.root, "berth.db"))
        return self._db

    @property
    def image_store(self) -> ImageStore:
        if self._images is None:
            from berth.images.store import ImageStore

            self._images = ImageStore(self.root)
        return self._images

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
        if self._images is not None:
            self._images.close()
        if self._networks is not None:
            self._networks.ipam.conn.close()
            self._networks = None

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def _events_path(self) -> str:
        return os.path.join(self.root, "events.log")

    def _event(self, action: str, cid: str, **attributes: Any) -> None:
        from berth import events

        events.record(self._events_path, "container", action, cid, **attributes)

    def events(self, since: float = 0.0, until: float | None = None, follow: bool = False) -> Iterator[dict[str, Any]]:
        """Container events (create, start, die, kill, stop, destroy) from ``since`` (unix time)."""
        from berth import events

        return events.read(self._events_path, int(since * 1e9), None if until is None else int(until * 1e9),
                           follow=(lambda: True) if follow else None)

    def _state_dir(self, cid: str) -> str:
        return os.path.join(self.runroot, "containers", cid)

    def _bundle_dir(self, cid: str) -> str:
        return os.path.join(self.root, "containers", cid)

    def runtime_argv(self, name: str) -> list[str]:
        """The command line prefix of an OCI runtime: berth's own, runc, crun, runsc or a path."""
        if name == "berth":
            exe = _bin("berth-runtime")
        elif "/" in name:
            exe = name
            if not os.access(exe, os.X_OK):
                raise InvalidArgument(f"runtime {name}: not an executable file")
        else:
            import shutil

            found = shutil.which(name)
            if found is None:
                raise InvalidArgument(f"unknown runtime {name!r} (berth, runc, crun, runsc, or a path)")
            exe = found
        tag = os.path.basename(exe)
        return [exe, "--root", os.path.join(self.runroot, "runtime", tag)]

    def container_runtime_argv(self, opts: dict[str, Any]) -> list[str]:
        """The runtime's argv for one container: gVisor's runsc sets up its sandbox's network itself
        (at create and start) and must be told when there is none, or the host's, to set up."""
        argv = self.runtime_argv(opts["runtime"])
        network = opts.get("network") or "none"
        if os.path.basename(argv[0]) == "runsc" and network in ("none", "host"):
            argv.append(f"--network={network}")
        return argv

    # ------------------------------------------------------------------ images

    def image(self, ref: str, pull: str = "missing", platform: str | None = None) -> Image:
        """The image ``ref`` names, pulled per the policy: always, missing or never."""
        if pull not in ("always", "missing", "never"):
            raise InvalidArgument(f"invalid --pull policy {pull!r} (always, missing or never)")
        if pull == "always":
            return self.pull(ref, platform)
        try:
            return self.image_store.get(ref)
        except NotFound:
            if pull == "never":
                raise NotFound(f"{ref}: image not known") from None
        return self.pull(ref, platform)

    def images(self) -> list[Image]:
        return self.image_store.images()

    def import_image(self, source: str, reference: str | None = None) -> Image:
        from berth.images.archive import import_rootfs

        return import_rootfs(self.image_store, source, names=[reference] if reference else ())

    # ------------------------------------------------------------------ containers

    def containers(self, all: bool = True) -> list[Container]:
        out = [self._refresh(row) for row in self.db.rows()]
        return out if all else [c for c in out if c.running]

    def get(self, ref: str) -> Container:
        return self._refresh(self.db.find(ref))

    def _refresh(self, row: Any) -> Container:
        """Bring a running container's state up to date from what its monitor left on disk."""
        c = Container(row, self._state_dir(row["id"]))
        if c.status not in ("running", "restarting", "paused"):
            return c
        from berth.monitor.client import supervised

        exit_info = _read_json(os.path.join(c.state_dir, "exit.json"))
        monitor_alive = supervised(c.state_dir)
        current = _read_json(os.path.join(c.state_dir, "pid"))  # the init now (it changes on restarts)
        if isinstance(current, int) and current != c.pid:
            init_alive = _alive(current)
            if init_alive:
                c.pid = current  # what inspect shows and --network container: joins
        else:
            # The pid recorded at start, checked with its start time: after a reboot the same pid
            # may well be some other process.
            from berth.runtime.state import proc_start_time

            init_alive = proc_start_time(c.pid) == c.pid_start if c.pid_start else _alive(c.pid)
        if monitor_alive and (exit_info is None or init_alive):
            return c
        if monitor_alive:
            c.status = "restarting"
            c.restart_count = int(exit_info.get("restartCount", 0)) if exit_info else c.restart_count
            return c
        if init_alive:
            # Its supervisor died; the container did not: a new supervisor takes it over.
            try:
                _monitor_request(self.runroot, "adopt", c.state_dir)
            except BerthError:  # no berth-monitor to start: it runs on unsupervised
                pass
            return c
        if exit_info is None:  # it may have been written just before the supervisor let go
            exit_info = _read_json(os.path.join(c.state_dir, "exit.json"))
        fields: dict[str, Any] = {"status": "exited", "pid": 0}
        if exit_info is not None:
            fields.update(exit_code=int(exit_info["exitCode"]), oom_killed=int(bool(exit_info.get("oomKilled"))),
                          finished_at=_parse_time(exit_info["finishedAt"]),
                          restart_count=int(exit_info.get("restartCount", 0)), error=exit_info.get("error", ""))
        else:
            fields.update(exit_code=-1, finished_at=time.time(), error="the monitor and container disappeared")
        self.db.update_state(c.id, **fields)
        for k, v in fields.items():
            setattr(c, k, bool(v) if k == "oom_killed" else v)
        return c

    def create(self, image: str, command: list[str] | None = None, *, name: str | None = None,
               pull: str = "missing", platform: str | None = None, **opts: Any) -> Container:
        """Create a container from ``image``; ``opts`` are ``berth run``'s options by their long names
        (``env=[...]``, ``memory="64m"``, ``restart="on-failure:3"``, ``labels={...}``...)."""
        from berth.engine import spec as specmod
        from berth.engine.names import random_name
        from berth.snapshots.mount import mount_all

        runtime = opts.get("runtime") or self.default_runtime
        self.runtime_argv(runtime)  # an unknown runtime is an error before anything is made
        if _restart_policy(opts.get("restart", "no"))[0] != "no" and opts.get("auto_remove"):
            raise InvalidArgument("conflicting options: --restart and --rm")
        img = self.image(image, pull, platform)
        image_cfg = _image_config(self.image_store, img)
        cid = os.urandom(32).hex()  # not secrets: it imports hmac, hashlib, base64 (~9 ms)
        name = name or random_name()
        if not _valid_name(name):
            raise InvalidArgument(f"invalid container name {name!r}: use [a-zA-Z0-9][a-zA-Z0-9_.-]*")
        # Docker's and Podman's default: the "bridge" network (BERTH_NETWORK names another default).
        network = opts.get("network") or os.environ.get("BERTH_NETWORK") or "bridge"
        options = {**opts, "command": command, "runtime": runtime, "network": network}
        self.db.add_container(cid, name, image, str(img.id), options)
        rootfs = os.path.join(self._state_dir(cid), "rootfs")
        try:
            os.makedirs(rootfs, mode=0o755)
            mounts = self.image_store.prepare_rootfs(img, cid)
            mount_all(mounts, rootfs, volatile=bool(options.get("auto_remove")))
            if options.get("volumes"):
                options = {**options, "binds": [*options.get("binds", []),
                                                *self.resolve_volumes(options["volumes"])]}
            oci = specmod.build(cid, options, image_cfg, rootfs)
            bundle = self._bundle_dir(cid)
            os.makedirs(bundle, mode=0o700)
            self._network_setup(cid, name, options, image_cfg, oci)
            with open(os.path.join(bundle, "config.json"), "w") as f:
                f.write(jsonc.dumps(oci))
        except BaseException:
            self._cleanup(cid)
            raise
        self._event("create", cid, name=name, image=image)
        return self.get(cid)

    def start(self, ref: str, attach: bool = False) -> Container:
        """Start a created or exited container under a new monitor. With ``attach`` the monitor
        creates it and waits for the caller's ``attach(start=True)`` before starting it, so the
        caller sees all its output and its stdin (``interactive``) closes when the caller's ends."""
        c = self.get(ref)
        if c.running:
            raise Conflict(f"container {c.name} is already running")
        state_dir = c.state_dir
        rootfs = os.path.join(state_dir, "rootfs")
        if not os.path.ismount(rootfs):
            from berth.snapshots.mount import mount_all

            mount_all(self.image_store.snapshots.mounts(c.id), rootfs, volatile=bool(c.config.get("auto_remove")))
        self._ensure_netns(c)
        for stale in ("exit.json", "stopped", "health.json", "pid"):
            try:
                os.unlink(os.path.join(state_dir, stale))
            except FileNotFoundError:
                pass
        opts = c.config
        restart_name, restart_max = _restart_policy(opts.get("restart", "no"))
        monitor_cfg: dict[str, Any] = {
            "id": c.id, "bundle": self._bundle_dir(c.id), "runtime": self.container_runtime_argv(opts),
            "log_path": os.path.join(self._bundle_dir(c.id), "ctr.log"),
            "log_max_size": _log_size(opts), "log_max_files": int((opts.get("log_opts") or {}).get("max-file", 3)),
            "terminal": bool(opts.get("tty")), "restart": {"name": restart_name, "max": restart_max},
            "cgroup": f"/berth/{c.id}",
            "events": {"path": self._events_path, "name": c.name, "image": c.image},
        }
        if opts.get("health"):
            monitor_cfg["health"] = opts["health"]
        if opts.get("interactive"):
            monitor_cfg["stdin"] = True
            monitor_cfg["stdin_once"] = attach
        if attach:
            monitor_cfg["attach_first"] = True
        if opts.get("auto_remove"):
            monitor_cfg["exit_command"] = [_bin("berth"), "--root", self.root, "--runroot", self.runroot,
                                           "rm", "--force", "--volumes", c.id]
        with open(os.path.join(state_dir, "monitor.json"), "w") as f:
            f.write(jsonc.dumps(monitor_cfg))
        # What a monitor killed mid-life left in the runtime's state would block create.
        self._delete_runtime_container(c)
        pid = _spawn_monitor(self.runroot, state_dir)
        from berth.runtime.state import proc_start_time

        self.db.update_state(c.id, status="running", pid=pid, pid_start=proc_start_time(pid) or 0,
                             started_at=time.time(), exit_code=0, error="", stopped_by_user=0)
        self._event("start", c.id, name=c.name, image=c.image)
        return self.get(c.id)

    def run(self, image: str, command: list[str] | None = None, *, attach: bool = False,
            **opts: Any) -> Container:
        """create + start; returns at once (wait() and logs() follow it; with ``attach``, see start)."""
        c = self.create(image, command, **opts)
        try:
            return self.start(c.id, attach=attach)
        except BaseException:
            self.remove(c.id, force=True)
            raise

    def run_attached(self, image: str, command: list[str] | None = None, *, remove: bool = False,
                     **opts: Any) -> int:
        """Run in the foreground with the caller's stdio (and terminal, with ``tty``): the calling
        process is the container's parent, no monitor and no log. Returns the container's status."""
        c = self.create(image, command, **opts)
        try:
            return self._attached(c)
        finally:
            if remove:  # --rm takes the container's anonymous volumes along, as Docker does
                self.remove(c.id, force=True, volumes=True)

    def _attached(self, c: Container) -> int:
        """Create and start with the caller's stdio; berth's own runtime is driven in-process (no
        runtime processes to start), any other through its command line."""
        from berth.kernel.syscalls import PR_SET_CHILD_SUBREAPER, prctl

        prctl(PR_SET_CHILD_SUBREAPER, 1)
        receiver = None
        if c.config.get("tty"):
            from berth.runtime.console import Receiver

            receiver = Receiver()
        try:
            pid = self._create_attached(c, receiver.path if receiver is not None else None)
        except BaseException:
            if receiver is not None:
                receiver.close()
            raise
        master = receiver.master() if receiver is not None else None
        self.db.update_state(c.id, status="running", pid=pid, started_at=time.time(), exit_code=0, error="")
        if c.config["runtime"] == "berth":
            from berth.runtime import lifecycle

            lifecycle.start(self.runtime_argv("berth")[2], c.id)
        else:
            self._runtime(c, "start", c.id)
        self._event("start", c.id, name=c.name, image=c.image)
        from berth.runtime.lifecycle import wait_exit

        if master is not None:
            from berth.runtime.console import relay

            code = relay(master, pid, wait_exit)
        else:
            from berth.runtime.process import forward_signals

            forward_signals(pid)
            code = wait_exit(pid)
        oom = False
        try:
            from berth.kernel.cgroups import open_cgroup

            oom = open_cgroup(f"/berth/{c.id}", c.id).oom_kill_count() > 0
        except Exception:
            pass
        self._delete_runtime_container(c)
        self.db.update_state(c.id, status="exited", pid=0, exit_code=code, finished_at=time.time(),
                             oom_killed=int(oom))
        self._event("die", c.id, name=c.name, image=c.image, exitCode=str(code))
        return code

    def _create_attached(self, c: Container, console_socket: str | None) -> int:
        pid_file = os.path.join(c.state_dir, "pid")
        if c.config["runtime"] == "berth":
            from berth.runtime import lifecycle

            interactive = c.config.get("interactive") or c.config.get("tty")
            saved = None
            if not interactive:  # the container gets /dev/null as stdin, as with Docker without -i
                saved = os.dup(0)
                null = os.open("/dev/null", os.O_RDONLY)
                os.dup2(null, 0)
                os.close(null)
            try:
                record = lifecycle.create(self.runtime_argv("berth")[2], c.id, self._bundle_dir(c.id),
                                          pid_file=pid_file, console_socket=console_socket, subreaper=True)
            finally:
                if saved is not None:
                    os.dup2(saved, 0)
                    os.close(saved)
            return record.pid
        import subprocess

        # The runtime's errors go to a log file: its stderr is the container's, held open by the
        # container's init long after create returns.
        log = os.path.join(c.state_dir, "runtime.log")
        argv = [*self.container_runtime_argv(c.config), "--log", log, "--log-format", "json", "create",
                "--bundle", self._bundle_dir(c.id), "--pid-file", pid_file]
        if console_socket:
            argv += ["--console-socket", console_socket]
        stdin = None if c.config.get("interactive") or c.config.get("tty") else subprocess.DEVNULL
        res = subprocess.run([*argv, c.id], stdin=stdin)
        if res.returncode != 0:
            _raise_runtime_error(_log_errors(log) or [f"runtime create failed ({res.returncode})"])
        with open(pid_file) as f:
            return int(f.read())

    def _delete_runtime_container(self, c: Container) -> None:
        try:
            if c.config["runtime"] == "berth":
                from berth.runtime import lifecycle

                lifecycle.delete(self.runtime_argv("berth")[2], c.id, force=True)
            else:
                self._runtime(c, "delete", "--force", c.id)
        except (BerthError, OSError):
            pass

    def wait(self, ref: str, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = 0.005
        while True:
            c = self.get(ref)
            if c.status in ("exited", "created"):
                return c.exit_code
            if deadline is not None and time.monotonic() > deadline:
                raise Conflict(f"container {c.name} is still running after {timeout}s")
            time.sleep(delay)
            delay = min(delay * 2, 0.1)

    def attach(self, ref: str, *, stdin: bool = True, detach_keys: str | None = None, sig_proxy: bool = True,
               start: bool = False) -> int | None:
        """Connect the caller's stdio to a running container's until it exits (its status) or the
        user types the detach keys (None: it runs on). ``stdin`` only reaches a container created
        ``interactive``; ``sig_proxy`` forwards the caller's signals to it when it has no terminal;
        ``start`` releases a container started with ``start(attach=True)``."""
        from berth.monitor import attach as attachmod
        from berth.monitor.sockets import connect

        keys = attachmod.parse_detach_keys(detach_keys)
        c = self.get(ref)
        if c.status == "paused":
            raise Conflict(f"cannot attach to container {c.name}: it is paused (unpause it first)")
        if not c.running:
            raise Conflict(f"cannot attach to container {c.name}: it is not running")
        tty = bool(c.config.get("tty"))
        try:
            sock = connect(c.state_dir)
        except OSError as e:
            raise Conflict(f"cannot attach to container {c.name}: its monitor does not answer ({e.strerror})") \
                from None
        restore = _proxy_signals(lambda sig: self._signal_quietly(c, sig)) if sig_proxy and not tty else {}
        try:
            return attachmod.relay(sock, stdin=stdin and bool(c.config.get("interactive")), tty=tty,
                                   detach_keys=keys, start=start)
        except attachmod.Lost:
            return self.wait(c.id)
        finally:
            import signal

            for signum, handler in restore.items():
                signal.signal(signum, handler)

    def _signal_quietly(self, c: Container, sig: str) -> None:
        try:
            self._runtime(c, "kill", c.id, sig)
        except BerthError:
            pass

    def restart(self, ref: str, timeout: float | None = None) -> Container:
        """stop (if running) then start, as ``docker restart``."""
        c = self.stop(ref, timeout)
        return self.start(c.id)

    def logs(self, ref: str, follow: bool = False) -> Iterator[dict[str, str]]:
        from berth.monitor.logfile import follow as follow_log
        from berth.monitor.logfile import read_entries

        c = self.get(ref)
        path = os.path.join(self._bundle_dir(c.id), "ctr.log")
        max_files = int((c.config.get("log_opts") or {}).get("max-file", 3))
        if not follow:
            yield from read_entries(path, max_files)
            return
        for i in range(max_files - 1, 0, -1):
            yield from read_entries(f"{path}.{i}", 1)
        yield from follow_log(path, stop=lambda: not self.get(c.id).running)

    def kill(self, ref: str, signal: str = "KILL") -> None:
        c = self.get(ref)
        if not c.running:
            raise Conflict(f"container {c.name} is not running")
        self._runtime(c, "kill", c.id, signal)
        self._event("kill", c.id, name=c.name, image=c.image, signal=signal)

    def stop(self, ref: str, timeout: float | None = None) -> Container:
        c = self.get(ref)
        if not c.running:
            return c
        open(os.path.join(c.state_dir, "stopped"), "w").close()
        self.db.update_state(c.id, stopped_by_user=1)
        if timeout is None:
            timeout = float(c.config.get("stop_timeout") or 10)
        sig = c.config.get("stop_signal") or "TERM"
        try:
            self._runtime(c, "kill", c.id, sig)
        except BerthError:
            pass
        try:
            self.wait(c.id, timeout)
        except Conflict:
            try:
                self._runtime(c, "kill", c.id, "KILL")
            except BerthError:
                pass
            self.wait(c.id, 10)
        self._event("stop", c.id, name=c.name, image=c.image)
        return self.get(c.id)

    def remove(self, ref: str, force: bool = False, volumes: bool = False) -> None:
        """Remove a container (``force`` kills a running one); ``volumes`` also removes its anonymous
        volumes, as ``rm -v`` and ``--rm`` do."""
        c = self.get(ref)
        if c.running:
            if not force:
                raise Conflict(f"cannot remove container {c.name}: it is running (stop it first, or use -f)")
            open(os.path.join(c.state_dir, "stopped"), "w").close()
            try:
                self._runtime(c, "kill", c.id, "KILL")
            except BerthError:
                pass
            try:
                self.wait(c.id, 10)
            except Conflict:
                pass
        self._delete_runtime_container(c)
        self._cleanup(c.id)
        self._event("destroy", c.id, name=c.name, image=c.image)
        if volumes:
            for v in c.config.get("volumes") or []:
                if v.get("anonymous"):
                    try:
                        self.volume_remove(v["name"])
                    except (NotFound, Conflict):
                        pass

    def _cleanup(self, cid: str) -> None:
        """Remove what a container leaves: its network, rootfs mount, record, and its trees — those
        renamed away now and removed by a child the caller does not wait for (fsutil.Trash)."""
        from berth.fsutil import Trash
        from berth.snapshots.mount import unmount

        try:
            opts = self.get(cid).config
        except NotFound:
            opts = {}
        self._network_teardown(cid, opts)
        rootfs = os.path.join(self._state_dir(cid), "rootfs")
        if os.path.ismount(rootfs):
            unmount(rootfs, detach=True)
        trash = Trash()
        try:
            self.image_store.snapshots.remove(cid, trash)
        except (NotFound, BerthError):
            pass
        for tree in (self._state_dir(cid), self._bundle_dir(cid)):
            try:
                trash.take(tree)
            except OSError:
                pass  # what is left (a busy mount) cannot hold the record back
        self.db.remove_container(cid)
        trash.empty()

    def _runtime(self, c: Container, *args: str) -> str:
        import subprocess

        res = subprocess.run([*self.container_runtime_argv(c.config), *args], capture_output=True, text=True)
        if res.returncode != 0:
            raise BerthError((res.stderr.strip().splitlines() or [f"runtime {args[0]} failed"])[-1])
        return res.stdout

    def inspect(self, ref: str) -> dict[str, Any]:
        from berth.engine.spec import INIT_PATH

        c = self.get(ref)
        health = _read_json(os.path.join(c.state_dir, "health.json"))
        state = {
            "Status": c.status, "Running": c.status == "running", "Paused": c.status == "paused",
            "Restarting": c.status == "restarting", "OOMKilled": c.oom_killed, "Dead": False, "Pid": c.pid,
            "ExitCode": c.exit_code, "Error": c.error, "StartedAt": _iso(c.started_at),
            "FinishedAt": _iso(c.finished_at),
        }
        if health is not None:
            state["Health"] = health
        with open(os.path.join(self._bundle_dir(c.id), "config.json"), "rb") as f:
            oci = jsonc.loads(f.read())
        opts = c.config
        args = oci["process"]["args"]
        if opts.get("init"):
            args = args[2:]  # INIT_PATH, "--": Docker shows the command, not its init
        resources = oci["linux"].get("resources", {})
        cpu = resources.get("cpu", {})
        user = oci["process"].get("user", {})
        return {
            "Id": c.id, "Name": "/" + c.name, "Created": _iso(c.created), "Image": c.image_id,
            "State": state, "RestartCount": c.restart_count, "Path": args[0], "Args": args[1:],
            "Config": {"Image": c.image, "Cmd": opts.get("command"), "Env": oci["process"]["env"],
                       "Entrypoint": opts.get("entrypoint"), "User": opts.get("user") or "",
                       "Hostname": oci.get("hostname", ""), "Labels": opts.get("labels") or {},
                       "Tty": bool(opts.get("tty")), "OpenStdin": bool(opts.get("interactive")),
                       "WorkingDir": oci["process"]["cwd"], "StopSignal": opts.get("stop_signal") or "SIGTERM",
                       "StopTimeout": int(opts.get("stop_timeout") or 10),
                       "Healthcheck": opts.get("health")},
            "HostConfig": {
                "Runtime": opts["runtime"], "Memory": resources.get("memory", {}).get("limit", 0),
                "MemorySwap": resources.get("memory", {}).get("swap", 0),
                "NanoCpus": cpu["quota"] * 10000 if cpu.get("quota", -1) > 0 else 0,
                "CpuShares": cpu.get("shares", 0), "CpusetCpus": cpu.get("cpus", ""),
                "PidsLimit": resources.get("pids", {}).get("limit", 0),
                "Ulimits": [{"Name": r["type"].removeprefix("RLIMIT_").lower(), "Soft": r["soft"], "Hard": r["hard"]}
                            for r in oci["process"].get("rlimits", [])],
                "CapAdd": opts.get("cap_add") or [], "CapDrop": opts.get("cap_drop") or [],
                "SecurityOpt": opts.get("security_opt") or [], "Privileged": bool(opts.get("privileged")),
                "ReadonlyRootfs": bool(oci["root"].get("readonly")), "Init": bool(opts.get("init")),
                "AutoRemove": bool(opts.get("auto_remove")), "NetworkMode": opts.get("network") or "none",
                "Devices": [{"PathOnHost": spec.split(":")[0], "PathInContainer": node["path"],
                             "CgroupPermissions": _device_access(resources, node)}
                            for spec, node in zip(opts.get("devices") or [], oci["linux"].get("devices", []),
                                                  strict=False)],
                "Tmpfs": {t.partition(":")[0]: t.partition(":")[2] for t in opts.get("tmpfs") or []},
                "LogConfig": {"Type": "json-file", "Config": opts.get("log_opts") or {}},
                "RestartPolicy": dict(zip(("Name", "MaximumRetryCount"),
                                          _restart_policy(opts.get("restart", "no")), strict=True)),
            },
            "Mounts": [{"Type": m["type"], "Source": m["source"], "Destination": m["destination"],
                        "RW": "ro" not in m.get("options", [])}
                       for m in oci["mounts"] if m["type"] == "bind" and m["destination"] != INIT_PATH],
            "ProcessUser": {"Uid": user.get("uid", 0), "Gid": user.get("gid", 0)},
            "Platform": "linux",
            "NetworkSettings": self.container_networks(c),
            "LogPath": os.path.join(self._bundle_dir(c.id), "ctr.log"),
        }

    def info(self) -> dict[str, Any]:
        """``system info``: Docker's field names for what applies to a daemonless engine."""
        import platform
        import shutil

        from berth import __version__

        cs = self.containers()
        counts = {s: sum(1 for c in cs if c.status == s) for s in ("running", "paused")}
        cgroup_v2 = os.path.exists("/sys/fs/cgroup/cgroup.controllers")
        runtimes = {name: {"path": path} for name in ("runc", "crun", "runsc") if (path := shutil.which(name))}
        runtimes["berth"] = {"path": _bin("berth-runtime")}
        return {
            "ID": self._host_id(), "Containers": len(cs), "ContainersRunning": counts["running"],
            "ContainersPaused": counts["paused"],
            "ContainersStopped": len(cs) - counts["running"] - counts["paused"],
            "Images": len(self.images()), "Driver": self.image_store.snapshots.name,
            "DockerRootDir": self.root, "RunRoot": self.runroot, "Name": platform.node(),
            "ServerVersion": __version__, "KernelVersion": platform.release(),
            "OperatingSystem": _os_name(), "OSType": "linux",
            "Architecture": platform.machine(),
            "NCPU": os.cpu_count() or 0, "MemTotal": _host_memory(),
            "CgroupDriver": "cgroupfs", "CgroupVersion": "2" if cgroup_v2 else "1",
            "MemoryLimit": True, "SwapLimit": True, "CpuCfsPeriod": True, "CpuCfsQuota": True,
            "CPUShares": True, "CPUSet": True, "PidsLimit": True,
            "LoggingDriver": "json-file", "DefaultRuntime": self.default_runtime, "Runtimes": runtimes,
            "SecurityOptions": ["name=seccomp,profile=builtin"], "Daemonless": True,
        }

    def _host_id(self) -> str:
        """A stable id for this engine's storage, made on first use (Docker's engine ID)."""
        path = os.path.join(self.root, "engine-id")
        try:
            with open(path) as f:
                return f.read().strip()
        except FileNotFoundError:
            import uuid

            from berth.fsutil import atomic_file

            new = str(uuid.uuid4())
            with atomic_file(path, 0o644) as f:
                f.write(new.encode())
            return new

    def system_prune(self, all: bool = False, volumes: bool = False) -> dict[str, Any]:
        """``system prune``: stopped containers, unused networks, dangling images (``all``: every
        unused image), and with ``volumes`` the volumes no container uses."""
        containers, container_bytes = self.prune()
        networks = self.network_prune()
        report = self.prune_images(all=all)
        removed_volumes, volume_bytes = self.volume_prune() if volumes else ([], 0)
        return {"containers": containers, "networks": networks, "images_untagged": report.untagged,
                "images_deleted": report.deleted, "volumes": removed_volumes,
                "reclaimed": container_bytes + report.reclaimed + volume_bytes}


def _device_access(resources: dict[str, Any], node: dict[str, Any]) -> str:
    for rule in resources.get("devices", []):
        if rule.get("allow") and (rule.get("type"), rule.get("major"), rule.get("minor")) == \
                (node["type"], node["major"], node["minor"]):
            return str(rule.get("access", "rwm"))
    return "rwm"


def _os_name() -> str:
    try:
        with open("/etc/os-release") as f:
            for line in f:
                if line.startswith("PRETTY_NAME="):
                    return line.partition("=")[2].strip().strip('"')
    except OSError:
        pass
    return "Linux"


def _iso(t: float) -> str:
    if not t:
        return "0001-01-01T00:00:00Z"
    from berth.monitor.logfile import timestamp

    return timestamp(t)


def _valid_name(name: str) -> bool:
    ok = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")
    return bool(name) and name[0].isalnum() and set(name) <= ok


def _restart_policy(text: str) -> tuple[str, int]:
    name, _, count = (text or "no").partition(":")
    if name not in ("no", "on-failure", "always", "unless-stopped"):
        raise InvalidArgument(f"invalid restart policy {text!r} (no, on-failure[:N], always, unless-stopped)")
    if count and (name != "on-failure" or not count.isdigit()):
        raise InvalidArgument(f"invalid restart policy {text!r}: only on-failure takes a retry count")
    return name, int(count or 0)


def _log_size(opts: dict[str, Any]) -> int:
    raw = (opts.get("log_opts") or {}).get("max-size")
    if raw is None:
        return 10 * 1024 * 1024
    from berth.engine.spec import parse_size

    return parse_size(raw, "--log-opt max-size")


def _image_config(store: ImageStore, img: Image) -> dict[str, Any]:
    """The image's run defaults in Docker's spelling (Env, Entrypoint, Cmd, User, WorkingDir...)."""
    section = store.config(img).config
    if section is None:
        return {}
    return {"Env": section.env, "Entrypoint": section.entrypoint, "Cmd": section.cmd, "User": section.user,
            "WorkingDir": section.working_dir, "StopSignal": section.stop_signal,
            "Healthcheck": section.healthcheck, "Labels": section.labels,
            "ExposedPorts": list(section.exposed_ports or ())}


def _proxy_signals(send: Any) -> dict[int, Any]:
    """Forward the signals a user sends to ``berth run``/``attach`` (ctrl-c, kill) to the container,
    as Docker's --sig-proxy does; returns the handlers to put back."""
    import signal

    saved: dict[int, Any] = {}
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2):
        try:
            saved[signum] = signal.signal(signum, lambda n, _f: send(signal.Signals(n).name.removeprefix("SIG")))
        except ValueError:  # not the main thread
            break
    return saved


def _monitor_request(runroot: str, verb: str, state_dir: str) -> str:
    from berth.monitor.client import request

    return request(runroot, verb, state_dir, _bin("berth-monitor"))


def _spawn_monitor(runroot: str, state_dir: str) -> int:
    """Hand the container to the runroot's supervisor (started if none runs) and wait for its word."""
    word, _, rest = _monitor_request(runroot, "take", state_dir).partition(" ")
    if word == "started":
        return int(rest)
    _raise_runtime_error([rest or "the monitor exited before starting the container"])


def _log_errors(path: str) -> list[str]:
    """The messages of a runtime's JSON log (runc's --log-format json)."""
    out = []
    try:
        with open(path, "rb") as f:
            for line in f:
                try:
                    entry = jsonc.loads(line)
                except ValueError:
                    continue
                if isinstance(entry, dict) and entry.get("level") == "error":
                    out.append(str(entry.get("msg", "")))
    except FileNotFoundError:
        pass
    return out


def _raise_runtime_error(lines: list[str]) -> NoReturn:
    """Turn an OCI runtime's error into Docker's exit codes: 127 missing command, 126 not runnable."""
    from berth.errors import CannotInvoke, CommandNotFound

    message = lines[-1] if lines else "the OCI runtime failed"
    if message.startswith("berth-runtime: "):
        message = message[len("berth-runtime: "):]
    if "executable file not found" in message or "no such file or directory" in message:
        raise CommandNotFound(message)
    if "permission denied" in message:
        raise CannotInvoke(message)
    raise BerthError(message)
