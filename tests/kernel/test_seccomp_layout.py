"""The filter layout berth loads (libseccomp's binary tree, SCMP_FLTATR_CTL_OPTIMIZE=2) decides
exactly as libseccomp's default layout does.

A small classic-BPF interpreter runs both programs on every syscall number 0..500 of every
architecture the profile lists (x86_64, x32 through the x32 syscall bit, x86), on numbers past the
tables and on an architecture the profile does not list; every syscall whose decision reads an
argument is run again on argument values taken from the profile's rules and around them. Both
programs must return the same action for every input.
"""

from __future__ import annotations

import os
import struct
from typing import Any

import pytest

from berth.kernel import seccomp

AUDIT_ARCH_X86_64 = 0xC000003E
AUDIT_ARCH_I386 = 0x40000003
AUDIT_ARCH_AARCH64 = 0xC00000B7  # listed by no profile here: the bad-arch action
X32_SYSCALL_BIT = 0x40000000
MASK64 = (1 << 64) - 1
ARGS_OFFSET = 16  # struct seccomp_data: int nr, u32 arch, u64 instruction_pointer, u64 args[6]


class Run:
    """One interpretation: the 32-bit return value and whether an argument was read."""

    def __init__(self, action: int, read_args: bool) -> None:
        self.action, self.read_args = action, read_args


def interpret(program: bytes, data: bytes) -> Run:
    """Run a classic-BPF seccomp program (struct sock_filter: u16 code, u8 jt, u8 jf, u32 k)."""
    insns = list(struct.iter_unpack("<HBBI", program))
    a = x = 0
    mem = [0] * 16
    read_args = False
    pc = 0
    for _ in range(len(insns) + 1):  # classic BPF only jumps forward
        code, jt, jf, k = insns[pc]
        pc += 1
        cls = code & 0x07
        if cls == 0x00:  # LD
            mode = code & 0xE0
            if mode == 0x20:  # ABS (only 32-bit words are valid for seccomp)
                assert code & 0x18 == 0x00 and k % 4 == 0 and k + 4 <= len(data), hex(code)
                a = int.from_bytes(data[k:k + 4], "little")
                read_args = read_args or k >= ARGS_OFFSET
            elif mode == 0x00:
                a = k
            elif mode == 0x60:
                a = mem[k]
            elif mode == 0x80:
                a = len(data)
            else:
                raise AssertionError(f"unexpected load {code:#x}")
        elif cls == 0x01:  # LDX
            mode = code & 0xE0
            assert mode in (0x00, 0x60, 0x80), f"unexpected load {code:#x}"
            x = k if mode == 0x00 else mem[k] if mode == 0x60 else len(data)
        elif cls == 0x02:  # ST
            mem[k] = a
        elif cls == 0x03:  # STX
            mem[k] = x
        elif cls == 0x04:  # ALU
            a = alu(code & 0xF0, a, x if code & 0x08 else k)
        elif cls == 0x05:  # JMP
            op = code & 0xF0
            if op == 0x00:
                pc += k
                continue
            operand = x if code & 0x08 else k
            taken = {0x10: a == operand, 0x20: a > operand, 0x30: a >= operand, 0x40: a & operand != 0}[op]
            pc += jt if taken else jf
        elif cls == 0x06:  # RET
            return Run({0x00: k, 0x08: x, 0x10: a}[code & 0x18], read_args)
        else:  # MISC
            if code & 0xF8 == 0x00:
                x = a
            else:
                a = x
    raise AssertionError("the program ran past its end")


def alu(op: int, a: int, b: int) -> int:
    results = {0x00: a + b, 0x10: a - b, 0x20: a * b, 0x40: a | b, 0x50: a & b, 0x60: a << b if b < 32 else 0,
               0x70: a >> b if b < 32 else 0, 0x80: -a, 0xA0: a ^ b}
    if op in (0x30, 0x90):
        assert b != 0, "division by zero"
        results[op] = a // b if op == 0x30 else a % b
    return results[op] & 0xFFFFFFFF


def seccomp_data(nr: int, arch: int, args: tuple[int, ...] = (0,) * 6) -> bytes:
    return struct.pack("<IIQ6Q", nr & 0xFFFFFFFF, arch, 0x7F0000001000, *args)


def programs(profile: dict[str, Any]) -> tuple[bytes, bytes]:
    """libseccomp's default layout (level 1) and the one berth uses."""
    lib = seccomp._lib()
    plan = seccomp._parse(profile)
    out = []
    for level in (1, seccomp._OPTIMIZE):
        ctx = seccomp._context(lib, plan, level)
        try:
            out.append(seccomp._export(lib.lib, ctx))
        finally:
            lib.lib.seccomp_release(ctx)
    return out[0], out[1]


def sample_values(profile: dict[str, Any]) -> list[int]:
    """Argument values that sit on and beside every comparison in the profile."""
    values = {0, 1, 2, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 1 << 32, (1 << 32) + 1, 1 << 63, MASK64}
    for rule in profile.get("syscalls") or []:
        for arg in rule.get("args") or []:
            for v in (arg["value"], arg.get("valueTwo") or 0):
                values.update({v, v - 1, v + 1, v ^ (1 << 32), v | (1 << 40), ~v})
                values.update(1 << bit for bit in range(64) if v >> bit & 1)
    return sorted(v & MASK64 for v in values)


def assert_same_decisions(profile: dict[str, Any]) -> int:
    """Compare both programs on every input; returns how many syscalls read arguments."""
    old, new = programs(profile)
    assert old != new, "the layouts are the same program: nothing is compared"
    values = sample_values(profile)
    numbers = [*range(501), *(X32_SYSCALL_BIT | n for n in range(501)), 1000, 0x3FFFFFFF,
               X32_SYSCALL_BIT | 1000, 0x7FFFFFFF, 0xFFFFFFFF]
    with_args = 0
    for arch in (AUDIT_ARCH_X86_64, AUDIT_ARCH_I386, AUDIT_ARCH_AARCH64):
        for nr in numbers:
            data = seccomp_data(nr, arch)
            want, got = interpret(old, data), interpret(new, data)
            assert got.action == want.action, f"arch {arch:#x} nr {nr:#x}: {got.action:#x} != {want.action:#x}"
            if not (want.read_args or got.read_args):
                continue
            with_args += 1
            for index in range(6):
                for v in values:
                    args = tuple(v if i == index else 0 for i in range(6))
                    data = seccomp_data(nr, arch, args)
                    want, got = interpret(old, data), interpret(new, data)
                    assert got.action == want.action, f"arch {arch:#x} nr {nr:#x} args {args}"
            for v in values:
                data = seccomp_data(nr, arch, (v,) * 6)
                assert interpret(old, data).action == interpret(new, data).action, f"nr {nr:#x} all args {v:#x}"
    return with_args


def docker_profile(caps: set[str]) -> dict[str, Any]:
    from berth.engine import seccomp_profile

    if not os.path.exists(seccomp_profile.DEFAULT_PROFILE):
        pytest.skip(f"{seccomp_profile.DEFAULT_PROFILE} is missing (Debian's containers-common)")
    return seccomp_profile.to_oci(seccomp_profile.load(), caps)


@pytest.mark.unit
def test_interpreter_reads_the_docker_profile_as_the_kernel_would() -> None:
    from berth.engine.spec import DEFAULT_CAPS

    profile = docker_profile(set(DEFAULT_CAPS))
    assert profile["architectures"] == ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]
    _, new = programs(profile)
    allow = 0x7FFF0000
    denied = 0x00050000 | profile["defaultErrnoRet"]
    cases = {
        (0, AUDIT_ARCH_X86_64): allow,  # read
        (X32_SYSCALL_BIT | 0, AUDIT_ARCH_X86_64): allow,  # x32 read
        (3, AUDIT_ARCH_I386): allow,  # i386 read
        (335, AUDIT_ARCH_X86_64): denied,  # no syscall has this number: the default action
        (0, AUDIT_ARCH_AARCH64): 0x00000000,  # an arch the profile does not list: killed
    }
    for (nr, arch), action in cases.items():
        assert interpret(new, seccomp_data(nr, arch)).action == action, (nr, arch)
    # personality(2) is allowed for a few personas only: its decision reads the argument.
    assert interpret(new, seccomp_data(135, AUDIT_ARCH_X86_64, (8, 0, 0, 0, 0, 0))).action == allow
    assert interpret(new, seccomp_data(135, AUDIT_ARCH_X86_64, (0x0400000, 0, 0, 0, 0, 0))).action == denied


@pytest.mark.unit
@pytest.mark.parametrize("privileged", [False, True], ids=["default-caps", "all-caps"])
def test_docker_profile_layouts_decide_alike(privileged: bool) -> None:
    from berth.engine.spec import DEFAULT_CAPS
    from berth.kernel.caps import names

    profile = docker_profile(set(names() if privileged else DEFAULT_CAPS))
    assert assert_same_decisions(profile) >= 3  # at least personality(2) on each arch


def arg(index: int, op: str, value: int, two: int | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"index": index, "value": value, "op": f"SCMP_CMP_{op}"}
    if two is not None:
        out["valueTwo"] = two
    return out


ARCHES = ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]


@pytest.mark.unit
def test_every_operator_and_action_layouts_decide_alike() -> None:
    big = 0x1_0000_0005
    profile = {
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ARCHES,
        "syscalls": [
            {"names": ["mkdir", "mkdirat", "rmdir"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13},
            {"names": ["kill"], "action": "SCMP_ACT_KILL_PROCESS"},
            {"names": ["tkill"], "action": "SCMP_ACT_TRAP"},
            {"names": ["getppid"], "action": "SCMP_ACT_LOG"},
            {"names": ["ptrace"], "action": "SCMP_ACT_TRACE", "errnoRet": 3},
            {"names": ["socket"], "action": "SCMP_ACT_ERRNO", "args": [arg(0, "EQ", 40)]},
            {"names": ["dup3"], "action": "SCMP_ACT_ERRNO", "args": [arg(2, "NE", 0)]},
            {"names": ["lseek"], "action": "SCMP_ACT_ERRNO", "args": [arg(1, "LT", big)]},
            {"names": ["pread64"], "action": "SCMP_ACT_ERRNO", "args": [arg(3, "LE", big)]},
            {"names": ["pwrite64"], "action": "SCMP_ACT_ERRNO", "args": [arg(3, "GT", big)]},
            {"names": ["fcntl"], "action": "SCMP_ACT_ERRNO", "args": [arg(1, "GE", 1030)]},
            {"names": ["clone"], "action": "SCMP_ACT_ERRNO",
             "args": [arg(0, "MASKED_EQ", 0x7E020000, 0x10000000)]},
            {"names": ["prctl"], "action": "SCMP_ACT_ERRNO", "errnoRet": 22,
             "args": [arg(0, "EQ", 22), arg(1, "NE", 2)]},
            {"names": ["personality"], "action": "SCMP_ACT_ERRNO",
             "args": [arg(0, "EQ", 8), arg(0, "EQ", 0x20008)]},  # one index twice: alternatives
        ],
    }
    # 11 argument-filtered syscalls, on most of the three arches (i386 multiplexes socket).
    assert assert_same_decisions(profile) > 2 * 11


@pytest.mark.unit
def test_allow_list_with_docker_style_argument_rules_layouts_decide_alike() -> None:
    """Docker's own profile (moby) allows clone only without namespace flags when the container
    lacks CAP_SYS_ADMIN, socket for every family but AF_VSOCK, and a few personalities."""
    plain = ["read", "write", "openat", "close", "fstat", "mmap", "exit_group", "execve", "brk", "futex",
             "rt_sigaction", "rt_sigprocmask", "getpid", "wait4", "uname", "arch_prctl", "set_tid_address"]
    profile = {
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": 38,
        "architectures": ARCHES,
        "syscalls": [
            {"names": plain, "action": "SCMP_ACT_ALLOW"},
            {"names": ["clone"], "action": "SCMP_ACT_ALLOW", "args": [arg(0, "MASKED_EQ", 0x7E020000, 0)]},
            {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38},
            {"names": ["socket"], "action": "SCMP_ACT_ALLOW", "args": [arg(0, "NE", 40)]},
            *({"names": ["personality"], "action": "SCMP_ACT_ALLOW", "args": [arg(0, "EQ", p)]}
              for p in (0, 8, 0x20000, 0x20008, 0xFFFFFFFF)),
        ],
    }
    assert assert_same_decisions(profile) >= 6


@pytest.mark.root
def test_the_cached_program_is_the_tree_layout(tmp_path: Any) -> None:
    profile = {"defaultAction": "SCMP_ACT_ERRNO", "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86"],
               "syscalls": [{"names": ["read", "write", "exit_group", "mkdir"], "action": "SCMP_ACT_ALLOW"}]}
    _, new = programs(profile)
    assert seccomp.prepare(profile, str(tmp_path)).program == new
    assert seccomp.prepare(profile, str(tmp_path)).program == new  # and from the cache


def test_a_libseccomp_that_mislays_rule_less_trees_gets_the_default_layout(monkeypatch: pytest.MonkeyPatch) -> None:
    """Before 2.5.4 a tree with no rules loses the default action (libseccomp#370): berth then keeps
    the tree for filters of 8 rules or more only, as runc does."""
    few = {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["kexec_load"], "action": "SCMP_ACT_ERRNO"}]}
    many = {"defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["kexec_load", "reboot", "swapon", "swapoff", "acct", "mount", "umount2",
                                    "pivot_root"], "action": "SCMP_ACT_ERRNO"}]}
    default, tree = programs(few)
    assert tree != default  # this libseccomp (>= 2.5.4) lays even one rule out as a tree
    monkeypatch.setattr(seccomp._lib(), "version_info", (2, 5, 3))
    default, tree = programs(few)
    assert tree == default  # level 2 was asked for, level 1 was used
    default, tree = programs(many)
    assert tree != default
