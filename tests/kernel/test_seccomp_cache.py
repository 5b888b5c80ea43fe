"""The compiled-filter cache of berth.kernel.seccomp: what a hit skips, and what makes it miss.

A hit must cost a file read and two stats (no validation, no libseccomp, no hash module), yet an
entry is used only for the very profile it was made from, by the same generation options, on the
same kernel release and machine, with the same libseccomp file chosen the same way.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from berth.errors import InvalidArgument
from berth.kernel import seccomp

pytestmark = pytest.mark.root  # libseccomp generates the programs

PROFILE = {"defaultAction": "SCMP_ACT_ALLOW",
           "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO"}]}


def entry(cache: Path) -> bytes:
    (name,) = os.listdir(cache)
    return (cache / name).read_bytes()


def test_a_hit_loads_no_library_and_no_hash_module(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    program = seccomp.prepare(PROFILE, str(cache)).program
    code = (
        "import sys\nfrom berth.kernel import seccomp\n"
        f"f = seccomp.prepare({PROFILE!r}, {str(cache)!r})\n"
        "loaded = [m for m in ('ctypes', '_sha256', '_hashlib', 'hashlib', 'json') if m in sys.modules]\n"
        "assert not loaded, loaded\nassert seccomp._LIB is None\nsys.stdout.buffer.write(f.program)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True).stdout
    assert out == program


def test_an_invalid_profile_is_never_stored(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    bad = {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["mkdir"], "action": "nope"}]}
    with pytest.raises(InvalidArgument):
        seccomp.prepare(bad, str(cache))
    assert not cache.exists() or not os.listdir(cache)


def test_the_entry_records_the_library_file(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    seccomp.prepare(PROFILE, str(cache))
    lib_path, _, rest = entry(cache).partition(b"\0")
    assert b"libseccomp.so" in lib_path and os.path.isfile(lib_path)
    st = os.stat(lib_path)
    assert f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}".encode() in rest
    assert seccomp._GENERATION.encode() in rest and b"optimize=2" in rest
    assert os.uname().release.encode() in rest


@pytest.mark.parametrize("change", ["profile", "generation", "kernel", "ld_library_path", "ld_cache", "library"])
def test_each_input_of_the_program_makes_a_miss(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               change: str) -> None:
    """After the change the stale entry is not used: the program is built again and stored anew."""
    cache = tmp_path / "cache"
    ld_cache = tmp_path / "ld.so.cache"
    ld_cache.write_bytes(b"x")
    monkeypatch.setattr(seccomp, "_LD_CACHE", str(ld_cache))
    profile: dict[str, Any] = dict(PROFILE)
    seccomp.prepare(profile, str(cache))
    before = set(os.listdir(cache))
    stale = entry(cache)
    if change == "profile":
        profile["syscalls"] = [{"names": ["mkdir"], "action": "SCMP_ACT_ERRNO"}]
    elif change == "generation":
        monkeypatch.setattr(seccomp, "_GENERATION", seccomp._GENERATION + " changed")
    elif change == "kernel":
        real = os.uname()
        fake = os.uname_result((real.sysname, real.nodename, real.release + "-other", real.version, real.machine))
        monkeypatch.setattr(os, "uname", lambda: fake)
    elif change == "ld_library_path":
        monkeypatch.setenv("LD_LIBRARY_PATH", str(tmp_path))
    elif change == "ld_cache":
        os.utime(ld_cache, ns=(0, 0))
    else:  # the entry names another libseccomp file than the one it was made with
        copy = tmp_path / "libseccomp.so.2"
        lib_path = stale.partition(b"\0")[0]
        copy.write_bytes(Path(os.fsdecode(lib_path)).read_bytes())
        forged = bytes(copy) + stale[len(lib_path):]
        (cache / next(iter(before))).write_bytes(forged)
        stale = forged
    assert seccomp._cached(str(cache / next(iter(before))), repr(profile).encode()) is None
    seccomp.prepare(profile, str(cache))
    entries = [(cache / name).read_bytes() for name in os.listdir(cache)]
    assert stale not in entries or change == "profile"
    if change == "profile":
        assert set(os.listdir(cache)) > before  # another profile, another entry


def test_two_berth_installations_keep_an_entry_each(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Entries are named by berth's seccomp module too: two installations (their module files
    differ) sharing a runtime root do not remake each other's entry on every container start."""
    cache = tmp_path / "cache"
    seccomp.prepare(PROFILE, str(cache))
    monkeypatch.setattr(seccomp, "_CODE_ID", "another-installation")
    seccomp.prepare(PROFILE, str(cache))
    assert len(os.listdir(cache)) == 2
    before = {name: (cache / name).stat().st_mtime_ns for name in os.listdir(cache)}
    seccomp.prepare(PROFILE, str(cache))  # a hit: nothing rewritten
    monkeypatch.undo()
    seccomp.prepare(PROFILE, str(cache))
    assert {name: (cache / name).stat().st_mtime_ns for name in os.listdir(cache)} == before
