"""Cart notifications: one CloudEvent per requester to a real HTTP receiver, retried until heard.

The runtime is inline: a cart's build job runs inside the request that asks for it, and its
notify job inside the build. A retry is driven by hand: the job's lease (its "not before"
time after a failure) is moved into the past, then the sweeper dispatches it again.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from conveyor.auth.tokens import create_token
from conveyor.db.models import Cart, CartRequester, Job, OutboxEvent
from conveyor.db.types import utcnow
from conveyor.jobs.executors import Sweeper
from conveyor.jobs.runner import run_job
from conveyor.runtime import Runtime
from conveyor.web.app import create_app
from tests.support.bundles import good_tar
from tests.support.executors import HeldExecutor, retry_now
from tests.support.receivers import Received, running_receiver

READY = "org.conveyor.cart.ready"
FAILED = "org.conveyor.cart.failed"
CLOUDEVENT_KEYS = {
    "specversion",
    "id",
    "type",
    "source",
    "subject",
    "time",
    "datacontenttype",
    "data",
}


def ingest(client: TestClient, headers: dict[str, str] | None = None) -> dict[str, Any]:
    """Ingest the published good bundle; its transaction."""
    job = client.post("/api/v1/ingest", content=good_tar(), headers=headers).json()
    assert job["state"] == "succeeded", job
    answer = client.get(f"/api/v1/transactions/{job['transaction_id']}", headers=headers)
    transaction: dict[str, Any] = answer.json()
    return transaction


def ask_for_nothing(client: TestClient, notify_url: str) -> Any:
    """Ask for a cart of a transaction that does not exist, to be told by ``notify_url``.

    The URL is checked first (400); one that passed would only get a 404 here, so no test
    ever makes the server call a link-local or metadata address.
    """
    return client.post(
        "/api/v1/carts",
        json={"transactions": [999999], "mode": "build", "notify_url": notify_url},
    )


def event_of(received: Received) -> dict[str, Any]:
    """The structured CloudEvent a receiver got, after checking how it was sent."""
    assert received.method == "POST"
    assert received.headers["content-type"] == "application/cloudevents+json"
    event: dict[str, Any] = json.loads(received.body)
    return event


def stored_event(runtime: Runtime, cart_id: int, kind: str) -> OutboxEvent:
    """The one outbox event of ``kind`` about the cart."""
    with runtime.db.session() as session:
        [row] = session.scalars(
            select(OutboxEvent).where(
                OutboxEvent.subject == f"carts/{cart_id}", OutboxEvent.type == kind
            )
        ).all()
        return row


def notify_jobs(runtime: Runtime) -> list[Job]:
    """Every ``cart notify`` job, oldest first."""
    with runtime.db.session() as session:
        return list(
            session.scalars(select(Job).where(Job.kind == "cart notify").order_by(Job.id)).all()
        )


def test_a_built_cart_sends_one_cloudevent(client: TestClient, runtime: Runtime) -> None:
    transaction = ingest(client)
    with running_receiver() as receiver:
        made = client.post(
            "/api/v1/carts",
            json={
                "transactions": [transaction["id"]],
                "mode": "build",
                "notify_url": f"{receiver.url}/hooks/cart?team=1",
            },
        )
        assert made.status_code == 201, made.text
        cart = made.json()
        assert cart["status"] == "ready"
        [received] = receiver.requests
    assert received.path == "/hooks/cart?team=1"
    assert received.status == 204
    event = event_of(received)
    row = stored_event(runtime, cart["id"], READY)
    assert set(event) == CLOUDEVENT_KEYS
    assert event["specversion"] == "1.0"
    assert event["id"] == row.id
    assert event["type"] == READY
    assert event["source"] == "/api/v1/carts"
    assert event["subject"] == f"carts/{cart['id']}"
    assert event["time"] == row.time.isoformat().replace("+00:00", "Z")
    assert event["datacontenttype"] == "application/json"
    assert event["data"] == {
        "id": cart["id"],
        "status": "ready",
        "format": "tar",
        "mode": "build",
        "file_count": 3,
        "bytes_total": cart["bytes_total"],
        "etag": cart["etag"],
        "error": "",
        "item_errors": [],
        "requesters": ["conveyor"],
        "bundle": f"/api/v1/carts/{cart['id']}/bundle",
    }
    [job] = notify_jobs(runtime)
    assert (job.state, job.attempts, job.payload) == ("succeeded", 1, {"cart_id": cart["id"]})
    with runtime.db.session() as session:
        [requester] = session.scalars(select(CartRequester)).all()
        assert (requester.user, requester.notify_kind) == ("conveyor", "webhook")
        assert requester.notify_url == f"{receiver.url}/hooks/cart?team=1"
        assert requester.notified_at is not None


def test_a_failed_cart_sends_the_failure_and_its_reason(
    client: TestClient, runtime: Runtime
) -> None:
    transaction = ingest(client)
    victim = transaction["files"][0]
    sharing = [f["id"] for f in transaction["files"] if f["sha256"] == victim["sha256"]]
    assert len(sharing) == 2  # foo.txt and the Japanese name hold the same bytes
    runtime.archive.delete(victim["sha256"])
    with running_receiver() as receiver:
        cart = client.post(
            "/api/v1/carts",
            json={
                "transactions": [transaction["id"]],
                "mode": "build",
                "notify_url": f"{receiver.url}/failed",
            },
        ).json()
        [received] = receiver.requests
    assert cart["status"] == "error"
    assert cart["error"].startswith("2 of 3 files failed; first: ")
    event = event_of(received)
    assert event["type"] == FAILED
    assert event["id"] == stored_event(runtime, cart["id"], FAILED).id
    assert event["subject"] == f"carts/{cart['id']}"
    data = event["data"]
    assert data["status"] == "error"
    assert data["error"] == cart["error"]
    assert data["item_errors"] == cart["item_errors"]
    assert [problem["file_id"] for problem in data["item_errors"]] == sharing
    assert all("does not hold" in problem["error"] for problem in data["item_errors"])
    assert data["requesters"] == ["conveyor"]
    [job] = notify_jobs(runtime)
    assert job.state == "succeeded"


def test_a_second_requester_joining_a_ready_cart_is_told_and_the_first_not_twice(
    make_runtime: Callable[..., Runtime],
) -> None:
    runtime = make_runtime(auth="token")
    with runtime.db.session() as session:
        alice = {"Authorization": f"Bearer {create_token(session, 'alice', admin=True).secret}"}
        bob = {"Authorization": f"Bearer {create_token(session, 'bob', admin=True).secret}"}
    with TestClient(create_app(runtime=runtime)) as client, running_receiver() as receiver:
        transaction = ingest(client, alice)
        request = {"transactions": [transaction["id"]], "mode": "build"}
        first = client.post(
            "/api/v1/carts", json={**request, "notify_url": f"{receiver.url}/alice"}, headers=alice
        )
        assert first.status_code == 201, first.text
        assert [r.path for r in receiver.requests] == ["/alice"]
        joined = client.post(
            "/api/v1/carts", json={**request, "notify_url": f"{receiver.url}/bob"}, headers=bob
        )
        assert joined.status_code == 200, joined.text
        assert joined.json()["id"] == first.json()["id"]
        assert [r.path for r in receiver.requests] == ["/alice", "/bob"]
        # Alice asking again is the same requester: nobody is told anything new.
        again = client.post(
            "/api/v1/carts", json={**request, "notify_url": f"{receiver.url}/alice"}, headers=alice
        )
        assert again.status_code == 200, again.text
        told_alice, told_bob = receiver.requests
    assert told_alice.status == told_bob.status == 204
    alice_event, bob_event = event_of(told_alice), event_of(told_bob)
    # Bob hears the cart's own event: the one Alice heard, with the same id.
    assert bob_event == alice_event
    assert alice_event["type"] == READY
    assert alice_event["data"]["status"] == "ready"
    with runtime.db.session() as session:
        rows = session.scalars(select(CartRequester).order_by(CartRequester.user)).all()
        assert [(r.user, r.notify_url) for r in rows] == [
            ("alice", f"{receiver.url}/alice"),
            ("bob", f"{receiver.url}/bob"),
        ]
        assert all(r.notified_at is not None for r in rows)
    assert [(job.state, job.attempts) for job in notify_jobs(runtime)] == [
        ("succeeded", 1),
        ("succeeded", 1),
    ]


def test_a_receiver_that_is_down_hears_the_same_event_once_it_is_back(
    client: TestClient, runtime: Runtime
) -> None:
    transaction = ingest(client)
    sweeper = Sweeper(runtime, runtime.executor)
    with running_receiver() as receiver:
        receiver.fail_next(2, status=503)
        cart = client.post(
            "/api/v1/carts",
            json={
                "transactions": [transaction["id"]],
                "mode": "build",
                "notify_url": f"{receiver.url}/hook",
            },
        ).json()
        assert cart["status"] == "ready"
        assert [r.status for r in receiver.requests] == [503]
        # Attempt 1 failed: queued again, not before 2 s from now.
        [job] = notify_jobs(runtime)
        assert (job.state, job.attempts, job.lease_owner) == ("queued", 1, None)
        assert job.error.startswith("will retry: 1 notification(s) failed")
        assert "answered 503" in job.error
        assert job.lease_expires_at is not None
        wait = (job.lease_expires_at - utcnow()).total_seconds()
        assert 0.5 < wait <= 2.0, wait
        assert sweeper.sweep() == 0  # not due yet
        assert len(receiver.requests) == 1
        # Attempt 2: still down; the wait doubles.
        assert retry_now(runtime, job.id) == 1
        assert [r.status for r in receiver.requests] == [503, 503]
        [job] = notify_jobs(runtime)
        assert (job.state, job.attempts) == ("queued", 2)
        assert job.lease_expires_at is not None
        wait = (job.lease_expires_at - utcnow()).total_seconds()
        assert 2.5 < wait <= 4.0, wait
        # Attempt 3: the receiver is back.
        assert retry_now(runtime, job.id) == 1
        assert [r.status for r in receiver.requests] == [503, 503, 204]
        assert sweeper.sweep() == 0
        requests = receiver.requests
    assert len(requests) == 3
    events = [event_of(r) for r in requests]
    row = stored_event(runtime, cart["id"], READY)
    assert {event["id"] for event in events} == {row.id}
    assert events[0] == events[1] == events[2]
    [job] = notify_jobs(runtime)
    assert (job.state, job.attempts, job.error) == ("succeeded", 3, "")
    with runtime.db.session() as session:
        [requester] = session.scalars(select(CartRequester)).all()
        assert requester.notified_at is not None


def test_notify_jobs_running_at_once_tell_each_requester_once(
    make_runtime: Callable[..., Runtime],
) -> None:
    """Two requesters join a ready cart; their two notify jobs run on two workers at once."""
    runtime = make_runtime(auth="token")
    with runtime.db.session() as session:
        headers = {
            user: {"Authorization": f"Bearer {create_token(session, user, admin=True).secret}"}
            for user in ("alice", "bob", "carol")
        }
    with TestClient(create_app(runtime=runtime)) as client, running_receiver() as receiver:
        transaction = ingest(client, headers["alice"])
        request = {"transactions": [transaction["id"]], "mode": "build"}
        cart = client.post("/api/v1/carts", json=request, headers=headers["alice"]).json()
        assert cart["status"] == "ready"
        held = HeldExecutor(runtime)
        runtime.executor = held
        for user in ("bob", "carol"):
            joined = client.post(
                "/api/v1/carts",
                json={**request, "notify_url": f"{receiver.url}/{user}"},
                headers=headers[user],
            )
            assert joined.status_code == 200, joined.text
        assert len(held.held) == 2
        receiver.hold()
        workers = [
            threading.Thread(target=run_job, args=(runtime, job_id), daemon=True)
            for job_id in held.held
        ]
        workers[0].start()
        receiver.wait_for(1)  # the first job is telling its first requester
        workers[1].start()
        deadline = time.monotonic() + 5
        while workers[1].is_alive() and len(receiver.requests) < 2:
            assert time.monotonic() < deadline, "the second notify job neither sent nor ended"
            time.sleep(0.02)
        receiver.release()
        for worker in workers:
            worker.join(30)
        paths = sorted(r.path for r in receiver.requests)
    assert paths == ["/bob", "/carol"]


@pytest.mark.parametrize(
    "url",
    [
        "169.254.169.254",
        "http://169.254.169.254/latest/meta-data/",
        "http://[fe80::1]/",
        "http://metadata.google.internal/computeMetadata/v1/",
        "http://metadata/",
        "http://224.0.0.1/",
        "http://0.0.0.0:8080/",
        "http://[::]/",
        "ftp://x",
        "http:///no-host",
    ],
)
def test_notify_url_must_be_http_and_not_link_local_or_metadata(
    client: TestClient, runtime: Runtime, url: str
) -> None:
    answer = ask_for_nothing(client, url)
    assert answer.status_code == 400, answer.text
    assert answer.json()["detail"].startswith("notify_url ")
    with runtime.db.session() as session:
        assert session.scalar(select(func.count()).select_from(Cart)) == 0
        assert session.scalar(select(func.count()).select_from(Job)) == 0


@pytest.mark.parametrize(
    "url",
    [
        "http://[::ffff:169.254.169.254]/",  # IPv4-mapped IPv6 of the metadata address
        "http://2852039166/",  # 169.254.169.254 as one integer (inet_aton accepts it)
        "http://0251.0376.0251.0376/",  # 169.254.169.254 in octal
        "http://metadata.google.internal./",  # the same host, fully qualified
    ],
)
def test_notify_url_refuses_disguised_link_local_and_metadata_hosts(
    client: TestClient, url: str
) -> None:
    """The same addresses and hosts as above, written the other ways a resolver accepts."""
    answer = ask_for_nothing(client, url)
    assert answer.status_code == 400, answer.text
    assert answer.json()["detail"].startswith("notify_url ")


def test_a_stream_cart_ready_at_once_is_told_too(client: TestClient, runtime: Runtime) -> None:
    transaction = ingest(client)
    with running_receiver() as receiver:
        made = client.post(
            "/api/v1/carts",
            json={"transactions": [transaction["id"]], "notify_url": f"{receiver.url}/s"},
        )
        assert made.status_code == 201, made.text
        cart = made.json()
        assert (cart["mode"], cart["status"]) == ("stream", "ready")
        [received] = receiver.wait_for(1)
    event = event_of(received)
    assert event["id"] == stored_event(runtime, cart["id"], READY).id
    assert (event["type"], event["data"]["status"]) == (READY, "ready")
    assert event["data"]["bytes_total"] == cart["bytes_total"]
