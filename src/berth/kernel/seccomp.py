"""The OCI ``linux.seccomp`` object, validated in Python and loaded through libseccomp.

Why libseccomp rather than hand-written BPF: it resolves syscall names per architecture, copes with
multiplexed syscalls (socketcall, ipc) and the x32 ABI, and lays rules out as a compact filter.

Why lazy: importing this module costs a few dicts. ctypes and the library are loaded on first use,
because ``berth-runtime`` start-up time matters and most of its commands never touch seccomp.
``validate()`` needs no library at all, so a bundle can be checked on a host without libseccomp.

``install()`` is for the container's init, just before execve: after no_new_privs is set, or while
the process still holds CAP_SYS_ADMIN. It never sets no_new_privs itself (libseccomp would by
default); that is the config's ``process.noNewPrivileges`` to decide.
"""

from __future__ import annotations

import os

from berth.errors import BerthError, InvalidArgument, PermissionDenied, Unsupported

TYPE_CHECKING = False  # typing costs ~9 ms to import; annotations here are never evaluated
if TYPE_CHECKING:
    from typing import Any

FIELD = "linux.seccomp"

# Action values from libseccomp's seccomp.h; ERRNO and TRACE carry a 16-bit value in the low bits.
ACTIONS: dict[str, int] = {
    "SCMP_ACT_KILL": 0x00000000,
    "SCMP_ACT_KILL_THREAD": 0x00000000,
    "SCMP_ACT_KILL_PROCESS": 0x80000000,
    "SCMP_ACT_TRAP": 0x00030000,
    "SCMP_ACT_ERRNO": 0x00050000,
    "SCMP_ACT_TRACE": 0x7FF00000,
    "SCMP_ACT_LOG": 0x7FFC0000,
    "SCMP_ACT_ALLOW": 0x7FFF0000,
    "SCMP_ACT_NOTIFY": 0x7FC00000,
}
_WITH_RET = ("SCMP_ACT_ERRNO", "SCMP_ACT_TRACE")

# enum scmp_compare
OPERATORS: dict[str, int] = {
    "SCMP_CMP_NE": 1,
    "SCMP_CMP_LT": 2,
    "SCMP_CMP_LE": 3,
    "SCMP_CMP_EQ": 4,
    "SCMP_CMP_GE": 5,
    "SCMP_CMP_GT": 6,
    "SCMP_CMP_MASKED_EQ": 7,
}

# OCI name -> the name seccomp_arch_resolve_name() knows. Which of them this libseccomp really
# supports is asked at run time (features(), install()).
ARCHES: dict[str, str] = {
    "SCMP_ARCH_X86": "x86",
    "SCMP_ARCH_X86_64": "x86_64",
    "SCMP_ARCH_X32": "x32",
    "SCMP_ARCH_ARM": "arm",
    "SCMP_ARCH_AARCH64": "aarch64",
    "SCMP_ARCH_MIPS": "mips",
    "SCMP_ARCH_MIPS64": "mips64",
    "SCMP_ARCH_MIPS64N32": "mips64n32",
    "SCMP_ARCH_MIPSEL": "mipsel",
    "SCMP_ARCH_MIPSEL64": "mipsel64",
    "SCMP_ARCH_MIPSEL64N32": "mipsel64n32",
    "SCMP_ARCH_PPC": "ppc",
    "SCMP_ARCH_PPC64": "ppc64",
    "SCMP_ARCH_PPC64LE": "ppc64le",
    "SCMP_ARCH_S390": "s390",
    "SCMP_ARCH_S390X": "s390x",
    "SCMP_ARCH_PARISC": "parisc",
    "SCMP_ARCH_PARISC64": "parisc64",
    "SCMP_ARCH_RISCV64": "riscv64",
    "SCMP_ARCH_LOONGARCH64": "loongarch64",
    "SCMP_ARCH_M68K": "m68k",
    "SCMP_ARCH_SH": "sh",
    "SCMP_ARCH_SHEB": "sheb",
}

# OCI flag -> (enum scmp_filter_attr, the seccomp_api_get() level that supports it).
FLAGS: dict[str, tuple[int, int]] = {
    "SECCOMP_FILTER_FLAG_TSYNC": (4, 2),
    "SECCOMP_FILTER_FLAG_LOG": (6, 3),
    "SECCOMP_FILTER_FLAG_SPEC_ALLOW": (7, 4),
    "SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV": (10, 7),
}
_ATTR_CTL_NNP = 3
_ATTR_CTL_OPTIMIZE = 8
_ATTR_API_SYSRAWRC = 9
# SCMP_FLTATR_CTL_OPTIMIZE 2 lays each arch's rules out as a binary tree on the syscall number.
# Docker's default profile then has more instructions (1408 rather than 1125) but each syscall
# takes a far shorter path, and the kernel walks every path once at load (to cache always-allowed
# syscalls): prctl(PR_SET_SECCOMP) takes ~0.55 ms rather than ~1.1 ms. The actions are the same
# for every syscall and argument (tests/kernel/test_seccomp_layout.py interprets both programs).
# libseccomp before 2.5.4 drops the default action of a tree with no rules (libseccomp#370): the
# tree is used from 2.5.4 on, or with at least 8 rules, as runc does.
_OPTIMIZE = 2
_TREE_MIN_RULES = 8
# What the cached program depends on beyond the profile and the library: bump on any change in
# how _build drives libseccomp.
_GENERATION = f"berth-seccomp 2 optimize={_OPTIMIZE}"
_API_NOTIFY = 5
_NR_SCMP_ERROR = -1
_MAX_ARGS = 6
_EPERM = 1
_EEXIST = 17
_EACCES = 13
_EOPNOTSUPP = 95


_Arg = tuple[int, int, int, int]  # index, scmp_compare, datum_a, datum_b


class _Rule:
    """One ``syscalls[]`` entry, resolved. Each group becomes one libseccomp rule (ANDed inside)."""

    __slots__ = ("action", "field", "groups", "names")

    def __init__(self, field: str, names: list[str], action: int, groups: list[list[_Arg]]) -> None:
        self.field, self.names, self.action, self.groups = field, names, action, groups


class _Plan:
    """The whole object, validated and resolved to libseccomp values."""

    __slots__ = ("arches", "default", "flags", "notify", "rules")

    def __init__(self, default: int, arches: list[str], flags: list[str], rules: list[_Rule],
                 notify: bool) -> None:
        self.default, self.arches, self.flags, self.rules, self.notify = default, arches, flags, rules, notify


# -- validation (pure Python) -------------------------------------------------------------------


def _uint(value: Any, field: str, bits: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgument(f"{field}: must be an unsigned integer, not {type(value).__name__}")
    if not 0 <= value < (1 << bits):
        raise InvalidArgument(f"{field}: {value} is out of range 0..{(1 << bits) - 1}")
    return value


def _str(value: Any, field: str) -> str:
    if not isinstance(value, str):
        raise InvalidArgument(f"{field}: must be a string, not {type(value).__name__}")
    return value


def _list(value: Any, field: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise InvalidArgument(f"{field}: must be an array, not {type(value).__name__}")
    return value


def _obj(value: Any, field: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidArgument(f"{field}: must be an object, not {type(value).__name__}")
    return value


def _action(obj: dict[str, Any], key: str, ret_key: str, field: str) -> tuple[str, int]:
    """Resolve ``obj[key]`` (with its errno return ``obj[ret_key]``) to a libseccomp action value."""
    if obj.get(key) is None:
        raise InvalidArgument(f"{field}.{key}: is required")
    name = _str(obj[key], f"{field}.{key}")
    if name not in ACTIONS:
        raise InvalidArgument(f'{field}.{key}: unknown action "{name}"')
    ret = obj.get(ret_key)
    if ret is not None:
        if name not in _WITH_RET:
            raise InvalidArgument(
                f'{field}.{ret_key}: only SCMP_ACT_ERRNO and SCMP_ACT_TRACE take one, not "{name}"'
            )
        ret = _uint(ret, f"{field}.{ret_key}", 16)
    if name in _WITH_RET:
        return name, ACTIONS[name] | (_EPERM if ret is None else ret)
    return name, ACTIONS[name]


def _arg(raw: Any, field: str) -> _Arg:
    arg = _obj(raw, field)
    for key in ("index", "value", "op"):
        if arg.get(key) is None:
            raise InvalidArgument(f"{field}.{key}: is required")
    index = _uint(arg["index"], f"{field}.index", 32)
    if index >= _MAX_ARGS:
        raise InvalidArgument(f"{field}.index: {index} is out of range 0..{_MAX_ARGS - 1}")
    op = _str(arg["op"], f"{field}.op")
    if op not in OPERATORS:
        raise InvalidArgument(f'{field}.op: unknown operator "{op}"')
    value = _uint(arg["value"], f"{field}.value", 64)
    two = arg.get("valueTwo")
    two = 0 if two is None else _uint(two, f"{field}.valueTwo", 64)
    # For SCMP_CMP_MASKED_EQ libseccomp reads datum_a as the mask and datum_b as the value; OCI's
    # value/valueTwo map onto them in that order, as runc does.
    return index, OPERATORS[op], value, two


def _syscall(raw: Any, field: str) -> tuple[_Rule, bool]:
    entry = _obj(raw, field)
    if entry.get("names") is None:
        raise InvalidArgument(f"{field}.names: is required")
    names = _list(entry["names"], f"{field}.names")
    if not names:
        raise InvalidArgument(f"{field}.names: must contain at least one syscall name")
    for i, name in enumerate(names):
        if not _str(name, f"{field}.names[{i}]"):
            raise InvalidArgument(f"{field}.names[{i}]: must not be empty")
    action_name, action = _action(entry, "action", "errnoRet", field)
    args = [_arg(a, f"{field}.args[{i}]") for i, a in enumerate(_list(entry.get("args"), f"{field}.args"))]
    indexes = [a[0] for a in args]
    # libseccomp refuses two comparisons of one argument in a rule. Like runc, treat such an entry
    # as alternatives: one rule per condition, any of which matches.
    groups = [[a] for a in args] if len(set(indexes)) != len(indexes) else [args]
    return _Rule(field, list(names), action, groups), action_name == "SCMP_ACT_NOTIFY"


def _parse(seccomp: Any) -> _Plan:
    sec = _obj(seccomp, FIELD)
    default_name, default = _action(sec, "defaultAction", "defaultErrnoRet", FIELD)
    if default_name == "SCMP_ACT_NOTIFY":
        # The init itself would block on its next syscall, before the listener could have the fd.
        raise InvalidArgument(f"{FIELD}.defaultAction: SCMP_ACT_NOTIFY cannot be the default action")
    arches = _list(sec.get("architectures"), f"{FIELD}.architectures")
    for i, arch in enumerate(arches):
        if _str(arch, f"{FIELD}.architectures[{i}]") not in ARCHES:
            raise InvalidArgument(f'{FIELD}.architectures[{i}]: unknown architecture "{arch}"')
    flags = _list(sec.get("flags"), f"{FIELD}.flags")
    for i, flag in enumerate(flags):
        if _str(flag, f"{FIELD}.flags[{i}]") not in FLAGS:
            raise InvalidArgument(f'{FIELD}.flags[{i}]: unknown flag "{flag}"')
    listener = sec.get("listenerPath")
    if listener is not None and not _str(listener, f"{FIELD}.listenerPath"):
        raise InvalidArgument(f"{FIELD}.listenerPath: must not be empty")
    if sec.get("listenerMetadata") is not None:
        _str(sec["listenerMetadata"], f"{FIELD}.listenerMetadata")
        if not listener:
            raise InvalidArgument(f"{FIELD}.listenerMetadata: must not be set without listenerPath")
    rules: list[_Rule] = []
    notify = False
    for i, raw in enumerate(_list(sec.get("syscalls"), f"{FIELD}.syscalls")):
        rule, uses_notify = _syscall(raw, f"{FIELD}.syscalls[{i}]")
        rules.append(rule)
        notify = notify or uses_notify
    if notify and not listener:
        raise InvalidArgument(f"{FIELD}.listenerPath: is required when a rule uses SCMP_ACT_NOTIFY")
    return _Plan(default, list(arches), list(flags), rules, notify)


def validate(seccomp: Any) -> None:
    """Check a ``linux.seccomp`` object, raising InvalidArgument that names the offending field.

    Syscall names are not checked against any table: like runc, names libseccomp does not know on
    this architecture are skipped at install time, so one profile serves old and new kernels.
    """
    _parse(seccomp)


# -- libseccomp ---------------------------------------------------------------------------------


class _Libseccomp:
    """The loaded library with its prototypes declared, and the struct scmp_arg_cmp type."""

    def __init__(self) -> None:
        import ctypes as c

        try:
            self.lib: Any = c.CDLL("libseccomp.so.2", use_errno=True)
        except OSError as e:
            raise Unsupported(f"{FIELD}: libseccomp.so.2 cannot be loaded: {e}") from None

        class ArgCmp(c.Structure):
            _fields_ = [
                ("arg", c.c_uint),
                ("op", c.c_int),
                ("datum_a", c.c_uint64),
                ("datum_b", c.c_uint64),
            ]

        class Version(c.Structure):
            _fields_ = [("major", c.c_uint), ("minor", c.c_uint), ("micro", c.c_uint)]

        self.ArgCmp: Any = ArgCmp
        ctx = c.c_void_p
        protos: dict[str, tuple[Any, list[Any]]] = {
            "seccomp_init": (ctx, [c.c_uint32]),
            "seccomp_release": (None, [ctx]),
            "seccomp_attr_set": (c.c_int, [ctx, c.c_int, c.c_uint32]),
            "seccomp_arch_add": (c.c_int, [ctx, c.c_uint32]),
            "seccomp_arch_resolve_name": (c.c_uint32, [c.c_char_p]),
            "seccomp_syscall_resolve_name": (c.c_int, [c.c_char_p]),
            "seccomp_rule_add_array": (c.c_int, [ctx, c.c_uint32, c.c_int, c.c_uint, c.POINTER(ArgCmp)]),
            "seccomp_load": (c.c_int, [ctx]),
            "seccomp_export_bpf": (c.c_int, [ctx, c.c_int]),
            "seccomp_notify_fd": (c.c_int, [ctx]),
            "seccomp_api_get": (c.c_uint, []),
            "seccomp_version": (c.POINTER(Version), []),
        }
        for name, (restype, argtypes) in protos.items():
            fn = getattr(self.lib, name, None)
            if fn is not None:  # seccomp_notify_fd and seccomp_api_get are absent from old releases
                fn.restype, fn.argtypes = restype, argtypes
        v = self.lib.seccomp_version().contents
        self.version_info = (v.major, v.minor, v.micro)
        self.version = f"{v.major}.{v.minor}.{v.micro}"
        self.api = int(self.lib.seccomp_api_get()) if hasattr(self.lib, "seccomp_api_get") else 1

    def arch(self, oci_name: str) -> int:
        """The AUDIT_ARCH token for an OCI arch name, 0 when this libseccomp does not know it."""
        return int(self.lib.seccomp_arch_resolve_name(ARCHES[oci_name].encode()))

    def syscall(self, name: str) -> int:
        """The syscall number (negative pseudo-number if only other arches have it), or -1."""
        return int(self.lib.seccomp_syscall_resolve_name(name.encode()))


def _mapped(name: str) -> bytes | None:
    """The path of the file mapped into this process whose path contains ``name``."""
    needle = name.encode()
    with open("/proc/self/maps", "rb") as f:
        for line in f:
            path = line.rstrip(b"\n").split(maxsplit=5)[5:]
            if path and needle in path[0] and path[0].startswith(b"/"):
                return path[0]
    return None


_LIB: _Libseccomp | None = None


def load() -> None:
    """Load libseccomp now, while the host's filesystem is visible (before a pivot_root)."""
    _lib()


def _lib() -> _Libseccomp:
    global _LIB
    if _LIB is None:
        _LIB = _Libseccomp()
    return _LIB


def _flag_supported(lib: _Libseccomp, flag: str) -> bool:
    return lib.api >= FLAGS[flag][1]


def features() -> dict[str, Any]:
    """What ``berth-runtime features`` reports under ``linux.seccomp``, as ``runc features`` does."""
    try:
        lib = _lib()
    except Unsupported:
        return {"enabled": False}
    # Actions and operators are what berth recognises (the spec: irrelevant to the kernel); archs
    # are those this libseccomp can name; supportedFlags also depend on the kernel.
    return {
        "enabled": True,
        "actions": sorted(ACTIONS),
        "operators": sorted(OPERATORS),
        "archs": sorted(a for a in ARCHES if lib.arch(a)),
        "knownFlags": list(FLAGS),
        "supportedFlags": [f for f in FLAGS if _flag_supported(lib, f)],
    }


def _arg_array(lib: _Libseccomp, group: list[_Arg]) -> Any:
    if not group:
        return None
    array = (lib.ArgCmp * len(group))()
    for slot, (index, op, a, b) in zip(array, group, strict=True):
        slot.arg, slot.op, slot.datum_a, slot.datum_b = index, op, a, b
    return array


def _context(lib: _Libseccomp, plan: _Plan, optimize: int = _OPTIMIZE) -> Any:
    """A libseccomp context holding ``plan``, its program laid out at level ``optimize``."""
    fn = lib.lib
    ctx = fn.seccomp_init(plan.default)
    if not ctx:
        raise Unsupported(f"{FIELD}.defaultAction: not supported by this kernel and libseccomp {lib.version}")
    try:
        _build(lib, ctx, plan, optimize)
    except BaseException:
        fn.seccomp_release(ctx)
        raise
    return ctx


def _build(lib: _Libseccomp, ctx: int, plan: _Plan, optimize: int) -> None:
    fn = lib.lib
    fn.seccomp_attr_set(ctx, _ATTR_CTL_NNP, 0)
    fn.seccomp_attr_set(ctx, _ATTR_API_SYSRAWRC, 1)  # real errno from seccomp_load (>= 2.5)
    if optimize == 2 and lib.version_info < (2, 5, 4) and sum(len(r.names) for r in plan.rules) < _TREE_MIN_RULES:
        optimize = 1
    # Before 2.5 libseccomp has no layout levels and refuses the attribute: its one layout is used.
    fn.seccomp_attr_set(ctx, _ATTR_CTL_OPTIMIZE, optimize)
    for i, name in enumerate(plan.arches):
        token = lib.arch(name)
        # An arch this libseccomp cannot name is skipped: its syscalls then meet the filter's
        # bad-arch action (kill), so leaving it out can only deny, never allow.
        if token and fn.seccomp_arch_add(ctx, token) not in (0, -_EEXIST):
            raise Unsupported(f'{FIELD}.architectures[{i}]: libseccomp {lib.version} cannot add "{name}"')
    for i, flag in enumerate(plan.flags):
        if flag == "SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV" and not plan.notify:
            continue  # it only changes how notifications wait; the kernel refuses it without any
        attr = FLAGS[flag][0]
        if not _flag_supported(lib, flag) or fn.seccomp_attr_set(ctx, attr, 1) != 0:
            raise Unsupported(f"{FIELD}.flags[{i}]: {flag} is not supported by this kernel and "
                              f"libseccomp {lib.version}")
    for rule in plan.rules:
        if rule.action == plan.default:
            continue  # libseccomp refuses a rule that repeats the default action; it would be a no-op
        if rule.action == ACTIONS["SCMP_ACT_NOTIFY"] and lib.api < _API_NOTIFY:
            raise Unsupported(f"{rule.field}.action: SCMP_ACT_NOTIFY is not supported by this kernel "
                              f"and libseccomp {lib.version}")
        for name in rule.names:
            nr = lib.syscall(name)
            if nr == _NR_SCMP_ERROR:
                continue  # unknown to this libseccomp: skipped, as runc does
            for group in rule.groups:
                rc = fn.seccomp_rule_add_array(ctx, rule.action, nr, len(group), _arg_array(lib, group))
                if rc in (0, -_EACCES, -_EEXIST):
                    continue
                cls = Unsupported if rc == -_EOPNOTSUPP else InvalidArgument
                raise cls(f'{rule.field}: libseccomp refused the rule for "{name}": {os.strerror(-rc)}')


class Filter:
    """A filter ready to load: a compiled BPF program (from the cache, or exported once and cached),
    or a libseccomp context when loading needs what only ``seccomp_load`` does (filter flags, a
    notify listener). Preparing is the slow part (libseccomp lays out ~300 rules in ~10 ms), so the
    runtime prepares while the host's filesystem is visible and its parent makes the cgroup, and
    only loads right before exec."""

    def __init__(self, program: bytes | None, ctx: Any = None, notify: bool = False) -> None:
        self.program = program
        self.ctx = ctx
        self.notify = notify

    def load(self) -> int | None:
        """Load into the calling thread; the notify listener fd when a rule uses SCMP_ACT_NOTIFY."""
        if self.program is not None:
            from berth.kernel import syscalls as sc

            try:
                sc.seccomp_set_filter(self.program)
            except OSError as e:
                _load_error(-(e.errno or 0))
            return None
        fn = _lib().lib
        try:
            _load_error(fn.seccomp_load(self.ctx))
            if not self.notify:
                return None
            fd = int(fn.seccomp_notify_fd(self.ctx))
            if fd < 0:
                raise BerthError(f"{FIELD}: no notify listener fd after loading: {os.strerror(-fd)}")
            return fd
        finally:
            fn.seccomp_release(self.ctx)
            self.ctx = None


def _load_error(rc: int) -> None:
    if rc == -_EACCES:
        raise PermissionDenied(f"{FIELD}: loading a filter needs no_new_privs or CAP_SYS_ADMIN")
    if rc in (-22, -_EOPNOTSUPP):  # EINVAL: a flag or action this kernel does not have
        raise Unsupported(f"{FIELD}: the kernel refused the filter: {os.strerror(-rc)}")
    if rc != 0:
        raise BerthError(f"{FIELD}: loading the filter failed: {os.strerror(-rc)}")


def prepare(seccomp: Any, cache_dir: str | None = None) -> Filter:
    """Validate and compile ``seccomp``. With ``cache_dir``, a filter with neither flags nor notify
    rules is compiled once per (profile, generation options, libseccomp file, kernel release,
    machine) and its BPF program kept there, so the next container with the same profile skips
    validation, loading libseccomp, its rule layout and code generation: a hit costs a file read
    and two stats. Only a validated profile is ever stored, so a hit needs no validation."""
    entry: tuple[str, bytes] | None = None  # path, profile
    if cache_dir:
        profile = repr(seccomp).encode("utf-8", "backslashreplace")
        entry = os.path.join(cache_dir, _entry_name(profile)), profile
        program = _cached(*entry)
        if program is not None:
            return Filter(program)
    plan = _parse(seccomp)
    lib = _lib()
    fn = lib.lib
    ctx = _context(lib, plan)
    try:
        if entry is None or plan.flags or plan.notify:
            return Filter(None, ctx, plan.notify)
        program = _export(fn, ctx)
    except BaseException:
        fn.seccomp_release(ctx)
        raise
    fn.seccomp_release(ctx)
    _store(*entry, program)
    return Filter(program)


# -- the compiled-filter cache ------------------------------------------------------------------
#
# An entry is <libseccomp path> NUL <identity> NUL <BPF program>, named by a digest of the profile
# and by this module's file (two berth installations sharing a runtime root keep an entry each
# instead of remaking each other's). The identity holds what the program depends on (this module's
# file again: a new berth never loads what an older one made) and is compared in full on every hit, so
# the name need not be collision-proof: Python's hash() of an int (unlike of str or bytes) is the
# same in every process, costs microseconds and loads no hash module (_sha256 alone is ~0.2 ms in
# a freshly forked child). The library is identified by the stat of the file the loader mapped on
# the miss that made the entry, with the loader's cache and LD_LIBRARY_PATH that chose that file.

_ENTRY_MASK = (1 << 64) - 1
_LD_CACHE = "/etc/ld.so.cache"


def _entry_name(profile: bytes) -> str:
    return f"{hash(int.from_bytes(profile, 'little')) & _ENTRY_MASK:016x}-{len(profile)}-{_CODE_ID}.bpf"


def _code_id() -> str:
    """This module's file, by size and modification time, as it was when the running code was loaded."""
    try:
        own = os.stat(__file__)
    except OSError:
        return "-"
    return f"{own.st_size:x}.{own.st_mtime_ns:x}"


_CODE_ID = _code_id()


def _identity(lib_path: bytes, profile: bytes) -> bytes | None:
    """The entry's head for a program made by libseccomp at ``lib_path``; None if it is gone."""
    try:
        lib = os.stat(lib_path)
    except OSError:
        return None
    try:
        ld = os.stat(_LD_CACHE)
        ld_cache = f"{ld.st_ino}:{ld.st_mtime_ns}"
    except OSError:
        ld_cache = "-"
    uname = os.uname()
    head = "\n".join((_GENERATION, _CODE_ID, uname.release, uname.machine, os.environ.get("LD_LIBRARY_PATH", ""),
                      ld_cache, f"{lib.st_dev}:{lib.st_ino}:{lib.st_size}:{lib.st_mtime_ns}", ""))
    return lib_path + b"\0" + head.encode() + profile + b"\0"


def _cached(path: str, profile: bytes) -> bytes | None:
    """The cached program for ``profile``, or None when absent, stale or damaged."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return None
    identity = _identity(data.partition(b"\0")[0], profile)
    if identity is None or not data.startswith(identity):
        return None
    program = data[len(identity):]
    return program if program and len(program) % 8 == 0 else None


def _export(fn: Any, ctx: Any) -> bytes:
    """The BPF program libseccomp generates for ``ctx`` (what seccomp_load would load)."""
    fd = os.memfd_create("seccomp-bpf", os.MFD_CLOEXEC)
    try:
        rc = fn.seccomp_export_bpf(ctx, fd)
        if rc < 0:
            raise BerthError(f"{FIELD}: exporting the filter failed: {os.strerror(-rc)}")
        size = os.lseek(fd, 0, os.SEEK_END)
        return os.pread(fd, size, 0)
    finally:
        os.close(fd)


def _store(path: str, profile: bytes, program: bytes) -> None:
    """Write the cache entry atomically; a cache that cannot be written only costs speed."""
    from berth.fsutil import replace_file

    lib_path = _mapped("/libseccomp.so")
    identity = _identity(lib_path, profile) if lib_path else None
    if identity is None:
        return
    try:
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        replace_file(path, identity + program, 0o600)
    except OSError:
        pass


def install(seccomp: Any, cache_dir: str | None = None) -> int | None:
    """Validate, build and load the filter into the calling thread (all threads with TSYNC).

    Returns the seccomp notify listener fd when a rule uses SCMP_ACT_NOTIFY (the caller hands it
    to ``listenerPath``), else None. Raises PermissionDenied when the process has neither
    no_new_privs nor CAP_SYS_ADMIN.
    """
    return prepare(seccomp, cache_dir).load()
