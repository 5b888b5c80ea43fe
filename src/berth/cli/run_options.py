"""The flags of ``berth run`` and ``berth create`` and their translation into the Engine's options.

Kept apart from the command groups so that `berth run` loads only what it parses with.
"""

from __future__ import annotations

import os

from berth.cli.flags import Flag
from berth.errors import InvalidArgument

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

RUN_FLAGS = [
    Flag("detach,d", "detach"), Flag("interactive,i", "interactive"), Flag("tty,t", "tty"), Flag("rm", "rm"),
    Flag("name", "name", True), Flag("env,e", "env", True, True), Flag("env-file", "env_file", True, True),
    Flag("workdir,w", "workdir", True), Flag("user,u", "user", True), Flag("hostname,h", "hostname", True),
    Flag("entrypoint", "entrypoint", True), Flag("label,l", "label", True, True),
    Flag("volume,v", "volume", True, True), Flag("mount", "mount", True, True), Flag("tmpfs", "tmpfs", True, True),
    Flag("read-only", "read_only"), Flag("memory,m", "memory", True), Flag("memory-swap", "memory_swap", True),
    Flag("cpus", "cpus", True), Flag("cpu-shares,c", "cpu_shares", True), Flag("cpuset-cpus", "cpuset_cpus", True),
    Flag("pids-limit", "pids_limit", True), Flag("ulimit", "ulimits", True, True),
    Flag("cap-add", "cap_add", True, True), Flag("cap-drop", "cap_drop", True, True),
    Flag("privileged", "privileged"), Flag("security-opt", "security_opt", True, True),
    Flag("restart", "restart", True), Flag("stop-signal", "stop_signal", True),
    Flag("stop-timeout", "stop_timeout", True), Flag("health-cmd", "health_cmd", True),
    Flag("health-interval", "health_interval", True), Flag("health-retries", "health_retries", True),
    Flag("health-timeout", "health_timeout", True), Flag("health-start-period", "health_start_period", True),
    Flag("log-opt", "log_opt", True, True), Flag("runtime", "runtime", True), Flag("pull", "pull", True),
    Flag("platform", "platform", True), Flag("network,net", "network", True, True), Flag("init", "init"),
    Flag("publish,p", "publish", True, True), Flag("publish-all,P", "publish_all"), Flag("ip", "ip", True),
    Flag("network-alias,net-alias", "aliases", True, True), Flag("dns", "dns", True, True),
    Flag("dns-search", "dns_search", True, True), Flag("add-host", "add_hosts", True, True),
    Flag("device", "devices", True, True), Flag("detach-keys", "detach_keys", True), Flag("sig-proxy", "sig_proxy"),
    Flag("help", "help"),
]


def _duration(text: str, flag: str) -> float:
    """A flag's duration in seconds: Go-style (30s, 1m30s, 500ms) or a plain number of seconds."""
    seconds = duration_seconds(text)
    if seconds is not None:
        return seconds
    try:
        return float(text)
    except ValueError:
        raise InvalidArgument(f"invalid {flag} {text!r}: expected a duration like 30s") from None


def environment(opts: dict[str, Any]) -> list[str]:
    """-e/--env values, then the lines of each --env-file (blank lines and # comments skipped)."""
    env = list(opts.get("env", []))
    for path in opts.get("env_file", []):
        try:
            with open(path) as f:
                env += [line.strip() for line in f if line.strip() and not line.startswith("#")]
        except OSError as e:
            raise InvalidArgument(f"--env-file {path}: {e.strerror}") from None
    return env


def run_options(opts: dict[str, Any]) -> dict[str, Any]:
    """Flags → the Engine's keyword options."""
    out: dict[str, Any] = {}
    for key in ("interactive", "tty", "workdir", "user", "hostname", "entrypoint", "read_only", "memory",
                "memory_swap", "cpus", "cpu_shares", "cpuset_cpus", "pids_limit", "ulimits", "cap_add",
                "cap_drop", "privileged", "security_opt", "restart", "stop_signal", "stop_timeout", "tmpfs",
                "runtime", "publish", "publish_all", "ip", "aliases", "dns", "dns_search", "add_hosts", "init",
                "devices"):
        if key in opts:
            out[key] = opts[key]
    env = environment(opts)
    if env:
        out["env"] = env
    if opts.get("label"):
        out["labels"] = dict(item.partition("=")[::2] for item in opts["label"])
    binds = []
    volumes = []
    for spec in opts.get("volume", []):
        parts = spec.split(":")
        if len(parts) == 1 and parts[0].startswith("/"):
            parts = ["", parts[0]]  # `-v /path`: an anonymous volume
        if len(parts) < 2 or not parts[1].startswith("/") or any(o not in ("ro", "rw", "z", "Z") for o in parts[2:]):
            raise InvalidArgument(f"invalid volume {spec!r}: expected [/host/path|NAME:]/container/path[:ro]")
        if parts[0].startswith("/"):
            binds.append({"source": parts[0], "destination": parts[1], "readonly": "ro" in parts[2:]})
        else:
            volumes.append({"name": parts[0] or os.urandom(32).hex(), "destination": parts[1],
                            "readonly": "ro" in parts[2:], "anonymous": not parts[0]})
    for spec in opts.get("mount", []):
        fields = dict(f.partition("=")[::2] for f in spec.split(","))
        kind = fields.get("type", "volume")
        target = fields.get("target") or fields.get("destination") or fields.get("dst")
        if not target:
            raise InvalidArgument(f"invalid --mount {spec!r}: target is required")
        if kind == "bind":
            binds.append({"source": fields.get("source") or fields.get("src", ""), "destination": target,
                          "readonly": "readonly" in fields or fields.get("ro") == "true"})
        elif kind == "tmpfs":
            out.setdefault("tmpfs", []).append(target)
        elif kind == "volume":
            source = fields.get("source") or fields.get("src")
            volumes.append({"name": source or os.urandom(32).hex(), "destination": target,
                            "readonly": "readonly" in fields or fields.get("ro") == "true", "anonymous": not source})
        else:
            raise InvalidArgument(f"invalid --mount {spec!r}: type {kind!r} is not supported yet")
    if binds:
        out["binds"] = binds
    if volumes:
        out["volumes"] = volumes
    if opts.get("log_opt"):
        out["log_opts"] = dict(item.partition("=")[::2] for item in opts["log_opt"])
    if opts.get("health_cmd"):
        out["health"] = {
            "test": ["/bin/sh", "-c", opts["health_cmd"]],
            "interval": _duration(opts.get("health_interval", "30s"), "--health-interval"),
            "timeout": _duration(opts.get("health_timeout", "30s"), "--health-timeout"),
            "retries": int(opts.get("health_retries", 3)),
            "start_period": _duration(opts.get("health_start_period", "0s"), "--health-start-period"),
        }
    if opts.get("network"):
        network_options(opts["network"], out)
    for spec in opts.get("publish", []):
        from berth.network.ports import parse as parse_port  # validates early, without pyroute2

        parse_port(spec)
    return out


#: Network modes that cannot be combined with other networks.
SOLE_MODES = ("none", "host")


def network_options(values: list[str], out: dict[str, Any]) -> None:
    """``--network`` flags of run/create into the engine's options: ``network`` (the first: its
    interface is eth0 and carries the default route) and ``networks`` (the others, each
    ``{"name", "aliases", "ip"}``). A value may be Docker's long form ``name=NET,alias=A,ip=IP``;
    ``--ip`` and ``--network-alias`` apply to the first network, as with Docker."""
    parsed: list[dict[str, Any]] = []
    for value in values:
        if "=" not in value:
            parsed.append({"name": value, "aliases": [], "ip": None})
            continue
        entry: dict[str, Any] = {"name": "", "aliases": [], "ip": None}
        for item in value.split(","):
            key, _, val = item.partition("=")
            if key == "name":
                entry["name"] = val
            elif key == "alias":
                entry["aliases"].append(val)
            elif key == "ip":
                entry["ip"] = val
            else:
                raise InvalidArgument(f"invalid --network {value!r}: unknown key {key!r} (name, alias, ip)")
        if not entry["name"]:
            raise InvalidArgument(f"invalid --network {value!r}: name=NETWORK is required")
        parsed.append(entry)
    if len(parsed) > 1 and any(p["name"] in SOLE_MODES or p["name"].startswith("container:") for p in parsed):
        raise InvalidArgument("conflicting options: none, host and container:NAME cannot be combined with "
                              "other networks")
    first, *rest = parsed
    out["network"] = first["name"]
    if first["aliases"]:
        out["aliases"] = [*out.get("aliases", []), *first["aliases"]]
    if first["ip"]:
        if out.get("ip"):
            raise InvalidArgument("conflicting options: --ip and --network ip=")
        out["ip"] = first["ip"]
    if rest:
        out["networks"] = rest


def duration_seconds(text: str) -> float | None:
    """Go-style durations such as 1h30m, 45s or 500ms; None when ``text`` is not one."""
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
    total, number, i = 0.0, "", 0
    while i < len(text):
        ch = text[i]
        if ch.isdigit() or ch == ".":
            number += ch
            i += 1
            continue
        unit = "ms" if text.startswith("ms", i) else ch
        if unit not in units or not number:
            return None
        total += float(number) * units[unit]
        number = ""
        i += len(unit)
    return total if text and not number else None
