"""Content digests as the OCI image spec defines them (descriptor.md, "Digests").

A digest string is ``algorithm ":" encoded``. The grammar allows any algorithm, but berth must compute
what it verifies, so only the *registered* algorithms are accepted: ``sha256`` (64 lowercase hex) and
``sha512`` (128 lowercase hex). A string that breaks the grammar or a registered algorithm's length is
:class:`~berth.errors.InvalidArgument`; a well-formed digest of an algorithm berth does not implement is
:class:`~berth.errors.Unsupported`.
"""

from __future__ import annotations

from berth.errors import InvalidArgument, Unsupported
from berth.record import record

TYPE_CHECKING = False  # typing, re and hashlib (OpenSSL) stay off `berth run`'s path
if TYPE_CHECKING:
    from typing import Any, BinaryIO

SHA256 = "sha256"
SHA512 = "sha512"

#: Registered algorithms and the length of their hex encoding.
ALGORITHMS: dict[str, int] = {SHA256: 64, SHA512: 128}

# descriptor.md grammar: algorithm-component (separator algorithm-component)* ":" encoded, where a
# component is [a-z0-9]+, a separator one of [+._-], and encoded is [a-zA-Z0-9=_-]+.
_COMPONENT_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789")
_SEPARATORS = frozenset("+._-")
_ENCODED_CHARS = _COMPONENT_CHARS | frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ=_-")
#: Lowercase hex digits: what a digest's encoded part (and an image id) is made of.
HEX = frozenset("0123456789abcdef")


def _grammar_ok(text: str) -> bool:
    algorithm, colon, encoded = text.partition(":")
    if not colon or not encoded or not _ENCODED_CHARS.issuperset(encoded):
        return False
    after_separator = True  # neither the first nor the last character may be a separator
    for ch in algorithm:
        if ch in _SEPARATORS:
            if after_separator:
                return False
            after_separator = True
        elif ch in _COMPONENT_CHARS:
            after_separator = False
        else:
            return False
    return not after_separator


def _new_hash(algorithm: str, data: bytes | bytearray | memoryview = b"") -> Any:
    import hashlib

    return hashlib.new(algorithm, data)

_CHUNK = 1 << 20


@record(frozen=True, order=True)
class Digest:
    """A validated digest: ``Digest("sha256", "<64 hex>")``, printed as ``sha256:<hex>``."""

    algorithm: str
    encoded: str

    def __post_init__(self) -> None:
        _validate(self.algorithm, self.encoded, f"{self.algorithm}:{self.encoded}")

    # -- construction -------------------------------------------------------------------------------

    @classmethod
    def parse(cls, value: str) -> Digest:
        """Parse ``algorithm:encoded``; raise InvalidArgument (malformed) or Unsupported (algorithm)."""
        if not isinstance(value, str):
            raise InvalidArgument(f"invalid digest {value!r}: must be a string")
        if not _grammar_ok(value):
            raise InvalidArgument(f"invalid digest {value!r}: expected algorithm:hex, e.g. sha256:<64 hex>")
        algorithm, _, encoded = value.partition(":")
        return cls(algorithm, encoded)

    @classmethod
    def from_bytes(cls, data: bytes | bytearray | memoryview, algorithm: str = SHA256) -> Digest:
        """The digest of ``data``."""
        _check_algorithm(algorithm)
        return cls(algorithm, _new_hash(algorithm, data).hexdigest())

    @classmethod
    def from_stream(cls, stream: BinaryIO, algorithm: str = SHA256) -> Digest:
        """The digest of everything left to read in ``stream`` (read in 1 MiB chunks)."""
        digester = Digester(algorithm)
        while chunk := stream.read(_CHUNK):
            digester.update(chunk)
        return digester.finish()

    @staticmethod
    def is_valid(value: str) -> bool:
        """Whether ``value`` is a digest berth accepts (no exception)."""
        try:
            Digest.parse(value)
        except (InvalidArgument, Unsupported):
            return False
        return True

    # -- use ----------------------------------------------------------------------------------------

    @property
    def hex(self) -> str:
        """The encoded part (hex for every registered algorithm)."""
        return self.encoded

    def short(self, length: int = 12) -> str:
        """The abbreviated hex Docker prints as an image id: the first ``length`` characters."""
        return self.encoded[:length]

    def matches(self, data: bytes | bytearray | memoryview) -> bool:
        """Whether ``data`` hashes to this digest."""
        return _new_hash(self.algorithm, data).hexdigest() == self.encoded

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.encoded}"


class Digester:
    """Streaming digest computation: ``update()`` chunks, then ``finish()`` (which may be called again)."""

    def __init__(self, algorithm: str = SHA256) -> None:
        _check_algorithm(algorithm)
        self.algorithm = algorithm
        self._hash = _new_hash(algorithm)
        self.size = 0

    def update(self, data: bytes | bytearray | memoryview) -> None:
        self._hash.update(data)
        self.size += len(data)

    def finish(self) -> Digest:
        """The digest of everything fed so far; feeding more afterwards is allowed."""
        return Digest(self.algorithm, self._hash.hexdigest())

    def copy(self) -> Digester:
        other = Digester.__new__(Digester)
        other.algorithm = self.algorithm
        other._hash = self._hash.copy()
        other.size = self.size
        return other


def _check_algorithm(algorithm: str) -> None:
    if algorithm not in ALGORITHMS:
        raise Unsupported(
            f"unsupported digest algorithm {algorithm!r} (supported: {', '.join(sorted(ALGORITHMS))})"
        )


def _validate(algorithm: str, encoded: str, text: str) -> None:
    if not isinstance(algorithm, str) or not isinstance(encoded, str):
        raise InvalidArgument(f"invalid digest {text!r}: algorithm and encoded part must be strings")
    if not _grammar_ok(text):
        raise InvalidArgument(f"invalid digest {text!r}: expected algorithm:hex, e.g. sha256:<64 hex>")
    length = ALGORITHMS.get(algorithm)
    if length is None:
        raise Unsupported(
            f"unsupported digest algorithm {algorithm!r} in {text!r} "
            f"(supported: {', '.join(sorted(ALGORITHMS))})"
        )
    if len(encoded) != length or not HEX.issuperset(encoded):
        raise InvalidArgument(
            f"invalid digest {text!r}: {algorithm} needs {length} lowercase hex characters"
        )
