"""berth.oci.reference: Docker's normalisation, and the references it accepts and rejects."""

from __future__ import annotations

import pytest

from berth.errors import InvalidArgument, Unsupported
from berth.oci.digest import Digest
from berth.oci.reference import Reference, parse_reference

pytestmark = pytest.mark.unit

HEX = "6c3c624b58dbbcd3c0dd82b4c53f04194d1247c6eebdaab7c610cf7d66709b3b"
DIGEST = f"sha256:{HEX}"


@pytest.mark.parametrize(
    ("text", "full", "familiar"),
    [
        ("busybox", "docker.io/library/busybox:latest", "busybox:latest"),
        ("busybox:1.36", "docker.io/library/busybox:1.36", "busybox:1.36"),
        ("library/busybox", "docker.io/library/busybox:latest", "busybox:latest"),
        ("docker.io/busybox", "docker.io/library/busybox:latest", "busybox:latest"),
        ("docker.io/library/busybox", "docker.io/library/busybox:latest", "busybox:latest"),
        ("index.docker.io/busybox", "docker.io/library/busybox:latest", "busybox:latest"),
        ("index.docker.io/user/app:v1", "docker.io/user/app:v1", "user/app:v1"),
        ("user/app", "docker.io/user/app:latest", "user/app:latest"),
        ("user/app/sub", "docker.io/user/app/sub:latest", "user/app/sub:latest"),
        ("docker.io/library/a/b", "docker.io/library/a/b:latest", "library/a/b:latest"),
        ("localhost/app", "localhost/app:latest", "localhost/app:latest"),
        ("localhost:5000/app:dev", "localhost:5000/app:dev", "localhost:5000/app:dev"),
        ("127.0.0.1:5000/ns/app", "127.0.0.1:5000/ns/app:latest", "127.0.0.1:5000/ns/app:latest"),
        ("[::1]:5000/app", "[::1]:5000/app:latest", "[::1]:5000/app:latest"),
        ("[2001:db8::1]:5000/app", "[2001:db8::1]:5000/app:latest", "[2001:db8::1]:5000/app:latest"),
        ("quay.io/org/app:v1.2.3", "quay.io/org/app:v1.2.3", "quay.io/org/app:v1.2.3"),
        ("registry.example.com:443/a/b/c/d", "registry.example.com:443/a/b/c/d:latest", None),
        ("Registry.Example.com/app", "Registry.Example.com/app:latest", None),  # upper-case host is a host
        ("Foo/bar", "Foo/bar:latest", None),
        ("my-registry/app", "docker.io/my-registry/app:latest", None),  # no '.' or ':': a namespace
        ("localhost", "docker.io/library/localhost:latest", None),
        ("localhost:5000", "docker.io/library/localhost:5000", None),  # Docker reads 5000 as a tag
        ("foo_bar", "docker.io/library/foo_bar:latest", None),
        ("foo__bar", "docker.io/library/foo__bar:latest", None),
        ("foo-bar", "docker.io/library/foo-bar:latest", None),
        ("foo---bar", "docker.io/library/foo---bar:latest", None),
        ("foo.bar", "docker.io/library/foo.bar:latest", None),
        ("ab-c_d__e/f.g", "docker.io/ab-c_d__e/f.g:latest", None),
        ("0", "docker.io/library/0:latest", None),
        ("busybox:_tag", "docker.io/library/busybox:_tag", None),
        ("busybox:Tag.With-Chars_1", "docker.io/library/busybox:Tag.With-Chars_1", None),
        ("busybox:" + "t" * 128, "docker.io/library/busybox:" + "t" * 128, None),
        (f"busybox@{DIGEST}", f"docker.io/library/busybox@{DIGEST}", f"busybox@{DIGEST}"),
        (f"busybox:1.36@{DIGEST}", f"docker.io/library/busybox:1.36@{DIGEST}", f"busybox:1.36@{DIGEST}"),
        (f"localhost:5000/app:v1@{DIGEST}", f"localhost:5000/app:v1@{DIGEST}", None),
        ("sha256:" + HEX, "docker.io/library/sha256:" + HEX, None),  # a repo called sha256, tagged
    ],
)
def test_accepted_and_normalised(text: str, full: str, familiar: str | None) -> None:
    ref = Reference.parse(text)
    assert str(ref) == full
    if familiar is not None:
        assert ref.familiar() == familiar
    # The full form parses back to itself, and so does the familiar one.
    assert Reference.parse(str(ref)) == ref
    assert Reference.parse(ref.familiar()) == ref


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("Busybox", "must be lowercase"),
        ("user/App", "must be lowercase"),
        ("docker.io/Library/busybox", "must be lowercase"),
        ("busybox:", "tag ''"),
        ("busybox:.tag", "tag '.tag'"),
        ("busybox:-tag", "tag '-tag'"),
        ("busybox:ta/g", "registry 'busybox:ta'"),  # a ':' before the last '/' belongs to a host
        ("busybox:ta g", "tag 'ta g'"),
        ("busybox:" + "t" * 129, "1-128"),
        ("busybox@", "empty digest"),
        ("busybox@sha256:abc", "sha256 needs 64"),
        (f"busybox@sha256:{HEX.upper()}", "sha256 needs 64"),
        (f"busybox@{DIGEST}@{DIGEST}", "invalid digest"),
        (f"@{DIGEST}", "repository name is empty"),
        (":tag", "repository name is empty"),
        ("/busybox", "component ''"),
        ("busybox/", "component ''"),
        ("a//b", "component ''"),
        ("-busybox", "component '-busybox'"),
        ("busybox-", "component 'busybox-'"),
        ("_busybox", "component '_busybox'"),
        ("foo___bar", "component 'foo___bar'"),
        ("foo..bar", "component 'foo..bar'"),
        ("foo._bar", "component 'foo._bar'"),
        ("foo.", "component 'foo.'"),
        ("foo bar", "component 'foo bar'"),
        ("a:b:c", "component 'a:b'"),
        ("example.com:/app", "registry 'example.com:'"),
        ("example.com:port/app", "registry 'example.com:port'"),
        ("-example.com/app", "registry '-example.com'"),
        ("example-.com/app", "registry 'example-.com'"),
        ("exa_mple.com/app", "registry 'exa_mple.com'"),
        ("a.b_c/app", "registry 'a.b_c'"),  # a dot makes the first part a host; hosts have no '_'
        ("[::1/app", "registry '[::1'"),
        ("[zz::1]:5000/app", "registry"),
        ("[1:2:3]/app", "not a valid IPv6"),
        (HEX, "image id"),
        ("example.com/" + "a" * 250, "longer than 255"),
        ("busybox\n", "component"),
    ],
)
def test_rejected(text: str, message: str) -> None:
    with pytest.raises(InvalidArgument, match="invalid reference") as exc:
        Reference.parse(text)
    assert message in str(exc.value)
    assert "\n" not in str(exc.value).replace("\\n", "")


def test_unsupported_digest_algorithm() -> None:
    with pytest.raises(Unsupported, match="unsupported digest algorithm 'md5'"):
        Reference.parse("busybox@md5:" + "a" * 32)


def test_name_length_limit_is_inclusive() -> None:
    path = "a" * (255 - len("docker.io/library/"))
    assert Reference.parse(path).name == f"docker.io/library/{path}"
    with pytest.raises(InvalidArgument, match="longer than 255"):
        Reference.parse(path + "a")


def test_fields() -> None:
    ref = Reference.parse(f"localhost:5000/ns/app:v1@{DIGEST}")
    assert ref.domain == "localhost:5000"
    assert ref.path == "ns/app"
    assert ref.name == ref.familiar_name == "localhost:5000/ns/app"
    assert ref.tag == "v1"
    assert ref.digest == Digest.parse(DIGEST)
    assert ref.host == "localhost"
    assert ref.port == 5000
    assert ref.api_reference == DIGEST
    assert Reference.parse("busybox").api_reference == "latest"


def test_default_tag() -> None:
    assert Reference.parse("busybox", default_tag=None).tag is None
    assert str(parse_reference("busybox", default_tag=None)) == "docker.io/library/busybox"
    assert Reference.parse("busybox", default_tag="stable").tag == "stable"
    assert Reference.parse(f"busybox@{DIGEST}").tag is None  # a digest alone implies no tag


def test_with_tag_and_digest() -> None:
    ref = Reference.parse("busybox")
    pinned = ref.with_digest(Digest.parse(DIGEST))
    assert str(pinned) == f"docker.io/library/busybox:latest@{DIGEST}"
    assert str(pinned.with_tag(None)) == f"docker.io/library/busybox@{DIGEST}"
    assert str(ref.with_tag("1.36")) == "docker.io/library/busybox:1.36"
    with pytest.raises(InvalidArgument, match="tag '-x'"):
        ref.with_tag("-x")


def test_direct_construction_is_validated() -> None:
    assert str(Reference("docker.io", "library/busybox", "latest")) == "docker.io/library/busybox:latest"
    with pytest.raises(InvalidArgument):
        Reference("docker.io", "Library/busybox")
    with pytest.raises(InvalidArgument):
        Reference("bad_host", "app")


def test_hashable_and_comparable() -> None:
    assert Reference.parse("busybox") == Reference.parse("docker.io/library/busybox:latest")
    assert len({Reference.parse("busybox"), Reference.parse("index.docker.io/library/busybox")}) == 1


@pytest.mark.parametrize(
    ("text", "loopback"),
    [
        ("localhost/app", True),
        ("localhost:5000/app", True),
        ("127.0.0.1:5000/app", True),
        ("127.1.2.3/app", True),
        ("[::1]:5000/app", True),
        ("[::1]/app", True),
        ("LOCALHOST/app", True),
        ("busybox", False),
        ("128.0.0.1/app", False),
        ("10.0.0.1:5000/app", False),
        ("[::2]/app", False),
        ("localhost.example.com/app", False),
        ("my.localhost/app", False),
    ],
)
def test_is_loopback(text: str, loopback: bool) -> None:
    assert Reference.parse(text).is_loopback() is loopback
