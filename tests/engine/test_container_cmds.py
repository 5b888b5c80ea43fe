"""Container commands beyond the life cycle — exec, top, stats, pause, rename, update, prune, port, diff,
export, commit, cp — end to end through the ``berth`` CLI on real containers."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path
from typing import Any

import pytest

from berth.engine.engine import Engine

IMAGE = "localhost/busybox:latest"
pytestmark = [pytest.mark.root, pytest.mark.integration]


def _sleeper(engine: Engine, name: str, **opts: Any) -> str:
    return engine.run(IMAGE, ["sleep", "300"], pull="never", name=name, **opts).id


def test_exec_exit_codes_and_options(engine: Engine, berth: Any) -> None:
    _sleeper(engine, "ex")
    r = berth("exec", "ex", "sh", "-c", "echo out; echo err >&2; exit 3")
    assert (r.returncode, r.stdout, r.stderr) == (3, "out\n", "err\n")
    r = berth("exec", "-e", "FOO=bar", "-u", "1000:1000", "-w", "/tmp", "ex",
              "sh", "-c", "echo $$ $FOO $(id -u) $(id -g) $(pwd)")
    pid, *rest = r.stdout.split()
    assert r.returncode == 0 and rest == ["bar", "1000", "1000", "/tmp"] and pid != "1"
    assert berth("exec", "-u", "nobody", "ex", "id", "-un").stdout == "nobody\n"
    r = berth("exec", "ex", "no-such-command")
    assert r.returncode == 127 and r.stderr.startswith("Error: ") and "not found" in r.stderr
    assert berth("exec", "ex", "/etc").returncode == 126
    assert berth("exec", "-u", "nosuchuser", "ex", "true").returncode == 125
    r = berth("exec", "-i", "ex", "tr", "a-z", "A-Z", input="hello\n")
    assert r.stdout == "HELLO\n"
    assert berth("exec", "ex", "cat", input="ignored\n").stdout == ""  # no -i: stdin is /dev/null
    r = berth("exec", "-t", "ex", "tty")
    assert r.returncode == 0 and r.stdout.strip().startswith("/dev/pts/")
    assert berth("exec", "-d", "ex", "sh", "-c", "echo detached > /tmp/d").returncode == 0
    assert engine.exec("ex", ["sh", "-c", "sleep 0.2; cat /tmp/d"]) == 0
    engine.stop("ex", 1)
    r = berth("exec", "ex", "true")
    assert r.returncode == 125 and "not running" in r.stderr
    assert berth("exec", "nosuch", "true").returncode == 125


def test_top_stats_pause_update_rename_port(engine: Engine, berth: Any) -> None:
    _sleeper(engine, "ops")
    top = berth("top", "ops")
    assert top.returncode == 0 and "PID" in top.stdout.splitlines()[0] and "sleep 300" in top.stdout
    assert "sleep" in berth("top", "ops", "-o", "pid,comm").stdout
    r = berth("stats", "--no-stream", "ops")
    header, row = r.stdout.splitlines()
    assert header.split()[:4] == ["CONTAINER", "ID", "NAME", "CPU"] and "MEM USAGE / LIMIT" in header
    assert row.split()[1] == "ops" and row.split()[2].endswith("%")
    r = berth("stats", "--no-stream", "--format", "{{.Name}} {{.PIDs}} {{.MemPerc}}")
    assert r.stdout.split()[:2] == ["ops", "1"]

    assert berth("pause", "ops").stdout == "ops\n"
    assert engine.get("ops").status == "paused"
    assert berth("ps", "--format", "{{.State}}").stdout == "paused\n"
    assert "paused" in berth("exec", "ops", "true").stderr
    assert berth("unpause", "ops").returncode == 0
    assert engine.get("ops").status == "running"
    assert berth("unpause", "ops").returncode == 1  # not paused: Docker's per-container failure

    r = berth("update", "--memory", "64m", "--cpus", "0.5", "--pids-limit", "20", "--cpu-shares", "512", "ops")
    assert (r.returncode, r.stdout) == (0, "ops\n"), r.stderr
    assert berth("inspect", "-f", "{{.HostConfig.Memory}}", "ops").stdout == f"{64 << 20}\n"
    r = berth("stats", "--no-stream", "--format", "{{.MemUsage}}", "ops")
    assert r.stdout.strip().endswith("/ 64MiB")
    engine.exec("ops", ["sh", "-c", "for i in $(seq 30); do sleep 5 & done 2>/dev/null"])  # fails to fork
    assert int(berth("stats", "--no-stream", "--format", "{{.PIDs}}", "ops").stdout) <= 20
    r = berth("update", "--memory", "lots", "ops")
    assert r.returncode != 0 and "invalid --memory" in r.stderr
    assert berth("update", "ops").returncode == 125

    assert berth("rename", "ops", "renamed").returncode == 0
    assert engine.get("renamed").name == "renamed"
    assert berth("rename", "renamed", "bad name!").returncode == 125
    _sleeper(engine, "other")
    r = berth("rename", "renamed", "other")
    assert r.returncode == 125 and "already in use" in r.stderr
    r = berth("port", "renamed")
    assert (r.returncode, r.stdout) == (0, "")
    assert berth("port", "renamed", "80/tcp").returncode == 125


def test_container_prune_and_ls(engine: Engine, berth: Any) -> None:
    running = _sleeper(engine, "keep")
    done = engine.run(IMAGE, ["sh", "-c", "head -c 100000 /dev/zero > /big"], pull="never", name="done")
    engine.wait(done.id, 20)
    created = engine.create(IMAGE, ["true"], pull="never", name="fresh")
    assert berth("container", "prune", input="n\n").stdout.endswith("[y/N] ")
    assert engine.get("done")
    r = berth("container", "prune", "-f")
    assert r.returncode == 0
    lines = r.stdout.splitlines()
    assert lines[0] == "Deleted Containers:" and set(lines[1:3]) == {done.id, created.id}
    assert lines[-1].startswith("Total reclaimed space: ") and lines[-1] != "Total reclaimed space: 0B"
    assert [c.id for c in engine.containers()] == [running]
    assert berth("container", "ls", "-q").stdout == running[:12] + "\n"
    assert berth("container", "inspect", "-f", "{{.Name}}", "keep").stdout == "/keep\n"
    assert berth("container", "nonsense").returncode == 125


def test_diff_lists_added_changed_deleted(engine: Engine, berth: Any) -> None:
    _sleeper(engine, "df")
    engine.exec("df", ["sh", "-c", "echo new > /newfile; mkdir -p /d/e; echo x >> /etc/passwd; rm /bin/ls"])
    r = berth("diff", "df")
    assert r.returncode == 0
    lines = r.stdout.splitlines()
    for expected in ("A /newfile", "A /d", "A /d/e", "C /etc", "C /etc/passwd", "D /bin/ls"):
        assert expected in lines
    assert lines == sorted(lines, key=lambda s: s[2:])


def test_export(engine: Engine, berth: Any, tmp_path: Path) -> None:
    _sleeper(engine, "exp")
    engine.exec("exp", ["sh", "-c", "echo exported > /marker; rm /bin/ls"])
    out = tmp_path / "fs.tar"
    assert berth("export", "-o", str(out), "exp").returncode == 0
    with tarfile.open(out) as tf:
        names = set(tf.getnames())
        marker = tf.extractfile("marker")
        assert marker is not None and marker.read() == b"exported\n"
        assert tf.getmember("bin/sh").issym() or tf.getmember("bin/sh").isfile()
    assert "bin/busybox" in names and "bin/ls" not in names and "etc/passwd" in names
    # the library call writes to any binary stream
    buf = io.BytesIO()
    engine.export("exp", buf)
    buf.seek(0)
    with tarfile.open(fileobj=buf) as tf:
        assert "marker" in tf.getnames()


def test_commit_then_run(engine: Engine, berth: Any) -> None:
    _sleeper(engine, "cm", env=["KEPT=yes"])
    engine.exec("cm", ["sh", "-c", "echo committed > /hello; rm /bin/ls; mkdir /newdir"])
    r = berth("commit", "-m", "my message", "-c", 'CMD ["sh", "-c", "cat /hello; echo $KEPT $EXTRA"]',
              "-c", "ENV EXTRA=1", "-c", "WORKDIR /newdir", "cm", "localhost/committed:v1")
    assert r.returncode == 0, r.stderr
    image_id = r.stdout.strip()
    assert image_id.startswith("sha256:")
    info = json.loads(berth("inspect", "localhost/committed:v1").stdout)[0]
    assert info["Config"]["Cmd"] == ["sh", "-c", "cat /hello; echo $KEPT $EXTRA"]
    assert info["Config"]["WorkingDir"] == "/newdir"
    history = engine.image_store.history("localhost/committed:v1")
    assert len(history) == 2 and any(h.get("Comment") == "my message" or h.get("comment") == "my message"
                                     for h in history)
    # it runs, with the new layer (the file added, the file deleted) under it
    c = engine.run("localhost/committed:v1", pull="never")
    assert engine.wait(c.id, 20) == 0
    assert "".join(e["log"] for e in engine.logs(c.id)) == "committed\nyes 1\n"
    r = berth("run", "--rm", "localhost/committed:v1", "sh", "-c", "pwd; test -e /bin/ls || echo gone")
    assert r.stdout == "/newdir\ngone\n"
    # commit of a stopped container, without a name: an untagged image
    engine.stop("cm", 1)
    r = berth("commit", "cm")
    assert r.returncode == 0 and r.stdout.startswith("sha256:")
    assert berth("commit", "-c", "BOGUS x", "cm").returncode == 125
    assert berth("commit", "nosuch").returncode == 125


def test_cp_both_directions(engine: Engine, berth: Any, tmp_path: Path) -> None:
    _sleeper(engine, "cp")
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "a.txt").write_text("a\n")
    (src / "link").symlink_to("/etc/passwd")
    (tmp_path / "file.txt").write_text("file\n")
    assert berth("cp", str(tmp_path / "file.txt"), "cp:/tmp/").returncode == 0
    assert berth("cp", str(tmp_path / "file.txt"), "cp:/renamed.txt").returncode == 0
    assert berth("cp", str(src), "cp:/").returncode == 0
    out = io.StringIO()
    script = "cat /tmp/file.txt /renamed.txt /src/sub/a.txt; readlink /src/link"
    r = berth("exec", "cp", "sh", "-c", script)
    out.write(r.stdout)
    assert out.getvalue() == "file\nfile\na\n/etc/passwd\n"
    # and back
    engine.exec("cp", ["sh", "-c", "mkdir -p /data/deep; echo deep > /data/deep/f; ln -s f /data/deep/l"])
    assert berth("cp", "cp:/data", str(tmp_path / "back")).returncode == 0
    assert (tmp_path / "back" / "deep" / "f").read_text() == "deep\n"
    assert (tmp_path / "back" / "deep" / "l").is_symlink()
    (tmp_path / "into").mkdir()
    assert berth("cp", "cp:/etc/passwd", str(tmp_path / "into")).returncode == 0
    assert (tmp_path / "into" / "passwd").read_text().startswith("root:x:0:0:")
    r = berth("cp", "cp:/no/such/file", str(tmp_path / "x"))
    assert r.returncode == 125 and "could not find" in r.stderr
    assert berth("cp", str(tmp_path / "nosuch"), "cp:/tmp/").returncode == 125
    assert berth("cp", str(tmp_path / "a"), str(tmp_path / "b")).returncode == 125


def test_cp_cannot_be_led_to_host_files_by_symlinks(engine: Engine, berth: Any, tmp_path: Path) -> None:
    """Symlinks planted in the container point at host paths; cp follows them inside the container."""
    secret = tmp_path / "secret"
    secret.write_text("host secret\n")
    hostdir = tmp_path / "hostdir"
    hostdir.mkdir()
    _sleeper(engine, "evil")
    plant = (f"ln -s {secret} /leak; ln -s {hostdir} /dirlink; ln -s ../../../../../{hostdir} /rel; "
             f"mkdir -p {tmp_path}; ln -s {secret} /ok-inside")
    assert engine.exec("evil", ["sh", "-c", plant]) == 0
    # reading: the link's target does not exist in the container, so there is nothing to copy
    r = berth("cp", "evil:/leak", str(tmp_path / "got"))
    assert r.returncode == 125 and not (tmp_path / "got").exists()
    r = berth("cp", "evil:/dirlink/..", str(tmp_path / "got2"))
    assert not (tmp_path / "got2" / "secret").exists()
    # writing through a directory symlink: never lands in the host directory
    for dest in ("evil:/dirlink/pwned", "evil:/rel/pwned", "evil:/dirlink/"):
        berth("cp", str(secret), dest)
        assert not (hostdir / "pwned").exists() and not (hostdir / "secret").exists()
    # writing through a file symlink: the container's file of that name is written, not the host's
    (tmp_path / "payload").write_text("payload\n")
    assert berth("cp", str(tmp_path / "payload"), "evil:/ok-inside").returncode == 0
    assert secret.read_text() == "host secret\n"
    assert engine.exec("evil", ["grep", "-q", "payload", str(secret)]) == 0  # the container's own copy


@pytest.mark.parametrize("runtime", ["runc", "crun"])
def test_exec_through_other_runtimes(engine: Engine, berth: Any, runtime: str) -> None:
    import shutil

    if shutil.which(runtime) is None:
        pytest.skip(f"{runtime} is not installed")
    from berth.errors import BerthError

    name = f"other-{runtime}"
    try:
        _sleeper(engine, name, runtime=runtime)
    except BerthError as e:
        pytest.skip(f"{runtime} cannot run containers here: {e}")
    assert berth("exec", name, "sh", "-c", "exit 4").returncode == 4
    assert berth("exec", name, "no-such-command").returncode == 127
    assert berth("exec", name, "/etc").returncode == 126
    r = berth("exec", "-t", name, "sh", "-c", "tty; exit 5")
    assert r.returncode == 5 and r.stdout.strip().startswith("/dev/pts/")
    assert "sleep 300" in berth("top", name).stdout
    assert berth("pause", name).returncode == 0 and berth("unpause", name).returncode == 0
    assert berth("update", "--memory", "32m", name).returncode == 0
