"""The Dockerfile language end to end: what the parser reads is what the image gets."""

from __future__ import annotations

from pathlib import Path

import pytest

from build.conftest import BASE, write_context

pytestmark = [pytest.mark.root, pytest.mark.integration]


def test_escape_shell_heredocs_substitution_chown(berth, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    df = f"""# escape=`
FROM {BASE}
ARG UNSET
ARG EMPTY=
ARG SET=value
ENV A=${{UNSET:-dflt}} B=${{SET:+alt}} C=${{EMPTY:+alt}}x D=${{SET:-no}}
WORKDIR /${{UNSET:-work}}
RUN echo one `
    two > cont.txt
RUN <<EOT
echo "heredoc $SET" > here.txt
EOT
RUN cat > multi.txt <<-ONE && cat >> multi.txt <<'TWO'
	tab-stripped $SET
	ONE
literal $SET
TWO
COPY --chown=app:extra <<EOF /work/owned.txt
owned
EOF
SHELL ["/bin/sh", "-c", "echo custom-shell > /work/shell.txt; eval \\"$1\\"", "sh"]
RUN echo after-shell > after.txt
CMD ["sh", "-c", "echo $A $B $C $D; cat cont.txt here.txt multi.txt shell.txt after.txt; stat -c '%U:%G' owned.txt"]
"""
    ctx = write_context(tmp_path / "ctx", {"Dockerfile": df})
    r = berth("build", "-t", "lang:1", str(ctx))
    assert r.returncode == 0, r.stdout + r.stderr
    out = berth("run", "--rm", "lang:1")
    assert out.stdout.splitlines() == [
        "dflt alt x value", "one two", "heredoc value", "tab-stripped value", "literal $SET", "custom-shell",
        "after-shell", "app:extra",
    ], out.stdout + out.stderr


def test_quiet_failing_run_shows_its_output(berth, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    ctx = write_context(tmp_path / "ctx", {"Dockerfile": f"FROM {BASE}\nRUN echo quiet-output; exit 4\n"})
    r = berth("build", "-q", "-t", "lang:fail", str(ctx))
    assert r.returncode == 4
    assert r.stdout == ""
    assert "quiet-output" in r.stderr and "returned a non-zero code: 4" in r.stderr
    assert berth("image", "inspect", "lang:fail").returncode != 0


def test_platform_args_proxy_args_and_unused_build_args(berth, engine, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import json
    import os

    from berth.oci.image import normalize_arch

    df = f"""FROM --platform=$BUILDPLATFORM {BASE}
ARG TARGETARCH
RUN echo "$TARGETARCH $http_proxy" > /arch.txt
"""
    ctx = write_context(tmp_path / "ctx", {"Dockerfile": df})
    r = berth("build", "-t", "lang:arch", "--build-arg", "UNUSED=1", "--build-arg", "http_proxy=http://127.0.0.1:9",
              str(ctx))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "[Warning] One or more build-args ['UNUSED'] were not consumed" in r.stdout
    arch = normalize_arch(os.uname().machine)[0]
    assert berth("run", "--rm", "lang:arch", "cat", "/arch.txt").stdout == f"{arch} http://127.0.0.1:9\n"
    history = json.loads(engine.image_store.config_bytes(engine.image_store.get("lang:arch")))["history"]
    assert "127.0.0.1:9" not in json.dumps(history)  # proxies are not recorded


def test_copy_from_stage_index_and_image_with_wildcards(berth, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    df = f"""FROM {BASE}
RUN mkdir -p /out/sub && echo one > /out/a.conf && echo two > /out/b.conf && echo x > /out/sub/c.txt

FROM {BASE}
COPY --from=0 /out/*.conf /conf/
COPY --from=0 /out/sub /sub
COPY --from={BASE} /etc/pass* /etc/group /copied/
CMD ["sh", "-c", "cat /conf/a.conf /conf/b.conf /sub/c.txt; ls /copied"]
"""
    ctx = write_context(tmp_path / "ctx", {"Dockerfile": df})
    r = berth("build", "-t", "lang:from", str(ctx))
    assert r.returncode == 0, r.stdout + r.stderr
    assert berth("run", "--rm", "lang:from").stdout.split() == ["one", "two", "x", "group", "passwd"]
