"""Helpers any test module may import (conftest.py files cannot be imported reliably: several share
that name)."""

from __future__ import annotations

import os
import shutil

import pytest


def need_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: namespaces, mounts and cgroups are real here")


def need_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (scripts/install installs it)")
    return path


SRC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src")


def run_python(code: str, timeout: float = 30) -> str:
    """``code`` in a fresh interpreter (-IS: what it imports is its own) with berth's sources on its
    path; its stdout. A failure fails the test with the interpreter's stderr."""
    import subprocess
    import sys

    res = subprocess.run([sys.executable, "-IS", "-c", f"import sys; sys.path.insert(0, {SRC!r})\n{code}"],
                         capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, res.stderr
    return res.stdout
