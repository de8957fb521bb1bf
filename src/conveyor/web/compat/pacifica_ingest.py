"""``/pacifica/ingest``: the published Pacifica ingest contract, unchanged for its clients."""

from __future__ import annotations

from typing import Any

from anyio import to_thread
from fastapi import APIRouter, Query, Request

from conveyor.errors import BadRequest
from conveyor.web.deps import PrincipalDep, RuntimeDep
from conveyor.web.jobs_read import load_job
from conveyor.web.uploads import receive_move, receive_upload
from conveyor.web.views import pacifica_state

router = APIRouter(prefix="/pacifica/ingest", tags=["pacifica ingest"])


@router.get("/", summary="Service status")
def root() -> dict[str, str]:
    """The published service's greeting."""
    return {"message": "Pacifica Ingest Up and Running"}


async def _state(runtime: Any, principal: Any, job_id: int) -> dict[str, Any]:
    job = await to_thread.run_sync(load_job, runtime, principal, job_id)
    return pacifica_state(job)


@router.post("/upload", summary="Upload a bundle")
@router.post("/ingest", summary="Upload a bundle (the name the Pacifica docs use)")
async def upload(request: Request, runtime: RuntimeDep, principal: PrincipalDep) -> dict[str, Any]:
    """Stream the bundle in; answer with the job's state JSON."""
    job_id = await receive_upload(request, runtime, principal)
    return await _state(runtime, principal, job_id)


@router.post("/move", summary="Register files already on the server")
async def move(request: Request, runtime: RuntimeDep, principal: PrincipalDep) -> dict[str, Any]:
    """Queue a move job; answer with its state JSON."""
    job_id = await receive_move(request, runtime, principal)
    return await _state(runtime, principal, job_id)


@router.get("/get_state", summary="Job state")
async def get_state(
    runtime: RuntimeDep, principal: PrincipalDep, job_id: str = Query(...)
) -> dict[str, Any]:
    """The job's state JSON (``?job_id=N``)."""
    return await _state(runtime, principal, _job_id(job_id))


@router.get("/get_state/{job_id}", summary="Job state")
async def get_state_path(
    job_id: str, runtime: RuntimeDep, principal: PrincipalDep
) -> dict[str, Any]:
    """The job's state JSON (``/get_state/N``)."""
    return await _state(runtime, principal, _job_id(job_id))


def _job_id(value: str) -> int:
    if not value.isdigit():
        raise BadRequest(f"job ID {value!r} is not a number")
    return int(value)
