"""A cold pull of a Debian image from a local registry: berth vs ``podman pull`` vs ``skopeo copy``, in one run.

The image is one layer made by umoci from ``--rootfs`` — a Debian minbase made with
``debootstrap --variant=minbase bookworm DIR`` (its apt caches and lists removed, as Debian's official
image has them) — or, without it, from host directories (/usr/lib/python3, /usr/lib/python3.11,
/usr/share/perl, /usr/lib/x86_64-linux-gnu/perl, /usr/share/locale). skopeo pushes it to Debian's
``docker-registry`` started on 127.0.0.1. Each round, interleaved, on fresh storage each time:

- ``berth pull``: the CLI as a user runs it — blobs verified into the content store, each layer unpacked
  into its snapshot while it downloads (what ``run`` needs; podman's pull does the same work);
- ``podman pull``: fresh ``--root``/``--runroot`` (pulls and unpacks with containers/storage);
- ``skopeo copy``: registry → OCI layout directory, no unpacking;
- ``gzip -dc``: decompressing the layer blobs to /dev/null with gzip(1).

``--split`` makes one layer per host directory instead (five layers), where layers unpack in parallel.

Every tree stays until the end of the run: on a journal-less ext4 (as here) deleting a big tree makes
inode allocation near it slow for minutes (ext4 skips recently deleted inodes, scanning past each), which
would slow whichever puller comes next. berth and podman take turns going first, and each round prints
what creating one file costs at its start (7 µs to 250 µs here within an hour, depending on what was
deleted nearby). Medians and ratios to podman's are printed; the goal is ≤ 0.50x.
Run as root: ``.venv/bin/python bench/pull_bench.py [-n 3] [--rootfs DIR]``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

VENV = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_registry(base: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    config = {"version": 0.1, "log": {"level": "error", "accesslog": {"disabled": True}},
              "storage": {"filesystem": {"rootdirectory": str(base / "data")}},
              "http": {"addr": f"127.0.0.1:{port}", "secret": uuid.uuid4().hex}}
    (base / "config.yml").write_text(json.dumps(config))
    proc = subprocess.Popen(["docker-registry", "serve", str(base / "config.yml")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return proc, f"127.0.0.1:{port}"
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit("docker-registry did not start")


def build_and_push(work: Path, sources: list[str], rootfs: str | None, ref: str, split: bool) -> list[Path]:
    layout, bundle = work / "layout", work / "bundle"
    subprocess.run(["umoci", "init", "--layout", str(layout)], check=True)
    subprocess.run(["umoci", "new", "--image", f"{layout}:big"], check=True)
    subprocess.run(["umoci", "unpack", "--rootless", "--image", f"{layout}:big", str(bundle)], check=True,
                   stdout=subprocess.DEVNULL)
    if rootfs:
        subprocess.run(["cp", "-a", f"{rootfs}/.", str(bundle / "rootfs")], check=True)
    for src in [] if rootfs else sources:
        dest = bundle / "rootfs" / src.lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(src, dest, symlinks=True)
        if split:  # one layer per source directory
            subprocess.run(["umoci", "repack", "--refresh-bundle", "--image", f"{layout}:big", str(bundle)],
                           check=True, stdout=subprocess.DEVNULL)
    if rootfs or not split:
        subprocess.run(["umoci", "repack", "--image", f"{layout}:big", str(bundle)], check=True,
                       stdout=subprocess.DEVNULL)
    subprocess.run(["skopeo", "copy", "--quiet", "--dest-tls-verify=false", f"oci:{layout}:big", f"docker://{ref}"],
                   check=True)
    shutil.rmtree(bundle)
    index = json.loads((layout / "index.json").read_text())
    manifest_digest = index["manifests"][0]["digest"].split(":")[1]
    manifest = json.loads((layout / "blobs/sha256" / manifest_digest).read_text())
    return [layout / "blobs/sha256" / layer["digest"].split(":")[1] for layer in manifest["layers"]]


def create_probe(directory: Path, n: int = 2000) -> float:
    """Microseconds to create one empty file here now: this disk's state, which moves every figure."""
    directory.mkdir(parents=True)
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        start = time.perf_counter()
        for i in range(n):
            os.close(os.open(f"f{i}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600, dir_fd=fd))
        return (time.perf_counter() - start) / n * 1e6
    finally:
        os.close(fd)


def timed(argv: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", type=int, default=3, help="rounds (default 3)")
    parser.add_argument("--dir", default="/var/tmp", help="work directory on the disk to measure")
    parser.add_argument("--source", action="append", help="host directories put in the image")
    parser.add_argument("--rootfs", help="a root filesystem to make the image of (debootstrap --variant=minbase)")
    parser.add_argument("--split", action="store_true", help="one layer per --source directory")
    args = parser.parse_args()
    for tool in ("umoci", "skopeo", "podman", "docker-registry", "gzip"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed")
    sources = args.source or ["/usr/lib/python3", "/usr/lib/python3.11", "/usr/share/perl",
                             "/usr/lib/x86_64-linux-gnu/perl", "/usr/share/locale"]
    work = Path(tempfile.mkdtemp(prefix="pull-bench-", dir=args.dir))
    proc, host = start_registry(work)
    try:
        ref = f"{host}/bench/big:latest"
        blobs = build_and_push(work, sources, args.rootfs, ref, args.split)
        joined = " ".join(str(b) for b in blobs)
        raw = int(subprocess.run(["sh", "-c", f"cat {joined} | gzip -dc | wc -c"], check=True, capture_output=True,
                                 text=True).stdout)
        print(f"image {ref}: {len(blobs)} layer(s), {sum(b.stat().st_size for b in blobs) / 1e6:.1f} MB gzip, "
              f"{raw / 1e6:.1f} MB tar", flush=True)
        berth = str(VENV / "berth")
        times: dict[str, list[float]] = {k: [] for k in ("berth pull", "podman pull", "skopeo copy", "gzip -dc")}
        runs = []
        for i in range(args.n):
            run = work / f"run{i}"
            rr = f"/run/pull-bench-{work.name}-{i}"
            runs.append((run, rr))
            print(f"round {i + 1}: creating a file costs {create_probe(run / 'probe'):.0f} µs", flush=True)
            pullers = {
                "berth pull": [berth, "--root", str(run / "b"), "--runroot", rr + "b", "pull", "-q", ref],
                "podman pull": ["podman", "--root", str(run / "p"), "--runroot", rr + "p", "--storage-driver",
                                "overlay", "pull", "-q", "--tls-verify=false", ref],
            }
            for name in sorted(pullers, reverse=bool(i % 2)):  # alternate who goes first
                times[name].append(timed(pullers[name]))
            times["skopeo copy"].append(timed(["skopeo", "copy", "--quiet", "--src-tls-verify=false",
                                               f"docker://{ref}", f"oci:{run / 's'}:big"]))
            times["gzip -dc"].append(timed(["sh", "-c", f"cat {joined} | gzip -dc > /dev/null"]))
        base = statistics.median(times["podman pull"])
        print(f"{'':14} {'median':>8} {'min':>8} {'max':>8}  vs podman pull (goal for berth: <= 0.50x)")
        for name, ts in times.items():
            med = statistics.median(ts)
            print(f"{name:14} {med:8.2f} {min(ts):8.2f} {max(ts):8.2f}  {med / base:6.2f}x")
        for run, rr in runs:
            subprocess.run(["podman", "--root", str(run / "p"), "--runroot", rr + "p", "system", "reset", "-f"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for suffix in ("b", "p"):
                shutil.rmtree(rr + suffix, ignore_errors=True)
    finally:
        proc.terminate()
        proc.wait()
        subprocess.run(["umount", "-R", str(work)], stderr=subprocess.DEVNULL)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
