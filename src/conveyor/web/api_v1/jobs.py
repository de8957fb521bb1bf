"""Native job API: follow, list, force a state, retry."""

from __future__ import annotations

from typing import Annotated, Any

from anyio import to_thread
from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from conveyor.jobs import admin, service, states
from conveyor.web.deps import AdminDep, PrincipalDep, RuntimeDep
from conveyor.web.jobs_read import read_job
from conveyor.web.views import job_view

router = APIRouter(prefix="/api/v1/jobs", tags=["jobs"])


class StateChange(BaseModel):
    """A forced state, with the published admin command's fields."""

    state: str = Field(description="OK, FAILED, or a native state")
    task: str | None = None
    task_percent: float | None = None
    exception: str | None = None


@router.get("/{job_id}", summary="Follow a job")
def get_job(job_id: int, runtime: RuntimeDep, principal: PrincipalDep) -> dict[str, Any]:
    """The job's state, task, percent, errors and, once published, its transaction."""
    return read_job(runtime, principal, job_id)


@router.get("", summary="List jobs")
def list_jobs(
    runtime: RuntimeDep,
    principal: PrincipalDep,
    state: Annotated[str | None, Query(pattern="^(" + "|".join(states.ALL) + ")$")] = None,
    kind: str | None = None,
    before: Annotated[int | None, Query(description="only jobs with a smaller id")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> dict[str, Any]:
    """Jobs the caller may see, newest first; page with ``before`` = the last id."""
    with runtime.db.session() as session:
        rows = service.list_jobs(
            session,
            principal.user,
            principal.admin,
            state=state,
            kind=kind,
            after=before,
            limit=limit,
        )
        jobs = [job_view(job) for job in rows]
    return {"jobs": jobs, "next_before": jobs[-1]["id"] if len(jobs) == limit else None}


@router.post("/{job_id}/state", summary="Force a job's state (admin)")
async def set_state(
    job_id: int, change: StateChange, runtime: RuntimeDep, principal: AdminDep
) -> dict[str, Any]:
    """Force state, task, percent and exception, as the published ``job`` admin command."""
    await to_thread.run_sync(
        admin.set_state,
        runtime,
        job_id,
        change.state,
        change.task,
        change.task_percent,
        change.exception,
    )
    return await to_thread.run_sync(read_job, runtime, principal, job_id)


@router.post("/{job_id}/retry", summary="Retry a failed job (admin)")
async def retry(job_id: int, runtime: RuntimeDep, principal: AdminDep) -> dict[str, Any]:
    """Queue a failed job again from the metadata and files it kept."""
    await to_thread.run_sync(admin.retry, runtime, job_id)
    return await to_thread.run_sync(read_job, runtime, principal, job_id)
