"""``berth run --rm IMAGE true`` vs ``podman run --rm --network none IMAGE true``, same image from
local storage, interleaved in one run. The supervisor's memory next to conmon's is
``monitor_bench.py``.

Run as root: ``.venv/bin/python bench/run_bench.py [-n 20]``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

VENV_BIN = Path(sys.executable).parent
IMAGE = "localhost/bench-busybox:latest"


def busybox_tar(dest: Path) -> Path:
    rootfs = dest / "rootfs"
    for d in ("bin", "proc", "sys", "dev", "etc", "tmp"):
        (rootfs / d).mkdir(parents=True)
    shutil.copy2("/bin/busybox", rootfs / "bin/busybox")
    for applet in ("sh", "true", "sleep"):
        (rootfs / "bin" / applet).symlink_to("busybox")
    (rootfs / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    tar = dest / "rootfs.tar"
    with tarfile.open(tar, "w") as tf:
        tf.add(rootfs, arcname=".")
    return tar


def podman_setup(base: Path, env: dict[str, str], tar: Path | None = None) -> list[str]:
    """The argv prefix of a podman with its own storage under ``base`` and the containers.conf this
    host needs (root lacks CAP_SYS_RESOURCE: explicit ulimits; crun refuses the hybrid cgroups: runc),
    set in ``env``; ``tar`` is imported as IMAGE. [] when podman is not installed."""
    exe = shutil.which("podman")
    if not exe:
        return []
    conf = base / "containers.conf"
    conf.write_text('[containers]\ndefault_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]\n'
                    '[engine]\ncgroup_manager = "cgroupfs"\nevents_logger = "file"\nruntime = "runc"\n')
    env["CONTAINERS_CONF"] = str(conf)
    podman = [exe, "--root", str(base / "podman"), "--runroot", str(base / "podman-run"), "--storage-driver", "overlay"]
    if tar is not None:
        subprocess.run([*podman, "import", str(tar), IMAGE], check=True, capture_output=True, env=env)
    return podman


def bench_env() -> dict[str, str]:
    """The environment the timed commands run in: byte code is written and used, as when installed."""
    return {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def berth_setup(base: Path, env: dict[str, str], tar: Path) -> tuple[list[str], str, str]:
    """A berth with its own storage under ``base`` (runroot ``/run/<base's name>``) holding ``tar``
    as IMAGE: (its argv prefix, root, runroot)."""
    root, runroot = str(base / "berth"), f"/run/{base.name}"
    berth = [str(VENV_BIN / "berth"), "--root", root, "--runroot", runroot]
    subprocess.run([*berth, "import", str(tar), IMAGE], check=True, capture_output=True, env=env)
    return berth, root, runroot


@dataclass
class Engines:
    """A berth and, when installed, a podman (else ``podman`` is []), each with its own storage holding
    IMAGE: their argv prefixes, berth's root and runroot, and the environment to run them in."""

    env: dict[str, str]
    berth: list[str]
    root: str
    runroot: str
    podman: list[str]


@contextlib.contextmanager
def bench_engines(name: str) -> Iterator[Engines]:
    """Engines set up in a temporary directory for the bench ``name``; at the end every container of
    either goes, with berth's runroot and the mounts podman's storage leaves behind."""
    env = bench_env()
    with tempfile.TemporaryDirectory(prefix=f"berth-{name}-bench-") as tmp:
        base = Path(tmp)
        tar = busybox_tar(base)
        berth, root, runroot = berth_setup(base, env, tar)
        podman = podman_setup(base, env, tar)
        try:
            yield Engines(env, berth, root, runroot, podman)
        finally:
            if podman:
                subprocess.run([*podman, "rm", "-a", "-f", "-t", "0"], capture_output=True, env=env)
            subprocess.run([*berth, "container", "prune", "-f"], capture_output=True, env=env)
            shutil.rmtree(runroot, ignore_errors=True)
            _unmount_under(base)


def _unmount_under(base: Path) -> None:
    """Podman's storage leaves mounts (its overlay home) that would keep the temporary directory."""
    with open("/proc/self/mounts") as f:
        points = [line.split()[1] for line in f if line.split()[1].startswith(str(base) + "/")]
    for point in reversed(points):
        subprocess.run(["umount", "-l", point], capture_output=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", type=int, default=20)
    args = parser.parse_args()
    with bench_engines("run") as e:
        cmds = {"berth": [*e.berth, "run", "--rm", "--network", "none", IMAGE, "true"]}
        if e.podman:
            cmds["podman"] = [*e.podman, "run", "--rm", "--network", "none", IMAGE, "true"]
        times = time_interleaved(cmds, args.n, e.env)
        report(f"run --rm of true, {args.n} runs each, interleaved", times)
    return 0


def time_interleaved(cmds: dict[str, list[str]], n: int, env: dict[str, str],
                     check: Callable[[str, str], None] | None = None) -> dict[str, list[float]]:
    """Run each command in turn, ``n`` rounds after 2 warm-up rounds; seconds per command.
    ``check(name, stdout)`` may refuse an output (SystemExit)."""
    times: dict[str, list[float]] = {k: [] for k in cmds}
    for i in range(-2, n):
        for name, argv in cmds.items():
            start = time.perf_counter()
            out = subprocess.run(argv, check=True, capture_output=True, text=True, env=env).stdout
            if i >= 0:
                times[name].append(time.perf_counter() - start)
            if check is not None:
                check(name, out)
    return times


def report(title: str, times: dict[str, list[float]]) -> None:
    """Median and minimum of each command, and its ratio to podman's median."""
    print(title)
    ref = statistics.median(times["podman"]) if "podman" in times else None
    for name, ts in times.items():
        med = statistics.median(ts)
        ratio = f"{med / ref:.2f}x" if ref else "-"
        print(f"  {name:8} median {med * 1000:7.1f} ms   min {min(ts) * 1000:7.1f} ms   vs podman {ratio}")


if __name__ == "__main__":
    sys.exit(main())
