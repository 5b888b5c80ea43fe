"""Statistics of a container's cgroup in the shape of runc's ``events --stats`` (see
:func:`~._common.empty_stats`), read from the v1 or v2 files.

Apart from :mod:`.v1` and :mod:`.v2` because only ``stats`` and ``events`` need it: creating and
removing a container's cgroup does not pay for importing it.
"""

from __future__ import annotations

import os

from berth.kernel.cgroups._common import (
    MAX_UINT64,
    empty_stats,
    hugepage_sizes,
    parse_id_list,
    parse_keyed,
    parse_uint,
    read_optional,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from berth.kernel.cgroups.v1 import V1Cgroup
    from berth.kernel.cgroups.v2 import V2Cgroup


def v1_stats(cg: V1Cgroup) -> dict[str, Any]:
    out = empty_stats()
    _v1_cpu(cg, out)
    _v1_cpuset(cg, out)
    _v1_memory(cg, out)
    _v1_pids(cg, out)
    _v1_blkio(cg, out)
    _v1_hugetlb(cg, out)
    return out


def v2_stats(cg: V2Cgroup) -> dict[str, Any]:
    out = empty_stats()
    _v2_cpu(cg, out)
    _v2_cpuset(cg, out)
    _v2_memory(cg, out)
    _v2_pids(cg, out)
    _v2_io(cg, out)
    out["hugetlb"] = v2_hugetlb(cg)
    return out


def _v1_cpu(cg: V1Cgroup, out: dict[str, Any]) -> None:
    usage = out["cpu"]["usage"]
    acct = cg.dirs.get("cpuacct")
    if acct is not None:
        d = acct

        def numbers(name: str) -> list[int]:
            return [int(x) for x in (read_optional(os.path.join(acct, name)) or "").split()]

        usage["total"] = parse_uint(read_optional(os.path.join(d, "cpuacct.usage")))
        usage["percpu"] = numbers("cpuacct.usage_percpu")
        usage["percpu_user"] = numbers("cpuacct.usage_percpu_user")
        usage["percpu_kernel"] = numbers("cpuacct.usage_percpu_sys")
        user = read_optional(os.path.join(d, "cpuacct.usage_user"))
        system = read_optional(os.path.join(d, "cpuacct.usage_sys"))
        if user is not None and system is not None:
            usage["user"], usage["kernel"] = parse_uint(user), parse_uint(system)
        else:  # older kernels: clock ticks in cpuacct.stat
            ticks = parse_keyed(read_optional(os.path.join(d, "cpuacct.stat")))
            hz = os.sysconf("SC_CLK_TCK") or 100
            usage["user"] = ticks.get("user", 0) * 1_000_000_000 // hz
            usage["kernel"] = ticks.get("system", 0) * 1_000_000_000 // hz
    cpu = cg.dirs.get("cpu")
    if cpu is not None:
        stat = parse_keyed(read_optional(os.path.join(cpu, "cpu.stat")))
        throttling = out["cpu"]["throttling"]
        throttling["periods"] = stat.get("nr_periods", 0)
        throttling["throttledPeriods"] = stat.get("nr_throttled", 0)
        throttling["throttledTime"] = stat.get("throttled_time", 0)


def _v1_cpuset(cg: V1Cgroup, out: dict[str, Any]) -> None:
    d = cg.dirs.get("cpuset")
    if d is None:
        return
    cpuset = out["cpuset"]
    cpuset["cpus"] = parse_id_list(read_optional(os.path.join(d, "cpuset.cpus")))
    cpuset["mems"] = parse_id_list(read_optional(os.path.join(d, "cpuset.mems")))
    for key in (
        "cpu_exclusive",
        "mem_hardwall",
        "mem_exclusive",
        "memory_migrate",
        "memory_spread_page",
        "memory_spread_slab",
        "memory_pressure",
        "sched_load_balance",
    ):
        cpuset[key] = parse_uint(read_optional(os.path.join(d, f"cpuset.{key}")))
    level = (read_optional(os.path.join(d, "cpuset.sched_relax_domain_level")) or "0").strip()
    cpuset["sched_relax_domain_level"] = int(level) if level.lstrip("-").isdigit() else 0


def _v1_memory(cg: V1Cgroup, out: dict[str, Any]) -> None:
    d = cg.dirs.get("memory")
    if d is None:
        return
    mem = out["memory"]
    raw = parse_keyed(read_optional(os.path.join(d, "memory.stat")))
    mem["raw"] = raw
    mem["cache"] = raw.get("cache", 0)
    for key, prefix in (
        ("usage", "memory."),
        ("swap", "memory.memsw."),
        ("kernel", "memory.kmem."),
        ("kernelTCP", "memory.kmem.tcp."),
    ):
        usage = read_optional(os.path.join(d, prefix + "usage_in_bytes"))
        if usage is None:
            continue
        mem[key] = {
            "limit": parse_uint(read_optional(os.path.join(d, prefix + "limit_in_bytes"))),
            "usage": parse_uint(usage),
            "max": parse_uint(read_optional(os.path.join(d, prefix + "max_usage_in_bytes"))),
            "failcnt": parse_uint(read_optional(os.path.join(d, prefix + "failcnt"))),
        }


def _v1_pids(cg: V1Cgroup, out: dict[str, Any]) -> None:
    d = cg.dirs.get("pids")
    if d is None:
        out["pids"]["current"] = len(cg.pids())
        return
    out["pids"]["current"] = parse_uint(read_optional(os.path.join(d, "pids.current")))
    limit = parse_uint(read_optional(os.path.join(d, "pids.max")))
    out["pids"]["limit"] = 0 if limit == MAX_UINT64 else limit


def _v1_blkio(cg: V1Cgroup, out: dict[str, Any]) -> None:
    d = cg.dirs.get("blkio")
    if d is None:
        return
    chosen = "blkio.throttle."
    for prefix in ("blkio.", "blkio.bfq."):
        table = _blkio_entries(read_optional(os.path.join(d, prefix + "io_service_bytes_recursive")))
        if table:
            chosen = prefix
            break
    for name, key in _BLKIO_TABLES:
        out["blkio"][key] = _blkio_entries(read_optional(os.path.join(d, chosen + name)))


def _v1_hugetlb(cg: V1Cgroup, out: dict[str, Any]) -> None:
    d = cg.dirs.get("hugetlb")
    if d is None:
        if cg.unified is not None:
            out["hugetlb"] = v2_hugetlb(cg.unified)  # the cgroup2 half of a hybrid host
        return
    for size in hugepage_sizes():
        usage = read_optional(os.path.join(d, f"hugetlb.{size}.usage_in_bytes"))
        if usage is None:
            continue
        out["hugetlb"][size] = {
            "usage": parse_uint(usage),
            "max": parse_uint(read_optional(os.path.join(d, f"hugetlb.{size}.max_usage_in_bytes"))),
            "failcnt": parse_uint(read_optional(os.path.join(d, f"hugetlb.{size}.failcnt"))),
        }


_BLKIO_TABLES = (
    ("io_service_bytes_recursive", "ioServiceBytesRecursive"),
    ("io_serviced_recursive", "ioServicedRecursive"),
    ("io_queued_recursive", "ioQueueRecursive"),
    ("io_service_time_recursive", "ioServiceTimeRecursive"),
    ("io_wait_time_recursive", "ioWaitTimeRecursive"),
    ("io_merged_recursive", "ioMergedRecursive"),
    ("time_recursive", "ioTimeRecursive"),
    ("sectors_recursive", "sectorsRecursive"),
)


def _blkio_entries(text: str | None) -> list[dict[str, Any]]:
    """``8:0 Read 4096`` (or ``8:0 4096`` for time/sectors) lines; ``Total`` lines skipped."""
    entries: list[dict[str, Any]] = []
    if not text:
        return entries
    for line in text.splitlines():
        fields = line.split()
        if len(fields) not in (2, 3):
            continue
        major, sep, minor = fields[0].partition(":")
        if not sep or not (major.isdigit() and minor.isdigit()) or not fields[-1].isdigit():
            continue
        entry: dict[str, Any] = {"major": int(major), "minor": int(minor), "op": "", "value": int(fields[-1])}
        if len(fields) == 3:
            entry["op"] = fields[1]
        entries.append(entry)
    return entries


def _v2_cpu(cg: V2Cgroup, out: dict[str, Any]) -> None:
    stat = parse_keyed(read_optional(cg._file("cpu.stat")))
    usage = out["cpu"]["usage"]
    usage["total"] = stat.get("usage_usec", 0) * 1000
    usage["user"] = stat.get("user_usec", 0) * 1000
    usage["kernel"] = stat.get("system_usec", 0) * 1000
    throttling = out["cpu"]["throttling"]
    throttling["periods"] = stat.get("nr_periods", 0)
    throttling["throttledPeriods"] = stat.get("nr_throttled", 0)
    throttling["throttledTime"] = stat.get("throttled_usec", 0) * 1000


def _v2_cpuset(cg: V2Cgroup, out: dict[str, Any]) -> None:
    cpus = read_optional(cg._file("cpuset.cpus.effective"))
    if cpus is None:
        return
    out["cpuset"]["cpus"] = parse_id_list(cpus)
    out["cpuset"]["mems"] = parse_id_list(read_optional(cg._file("cpuset.mems.effective")))


def _v2_memory(cg: V2Cgroup, out: dict[str, Any]) -> None:
    current = read_optional(cg._file("memory.current"))
    if current is None:
        return
    mem = out["memory"]
    raw = parse_keyed(read_optional(cg._file("memory.stat")))
    mem["raw"] = raw
    mem["cache"] = raw.get("file", 0)
    events = parse_keyed(read_optional(cg._file("memory.events")))
    usage = mem["usage"]
    usage["usage"] = parse_uint(current)
    usage["max"] = parse_uint(read_optional(cg._file("memory.peak")))
    usage["limit"] = parse_uint(read_optional(cg._file("memory.max")))
    usage["failcnt"] = events.get("max", 0)
    swap_current = read_optional(cg._file("memory.swap.current"))
    if swap_current is not None:
        # v1 reports swap as memory+swap; do the same so the numbers mean one thing
        swap = mem["swap"]
        swap["usage"] = parse_uint(swap_current) + usage["usage"]
        swap_limit = parse_uint(read_optional(cg._file("memory.swap.max")))
        if swap_limit == MAX_UINT64 or usage["limit"] == MAX_UINT64:
            swap["limit"] = MAX_UINT64
        else:
            swap["limit"] = swap_limit + usage["limit"]
        swap["max"] = parse_uint(read_optional(cg._file("memory.swap.peak")))
        swap["failcnt"] = parse_keyed(read_optional(cg._file("memory.swap.events"))).get("max", 0)


def _v2_pids(cg: V2Cgroup, out: dict[str, Any]) -> None:
    current = read_optional(cg._file("pids.current"))
    if current is None:
        out["pids"]["current"] = len(cg.pids())
        return
    out["pids"]["current"] = parse_uint(current)
    limit = parse_uint(read_optional(cg._file("pids.max")))
    out["pids"]["limit"] = 0 if limit == MAX_UINT64 else limit


def _v2_io(cg: V2Cgroup, out: dict[str, Any]) -> None:
    text = read_optional(cg._file("io.stat"))
    if not text:
        return
    blkio = out["blkio"]
    names = {
        "rbytes": ("ioServiceBytesRecursive", "Read"),
        "wbytes": ("ioServiceBytesRecursive", "Write"),
        "rios": ("ioServicedRecursive", "Read"),
        "wios": ("ioServicedRecursive", "Write"),
    }
    for line in text.splitlines():
        fields = line.split()
        if not fields:
            continue
        major, _, minor = fields[0].partition(":")
        if not (major.isdigit() and minor.isdigit()):
            continue
        for item in fields[1:]:
            key, _, value = item.partition("=")
            if key in names and value.isdigit():
                table, op = names[key]
                blkio[table].append({"major": int(major), "minor": int(minor), "op": op, "value": int(value)})


def v2_hugetlb(cg: V2Cgroup) -> dict[str, dict[str, int]]:
    result: dict[str, dict[str, int]] = {}
    for size in hugepage_sizes():
        current = read_optional(cg._file(f"hugetlb.{size}.current"))
        if current is None:
            continue
        events = parse_keyed(read_optional(cg._file(f"hugetlb.{size}.events")))
        result[size] = {"usage": parse_uint(current), "max": 0, "failcnt": events.get("max", 0)}
    return result
