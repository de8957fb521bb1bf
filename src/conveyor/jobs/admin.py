"""Admin actions on jobs: forcing a state (the published ``job`` command) and retrying."""

from __future__ import annotations

from sqlalchemy import func, select

from conveyor.db.models import Job, StagedBlob
from conveyor.db.types import utcnow
from conveyor.errors import BadRequest, Conflict, NotFound
from conveyor.jobs import service as jobs
from conveyor.jobs import states
from conveyor.runtime import Runtime

PACIFICA_STATES = {"OK", "FAILED"}
FINAL_TASK = "ingest metadata"


def set_state(
    runtime: Runtime,
    job_id: int,
    state: str,
    task: str | None,
    task_percent: float | None,
    exception: str | None,
) -> None:
    """Force a job's state, as Pacifica's ``job --state --task --task-percent --exception``.

    ``FAILED`` (or ``failed``/``cancelled``) ends the job. ``OK`` at ``ingest metadata``/100
    marks it succeeded; ``OK`` anywhere else queues it to run again. A job forced into an
    ended state it was not in records its finished event, as a job that ends by itself does.
    """
    if state not in PACIFICA_STATES and state not in states.ALL:
        allowed = ", ".join(sorted(PACIFICA_STATES | set(states.ALL)))
        raise BadRequest(f"state {state!r} is not one of {allowed}")
    if task_percent is not None and not 0 <= task_percent <= 100:
        raise BadRequest(f"task_percent {task_percent} is not between 0 and 100")
    with runtime.db.session() as session:
        job = session.get(Job, job_id)
        if job is None:
            raise NotFound(f"job ID {job_id} does not exist.")
        if task is not None:
            job.task = task
        if task_percent is not None:
            job.task_percent = task_percent
        if exception is not None:
            job.error = exception
        before = job.state
        job.state = _native(state, job.task, job.task_percent)
        job.lease_owner = None
        job.lease_expires_at = None
        job.finished_at = utcnow() if job.state in states.FINISHED else None
        if job.state in states.FINISHED and job.state != before:
            session.flush()  # the event is read from the row
            jobs.record_finished(session, job_id)
    if job.state == states.QUEUED:
        runtime.submit(job_id)


def _native(state: str, task: str, percent: float) -> str:
    if state == "FAILED":
        return states.FAILED
    if state == "OK":
        return states.SUCCEEDED if task == FINAL_TASK and percent >= 100 else states.QUEUED
    return state


def retry(runtime: Runtime, job_id: int) -> None:
    """Run a failed job again from what it kept (its metadata and any staged files)."""
    with runtime.db.session() as session:
        job = session.get(Job, job_id)
        if job is None:
            raise NotFound(f"job ID {job_id} does not exist.")
        if job.state not in (states.FAILED, states.CANCELLED):
            raise Conflict(f"job {job_id} is {job.state}; only failed jobs can be retried")
        sha256 = job.payload.get("metadata_sha256")
        if not sha256 or not runtime.archive.exists(str(sha256)):
            raise Conflict(f"job {job_id} kept no metadata to retry from; submit it again")
        staged = session.scalar(
            select(func.count()).select_from(StagedBlob).where(StagedBlob.job_id == job_id)
        )
        if job.kind == "ingest" and not staged:
            raise Conflict(
                f"the bundle of job {job_id} was discarded when it failed; upload it again"
            )
        job.state = states.QUEUED
        job.error = ""
        job.item_errors = []
        job.attempts = 0
        job.finished_at = None
        job.lease_owner = None
        job.lease_expires_at = None
    runtime.submit(job_id)
