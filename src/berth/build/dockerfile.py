"""The Dockerfile language: parsing text into instructions, and variable substitution.

Parsing is done once, up front, so a syntax error anywhere fails the build before any step runs; the
error names the line (``Dockerfile:12: ...``). Substitution is *not* done here: its values depend on
ARG and ENV as the build proceeds, so the builder calls :func:`expand` / :func:`words` per step with
the variables in scope.

- Parser directives (``# escape=`` and ``# syntax=``) are read only from the leading comment block.
- A line ending with the escape character continues on the next; comment and blank lines inside a
  continued instruction are dropped.
- Heredocs (``<<EOF``, ``<<-EOF``, quoted ``<<"EOF"``) are read for RUN, COPY and ADD.
- JSON (exec) form is recognised for RUN, CMD, ENTRYPOINT, SHELL, COPY, ADD and VOLUME when the
  arguments are a JSON array of strings; otherwise the shell form is kept as text.
"""

from __future__ import annotations

import contextlib
import json
import re
from dataclasses import dataclass, field

from berth.errors import InvalidArgument

INSTRUCTIONS = frozenset({
    "FROM", "RUN", "CMD", "ENTRYPOINT", "ENV", "ARG", "LABEL", "EXPOSE", "WORKDIR", "USER", "VOLUME",
    "COPY", "ADD", "STOPSIGNAL", "HEALTHCHECK", "SHELL", "ONBUILD", "MAINTAINER",
})
_JSON_FORM = frozenset({"RUN", "CMD", "ENTRYPOINT", "SHELL", "COPY", "ADD", "VOLUME"})
HEREDOC_CMDS = frozenset({"RUN", "COPY", "ADD"})
#: The flags each instruction accepts (``--name=value`` or a bare ``--name``).
_FLAGS: dict[str, frozenset[str]] = {
    "FROM": frozenset({"platform"}),
    "RUN": frozenset({"mount", "network", "security"}),
    "COPY": frozenset({"from", "chown", "chmod", "link", "parents", "exclude"}),
    "ADD": frozenset({"chown", "chmod", "link", "checksum", "keep-git-dir", "exclude"}),
    "HEALTHCHECK": frozenset({"interval", "timeout", "start-period", "start-interval", "retries"}),
}
_DIRECTIVE = re.compile(r"#\s*([a-zA-Z][a-zA-Z0-9_-]*)\s*=\s*(.*?)\s*$")
HEREDOC = re.compile(r"<<(-?)(['\"]?)([A-Za-z_][A-Za-z0-9_]*)\2")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def syntax_error(line: int, message: str) -> InvalidArgument:
    return InvalidArgument(f"Dockerfile:{line}: {message}")


@dataclass(frozen=True)
class Heredoc:
    name: str
    content: str
    #: Quoted delimiters (``<<"EOF"``) turn off expansion of the body.
    expand: bool = True


@dataclass
class Instruction:
    cmd: str
    #: The arguments after the flags, continuations joined (shell form text or the JSON text).
    args: str
    line: int
    flags: dict[str, list[str]] = field(default_factory=dict)
    #: The exec form's list when the arguments were a JSON array.
    json: list[str] | None = None
    heredocs: list[Heredoc] = field(default_factory=list)
    #: The instruction as written (continuations joined), for messages.
    original: str = ""

    def flags_text(self) -> list[str]:
        return [f"--{k}={v}" for k, vs in self.flags.items() for v in vs]

    def flag(self, name: str) -> str | None:
        values = self.flags.get(name)
        return values[-1] if values else None


@dataclass
class Dockerfile:
    instructions: list[Instruction]
    escape: str = "\\"
    directives: dict[str, str] = field(default_factory=dict)

    def stages(self) -> tuple[list[Instruction], list[list[Instruction]]]:
        """The ARGs before the first FROM, and the instructions of each stage (FROM first)."""
        meta: list[Instruction] = []
        stages: list[list[Instruction]] = []
        for ins in self.instructions:
            if ins.cmd == "FROM":
                stages.append([ins])
            elif not stages:
                if ins.cmd != "ARG":
                    raise syntax_error(ins.line, f"{ins.cmd} before the first FROM (only ARG may come first)")
                meta.append(ins)
            else:
                stages[-1].append(ins)
        if not stages:
            raise InvalidArgument("Dockerfile: no FROM instruction")
        return meta, stages


def parse(text: str, *, stages: bool = True) -> Dockerfile:
    """Parse a whole Dockerfile; with ``stages``, also check that it is FROM-led stages."""
    lines = text.splitlines()
    directives: dict[str, str] = {}
    i = 0
    while i < len(lines):
        m = _DIRECTIVE.match(lines[i].strip())
        if not m or not lines[i].lstrip().startswith("#"):
            break
        key = m.group(1).lower()
        if key in directives:
            raise syntax_error(i + 1, f"parser directive {key!r} given twice")
        directives[key] = m.group(2)
        i += 1
    escape = directives.get("escape", "\\")
    if escape not in ("\\", "`"):
        raise syntax_error(1, f"invalid escape character {escape!r}: use \\ or `")
    instructions: list[Instruction] = []
    while i < len(lines):
        raw = lines[i]
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            i += 1
            continue
        start = i + 1
        parts: list[str] = []
        text_line = raw.rstrip()
        while True:
            if text_line.endswith(escape) and not text_line.endswith(escape * 2):
                parts.append(text_line[:-1])
                i += 1
                while i < len(lines) and (not lines[i].strip() or lines[i].lstrip().startswith("#")):
                    i += 1
                if i >= len(lines):
                    break
                text_line = lines[i].rstrip()
                continue
            parts.append(text_line)
            i += 1
            break
        logical = "".join(parts).strip()
        ins, i = _instruction(logical, start, lines, i, escape)
        instructions.append(ins)
    df = Dockerfile(instructions, escape, directives)
    if stages:
        df.stages()
    return df


def _instruction(logical: str, line: int, lines: list[str], i: int, escape: str) -> tuple[Instruction, int]:
    keyword, _, rest = logical.partition(" ")
    if "\t" in keyword:
        keyword, _, more = keyword.partition("\t")
        rest = more + " " + rest
    cmd = keyword.upper()
    if cmd not in INSTRUCTIONS:
        raise syntax_error(line, f"unknown instruction: {keyword}")
    rest = rest.strip()
    flags: dict[str, list[str]] = {}
    allowed = _FLAGS.get(cmd, frozenset())
    while rest.startswith("--") and cmd != "ONBUILD":
        token, _, after = rest.partition(" ")
        name, eq, value = token[2:].partition("=")
        if name not in allowed:
            raise syntax_error(line, f"unknown flag for {cmd}: --{name}")
        flags.setdefault(name, []).append(value if eq else "true")
        rest = after.strip()
    heredocs: list[Heredoc] = []
    if cmd in HEREDOC_CMDS:
        for m in HEREDOC.finditer(rest):
            strip_tabs, quote, name = m.group(1) == "-", m.group(2), m.group(3)
            body: list[str] = []
            while True:
                if i >= len(lines):
                    raise syntax_error(line, f"heredoc {name} is not terminated")
                current = lines[i]
                i += 1
                if strip_tabs:
                    current = current.lstrip("\t")
                if current == name:
                    break
                body.append(current + "\n")
            heredocs.append(Heredoc(name, "".join(body), expand=not quote))
    json_form: list[str] | None = None
    if cmd in _JSON_FORM and rest.startswith("["):
        decoded: object = None
        with contextlib.suppress(ValueError):
            decoded = json.loads(rest)
        if isinstance(decoded, list) and all(isinstance(v, str) for v in decoded):
            json_form = decoded
    ins = Instruction(cmd, rest, line, flags, json_form, heredocs, logical)
    _check(ins)
    return ins, i


def _check(ins: Instruction) -> None:
    cmd, args = ins.cmd, ins.args
    needs_args = {"FROM", "RUN", "ENV", "ARG", "LABEL", "EXPOSE", "WORKDIR", "USER", "VOLUME", "COPY", "ADD",
                  "STOPSIGNAL", "HEALTHCHECK", "SHELL", "ONBUILD", "MAINTAINER"}
    if cmd in needs_args and not args:
        raise syntax_error(ins.line, f"{cmd} requires at least one argument")
    if cmd == "FROM":
        w = args.split()
        if len(w) not in (1, 3) or (len(w) == 3 and w[1].upper() != "AS"):
            raise syntax_error(ins.line, "FROM requires one image, optionally followed by AS name")
    elif cmd in ("COPY", "ADD"):
        n = len(ins.json) if ins.json is not None else len(args.split())
        if n < 2:
            raise syntax_error(ins.line, f"{cmd} requires at least two arguments: source(s) and destination")
    elif cmd == "SHELL" and ins.json is None:
        raise syntax_error(ins.line, "SHELL requires the arguments as a JSON array")
    elif cmd == "ONBUILD":
        trigger = args.split(None, 1)[0].upper()
        if trigger in ("ONBUILD", "FROM", "MAINTAINER"):
            raise syntax_error(ins.line, f"{trigger} is not allowed as an ONBUILD trigger")
        if trigger not in INSTRUCTIONS:
            raise syntax_error(ins.line, f"unknown instruction in ONBUILD: {trigger}")
    elif cmd == "HEALTHCHECK":
        kind = args.split(None, 1)[0].upper()
        if kind not in ("CMD", "NONE"):
            raise syntax_error(ins.line, "HEALTHCHECK takes CMD ... or NONE")
    elif cmd in ("ENV", "LABEL"):
        try:
            pairs(args, cmd, {}, "\\")
        except InvalidArgument as exc:
            raise syntax_error(ins.line, str(exc)) from None
    elif cmd == "ARG":
        name = args.partition("=")[0]
        if not _NAME.fullmatch(name):
            raise syntax_error(ins.line, f"invalid ARG name {name!r}")


# --- substitution --------------------------------------------------------------------------------------


def _var_at(text: str, j: int, env: dict[str, str], escape: str) -> tuple[str, int]:
    """Expand the variable reference at ``text[j] == '$'``; returns (value, index after it)."""
    if j + 1 < len(text) and text[j + 1] == "{":
        end = j + 2
        depth = 1
        while end < len(text):
            if text[end] == escape:
                end += 2
                continue
            if text[end] == "{":
                depth += 1
            elif text[end] == "}":
                depth -= 1
                if depth == 0:
                    break
            end += 1
        if end >= len(text):
            raise InvalidArgument(f"missing '}}' in {text!r}")
        body = text[j + 2:end]
        m = _NAME.match(body)
        if not m:
            raise InvalidArgument(f"bad substitution: ${{{body}}}")
        name, op = m.group(0), body[m.end():]
        value = env.get(name)
        if not op:
            return value or "", end + 1
        for mod in (":-", ":+", "-", "+", ":?", "?"):
            if op.startswith(mod):
                word = expand(op[len(mod):], env, escape)
                if mod == ":-":
                    return (value if value else word), end + 1
                if mod == "-":
                    return (value if value is not None else word), end + 1
                if mod == ":+":
                    return (word if value else ""), end + 1
                if mod == "+":
                    return (word if value is not None else ""), end + 1
                if not value if mod == ":?" else value is None:
                    raise InvalidArgument(f"{name}: {word or 'is not set'}")
                return value or "", end + 1
        raise InvalidArgument(f"unsupported modifier in ${{{body}}}")
    m = _NAME.match(text, j + 1)
    if not m:
        return "$", j + 1
    return env.get(m.group(0), ""), m.end()


def expand(text: str, env: dict[str, str], escape: str = "\\") -> str:
    """Substitute ``$V``, ``${V}``, ``${V:-d}``, ``${V:+x}`` (and ``-``, ``+``, ``?``), keeping quotes;
    nothing is substituted inside single quotes, and an escaped ``$`` stays literal (unescaped)."""
    out: list[str] = []
    j = 0
    single = double = False
    while j < len(text):
        ch = text[j]
        if ch == escape and j + 1 < len(text) and not single:
            nxt = text[j + 1]
            out.append(nxt if nxt == "$" else ch + nxt)
            j += 2
            continue
        if ch == "'" and not double:
            single = not single
        elif ch == '"' and not single:
            double = not double
        if ch == "$" and not single:
            value, j = _var_at(text, j, env, escape)
            out.append(value)
            continue
        out.append(ch)
        j += 1
    return "".join(out)


def words(text: str, env: dict[str, str] | None = None, escape: str = "\\") -> list[str]:
    """Split on unquoted whitespace, substituting variables (when ``env`` is given) and removing
    quotes and escapes, as the Dockerfile's word-processing instructions do."""
    result: list[str] = []
    cur: list[str] = []
    have = False
    j = 0
    quote = ""
    while j < len(text):
        ch = text[j]
        if ch == escape and j + 1 < len(text) and quote != "'":
            nxt = text[j + 1]
            if quote == '"' and nxt not in ('"', "$", escape):
                cur.append(ch)
            cur.append(nxt)
            have = True
            j += 2
            continue
        if quote:
            if ch == quote:
                quote = ""
            elif ch == "$" and quote == '"' and env is not None:
                value, j = _var_at(text, j, env, escape)
                cur.append(value)
                continue
            else:
                cur.append(ch)
            j += 1
            continue
        if ch in ("'", '"'):
            quote = ch
            have = True
        elif ch.isspace():
            if have:
                result.append("".join(cur))
                cur, have = [], False
        elif ch == "$" and env is not None:
            value, j = _var_at(text, j, env, escape)
            cur.append(value)
            have = have or bool(value)
            continue
        else:
            cur.append(ch)
            have = True
        j += 1
    if quote:
        raise InvalidArgument(f"unterminated quote in {text!r}")
    if have:
        result.append("".join(cur))
    return result


def pairs(text: str, cmd: str, env: dict[str, str] | None, escape: str) -> list[tuple[str, str]]:
    """ENV/LABEL arguments: ``k=v k2="v 2"``, or the legacy ``KEY value with spaces`` (one pair)."""
    ws = words(text, env, escape)
    if not ws:
        raise InvalidArgument(f"{cmd} requires at least one argument")
    if "=" not in ws[0]:
        key, _, value = text.strip().partition(" ")
        if not value.strip():
            raise InvalidArgument(f"{cmd} {key} needs a value (KEY=VALUE or KEY VALUE)")
        rest = words(value, env, escape)
        return [(key, " ".join(rest))]
    out = []
    for w in ws:
        key, eq, value = w.partition("=")
        if not eq or not key:
            raise InvalidArgument(f"{cmd}: {w!r} is not KEY=VALUE")
        out.append((key, value))
    return out
