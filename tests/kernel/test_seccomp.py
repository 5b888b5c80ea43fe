"""berth.kernel.seccomp: validation messages, features, and real filters loaded in forked children.

Every filter is loaded in a child made by os.fork so the pytest process is never confined; the
child reports through a pipe as JSON and leaves with os._exit, and a kill by signal is reported too.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import platform
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import Any

import pytest

from berth.errors import InvalidArgument, PermissionDenied, Unsupported
from berth.kernel import caps, seccomp

ALLOW = "SCMP_ACT_ALLOW"
ERRNO = "SCMP_ACT_ERRNO"
QUERY = 0xFFFFFFFF  # personality(0xffffffff) only reads the persona


def run_in_child(fn: Callable[[], Any]) -> dict[str, Any]:
    """Run ``fn`` in a forked child: {"result": ...}, {"error": [class, message]} or {"signal": n}."""
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.close(rfd)
        try:
            out: dict[str, Any] = {"result": fn()}
        except BaseException as e:
            out = {"error": [type(e).__name__, str(e)]}
        try:
            os.write(wfd, json.dumps(out).encode())
        finally:
            os._exit(0)
    os.close(wfd)
    chunks = []
    while chunk := os.read(rfd, 65536):
        chunks.append(chunk)
    os.close(rfd)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        return {"signal": os.WTERMSIG(status)}
    assert chunks, f"child wrote nothing, exit status {status}"
    return json.loads(b"".join(chunks))


def result(out: dict[str, Any]) -> Any:
    assert "result" in out, out
    return out["result"]


def oserrno(call: Callable[[], Any]) -> int:
    """0 if ``call`` succeeds, else the errno of its OSError."""
    try:
        call()
    except OSError as e:
        return e.errno or -1
    return 0


_libc = ctypes.CDLL(None, use_errno=True)
_libc.personality.argtypes = [ctypes.c_ulong]
_libc.personality.restype = ctypes.c_int


def personality(persona: int) -> int:
    """0 if personality(2) is let through, else its errno."""
    ctypes.set_errno(0)
    if _libc.personality(persona) == -1:
        return ctypes.get_errno()
    return 0


def mkdir_errno(path: str) -> int:
    return oserrno(lambda: os.mkdir(path))


def deny(names: list[str], **extra: Any) -> dict[str, Any]:
    return {"defaultAction": ALLOW, "syscalls": [{"names": names, "action": ERRNO, **extra}]}


# -- validation -----------------------------------------------------------------------------------

FULL = {
    "defaultAction": "SCMP_ACT_ERRNO",
    "defaultErrnoRet": 38,
    "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32", "SCMP_ARCH_SHEB"],
    "flags": ["SECCOMP_FILTER_FLAG_LOG", "SECCOMP_FILTER_FLAG_TSYNC"],
    "listenerPath": "/run/agent.sock",
    "listenerMetadata": "opaque",
    "syscalls": [
        {"names": ["read", "write", "no_such_syscall_anywhere"], "action": ALLOW},
        {"names": ["mkdir"], "action": "SCMP_ACT_ERRNO", "errnoRet": 0},
        {"names": ["ptrace"], "action": "SCMP_ACT_TRACE", "errnoRet": 7},
        {"names": ["getppid"], "action": "SCMP_ACT_NOTIFY"},
        {
            "names": ["personality"],
            "action": ALLOW,
            "args": [
                {"index": 0, "value": 0, "op": "SCMP_CMP_EQ"},
                {"index": 0, "value": 0xFF, "valueTwo": 8, "op": "SCMP_CMP_MASKED_EQ"},
            ],
        },
        {"names": ["kill"], "action": "SCMP_ACT_KILL_PROCESS", "args": None, "errnoRet": None},
    ],
}


@pytest.mark.unit
def test_validate_accepts_the_whole_schema() -> None:
    seccomp.validate(FULL)
    seccomp.validate({"defaultAction": "SCMP_ACT_KILL"})


def with_(**changes: Any) -> dict[str, Any]:
    spec = json.loads(json.dumps(FULL))
    for key, value in changes.items():
        spec[key] = value
    return spec


def with_rule(index: int, **changes: Any) -> dict[str, Any]:
    spec = with_()
    spec["syscalls"][index].update(changes)
    return spec


def with_arg(**changes: Any) -> dict[str, Any]:
    spec = with_()
    spec["syscalls"][4]["args"][1].update(changes)
    return spec


def without(key: str) -> dict[str, Any]:
    spec = with_()
    del spec[key]
    return spec


@pytest.mark.unit
@pytest.mark.parametrize(
    ("config", "message"),
    [
        ([], "linux.seccomp: must be an object, not list"),
        (without("defaultAction"), "linux.seccomp.defaultAction: is required"),
        (with_(defaultAction="SCMP_ACT_FOO"), 'linux.seccomp.defaultAction: unknown action "SCMP_ACT_FOO"'),
        (with_(defaultAction=1), "linux.seccomp.defaultAction: must be a string, not int"),
        (with_(defaultAction="SCMP_ACT_NOTIFY", defaultErrnoRet=None),
         "linux.seccomp.defaultAction: SCMP_ACT_NOTIFY cannot"),
        (with_(defaultAction=ALLOW), "linux.seccomp.defaultErrnoRet: only SCMP_ACT_ERRNO and SCMP_ACT_TRACE"),
        (with_(defaultErrnoRet=-1), "linux.seccomp.defaultErrnoRet: -1 is out of range 0..65535"),
        (with_(defaultErrnoRet=True), "linux.seccomp.defaultErrnoRet: must be an unsigned integer, not bool"),
        (with_(architectures="SCMP_ARCH_X86"), "linux.seccomp.architectures: must be an array, not str"),
        (with_(architectures=["SCMP_ARCH_X86", "x86_64"]),
         'linux.seccomp.architectures[1]: unknown architecture "x86_64"'),
        (with_(flags=["SECCOMP_FILTER_FLAG_NEW_LISTENER"]),
         'linux.seccomp.flags[0]: unknown flag "SECCOMP_FILTER_FLAG_NEW_LISTENER"'),
        (with_(flags=[4]), "linux.seccomp.flags[0]: must be a string, not int"),
        (with_(listenerPath=""), "linux.seccomp.listenerPath: must not be empty"),
        (without("listenerPath"), "linux.seccomp.listenerMetadata: must not be set without listenerPath"),
        (with_(listenerMetadata=3), "linux.seccomp.listenerMetadata: must be a string, not int"),
        (with_(syscalls={}), "linux.seccomp.syscalls: must be an array, not dict"),
        (with_(syscalls=["read"]), "linux.seccomp.syscalls[0]: must be an object, not str"),
        (with_rule(2, action="SCMP_ACT_FOO"),
         'linux.seccomp.syscalls[2].action: unknown action "SCMP_ACT_FOO"'),
        (with_rule(2, action=None), "linux.seccomp.syscalls[2].action: is required"),
        (with_rule(0, names=[]), "linux.seccomp.syscalls[0].names: must contain at least one"),
        (with_rule(0, names="read"), "linux.seccomp.syscalls[0].names: must be an array, not str"),
        (with_rule(0, names=["read", 0]), "linux.seccomp.syscalls[0].names[1]: must be a string, not int"),
        (with_rule(0, names=["read", ""]), "linux.seccomp.syscalls[0].names[1]: must not be empty"),
        (with_rule(0, errnoRet=1), 'linux.seccomp.syscalls[0].errnoRet: only SCMP_ACT_ERRNO and '
         'SCMP_ACT_TRACE take one, not "SCMP_ACT_ALLOW"'),
        (with_rule(1, errnoRet=65536), "linux.seccomp.syscalls[1].errnoRet: 65536 is out of range"),
        (with_rule(1, errnoRet="1"), "linux.seccomp.syscalls[1].errnoRet: must be an unsigned integer"),
        (with_rule(4, args={}), "linux.seccomp.syscalls[4].args: must be an array, not dict"),
        (with_arg(index=6), "linux.seccomp.syscalls[4].args[1].index: 6 is out of range 0..5"),
        (with_arg(index=None), "linux.seccomp.syscalls[4].args[1].index: is required"),
        (with_arg(op="SCMP_CMP_FOO"),
         'linux.seccomp.syscalls[4].args[1].op: unknown operator "SCMP_CMP_FOO"'),
        (with_arg(value=-1), "linux.seccomp.syscalls[4].args[1].value: -1 is out of range"),
        (with_arg(value=1 << 64), "linux.seccomp.syscalls[4].args[1].value: 18446744073709551616 is out"),
        (with_arg(valueTwo="8"), "linux.seccomp.syscalls[4].args[1].valueTwo: must be an unsigned integer"),
        (with_(listenerPath=None, listenerMetadata=None),
         "linux.seccomp.listenerPath: is required when a rule uses SCMP_ACT_NOTIFY"),
    ],
)
def test_validate_names_the_field(config: Any, message: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        seccomp.validate(config)
    assert str(info.value).startswith(message)
    assert "\n" not in str(info.value)


@pytest.mark.unit
def test_validate_and_import_load_nothing() -> None:
    """Start-up matters: neither importing nor validating loads ctypes or a library."""
    code = (
        "import sys; from berth.kernel import seccomp, caps\n"
        f"seccomp.validate({FULL!r}); caps.parse(['CAP_CHOWN'], 'f')\n"
        "assert 'ctypes' not in sys.modules, 'ctypes imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.unit
def test_features() -> None:
    feats = seccomp.features()
    assert feats["enabled"] is True
    assert feats["actions"] == sorted(seccomp.ACTIONS)
    assert len(feats["actions"]) == 9
    assert feats["operators"] == sorted(seccomp.OPERATORS)
    assert len(feats["operators"]) == 7
    native = {"x86_64": "SCMP_ARCH_X86_64", "aarch64": "SCMP_ARCH_AARCH64"}.get(platform.machine())
    if native:
        assert native in feats["archs"]
    assert set(feats["archs"]) <= set(seccomp.ARCHES)
    assert feats["knownFlags"] == [
        "SECCOMP_FILTER_FLAG_TSYNC",
        "SECCOMP_FILTER_FLAG_LOG",
        "SECCOMP_FILTER_FLAG_SPEC_ALLOW",
        "SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV",
    ]
    assert set(feats["supportedFlags"]) <= set(feats["knownFlags"])
    assert "SECCOMP_FILTER_FLAG_TSYNC" in feats["supportedFlags"]


# -- real filters, each in a forked child -------------------------------------------------------


@pytest.mark.root
def test_errno_for_mkdir(tmp_path: Any) -> None:
    def child() -> list[int]:
        seccomp.install(deny(["mkdir", "mkdirat"]))
        return [mkdir_errno(str(tmp_path / "d")), oserrno(lambda: os.rmdir(str(tmp_path / "absent")))]

    assert result(run_in_child(child)) == [errno.EPERM, errno.ENOENT]  # rmdir is not filtered
    assert not (tmp_path / "d").exists()


@pytest.mark.root
def test_custom_errno_ret(tmp_path: Any) -> None:
    def child() -> int:
        seccomp.install(deny(["mkdir", "mkdirat"], errnoRet=errno.ENOSYS))
        return mkdir_errno(str(tmp_path / "d"))

    assert result(run_in_child(child)) == errno.ENOSYS


@pytest.mark.root
def test_argument_filter() -> None:
    def child() -> list[int]:
        seccomp.install(deny(["personality"], args=[{"index": 0, "value": 0x12345, "op": "SCMP_CMP_EQ"}]))
        return [personality(0x12345), personality(QUERY)]

    assert result(run_in_child(child)) == [errno.EPERM, 0]


@pytest.mark.root
def test_args_on_the_same_index_are_alternatives() -> None:
    """Two conditions on arg 0 cannot be ANDed by libseccomp; like runc they become two rules."""
    rule = {"args": [
        {"index": 0, "value": 0x12345, "op": "SCMP_CMP_EQ"},
        {"index": 0, "value": 0x23456, "op": "SCMP_CMP_EQ"},
    ]}

    def child() -> list[int]:
        seccomp.install(deny(["personality"], **rule))
        return [personality(0x12345), personality(0x23456), personality(QUERY)]

    assert result(run_in_child(child)) == [errno.EPERM, errno.EPERM, 0]


@pytest.mark.root
def test_masked_eq_value_is_the_mask() -> None:
    masked = {"index": 0, "value": 0xFF000, "valueTwo": 0x12000, "op": "SCMP_CMP_MASKED_EQ"}

    def child() -> list[int]:
        seccomp.install(deny(["personality"], args=[masked]))
        return [personality(0x12345), personality(QUERY)]

    assert result(run_in_child(child)) == [errno.EPERM, 0]


@pytest.mark.root
def test_args_on_different_indexes_are_all_required() -> None:
    def child() -> list[int]:
        me = os.getpid()
        seccomp.install(deny(["kill"], args=[
            {"index": 0, "value": me, "op": "SCMP_CMP_EQ"},
            {"index": 1, "value": 0, "op": "SCMP_CMP_EQ"},
        ]))
        return [oserrno(lambda: os.kill(me, 0)), oserrno(lambda: os.kill(os.getppid(), 0)),
                oserrno(lambda: os.kill(me, signal.SIGCHLD))]

    assert result(run_in_child(child)) == [errno.EPERM, 0, 0]


@pytest.mark.root
def test_default_errno_with_allow_list(tmp_path: Any) -> None:
    allowed = ["write", "exit_group", "exit", "getpid", "brk", "mmap", "munmap", "mremap", "madvise",
               "rt_sigreturn", "rt_sigprocmask", "futex", "close", "getrandom"]
    config = {
        "defaultAction": ERRNO,
        "defaultErrnoRet": errno.ENOSYS,
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32", "SCMP_ARCH_LOONGARCH64"],
        "syscalls": [
            {"names": allowed, "action": ALLOW},
            {"names": ["getppid"], "action": ERRNO, "errnoRet": errno.ENOSYS},  # same as default: skipped
            {"names": ["mkdir", "mkdirat"], "action": ERRNO},  # EPERM, not the default ENOSYS
        ],
    }

    def child() -> list[int]:
        seccomp.install(config)
        rmdir = oserrno(lambda: os.rmdir(str(tmp_path / "x")))
        return [os.getpid() > 0, mkdir_errno(str(tmp_path / "d")), rmdir]

    assert result(run_in_child(child)) == [True, errno.EPERM, errno.ENOSYS]


@pytest.mark.root
def test_kill_process() -> None:
    def child() -> None:
        seccomp.install({"defaultAction": ALLOW,
                         "syscalls": [{"names": ["getppid"], "action": "SCMP_ACT_KILL_PROCESS"}]})
        os.getppid()

    assert run_in_child(child) == {"signal": signal.SIGSYS}


def start_thread() -> tuple[list[int], threading.Event, threading.Thread]:
    """A thread that waits for the returned event; its native id is in the returned list."""
    tid: list[int] = []
    started, done = threading.Event(), threading.Event()

    def body() -> None:
        tid.append(threading.get_native_id())
        started.set()
        done.wait()

    thread = threading.Thread(target=body)
    thread.start()
    started.wait()
    return tid, done, thread


def seccomp_status(task: str = "self") -> dict[str, str]:
    with open(f"/proc/{task}/status") as f:
        fields = dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)
    return {k: fields.get(k, "") for k in ("Seccomp", "Seccomp_filters")}


@pytest.mark.root
def test_flags_and_tsync() -> None:
    supported = seccomp.features()["supportedFlags"]
    flags = [f for f in ("SECCOMP_FILTER_FLAG_TSYNC", "SECCOMP_FILTER_FLAG_LOG",
                         "SECCOMP_FILTER_FLAG_SPEC_ALLOW") if f in supported]
    assert "SECCOMP_FILTER_FLAG_TSYNC" in flags

    def child() -> list[Any]:
        tid, done, thread = start_thread()
        seccomp.install({**deny(["mkdir", "mkdirat"]), "flags": flags})
        other = seccomp_status(f"self/task/{tid[0]}")
        done.set()
        thread.join()
        return [seccomp_status(), other]

    mine, thread = result(run_in_child(child))
    assert mine == {"Seccomp": "2", "Seccomp_filters": "1"}
    assert thread == mine


@pytest.mark.root
def test_without_tsync_other_threads_stay_free() -> None:
    def child() -> dict[str, str]:
        tid, done, thread = start_thread()
        seccomp.install(deny(["mkdir"]))
        other = seccomp_status(f"self/task/{tid[0]}")
        done.set()
        thread.join()
        return other

    assert result(run_in_child(child))["Seccomp"] == "0"


@pytest.mark.root
def test_notify_returns_the_listener_fd() -> None:
    config = {"defaultAction": ALLOW, "listenerPath": "/run/not-used-here.sock",
              "syscalls": [{"names": ["getppid"], "action": "SCMP_ACT_NOTIFY"}]}

    def child() -> str:
        fd = seccomp.install(config)
        assert fd is not None
        return os.readlink(f"/proc/self/fd/{fd}")

    out = run_in_child(child)
    if seccomp._lib().api < 5:  # libseccomp's API level for SCMP_ACT_NOTIFY
        assert out["error"][0] == Unsupported.__name__
    else:
        assert result(out) == "anon_inode:seccomp notify"


@pytest.mark.root
def test_wait_killable_recv_needs_support() -> None:
    """Without a notify rule the flag changes nothing; with one it needs libseccomp >= 2.6."""
    flag = "SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV"
    config = {"defaultAction": ALLOW, "listenerPath": "/run/x.sock", "flags": [flag],
              "syscalls": [{"names": ["getppid"], "action": "SCMP_ACT_NOTIFY"}]}

    def child() -> Any:
        seccomp.install({**deny(["mkdir"]), "flags": [flag]})
        return seccomp.install(config)

    out = run_in_child(child)
    if flag in seccomp.features()["supportedFlags"]:
        assert isinstance(result(out), int)
    else:
        assert out["error"][0] == Unsupported.__name__
        assert out["error"][1].startswith(f"linux.seccomp.flags[0]: {flag} is not supported")


@pytest.mark.root
def test_needs_no_new_privs_or_cap_sys_admin() -> None:
    def child() -> None:
        now = caps.current()
        caps.apply(now["effective"] - {caps.CAPS["CAP_SYS_ADMIN"]}, now["permitted"], now["inheritable"])
        seccomp.install(deny(["mkdir"]))

    out = run_in_child(child)
    assert out["error"][0] == PermissionDenied.__name__
    assert "no_new_privs or CAP_SYS_ADMIN" in out["error"][1]


@pytest.mark.root
def test_install_validates_first() -> None:
    def child() -> str:
        try:
            seccomp.install({"defaultAction": ALLOW, "syscalls": [{"names": ["mkdir"], "action": "nope"}]})
        except InvalidArgument as e:
            assert str(e) == 'linux.seccomp.syscalls[0].action: unknown action "nope"'
        return seccomp_status()["Seccomp"]

    assert result(run_in_child(child)) == "0"


# -- the compiled-filter cache ----------------------------------------------------------------------


@pytest.mark.root
def test_cache_compiles_once_and_the_cached_program_filters(tmp_path: Any) -> None:
    cache = str(tmp_path / "cache")
    profile = deny(["mkdir", "mkdirat"])
    first = seccomp.prepare(profile, cache)
    assert first.program and first.ctx is None
    entries = os.listdir(cache)
    assert len(entries) == 1 and entries[0].endswith(".bpf")
    assert os.stat(os.path.join(cache, entries[0])).st_mode & 0o777 == 0o600
    second = seccomp.prepare(profile, cache)
    assert second.program == first.program

    def child() -> list[int]:
        seccomp.prepare(profile, cache).load()
        return [mkdir_errno(str(tmp_path / "d")), oserrno(lambda: os.rmdir(str(tmp_path / "absent")))]

    assert result(run_in_child(child)) == [errno.EPERM, errno.ENOENT]
    # Another profile is another entry; flags and notify rules are never cached.
    seccomp.prepare(deny(["rmdir"]), cache)
    with_flags = {**profile, "flags": ["SECCOMP_FILTER_FLAG_LOG"]}
    assert result(run_in_child(lambda: seccomp.prepare(with_flags, cache).program)) is None
    assert len(os.listdir(cache)) == 2


@pytest.mark.root
def test_a_damaged_cache_entry_is_rebuilt(tmp_path: Any) -> None:
    cache = str(tmp_path / "cache")
    profile = deny(["mkdir", "mkdirat"])
    good = seccomp.prepare(profile, cache).program
    (entry,) = os.listdir(cache)
    with open(os.path.join(cache, entry), "wb") as f:
        f.write(b"\x00" * 13)  # not whole BPF instructions
    assert seccomp.prepare(profile, cache).program == good

    def child() -> int:
        seccomp.prepare(profile, cache).load()
        return mkdir_errno(str(tmp_path / "d"))

    assert result(run_in_child(child)) == errno.EPERM


@pytest.mark.root
def test_cached_program_still_needs_no_new_privs_or_cap_sys_admin(tmp_path: Any) -> None:
    cache = str(tmp_path / "cache")
    seccomp.prepare(deny(["mkdir"]), cache)

    def child() -> None:
        prepared = seccomp.prepare(deny(["mkdir"]), cache)
        now = caps.current()
        caps.apply(now["effective"] - {caps.CAPS["CAP_SYS_ADMIN"]}, now["permitted"], now["inheritable"])
        prepared.load()

    out = run_in_child(child)
    assert out["error"][0] == PermissionDenied.__name__
