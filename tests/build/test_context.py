"""The build context and .dockerignore matching (no root)."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from berth.build.context import Context, Ignore
from berth.errors import InvalidArgument, NotFound

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(("patterns", "path", "excluded"), [
    (["*.log"], "a.log", True),
    (["*.log"], "d/a.log", False),
    (["**/*.log"], "d/e/a.log", True),
    (["**/*.log"], "a.log", True),
    (["build"], "build/x/y", True),
    (["/build/"], "build/x", True),
    (["*.md", "!README.md"], "README.md", False),
    (["*.md", "!README.md"], "NOTES.md", True),
    (["!README.md", "*.md"], "README.md", True),
    (["docs/**", "!docs/keep/**"], "docs/keep/a.txt", False),
    (["a?c"], "abc", True),
    (["[a-c]x"], "bx", True),
    (["# comment", ""], "# comment", False),
])
def test_ignore_rules(patterns: list[str], path: str, excluded: bool) -> None:
    assert Ignore(patterns).excluded(path) is excluded


def _ctx(tmp_path: Path) -> Context:
    for name in ("app/main.py", "app/test.pyc", "secret.key", "docs/a.md", "docs/keep.md", "x1.txt", "x2.txt"):
        p = tmp_path / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(name)
    (tmp_path / ".dockerignore").write_text("**/*.pyc\n*.key\ndocs\n!docs/keep.md\n")
    return Context(str(tmp_path))


def test_walk_honours_ignore(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path)
    files = ctx.walk("")
    assert "app/main.py" in files and "app/test.pyc" not in files
    assert "secret.key" not in files
    assert "docs/keep.md" in files and "docs/a.md" not in files


def test_resolve_wildcards_and_missing(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path)
    assert ctx.resolve("x*.txt") == ["x1.txt", "x2.txt"]
    assert ctx.resolve("./app") == ["app"]
    with pytest.raises(NotFound):
        ctx.resolve("secret.key")
    with pytest.raises(NotFound):
        ctx.resolve("nope")
    with pytest.raises(NotFound):
        ctx.resolve("*.none")


def test_context_from_tar() -> None:
    """A context is a plain archive: names that would be whiteouts in a layer are files here."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for name in ("Dockerfile", ".wh.notes", "sub/.wh..wh..opq"):
            data = b"FROM scratch\n"
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
    buf.seek(0)
    ctx = Context.from_tar(buf)
    try:
        for name in ("Dockerfile", ".wh.notes", "sub/.wh..wh..opq"):
            assert Path(ctx.path(name)).read_bytes() == b"FROM scratch\n"
    finally:
        ctx.close()


def test_context_from_a_hostile_tar_stays_inside(tmp_path: Path) -> None:
    """A context on stdin is untrusted: a name climbing out, or a file written through a symlink to
    the host, must not reach outside the unpacked context (gzip-compressed here)."""
    import gzip

    outside = tmp_path / "outside"
    outside.mkdir()
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tf:
        link = tarfile.TarInfo("escape")
        link.type, link.linkname = tarfile.SYMTYPE, str(outside)
        tf.addfile(link)
        for name in ("escape/planted", "../../planted", "Dockerfile"):
            data = b"FROM scratch\n"
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
    try:
        ctx = Context.from_tar(io.BytesIO(gzip.compress(raw.getvalue())))
    except InvalidArgument:
        pass  # refusing the archive is fine too
    else:
        try:
            assert Path(ctx.path("Dockerfile")).read_bytes() == b"FROM scratch\n"
        finally:
            ctx.close()
    assert list(outside.iterdir()) == []
    assert not (tmp_path.parent / "planted").exists()
