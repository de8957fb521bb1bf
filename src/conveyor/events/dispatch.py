"""The dispatcher: outbox events → deliveries (fan-out), and deliveries → targets (send).

Both steps take their rows under a lease (``SKIP LOCKED`` where the database has it), so
any number of dispatchers can run, in the server and in workers, and a killed one loses
nothing: its claimed deliveries come due again when the lease ends. Delivery is
at-least-once; the event id travels with every attempt as the receiver's idempotency key.

A failed send is retried with exponential backoff and jitter until the attempts or the
age run out, then the delivery is dead-lettered (and that is an event too). Failures in a
row open a subscription's circuit breaker: no sends for a cool-down that grows with each
trip, then a single probe; one success closes it and makes the subscription's waiting
deliveries due. Nothing disables a subscription for good.
"""

from __future__ import annotations

import logging
import random
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, NamedTuple, cast
from urllib.parse import urlsplit

from sqlalchemy import Table, and_, bindparam, func, or_, select, update
from sqlalchemy.orm import Session

from conveyor.db.models import Delivery, OutboxEvent, Subscription
from conveyor.db.notices import listening
from conveyor.db.types import iso_z, utcnow
from conveyor.db.upsert import insert_many_missing
from conveyor.errors import BadRequest
from conveyor.events.filters import EventFilter
from conveyor.events.internal import INTERNAL_TARGETS
from conveyor.events.matching import MatcherSet, matchers
from conveyor.events.outbox import (
    EVENT_COLUMNS,
    EVENTS_RECORDED,
    Event,
    EventRecord,
    record_event,
)
from conveyor.events.shapes import document, encode
from conveyor.events.sinks import EventSink, Outcome, Outgoing, open_sink
from conveyor.events.subscriptions import opened_secrets
from conveyor.events.visibility import Readers
from conveyor.observability import metrics
from conveyor.secrets import SecretError

if TYPE_CHECKING:
    from conveyor.config import Settings
    from conveyor.runtime import Runtime

log = logging.getLogger(__name__)

PENDING, DELIVERING, DELIVERED, DEAD = "pending", "delivering", "delivered", "dead"
DEAD_LETTERED = "org.conveyor.delivery.dead_lettered"
FAN_OUT_BATCH = 200
SEND_BATCH = 200
INSERT_CHUNK = 1000
HISTORY_KEPT = 10
# How long a target host's policy check is trusted before it is checked (and resolved) again.
POLICY_CHECK_SECONDS = 30.0
# Idle dispatchers look for work this often; commits in this process wake them at once.
POLL_SECONDS = 1.0
# Sender loops per dispatcher (each claims, sends and records its own batches).
SENDERS = 2


class HeldDelivery(NamedTuple):
    """The delivery's own state, as claimed."""

    id: int
    attempts: int
    history: list[dict[str, Any]]
    created_at: datetime
    next_attempt_at: datetime


class Target(NamedTuple):
    """What a send needs of the delivery's subscription."""

    id: str
    name: str
    owner: str
    target_url: str
    shape: str
    content_mode: str
    extensions: dict[str, Any]
    secret_sealed: str
    auth_sealed: str | None
    updated_at: datetime


DELIVERY_COLUMNS = (
    Delivery.id,
    Delivery.attempts,
    Delivery.history,
    Delivery.created_at,
    Delivery.next_attempt_at,
)
TARGET_COLUMNS = (
    Subscription.id,
    Subscription.name,
    Subscription.owner,
    Subscription.target_url,
    Subscription.shape,
    Subscription.content_mode,
    Subscription.extensions,
    Subscription.secret_sealed,
    Subscription.auth_sealed,
    Subscription.updated_at,
)


@dataclass
class Claimed:
    """A delivery this dispatcher holds, with what it needs to send and record it."""

    delivery: HeldDelivery
    event: EventRecord
    subscription: Target


class Dispatcher:
    """Fans events out and sends deliveries; ``run_once`` for a pass, ``start`` for a loop."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.name = f"dispatcher-{uuid.uuid4().hex[:12]}"
        settings = runtime.settings
        self._pool = ThreadPoolExecutor(settings.delivery_concurrency, thread_name_prefix="send")
        self._sinks: dict[str, EventSink] = {}
        self._sinks_lock = threading.Lock()
        self._filters: dict[tuple[str, datetime], EventFilter | None] = {}
        self._checked_hosts: dict[str, float] = {}
        self._opened: dict[tuple[str, datetime], tuple[str, dict[str, Any] | None]] = {}
        self._matcher_set: MatcherSet | None = None
        self._matcher_version: tuple[int, datetime | None] | None = None
        self._wake = threading.Event()
        self._sends_due = threading.Event()
        self._claiming = threading.Lock()
        self._stop = threading.Event()
        self._listening = ExitStack()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        """Fan out in one thread and send in SENDERS others until :meth:`stop`.

        Two sender loops keep sends in flight while the other records a batch or claims the
        next one, so targets are never idle waiting for the database.
        """
        self._listening.enter_context(listening(EVENTS_RECORDED, self._wake, self._sends_due))
        loops = [(self.fan_out, self._wake), *[(self.deliver_due, self._sends_due)] * SENDERS]
        for number, (work, wake) in enumerate(loops):
            thread = threading.Thread(
                target=self._loop, args=(work, wake), name=f"{self.name}-{number}", daemon=True
            )
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        """Stop the loops, wait for the passes in progress, close every sink."""
        self._stop.set()
        self._wake.set()
        self._sends_due.set()
        self._listening.close()
        for thread in self._threads:
            thread.join()
        self._pool.shutdown(wait=True)
        with self._sinks_lock:
            for sink in self._sinks.values():
                sink.close()
            self._sinks.clear()

    def run_once(self) -> int:
        """One pass: fan out new events, send due deliveries; how many rows it handled."""
        return self.fan_out() + self.deliver_due()

    def _loop(self, work: Callable[[], int], wake: threading.Event) -> None:
        while not self._stop.is_set():
            try:
                handled = work()
            except Exception:  # the database may be briefly away; try again shortly
                log.warning("event dispatch pass failed", exc_info=True)
                handled = 0
            if not handled:
                wake.wait(POLL_SECONDS)
                wake.clear()

    # Fan-out: events to deliveries.

    def fan_out(self, limit: int = FAN_OUT_BATCH) -> int:
        """Match unpublished events against live subscriptions and make their deliveries."""
        with self.runtime.db.session() as session:
            rows = cast(
                list[EventRecord],
                session.execute(
                    select(*EVENT_COLUMNS)
                    .where(OutboxEvent.published_at.is_(None))
                    .order_by(OutboxEvent.time, OutboxEvent.id)
                    .limit(limit)
                    .with_for_update(skip_locked=True)
                ).all(),
            )
            if not rows:
                return 0
            readers = Readers.load(session, self.runtime.settings)
            candidates = self._matchers(session)
            now = utcnow()
            made = [
                {
                    "event_id": row.id,
                    "subscription_id": subscription_id,
                    "state": PENDING,
                    "attempts": 0,
                    "next_attempt_at": now,
                    "last_error": "",
                    "history": [],
                    "created_at": now,
                }
                for row in rows
                for subscription_id in candidates.matching(row, readers)
            ]
            for start in range(0, len(made), INSERT_CHUNK):
                insert_many_missing(session, Delivery, made[start : start + INSERT_CHUNK])
            session.execute(
                update(OutboxEvent)
                .where(OutboxEvent.id.in_([row.id for row in rows]))
                .values(published_at=now)
                .execution_options(synchronize_session=False)
            )
        metrics.EVENTS_PUBLISHED.inc(len(rows))
        if made:
            self._sends_due.set()
        return len(rows)

    def _matchers(self, session: Session) -> MatcherSet:
        """The live subscriptions' matchers, read again only when a subscription changed."""
        live = (Subscription.deleted_at.is_(None), Subscription.paused.is_(False))
        count, newest = session.execute(
            select(func.count(), func.max(Subscription.updated_at)).where(*live)
        ).one()
        if self._matcher_set is None or self._matcher_version != (count, newest):
            subscriptions = list(session.scalars(select(Subscription).where(*live)))
            versions = {(row.id, row.updated_at) for row in subscriptions}
            # Forget what earlier versions of the subscriptions needed.
            self._filters = {k: v for k, v in self._filters.items() if k in versions}
            self._opened = {k: v for k, v in self._opened.items() if k in versions}
            self._matcher_set = matchers(subscriptions, self._filters)
            self._matcher_version = (count, newest)
        return self._matcher_set

    # Sending: deliveries to targets.

    def deliver_due(self, limit: int = SEND_BATCH) -> int:
        """Claim due deliveries, send them at once, record each outcome; how many were sent."""
        # This process's sender loops claim one at a time, so each gets a batch of its own.
        with self._claiming:
            claimed = self._claim(limit)
        if not claimed:
            return 0
        outcomes = list(self._pool.map(self._send, claimed))
        self._record(claimed, outcomes)
        return len(claimed)

    def _claim(self, limit: int) -> list[Claimed]:
        now = utcnow()
        due = or_(
            and_(Delivery.state == PENDING, Delivery.next_attempt_at <= now),
            and_(Delivery.state == DELIVERING, Delivery.lease_expires_at < now),
        )
        with self.runtime.db.session() as session:
            candidates = session.execute(
                select(Delivery.id, Delivery.subscription_id, Subscription.circuit_open_until)
                .join(Subscription, Subscription.id == Delivery.subscription_id)
                .where(
                    due,
                    Subscription.deleted_at.is_(None),
                    Subscription.paused.is_(False),
                    or_(
                        Subscription.circuit_open_until.is_(None),
                        Subscription.circuit_open_until <= now,
                    ),
                )
                .order_by(Delivery.next_attempt_at, Delivery.id)
                .limit(limit)
                .with_for_update(skip_locked=True, of=Delivery)
            ).all()
            wanted = _one_probe_per_half_open(candidates)
            if not wanted:
                return []
            session.execute(
                update(Delivery)
                .where(Delivery.id.in_(wanted), due)
                .values(
                    state=DELIVERING,
                    lease_owner=self.name,
                    lease_expires_at=now + timedelta(seconds=self._lease_seconds()),
                )
                .execution_options(synchronize_session=False)
            )
        held = len(DELIVERY_COLUMNS)
        events = held + len(EVENT_COLUMNS)
        with self.runtime.db.session() as session:
            rows = session.execute(
                select(*DELIVERY_COLUMNS, *EVENT_COLUMNS, *TARGET_COLUMNS)
                .join(OutboxEvent, OutboxEvent.id == Delivery.event_id)
                .join(Subscription, Subscription.id == Delivery.subscription_id)
                .where(Delivery.id.in_(wanted), Delivery.lease_owner == self.name)
            ).all()
        return [
            Claimed(
                HeldDelivery(*row[:held]),
                cast(EventRecord, _EventRow(*row[held:events])),
                Target(*row[events:]),
            )
            for row in rows
        ]

    def _lease_seconds(self) -> float:
        """Long enough for a send (its timeout) to finish before the lease can be taken."""
        settings = self.runtime.settings
        return max(settings.lease_seconds, 3 * settings.delivery_timeout_seconds)

    def _secrets(self, target: Target) -> tuple[str, dict[str, Any] | None]:
        """The subscription's opened secret and credentials, opened once per version."""
        key = (target.id, target.updated_at)
        opened = self._opened.get(key)
        if opened is None:
            sealer = self.runtime.sealer
            opened = opened_secrets(target.secret_sealed, target.auth_sealed, sealer)
            self._opened[key] = opened
        return opened

    def _send(self, claimed: Claimed) -> Outcome:
        subscription = claimed.subscription
        started = time.perf_counter()
        internal = INTERNAL_TARGETS.get(urlsplit(subscription.target_url).scheme)
        try:
            if internal is not None:
                outcome = internal(self.runtime, claimed.event, subscription.target_url)
                outcome.extra["seconds"] = time.perf_counter() - started
                return outcome
            secret, auth = self._secrets(subscription)
            self._check_target(subscription.target_url)
            doc = document(claimed.event, subscription.shape, subscription.extensions)
            outgoing = Outgoing(
                event_id=claimed.event.id,
                event_type=claimed.event.type,
                target_url=subscription.target_url,
                message=encode(doc, subscription.shape, subscription.content_mode),
                auth=auth,
                secret=secret,
            )
            outcome = self._sink(subscription.target_url).send(outgoing)
        except (BadRequest, SecretError) as error:
            outcome = Outcome(False, error=str(error))
        except Exception as error:  # a sink bug must fail this delivery, not the whole batch
            log.exception("sending delivery %s failed", claimed.delivery.id)
            outcome = Outcome(False, error=f"{type(error).__name__}: {error}")
        outcome.extra["seconds"] = time.perf_counter() - started
        return outcome

    def _check_target(self, url: str) -> None:
        host = urlsplit(url).hostname or ""
        checked = self._checked_hosts.get(host)
        if checked is not None and time.monotonic() - checked < POLICY_CHECK_SECONDS:
            return
        self.runtime.target_policy.check_host(host, "target")
        self._checked_hosts[host] = time.monotonic()

    def _sink(self, url: str) -> EventSink:
        scheme = urlsplit(url).scheme.lower()
        with self._sinks_lock:
            sink = self._sinks.get(scheme)
            if sink is None:
                sink = open_sink(scheme, self.runtime.settings.delivery_timeout_seconds)
                self._sinks[scheme] = sink
            return sink

    def _record(self, claimed: list[Claimed], outcomes: list[Outcome]) -> None:
        now = utcnow()
        settings = self.runtime.settings
        changes: list[dict[str, Any]] = []
        dead: list[tuple[Claimed, Outcome]] = []
        by_subscription: dict[str, list[Outcome]] = defaultdict(list)
        for item, outcome in zip(claimed, outcomes, strict=True):
            delivery = item.delivery
            attempts = delivery.attempts + 1
            # Every change has the same keys: the batch is one executemany.
            change: dict[str, Any] = {
                "row_id": delivery.id,
                "attempts": attempts,
                "last_status": outcome.status,
                "last_error": outcome.error,
                "history": [*delivery.history, _attempt(now, outcome)][-HISTORY_KEPT:],
                "lease_owner": None,
                "lease_expires_at": None,
                "next_attempt_at": delivery.next_attempt_at,
                "finished_at": None,
            }
            by_subscription[item.subscription.id].append(outcome)
            age = (now - delivery.created_at).total_seconds()
            if outcome.delivered:
                change.update(state=DELIVERED, finished_at=now)
            elif (
                attempts >= settings.delivery_max_attempts
                or age >= settings.delivery_max_age_seconds
            ):
                change.update(state=DEAD, finished_at=now)
                dead.append((item, outcome))
            else:
                wait = max(backoff(attempts, settings), outcome.retry_after or 0.0)
                change.update(state=PENDING, next_attempt_at=now + timedelta(seconds=wait))
            changes.append(change)
            _count(item, outcome, now)
        with self.runtime.db.session() as session:
            table = cast(Table, Delivery.__table__)
            # Only rows this dispatcher still holds: a lease that ran out belongs to another.
            session.execute(
                update(table).where(
                    table.c.id == bindparam("row_id"), table.c.lease_owner == self.name
                ),
                changes,
                execution_options={"synchronize_session": False},
            )
            healthy = [
                subscription_id
                for subscription_id, results in by_subscription.items()
                if any(result.delivered for result in results)
            ]
            _close_circuits(session, healthy, now)
            for subscription_id, results in by_subscription.items():
                if subscription_id not in healthy:
                    self._count_failures(session, subscription_id, results, now)
            for item, outcome in dead:
                if item.event.type != DEAD_LETTERED:
                    record_event(session, dead_letter_event(item, outcome))

    def _count_failures(
        self,
        session: Session,
        subscription_id: str,
        results: list[Outcome],
        now: datetime,
    ) -> None:
        """Add a batch's failures to the breaker; open it when they are too many in a row."""
        settings = self.runtime.settings
        found = session.execute(
            select(
                Subscription.failures, Subscription.circuit_open_until, Subscription.circuit_trips
            ).where(Subscription.id == subscription_id)
        ).one_or_none()
        if found is None:
            return
        failures, open_until, trips = found
        failures += len(results)
        half_open = open_until is not None and open_until <= now
        if half_open or failures >= settings.breaker_failures:
            trips += 1
            cooldown = min(
                settings.breaker_cooldown_seconds * 2 ** (trips - 1),
                settings.breaker_max_cooldown_seconds,
            )
            open_until = now + timedelta(seconds=cooldown)
            log.warning(
                "subscription %s: circuit open until %s after %d failures: %s",
                subscription_id,
                iso_z(open_until),
                failures,
                results[-1].error,
            )
        session.execute(
            update(Subscription)
            .where(Subscription.id == subscription_id)
            .values(
                failures=failures,
                circuit_open_until=open_until,
                circuit_trips=trips,
                last_error=results[-1].error,
                updated_at=Subscription.updated_at,
            )
            .execution_options(synchronize_session=False)
        )


class _EventRow(NamedTuple):
    """An event selected with EVENT_COLUMNS."""

    id: str
    type: str
    source: str
    subject: str | None
    time: datetime
    data: Any
    owner: str | None
    project: str | None
    extensions: dict[str, Any]


def _close_circuits(session: Session, subscription_ids: list[str], now: datetime) -> None:
    """One success closes a circuit and forgets the failures.

    A target that was failing is back: its waiting deliveries are made due now instead of
    each sitting out its own backoff, so the backlog drains at once.
    """
    if not subscription_ids:
        return
    recovering = list(
        session.scalars(
            select(Subscription.id).where(
                Subscription.id.in_(subscription_ids),
                or_(Subscription.failures != 0, Subscription.circuit_open_until.is_not(None)),
            )
        )
    )
    if not recovering:
        return
    session.execute(
        update(Subscription)
        .where(Subscription.id.in_(recovering))
        .values(
            failures=0,
            circuit_open_until=None,
            circuit_trips=0,
            last_error="",
            # Breaker state is not a change of the subscription: its version stays.
            updated_at=Subscription.updated_at,
        )
        .execution_options(synchronize_session=False)
    )
    session.execute(
        update(Delivery)
        .where(
            Delivery.subscription_id.in_(recovering),
            Delivery.state == PENDING,
            Delivery.next_attempt_at > now,
        )
        .values(next_attempt_at=now)
        .execution_options(synchronize_session=False)
    )


def backoff(attempts: int, settings: Settings) -> float:
    """Seconds before attempt ``attempts + 1``: doubling from the base, capped, half jittered."""
    ceiling = float(
        min(
            settings.delivery_backoff_max_seconds,
            settings.delivery_backoff_seconds * 2 ** (attempts - 1),
        )
    )
    return ceiling / 2 + random.uniform(0, ceiling / 2)  # noqa: S311 - jitter, not a secret


def dead_letter_event(item: Claimed, outcome: Outcome) -> Event:
    """The event that says a delivery was given up on, for its subscription's owner."""
    delivery = item.delivery
    return Event(
        type=DEAD_LETTERED,
        source="/api/v1/subscriptions",
        subject=f"deliveries/{delivery.id}",
        owner=item.subscription.owner,
        data={
            "delivery": delivery.id,
            "event_id": item.event.id,
            "event_type": item.event.type,
            "subscription": item.subscription.id,
            "subscription_name": item.subscription.name,
            "attempts": delivery.attempts + 1,
            "last_status": outcome.status,
            "last_error": outcome.error,
        },
    )


def _attempt(now: datetime, outcome: Outcome) -> dict[str, Any]:
    return {
        "at": iso_z(now),
        "delivered": outcome.delivered,
        "status": outcome.status,
        "error": outcome.error,
        "excerpt": outcome.excerpt,
        "seconds": round(float(outcome.extra.get("seconds", 0.0)), 4),
    }


def _count(item: Claimed, outcome: Outcome, now: datetime) -> None:
    kind = urlsplit(item.subscription.target_url).scheme
    metrics.DELIVERIES.labels(
        kind=kind, outcome="delivered" if outcome.delivered else "failed"
    ).inc()
    if outcome.delivered:
        metrics.DELIVERY_LATENCY.observe(max(0.0, (now - item.event.time).total_seconds()))


def _one_probe_per_half_open(candidates: Iterable[Any]) -> list[int]:
    """The delivery ids to take: all of a closed circuit's, one of each half-open circuit's."""
    taken: list[int] = []
    probing: set[str] = set()
    for delivery_id, subscription_id, open_until in candidates:
        if open_until is not None:
            if subscription_id in probing:
                continue
            probing.add(subscription_id)
        taken.append(delivery_id)
    return taken


def dispatch_until_idle(runtime: Runtime, rounds: int = 100) -> int:
    """Run passes until one handles nothing (tests and one-shot tools); the rows handled."""
    dispatcher = Dispatcher(runtime)
    try:
        total = 0
        for _ in range(rounds):
            handled = dispatcher.run_once()
            total += handled
            if not handled:
                break
        return total
    finally:
        dispatcher.stop()
