"""Native read API: transactions, their files, and file content with Range."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import Response, StreamingResponse

from conveyor.ingest import queries
from conveyor.web.deps import PrincipalDep, RuntimeDep
from conveyor.web.ranges import ConditionsDep, ranged_response
from conveyor.web.views import file_view, transaction_view

router = APIRouter(prefix="/api/v1", tags=["transactions"])
FILES_INLINE = 1000


@router.get("/transactions", summary="List transactions")
def list_transactions(
    runtime: RuntimeDep,
    principal: PrincipalDep,
    after: Annotated[int | None, Query(description="only transactions with a larger id")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    project: str | None = None,
    submitter: str | None = None,
) -> dict[str, Any]:
    """Transactions the caller may read, oldest first; page with ``after`` = the last id."""
    with runtime.db.session() as session:
        rows = queries.list_transactions(
            session, principal, after=after, limit=limit, project=project, submitter=submitter
        )
        items = [transaction_view(row) for row in rows]
    return {"transactions": items, "next_after": items[-1]["id"] if len(items) == limit else None}


@router.get("/transactions/{transaction_id}", summary="A transaction with its files")
def get_transaction(
    transaction_id: int, runtime: RuntimeDep, principal: PrincipalDep
) -> dict[str, Any]:
    """The transaction, its key-values and its first files (the rest via ``/files``)."""
    with runtime.db.session() as session:
        row = queries.get_transaction(session, principal, transaction_id)
        view = transaction_view(row)
        files = queries.list_files(session, transaction_id, after=None, limit=FILES_INLINE)
    view["files"] = [file_view(item) for item in files]
    view["files_next_after"] = files[-1].id if len(files) == FILES_INLINE else None
    return view


@router.get("/transactions/{transaction_id}/files", summary="A transaction's files, paged")
def list_files(
    transaction_id: int,
    runtime: RuntimeDep,
    principal: PrincipalDep,
    after: int | None = None,
    limit: Annotated[int, Query(ge=1, le=10000)] = 1000,
) -> dict[str, Any]:
    """Files by id; page with ``after`` = the last id."""
    with runtime.db.session() as session:
        queries.get_transaction(session, principal, transaction_id)
        files = queries.list_files(session, transaction_id, after=after, limit=limit)
    items = [file_view(item) for item in files]
    return {"files": items, "next_after": items[-1]["id"] if len(items) == limit else None}


@router.get("/files/{file_id}", summary="A file's record")
def get_file(file_id: int, runtime: RuntimeDep, principal: PrincipalDep) -> dict[str, Any]:
    """Path, size, hashes, mimetype and times of one archived file."""
    with runtime.db.session() as session:
        return file_view(queries.get_file(session, principal, file_id))


@router.get(
    "/files/{file_id}/content",
    summary="A file's bytes (HTTP Range supported)",
    response_class=StreamingResponse,
)
def get_content(
    file_id: int,
    runtime: RuntimeDep,
    principal: PrincipalDep,
    conditions: ConditionsDep,
) -> Response:
    """The file's bytes, whole or one range, with ``ETag`` (its sha256) and exact length."""
    with runtime.db.session() as session:
        row = queries.get_file(session, principal, file_id)

    def body(start: int, end: int) -> Iterator[bytes]:
        return runtime.archive.read_range(row.sha256, start, end)

    return ranged_response(
        size=row.size,
        etag=row.sha256,
        filename=row.name,
        media_type=row.mimetype,
        body=body,
        conditions=conditions,
    )
