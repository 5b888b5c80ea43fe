"""Network set-up cost: berth's network layer vs netavark (Podman's), one container at a time, in one run.

Everything happens inside a private network namespace playing the host, with ``ip netns add``
namespaces playing containers, so the machine's own network is untouched. For each stack, N
containers join one bridge network (with a published port and the network's name server) and leave
again, interleaved with the other stack; printed are medians per container of:

- ``berth connect (in process)``: ``Networks.connect`` once berth's modules and pyroute2 are imported —
  what a long-lived caller (the API service) pays;
- ``berth connect (process)``: a fresh interpreter doing the same — what daemonless ``berth run`` pays,
  imports included;
- ``netavark setup``: the ``netavark setup`` command as Podman runs it;

and the same for leaving (``release_container`` / ``netavark teardown``). Run as root:
``.venv/bin/python bench/network_bench.py [-n 10]``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable

NETAVARK = "/usr/lib/podman/netavark"
AARDVARK = "/usr/lib/podman/aardvark-dns"
BERTH_CODE = """
import sys
from berth.network.manager import Networks, Settings
db, run, action, cid, netns, port = sys.argv[1:]
n = Networks(db, Settings(run_dir=run, dns_upstreams=("127.0.0.1:9",)))
if action == "up":
    n.connect(cid, netns, "bench", name=cid, publish=[port + ":80"])
else:
    n.release_container(cid)
"""


ROWS = [
    ("berth connect (in process)", "netavark setup"),
    ("berth connect (process)", "netavark setup"),
    ("netavark setup", "netavark setup"),
    ("berth release (in process)", "netavark teardown"),
    ("berth release (process)", "netavark teardown"),
    ("netavark teardown", "netavark teardown"),
]


def sh(*argv: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(argv, capture_output=True, text=True, check=False, input=input)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:6])}...: {proc.stderr.strip()} {proc.stdout.strip()}")
    return proc


def netns(prefix: str) -> str:
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    sh("ip", "netns", "add", name)
    sh("ip", "netns", "exec", name, "ip", "link", "set", "lo", "up")
    return name


def netavark_options(cid: str, k: int) -> str:
    return json.dumps({
        "container_id": cid, "container_name": f"c{k}",
        "networks": {"nvbench": {"interface_name": "eth0", "static_ips": [f"10.66.0.{k + 2}"]}},
        "network_info": {"nvbench": {
            "name": "nvbench", "id": "a" * 64, "driver": "bridge", "network_interface": "nvbench0",
            "subnets": [{"subnet": "10.66.0.0/24", "gateway": "10.66.0.1"}], "ipv6_enabled": False,
            "internal": False, "dns_enabled": True, "ipam_options": {"driver": "host-local"},
        }},
        "port_mappings": [{"host_ip": "", "container_port": 80, "host_port": 20000 + k, "range": 1, "protocol": "tcp"}],
    })  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=10, help="containers per stack (default 10)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("run as root", file=sys.stderr)
        return 2
    has_netavark = os.access(NETAVARK, os.X_OK)
    host = netns("bench-host")
    work = tempfile.mkdtemp(prefix="berth-netbench-")
    db, run, nvconf = f"{work}/berth.db", f"{work}/run", f"{work}/netavark"
    os.makedirs(nvconf)
    spaces: list[str] = []
    results: dict[str, list[float]] = {}

    def in_host(*argv: str, stdin: str | None = None) -> None:
        sh("ip", "netns", "exec", host, *argv, input=stdin)

    from berth.kernel.syscalls import CLONE_NEWNET, setns
    from berth.network.manager import Networks, Settings

    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        in_host(sys.executable, "-c", f"from berth.network.manager import Networks, Settings; "
                f"Networks({db!r}, Settings(run_dir={run!r})).create('bench')")  # fmt: skip
        target = os.open(f"/run/netns/{host}", os.O_RDONLY)
        setns(target, CLONE_NEWNET)
        os.close(target)
        nets = Networks(db, Settings(run_dir=run, dns_upstreams=("127.0.0.1:9",)))
        nets.create("bench-in")
        def record(row: str, fn: Callable[..., object], *argv: object, **kw: object) -> None:
            t = time.perf_counter()
            fn(*argv, **kw)
            results.setdefault(row, []).append(time.perf_counter() - t)

        ids = [(f"ip{k:04d}", f"pp{k:04d}", f"{k:04d}" + "b" * 60) for k in range(args.n)]
        for k, (cid_a, cid_b, cid_c) in enumerate(ids):
            a, b, c = netns("bench-c"), netns("bench-c"), netns("bench-c")
            spaces += [a, b, c]
            record("berth connect (in process)", nets.connect, cid_a, f"/run/netns/{a}", "bench-in", name=cid_a,
                   publish=[f"{21000 + k}:80"])  # fmt: skip
            record("berth connect (process)", in_host, sys.executable, "-c", BERTH_CODE, db, run, "up", cid_b,
                   f"/run/netns/{b}", str(22000 + k))  # fmt: skip
            if has_netavark:
                record("netavark setup", in_host, NETAVARK, "--config", nvconf, "--aardvark-binary", AARDVARK,
                       "setup", f"/run/netns/{c}", stdin=netavark_options(cid_c, k))  # fmt: skip
        for k, (cid_a, cid_b, cid_c) in enumerate(ids):
            record("berth release (in process)", nets.release_container, cid_a)
            record("berth release (process)", in_host, sys.executable, "-c", BERTH_CODE, db, run, "down", cid_b,
                   "-", "0")  # fmt: skip
            if has_netavark:
                record("netavark teardown", in_host, NETAVARK, "--config", nvconf, "--aardvark-binary", AARDVARK,
                       "teardown", f"/run/netns/{spaces[3 * k + 2]}", stdin=netavark_options(cid_c, k))  # fmt: skip
        nets.remove("bench-in")
        nets.remove("bench")
    finally:
        with contextlib.suppress(Exception):
            Networks(db, Settings(run_dir=run)).gc(live_containers=[])  # after a failure: stop name servers
        setns(home, CLONE_NEWNET)
        for name in [*spaces, host]:
            subprocess.run(["ip", "netns", "del", name], check=False)
        shutil.rmtree(work, ignore_errors=True)

    floors = []
    for _ in range(5):
        t = time.perf_counter()
        sh(sys.executable, "-c", "pass")
        floors.append(time.perf_counter() - t)
    floor = statistics.median(floors)
    print(f"network set-up per container, {args.n} containers each (the first one also creates the network)")
    print(f"{'':30} {'median ms':>10} {'first ms':>9} {'vs netavark':>12}")
    for name, ref in ROWS:
        if name in results:
            med = statistics.median(results[name])
            ratio = f"{med / statistics.median(results[ref]):.2f}x" if ref in results else "-"
            print(f"{name:30} {med * 1000:10.1f} {results[name][0] * 1000:9.1f} {ratio:>12}")
    if not has_netavark:
        print(f"(netavark not found at {NETAVARK}: no comparison)")
    print(f"python interpreter start (floor): {floor * 1000:.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
