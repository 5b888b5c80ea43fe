"""RUN steps' surroundings: the network (``--network``, ``RUN --network``) and ``RUN --mount``."""

from __future__ import annotations

from pathlib import Path

import pytest

from build.conftest import BASE, write_context

pytestmark = [pytest.mark.root, pytest.mark.integration]


def _ok(r):  # type: ignore[no-untyped-def]
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


def test_run_network_none_by_default_host_on_request(berth, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    ctx = write_context(tmp_path / "ctx", {"Dockerfile": f"""FROM {BASE}
RUN ls /sys/class/net > /default.txt
RUN --network=host ls /sys/class/net > /host.txt
RUN --network=none ls /sys/class/net > /none.txt
CMD ["sh", "-c", "cat /default.txt; echo --; cat /host.txt; echo --; cat /none.txt"]
"""})
    _ok(berth("build", "-t", "net:1", str(ctx)))
    default, host, none = _ok(berth("run", "--rm", "net:1")).split("--\n")
    assert default == none == "lo\n"  # a private network namespace with only loopback
    assert "lo" in host.split() and len(host.split()) > 1  # the host's interfaces
    # the build's --network is RUN's default (and is part of the cache key: nothing is served from
    # the first build's cache for the steps that changed network)
    out = _ok(berth("build", "--network", "host", "-t", "net:2", str(ctx)))
    assert "CACHED" not in out.split("Step 2/5")[1].split("Step 3/5")[0]
    default, host, none = _ok(berth("run", "--rm", "net:2")).split("--\n")
    assert default == host and none == "lo\n"


def test_build_network_unknown_is_refused_before_any_step(berth, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    ctx = write_context(tmp_path / "ctx", {"Dockerfile": f"FROM {BASE}\nRUN true\n"})
    r = berth("build", "--network", "no-such-net", str(ctx))
    assert r.returncode == 125 and "no-such-net" in r.stderr
    assert "Step" not in r.stdout


def test_run_mount_bind_cache_tmpfs(berth, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    ctx = write_context(tmp_path / "ctx", {
        "Dockerfile": f"""FROM {BASE} AS tools
RUN mkdir /tools && echo from-stage > /tools/t.txt

FROM {BASE}
RUN --mount=type=bind,source=sub,target=/src ls /src > /bind.txt && cat /src/a.txt >> /bind.txt
RUN --mount=type=bind,source=sub,target=/src,rw sh -c 'echo x > /src/new; ls /src' > /rw.txt
RUN --mount=type=bind,from=tools,source=/tools,target=/t cat /t/t.txt > /from.txt
RUN --mount=type=cache,target=/var/cache/app,id=app sh -c 'echo run >> /var/cache/app/log; \\
    wc -l < /var/cache/app/log > /cache.txt'
RUN --mount=type=tmpfs,target=/scratch sh -c 'grep " /scratch " /proc/mounts | cut -d" " -f3 > /tmpfs.txt'
CMD ["sh", "-c", "cat /bind.txt /rw.txt /from.txt /cache.txt /tmpfs.txt; \\
     ls -d /src /t /scratch /var/cache/app 2>&1; true"]
""",
        "sub/a.txt": "file a\n", "sub/b.key": "ignored\n", ".dockerignore": "**/*.key\n",
    })
    _ok(berth("build", "-t", "mnt:1", str(ctx)))
    out = _ok(berth("run", "--rm", "mnt:1"))
    lines = out.splitlines()
    # bind from the context: what .dockerignore hides is not there; rw writes are thrown away
    assert lines[:4] == ["a.txt", "file a", "a.txt", "new"]
    assert lines[4:7] == ["from-stage", "1", "tmpfs"]
    # mount points the mounts made are not part of the image
    assert all("No such file or directory" in line for line in lines[7:]) and len(lines) == 11
    assert not (ctx / "sub/new").exists()

    # the cache mount persists across builds; the context bind is in the cache key
    (ctx / "sub/a.txt").write_text("file a2\n")
    _ok(berth("build", "-t", "mnt:2", str(ctx)))
    lines = _ok(berth("run", "--rm", "mnt:2")).splitlines()
    assert lines[1] == "file a2"
    assert lines[5] == "2"  # the cache step re-ran (its parent changed) and saw the first run's line
