"""From what a user asks for (``berth run`` flags, or the library's keyword arguments) and what the
image says, to an OCI runtime config with Docker's secure defaults.

Defaults equal Docker's: its capability set, its seccomp profile (see ``seccomp_profile``), its
masked and read-only /proc and /sys paths, a device cgroup that only allows the standard devices;
``privileged`` lifts all of them.
"""

from __future__ import annotations

import os

from berth.errors import InvalidArgument

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

DEFAULT_CAPS = [
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW", "CAP_SETGID",
    "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_KILL",
    "CAP_AUDIT_WRITE",
]
MASKED_PATHS = [
    "/proc/asound", "/proc/acpi", "/proc/interrupts", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
    "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi", "/sys/firmware",
    "/sys/devices/virtual/powercap",
]
READONLY_PATHS = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}
#: Where ``--init`` puts the init inside the container (Docker: /sbin/docker-init, Podman: /run/podman-init).
INIT_PATH = "/run/berth-init"
#: Static inits (the container has no libc of ours to load): Debian's catatonit, tini-static.
INIT_CANDIDATES = ("/usr/bin/catatonit", "/usr/libexec/podman/catatonit", "/usr/bin/tini-static",
                   "/usr/bin/docker-init")


def parse_size(text: str, flag: str) -> int:
    """Docker's sizes: a number with an optional b/k/m/g/t suffix (binary units)."""
    raw = str(text).strip().lower()
    num = raw.rstrip("bkmgt")
    unit = raw[len(num):].rstrip("b") if raw[len(num):] not in ("b",) else "b"
    try:
        value = float(num)
        if value < 0:
            raise ValueError
        return int(value * _UNITS[unit])
    except (ValueError, KeyError):
        raise InvalidArgument(f"invalid {flag} {text!r}: expected a size like 512m or 1g") from None


def _all_caps() -> list[str]:
    """Every capability this process may hand on: the kernel's, less what our own bounding set lacks
    (a host may withhold some even from root; asking for them would fail the container's start)."""
    from berth.kernel import caps

    try:
        bounding: set[int] | None = caps.current()["bounding"]
    except (OSError, KeyError):
        bounding = None
    return [n for n in caps.names()
            if caps.CAPS[n] <= caps.last_cap() and (bounding is None or caps.CAPS[n] in bounding)]


def _caps(opts: dict[str, Any]) -> list[str]:
    if opts.get("privileged"):
        return _all_caps()
    caps_set = list(DEFAULT_CAPS)

    def norm(name: str) -> str:
        name = name.upper()
        return name if name.startswith("CAP_") or name == "ALL" else "CAP_" + name

    drop = [norm(c) for c in opts.get("cap_drop", [])]
    add = [norm(c) for c in opts.get("cap_add", [])]
    if "ALL" in drop:
        caps_set = []
    caps_set = [c for c in caps_set if c not in drop]
    if "ALL" in add:
        add = _all_caps()
    for c in add:
        if c not in caps_set:
            caps_set.append(c)
    from berth.kernel import caps as caps_mod

    caps_mod.parse(caps_set, "--cap-add")
    return caps_set


def _user(opts: dict[str, Any], image_cfg: dict[str, Any], rootfs: str) -> dict[str, Any]:
    spec = opts.get("user") or image_cfg.get("User") or ""
    name, _, group = spec.partition(":")
    uid, gid, home = _lookup_user(rootfs, name or "0")
    if group:
        gid = _lookup_group(rootfs, group)
    user: dict[str, Any] = {"uid": uid, "gid": gid}
    extra = _supplementary_groups(rootfs, name, uid, gid)
    if extra:
        user["additionalGids"] = extra
    user["_home"] = home
    return user


def _read_db(rootfs: str, name: str) -> list[list[str]]:
    try:
        with open(os.path.join(rootfs, "etc", name)) as f:
            return [line.rstrip("\n").split(":") for line in f if line.strip() and not line.startswith("#")]
    except OSError:
        return []


def _lookup_user(rootfs: str, name: str) -> tuple[int, int, str]:
    for fields in _read_db(rootfs, "passwd"):
        if len(fields) >= 6 and (fields[0] == name or fields[2] == name):
            return int(fields[2]), int(fields[3]), fields[5] or "/"
    if name.isdigit():
        return int(name), 0, "/"
    raise InvalidArgument(f"unable to find user {name}: no matching entries in passwd file")


def _lookup_group(rootfs: str, name: str) -> int:
    for fields in _read_db(rootfs, "group"):
        if len(fields) >= 3 and (fields[0] == name or fields[2] == name):
            return int(fields[2])
    if name.isdigit():
        return int(name)
    raise InvalidArgument(f"unable to find group {name}: no matching entries in group file")


def _supplementary_groups(rootfs: str, name: str, uid: int, gid: int) -> list[int]:
    if not name or name.isdigit():
        return []
    groups = []
    for fields in _read_db(rootfs, "group"):
        if len(fields) >= 4 and name in fields[3].split(",") and int(fields[2]) != gid:
            groups.append(int(fields[2]))
    return groups


def _env(opts: dict[str, Any], image_cfg: dict[str, Any], home: str, hostname: str,
         tty: bool) -> list[str]:
    env: dict[str, str] = {}
    for item in image_cfg.get("Env") or []:
        k, _, v = item.partition("=")
        env[k] = v
    env.setdefault("PATH", DEFAULT_PATH)
    env["HOSTNAME"] = hostname
    for item in opts.get("env", []):
        k, eq, v = item.partition("=")
        if not k:
            raise InvalidArgument(f"invalid environment variable {item!r}")
        if eq:
            env[k] = v
        elif k in os.environ:
            env[k] = os.environ[k]  # `-e NAME` passes the caller's value, as Docker does
    if tty:
        env.setdefault("TERM", "xterm")
    env.setdefault("HOME", home)
    return [f"{k}={v}" for k, v in env.items()]


def command(opts: dict[str, Any], image_cfg: dict[str, Any]) -> list[str]:
    entrypoint = opts.get("entrypoint")
    if entrypoint is not None:
        ep = [entrypoint] if entrypoint else []
        cmd = list(opts.get("command") or [])
    else:
        ep = list(image_cfg.get("Entrypoint") or [])
        cmd = list(opts.get("command") or image_cfg.get("Cmd") or [])
    args = ep + cmd
    if not args:
        raise InvalidArgument("no command specified: the image has none and none was given")
    return args


def _mounts(opts: dict[str, Any], privileged: bool) -> list[dict[str, Any]]:
    ro_sys = [] if privileged else ["ro"]
    mounts: list[dict[str, Any]] = [
        {"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime",
                                                                                "mode=755", "size=65536k"]},
        {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
         "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
        {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev",
                                                                                *ro_sys]},
        {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
         "options": ["nosuid", "noexec", "nodev", "relatime", *ro_sys]},
        {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec",
                                                                                           "nodev"]},
        {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
         "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
    ]
    for spec in opts.get("tmpfs", []):
        dest, _, extra = spec.partition(":")
        if not dest.startswith("/"):
            raise InvalidArgument(f"invalid --tmpfs {spec!r}: the destination must be an absolute path")
        mounts.append({"destination": dest, "type": "tmpfs", "source": "tmpfs",
                       "options": ["nosuid", "nodev", *([o for o in extra.split(",") if o] or ["mode=1777"])]})
    for m in opts.get("binds", []):
        options = ["rbind", "ro" if m.get("readonly") else "rw"]
        mounts.append({"destination": m["destination"], "type": "bind", "source": m["source"],
                       "options": options})
    if opts.get("init"):
        mounts.append({"destination": INIT_PATH, "type": "bind", "source": init_binary(),
                       "options": ["bind", "ro", "nosuid", "nodev"]})
    return mounts


def init_binary() -> str:
    """The host's static init for ``--init``: $BERTH_INIT, else catatonit or tini-static."""
    chosen = os.environ.get("BERTH_INIT")
    for path in (chosen,) if chosen else INIT_CANDIDATES:
        if os.access(path, os.X_OK):
            return path
    raise InvalidArgument(f"--init: no init found ({chosen or ', '.join(INIT_CANDIDATES)}): "
                          "install catatonit or tini")


def devices(opts: dict[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``--device HOST[:CONTAINER[:PERMISSIONS]]`` → (linux.devices nodes, device cgroup rules)."""
    import stat

    nodes, rules = [], []
    for spec in opts.get("devices", []):
        parts = spec.split(":")
        host = parts[0]
        target = parts[1] if len(parts) > 1 and parts[1] else host
        perms = parts[2] if len(parts) > 2 else "rwm"
        if len(parts) == 2 and parts[1] and set(parts[1]) <= set("rwm"):
            target, perms = host, parts[1]  # HOST:PERMISSIONS, as Docker accepts
        if len(parts) > 3 or not perms or not set(perms) <= set("rwm") or not target.startswith("/"):
            raise InvalidArgument(f"invalid --device {spec!r}: expected HOST[:CONTAINER[:rwm]]")
        try:
            st = os.stat(host)
        except OSError as e:
            raise InvalidArgument(f"--device {host}: {e.strerror}") from None
        if stat.S_ISCHR(st.st_mode):
            kind = "c"
        elif stat.S_ISBLK(st.st_mode):
            kind = "b"
        else:
            raise InvalidArgument(f"--device {host}: not a device node")
        major, minor = os.major(st.st_rdev), os.minor(st.st_rdev)
        nodes.append({"path": target, "type": kind, "major": major, "minor": minor,
                      "fileMode": stat.S_IMODE(st.st_mode), "uid": st.st_uid, "gid": st.st_gid})
        rules.append({"allow": True, "type": kind, "major": major, "minor": minor, "access": perms})
    return nodes, rules


def _resources(opts: dict[str, Any], privileged: bool, device_rules: list[dict[str, Any]]) -> dict[str, Any]:
    res: dict[str, Any] = {}
    if privileged:
        res["devices"] = [{"allow": True, "access": "rwm"}]
    else:
        res["devices"] = [{"allow": False, "access": "rwm"}, {"allow": True, "type": "c", "access": "m"},
                          {"allow": True, "type": "b", "access": "m"}, *device_rules]
    memory: dict[str, Any] = {}
    if opts.get("memory"):
        memory["limit"] = parse_size(opts["memory"], "--memory")
        if memory["limit"] < 6 * 1024 * 1024:
            raise InvalidArgument("minimum memory limit allowed is 6MB")
    if opts.get("memory_swap"):
        swap = -1 if str(opts["memory_swap"]) == "-1" else parse_size(opts["memory_swap"], "--memory-swap")
        if swap != -1 and memory.get("limit") and swap < memory["limit"]:
            raise InvalidArgument("--memory-swap must be larger than --memory")
        memory["swap"] = swap
    if memory:
        res["memory"] = memory
    cpu: dict[str, Any] = {}
    if opts.get("cpus"):
        try:
            cpus = float(opts["cpus"])
            if cpus <= 0:
                raise ValueError
        except ValueError:
            raise InvalidArgument(f"invalid --cpus {opts['cpus']!r}") from None
        cpu["period"] = 100000
        cpu["quota"] = int(cpus * 100000)
    if opts.get("cpu_shares"):
        cpu["shares"] = int(opts["cpu_shares"])
    if opts.get("cpuset_cpus"):
        cpu["cpus"] = str(opts["cpuset_cpus"])
    if cpu:
        res["cpu"] = cpu
    if opts.get("pids_limit"):
        res["pids"] = {"limit": int(opts["pids_limit"])}
    return res


_RLIMITS = {"core": "RLIMIT_CORE", "cpu": "RLIMIT_CPU", "data": "RLIMIT_DATA", "fsize": "RLIMIT_FSIZE",
            "locks": "RLIMIT_LOCKS", "memlock": "RLIMIT_MEMLOCK", "msgqueue": "RLIMIT_MSGQUEUE",
            "nice": "RLIMIT_NICE", "nofile": "RLIMIT_NOFILE", "nproc": "RLIMIT_NPROC", "rss": "RLIMIT_RSS",
            "rtprio": "RLIMIT_RTPRIO", "rttime": "RLIMIT_RTTIME", "sigpending": "RLIMIT_SIGPENDING",
            "stack": "RLIMIT_STACK", "as": "RLIMIT_AS"}


def _rlimits(opts: dict[str, Any]) -> list[dict[str, Any]]:
    from berth.kernel.syscalls import prlimit
    from berth.oci.runtime_config import RLIMITS

    hard = prlimit(RLIMITS["RLIMIT_NOFILE"])[1]
    limits = {"RLIMIT_NOFILE": {"type": "RLIMIT_NOFILE", "soft": hard, "hard": hard}}
    for spec in opts.get("ulimits", []):
        name, _, values = spec.partition("=")
        kind = _RLIMITS.get(name)
        if kind is None or not values:
            raise InvalidArgument(f"invalid --ulimit {spec!r}: expected NAME=SOFT[:HARD]")
        s, _, h = values.partition(":")
        try:
            s_val = int(s)
            h_val = int(h) if h else s_val
        except ValueError:
            raise InvalidArgument(f"invalid --ulimit {spec!r}") from None
        if s_val > h_val:
            raise InvalidArgument(f"invalid --ulimit {spec!r}: soft limit above hard limit")
        limits[kind] = {"type": kind, "soft": s_val, "hard": h_val}
    return list(limits.values())


def build(cid: str, opts: dict[str, Any], image_cfg: dict[str, Any], rootfs: str) -> dict[str, Any]:
    """The OCI config for container ``cid`` whose root filesystem is mounted at ``rootfs``."""
    privileged = bool(opts.get("privileged"))
    hostname = opts.get("hostname") or cid[:12]
    tty = bool(opts.get("tty"))
    user = _user(opts, image_cfg, rootfs)
    home = user.pop("_home")
    caps = _caps(opts)
    args = command(opts, image_cfg)
    if opts.get("init"):
        args = [INIT_PATH, "--", *args]  # the init is PID 1 and reaps; the command is its child
    device_nodes, device_rules = devices(opts)
    process: dict[str, Any] = {
        "terminal": tty,
        "user": user,
        "args": args,
        "env": _env(opts, image_cfg, home, hostname, tty),
        "cwd": opts.get("workdir") or image_cfg.get("WorkingDir") or "/",
        "capabilities": {k: list(caps) for k in ("bounding", "effective", "permitted")},
        "rlimits": _rlimits(opts),
        "noNewPrivileges": "no-new-privileges" in opts.get("security_opt", [])
        or "no-new-privileges:true" in opts.get("security_opt", []),
    }
    if not process["cwd"].startswith("/"):
        raise InvalidArgument(f"the working directory {process['cwd']!r} is not an absolute path")
    network = opts.get("network") or "none"
    namespaces = [{"type": t} for t in ("pid", "ipc", "uts", "mount", "cgroup")]
    if network != "host":
        namespaces.append({"type": "network"})
    linux: dict[str, Any] = {
        "namespaces": namespaces,
        "cgroupsPath": f"/berth/{cid}",
        "resources": _resources(opts, privileged, device_rules),
    }
    if device_nodes:
        linux["devices"] = device_nodes
    if not privileged:
        linux["maskedPaths"] = list(MASKED_PATHS)
        linux["readonlyPaths"] = list(READONLY_PATHS)
        seccomp = _seccomp(opts, set(caps))
        if seccomp is not None:
            linux["seccomp"] = seccomp
    spec: dict[str, Any] = {
        "ociVersion": "1.0.2",
        "process": process,
        "root": {"path": rootfs, "readonly": bool(opts.get("read_only"))},
        "hostname": hostname,
        "mounts": _mounts(opts, privileged),
        "linux": linux,
        "annotations": {f"label.{k}": v for k, v in (opts.get("labels") or {}).items()},
    }
    return spec


def _seccomp(opts: dict[str, Any], caps: set[str]) -> dict[str, Any] | None:
    from berth.engine import seccomp_profile

    profile_path = seccomp_profile.DEFAULT_PROFILE
    for item in opts.get("security_opt", []):
        key, _, value = item.partition("=")
        if key == "seccomp":
            if value == "unconfined":
                return None
            profile_path = value
        elif key not in ("no-new-privileges", "no-new-privileges:true", "label", "apparmor"):
            raise InvalidArgument(f"invalid --security-opt {item!r}")
    profile = seccomp_profile.load(profile_path)
    if "syscalls" in profile and "archMap" not in profile and "architectures" not in profile and \
            all("action" in r and "names" in r for r in profile["syscalls"]) and "includes" not in str(profile):
        return profile  # already in OCI form
    return seccomp_profile.to_oci(profile, caps)
