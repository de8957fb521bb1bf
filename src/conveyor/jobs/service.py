"""Job rows: creation, leases, progress and outcomes. The database is the source of truth."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from conveyor.db.engine import Database
from conveyor.db.models import Job
from conveyor.db.types import utcnow
from conveyor.events.outbox import Event, record_event
from conveyor.jobs import states


def create_job(
    session: Session, kind: str, owner: str, payload: dict[str, Any], task: str = ""
) -> Job:
    """A new queued job, flushed so it has its id."""
    job = Job(kind=kind, owner=owner, payload=payload, task=task, state=states.QUEUED)
    session.add(job)
    session.flush()
    return job


def claim(db: Database, job_id: int, worker: str, lease_seconds: float) -> bool:
    """Take the job's lease when it is free or expired; True when this worker now holds it."""
    now = utcnow()
    with db.session() as session:
        result = session.execute(
            update(Job)
            .where(
                Job.id == job_id,
                Job.state.in_(states.ACTIVE),
                or_(Job.lease_owner.is_(None), Job.lease_expires_at < now),
            )
            .values(
                state=states.RUNNING,
                lease_owner=worker,
                lease_expires_at=now + timedelta(seconds=lease_seconds),
                attempts=Job.attempts + 1,
                updated_at=now,
            )
            .execution_options(synchronize_session=False)
        )
        return bool(result.rowcount)  # type: ignore[attr-defined]


def renew(db: Database, job_id: int, worker: str, lease_seconds: float) -> bool:
    """Extend a held lease; False when the lease was lost (expired and taken, or job ended)."""
    now = utcnow()
    with db.session() as session:
        result = session.execute(
            update(Job)
            .where(Job.id == job_id, Job.lease_owner == worker, Job.state == states.RUNNING)
            .values(lease_expires_at=now + timedelta(seconds=lease_seconds))
            .execution_options(synchronize_session=False)
        )
        return bool(result.rowcount)  # type: ignore[attr-defined]


def release(db: Database, job_id: int, worker: str, delay_seconds: float, reason: str) -> None:
    """Queue the job again, to be picked up after ``delay_seconds``; ``reason`` says why."""
    with db.session() as session:
        session.execute(
            update(Job)
            .where(Job.id == job_id, Job.lease_owner == worker)
            .values(
                state=states.QUEUED,
                error=f"will retry: {reason}",
                lease_owner=None,
                lease_expires_at=utcnow() + timedelta(seconds=delay_seconds),
            )
            .execution_options(synchronize_session=False)
        )


def visible_job(session: Session, job_id: int, user: str, admin: bool) -> Job | None:
    """The job when it exists and the caller may see it (its owner, or an admin)."""
    job = session.get(Job, job_id)
    if job is None or not (admin or job.owner == user):
        return None
    return job


def list_jobs(
    session: Session,
    user: str,
    admin: bool,
    *,
    state: str | None,
    kind: str | None,
    after: int | None,
    limit: int,
) -> list[Job]:
    """Jobs the caller may see, newest first, paged by id."""
    query = select(Job)
    if not admin:
        query = query.where(Job.owner == user)
    if state is not None:
        query = query.where(Job.state == state)
    if kind is not None:
        query = query.where(Job.kind == kind)
    if after is not None:
        query = query.where(Job.id < after)
    return list(session.scalars(query.order_by(Job.id.desc()).limit(limit)))


def held_by(job: Job, worker: str) -> bool:
    """True while ``worker`` holds the job's lease."""
    return job.lease_owner == worker and job.state == states.RUNNING


def progress(session: Session, job_id: int, worker: str, task: str, percent: float) -> None:
    """Record the task a job is at and how far along it is."""
    session.execute(
        update(Job)
        .where(Job.id == job_id, Job.lease_owner == worker)
        .values(task=task, task_percent=percent, updated_at=utcnow())
        .execution_options(synchronize_session=False)
    )


def finish(
    session: Session,
    job_id: int,
    state: str,
    *,
    task: str | None = None,
    percent: float | None = None,
    error: str = "",
    items: list[dict[str, Any]] | None = None,
    transaction_id: int | None = None,
    only_if_active: bool = False,
) -> bool:
    """End a job in ``state``, releasing its lease; whether it was ended by this call.

    With ``only_if_active``, a job that has already ended is left as it is (a failure
    noticed after a job published must not turn it into a failed one).
    """
    values: dict[str, Any] = {
        "state": state,
        "error": error,
        "lease_owner": None,
        "lease_expires_at": None,
        "finished_at": utcnow(),
        "updated_at": utcnow(),
    }
    if task is not None:
        values["task"] = task
    if percent is not None:
        values["task_percent"] = percent
    if items is not None:
        values["item_errors"] = items
    if transaction_id is not None:
        values["transaction_id"] = transaction_id
    statement = update(Job).where(Job.id == job_id)
    if only_if_active:
        statement = statement.where(Job.state.in_(states.ACTIVE))
    result = session.execute(
        statement.values(**values).execution_options(synchronize_session=False)
    )
    if not result.rowcount:  # type: ignore[attr-defined]
        return False
    record_finished(session, job_id)
    return True


def record_finished(session: Session, job_id: int) -> None:
    """Record the job's outcome as an event, in the transaction that ends the job."""
    job = session.execute(
        select(Job.kind, Job.owner, Job.state, Job.task, Job.error, Job.item_errors)
        .add_columns(Job.transaction_id)
        .where(Job.id == job_id)
    ).one_or_none()
    if job is None:
        return
    record_event(
        session,
        Event(
            type=f"org.conveyor.job.{job.state}",
            source="/api/v1/jobs",
            subject=f"jobs/{job_id}",
            owner=job.owner,
            data={
                "id": job_id,
                "kind": job.kind,
                "state": job.state,
                "task": job.task,
                "error": job.error or None,
                "item_errors": list(job.item_errors or [])[:10],
                "transaction_id": job.transaction_id,
            },
        ),
    )


def due_jobs(db: Database, limit: int = 500) -> list[int]:
    """Active jobs nobody holds a live lease on: never dispatched, or their worker died."""
    now = utcnow()
    with db.session() as session:
        rows = session.scalars(
            select(Job.id)
            .where(
                Job.state.in_(states.ACTIVE),
                or_(Job.lease_expires_at.is_(None), Job.lease_expires_at < now),
            )
            .order_by(Job.id)
            .limit(limit)
        )
        return list(rows)


def mark_dispatched(db: Database, job_ids: list[int], grace_seconds: float) -> None:
    """Note that these jobs were handed to the executor, so the sweeper waits before resending."""
    if not job_ids:
        return
    with db.session() as session:
        session.execute(
            update(Job)
            .where(Job.id.in_(job_ids), Job.lease_owner.is_(None))
            .values(lease_expires_at=utcnow() + timedelta(seconds=grace_seconds))
            .execution_options(synchronize_session=False)
        )
