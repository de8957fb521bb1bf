"""Running one job on whichever worker claimed it."""

from __future__ import annotations

import logging
import os
import socket
import threading
from typing import TYPE_CHECKING

from sqlalchemy import select

from conveyor.db.models import Job
from conveyor.jobs import service, states
from conveyor.jobs.context import Heartbeat, JobContext, LeaseLost
from conveyor.jobs.errors import RetryLater, StepFailed
from conveyor.jobs.registry import HANDLERS
from conveyor.observability import metrics

if TYPE_CHECKING:
    from conveyor.runtime import Runtime

log = logging.getLogger(__name__)

RETRY_BASE_SECONDS = 2.0
RETRY_MAX_SECONDS = 300.0


def worker_name() -> str:
    """This thread's name as a lease owner: host, process and thread."""
    return f"{socket.gethostname()}:{os.getpid()}:{threading.get_ident()}"


def run_job(runtime: Runtime, job_id: int) -> None:
    """Claim the job and run its handler; a job someone else holds is left alone."""
    worker = worker_name()
    settings = runtime.settings
    if not service.claim(runtime.db, job_id, worker, settings.lease_seconds):
        return
    with runtime.db.session() as session:
        job = session.scalars(select(Job).where(Job.id == job_id)).one()
        kind, owner, payload, attempt = job.kind, job.owner, dict(job.payload), job.attempts
    handler = HANDLERS.get(kind)
    if handler is None:
        _fail(runtime, job_id, job.task, f"no handler for jobs of kind {kind!r}", [])
        return
    log.info("job %s (%s) attempt %s on %s", job_id, kind, attempt, worker)
    with Heartbeat(runtime, job_id, worker) as heartbeat:
        context = JobContext(runtime, job_id, kind, owner, payload, attempt, worker, heartbeat)
        try:
            handler(context)
        except StepFailed as failure:
            _fail(runtime, job_id, failure.task, failure.message, failure.items)
        except RetryLater as exc:
            _retry_or_fail(runtime, job_id, worker, context.task, attempt, str(exc))
        except LeaseLost:
            log.warning("job %s was taken over by another worker; %s stops", job_id, worker)
        except Exception as exc:
            log.exception("job %s crashed at %r", job_id, context.task)
            _fail(runtime, job_id, context.task, f"internal error: {type(exc).__name__}: {exc}", [])
    metrics.JOBS_RUN.labels(kind=kind).inc()


def _fail(
    runtime: Runtime, job_id: int, task: str, message: str, items: list[dict[str, str]]
) -> None:
    with runtime.db.session() as session:
        ended = service.finish(
            session,
            job_id,
            states.FAILED,
            task=task,
            percent=0.0,
            error=message,
            items=items,
            only_if_active=True,
        )
    if ended:
        log.info("job %s failed at %r: %s", job_id, task, message)
    else:
        log.warning("job %s had already ended when it failed at %r: %s", job_id, task, message)


def _retry_or_fail(
    runtime: Runtime, job_id: int, worker: str, task: str, attempt: int, reason: str
) -> None:
    if attempt >= runtime.settings.max_attempts:
        _fail(runtime, job_id, task, f"{reason} (gave up after {attempt} attempts)", [])
        return
    delay = min(RETRY_MAX_SECONDS, RETRY_BASE_SECONDS * 2 ** (attempt - 1))
    log.warning("job %s will be retried in %.0f s: %s", job_id, delay, reason)
    service.release(runtime.db, job_id, worker, delay, reason)
