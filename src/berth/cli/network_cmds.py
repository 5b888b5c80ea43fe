"""``berth network …``: create, ls, inspect, rm, prune, connect, disconnect.

Mixed into ``cli.main.Cli``, which dispatches ``berth network SUB`` to ``cmd_network``.
"""

from __future__ import annotations

import sys

from berth.cli.flags import Flag, parse
from berth.errors import BerthError, InvalidArgument, Unsupported

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from berth.engine.engine import Engine
    from berth.network.ipam import Network

NETWORK_USAGE = """Usage: berth network COMMAND

Commands:
  create [--subnet CIDR] [--gateway IP] [--ip-range CIDR] [--internal] [--label K=V] [-d bridge] NAME
  ls [-q] [--format TEMPLATE]
  inspect NETWORK...
  rm NETWORK...
  prune [-f]
  connect [--ip IP] [--alias NAME] NETWORK CONTAINER
  disconnect [-f] NETWORK CONTAINER
"""
def _row(net: Network) -> dict[str, Any]:
    return {"ID": net.id[:12], "Name": net.name, "Driver": net.driver, "Scope": "local",
            "Subnet": str(net.subnet), "Gateway": str(net.gateway), "Internal": net.internal,
            "Labels": dict(net.labels)}


class NetworkCommands:
    """Mixed into ``cli.main.Cli``: ``self.engine`` and ``self.out`` are available."""

    if TYPE_CHECKING:
        @property
        def engine(self) -> Engine: ...
        def out(self, text: str) -> None: ...

    def cmd_network(self, argv: list[str]) -> int:
        if not argv or argv[0] in ("-h", "--help", "help"):
            self.out(NETWORK_USAGE)
            return 0 if argv else 125
        sub, args = argv[0], argv[1:]
        sub = {"list": "ls", "remove": "rm"}.get(sub, sub)
        handler = getattr(self, "_network_" + sub, None)
        if handler is None:
            raise InvalidArgument(f"unknown command: 'network {sub}'\nSee 'berth network --help'.")
        return int(handler(args))

    def _network_create(self, argv: list[str]) -> int:
        opts, rest = parse(argv, [
            Flag("subnet", "subnet", True), Flag("gateway", "gateway", True), Flag("ip-range", "ip_range", True),
            Flag("internal", "internal"), Flag("label", "label", True, True), Flag("driver,d", "driver", True),
            Flag("opt,o", "opt", True, True), Flag("disable-dns", "disable_dns"),
        ], "network create")
        if len(rest) != 1:
            raise InvalidArgument('"berth network create" requires exactly 1 argument: NAME')
        driver = opts.get("driver", "bridge")
        if driver != "bridge":
            raise Unsupported(f"network driver {driver!r} is not supported (bridge only)")
        mtu = None
        for o in opts.get("opt", []):
            key, _, value = o.partition("=")
            if key in ("mtu", "com.docker.network.driver.mtu") and value.isdigit():
                mtu = int(value)
            else:
                raise InvalidArgument(f"unsupported network option {o!r}")
        labels = dict(item.partition("=")[::2] for item in opts.get("label", []))
        net = self.engine.network_create(rest[0], subnet=opts.get("subnet"), gateway=opts.get("gateway"),
                                         ip_range=opts.get("ip_range"), internal=bool(opts.get("internal")),
                                         dns=not opts.get("disable_dns"), labels=labels, mtu=mtu)
        self.out(net.id + "\n")
        return 0

    def _network_ls(self, argv: list[str]) -> int:
        from berth.cli import format as fmt

        opts, rest = parse(argv, [Flag("quiet,q", "quiet"), Flag("format", "format", True),
                                  Flag("no-trunc", "no_trunc")], "network ls")
        if rest:
            raise InvalidArgument('"berth network ls" accepts no arguments')
        nets = self.engine.network_list()
        rows = [_row(n) for n in nets]
        if opts.get("no_trunc"):
            for r, n in zip(rows, nets, strict=True):
                r["ID"] = n.id
        if opts.get("quiet"):
            self.out("".join(r["ID"] + "\n" for r in rows))
        elif opts.get("format") == "json":
            import json

            self.out("".join(json.dumps(r) + "\n" for r in rows))
        elif opts.get("format"):
            self.out("".join(fmt.render(opts["format"], r) + "\n" for r in rows))
        else:
            self.out(fmt.table([[r["ID"], r["Name"], r["Driver"], r["Scope"]] for r in rows],
                               ["NETWORK ID", "NAME", "DRIVER", "SCOPE"]))
        return 0

    def _network_inspect(self, argv: list[str]) -> int:
        import json

        from berth.cli import format as fmt

        opts, rest = parse(argv, [Flag("format,f", "format", True)], "network inspect")
        if not rest:
            raise InvalidArgument('"berth network inspect" requires at least 1 argument')
        found = [self.engine.network_inspect(ref) for ref in rest]
        if opts.get("format"):
            self.out("".join(fmt.render(opts["format"], obj) + "\n" for obj in found))
        else:
            self.out(json.dumps(found, indent=4) + "\n")
        return 0

    def _network_rm(self, argv: list[str]) -> int:
        _, rest = parse(argv, [Flag("force,f", "force")], "network rm")
        if not rest:
            raise InvalidArgument('"berth network rm" requires at least 1 argument')
        failed = False
        for ref in rest:
            try:
                self.engine.network_remove(ref)
                self.out(ref + "\n")
            except BerthError as e:
                sys.stderr.write(f"Error: {e}\n")
                failed = True
        return 1 if failed else 0

    def _network_connect(self, argv: list[str]) -> int:
        opts, rest = parse(argv, [Flag("ip", "ip", True), Flag("alias", "aliases", True, True)], "network connect")
        if len(rest) != 2:
            raise InvalidArgument('"berth network connect" requires exactly 2 arguments: NETWORK CONTAINER')
        self.engine.network_connect(rest[0], rest[1], ip=opts.get("ip"), aliases=opts.get("aliases", []))
        return 0

    def _network_disconnect(self, argv: list[str]) -> int:
        opts, rest = parse(argv, [Flag("force,f", "force")], "network disconnect")
        if len(rest) != 2:
            raise InvalidArgument('"berth network disconnect" requires exactly 2 arguments: NETWORK CONTAINER')
        self.engine.network_disconnect(rest[0], rest[1], force=bool(opts.get("force")))
        return 0

    def _network_prune(self, argv: list[str]) -> int:
        opts, rest = parse(argv, [Flag("force,f", "force"), Flag("filter", "filter", True, True)], "network prune")
        if rest or opts.get("filter"):
            raise InvalidArgument('"berth network prune" accepts no arguments or filters')
        if not opts.get("force"):
            sys.stderr.write("WARNING! This will remove all networks not used by at least one container.\n"
                             "Are you sure you want to continue? [y/N] ")
            sys.stderr.flush()
            if sys.stdin.readline().strip().lower() not in ("y", "yes"):
                return 0
        gone = self.engine.network_prune()
        if gone:
            self.out("Deleted Networks:\n" + "".join(n + "\n" for n in gone))
        return 0
