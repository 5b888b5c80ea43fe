"""cgroup v1: one directory per mounted hierarchy (co-mounted controllers share one), plus, on
hybrid hosts, the container's directory in the cgroup2 hierarchy.

On a hybrid host the cgroup2 half is created and joined too, so that

* freezing uses ``cgroup.freeze`` when no v1 freezer is mounted,
* SIGKILL uses ``cgroup.kill``,
* controllers bound to v2 rather than v1 (e.g. hugetlb) serve ``hugepageLimits``, ``rdma`` and
  ``unified``.

OCI resources map onto v1 files as runc maps them:

* ``memory``: ``limit`` → ``memory.limit_in_bytes``, ``swap`` → ``memory.memsw.limit_in_bytes``
  (written before or after the limit, whichever order the kernel accepts; ``limit`` -1 with no
  ``swap`` makes swap unlimited too), ``reservation`` → ``memory.soft_limit_in_bytes``,
  ``kernelTCP`` → ``memory.kmem.tcp.limit_in_bytes`` when present, ``swappiness``,
  ``disableOOMKiller`` → ``memory.oom_control``, ``useHierarchy``. ``kernel`` is ignored (the
  kernel deprecated kmem limits). A ``limit`` of 0 means unset.
* ``cpu``: ``shares`` (read back: the kernel clamps), ``cfs_period_us``/``cfs_quota_us``,
  ``cfs_burst_us``, ``rt_period_us``/``rt_runtime_us``, ``idle``; ``cpus``/``mems`` → cpuset.
* ``blockIO``: ``blkio.weight`` or, without CFQ, ``blkio.bfq.weight``; ``leaf_weight``;
  ``weight_device``; ``throttle.*_device``.
* ``devices``: each rule written to ``devices.allow`` or ``devices.deny`` in the listed order (an
  eBPF filter on the cgroup2 half when a hybrid host has no v1 devices controller).
* ``network``: ``net_cls.classid``, ``net_prio.ifpriomap`` (Unsupported when not mounted).

A field whose controller is mounted nowhere raises Unsupported.
"""

from __future__ import annotations

import os

from berth.errors import BerthError, InvalidArgument, NotFound, PermissionDenied, Unsupported
from berth.kernel.cgroups._common import (
    FIELD,
    SIGKILL,
    Cgroup,
    cgroup_procs,
    device_line,
    enter_files,
    hugepage_sizes,
    make_dirs,
    parse_keyed,
    parse_uint,
    rdma_line,
    read_optional,
    read_text,
    remove_tree,
    signal_pids,
    validate_resources,
    wait_until,
    write,
    write_either_order,
    write_lines,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from berth.kernel.cgroups.v2 import V2Cgroup

FREEZE_TIMEOUT = 5.0


class V1Cgroup(Cgroup):
    """A container's cgroup in v1 hierarchies: ``dirs`` maps each controller (and named
    hierarchies such as ``name=systemd``) to its directory; ``unified`` is the cgroup2 half on
    hybrid hosts."""

    version = 1

    def __init__(self, path: str, dirs: dict[str, str], unified: V2Cgroup | None = None) -> None:
        self.path = path
        self.dirs = {k: v.rstrip("/") for k, v in dirs.items()}
        self.unified = unified
        self._unified_used = False  # set when apply() wrote resources to the cgroup2 half

    @property
    def paths(self) -> dict[str, str]:
        result = dict(self.dirs)
        if self.unified is not None:
            result[""] = self.unified.dir
        return result

    def _unique_dirs(self) -> list[str]:
        seen: list[str] = []
        for d in self.dirs.values():
            if d not in seen:
                seen.append(d)
        return seen

    def _dir(self, controller: str) -> str | None:
        return self.dirs.get(controller)

    def _need(self, controller: str, field: str) -> str:
        d = self.dirs.get(controller)
        if d is None:
            raise Unsupported(f"{field}: the {controller} cgroup controller is not mounted")
        return d

    # ---------------------------------------------------------------- lifecycle

    def exists(self) -> bool:
        if any(os.path.isdir(d) for d in self.dirs.values()):
            return True
        return self.unified is not None and self.unified.exists()

    def create(self) -> bool:
        """mkdir -p in every hierarchy; new cpuset cgroups get their parent's cpus and mems (v1
        leaves them empty, and an empty cpuset cannot hold a process). On a hybrid host whose
        cgroup2 hierarchy refuses us (read-only), the cgroup goes on without its cgroup2 half.
        True when every directory of the cgroup was made here: it then holds no process."""
        cpuset = self.dirs.get("cpuset")
        fresh = True
        for d in self._unique_dirs():
            created = make_dirs(d)
            fresh = fresh and bool(created)
            if d == cpuset:
                _fill_cpuset(created or [d])
        if self.unified is not None:
            try:
                fresh = self.unified.create() and fresh
            except PermissionDenied:
                self.unified = None  # e.g. a read-only cgroup2 mount in a container: v1 alone
        return fresh

    def destroy(self) -> None:
        for d in self._unique_dirs():
            remove_tree(d)
        if self.unified is not None:
            self.unified.destroy()

    def add(self, pid: int) -> None:
        """Move ``pid`` into the cgroup in every hierarchy (the cgroup2 one too on hybrid hosts)."""
        for d in self._unique_dirs():
            write(os.path.join(d, "cgroup.procs"), str(pid), f"pid {pid}")
        if self.unified is not None:
            self.unified.add(pid)

    def entry_files(self) -> list[str]:
        """The files a single-threaded process writes "0" to, to move itself in (``enter_files``).

        Each v1 hierarchy's ``tasks`` file: moving one thread skips the kernel's global threadgroup
        lock, whose RCU synchronisation makes a whole-process move (the ``cgroup.procs`` write
        ``add`` does) cost 5-25 ms. The cgroup2 half of a hybrid host has no such fast path, so it
        is joined only when it is needed: no v1 freezer, resources that only v2 holds, or other
        processes of the container already in it.
        """
        files = [os.path.join(d, "tasks") for d in self._unique_dirs()]
        if self.unified is not None and ("freezer" not in self.dirs or self._unified_used or self.unified.pids()):
            files += self.unified.entry_files()
        return files

    def enter(self) -> None:
        """Move the calling process, which must be single-threaded, into the cgroup."""
        enter_files(self.entry_files())

    def pids(self) -> list[int]:
        """Every process in the cgroup or below it, in any hierarchy."""
        found: set[int] = set()
        for d in self._unique_dirs():
            found.update(cgroup_procs(d))
        if self.unified is not None:
            found.update(cgroup_procs(self.unified.dir))
        return sorted(found)

    # ---------------------------------------------------------------- freezer and kill

    def _freezer_state(self, d: str) -> str:
        return read_text(os.path.join(d, "freezer.state")).strip()

    def freeze(self) -> None:
        """Freeze with the v1 freezer (waiting for FREEZING to become FROZEN), or with
        ``cgroup.freeze`` on a hybrid host without a v1 freezer."""
        d = self.dirs.get("freezer")
        if d is None:
            if self.unified is not None:
                self.unified.freeze()
                return
            raise Unsupported("the freezer cgroup controller is not mounted")
        path = os.path.join(d, "freezer.state")

        def frozen() -> bool:
            if self._freezer_state(d) == "FROZEN":
                return True
            write(path, "FROZEN")  # re-asking nudges tasks that were forking
            return False

        write(path, "FROZEN")
        if not wait_until(frozen, FREEZE_TIMEOUT):
            write(path, "THAWED")
            raise BerthError(f"freezing cgroup {d} timed out")

    def thaw(self) -> None:
        d = self.dirs.get("freezer")
        if d is None:
            if self.unified is not None:
                self.unified.thaw()
            return
        write(os.path.join(d, "freezer.state"), "THAWED")
        wait_until(lambda: self._freezer_state(d) == "THAWED", FREEZE_TIMEOUT)

    def state(self) -> str:
        d = self.dirs.get("freezer")
        if d is None:
            if self.unified is not None:
                return self.unified.state()
            if not self.exists():
                raise NotFound(f"cgroup {self.path} does not exist")
            return "thawed"
        return "frozen" if self._freezer_state(d) in ("FROZEN", "FREEZING") else "thawed"

    def kill_all(self, sig: int = SIGKILL) -> None:
        """Signal every process. SIGKILL goes through ``cgroup.kill`` too on hybrid hosts. The
        cgroup is frozen while signalling so forks cannot escape, and the freezer state is then
        restored (after SIGKILL it is always thawed, so the processes can die)."""
        if sig == SIGKILL and self.unified is not None and self.unified.can_kill():
            self.unified.kill_all(sig)  # cgroup.kill: atomic for everything in the cgroup2 half
            signal_pids(self.pids(), sig)  # and any process that joined the v1 hierarchies only
            if self.state() == "frozen":
                self.thaw()  # v1-frozen tasks die only once thawed
            return
        was_frozen = self.state() == "frozen"
        froze = False
        if not was_frozen:
            try:
                self.freeze()
                froze = True
            except BerthError:
                froze = False
        try:
            signal_pids(self.pids(), sig)
        finally:
            if froze or (was_frozen and sig == SIGKILL):
                self.thaw()

    # ---------------------------------------------------------------- resources

    def apply(self, resources: dict[str, Any] | None) -> None:
        res = validate_resources(resources)
        if not res:
            return
        if not self.exists():
            raise NotFound(f"cgroup {self.path} does not exist")
        if "unified" in res and self.unified is None:
            raise Unsupported(f"{FIELD}.unified: cgroup v2 is not mounted on this (legacy v1) host")
        if "devices" in res:
            self._apply_devices(res["devices"])
        if "memory" in res:
            self._apply_memory(res["memory"])
        if "cpu" in res:
            self._apply_cpu(res["cpu"])
        if "pids" in res and "limit" in res["pids"]:
            d = self._need("pids", f"{FIELD}.pids.limit")
            limit = res["pids"]["limit"]
            write(os.path.join(d, "pids.max"), "max" if limit == -1 else str(limit), f"{FIELD}.pids.limit")
        if "blockIO" in res:
            self._apply_blkio(res["blockIO"])
        if "hugepageLimits" in res:
            self._apply_hugetlb(res["hugepageLimits"])
        if "network" in res:
            self._apply_network(res["network"])
        if "rdma" in res:
            lines = [rdma_line(dev, entry) for dev, entry in res["rdma"].items()]
            rdma_dir = self.dirs.get("rdma")
            if rdma_dir is not None:
                write_lines(os.path.join(rdma_dir, "rdma.max"), lines, f"{FIELD}.rdma")
            elif self.unified is not None and "rdma" in self.unified.controllers():
                self._unified_used = True
                write_lines(os.path.join(self.unified.dir, "rdma.max"), lines, f"{FIELD}.rdma")
            else:
                raise Unsupported(f"{FIELD}.rdma: the rdma cgroup controller is not available")
        if "unified" in res:
            assert self.unified is not None
            self._unified_used = True
            self.unified.apply_unified(res["unified"])

    def _apply_devices(self, rules: list[dict[str, Any]]) -> None:
        if "devices" not in self.dirs and self.unified is not None:
            self._unified_used = True
            self.unified.apply_devices(rules)  # hybrid host without the v1 devices controller
            return
        d = self._need("devices", f"{FIELD}.devices")
        from itertools import groupby  # built in: no import cost

        # In order, each consecutive run of allow (or deny) rules through one open file.
        for allow, run in groupby(enumerate(rules), key=lambda item: bool(item[1]["allow"])):
            indexed = list(run)
            write_lines(os.path.join(d, "devices.allow" if allow else "devices.deny"),
                        [device_line(rule) for _, rule in indexed],
                        [f"{FIELD}.devices[{i}]" for i, _ in indexed])

    def _apply_memory(self, m: dict[str, Any]) -> None:
        f = f"{FIELD}.memory"
        limit = m.get("limit")
        if limit == 0:
            limit = None
        swap = m.get("swap")
        if swap == 0:
            swap = None
        settable = ("reservation", "kernelTCP", "swappiness", "disableOOMKiller", "useHierarchy")
        if limit is None and swap is None and not any(k in m for k in settable):
            return  # only "kernel" (ignored) or checkBeforeUpdate
        d = self._need("memory", f)

        def path(name: str) -> str:
            return os.path.join(d, name)

        memsw = path("memory.memsw.limit_in_bytes")
        has_swap = os.path.exists(memsw)
        if limit == -1 and swap is None and has_swap:
            swap = -1
        if swap is not None and not has_swap:
            raise Unsupported(f"{f}.swap: swap accounting is disabled (no memory.memsw.limit_in_bytes)")
        if limit is not None and swap is not None:
            current = parse_uint(read_text(path("memory.limit_in_bytes")))
            mem = (path("memory.limit_in_bytes"), str(limit))
            sw = (memsw, str(swap))
            if swap == -1 or current < swap:
                write_either_order(sw, mem, f"{f}.swap")
            else:
                write_either_order(mem, sw, f"{f}.limit")
        elif limit is not None:
            write(path("memory.limit_in_bytes"), str(limit), f"{f}.limit")
        elif swap is not None:
            write(memsw, str(swap), f"{f}.swap")
        if m.get("reservation") not in (None, 0):
            write(path("memory.soft_limit_in_bytes"), str(m["reservation"]), f"{f}.reservation")
        if m.get("kernelTCP") not in (None, 0) and os.path.exists(path("memory.kmem.tcp.limit_in_bytes")):
            write(path("memory.kmem.tcp.limit_in_bytes"), str(m["kernelTCP"]), f"{f}.kernelTCP")
        if m.get("swappiness") is not None:
            write(path("memory.swappiness"), str(m["swappiness"]), f"{f}.swappiness")
        if m.get("disableOOMKiller") is not None:
            write(path("memory.oom_control"), "1" if m["disableOOMKiller"] else "0", f"{f}.disableOOMKiller")
        if m.get("useHierarchy") is not None:
            write(path("memory.use_hierarchy"), "1" if m["useHierarchy"] else "0", f"{f}.useHierarchy")

    def _apply_cpu(self, c: dict[str, Any]) -> None:
        f = f"{FIELD}.cpu"
        cpu_keys = ("shares", "quota", "period", "burst", "realtimeRuntime", "realtimePeriod", "idle")
        if any(c.get(k) is not None for k in cpu_keys):
            d = self._need("cpu", f)

            def path(name: str) -> str:
                return os.path.join(d, name)

            shares = c.get("shares")
            if shares:
                write(path("cpu.shares"), str(shares), f"{f}.shares")
                got = parse_uint(read_optional(path("cpu.shares")))
                if got != shares:
                    raise InvalidArgument(f"{f}.shares: {shares} is out of the kernel's range (it set {got})")
            quota, period = c.get("quota") or None, c.get("period") or None
            if period is not None and quota is not None:
                write_either_order(
                    (path("cpu.cfs_period_us"), str(period)), (path("cpu.cfs_quota_us"), str(quota)), f"{f}.period"
                )
            elif period is not None:
                write(path("cpu.cfs_period_us"), str(period), f"{f}.period")
            elif quota is not None:
                write(path("cpu.cfs_quota_us"), str(quota), f"{f}.quota")
            if c.get("burst") is not None:
                write(path("cpu.cfs_burst_us"), str(c["burst"]), f"{f}.burst")
            rt_runtime, rt_period = c.get("realtimeRuntime"), c.get("realtimePeriod") or None
            if rt_period is not None and rt_runtime is not None:
                write_either_order(
                    (path("cpu.rt_period_us"), str(rt_period)),
                    (path("cpu.rt_runtime_us"), str(rt_runtime)),
                    f"{f}.realtimePeriod",
                )
            elif rt_period is not None:
                write(path("cpu.rt_period_us"), str(rt_period), f"{f}.realtimePeriod")
            elif rt_runtime is not None:
                write(path("cpu.rt_runtime_us"), str(rt_runtime), f"{f}.realtimeRuntime")
            if c.get("idle") is not None:
                write(path("cpu.idle"), str(c["idle"]), f"{f}.idle")
        for key in ("cpus", "mems"):
            if c.get(key):
                d = self._need("cpuset", f"{f}.{key}")
                write(os.path.join(d, f"cpuset.{key}"), c[key], f"{f}.{key}")

    def _apply_blkio(self, b: dict[str, Any]) -> None:
        f = f"{FIELD}.blockIO"
        d = self._need("blkio", f)

        def path(name: str) -> str:
            return os.path.join(d, name)

        # CFQ's files when the kernel has them, BFQ's otherwise (CFQ left the kernel in 5.0)
        cfq = os.path.exists(path("blkio.weight"))
        weight_file = "blkio.weight" if cfq else "blkio.bfq.weight"
        weight_device_file = "blkio.weight_device" if cfq else "blkio.bfq.weight_device"
        if b.get("weight"):
            write(path(weight_file), str(b["weight"]), f"{f}.weight")
        if b.get("leafWeight"):
            write(path("blkio.leaf_weight"), str(b["leafWeight"]), f"{f}.leafWeight")
        for i, e in enumerate(b.get("weightDevice", [])):
            g = f"{f}.weightDevice[{i}]"
            if e.get("weight") is not None:
                write(path(weight_device_file), f"{e['major']}:{e['minor']} {e['weight']}", f"{g}.weight")
            if e.get("leafWeight") is not None:
                write(
                    path("blkio.leaf_weight_device"), f"{e['major']}:{e['minor']} {e['leafWeight']}", f"{g}.leafWeight"
                )
        for key, name in (
            ("throttleReadBpsDevice", "blkio.throttle.read_bps_device"),
            ("throttleWriteBpsDevice", "blkio.throttle.write_bps_device"),
            ("throttleReadIOPSDevice", "blkio.throttle.read_iops_device"),
            ("throttleWriteIOPSDevice", "blkio.throttle.write_iops_device"),
        ):
            lines = [f"{e['major']}:{e['minor']} {e['rate']}" for e in b.get(key, [])]
            write_lines(path(name), lines, f"{f}.{key}")

    def _apply_hugetlb(self, limits: list[dict[str, Any]]) -> None:
        d = self.dirs.get("hugetlb")
        if d is None:
            if self.unified is not None and "hugetlb" in self.unified.controllers():
                self._unified_used = True
                self.unified.apply_hugetlb(limits)
                return
            raise Unsupported(f"{FIELD}.hugepageLimits: the hugetlb cgroup controller is not available")
        for entry in limits:
            size, field = entry["pageSize"], entry["field"]
            limit_file = os.path.join(d, f"hugetlb.{size}.limit_in_bytes")
            if not os.path.exists(limit_file):
                raise Unsupported(f"{field}.pageSize: no {size} huge pages here (sizes: {', '.join(hugepage_sizes())})")
            write(limit_file, str(entry["limit"]), f"{field}.limit")
            rsvd = os.path.join(d, f"hugetlb.{size}.rsvd.limit_in_bytes")
            if os.path.exists(rsvd):
                write(rsvd, str(entry["limit"]), f"{field}.limit")

    def _apply_network(self, n: dict[str, Any]) -> None:
        f = f"{FIELD}.network"
        if n.get("classID") is not None:
            d = self._need("net_cls", f"{f}.classID")
            write(os.path.join(d, "net_cls.classid"), str(n["classID"]), f"{f}.classID")
        if n.get("priorities"):
            d = self._need("net_prio", f"{f}.priorities")
            lines = [f"{p['name']} {p['priority']}" for p in n["priorities"]]
            write_lines(os.path.join(d, "net_prio.ifpriomap"), lines, f"{f}.priorities")

    # ---------------------------------------------------------------- statistics

    def stats(self) -> dict[str, Any]:
        if not self.exists():
            raise NotFound(f"cgroup {self.path} does not exist")
        from berth.kernel.cgroups._stats import v1_stats

        return v1_stats(self)

    def oom_kill_count(self) -> int:
        d = self.dirs.get("memory")
        if d is None:
            return self.unified.oom_kill_count() if self.unified is not None else 0
        return parse_keyed(read_optional(os.path.join(d, "memory.oom_control"))).get("oom_kill", 0)


def _fill_cpuset(created: list[str]) -> None:
    """Give new cpuset cgroups (``created`` by :func:`make_dirs`, outermost first) their parent's
    ``cpuset.cpus`` and ``cpuset.mems``: v1 leaves them empty, and an empty cpuset cannot hold a
    process. The kernel copies them itself when the parent has ``cgroup.clone_children``; the
    directories made here get that flag, so that the cgroups made below them later (the next
    containers') need no copying. Ancestors left empty by someone else are filled too, top-down."""
    leaf = created[-1]
    values = _cpuset_values(leaf)
    if values is None or all(values.values()):
        return  # not a cpuset cgroup, or cloned by the kernel
    chain = [(leaf, values)]
    current = leaf
    while True:
        parent = os.path.dirname(current)
        above = _cpuset_values(parent) if parent != current else None
        if above is None:
            break
        chain.append((parent, above))
        if all(above.values()):
            break
        current = parent
    for (d, own), (_, above) in zip(reversed(chain[:-1]), reversed(chain[1:]), strict=True):
        for key in ("cpus", "mems"):
            if not own[key] and above[key]:
                write(os.path.join(d, f"cpuset.{key}"), above[key])
                own[key] = above[key]
    for d in created[:-1]:
        try:
            write(os.path.join(d, "cgroup.clone_children"), "1")
        except BerthError:
            pass  # only a shortcut for the next containers: they are filled as this one was


def _cpuset_values(directory: str) -> dict[str, str] | None:
    """``cpuset.cpus`` and ``cpuset.mems`` of a cgroup; None above the hierarchy's root."""
    cpus = read_optional(os.path.join(directory, "cpuset.cpus"))
    if cpus is None:
        return None
    return {"cpus": cpus.strip(), "mems": (read_optional(os.path.join(directory, "cpuset.mems")) or "").strip()}
