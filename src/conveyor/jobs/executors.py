"""Executors: where jobs run. Inline (tests), a local thread pool (embedded) or Celery.

Every executor only *wakes* workers; the job rows decide what runs. A sweeper hands
over jobs that were never dispatched or whose worker died (their lease expired).
"""

from __future__ import annotations

import logging
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

from conveyor.events.dispatch import Dispatcher
from conveyor.jobs import service
from conveyor.jobs.runner import run_job

if TYPE_CHECKING:
    from conveyor.runtime import Runtime

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SweepHook:
    """Housekeeping the sweeper runs: at every sweep, or at most once per ``every_seconds``
    (listing a bucket on every sweep would cost requests for nothing)."""

    run: Callable[[Runtime], object]
    every_seconds: float = 0.0


# Domain packages add theirs (abandoned uploads, temporary writes, expired carts, …).
SWEEP_HOOKS: list[SweepHook] = []

# Lanes: consumer runs get workers of their own, so runs that wait on jobs they started
# (a consumer publishing its outputs) can never hold every worker those jobs need.
JOBS_LANE = "jobs"
CONSUMERS_LANE = "consumers"

# How long a dispatched job may wait in a queue before the sweeper sends it again.
DISPATCH_GRACE_SECONDS = 300.0


class Executor(ABC):
    """Hands job ids to workers."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    @abstractmethod
    def submit(self, job_id: int, lane: str = JOBS_LANE) -> None:
        """Make sure a worker of ``lane`` will try to run ``job_id``."""

    def start(self) -> None:
        """Start whatever runs in the background."""

    def shutdown(self) -> None:
        """Stop background work, letting running jobs finish."""


class InlineExecutor(Executor):
    """Runs each job at once in the submitting thread (tests, and `--inline` tools)."""

    def submit(self, job_id: int, lane: str = JOBS_LANE) -> None:
        """Run the job now."""
        run_job(self.runtime, job_id)


class Sweeper:
    """Re-dispatches due jobs every ``sweep_seconds``: never sent, retried, or orphaned.

    Wherever jobs are swept, events are dispatched too (outbox to subscribers).
    """

    def __init__(self, runtime: Runtime, executor: Executor) -> None:
        self._runtime = runtime
        self._executor = executor
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="job-sweeper", daemon=True)
        self._last_run: dict[int, float] = {}
        self._dispatcher = Dispatcher(runtime)

    def start(self) -> None:
        """Begin sweeping and dispatching events."""
        self._thread.start()
        self._dispatcher.start()

    def sweep(self) -> int:
        """Dispatch every due job once; the number dispatched."""
        now = time.monotonic()
        for number, hook in enumerate(SWEEP_HOOKS):
            last = self._last_run.get(number)
            if last is None or now - last >= hook.every_seconds:
                self._last_run[number] = now
                hook.run(self._runtime)
        due = service.due_jobs(self._runtime.db)
        service.mark_dispatched(self._runtime.db, due, DISPATCH_GRACE_SECONDS)
        for job_id in due:
            self._executor.submit(job_id)
        return len(due)

    def _loop(self) -> None:
        while not self._stop.wait(self._runtime.settings.sweep_seconds):
            try:
                count = self.sweep()
                if count:
                    log.info("sweeper dispatched %d job(s)", count)
            except Exception:  # the database may be briefly away; try on the next tick
                log.warning("job sweep failed", exc_info=True)

    def stop(self) -> None:
        """Stop sweeping and dispatching."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        self._dispatcher.stop()


class LocalExecutor(Executor):
    """A pool of worker threads in this process, plus the sweeper."""

    def __init__(self, runtime: Runtime) -> None:
        super().__init__(runtime)
        settings = runtime.settings
        self._pools = {
            JOBS_LANE: ThreadPoolExecutor(settings.workers, thread_name_prefix="job"),
            CONSUMERS_LANE: ThreadPoolExecutor(
                settings.consumer_workers, thread_name_prefix="consumer"
            ),
        }
        self._sweeper = Sweeper(runtime, self)

    def submit(self, job_id: int, lane: str = JOBS_LANE) -> None:
        """Queue the job on the lane's pool."""
        self._pools.get(lane, self._pools[JOBS_LANE]).submit(self._run, job_id)

    def _run(self, job_id: int) -> None:
        try:
            run_job(self.runtime, job_id)
        except Exception:  # the row keeps the job; the sweeper will offer it again
            log.exception("job %s could not be run", job_id)

    def start(self) -> None:
        """Start the sweeper, which also picks up jobs left over from a previous run, and
        the mirror's transfer workers when configured (a run should not wait for them)."""
        self._sweeper.start()
        workers = self.runtime.transfer_workers
        if workers is not None:
            workers.warm()

    def shutdown(self) -> None:
        """Stop sweeping and wait for running jobs."""
        self._sweeper.stop()
        for pool in self._pools.values():
            pool.shutdown(wait=True, cancel_futures=True)


class CeleryExecutor(Executor):
    """Sends job ids to Celery workers over RabbitMQ or Redis."""

    def submit(self, job_id: int, lane: str = JOBS_LANE) -> None:
        """Publish a message on the lane's queue that wakes one worker."""
        from conveyor.jobs.celery_app import QUEUES, RUN_JOB, celery_app

        celery_app.send_task(RUN_JOB, args=[job_id], queue=QUEUES.get(lane, QUEUES[JOBS_LANE]))


def make_executor(runtime: Runtime, inline: bool = False) -> Executor:
    """The executor the settings ask for: Celery with a broker URL, else the local pool."""
    if inline:
        return InlineExecutor(runtime)
    if runtime.settings.uses_broker:
        from conveyor.jobs.celery_app import configure_celery

        configure_celery(runtime.settings)
        return CeleryExecutor(runtime)
    return LocalExecutor(runtime)
