"""A cold pull of a ~70 MB image from a local registry: berth vs ``podman pull`` vs ``skopeo copy``, in one run.

The image is built here from host directories (default: /usr/lib/python3, /usr/lib/python3.11,
/usr/share/perl, /usr/lib/x86_64-linux-gnu/perl and /usr/share/locale, ~70 MB gzip-compressed, close to a
Debian minbase): umoci makes an OCI layout of them, skopeo pushes it to
Debian's ``docker-registry`` started on 127.0.0.1. Each round, interleaved, on fresh storage each time:

- ``berth pull``: the CLI as a user runs it (blobs into the content store, verified);
- ``berth pull+unpack``: the pull, then the layer unpacked into a snapshot (what ``run`` needs);
- ``podman pull``: fresh ``--root``/``--runroot`` (pulls and unpacks with containers/storage);
- ``skopeo copy``: registry → OCI layout directory, no unpacking;
- ``gzip -dc``: decompressing the layer blob to /dev/null, the floor of any puller that unpacks.

Medians and ratios to berth's pull+unpack are printed. Run as root: ``.venv/bin/python bench/pull_bench.py [-n 3]``.
"""

from __future__ import annotations

import argparse
import json
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


def build_and_push(work: Path, sources: list[str], ref: str) -> Path:
    layout, bundle = work / "layout", work / "bundle"
    subprocess.run(["umoci", "init", "--layout", str(layout)], check=True)
    subprocess.run(["umoci", "new", "--image", f"{layout}:big"], check=True)
    subprocess.run(["umoci", "unpack", "--rootless", "--image", f"{layout}:big", str(bundle)], check=True,
                   stdout=subprocess.DEVNULL)
    for src in sources:
        dest = bundle / "rootfs" / src.lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(src, dest, symlinks=True)
    subprocess.run(["umoci", "repack", "--image", f"{layout}:big", str(bundle)], check=True,
                   stdout=subprocess.DEVNULL)
    subprocess.run(["skopeo", "copy", "--quiet", "--dest-tls-verify=false", f"oci:{layout}:big", f"docker://{ref}"],
                   check=True)
    shutil.rmtree(bundle)
    index = json.loads((layout / "index.json").read_text())
    manifest_digest = index["manifests"][0]["digest"].split(":")[1]
    manifest = json.loads((layout / "blobs/sha256" / manifest_digest).read_text())
    return layout / "blobs/sha256" / manifest["layers"][0]["digest"].split(":")[1]


def timed(argv: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", type=int, default=3, help="rounds (default 3)")
    parser.add_argument("--dir", default="/var/tmp", help="work directory on the disk to measure")
    parser.add_argument("--source", action="append", help="host directories put in the image")
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
        blob = build_and_push(work, sources, ref)
        print(f"image {ref}: one layer of {blob.stat().st_size / 1e6:.1f} MB (gzip)", flush=True)
        berth = str(VENV / "berth")
        unpack = ("import sys; from berth.engine.engine import Engine\n"
                  "with Engine(sys.argv[1], sys.argv[2]) as e: e.image_store.unpack(e.pull(sys.argv[3]))")
        times: dict[str, list[float]] = {k: [] for k in ("berth pull", "berth pull+unpack", "podman pull",
                                                         "skopeo copy", "gzip -dc")}
        for i in range(args.n):
            run = work / f"run{i}"
            rr = f"/run/pull-bench-{work.name}-{i}"
            times["berth pull"].append(timed([berth, "--root", str(run / "b1"), "--runroot", rr + "b1", "pull", "-q",
                                              ref]))
            times["berth pull+unpack"].append(timed([sys.executable, "-c", unpack, str(run / "b2"), rr + "b2", ref]))
            times["podman pull"].append(timed(["podman", "--root", str(run / "p"), "--runroot", rr + "p",
                                               "--storage-driver", "overlay", "pull", "-q", "--tls-verify=false",
                                               ref]))
            times["skopeo copy"].append(timed(["skopeo", "copy", "--quiet", "--src-tls-verify=false",
                                               f"docker://{ref}", f"oci:{run / 's'}:big"]))
            times["gzip -dc"].append(timed(["sh", "-c", f"gzip -dc < {blob} > /dev/null"]))
            subprocess.run(["podman", "--root", str(run / "p"), "--runroot", rr + "p", "system", "reset", "-f"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for suffix in ("b1", "b2", "p"):
                shutil.rmtree(rr + suffix, ignore_errors=True)
            shutil.rmtree(run, ignore_errors=True)
        base = statistics.median(times["berth pull+unpack"])
        print(f"{'':20} {'median':>8} {'min':>8} {'max':>8}  vs berth pull+unpack")
        for name, ts in times.items():
            med = statistics.median(ts)
            print(f"{name:20} {med:8.2f} {min(ts):8.2f} {max(ts):8.2f}  {med / base:6.2f}x")
    finally:
        proc.terminate()
        proc.wait()
        subprocess.run(["umount", "-R", str(work)], stderr=subprocess.DEVNULL)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
