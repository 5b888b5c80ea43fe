"""OCI runtime config.json: loaded and validated once, at the boundary.

The config stays a plain dict after validation (the runtime reads a handful of fields once, and
building objects for the whole schema would cost start-up time); what this module guarantees is that
every field the runtime reads has the type and shape the spec gives it. Errors name the field path,
``process.user.uid: expected an integer, got "0"``, so one line tells the user what to fix.
"""

from __future__ import annotations

from berth.errors import InvalidArgument
from berth.oci import jsonc as json

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

NAMESPACE_TYPES = ("pid", "network", "mount", "ipc", "uts", "user", "cgroup", "time")
HOOK_KINDS = ("prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop")
PROPAGATIONS = ("private", "rprivate", "shared", "rshared", "slave", "rslave", "unbindable", "runbindable", "")
#: The rlimit types a config may name, with Linux's resource numbers (asm-generic/resource.h: the same
#: on x86-64 and arm64).
RLIMITS = {
    "RLIMIT_CPU": 0, "RLIMIT_FSIZE": 1, "RLIMIT_DATA": 2, "RLIMIT_STACK": 3, "RLIMIT_CORE": 4,
    "RLIMIT_RSS": 5, "RLIMIT_NPROC": 6, "RLIMIT_NOFILE": 7, "RLIMIT_MEMLOCK": 8, "RLIMIT_AS": 9,
    "RLIMIT_LOCKS": 10, "RLIMIT_SIGPENDING": 11, "RLIMIT_MSGQUEUE": 12, "RLIMIT_NICE": 13,
    "RLIMIT_RTPRIO": 14, "RLIMIT_RTTIME": 15,
}
CAP_SETS = ("bounding", "effective", "inheritable", "permitted", "ambient")
_MAX_ID = 2**32 - 2

_TYPE_NAMES = {str: "a string", bool: "a boolean", int: "an integer", list: "an array", dict: "an object"}


def _type(value: Any, kind: type, field: str) -> Any:
    # bool is a subclass of int in Python but not in JSON.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise InvalidArgument(f"{field}: expected {_TYPE_NAMES[kind]}, got {json.dumps(value)}")
    if isinstance(value, str) and "\0" in value:
        # No path, argument or environment string can carry one to the kernel.
        raise InvalidArgument(f"{field}: contains a NUL byte")
    return value


def _at(field: str, key: str) -> str:
    """The path of ``key`` inside ``field`` ("" is the top level: ``ociVersion``, not ``.ociVersion``)."""
    return f"{field}.{key}" if field else key


def _opt(obj: dict[str, Any], key: str, kind: type, field: str) -> Any:
    value = obj.get(key)
    return None if value is None else _type(value, kind, _at(field, key))


def _req(obj: dict[str, Any], key: str, kind: type, field: str) -> Any:
    if key not in obj:
        raise InvalidArgument(f"{_at(field, key)}: required field is missing")
    return _type(obj[key], kind, _at(field, key))


def _range(value: int, low: int, high: int, field: str) -> int:
    if not low <= value <= high:
        raise InvalidArgument(f"{field}: {value} is out of range [{low}, {high}]")
    return value


def _strings(obj: dict[str, Any], key: str, field: str) -> list[str]:
    items = _opt(obj, key, list, field) or []
    for i, item in enumerate(items):
        _type(item, str, f"{_at(field, key)}[{i}]")
    return items


def _objects(obj: dict[str, Any], key: str, field: str) -> list[tuple[str, dict[str, Any]]]:
    items = _opt(obj, key, list, field) or []
    return [(f"{_at(field, key)}[{i}]", _type(item, dict, f"{_at(field, key)}[{i}]")) for i, item in enumerate(items)]


def _abs(path: str, field: str) -> None:
    if not path.startswith("/"):
        raise InvalidArgument(f"{field}: must be an absolute path, got {path!r}")


def load(path: str) -> dict[str, Any]:
    """Read and validate a config.json; raise InvalidArgument naming the file or field at fault."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise InvalidArgument(f"{path}: no such file (is --bundle right?)") from None
    try:
        spec = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise InvalidArgument(f"{path}: invalid JSON: {e}") from None
    validate(_type(spec, dict, "config.json"))
    return spec


def validate(spec: dict[str, Any]) -> None:
    """Check the shape of every field berth-runtime acts on."""
    _req(spec, "ociVersion", str, "")
    root = _req(spec, "root", dict, "")
    _req(root, "path", str, "root")
    _opt(root, "readonly", bool, "root")
    for f in ("hostname", "domainname"):
        _opt(spec, f, str, "")
    for field, m in _objects(spec, "mounts", ""):
        _abs(_req(m, "destination", str, field), f"{field}.destination")
        _opt(m, "type", str, field)
        _opt(m, "source", str, field)
        _strings(m, "options", field)
    process = _opt(spec, "process", dict, "")
    if process is not None:
        validate_process(process, "process")
    hooks = _opt(spec, "hooks", dict, "") or {}
    for kind in hooks:
        if kind not in HOOK_KINDS:
            raise InvalidArgument(f"hooks.{kind}: unknown hook kind")
        for field, h in _objects(hooks, kind, "hooks"):
            _abs(_req(h, "path", str, field), f"{field}.path")
            _strings(h, "args", field)
            _strings(h, "env", field)
            timeout = _opt(h, "timeout", int, field)
            if timeout is not None and timeout <= 0:
                raise InvalidArgument(f"{field}.timeout: must be greater than zero")
    annotations = _opt(spec, "annotations", dict, "") or {}
    for k, v in annotations.items():
        _type(v, str, f"annotations.{k}")
    linux = _opt(spec, "linux", dict, "")
    if linux is not None:
        _validate_linux(linux)


def validate_process(process: dict[str, Any], field: str) -> None:
    """Validate a ``process`` object; also used for ``exec --process``."""
    _opt(process, "terminal", bool, field)
    args = _strings(process, "args", field)
    if not args:
        raise InvalidArgument(f"{field}.args: at least one argument is required")
    _abs(_req(process, "cwd", str, field), f"{field}.cwd")
    for i, e in enumerate(_strings(process, "env", field)):
        if "=" not in e:
            raise InvalidArgument(f"{field}.env[{i}]: expected KEY=VALUE, got {e!r}")
    user = _req(process, "user", dict, field)
    for key in ("uid", "gid"):  # uint32, and (uid_t)-1 means "unchanged" to the kernel
        _range(_req(user, key, int, f"{field}.user"), 0, _MAX_ID, f"{field}.user.{key}")
    umask = _opt(user, "umask", int, f"{field}.user")
    if umask is not None:
        _range(umask, 0, 0o7777, f"{field}.user.umask")
    for i, g in enumerate(_opt(user, "additionalGids", list, f"{field}.user") or []):
        _range(_type(g, int, f"{field}.user.additionalGids[{i}]"), 0, _MAX_ID, f"{field}.user.additionalGids[{i}]")
    caps = _opt(process, "capabilities", dict, field) or {}
    for k in caps:
        if k not in CAP_SETS:
            raise InvalidArgument(f"{field}.capabilities.{k}: unknown capability set")
        _strings(caps, k, f"{field}.capabilities")
    for rfield, r in _objects(process, "rlimits", field):
        kind = _req(r, "type", str, rfield)
        if kind not in RLIMITS:
            raise InvalidArgument(f"{rfield}.type: unknown rlimit {kind!r}")
        soft, hard = (_range(_req(r, k, int, rfield), 0, 2**64 - 1, f"{rfield}.{k}") for k in ("soft", "hard"))
        if soft > hard:
            raise InvalidArgument(f"{rfield}.soft: {soft} is above the hard limit {hard}")
    _opt(process, "noNewPrivileges", bool, field)
    oom = _opt(process, "oomScoreAdj", int, field)
    if oom is not None:
        _range(oom, -1000, 1000, f"{field}.oomScoreAdj")
    _opt(process, "apparmorProfile", str, field)
    _opt(process, "selinuxLabel", str, field)
    size = _opt(process, "consoleSize", dict, field)
    if size is not None:
        _req(size, "height", int, f"{field}.consoleSize")
        _req(size, "width", int, f"{field}.consoleSize")


def _validate_linux(linux: dict[str, Any]) -> None:
    seen: set[str] = set()
    for field, ns in _objects(linux, "namespaces", "linux"):
        kind = _req(ns, "type", str, field)
        if kind not in NAMESPACE_TYPES:
            raise InvalidArgument(f"{field}.type: unknown namespace type {kind!r}")
        if kind in seen:
            raise InvalidArgument(f"{field}.type: namespace {kind!r} given twice")
        seen.add(kind)
        path = _opt(ns, "path", str, field)
        if path:
            _abs(path, f"{field}.path")
    for key in ("uidMappings", "gidMappings"):
        for field, m in _objects(linux, key, "linux"):
            for k in ("containerID", "hostID", "size"):
                _req(m, k, int, field)
    if (linux.get("uidMappings") or linux.get("gidMappings")) and "user" not in seen:
        raise InvalidArgument("linux.uidMappings: mappings need a user namespace in linux.namespaces")
    for field, d in _objects(linux, "devices", "linux"):
        _abs(_req(d, "path", str, field), f"{field}.path")
        kind = _req(d, "type", str, field)
        if kind not in ("c", "b", "u", "p"):
            raise InvalidArgument(f"{field}.type: unknown device type {kind!r}")
        for k in ("major", "minor", "fileMode", "uid", "gid"):
            _opt(d, k, int, field)
        if kind != "p" and ("major" not in d or "minor" not in d):
            raise InvalidArgument(f"{field}: major and minor are required for type {kind!r}")
    _opt(linux, "cgroupsPath", str, "linux")
    _opt(linux, "resources", dict, "linux")
    for k, v in (_opt(linux, "sysctl", dict, "linux") or {}).items():
        _type(v, str, f"linux.sysctl.{k}")
    _opt(linux, "seccomp", dict, "linux")
    prop = _opt(linux, "rootfsPropagation", str, "linux")
    if prop is not None and prop not in PROPAGATIONS:
        raise InvalidArgument(f"linux.rootfsPropagation: unknown propagation {prop!r}")
    _strings(linux, "maskedPaths", "linux")
    _strings(linux, "readonlyPaths", "linux")
    persona = _opt(linux, "personality", dict, "linux")
    if persona is not None:
        domain = _req(persona, "domain", str, "linux.personality")
        if domain not in ("LINUX", "LINUX32"):
            raise InvalidArgument(f"linux.personality.domain: unknown domain {domain!r}")


def namespaces(spec: dict[str, Any]) -> dict[str, str]:
    """The config's namespaces as ``{type: path}`` (path empty for a new namespace)."""
    return {ns["type"]: ns.get("path") or "" for ns in spec.get("linux", {}).get("namespaces", [])}
