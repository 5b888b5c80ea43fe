"""berth-runtime vs runc vs crun: ``run`` of /bin/true on one bundle, interleaved, in one run.

Prints each runtime's median and its ratio to runc's, with two floors for scale: a bare
``unshare`` + ``chroot`` of the same rootfs and a bare interpreter start (``python -I -S -c pass``).
Run as root: ``.venv/bin/python bench/runtime_bench.py [-n 30]``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
VENV_BIN = Path(sys.executable).parent


def make_bundle(base: Path) -> Path:
    bundle = base / "bundle"
    rootfs = bundle / "rootfs"
    for d in ("bin", "proc", "sys", "dev", "etc", "tmp"):
        (rootfs / d).mkdir(parents=True)
    shutil.copy2("/bin/busybox", rootfs / "bin/busybox")
    for applet in ("sh", "true"):
        (rootfs / "bin" / applet).symlink_to("busybox")
    subprocess.run([str(VENV_BIN / "berth-runtime"), "spec", "--bundle", str(bundle)], check=True)
    spec = json.loads((bundle / "config.json").read_text())
    spec["process"]["terminal"] = False
    spec["process"]["args"] = ["/bin/true"]
    spec["ociVersion"] = "1.0.2"  # crun 1.8 refuses newer versions; nothing here needs them
    (bundle / "config.json").write_text(json.dumps(spec))
    return bundle


def commands(base: Path, bundle: Path) -> dict[str, Callable[[int], list[str]]]:
    """name → a function giving the argv of iteration i; peers that are not installed are left out."""
    runtimes = {"berth-runtime": str(VENV_BIN / "berth-runtime")}
    for name in ("runc", "crun"):
        exe = shutil.which(name)
        if exe:
            runtimes[name] = exe

    def runtime_run(name: str, exe: str) -> Callable[[int], list[str]]:
        return lambda i: [exe, "--root", str(base / f"{name}-state"), "run", "--bundle", str(bundle), f"c{i}"]

    out = {name: runtime_run(name, exe) for name, exe in runtimes.items()}
    out["unshare+chroot (floor)"] = lambda i: ["unshare", "-mpfiun", "chroot", str(bundle / "rootfs"), "/bin/true"]
    out["python -I -S (floor)"] = lambda i: [sys.executable, "-I", "-S", "-c", "pass"]
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", type=int, default=30, help="runs per command (default 30)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("run as root", file=sys.stderr)
        return 2
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # measure the installed, byte-compiled berth
    # State on tmpfs, as every runtime's default root (/run/...) is.
    with tempfile.TemporaryDirectory(prefix="berth-bench-", dir="/run") as tmp:
        base = Path(tmp)
        bundle = make_bundle(base)
        cmds = commands(base, bundle)
        times: dict[str, list[float]] = {name: [] for name in cmds}
        failed: dict[str, str] = {}
        for i in range(-2, args.n):  # two warm-up rounds
            for name, argv_of in cmds.items():
                if name in failed:
                    continue
                argv = argv_of(i + 2)
                start = time.perf_counter()
                res = subprocess.run(argv, capture_output=True, env=env, cwd=bundle)
                elapsed = time.perf_counter() - start
                if res.returncode != 0:
                    failed[name] = (res.stderr.decode(errors="replace").strip().splitlines() or ["?"])[-1][:120]
                elif i >= 0:
                    times[name].append(elapsed)
        base_median = statistics.median(times["runc"]) if times.get("runc") else None
        print(f"run of /bin/true, {args.n} runs each, interleaved")
        print(f"{'command':28} {'median ms':>10} {'min ms':>8} {'vs runc':>8}")
        for name, ts in times.items():
            if name in failed:
                print(f"{name:28} failed: {failed[name]}")
                continue
            med = statistics.median(ts)
            ratio = f"{med / base_median:.2f}x" if base_median else "-"
            print(f"{name:28} {med * 1000:10.1f} {min(ts) * 1000:8.1f} {ratio:>8}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
