"""berth.codebundle: modules served from one compiled file, never stale."""

from __future__ import annotations

import subprocess
import sys
from importlib.util import cache_from_source
from pathlib import Path

import pytest

from berth.codebundle import write

pytestmark = pytest.mark.unit

SRC = str(Path(__file__).resolve().parents[1] / "src")


def make_package(root: Path) -> Path:
    pkg = root / "bpkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("NAME = 'bpkg'\n")
    (pkg / "a.py").write_text("from . import b\nVALUE = 'a' + b.VALUE\n")
    (pkg / "b.py").write_text("VALUE = 'b'\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "c.py").write_text("from bpkg.a import VALUE\nVALUE = VALUE + 'c'\n")
    return pkg


def run(root: Path, bundle: Path, code: str) -> str:
    """``code`` in a fresh interpreter with the bundle installed; its stdout."""
    prog = (f"import sys; sys.path[:0] = [{SRC!r}, {str(root)!r}]\n"
            f"from berth.codebundle import Bundle, install; install({str(bundle)!r})\n" + code)
    res = subprocess.run([sys.executable, "-IS", "-c", prog], capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stderr
    return res.stdout


def test_modules_come_from_the_bundle_with_their_usual_attributes(tmp_path: Path) -> None:
    pkg = make_package(tmp_path)
    bundle = tmp_path / "code.bundle"
    assert write(str(pkg), str(bundle)) == 5
    out = run(tmp_path, bundle, (
        "import bpkg.sub.c as c, bpkg\n"
        "print(c.VALUE, bpkg.NAME, type(c.__spec__.loader).__name__, c.__file__, bpkg.__path__[0], c.__cached__)\n"))
    value, name, loader, file, path, cached = out.split()
    assert (value, name, loader) == ("abc", "bpkg", "Bundle")
    assert file == str(pkg / "sub" / "c.py") and path == str(pkg)
    assert cached == cache_from_source(file)


def test_an_edited_module_is_loaded_from_its_source(tmp_path: Path) -> None:
    pkg = make_package(tmp_path)
    bundle = tmp_path / "code.bundle"
    write(str(pkg), str(bundle))
    (pkg / "b.py").write_text("VALUE = 'edited'\n")
    out = run(tmp_path, bundle, "import bpkg.a as a, bpkg.b as b\n"
                                "print(a.VALUE, type(a.__spec__.loader).__name__, type(b.__spec__.loader).__name__)\n")
    assert out.split() == ["aedited", "Bundle", "SourceFileLoader"]


def test_a_closed_or_reused_descriptor_is_opened_again_or_left_to_the_path(tmp_path: Path) -> None:
    """The runtime's child closes every inherited descriptor: the bundle opens its file again, or,
    when the path now holds another file, lets the standard machinery load from source."""
    pkg = make_package(tmp_path)
    bundle = tmp_path / "code.bundle"
    write(str(pkg), str(bundle))
    out = run(tmp_path, bundle, (
        "import os\n"
        "b = next(f for f in sys.meta_path if isinstance(f, Bundle))\n"
        "old = b.fd; os.close(old); squatter = os.open(os.devnull, os.O_RDONLY)\n"
        "assert squatter == old\n"  # the bundle's number now names /dev/null
        "import bpkg.b\n"
        "os.close(b.fd); os.close(squatter)\n"  # closed and not reused: opened again
        "import bpkg.sub\n"
        f"os.replace({str(bundle)!r}, {str(bundle)!r} + '.old'); os.close(b.fd)\n"
        f"open({str(bundle)!r}, 'wb').write(b'another file')\n"
        "import bpkg.a\n"
        "fds = len(os.listdir('/proc/self/fd'))\n"
        "import bpkg.sub.c\n"  # the bundle gave up: no descriptor opened again and again
        "same = fds == len(os.listdir('/proc/self/fd'))\n"
        "print(type(bpkg.b.__spec__.loader).__name__, type(bpkg.sub.__spec__.loader).__name__,\n"
        "      type(bpkg.a.__spec__.loader).__name__, bpkg.a.VALUE, b.index, same)\n"))
    assert out.split() == ["Bundle", "Bundle", "SourceFileLoader", "ab", "{}", "True"]


def test_a_missing_or_foreign_bundle_changes_nothing(tmp_path: Path) -> None:
    make_package(tmp_path)
    for bundle in (tmp_path / "absent.bundle", tmp_path / "foreign.bundle"):
        if bundle.name.startswith("foreign"):
            bundle.write_bytes(b"not a bundle\n" * 10)
        out = run(tmp_path, bundle, "import bpkg.a as a\n"
                                    "print(a.VALUE, any(isinstance(f, Bundle) for f in sys.meta_path))\n")
        assert out.split() == ["ab", "False"]


def test_the_installed_scripts_load_berth_from_the_bundle() -> None:
    """scripts/install writes the bundle beside the venv and the berth scripts install it (a module
    edited since is simply loaded from its source)."""
    bin_dir = Path(sys.executable).parent
    bundle = bin_dir.parent / "berth-code.bundle"
    if not bundle.exists():
        pytest.skip("berth is not installed through scripts/install here")
    from berth.codebundle import Bundle

    assert {"berth.cli.main", "berth.engine.engine", "berth.runtime.lifecycle"} <= set(Bundle(str(bundle)).index)
    for script in ("berth", "berth-runtime"):
        assert f"install({str(bundle)!r})" in (bin_dir / script).read_text()
    assert "codebundle" not in (bin_dir / "berth-monitor").read_text()  # it stays as small as it can
