"""Native mirrors API: define mirrors (JSON, or a BioMAJ bank file), run them, follow runs."""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from conveyor.errors import BadRequest
from conveyor.mirror import service
from conveyor.mirror.definition import MirrorDefinition, parse_definition
from conveyor.mirror.errors import DefinitionError
from conveyor.mirror.properties import definition_from_properties
from conveyor.web.deps import PrincipalDep, RuntimeDep

router = APIRouter(prefix="/api/v1", tags=["mirrors"])
MAX_DEFINITION_BYTES = 1024 * 1024
PROPERTIES_TYPES = ("text/plain", "text/x-java-properties", "text/x-properties")


async def _definition(request: Request, name: str | None) -> MirrorDefinition:
    """The definition in the request body: JSON, or a BioMAJ bank file (text)."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_DEFINITION_BYTES:
            raise BadRequest(f"a mirror definition is limited to {MAX_DEFINITION_BYTES} bytes")
    content_type = request.headers.get("content-type", "application/json").split(";")[0].strip()
    try:
        if content_type in PROPERTIES_TYPES:
            return definition_from_properties(
                body.decode("utf-8"), name=name, source_name="bank file"
            )
        data = json.loads(body or b"null")
        if not isinstance(data, dict):
            raise BadRequest("a mirror definition is a JSON object")
        if name is not None:
            data["name"] = name
        return parse_definition(data)
    except UnicodeDecodeError:
        raise BadRequest("the bank file is not UTF-8 text") from None
    except json.JSONDecodeError as error:
        raise BadRequest(f"the body is not JSON: {error}") from None
    except DefinitionError as error:
        raise BadRequest(str(error)) from None


@router.post("/mirrors", summary="Define a mirror", status_code=201)
async def add_mirror(
    request: Request,
    runtime: RuntimeDep,
    principal: PrincipalDep,
    name: Annotated[str | None, Query(description="overrides the name (or db.name)")] = None,
    origin: Annotated[
        Literal["native", "biomaj"] | None,
        Query(description="the form the definition was first written in (default: the body's)"),
    ] = None,
) -> dict[str, Any]:
    """A JSON definition, or a BioMAJ ``.properties`` file sent as ``text/plain``."""
    definition = await _definition(request, name)
    return await run_in_threadpool(
        service.save_mirror, runtime, principal, definition, origin or _origin(request)
    )


@router.put("/mirrors/{name}", summary="Replace a mirror's definition")
async def replace_mirror(
    name: str, request: Request, runtime: RuntimeDep, principal: PrincipalDep
) -> dict[str, Any]:
    """The new definition takes effect from the next run."""
    definition = await _definition(request, name)
    return await run_in_threadpool(
        service.save_mirror, runtime, principal, definition, _origin(request), replace=True
    )


@router.get("/mirrors", summary="List mirrors")
def list_mirrors(runtime: RuntimeDep, principal: PrincipalDep) -> dict[str, Any]:
    """The mirrors the caller owns (all of them for an admin)."""
    return {"mirrors": service.list_mirrors(runtime, principal)}


@router.get("/mirrors/{name}", summary="Show a mirror")
def get_mirror(name: str, runtime: RuntimeDep, principal: PrincipalDep) -> dict[str, Any]:
    """Its definition (passwords never shown), last release and transaction."""
    return service.get_mirror(runtime, principal, name)


@router.delete("/mirrors/{name}", summary="Remove a mirror", status_code=204)
def delete_mirror(name: str, runtime: RuntimeDep, principal: PrincipalDep) -> JSONResponse:
    """The mirror and its run history go; published releases stay."""
    service.delete_mirror(runtime, principal, name)
    return JSONResponse(None, status_code=204)


@router.post("/mirrors/{name}/runs", summary="Run a mirror now", status_code=202)
def start_run(name: str, runtime: RuntimeDep, principal: PrincipalDep) -> dict[str, Any]:
    """Queue a run; 409 while another run of the mirror is active."""
    return service.start_run(runtime, principal, name)


@router.get("/mirrors/{name}/runs", summary="A mirror's runs")
def list_runs(
    name: str,
    runtime: RuntimeDep,
    principal: PrincipalDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
) -> dict[str, Any]:
    """Newest first."""
    return {"runs": service.list_runs(runtime, principal, name, limit)}


@router.get("/mirror-runs/{run_id}", summary="A run and its progress")
async def get_run(
    request: Request,
    run_id: int,
    runtime: RuntimeDep,
    principal: PrincipalDep,
    wait: Annotated[
        float,
        Query(
            ge=0,
            le=service.MAX_WAIT_SECONDS,
            description="Answer as soon as the run has ended, or after this many seconds.",
        ),
    ] = 0,
) -> dict[str, Any]:
    """Files and bytes done, rate, time left, outcome; with ``wait``, once the run ends."""
    gone = request.is_disconnected if wait else None
    return await service.wait_for_run(runtime, principal, run_id, wait, gone)


@router.post("/mirror-runs/{run_id}/cancel", summary="Cancel a run")
def cancel_run(run_id: int, runtime: RuntimeDep, principal: PrincipalDep) -> dict[str, Any]:
    """The run stops at its next chunk; what it downloaded is kept for the next run."""
    return service.cancel_run(runtime, principal, run_id)


@router.get("/mirror-runs/{run_id}/files", summary="A run's files")
def run_files(
    run_id: int,
    runtime: RuntimeDep,
    principal: PrincipalDep,
    state: Annotated[str | None, Query(pattern="^(pending|done|reused|failed)$")] = None,
    after: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> dict[str, Any]:
    """One page of files with their state, bytes, attempts and error; ``next_after`` pages on."""
    return service.run_files(runtime, principal, run_id, state, after, limit)


def _origin(request: Request) -> str:
    content_type = request.headers.get("content-type", "")
    return "biomaj" if content_type.split(";")[0].strip() in PROPERTIES_TYPES else "native"
