"""Native consumers API: install a consumer.zip (admins), list, show and remove consumers."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from conveyor.consumers import registry
from conveyor.errors import BadRequest
from conveyor.web.deps import AdminDep, RuntimeDep

router = APIRouter(prefix="/api/v1/consumers", tags=["consumers"])
# A consumer.zip is code plus a few files; what is larger is refused before it is stored.
MAX_PACKAGE_BYTES = 256 * 1024 * 1024


@router.post(
    "",
    summary="Install a consumer.zip (admin)",
    status_code=202,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/zip": {"schema": {"type": "string", "format": "binary"}}},
        }
    },
)
async def add_consumer(
    request: Request,
    runtime: RuntimeDep,
    principal: AdminDep,
    name: Annotated[str | None, Query(max_length=100)] = None,
    allow_self: bool = False,
    max_depth: Annotated[int | None, Query(ge=1, le=100)] = None,
    timeout_seconds: Annotated[float | None, Query(gt=0, le=7 * 86400)] = None,
    memory_bytes: Annotated[int | None, Query(ge=64 * 1024**2)] = None,
) -> JSONResponse:
    """The body is the package; its setup job builds the venv and then subscribes it."""
    options = registry.ConsumerOptions(
        name=name,
        allow_self=allow_self,
        max_depth=max_depth,
        timeout_seconds=timeout_seconds,
        memory_bytes=memory_bytes,
    )
    with tempfile.TemporaryDirectory(prefix="conveyor-consumer-") as scratch:
        path = Path(scratch) / "consumer.zip"
        await _save_body(request, path)
        view, job_id = await run_in_threadpool(registry.add, runtime, principal, path, options)
    return JSONResponse({**view, "job_id": job_id}, status_code=202)


async def _save_body(request: Request, path: Path) -> None:
    written = 0
    with path.open("wb") as out:
        async for chunk in request.stream():
            written += len(chunk)
            if written > MAX_PACKAGE_BYTES:
                raise BadRequest(f"a consumer.zip is limited to {MAX_PACKAGE_BYTES} bytes")
            out.write(chunk)
    if not written:
        raise BadRequest("send the consumer.zip as the request body")


@router.get("", summary="List consumers (admin)")
def list_consumers(runtime: RuntimeDep, principal: AdminDep) -> dict[str, Any]:
    """Every installed consumer with its state and version."""
    with runtime.db.session() as session:
        return {"consumers": [registry.view(row) for row in registry.listing(session)]}


@router.get("/{name}", summary="Show a consumer (admin)")
def get_consumer(name: str, runtime: RuntimeDep, principal: AdminDep) -> dict[str, Any]:
    """The consumer: state (installing, ready, failed with the reason), version, limits."""
    with runtime.db.session() as session:
        return registry.view(registry.get(session, name))


@router.delete("/{name}", summary="Remove a consumer (admin)", status_code=204)
def remove_consumer(name: str, runtime: RuntimeDep, principal: AdminDep) -> Response:
    """Its subscription goes with it; runs already queued still finish."""
    with runtime.db.session() as session:
        registry.remove(session, name)
    return Response(status_code=204)
