"""Process capabilities: names, the bounding and ambient sets, and cap_set_proc through libcap.

Why libcap: cap_set_proc hides the capset(2) header versions and 64-bit split; the prctl-based
bounding and ambient calls go through libcap too so there is one library to load. Loading is lazy
(first effectful call) so importing this module is cheap for ``berth-runtime`` start-up.

Capabilities the running kernel does not have (above /proc/sys/kernel/cap_last_cap) are dropped
by ``parse()``, as runc does, so one config works on older kernels; names that are not
capabilities at all are an error. The order a runtime needs (bounding, keepcaps, setuid, apply,
ambient) is the caller's policy, not this module's.
"""

from __future__ import annotations

from berth.errors import BerthError, InvalidArgument, PermissionDenied, Unsupported

TYPE_CHECKING = False  # typing costs ~9 ms to import; annotations here are never evaluated
if TYPE_CHECKING:
    from typing import Any

# capability.h numbering; the index is the capability number.
_NAMES = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL",
    "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE", "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_IPC_LOCK", "CAP_IPC_OWNER",
    "CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_CHROOT", "CAP_SYS_PTRACE", "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE", "CAP_SYS_RESOURCE", "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE", "CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP", "CAP_MAC_OVERRIDE", "CAP_MAC_ADMIN", "CAP_SYSLOG", "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ", "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE",
)  # fmt: skip
CAPS: dict[str, int] = {name: nr for nr, name in enumerate(_NAMES)}

_STATUS_KEYS = {
    "CapEff": "effective",
    "CapPrm": "permitted",
    "CapInh": "inheritable",
    "CapBnd": "bounding",
    "CapAmb": "ambient",
}
_CAP_EFFECTIVE, _CAP_PERMITTED, _CAP_INHERITABLE = 0, 1, 2  # cap_flag_t
_CAP_SET = 1  # cap_flag_value_t
_PR_SET_KEEPCAPS = 8
_EPERM = 1

_last_cap: int | None = None
_LIB: Any = None
_LIBC: Any = None


def names() -> list[str]:
    """Every capability name berth recognises, for ``features``."""
    return list(_NAMES)


def last_cap() -> int:
    """The highest capability number the running kernel knows."""
    global _last_cap
    if _last_cap is None:
        try:
            with open("/proc/sys/kernel/cap_last_cap") as f:
                _last_cap = int(f.read())
        except (OSError, ValueError):
            _last_cap = len(_NAMES) - 1
    return _last_cap


def parse(names: Any, field: str) -> set[int]:
    """Map capability names to numbers, leaving out those the running kernel does not have."""
    if names is None:
        return set()
    if not isinstance(names, list):
        raise InvalidArgument(f"{field}: must be an array, not {type(names).__name__}")
    caps: set[int] = set()
    for i, name in enumerate(names):
        if not isinstance(name, str):
            raise InvalidArgument(f"{field}[{i}]: must be a string, not {type(name).__name__}")
        nr = CAPS.get(name)
        if nr is None:
            raise InvalidArgument(f'{field}: unknown capability "{name}"')
        if nr <= last_cap():
            caps.add(nr)
    return caps


def _libcap() -> Any:
    global _LIB
    if _LIB is None:
        import ctypes as c

        try:
            lib = c.CDLL("libcap.so.2", use_errno=True)
        except OSError as e:
            raise Unsupported(f"capabilities: libcap.so.2 cannot be loaded: {e}") from None
        lib.cap_init.restype, lib.cap_init.argtypes = c.c_void_p, []
        lib.cap_free.restype, lib.cap_free.argtypes = c.c_int, [c.c_void_p]
        lib.cap_set_flag.restype = c.c_int
        lib.cap_set_flag.argtypes = [c.c_void_p, c.c_int, c.c_int, c.POINTER(c.c_int), c.c_int]
        lib.cap_set_proc.restype, lib.cap_set_proc.argtypes = c.c_int, [c.c_void_p]
        lib.cap_drop_bound.restype, lib.cap_drop_bound.argtypes = c.c_int, [c.c_int]
        lib.cap_set_ambient.restype, lib.cap_set_ambient.argtypes = c.c_int, [c.c_int, c.c_int]
        lib.cap_reset_ambient.restype, lib.cap_reset_ambient.argtypes = c.c_int, []
        _LIB = lib
    return _LIB


def load() -> None:
    """Load libcap now, while the host's filesystem is visible (before a pivot_root)."""
    _libcap()
    set_keepcaps(False)


def _fail(what: str) -> BerthError:
    import ctypes
    import os

    err = ctypes.get_errno()
    msg = f"capabilities: {what}: {os.strerror(err)}"
    return PermissionDenied(msg) if err == _EPERM else BerthError(msg)


def drop_bounding(keep: set[int]) -> None:
    """Drop every capability up to the kernel's last one from the bounding set, except ``keep``.

    Needs CAP_SETPCAP; call it before changing uid, while the process still has it.
    """
    lib = _libcap()
    for cap in range(last_cap() + 1):
        if cap not in keep and lib.cap_drop_bound(cap) != 0:
            raise _fail(f"dropping {_NAMES[cap]} from the bounding set")


def set_keepcaps(on: bool) -> None:
    """PR_SET_KEEPCAPS: keep the permitted set across a setuid() away from uid 0."""
    global _LIBC
    if _LIBC is None:
        import ctypes

        _LIBC = ctypes.CDLL(None, use_errno=True)
    if _LIBC.prctl(_PR_SET_KEEPCAPS, int(on), 0, 0, 0) != 0:
        raise _fail("PR_SET_KEEPCAPS")


def apply(effective: set[int], permitted: set[int], inheritable: set[int]) -> None:
    """Replace the thread's effective, permitted and inheritable sets (cap_set_proc)."""
    import ctypes

    lib = _libcap()
    state = lib.cap_init()
    if not state:
        raise _fail("cap_init")
    try:
        for flag, caps in ((_CAP_EFFECTIVE, effective), (_CAP_PERMITTED, permitted),
                           (_CAP_INHERITABLE, inheritable)):
            values = sorted(c for c in caps if c <= last_cap())
            if values:
                array = (ctypes.c_int * len(values))(*values)
                if lib.cap_set_flag(state, flag, len(values), array, _CAP_SET) != 0:
                    raise _fail("cap_set_flag")
        if lib.cap_set_proc(state) != 0:
            raise _fail("cap_set_proc")
    finally:
        lib.cap_free(state)


def set_ambient(caps: set[int]) -> set[int]:
    """Clear the ambient set, then raise each of ``caps``.

    The kernel refuses (EPERM) a capability that is not both permitted and inheritable; those are
    returned rather than raised so the runtime can warn, as the spec asks, and go on.
    """
    lib = _libcap()
    if lib.cap_reset_ambient() != 0:
        raise _fail("clearing the ambient set")
    refused: set[int] = set()
    for cap in sorted(caps):
        if cap > last_cap():
            continue
        if lib.cap_set_ambient(cap, _CAP_SET) != 0:
            import ctypes

            if ctypes.get_errno() != _EPERM:
                raise _fail(f"raising {_NAMES[cap]} in the ambient set")
            refused.add(cap)
    return refused


def current(pid: int | str = "self") -> dict[str, set[int]]:
    """The capability sets of a process, keyed by their OCI names, read from /proc/PID/status."""
    sets: dict[str, set[int]] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in _STATUS_KEYS:
                mask = int(value.strip(), 16)
                sets[_STATUS_KEYS[key]] = {n for n in range(mask.bit_length()) if mask >> n & 1}
    return sets
