"""The last exec into the container goes through a tiny sealed in-memory program.

While a process execs the container's command, ``/proc/self/exe`` is still the binary that
process runs. For a Python runtime that is the host's Python interpreter; a container command
written as ``#!/proc/self/exe`` would then run, and could reopen for writing, the host interpreter
(the class of escape behind CVE-2019-5736). So the runtime never execs the command itself: it execs
this 51-byte static program from a sealed memfd, which execs the command. Whatever the container
reaches through /proc/self/exe is then a throw-away sealed copy of these bytes.

The program: ``execve(argv[1], &argv[2], envp)``, exiting with the errno if that fails and with 126
when called with fewer than three arguments (as ``#!/proc/self/exe`` scripts call it).
"""

from __future__ import annotations

import fcntl
import os
import struct

_BASE = 0x400000
# x86-64 machine code of the program above (hand-written assembly, 51 bytes).
_X86_64_CODE = bytes.fromhex(
    "488b0424"          # mov  (%rsp),%rax           argc
    "4883f803"          # cmp  $3,%rax
    "721c"              # jb   bad
    "488b7c2410"        # mov  16(%rsp),%rdi          argv[1]
    "488d742418"        # lea  24(%rsp),%rsi          &argv[2]
    "488d54c410"        # lea  16(%rsp,%rax,8),%rdx   envp
    "b83b000000"        # mov  $59,%eax               execve
    "0f05"              # syscall
    "89c7"              # mov  %eax,%edi
    "f7df"              # neg  %edi                   exit status = errno
    "eb05"              # jmp  out
    "bf7e000000"        # bad: mov $126,%edi
    "b83c000000"        # out: mov $60,%eax           exit
    "0f05"              # syscall
)
_CODES = {"x86_64": (0x3E, _X86_64_CODE)}
_MFD_EXEC = 0x0010


def _elf(machine: int, code: bytes) -> bytes:
    """A minimal static ELF64 executable: one header, one loadable segment, the code."""
    ehsize, phsize = 64, 56
    size = ehsize + phsize + len(code)
    header = struct.pack(
        "<4sBBBB8xHHIQQQIHHHHHH", b"\x7fELF", 2, 1, 1, 0,
        2, machine, 1, _BASE + ehsize + phsize, ehsize, 0, 0, ehsize, phsize, 1, 0, 0, 0,
    )
    segment = struct.pack("<IIQQQQQQ", 1, 5, 0, _BASE, _BASE, size, size, 0x1000)
    return header + segment + code


def sealed_fd() -> int | None:
    """A sealed, close-on-exec memfd holding the trampoline; None where none exists for this arch."""
    found = _CODES.get(os.uname().machine)
    if found is None:
        return None
    try:
        # MFD_EXEC (Linux 6.3): executable even where vm.memfd_noexec=1 makes memfds noexec.
        fd = os.memfd_create("berth-exec", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING | _MFD_EXEC)
    except OSError:
        fd = os.memfd_create("berth-exec", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    os.write(fd, _elf(*found))
    fcntl.fcntl(fd, fcntl.F_ADD_SEALS,
                fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE)
    return fd


def execve(fd: int | None, path: str, argv: list[str], env: dict[str, str]) -> None:
    """Exec ``path`` through the trampoline in ``fd``; never returns.

    fexecve (execveat) first; if a seccomp profile refuses execveat, execve of ``/proc/self/fd/N``
    runs the same sealed program. If both fail the exec is refused: a direct exec from the runtime
    would let a ``#!/proc/self/exe`` command start, and expose, the host's Python in the container.
    Only where no trampoline exists for the machine (``fd`` is None) is the command exec'd directly.
    """
    if fd is None:
        os.execve(path, argv, env)
    tramp_argv = ["berth-exec", path, *argv]
    try:
        os.execve(fd, tramp_argv, env)
    except OSError as e:
        first = e
    try:
        os.execve(f"/proc/self/fd/{fd}", tramp_argv, env)
    except OSError as e:
        raise PermissionError(
            e.errno, f"cannot exec through the sealed trampoline (execveat: {first.strerror}; "
            f"/proc/self/fd: {e.strerror}); refusing to exec {path} from the runtime itself") from None
