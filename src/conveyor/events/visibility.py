"""Who may read an event: its owner, members of its project, and admins.

A subscription gets only the events its owner may read, and the event feed shows each
user only those.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, TypeVar

from sqlalchemy import Select, or_, select
from sqlalchemy.orm import Session

from conveyor.auth.principal import Principal
from conveyor.config import Settings
from conveyor.db.models import OutboxEvent, ProjectMember, User
from conveyor.events.outbox import EventRecord

RowT = TypeVar("RowT", bound=Any)


@dataclass
class Readers:
    """Answers "may this user read this event?", looking each user's projects up once."""

    session: Session
    admins: frozenset[str]
    projects: dict[str, set[str]] = field(default_factory=dict)

    @classmethod
    def load(cls, session: Session, settings: Settings) -> Readers:
        """Readers over ``session``, knowing who the admins are."""
        admins = set(settings.admin_users)
        admins.update(session.scalars(select(User.id).where(User.admin.is_(True))))
        if settings.auth == "none":
            admins.add(settings.default_user)
        return cls(session, frozenset(admins))

    def may_read(self, user: str, row: EventRecord) -> bool:
        """True when ``user`` may read the event ``row``."""
        if user in self.admins or (row.owner is not None and row.owner == user):
            return True
        if row.project is None:
            return False
        if user not in self.projects:
            self.projects[user] = set(
                self.session.scalars(
                    select(ProjectMember.project_id).where(ProjectMember.user_id == user)
                )
            )
        return row.project in self.projects[user]


def readable_events(query: Select[RowT], principal: Principal) -> Select[RowT]:
    """``query`` (over events) narrowed to those the principal may read."""
    if principal.admin:
        return query
    member_of = select(ProjectMember.project_id).where(ProjectMember.user_id == principal.user)
    return query.where(or_(OutboxEvent.owner == principal.user, OutboxEvent.project.in_(member_of)))
