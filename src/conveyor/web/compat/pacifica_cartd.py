"""``/pacifica/cartd``: the published Pacifica cartd contract, unchanged for its clients."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated

from anyio import to_thread
from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import BaseModel, Field, StrictBool, StrictInt, TypeAdapter, ValidationError

from conveyor.carts import pacifica, service, states
from conveyor.carts.paths import BadBundlePath, bundle_path
from conveyor.carts.status import uid_state
from conveyor.errors import BadRequest, ConveyorError, NotFound
from conveyor.web.cart_bundles import bundle_response
from conveyor.web.deps import PrincipalDep, RuntimeDep
from conveyor.web.ranges import ConditionsDep
from conveyor.web.uploads import read_limited

router = APIRouter(prefix="/pacifica/cartd", tags=["pacifica cartd"])
MAX_REQUEST_BYTES = 256 * 1024 * 1024
NOT_READY = "The cart is not ready for download."
NO_CART = "The cart does not exist or has already been deleted"


class UnsupportedMediaType(ConveyorError):
    """The request body is not of a type this endpoint reads."""

    status = 415
    title = "Unsupported Media Type"


class CartdFileModel(BaseModel):
    """One file of a cartd request; all four keys are required, as the published schema says."""

    id: StrictInt | str
    path: str = Field(max_length=4096)
    hashtype: str = Field(max_length=32)
    hashsum: str = Field(max_length=256)


class CartdRequest(BaseModel):
    """A cartd request body."""

    fileids: list[CartdFileModel] = Field(max_length=1_000_000)
    bundle: StrictBool = False


REQUEST = TypeAdapter(CartdRequest)


@router.get("/", summary="Service status")
def root() -> dict[str, str]:
    """The published service's greeting."""
    return {"message": "Pacifica Cartd Interface Up and Running"}


@router.head("/", summary="No uid: the published service answers 500")
def head_root() -> Response:
    """Kept from the published service, whose clients may test for it."""
    return Response(
        status_code=500,
        headers={"X-Pacifica-Status": "error", "X-Pacifica-Message": "No cart uid was given"},
    )


def _parse(document: bytes) -> CartdRequest:
    try:
        return REQUEST.validate_python(json.loads(document))
    except json.JSONDecodeError as exc:
        raise BadRequest(f"the body is not JSON: {exc}") from None
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first.get("loc", ()))
        raise BadRequest(f"{where or 'body'}: {first.get('msg', 'invalid')}") from None


@router.post("/{uid}", summary="Ask for a cart under a uid", status_code=201)
async def post_cart(
    uid: str, request: Request, runtime: RuntimeDep, principal: PrincipalDep
) -> JSONResponse:
    """Accept the request; files are checked and the cart made ready in the background."""
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
        raise UnsupportedMediaType("the body must be JSON (Content-Type: application/json)")
    body = _parse(await read_limited(request, MAX_REQUEST_BYTES))
    files = [
        pacifica.CartdFile(str(item.id), item.path, item.hashtype, item.hashsum)
        for item in body.fileids
    ]

    def create() -> list[int]:
        with runtime.db.session() as session:
            source = runtime.settings.pacifica_archive_url or None
            return pacifica.request_cart(session, principal, uid, files, body.bundle, source).jobs

    for job_id in await to_thread.run_sync(create):
        await to_thread.run_sync(runtime.submit, job_id)
    return JSONResponse({"message": "Cart Processing has begun"}, status_code=201)


@router.head("/{uid}", summary="A cart's status in X-Pacifica-Status")
def head_cart(uid: str, runtime: RuntimeDep, principal: PrincipalDep) -> Response:
    """204 while staging or ready, 500 in error, 404 unknown: the published answers."""
    found = uid_state(runtime.db, principal, uid)
    if found is None:
        status, message, code = "error", f"No cart with uid {uid} found", 404
    else:
        status = pacifica.published_status(found[0])
        message = found[1] if status == states.ERROR else ""
        code = 500 if status == states.ERROR else 204
    # Header values are one line: a multi-line error would break the response.
    flat = " ".join(message.split())
    return Response(
        status_code=code, headers={"X-Pacifica-Status": status, "X-Pacifica-Message": flat}
    )


def _prefix(filename: str) -> str:
    # The published service strips ".tar" wherever it appears, then uses the rest as the folder.
    folder = filename.replace(".tar", "")
    if not folder:
        return ""
    try:
        return bundle_path(folder)
    except BadBundlePath as exc:
        raise BadRequest(f"filename {filename!r} cannot name the bundle's folder: {exc}") from None


@router.get("/{uid}", summary="Download a ready cart as a tar")
def get_cart(
    uid: str,
    runtime: RuntimeDep,
    principal: PrincipalDep,
    conditions: ConditionsDep,
    filename: Annotated[str | None, Query(max_length=255)] = None,
) -> Response:
    """202 while it is not ready; then the tar, with exact length and Range."""
    name = filename or datetime.now(UTC).strftime("data_%Y_%m_%d_%H_%M_%S.tar")
    with runtime.db.session() as session:
        found = pacifica.cart_of(session, principal, uid)
        if found is None:
            raise NotFound(NO_CART)
        cart, bundle = found
        restage = service.restage_if_evicted(session, cart)
        if restage is None and cart.state not in states.IN_PROGRESS:
            prefix = "" if bundle else _prefix(name)
            return bundle_response(session, runtime, cart, name, conditions, prefix)
    if restage is not None:
        runtime.submit(restage)
    return PlainTextResponse(NOT_READY, status_code=202)


@router.delete("/{uid}", summary="Delete a cart")
def delete_cart(uid: str, runtime: RuntimeDep, principal: PrincipalDep) -> dict[str, str]:
    """Forget the uid; the cart goes once nobody else wants it."""
    with runtime.db.session() as session:
        if not pacifica.forget(session, runtime.bundles, principal, uid):
            raise NotFound("Not Found")
    return {"message": "Cart Deleted Successfully"}
