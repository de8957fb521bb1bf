"""Driving jobs from tests: hold them to see states in between, or make a retry due now."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import update

from conveyor.db.models import Job
from conveyor.db.types import utcnow
from conveyor.jobs.executors import Executor, Sweeper
from conveyor.jobs.runner import run_job
from conveyor.runtime import Runtime


class HeldExecutor(Executor):
    """Records submitted job ids and runs them only when asked."""

    def __init__(self, runtime: object) -> None:
        super().__init__(runtime)  # type: ignore[arg-type]
        self.held: list[int] = []

    def submit(self, job_id: int, lane: str = "jobs") -> None:
        """Hold the job."""
        self.held.append(job_id)

    def run_held(self) -> list[int]:
        """Run every held job once, in order; the ids run."""
        ran, self.held = self.held, []
        for job_id in ran:
            run_job(self.runtime, job_id)
        return ran


def retry_now(runtime: Runtime, job_id: int) -> int:
    """Make the job's retry due at once and sweep; the number of jobs the sweep dispatched."""
    with runtime.db.session() as session:
        session.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(lease_expires_at=utcnow() - timedelta(seconds=1))
        )
    return Sweeper(runtime, runtime.executor).sweep()
