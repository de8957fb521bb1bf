"""Native events API: subscriptions, the event feed, deliveries and replay."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Response
from pydantic import BaseModel

from conveyor.events import feed
from conveyor.events import subscriptions as subs
from conveyor.web.deps import PrincipalDep, RuntimeDep

router = APIRouter(prefix="/api/v1", tags=["events"])
Limit = Annotated[int, Query(ge=1, le=feed.MAX_PAGE)]


class EventReplay(BaseModel):
    """Which subscription to replay an event to (every matching one of the caller's if unset)."""

    subscription: str | None = None


@router.post("/subscriptions", summary="Subscribe a target to events", status_code=201)
def create_subscription(
    spec: subs.SubscriptionSpec, runtime: RuntimeDep, principal: PrincipalDep
) -> dict[str, Any]:
    """The subscription, with its signing secret: shown this once, keep it."""
    with runtime.db.session() as session:
        row, secret = subs.create(session, principal, spec, runtime.sealer, runtime.target_policy)
        return subs.view(row, runtime.sealer, secret=secret)


@router.get("/subscriptions", summary="List subscriptions")
def list_subscriptions(
    runtime: RuntimeDep,
    principal: PrincipalDep,
    everyone: Annotated[bool, Query(alias="all", description="admins: every user's")] = False,
) -> dict[str, Any]:
    """The caller's subscriptions (no secrets or credentials)."""
    with runtime.db.session() as session:
        rows = subs.listing(session, principal, everyone=everyone)
        return {"subscriptions": [subs.view(row, runtime.sealer) for row in rows]}


@router.get("/subscriptions/{subscription_id}", summary="Show a subscription")
def get_subscription(
    subscription_id: str, runtime: RuntimeDep, principal: PrincipalDep
) -> dict[str, Any]:
    """The subscription and its circuit breaker's state."""
    with runtime.db.session() as session:
        row = subs.visible(session, principal, subscription_id)
        return subs.view(row, runtime.sealer)


@router.patch("/subscriptions/{subscription_id}", summary="Change a subscription")
def patch_subscription(
    subscription_id: str,
    patch: subs.SubscriptionPatch,
    runtime: RuntimeDep,
    principal: PrincipalDep,
) -> dict[str, Any]:
    """Fields left out keep their value; a new target closes the circuit breaker."""
    with runtime.db.session() as session:
        row = subs.visible(session, principal, subscription_id)
        subs.update_subscription(session, row, patch, runtime.sealer, runtime.target_policy)
        return subs.view(row, runtime.sealer)


@router.post("/subscriptions/{subscription_id}/secret", summary="Rotate the signing secret")
def rotate_secret(
    subscription_id: str, runtime: RuntimeDep, principal: PrincipalDep
) -> dict[str, Any]:
    """A new signing secret, shown this once; deliveries from now on are signed with it."""
    with runtime.db.session() as session:
        row = subs.visible(session, principal, subscription_id)
        return {"id": row.id, "secret": subs.rotate_secret(row, runtime.sealer)}


@router.delete("/subscriptions/{subscription_id}", summary="Delete a subscription")
def delete_subscription(
    subscription_id: str, runtime: RuntimeDep, principal: PrincipalDep
) -> Response:
    """Its deliveries not yet made are cancelled; its delivery history stays readable."""
    with runtime.db.session() as session:
        row = subs.visible(session, principal, subscription_id)
        subs.refuse_if_managed(row)
        subs.delete(session, row)
    return Response(status_code=204)


@router.get("/events", summary="List events")
def list_events(
    runtime: RuntimeDep,
    principal: PrincipalDep,
    type: Annotated[str | None, Query(description="only events of this type")] = None,
    after: Annotated[str | None, Query(description="the last event id of the page before")] = None,
    limit: Limit = 100,
) -> dict[str, Any]:
    """Events the caller may read, oldest first, as CloudEvents 1.0."""
    with runtime.db.session() as session:
        rows = feed.list_events(session, principal, after=after, limit=limit, event_type=type)
        events = [feed.event_view(row) for row in rows]
    return {"events": events, "next_after": events[-1]["id"] if len(events) == limit else None}


@router.get("/events/{event_id}", summary="Show an event")
def get_event(event_id: str, runtime: RuntimeDep, principal: PrincipalDep) -> dict[str, Any]:
    """The event as CloudEvents 1.0."""
    with runtime.db.session() as session:
        return feed.event_view(feed.visible_event(session, principal, event_id))


@router.post("/events/{event_id}/replay", summary="Deliver an event again", status_code=202)
def replay_event(
    event_id: str, runtime: RuntimeDep, principal: PrincipalDep, body: EventReplay | None = None
) -> dict[str, Any]:
    """Matched again against the caller's subscriptions; the deliveries that will be made."""
    with runtime.db.session() as session:
        row = feed.visible_event(session, principal, event_id)
        chosen = body.subscription if body else None
        ids = feed.replay_event(session, principal, runtime.settings, row, chosen)
    return {"event_id": event_id, "deliveries": ids}


@router.get("/deliveries", summary="List deliveries")
def list_deliveries(
    runtime: RuntimeDep,
    principal: PrincipalDep,
    subscription: str | None = None,
    event: str | None = None,
    state: Annotated[str | None, Query(description="pending, delivered, dead, …")] = None,
    after: Annotated[
        int | None, Query(description="the last delivery id of the page before")
    ] = None,
    limit: Limit = 100,
) -> dict[str, Any]:
    """Deliveries of the caller's subscriptions, oldest first, with their attempts."""
    with runtime.db.session() as session:
        rows = feed.list_deliveries(
            session,
            principal,
            subscription_id=subscription,
            event_id=event,
            state=state,
            after=after,
            limit=limit,
        )
        shown = [feed.delivery_view(delivery, sub) for delivery, sub in rows]
    return {"deliveries": shown, "next_after": shown[-1]["id"] if len(shown) == limit else None}


@router.get("/deliveries/{delivery_id}", summary="Show a delivery")
def get_delivery(delivery_id: int, runtime: RuntimeDep, principal: PrincipalDep) -> dict[str, Any]:
    """The delivery with its attempts: times, status codes, errors, answer excerpts."""
    with runtime.db.session() as session:
        return feed.delivery_view(*feed.visible_delivery(session, principal, delivery_id))


@router.post("/deliveries/{delivery_id}/replay", summary="Send a delivery again", status_code=202)
def replay_delivery(
    delivery_id: int, runtime: RuntimeDep, principal: PrincipalDep
) -> dict[str, Any]:
    """From a first attempt (a dead letter comes back to life)."""
    with runtime.db.session() as session:
        delivery, subscription = feed.visible_delivery(session, principal, delivery_id)
        feed.replay_delivery(session, delivery, subscription)
    return {"id": delivery_id, "state": "pending"}
