"""``berth COMMAND``: parse Docker's flags into options, make one Engine call, format the result.

Exit codes are Docker's: 125 when berth itself fails (bad flag, unknown image or container, name in
use), 126 when the container's command cannot be invoked, 127 when it is not found, and otherwise
the container's own status for ``run`` (foreground), ``start -a`` and ``wait``.
"""

from __future__ import annotations

import os
import sys

from berth.cli.flags import Flag, parse
from berth.cli.run_options import RUN_FLAGS, duration_seconds, run_options
from berth.errors import BerthError, InvalidArgument

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from berth.engine.engine import Container, Engine
    from berth.network.ports import PortMapping

USAGE = """Usage: berth [OPTIONS] COMMAND

A daemonless container engine.

Options:
  --root DIR       storage root (default /var/lib/berth, or $BERTH_ROOT)
  --runroot DIR    runtime state (default /run/berth, or $BERTH_RUNROOT)
  --runtime NAME   OCI runtime: berth (default), runc, crun, runsc or a path

Commands:
  run, create, start, stop, restart, kill, rm, ps, logs, wait,  containers
  attach, inspect, exec, top, stats, pause, unpause, rename, update, port,
  events, diff, export, commit, cp, container prune|ls|...
  images, pull, push, import, rmi, tag, history, save, load    images
  image ls|inspect|prune|rm|tag|pull|push|save|load|history
  login, logout                                                registries
  network create|ls|inspect|rm|prune|connect|disconnect        networks
  volume create|ls|inspect|rm|prune                            volumes
  system info|df|prune|boot                                    the whole engine
  version
"""

GLOBAL = [Flag("root", "root", True), Flag("runroot", "runroot", True), Flag("runtime", "runtime", True),
          Flag("help,h", "help"), Flag("version,v", "version")]



class Cli:
    """The container life-cycle commands (run, ps, rm...); the other command groups are mixed in
    by ``_every_group`` only when the command is theirs, so that `berth run` does not load them."""

    def __init__(self, gopts: dict[str, Any]) -> None:
        self.gopts = gopts
        self._engine: Engine | None = None

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            from berth.engine.engine import Engine

            self._engine = Engine(self.gopts.get("root"), self.gopts.get("runroot"), self.gopts.get("runtime"))
        return self._engine

    def out(self, text: str) -> None:
        sys.stdout.write(text)

    # ------------------------------------------------------------------ containers

    def cmd_run(self, argv: list[str], create_only: bool = False) -> int:
        name = "create" if create_only else "run"
        opts, rest = parse(argv, RUN_FLAGS, name, positionals_end_flags=1)
        if opts.get("help"):
            self.out(f"Usage: berth {name} [OPTIONS] IMAGE [COMMAND] [ARG...]\n")
            return 0
        if not rest:
            raise InvalidArgument(f'"berth {name}" requires at least 1 argument: the image')
        image, command = rest[0], rest[1:] or None
        kwargs = run_options(opts)
        if opts.get("detach_keys"):
            from berth.monitor.attach import parse_detach_keys

            parse_detach_keys(opts["detach_keys"])  # a bad value fails before anything is made
        if opts.get("rm"):
            kwargs["auto_remove"] = True
        common = {"name": opts.get("name"), "pull": opts.get("pull", "missing"), "platform": opts.get("platform")}
        if create_only:
            c = self.engine.create(image, command, **common, **kwargs)
            self.out(c.id + "\n")
            return 0
        if opts.get("detach"):
            c = self.engine.run(image, command, **common, **kwargs)
            self.out(c.id + "\n")
            return 0
        if opts.get("rm") and not (opts.get("interactive") or opts.get("tty")):
            # The quick path: no monitor, this process is the container's parent.
            return self.engine.run_attached(image, command, remove=True, **common, **kwargs)
        c = self.engine.run(image, command, attach=True, **common, **kwargs)
        code = self.engine.attach(c.id, detach_keys=opts.get("detach_keys"), sig_proxy=opts.get("sig_proxy", True),
                                  start=True)
        if code is None:
            return 0  # detached: it runs on, and its monitor removes it once it exits
        if opts.get("rm"):
            self.engine.remove(c.id, force=True, volumes=True)
        return code

    def cmd_create(self, argv: list[str]) -> int:
        return self.cmd_run(argv, create_only=True)

    def cmd_start(self, argv: list[str]) -> int:
        opts, rest = parse(argv, [Flag("attach,a", "attach"), Flag("interactive,i", "interactive"),
                                  Flag("detach-keys", "detach_keys", True)], "start")
        if not rest:
            raise InvalidArgument('"berth start" requires at least 1 argument')
        if opts.get("attach") or opts.get("interactive"):
            if len(rest) != 1:
                raise InvalidArgument("you cannot start and attach multiple containers at once")
            c = self.engine.start(rest[0], attach=True)
            code = self.engine.attach(c.id, stdin=bool(opts.get("interactive")), detach_keys=opts.get("detach_keys"),
                                      start=True)
            if code is None:
                return 0
            if c.config.get("auto_remove"):  # we heard the exit, so the removal is ours (see monitor.attach)
                self.engine.remove(c.id, force=True, volumes=True)
            return code
        return self._each(rest, self.engine.start)

    def cmd_restart(self, argv: list[str]) -> int:
        return self._each_with_timeout(argv, "restart", self.engine.restart)

    def cmd_attach(self, argv: list[str]) -> int:
        opts, rest = parse(argv, [Flag("detach-keys", "detach_keys", True), Flag("no-stdin", "no_stdin"),
                                  Flag("sig-proxy", "sig_proxy")], "attach")
        if len(rest) != 1:
            raise InvalidArgument('"berth attach" requires exactly 1 argument')
        code = self.engine.attach(rest[0], stdin=not opts.get("no_stdin"), detach_keys=opts.get("detach_keys"),
                                  sig_proxy=opts.get("sig_proxy", True))
        return 0 if code is None else code

    def cmd_stop(self, argv: list[str]) -> int:
        return self._each_with_timeout(argv, "stop", self.engine.stop)

    def _each_with_timeout(self, argv: list[str], command: str, action: Callable[[str, float | None], Any]) -> int:
        """stop and restart: containers named in ``argv``, each given ``-t/--time`` seconds to stop."""
        opts, rest = parse(argv, [Flag("time,t", "time", True)], command)
        if not rest:
            raise InvalidArgument(f'"berth {command}" requires at least 1 argument')
        timeout = _seconds(opts["time"], "--time") if "time" in opts else None
        return self._each(rest, lambda ref: action(ref, timeout))

    def cmd_kill(self, argv: list[str]) -> int:
        opts, rest = parse(argv, [Flag("signal,s", "signal", True)], "kill")
        if not rest:
            raise InvalidArgument('"berth kill" requires at least 1 argument')
        return self._each(rest, lambda ref: self.engine.kill(ref, opts.get("signal", "KILL")))

    def cmd_rm(self, argv: list[str]) -> int:
        opts, rest = parse(argv, [Flag("force,f", "force"), Flag("volumes,v", "volumes")], "rm")
        if not rest:
            raise InvalidArgument('"berth rm" requires at least 1 argument')
        return self._each(rest, lambda ref: self.engine.remove(ref, bool(opts.get("force")),
                                                               volumes=bool(opts.get("volumes"))))

    def _each(self, refs: list[str], action: Any) -> int:
        """Docker's multi-container commands: act on each, report each failure, exit 1 if any."""
        failed = False
        for ref in refs:
            try:
                action(ref)
                self.out(ref + "\n")
            except BerthError as e:
                sys.stderr.write(f"Error: {e}\n")
                failed = True
        return 1 if failed else 0

    def cmd_ps(self, argv: list[str]) -> int:
        from berth.cli import format as fmt

        opts, _ = parse(argv, [Flag("all,a", "all"), Flag("quiet,q", "quiet"), Flag("format", "format", True),
                               Flag("no-trunc", "no_trunc")], "ps")
        cs = self.engine.containers(all=bool(opts.get("all")))
        if opts.get("quiet"):
            self.out("".join((c.id if opts.get("no_trunc") else c.id[:12]) + "\n" for c in cs))
            return 0
        ports = self.engine.ports_by_container(cs)
        rows = [_ps_row(c, ports.get(c.id, [])) for c in cs]
        text = fmt.render_rows(rows, opts.get("format"))
        if text is not None:
            self.out(text)
        else:
            header = ["CONTAINER ID", "IMAGE", "COMMAND", "CREATED", "STATUS", "PORTS", "NAMES"]
            self.out(fmt.table([[r["ID"], r["Image"], r["Command"], r["RunningFor"], r["Status"], r["Ports"],
                                 r["Names"]] for r in rows], header))
        return 0

    def cmd_logs(self, argv: list[str]) -> int:
        opts, rest = parse(argv, [Flag("follow,f", "follow"), Flag("timestamps,t", "timestamps"),
                                  Flag("tail,n", "tail", True), Flag("since", "since", True)], "logs")
        if len(rest) != 1:
            raise InvalidArgument('"berth logs" requires exactly 1 argument')
        entries = self.engine.logs(rest[0], follow=bool(opts.get("follow")))
        if opts.get("since"):
            since = _since(opts["since"])
            entries = (e for e in entries if e["time"] >= since)
        tail = opts.get("tail", "all")
        if tail != "all" and not opts.get("follow"):
            try:
                n = int(tail)
            except ValueError:
                raise InvalidArgument(f"invalid --tail {tail!r}") from None
            entries = iter(list(entries)[-n:] if n else [])
        for e in entries:
            stream = sys.stdout if e["stream"] == "stdout" else sys.stderr
            stream.write((e["time"] + " " if opts.get("timestamps") else "") + e["log"])
            stream.flush()
        return 0

    def cmd_wait(self, argv: list[str]) -> int:
        _, rest = parse(argv, [], "wait")
        if not rest:
            raise InvalidArgument('"berth wait" requires at least 1 argument')
        code = 0
        for ref in rest:
            code = self.engine.wait(ref)
            self.out(f"{code}\n")
        return 0

    def cmd_inspect(self, argv: list[str]) -> int:
        import json

        from berth.cli import format as fmt

        opts, rest = parse(argv, [Flag("format,f", "format", True), Flag("type", "type", True)], "inspect")
        if not rest:
            raise InvalidArgument('"berth inspect" requires at least 1 argument')
        found = []
        for ref in rest:
            try:
                found.append(self.engine.inspect(ref))
            except BerthError:
                found.append(self.engine.image_store.inspect(ref))
        if opts.get("format") and opts["format"] != "json":
            self.out("".join(fmt.render(opts["format"], obj) + "\n" for obj in found))
        else:
            self.out(json.dumps(found, indent=4) + "\n")
        return 0

    # ------------------------------------------------------------------ images

    def cmd_import(self, argv: list[str]) -> int:
        _, rest = parse(argv, [], "import")
        if not 1 <= len(rest) <= 2:
            raise InvalidArgument('"berth import" requires a file and optionally a reference')
        img = self.engine.import_image(rest[0], rest[1] if len(rest) == 2 else None)
        self.out(f"{img.id}\n")
        return 0

    def cmd_rmi(self, argv: list[str]) -> int:
        opts, rest = parse(argv, [Flag("force,f", "force")], "rmi")
        if not rest:
            raise InvalidArgument('"berth rmi" requires at least 1 argument')
        return self._each(rest, lambda ref: self.engine.image_store.remove(ref, force=bool(opts.get("force"))))

    def cmd_tag(self, argv: list[str]) -> int:
        _, rest = parse(argv, [], "tag")
        if len(rest) != 2:
            raise InvalidArgument('"berth tag" requires exactly 2 arguments: SOURCE TARGET')
        self.engine.image_store.tag(rest[0], rest[1])
        return 0

    def cmd_version(self, argv: list[str]) -> int:
        import platform

        from berth import __version__
        from berth.cli import format as fmt

        opts, rest = parse(argv, [Flag("format,f", "format", True)], "version")
        if rest:
            raise InvalidArgument('"berth version" accepts no arguments')
        client = {"Version": __version__, "APIVersion": "1.41", "GoVersion": "",
                  "PythonVersion": platform.python_version(), "Os": "linux", "Arch": _arch(),
                  "OsArch": f"linux/{_arch()}"}
        info = {"Client": client, "Server": None}  # daemonless: there is no server, as with Podman
        if opts.get("format") == "json":
            import json

            self.out(json.dumps(info) + "\n")
        elif opts.get("format"):
            self.out(fmt.render(opts["format"], info) + "\n")
        else:
            self.out(f"Client:\n Version:        {__version__}\n Python version: {client['PythonVersion']}\n"
                     f" OS/Arch:        {client['OsArch']}\n")
        return 0


def _arch() -> str:
    import platform

    from berth.oci.image import normalize_arch

    return normalize_arch(platform.machine())[0]


def _seconds(text: str, flag: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise InvalidArgument(f"invalid {flag} {text!r}: expected a number of seconds") from None


def _since(text: str) -> str:
    """--since as a log timestamp to compare with: a duration back from now (10m, 1h30m, 45s), unix
    seconds, or an RFC 3339 time. Entries' times are fixed-width UTC, so strings compare in order."""
    import time

    from berth.monitor.logfile import timestamp

    if text.replace(".", "", 1).isdigit():
        return timestamp(float(text))
    seconds = duration_seconds(text)
    if seconds is not None:
        return timestamp(time.time() - seconds)
    if len(text) >= 10 and text[4] == "-" and text[7] == "-":
        return text if text.endswith("Z") else text + "Z"
    raise InvalidArgument(f"invalid --since {text!r}: a duration (10m), unix seconds or an RFC 3339 time")


def _ps_row(c: Container, ports: list[PortMapping]) -> dict[str, Any]:
    from berth.cli import format as fmt

    command = " ".join(c.config.get("command") or [])
    if c.status == "running":
        status = "Up " + fmt.ago(c.started_at).removesuffix(" ago")
    elif c.status == "exited":
        status = f"Exited ({c.exit_code}) {fmt.ago(c.finished_at)}" if c.finished_at else f"Exited ({c.exit_code})"
    else:
        status = c.status.capitalize()
    return {"ID": c.id[:12], "Image": c.image, "Command": f'"{command[:20]}"', "CreatedAt": c.created,
            "RunningFor": fmt.ago(c.created), "Status": status, "State": c.status, "Names": c.name,
            "Labels": c.config.get("labels") or {}, "Ports": _ports_text(ports)}


def _ports_text(ports: list[PortMapping]) -> str:
    if not ports:
        return ""
    from berth.network.ports import format_ports

    return format_ports(ports)


def _every_group() -> type[Cli]:
    """Cli with every command group mixed in (they call each other: `system` → `system_info`...)."""
    from berth.cli.build_cmds import BuildCommands
    from berth.cli.container_cmds import ContainerCommands
    from berth.cli.image_cmds import ImageCommands
    from berth.cli.network_cmds import NetworkCommands
    from berth.cli.volume_cmds import VolumeCommands

    class EveryGroup(Cli, ImageCommands, ContainerCommands, NetworkCommands, VolumeCommands, BuildCommands):
        pass

    return EveryGroup


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        gopts, rest = parse(argv, GLOBAL, "", positionals_end_flags=1)
        if gopts.get("version"):
            return Cli(gopts).cmd_version([])
        if not rest or gopts.get("help"):
            sys.stdout.write(USAGE)
            return 0 if gopts.get("help") else 125
        command, args = rest[0], rest[1:]
        method = "cmd_" + command.replace("-", "_")
        cli = Cli(gopts) if hasattr(Cli, method) else _every_group()(gopts)
        handler = getattr(cli, method, None)
        if handler is None:
            raise InvalidArgument(f"unknown command: {command!r}\nSee 'berth --help'.")
        # The engine is not closed: the process ends next (bin/berth leaves through os._exit), and
        # closing would make SQLite checkpoint and delete each WAL as its last connection goes
        # (~2 ms), only for the next berth command to make them again.
        return int(handler(args))
    except BerthError as e:
        sys.stderr.write(f"Error: {e}\n")
        return e.exit_code
    except KeyboardInterrupt:
        return 130
    except OSError as e:
        sys.stderr.write(f"Error: {e.strerror or e}{': ' + str(e.filename) if e.filename else ''}\n")
        return 125


if __name__ == "__main__":
    os._exit(main())
