"""``berth ps -a`` vs ``podman ps -a`` with the same number of containers (200 by default, created and
not started: listing is what is measured), interleaved in one run.

Podman is set up as in ``run_bench.py``: its own storage, runc, cgroupfs, a containers.conf with the
default ulimits. Run as root: ``.venv/bin/python bench/ps_bench.py [-c 200] [-n 20]``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from run_bench import IMAGE, bench_engines, report, time_interleaved


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-c", "--containers", type=int, default=200)
    parser.add_argument("-n", type=int, default=20)
    args = parser.parse_args()
    with bench_engines("ps") as e:
        from berth.engine.engine import Engine

        with Engine(e.root, e.runroot) as engine:  # made in-process: creating is not what is measured
            for i in range(args.containers):
                engine.create(IMAGE, ["sleep", "60"], name=f"c{i}", pull="never", network="none")
        cmds = {"berth": [*e.berth, "ps", "-a"]}
        if e.podman:
            for i in range(args.containers):
                subprocess.run([*e.podman, "create", "--network", "none", "--name", f"c{i}", IMAGE, "sleep", "60"],
                               check=True, capture_output=True, env=e.env)
            cmds["podman"] = [*e.podman, "ps", "-a"]

        def listed_all(name: str, out: str) -> None:
            rows = len(out.splitlines()) - 1
            if rows != args.containers:
                raise SystemExit(f"{name} ps listed {rows} containers, not {args.containers}")

        times = time_interleaved(cmds, args.n, e.env, listed_all)
        report(f"ps -a with {args.containers} containers, {args.n} runs each, interleaved", times)
    return 0


if __name__ == "__main__":
    sys.exit(main())
