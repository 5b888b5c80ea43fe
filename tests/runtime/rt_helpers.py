"""Helpers for driving ``berth-runtime`` as a separate process, the way engines drive runc
(imported by tests/runtime/conftest.py and the tests).

``rt(*args)`` runs ``berth-runtime --root <private root> ...`` with a timeout. Its stdout and stderr
go to temporary files, never pipes: a created container inherits them, and a pipe would keep the
caller waiting for an EOF that only comes when the container exits. Every container a test leaves
behind is force-deleted afterwards, so one failing test never leaks processes or cgroups into the next.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

BERTH_RUNTIME = str(Path(sys.executable).parent / "berth-runtime")


@dataclass
class Result:
    argv: list[str]
    returncode: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)


class RuntimeFailed(AssertionError):
    pass


class RT:
    """A ``berth-runtime`` bound to one ``--root``."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def argv(self, *args: str, global_flags: tuple[str, ...] = ()) -> list[str]:
        return [BERTH_RUNTIME, "--root", str(self.root), *global_flags, *args]

    def __call__(self, *args: str, check: bool = True, timeout: float = 30, input: str | None = None,
                 stdout: str | Path | None = None, global_flags: tuple[str, ...] = (),
                 cwd: str | Path | None = None) -> Result:
        """Run one command. ``stdout`` names a file that receives stdout *and* stderr of the runtime
        and of any container it leaves running (a created container's output lands there)."""
        argv = self.argv(*args, global_flags=global_flags)
        with tempfile.TemporaryFile() as err:
            out: IO[bytes]
            out = open(stdout, "ab") if stdout is not None else tempfile.TemporaryFile()  # noqa: SIM115
            try:
                proc = subprocess.run(argv, stdout=out, stderr=out if stdout is not None else err,
                                      input=input.encode() if input is not None else None,
                                      stdin=None if input is not None else subprocess.DEVNULL,
                                      timeout=timeout, check=False, cwd=cwd)
                out.seek(0)
                err.seek(0)
                text_out = "" if stdout is not None else out.read().decode(errors="replace")
                result = Result(argv, proc.returncode, text_out, err.read().decode(errors="replace"))
            finally:
                out.close()
        if check and result.returncode != 0:
            raise RuntimeFailed(f"{' '.join(args)} exited {result.returncode}\nstdout: {result.stdout}\n"
                                f"stderr: {result.stderr}")
        return result

    def popen(self, *args: str, **kwargs: Any) -> subprocess.Popen[bytes]:
        kwargs.setdefault("stdin", subprocess.DEVNULL)
        return subprocess.Popen(self.argv(*args), **kwargs)

    def state(self, cid: str) -> dict[str, Any]:
        result: dict[str, Any] = self("state", cid).json()
        return result

    def status(self, cid: str) -> str:
        res = self("state", cid, check=False)
        if res.returncode != 0:
            return "gone"
        status: str = res.json()["status"]
        return status

    def wait_status(self, cid: str, want: str, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        got = ""
        while time.monotonic() < deadline:
            got = self.status(cid)
            if got == want:
                return
            time.sleep(0.05)
        raise AssertionError(f"container {cid} is {got}, expected {want} within {timeout}s")

    def run(self, bundle: Path, *flags: str, cid: str | None = None, check: bool = False,
            timeout: float = 30) -> Result:
        """``run`` a container to completion and return the result (stdout is the container's)."""
        return self("run", "--bundle", str(bundle), *flags, cid or new_id(), check=check, timeout=timeout)

    def ids(self) -> list[str]:
        res = self("list", "-q", check=False)
        return res.stdout.split() if res.returncode == 0 else []


def new_id(prefix: str = "t") -> str:
    """Container ids are unique across processes: the default cgroup (/berth/<id>) is host-wide."""
    return f"{prefix}{uuid.uuid4().hex[:12]}"


def wait_for(predicate: Callable[[], Any], timeout: float = 10, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def wait_file(path: Path, timeout: float = 10, contains: str = "") -> str:
    def ready() -> str | None:
        try:
            text = path.read_text()
        except FileNotFoundError:
            return None
        return text if text and contains in text else None

    result: str = wait_for(ready, timeout, f"{path}")
    return result


def cgroup_dir(pid: int, controller: str) -> Path:
    """The host directory of ``pid``'s cgroup in ``controller``'s v1 hierarchy (``""`` for cgroup2)."""
    from berth.kernel.cgroups import hierarchies

    with open(f"/proc/{pid}/cgroup") as f:
        for line in f:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            names = controllers.split(",") if controllers else [""]
            if controller in names:
                return Path(hierarchies().directory(controller, path))
    raise AssertionError(f"pid {pid} has no {controller!r} cgroup")


def cgroup_path_dir(controller: str, path: str) -> Path:
    from berth.kernel.cgroups import hierarchies

    return Path(hierarchies().directory(controller, path))


class ConsoleServer:
    """The caller's side of ``--console-socket``: receives the pty master over SCM_RIGHTS."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        self.sock.listen(4)
        self.sock.settimeout(20)

    def receive(self) -> int:
        conn, _ = self.sock.accept()
        with conn:
            conn.settimeout(20)
            _msg, fds, _flags, _addr = socket.recv_fds(conn, 4096, 4)
        assert len(fds) == 1, f"expected one fd over the console socket, got {fds}"
        return fds[0]

    def close(self) -> None:
        self.sock.close()


def read_master(master: int, until: str = "", timeout: float = 10) -> str:
    """Read a pty master until ``until`` appears, EOF/EIO (every slave closed), or the timeout."""
    import select

    data = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.1)
        if not ready:
            continue
        try:
            chunk = os.read(master, 4096)
        except OSError:
            break
        if not chunk:
            break
        data += chunk
        if until and until in data.decode(errors="replace"):
            break
    return data.decode(errors="replace")


def write_json(path: Path, obj: Any) -> Path:
    path.write_text(json.dumps(obj))
    return path
