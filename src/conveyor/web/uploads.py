"""Receiving an upload: shared by the native and the Pacifica ingest endpoints."""

from __future__ import annotations

from typing import IO, cast

from anyio import to_thread
from fastapi import Request

from conveyor.auth.principal import Principal
from conveyor.errors import BadRequest
from conveyor.ingest.provenance import ProvenanceRefused
from conveyor.ingest.service import receive_bundle, start_upload, submit_move
from conveyor.runtime import Runtime
from conveyor.web.body import BlockingBody


def _length(request: Request) -> int | None:
    value = request.headers.get("content-length", "")
    return int(value) if value.isdigit() else None


async def receive_upload(request: Request, runtime: Runtime, principal: Principal) -> int:
    """Stream the request body into a new ingest job; the job id once the body is read."""
    job_id = await to_thread.run_sync(start_upload, runtime, principal)
    body = BlockingBody(request.stream().__aiter__())
    stream = cast(IO[bytes], body)
    try:
        await to_thread.run_sync(
            receive_bundle, runtime, principal, job_id, stream, _length(request)
        )
    except ProvenanceRefused:
        await body.drain()  # answer the refusal once the client has sent it all
        raise
    await body.drain()
    return job_id


async def read_limited(request: Request, limit: int) -> bytes:
    """The whole body of a small request, refused when it grows past ``limit`` bytes."""
    document = bytearray()
    async for chunk in request.stream():
        document += chunk
        if len(document) > limit:
            raise BadRequest(f"the request body is larger than {limit} bytes")
    return bytes(document)


async def receive_move(request: Request, runtime: Runtime, principal: Principal) -> int:
    """Queue a move job for the JSON metadata list in the body."""
    document = await read_limited(request, runtime.settings.max_metadata_bytes)
    return await to_thread.run_sync(submit_move, runtime, principal, document)
