"""Typed wrappers over the Linux syscalls Python 3.11's ``os`` module lacks.

libc is loaded on first use and ``ctypes.util`` is never imported (its library lookup forks
``ldconfig``), because every ``berth-runtime`` invocation pays for what this module does at import.
Errors surface as ``OSError`` with the errno and the name of the call, like ``os`` functions.
"""

from __future__ import annotations

import ctypes
import os

# Namespace clone flags (linux/sched.h).
CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
CLONE_NEWTIME = 0x00000080

#: OCI namespace type → (clone flag, /proc/PID/ns/ entry name)
NAMESPACES: dict[str, tuple[int, str]] = {
    "pid": (CLONE_NEWPID, "pid"),
    "network": (CLONE_NEWNET, "net"),
    "mount": (CLONE_NEWNS, "mnt"),
    "ipc": (CLONE_NEWIPC, "ipc"),
    "uts": (CLONE_NEWUTS, "uts"),
    "user": (CLONE_NEWUSER, "user"),
    "cgroup": (CLONE_NEWCGROUP, "cgroup"),
    "time": (CLONE_NEWTIME, "time"),
}

# mount(2) flags (linux/mount.h).
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_SYNCHRONOUS = 16
MS_REMOUNT = 32
MS_MANDLOCK = 64
MS_DIRSYNC = 128
MS_NOSYMFOLLOW = 256
MS_NOATIME = 1024
MS_NODIRATIME = 2048
MS_BIND = 4096
MS_MOVE = 8192
MS_REC = 16384
MS_SILENT = 32768
MS_UNBINDABLE = 1 << 17
MS_PRIVATE = 1 << 18
MS_SLAVE = 1 << 19
MS_SHARED = 1 << 20
MS_RELATIME = 1 << 21
MS_STRICTATIME = 1 << 24
MS_LAZYTIME = 1 << 25
MNT_DETACH = 2

# prctl(2) options.
PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_SET_KEEPCAPS = 8
PR_SET_NO_NEW_PRIVS = 38
PR_SET_CHILD_SUBREAPER = 36

# openat2(2) resolve flags.
RESOLVE_NO_XDEV = 0x01
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
RESOLVE_IN_ROOT = 0x10

RLIM_INFINITY = 2**64 - 1

_SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41}
# Read once at import: under a LINUX32 personality uname(2) reports i686 for this same x86_64 process.
_MACHINE = os.uname().machine
_SYS_KEYCTL = {"x86_64": 250, "aarch64": 219}
_KEYCTL_JOIN_SESSION_KEYRING = 1
_SYS_OPENAT2 = 437  # same number on every architecture (new syscall table)
_SYS_PIDFD_SEND_SIGNAL = 424


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


_LIBC: ctypes.CDLL | None = None


def _libc() -> ctypes.CDLL:
    global _LIBC
    if _LIBC is None:
        _LIBC = ctypes.CDLL("libc.so.6", use_errno=True)
    return _LIBC


def _check(result: int, what: str, path: str | None = None) -> int:
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}", path)
    return result


def _b(value: str | None) -> bytes | None:
    return None if value is None else os.fsencode(value)


def unshare(flags: int) -> None:
    _check(_libc().unshare(flags), "unshare")


def setns(fd: int, nstype: int = 0) -> None:
    _check(_libc().setns(fd, nstype), "setns")


def mount(source: str | None, target: str, fstype: str | None, flags: int = 0, data: str | None = None) -> None:
    _check(_libc().mount(_b(source), _b(target), _b(fstype), ctypes.c_ulong(flags), _b(data)), "mount", target)


def umount2(target: str, flags: int = 0) -> None:
    _check(_libc().umount2(_b(target), flags), "umount2", target)


def pivot_root(new_root: str, put_old: str) -> None:
    nr = _SYS_PIVOT_ROOT.get(_MACHINE)
    if nr is None:
        raise OSError(38, "pivot_root: unsupported architecture")
    _check(_libc().syscall(nr, _b(new_root), _b(put_old)), "pivot_root", new_root)


def prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
    c = ctypes.c_ulong
    return _check(_libc().prctl(option, c(arg2), c(arg3), c(arg4), c(arg5)), "prctl")


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


_PR_SET_SECCOMP = 22
_SECCOMP_MODE_FILTER = 2


def seccomp_set_filter(program: bytes) -> None:
    """Load a classic-BPF seccomp program (8-byte ``struct sock_filter`` entries) into this thread;
    the kernel requires no_new_privs or CAP_SYS_ADMIN."""
    insns = ctypes.create_string_buffer(program, len(program))
    prog = _SockFprog(len(program) // 8, ctypes.addressof(insns))
    c = ctypes.c_ulong
    _check(_libc().prctl(_PR_SET_SECCOMP, c(_SECCOMP_MODE_FILTER), ctypes.byref(prog), c(0), c(0)), "prctl")


class _Rlimit(ctypes.Structure):
    _fields_ = [("soft", ctypes.c_uint64), ("hard", ctypes.c_uint64)]


def prlimit(resource: int, limits: tuple[int, int] | None = None) -> tuple[int, int]:
    """This process's (soft, hard) ``resource`` limits (its number: oci.runtime_config.RLIMITS), set
    to ``limits`` when given (the values before are returned); unlimited is RLIM_INFINITY. Here
    rather than the ``resource`` module: an extension library ``berth run`` would load for two calls
    (~0.15 ms)."""
    old = _Rlimit()
    new = None if limits is None else ctypes.byref(_Rlimit(*limits))
    _check(_libc().prlimit(0, resource, new, ctypes.byref(old)), "prlimit")
    return old.soft, old.hard


def setdomainname(name: str) -> None:
    raw = name.encode()
    _check(_libc().setdomainname(raw, len(raw)), "setdomainname")


def sethostname(name: str) -> None:
    raw = name.encode()
    _check(_libc().sethostname(raw, len(raw)), "sethostname")


def personality(persona: int) -> None:
    _check(_libc().personality(ctypes.c_ulong(persona)), "personality")


def openat2(dirfd: int, path: str, flags: int, resolve: int, mode: int = 0) -> int:
    """openat2(2): resolve ``path`` under ``dirfd`` with kernel-enforced ``RESOLVE_*`` rules."""
    how = _OpenHow(flags | os.O_CLOEXEC, mode, resolve)
    return _check(
        _libc().syscall(_SYS_OPENAT2, dirfd, _b(path), ctypes.byref(how), ctypes.sizeof(how)), "openat2", path
    )


def pidfd_send_signal(pidfd: int, sig: int) -> None:
    _check(_libc().syscall(_SYS_PIDFD_SEND_SIGNAL, pidfd, sig, None, 0), "pidfd_send_signal")


def join_session_keyring(name: str) -> None:
    """Give the process a new session keyring, so containers never share the caller's keys."""
    nr = _SYS_KEYCTL.get(os.uname().machine)
    if nr is None:
        raise OSError(38, "keyctl: unsupported architecture")
    _check(_libc().syscall(nr, _KEYCTL_JOIN_SESSION_KEYRING, _b(name)), "keyctl")
