"""Native ingest: upload a bundle, or register files already on the server."""

from __future__ import annotations

from typing import Any

from anyio import to_thread
from fastapi import APIRouter, Request

from conveyor.errors import BadRequest
from conveyor.ingest.metadata import MetadataError, parse_metadata
from conveyor.ingest.service import submit_move
from conveyor.web.deps import PrincipalDep, RuntimeDep
from conveyor.web.jobs_read import read_job
from conveyor.web.uploads import read_limited, receive_upload

router = APIRouter(prefix="/api/v1/ingest", tags=["ingest"])

BUNDLE_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/x-tar": {"schema": {"type": "string", "format": "binary"}}},
        "description": "A Pacifica bundle: plain tar with data/... and metadata.txt.",
    }
}


@router.post("", status_code=202, openapi_extra=BUNDLE_BODY, summary="Upload a bundle")
async def upload(request: Request, runtime: RuntimeDep, principal: PrincipalDep) -> dict[str, Any]:
    """Stream a tar bundle into the archive; the job that checks and publishes it."""
    job_id = await receive_upload(request, runtime, principal)
    return await to_thread.run_sync(read_job, runtime, principal, job_id)


@router.post("/move", status_code=202, summary="Register files already on the server")
async def move(request: Request, runtime: RuntimeDep, principal: PrincipalDep) -> dict[str, Any]:
    """Queue a move of the files a metadata list names by ``source`` (under the move roots)."""
    document = await read_limited(request, runtime.settings.max_metadata_bytes)
    try:
        metadata = parse_metadata(document)
    except MetadataError as exc:
        raise BadRequest(str(exc)) from None
    missing = [entry.key for entry in metadata.files if not entry.source]
    if missing:
        raise BadRequest(f"file {missing[0]!r} has no 'source' path")
    job_id = await to_thread.run_sync(submit_move, runtime, principal, document)
    return await to_thread.run_sync(read_job, runtime, principal, job_id)
