"""berth's default seccomp profile: the one Podman ships (Debian's containers-common), which is the
Docker default profile's equivalent, turned into OCI ``linux.seccomp`` for one container.

The profile file is in Docker's format: rules carry ``includes``/``excludes`` conditions on
capabilities, architectures and kernel versions, resolved here against the container's bounding
set and the host architecture, as Docker and Podman resolve them when they create a container.
"""

from __future__ import annotations

import os

from berth.errors import InvalidArgument, Unsupported
from berth.oci import jsonc

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

DEFAULT_PROFILE = "/usr/share/containers/seccomp.json"
_GOARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "ppc64le": "ppc64le", "s390x": "s390x",
           "i686": "386"}
_NATIVE = {"x86_64": "SCMP_ARCH_X86_64", "aarch64": "SCMP_ARCH_AARCH64", "armv7l": "SCMP_ARCH_ARM",
           "ppc64le": "SCMP_ARCH_PPC64LE", "s390x": "SCMP_ARCH_S390X", "i686": "SCMP_ARCH_X86"}


def load(path: str = DEFAULT_PROFILE) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            return dict(jsonc.loads(f.read()))
    except FileNotFoundError:
        if path == DEFAULT_PROFILE:
            raise Unsupported(f"the default seccomp profile {path} is missing (install containers-common, "
                              "or run with --security-opt seccomp=unconfined)") from None
        raise InvalidArgument(f"seccomp profile {path}: no such file") from None
    except ValueError as e:
        raise InvalidArgument(f"seccomp profile {path}: {e}") from None


def _kernel_at_least(version: str) -> bool:
    def nums(text: str) -> tuple[int, ...]:
        return tuple(int("".join(c for c in part if c.isdigit()) or 0) for part in text.split(".")[:2])

    return nums(os.uname().release) >= nums(version)


def _applies(cond: dict[str, Any], caps: set[str], arch: str, include: bool) -> bool:
    """Whether an includes (``include``) or excludes condition holds."""
    checks = []
    if cond.get("caps"):
        held = [c in caps for c in cond["caps"]]
        checks.append(all(held) if include else any(held))
    if cond.get("arches"):
        checks.append(arch in cond["arches"])
    if cond.get("minKernel"):
        checks.append(_kernel_at_least(cond["minKernel"]))
    if not checks:
        return include
    return all(checks) if include else any(checks)


def to_oci(profile: dict[str, Any], caps: set[str]) -> dict[str, Any]:
    """Resolve a Docker-format profile for a container holding ``caps`` on this host."""
    machine = os.uname().machine
    arch = _GOARCH.get(machine, machine)
    out: dict[str, Any] = {"defaultAction": profile["defaultAction"]}
    if "defaultErrnoRet" in profile:
        out["defaultErrnoRet"] = profile["defaultErrnoRet"]
    arches: list[str] = []
    for entry in profile.get("archMap") or []:
        if entry["architecture"] == _NATIVE.get(machine):
            arches = [entry["architecture"], *entry.get("subArchitectures", [])]
    if not arches and profile.get("architectures"):
        arches = list(profile["architectures"])
    if arches:
        out["architectures"] = arches
    syscalls = []
    for rule in profile.get("syscalls") or []:
        if rule.get("includes") and not _applies(rule["includes"], caps, arch, include=True):
            continue
        if rule.get("excludes") and _applies(rule["excludes"], caps, arch, include=False):
            continue
        names = rule.get("names") or ([rule["name"]] if rule.get("name") else [])
        resolved: dict[str, Any] = {"names": names, "action": rule["action"]}
        for key in ("args", "errnoRet"):
            if rule.get(key):
                resolved[key] = rule[key]
        syscalls.append(resolved)
    out["syscalls"] = syscalls
    return out
