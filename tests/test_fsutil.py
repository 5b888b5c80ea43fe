"""berth.fsutil: trees removed now (remove_tree) or off the caller's path (Trash)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from berth.fsutil import Trash, file_lock, remove_tree
from support import run_python

pytestmark = pytest.mark.unit


def make_tree(root: Path) -> Path:
    tree = root / "tree"
    (tree / "a" / "b").mkdir(parents=True)
    (tree / "a" / "b" / "f").write_text("x")
    (tree / "link").symlink_to("/etc")  # never followed
    locked = tree / "work"
    locked.mkdir()
    (locked / "inner").mkdir()
    locked.chmod(0)  # as overlay leaves work/work
    return tree


def wait_gone(path: Path, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while path.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    return not path.exists()


def test_remove_tree_removes_everything_and_follows_no_symlink(tmp_path: Path) -> None:
    tree = make_tree(tmp_path)
    remove_tree(str(tree))
    assert not tree.exists() and os.path.isdir("/etc")
    remove_tree(str(tree))  # a missing tree is no error


def test_a_taken_tree_is_gone_at_once_and_removed_by_a_child(tmp_path: Path) -> None:
    trees = [make_tree(tmp_path / str(i)) for i in range(2)]
    trash = Trash()
    for tree in trees:
        trash.take(str(tree))
        assert not tree.exists()  # its name is free again at once
        tree.mkdir()  # and can be reused
    bins = [tree.parent / ".trash" for tree in trees]
    assert all(len(os.listdir(b)) == 1 for b in bins)
    trash.empty()
    for b in bins:
        deadline = time.monotonic() + 10
        while os.listdir(b) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert os.listdir(b) == []  # emptied, kept for the next take
    assert all(tree.is_dir() for tree in trees)


def test_the_child_is_reaped_and_stale_trash_goes_with_the_next_empty(tmp_path: Path) -> None:
    stale = tmp_path / ".trash" / "left-by-a-killed-child"
    stale.mkdir(parents=True)
    (stale / "f").write_text("x")
    trash = Trash()
    trash.take(str(make_tree(tmp_path)))
    trash.empty()
    assert wait_gone(stale)
    child = Trash._children[-1]
    deadline = time.monotonic() + 10
    while Path(f"/proc/{child}/stat").read_text().split(")")[1].split()[0] != "Z":
        assert time.monotonic() < deadline
        time.sleep(0.01)
    (tmp_path / "again").mkdir()
    trash.take(str(tmp_path / "again"))
    trash.empty()  # reaps the finished child before forking its own
    assert child not in Trash._children and not Path(f"/proc/{child}").exists()


def test_what_cannot_be_renamed_is_removed_at_once(tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    trash = Trash()
    trash.take(str(missing))  # nothing to remove: no error, no trash made
    assert not (tmp_path / ".trash").exists()
    (tmp_path / ".trash").write_text("a file where the trash directory would be")
    tree = make_tree(tmp_path)
    trash.take(str(tree))
    assert not tree.exists()
    trash.empty()
    assert (tmp_path / ".trash").read_text().startswith("a file")


def test_a_user_without_dac_override_has_its_mode_000_trees_removed() -> None:
    """Without CAP_DAC_OVERRIDE, rm alone cannot enter overlay's mode-000 work/work: opened up first."""
    import shutil
    import tempfile

    if os.geteuid() != 0:
        pytest.skip("needs root to act as another user")
    home = Path(tempfile.mkdtemp(prefix="berth-test-trash-"))  # tmp_path's parents are root's alone
    try:
        os.chmod(home, 0o755)
        os.chown(home, 65534, 65534)
        out = run_python(
            "import os, time; os.setgid(65534); os.setuid(65534)\n"
            "from berth.fsutil import Trash\n"
            f"tree = {str(home / 'tree')!r}\n"
            "os.makedirs(tree + '/work/work/x'); open(tree + '/work/work/x/f', 'w').close()\n"
            "os.chmod(tree + '/work/work', 0)\n"
            "t = Trash(); t.take(tree); t.empty()\n"
            f"trash = {str(home / '.trash')!r}\n"
            "deadline = time.monotonic() + 10\n"
            "while os.listdir(trash) and time.monotonic() < deadline:\n"
            "    time.sleep(0.01)\n"
            "print(os.listdir(trash), os.path.exists(tree))\n")
    finally:
        shutil.rmtree(home, ignore_errors=True)
    assert out.split() == ["[]", "False"]


def test_a_lock_not_waited_for_says_whether_it_is_held(tmp_path: Path) -> None:
    path = str(tmp_path / "locks" / "x.lock")
    with file_lock(path) as held:
        assert held
        with file_lock(path, blocking=False) as second:  # another open file: flock refuses it
            assert second is False
        with file_lock(path, shared=True, blocking=False) as shared:
            assert shared is False
    with file_lock(path, blocking=False) as held:
        assert held
    with file_lock(None) as nothing:
        assert nothing
