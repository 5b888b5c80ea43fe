"""The Dockerfile parser and variable substitution (no root)."""

from __future__ import annotations

import pytest

from berth.build.dockerfile import expand, pairs, parse, words
from berth.errors import InvalidArgument

pytestmark = pytest.mark.unit


def test_continuations_comments_and_blank_lines() -> None:
    df = parse("FROM busybox\n# a comment\nRUN echo a \\\n  # inside\n\n  && echo b\nCMD x\n")
    assert [i.cmd for i in df.instructions] == ["FROM", "RUN", "CMD"]
    run = df.instructions[1]
    assert run.args == "echo a   && echo b"
    assert run.line == 3
    assert df.instructions[2].line == 7


def test_escape_directive_backtick() -> None:
    df = parse("# escape=`\nFROM busybox\nRUN dir c:\\ `\n  && echo ok\n")
    assert df.escape == "`"
    assert df.directives == {"escape": "`"}
    assert df.instructions[1].args == "dir c:\\   && echo ok"


def test_directive_only_at_top() -> None:
    df = parse("FROM busybox\n# escape=`\nRUN a \\\n b\n")
    assert df.escape == "\\"
    assert df.instructions[1].args == "a  b"


def test_heredoc_run_and_copy() -> None:
    text = "FROM busybox\nRUN <<EOF\necho one\necho two\nEOF\nCOPY <<-'CONF' /etc/app.conf\n\tkey=$V\nCONF\nCMD x\n"
    df = parse(text)
    run, copy, cmd = df.instructions[1:]
    assert run.heredocs[0].name == "EOF"
    assert run.heredocs[0].content == "echo one\necho two\n"
    assert copy.heredocs[0].content == "key=$V\n"
    assert copy.heredocs[0].expand is False
    assert cmd.line == 9


def test_unterminated_heredoc_names_line() -> None:
    with pytest.raises(InvalidArgument, match=r"Dockerfile:2: heredoc EOF"):
        parse("FROM busybox\nRUN <<EOF\necho\n")


def test_json_and_shell_forms() -> None:
    df = parse('FROM busybox\nCMD ["echo", "hi there"]\nENTRYPOINT echo hi\nRUN [not json\n')
    assert df.instructions[1].json == ["echo", "hi there"]
    assert df.instructions[2].json is None and df.instructions[2].args == "echo hi"
    assert df.instructions[3].json is None


def test_flags_and_from_forms() -> None:
    df = parse("ARG V=1\nFROM --platform=linux/amd64 busybox:${V} AS Build\n"
               "COPY --from=build --chown=1:2 --chmod=0755 a* /d/\nFROM scratch\n")
    meta, stages = df.stages()
    assert [i.cmd for i in meta] == ["ARG"]
    assert stages[0][0].flag("platform") == "linux/amd64"
    assert stages[0][0].args == "busybox:${V} AS Build"
    copy = stages[0][1]
    assert copy.flag("from") == "build" and copy.flag("chown") == "1:2" and copy.flag("chmod") == "0755"
    assert len(stages) == 2


@pytest.mark.parametrize(("text", "message"), [
    ("FROM busybox\nFROOM x\n", r"Dockerfile:2: unknown instruction: FROOM"),
    ("FROM busybox\n\n\nCOPY onlyone\n", r"Dockerfile:4: COPY requires at least two"),
    ("FROM busybox\nRUN --bogus=1 true\n", r"Dockerfile:2: unknown flag for RUN: --bogus"),
    ("RUN true\nFROM busybox\n", r"Dockerfile:1: RUN before the first FROM"),
    ("FROM busybox\nSHELL /bin/bash -c\n", r"Dockerfile:2: SHELL requires the arguments as a JSON array"),
    ("FROM busybox\nONBUILD FROM x\n", r"Dockerfile:2: FROM is not allowed as an ONBUILD trigger"),
    ("FROM a b c d\n", r"Dockerfile:1: FROM requires one image"),
    ("FROM busybox\nENV\n", r"Dockerfile:2: ENV requires at least one argument"),
    ("FROM busybox\nHEALTHCHECK maybe\n", r"Dockerfile:2: HEALTHCHECK takes"),
])
def test_syntax_errors_name_the_line(text: str, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        parse(text)


def test_every_instruction_parses() -> None:
    text = """FROM busybox AS base
RUN true
CMD ["sh"]
ENTRYPOINT ["/bin/sh", "-c"]
ENV A=1 B="two words"
ARG X
LABEL a=b
EXPOSE 80
WORKDIR /w
USER app
VOLUME ["/data"]
COPY a b
ADD a.tar /
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=5s CMD true
SHELL ["/bin/sh", "-ec"]
ONBUILD RUN echo hi
MAINTAINER someone
"""
    assert len(parse(text).instructions) == 18


def test_substitution_forms() -> None:
    env = {"V": "val", "E": ""}
    assert expand("$V ${V} ${V}x", env) == "val val valx"
    assert expand("${U:-def} ${E:-def} ${E-def} ${V:-def}", env) == "def def  val"
    assert expand("${V:+alt} ${E:+alt} ${E+alt} ${U:+alt}", env) == "alt  alt "
    assert expand("'$V' \"$V\" \\$V", env) == "'$V' \"val\" $V"
    assert expand("${U:-${V}}", env) == "val"
    with pytest.raises(InvalidArgument):
        expand("${V", env)


def test_words_and_pairs() -> None:
    env = {"N": "x y"}
    assert words('a "b c" \'$N\' $N', env) == ["a", "b c", "$N", "x y"]
    assert words('"$N"', env) == ["x y"]
    assert pairs('A=1 B="two words" C=$N', "ENV", env, "\\") == [("A", "1"), ("B", "two words"), ("C", "x y")]
    assert pairs("KEY some value", "ENV", {}, "\\") == [("KEY", "some value")]
    with pytest.raises(InvalidArgument):
        pairs("A=1 B", "LABEL", {}, "\\")
