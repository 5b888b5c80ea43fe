"""Unpacking one ~70 MB layer: berth file by file vs ``tar -xzf`` vs an erofs image, in one run.

The layer is made from host directories (default: /usr/lib/python3 and /usr/share/perl, ~71 MB and
~5000 entries, close to a Debian minbase). Timed, each on a fresh target on the work disk (``--dir``):

- ``berth``: :func:`berth.images.layer.apply_layer` from the gzip blob, one file per entry, plus a
  ``sync`` so the data is on disk as it is for the others;
- ``tar``: GNU ``tar -xzf`` + sync, the peers' floor;
- ``erofs``: what a layer-as-filesystem-image design costs: ``mkfs.erofs`` cannot read a tar before
  erofs-utils 1.7 (Debian 12 has 1.5), so this is ``tar -xzf`` onto tmpfs (no per-file disk cost)
  then ``mkfs.erofs`` writing one image file to the disk + sync, and a mount of that file;
- ``gzip -dc``: decompression alone, the floor of everything.

Run as root: ``.venv/bin/python bench/layer_bench.py [-n 3]``.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from berth.images.layer import apply_layer


def timed(fn) -> float:  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", type=int, default=3)
    parser.add_argument("--dir", default="/var/tmp", help="a directory on the disk to measure")
    parser.add_argument("--source", nargs="*", default=["/usr/lib/python3", "/usr/share/perl"])
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="layer-bench-", dir=args.dir))
    shm = Path(tempfile.mkdtemp(prefix="layer-bench-", dir="/dev/shm"))
    try:
        blob = base / "layer.tar.gz"
        subprocess.run(["tar", "-czf", str(blob), *[s.lstrip("/") for s in args.source]], cwd="/", check=True)
        raw = int(subprocess.run(f"gzip -dc {blob} | wc -c", shell=True, check=True, capture_output=True,
                                 text=True).stdout)
        entries = len(subprocess.run(["tar", "-tzf", str(blob)], check=True, capture_output=True,
                                     text=True).stdout.splitlines())
        print(f"layer: {blob.stat().st_size / 1e6:.1f} MB gzip, {raw / 1e6:.1f} MB tar, {entries} entries")
        results: dict[str, list[float]] = {k: [] for k in ("gzip -dc", "berth", "tar", "erofs", "mount erofs")}
        have_erofs = shutil.which("mkfs.erofs") is not None
        for i in range(args.n):
            subprocess.run(["sync"], check=True)
            results["gzip -dc"].append(timed(lambda: subprocess.run(
                f"gzip -dc {blob} > /dev/null", shell=True, check=True)))

            target = base / f"berth{i}"
            target.mkdir()

            def berth(target: Path = target) -> None:
                with open(blob, "rb") as f:
                    apply_layer(f, target)
                subprocess.run(["sync"], check=True)

            results["berth"].append(timed(berth))
            target = base / f"tar{i}"
            target.mkdir()
            results["tar"].append(timed(lambda target=target: subprocess.run(
                f"tar -xzf {blob} -C {target} && sync", shell=True, check=True)))
            if have_erofs:
                staging = shm / f"x{i}"
                staging.mkdir()
                image = base / f"layer{i}.erofs"
                results["erofs"].append(timed(lambda staging=staging, image=image: subprocess.run(
                    f"tar -xzf {blob} -C {staging} && mkfs.erofs --quiet {image} {staging} && sync",
                    shell=True, check=True)))
                shutil.rmtree(staging)
                mnt = base / f"mnt{i}"
                mnt.mkdir()
                results["mount erofs"].append(timed(lambda image=image, mnt=mnt: subprocess.run(
                    ["mount", "-t", "erofs", "-o", "ro", str(image), str(mnt)], check=True)))
                subprocess.run(["umount", str(mnt)], check=True)
        floor = statistics.median(results["tar"])
        for name, times in results.items():
            if times:
                med = statistics.median(times)
                print(f"{name:12s} median {med * 1000:8.0f} ms  ({med / floor:.2f}x tar)   runs: "
                      + ", ".join(f"{t * 1000:.0f}" for t in times))
    finally:
        subprocess.run(["rm", "-rf", str(base), str(shm)], check=False)


if __name__ == "__main__":
    main()
