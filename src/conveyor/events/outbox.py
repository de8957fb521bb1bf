"""The outbox: events written in the same database transaction as the change they report."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy.orm import Session

from conveyor.db.models import OutboxEvent
from conveyor.db.notices import note
from conveyor.db.types import utcnow

# The commit notice of a transaction that recorded events (conveyor.db.notices).
EVENTS_RECORDED = "events"


class EventRecord(Protocol):
    """A stored event as matching and sending read it: an ORM row or a plain result row."""

    @property
    def id(self) -> str: ...
    @property
    def type(self) -> str: ...
    @property
    def source(self) -> str: ...
    @property
    def subject(self) -> str | None: ...
    @property
    def time(self) -> datetime: ...
    @property
    def data(self) -> Any: ...
    @property
    def owner(self) -> str | None: ...
    @property
    def project(self) -> str | None: ...
    @property
    def extensions(self) -> dict[str, Any]: ...


# The columns an EventRecord is selected with.
EVENT_COLUMNS = (
    OutboxEvent.id,
    OutboxEvent.type,
    OutboxEvent.source,
    OutboxEvent.subject,
    OutboxEvent.time,
    OutboxEvent.data,
    OutboxEvent.owner,
    OutboxEvent.project,
    OutboxEvent.extensions,
)


@dataclass
class Event:
    """A CloudEvent 1.0 before it is stored."""

    type: str
    source: str
    data: Any
    subject: str | None = None
    # Who may read it (besides admins): its owner, and members of its project.
    owner: str | None = None
    project: str | None = None
    extensions: dict[str, Any] = field(default_factory=dict)
    id: str = field(default_factory=lambda: str(uuid.uuid4()))
    time: datetime = field(default_factory=utcnow)


def record_event(session: Session, event: Event) -> OutboxEvent:
    """Add ``event`` to the outbox in the caller's transaction; it exists only if that commits."""
    row = OutboxEvent(
        id=event.id,
        type=event.type,
        source=event.source,
        subject=event.subject,
        time=event.time,
        data=event.data,
        owner=event.owner,
        project=event.project,
        extensions=event.extensions,
    )
    session.add(row)
    # Dispatchers in this process are woken when the transaction commits.
    note(session, EVENTS_RECORDED)
    return row
