"""``berth-runtime``: runc's command line over ``lifecycle``.

The parser is hand-written on purpose: argparse alone costs several milliseconds of start-up, and
every ``berth-runtime`` invocation is on a container's start path. Flags follow runc's (urfave/cli)
rules: ``--flag value``, ``--flag=value``, single-dash short forms, options before positionals,
``--`` ends options. Errors go to stderr and, with ``--log``, to the log file in the chosen format;
the exit status is 1 like runc's, except that ``run`` and ``exec`` report 126/127 when the command
cannot be invoked or is missing, and otherwise the container process's own status.
"""

from __future__ import annotations

import os
import sys

from berth.errors import BerthError, CannotInvoke, CommandNotFound, InvalidArgument

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

USAGE = """usage: berth-runtime [global options] COMMAND [options] [arguments]

An OCI runtime with runc's command line.

Commands:
  create    create a container (its process waits for start)
  start     run the created container's process
  run       create and start a container
  state     print a container's state as JSON
  kill      send a signal to a container's init (or --all processes)
  delete    delete a container (--force kills it first)
  list      list containers (--format table|json, -q)
  ps        list the processes in a container
  exec      run a new process inside a container
  pause     freeze every process of a container
  resume    thaw a paused container
  update    change a container's resource limits
  events    print resource usage statistics (--stats for one sample)
  spec      write a default config.json
  features  print what this runtime supports, as JSON

Global options:
  --root DIR           state directory (default /run/berth-runtime)
  --log FILE           also write errors there
  --log-format FORMAT  text or json
  --debug              more logging
  --systemd-cgroup     accepted; cgroupsPath "slice:prefix:name" is mapped to a plain cgroup path
"""

# flag name → (destination, takes a value, may repeat)
Spec = dict[str, tuple[str, bool, bool]]

GLOBAL: Spec = {
    "root": ("root", True, False), "log": ("log", True, False), "log-format": ("log_format", True, False),
    "debug": ("debug", False, False), "systemd-cgroup": ("systemd_cgroup", False, False),
    "rootless": ("rootless", True, False), "criu": ("criu", True, False),
    "help": ("help", False, False), "h": ("help", False, False),
    "version": ("version", False, False), "v": ("version", False, False),
}
_CREATE: Spec = {
    "bundle": ("bundle", True, False), "b": ("bundle", True, False),
    "console-socket": ("console_socket", True, False), "pid-file": ("pid_file", True, False),
    "no-pivot": ("no_pivot", False, False), "no-new-keyring": ("no_new_keyring", False, False),
    "preserve-fds": ("preserve_fds", True, False), "pidfd-socket": ("pidfd_socket", True, False),
}
_UPDATE_FLAGS = {
    "blkio-weight": ("blockIO", "weight"), "cpu-period": ("cpu", "period"), "cpu-quota": ("cpu", "quota"),
    "cpu-rt-period": ("cpu", "realtimePeriod"), "cpu-rt-runtime": ("cpu", "realtimeRuntime"),
    "cpu-share": ("cpu", "shares"), "cpuset-cpus": ("cpu", "cpus"), "cpuset-mems": ("cpu", "mems"),
    "memory": ("memory", "limit"), "memory-reservation": ("memory", "reservation"),
    "memory-swap": ("memory", "swap"), "kernel-memory": ("memory", "kernel"),
    "kernel-memory-tcp": ("memory", "kernelTCP"), "pids-limit": ("pids", "limit"),
}
COMMANDS: dict[str, Spec] = {
    "create": _CREATE,
    "run": {**_CREATE, "detach": ("detach", False, False), "d": ("detach", False, False),
            "keep": ("keep", False, False), "no-subreaper": ("no_subreaper", False, False)},
    "start": {}, "state": {}, "pause": {}, "resume": {}, "features": {},
    "kill": {"all": ("all", False, False), "a": ("all", False, False)},
    "delete": {"force": ("force", False, False), "f": ("force", False, False)},
    "list": {"format": ("format", True, False), "f": ("format", True, False),
             "quiet": ("quiet", False, False), "q": ("quiet", False, False)},
    "ps": {"format": ("format", True, False), "f": ("format", True, False)},
    "exec": {
        "console-socket": ("console_socket", True, False), "cwd": ("cwd", True, False),
        "env": ("env", True, True), "e": ("env", True, True), "tty": ("tty", False, False),
        "t": ("tty", False, False), "user": ("user", True, False), "u": ("user", True, False),
        "additional-gids": ("additional_gids", True, True), "g": ("additional_gids", True, True),
        "process": ("process", True, False), "p": ("process", True, False),
        "detach": ("detach", False, False), "d": ("detach", False, False),
        "pid-file": ("pid_file", True, False), "process-label": ("process_label", True, False),
        "apparmor": ("apparmor", True, False), "no-new-privs": ("no_new_privs", False, False),
        "cap": ("cap", True, True), "c": ("cap", True, True), "preserve-fds": ("preserve_fds", True, False),
        "ignore-paused": ("ignore_paused", False, False), "cgroup": ("cgroup", True, True),
        "pidfd-socket": ("pidfd_socket", True, False),
    },
    "update": {"resources": ("resources", True, False), "r": ("resources", True, False),
               **{k: (k, True, False) for k in _UPDATE_FLAGS}},
    "spec": {"bundle": ("bundle", True, False), "b": ("bundle", True, False),
             "rootless": ("rootless", False, False)},
    "events": {"interval": ("interval", True, False), "stats": ("stats", False, False)},
}
for _spec in COMMANDS.values():
    _spec.setdefault("help", ("help", False, False))
    _spec.setdefault("h", ("help", False, False))


def parse(argv: list[str], spec: Spec, what: str, stop_at_positional: bool) -> tuple[dict[str, Any], list[str]]:
    """Parse ``argv`` against ``spec``; return (options, positionals)."""
    opts: dict[str, Any] = {}
    rest: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if arg == "--":
            rest += argv[i:]
            break
        if not arg.startswith("-") or arg == "-":
            rest.append(arg)
            if stop_at_positional:
                rest += argv[i:]
                break
            continue
        name, eq, value = arg.lstrip("-").partition("=")
        if name not in spec:
            raise InvalidArgument(f"{what}: flag provided but not defined: -{'-' if len(name) > 1 else ''}{name}")
        dest, takes_value, multi = spec[name]
        if takes_value:
            if not eq:
                if i >= len(argv):
                    raise InvalidArgument(f"{what}: flag needs an argument: {arg}")
                value = argv[i]
                i += 1
            if multi:
                opts.setdefault(dest, []).append(value)
            else:
                opts[dest] = value
        else:
            opts[dest] = value.lower() not in ("false", "0") if eq else True
    return opts, rest


def _int(opts: dict[str, Any], key: str, default: int = 0) -> int:
    raw = opts.get(key)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        raise InvalidArgument(f"--{key.replace('_', '-')}: expected a number, got {raw!r}") from None


def _one_id(args: list[str], command: str) -> str:
    if len(args) != 1:
        raise InvalidArgument(f'"{command}" requires exactly one argument: the container id')
    return args[0]


class Runtime:
    """Runs one parsed command; global options live on the instance."""

    def __init__(self, gopts: dict[str, Any]) -> None:
        from berth.config import runtime_root

        self.root = os.path.abspath(gopts.get("root") or runtime_root())
        self.log = gopts.get("log")
        self.log_format = gopts.get("log_format", "text")
        if self.log_format not in ("text", "json"):
            raise InvalidArgument(f"--log-format: unknown format {self.log_format!r} (text or json)")

    def run_command(self, command: str, opts: dict[str, Any], args: list[str]) -> int:
        handler = getattr(self, "cmd_" + command)
        return int(handler(opts, args) or 0)

    def cmd_create(self, opts: dict[str, Any], args: list[str]) -> int:
        from berth.runtime import lifecycle

        lifecycle.create(self.root, _one_id(args, "create"), opts.get("bundle") or ".",
                         pid_file=opts.get("pid_file"), console_socket=opts.get("console_socket"),
                         no_pivot=bool(opts.get("no_pivot")), preserve_fds=_int(opts, "preserve_fds"),
                         no_new_keyring=bool(opts.get("no_new_keyring")), listen_fds=_listen_fds())
        return 0

    def cmd_run(self, opts: dict[str, Any], args: list[str]) -> int:
        from berth.runtime import lifecycle

        cid = _one_id(args, "run")
        detach = bool(opts.get("detach"))
        bundle = opts.get("bundle") or "."
        console_socket = opts.get("console_socket")
        receiver = None
        if not console_socket and not detach and _wants_terminal(bundle):
            from berth.runtime.console import Receiver

            receiver = Receiver()
            console_socket = receiver.path
        try:
            record = lifecycle.create(
                self.root, cid, bundle, pid_file=opts.get("pid_file"),
                console_socket=console_socket, no_pivot=bool(opts.get("no_pivot")),
                preserve_fds=_int(opts, "preserve_fds"), subreaper=not detach and not opts.get("no_subreaper"),
                no_new_keyring=bool(opts.get("no_new_keyring")), listen_fds=_listen_fds())
        except BaseException:
            if receiver is not None:
                receiver.close()
            raise
        master = receiver.master() if receiver is not None else None
        from berth.runtime.process import forward_signals

        if not detach:
            forward_signals(record.pid)  # before start: the container may be signalled as soon as it runs
        try:
            lifecycle.start(self.root, cid)
        except BaseException:
            lifecycle.delete(self.root, cid, force=True)
            raise
        if detach:
            return 0
        if master is not None:
            from berth.runtime.console import relay

            status = relay(master, record.pid, lifecycle.wait_exit)
        else:
            status = lifecycle.wait_exit(record.pid)
        if not opts.get("keep"):
            lifecycle.delete(self.root, cid, force=True)
        return status

    def cmd_start(self, opts: dict[str, Any], args: list[str]) -> int:
        from berth.runtime import lifecycle

        lifecycle.start(self.root, _one_id(args, "start"))
        return 0

    def cmd_state(self, opts: dict[str, Any], args: list[str]) -> int:
        from berth.runtime import lifecycle

        _print_json(lifecycle.state(self.root, _one_id(args, "state")))
        return 0

    def cmd_kill(self, opts: dict[str, Any], args: list[str]) -> int:
        from berth.runtime import lifecycle

        if not 1 <= len(args) <= 2:
            raise InvalidArgument('"kill" requires the container id and optionally a signal')
        sig = lifecycle.parse_signal(args[1] if len(args) == 2 else "SIGTERM")
        lifecycle.kill(self.root, args[0], sig, bool(opts.get("all")))
        return 0

    def cmd_delete(self, opts: dict[str, Any], args: list[str]) -> int:
        from berth.errors import NotFound
        from berth.runtime import lifecycle

        cid = _one_id(args, "delete")
        try:
            lifecycle.delete(self.root, cid, bool(opts.get("force")))
        except NotFound:
            if not opts.get("force"):
                raise
        return 0

    def cmd_list(self, opts: dict[str, Any], args: list[str]) -> int:
        from berth.runtime import lifecycle

        states = lifecycle.list_containers(self.root)
        fmt = opts.get("format", "table")
        if opts.get("quiet"):
            sys.stdout.write("".join(s["id"] + "\n" for s in states))
        elif fmt == "json":
            _print_json(states)
        elif fmt == "table":
            rows = [("ID", "PID", "STATUS", "BUNDLE", "CREATED", "OWNER")]
            rows += [(s["id"], str(s["pid"]), s["status"], s.get("bundle", ""), s.get("created", ""),
                      s.get("owner") or "root") for s in states]
            widths = [max(len(r[i]) for r in rows) for i in range(6)]
            for r in rows:
                sys.stdout.write("   ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() + "\n")
        else:
            raise InvalidArgument(f"--format: unknown format {fmt!r} (table or json)")
        return 0

    def cmd_ps(self, opts: dict[str, Any], args: list[str]) -> int:
        from berth.runtime import lifecycle

        if not args:
            raise InvalidArgument('"ps" requires the container id')
        pids = lifecycle.pids(self.root, args[0])
        if opts.get("format") == "json":
            _print_json(pids)
            return 0
        import subprocess

        out = subprocess.run(["ps", *(args[1:] or ["-ef"])], capture_output=True, text=True, check=True).stdout
        lines = out.splitlines()
        header = lines[0].split()
        col = header.index("PID")
        sys.stdout.write(lines[0] + "\n")
        wanted = set(pids)
        for line in lines[1:]:
            fields = line.split()
            if len(fields) > col and fields[col].isdigit() and int(fields[col]) in wanted:
                sys.stdout.write(line + "\n")
        return 0

    def cmd_exec(self, opts: dict[str, Any], args: list[str]) -> int:
        from berth.runtime.execute import exec_process
        from berth.runtime.state import StateDir

        if not args:
            raise InvalidArgument('"exec" requires the container id')
        cid, command = args[0], args[1:]
        if opts.get("process"):
            process = _read_json_arg(opts["process"], "--process")
        else:
            if not command:
                raise InvalidArgument("exec: a command is required (or --process)")
            record = StateDir(self.root, cid).load()
            if record is None:
                raise InvalidArgument(f"container {cid} is still being created")
            process = _exec_process_from_flags(record.config["process"], command, opts)
        return exec_process(self.root, cid, process, detach=bool(opts.get("detach")),
                            pid_file=opts.get("pid_file"), console_socket=opts.get("console_socket"),
                            preserve_fds=_int(opts, "preserve_fds"))

    def cmd_pause(self, opts: dict[str, Any], args: list[str]) -> int:
        from berth.runtime import lifecycle

        lifecycle.pause(self.root, _one_id(args, "pause"))
        return 0

    def cmd_resume(self, opts: dict[str, Any], args: list[str]) -> int:
        from berth.runtime import lifecycle

        lifecycle.resume(self.root, _one_id(args, "resume"))
        return 0

    def cmd_update(self, opts: dict[str, Any], args: list[str]) -> int:
        from berth.runtime import lifecycle

        cid = _one_id(args, "update")
        resources: dict[str, Any] = {}
        if opts.get("resources"):
            resources = _read_json_arg(opts["resources"], "--resources")
        for flag, (section, key) in _UPDATE_FLAGS.items():
            if flag in opts:
                resources.setdefault(section, {})[key] = _update_value(flag, opts[flag])
        lifecycle.update(self.root, cid, resources)
        return 0

    def cmd_spec(self, opts: dict[str, Any], args: list[str]) -> int:
        import json

        from berth.runtime.spec_template import default_spec

        path = os.path.join(opts.get("bundle") or ".", "config.json")
        if os.path.exists(path):
            raise InvalidArgument(f"File {path} exists. Remove it first")
        with open(path, "w") as f:
            json.dump(default_spec(rootless=bool(opts.get("rootless"))), f, indent="\t")
        return 0

    def cmd_features(self, opts: dict[str, Any], args: list[str]) -> int:
        from berth.runtime.features import features

        _print_json(features())
        return 0

    def cmd_events(self, opts: dict[str, Any], args: list[str]) -> int:
        import json
        import time

        from berth.runtime import lifecycle

        cid = _one_id(args, "events")
        interval = _duration(opts.get("interval", "5s"))
        while True:
            try:
                data = lifecycle.stats(self.root, cid)
            except BerthError:
                if opts.get("stats"):
                    raise
                return 0
            sys.stdout.write(json.dumps({"type": "stats", "id": cid, "data": data}) + "\n")
            sys.stdout.flush()
            if opts.get("stats"):
                return 0
            time.sleep(interval)


def _wants_terminal(bundle: str) -> bool:
    from berth.oci import jsonc

    try:
        with open(os.path.join(bundle, "config.json"), "rb") as f:
            return bool(jsonc.loads(f.read()).get("process", {}).get("terminal"))
    except (OSError, ValueError, AttributeError):
        return False  # create reports what is wrong with the config


def _listen_fds() -> int:
    """systemd socket activation (the CLI contract's LISTEN_FDS): how many descriptors from 3 up are
    the container's. Like runc, only when LISTEN_PID, if set, names this process."""
    raw = os.environ.get("LISTEN_FDS")
    if not raw or os.environ.get("LISTEN_PID", str(os.getpid())) != str(os.getpid()):
        return 0
    try:
        return max(int(raw), 0)
    except ValueError:
        raise InvalidArgument(f"LISTEN_FDS: expected a number, got {raw!r}") from None


def _exec_process_from_flags(base: dict[str, Any], command: list[str], opts: dict[str, Any]) -> dict[str, Any]:
    import copy

    process = copy.deepcopy(base)
    process["args"] = command
    process["terminal"] = bool(opts.get("tty"))
    process.pop("consoleSize", None)
    if opts.get("cwd"):
        process["cwd"] = opts["cwd"]
    if opts.get("env"):
        process["env"] = list(process.get("env", [])) + opts["env"]
    if opts.get("user"):
        uid, _, gid = opts["user"].partition(":")
        try:
            process["user"] = {"uid": int(uid), "gid": int(gid or 0)}
        except ValueError:
            raise InvalidArgument(f"--user: expected UID[:GID], got {opts['user']!r}") from None
    if opts.get("additional_gids"):
        try:
            process["user"]["additionalGids"] = [int(g) for g in opts["additional_gids"]]
        except ValueError:
            raise InvalidArgument("--additional-gids: expected numbers") from None
    if opts.get("no_new_privs"):
        process["noNewPrivileges"] = True
    if opts.get("cap"):
        caps = process.setdefault("capabilities", {})
        for key in ("bounding", "effective", "permitted"):
            caps[key] = list(dict.fromkeys([*caps.get(key, []), *opts["cap"]]))
    return process


def _read_json_arg(path: str, flag: str) -> Any:
    import json

    try:
        if path == "-":
            raw = sys.stdin.read()
        else:
            with open(path) as f:
                raw = f.read()
        return json.loads(raw)
    except OSError as e:
        raise InvalidArgument(f"{flag} {path}: {e.strerror}") from None
    except ValueError as e:
        raise InvalidArgument(f"{flag} {path}: invalid JSON: {e}") from None


_UNITS = {"": 1, "b": 1, "k": 1024, "kb": 1024, "m": 1024**2, "mb": 1024**2, "g": 1024**3, "gb": 1024**3,
          "t": 1024**4}


def _update_value(flag: str, raw: str) -> Any:
    if flag in ("cpuset-cpus", "cpuset-mems"):
        return raw
    text = raw.strip().lower()
    if flag.startswith(("memory", "kernel-memory")):
        if text == "-1":
            return -1
        num = text.rstrip("kmgtb")
        unit = text[len(num):]
        try:
            return int(float(num) * _UNITS[unit])
        except (ValueError, KeyError):
            raise InvalidArgument(f"--{flag}: invalid size {raw!r}") from None
    try:
        return int(text)
    except ValueError:
        raise InvalidArgument(f"--{flag}: expected a number, got {raw!r}") from None


def _duration(raw: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    for suffix in ("ms", "s", "m", "h"):
        if raw.endswith(suffix):
            try:
                return float(raw[: -len(suffix)]) * units[suffix]
            except ValueError:
                break
    raise InvalidArgument(f"--interval: invalid duration {raw!r} (like 5s)")


def _print_json(obj: Any) -> None:
    import json

    sys.stdout.write(json.dumps(obj, indent=2) + "\n")


def _log_error(gopts: dict[str, Any], message: str) -> None:
    """To stderr, or, as runc does, only to the --log file when one is given (the caller's stderr
    may be the container's)."""
    path = gopts.get("log")
    if not path:
        sys.stderr.write(f"berth-runtime: {message}\n")
        return
    try:
        import time

        with open(path, "a") as f:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            if gopts.get("log_format") == "json":
                import json

                f.write(json.dumps({"level": "error", "msg": message, "time": stamp}) + "\n")
            else:
                f.write(f'time="{stamp}" level=error msg="{message}"\n')
    except OSError:
        pass


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    gopts: dict[str, Any] = {}
    try:
        gopts, rest = parse(argv, GLOBAL, "berth-runtime", stop_at_positional=True)
        if gopts.get("version"):
            from berth import __version__

            sys.stdout.write(f"berth-runtime version {__version__}\nspec: 1.3.0\n")
            return 0
        if not rest or gopts.get("help") or rest[0] == "help":
            sys.stdout.write(USAGE)
            return 0 if gopts.get("help") or (rest and rest[0] == "help") else 1
        command = rest[0]
        if command not in COMMANDS:
            raise InvalidArgument(f"no such command: {command!r} (see berth-runtime --help)")
        # exec's command and ps's options for ps(1) follow the id and are not ours to parse.
        opts, args = parse(rest[1:], COMMANDS[command], command, stop_at_positional=command in ("exec", "ps"))
        if opts.get("help"):
            sys.stdout.write(USAGE)
            return 0
        return Runtime(gopts).run_command(command, opts, args)
    except (CommandNotFound, CannotInvoke) as e:
        _log_error(gopts, str(e))
        return e.exit_code
    except BerthError as e:
        _log_error(gopts, str(e))
        return 1
    except OSError as e:
        _log_error(gopts, f"{e.filename + ': ' if e.filename else ''}{e.strerror or e}")
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
