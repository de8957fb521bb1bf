"""The events a cart's outcome records in the outbox (and its requesters are sent)."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from conveyor.db.models import Cart, CartRequester
from conveyor.events.outbox import Event, record_event
from conveyor.observability import metrics

CART_READY = "org.conveyor.cart.ready"
CART_FAILED = "org.conveyor.cart.failed"


def cart_event(session: Session, cart: Cart, kind: str) -> Event:
    """The CloudEvent of a cart's outcome, naming every requester."""
    requesters = session.scalars(
        select(CartRequester.user).where(CartRequester.cart_id == cart.id)
    ).all()
    return Event(
        type=kind,
        source="/api/v1/carts",
        subject=f"carts/{cart.id}",
        owner=cart.owner,
        data={
            "id": cart.id,
            "status": cart.state,
            "format": cart.format,
            "mode": cart.mode,
            "file_count": cart.file_count,
            "bytes_total": cart.total_size,
            "etag": cart.etag,
            "error": cart.error,
            "item_errors": cart.item_errors[:10],
            "requesters": sorted(requesters),
            "bundle": f"/api/v1/carts/{cart.id}/bundle",
        },
    )


def record_failure(session: Session, cart: Cart) -> None:
    """Count a cart that ended in error and record its event, in the caller's transaction."""
    metrics.CARTS_FINISHED.labels(mode=cart.mode, status="error").inc()
    record_event(session, cart_event(session, cart, CART_FAILED))
