"""What a job handler sees: its job, the runtime, progress reporting and lease checks."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from conveyor.jobs import service
from conveyor.jobs.errors import RetryLater, StepFailed
from conveyor.storage.errors import ArchiveError

if TYPE_CHECKING:
    from conveyor.runtime import Runtime

log = logging.getLogger(__name__)


class LeaseLost(Exception):
    """Another worker took this job over; stop without writing anything."""


class Heartbeat:
    """Renews a job's lease in the background while its handler runs."""

    def __init__(self, runtime: Runtime, job_id: int, worker: str) -> None:
        self._runtime = runtime
        self._job_id = job_id
        self._worker = worker
        self._stop = threading.Event()
        self.lost = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"lease-{job_id}", daemon=True)

    def _beat(self) -> None:
        lease = self._runtime.settings.lease_seconds
        while not self._stop.wait(lease / 3):
            try:
                held = service.renew(self._runtime.db, self._job_id, self._worker, lease)
            except Exception:  # a database blip: the next beat tries again
                log.warning("could not renew the lease of job %s", self._job_id, exc_info=True)
                continue
            if not held:
                self.lost.set()
                return

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


class JobContext:
    """The running job, as its handler sees it."""

    def __init__(
        self,
        runtime: Runtime,
        job_id: int,
        kind: str,
        owner: str,
        payload: dict[str, Any],
        attempt: int,
        worker: str,
        heartbeat: Heartbeat,
    ) -> None:
        self.runtime = runtime
        self.job_id = job_id
        self.kind = kind
        self.owner = owner
        self.payload = payload
        self.attempt = attempt
        self.worker = worker
        self._heartbeat = heartbeat
        self.task = ""

    def check_lease(self) -> None:
        """Raise :class:`LeaseLost` when another worker has taken the job over."""
        if self._heartbeat.lost.is_set():
            raise LeaseLost(f"job {self.job_id} lease lost by {self.worker}")

    def progress(self, percent: float) -> None:
        """Report how far the current task is, 0 to 100."""
        self.check_lease()
        with self.runtime.db.session() as session:
            service.progress(session, self.job_id, self.worker, self.task, percent)

    @contextmanager
    def step(self, task: str, *, report_start: bool = True) -> Iterator[None]:
        """Run one named task: reported at 0 on entry; errors become a readable failure."""
        self.task = task
        if report_start:
            self.progress(0.0)
        try:
            yield
        except (StepFailed, RetryLater, LeaseLost):
            raise
        except ArchiveError as exc:
            raise RetryLater(f"{task}: {exc}") from exc
        except Exception as exc:
            log.exception("job %s failed at %r", self.job_id, task)
            raise StepFailed(task, f"{type(exc).__name__}: {exc}") from exc
