"""``/motrpac``: the MoTrPAC zipper's FileDownloadMessage over HTTP, raw or as a Pub/Sub push."""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from anyio import to_thread
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from conveyor.carts import motrpac
from conveyor.carts.motrpac_messages import BadMessage, decode_download
from conveyor.errors import BadRequest
from conveyor.web.deps import PrincipalDep, RuntimeDep
from conveyor.web.uploads import read_limited

router = APIRouter(prefix="/motrpac", tags=["motrpac"])
MAX_MESSAGE_BYTES = 64 * 1024 * 1024


def _push_payload(document: bytes) -> bytes:
    """The message bytes of a Pub/Sub push envelope (``{"message": {"data": base64}}``)."""
    try:
        envelope = json.loads(document)
        data = envelope["message"]["data"]
        return base64.b64decode(data, validate=True)
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise BadRequest(f"not a Pub/Sub push envelope: {exc!s}") from None
    except (binascii.Error, ValueError):
        raise BadRequest("message.data of the Pub/Sub push envelope is not base64") from None


@router.post("/download", summary="Ask for a zip (FileDownloadMessage)", status_code=202)
async def download(request: Request, runtime: RuntimeDep, principal: PrincipalDep) -> JSONResponse:
    """Record the request (answered once it is durably recorded); the zip is built once.

    The body is the protobuf bytes, or a Pub/Sub push envelope when it is JSON.
    """
    document = await read_limited(request, MAX_MESSAGE_BYTES)
    content_type = request.headers.get("content-type", "").split(";")[0].strip()
    data = _push_payload(document) if content_type == "application/json" else document
    try:
        wanted = decode_download(data)
    except BadMessage as exc:
        raise BadRequest(str(exc)) from None
    project = runtime.settings.motrpac_project or None

    def record() -> tuple[dict[str, Any], list[int]]:
        with runtime.db.session() as session:
            try:
                outcome = motrpac.request_zip(session, principal, runtime.bundles, wanted, project)
            except BadMessage as exc:
                raise BadRequest(str(exc)) from None
            cart = outcome.cart
            return {
                "cart": cart.id,
                "status": cart.state,
                "zipfile": wanted.zipfile,
                "fileHash": wanted.file_hash,
                "missing": [item["path"] for item in cart.missing],
            }, outcome.jobs

    answer, jobs = await to_thread.run_sync(record)
    for job_id in jobs:
        await to_thread.run_sync(runtime.submit, job_id)
    return JSONResponse(answer, status_code=202)
