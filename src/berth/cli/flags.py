"""Docker-style command-line flags: ``--name value``, ``--name=value``, ``-e A=B``, combined short
booleans (``-it``, ``-dit``), repeatable flags, options allowed between positionals until the first
positional that starts the container command (``berth run [OPTIONS] IMAGE [COMMAND] [ARG...]``).

Hand-written rather than argparse, whose import alone costs several milliseconds on ``berth run``.
"""

from __future__ import annotations

from berth.errors import InvalidArgument

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


class Flag:
    __slots__ = ("dest", "multi", "names", "takes_value")

    def __init__(self, names: str, dest: str, takes_value: bool = False, multi: bool = False) -> None:
        self.names = names.split(",")
        self.dest = dest
        self.takes_value = takes_value
        self.multi = multi


def parse(argv: list[str], flags: list[Flag], command: str, positionals_end_flags: int | None = None
          ) -> tuple[dict[str, Any], list[str]]:
    """Return (options, positionals). After ``positionals_end_flags`` positionals, the rest of argv is
    taken as is (the container command)."""
    table: dict[str, Flag] = {}
    for f in flags:
        for n in f.names:
            table[n] = f
    opts: dict[str, Any] = {}
    rest: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if positionals_end_flags is not None and len(rest) >= positionals_end_flags:
            rest.append(arg)
            continue
        if arg == "--":
            rest += argv[i:]
            break
        if not arg.startswith("-") or arg == "-":
            rest.append(arg)
            continue
        if arg.startswith("--"):
            name, eq, value = arg[2:].partition("=")
            long_flag = table.get(name)
            if long_flag is None:
                raise InvalidArgument(f"unknown flag: --{name}\nSee 'berth {command} --help'.")
            if long_flag.takes_value and not eq:
                if i >= len(argv):
                    raise InvalidArgument(f"flag needs an argument: --{name}")
                value = argv[i]
                i += 1
            _set(opts, long_flag, value if long_flag.takes_value else (value.lower() not in ("false", "0")
                                                                       if eq else True))
            continue
        # short flags, possibly combined: -it, -p80:80, -e A=B
        j = 1
        while j < len(arg):
            name = arg[j]
            short = table.get(name)
            if short is None:
                raise InvalidArgument(f"unknown shorthand flag: {name!r} in {arg}\nSee 'berth {command} --help'.")
            if short.takes_value:
                value = arg[j + 1:]
                if value.startswith("="):
                    value = value[1:]
                if not value:
                    if i >= len(argv):
                        raise InvalidArgument(f"flag needs an argument: {name!r} in -{name}")
                    value = argv[i]
                    i += 1
                _set(opts, short, value)
                break
            _set(opts, short, True)
            j += 1
    return opts, rest


def _set(opts: dict[str, Any], f: Flag, value: Any) -> None:
    if f.multi:
        opts.setdefault(f.dest, []).append(value)
    else:
        opts[f.dest] = value
