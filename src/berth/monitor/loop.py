"""The supervisor's event loop: one thread, one ``poll``, every container's descriptors, timers and
child processes.

Callbacks carry an ``owner`` (a container, or None for the supervisor's own work): an exception in
one is handed to ``owner.fault`` (or ``on_error``) and the loop goes on, so one container's trouble
never stops the others. Child exits arrive through SIGCHLD, whose handler only writes to a wakeup
pipe (``signal.set_wakeup_fd``); the loop then reaps every exited child with ``waitpid(-1,
WNOHANG)`` (the supervisor is a subreaper: the containers' inits are its children too), and also
every ``REAP_EVERY`` seconds while it watches children, so no exit can be missed for long. The exit
of a child nobody watches (a container's stray process, reparented here) is dropped: pids wrap
quickly, and a remembered status could be taken for a later process's.
"""

from __future__ import annotations

import _signal
import posix  # not os: it costs the supervisor ~180 KiB (its environ mapping pulls in collections.abc)
import select
import time
from _heapq import heappop, heappush  # not heapq: its Python half costs memory for nothing used here

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

IN = select.POLLIN | select.POLLPRI
OUT = select.POLLOUT
REAP_EVERY = 2.0


class Timer:
    __slots__ = ("cancelled", "fn", "owner", "seq", "when")

    def __init__(self, when: float, seq: int, fn: Callable[[], None], owner: Any) -> None:
        self.when, self.seq, self.fn, self.owner, self.cancelled = when, seq, fn, owner, False

    def __lt__(self, other: Timer) -> bool:
        return (self.when, self.seq) < (other.when, other.seq)

    def cancel(self) -> None:
        self.cancelled = True


def _exit_code(raw: int) -> int:
    code = posix.waitstatus_to_exitcode(raw)
    return 128 - code if code < 0 else code


class Loop:
    def __init__(self, on_error: Callable[[BaseException], None] | None = None) -> None:
        self.on_error = on_error
        self._poll = select.poll()
        self._masks: dict[int, int] = {}
        self._readers: dict[int, tuple[Callable[[], None], Any]] = {}
        self._writers: dict[int, tuple[Callable[[], None], Any]] = {}
        self._timers: list[Timer] = []
        self._seq = 0
        self._children: dict[int, tuple[Callable[[int], None], Any]] = {}
        wake_r, wake_w = posix.pipe2(posix.O_NONBLOCK | posix.O_CLOEXEC)
        _signal.set_wakeup_fd(wake_w)
        _signal.signal(_signal.SIGCHLD, lambda *_: None)  # the C handler writes to the wakeup pipe
        self.add_reader(wake_r, lambda: self._wake(wake_r))

    # ------------------------------------------------------------------ descriptors

    def _update(self, fd: int) -> None:
        mask = (IN if fd in self._readers else 0) | (OUT if fd in self._writers else 0)
        if mask:
            (self._poll.modify if fd in self._masks else self._poll.register)(fd, mask)
            self._masks[fd] = mask
        elif self._masks.pop(fd, None) is not None:
            self._poll.unregister(fd)

    def add_reader(self, fd: int, fn: Callable[[], None], owner: Any = None) -> None:
        self._readers[fd] = (fn, owner)
        self._update(fd)

    def add_writer(self, fd: int, fn: Callable[[], None], owner: Any = None) -> None:
        self._writers[fd] = (fn, owner)
        self._update(fd)

    def forget(self, fd: int) -> None:
        """Stop watching ``fd`` (call before closing it)."""
        self._readers.pop(fd, None)
        self._writers.pop(fd, None)
        self._update(fd)

    def remove_writer(self, fd: int) -> None:
        if self._writers.pop(fd, None) is not None:
            self._update(fd)

    # ------------------------------------------------------------------ timers and children

    def call_later(self, delay: float, fn: Callable[[], None], owner: Any = None) -> Timer:
        self._seq += 1
        timer = Timer(time.monotonic() + delay, self._seq, fn, owner)
        heappush(self._timers, timer)
        return timer

    def watch_child(self, pid: int, fn: Callable[[int], None], owner: Any = None) -> None:
        """Call ``fn(exit code)`` when child ``pid`` exits; a signal death is 128 + the signal, as
        shells say. A child that may have exited already (an init that became ours) is checked now,
        with -1 for a status reaped before it was watched."""
        self._children[pid] = (fn, owner)
        try:
            got, raw = posix.waitpid(pid, posix.WNOHANG)
        except ChildProcessError:
            got, raw = pid, -1
        if got == pid:
            del self._children[pid]
            code = -1 if raw == -1 else _exit_code(raw)
            self.call_later(0, lambda: fn(code), owner)

    def unwatch_child(self, pid: int) -> None:
        self._children.pop(pid, None)

    def spawn(self, argv: list[str], *, stdout: int, stderr: int, stdin: int | None = None,
              setsid: bool = False) -> int:
        first = (posix.POSIX_SPAWN_OPEN, 0, "/dev/null", posix.O_RDONLY, 0) if stdin is None else \
            (posix.POSIX_SPAWN_DUP2, stdin, 0)
        return posix.posix_spawn(argv[0], argv, posix.environ, setsid=setsid, file_actions=[
            first, (posix.POSIX_SPAWN_DUP2, stdout, 1), (posix.POSIX_SPAWN_DUP2, stderr, 2)])

    def fork(self, fn: Callable[[], int], then: Callable[[int], None], owner: Any = None,
             on_error: Callable[[BaseException], None] | None = None) -> None:
        """Run ``fn`` in a forked child and call ``then(its return value)`` once it exits (255 when
        it raised, after the child passed the error to ``on_error``): for work that needs modules
        this long-lived process must never load (its memory is every container's), done by a copy
        that leaves as soon as it is done."""
        try:
            pid = posix.fork()
        except OSError:  # out of processes: as if it had failed
            self.call_later(0, lambda: then(255), owner)
            return
        if pid == 0:
            code = 255
            try:
                code = int(fn())
            except BaseException as e:
                if on_error is not None:
                    try:
                        on_error(e)
                    except BaseException:
                        pass
            finally:
                posix._exit(code)
        self.watch_child(pid, then, owner)

    def _wake(self, wake_r: int) -> None:
        try:
            while posix.read(wake_r, 512):
                pass
        except BlockingIOError:
            pass
        self._reap()

    def _reap(self) -> None:
        while True:
            try:
                pid, raw = posix.waitpid(-1, posix.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            watcher = self._children.pop(pid, None)
            if watcher is not None:
                self._call(watcher[1], watcher[0], _exit_code(raw))

    # ------------------------------------------------------------------ running

    def _call(self, owner: Any, fn: Callable[..., None], *args: Any) -> None:
        try:
            fn(*args)
        except Exception as e:
            handler = owner.fault if owner is not None else self.on_error
            if handler is not None:
                try:
                    handler(e)
                except Exception:
                    pass

    def run_once(self) -> None:
        """Wait for the next event and dispatch what is ready."""
        timers = self._timers
        while timers and timers[0].cancelled:
            heappop(timers)
        wait = None
        if timers:
            wait = max(0.0, timers[0].when - time.monotonic())
        if self._children:
            wait = REAP_EVERY if wait is None else min(wait, REAP_EVERY)
        events = self._poll.poll(None if wait is None else int(wait * 1000) + 1)
        # A callback earlier in this round may close a descriptor and another take its number: only
        # the watches poll reported on are called (their handlers taken before any runs).
        watched = [(fd, mask, self._writers.get(fd), self._readers.get(fd)) for fd, mask in events]
        for fd, mask, writer, reader in watched:
            if mask & (OUT | select.POLLERR | select.POLLHUP | select.POLLNVAL) and \
                    writer is not None and self._writers.get(fd) is writer:
                self._call(writer[1], writer[0])
            if mask & ~OUT and reader is not None and self._readers.get(fd) is reader:
                self._call(reader[1], reader[0])
        if self._children and not events:
            self._reap()
        now = time.monotonic()
        while timers and (timers[0].cancelled or timers[0].when <= now):
            timer = heappop(timers)
            if not timer.cancelled:
                self._call(timer.owner, timer.fn)
