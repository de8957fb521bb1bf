"""Answering a download of a cart's bundle: streamed from the archive, or from the bundle store."""

from __future__ import annotations

import functools

from sqlalchemy.orm import Session
from starlette.responses import Response

from conveyor.carts import service, states
from conveyor.db.models import Cart
from conveyor.errors import Conflict, NotFound
from conveyor.runtime import Runtime
from conveyor.web.ranges import Conditions, ranged_response

RETRY_AFTER_SECONDS = "5"
MEDIA_TYPES = {"tar": "application/x-tar", "zip": "application/zip"}


def bundle_response(
    session: Session,
    runtime: Runtime,
    cart: Cart,
    filename: str,
    conditions: Conditions,
    prefix: str = "",
) -> Response:
    """The cart's bundle with exact length, ETag and Range; 409 while it is not ready.

    ``prefix`` (stream carts only) puts every member under one folder.
    """
    if cart.state == states.ERROR:
        raise Conflict(f"cart {cart.id} failed: {cart.error}")
    if cart.state != states.READY:
        raise Conflict(
            f"cart {cart.id} is not ready yet ({cart.state})",
            {"Retry-After": RETRY_AFTER_SECONDS},
        )
    if cart.mode == "stream":
        layout = service.layout_of(session, runtime, cart, prefix)
        return ranged_response(
            size=layout.size,
            etag=layout.etag,
            filename=filename,
            media_type=layout.media_type,
            body=layout.chunks,
            conditions=conditions,
        )
    key = cart.bundle_key or ""
    size = runtime.bundles.size(key) if key else None
    if size is None:
        raise NotFound(f"the bundle of cart {cart.id} is gone from the bundle store")

    return ranged_response(
        size=size,
        etag=cart.etag or key,
        filename=filename,
        media_type=MEDIA_TYPES.get(cart.format, "application/octet-stream"),
        body=functools.partial(runtime.bundles.read_range, key),
        conditions=conditions,
    )
