"""``berth build`` end to end: real RUN containers, layers, the cache, reproducibility, failures."""

from __future__ import annotations

import io
import json
import re
import tarfile
from pathlib import Path

import pytest

from berth.engine.engine import Engine
from berth.errors import NotFound
from build.conftest import BASE, write_context

pytestmark = [pytest.mark.root, pytest.mark.integration]

MULTI = f"""# syntax=docker/dockerfile:1
ARG BASE={BASE}
FROM $BASE AS builder
ARG GREETING=hello
WORKDIR /work
COPY src/ ./src/
RUN <<EOF
echo "$GREETING from a heredoc" > /work/out.txt
cat /work/src/a.txt >> /work/out.txt
ls /work/src >> /work/out.txt
EOF

FROM ${{BASE}}
ENV APP=/app \\
    MODE=prod
COPY --from=builder /work/out.txt $APP/
COPY conf.txt ${{APP}}/conf.txt
LABEL org.example.name="demo app"
CMD ["cat", "/app/out.txt", "/app/conf.txt"]
"""


def _multi(tmp_path: Path) -> Path:
    return write_context(tmp_path / "ctx", {
        "Dockerfile": MULTI, "src/a.txt": "file a\n", "src/secret.key": "do not copy\n",
        "conf.txt": "conf v1\n", ".dockerignore": "**/*.key\n",
    })


def _steps(out: str) -> list[tuple[str, bool]]:
    """(instruction, cached) per step of a build's output."""
    steps = []
    lines = out.splitlines()
    for i, line in enumerate(lines):
        m = re.match(r"Step \d+/\d+ : (.*)", line)
        if m:
            rest = next((x for x in lines[i + 1:] if x.startswith(" ---> ") and "Running in" not in x), "")
            steps.append((m.group(1), "CACHED" in rest))
    return steps


def test_multi_stage_build_arg_heredoc_dockerignore(berth, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    ctx = _multi(tmp_path)
    r = berth("build", "-t", "demo:multi", "--build-arg", "GREETING=hi", "--iidfile", str(tmp_path / "iid"),
              str(ctx))
    assert r.returncode == 0, r.stdout + r.stderr
    assert re.search(r"Step 1/\d+ : ARG|Step 1/\d+ : FROM", r.stdout)
    assert re.search(r" ---> [0-9a-f]{12} \d+\.\d\ds", r.stdout)
    iid = (tmp_path / "iid").read_text()
    assert iid.startswith("sha256:")
    run = berth("run", "--rm", "demo:multi")
    assert run.returncode == 0, run.stderr
    assert run.stdout == "hi from a heredoc\nfile a\na.txt\nconf v1\n"  # secret.key was ignored


def test_cache_rules(berth, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    ctx = _multi(tmp_path)
    first = berth("build", "-t", "demo:cache", str(ctx))
    assert first.returncode == 0, first.stdout + first.stderr
    again = berth("build", "-t", "demo:cache", str(ctx))
    assert again.returncode == 0, again.stderr
    steps = _steps(again.stdout)
    assert steps and all(cached for ins, cached in steps if not ins.startswith(("FROM", "ARG")))
    # the same image, not a rebuilt one
    assert first.stdout.splitlines()[-1] == again.stdout.splitlines()[-1]

    # change a file copied by the second stage's second COPY: the steps before it stay cached
    (ctx / "conf.txt").write_text("conf v2\n")
    changed = berth("build", "-t", "demo:cache", str(ctx))
    assert changed.returncode == 0, changed.stderr
    cached = dict(_steps(changed.stdout))
    assert cached["RUN <<EOF"] and cached["COPY --from=builder /work/out.txt $APP/"]
    assert not cached["COPY conf.txt ${APP}/conf.txt"]
    assert not cached['LABEL org.example.name="demo app"']
    assert berth("run", "--rm", "demo:cache").stdout.endswith("conf v2\n")

    # change a file of the first stage: its COPY and RUN rebuild
    (ctx / "src/a.txt").write_text("file a2\n")
    changed = dict(_steps(berth("build", "-t", "demo:cache", str(ctx)).stdout))
    assert changed["WORKDIR /work"] and not changed["COPY src/ ./src/"] and not changed["RUN <<EOF"]

    nocache = berth("build", "--no-cache", "-t", "demo:cache", str(ctx))
    assert nocache.returncode == 0
    assert "CACHED" not in nocache.stdout


def test_reproducible_digest(berth, engine: Engine, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    ctx = write_context(tmp_path / "ctx", {
        "Dockerfile": f"FROM {BASE}\nCOPY . /data/\nRUN mkdir -p /out && echo built > /out/f && touch /out/g\n"
                      "ENV X=1\nCMD [\"cat\", \"/out/f\"]\n",
        "a.txt": "a\n", "d/b.txt": "b\n",
    })
    env = {"SOURCE_DATE_EPOCH": "1700000000"}
    ids = []
    for _ in range(2):
        r = berth("build", "--no-cache", "-q", str(ctx), env=env)
        assert r.returncode == 0, r.stderr
        ids.append(r.stdout.strip().splitlines()[-1])
    assert ids[0] == ids[1]
    img = engine.image_store.get(ids[0])
    assert engine.image_store.config(img).created == "2023-11-14T22:13:20Z"
    digests = {engine.image_store.get(i).manifest_digest for i in ids}
    assert len(digests) == 1


def test_failing_run_stops_and_tags_nothing(berth, engine: Engine, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    ctx = write_context(tmp_path / "ctx", {
        "Dockerfile": f"FROM {BASE}\nRUN echo before-failing; exit 3\nRUN echo never\n",
    })
    r = berth("build", "-t", "demo:failed", str(ctx))
    assert r.returncode == 3
    assert "before-failing" in r.stdout
    assert "never" not in r.stdout
    assert "Dockerfile:2" in r.stderr and "non-zero code: 3" in r.stderr
    with pytest.raises(NotFound):
        engine.image_store.get("demo:failed")
    assert not [c for c in engine.containers() if c.name.startswith("berth-build-")]


@pytest.mark.parametrize(("dockerfile", "message"), [
    (f"FROM {BASE}\nRUN true\nBOGUS thing\n", "Dockerfile:3: unknown instruction: BOGUS"),
    (f"FROM {BASE}\nCOPY missing.txt /x\n", "Dockerfile:2: COPY"),
    (f"FROM {BASE}\nCOPY --from=nostage /a /b\n", "--from 'nostage' is neither a stage"),
    (f"FROM {BASE}\nCOPY --from=3 /a /b\n", "Dockerfile:2: COPY: stage 3 is not an earlier stage"),
    (f"FROM {BASE} AS one\nRUN true\n", "target stage 'two' could not be found"),
    (f"FROM {BASE}\nRUN --mount=type=secret,id=x true\n", "Dockerfile:2: RUN --mount=type=secret is not supported"),
    (f"FROM {BASE}\nRUN --network=bridge true\n", "Dockerfile:2: RUN --network=bridge: use default, none or host"),
    (f"FROM {BASE}\nRUN --security=insecure true\n", "RUN --security=insecure is not supported"),
    (f"FROM {BASE}\nCOPY --parents a /b\n", "COPY --parents is not supported"),
    (f"FROM {BASE}\nADD --checksum=sha256:00 a /b\n", "ADD --checksum applies to URLs only"),
    (f"FROM {BASE}\nADD git@example.com:x/y.git /src\n", "ADD from a git repository is not supported"),
    ("FROM nosuchimage\n", "FROM 'nosuchimage' is neither a stage of this Dockerfile nor an image"),
])
def test_bad_input_clear_error_no_image(berth, engine: Engine, tmp_path: Path, dockerfile: str,  # type: ignore[no-untyped-def]
                                        message: str) -> None:
    ctx = write_context(tmp_path / "ctx", {"Dockerfile": dockerfile})
    (ctx / "a").write_text("a")
    args = ["build", "-t", "demo:bad", "--pull=never"]  # an unknown name is never looked up on the internet
    if "'two'" in message:
        args += ["--target", "two"]
    r = berth(*args, str(ctx))
    assert r.returncode == 125, r.stdout + r.stderr
    assert message in r.stderr
    with pytest.raises(NotFound):
        engine.image_store.get("demo:bad")


def test_config_as_docker_writes_it(berth, engine: Engine, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    df = f"""FROM {BASE} AS base
ONBUILD RUN echo triggered > /onbuild.txt
FROM base
SHELL ["/bin/sh", "-ec"]
ENTRYPOINT ["/bin/sh", "-c"]
CMD ["echo $GREETING"]
ENV GREETING=hey
WORKDIR /srv
WORKDIR sub
USER 1000:1000
EXPOSE 80 53/udp
VOLUME /data
STOPSIGNAL SIGINT
HEALTHCHECK --interval=5s --retries=2 CMD true
LABEL a=b
"""
    ctx = write_context(tmp_path / "ctx", {"Dockerfile": df})
    r = berth("build", "-t", "demo:config", "--label", "extra=yes", str(ctx))
    assert r.returncode == 0, r.stdout + r.stderr
    store = engine.image_store
    cfg = json.loads(store.config_bytes(store.get("demo:config")))
    c = cfg["config"]
    assert c["Entrypoint"] == ["/bin/sh", "-c"] and c["Cmd"] == ["echo $GREETING"]
    assert "GREETING=hey" in c["Env"]
    assert c["WorkingDir"] == "/srv/sub" and c["User"] == "1000:1000"
    assert c["ExposedPorts"] == {"80/tcp": {}, "53/udp": {}}
    assert c["Volumes"] == {"/data": {}}
    assert c["StopSignal"] == "SIGINT"
    assert c["Healthcheck"] == {"Test": ["CMD-SHELL", "true"], "Interval": 5_000_000_000, "Retries": 2}
    assert c["Labels"] == {"a": "b", "extra": "yes"}
    assert c.get("OnBuild") in (None, [])  # the trigger ran in the child and is not inherited
    assert any(h.get("empty_layer") for h in cfg["history"])
    assert len([h for h in cfg["history"] if not h.get("empty_layer")]) == len(cfg["rootfs"]["diff_ids"])
    out = berth("run", "--rm", "--user", "0", "--entrypoint", "cat", "demo:config", "/onbuild.txt")
    assert out.stdout == "triggered\n", out.stderr
    assert berth("run", "--rm", "demo:config").stdout == "hey\n"


def test_copy_add_options_and_stdin_context(berth, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    arch = io.BytesIO()
    with tarfile.open(fileobj=arch, mode="w:gz") as tf:
        data = b"from the tarball\n"
        ti = tarfile.TarInfo("pkg/readme.txt")
        ti.size = len(data)
        tf.addfile(ti, io.BytesIO(data))
    df = f"""FROM {BASE}
COPY --chown=1000:2000 --chmod=0750 x*.txt /opt/
ADD pkg.tar.gz /srv/
COPY <<EOF /etc/inline.conf
inline $HOME
EOF
CMD ["sh", "-c", "stat -c '%u %g %a %n' /opt/x1.txt /opt/x2.txt; cat /srv/pkg/readme.txt /etc/inline.conf"]
"""
    ctx = write_context(tmp_path / "ctx", {"Dockerfile": df, "x1.txt": "1", "x2.txt": "2"})
    (ctx / "pkg.tar.gz").write_bytes(arch.getvalue())
    stream = io.BytesIO()
    with tarfile.open(fileobj=stream, mode="w") as tf:
        tf.add(ctx, arcname=".")
    r = berth("build", "-t", "demo:copy", "-", input=stream.getvalue())
    assert r.returncode == 0, (r.stdout + r.stderr)
    out = berth("run", "--rm", "demo:copy")
    assert out.stdout == ("1000 2000 750 /opt/x1.txt\n1000 2000 750 /opt/x2.txt\nfrom the tarball\n"
                          "inline $HOME\n"), out.stderr
