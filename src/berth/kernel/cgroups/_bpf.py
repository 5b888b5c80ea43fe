"""Device access control on cgroup v2: an eBPF ``BPF_PROG_TYPE_CGROUP_DEVICE`` program.

cgroup v2 has no devices controller; the kernel runs the programs attached to a cgroup (and its
ancestors) on every device open/mknod. The OCI device list keeps v1's meaning, so it is first
replayed the way the v1 devices controller does (:func:`emulate`: a default — allow or deny —
plus exceptions), then compiled to a few instructions per exception (:func:`compile_program`),
loaded and attached with ``BPF_F_ALLOW_MULTI``, and the programs attached before it are detached,
so an update replaces the filter without a window in which no filter runs.

Imported only when a v2 cgroup gets ``devices`` (it needs ctypes for bpf(2)).
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct

from berth.errors import InvalidArgument, Unsupported

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

# bpf(2) commands, program and attach types, flags (linux/bpf.h)
BPF_PROG_LOAD = 5
BPF_PROG_ATTACH = 8
BPF_PROG_DETACH = 9
BPF_PROG_GET_FD_BY_ID = 13
BPF_PROG_QUERY = 16
BPF_PROG_TYPE_CGROUP_DEVICE = 15
BPF_CGROUP_DEVICE = 6
BPF_F_ALLOW_MULTI = 2

# struct bpf_cgroup_dev_ctx: u32 access_type (access << 16 | type), u32 major, u32 minor
DEV_BLOCK, DEV_CHAR = 1, 2
ACC_MKNOD, ACC_READ, ACC_WRITE = 1, 2, 4
_TYPE_BITS = {"a": DEV_BLOCK | DEV_CHAR, "b": DEV_BLOCK, "c": DEV_CHAR}
_ACCESS_BITS = {"m": ACC_MKNOD, "r": ACC_READ, "w": ACC_WRITE}

_SYS_BPF = {"x86_64": 321, "aarch64": 280, "ppc64le": 361, "s390x": 351, "riscv64": 280, "i686": 357}

# instruction opcodes
_LDX_W = 0x61  # dst = *(u32 *)(src + off)
_MOV64_X = 0xBF  # dst = src
_MOV64_K = 0xB7  # dst = imm
_AND64_K = 0x57  # dst &= imm
_RSH64_K = 0x77  # dst >>= imm
_JNE_K = 0x55  # if dst != imm: pc += off
_JEQ_K = 0x15  # if dst == imm: pc += off
_EXIT = 0x95

DeviceException = tuple[int, "int | None", "int | None", int]  # type bits, major, minor, access bits


def _bits(access: str) -> int:
    value = 0
    for ch in access:
        value |= _ACCESS_BITS[ch]
    return value


def emulate(rules: list[dict[str, Any]], default_allow: bool = True) -> tuple[bool, list[DeviceException]]:
    """Replay validated device rules as the v1 devices controller would, starting from
    ``default_allow`` (a new cgroup allows everything its parent does).

    ``a`` rules reset the default and drop every exception; a specific rule that agrees with the
    default removes its access bits from the identical exception, one that disagrees adds them.
    """
    exceptions: list[list[Any]] = []
    for rule in rules:
        if rule["type"] == "a":
            default_allow = bool(rule["allow"])
            exceptions = []
            continue
        key = (_TYPE_BITS[rule["type"]], rule["major"], rule["minor"])
        access = _bits(rule["access"])
        same = next((e for e in exceptions if (e[0], e[1], e[2]) == key), None)
        if bool(rule["allow"]) == default_allow:
            if same is not None:
                same[3] &= ~access
                if not same[3]:
                    exceptions.remove(same)
        elif same is not None:
            same[3] |= access
        else:
            exceptions.append([*key, access])
    return default_allow, [(e[0], e[1], e[2], e[3]) for e in exceptions]


def _insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    return struct.pack("<BBhi", code, (src << 4) | dst, off, imm)


def compile_program(default_allow: bool, exceptions: list[DeviceException]) -> bytes:
    """The program's instructions: with a default of allow, any exception sharing an access bit
    with the request denies; with a default of deny, an exception covering the whole request allows.
    """
    prog = [
        _insn(_LDX_W, dst=2, src=1, off=0),  # r2 = access_type
        _insn(_MOV64_X, dst=3, src=2),
        _insn(_AND64_K, dst=3, imm=0xFFFF),  # r3 = device type
        _insn(_RSH64_K, dst=2, imm=16),  # r2 = requested access
        _insn(_LDX_W, dst=4, src=1, off=4),  # r4 = major
        _insn(_LDX_W, dst=5, src=1, off=8),  # r5 = minor
    ]
    for type_bits, major, minor, access in exceptions:
        if (major is not None and major > 0x7FFFFFFF) or (minor is not None and minor > 0x7FFFFFFF):
            continue  # no device has such a number; a 32-bit immediate cannot hold it
        tests: list[tuple[int, int, int]] = []  # (opcode, register, immediate) jumping to "next"
        if type_bits != DEV_BLOCK | DEV_CHAR:
            tests.append((_JNE_K, 3, type_bits))
        if major is not None:
            tests.append((_JNE_K, 4, major))
        if minor is not None:
            tests.append((_JNE_K, 5, minor))
        if default_allow:
            mask, verdict_jump, verdict = access, _JEQ_K, 0  # no common bit → not this one
        else:
            mask, verdict_jump, verdict = 7 & ~access, _JNE_K, 1  # a bit outside → not this one
        tail = [
            _insn(_MOV64_X, dst=6, src=2),
            _insn(_AND64_K, dst=6, imm=mask),
            None,  # the verdict test, patched below
            _insn(_MOV64_K, dst=0, imm=verdict),
            _insn(_EXIT),
        ]
        block_len = len(tests) + len(tail)
        block: list[bytes] = []
        for i, (code, reg, imm) in enumerate(tests):
            block.append(_insn(code, dst=reg, imm=imm, off=block_len - i - 1))
        position = len(tests) + 2
        tail[2] = _insn(verdict_jump, dst=6, imm=0, off=block_len - position - 1)
        block.extend(t for t in tail if t is not None)
        prog.extend(block)
    prog.append(_insn(_MOV64_K, dst=0, imm=1 if default_allow else 0))
    prog.append(_insn(_EXIT))
    return b"".join(prog)


_libc: Any = None


def _bpf(cmd: int, attr: ctypes.Array[ctypes.c_char]) -> int:
    global _libc
    number = _SYS_BPF.get(os.uname().machine)
    if number is None:
        raise Unsupported(f"bpf(2) number unknown for {os.uname().machine}")
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    result = _libc.syscall(ctypes.c_long(number), ctypes.c_int(cmd), attr, ctypes.c_uint(len(attr)))
    if result < 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))
    return int(result)


def _attached(cgroup_fd: int) -> list[int]:
    ids = (ctypes.c_uint32 * 64)()
    attr = ctypes.create_string_buffer(64)
    struct.pack_into("<IIII", attr, 0, cgroup_fd, BPF_CGROUP_DEVICE, 0, 0)
    struct.pack_into("<QI", attr, 16, ctypes.addressof(ids), 64)
    _bpf(BPF_PROG_QUERY, attr)
    count = struct.unpack_from("<I", attr, 24)[0]
    return list(ids[: min(count, 64)])


def _load(code: bytes) -> int:
    insns = ctypes.create_string_buffer(code, len(code))
    license_ = ctypes.create_string_buffer(b"Apache")
    log = ctypes.create_string_buffer(65536)
    attr = ctypes.create_string_buffer(128)
    struct.pack_into(
        "<IIQQIIQ",
        attr,
        0,
        BPF_PROG_TYPE_CGROUP_DEVICE,
        len(code) // 8,
        ctypes.addressof(insns),
        ctypes.addressof(license_),
        1,
        len(log),
        ctypes.addressof(log),
    )
    try:
        return _bpf(BPF_PROG_LOAD, attr)
    except OSError as exc:
        detail = log.value.decode(errors="replace").strip().splitlines()
        raise Unsupported(
            f"linux.resources.devices: the kernel refused the device filter: {exc.strerror}"
            + (f" ({detail[-1]})" if detail else "")
        ) from None


def _attach(cgroup_fd: int, prog_fd: int, flags: int) -> None:
    attr = ctypes.create_string_buffer(32)
    struct.pack_into("<IIII", attr, 0, cgroup_fd, prog_fd, BPF_CGROUP_DEVICE, flags)
    _bpf(BPF_PROG_ATTACH, attr)


def _detach(cgroup_fd: int, prog_id: int) -> None:
    attr = ctypes.create_string_buffer(16)
    struct.pack_into("<I", attr, 0, prog_id)
    try:
        prog_fd = _bpf(BPF_PROG_GET_FD_BY_ID, attr)
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            return
        raise
    try:
        attr = ctypes.create_string_buffer(32)
        struct.pack_into("<III", attr, 0, cgroup_fd, prog_fd, BPF_CGROUP_DEVICE)
        _bpf(BPF_PROG_DETACH, attr)
    finally:
        os.close(prog_fd)


def attached_programs(directory: str) -> list[int]:
    """Ids of the device programs attached directly to the cgroup at ``directory``."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        return _attached(fd)
    finally:
        os.close(fd)


def attach_device_filter(directory: str, rules: list[dict[str, Any]]) -> None:
    """Compile validated OCI device rules and make them the cgroup's only device program."""
    default_allow, exceptions = emulate(rules)
    code = compile_program(default_allow, exceptions)
    if len(code) // 8 > 4096:
        raise InvalidArgument("linux.resources.devices: too many rules for one device filter")
    try:
        cgroup_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        from berth.errors import NotFound

        raise NotFound(f"cgroup {directory} does not exist") from None
    try:
        try:
            old = _attached(cgroup_fd)
        except OSError as exc:
            raise Unsupported(f"linux.resources.devices: cannot query device programs: {exc.strerror}") from None
        prog_fd = _load(code)
        try:
            try:
                _attach(cgroup_fd, prog_fd, BPF_F_ALLOW_MULTI)
            except OSError as exc:
                if exc.errno not in (errno.EPERM, errno.EINVAL) or not old:
                    raise Unsupported(
                        f"linux.resources.devices: cannot attach the device filter: {exc.strerror}"
                    ) from None
                # something attached a program without ALLOW_MULTI: replace it the old way
                for prog_id in old:
                    _detach(cgroup_fd, prog_id)
                old = []
                _attach(cgroup_fd, prog_fd, 0)
        finally:
            os.close(prog_fd)
        for prog_id in old:
            _detach(cgroup_fd, prog_id)
    finally:
        os.close(cgroup_fd)
