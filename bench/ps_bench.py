"""``berth ps -a`` vs ``podman ps -a`` with the same number of containers (200 by default, created and
not started: listing is what is measured), interleaved in one run.

Podman is set up as in ``run_bench.py``: its own storage, runc, cgroupfs, a containers.conf with the
default ulimits. Run as root: ``.venv/bin/python bench/ps_bench.py [-c 200] [-n 20]``.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from run_bench import IMAGE, bench_env, berth_setup, busybox_tar, podman_setup, report, time_interleaved


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-c", "--containers", type=int, default=200)
    parser.add_argument("-n", type=int, default=20)
    args = parser.parse_args()
    env = bench_env()
    with tempfile.TemporaryDirectory(prefix="berth-ps-bench-") as tmp:
        base = Path(tmp)
        tar = busybox_tar(base)
        berth, root, runroot = berth_setup(base, env, tar)
        from berth.engine.engine import Engine

        with Engine(root, runroot) as engine:  # made in-process: creating is not what is measured
            for i in range(args.containers):
                engine.create(IMAGE, ["sleep", "60"], name=f"c{i}", pull="never", network="none")
        cmds = {"berth": [*berth, "ps", "-a"]}
        podman = podman_setup(base, env, tar)
        if podman:
            for i in range(args.containers):
                subprocess.run([*podman, "create", "--network", "none", "--name", f"c{i}", IMAGE, "sleep", "60"],
                               check=True, capture_output=True, env=env)
            cmds["podman"] = [*podman, "ps", "-a"]
        try:
            def listed_all(name: str, out: str) -> None:
                rows = len(out.splitlines()) - 1
                if rows != args.containers:
                    raise SystemExit(f"{name} ps listed {rows} containers, not {args.containers}")

            times = time_interleaved(cmds, args.n, env, listed_all)
            report(f"ps -a with {args.containers} containers, {args.n} runs each, interleaved", times)
        finally:
            if podman:
                subprocess.run([*podman, "rm", "-a", "-f", "-t", "0"], capture_output=True, env=env)
            subprocess.run([*berth, "container", "prune", "-f"], capture_output=True, env=env)
            shutil.rmtree(runroot, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
