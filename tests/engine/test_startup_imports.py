"""`berth run --rm IMAGE true` stays free of heavy imports: its start-up time is a goal of the engine.

Each of these standard-library modules costs 1-10 ms to import and once cost every container start;
the hot path now does without them (strings instead of pathlib, berth.oci.jsonc instead of json,
character sets instead of re, the _sqlite3 extension without the sqlite3 package and its datetime
nor the functools and collections it pulls in, context manager classes instead of contextlib, prlimit
through ctypes instead of the resource extension, ...). A change that brings one back fails here,
naming who imported it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.root, pytest.mark.integration]

IMAGE = "localhost/busybox:latest"  # what the engine_dirs fixture imports
HEAVY = {"typing", "pathlib", "json", "re", "enum", "hashlib", "threading", "shutil", "tempfile",
         "subprocess", "platform", "ipaddress", "dataclasses", "inspect", "socket", "asyncio", "pyroute2",
         "urllib3", "rich", "zstandard", "isal", "sqlite3", "datetime", "contextlib", "calendar",
         "functools", "collections", "resource", "mmap"}


def test_run_path_imports_nothing_heavy(engine_dirs: tuple[str, str]) -> None:
    root, runroot = engine_dirs
    berth = Path(sys.executable).parent / "berth"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    argv = [str(berth), "--root", root, "--runroot", runroot, "run", "--rm", "--network", "none", IMAGE, "true"]
    first = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60)
    assert first.returncode == 0, first.stderr  # the image's layers are unpacked on first use
    res = subprocess.run([sys.executable, "-IS", "-X", "importtime", *argv], capture_output=True, text=True,
                         env=env, timeout=60)
    assert res.returncode == 0, res.stderr[-2000:]
    # -X importtime names every module imported, with its parents indented above it in the output.
    imported = {line.rsplit("|", 1)[1].strip() for line in res.stderr.splitlines()
                if line.startswith("import time:") and "cumulative" not in line}
    heavy = sorted(m for m in imported if m.split(".")[0] in HEAVY)
    assert not heavy, f"heavy modules on berth run's path: {heavy}\n{res.stderr[-4000:]}"
