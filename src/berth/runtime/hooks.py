"""OCI hooks: run at the lifecycle points the spec names, with the container state on stdin."""

from __future__ import annotations

import sys

from berth.errors import BerthError
from berth.oci import jsonc as json

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


def run_hooks(spec: dict[str, Any], kind: str, state: dict[str, Any], fatal: bool = True) -> None:
    """Run every hook of ``kind`` in order; a failure raises (or, with ``fatal`` off, warns)."""
    hooks = spec.get("hooks", {}).get(kind) or []
    if not hooks:
        return
    import subprocess

    payload = json.dumps(state).encode()
    for i, hook in enumerate(hooks):
        args = hook.get("args") or [hook["path"]]
        where = f"hooks.{kind}[{i}] ({hook['path']})"
        try:
            proc = subprocess.run(args, executable=hook["path"], input=payload, env=_env(hook),
                                  capture_output=True, timeout=hook.get("timeout"), check=False)
        except subprocess.TimeoutExpired:
            error = f"{where}: timed out after {hook['timeout']}s"
        except OSError as e:
            error = f"{where}: {e.strerror}"
        else:
            if proc.returncode == 0:
                continue
            detail = proc.stderr.decode(errors="replace").strip().splitlines()
            error = f"{where}: exit status {proc.returncode}" + (f": {detail[-1]}" if detail else "")
        if fatal:
            raise BerthError(error)
        print(f"warning: {error}", file=sys.stderr)


def _env(hook: dict[str, Any]) -> dict[str, str]:
    return dict(e.split("=", 1) for e in hook.get("env", []))
