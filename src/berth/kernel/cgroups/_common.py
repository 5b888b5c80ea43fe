"""What cgroup v1 and v2 share: file I/O with errors mapped to berth's taxonomy, the validation of
OCI ``linux.resources`` (once, before anything is written), the v1 → v2 value conversions, mount
discovery, and the :class:`Cgroup` interface both versions implement.

Only stdlib modules that are cheap to import are used here (``os``, ``errno``, ``math``, ``time``);
``typing`` is imported for the type checker only.
"""

from __future__ import annotations

import errno
import os
import time

from berth.errors import BerthError, Conflict, InvalidArgument, NotFound, PermissionDenied, Unsupported

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

SIGKILL = 9  # the value on every Linux architecture; spares importing ``signal`` (and ``enum``)

INT64 = (-(2**63), 2**63 - 1)
UINT64 = (0, 2**64 - 1)
UINT32 = (0, 2**32 - 1)
UINT16 = (0, 2**16 - 1)
MAX_UINT64 = 2**64 - 1

FIELD = "linux.resources"


# --------------------------------------------------------------------------------------------
# file I/O


def read_bytes(path: str) -> bytes:
    """A whole file through os.read: a text-mode open() would import the ascii codec on first use
    (~0.2 ms of every container start) and wrap the descriptor in three objects. Read until EOF: a
    seq_file (every cgroup file, mountinfo) returns about a page per read(2)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        data = os.read(fd, 65536)
        if data:
            chunks = [data]
            while chunk := os.read(fd, 65536):
                chunks.append(chunk)
            if len(chunks) > 1:
                data = b"".join(chunks)
    finally:
        os.close(fd)
    return data


def read_text(path: str) -> str:
    """The whole content of a cgroup file; NotFound when it (or its cgroup) does not exist."""
    try:
        return read_bytes(path).decode("ascii", "replace")
    except FileNotFoundError:
        raise NotFound(f"{path} does not exist") from None


def read_optional(path: str) -> str | None:
    """Like :func:`read_text` but None when the file is missing (a controller or kernel feature)."""
    try:
        return read_bytes(path).decode("ascii", "replace")
    except (FileNotFoundError, NotADirectoryError):
        return None


def parse_uint(text: str | None) -> int:
    """A single number; ``max`` (v2's unlimited) reads as 2**64-1, as runc reports it; missing → 0."""
    if text is None:
        return 0
    text = text.strip()
    if not text:
        return 0
    if text == "max":
        return MAX_UINT64
    try:
        value = int(text)
    except ValueError:
        return 0
    return value if value >= 0 else 0


def parse_keyed(text: str | None) -> dict[str, int]:
    """``key value`` lines (memory.stat, cpu.stat, memory.events, oom_control) into a dict."""
    result: dict[str, int] = {}
    if not text:
        return result
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2:
            try:
                result[parts[0]] = int(parts[1])
            except ValueError:
                if parts[1] == "max":
                    result[parts[0]] = MAX_UINT64
    return result


def parse_id_list(text: str | None) -> list[int]:
    """A kernel CPU / memory-node list like ``0-3,7`` into ``[0, 1, 2, 3, 7]``."""
    result: list[int] = []
    if not text:
        return result
    for piece in text.strip().split(","):
        if not piece:
            continue
        lo, sep, hi = piece.partition("-")
        try:
            if sep:
                result.extend(range(int(lo), int(hi) + 1))
            else:
                result.append(int(lo))
        except ValueError:
            continue
    return result


def _oserror(exc: OSError, field: str, path: str, value: str | None = None) -> BerthError:
    what = f"{field}: " if field else ""
    reason = exc.strerror or str(exc)
    code = exc.errno
    if code == errno.ENOENT:
        directory = os.path.dirname(path)
        if not os.path.isdir(directory):
            return NotFound(f"{what}cgroup {directory} does not exist")
        return Unsupported(f"{what}this kernel has no {os.path.basename(path)} in {directory}")
    if code in (errno.EINVAL, errno.ERANGE, errno.EOVERFLOW, errno.ENOSPC, errno.ENODEV):
        shown = f" {value.strip()!r}" if value is not None else ""
        return InvalidArgument(f"{what}the kernel rejected{shown} for {path}: {reason}")
    if code == errno.EBUSY:
        return Conflict(f"{what}{path} is busy: {reason}")
    if code in (errno.EPERM, errno.EACCES, errno.EROFS):
        return PermissionDenied(f"{what}{path}: {reason}")
    return BerthError(f"{what}{path}: {reason}")


def write(path: str, value: str, field: str = "") -> None:
    """Write ``value`` with one write(2), as cgroup files need; errors name ``field``.

    O_TRUNC is meaningless to cgroupfs (shell ``>`` uses it too) but lets tests use plain files."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC)
    except OSError as exc:
        raise _oserror(exc, field, path, value) from None
    try:
        os.write(fd, value.encode())
    except OSError as exc:
        raise _oserror(exc, field, path, value) from None
    finally:
        os.close(fd)


def enter_files(files: list[str]) -> None:
    """Move the calling process into a cgroup by writing "0" to each of ``files``
    (``Cgroup.entry_files()``, computed beforehand, possibly by another process)."""
    for path in files:
        write(path, "0", "the calling process")


def write_lines(path: str, lines: list[str], field: str | list[str] = "") -> None:
    """Write each line with its own write(2) on one open file (devices.allow, io.max, ifpriomap);
    ``field`` names them all, or each when a list."""
    if not lines:
        return
    fields = field if isinstance(field, list) else [field] * len(lines)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC)
    except OSError as exc:
        raise _oserror(exc, fields[0], path) from None
    try:
        for line, name in zip(lines, fields, strict=True):
            try:
                os.write(fd, line.encode())
            except OSError as exc:
                raise _oserror(exc, name, path, line) from None
    finally:
        os.close(fd)


def write_either_order(first: tuple[str, str], second: tuple[str, str], field: str) -> None:
    """Write two interdependent files (period and quota, memory and memsw): in the given order,
    and when the kernel refuses the first because of the other's current value, the other way round."""
    try:
        write(first[0], first[1], field)
    except (InvalidArgument, Conflict):
        write(second[0], second[1], field)
        write(first[0], first[1], field)
        return
    write(second[0], second[1], field)


def cgroup_procs(directory: str) -> list[int]:
    """The pids in ``directory`` and every cgroup below it (empty when it does not exist)."""
    pids: list[int] = []
    stack = [directory]
    while stack:
        current = stack.pop()
        text = read_optional(os.path.join(current, "cgroup.procs"))
        if text is None:
            continue
        pids.extend(int(x) for x in text.split())
        if not _may_have_subdirs(current):
            continue
        try:
            with os.scandir(current) as it:
                stack.extend(e.path for e in it if e.is_dir(follow_symlinks=False))
        except (FileNotFoundError, NotADirectoryError):
            continue
    return pids


def _may_have_subdirs(directory: str) -> bool:
    """False when ``directory`` certainly has no subdirectory: a directory's link count is 2 plus
    its subdirectories on cgroupfs (kernfs) as on classic file systems, and a stat is much cheaper
    than listing a cgroup's dozens of files. File systems that always say 1 (btrfs) get listed."""
    try:
        return os.stat(directory).st_nlink != 2
    except OSError:
        return True


def make_dirs(directory: str) -> list[str]:
    """mkdir -p; returns the directories created, outermost first. The common case, a new cgroup
    in an existing parent, is one mkdir(2)."""
    try:
        os.mkdir(directory, 0o755)
        return [directory]
    except FileExistsError:
        return []
    except FileNotFoundError:
        parent = os.path.dirname(directory)
        if parent == directory:
            raise NotFound(f"cgroup {directory} does not exist") from None
    except OSError as exc:
        raise _oserror(exc, "", directory) from None
    created = make_dirs(parent)
    try:
        os.mkdir(directory, 0o755)
        created.append(directory)
    except FileExistsError:
        pass
    except OSError as exc:
        raise _oserror(exc, "", directory) from None
    return created


def remove_tree(directory: str, timeout: float = 2.0) -> None:
    """rmdir ``directory`` and the cgroups below it, deepest first, retrying while processes are
    still exiting (EBUSY); no error when it is already gone. An empty leaf, the common case, is one
    rmdir(2): the tree is only walked when that fails."""
    try:
        os.rmdir(directory)
        return
    except (FileNotFoundError, NotADirectoryError):
        return
    except OSError as exc:
        if exc.errno not in (errno.EBUSY, errno.EAGAIN, errno.ENOTEMPTY):
            raise _oserror(exc, "", directory) from None
    dirs: list[str] = []
    for root, _subdirs, _files in os.walk(directory, topdown=False):
        dirs.append(root)
    deadline = time.monotonic() + timeout
    delay = 0.001
    for d in dirs:
        while True:
            try:
                os.rmdir(d)
                break
            except FileNotFoundError:
                break
            except OSError as exc:
                if exc.errno not in (errno.EBUSY, errno.EAGAIN, errno.ENOTEMPTY):
                    raise _oserror(exc, "", d) from None
                if time.monotonic() >= deadline:
                    left = cgroup_procs(d)
                    raise Conflict(f"cannot remove cgroup {d}: still busy ({len(left)} processes left)") from None
                time.sleep(delay)
                delay = min(delay * 2, 0.05)


def signal_pids(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


# --------------------------------------------------------------------------------------------
# conversions (the same arithmetic runc and crun use, so a spec means the same on every runtime)


def shares_to_weight(shares: int) -> int:
    """cgroup v1 ``cpu.shares`` [2, 262144] (default 1024) → v2 ``cpu.weight`` [1, 10000] (default 100).

    A quadratic in log2(shares) through the three anchor points, so the v1 default maps to the v2
    default; 0 stays 0 ("unset").
    """
    if shares <= 0:
        return 0
    if shares <= 2:
        return 1
    if shares >= 262144:
        return 10000
    import math

    lg = math.log2(shares)
    exponent = (lg * lg + 125 * lg) / 612.0 - 7.0 / 34.0
    return min(10000, max(1, math.ceil(10**exponent)))


def blkio_weight_to_io_weight(weight: int) -> int:
    """cgroup v1 ``blkio.weight`` [10, 1000] → v2 ``io.weight`` [1, 10000], linearly; 0 stays 0."""
    if weight <= 0:
        return 0
    return max(1, 1 + (weight - 10) * 9999 // 990)


def swap_to_v2(swap: int | None, limit: int | None) -> int | None:
    """OCI ``memory.swap`` is v1's memory+swap total; v2's ``memory.swap.max`` is swap alone.

    Returns the v2 value (-1 = ``max``) or None for "leave as is". Raises InvalidArgument for a
    total smaller than the memory limit, or a swap limit without a memory limit.
    """
    lim = limit or 0
    if lim == -1 and not swap:
        return -1  # "memory unlimited, swap unset" means both unlimited, as on v1
    if swap is None or swap == 0:
        return None
    if swap == -1:
        return -1
    if lim in (0, -1):
        raise InvalidArgument(f"{FIELD}.memory.swap: a swap limit needs a memory limit on cgroup v2")
    if swap < lim:
        raise InvalidArgument(f"{FIELD}.memory.swap: {swap} is below memory.limit {lim} (swap is memory+swap in total)")
    return swap - lim


_UNITS = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40, "P": 1 << 50}


def page_size_bytes(text: str, field: str) -> int:
    """``2MB`` / ``64KB`` / ``1GB`` (base 1024) → bytes."""
    if len(text) >= 3 and text.endswith("B") and text[-2] in _UNITS and text[:-2].isdigit():
        value = int(text[:-2]) * _UNITS[text[-2]]
        if value > 0:
            return value
    raise InvalidArgument(f"{field}: {text!r} is not a page size like 2MB, 64KB or 1GB")


def page_size_name(size: int) -> str:
    """Bytes → the name the kernel uses in hugetlb file names: ``2MB``, ``1GB``, ``64KB``."""
    if size >= 1 << 30 and size % (1 << 30) == 0:
        return f"{size >> 30}GB"
    if size >= 1 << 20 and size % (1 << 20) == 0:
        return f"{size >> 20}MB"
    return f"{size >> 10}KB"


def hugepage_sizes() -> list[str]:
    """The huge page sizes this kernel supports, by the names hugetlb files use."""
    try:
        entries = os.listdir("/sys/kernel/mm/hugepages")
    except FileNotFoundError:
        return []
    sizes: list[tuple[int, str]] = []
    for entry in entries:
        if entry.startswith("hugepages-") and entry.endswith("kB"):
            try:
                kib = int(entry[len("hugepages-") : -2])
            except ValueError:
                continue
            sizes.append((kib, page_size_name(kib << 10)))
    return [name for _, name in sorted(sizes)]


def device_line(rule: dict[str, Any]) -> str:
    """A validated device rule as the v1 ``devices.allow``/``devices.deny`` line: ``c 1:3 rwm``."""
    major = "*" if rule["major"] is None else str(rule["major"])
    minor = "*" if rule["minor"] is None else str(rule["minor"])
    return f"{rule['type']} {major}:{minor} {rule['access']}"


# --------------------------------------------------------------------------------------------
# validation of OCI linux.resources


def _kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _object(value: object, field: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidArgument(f"{field}: expected an object, got {_kind(value)}")
    return value


def _array(value: object, field: str) -> list[Any]:
    if not isinstance(value, list):
        raise InvalidArgument(f"{field}: expected an array, got {_kind(value)}")
    return value


def _int(obj: dict[str, Any], key: str, field: str, bounds: tuple[int, int], required: bool = False) -> int | None:
    value = obj.get(key)
    name = f"{field}.{key}"
    if value is None:
        if required:
            raise InvalidArgument(f"{name}: is required")
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            value = int(value)  # JSON decoders may hand 1e9 as a float
        else:
            raise InvalidArgument(f"{name}: expected an integer, got {_kind(value)} {value!r}")
    lo, hi = bounds
    if not lo <= value <= hi:
        raise InvalidArgument(f"{name}: {value} is out of range [{lo}, {hi}]")
    return value


def _bool(obj: dict[str, Any], key: str, field: str, required: bool = False) -> bool | None:
    value = obj.get(key)
    if value is None:
        if required:
            raise InvalidArgument(f"{field}.{key}: is required")
        return None
    if not isinstance(value, bool):
        raise InvalidArgument(f"{field}.{key}: expected a boolean, got {_kind(value)} {value!r}")
    return value


def _str(obj: dict[str, Any], key: str, field: str, required: bool = False) -> str | None:
    value = obj.get(key)
    if value is None:
        if required:
            raise InvalidArgument(f"{field}.{key}: is required")
        return None
    if not isinstance(value, str):
        raise InvalidArgument(f"{field}.{key}: expected a string, got {_kind(value)} {value!r}")
    return value


def _check_id_list(text: str, field: str) -> None:
    for piece in text.split(","):
        lo, sep, hi = piece.strip().partition("-")
        if not lo.isdigit() or (sep and not hi.isdigit()) or (sep and int(hi) < int(lo)):
            raise InvalidArgument(f"{field}: {text!r} is not a list like 0-3,7")


def _memory_value(obj: dict[str, Any], key: str, field: str) -> int | None:
    value = _int(obj, key, field, INT64)
    if value is not None and value < -1:
        raise InvalidArgument(f"{field}.{key}: {value} is negative (use -1 for unlimited)")
    return value


def _clean(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if v is not None}


def _validate_memory(raw: object) -> dict[str, Any]:
    f = f"{FIELD}.memory"
    m = _object(raw, f)
    out: dict[str, Any] = {}
    for key in ("limit", "reservation", "swap", "kernel", "kernelTCP"):
        out[key] = _memory_value(m, key, f)
    swappiness = _int(m, "swappiness", f, INT64)
    if swappiness is not None and swappiness != -1 and not 0 <= swappiness <= 100:
        raise InvalidArgument(f"{f}.swappiness: {swappiness} is out of range [0, 100]")
    out["swappiness"] = None if swappiness == -1 else swappiness
    for key in ("disableOOMKiller", "useHierarchy", "checkBeforeUpdate"):
        out[key] = _bool(m, key, f)
    limit, swap = out["limit"], out["swap"]
    if limit is not None and limit > 0 and swap is not None and 0 < swap < limit:
        raise InvalidArgument(f"{f}.swap: {swap} is below memory.limit {limit} (swap counts memory+swap)")
    return _clean(out)


def _validate_cpu(raw: object) -> dict[str, Any]:
    f = f"{FIELD}.cpu"
    c = _object(raw, f)
    out: dict[str, Any] = {
        "shares": _int(c, "shares", f, UINT64),
        "quota": _int(c, "quota", f, INT64),
        "burst": _int(c, "burst", f, UINT64),
        "period": _int(c, "period", f, UINT64),
        "realtimeRuntime": _int(c, "realtimeRuntime", f, INT64),
        "realtimePeriod": _int(c, "realtimePeriod", f, UINT64),
        "idle": _int(c, "idle", f, INT64),
        "cpus": _str(c, "cpus", f) or None,
        "mems": _str(c, "mems", f) or None,
    }
    quota, burst = out["quota"], out["burst"]
    if quota is not None and quota < -1:
        raise InvalidArgument(f"{f}.quota: {quota} is negative (use -1 for unlimited)")
    if quota is not None and quota > 0 and burst is not None and burst > quota:
        raise InvalidArgument(f"{f}.burst: {burst} is larger than quota {quota}")
    for key in ("cpus", "mems"):
        if out[key] is not None:
            _check_id_list(out[key], f"{f}.{key}")
    return _clean(out)


def _validate_block_io(raw: object) -> dict[str, Any]:
    f = f"{FIELD}.blockIO"
    b = _object(raw, f)
    out: dict[str, Any] = {
        "weight": _int(b, "weight", f, UINT16),
        "leafWeight": _int(b, "leafWeight", f, UINT16),
    }
    if b.get("weightDevice") is not None:
        entries = []
        for i, item in enumerate(_array(b["weightDevice"], f"{f}.weightDevice")):
            g = f"{f}.weightDevice[{i}]"
            e = _object(item, g)
            entry = {
                "major": _int(e, "major", g, (0, INT64[1]), required=True),
                "minor": _int(e, "minor", g, (0, INT64[1]), required=True),
                "weight": _int(e, "weight", g, UINT16),
                "leafWeight": _int(e, "leafWeight", g, UINT16),
            }
            if entry["weight"] is None and entry["leafWeight"] is None:
                raise InvalidArgument(f"{g}: needs weight or leafWeight")
            entries.append(entry)
        out["weightDevice"] = entries
    for key in (
        "throttleReadBpsDevice",
        "throttleWriteBpsDevice",
        "throttleReadIOPSDevice",
        "throttleWriteIOPSDevice",
    ):
        if b.get(key) is None:
            continue
        entries = []
        for i, item in enumerate(_array(b[key], f"{f}.{key}")):
            g = f"{f}.{key}[{i}]"
            e = _object(item, g)
            entries.append(
                {
                    "major": _int(e, "major", g, (0, INT64[1]), required=True),
                    "minor": _int(e, "minor", g, (0, INT64[1]), required=True),
                    "rate": _int(e, "rate", g, UINT64, required=True),
                }
            )
        out[key] = entries
    return _clean(out)


def _validate_hugepages(raw: object) -> list[dict[str, Any]]:
    f = f"{FIELD}.hugepageLimits"
    out = []
    for i, item in enumerate(_array(raw, f)):
        g = f"{f}[{i}]"
        e = _object(item, g)
        text = _str(e, "pageSize", g, required=True)
        assert text is not None
        size = page_size_bytes(text, f"{g}.pageSize")
        limit = _int(e, "limit", g, UINT64, required=True)
        out.append({"pageSize": page_size_name(size), "limit": limit, "field": g})
    return out


def _validate_devices(raw: object) -> list[dict[str, Any]]:
    f = f"{FIELD}.devices"
    out = []
    for i, item in enumerate(_array(raw, f)):
        g = f"{f}[{i}]"
        e = _object(item, g)
        allow = _bool(e, "allow", g, required=True)
        dtype = _str(e, "type", g) or "a"
        if dtype not in ("a", "b", "c"):
            raise InvalidArgument(f"{g}.type: {dtype!r} is not one of a, b, c")
        major = _int(e, "major", g, INT64)
        minor = _int(e, "minor", g, INT64)
        for key, value in (("major", major), ("minor", minor)):
            if value is not None and value < -1:
                raise InvalidArgument(f"{g}.{key}: {value} is negative (omit it or use -1 for all)")
        access = _str(e, "access", g)
        if access is None or access == "":
            access = "rwm"
        if any(ch not in "rwm" for ch in access) or len(set(access)) != len(access):
            raise InvalidArgument(f"{g}.access: {access!r} is not a combination of r, w and m")
        out.append(
            {
                "allow": allow,
                "type": dtype,
                "major": None if major in (None, -1) else major,
                "minor": None if minor in (None, -1) else minor,
                "access": "".join(ch for ch in "rwm" if ch in access),
            }
        )
    return out


def _validate_network(raw: object) -> dict[str, Any]:
    f = f"{FIELD}.network"
    n = _object(raw, f)
    out: dict[str, Any] = {"classID": _int(n, "classID", f, UINT32)}
    if n.get("priorities") is not None:
        prios = []
        for i, item in enumerate(_array(n["priorities"], f"{f}.priorities")):
            g = f"{f}.priorities[{i}]"
            e = _object(item, g)
            name = _str(e, "name", g, required=True)
            if not name or "/" in name or any(ch.isspace() for ch in name):
                raise InvalidArgument(f"{g}.name: {name!r} is not an interface name")
            prios.append({"name": name, "priority": _int(e, "priority", g, UINT32, required=True)})
        out["priorities"] = prios
    return _clean(out)


def _validate_rdma(raw: object) -> dict[str, dict[str, int]]:
    f = f"{FIELD}.rdma"
    r = _object(raw, f)
    out: dict[str, dict[str, int]] = {}
    for device, item in r.items():
        g = f"{f}.{device}"
        if not device or any(ch.isspace() for ch in device) or "/" in device:
            raise InvalidArgument(f"{g}: {device!r} is not an RDMA device name")
        e = _object(item, g)
        entry = _clean({"hcaHandles": _int(e, "hcaHandles", g, UINT32), "hcaObjects": _int(e, "hcaObjects", g, UINT32)})
        if not entry:
            raise InvalidArgument(f"{g}: needs hcaHandles or hcaObjects")
        out[device] = entry
    return out


def _validate_unified(raw: object) -> dict[str, str]:
    f = f"{FIELD}.unified"
    u = _object(raw, f)
    out: dict[str, str] = {}
    for key, value in u.items():
        g = f"{f}.{key}"
        if not isinstance(key, str) or "/" in key or "." not in key.strip(".") or key.startswith("."):
            raise InvalidArgument(f"{g}: {key!r} is not a cgroup v2 file name like memory.high")
        if not isinstance(value, str):
            raise InvalidArgument(f"{g}: expected a string, got {_kind(value)} {value!r}")
        out[key] = value
    return out


def validate_resources(resources: object) -> dict[str, Any]:
    """Check every OCI ``linux.resources`` field's type and range, before anything is written.

    Returns a normalized copy holding only the fields that are set: defaults filled in (device
    ``type`` ``a``, ``access`` ``rwm``, -1 majors/minors → None meaning ``*``), page sizes in the
    kernel's spelling. Unknown keys are ignored (newer spec versions add fields).
    """
    if resources is None:
        return {}
    res = _object(resources, FIELD)
    out: dict[str, Any] = {}
    if res.get("memory") is not None:
        out["memory"] = _validate_memory(res["memory"])
    if res.get("cpu") is not None:
        out["cpu"] = _validate_cpu(res["cpu"])
    if res.get("pids") is not None:
        pids = _object(res["pids"], f"{FIELD}.pids")
        limit = _int(pids, "limit", f"{FIELD}.pids", INT64)
        if limit is not None and limit < -1:
            raise InvalidArgument(f"{FIELD}.pids.limit: {limit} is negative (use -1 for unlimited)")
        out["pids"] = _clean({"limit": limit})
    if res.get("blockIO") is not None:
        out["blockIO"] = _validate_block_io(res["blockIO"])
    if res.get("hugepageLimits") is not None:
        out["hugepageLimits"] = _validate_hugepages(res["hugepageLimits"])
    if res.get("devices") is not None:
        out["devices"] = _validate_devices(res["devices"])
    if res.get("network") is not None:
        out["network"] = _validate_network(res["network"])
    if res.get("rdma") is not None:
        out["rdma"] = _validate_rdma(res["rdma"])
    if res.get("unified") is not None:
        out["unified"] = _validate_unified(res["unified"])
    return {k: v for k, v in out.items() if v}


def rdma_line(device: str, entry: dict[str, int]) -> str:
    parts = [device]
    if "hcaHandles" in entry:
        parts.append(f"hca_handle={entry['hcaHandles']}")
    if "hcaObjects" in entry:
        parts.append(f"hca_object={entry['hcaObjects']}")
    return " ".join(parts)


# --------------------------------------------------------------------------------------------
# the interface


class Cgroup:
    """One container's cgroup, in every hierarchy the host uses.

    Get one from :func:`berth.kernel.cgroups.open_cgroup`; nothing touches the kernel until
    :meth:`create`. ``version`` is 1 on legacy and hybrid hosts (v1 controllers, plus the cgroup2
    hierarchy on hybrid ones), 2 on unified hosts.
    """

    version: int = 0
    #: the cgroup path as resolved for the container: absolute, relative to hierarchy roots
    path: str = ""

    @property
    def paths(self) -> dict[str, str]:
        """controller → directory (``""`` for the cgroup2 one): what to save in the container's
        state so another process can :func:`~berth.kernel.cgroups.open_paths` it again."""
        raise NotImplementedError

    def create(self) -> bool:
        """Make the cgroup (idempotent); True when this call made it, so no process can be in it."""
        raise NotImplementedError

    def apply(self, resources: dict[str, Any] | None) -> None:
        raise NotImplementedError

    def add(self, pid: int) -> None:
        raise NotImplementedError

    def entry_files(self) -> list[str]:
        raise NotImplementedError

    def enter(self) -> None:
        raise NotImplementedError

    def pids(self) -> list[int]:
        raise NotImplementedError

    def freeze(self) -> None:
        raise NotImplementedError

    def thaw(self) -> None:
        raise NotImplementedError

    def state(self) -> str:
        raise NotImplementedError

    def kill_all(self, sig: int = SIGKILL) -> None:
        raise NotImplementedError

    def stats(self) -> dict[str, Any]:
        raise NotImplementedError

    def oom_kill_count(self) -> int:
        raise NotImplementedError

    def destroy(self) -> None:
        raise NotImplementedError

    def exists(self) -> bool:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<{type(self).__name__} v{self.version} {self.path}>"


def empty_stats() -> dict[str, Any]:
    """The shape of runc's ``events --stats`` ``data`` object, every key present, zero-valued.

    runc omits zero values (Go's ``omitempty``) when it prints; a CLI that must match it byte for
    byte drops them, everything else can rely on the keys being there.
    """

    def entry() -> dict[str, int]:
        return {"limit": 0, "usage": 0, "max": 0, "failcnt": 0}

    return {
        "cpu": {
            "usage": {"total": 0, "percpu": [], "percpu_kernel": [], "percpu_user": [], "kernel": 0, "user": 0},
            "throttling": {"periods": 0, "throttledPeriods": 0, "throttledTime": 0},
        },
        "cpuset": {
            "cpus": [],
            "cpu_exclusive": 0,
            "mems": [],
            "mem_hardwall": 0,
            "mem_exclusive": 0,
            "memory_migrate": 0,
            "memory_spread_page": 0,
            "memory_spread_slab": 0,
            "memory_pressure": 0,
            "sched_load_balance": 0,
            "sched_relax_domain_level": 0,
        },
        "memory": {
            "cache": 0,
            "usage": entry(),
            "swap": entry(),
            "kernel": entry(),
            "kernelTCP": entry(),
            "raw": {},
        },
        "pids": {"current": 0, "limit": 0},
        "blkio": {
            "ioServiceBytesRecursive": [],
            "ioServicedRecursive": [],
            "ioQueueRecursive": [],
            "ioServiceTimeRecursive": [],
            "ioWaitTimeRecursive": [],
            "ioMergedRecursive": [],
            "ioTimeRecursive": [],
            "sectorsRecursive": [],
        },
        "hugetlb": {},
        "intel_rdt": {},
        "network_interfaces": None,
    }


def wait_until(predicate: Any, timeout: float) -> bool:
    """Poll ``predicate()`` with a growing sleep until true or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    delay = 0.0005
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(delay)
        delay = min(delay * 2, 0.02)
