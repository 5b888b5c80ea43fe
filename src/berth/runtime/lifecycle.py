"""The runtime's operations on a container: create, start, state, kill, delete, pause, resume,
update, ps, events, exec. ``cli`` parses runc's command line and calls these; they raise
``berth.errors`` exceptions and never print, except where an operation's output is its result.

``create`` is the only complicated one; it runs in the runtime process and drives the child in
``init`` through the handshake in ``sync``: go → (user ns maps) → (init pid) → prestart hooks →
ready. On any failure it kills what it started and removes the cgroup and state directory, so a
failed create leaves nothing behind and an existing container is never touched.
"""

from __future__ import annotations

import _signal as signal  # the C module: `signal` builds enums on import (~4 ms)
import os
import time

from berth.errors import AlreadyExists, BerthError, Conflict, InvalidArgument, NotFound
from berth.kernel import syscalls as sc
from berth.oci import runtime_config
from berth.runtime.hooks import run_hooks
from berth.runtime.init import Launch, child_main
from berth.runtime.state import Record, StateDir, now_rfc3339, oci_state, proc_start_time
from berth.runtime.sync import pair

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

# Devices every container may use whatever its device cgroup rules say (they are created in /dev
# by the runtime itself), as runc allows them; a node the config lists at one of these paths takes
# the default's place, its access then decided by the config's rules alone (runc does the same).
DEFAULT_ALLOWED_DEVICES = [
    ("/dev/null", {"allow": True, "type": "c", "major": 1, "minor": 3, "access": "rwm"}),
    ("/dev/zero", {"allow": True, "type": "c", "major": 1, "minor": 5, "access": "rwm"}),
    ("/dev/full", {"allow": True, "type": "c", "major": 1, "minor": 7, "access": "rwm"}),
    ("/dev/random", {"allow": True, "type": "c", "major": 1, "minor": 8, "access": "rwm"}),
    ("/dev/urandom", {"allow": True, "type": "c", "major": 1, "minor": 9, "access": "rwm"}),
    ("/dev/tty", {"allow": True, "type": "c", "major": 5, "minor": 0, "access": "rwm"}),
    ("", {"allow": True, "type": "c", "major": 5, "minor": 1, "access": "rwm"}),
    ("", {"allow": True, "type": "c", "major": 5, "minor": 2, "access": "rwm"}),
    ("", {"allow": True, "type": "c", "major": 136, "access": "rwm"}),
]


def _resources(spec: dict[str, Any]) -> dict[str, Any]:
    resources = dict(spec.get("linux", {}).get("resources") or {})
    if "devices" not in resources and os.geteuid() == 0:
        # No rules is no access, as with runc: the new cgroup would otherwise inherit "a *:* rwm"
        # and a container with CAP_MKNOD could read and write the host's disks.
        resources["devices"] = []
    if "devices" in resources:
        nodes = [d for d in spec.get("linux", {}).get("devices") or [] if d.get("type") in ("c", "u", "b")]
        paths = {d.get("path") for d in nodes}
        defaults = [rule for path, rule in DEFAULT_ALLOWED_DEVICES if path not in paths]
        # The nodes the config asks the runtime to create may be created ("m"): the init makes them
        # inside the device cgroup it already sits in. Reading and writing them is for the config's
        # rules to allow, as with runc: "--device HOST:CONTAINER:r" must stay read-only.
        mknod = [{"allow": True, "type": "c" if d["type"] == "u" else d["type"], "major": d.get("major", 0),
                  "minor": d.get("minor", 0), "access": "m"} for d in nodes]
        # Rules apply on top of "deny all" (an empty or allow-only list must not mean "allow all").
        resources["devices"] = [{"allow": False, "access": "rwm"}, *resources["devices"], *defaults, *mknod]
    return resources


def _validate_deep(spec: dict[str, Any]) -> None:
    """Checks beyond the config's shape that must pass before anything is created."""
    from berth.kernel import caps, cgroups

    process = spec.get("process")
    if process is None:
        raise InvalidArgument("process: required to create a container")
    for k, names in (process.get("capabilities") or {}).items():
        caps.parse(names, f"process.capabilities.{k}")
    linux = spec.get("linux", {})
    if linux.get("seccomp"):
        from berth.kernel import seccomp

        seccomp.validate(linux["seccomp"])
    if linux.get("resources"):
        cgroups.validate_resources(linux["resources"])
    ns = runtime_config.namespaces(spec)
    from berth.runtime.rootfs import check_sysctl

    for key in linux.get("sysctl", {}):
        check_sysctl(key, ns)
    if "mount" not in ns and spec.get("mounts"):
        raise InvalidArgument("mounts: need a mount namespace in linux.namespaces")
    if process.get("terminal") and "mount" not in ns:
        raise InvalidArgument("process.terminal: needs a mount namespace")


def create(root: str, cid: str, bundle: str, *, pid_file: str | None = None,
           console_socket: str | None = None, no_pivot: bool = False, preserve_fds: int = 0,
           subreaper: bool = False, no_new_keyring: bool = False, listen_fds: int = 0) -> Record:
    """Create container ``cid``; ``listen_fds`` descriptors from 3 up (systemd socket activation)
    pass to its process, announced there as LISTEN_FDS with LISTEN_PID=1, before ``preserve_fds``."""
    sd = StateDir(root, cid)
    bundle = os.path.abspath(bundle)
    spec = runtime_config.load(os.path.join(bundle, "config.json"))
    rootfs = os.path.join(bundle, spec["root"]["path"])
    if not os.path.isdir(rootfs):
        raise InvalidArgument(f"root.path: {rootfs} is not a directory")
    rootfs = os.path.realpath(rootfs)
    _validate_deep(spec)
    if spec["process"].get("terminal") and not console_socket:
        raise InvalidArgument("process.terminal is true: --console-socket is required")
    os.makedirs(root, mode=0o711, exist_ok=True)
    try:
        os.mkdir(sd.path, 0o711)
    except FileExistsError:
        raise AlreadyExists(f"container with id {cid} already exists") from None
    sd.lock()
    made: list[Any] = []  # the cgroup, once _spawn has made it
    pid = 0
    try:
        os.mkfifo(sd.fifo, 0o622)
        os.chmod(sd.fifo, 0o622)  # past the umask: a non-root container user opens it for writing
        record = Record(id=cid, pid=0, pid_start=0, bundle=bundle, rootfs=rootfs, created=now_rfc3339(),
                        owner="" if os.geteuid() == 0 else str(os.geteuid()), config=spec,
                        cgroup_paths={}, annotations=spec.get("annotations", {}))
        pid = _spawn(sd, record, spec, made, console_socket, no_pivot, listen_fds + preserve_fds, subreaper,
                     "" if no_new_keyring else f"_ses.{cid}", listen_fds=listen_fds)
        record.pid = pid
        record.pid_start = proc_start_time(pid) or 0
        sd.save(record)
        if pid_file:
            _write_pid_file(pid_file, pid)
        return record
    except BaseException:
        if pid:
            _kill_and_wait(pid)
        for cgroup in made:
            try:
                cgroup.kill_all(signal.SIGKILL)
                cgroup.destroy()
            except Exception:
                pass
        _remove_state_dir(sd.path)
        raise
    finally:
        sd.unlock()


def _write_pid_file(path: str, pid: int) -> None:
    from berth.fsutil import replace_file

    replace_file(os.path.abspath(path), str(pid).encode(), 0o644)


def _remove_state_dir(path: str) -> None:
    """The state directory holds only plain files (state, fifo, temporaries): no shutil needed."""
    try:
        names = os.listdir(path)
    except FileNotFoundError:
        return
    for name in names:
        try:
            os.unlink(os.path.join(path, name))
        except OSError:
            pass
    try:
        os.rmdir(path)
    except OSError:
        pass


def _namespace_plan(spec: dict[str, Any], launch: Launch) -> int | None:
    """Fill the launch's namespace fields; return the fd of a pid namespace the parent must join."""
    ns = runtime_config.namespaces(spec)
    launch.namespaces = ns
    pid_fd = None
    for kind, path in ns.items():
        flag, _ = sc.NAMESPACES[kind]
        if kind == "user":
            if path:
                launch.userns = "join"
                launch.userns_fd = _open_ns(path, kind)
            else:
                launch.userns = "new"
            continue
        if kind == "pid":
            if path:
                pid_fd = _open_ns(path, kind)
            continue
        if path:
            launch.join.append((_open_ns(path, kind), flag))
        else:
            launch.unshare |= flag
    # Join the mount namespace last: paths opened afterwards would be resolved in it.
    launch.join.sort(key=lambda item: item[1] == sc.CLONE_NEWNS)
    if "pid" in ns and not ns["pid"] and launch.userns:
        # A new pid namespace must be owned by the new user namespace: the child creates both.
        launch.unshare |= sc.CLONE_NEWPID
        launch.fork_for_pid = True
    elif launch.userns and pid_fd is not None:
        launch.join.append((pid_fd, sc.CLONE_NEWPID))
        launch.fork_for_pid = True
        pid_fd = None
    return pid_fd


_NS_GET_NSTYPE = 0xB703  # ioctl on an nsfs file: its CLONE_NEW* type


def _open_ns(path: str, kind: str) -> int:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise InvalidArgument(f"linux.namespaces: {kind} namespace path {path}: {e.strerror}") from None
    import fcntl

    try:
        nstype = fcntl.ioctl(fd, _NS_GET_NSTYPE)
    except OSError:
        nstype = -1
    if nstype != sc.NAMESPACES[kind][0]:
        os.close(fd)
        raise InvalidArgument(f"linux.namespaces: {kind} namespace path {path}: not a {kind} namespace")
    return fd


def _make_cgroup(cgroup: Any, resources: dict[str, Any], made: list[Any]) -> None:
    """Create the container's cgroup and apply its limits (appended to ``made`` once it exists, so
    that a failure from then on removes it)."""
    if not cgroup.create():  # it existed: a cgroup made just now is empty, no need to look
        busy = cgroup.pids()
        if busy:
            # Another container's (or a parent of them): changing its limits, or killing and
            # removing it when this create fails, would hurt what is already running there.
            raise Conflict(f"linux.cgroupsPath: cgroup {cgroup.path} is not empty "
                           f"({len(busy)} process{'es' if len(busy) > 1 else ''} in it)")
    made.append(cgroup)
    cgroup.apply(resources)


def _spawn(sd: StateDir, record: Record, spec: dict[str, Any], made: list[Any], console_socket: str | None,
           no_pivot: bool, preserve_fds: int, subreaper: bool, session_keyring: str, listen_fds: int = 0) -> int:
    # What the parent does between fork and the child's release is on every start's critical path,
    # and there each page of the heap it writes is first copied (the child shares them until it
    # execs): a module imported there costs ~4 times as much. So the cgroup's code is loaded, its
    # hierarchies found and its limits worked out now; only the kernel's part is left for later.
    from berth.kernel.cgroups import open_cgroup

    cgroup = open_cgroup(spec.get("linux", {}).get("cgroupsPath") or None, record.id)
    resources = _resources(spec)
    launch = Launch(spec=spec, rootfs=record.rootfs, bundle=record.bundle, fifo=sd.fifo, no_pivot=no_pivot,
                    preserve_fds=preserve_fds)
    launch.listen_fds = listen_fds
    launch.session_keyring = session_keyring
    launch.state_root = os.path.dirname(sd.path)
    join_pid_fd = _namespace_plan(spec, launch)
    new_pid_here = "pid" in launch.namespaces and not launch.namespaces["pid"] and not launch.userns
    if console_socket:
        from berth.runtime.console import connect

        launch.console_fd = connect(console_socket)
    if subreaper:
        sc.prctl(sc.PR_SET_CHILD_SUBREAPER, 1)
    launch.fifo_fd = os.open(sd.fifo, os.O_PATH | os.O_CLOEXEC)
    parent, child = pair()
    own_pidns = None
    if new_pid_here or join_pid_fd is not None:
        own_pidns = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
        if join_pid_fd is not None:
            sc.setns(join_pid_fd, sc.CLONE_NEWPID)
        else:
            sc.unshare(sc.CLONE_NEWPID)
    # Fork non-dumpable: the child may be born into a pid namespace other processes share, and must
    # never show them /proc/PID/{exe,fd,mem} of the runtime's Python, even before it runs a line.
    sc.prctl(sc.PR_SET_DUMPABLE, 0)
    # No garbage collection across the fork: a collection walks every object and writes its header,
    # so in either process it would copy (COW) most of the heap the two share until the child execs
    # (~3 ms per container start when berth runs the runtime in-process).
    import gc

    gc.disable()
    gc.freeze()
    pid = -1
    try:
        pid = os.fork()
    finally:
        if pid:  # the parent, also when the fork failed: back as it was before
            gc.unfreeze()
            gc.enable()
            sc.prctl(sc.PR_SET_DUMPABLE, 1)
            if own_pidns is not None:
                sc.setns(own_pidns, sc.CLONE_NEWPID)
                os.close(own_pidns)
    if pid == 0:
        parent.close()
        child_main(launch, child)
    child.close()
    for fd, _ in launch.join:
        os.close(fd)
    if launch.console_fd is not None:
        os.close(launch.console_fd)
    os.close(launch.fifo_fd)
    init_pid = pid
    try:
        # The cgroup is made while the child prepares itself (imports, libraries): in parallel.
        _make_cgroup(cgroup, resources, made)
        record.cgroup_paths = cgroup.paths
        parent.send("G", {"enter": cgroup.entry_files(), "paths": cgroup.paths})
        if launch.userns == "new":
            parent.expect("M")
            _write_id_maps(pid, spec.get("linux", {}))
            parent.send("G")
        if launch.fork_for_pid:
            init_pid = parent.expect("P")
            os.waitpid(pid, 0)
        record.pid = init_pid
        state = oci_state(record, record.id, "creating")
        hooks = spec.get("hooks") or {}
        if hooks.get("prestart") or hooks.get("createRuntime"):
            parent.expect("H")  # the child's mounts are made: the hooks run before it goes on
            run_hooks(spec, "prestart", state)
            run_hooks(spec, "createRuntime", state)
            state["status"] = "created"
            parent.send("G", state)
        else:  # nothing to wait for: the child finds its go-ahead queued when it gets there
            state["status"] = "created"
            parent.send("G", state)
            parent.expect("H")
        parent.expect("R")
    except BaseException:
        _kill_and_wait(init_pid)
        if init_pid != pid:
            _kill_and_wait(pid)
        raise
    finally:
        parent.close()
    return init_pid


def _write_id_maps(pid: int, linux: dict[str, Any]) -> None:
    """Write uid/gid maps directly as root; rootless callers go through newuidmap/newgidmap."""
    for key, name, helper in (("uidMappings", "uid_map", "newuidmap"), ("gidMappings", "gid_map", "newgidmap")):
        maps = linux.get(key) or []
        if not maps:
            continue
        lines = "".join(f"{m['containerID']} {m['hostID']} {m['size']}\n" for m in maps)
        try:
            with open(f"/proc/{pid}/{name}", "w") as f:
                f.write(lines)
        except PermissionError:
            import subprocess

            argv = [helper, str(pid)]
            for m in maps:
                argv += [str(m["containerID"]), str(m["hostID"]), str(m["size"])]
            res = subprocess.run(argv, capture_output=True, text=True, check=False)
            if res.returncode:
                raise BerthError(f"linux.{key}: {helper}: {res.stderr.strip()}") from None
        except OSError as e:
            raise InvalidArgument(f"linux.{key}: cannot write {name}: {e.strerror}") from None


def _kill_and_wait(pid: int, timeout: float = 5.0) -> None:
    start = proc_start_time(pid)
    if start is None:
        _reap(pid)
        return
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + timeout
    while proc_start_time(pid) == start and time.monotonic() < deadline:
        if _reap(pid):
            return
        time.sleep(0.002)
    _reap(pid)


def _reap(pid: int) -> bool:
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == pid
    except ChildProcessError:
        return False


def _load_running(sd: StateDir) -> tuple[Record, str]:
    record = sd.load()
    status = sd.status(record)
    if record is None:
        raise Conflict(f"container {sd.id} is still being created")
    return record, status


def start(root: str, cid: str) -> None:
    sd = StateDir(root, cid)
    sd.lock()
    try:
        record, status = _load_running(sd)
        if status != "created":
            raise Conflict(f"cannot start container {cid}: it is {status}, not created")
        fd = os.open(sd.fifo, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            if not _wait_fifo(fd, record):
                raise BerthError(f"container {cid}: init exited before start")
        finally:
            os.close(fd)
            os.unlink(sd.fifo)
        run_hooks(record.config, "poststart", oci_state(record, cid, "running"), fatal=False)
    finally:
        sd.unlock()


def _wait_fifo(fd: int, record: Record) -> bool:
    """Read the init's byte from the exec fifo, giving up if the init dies meanwhile."""
    import select

    poller = select.poll()
    poller.register(fd, select.POLLIN)
    while True:
        if poller.poll(100):
            try:
                if os.read(fd, 1):
                    return True
            except BlockingIOError:
                continue
        if proc_start_time(record.pid) != record.pid_start:
            return False


def state(root: str, cid: str) -> dict[str, Any]:
    sd = StateDir(root, cid)
    record = sd.load()
    return oci_state(record, cid, sd.status(record))


def list_containers(root: str) -> list[dict[str, Any]]:
    if not os.path.isdir(root):
        return []
    out = []
    for name in sorted(os.listdir(root)):
        try:
            out.append(state(root, name))
        except (NotFound, InvalidArgument):
            continue
    return out


def parse_signal(text: str) -> int:
    if text.isdigit():
        sig = int(text)
        if sig <= 0 or sig >= 65:
            raise InvalidArgument(f"invalid signal {text!r}")
        return sig
    name = text.upper()
    if not name.startswith("SIG"):
        name = "SIG" + name
    import signal as enum_signal

    try:
        return int(enum_signal.Signals[name])
    except KeyError:
        raise InvalidArgument(f"unknown signal {text!r}") from None


def kill(root: str, cid: str, sig: int, all_processes: bool = False) -> None:
    sd = StateDir(root, cid)
    record, status = _load_running(sd)
    if status not in ("created", "running", "paused"):
        raise Conflict(f"cannot kill container {cid}: it is {status}")
    if all_processes:
        record.cgroup().kill_all(sig)
        return
    _signal(record, sig)


def _signal(record: Record, sig: int) -> None:
    """Signal the init through a pidfd checked against the recorded start time (no pid reuse race)."""
    try:
        pidfd = os.pidfd_open(record.pid)
    except ProcessLookupError:
        raise Conflict(f"container {record.id} is not running") from None
    try:
        if proc_start_time(record.pid) != record.pid_start:
            raise Conflict(f"container {record.id} is not running")
        signal.pidfd_send_signal(pidfd, sig)
    finally:
        os.close(pidfd)


def delete(root: str, cid: str, force: bool = False) -> None:
    sd = StateDir(root, cid)
    sd.lock()
    try:
        record = sd.load()
        status = sd.status(record)
        if status in ("running", "paused") and not force:
            raise Conflict(f"cannot delete container {cid} that is not stopped: {status}")
        cgroup = record.cgroup() if record else None
        if record is not None and status != "stopped":
            if cgroup is not None and status == "paused":
                cgroup.thaw()
            _kill_and_wait(record.pid)
        # As runc: processes outlive a stopped init only in a pid namespace it did not own (the
        # kernel kills the rest of its own before the init is gone), so only then look for them.
        own_pidns = record is not None and runtime_config.namespaces(record.config).get("pid") == ""
        if cgroup is not None:
            if status != "stopped" or not own_pidns:
                try:
                    cgroup.kill_all(signal.SIGKILL)
                except Exception:
                    pass
            cgroup.destroy()
        _remove_state_dir(sd.path)
    finally:
        sd.unlock()
    if record is not None:
        run_hooks(record.config, "poststop", oci_state(record, cid, "stopped"), fatal=False)


def pause(root: str, cid: str) -> None:
    _freeze(root, cid, True)


def resume(root: str, cid: str) -> None:
    _freeze(root, cid, False)


def _freeze(root: str, cid: str, freeze: bool) -> None:
    sd = StateDir(root, cid)
    sd.lock()
    try:
        record, status = _load_running(sd)
        want = "running" if freeze else "paused"
        if status != want:
            raise Conflict(f"cannot {'pause' if freeze else 'resume'} container {cid}: it is {status}")
        cgroup = record.cgroup()
        cgroup.freeze() if freeze else cgroup.thaw()
    finally:
        sd.unlock()


def update(root: str, cid: str, resources: dict[str, Any]) -> None:
    from berth.kernel.cgroups import validate_resources

    sd = StateDir(root, cid)
    sd.lock()
    try:
        record, status = _load_running(sd)
        if status == "stopped":
            raise Conflict(f"cannot update container {cid}: it is stopped")
        validate_resources(resources)
        linux = record.config.setdefault("linux", {})
        applied = dict(resources)
        if "devices" in resources:
            # The same deny-first rule list create builds, or an allow-only update would open all.
            applied["devices"] = _resources({"linux": {**linux, "resources": {"devices": resources["devices"]}}})[
                "devices"]
        record.cgroup().apply(applied)
        merged = _merge(linux.get("resources") or {}, resources)
        linux["resources"] = merged
        sd.save(record)
    finally:
        sd.unlock()


def _merge(base: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in new.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def pids(root: str, cid: str) -> list[int]:
    sd = StateDir(root, cid)
    record, status = _load_running(sd)
    if status == "stopped":
        return []
    return record.cgroup().pids()


def stats(root: str, cid: str) -> dict[str, Any]:
    sd = StateDir(root, cid)
    record, status = _load_running(sd)
    if status == "stopped":
        raise Conflict(f"container {cid} is not running")
    return record.cgroup().stats()


def wait_exit(pid: int) -> int:
    """Wait for our child ``pid`` and return a shell-style exit status (128+N when signalled)."""
    while True:
        try:
            _, status = os.waitpid(pid, 0)
            break
        except ChildProcessError:
            return 0
        except InterruptedError:
            continue
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.WEXITSTATUS(status)
