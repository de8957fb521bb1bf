"""A cache of open broker connections, one per broker, each used by one sender at a time."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Generic, TypeVar

Conn = TypeVar("Conn")


class ConnectionCache(Generic[Conn]):
    """Opens a connection per key on first use; a failed send drops it for a fresh one."""

    def __init__(self, close: Callable[[Conn], object]) -> None:
        self._close = close
        self._lock = threading.Lock()
        self._held: dict[str, tuple[threading.Lock, list[Conn]]] = {}

    @contextmanager
    def use(self, key: str, connect: Callable[[], Conn]) -> Iterator[Conn]:
        """The connection for ``key`` (opened if needed), held by this caller alone."""
        with self._lock:
            lock, slot = self._held.setdefault(key, (threading.Lock(), []))
        with lock:
            if not slot:
                slot.append(connect())
            try:
                yield slot[0]
            except BaseException:
                self._discard(slot)
                raise

    def _discard(self, slot: list[Conn]) -> None:
        connection = slot.pop()
        # Closing a broken connection may fail too; it is gone either way.
        with contextlib.suppress(Exception):
            self._close(connection)

    def close_all(self) -> None:
        """Close every cached connection."""
        with self._lock:
            held = list(self._held.values())
            self._held.clear()
        for lock, slot in held:
            with lock:
                while slot:
                    self._discard(slot)
