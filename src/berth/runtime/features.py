"""``berth-runtime features``: what this runtime implements, in the runtime-spec features format."""

from __future__ import annotations

from berth.oci.runtime_config import HOOK_KINDS, NAMESPACE_TYPES
from berth.runtime.rootfs import _FLAGS, EXTENSIONS, PROPAGATION

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


def features() -> dict[str, Any]:
    from berth.kernel import caps, cgroups, seccomp

    return {
        "ociVersionMin": "1.0.0",
        "ociVersionMax": "1.3.0",
        "hooks": list(HOOK_KINDS),
        "mountOptions": sorted([*_FLAGS, *PROPAGATION, *EXTENSIONS]),
        "linux": {
            "namespaces": list(NAMESPACE_TYPES),
            "capabilities": caps.names(),
            "cgroup": cgroups.features(),
            "seccomp": seccomp.features(),
            "apparmor": {"enabled": False},
            "selinux": {"enabled": False},
            "intelRdt": {"enabled": False},
            "mountExtensions": {"idmap": {"enabled": False}},
        },
        "annotations": {"org.opencontainers.runc.version": "berth-runtime"},
    }
