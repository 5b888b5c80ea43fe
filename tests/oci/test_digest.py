"""berth.oci.digest: parsing, registered algorithms, streaming."""

from __future__ import annotations

import hashlib
import io

import pytest

from berth.errors import InvalidArgument, Unsupported
from berth.oci.digest import Digest, Digester

pytestmark = pytest.mark.unit

EMPTY_SHA256 = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
EMPTY_JSON = "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"


def test_parse_sha256_round_trips() -> None:
    d = Digest.parse(EMPTY_SHA256)
    assert d.algorithm == "sha256"
    assert d.encoded == d.hex == EMPTY_SHA256[7:]
    assert str(d) == EMPTY_SHA256
    assert d.short() == "e3b0c44298fc"


def test_parse_sha512() -> None:
    text = "sha512:" + hashlib.sha512(b"x").hexdigest()
    assert str(Digest.parse(text)) == text


def test_from_bytes_matches_spec_example() -> None:
    # The empty descriptor of manifest.md: the digest of "{}".
    assert str(Digest.from_bytes(b"{}")) == EMPTY_JSON
    assert str(Digest.from_bytes(b"")) == EMPTY_SHA256
    assert Digest.from_bytes(b"x", "sha512").algorithm == "sha512"


def test_equality_hash_and_order() -> None:
    a, b = Digest.parse(EMPTY_SHA256), Digest.parse(EMPTY_SHA256)
    assert a == b and hash(a) == hash(b)
    assert len({a, b}) == 1
    assert sorted([a, Digest.parse(EMPTY_JSON)]) == [Digest.parse(EMPTY_JSON), a]


def test_matches() -> None:
    d = Digest.from_bytes(b"hello")
    assert d.matches(b"hello")
    assert not d.matches(b"hello!")


@pytest.mark.parametrize(
    "text",
    [
        "",
        "sha256",
        "sha256:",
        ":" + "a" * 64,
        "sha256:" + "a" * 63,
        "sha256:" + "a" * 65,
        "sha256:" + "A" * 64,  # upper case is forbidden for registered algorithms
        "sha256:" + "g" * 64,
        "sha512:" + "a" * 64,
        "SHA256:" + "a" * 64,
        "sha256 :" + "a" * 64,
        "sha256:" + "a" * 64 + "\n",
        "sha256::" + "a" * 64,
        "sha256+:" + "a" * 64,
    ],
)
def test_malformed_digests_are_invalid(text: str) -> None:
    with pytest.raises(InvalidArgument, match="invalid digest"):
        Digest.parse(text)
    assert not Digest.is_valid(text)


@pytest.mark.parametrize(
    "text",
    [
        "md5:" + "a" * 32,
        "sha384:" + "a" * 96,
        "multihash+base58:QmRZxt2b1FVZPNqd8hsiykDL3TdBDeTSPX9Kv46HmX4Gx8",
        "sha256+b64u:LCa0a2j_xo_5m0U8HTBBNBNCLXBkg7-g-YpeiGJm564",
    ],
)
def test_grammatical_but_unregistered_algorithms_are_unsupported(text: str) -> None:
    with pytest.raises(Unsupported, match="unsupported digest algorithm"):
        Digest.parse(text)


def test_constructor_validates() -> None:
    with pytest.raises(InvalidArgument):
        Digest("sha256", "abc")
    with pytest.raises(Unsupported):
        Digester("md5")


def test_digester_streams_and_can_peek() -> None:
    data = bytes(range(256)) * 1000
    digester = Digester()
    for i in range(0, len(data), 777):
        digester.update(data[i : i + 777])
    assert digester.size == len(data)
    assert digester.finish() == Digest.from_bytes(data)
    peek = digester.copy()
    peek.update(b"more")
    assert peek.finish() == Digest.from_bytes(data + b"more")
    assert digester.finish() == Digest.from_bytes(data)  # finish() is repeatable; copy was independent


def test_from_stream() -> None:
    data = b"z" * (3 << 20)
    assert Digest.from_stream(io.BytesIO(data)) == Digest.from_bytes(data)
    assert Digest.from_stream(io.BytesIO(data), "sha512") == Digest.from_bytes(data, "sha512")
