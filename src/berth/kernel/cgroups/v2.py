"""cgroup v2: one directory in the unified hierarchy.

Used on unified hosts for everything, and on hybrid hosts as the cgroup2 half of a
:class:`~berth.kernel.cgroups.v1.V1Cgroup` (freeze, kill, and controllers v1 does not have).

OCI resources map onto v2 files the way runc maps them:

* ``memory.limit`` → ``memory.max``; ``reservation`` → ``memory.low``; ``swap`` (v1's memory+swap
  total) → ``memory.swap.max`` = swap - limit. ``kernel``, ``kernelTCP``, ``swappiness``,
  ``disableOOMKiller`` and ``useHierarchy`` have no v2 file and are ignored.
* ``cpu.shares`` → ``cpu.weight`` (see :func:`~._common.shares_to_weight`); ``quota``/``period`` →
  ``cpu.max``; ``burst`` → ``cpu.max.burst``; ``idle`` → ``cpu.idle``; ``cpus``/``mems`` →
  ``cpuset.*``. Realtime settings raise Unsupported (v2 has no RT group scheduling).
* ``blockIO.weight`` → ``io.bfq.weight`` as is when BFQ offers it, else ``io.weight`` converted;
  ``throttle*Device`` → ``io.max`` (rate 0 → ``max``); ``leafWeight`` has no v2 meaning, ignored.
* ``hugepageLimits`` → ``hugetlb.<size>.max`` and ``.rsvd.max`` when the kernel has it.
* ``network`` raises Unsupported: v2 has no net_cls/net_prio.
* ``devices``: v2 controls devices with an eBPF program attached to the cgroup: the rules are
  replayed with v1's semantics and compiled into one (see :mod:`._bpf`), which replaces any
  device program attached before. Unsupported when the kernel refuses bpf(2).
* ``unified`` is written last, so it overrides the above, one line per write(2).

A controller that is not enabled for the cgroup (absent from its ``cgroup.controllers``) makes
any field needing it raise Unsupported.
"""

from __future__ import annotations

import os

from berth.errors import BerthError, Conflict, Unsupported
from berth.kernel.cgroups._common import (
    FIELD,
    SIGKILL,
    Cgroup,
    blkio_weight_to_io_weight,
    cgroup_procs,
    enter_files,
    hugepage_sizes,
    make_dirs,
    parse_keyed,
    parse_uint,
    rdma_line,
    read_optional,
    read_text,
    remove_tree,
    shares_to_weight,
    signal_pids,
    swap_to_v2,
    validate_resources,
    wait_until,
    write,
    write_either_order,
    write_lines,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

FREEZE_TIMEOUT = 5.0


def _num(value: int) -> str:
    return "max" if value == -1 else str(value)


class V2Cgroup(Cgroup):
    """A cgroup at ``directory`` in the cgroup2 hierarchy mounted at ``mountpoint``."""

    version = 2

    def __init__(self, path: str, directory: str, mountpoint: str) -> None:
        self.path = path
        self.dir = directory.rstrip("/") or "/"
        self.mountpoint = mountpoint.rstrip("/") or "/"
        #: the device rules of the filter attached by the last :meth:`apply`
        self.device_rules: list[dict[str, Any]] = []

    def _file(self, name: str) -> str:
        return os.path.join(self.dir, name)

    @property
    def paths(self) -> dict[str, str]:
        return {"": self.dir}

    # ---------------------------------------------------------------- lifecycle

    def exists(self) -> bool:
        return os.path.isdir(self.dir)

    def create(self) -> bool:
        """mkdir -p the cgroup, and enable every available controller in each ancestor's
        ``cgroup.subtree_control`` (best effort: an ancestor holding processes refuses, and the
        fields needing those controllers then fail in :meth:`apply`). True when the cgroup's
        directory was made here: it then holds no process."""
        fresh = bool(make_dirs(self.dir))
        self._enable_controllers()
        return fresh

    def _ancestors(self) -> list[str]:
        if self.dir == self.mountpoint or not self.dir.startswith(self.mountpoint.rstrip("/") + "/"):
            return []
        chain = []
        current = os.path.dirname(self.dir)
        while True:
            chain.append(current)
            if current == self.mountpoint or len(current) <= len(self.mountpoint):
                break
            current = os.path.dirname(current)
        chain.reverse()
        return chain

    def _enable_controllers(self) -> None:
        ancestors = self._ancestors()
        if not ancestors:
            return
        # The usual case in two reads: the cgroup already has every controller the root has, so
        # every ancestor on the way enables them all (a level has only what its parent enables).
        top = (read_optional(os.path.join(ancestors[0], "cgroup.controllers")) or "").split()
        if set(top) <= set((read_optional(self._file("cgroup.controllers")) or "").split()):
            return
        for ancestor in ancestors:
            available = (read_optional(os.path.join(ancestor, "cgroup.controllers")) or "").split()
            enabled = (read_optional(os.path.join(ancestor, "cgroup.subtree_control")) or "").split()
            missing = [c for c in available if c not in enabled]
            if not missing:
                continue
            target = os.path.join(ancestor, "cgroup.subtree_control")
            try:
                write(target, " ".join("+" + c for c in missing))
            except BerthError:
                for c in missing:
                    try:
                        write(target, "+" + c)
                    except BerthError:
                        pass

    def destroy(self) -> None:
        remove_tree(self.dir)

    def add(self, pid: int) -> None:
        write(self._file("cgroup.procs"), str(pid), f"pid {pid}")

    def entry_files(self) -> list[str]:
        """The file the calling process writes "0" to, to move itself in (cgroup v2 has no cheaper
        single-thread move for a domain cgroup)."""
        return [self._file("cgroup.procs")]

    def enter(self) -> None:
        enter_files(self.entry_files())

    def pids(self) -> list[int]:
        return sorted(set(cgroup_procs(self.dir)))

    # ---------------------------------------------------------------- freezer and kill

    def _frozen(self) -> bool:
        return parse_keyed(read_optional(self._file("cgroup.events"))).get("frozen") == 1

    def freeze(self) -> None:
        """Write ``cgroup.freeze`` and wait until ``cgroup.events`` says ``frozen 1``."""
        path = self._file("cgroup.freeze")
        if not os.path.exists(path):
            read_text(self._file("cgroup.procs"))  # NotFound when the cgroup itself is gone
            raise Unsupported(f"this kernel has no cgroup.freeze in {self.dir}")
        write(path, "1")
        if not wait_until(self._frozen, FREEZE_TIMEOUT):
            write(path, "0")
            raise BerthError(f"freezing cgroup {self.dir} timed out")

    def thaw(self) -> None:
        path = self._file("cgroup.freeze")
        if not os.path.exists(path):
            read_text(self._file("cgroup.procs"))
            return
        write(path, "0")
        wait_until(lambda: not self._frozen(), FREEZE_TIMEOUT)

    def state(self) -> str:
        """``frozen`` when freezing was asked for here or the cgroup is frozen (e.g. by a frozen
        parent), else ``thawed``."""
        freeze = read_optional(self._file("cgroup.freeze"))
        if freeze is None:
            read_text(self._file("cgroup.procs"))
            return "thawed"
        return "frozen" if freeze.strip() == "1" or self._frozen() else "thawed"

    def can_kill(self) -> bool:
        return os.path.exists(self._file("cgroup.kill"))

    def kill_all(self, sig: int = SIGKILL) -> None:
        """Signal every process: ``cgroup.kill`` for SIGKILL where the kernel has it (5.14+),
        otherwise freeze, signal each pid, and restore the freezer state (always thawing after
        SIGKILL so the processes can die)."""
        if sig == SIGKILL and self.can_kill():
            write(self._file("cgroup.kill"), "1")
            return
        was_frozen = self.state() == "frozen"
        froze = False
        if not was_frozen:
            try:
                self.freeze()
                froze = True
            except (Unsupported, BerthError):
                froze = False
        try:
            signal_pids(self.pids(), sig)
        finally:
            if froze or (was_frozen and sig == SIGKILL):
                self.thaw()

    # ---------------------------------------------------------------- resources

    def controllers(self) -> set[str]:
        """The controllers enabled for this cgroup (its ``cgroup.controllers``)."""
        return set(read_text(self._file("cgroup.controllers")).split())

    def apply(self, resources: dict[str, Any] | None) -> None:
        res = validate_resources(resources)
        self.apply_validated(res)

    def apply_validated(self, res: dict[str, Any]) -> None:
        if not res:
            return
        available = self.controllers()

        def need(controller: str, field: str) -> None:
            if controller not in available:
                raise Unsupported(
                    f"{field}: the {controller} controller is not enabled for cgroup {self.dir}"
                    f" (enabled: {' '.join(sorted(available)) or 'none'})"
                )

        if "memory" in res:
            self._apply_memory(res["memory"], need)
        if "cpu" in res:
            self._apply_cpu(res["cpu"], need)
        if "pids" in res and "limit" in res["pids"]:
            need("pids", f"{FIELD}.pids.limit")
            write(self._file("pids.max"), _num(res["pids"]["limit"]), f"{FIELD}.pids.limit")
        if "blockIO" in res:
            self._apply_io(res["blockIO"], need)
        if "hugepageLimits" in res:
            self.apply_hugetlb(res["hugepageLimits"], need)
        if "devices" in res:
            self.apply_devices(res["devices"])
        if "network" in res:
            raise Unsupported(f"{FIELD}.network: cgroup v2 has no net_cls/net_prio controllers")
        if "rdma" in res:
            need("rdma", f"{FIELD}.rdma")
            lines = [rdma_line(dev, entry) for dev, entry in res["rdma"].items()]
            write_lines(self._file("rdma.max"), lines, f"{FIELD}.rdma")
        if "unified" in res:
            self.apply_unified(res["unified"], available)

    def _apply_memory(self, m: dict[str, Any], need: Any) -> None:
        f = f"{FIELD}.memory"
        limit = m.get("limit")
        if limit == 0:
            limit = None  # 0 means unset, as in runc
        reservation = m.get("reservation")
        swap = swap_to_v2(m.get("swap"), limit)
        if limit is None and reservation in (None, 0) and swap is None:
            return
        need("memory", f)
        if m.get("checkBeforeUpdate") and limit is not None and limit > 0:
            current = parse_uint(read_optional(self._file("memory.current")))
            if current > limit:
                raise Conflict(f"{f}.limit: {limit} is below the current usage {current}")
        if swap is not None:
            value = _num(swap)
            path = self._file("memory.swap.max")
            if os.path.exists(path):
                write(path, value, f"{f}.swap")
            elif value not in ("max", "0"):
                raise Unsupported(f"{f}.swap: swap accounting is not available (no memory.swap.max)")
        if limit is not None:
            write(self._file("memory.max"), _num(limit), f"{f}.limit")
        if reservation not in (None, 0):
            write(self._file("memory.low"), _num(reservation), f"{f}.reservation")

    def _apply_cpu(self, c: dict[str, Any], need: Any) -> None:
        f = f"{FIELD}.cpu"
        if c.get("realtimeRuntime") or c.get("realtimePeriod"):
            raise Unsupported(f"{f}.realtimeRuntime: cgroup v2 has no realtime group scheduling")
        shares = c.get("shares")
        if shares:
            need("cpu", f"{f}.shares")
            write(self._file("cpu.weight"), str(shares_to_weight(shares)), f"{f}.shares")
        quota = c.get("quota")
        period = c.get("period")
        if quota == 0:
            quota = None
        if period == 0:
            period = None
        burst = c.get("burst")
        cpu_max = None
        if quota is not None or period is not None:
            need("cpu", f"{f}.quota")
            if quota is None:
                current = (read_optional(self._file("cpu.max")) or "max").split()
                quota_text = current[0] if current else "max"
            else:
                quota_text = "max" if quota < 0 else str(quota)
            cpu_max = quota_text if period is None else f"{quota_text} {period}"
        if burst is not None:
            need("cpu", f"{f}.burst")
            burst_file = (self._file("cpu.max.burst"), str(burst))
            if cpu_max is not None:
                write_either_order((self._file("cpu.max"), cpu_max), burst_file, f"{f}.quota")
            else:
                write(*burst_file, f"{f}.burst")
        elif cpu_max is not None:
            write(self._file("cpu.max"), cpu_max, f"{f}.quota")
        if c.get("idle") is not None:
            need("cpu", f"{f}.idle")
            write(self._file("cpu.idle"), str(c["idle"]), f"{f}.idle")
        for key in ("cpus", "mems"):
            if c.get(key):
                need("cpuset", f"{f}.{key}")
                write(self._file(f"cpuset.{key}"), c[key], f"{f}.{key}")

    def _apply_io(self, b: dict[str, Any], need: Any) -> None:
        f = f"{FIELD}.blockIO"
        throttles = (
            ("throttleReadBpsDevice", "rbps"),
            ("throttleWriteBpsDevice", "wbps"),
            ("throttleReadIOPSDevice", "riops"),
            ("throttleWriteIOPSDevice", "wiops"),
        )
        devices = [e for e in b.get("weightDevice", []) if e.get("weight") is not None]
        if not (b.get("weight") or devices or any(b.get(k) for k, _ in throttles)):
            return
        need("io", f)
        bfq = os.path.exists(self._file("io.bfq.weight"))
        if b.get("weight"):
            if bfq:
                write(self._file("io.bfq.weight"), str(b["weight"]), f"{f}.weight")
            else:
                write(self._file("io.weight"), str(blkio_weight_to_io_weight(b["weight"])), f"{f}.weight")
        if devices:
            if bfq:
                lines = [f"{e['major']}:{e['minor']} {e['weight']}" for e in devices]
                write_lines(self._file("io.bfq.weight"), lines, f"{f}.weightDevice")
            else:
                lines = [f"{e['major']}:{e['minor']} {blkio_weight_to_io_weight(e['weight'])}" for e in devices]
                write_lines(self._file("io.weight"), lines, f"{f}.weightDevice")
        lines, fields = [], []
        for key, name in throttles:
            for i, e in enumerate(b.get(key, [])):
                lines.append(f"{e['major']}:{e['minor']} {name}={e['rate'] or 'max'}")
                fields.append(f"{f}.{key}[{i}]")
        write_lines(self._file("io.max"), lines, fields)

    def apply_devices(self, rules: list[dict[str, Any]]) -> None:
        """Replace the cgroup's eBPF device filter with one enforcing validated ``rules``."""
        from berth.kernel.cgroups._bpf import attach_device_filter

        attach_device_filter(self.dir, rules)
        self.device_rules = list(rules)

    def apply_hugetlb(self, limits: list[dict[str, Any]], need: Any = None) -> None:
        """Write validated ``hugepageLimits`` (also used by hybrid hosts' v1 cgroups)."""
        if need is not None:
            need("hugetlb", f"{FIELD}.hugepageLimits")
        for entry in limits:
            size, field = entry["pageSize"], entry["field"]
            path = self._file(f"hugetlb.{size}.max")
            if not os.path.exists(path):
                read_text(self._file("cgroup.procs"))
                raise Unsupported(f"{field}.pageSize: no {size} huge pages here (sizes: {', '.join(hugepage_sizes())})")
            write(path, str(entry["limit"]), f"{field}.limit")
            rsvd = self._file(f"hugetlb.{size}.rsvd.max")
            if os.path.exists(rsvd):
                write(rsvd, str(entry["limit"]), f"{field}.limit")

    def apply_unified(self, values: dict[str, str], available: set[str] | None = None) -> None:
        """Write ``linux.resources.unified``: each key is a file here, its value written a line at a
        time. Unsupported when the key's controller is not enabled and there is no such file."""
        if available is None:
            available = self.controllers()
        for key, value in values.items():
            field = f"{FIELD}.unified.{key}"
            controller = key.split(".", 1)[0]
            path = self._file(key)
            if not os.path.exists(path):
                if controller != "cgroup" and controller not in available:
                    raise Unsupported(f"{field}: the {controller} controller is not enabled for {self.dir}")
                raise Unsupported(f"{field}: this kernel has no {key} in {self.dir}")
            lines = [line for line in value.split("\n") if line.strip()] or [value]
            write_lines(path, lines, field)

    # ---------------------------------------------------------------- statistics

    def oom_kill_count(self) -> int:
        return parse_keyed(read_optional(self._file("memory.events"))).get("oom_kill", 0)

    def stats(self) -> dict[str, Any]:
        read_text(self._file("cgroup.procs"))  # NotFound when gone
        from berth.kernel.cgroups._stats import v2_stats

        return v2_stats(self)

