"""Reading events and deliveries, and replaying them.

Replaying a delivery (a dead letter, say) sends it again from its first attempt. Replaying
an event matches it again against the caller's live subscriptions (or one named one) and
sends it to each that matches, whether or not it was sent there before.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from conveyor.auth.principal import Principal
from conveyor.config import Settings
from conveyor.db.models import Delivery, OutboxEvent, Subscription
from conveyor.db.notices import note
from conveyor.db.types import iso_z, utcnow
from conveyor.db.upsert import insert_missing
from conveyor.errors import BadRequest, NotFound
from conveyor.events.dispatch import PENDING
from conveyor.events.matching import FilterCache, matchers
from conveyor.events.outbox import EVENTS_RECORDED
from conveyor.events.shapes import cloudevent
from conveyor.events.visibility import Readers, readable_events

DELIVERY_STATES = ("pending", "delivering", "delivered", "dead", "cancelled")
MAX_PAGE = 1000


def list_events(
    session: Session,
    principal: Principal,
    *,
    after: str | None,
    limit: int,
    event_type: str | None = None,
) -> list[OutboxEvent]:
    """Events the principal may read, oldest first, after the event ``after``."""
    query = readable_events(select(OutboxEvent), principal)
    if event_type:
        query = query.where(OutboxEvent.type == event_type)
    if after is not None:
        anchor = session.scalars(
            readable_events(select(OutboxEvent), principal).where(OutboxEvent.id == after)
        ).first()
        if anchor is None:
            raise BadRequest(f"after: no event {after}")
        query = query.where(
            (OutboxEvent.time > anchor.time)
            | ((OutboxEvent.time == anchor.time) & (OutboxEvent.id > anchor.id))
        )
    query = query.order_by(OutboxEvent.time, OutboxEvent.id).limit(min(limit, MAX_PAGE))
    return list(session.scalars(query))


def visible_event(session: Session, principal: Principal, event_id: str) -> OutboxEvent:
    """The event, if the principal may read it; NotFound otherwise."""
    row = session.scalars(
        readable_events(select(OutboxEvent), principal).where(OutboxEvent.id == event_id)
    ).first()
    if row is None:
        raise NotFound(f"no event {event_id}")
    return row


def event_view(row: OutboxEvent) -> dict[str, Any]:
    """The event as CloudEvents 1.0, and when it was matched against the subscriptions."""
    return {**cloudevent(row), "published_at": iso_z(row.published_at)}


def list_deliveries(
    session: Session,
    principal: Principal,
    *,
    subscription_id: str | None = None,
    event_id: str | None = None,
    state: str | None = None,
    after: int | None = None,
    limit: int = 100,
) -> list[tuple[Delivery, Subscription]]:
    """Deliveries of the principal's subscriptions (an admin's: all), oldest first."""
    if state is not None and state not in DELIVERY_STATES:
        raise BadRequest(f"state must be one of {', '.join(DELIVERY_STATES)}")
    query = select(Delivery, Subscription).join(
        Subscription, Subscription.id == Delivery.subscription_id
    )
    if not principal.admin:
        query = query.where(Subscription.owner == principal.user)
    if subscription_id is not None:
        query = query.where(Delivery.subscription_id == subscription_id)
    if event_id is not None:
        query = query.where(Delivery.event_id == event_id)
    if state is not None:
        query = query.where(Delivery.state == state)
    if after is not None:
        query = query.where(Delivery.id > after)
    rows = session.execute(query.order_by(Delivery.id).limit(min(limit, MAX_PAGE))).all()
    return [(delivery, subscription) for delivery, subscription in rows]


def visible_delivery(
    session: Session, principal: Principal, delivery_id: int
) -> tuple[Delivery, Subscription]:
    """The delivery, if it is of the principal's subscription (or they are admin)."""
    found = session.execute(
        select(Delivery, Subscription)
        .join(Subscription, Subscription.id == Delivery.subscription_id)
        .where(Delivery.id == delivery_id)
    ).one_or_none()
    if found is None or not principal.may_see(found[1].owner):
        raise NotFound(f"no delivery {delivery_id}")
    return found[0], found[1]


def delivery_view(delivery: Delivery, subscription: Subscription) -> dict[str, Any]:
    """A delivery with its attempts (status codes, errors and answer excerpts)."""
    return {
        "id": delivery.id,
        "event_id": delivery.event_id,
        "subscription": subscription.id,
        "subscription_name": subscription.name,
        "target": subscription.target_url,
        "state": delivery.state,
        "attempts": delivery.attempts,
        "next_attempt_at": iso_z(delivery.next_attempt_at) if delivery.state == PENDING else None,
        "last_status": delivery.last_status,
        "last_error": delivery.last_error or None,
        "history": delivery.history,
        "created_at": iso_z(delivery.created_at),
        "finished_at": iso_z(delivery.finished_at),
    }


def replay_delivery(session: Session, delivery: Delivery, subscription: Subscription) -> None:
    """Send the delivery again, from a first attempt."""
    if subscription.deleted_at is not None:
        raise BadRequest("the delivery's subscription was deleted; it cannot be replayed")
    _reset(session, [delivery.id], utcnow())


def replay_event(
    session: Session,
    principal: Principal,
    settings: Settings,
    row: OutboxEvent,
    subscription_id: str | None = None,
) -> list[int]:
    """Deliver the event again to each matching live subscription of the caller's.

    With ``subscription_id``, only to that one (which must be the caller's, or the caller
    an admin). The ids of the deliveries that will be made.
    """
    query = select(Subscription).where(Subscription.deleted_at.is_(None))
    if subscription_id is not None:
        query = query.where(Subscription.id == subscription_id)
    if subscription_id is None or not principal.admin:
        query = query.where(Subscription.owner == principal.user)
    subscriptions = list(session.scalars(query))
    if subscription_id is not None and not subscriptions:
        raise NotFound(f"no subscription {subscription_id}")
    readers = Readers.load(session, settings)
    filters: FilterCache = {}
    chosen = set(matchers(subscriptions, filters).matching(row, readers))
    matching = [s for s in subscriptions if s.id in chosen]
    now = utcnow()
    for subscription in matching:
        insert_missing(
            session,
            Delivery,
            event_id=row.id,
            subscription_id=subscription.id,
            state=PENDING,
            attempts=0,
            next_attempt_at=now,
            last_error="",
            history=[],
            created_at=now,
        )
    ids = list(
        session.scalars(
            select(Delivery.id).where(
                Delivery.event_id == row.id,
                Delivery.subscription_id.in_([s.id for s in matching]),
            )
        )
    )
    _reset(session, ids, now)
    return ids


def _reset(session: Session, ids: list[int], now: datetime) -> None:
    if not ids:
        return
    session.execute(
        update(Delivery)
        .where(Delivery.id.in_(ids))
        .values(
            state=PENDING,
            attempts=0,
            next_attempt_at=now,
            created_at=now,
            finished_at=None,
            lease_owner=None,
            lease_expires_at=None,
        )
        .execution_options(synchronize_session=False)
    )
    # Wake this process's dispatchers when the reset commits.
    note(session, EVENTS_RECORDED)
