"""The outbox: events written in the same database transaction as the change they report."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from conveyor.db.models import OutboxEvent
from conveyor.db.types import utcnow


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
    session.info["events_recorded"] = True
    return row
