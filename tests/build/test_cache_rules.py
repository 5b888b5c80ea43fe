"""The build cache's invalidation rules, one at a time, and what --target builds."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from build.conftest import BASE, write_context

pytestmark = [pytest.mark.root, pytest.mark.integration]

DOCKERFILE = f"""FROM {BASE}
ARG FLAVOUR=plain
WORKDIR /app
COPY app/ ./
RUN echo "$FLAVOUR" > /app/flavour
ENV MODE=prod
CMD ["cat", "/app/flavour"]
"""


def _cached(out: str) -> dict[str, bool]:
    """Each step's instruction → whether the cache served it."""
    steps: dict[str, bool] = {}
    current = None
    for line in out.splitlines():
        m = re.match(r"Step \d+/\d+ : (.*)", line)
        if m:
            current = m.group(1)
        elif current is not None and line.startswith(" ---> ") and "Running in" not in line:
            steps[current] = "CACHED" in line
            current = None
    return steps


def _build(berth, ctx: Path, *args: str) -> dict[str, bool]:  # type: ignore[no-untyped-def]
    r = berth("build", *args, str(ctx))
    assert r.returncode == 0, r.stdout + r.stderr
    return _cached(r.stdout)


@pytest.fixture
def ctx(tmp_path: Path) -> Path:
    return write_context(tmp_path / "ctx", {
        "Dockerfile": DOCKERFILE, "app/main.sh": "echo main\n", "app/notes.tmp": "scratch\n",
        ".dockerignore": "**/*.tmp\n",
    })


def test_unchanged_rebuild_is_all_cached(berth, ctx: Path) -> None:  # type: ignore[no-untyped-def]
    _build(berth, ctx)
    steps = _build(berth, ctx)
    assert all(cached for ins, cached in steps.items() if not ins.startswith(("FROM", "ARG")))


def test_ignored_file_change_keeps_cache(berth, ctx: Path) -> None:  # type: ignore[no-untyped-def]
    _build(berth, ctx)
    (ctx / "app/notes.tmp").write_text("changed\n")
    assert _build(berth, ctx)["COPY app/ ./"]


def test_mtime_only_change_keeps_cache(berth, ctx: Path) -> None:  # type: ignore[no-untyped-def]
    import os

    _build(berth, ctx)
    os.utime(ctx / "app/main.sh", (1, 1))
    assert _build(berth, ctx)["COPY app/ ./"]  # as Docker: contents and metadata, not times


def test_mode_change_rebuilds_from_the_copy(berth, ctx: Path) -> None:  # type: ignore[no-untyped-def]
    _build(berth, ctx)
    (ctx / "app/main.sh").chmod(0o755)
    steps = _build(berth, ctx)
    assert steps["WORKDIR /app"]
    assert not steps["COPY app/ ./"] and not steps['RUN echo "$FLAVOUR" > /app/flavour']


def test_new_file_rebuilds_from_the_copy(berth, ctx: Path) -> None:  # type: ignore[no-untyped-def]
    _build(berth, ctx)
    (ctx / "app/extra.sh").write_text("x\n")
    steps = _build(berth, ctx)
    assert steps["WORKDIR /app"] and not steps["COPY app/ ./"]


def test_build_arg_change_rebuilds_the_run_only(berth, ctx: Path) -> None:  # type: ignore[no-untyped-def]
    _build(berth, ctx)
    steps = _build(berth, ctx, "--build-arg", "FLAVOUR=spicy", "-t", "cache:spicy")
    assert steps["WORKDIR /app"] and steps["COPY app/ ./"]
    assert not steps['RUN echo "$FLAVOUR" > /app/flavour'] and not steps["ENV MODE=prod"]
    assert berth("run", "--rm", "cache:spicy").stdout == "spicy\n"
    # the same value again is served from the cache: the cache keeps both
    assert _build(berth, ctx, "--build-arg", "FLAVOUR=spicy")['RUN echo "$FLAVOUR" > /app/flavour']
    assert _build(berth, ctx)['RUN echo "$FLAVOUR" > /app/flavour']


def test_instruction_change_rebuilds_from_there(berth, ctx: Path) -> None:  # type: ignore[no-untyped-def]
    _build(berth, ctx)
    (ctx / "Dockerfile").write_text(DOCKERFILE.replace("ENV MODE=prod", "ENV MODE=dev"))
    steps = _build(berth, ctx)
    assert steps['RUN echo "$FLAVOUR" > /app/flavour'] and not steps["ENV MODE=dev"]
    assert not steps['CMD ["cat", "/app/flavour"]']


def test_base_image_change_rebuilds_everything(berth, ctx: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    base_ctx = write_context(tmp_path / "base", {"Dockerfile": f"FROM {BASE}\nRUN echo v1 > /base.txt\n"})
    assert berth("build", "-t", "cache-base:1", str(base_ctx)).returncode == 0
    (ctx / "Dockerfile").write_text(DOCKERFILE.replace(BASE, "cache-base:1"))
    _build(berth, ctx)
    (base_ctx / "Dockerfile").write_text(f"FROM {BASE}\nRUN echo v2 > /base.txt\n")
    assert berth("build", "-t", "cache-base:1", str(base_ctx)).returncode == 0
    steps = _build(berth, ctx)
    assert not any(cached for ins, cached in steps.items() if not ins.startswith(("FROM", "ARG")))


def test_cache_survives_across_processes_and_no_cache_bypasses(berth, ctx: Path) -> None:  # type: ignore[no-untyped-def]
    _build(berth, ctx)  # every build is a new process: the cache is on disk
    assert _build(berth, ctx)["COPY app/ ./"]
    assert not any(_build(berth, ctx, "--no-cache").values())


def test_target_builds_only_what_it_needs(berth, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    ctx = write_context(tmp_path / "ctx", {"Dockerfile": f"""FROM {BASE} AS deps
RUN echo deps > /deps.txt

FROM {BASE} AS unrelated
RUN echo unrelated > /u.txt

FROM {BASE} AS test
COPY --from=deps /deps.txt /
RUN echo test >> /deps.txt

FROM test AS final
RUN exit 1
"""})
    r = berth("build", "--target", "test", "-t", "cache:test", str(ctx))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "unrelated" not in r.stdout and "exit 1" not in r.stdout
    assert berth("run", "--rm", "cache:test", "cat", "/deps.txt").stdout == "deps\ntest\n"
