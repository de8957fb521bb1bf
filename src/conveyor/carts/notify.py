"""Telling every requester a cart's outcome: a CloudEvent webhook, or MoTrPAC's protobuf.

A ``cart notify`` job is queued in the same commit that finishes the cart (or that adds a
requester to a finished one). It sends to each requester not yet told, records each success
at once, and retries the rest with backoff: a requester is told once per outcome, and a
receiver that was down hears when it is back. Any answer but 2xx is a failure.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

import httpx
from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from conveyor.carts import states
from conveyor.carts.events import CART_FAILED, CART_READY
from conveyor.carts.motrpac_messages import Requester as MotrpacRequester
from conveyor.carts.motrpac_messages import encode_notification
from conveyor.db.models import Cart, CartItem, CartRequester, OutboxEvent
from conveyor.db.types import utcnow
from conveyor.errors import BadRequest
from conveyor.events.shapes import cloudevent
from conveyor.jobs import service as jobs
from conveyor.jobs import states as job_states
from conveyor.jobs.context import JobContext
from conveyor.jobs.errors import RetryLater
from conveyor.jobs.registry import job_handler
from conveyor.observability import metrics

log = logging.getLogger(__name__)

KIND_CART_NOTIFY = "cart notify"
WEBHOOK = "webhook"
MOTRPAC = "motrpac"
TIMEOUT_SECONDS = 30.0
# Longer than one send can take (connect and read timeouts), so a claim outlives its send.
CLAIM_SECONDS = 4 * TIMEOUT_SECONDS


def queue_notifications(session: Session, cart: Cart) -> int | None:
    """Queue a job telling the cart's untold requesters its outcome; its id, if one is needed."""
    waiting = session.scalar(
        select(CartRequester.user).where(
            CartRequester.cart_id == cart.id,
            CartRequester.notify_kind.is_not(None),
            CartRequester.notified_at.is_(None),
        )
    )
    if waiting is None:
        return None
    return jobs.create_job(session, KIND_CART_NOTIFY, cart.owner, {"cart_id": cart.id}).id


@job_handler(KIND_CART_NOTIFY)
def run_cart_notify(context: JobContext) -> None:
    """Send the cart's outcome to each requester not yet told; retry those that failed."""
    cart_id = int(context.payload["cart_id"])
    with context.runtime.db.session() as session:
        cart = session.get(Cart, cart_id)
        pending = _pending(session, cart_id) if cart is not None else []
        message = _outcome_of(session, cart) if cart is not None else None
    failures: list[str] = []
    with httpx.Client(timeout=TIMEOUT_SECONDS, follow_redirects=False) as client:
        for requester in pending:
            context.check_lease()
            # Another notify job of this cart may be sending to the same requester.
            if not _claim(context, cart_id, requester["user"]):
                continue
            try:
                sent = _send(context, client, requester, message)
            except (httpx.HTTPError, NotifyFailed, BadRequest) as exc:
                failures.append(f"{requester['user']}: {exc}")
                metrics.CART_NOTIFICATIONS.labels(kind=requester["kind"], outcome="failed").inc()
                sent = False
            if sent:
                metrics.CART_NOTIFICATIONS.labels(kind=requester["kind"], outcome="sent").inc()
            _settle(context, cart_id, requester["user"], told=sent)
    if failures:
        raise RetryLater(f"{len(failures)} notification(s) failed; first: {failures[0]}")
    with context.runtime.db.session() as session:
        jobs.finish(session, context.job_id, job_states.SUCCEEDED, task="notified", percent=100)


class NotifyFailed(Exception):
    """A receiver answered, but not with success."""


def _pending(session: Session, cart_id: int) -> list[dict[str, Any]]:
    rows = session.scalars(
        select(CartRequester).where(
            CartRequester.cart_id == cart_id,
            CartRequester.notify_kind.is_not(None),
            CartRequester.notified_at.is_(None),
        )
    )
    return [
        {
            "user": row.user,
            "kind": row.notify_kind,
            "url": row.notify_url,
            "email": row.email or "",
            "name": row.name or "",
            "id": row.external_id,
        }
        for row in rows
    ]


def _outcome_of(session: Session, cart: Cart) -> dict[str, Any]:
    """What every requester is told: the cart's event, and (for MoTrPAC) its zip and files."""
    kind = CART_READY if cart.state == states.READY else CART_FAILED
    event = session.scalars(
        select(OutboxEvent)
        .where(OutboxEvent.subject == f"carts/{cart.id}", OutboxEvent.type == kind)
        .order_by(OutboxEvent.time.desc())
        .limit(1)
    ).first()
    paths = session.scalars(select(CartItem.path).where(CartItem.cart_id == cart.id))
    files = sorted([*paths, *(str(item.get("path")) for item in cart.missing)])
    return {
        "ready": cart.state == states.READY,
        "event": cloudevent(event) if event is not None else None,
        "zipfile": (cart.bundle_key or "").rsplit("/", 1)[-1],
        "files": files,
    }


def _send(
    context: JobContext,
    client: httpx.Client,
    requester: dict[str, Any],
    message: dict[str, Any] | None,
) -> bool:
    """Send one notification; False when there is nothing to send to this requester yet."""
    if message is None or message["event"] is None:
        return False
    if requester["kind"] == WEBHOOK:
        context.runtime.target_policy.check_url(requester["url"], "notify_url")
        answer = client.post(
            requester["url"],
            json=message["event"],
            headers={"Content-Type": "application/cloudevents+json"},
        )
    elif requester["kind"] == MOTRPAC:
        # The zipper tells requesters only of a finished zip; a failed cart waits for a retry.
        url = context.runtime.settings.motrpac_notify_url
        if not url:
            log.warning(
                "cart %s: CONVEYOR_MOTRPAC_NOTIFY_URL is unset; nobody told", context.job_id
            )
            return False
        if not message["ready"]:
            return False
        person = MotrpacRequester(requester["email"], requester["name"], requester["id"])
        body = encode_notification(person, message["zipfile"], message["files"])
        answer = client.post(
            url, content=body, headers={"Content-Type": "application/octet-stream"}
        )
    else:
        return False
    if not answer.is_success:
        raise NotifyFailed(f"{answer.request.url} answered {answer.status_code}")
    return True


def _claim(context: JobContext, cart_id: int, user: str) -> bool:
    """Take the right to tell ``user`` for a while; False if told already or claimed."""
    now = utcnow()
    with context.runtime.db.session() as session:
        taken = session.execute(
            update(CartRequester)
            .where(
                CartRequester.cart_id == cart_id,
                CartRequester.user == user,
                CartRequester.notified_at.is_(None),
                or_(
                    CartRequester.notify_claimed_until.is_(None),
                    CartRequester.notify_claimed_until < now,
                ),
            )
            .values(notify_claimed_until=now + timedelta(seconds=CLAIM_SECONDS))
            .execution_options(synchronize_session=False)
        )
        return bool(taken.rowcount)  # type: ignore[attr-defined]


def _settle(context: JobContext, cart_id: int, user: str, *, told: bool) -> None:
    """Record that ``user`` was told, or free the claim so a retry tells them."""
    values: dict[str, Any] = {"notify_claimed_until": None}
    if told:
        values["notified_at"] = utcnow()
    with context.runtime.db.session() as session:
        session.execute(
            update(CartRequester)
            .where(CartRequester.cart_id == cart_id, CartRequester.user == user)
            .values(**values)
            .execution_options(synchronize_session=False)
        )
    if told:
        log.info("cart %s: told %s", cart_id, user)
