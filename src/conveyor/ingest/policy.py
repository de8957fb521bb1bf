"""Who may submit what: the Pacifica ingest rules, or open recording of what bundles name."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from conveyor.db.models import Instrument, Project, ProjectInstrument, ProjectMember, User
from conveyor.db.upsert import insert_missing


class PolicyError(Exception):
    """The submission breaks policy; the message names the rule."""


def check_strict(session: Session, submitter: str, project: str, instrument: str | None) -> None:
    """Apply the Pacifica rules, raising :class:`PolicyError` at the first one broken."""
    if session.get(User, submitter) is None:
        raise PolicyError(f"submitter {submitter!r} is not a registered user")
    if session.get(Project, project) is None:
        raise PolicyError(f"project {project!r} is not registered")
    if session.get(ProjectMember, (project, submitter)) is None:
        raise PolicyError(f"submitter {submitter!r} is not a member of project {project!r}")
    if instrument is None:
        return
    if session.get(Instrument, instrument) is None:
        raise PolicyError(f"instrument {instrument!r} is not registered")
    if session.get(ProjectInstrument, (project, instrument)) is None:
        raise PolicyError(f"instrument {instrument!r} does not belong to project {project!r}")


def record_names(session: Session, submitter: str, project: str, instrument: str | None) -> None:
    """Register whatever an accepted submission names, so strict mode can take over later.

    Jobs publishing at once may name the same new user or project: each row is inserted
    only if absent, in one statement, so the second writer waits and skips instead of failing
    on the unique key.
    """
    if session.get(User, submitter) is None:
        insert_missing(session, User, id=submitter)
    if session.get(Project, project) is None:
        insert_missing(session, Project, id=project)
    if session.get(ProjectMember, (project, submitter)) is None:
        insert_missing(session, ProjectMember, project_id=project, user_id=submitter)
    if instrument is not None:
        if session.get(Instrument, instrument) is None:
            insert_missing(session, Instrument, id=instrument)
        if session.get(ProjectInstrument, (project, instrument)) is None:
            insert_missing(session, ProjectInstrument, project_id=project, instrument_id=instrument)


def projects_of(session: Session, user: str) -> list[str]:
    """The projects ``user`` is a member of."""
    return list(
        session.scalars(select(ProjectMember.project_id).where(ProjectMember.user_id == user))
    )


def add_project(session: Session, project_id: str, title: str = "") -> Project:
    """Register a project (idempotent; a given title replaces the old one)."""
    project = session.get(Project, project_id)
    if project is None:
        project = Project(id=project_id, title=title)
        session.add(project)
    elif title:
        project.title = title
    session.flush()
    return project


def add_instrument(
    session: Session, instrument_id: str, name: str = "", projects: list[str] | None = None
) -> Instrument:
    """Register an instrument and the projects it delivers to (all must exist)."""
    instrument = session.get(Instrument, instrument_id)
    if instrument is None:
        instrument = Instrument(id=instrument_id, name=name)
        session.add(instrument)
        session.flush()
    for project in projects or []:
        _require_project(session, project)
        if session.get(ProjectInstrument, (project, instrument_id)) is None:
            session.add(ProjectInstrument(project_id=project, instrument_id=instrument_id))
    session.flush()
    return instrument


def add_user(
    session: Session, user_id: str, admin: bool = False, projects: list[str] | None = None
) -> User:
    """Register a user and the projects they belong to (all must exist)."""
    user = session.get(User, user_id)
    if user is None:
        user = User(id=user_id, admin=admin)
        session.add(user)
        session.flush()
    elif admin:
        user.admin = True
    for project in projects or []:
        _require_project(session, project)
        if session.get(ProjectMember, (project, user_id)) is None:
            session.add(ProjectMember(project_id=project, user_id=user_id))
    session.flush()
    return user


def _require_project(session: Session, project: str) -> None:
    if session.get(Project, project) is None:
        raise PolicyError(f"project {project!r} is not registered; add it first")


def describe_project(session: Session, project_id: str) -> dict[str, object] | None:
    """A project with its members and instruments, or ``None``."""
    project = session.get(Project, project_id)
    if project is None:
        return None
    members = session.scalars(
        select(ProjectMember.user_id).where(ProjectMember.project_id == project_id)
    )
    instruments = session.scalars(
        select(ProjectInstrument.instrument_id).where(ProjectInstrument.project_id == project_id)
    )
    return {
        "id": project.id,
        "title": project.title,
        "members": sorted(members),
        "instruments": sorted(instruments),
    }


def list_projects(session: Session) -> list[str]:
    """Every project id."""
    return list(session.scalars(select(Project.id).order_by(Project.id)))
