"""Memory outside the containers, per container: berth's supervisor vs podman's conmon (PSS).

For N = 1, 10 and 30 detached ``sleep`` containers under each engine (same image, local storage;
podman set up as in ``run_bench.py``), in one run: the sum of the PSS of every berth supervisor
process holding them (``monitor.pid``), divided by N, next to the sum of the PSS of their conmon
processes (``.State.ConmonPid``), divided by N; and the same for private dirty memory (what
no other process shares: PSS also counts a share of the interpreter's or conmon's file pages,
which depends on what else runs). First, for scale, an idle ``python3 -IS`` of the same interpreter:
the floor of any Python supervisor, which N=1 can only approach.

Run as root: ``.venv/bin/python bench/monitor_bench.py [-N 1,10,30]``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from run_bench import IMAGE, bench_engines


def _kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def _start(argv: list[str], n: int, env: dict[str, str]) -> list[str]:
    return [subprocess.run([*argv, "run", "-d", "--network", "none", IMAGE, "sleep", "600"], check=True,
                           capture_output=True, text=True, env=env).stdout.strip() for _ in range(n)]


def _per_container(pids: set[int], n: int) -> tuple[float, float]:
    """(PSS, private dirty) summed over ``pids``, per container, in MiB."""
    return (sum(_kib(pid, "Pss") for pid in pids) / n / 1024,
            sum(_kib(pid, "Private_Dirty") for pid in pids) / n / 1024)


def _idle_interpreter() -> tuple[float, float]:
    """(PSS, private dirty) of an idle ``python3 -IS``, in MiB."""
    idle = subprocess.Popen([sys.executable, "-IS", "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        time.sleep(0.5)
        return _per_container({idle.pid}, 1)
    finally:
        idle.communicate(b"")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-N", default="1,10,30", help="container counts, comma-separated")
    args = parser.parse_args()
    with bench_engines("monitor") as e:
        berth, podman, env = e.berth, e.podman, e.env
        print("Outside the containers, per container: PSS / private dirty (MiB), N detached sleepers each")
        print("  idle python3 -IS  {:5.2f} / {:4.2f}".format(*_idle_interpreter()), flush=True)
        for n in (int(x) for x in args.N.split(",")):
            ids = _start(berth, n, env)
            time.sleep(1.0)
            sups = {int(Path(e.runroot, "containers", cid, "monitor.pid").read_text()) for cid in ids}
            mine, mine_dirty = _per_container(sups, n)
            line = f"  N={n:3}  berth {mine:5.2f} / {mine_dirty:4.2f} ({len(sups)} supervisor)"
            subprocess.run([*berth, "rm", "-f", *ids], check=True, capture_output=True, env=env)
            if podman:
                pids = _start(podman, n, env)
                time.sleep(1.0)
                out = subprocess.run([*podman, "inspect", "--format", "{{.State.ConmonPid}}", *pids],
                                     check=True, capture_output=True, text=True, env=env).stdout
                conmons = {int(p) for p in out.split()}
                theirs, theirs_dirty = _per_container(conmons, n)
                line += (f"   conmon {theirs:5.2f} / {theirs_dirty:4.2f} ({len(conmons)} conmon)"
                         f"   berth/conmon PSS {mine / theirs:.2f}x, dirty {mine_dirty / theirs_dirty:.2f}x")
                subprocess.run([*podman, "rm", "-f", "-t", "0", *pids], check=True, capture_output=True, env=env)
            print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
