"""Reading jobs for an answer (shared by the native and Pacifica routes)."""

from __future__ import annotations

from typing import Any

from conveyor.auth.principal import Principal
from conveyor.db.models import Job
from conveyor.errors import NotFound
from conveyor.jobs.service import visible_job
from conveyor.runtime import Runtime
from conveyor.web.views import job_view


def load_job(runtime: Runtime, principal: Principal, job_id: int) -> Job:
    """The job if the principal may see it, else :class:`NotFound`."""
    with runtime.db.session() as session:
        job = visible_job(session, job_id, principal.user, principal.admin)
    if job is None:
        raise NotFound(f"job ID {job_id} does not exist.")
    return job


def read_job(runtime: Runtime, principal: Principal, job_id: int) -> dict[str, Any]:
    """The job in the native shape."""
    return job_view(load_job(runtime, principal, job_id))
