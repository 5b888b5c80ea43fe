"""The create/exec handshake: an init that fails while its parent is still talking to it."""

from __future__ import annotations

import pytest

from berth.errors import BerthError, InvalidArgument
from berth.runtime.sync import pair

pytestmark = pytest.mark.unit


def test_a_send_to_a_failed_child_raises_the_childs_error() -> None:
    parent, child = pair()
    child.send_error(InvalidArgument("linux.seccomp: the profile is refused"))
    child.close()  # the child exits
    with pytest.raises(InvalidArgument, match="the profile is refused"):
        parent.send("G", {"enter": []})
    parent.close()


def test_a_send_to_a_silent_dead_child_says_so() -> None:
    parent, child = pair()
    child.close()
    with pytest.raises(BerthError, match="exited before it was ready"):
        parent.send("G")
    parent.close()
