"""``/pacifica/archive``: the published Pacifica archive-interface contract over Conveyor files."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import IO, Annotated, Any, cast

from anyio import to_thread
from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse

from conveyor.errors import BadRequest
from conveyor.ingest import archive_files
from conveyor.web.body import BlockingBody
from conveyor.web.deps import PrincipalDep, RuntimeDep
from conveyor.web.ranges import ConditionsDep, ranged_response

router = APIRouter(prefix="/pacifica/archive", tags=["pacifica archive"])
BYTE_RANGE = re.compile(r"^(\d+)-(\d+)$")
READ_SIZE = 1024 * 1024
OCTETS = "application/octet-stream"


@router.get("/", summary="Service status")
def root() -> dict[str, str]:
    """The published service's greeting."""
    return {"message": "Pacifica Archive Interface Up and Running"}


def _mtime(header: str | None) -> datetime | None:
    """``Last-Modified`` as an HTTP-date or, as Pacifica clients send it, epoch seconds."""
    if not header:
        return None
    try:
        return datetime.fromtimestamp(float(header), UTC)
    except (ValueError, OverflowError, OSError):
        pass
    try:
        return parsedate_to_datetime(header).astimezone(UTC)
    except (TypeError, ValueError):
        raise BadRequest(
            f"Last-Modified {header!r} is neither an HTTP date nor epoch seconds"
        ) from None


@router.put("/{archive_id}", summary="Store a file under an id", status_code=201)
async def put_file(
    archive_id: str,
    request: Request,
    runtime: RuntimeDep,
    principal: PrincipalDep,
    last_modified: Annotated[str | None, Header()] = None,
) -> JSONResponse:
    """Stream the body into the archive; an id that exists is refused (never rewritten)."""
    mtime = _mtime(last_modified)
    body = BlockingBody(request.stream().__aiter__())
    stream = cast(IO[bytes], body)

    def chunks() -> Iterator[bytes]:
        while chunk := stream.read(READ_SIZE):
            yield chunk

    try:
        stored = await to_thread.run_sync(
            archive_files.put_file, runtime, principal, archive_id, chunks(), mtime
        )
    finally:
        await body.drain()
    return JSONResponse(
        {"message": "File added to archive", "total_bytes": stored.size}, status_code=201
    )


def _byte_range(value: str, size: int) -> tuple[int, int]:
    match = BYTE_RANGE.match(value)
    if match is None or int(match.group(1)) > int(match.group(2)):
        raise BadRequest("Invalid byte range format: use byte_range=START-END (END excluded)")
    return min(int(match.group(1)), size), min(int(match.group(2)), size)


@router.get("/{archive_id}", summary="Read a file (whole, a byte_range, or an HTTP Range)")
def get_file(
    archive_id: str,
    runtime: RuntimeDep,
    principal: PrincipalDep,
    conditions: ConditionsDep,
    byte_range: Annotated[str | None, Query()] = None,
) -> Response:
    """The file's bytes; ``byte_range=S-E`` is half-open, as the published service reads it."""
    with runtime.db.session() as session:
        row = archive_files.readable_file(session, principal, archive_id)
        sha256, size = row.sha256, row.size
    if byte_range is None:
        return ranged_response(
            size=size,
            etag=sha256,
            filename=archive_id,
            media_type=OCTETS,
            body=lambda start, end: runtime.archive.read_range(sha256, start, end),
            conditions=conditions,
        )
    start, end = _byte_range(byte_range, size)
    return StreamingResponse(
        runtime.archive.read_range(sha256, start, end),
        media_type=OCTETS,
        headers={"Content-Length": str(end - start)},
    )


@router.head("/{archive_id}", summary="A file's status", status_code=204)
def head_file(archive_id: str, runtime: RuntimeDep, principal: PrincipalDep) -> Response:
    """The published status headers (``X-Pacifica-Messsage`` keeps its three s)."""
    with runtime.db.session() as session:
        row = archive_files.readable_file(session, principal, archive_id)
        modified = (row.mtime or row.ctime or datetime.now(UTC)).timestamp()
        created = (row.ctime or row.mtime or datetime.now(UTC)).timestamp()
        headers = {
            "X-Pacifica-Messsage": "File was found",
            "X-Pacifica-File": archive_id,
            "X-Content-Length": str(row.size),
            "Last-Modified": str(modified),
            "X-Pacifica-Ctime": str(created),
            "X-Pacifica-Bytes-Per-Level": f"({row.size},)",
            "X-Pacifica-File-Storage-Media": "disk",
        }
    return Response(status_code=204, headers=headers)


@router.post("/{archive_id}", summary="Stage a file (files are always on disk here)")
def stage_file(archive_id: str, runtime: RuntimeDep, principal: PrincipalDep) -> dict[str, Any]:
    """Nothing to stage: archived files can always be read at once."""
    with runtime.db.session() as session:
        archive_files.readable_file(session, principal, archive_id)
    return {"message": "File was staged", "file": archive_id}


@router.delete("/{archive_id}", summary="Delete a file stored through this interface")
def delete_file(archive_id: str, runtime: RuntimeDep, principal: PrincipalDep) -> Response:
    """Remove it; files of ingested transactions are immutable (409)."""
    with runtime.db.session() as session:
        archive_files.delete_file(session, principal, archive_id)
    return Response(status_code=200)
