"""``RUN --mount`` values (no root)."""

from __future__ import annotations

import pytest

from berth.build.mounts import RunMount, parse_mount
from berth.errors import InvalidArgument, Unsupported

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(("spec", "mount"), [
    ("target=/src", RunMount("bind", "/src")),
    ("type=bind,src=sub,dst=/src/,rw", RunMount("bind", "/src", source="sub", writable=True)),
    ("type=bind,source=/out,target=/o,from=builder,readonly", RunMount("bind", "/o", source="/out",
                                                                      from_ref="builder")),
    ("type=cache,target=/root/.cache", RunMount("cache", "/root/.cache", cache_id="/root/.cache", writable=True)),
    ("type=cache,id=pip,target=/c,mode=0700,uid=1000,gid=1000,sharing=locked,ro",
     RunMount("cache", "/c", cache_id="pip", mode=0o700, uid=1000, gid=1000)),
    ("type=tmpfs,target=/t,size=64m", RunMount("tmpfs", "/t", size="64m")),
])
def test_parse_mount(spec: str, mount: RunMount) -> None:
    assert parse_mount(spec) == mount


@pytest.mark.parametrize(("spec", "error", "message"), [
    ("type=bind,source=x", InvalidArgument, "target is required"),
    ("target=relative", InvalidArgument, "must be an absolute path"),
    ("target=/", InvalidArgument, "may not be /"),
    ("type=volume,target=/x", InvalidArgument, "unknown type 'volume'"),
    ("target=/x,colour=red", InvalidArgument, "unknown option 'colour'"),
    ("type=cache,target=/x,uid=me", InvalidArgument, "uid='me' is not a number"),
    ("type=cache,target=/x,sharing=sometimes", InvalidArgument, "sharing='sometimes'"),
    ("type=secret,id=token", Unsupported, "type=secret is not supported"),
    ("type=ssh", Unsupported, "type=ssh is not supported"),
])
def test_bad_mounts(spec: str, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        parse_mount(spec)
