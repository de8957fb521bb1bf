"""An executor that holds jobs until the test runs them, to see states in between."""

from __future__ import annotations

from conveyor.jobs.executors import Executor
from conveyor.jobs.runner import run_job


class HeldExecutor(Executor):
    """Records submitted job ids and runs them only when asked."""

    def __init__(self, runtime: object) -> None:
        super().__init__(runtime)  # type: ignore[arg-type]
        self.held: list[int] = []

    def submit(self, job_id: int) -> None:
        """Hold the job."""
        self.held.append(job_id)

    def run_held(self) -> list[int]:
        """Run every held job once, in order; the ids run."""
        ran, self.held = self.held, []
        for job_id in ran:
            run_job(self.runtime, job_id)
        return ran
