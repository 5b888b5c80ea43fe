"""Random container names in Docker's adjective_noun style, for containers created without --name."""

from __future__ import annotations

import secrets

_ADJECTIVES = (
    "brave", "calm", "clever", "eager", "fancy", "gentle", "happy", "jolly", "keen", "lively", "merry", "nimble",
    "proud", "quick", "quiet", "rapid", "sharp", "silent", "steady", "swift", "tidy", "vivid", "warm", "witty",
)
_NOUNS = (
    "anchor", "barge", "beacon", "buoy", "cargo", "compass", "dock", "ferry", "harbor", "hull", "jetty", "keel",
    "lantern", "mast", "pier", "quay", "rudder", "sail", "schooner", "skiff", "tide", "voyage", "wharf", "yacht",
)


def random_name() -> str:
    return f"{secrets.choice(_ADJECTIVES)}_{secrets.choice(_NOUNS)}_{secrets.token_hex(2)}"
