"""berth.kernel.caps: name parsing, and real capability changes made in forked children.

Capability changes are irreversible for a process, so each one happens in a child made by os.fork;
the child reports through a pipe as JSON and leaves with os._exit.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from typing import Any

import pytest

from berth.errors import InvalidArgument, PermissionDenied
from berth.kernel import caps

CHOWN, KILL, SETUID, SETGID, SETPCAP = 0, 5, 7, 6, 8
NET_BIND_SERVICE, SYS_ADMIN = 10, 21


def run_in_child(fn: Callable[[], Any]) -> Any:
    """Run ``fn`` in a forked child and return its JSON-able result; re-raise its error by name."""
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
    data = b""
    while chunk := os.read(rfd, 65536):
        data += chunk
    os.close(rfd)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and data, f"child failed, status {status}"
    out = json.loads(data)
    if "error" in out:
        name, message = out["error"]
        if name == PermissionDenied.__name__:
            raise PermissionDenied(message)
        raise AssertionError(f"child raised {name}: {message}")
    return out["result"]


def sets() -> dict[str, list[int]]:
    return {k: sorted(v) for k, v in caps.current().items()}


# -- names ----------------------------------------------------------------------------------------


@pytest.mark.unit
def test_names_table() -> None:
    names = caps.names()
    assert len(names) == 41
    assert names[0] == "CAP_CHOWN"
    assert names[21] == "CAP_SYS_ADMIN"
    assert names[40] == "CAP_CHECKPOINT_RESTORE"
    assert all(caps.CAPS[n] == i for i, n in enumerate(names))


@pytest.mark.unit
def test_parse() -> None:
    field = "process.capabilities.bounding"
    assert caps.parse(["CAP_CHOWN", "CAP_KILL", "CAP_CHOWN"], field) == {CHOWN, KILL}
    assert caps.parse([], field) == set()
    assert caps.parse(None, field) == set()


@pytest.mark.unit
@pytest.mark.parametrize(
    ("names", "message"),
    [
        (["CAP_CHOWN", "CAP_FOO"], 'process.capabilities.bounding: unknown capability "CAP_FOO"'),
        (["chown"], 'process.capabilities.bounding: unknown capability "chown"'),
        (["CAP_CHOWN", 7], "process.capabilities.bounding[1]: must be a string, not int"),
        ("CAP_CHOWN", "process.capabilities.bounding: must be an array, not str"),
    ],
)
def test_parse_errors(names: Any, message: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        caps.parse(names, "process.capabilities.bounding")
    assert str(info.value) == message


@pytest.mark.unit
def test_parse_ignores_caps_the_kernel_lacks(monkeypatch: pytest.MonkeyPatch) -> None:
    with open("/proc/sys/kernel/cap_last_cap") as f:
        assert caps.last_cap() == int(f.read())
    monkeypatch.setattr(caps, "_last_cap", 37)  # a kernel before CAP_PERFMON
    assert caps.parse(["CAP_AUDIT_READ", "CAP_PERFMON", "CAP_BPF"], "f") == {37}


@pytest.mark.unit
def test_current_reads_all_five_sets() -> None:
    now = caps.current()
    assert set(now) == {"effective", "permitted", "inheritable", "bounding", "ambient"}
    assert now["effective"] <= now["permitted"]


# -- kernel ---------------------------------------------------------------------------------------


@pytest.mark.root
def test_drop_bounding() -> None:
    def child() -> dict[str, list[int]]:
        caps.drop_bounding({CHOWN, KILL, 63})  # a number beyond the kernel's is simply kept
        return sets()

    after = run_in_child(child)
    assert after["bounding"] == [CHOWN, KILL]
    assert sorted(caps.current()["bounding"]) != [CHOWN, KILL]  # the parent is untouched


@pytest.mark.root
def test_drop_bounding_needs_setpcap() -> None:
    def child() -> None:
        now = caps.current()
        caps.apply(now["effective"] - {SETPCAP}, now["permitted"], now["inheritable"])
        caps.drop_bounding(set())

    with pytest.raises(PermissionDenied, match="dropping CAP_CHOWN from the bounding set"):
        run_in_child(child)


@pytest.mark.root
def test_apply_reduced_sets() -> None:
    def child() -> dict[str, list[int]]:
        caps.apply({CHOWN}, {CHOWN, KILL}, {KILL})
        return sets()

    after = run_in_child(child)
    assert after["effective"] == [CHOWN]
    assert after["permitted"] == [CHOWN, KILL]
    assert after["inheritable"] == [KILL]


@pytest.mark.root
def test_apply_cannot_regain() -> None:
    def child() -> None:
        caps.apply({CHOWN}, {CHOWN}, set())
        caps.apply({CHOWN, KILL}, {CHOWN, KILL}, set())

    with pytest.raises(PermissionDenied, match="cap_set_proc"):
        run_in_child(child)


@pytest.mark.root
@pytest.mark.parametrize("keep", [True, False])
def test_keepcaps_across_setuid(keep: bool) -> None:
    def child() -> dict[str, list[int]]:
        caps.set_keepcaps(keep)
        os.setgid(65534)
        os.setuid(65534)
        return sets()

    after = run_in_child(child)
    assert after["effective"] == []
    if keep:
        assert SETUID in after["permitted"] and CHOWN in after["permitted"]
    else:
        assert after["permitted"] == []


@pytest.mark.root
def test_ambient() -> None:
    def child() -> list[Any]:
        caps.apply({NET_BIND_SERVICE, KILL}, {NET_BIND_SERVICE, KILL}, {NET_BIND_SERVICE})
        refused = caps.set_ambient({NET_BIND_SERVICE, KILL})
        first = sets()["ambient"]
        again = caps.set_ambient(set())  # clears
        return [sorted(refused), first, sorted(again), sets()["ambient"]]

    refused, first, again, cleared = run_in_child(child)
    assert refused == [KILL]  # not inheritable, so the kernel refuses it
    assert first == [NET_BIND_SERVICE]
    assert again == [] and cleared == []


@pytest.mark.root
def test_ambient_survives_execve_as_non_root() -> None:
    """The runtime's real sequence: bounding, keepcaps, setuid, apply, ambient, then execve."""
    cat = shutil.which("cat")
    if cat is None:
        pytest.skip("cat is not installed")
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.close(rfd)
            os.dup2(wfd, 1)
            keep = {NET_BIND_SERVICE}
            caps.drop_bounding(keep | {SETUID, SETGID})
            caps.set_keepcaps(True)
            os.setgid(65534)
            os.setuid(65534)
            caps.set_keepcaps(False)
            caps.apply(keep, keep, keep)
            if caps.set_ambient(keep):
                os._exit(3)
            os.execv(cat, [cat, "/proc/self/status"])
        finally:
            os._exit(2)
    os.close(wfd)
    data = b""
    while chunk := os.read(rfd, 65536):
        data += chunk
    os.close(rfd)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
    fields = dict(line.split(":\t", 1) for line in data.decode().splitlines() if ":\t" in line)
    assert fields["Uid"].split()[0] == "65534"
    for key in ("CapEff", "CapPrm", "CapAmb", "CapInh"):
        assert int(fields[key], 16) == 1 << NET_BIND_SERVICE, key
    assert int(fields["CapBnd"], 16) == 1 << NET_BIND_SERVICE | 1 << SETUID | 1 << SETGID
