"""Native carts API: ask for files as one tar or zip, follow it, download it with Range."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, Field

from conveyor.carts import notify, service, states, status
from conveyor.errors import Conflict
from conveyor.web.cart_bundles import bundle_response
from conveyor.web.deps import PrincipalDep, RuntimeDep
from conveyor.web.ranges import ConditionsDep
from conveyor.web.views import cart_view

router = APIRouter(prefix="/api/v1/carts", tags=["carts"])
MAX_FILES = 1_000_000


class CartFile(BaseModel):
    """A file to put in the bundle, optionally at another path than its own."""

    id: int = Field(ge=1)
    path: str | None = Field(None, max_length=4096)


class CartRequest(BaseModel):
    """Files (and whole transactions) to bundle, and how."""

    files: list[CartFile] = Field(default_factory=list, max_length=MAX_FILES)
    transactions: list[int] = Field(default_factory=list, max_length=10_000)
    format: Literal["tar", "zip"] = "tar"
    mode: Literal["stream", "build"] | None = Field(
        None, description="stream from the archive, or build once and keep; default per server"
    )
    compression: Literal["stored", "deflate"] = Field(
        "stored", description="zip only; a deflated zip is always built"
    )
    idempotency_key: str | None = Field(None, min_length=1, max_length=255)
    notify_url: str | None = Field(
        None,
        max_length=2048,
        description="where to POST a CloudEvent (structured JSON) when the cart is ready or fails",
    )


@router.post("", summary="Ask for a cart", status_code=201)
def create_cart(body: CartRequest, runtime: RuntimeDep, principal: PrincipalDep) -> JSONResponse:
    """One cart per identical request: 201 when new, 200 when joined (or an idempotent replay).

    A stream cart is ready at once; a built one (or a deflated zip) is staged and written by
    a job, and its status says how far it is.
    """
    requested = [service.RequestedFile(item.id, item.path) for item in body.files]
    mode = body.mode or ("build" if body.compression == "deflate" else runtime.settings.cart_mode)
    options = service.CartOptions(body.format, mode, body.compression)
    requester = service.Requester(principal.user)
    if body.notify_url:
        requester = service.Requester(
            principal.user,
            notify.WEBHOOK,
            runtime.target_policy.check_url(body.notify_url, "notify_url"),
        )
    with runtime.db.session() as session:
        items = service.resolve_items(session, principal, requested, body.transactions)
        outcome = service.create_or_join(
            session, principal, options, items, body.idempotency_key, requester
        )
        cart = outcome.cart
        if outcome.created and cart.state == states.READY:
            service.settle_stream(session, runtime, cart)
        cart_id = cart.id
        view = cart_view(cart)
    for job_id in outcome.jobs:
        runtime.submit(job_id)
    if outcome.jobs:
        with runtime.db.session() as session:
            view = cart_view(service.visible_cart(session, principal, cart_id))
    return JSONResponse(view, status_code=201 if outcome.created else 200)


@router.get("/{cart_id}", summary="A cart's status")
def get_cart(cart_id: int, runtime: RuntimeDep, principal: PrincipalDep) -> JSONResponse:
    """Status, bytes done and total, and a readable error per failed file."""
    # A JSONResponse skips FastAPI's response validation: clients poll this endpoint.
    return JSONResponse(cart_view(status.cart_row(runtime.db, principal, cart_id)))


@router.delete("/{cart_id}", summary="Withdraw a cart", status_code=204)
def delete_cart(cart_id: int, runtime: RuntimeDep, principal: PrincipalDep) -> Response:
    """Withdraw your request; the cart is deleted once nobody else wants it."""
    with runtime.db.session() as session:
        service.remove(session, runtime.bundles, principal, cart_id)
    return Response(status_code=204)


@router.get(
    "/{cart_id}/bundle",
    summary="Download the bundle (HTTP Range supported)",
    response_class=StreamingResponse,
)
def get_bundle(
    cart_id: int,
    runtime: RuntimeDep,
    principal: PrincipalDep,
    conditions: ConditionsDep,
) -> Response:
    """The bundle with exact length and ETag; one byte range answers 206."""
    with runtime.db.session() as session:
        cart = service.visible_cart(session, principal, cart_id)
        restage = service.restage_if_evicted(session, cart)
        if restage is None:
            name = f"cart-{cart.id}.{cart.format}"
            return bundle_response(session, runtime, cart, name, conditions)
    runtime.submit(restage)
    raise Conflict(
        f"cart {cart_id} is being staged again: its files left the input cache",
        {"Retry-After": "5"},
    )
