"""Wake-ups after commits in this process.

A session notes a topic (``events`` when it records outbox events, a mirror run's topic when
it ends the run); once that session's commit lands, every listener of the topic is set.
Listeners elsewhere in the process (event dispatchers, requests waiting for a run) then
look at the database at once instead of on their next poll. Commits in other processes
are not seen: listeners keep a slower poll for those.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol

from sqlalchemy import event
from sqlalchemy.orm import Session, SessionTransaction

NOTICES_KEY = "conveyor.notices"


class Listener(Protocol):
    """Anything that can be set from any thread, as :class:`threading.Event` can."""

    def set(self) -> None: ...


_listeners: dict[str, list[Listener]] = {}
_lock = threading.Lock()


def note(session: Session, topic: str) -> None:
    """Tell ``topic``'s listeners once ``session`` commits the transaction it is in, the one
    that made the change (nothing if it rolls back)."""
    session.info.setdefault(NOTICES_KEY, set()).add(topic)


@contextmanager
def listening(topic: str, *listeners: Listener) -> Iterator[None]:
    """Set ``listeners`` after each commit that notes ``topic``, until the block ends."""
    with _lock:
        _listeners.setdefault(topic, []).extend(listeners)
    try:
        yield
    finally:
        with _lock:
            held = _listeners.get(topic, [])
            for listener in listeners:
                held.remove(listener)
            if not held:
                _listeners.pop(topic, None)


@event.listens_for(Session, "after_commit")
def _tell_after_commit(session: Session) -> None:
    topics = session.info.pop(NOTICES_KEY, None)
    if not topics:
        return
    with _lock:
        woken = [listener for topic in topics for listener in _listeners.get(topic, ())]
    for listener in woken:
        listener.set()


@event.listens_for(Session, "after_soft_rollback")
def _forget_after_rollback(session: Session, previous: SessionTransaction) -> None:
    # Only when the whole transaction is gone: a savepoint's rollback leaves the rest, and
    # a wake-up too many costs a listener one look at the database.
    if previous.parent is None:
        session.info.pop(NOTICES_KEY, None)
