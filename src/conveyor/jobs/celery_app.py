"""The Celery application: one task that runs a job by id.

Messages are acknowledged only after the job returns (``acks_late``) and requeued when the
worker process dies; even a lost message loses nothing, since the sweeper resends due jobs.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from celery import Celery

from conveyor.config import Settings, redact_url
from conveyor.jobs.executors import CONSUMERS_LANE, JOBS_LANE
from conveyor.waiting import Unreachable, wait_until_reachable

if TYPE_CHECKING:
    from conveyor.runtime import Runtime

log = logging.getLogger(__name__)

RUN_JOB = "conveyor.run_job"
QUEUE = "conveyor.jobs"
# Each executor lane's queue (consumer runs have their own; see jobs.executors).
QUEUES = {JOBS_LANE: QUEUE, CONSUMERS_LANE: "conveyor.consumers"}

celery_app = Celery("conveyor")
_runtime: Runtime | None = None


class BrokerUnavailable(Unreachable):
    """The broker could not be reached within the configured attempts."""


def configure_celery(settings: Settings) -> Celery:
    """Point the app at the configured broker with at-least-once delivery settings."""
    celery_app.conf.update(
        broker_url=settings.broker_url,
        task_default_queue=QUEUE,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_ignore_result=True,
        worker_prefetch_multiplier=1,
        worker_hijack_root_logger=False,
        broker_connection_retry_on_startup=True,
        broker_transport_options={"visibility_timeout": 3600},
        task_serializer="json",
        accept_content=["json"],
    )
    return celery_app


def wait_for_broker(settings: Settings) -> None:
    """Connect to the broker, up to the configured attempts, or raise :class:`BrokerUnavailable`."""

    def probe() -> None:
        with celery_app.connection_for_write() as connection:
            connection.ensure_connection(max_retries=1)

    wait_until_reachable(
        f"broker {redact_url(settings.broker_url)}",
        probe,
        attempts=settings.db_connect_attempts,
        wait=settings.db_connect_wait,
        errors=(Exception,),
        failure=BrokerUnavailable,
    )


def bind_runtime(runtime: Runtime) -> None:
    """Give the worker's task the runtime it runs jobs with."""
    global _runtime
    _runtime = runtime


def bound_runtime() -> Runtime:
    """The runtime this worker was started with."""
    if _runtime is None:
        raise RuntimeError("worker started without a runtime")
    return _runtime


@celery_app.task(name=RUN_JOB, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def run_job_task(job_id: int) -> None:
    """Run one job in this worker."""
    from conveyor.jobs.runner import run_job

    run_job(bound_runtime(), int(job_id))
