"""berth.kernel.cgroups: conversions and validation (unit), then the real kernel (root).

Root tests run against whatever the host has: ``open_cgroup`` picks v1 on legacy/hybrid hosts and
v2 on unified ones, and the ``v2`` tests force the cgroup2 implementation (on a hybrid host that is
the ``/sys/fs/cgroup/unified`` hierarchy, where few or no controllers are available). Every cgroup
lives under a unique top-level path and is removed by the fixture, processes killed first.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from berth.errors import Conflict, InvalidArgument, NotFound, Unsupported
from berth.kernel import cgroups
from berth.kernel.cgroups import Hierarchies, open_cgroup, open_paths, resolve_path, validate_resources
from berth.kernel.cgroups._bpf import compile_program, emulate
from berth.kernel.cgroups._common import (
    MAX_UINT64,
    blkio_weight_to_io_weight,
    device_line,
    page_size_bytes,
    page_size_name,
    parse_id_list,
    parse_keyed,
    remove_tree,
    shares_to_weight,
    swap_to_v2,
)
from berth.kernel.cgroups._stats import _blkio_entries
from berth.kernel.cgroups.v1 import V1Cgroup
from berth.kernel.cgroups.v2 import V2Cgroup

MiB = 1 << 20

# ================================================================================ unit


@pytest.mark.unit
class TestConversions:
    def test_shares_to_weight_anchors(self) -> None:
        assert shares_to_weight(0) == 0
        assert shares_to_weight(2) == 1
        assert shares_to_weight(1024) == 100
        assert shares_to_weight(262144) == 10000
        assert shares_to_weight(10**9) == 10000

    def test_shares_to_weight_is_monotonic_and_in_range(self) -> None:
        values = [shares_to_weight(s) for s in range(2, 262145, 997)]
        assert values == sorted(values)
        assert all(1 <= v <= 10000 for v in values)
        assert shares_to_weight(512) < 100 < shares_to_weight(2048)

    def test_blkio_weight_to_io_weight(self) -> None:
        assert blkio_weight_to_io_weight(0) == 0
        assert blkio_weight_to_io_weight(10) == 1
        assert blkio_weight_to_io_weight(1000) == 10000
        assert blkio_weight_to_io_weight(500) == 1 + 490 * 9999 // 990

    def test_swap_v1_total_becomes_v2_swap_only(self) -> None:
        assert swap_to_v2(256 * MiB, 128 * MiB) == 128 * MiB
        assert swap_to_v2(128 * MiB, 128 * MiB) == 0  # swap disabled
        assert swap_to_v2(-1, 128 * MiB) == -1
        assert swap_to_v2(None, 128 * MiB) is None
        assert swap_to_v2(0, 128 * MiB) is None
        assert swap_to_v2(None, -1) == -1  # memory unlimited and swap unset: both unlimited
        assert swap_to_v2(None, None) is None

    def test_swap_errors(self) -> None:
        with pytest.raises(InvalidArgument, match=r"linux\.resources\.memory\.swap: .*below"):
            swap_to_v2(64 * MiB, 128 * MiB)
        with pytest.raises(InvalidArgument, match=r"memory\.swap: .*needs a memory limit"):
            swap_to_v2(64 * MiB, None)

    def test_page_sizes(self) -> None:
        assert page_size_bytes("2MB", "f") == 2 * MiB
        assert page_size_bytes("64KB", "f") == 64 << 10
        assert page_size_bytes("1GB", "f") == 1 << 30
        assert page_size_name(2 * MiB) == "2MB"
        assert page_size_name(1 << 30) == "1GB"
        assert page_size_name(64 << 10) == "64KB"
        for bad in ("2M", "MB", "2XB", "-2MB", "2.5MB", ""):
            with pytest.raises(InvalidArgument, match="f: "):
                page_size_bytes(bad, "f")

    def test_parsers(self) -> None:
        assert parse_id_list("0-3,7\n") == [0, 1, 2, 3, 7]
        assert parse_id_list("") == []
        assert parse_keyed("a 1\nb max\nbad\n") == {"a": 1, "b": MAX_UINT64}
        text = "8:0 Read 4096\n8:0 Write 0\n8:0 Total 4096\n254:0 Sync 7\nTotal 4096\n"
        assert _blkio_entries(text) == [
            {"major": 8, "minor": 0, "op": "Read", "value": 4096},
            {"major": 8, "minor": 0, "op": "Write", "value": 0},
            {"major": 8, "minor": 0, "op": "Total", "value": 4096},
            {"major": 254, "minor": 0, "op": "Sync", "value": 7},
        ]
        assert _blkio_entries("8:16 1234\n") == [{"major": 8, "minor": 16, "op": "", "value": 1234}]

    def test_features(self) -> None:
        assert cgroups.features() == {
            "v1": True,
            "v2": True,
            "systemd": False,
            "systemdUser": False,
            "rdma": True,
        }


@pytest.mark.unit
class TestValidation:
    @pytest.mark.parametrize(
        ("resources", "message"),
        [
            ([], r"^linux\.resources: expected an object"),
            ({"memory": {"limit": "1g"}}, r"^linux\.resources\.memory\.limit: expected an integer, got string"),
            ({"memory": {"limit": True}}, r"^linux\.resources\.memory\.limit: expected an integer, got boolean"),
            ({"memory": {"limit": -5}}, r"^linux\.resources\.memory\.limit: -5 is negative"),
            ({"memory": {"swappiness": 101}}, r"^linux\.resources\.memory\.swappiness: 101 is out of range"),
            ({"memory": {"disableOOMKiller": 1}}, r"^linux\.resources\.memory\.disableOOMKiller: expected a bool"),
            ({"memory": {"limit": 100, "swap": 50}}, r"^linux\.resources\.memory\.swap: 50 is below"),
            ({"memory": 5}, r"^linux\.resources\.memory: expected an object, got integer"),
            ({"cpu": {"shares": -1}}, r"^linux\.resources\.cpu\.shares: -1 is out of range"),
            ({"cpu": {"quota": 1000, "burst": 2000}}, r"^linux\.resources\.cpu\.burst: 2000 is larger"),
            ({"cpu": {"cpus": "0-a"}}, r"^linux\.resources\.cpu\.cpus: '0-a' is not a list"),
            ({"cpu": {"mems": "3-1"}}, r"^linux\.resources\.cpu\.mems: "),
            ({"cpu": {"period": 2**64}}, r"^linux\.resources\.cpu\.period: .* out of range"),
            ({"pids": {"limit": -2}}, r"^linux\.resources\.pids\.limit: -2 is negative"),
            ({"pids": {"limit": 1.5}}, r"^linux\.resources\.pids\.limit: expected an integer, got number"),
            ({"blockIO": {"weight": 70000}}, r"^linux\.resources\.blockIO\.weight: 70000 is out of range"),
            (
                {"blockIO": {"weightDevice": [{"major": 8, "minor": 0}]}},
                r"^linux\.resources\.blockIO\.weightDevice\[0\]: needs weight or leafWeight",
            ),
            (
                {"blockIO": {"throttleReadBpsDevice": [{"major": 8, "rate": 1}]}},
                r"^linux\.resources\.blockIO\.throttleReadBpsDevice\[0\]\.minor: is required",
            ),
            (
                {"hugepageLimits": [{"pageSize": "2XB", "limit": 1}]},
                r"^linux\.resources\.hugepageLimits\[0\]\.pageSize: '2XB' is not a page size",
            ),
            (
                {"hugepageLimits": [{"pageSize": "2MB"}]},
                r"^linux\.resources\.hugepageLimits\[0\]\.limit: is required",
            ),
            ({"devices": [{"access": "rwm"}]}, r"^linux\.resources\.devices\[0\]\.allow: is required"),
            (
                {"devices": [{"allow": True}, {"allow": True, "access": "rx"}]},
                r"^linux\.resources\.devices\[1\]\.access: 'rx' is not a combination",
            ),
            ({"devices": [{"allow": True, "type": "x"}]}, r"^linux\.resources\.devices\[0\]\.type: 'x'"),
            ({"devices": [{"allow": True, "major": -3}]}, r"^linux\.resources\.devices\[0\]\.major: -3"),
            ({"devices": {}}, r"^linux\.resources\.devices: expected an array"),
            ({"network": {"classID": 2**32}}, r"^linux\.resources\.network\.classID: .* out of range"),
            (
                {"network": {"priorities": [{"name": "eth 0", "priority": 1}]}},
                r"^linux\.resources\.network\.priorities\[0\]\.name: ",
            ),
            ({"rdma": {"mlx5_1": {}}}, r"^linux\.resources\.rdma\.mlx5_1: needs hcaHandles or hcaObjects"),
            ({"unified": {"memory.max": 5}}, r"^linux\.resources\.unified\.memory\.max: expected a string"),
            ({"unified": {"../x.y": "1"}}, r"^linux\.resources\.unified\.\.\./x\.y: "),
            ({"unified": {"nodot": "1"}}, r"^linux\.resources\.unified\.nodot: "),
        ],
    )
    def test_bad_field_is_named(self, resources: object, message: str) -> None:
        with pytest.raises(InvalidArgument, match=message):
            validate_resources(resources)

    def test_normalizes(self) -> None:
        res = validate_resources(
            {
                "memory": {"limit": 1024 * MiB, "swappiness": -1, "kernel": -1},
                "cpu": {"cpus": "", "shares": 512, "quota": 1e5},
                "devices": [
                    {"allow": False, "access": "rwm"},
                    {"allow": True, "type": "c", "major": 1, "minor": -1, "access": "wr"},
                ],
                "hugepageLimits": [{"pageSize": "2048KB", "limit": 0}],
                "pids": {},
                "somethingNew": {"x": 1},
            }
        )
        assert res["memory"] == {"limit": 1024 * MiB, "kernel": -1}  # swappiness -1 means unset
        assert res["cpu"] == {"shares": 512, "quota": 100000}
        assert res["devices"] == [
            {"allow": False, "type": "a", "major": None, "minor": None, "access": "rwm"},
            {"allow": True, "type": "c", "major": 1, "minor": None, "access": "rw"},
        ]
        assert res["hugepageLimits"][0]["pageSize"] == "2MB"
        assert "pids" not in res and "somethingNew" not in res
        assert validate_resources(None) == {}

    def test_device_lines(self) -> None:
        rules = validate_resources(
            {
                "devices": [
                    {"allow": False, "access": "rwm"},
                    {"allow": True, "type": "c", "major": 10, "minor": 229, "access": "rw"},
                    {"allow": True, "type": "b", "major": 8},
                ]
            }
        )["devices"]
        assert [device_line(r) for r in rules] == ["a *:* rwm", "c 10:229 rw", "b 8:* rwm"]


@pytest.mark.unit
class TestDeviceEmulation:
    """The v2 eBPF filter replays the list with the v1 devices controller's semantics."""

    @staticmethod
    def rules(*items: dict[str, object]) -> list[dict[str, object]]:
        return validate_resources({"devices": list(items)})["devices"]

    def test_deny_all_then_allow(self) -> None:
        default, exc = emulate(
            self.rules(
                {"allow": False},
                {"allow": True, "type": "c", "major": 1, "minor": 3, "access": "r"},
                {"allow": True, "type": "c", "major": 1, "minor": 3, "access": "w"},
            )
        )
        assert default is False
        assert exc == [(2, 1, 3, 2 | 4)]  # merged into one exception, as v1 does

    def test_allow_all_then_deny_and_undo(self) -> None:
        default, exc = emulate(
            self.rules(
                {"allow": True},
                {"allow": False, "type": "b", "major": 8, "minor": 0, "access": "rw"},
                {"allow": True, "type": "b", "major": 8, "minor": 0, "access": "w"},
            )
        )
        assert default is True
        assert exc == [(1, 8, 0, 2)]

    def test_reset_drops_exceptions(self) -> None:
        default, exc = emulate(
            self.rules({"allow": True, "type": "c", "major": 1, "minor": 3}, {"allow": False, "access": "r"})
        )
        assert (default, exc) == (False, [])

    def test_program_shape(self) -> None:
        code = compile_program(False, [(2, 1, 3, 6), (2, 5, None, 7)])
        assert len(code) % 8 == 0
        # 6 prologue + (3 tests + 5) + (2 tests + 5) + 2 epilogue
        assert len(code) // 8 == 6 + 8 + 7 + 2
        assert code[-8:] == bytes([0x95, 0, 0, 0, 0, 0, 0, 0])


@pytest.mark.unit
class TestPaths:
    def test_resolve(self) -> None:
        assert resolve_path(None, "abc") == "/berth/abc"
        assert resolve_path("", "abc") == "/berth/abc"
        assert resolve_path("/a//b/./c/", "abc") == "/a/b/c"
        assert resolve_path("a/b", "abc") == "a/b"
        assert resolve_path("system.slice:berth:abc", "x") == "/system.slice/berth-abc.scope"
        assert resolve_path(":berth:", "abc") == "/system.slice/berth-abc.scope"
        assert resolve_path("a-b-c.slice:p:n", "x") == "/a.slice/a-b.slice/a-b-c.slice/p-n.scope"
        assert resolve_path("-.slice::n", "x") == "/n.scope"
        assert resolve_path("machine.slice:x:sub.slice", "x") == "/machine.slice/sub.slice"

    @pytest.mark.parametrize(
        "bad", ["/a/../b", "../x", "a/..", "/", "//.", ".", "bad:pre:x/y", "a--b.slice:p:n", "x:p:n"]
    )
    def test_resolve_rejects(self, bad: str) -> None:
        with pytest.raises(InvalidArgument, match=r"linux\.cgroupsPath"):
            resolve_path(bad, "abc")

    @pytest.mark.parametrize("bad", ["", "a/b", "..", "."])
    def test_bad_container_id(self, bad: str) -> None:
        with pytest.raises(InvalidArgument, match="container id"):
            resolve_path(None, bad)

    HYBRID = (
        "31 23 0:28 / /sys/fs/cgroup rw - tmpfs tmpfs rw,mode=755\n"
        "32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n"
        "35 31 0:32 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n"
        "40 31 0:37 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,xattr,name=systemd\n"
        "41 31 0:38 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw,nsdelegate\n"
    )
    KNOWN = {"cpu", "cpuacct", "memory", "pids", "hugetlb"}

    def test_hybrid(self) -> None:
        h = Hierarchies(self.HYBRID, "4:memory:/job/1\n1:cpu,cpuacct:/\n0::/user.slice\n", self.KNOWN)
        assert h.layout == "hybrid"
        assert set(h.v1) == {"cpu", "cpuacct", "memory", "name=systemd"}
        assert h.v2 == ("/sys/fs/cgroup/unified", "/")
        assert h.directory("memory", "/berth/x") == "/sys/fs/cgroup/memory/berth/x"
        assert h.directory("memory", "c/x") == "/sys/fs/cgroup/memory/job/1/c/x"
        assert h.directory("cpu", "c/x") == "/sys/fs/cgroup/cpu,cpuacct/c/x"
        assert h.directory("", "c/x") == "/sys/fs/cgroup/unified/user.slice/c/x"
        assert h.directory("name=systemd", "c") == "/sys/fs/cgroup/systemd/c"

    def test_unified_and_legacy(self) -> None:
        unified = "30 23 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n"
        h = Hierarchies(unified + "50 23 0:40 / /run/x rw - cgroup cgroup rw,name=systemd\n", "0::/\n", self.KNOWN)
        assert h.layout == "unified"
        assert h.directory("", "/berth/a") == "/sys/fs/cgroup/berth/a"
        legacy = "\n".join(line for line in self.HYBRID.splitlines() if "cgroup2" not in line)
        assert Hierarchies(legacy, "", self.KNOWN).layout == "legacy"
        with pytest.raises(Unsupported):
            _ = Hierarchies("", "", self.KNOWN).layout

    def test_mount_root_and_escapes(self) -> None:
        info = "41 31 0:38 /docker/abc /sys/fs/my\\040cgroup rw - cgroup2 cgroup2 rw\n"
        h = Hierarchies(info, "0::/docker/abc/sub\n", self.KNOWN)
        assert h.v2 == ("/sys/fs/my cgroup", "/docker/abc")
        assert h.directory("", "c") == "/sys/fs/my cgroup/sub/c"
        assert h.directory("", "/c") == "/sys/fs/my cgroup/c"


@pytest.mark.unit
class TestMappingOnFakeDirs:
    """The file each OCI field lands in, on plain directories standing in for cgroupfs: covers the
    v2 controllers and v1-only controllers this machine may not have."""

    V2_FILES = [
        "cgroup.procs",
        "memory.max",
        "memory.low",
        "memory.swap.max",
        "cpu.weight",
        "cpu.max",
        "cpu.max.burst",
        "cpu.idle",
        "cpuset.cpus",
        "cpuset.mems",
        "pids.max",
        "io.weight",
        "io.max",
        "hugetlb.2MB.max",
        "hugetlb.2MB.rsvd.max",
        "rdma.max",
        "memory.high",
    ]

    @staticmethod
    def fake(base: Path, name: str, files: list[str], content: dict[str, str] | None = None) -> str:
        d = base / name
        d.mkdir(parents=True)
        for f in files:
            (d / f).write_text((content or {}).get(f, ""))
        return str(d)

    def v2(
        self, tmp_path: Path, controllers: str = "cpuset cpu io memory hugetlb pids rdma", **content: str
    ) -> V2Cgroup:
        files = [*self.V2_FILES, "cgroup.controllers", *content]
        d = self.fake(tmp_path, "v2", files, {"cgroup.controllers": controllers, **content})
        return V2Cgroup("/x", d, str(tmp_path))

    def test_v2_mapping(self, tmp_path: Path) -> None:
        cg = self.v2(tmp_path)
        cg.apply(
            {
                "memory": {"limit": 128 * MiB, "swap": 256 * MiB, "reservation": 64 * MiB, "swappiness": 10},
                "cpu": {"shares": 1024, "quota": 50000, "period": 100000, "burst": 1000, "idle": 1, "cpus": "0-1"},
                "pids": {"limit": -1},
                "blockIO": {
                    "weight": 1000,
                    "leafWeight": 500,
                    "throttleReadBpsDevice": [{"major": 8, "minor": 0, "rate": 100}],
                    "throttleWriteIOPSDevice": [{"major": 8, "minor": 0, "rate": 0}],
                },
                "hugepageLimits": [{"pageSize": "2MB", "limit": 4 * MiB}],
                "rdma": {"mlx5_1": {"hcaHandles": 3, "hcaObjects": 10}},
                "unified": {"memory.high": "100000", "cpu.weight": "7"},
            }
        )
        got = {f: Path(cg.dir, f).read_text() for f in self.V2_FILES}
        assert got["memory.max"] == str(128 * MiB)
        assert got["memory.swap.max"] == str(128 * MiB)  # 256M of memory+swap = 128M of swap
        assert got["memory.low"] == str(64 * MiB)
        assert got["cpu.weight"] == "7"  # unified is written last and wins
        assert got["cpu.max"] == "50000 100000"
        assert got["cpu.max.burst"] == "1000"
        assert got["cpu.idle"] == "1"
        assert got["cpuset.cpus"] == "0-1"
        assert got["pids.max"] == "max"
        assert got["io.weight"] == "10000"
        assert got["io.max"] == "8:0 rbps=1008:0 wiops=max"  # two write(2)s: one line each
        assert got["hugetlb.2MB.max"] == got["hugetlb.2MB.rsvd.max"] == str(4 * MiB)
        assert got["rdma.max"] == "mlx5_1 hca_handle=3 hca_object=10"
        assert got["memory.high"] == "100000"

    def test_v2_shares_and_bfq(self, tmp_path: Path) -> None:
        cg = self.v2(tmp_path)
        Path(cg.dir, "io.bfq.weight").write_text("")
        cg.apply({"cpu": {"shares": 2048}, "blockIO": {"weight": 300}})
        assert Path(cg.dir, "cpu.weight").read_text() == str(shares_to_weight(2048))
        assert Path(cg.dir, "io.bfq.weight").read_text() == "300"  # BFQ takes v1's scale as is
        assert Path(cg.dir, "io.weight").read_text() == ""

    def test_v2_period_only_keeps_quota(self, tmp_path: Path) -> None:
        cg = self.v2(tmp_path, **{"cpu.max": "20000 100000\n"})
        cg.apply({"cpu": {"period": 50000}})
        assert Path(cg.dir, "cpu.max").read_text() == "20000 50000"

    def test_v2_swap_without_accounting(self, tmp_path: Path) -> None:
        cg = self.v2(tmp_path)
        os.unlink(os.path.join(cg.dir, "memory.swap.max"))
        cg.apply({"memory": {"limit": 64 * MiB, "swap": 64 * MiB}})  # "no swap" needs no file
        assert Path(cg.dir, "memory.max").read_text() == str(64 * MiB)
        with pytest.raises(Unsupported, match=r"linux\.resources\.memory\.swap: swap accounting"):
            cg.apply({"memory": {"limit": 64 * MiB, "swap": 128 * MiB}})

    def test_v2_controller_not_enabled(self, tmp_path: Path) -> None:
        cg = self.v2(tmp_path, controllers="cpu")
        with pytest.raises(Unsupported, match=r"^linux\.resources\.memory: the memory controller is not enabled"):
            cg.apply({"memory": {"limit": MiB}})
        with pytest.raises(Unsupported, match=r"linux\.resources\.cpu\.cpus: the cpuset controller"):
            cg.apply({"cpu": {"cpus": "0"}})
        with pytest.raises(Unsupported, match=r"linux\.resources\.unified\.memory\.nope: the memory controller"):
            cg.apply({"unified": {"memory.nope": "1"}})
        cg.apply({"memory": {"swappiness": 5, "kernel": 100, "disableOOMKiller": True}})  # v1-only: ignored

    def test_v2_stats(self, tmp_path: Path) -> None:
        cg = self.v2(
            tmp_path,
            **{
                "cpu.stat": "usage_usec 10\nuser_usec 6\nsystem_usec 4\nnr_periods 3\nnr_throttled 2\n"
                "throttled_usec 5\n",
                "memory.current": "1000\n",
                "memory.max": "max\n",
                "memory.peak": "2000\n",
                "memory.events": "low 0\nhigh 0\nmax 4\noom 1\noom_kill 1\n",
                "memory.stat": "anon 10\nfile 20\n",
                "memory.swap.current": "5\n",
                "memory.swap.max": "max\n",
                "pids.current": "2\n",
                "pids.max": "max\n",
                "io.stat": "8:0 rbytes=1 wbytes=2 rios=3 wios=4 dbytes=0 dios=0\n",
            },
        )
        s = cg.stats()
        assert s["cpu"]["usage"] == {
            "total": 10000,
            "percpu": [],
            "percpu_kernel": [],
            "percpu_user": [],
            "kernel": 4000,
            "user": 6000,
        }
        assert s["cpu"]["throttling"] == {"periods": 3, "throttledPeriods": 2, "throttledTime": 5000}
        assert s["memory"]["usage"] == {"limit": MAX_UINT64, "usage": 1000, "max": 2000, "failcnt": 4}
        assert s["memory"]["swap"]["usage"] == 1005 and s["memory"]["swap"]["limit"] == MAX_UINT64
        assert s["memory"]["cache"] == 20 and s["memory"]["raw"] == {"anon": 10, "file": 20}
        assert s["pids"] == {"current": 2, "limit": 0}
        assert s["blkio"]["ioServiceBytesRecursive"] == [
            {"major": 8, "minor": 0, "op": "Read", "value": 1},
            {"major": 8, "minor": 0, "op": "Write", "value": 2},
        ]
        assert cg.oom_kill_count() == 1

    def v1(self, tmp_path: Path) -> V1Cgroup:
        base = tmp_path / "v1"
        mem = self.fake(
            base,
            "memory",
            [
                "cgroup.procs",
                "memory.limit_in_bytes",
                "memory.memsw.limit_in_bytes",
                "memory.soft_limit_in_bytes",
                "memory.swappiness",
                "memory.oom_control",
                "memory.kmem.tcp.limit_in_bytes",
                "memory.use_hierarchy",
            ],
            {"memory.limit_in_bytes": "9223372036854771712\n"},
        )
        blkio = self.fake(
            base,
            "blkio",
            [
                "cgroup.procs",
                "blkio.weight",
                "blkio.leaf_weight",
                "blkio.weight_device",
                "blkio.leaf_weight_device",
                "blkio.throttle.read_bps_device",
                "blkio.throttle.write_iops_device",
            ],
        )
        net = self.fake(base, "net_cls,net_prio", ["cgroup.procs", "net_cls.classid", "net_prio.ifpriomap"])
        huge = self.fake(base, "hugetlb", ["cgroup.procs", "hugetlb.2MB.limit_in_bytes"])
        rdma = self.fake(base, "rdma", ["cgroup.procs", "rdma.max"])
        dirs = {"memory": mem, "blkio": blkio, "net_cls": net, "net_prio": net, "hugetlb": huge, "rdma": rdma}
        return V1Cgroup("/x", dirs, None)

    def test_v1_mapping(self, tmp_path: Path) -> None:
        cg = self.v1(tmp_path)
        cg.apply(
            {
                "memory": {
                    "limit": 64 * MiB,
                    "swap": 128 * MiB,
                    "reservation": MiB,
                    "kernelTCP": MiB,
                    "swappiness": 0,
                    "disableOOMKiller": True,
                    "useHierarchy": True,
                    "kernel": 5,
                },
                "blockIO": {
                    "weight": 200,
                    "leafWeight": 300,
                    "weightDevice": [{"major": 8, "minor": 0, "weight": 400, "leafWeight": 500}],
                    "throttleReadBpsDevice": [{"major": 8, "minor": 0, "rate": 100}],
                    "throttleWriteIOPSDevice": [{"major": 8, "minor": 16, "rate": 7}],
                },
                "network": {
                    "classID": 1048577,
                    "priorities": [{"name": "eth0", "priority": 5}, {"name": "lo", "priority": 1}],
                },
                "hugepageLimits": [{"pageSize": "2MB", "limit": 2 * MiB}],
                "rdma": {"mlx4_0": {"hcaObjects": 1000}},
            }
        )

        def read(controller: str, name: str) -> str:
            return Path(cg.paths[controller], name).read_text()

        assert read("memory", "memory.limit_in_bytes") == str(64 * MiB)
        assert read("memory", "memory.memsw.limit_in_bytes") == str(128 * MiB)
        assert read("memory", "memory.soft_limit_in_bytes") == str(MiB)
        assert read("memory", "memory.kmem.tcp.limit_in_bytes") == str(MiB)
        assert read("memory", "memory.swappiness") == "0"
        assert read("memory", "memory.oom_control") == "1"
        assert read("memory", "memory.use_hierarchy") == "1"
        assert read("blkio", "blkio.weight") == "200"
        assert read("blkio", "blkio.leaf_weight") == "300"
        assert read("blkio", "blkio.weight_device") == "8:0 400"
        assert read("blkio", "blkio.leaf_weight_device") == "8:0 500"
        assert read("blkio", "blkio.throttle.read_bps_device") == "8:0 100"
        assert read("blkio", "blkio.throttle.write_iops_device") == "8:16 7"
        assert read("net_cls", "net_cls.classid") == "1048577"
        assert read("net_prio", "net_prio.ifpriomap") == "eth0 5lo 1"  # two write(2)s
        assert read("hugetlb", "hugetlb.2MB.limit_in_bytes") == str(2 * MiB)
        assert read("rdma", "rdma.max") == "mlx4_0 hca_object=1000"

    def test_v1_legacy_errors(self, tmp_path: Path) -> None:
        cg = self.v1(tmp_path)
        with pytest.raises(Unsupported, match=r"linux\.resources\.unified: cgroup v2 is not mounted"):
            cg.apply({"unified": {"memory.high": "1"}})
        with pytest.raises(Unsupported, match=r"linux\.resources\.pids\.limit: the pids cgroup controller"):
            cg.apply({"pids": {"limit": 1}})
        with pytest.raises(Unsupported, match=r"hugepageLimits\[0\]\.pageSize: no 1GB huge pages"):
            cg.apply({"hugepageLimits": [{"pageSize": "1GB", "limit": 0}]})
        os.unlink(os.path.join(cg.paths["memory"], "memory.memsw.limit_in_bytes"))
        with pytest.raises(Unsupported, match=r"linux\.resources\.memory\.swap: swap accounting is disabled"):
            cg.apply({"memory": {"limit": MiB, "swap": 2 * MiB}})
        cg.apply({"memory": {"limit": -1}})  # unlimited: swap follows only where it can
        assert Path(cg.paths["memory"], "memory.limit_in_bytes").read_text() == "-1"


# ================================================================================ root: helpers


def _need_v1_controller(cg: cgroups.Cgroup, name: str) -> str:
    if not isinstance(cg, V1Cgroup):
        pytest.skip("a cgroup v1 test; this host's cgroups are v2")
    d = cg.paths.get(name)
    if d is None:
        pytest.skip(f"the {name} cgroup v1 controller is not mounted on this host")
    return d


def _read(path: str) -> str:
    with open(path) as f:
        return f.read().strip()


def _read_in(cg: cgroups.Cgroup, controller: str, name: str) -> str:
    return _read(os.path.join(cg.paths["" if cg.version == 2 else controller], name))


def _all_dirs(cg: cgroups.Cgroup) -> list[str]:
    return sorted(set(cg.paths.values()))


@pytest.fixture
def make_cgroup(request: pytest.FixtureRequest) -> Iterator[Callable[..., cgroups.Cgroup]]:
    """``make(version=None, path=None)`` → an uncreated cgroup at a unique top-level path; every
    one made is thawed, emptied and removed at teardown, and checked gone."""
    made: list[cgroups.Cgroup] = []

    def make(version: int | None = None, path: str | None = None) -> cgroups.Cgroup:
        cid = f"t{uuid.uuid4().hex[:10]}"
        try:
            cg = open_cgroup(path or f"/berth-test-{cid}", cid, version=version)
        except Unsupported as exc:
            pytest.skip(str(exc))
        made.append(cg)
        return cg

    yield make
    for cg in made:
        if not cg.exists():
            continue
        try:
            cg.thaw()
        except Exception:
            pass
        try:
            cg.kill_all()
        except Exception:
            pass
        deadline = time.monotonic() + 5
        while cg.pids() and time.monotonic() < deadline:
            time.sleep(0.02)
        cg.destroy()
        assert not cg.exists()


class Procs:
    """Processes started by a test, killed and reaped at teardown."""

    def __init__(self) -> None:
        self.all: list[subprocess.Popen[bytes]] = []

    def gated(self, argv: list[str]) -> subprocess.Popen[bytes]:
        """Start ``argv`` behind a gate: it runs only after a line arrives on stdin, so the test
        can move it into a cgroup first."""
        p = subprocess.Popen(
            ["sh", "-c", 'read _gate; exec "$@"', "sh", *argv],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self.all.append(p)
        return p

    def run_in(self, cg: cgroups.Cgroup, argv: list[str], timeout: float = 30) -> tuple[int, str, str]:
        p = self.gated(argv)
        cg.add(p.pid)
        out, err = p.communicate(b"go\n", timeout=timeout)
        return p.returncode, out.decode(), err.decode()

    def sleeper(self, cg: cgroups.Cgroup, seconds: int = 60) -> subprocess.Popen[bytes]:
        p = subprocess.Popen(["sleep", str(seconds)])
        self.all.append(p)
        cg.add(p.pid)
        return p


@pytest.fixture
def procs() -> Iterator[Procs]:
    tracker = Procs()
    yield tracker
    for p in tracker.all:
        if p.poll() is None:
            p.kill()
        try:
            p.communicate(timeout=10) if p.stdin else p.wait(timeout=10)
        except Exception:
            pass


def _proc_state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


def _counter_script(path: str) -> list[str]:
    return ["sh", "-c", f'i=0; while :; do i=$((i+1)); echo $i > "{path}"; sleep 0.01; done']


def _assert_stalls(path: str, frozen: bool) -> None:
    """While frozen the counter file must not move; after thawing it must."""
    first = _read(path)
    time.sleep(0.3)
    second = _read(path)
    if frozen:
        assert first == second, "a frozen process kept running"
    else:
        assert first != second, "a thawed process did not run"


def _block_device() -> tuple[int, int]:
    try:
        names = os.listdir("/sys/block")
    except FileNotFoundError:
        names = []
    for name in sorted(names):
        if name.startswith(("loop", "ram", "zram", "dm-", "nbd")):
            continue
        try:
            major, minor = _read(f"/sys/block/{name}/dev").split(":")
        except OSError:
            continue
        return int(major), int(minor)
    pytest.skip("no block device to throttle")


# ================================================================================ root: default implementation


@pytest.mark.root
class TestLifecycle:
    def test_layout_matches_mounts(self) -> None:
        assert cgroups.layout() in ("unified", "hybrid", "legacy")
        cg = open_cgroup("/x", "x")
        assert cg.version == (2 if cgroups.layout() == "unified" else 1)

    def test_create_destroy(self, make_cgroup: Callable[..., cgroups.Cgroup]) -> None:
        cg = make_cgroup()
        assert not cg.exists()
        cg.create()
        cg.create()  # idempotent
        assert cg.exists()
        for d in _all_dirs(cg):
            assert os.path.isdir(d), d
        if cgroups.layout() == "hybrid":
            assert "" in cg.paths and os.path.isdir(cg.paths[""])
        os.mkdir(os.path.join(_all_dirs(cg)[0], "child"))  # a nested cgroup goes too
        cg.destroy()
        cg.destroy()  # already gone: no error
        for d in _all_dirs(cg):
            assert not os.path.exists(d), d
        assert not cg.exists()

    def test_relative_path_is_under_own_cgroup(self, make_cgroup: Callable[..., cgroups.Cgroup]) -> None:
        h = cgroups.hierarchies()
        cg = make_cgroup(path=f"berth-rel-{uuid.uuid4().hex[:8]}")
        for key, d in cg.paths.items():
            own = h.own.get(key, "/")
            assert d.endswith(own.rstrip("/") + "/" + cg.path), (key, d)
        cg.create()
        assert all(os.path.isdir(d) for d in _all_dirs(cg))

    def test_apply_to_missing_cgroup(self, make_cgroup: Callable[..., cgroups.Cgroup]) -> None:
        cg = make_cgroup()
        with pytest.raises(NotFound):
            cg.apply({"pids": {"limit": 5}})
        with pytest.raises(NotFound):
            cg.add(os.getpid())

    def test_invalid_resources_write_nothing(self, make_cgroup: Callable[..., cgroups.Cgroup]) -> None:
        cg = make_cgroup()
        cg.create()
        before = cg.stats()["pids"]["limit"]
        with pytest.raises(InvalidArgument, match=r"linux\.resources\.memory\.limit"):
            cg.apply({"pids": {"limit": 7}, "memory": {"limit": "lots"}})
        assert cg.stats()["pids"]["limit"] == before

    def test_open_paths_round_trip(self, make_cgroup: Callable[..., cgroups.Cgroup], procs: Procs) -> None:
        cg = make_cgroup()
        cg.create()
        p = procs.sleeper(cg)
        again = open_paths(cg.paths)
        assert type(again) is type(cg)
        assert again.paths == cg.paths
        assert again.path == cg.path
        assert again.pids() == [p.pid]


@pytest.mark.root
class TestProcesses:
    def test_add_and_list_recursively(self, make_cgroup: Callable[..., cgroups.Cgroup], procs: Procs) -> None:
        cg = make_cgroup()
        cg.create()
        assert cg.pids() == []
        p = procs.gated(["sh", "-c", "sleep 60 & sleep 60 & wait"])
        cg.add(p.pid)
        assert p.stdin is not None
        p.stdin.write(b"go\n")
        p.stdin.flush()
        deadline = time.monotonic() + 5
        while len(cg.pids()) < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        pids = cg.pids()
        assert p.pid in pids and len(pids) == 3
        for pid in pids:
            with open(f"/proc/{pid}/cgroup") as f:
                lines = f.read().splitlines()
            assert all(line.endswith(f":{cg.path}") for line in lines), lines  # every hierarchy
        if cg.version == 1 and "" in cg.paths:  # hybrid: joined the cgroup2 half too
            assert p.pid in [int(x) for x in _read(os.path.join(cg.paths[""], "cgroup.procs")).split()]

    def test_kill_all_sigkill(self, make_cgroup: Callable[..., cgroups.Cgroup], procs: Procs) -> None:
        cg = make_cgroup()
        cg.create()
        sleepers = [procs.sleeper(cg) for _ in range(3)]
        cg.kill_all()
        for p in sleepers:
            assert p.wait(timeout=10) == -9
        assert cg.pids() == []
        cg.destroy()
        assert not cg.exists()

    def test_kill_all_sigterm_keeps_pause(self, make_cgroup: Callable[..., cgroups.Cgroup], procs: Procs) -> None:
        cg = make_cgroup()
        cg.create()
        p = procs.sleeper(cg)
        cg.kill_all(15)
        assert p.wait(timeout=10) == -15
        assert cg.state() == "thawed"

    def test_freeze_thaw(self, make_cgroup: Callable[..., cgroups.Cgroup], procs: Procs, tmp_path: Path) -> None:
        cg = make_cgroup()
        cg.create()
        counter = os.path.join(str(tmp_path), "counter")
        p = procs.gated(_counter_script(counter))
        cg.add(p.pid)
        assert p.stdin is not None
        p.stdin.write(b"go\n")
        p.stdin.flush()
        deadline = time.monotonic() + 5
        while not os.path.exists(counter) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert cg.state() == "thawed"
        cg.freeze()
        assert cg.state() == "frozen"
        if isinstance(cg, V1Cgroup) and "freezer" in cg.paths:
            assert _read_in(cg, "freezer", "freezer.state") == "FROZEN"
            assert _proc_state(p.pid) == "D"  # v1 freezer: TASK_FROZEN shows as D
        else:
            assert "frozen 1" in _read(os.path.join(cg.paths[""], "cgroup.events"))
        _assert_stalls(counter, frozen=True)
        cg.thaw()
        assert cg.state() == "thawed"
        _assert_stalls(counter, frozen=False)

    def test_kill_frozen(self, make_cgroup: Callable[..., cgroups.Cgroup], procs: Procs) -> None:
        cg = make_cgroup()
        cg.create()
        p = procs.sleeper(cg)
        cg.freeze()
        cg.kill_all()
        assert p.wait(timeout=10) == -9
        assert cg.state() == "thawed"


@pytest.mark.root
class TestResources:
    def test_memory(self, make_cgroup: Callable[..., cgroups.Cgroup]) -> None:
        cg = make_cgroup()
        cg.create()
        try:
            cg.apply({"memory": {"limit": 64 * MiB, "reservation": 32 * MiB}})
        except Unsupported as exc:
            pytest.skip(str(exc))
        if cg.version == 1:
            assert _read_in(cg, "memory", "memory.limit_in_bytes") == str(64 * MiB)
            assert _read_in(cg, "memory", "memory.soft_limit_in_bytes") == str(32 * MiB)
        else:
            assert _read_in(cg, "", "memory.max") == str(64 * MiB)
            assert _read_in(cg, "", "memory.low") == str(32 * MiB)
        assert cg.stats()["memory"]["usage"]["limit"] == 64 * MiB

    def test_memory_v1_swap_ordering(self, make_cgroup: Callable[..., cgroups.Cgroup]) -> None:
        cg = make_cgroup()
        d = _need_v1_controller(cg, "memory")
        cg.create()
        if not os.path.exists(os.path.join(d, "memory.memsw.limit_in_bytes")):
            pytest.skip("swap accounting is off (no memory.memsw.limit_in_bytes)")
        cg.apply({"memory": {"limit": 64 * MiB, "swap": 128 * MiB}})
        assert _read(os.path.join(d, "memory.memsw.limit_in_bytes")) == str(128 * MiB)
        # raising both: memsw must be written first, lowering both: memory first
        cg.apply({"memory": {"limit": 256 * MiB, "swap": 512 * MiB}})
        assert _read(os.path.join(d, "memory.limit_in_bytes")) == str(256 * MiB)
        assert _read(os.path.join(d, "memory.memsw.limit_in_bytes")) == str(512 * MiB)
        cg.apply({"memory": {"limit": 16 * MiB, "swap": 16 * MiB}})
        assert _read(os.path.join(d, "memory.memsw.limit_in_bytes")) == str(16 * MiB)
        cg.apply({"memory": {"limit": -1}})  # unlimited memory and, unset swap, unlimited swap
        assert int(_read(os.path.join(d, "memory.memsw.limit_in_bytes"))) > 2**62
        cg.apply({"memory": {"swappiness": 0, "disableOOMKiller": True}})
        assert _read(os.path.join(d, "memory.swappiness")) == "0"
        assert "oom_kill_disable 1" in _read(os.path.join(d, "memory.oom_control"))

    def test_cpu(self, make_cgroup: Callable[..., cgroups.Cgroup]) -> None:
        cg = make_cgroup()
        cg.create()
        try:
            cg.apply({"cpu": {"shares": 512, "quota": 50000, "period": 100000, "burst": 10000}})
        except Unsupported as exc:
            pytest.skip(str(exc))
        if cg.version == 1:
            assert _read_in(cg, "cpu", "cpu.shares") == "512"
            assert _read_in(cg, "cpu", "cpu.cfs_quota_us") == "50000"
            assert _read_in(cg, "cpu", "cpu.cfs_period_us") == "100000"
            assert _read_in(cg, "cpu", "cpu.cfs_burst_us") == "10000"
        else:
            assert _read_in(cg, "", "cpu.weight") == str(shares_to_weight(512))
            assert _read_in(cg, "", "cpu.max") == "50000 100000"
            assert _read_in(cg, "", "cpu.max.burst") == "10000"
        cg.apply({"cpu": {"quota": -1}})
        if cg.version == 1:
            assert _read_in(cg, "cpu", "cpu.cfs_quota_us") == "-1"
        else:
            assert _read_in(cg, "", "cpu.max") == "max 100000"

    def test_cpu_shares_out_of_kernel_range(self, make_cgroup: Callable[..., cgroups.Cgroup]) -> None:
        cg = make_cgroup()
        _need_v1_controller(cg, "cpu")
        cg.create()
        with pytest.raises(InvalidArgument, match=r"linux\.resources\.cpu\.shares: 1 is out of the kernel's range"):
            cg.apply({"cpu": {"shares": 1}})

    def test_cpuset(self, make_cgroup: Callable[..., cgroups.Cgroup], procs: Procs) -> None:
        cg = make_cgroup()
        cg.create()
        if cg.version == 1:
            d = _need_v1_controller(cg, "cpuset")
            parent = os.path.dirname(d)
            # v1 leaves a new cpuset empty; create() copies the parent's
            assert _read(os.path.join(d, "cpuset.cpus")) == _read(os.path.join(parent, "cpuset.cpus"))
            assert _read(os.path.join(d, "cpuset.mems")) == _read(os.path.join(parent, "cpuset.mems"))
        try:
            cg.apply({"cpu": {"cpus": "0", "mems": "0"}})
        except Unsupported as exc:
            pytest.skip(str(exc))
        assert _read_in(cg, "cpuset", "cpuset.cpus") == "0"
        assert _read_in(cg, "cpuset", "cpuset.mems") == "0"
        code, out, _ = procs.run_in(cg, ["grep", "Cpus_allowed_list", "/proc/self/status"])
        assert code == 0 and out.split()[-1] == "0"
        assert cg.stats()["cpuset"]["cpus"] == [0]
        with pytest.raises(InvalidArgument, match=r"linux\.resources\.cpu\.cpus: the kernel rejected '4095'"):
            cg.apply({"cpu": {"cpus": "4095"}})

    def test_pids_limit_enforced(self, make_cgroup: Callable[..., cgroups.Cgroup], procs: Procs) -> None:
        cg = make_cgroup()
        cg.create()
        try:
            cg.apply({"pids": {"limit": 4}})
        except Unsupported as exc:
            pytest.skip(str(exc))
        assert _read_in(cg, "pids", "pids.max") == "4"
        script = "for i in 1 2 3 4 5 6 7 8; do sleep 5 & done; echo started; kill $(jobs -p) 2>/dev/null; wait"
        _, _, err = procs.run_in(cg, ["sh", "-c", script])
        assert "fork" in err.lower() or "resource temporarily unavailable" in err.lower(), err
        events = _read_in(cg, "pids", "pids.events")
        assert int(events.split()[-1]) > 0
        stats = cg.stats()["pids"]
        assert stats["limit"] == 4
        cg.apply({"pids": {"limit": -1}})
        assert _read_in(cg, "pids", "pids.max") == "max"
        assert cg.stats()["pids"]["limit"] == 0  # runc reports "no limit" as 0

    def test_memory_limit_oom_kills(self, make_cgroup: Callable[..., cgroups.Cgroup], procs: Procs) -> None:
        cg = make_cgroup()
        cg.create()
        try:
            cg.apply({"memory": {"limit": 48 * MiB, "swap": 48 * MiB}})
        except Unsupported:
            cg.apply({"memory": {"limit": 48 * MiB}})
        assert cg.oom_kill_count() == 0
        hog = "b = []\nwhile True:\n    b.append(bytearray(4 << 20))\n"
        code, _, _ = procs.run_in(cg, [sys.executable, "-c", hog], timeout=60)
        assert code == -9
        assert cg.oom_kill_count() >= 1
        if cg.version == 1:
            assert cg.stats()["memory"]["usage"]["max"] >= 40 * MiB

    def test_blkio(self, make_cgroup: Callable[..., cgroups.Cgroup]) -> None:
        cg = make_cgroup()
        cg.create()
        major, minor = _block_device()
        try:
            cg.apply(
                {
                    "blockIO": {
                        "weight": 500,
                        "throttleReadBpsDevice": [{"major": major, "minor": minor, "rate": MiB}],
                        "throttleWriteIOPSDevice": [{"major": major, "minor": minor, "rate": 100}],
                    }
                }
            )
        except Unsupported as exc:
            pytest.skip(str(exc))
        if cg.version == 1:
            d = cg.paths["blkio"]
            weight_file = "blkio.weight" if os.path.exists(os.path.join(d, "blkio.weight")) else "blkio.bfq.weight"
            assert _read(os.path.join(d, weight_file)).split()[-1] == "500"
            assert _read(os.path.join(d, "blkio.throttle.read_bps_device")) == f"{major}:{minor} {MiB}"
            assert _read(os.path.join(d, "blkio.throttle.write_iops_device")) == f"{major}:{minor} 100"
        else:
            assert f"{major}:{minor} rbps={MiB}" in _read_in(cg, "", "io.max")
        assert set(cg.stats()["blkio"]) >= {"ioServiceBytesRecursive", "ioServicedRecursive"}

    def test_devices_v1(self, make_cgroup: Callable[..., cgroups.Cgroup], procs: Procs) -> None:
        cg = make_cgroup()
        d = _need_v1_controller(cg, "devices")
        cg.create()
        assert _read(os.path.join(d, "devices.list")) == "a *:* rwm"
        cg.apply(
            {
                "devices": [
                    {"allow": False, "access": "rwm"},
                    {"allow": True, "type": "c", "major": 1, "minor": 3, "access": "rwm"},
                    {"allow": True, "type": "c", "major": 1, "minor": 5, "access": "rw"},
                    {"allow": False, "type": "c", "major": 1, "minor": 5, "access": "w"},
                ]
            }
        )
        assert _read(os.path.join(d, "devices.list")).splitlines() == ["c 1:3 rwm", "c 1:5 r"]
        script = "echo x > /dev/null && echo null-w; head -c1 /dev/zero >/dev/null && echo zero-r; echo x > /dev/zero"
        _, out, err = procs.run_in(cg, ["sh", "-c", script])
        assert out.split() == ["null-w", "zero-r"]
        assert "not permitted" in err

    def test_hugetlb(self, make_cgroup: Callable[..., cgroups.Cgroup]) -> None:
        cg = make_cgroup()
        cg.create()
        try:
            cg.apply({"hugepageLimits": [{"pageSize": "2MB", "limit": 4 * MiB}]})
        except Unsupported as exc:
            pytest.skip(str(exc))
        if isinstance(cg, V1Cgroup) and "hugetlb" in cg.paths:
            assert _read(os.path.join(cg.paths["hugetlb"], "hugetlb.2MB.limit_in_bytes")) == str(4 * MiB)
        else:  # v2, or a hybrid host whose hugetlb lives on the cgroup2 hierarchy
            assert _read(os.path.join(cg.paths[""], "hugetlb.2MB.max")) == str(4 * MiB)
        assert "2MB" in cg.stats()["hugetlb"]
        with pytest.raises(Unsupported, match=r"hugepageLimits\[0\]\.pageSize: no 3MB huge pages"):
            cg.apply({"hugepageLimits": [{"pageSize": "3MB", "limit": 0}]})

    def test_missing_controllers_are_unsupported(self, make_cgroup: Callable[..., cgroups.Cgroup]) -> None:
        cg = make_cgroup()
        cg.create()
        checked = 0
        if "net_cls" not in cg.paths:
            with pytest.raises(Unsupported, match=r"linux\.resources\.network\.classID"):
                cg.apply({"network": {"classID": 1048577}})
            checked += 1
        has_rdma = "rdma" in cg.paths or (
            "" in cg.paths and "rdma" in _read(os.path.join(cg.paths[""], "cgroup.controllers"))
        )
        if not has_rdma:
            with pytest.raises(Unsupported, match=r"linux\.resources\.rdma"):
                cg.apply({"rdma": {"mlx5_1": {"hcaHandles": 3}}})
            checked += 1
        if "" not in cg.paths:
            with pytest.raises(Unsupported, match=r"linux\.resources\.unified"):
                cg.apply({"unified": {"memory.high": "max"}})
            checked += 1
        if not checked:
            pytest.skip("every controller this test probes is present")

    def test_stats_shape(self, make_cgroup: Callable[..., cgroups.Cgroup], procs: Procs) -> None:
        cg = make_cgroup()
        cg.create()
        code, _, _ = procs.run_in(cg, ["sh", "-c", "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done"])
        assert code == 0
        procs.sleeper(cg)
        stats = cg.stats()
        assert set(stats) >= {"cpu", "cpuset", "memory", "pids", "blkio", "hugetlb"}
        assert set(stats["cpu"]["usage"]) == {"total", "percpu", "percpu_kernel", "percpu_user", "kernel", "user"}
        assert set(stats["cpu"]["throttling"]) == {"periods", "throttledPeriods", "throttledTime"}
        assert stats["cpu"]["usage"]["total"] > 0
        assert set(stats["memory"]) >= {"cache", "usage", "swap", "kernel", "kernelTCP", "raw"}
        assert set(stats["memory"]["usage"]) == {"limit", "usage", "max", "failcnt"}
        assert stats["pids"]["current"] == 1
        if cg.version == 1 and "memory" in cg.paths:
            assert stats["memory"]["usage"]["usage"] > 0
            assert "rss" in stats["memory"]["raw"]
            assert len(stats["cpu"]["usage"]["percpu"]) == os.cpu_count()

    def test_destroy_while_busy(self, make_cgroup: Callable[..., cgroups.Cgroup], procs: Procs) -> None:
        cg = make_cgroup()
        cg.create()
        procs.sleeper(cg)
        with pytest.raises(Conflict, match="still busy"):
            remove_tree(_all_dirs(cg)[0], timeout=0.1)


# ================================================================================ root: cgroup2 forced


@pytest.fixture
def v2(make_cgroup: Callable[..., cgroups.Cgroup]) -> V2Cgroup:
    if cgroups.hierarchies().v2 is None:
        pytest.skip("cgroup2 is not mounted on this host")
    cg = make_cgroup(version=2)
    assert isinstance(cg, V2Cgroup)
    cg.create()
    return cg


@pytest.mark.root
class TestV2:
    """The cgroup2 implementation on the real cgroup2 hierarchy (on a hybrid host the
    ``unified`` mount, with only the controllers the v1 hierarchies left free)."""

    def test_create_add_pids_destroy(self, v2: V2Cgroup, procs: Procs) -> None:
        assert os.path.isdir(v2.dir) and v2.dir.startswith(v2.mountpoint)
        p = procs.sleeper(v2)
        assert v2.pids() == [p.pid]
        with open(f"/proc/{p.pid}/cgroup") as f:
            assert f"0::{v2.path}\n" in f.read()
        v2.kill_all()
        assert p.wait(timeout=10) == -9
        v2.destroy()
        assert not os.path.exists(v2.dir)

    def test_freeze_via_cgroup_freeze(self, v2: V2Cgroup, procs: Procs, tmp_path: Path) -> None:
        counter = os.path.join(str(tmp_path), "counter")
        p = procs.gated(_counter_script(counter))
        v2.add(p.pid)
        assert p.stdin is not None
        p.stdin.write(b"go\n")
        p.stdin.flush()
        deadline = time.monotonic() + 5
        while not os.path.exists(counter) and time.monotonic() < deadline:
            time.sleep(0.02)
        v2.freeze()
        assert _read(os.path.join(v2.dir, "cgroup.freeze")) == "1"
        assert "frozen 1" in _read(os.path.join(v2.dir, "cgroup.events"))
        assert v2.state() == "frozen"
        _assert_stalls(counter, frozen=True)
        v2.thaw()
        assert v2.state() == "thawed"
        assert "frozen 0" in _read(os.path.join(v2.dir, "cgroup.events"))
        _assert_stalls(counter, frozen=False)

    def test_kill_via_cgroup_kill(self, v2: V2Cgroup, procs: Procs) -> None:
        if not v2.can_kill():
            pytest.skip("this kernel has no cgroup.kill (5.14+)")
        p = procs.gated(["sh", "-c", "sleep 60 & sleep 60 & wait"])
        v2.add(p.pid)
        assert p.stdin is not None
        p.stdin.write(b"go\n")
        p.stdin.flush()
        deadline = time.monotonic() + 5
        while len(v2.pids()) < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        v2.freeze()
        v2.kill_all()  # cgroup.kill works on a frozen cgroup too
        assert p.wait(timeout=10) == -9
        deadline = time.monotonic() + 5
        while v2.pids() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert v2.pids() == []

    def test_kill_other_signal(self, v2: V2Cgroup, procs: Procs) -> None:
        p = procs.sleeper(v2)
        v2.kill_all(15)
        assert p.wait(timeout=10) == -15
        assert v2.state() == "thawed"

    def test_hugetlb(self, v2: V2Cgroup) -> None:
        if "hugetlb" not in v2.controllers():
            pytest.skip("hugetlb is not available on this cgroup2 hierarchy")
        v2.apply({"hugepageLimits": [{"pageSize": "2MB", "limit": 8 * MiB}]})
        assert _read(os.path.join(v2.dir, "hugetlb.2MB.max")) == str(8 * MiB)
        if os.path.exists(os.path.join(v2.dir, "hugetlb.2MB.rsvd.max")):
            assert _read(os.path.join(v2.dir, "hugetlb.2MB.rsvd.max")) == str(8 * MiB)
        v2.apply({"unified": {"hugetlb.2MB.max": "max"}})
        assert _read(os.path.join(v2.dir, "hugetlb.2MB.max")) == "max"
        assert v2.stats()["hugetlb"]["2MB"] == {"usage": 0, "max": 0, "failcnt": 0}

    def test_missing_controller_is_unsupported(self, v2: V2Cgroup) -> None:
        enabled = v2.controllers()
        if "pids" in enabled:
            v2.apply({"pids": {"limit": 9}})
            assert _read(os.path.join(v2.dir, "pids.max")) == "9"
        else:
            with pytest.raises(Unsupported, match=r"linux\.resources\.pids\.limit: the pids controller"):
                v2.apply({"pids": {"limit": 9}})
        if "memory" not in enabled:
            with pytest.raises(Unsupported, match=r"linux\.resources\.unified\.memory\.high: the memory"):
                v2.apply({"unified": {"memory.high": "max"}})
        with pytest.raises(Unsupported, match=r"linux\.resources\.network"):
            v2.apply({"network": {"classID": 1}})
        with pytest.raises(Unsupported, match=r"realtime"):
            v2.apply({"cpu": {"realtimeRuntime": 1000}})

    def test_devices_ebpf(self, v2: V2Cgroup, procs: Procs) -> None:
        from berth.kernel.cgroups._bpf import attached_programs

        v2.apply(
            {
                "devices": [
                    {"allow": False, "access": "rwm"},
                    {"allow": True, "type": "c", "major": 1, "minor": 3, "access": "rwm"},
                    {"allow": True, "type": "c", "major": 1, "minor": 5, "access": "r"},
                ]
            }
        )
        first = attached_programs(v2.dir)
        assert len(first) == 1
        script = "echo x > /dev/null && echo null-w; head -c1 /dev/zero >/dev/null && echo zero-r; echo x > /dev/zero"
        _, out, err = procs.run_in(v2, ["sh", "-c", script])
        assert out.split() == ["null-w", "zero-r"]
        assert "not permitted" in err
        # an update replaces the program rather than stacking another one
        v2.apply({"devices": [{"allow": True, "access": "rwm"}, {"allow": False, "type": "c", "major": 1, "minor": 3}]})
        second = attached_programs(v2.dir)
        assert len(second) == 1 and second != first
        _, out, err = procs.run_in(v2, ["sh", "-c", "head -c1 /dev/zero | wc -c; : > /dev/null"])
        assert out.split() == ["1"] and "not permitted" in err

    def test_stats(self, v2: V2Cgroup, procs: Procs) -> None:
        code, _, _ = procs.run_in(v2, ["sh", "-c", "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done"])
        assert code == 0
        procs.sleeper(v2)
        stats = v2.stats()
        assert stats["cpu"]["usage"]["total"] > 0  # cpu.stat exists without the cpu controller
        assert stats["pids"]["current"] == 1
        assert v2.oom_kill_count() == 0

    def test_destroy_nested(self, v2: V2Cgroup) -> None:
        os.mkdir(os.path.join(v2.dir, "a"))
        os.mkdir(os.path.join(v2.dir, "a", "b"))
        v2.destroy()
        assert not os.path.exists(v2.dir)


# ================================================================================ root: the cheap paths


def _remove_tops(cg: cgroups.Cgroup, levels: int) -> None:
    """Remove the test's top-level directory ``levels`` above the leaf in each hierarchy (never
    more: a hierarchy's root would be walked and its empty cgroups removed)."""
    cg.destroy()
    for leaf in cg.paths.values():
        top = leaf
        for _ in range(levels):
            top = os.path.dirname(top)
        assert os.path.basename(top).startswith("berth-test-"), top
        remove_tree(top)


@pytest.mark.root
class TestCheapPaths:
    """What makes a container's cgroup cheap to make and remove must not change what it is."""

    def test_create_says_whether_it_made_the_cgroup(self, make_cgroup: Callable[..., cgroups.Cgroup]) -> None:
        cg = make_cgroup()
        assert cg.create() is True
        assert cg.create() is False  # it exists: a caller must look for processes in it
        if cgroups.layout() == "hybrid":
            os.rmdir(cg.paths["pids"])  # partly there still counts as existing
            assert cg.create() is False
            assert os.path.isdir(cg.paths["pids"])

    def test_nested_cpuset_parents_clone_their_values(self, make_cgroup: Callable[..., cgroups.Cgroup]) -> None:
        """Parents made by create() get cgroup.clone_children, so the kernel fills later siblings;
        the first leaf is filled by create() itself."""
        top = f"/berth-test-{uuid.uuid4().hex[:10]}"
        first = make_cgroup(path=f"{top}/a/b")
        d = _need_v1_controller(first, "cpuset")
        root = os.path.dirname(os.path.dirname(os.path.dirname(d)))
        try:
            first.create()
            for name in ("cpuset.cpus", "cpuset.mems"):
                assert _read(os.path.join(d, name)) == _read(os.path.join(root, name)) != ""
            assert _read(os.path.join(os.path.dirname(d), "cgroup.clone_children")) == "1"
            assert _read(os.path.join(root, top.lstrip("/"), "cgroup.clone_children")) == "1"
            sibling = make_cgroup(path=f"{top}/a/c")  # the fixture removes it, before its parents
            sibling.create()
            cloned = _read(os.path.join(sibling.paths["cpuset"], "cpuset.cpus"))
            assert cloned == _read(os.path.join(root, "cpuset.cpus"))
        finally:
            _remove_tops(first, 2)

    def test_empty_cpuset_parent_made_by_others_is_filled_not_flagged(
        self, make_cgroup: Callable[..., cgroups.Cgroup]
    ) -> None:
        top = f"/berth-test-{uuid.uuid4().hex[:10]}"
        cg = make_cgroup(path=f"{top}/leaf")
        d = _need_v1_controller(cg, "cpuset")
        parent = os.path.dirname(d)
        os.mkdir(parent)  # someone else's, empty: v1 leaves cpus and mems empty
        try:
            assert _read(os.path.join(parent, "cpuset.cpus")) == ""
            cg.create()
            root = os.path.dirname(parent)
            for name in ("cpuset.cpus", "cpuset.mems"):
                assert (
                    _read(os.path.join(d, name)) == _read(os.path.join(parent, name)) == _read(os.path.join(root, name))
                )
            assert _read(os.path.join(parent, "cgroup.clone_children")) == "0"
        finally:
            _remove_tops(cg, 1)

    def test_devices_in_runs_keep_their_order(self, make_cgroup: Callable[..., cgroups.Cgroup]) -> None:
        """Consecutive allow (or deny) rules share one open file; the order still decides."""
        cg = make_cgroup()
        d = _need_v1_controller(cg, "devices")
        cg.create()
        allow = {"allow": True, "type": "c", "major": 1, "access": "rwm"}
        cg.apply(
            {
                "devices": [
                    {"allow": False, "access": "rwm"},
                    {"allow": False, "access": "rwm"},
                    {**allow, "minor": 3},
                    {**allow, "minor": 5},
                    {**allow, "minor": 7},
                    {"allow": False, "type": "c", "major": 1, "minor": 5, "access": "w"},
                    {"allow": False, "type": "c", "major": 1, "minor": 7, "access": "rwm"},
                    {**allow, "minor": 7, "access": "r"},
                ]
            }
        )
        assert _read(os.path.join(d, "devices.list")).splitlines() == ["c 1:3 rwm", "c 1:5 rm", "c 1:7 r"]

    def test_destroy_and_pids_see_nested_cgroups(
        self, make_cgroup: Callable[..., cgroups.Cgroup], procs: Procs
    ) -> None:
        cg = make_cgroup()
        cg.create()
        nested = os.path.join(_all_dirs(cg)[0], "inner")
        os.mkdir(nested)
        p = subprocess.Popen(["sleep", "60"])
        procs.all.append(p)
        with open(os.path.join(nested, "cgroup.procs"), "w") as f:
            f.write(str(p.pid))
        assert p.pid in cg.pids()
        cg.kill_all()
        assert p.wait(timeout=10) == -9
        cg.destroy()  # retries while the killed process leaves, then removes inner first
        assert not os.path.exists(nested) and not cg.exists()

    def test_files_are_read_to_the_end(self, tmp_path: Path) -> None:
        """A seq_file returns about a page per read(2); a regular file may exceed the buffer."""
        from berth.kernel.cgroups._common import read_bytes, read_text

        big = tmp_path / "big"
        big.write_bytes(b"0123456789abcdef" * 10000)
        assert read_text(str(big)) == big.read_text()
        with open("/proc/self/mountinfo", "rb") as f:
            assert read_bytes("/proc/self/mountinfo") == f.read()

    def test_v2_create_enables_controllers_once(self, make_cgroup: Callable[..., cgroups.Cgroup]) -> None:
        if cgroups.hierarchies().v2 is None:
            pytest.skip("cgroup2 is not mounted on this host")
        cg = make_cgroup(version=2)
        assert isinstance(cg, V2Cgroup)
        cg.create()
        top = _read(os.path.join(cg.mountpoint, "cgroup.controllers")).split()
        mine = _read(os.path.join(cg.dir, "cgroup.controllers")).split()
        assert set(top) <= set(mine) or not top, "an ancestor refused a controller"
