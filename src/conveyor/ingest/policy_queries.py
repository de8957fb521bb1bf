"""Read-only questions about the policy registry: which users, projects and instruments a
user may see.

The rules are Pacifica's uploader policy, applied to Conveyor's tables: a user sees the
projects they are a member of, the instruments of those projects and the members of those
projects; an admin sees every row. Nothing here writes.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Select, or_, select
from sqlalchemy.orm import Session

from conveyor.db.models import Instrument, Project, ProjectInstrument, ProjectMember, User


@dataclass(frozen=True)
class Viewer:
    """Whose view of the registry a question takes.

    ``user`` is ``None`` for nobody in particular (a look-up made before the asker is
    known). ``any_user`` lets such a look-up find any registered user by id: it is used
    only where identities are claims anyway (authentication off).
    """

    user: str | None
    admin: bool = False
    any_user: bool = False


def is_admin(session: Session, user_id: str) -> bool:
    """Whether ``user_id`` is a registered admin."""
    user = session.get(User, user_id)
    return bool(user is not None and user.admin)


def _projects_of(user: str) -> Select[str]:
    return select(ProjectMember.project_id).where(ProjectMember.user_id == user)


def _is_member(session: Session, user: str, project: str) -> bool:
    return session.get(ProjectMember, (project, user)) is not None


def find_users(
    session: Session, viewer: Viewer, *, user_id: str | None = None, project: str | None = None
) -> list[User]:
    """Users the viewer may see, by id and/or as members of ``project``.

    With neither condition the answer is the viewer alone, as Pacifica's uploader policy
    answers a users query without a ``where``. Members of a project are listed only to
    its members (and admins).
    """
    statement = select(User).order_by(User.id)
    if user_id is None and project is None:
        if viewer.user is None:
            return []
        statement = statement.where(User.id == viewer.user)
    if user_id is not None:
        statement = statement.where(User.id == user_id)
    if project is not None:
        if not viewer.admin and (
            viewer.user is None or not _is_member(session, viewer.user, project)
        ):
            return []
        members = select(ProjectMember.user_id).where(ProjectMember.project_id == project)
        statement = statement.where(User.id.in_(members))
    if not (viewer.admin or viewer.any_user):
        if viewer.user is None:
            return []
        co_members = select(ProjectMember.user_id).where(
            ProjectMember.project_id.in_(_projects_of(viewer.user))
        )
        statement = statement.where(or_(User.id == viewer.user, User.id.in_(co_members)))
    return list(session.scalars(statement))


def find_projects(
    session: Session,
    viewer: Viewer,
    *,
    project_id: str | None = None,
    instrument: str | None = None,
) -> list[Project]:
    """Projects the viewer may see (those they are a member of), by id and/or instrument."""
    statement = select(Project).order_by(Project.id)
    if project_id is not None:
        statement = statement.where(Project.id == project_id)
    if instrument is not None:
        with_instrument = select(ProjectInstrument.project_id).where(
            ProjectInstrument.instrument_id == instrument
        )
        statement = statement.where(Project.id.in_(with_instrument))
    if not viewer.admin:
        if viewer.user is None:
            return []
        statement = statement.where(Project.id.in_(_projects_of(viewer.user)))
    return list(session.scalars(statement))


def find_instruments(
    session: Session,
    viewer: Viewer,
    *,
    instrument_id: str | None = None,
    project: str | None = None,
) -> list[Instrument]:
    """Instruments the viewer may see (those of their projects), by id and/or project.

    A project's instruments are listed only to its members (and admins).
    """
    statement = select(Instrument).order_by(Instrument.id)
    if instrument_id is not None:
        statement = statement.where(Instrument.id == instrument_id)
    if project is not None:
        if not viewer.admin and (
            viewer.user is None or not _is_member(session, viewer.user, project)
        ):
            return []
        of_project = select(ProjectInstrument.instrument_id).where(
            ProjectInstrument.project_id == project
        )
        statement = statement.where(Instrument.id.in_(of_project))
    if not viewer.admin:
        if viewer.user is None:
            return []
        of_member_projects = select(ProjectInstrument.instrument_id).where(
            ProjectInstrument.project_id.in_(_projects_of(viewer.user))
        )
        statement = statement.where(Instrument.id.in_(of_member_projects))
    return list(session.scalars(statement))
