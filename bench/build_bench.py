"""Cold and fully cached builds of one Dockerfile: ``berth build`` vs ``buildah bud --layers``.

Both start from the same busybox root filesystem (imported into each tool's private storage), build
the same context, and are timed end to end as a user runs them (a new process each build), the two
tools interleaved round by round. "Cold" is ``--no-cache`` (the base image present); "cached" is the
same build again with nothing changed. Medians are printed with berth's ratio to buildah.

    sudo .venv/bin/python bench/build_bench.py [-n RUNS]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from conftest import build_busybox_rootfs

BERTH = str(Path(sys.executable).parent / "berth")
DOCKERFILE = """FROM localhost/busybox:latest
ARG VERSION=1
ENV APP=/app
WORKDIR /app
COPY src/ ./src/
RUN echo "built $VERSION" > /app/built && ls /app/src > /app/files
LABEL org.example.bench=yes
CMD ["cat", "/app/built"]
"""


def timed(argv: list[str]) -> float:
    t0 = time.perf_counter()
    r = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if r.returncode != 0:
        raise SystemExit(f"{argv[0]} failed ({r.returncode}): {r.stderr.strip()[-2000:]}")
    return time.perf_counter() - t0


def _buildah_runtime() -> list[str]:
    """runc when present: crun refuses this host's hybrid cgroup layout."""
    runc = shutil.which("runc")
    return ["--runtime", runc] if runc else ["--isolation", "chroot"]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=5)
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root", file=sys.stderr)
        return 1
    work = Path(tempfile.mkdtemp(prefix="berth-build-bench-"))
    try:
        rootfs = build_busybox_rootfs(work / "rootfs")
        tar = work / "rootfs.tar"
        with tarfile.open(tar, "w") as tf:
            tf.add(rootfs, arcname=".")
        ctx = work / "ctx"
        (ctx / "src").mkdir(parents=True)
        for i in range(20):
            (ctx / "src" / f"f{i}.txt").write_text(f"file {i}\n" * 50)
        (ctx / "Dockerfile").write_text(DOCKERFILE)

        berth = [BERTH, "--root", str(work / "berth-root"), "--runroot", f"/run/berth-bench-{work.name}"]
        subprocess.run([*berth, "import", str(tar), "localhost/busybox:latest"], check=True,
                       stdout=subprocess.DEVNULL)
        tools: dict[str, tuple[list[str], list[str]]] = {
            "berth": ([*berth, "build", "--no-cache", "-t", "bench:1", str(ctx)],
                      [*berth, "build", "-t", "bench:1", str(ctx)]),
        }
        if shutil.which("buildah"):
            bh = ["buildah", "--root", str(work / "buildah-root"), "--runroot", f"/run/buildah-bench-{work.name}"]
            ctr = subprocess.run([*bh, "from", "scratch"], check=True, capture_output=True, text=True).stdout.strip()
            subprocess.run([*bh, "add", ctr, str(tar), "/"], check=True, stdout=subprocess.DEVNULL)
            subprocess.run([*bh, "commit", "-q", ctr, "localhost/busybox:latest"], check=True,
                           stdout=subprocess.DEVNULL)
            subprocess.run([*bh, "rm", ctr], check=True, stdout=subprocess.DEVNULL)
            bud = [*bh, "bud", "--layers", "-q", *_buildah_runtime(), "-t", "bench:1"]
            tools["buildah"] = ([*bud, "--no-cache", str(ctx)], [*bud, str(ctx)])
        else:
            print("buildah not installed: berth only")
        for _cold, cached in tools.values():
            timed(cached)  # warm the page cache and fill the build cache
        # interleaved: each round times every tool once, so load on the machine hits both alike
        times: dict[str, dict[str, list[float]]] = {name: {"cold": [], "cached": []} for name in tools}
        for kind, index in (("cold", 0), ("cached", 1)):
            for argvs in tools.values():
                timed(argvs[index])  # untimed: the first cached build after --no-cache ones, a warm-up
            for _ in range(args.n):
                for name, argvs in tools.items():
                    times[name][kind].append(timed(argvs[index]))
        results = {name: {kind: statistics.median(ts) for kind, ts in kinds.items()} for name, kinds in times.items()}
        for name, r in results.items():
            print(f"{name:8s} cold median {r['cold']:.3f}s   cached median {r['cached']:.3f}s   (n={args.n})")
        if "buildah" in results:
            for kind, goal in (("cold", 1.0), ("cached", 0.5)):
                ratio = results["berth"][kind] / results["buildah"][kind]
                print(f"berth/buildah {kind}: {ratio:.2f}  (goal <= {goal})")
    finally:
        subprocess.run(["umount", "-R", str(work / "buildah-root" / "overlay")], stderr=subprocess.DEVNULL)
        shutil.rmtree(work, ignore_errors=True)
        for runroot in (f"/run/berth-bench-{work.name}", f"/run/buildah-bench-{work.name}"):
            shutil.rmtree(runroot, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
