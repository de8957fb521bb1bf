"""Stall detection for connections driven by an event loop: a watchdog that aborts them.

A timer started and stopped around every read (``asyncio.timeout``, ``wait_for``) took a
quarter of the loop's time on small FTP files; and cancelling an SFTP read left asyncssh's
parallel requests running, to fail unheard once the connection closed ("Task exception
was never retrieved"). Instead each operation arms a deadline (one float stored), one task
per reader looks at every deadline a fraction of the stall timeout apart, and a connection
that made no progress in time is aborted: the operation waiting on it fails as any cut
connection does, and the guard tells the caller it was a stall.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable

# How often the watchdog looks, as a fraction of the stall timeout (and at most a second).
CHECKS_PER_TIMEOUT = 4


class Watchdog:
    """Watches the guards of one reader's connections; made and used on one event loop."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._guards: set[Guard] = set()
        self._task: asyncio.Task[None] | None = None

    def guard(self, abort: Callable[[], None]) -> Guard:
        """A guard for one connection: ``abort`` is called when an operation it arms stalls."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._watch())
        guard = Guard(self.seconds, abort)
        self._guards.add(guard)
        return guard

    def release(self, guard: Guard) -> None:
        """Stop watching ``guard`` (its connection is closed)."""
        self._guards.discard(guard)

    def stop(self) -> None:
        """Stop watching anything."""
        if self._task is not None:
            self._task.cancel()
            self._task = None
        self._guards.clear()

    async def _watch(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(min(1.0, self.seconds / CHECKS_PER_TIMEOUT))
            now = loop.time()
            for guard in list(self._guards):
                guard.check(now)


class Guard:
    """The deadline of the operation under way on one connection."""

    def __init__(self, seconds: float, abort: Callable[[], None]) -> None:
        self._seconds = seconds
        self._abort = abort
        self._loop = asyncio.get_running_loop()
        self._deadline = math.inf
        self.stalled = False
        """Whether the connection was aborted for a stall (it is of no further use)."""

    def __enter__(self) -> None:
        """Around one operation (``with guard:``): it must make progress within the stall
        timeout. A class, not a generator: it is entered several times a file."""
        self._deadline = self._loop.time() + self._seconds

    def __exit__(self, *exc_info: object) -> None:
        self._deadline = math.inf

    def check(self, now: float) -> None:
        """Abort the connection if the operation under way is past its deadline."""
        if now > self._deadline and not self.stalled:
            self.stalled = True
            self._abort()
