"""Events from commit to receiver: fan-out, retries, the circuit breaker, dead letters, replay.

Every test drives real dispatcher passes against a real loopback webhook receiver.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, update
from standardwebhooks import Webhook

from conveyor.auth.principal import Principal
from conveyor.db.models import Delivery, Subscription
from conveyor.events import subscriptions as subs
from conveyor.events.dispatch import DEAD_LETTERED, Dispatcher
from conveyor.events.outbox import Event, record_event
from conveyor.ingest.policy import add_project, add_user
from conveyor.runtime import Runtime
from conveyor.web.app import create_app
from tests.support.bundles import good_tar
from tests.support.receivers import Receiver, running_receiver

FAST = {
    "delivery_backoff_seconds": 0.05,
    "delivery_backoff_max_seconds": 0.2,
    "breaker_failures": 3,
    "breaker_cooldown_seconds": 0.3,
    "delivery_timeout_seconds": 2.0,
}


@pytest.fixture
def fast_runtime(make_runtime: Callable[..., Runtime]) -> Runtime:
    """An inline runtime whose retries and breaker act within a second."""
    return make_runtime(**FAST)


@pytest.fixture
def api(fast_runtime: Runtime) -> Iterator[TestClient]:
    """The API over the fast runtime."""
    with TestClient(create_app(runtime=fast_runtime)) as test_client:
        yield test_client


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A webhook receiver on loopback."""
    with running_receiver() as running:
        yield running


@pytest.fixture
def dispatcher(fast_runtime: Runtime) -> Iterator[Dispatcher]:
    """A dispatcher driven pass by pass by the test."""
    made = Dispatcher(fast_runtime)
    yield made
    made.stop()


def subscribe(api: TestClient, target: str, **fields: Any) -> dict[str, Any]:
    """Create a subscription through the API; its view, with the signing secret."""
    answer = api.post("/api/v1/subscriptions", json={"name": "test", "target": target, **fields})
    assert answer.status_code == 201, answer.text
    return answer.json()  # type: ignore[no-any-return]


def emit(runtime: Runtime, count: int, **fields: Any) -> list[str]:
    """Record ``count`` events in one commit; their ids."""
    ids = []
    with runtime.db.session() as session:
        for number in range(count):
            event = Event(
                type=fields.get("type", "org.example.test"),
                source="/tests",
                subject=f"things/{number}",
                data={"n": number, **fields.get("data", {})},
                owner=fields.get("owner"),
                project=fields.get("project"),
            )
            record_event(session, event)
            ids.append(event.id)
    return ids


def drain(dispatcher: Dispatcher, until: Callable[[], bool], seconds: float = 15.0) -> None:
    """Run passes until ``until()`` holds (retries come due as time passes)."""
    deadline = time.monotonic() + seconds
    while not until():
        assert time.monotonic() < deadline, "dispatch did not reach the expected state in time"
        if not dispatcher.run_once():
            time.sleep(0.02)


def delivered_ids(receiver: Receiver) -> Counter[str]:
    """How many times each event id was answered 2xx."""
    return Counter(request.headers["webhook-id"] for request in receiver.delivered)


def deliveries(runtime: Runtime) -> list[Delivery]:
    with runtime.db.session() as session:
        rows = list(session.scalars(select(Delivery).order_by(Delivery.id)))
        session.expunge_all()
        return rows


def test_ingest_events_reach_a_webhook_signed_and_in_cloudevents_form(
    api: TestClient, fast_runtime: Runtime, receiver: Receiver, dispatcher: Dispatcher
) -> None:
    sub = subscribe(api, f"{receiver.url}/hook")
    answer = api.post("/api/v1/ingest", content=good_tar(), headers={"Content-Type": "x-tar"})
    assert answer.status_code in (200, 202), answer.text
    drain(dispatcher, lambda: len(receiver.delivered) >= 2)
    kinds = {}
    for request in receiver.delivered:
        Webhook(sub["secret"]).verify(request.body, request.headers)
        event = json.loads(request.body)
        assert request.headers["content-type"] == "application/cloudevents+json"
        assert request.headers["webhook-id"] == event["id"]
        assert event["specversion"] == "1.0"
        kinds[event["type"]] = event
    ingest = kinds["org.pacifica.metadata.ingest"]
    assert ingest["source"] == "/pacifica/metadata/ingest"
    tables = [entry["destinationTable"] for entry in ingest["data"]]
    assert "Transactions.proposal" in tables
    assert tables.count("Files") == 3
    job = kinds["org.conveyor.job.succeeded"]
    assert job["data"]["kind"] == "ingest"
    assert job["data"]["transaction_id"] is not None


def test_binary_mode_and_filters_pick_what_each_subscription_gets(
    api: TestClient, fast_runtime: Runtime, receiver: Receiver, dispatcher: Dispatcher
) -> None:
    subscribe(
        api,
        f"{receiver.url}/odd",
        filter="$[?$.data.n == 1 || $.data.n == 3]",
        content_mode="binary",
    )
    subscribe(api, f"{receiver.url}/typed", types=["org.example.other"])
    subscribe(
        api,
        f"{receiver.url}/pacifica",
        dialect="jsonpath2",
        shape="pacifica",
        filter='$[?(@["eventType"] = "org.example.test")]["data"]',
        extensions={"comExampleExtension": "value"},
    )
    emit(fast_runtime, 4)
    drain(dispatcher, lambda: len(receiver.delivered) >= 6)
    dispatcher.run_once()
    by_path = Counter(request.path for request in receiver.delivered)
    assert by_path == {"/odd": 2, "/pacifica": 4}
    odd = [r for r in receiver.delivered if r.path == "/odd"]
    assert sorted(json.loads(r.body)["n"] for r in odd) == [1, 3]
    assert all(r.headers["ce-type"] == "org.example.test" for r in odd)
    pacifica = json.loads(next(r for r in receiver.delivered if r.path == "/pacifica").body)
    assert pacifica["cloudEventsVersion"] == "0.1"
    assert pacifica["extensions"] == {"comExampleExtension": "value"}


def test_a_receiver_down_for_a_while_gets_every_event_once_when_it_returns(
    api: TestClient, fast_runtime: Runtime, receiver: Receiver, dispatcher: Dispatcher
) -> None:
    subscribe(api, f"{receiver.url}/hook")
    receiver.fail_next(12, status=503)
    ids = emit(fast_runtime, 20)
    drain(dispatcher, lambda: set(delivered_ids(receiver)) == set(ids))
    counts = delivered_ids(receiver)
    assert all(counts[event_id] == 1 for event_id in ids), counts
    failed = [request for request in receiver.requests if not request.succeeded]
    assert len(failed) == 12
    with fast_runtime.db.session() as session:
        row = session.scalars(select(Subscription)).one()
        assert row.failures == 0
        assert row.circuit_open_until is None
    assert all(d.state == "delivered" for d in deliveries(fast_runtime))


def test_the_circuit_opens_after_failures_in_a_row_and_one_probe_closes_it(
    api: TestClient, fast_runtime: Runtime, receiver: Receiver, dispatcher: Dispatcher
) -> None:
    sub = subscribe(api, f"{receiver.url}/hook")
    receiver.status = 500
    emit(fast_runtime, 10)
    drain(dispatcher, lambda: len(receiver.requests) >= 3)
    receiver.status = 204
    circuit = api.get(f"/api/v1/subscriptions/{sub['id']}").json()["circuit"]
    assert circuit["state"] == "open"
    assert circuit["trips"] == 1
    seen = len(receiver.requests)
    dispatcher.run_once()
    assert len(receiver.requests) == seen, "nothing is sent while the circuit is open"
    time.sleep(FAST["breaker_cooldown_seconds"])
    dispatcher.deliver_due()
    assert len(receiver.requests) == seen + 1, "a half-open circuit lets one probe through"
    assert api.get(f"/api/v1/subscriptions/{sub['id']}").json()["circuit"]["state"] == "closed"
    drain(dispatcher, lambda: len(receiver.delivered) == 10)


def test_a_delivery_out_of_attempts_is_dead_lettered_and_can_be_replayed(
    make_runtime: Callable[..., Runtime], receiver: Receiver
) -> None:
    runtime = make_runtime(**{**FAST, "delivery_max_attempts": 2, "breaker_failures": 100})
    with TestClient(create_app(runtime=runtime)) as api:
        subscribe(api, f"{receiver.url}/hook", types=["org.example.test"])
        subscribe(api, f"{receiver.url}/dead", types=[DEAD_LETTERED])
        receiver.fail_next(2, status=500)
        [event_id] = emit(runtime, 1)
        dispatcher = Dispatcher(runtime)
        try:
            drain(dispatcher, lambda: any(r.path == "/dead" for r in receiver.delivered))
            dead = api.get("/api/v1/deliveries", params={"state": "dead"}).json()["deliveries"]
            assert [d["event_id"] for d in dead] == [event_id]
            assert dead[0]["attempts"] == 2
            assert [a["status"] for a in dead[0]["history"]] == [500, 500]
            assert dead[0]["last_error"] == "the target answered 500"
            letter = json.loads(next(r for r in receiver.delivered if r.path == "/dead").body)
            assert letter["data"]["event_id"] == event_id
            replayed = api.post(f"/api/v1/deliveries/{dead[0]['id']}/replay")
            assert replayed.status_code == 202
            drain(dispatcher, lambda: any(r.path == "/hook" for r in receiver.delivered))
            again = api.get(f"/api/v1/deliveries/{dead[0]['id']}").json()
            assert again["state"] == "delivered"
        finally:
            dispatcher.stop()


def test_an_event_can_be_replayed_to_its_subscriptions(
    api: TestClient, fast_runtime: Runtime, receiver: Receiver, dispatcher: Dispatcher
) -> None:
    subscribe(api, f"{receiver.url}/hook")
    [event_id] = emit(fast_runtime, 1)
    drain(dispatcher, lambda: len(receiver.delivered) == 1)
    listed = api.get("/api/v1/events", params={"type": "org.example.test"}).json()["events"]
    assert [event["id"] for event in listed] == [event_id]
    assert listed[0]["published_at"] is not None
    answer = api.post(f"/api/v1/events/{event_id}/replay")
    assert answer.status_code == 202
    assert len(answer.json()["deliveries"]) == 1
    drain(dispatcher, lambda: len(receiver.delivered) == 2)
    assert delivered_ids(receiver) == {event_id: 2}


def test_subscribers_get_only_events_they_may_read(
    fast_runtime: Runtime, receiver: Receiver, dispatcher: Dispatcher
) -> None:
    with fast_runtime.db.session() as session:
        add_project(session, "p1")
        add_user(session, "carol", projects=["p1"])
        for user in ("alice", "bob", "carol"):
            spec = subs.SubscriptionSpec(name=user, target=f"{receiver.url}/{user}")
            subs.create(
                session,
                Principal(user, admin=False, authenticated=True),
                spec,
                fast_runtime.sealer,
                fast_runtime.target_policy,
            )
    emit(fast_runtime, 1, owner="alice", project="p1")
    emit(fast_runtime, 1, owner="bob")
    drain(dispatcher, lambda: len(receiver.delivered) >= 3)
    dispatcher.run_once()
    assert Counter(r.path for r in receiver.delivered) == {"/alice": 1, "/carol": 1, "/bob": 1}


def test_paused_subscriptions_hold_their_deliveries_and_deleted_ones_cancel_them(
    api: TestClient, fast_runtime: Runtime, receiver: Receiver, dispatcher: Dispatcher
) -> None:
    held = subscribe(api, f"{receiver.url}/held")
    gone = subscribe(api, f"{receiver.url}/gone")
    receiver.hold()
    try:
        emit(fast_runtime, 1)
        dispatcher.fan_out()
    finally:
        receiver.release()
    assert api.patch(f"/api/v1/subscriptions/{held['id']}", json={"paused": True}).is_success
    assert api.delete(f"/api/v1/subscriptions/{gone['id']}").status_code == 204
    dispatcher.run_once()
    assert receiver.requests == []
    states = {d.subscription_id: d.state for d in deliveries(fast_runtime)}
    assert states == {held["id"]: "pending", gone["id"]: "cancelled"}
    assert api.patch(f"/api/v1/subscriptions/{held['id']}", json={"paused": False}).is_success
    drain(dispatcher, lambda: len(receiver.delivered) == 1)
    assert receiver.delivered[0].path == "/held"


def test_subscriptions_never_show_credentials(api: TestClient, receiver: Receiver) -> None:
    target = receiver.url.replace("http://", "http://hook-user:s3cret-pass@") + "/hook"
    created = subscribe(api, target)
    bearer = subscribe(api, receiver.url, auth={"type": "bearer", "token": "tok-123456"})
    for shown in (
        api.get(f"/api/v1/subscriptions/{created['id']}").text,
        api.get("/api/v1/subscriptions").text,
        api.get(f"/api/v1/subscriptions/{bearer['id']}").text,
    ):
        assert "s3cret-pass" not in shown
        assert "tok-123456" not in shown
        assert "whsec_" not in shown
    assert created["target"] == receiver.url.replace("http://", "http://hook-user@") + "/hook"
    assert created["auth"] == {"type": "basic", "username": "hook-user"}


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"target": "http://169.254.169.254/latest"}, "link-local"),
        ({"target": "http://metadata.google.internal/x"}, "metadata"),
        ({"target": "gopher://127.0.0.1/x"}, "no event sink for scheme"),
        ({"target": "http://127.0.0.1/x", "filter": "$[?@.a = 1]"}, "RFC 9535"),
        ({"target": "http://127.0.0.1/x", "dialect": "jsonpath2", "filter": "$[?("}, "jsonpath2"),
        ({"target": "mqtt://127.0.0.1/t", "content_mode": "binary"}, "no headers"),
        ({"target": "nats://127.0.0.1/a.*"}, "wildcards"),
        ({"target": "http://127.0.0.1/x", "secret": "whsec_c2hvcnQ="}, "24 random bytes"),
        ({"target": "http://127.0.0.1/x", "auth": {"type": "basic"}}, "username"),
    ],
)
def test_bad_subscriptions_are_refused_with_the_reason(
    api: TestClient, fields: dict[str, Any], message: str
) -> None:
    answer = api.post("/api/v1/subscriptions", json={"name": "bad", **fields})
    assert answer.status_code in (400, 422), answer.text
    assert message in answer.text


def test_an_operator_deny_list_refuses_targets_and_stops_sends(
    make_runtime: Callable[..., Runtime], receiver: Receiver
) -> None:
    runtime = make_runtime(**FAST)
    with TestClient(create_app(runtime=runtime)) as api:
        subscribe(api, f"{receiver.url}/hook")
    denied = make_runtime(**FAST, target_deny=["127.0.0.0/8"])
    denied.db = runtime.db
    with TestClient(create_app(runtime=denied)) as api:
        answer = api.post("/api/v1/subscriptions", json={"name": "x", "target": receiver.url})
        assert answer.status_code == 400
        assert "denied network" in answer.json()["detail"]
    emit(runtime, 1)
    dispatcher = Dispatcher(denied)
    try:
        dispatcher.run_once()
    finally:
        dispatcher.stop()
    assert receiver.requests == []
    [delivery] = deliveries(runtime)
    assert delivery.state == "pending"
    assert "denied network" in delivery.last_error


def test_a_lease_left_by_a_dead_dispatcher_is_taken_over(
    fast_runtime: Runtime, api: TestClient, receiver: Receiver, dispatcher: Dispatcher
) -> None:
    subscribe(api, f"{receiver.url}/hook")
    [event_id] = emit(fast_runtime, 1)
    dispatcher.fan_out()
    with fast_runtime.db.session() as session:
        # What a dispatcher killed mid-send leaves: the row claimed, its lease run out.
        session.execute(
            update(Delivery).values(
                state="delivering", lease_owner="dead-dispatcher", lease_expires_at=None
            )
        )
    dispatcher.run_once()
    assert receiver.requests == [], "a delivery whose lease is unknown is not taken"
    with fast_runtime.db.session() as session:
        from conveyor.db.types import utcnow

        session.execute(update(Delivery).values(lease_expires_at=utcnow()))
    drain(dispatcher, lambda: len(receiver.delivered) == 1)
    assert delivered_ids(receiver) == {event_id: 1}
