"""``berth`` container commands beyond the life cycle in ``main`` (exec, top, stats, pause, cp...).

Each ``cmd_*`` method is found by ``main``'s dispatcher through the ``Cli`` class, which mixes this in.
"""

from __future__ import annotations

import sys

from berth.cli.flags import Flag, parse
from berth.errors import InvalidArgument, Unsupported

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from berth.engine.engine import Engine

EXEC_FLAGS = [
    Flag("interactive,i", "interactive"), Flag("tty,t", "tty"), Flag("detach,d", "detach"),
    Flag("env,e", "env", True, True), Flag("env-file", "env_file", True, True), Flag("user,u", "user", True),
    Flag("workdir,w", "workdir", True), Flag("privileged", "privileged"), Flag("detach-keys", "detach_keys", True),
    Flag("help", "help"),
]

#: ``berth container SUBCOMMAND`` → the top-level command it is.
CONTAINER_ALIASES = {"ls": "ps", "list": "ps", "remove": "rm"}


def _human_binary(n: float) -> str:
    """Docker's stats units: 1.5MiB, 7.7GiB."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.4g}{unit}"
        n /= 1024
    return f"{n}TiB"


class ContainerCommands:
    """Mixed into ``cli.main.Cli``: ``self.engine``, ``self.out`` and ``parse`` are available."""

    if TYPE_CHECKING:
        @property
        def engine(self) -> Engine: ...
        def out(self, text: str) -> None: ...
        def _each(self, refs: list[str], action: Any) -> int: ...

    def cmd_container(self, argv: list[str]) -> int:
        if not argv or argv[0] in ("-h", "--help"):
            self.out("Usage: berth container COMMAND\n\nCommands: ls, ps, run, create, start, stop, restart, kill, "
                     "rm, attach, logs, wait, inspect, exec, top, stats, port, pause, unpause, rename, update, prune, "
                     "diff, export, commit, cp\n")
            return 0 if argv else 125
        sub = CONTAINER_ALIASES.get(argv[0], argv[0])
        handler = getattr(self, "cmd_" + sub.replace("-", "_"), None)
        if handler is None or sub in ("container", "images", "pull", "import", "rmi", "tag", "version", "info"):
            raise InvalidArgument(f"unknown command: \"berth container {argv[0]}\"\nSee 'berth container --help'.")
        return int(handler(argv[1:]))

    def cmd_events(self, argv: list[str]) -> int:
        """Docker's ``events``: past events with --since/--until, then new ones as they happen
        (until --until, or for ever)."""
        import time

        from berth.cli import format as fmt
        from berth.cli.main import _since

        opts, rest = parse(argv, [Flag("since", "since", True), Flag("until", "until", True),
                                  Flag("filter,f", "filter", True, True), Flag("format", "format", True)], "events")
        if rest:
            raise InvalidArgument('"berth events" accepts no arguments')
        since = _parse_stamp(_since(opts["since"])) if opts.get("since") else time.time()
        until = _parse_stamp(_since(opts["until"])) if opts.get("until") else None
        filters = [f.partition("=")[::2] for f in opts.get("filter", [])]
        for event in self.engine.events(since, until, follow=True):
            attrs = event["Actor"]["Attributes"]
            fields = {"type": event["Type"], "event": event["Action"], "container": event["Actor"]["ID"],
                      "name": attrs.get("name", ""), "image": attrs.get("image", "")}
            if not all(fields.get(k) == v or (k == "container" and fields["name"] == v) for k, v in filters):
                continue
            if opts.get("format"):
                text = fmt.render_rows([{**event, "Status": event["Action"], "ID": event["Actor"]["ID"]}],
                                       opts["format"]) or ""
                self.out(text)
            else:
                from berth.monitor.logfile import timestamp

                details = ", ".join(f"{k}={v}" for k, v in sorted(attrs.items()))
                self.out(f"{timestamp(event['timeNano'] / 1e9)} {event['Type']} {event['Action']} "
                         f"{event['Actor']['ID']} ({details})\n")
            sys.stdout.flush()
        return 0

    def cmd_exec(self, argv: list[str]) -> int:
        opts, rest = parse(argv, EXEC_FLAGS, "exec", positionals_end_flags=1)
        if opts.get("help"):
            self.out("Usage: berth exec [OPTIONS] CONTAINER COMMAND [ARG...]\n")
            return 0
        if len(rest) < 2:
            raise InvalidArgument('"berth exec" requires at least 2 arguments: the container and the command')
        if opts.get("privileged"):
            raise Unsupported("exec --privileged is not supported yet")
        from berth.cli.run_options import environment

        env = environment(opts)
        return self.engine.exec(rest[0], rest[1:], interactive=bool(opts.get("interactive")),
                                tty=bool(opts.get("tty")), detach=bool(opts.get("detach")), env=env,
                                user=opts.get("user"), workdir=opts.get("workdir"))

    def cmd_top(self, argv: list[str]) -> int:
        _, rest = parse(argv, [], "top", positionals_end_flags=1)
        if not rest:
            raise InvalidArgument('"berth top" requires at least 1 argument')
        self.out(self.engine.top(rest[0], rest[1:] or None))
        return 0

    def cmd_stats(self, argv: list[str]) -> int:
        import time

        from berth.cli import format as fmt

        opts, rest = parse(argv, [Flag("no-stream", "no_stream"), Flag("all,a", "all"),
                                  Flag("format", "format", True), Flag("no-trunc", "no_trunc")], "stats")
        refs = rest or ([c.id for c in self.engine.containers(all=True)] if opts.get("all") else None)
        while True:
            rows = []
            for s in self.engine.stats(refs):
                rows.append({
                    "Container": s["id"][:12], "ID": s["id"] if opts.get("no_trunc") else s["id"][:12],
                    "Name": s["name"], "CPUPerc": f"{s['cpu_percent']:.2f}%",
                    "MemUsage": f"{_human_binary(s['mem_usage'])} / {_human_binary(s['mem_limit'])}",
                    "MemPerc": f"{s['mem_percent']:.2f}%", "NetIO": "0B / 0B", "BlockIO": "0B / 0B",
                    "PIDs": str(s["pids"]),
                })
            text = fmt.render_rows(rows, opts.get("format"))
            if text is not None:
                self.out(text)
            else:
                header = ["CONTAINER ID", "NAME", "CPU %", "MEM USAGE / LIMIT", "MEM %", "NET I/O", "BLOCK I/O",
                          "PIDS"]
                self.out(fmt.table([[r["ID"], r["Name"], r["CPUPerc"], r["MemUsage"], r["MemPerc"], r["NetIO"],
                                     r["BlockIO"], r["PIDs"]] for r in rows], header))
            if opts.get("no_stream"):
                return 0
            sys.stdout.flush()
            time.sleep(0.5)

    def cmd_pause(self, argv: list[str]) -> int:
        _, rest = parse(argv, [], "pause")
        if not rest:
            raise InvalidArgument('"berth pause" requires at least 1 argument')
        return self._each(rest, self.engine.pause)

    def cmd_unpause(self, argv: list[str]) -> int:
        _, rest = parse(argv, [], "unpause")
        if not rest:
            raise InvalidArgument('"berth unpause" requires at least 1 argument')
        return self._each(rest, self.engine.unpause)

    def cmd_rename(self, argv: list[str]) -> int:
        _, rest = parse(argv, [], "rename")
        if len(rest) != 2:
            raise InvalidArgument('"berth rename" requires exactly 2 arguments: CONTAINER NEW_NAME')
        self.engine.rename(rest[0], rest[1])
        return 0

    def cmd_update(self, argv: list[str]) -> int:
        opts, rest = parse(argv, [Flag("memory,m", "memory", True), Flag("cpus", "cpus", True),
                                  Flag("pids-limit", "pids_limit", True), Flag("cpu-shares,c", "cpu_shares", True)],
                           "update")
        if not rest:
            raise InvalidArgument('"berth update" requires at least 1 argument')
        limits = {k: opts[k] for k in ("memory", "cpus", "pids_limit", "cpu_shares") if k in opts}
        if not limits:
            raise InvalidArgument("you must provide one or more flags when using this command")
        return self._each(rest, lambda ref: self.engine.update(ref, **limits))

    def cmd_port(self, argv: list[str]) -> int:
        _, rest = parse(argv, [], "port")
        if not 1 <= len(rest) <= 2:
            raise InvalidArgument('"berth port" requires 1 or 2 arguments: CONTAINER [PRIVATE_PORT[/PROTO]]')
        mappings = self.engine.container_ports(rest[0])
        if len(rest) == 2:
            port, _, proto = rest[1].partition("/")
            mappings = [m for m in mappings if str(m.container_port) == port and m.proto == (proto or "tcp")]
            if not mappings:
                raise InvalidArgument(f"no public port '{rest[1]}' published for {rest[0]}")
            self.out("".join(f"{m.host_ip}:{m.host_port}\n" for m in mappings))
            return 0
        self.out("".join(f"{m}\n" for m in mappings))
        return 0

    def cmd_prune(self, argv: list[str]) -> int:
        """``berth container prune``."""
        from berth.cli import format as fmt

        opts, rest = parse(argv, [Flag("force,f", "force"), Flag("filter", "filter", True, True)], "container prune")
        if rest:
            raise InvalidArgument('"berth container prune" accepts no arguments')
        if opts.get("filter"):
            raise InvalidArgument("container prune --filter is not supported yet")
        if not opts.get("force"):
            sys.stdout.write("WARNING! This will remove all stopped containers.\n"
                             "Are you sure you want to continue? [y/N] ")
            sys.stdout.flush()
            if sys.stdin.readline().strip().lower() not in ("y", "yes"):
                return 0
        ids, reclaimed = self.engine.prune()
        if ids:
            self.out("Deleted Containers:\n" + "".join(i + "\n" for i in ids) + "\n")
        self.out(f"Total reclaimed space: {fmt.size(reclaimed)}\n")
        return 0

    def cmd_system_info(self, argv: list[str]) -> int:
        """``berth system info`` (and ``berth info``): Docker's field names; --format as Docker's."""
        import json

        from berth.cli import format as fmt

        opts, rest = parse(argv, [Flag("format,f", "format", True)], "system info")
        if rest:
            raise InvalidArgument('"berth system info" accepts no arguments')
        info = self.engine.info()
        if opts.get("format") == "json":
            self.out(json.dumps(info) + "\n")
            return 0
        if opts.get("format"):
            self.out(fmt.render(opts["format"], info) + "\n")
            return 0
        lines = [f" Containers: {info['Containers']}", f"  Running: {info['ContainersRunning']}",
                 f"  Paused: {info['ContainersPaused']}", f"  Stopped: {info['ContainersStopped']}",
                 f" Images: {info['Images']}", f" Server Version: {info['ServerVersion']}",
                 f" Storage Driver: {info['Driver']}", f" Logging Driver: {info['LoggingDriver']}",
                 f" Cgroup Driver: {info['CgroupDriver']}", f" Cgroup Version: {info['CgroupVersion']}",
                 f" Runtimes: {' '.join(sorted(info['Runtimes']))}", f" Default Runtime: {info['DefaultRuntime']}",
                 f" Kernel Version: {info['KernelVersion']}", f" Operating System: {info['OperatingSystem']}",
                 f" OSType: {info['OSType']}", f" Architecture: {info['Architecture']}", f" CPUs: {info['NCPU']}",
                 f" Total Memory: {fmt.size(info['MemTotal'])}", f" Name: {info['Name']}", f" ID: {info['ID']}",
                 f" Berth Root Dir: {info['DockerRootDir']}"]
        self.out("Server:\n" + "\n".join(lines) + "\n")
        return 0

    def cmd_info(self, argv: list[str]) -> int:
        return self.cmd_system_info(argv)

    def cmd_system_prune(self, argv: list[str]) -> int:
        from berth.cli import format as fmt

        opts, rest = parse(argv, [Flag("all,a", "all"), Flag("force,f", "force"), Flag("volumes", "volumes"),
                                  Flag("filter", "filter", True, True)], "system prune")
        if rest:
            raise InvalidArgument('"berth system prune" accepts no arguments')
        if opts.get("filter"):
            raise InvalidArgument("system prune --filter is not supported yet")
        if not opts.get("force"):
            what = ["all stopped containers", "all networks not used by at least one container"]
            if opts.get("volumes"):
                what.append("all volumes not used by at least one container")
            what.append("all images without at least one container associated to them" if opts.get("all")
                        else "all dangling images")
            sys.stdout.write("WARNING! This will remove:\n" + "".join(f"  - {w}\n" for w in what) +
                             "\nAre you sure you want to continue? [y/N] ")
            sys.stdout.flush()
            if sys.stdin.readline().strip().lower() not in ("y", "yes"):
                return 0
        r = self.engine.system_prune(all=bool(opts.get("all")), volumes=bool(opts.get("volumes")))
        for title, key in (("Deleted Containers", "containers"), ("Deleted Networks", "networks"),
                           ("Deleted Volumes", "volumes")):
            if r[key]:
                self.out(f"{title}:\n" + "".join(i + "\n" for i in r[key]) + "\n")
        if r["images_untagged"] or r["images_deleted"]:
            self.out("Deleted Images:\n" + "".join(f"untagged: {n}\n" for n in r["images_untagged"]) +
                     "".join(f"deleted: {d}\n" for d in r["images_deleted"]) + "\n")
        self.out(f"Total reclaimed space: {fmt.size(r['reclaimed'])}\n")
        return 0

    def cmd_diff(self, argv: list[str]) -> int:
        _, rest = parse(argv, [], "diff")
        if len(rest) != 1:
            raise InvalidArgument('"berth diff" requires exactly 1 argument')
        self.out("".join(f"{kind} {path}\n" for kind, path in self.engine.diff(rest[0])))
        return 0

    def cmd_export(self, argv: list[str]) -> int:
        import os

        opts, rest = parse(argv, [Flag("output,o", "output", True)], "export")
        if len(rest) != 1:
            raise InvalidArgument('"berth export" requires exactly 1 argument')
        target = opts.get("output")
        if target:
            tmp = f"{target}.berth-tmp"
            try:
                with open(tmp, "wb") as f:
                    self.engine.export(rest[0], f)
                os.rename(tmp, target)
            except BaseException:
                if os.path.exists(tmp):
                    os.unlink(tmp)
                raise
            return 0
        if os.isatty(1):
            raise InvalidArgument("cowardly refusing to save to a terminal. Use the -o flag or redirect")
        sys.stdout.flush()
        self.engine.export(rest[0], sys.stdout.buffer)
        sys.stdout.buffer.flush()
        return 0

    def cmd_commit(self, argv: list[str]) -> int:
        opts, rest = parse(argv, [Flag("message,m", "message", True), Flag("author,a", "author", True),
                                  Flag("change,c", "change", True, True), Flag("pause,p", "pause")], "commit")
        if not 1 <= len(rest) <= 2:
            raise InvalidArgument('"berth commit" requires 1 or 2 arguments: CONTAINER [REPOSITORY[:TAG]]')
        img = self.engine.commit(rest[0], rest[1] if len(rest) == 2 else None, message=opts.get("message"),
                                 author=opts.get("author"), changes=opts.get("change"),
                                 pause=opts.get("pause", True))
        self.out(f"{img.id}\n")
        return 0

    def cmd_cp(self, argv: list[str]) -> int:
        _, rest = parse(argv, [Flag("archive,a", "archive"), Flag("follow-link,L", "follow_link"),
                                  Flag("quiet,q", "quiet")], "cp")
        if len(rest) != 2:
            raise InvalidArgument('"berth cp" requires exactly 2 arguments: SRC and DEST, one of them CONTAINER:PATH')
        (src_ctr, src_path), (dest_ctr, dest_path) = (_split_container_path(a) for a in rest)
        if src_ctr and dest_ctr:
            raise InvalidArgument("copying between containers is not supported")
        if src_ctr:
            if not src_path:
                raise InvalidArgument("the container path must not be empty")
            self.engine.copy_from(src_ctr, src_path, dest_path)
        elif dest_ctr:
            if not dest_path:
                raise InvalidArgument("the container path must not be empty")
            self.engine.copy_to(dest_ctr, src_path, dest_path)
        else:
            raise InvalidArgument("must specify at least one container source (CONTAINER:PATH)")
        return 0


def _split_container_path(arg: str) -> tuple[str | None, str]:
    """Docker's rule: ``NAME:PATH`` names a container unless the text before ``:`` holds a ``/`` or the
    argument starts with ``/`` or ``.`` (a local path that happens to contain a colon)."""
    if arg.startswith(("/", ".")):
        return None, arg
    name, colon, path = arg.partition(":")
    if not colon or "/" in name or not name:
        return None, arg
    return name, path


def _parse_stamp(stamp: str) -> float:
    """A log-style UTC timestamp back to unix seconds."""
    import calendar
    import time

    base, _, frac = stamp.rstrip("Z").partition(".")
    return calendar.timegm(time.strptime(base[:19], "%Y-%m-%dT%H:%M:%S")) + float("0." + (frac or "0"))

