"""Networking, berth vs Podman in one run: set-up cost and throughput through a published port.

- **Set-up cost**: the median wall time of ``run --rm IMAGE true`` on the default bridge network minus
  the same with ``--network none``, for each engine, all four commands interleaved. What is left is what
  joining the bridge costs a daemonless CLI: network-layer imports, the address lease, the veth pair,
  firewall rules and /etc files, and tearing it all down again. The goal: berth's at or below Podman's.
- **Throughput**: ``iperf3 -s`` in a container with ``-p 127.0.0.1:PORT:5201`` on the bridge, the host's
  ``iperf3 -c 127.0.0.1 -p PORT`` as client, rounds alternating between the engines; the median of each.
  The goal: berth within 10% of Podman.

The image is busybox plus the host's iperf3 binary and the libraries ldd lists, imported into both
engines' private storage (Podman's --root, --runroot and network config dir are temporary, with a
containers.conf of its own). Run as root: ``.venv/bin/python bench/network_bench.py [-n 20] [-r 3]``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

VENV_BIN = Path(sys.executable).parent
IMAGE = "localhost/bench-netbox:latest"
PODMAN_CONF = """[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
runtime = "runc"
"""


def image_tar(dest: Path) -> Path:
    """busybox, and iperf3 with the shared libraries it needs, as a rootfs tarball."""
    rootfs = dest / "rootfs"
    for d in ("bin", "proc", "sys", "dev", "etc", "tmp", "usr/bin"):
        (rootfs / d).mkdir(parents=True)
    (rootfs / "tmp").chmod(0o1777)
    shutil.copy2("/bin/busybox", rootfs / "bin/busybox")
    for applet in ("sh", "true", "sleep"):
        (rootfs / "bin" / applet).symlink_to("busybox")
    iperf3 = shutil.which("iperf3")
    if iperf3:
        shutil.copy2(iperf3, rootfs / "usr/bin/iperf3")
        ldd = subprocess.run(["ldd", iperf3], capture_output=True, text=True, check=True).stdout
        for line in ldd.splitlines():
            path = next((w for w in line.split() if w.startswith("/")), None)
            if path:
                target = rootfs / path.lstrip("/")
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(os.path.realpath(path), target)
    (rootfs / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    tar = dest / "rootfs.tar"
    with tarfile.open(tar, "w") as tf:
        tf.add(rootfs, arcname=".")
    return tar


class Engines:
    """The command lines of both engines on private storage."""

    def __init__(self, base: Path, tar: Path) -> None:
        self.env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        self.base = str(base)
        self.runroot = f"/run/{base.name}"
        self.cli: dict[str, list[str]] = {
            "berth": [str(VENV_BIN / "berth"), "--root", str(base / "berth"), "--runroot", self.runroot],
        }
        podman = shutil.which("podman")
        if podman:
            conf = base / "containers.conf"
            conf.write_text(PODMAN_CONF)
            self.env["CONTAINERS_CONF"] = str(conf)
            self.cli["podman"] = [podman, "--root", str(base / "podman"), "--runroot", str(base / "podman-run"),
                                  "--network-config-dir", str(base / "podman-net"), "--storage-driver", "overlay"]
        for argv in self.cli.values():
            self.run(argv, "import", str(tar), IMAGE)

    def run(self, argv: list[str], *args: str, check: bool = True) -> str:
        res = subprocess.run([*argv, *args], capture_output=True, text=True, env=self.env)
        if check and res.returncode != 0:
            raise RuntimeError(f"{os.path.basename(argv[0])} {' '.join(args[:4])}...: {res.stderr.strip()}")
        return res.stdout

    def cleanup(self) -> None:
        for name, argv in self.cli.items():
            ids = self.run(argv, "ps", "-aq", check=False).split()
            if ids:
                subprocess.run([*argv, "rm", "-f", *ids], capture_output=True, env=self.env, check=False)
            if name == "podman":
                subprocess.run([*argv, "system", "reset", "-f"], capture_output=True, env=self.env, check=False)
        with open("/proc/self/mounts") as f:
            mounts = [line.split()[1] for line in f]
        for point in reversed(mounts):  # what podman leaves mounted in its storage, and berth's runroot
            if point.startswith((self.base, self.runroot)):
                subprocess.run(["umount", "-l", point], capture_output=True, check=False)
        shutil.rmtree(self.runroot, ignore_errors=True)


def setup_cost(eng: Engines, n: int) -> dict[str, float]:
    """Median ``run --rm`` times on bridge and none; returns engine → bridge minus none (seconds)."""
    variants = {(name, net): [*argv, "run", "--rm", "--network", net, IMAGE, "true"]
                for name, argv in eng.cli.items() for net in ("bridge", "none")}
    times: dict[tuple[str, str], list[float]] = {k: [] for k in variants}
    for i in range(-2, n):  # two warm-up rounds: page cache, the default network's first creation
        for key, argv in variants.items():
            start = time.perf_counter()
            eng.run(argv)
            t = time.perf_counter() - start
            if i >= 0:
                times[key].append(t)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"set-up cost: run --rm of true, {n} runs each, interleaved (median ms)")
    print(f"  {'':8} {'bridge':>8} {'none':>8} {'cost':>8}")
    cost = {}
    for name in eng.cli:
        cost[name] = med[(name, "bridge")] - med[(name, "none")]
        print(f"  {name:8} {med[(name, 'bridge')] * 1e3:8.1f} {med[(name, 'none')] * 1e3:8.1f} {cost[name] * 1e3:8.1f}")
    if "podman" in cost:
        print(f"  berth's set-up cost / podman's: {cost['berth'] / cost['podman']:.2f}")
    return cost


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def iperf_round(eng: Engines, name: str, seconds: int) -> float:
    """One iperf3 run through a published port on 127.0.0.1; returns received bits per second."""
    port = free_port()
    argv = eng.cli[name]
    cid = eng.run(argv, "run", "-d", "--network", "bridge", "-p", f"127.0.0.1:{port}:5201", IMAGE,
                  "iperf3", "-s", "-1").strip()
    try:
        deadline = time.monotonic() + 10
        while True:
            res = subprocess.run(["iperf3", "-c", "127.0.0.1", "-p", str(port), "-t", str(seconds), "-J"],
                                 capture_output=True, text=True, check=False)
            if res.returncode == 0:
                return float(json.loads(res.stdout)["end"]["sum_received"]["bits_per_second"])
            if time.monotonic() > deadline:
                raise RuntimeError(f"iperf3 through {name}: {res.stdout[-300:]} {res.stderr[-300:]}")
            time.sleep(0.2)
    finally:
        subprocess.run([*argv, "rm", "-f", cid], capture_output=True, env=eng.env, check=False)


def throughput(eng: Engines, rounds: int, seconds: int) -> None:
    if shutil.which("iperf3") is None:
        print("throughput: iperf3 is not installed (apt-get install iperf3): skipped")
        return
    rates: dict[str, list[float]] = {name: [] for name in eng.cli}
    for _ in range(rounds):
        for name in eng.cli:
            rates[name].append(iperf_round(eng, name, seconds))
    print(f"throughput: iperf3 -c 127.0.0.1 -> -p PORT:5201 on the bridge, {rounds} x {seconds} s, median Gbit/s")
    med = {name: statistics.median(r) for name, r in rates.items()}
    for name, r in rates.items():
        shown = " ".join(f"{x / 1e9:.2f}" for x in r)
        print(f"  {name:8} {med[name] / 1e9:8.2f}   (rounds: {shown})")
    if "podman" in med:
        print(f"  berth / podman: {med['berth'] / med['podman']:.2f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=20, help="run --rm repetitions per variant (default 20)")
    parser.add_argument("-r", type=int, default=3, help="iperf3 rounds per engine (default 3)")
    parser.add_argument("-t", type=int, default=5, help="seconds per iperf3 round (default 5)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("run as root", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="berth-net-bench-") as tmp:
        base = Path(tmp)
        eng = Engines(base, image_tar(base))
        try:
            if "podman" not in eng.cli:
                print("podman is not installed: berth's figures only, no comparison")
            setup_cost(eng, args.n)
            throughput(eng, args.r, args.t)
        finally:
            eng.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
