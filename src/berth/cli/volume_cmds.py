"""``berth volume create|ls|inspect|rm|prune`` (Docker's flags and output)."""

from __future__ import annotations

from berth.cli.flags import Flag, parse
from berth.errors import BerthError, InvalidArgument

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


class VolumeCommands:
    """Mixed into ``cli.main.Cli``."""

    engine: Any

    def out(self, text: str) -> None:  # provided by Cli
        raise NotImplementedError

    def cmd_volume(self, argv: list[str]) -> int:
        if not argv:
            raise InvalidArgument('"berth volume" requires a subcommand: create, ls, inspect, rm, prune')
        sub, rest = argv[0], argv[1:]
        handler = {"create": self._volume_create, "ls": self._volume_ls, "list": self._volume_ls,
                   "inspect": self._volume_inspect, "rm": self._volume_rm, "remove": self._volume_rm,
                   "prune": self._volume_prune}.get(sub)
        if handler is None:
            raise InvalidArgument(f"unknown volume command {sub!r} (create, ls, inspect, rm, prune)")
        return handler(rest)

    def _volume_create(self, argv: list[str]) -> int:
        opts, rest = parse(argv, [Flag("driver,d", "driver", True), Flag("label,l", "label", True, True),
                                  Flag("opt,o", "opt", True, True), Flag("name", "name", True)], "volume create")
        if opts.get("driver", "local") != "local":
            raise InvalidArgument(f"volume driver {opts['driver']!r} is not supported (local)")
        name = opts.get("name") or (rest[0] if rest else None)
        labels = dict(item.partition("=")[::2] for item in opts.get("label", []))
        options = dict(item.partition("=")[::2] for item in opts.get("opt", []))
        self.out(self.engine.volume_create(name, labels, options).name + "\n")
        return 0

    def _volume_ls(self, argv: list[str]) -> int:
        from berth.cli import format as fmt

        opts, _ = parse(argv, [Flag("quiet,q", "quiet"), Flag("format", "format", True)], "volume ls")
        rows = [{"Driver": v.driver, "Name": v.name, "Mountpoint": v.mountpoint, "Labels": v.labels}
                for v in self.engine.volumes()]
        text = fmt.render_rows(rows, opts.get("format"))
        if opts.get("quiet"):
            self.out("".join(r["Name"] + "\n" for r in rows))
        elif text is not None:
            self.out(text)
        else:
            self.out(fmt.table([[r["Driver"], r["Name"]] for r in rows], ["DRIVER", "VOLUME NAME"]))
        return 0

    def _volume_inspect(self, argv: list[str]) -> int:
        from berth.cli import format as fmt

        opts, rest = parse(argv, [Flag("format,f", "format", True)], "volume inspect")
        if not rest:
            raise InvalidArgument('"berth volume inspect" requires at least 1 argument')
        found = [self.engine.volume_store.get(name).inspect() for name in rest]
        if opts.get("format"):
            self.out("".join(fmt.render(opts["format"], v) + "\n" for v in found))
        else:
            import json

            self.out(json.dumps(found, indent=4) + "\n")
        return 0

    def _volume_rm(self, argv: list[str]) -> int:
        opts, rest = parse(argv, [Flag("force,f", "force")], "volume rm")
        if not rest:
            raise InvalidArgument('"berth volume rm" requires at least 1 argument')
        failed = False
        for name in rest:
            try:
                self.engine.volume_remove(name, bool(opts.get("force")))
                self.out(name + "\n")
            except BerthError as e:
                import sys

                sys.stderr.write(f"Error: {e}\n")
                failed = True
        return 1 if failed else 0

    def _volume_prune(self, argv: list[str]) -> int:
        from berth.cli import format as fmt

        opts, _ = parse(argv, [Flag("force,f", "force"), Flag("all,a", "all")], "volume prune")
        if not opts.get("force"):
            import sys

            if not sys.stdin.isatty():
                raise InvalidArgument("volume prune: confirmation needed; use -f to skip it")
            sys.stdout.write("WARNING! This will remove all volumes not used by a container.\n"
                             "Are you sure you want to continue? [y/N] ")
            sys.stdout.flush()
            if sys.stdin.readline().strip().lower() not in ("y", "yes"):
                return 0
        removed, freed = self.engine.volume_prune()
        if removed:
            self.out("Deleted Volumes:\n" + "".join(n + "\n" for n in removed) + "\n")
        self.out(f"Total reclaimed space: {fmt.size(freed)}\n")
        return 0
