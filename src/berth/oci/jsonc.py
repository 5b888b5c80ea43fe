"""JSON for start-up paths: the standard library's C scanner and encoder, used directly.

``import json`` costs ~4 ms, nearly all of it ``re`` and ``enum`` pulled in by ``json.decoder``'s
module-level regular expressions — which the C accelerator never uses. ``berth-runtime`` reads a
config.json and writes a state file on every container start, so it calls the accelerator
(``_json``, part of CPython) itself. Semantics are ``json.loads``/``json.dumps``'s defaults.
"""

from __future__ import annotations

import _json

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


class _Options:
    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = None
    memo: dict[str, str] = {}


def _parse_constant(name: str) -> float:
    return float(name)  # NaN, Infinity, -Infinity, as json.loads accepts them


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise ValueError(f"duplicate key {key!r}")
        obj[key] = value
    return obj


_Options.parse_constant = _parse_constant  # type: ignore[assignment]
_scan = _json.make_scanner(_Options())  # type: ignore[arg-type]
_unique = _Options()
_unique.object_pairs_hook = _unique_keys  # type: ignore[assignment]
_scan_unique = _json.make_scanner(_unique)  # type: ignore[arg-type]


def _unserialisable(obj: Any) -> Any:
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


_encode = _json.make_encoder(None, _unserialisable, _json.encode_basestring_ascii, None, ": ", ", ",
                             False, False, True)
# What json.dumps(obj, separators=(",", ":"), ensure_ascii=False) writes: the canonical form of OCI
# documents, whose digests depend on every byte.
_encode_compact = _json.make_encoder(None, _unserialisable, _json.encode_basestring, None, ":", ",",
                                     False, False, True)


def loads(text: str | bytes | bytearray, unique_keys: bool = False) -> Any:
    """Parse a JSON document; ValueError with the line and column of the first problem. With
    ``unique_keys``, an object that repeats a key is an error (documents whose digest is checked:
    two parsers must not read different values out of the same bytes)."""
    if isinstance(text, bytes | bytearray):
        text = text.decode()  # not "utf-8-sig": that codec is a module to import; a BOM goes below
        if text.startswith("\ufeff"):
            text = text[1:]
    stripped = text.lstrip(" \t\n\r")
    offset = len(text) - len(stripped)
    stripped = stripped.rstrip(" \t\n\r")
    try:
        obj, end = (_scan_unique if unique_keys else _scan)(stripped, 0)
    except StopIteration as e:
        raise ValueError(_where(text, offset + e.value, "expecting a value")) from None
    except SystemError:
        # The accelerator reports most syntax errors through json.decoder, which it expects to be
        # imported already; on this (rare) path, let the json module produce its usual message.
        import json

        json.loads(text)
        raise
    if end != len(stripped):
        raise ValueError(_where(text, offset + end, "extra data"))
    return obj


def dumps(obj: Any, compact: bool = False) -> str:
    return "".join((_encode_compact if compact else _encode)(obj, 0))


def _where(text: str, pos: int, what: str) -> str:
    line = text.count("\n", 0, pos) + 1
    col = pos - text.rfind("\n", 0, pos)
    return f"{what}: line {line} column {col} (char {pos})"
