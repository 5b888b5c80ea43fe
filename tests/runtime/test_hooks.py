"""OCI hooks: each kind runs at its point with the state on stdin, in the right namespaces."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
from rt_helpers import RT, wait_file

pytestmark = [pytest.mark.root, pytest.mark.integration]

KINDS = ("prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop")
# The hooks that run in the container's mount namespace see the host directory at /hooks.
IN_CONTAINER = ("startContainer",)


def _hook(kind: str, outdir: str) -> dict[str, Any]:
    script = (f"cat > {outdir}/{kind}.json; echo {kind} >> {outdir}/order;"
              f"readlink /proc/self/ns/mnt > {outdir}/{kind}.mnt; readlink /proc/self/ns/uts > {outdir}/{kind}.uts;"
              f"hostname > {outdir}/{kind}.hostname; echo $HOOK_ENV > {outdir}/{kind}.env")
    return {"path": "/bin/sh", "args": ["sh", "-c", script], "env": [f"HOOK_ENV={kind}-env"], "timeout": 10}


def test_all_hooks(rt: RT, make_bundle: Any, cid: str, tmp_path: Path) -> None:
    hooks_dir = tmp_path / "hooks"
    hooks_dir.mkdir()
    hooks_dir.chmod(0o777)

    def edit(spec: dict[str, Any]) -> None:
        spec["hostname"] = "hooked"
        spec["annotations"] = {"a": "b"}
        spec["mounts"].append({"destination": "/hooks", "type": "bind", "source": str(hooks_dir),
                               "options": ["rbind", "rw"]})
        spec["hooks"] = {kind: [_hook(kind, "/hooks" if kind in IN_CONTAINER else str(hooks_dir))]
                         for kind in KINDS}

    bundle = make_bundle(["sh", "-c", "echo main >> /hooks/order; exec sleep 1000"], edit=edit)
    rt("create", "--bundle", str(bundle), cid)
    order = hooks_dir / "order"
    assert order.read_text().split() == ["prestart", "createRuntime", "createContainer"]
    pid = rt.state(cid)["pid"]
    rt("start", cid)
    wait_file(order, contains="main")
    assert order.read_text().split() == ["prestart", "createRuntime", "createContainer", "startContainer",
                                         "main", "poststart"] or \
        order.read_text().split() == ["prestart", "createRuntime", "createContainer", "startContainer",
                                      "poststart", "main"]
    rt("kill", cid, "KILL")
    rt.wait_status(cid, "stopped")
    rt("delete", cid)
    assert order.read_text().split()[-1] == "poststop"

    host_mnt = os.readlink("/proc/self/ns/mnt")
    container_mnt = None
    for kind in KINDS:
        state = json.loads((hooks_dir / f"{kind}.json").read_text())
        assert state["id"] == cid, kind
        assert state["bundle"] == str(bundle), kind
        assert state["annotations"] == {"a": "b"}, kind
        assert state["ociVersion"], kind
        assert (hooks_dir / f"{kind}.env").read_text().strip() == f"{kind}-env"
        mnt = (hooks_dir / f"{kind}.mnt").read_text().strip()
        hostname = (hooks_dir / f"{kind}.hostname").read_text().strip()
        if kind in ("createContainer", "startContainer"):
            # Run in the container's namespaces.
            assert mnt != host_mnt, kind
            assert hostname == "hooked", kind
            container_mnt = container_mnt or mnt
            assert mnt == container_mnt
        else:
            # Run in the runtime's namespaces.
            assert mnt == host_mnt, kind
            assert hostname == os.uname().nodename, kind
    statuses = {k: json.loads((hooks_dir / f"{k}.json").read_text())["status"] for k in KINDS}
    assert statuses["prestart"] == statuses["createRuntime"] == statuses["createContainer"] == "creating" or \
        statuses["createContainer"] == "created"
    assert statuses["startContainer"] in ("created", "running")
    assert statuses["poststart"] == "running"
    assert statuses["poststop"] == "stopped"
    for kind in ("prestart", "createRuntime", "createContainer", "startContainer", "poststart"):
        assert json.loads((hooks_dir / f"{kind}.json").read_text())["pid"] == pid, kind


def test_hooks_with_run(rt: RT, make_bundle: Any, tmp_path: Path) -> None:
    out = tmp_path / "order"

    def edit(spec: dict[str, Any]) -> None:
        spec["hooks"] = {kind: [{"path": "/bin/sh", "args": ["sh", "-c", f"echo {kind} >> {out}"]}]
                         for kind in ("prestart", "poststart", "poststop")}

    res = rt.run(make_bundle(["true"], edit=edit))
    assert res.returncode == 0, res.stderr
    assert out.read_text().split() == ["prestart", "poststart", "poststop"]


def _nothing_left(rt: RT, cid: str) -> None:
    assert rt.status(cid) == "gone"
    assert not (rt.root / cid).exists()
    from rt_helpers import cgroup_path_dir

    for controller in ("memory", "pids", "freezer"):
        assert not cgroup_path_dir(controller, f"/berth/{cid}").exists(), controller


@pytest.mark.parametrize("kind", ["prestart", "createRuntime", "createContainer"])
def test_failing_hook_fails_create_and_leaves_nothing(rt: RT, make_bundle: Any, cid: str, kind: str) -> None:
    def edit(spec: dict[str, Any]) -> None:
        spec["hooks"] = {kind: [{"path": "/bin/sh", "args": ["sh", "-c", "echo hook-broke >&2; exit 3"]}]}

    res = rt("create", "--bundle", str(make_bundle(["sleep", "100"], edit=edit)), cid, check=False)
    assert res.returncode != 0
    assert kind in res.stderr and "exit status 3" in res.stderr and "hook-broke" in res.stderr, res.stderr
    _nothing_left(rt, cid)


def test_failing_start_container_hook_fails_start(rt: RT, make_bundle: Any, cid: str, tmp_path: Path) -> None:
    marker = tmp_path / "ran"

    def edit(spec: dict[str, Any]) -> None:
        spec["hooks"] = {"startContainer": [{"path": "/bin/false"}]}
        spec["mounts"].append({"destination": "/out", "type": "bind", "source": str(tmp_path),
                               "options": ["rbind"]})

    rt("create", "--bundle", str(make_bundle(["sh", "-c", "touch /out/ran"], edit=edit)), cid)
    rt("start", cid, check=False)
    rt.wait_status(cid, "stopped")
    assert not marker.exists(), "the process ran although startContainer failed"


def test_failing_poststart_and_poststop_only_warn(rt: RT, make_bundle: Any, cid: str) -> None:
    def edit(spec: dict[str, Any]) -> None:
        spec["hooks"] = {"poststart": [{"path": "/bin/false"}], "poststop": [{"path": "/bin/false"}]}

    rt("create", "--bundle", str(make_bundle(["sleep", "1000"], edit=edit)), cid)
    res = rt("start", cid, check=False)
    assert "poststart" in res.stderr
    rt("delete", "--force", cid)
    _nothing_left(rt, cid)


def test_hook_timeout(rt: RT, make_bundle: Any, cid: str) -> None:
    def edit(spec: dict[str, Any]) -> None:
        spec["hooks"] = {"prestart": [{"path": "/bin/sleep", "args": ["sleep", "30"], "timeout": 1}]}

    start = time.monotonic()
    res = rt("create", "--bundle", str(make_bundle(["true"], edit=edit)), cid, check=False)
    assert time.monotonic() - start < 10
    assert res.returncode != 0 and "timed out" in res.stderr, res.stderr
    _nothing_left(rt, cid)


def test_missing_hook_binary(rt: RT, make_bundle: Any, cid: str) -> None:
    def edit(spec: dict[str, Any]) -> None:
        spec["hooks"] = {"createRuntime": [{"path": "/no/such/hook"}]}

    res = rt("create", "--bundle", str(make_bundle(["true"], edit=edit)), cid, check=False)
    assert res.returncode != 0 and "/no/such/hook" in res.stderr
    _nothing_left(rt, cid)
