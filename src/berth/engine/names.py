"""Random container names in Docker's adjective_noun style, for containers created without --name."""

from __future__ import annotations

import os

_ADJECTIVES = (
    "brave", "calm", "clever", "eager", "fancy", "gentle", "happy", "jolly", "keen", "lively", "merry", "nimble",
    "proud", "quick", "quiet", "rapid", "sharp", "silent", "steady", "swift", "tidy", "vivid", "warm", "witty",
)
_NOUNS = (
    "anchor", "barge", "beacon", "buoy", "cargo", "compass", "dock", "ferry", "harbor", "hull", "jetty", "keel",
    "lantern", "mast", "pier", "quay", "rudder", "sail", "schooner", "skiff", "tide", "voyage", "wharf", "yacht",
)


def random_name() -> str:
    # os.urandom rather than secrets, whose imports cost ~9 ms on `berth run`
    a, b, c, d = os.urandom(4)
    return f"{_ADJECTIVES[a % len(_ADJECTIVES)]}_{_NOUNS[b % len(_NOUNS)]}_{c:02x}{d:02x}"
