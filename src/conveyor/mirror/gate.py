"""How many transfers one host gets at once, for transfer threads and event loops alike."""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager

# After this many transfers in a row without a throttle reply, one more connection is allowed.
RECOVER_AFTER = 20


class HostGate:
    """At most ``limit`` transfers at once to one host, fewer after it says it is busy.

    A throttle reply (FTP 421, HTTP 429 or 503) lowers the limit by one, down to one, and
    holds new transfers back for the ``Retry-After`` it gave; a run of successes raises the
    limit again, up to the configured maximum (lftp's dynamic connection limit). Threads
    wait in :meth:`slot`, tasks of an event loop in :meth:`async_slot`; both may share a gate.
    """

    def __init__(self, limit: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.maximum = limit
        self.limit = limit
        self._active = 0
        self._calm = 0
        self._paused_until = 0.0
        self._clock = clock
        self._changed = threading.Condition()
        self._waiting_tasks: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []

    @contextmanager
    def slot(self, on_wait: Callable[[], None] | None = None) -> Iterator[None]:
        """Hold one transfer slot; ``on_wait`` runs once if the caller has to wait."""
        with self._changed:
            waited = False
            while (pause := self._blocked_for()) is not None:
                if not waited and on_wait is not None:
                    on_wait()
                waited = True
                self._changed.wait(timeout=None if math.isinf(pause) else pause)
            self._active += 1
        try:
            yield
        finally:
            self._leave()

    @asynccontextmanager
    async def async_slot(self) -> AsyncIterator[None]:
        """Hold one transfer slot, waiting on the running event loop instead of a thread."""
        loop = asyncio.get_running_loop()
        while True:
            with self._changed:
                pause = self._blocked_for()
                if pause is None:
                    self._active += 1
                    break
                woken: asyncio.Future[None] = loop.create_future()
                self._waiting_tasks.append((loop, woken))
            try:
                await asyncio.wait([woken], timeout=None if math.isinf(pause) else pause)
            finally:
                with self._changed:
                    if (loop, woken) in self._waiting_tasks:
                        self._waiting_tasks.remove((loop, woken))
        try:
            yield
        finally:
            self._leave()

    def throttled(self, retry_after: float | None) -> None:
        """The host said it is busy: one connection fewer, and a pause if it asked for one."""
        with self._changed:
            self.limit = max(1, min(self.limit, self._active) - 1)
            self._calm = 0
            if retry_after:
                self._paused_until = max(self._paused_until, self._clock() + retry_after)
            self._notify()

    def succeeded(self) -> None:
        """A transfer went through; after enough of them, allow one more connection."""
        with self._changed:
            self._calm += 1
            if self._calm >= RECOVER_AFTER and self.limit < self.maximum:
                self.limit += 1
                self._calm = 0
                self._notify()

    def _blocked_for(self) -> float | None:
        """``None`` when a slot is free now, else the longest wait before looking again
        (infinite: until a slot is given back). Called with the lock held."""
        pause = self._paused_until - self._clock()
        if pause > 0:
            return pause
        return math.inf if self._active >= self.limit else None

    def _leave(self) -> None:
        with self._changed:
            self._active -= 1
            self._notify()

    def _notify(self) -> None:
        """Wake every waiter to look again. Called with the lock held."""
        self._changed.notify_all()
        for loop, woken in self._waiting_tasks:
            loop.call_soon_threadsafe(_wake, woken)
        self._waiting_tasks.clear()


def _wake(woken: asyncio.Future[None]) -> None:
    if not woken.done():
        woken.set_result(None)
