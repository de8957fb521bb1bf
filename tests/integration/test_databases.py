"""The same code on every supported database: SQLite, PostgreSQL and MariaDB.

Each test gets a fresh, empty database (a temporary SQLite file, or a scratch database on
the machine's PostgreSQL / MariaDB, dropped afterwards).
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from conveyor.auth.principal import Principal
from conveyor.db.engine import Database
from conveyor.db.migrate import current_revision, head_revision, upgrade
from conveyor.db.models import (
    Delivery,
    File,
    Job,
    OutboxEvent,
    Project,
    ProjectInstrument,
    ProjectMember,
    Subscription,
    Transaction,
    User,
)
from conveyor.events import subscriptions as subs
from conveyor.events.dispatch import DEAD_LETTERED, Dispatcher
from conveyor.events.outbox import Event, record_event
from conveyor.ingest.policy import record_names
from conveyor.jobs import service, states
from conveyor.runtime import Runtime
from conveyor.web.app import create_app
from tests.support.bundles import GOOD_MEMBERS, JAPANESE_NAME, good_tar
from tests.support.databases import scratch_database
from tests.support.receivers import running_receiver
from tests.support.services import free_port

pytestmark = pytest.mark.integration

BACKENDS = ("sqlite", "postgresql", "mariadb")


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A URL of a new, empty database on each backend in turn."""
    backend: str = request.param
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'scratch.db'}"
        return
    with scratch_database(backend) as url:
        yield url


@pytest.fixture
def database(database_url: str) -> Iterator[Database]:
    """An engine on the empty database, disposed after the test."""
    db = Database(database_url)
    yield db
    db.dispose()


def test_migrations_apply_from_empty(database: Database) -> None:
    assert current_revision(database) is None
    upgrade(database)
    assert current_revision(database) == head_revision()
    assert head_revision() is not None
    upgrade(database)  # a second start finds nothing to do
    assert current_revision(database) == head_revision()


def test_good_bundle_ingests_in_process(
    database_url: str, make_runtime: Callable[..., Runtime]
) -> None:
    runtime = make_runtime(database_url=database_url)
    with TestClient(create_app(runtime=runtime)) as client:
        response = client.post(
            "/api/v1/ingest", content=good_tar(), headers={"Content-Type": "application/x-tar"}
        )
        assert response.status_code == 202, response.text
        job = client.get(f"/api/v1/jobs/{response.json()['id']}").json()
        assert job["state"] == "succeeded", job
        assert job["created_at"].endswith("Z") and job["finished_at"].endswith("Z")
        txn = client.get(f"/api/v1/transactions/{job['transaction_id']}").json()
    assert txn["job_id"] == job["id"]
    files = {f"{f['subdir']}/{f['name']}": f for f in txn["files"]}
    assert len(files) == 3
    assert set(files) == {key.removeprefix("data/") for key in GOOD_MEMBERS}
    for key, data in GOOD_MEMBERS.items():
        assert files[key.removeprefix("data/")]["sha256"] == hashlib.sha256(data).hexdigest()
    # The name survives the database itself, not only the API's view of it.
    with runtime.db.session() as session:
        names = set(session.scalars(select(File.name).where(File.transaction_id == txn["id"])))
    assert JAPANESE_NAME in names


def _queued_job(db: Database) -> int:
    with db.session() as session:
        return service.create_job(session, "test", "someone", {"n": 1}).id


def _job(db: Database, job_id: int) -> Job:
    with db.session() as session:
        job = session.get(Job, job_id)
        assert job is not None
        return job


def test_lease_claim_is_exclusive_and_expires(database: Database) -> None:
    upgrade(database)
    job_id = _queued_job(database)

    results = [service.claim(database, job_id, worker, 30.0) for worker in ("a", "b")]
    assert results == [True, False]
    job = _job(database, job_id)
    assert (job.state, job.lease_owner, job.attempts) == (states.RUNNING, "a", 1)
    assert service.renew(database, job_id, "a", 30.0)
    assert not service.renew(database, job_id, "b", 30.0)

    # A lease that runs out (the holder died) is free for the next worker.
    other = _queued_job(database)
    assert service.claim(database, other, "a", 1.0)
    deadline = time.monotonic() + 10
    while not service.claim(database, other, "b", 30.0):
        assert time.monotonic() < deadline, "the expired lease was never re-claimed"
        time.sleep(0.2)
    job = _job(database, other)
    assert (job.state, job.lease_owner, job.attempts) == (states.RUNNING, "b", 2)
    assert not service.renew(database, other, "a", 30.0)
    assert service.renew(database, other, "b", 30.0)
    assert not service.claim(database, other, "a", 30.0)


def test_timestamps_come_back_utc(database: Database) -> None:
    upgrade(database)
    before = datetime.now(UTC) - timedelta(seconds=2)
    job_id = _queued_job(database)
    assert service.claim(database, job_id, "a", 60.0)
    # Written in another zone, read back as the same instant in UTC.
    plus_five = datetime(2024, 3, 1, 4, 30, 15, tzinfo=timezone(timedelta(hours=5)))
    with database.session() as session:
        session.add(Project(id="p1", title="t", created_at=plus_five))

    job = _job(database, job_id)
    after = datetime.now(UTC) + timedelta(seconds=2)
    for value in (job.created_at, job.updated_at, job.lease_expires_at):
        assert value is not None
        assert value.tzinfo is not None and value.utcoffset() == timedelta(0), value
        assert before <= value <= after + timedelta(seconds=60), value
    assert job.lease_expires_at is not None
    assert job.lease_expires_at - job.created_at > timedelta(seconds=55)
    with database.session() as session:
        project = session.scalars(select(Project).where(Project.id == "p1")).one()
        assert project.created_at == datetime(2024, 2, 29, 23, 30, 15, tzinfo=UTC)
        assert project.created_at.utcoffset() == timedelta(0)
        assert session.scalars(select(Transaction)).first() is None


def test_concurrent_publishers_record_the_same_new_names(database: Database) -> None:
    """Two jobs publishing at once for a new submitter and project both succeed."""
    upgrade(database)
    names = ("10", "1234a", "54")
    first = database.sessions()
    record_names(first, *names)  # holds the new rows, uncommitted
    outcome: list[BaseException | None] = []

    def second_publisher() -> None:
        try:
            with database.session() as session:
                record_names(session, *names)  # waits on the first writer's keys
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=second_publisher)
    thread.start()
    thread.join(0.5)  # give it time to reach the first writer's locks
    first.commit()
    first.close()
    thread.join(30)
    assert outcome == [None], outcome
    with database.session() as session:
        assert session.scalars(select(User.id)).all() == ["10"]
        assert session.scalars(select(ProjectMember.user_id)).all() == ["10"]
        assert session.scalars(select(ProjectInstrument.instrument_id)).all() == ["54"]


def test_timestamps_keep_sub_second_precision(database: Database) -> None:
    upgrade(database)
    value = datetime(2024, 1, 1, 0, 0, 0, 900_000, tzinfo=UTC)
    with database.session() as session:
        session.add(Project(id="p", created_at=value))
    with database.session() as session:
        assert session.scalars(select(Project.created_at)).one() == value


def test_event_dispatch_on_every_database(
    database_url: str, make_runtime: Callable[..., Runtime]
) -> None:
    """Fan-out, claims, batched outcomes, the breaker and dead letters, with two dispatchers
    working at once, on each database's own locking (SKIP LOCKED where it has it)."""
    runtime = make_runtime(
        database_url=database_url,
        # Two quick attempts: "gone" still ends dead, and one connection dropped by a busy
        # machine does not turn a delivery to "all" into a dead letter.
        delivery_max_attempts=2,
        delivery_backoff_seconds=0.01,
        delivery_backoff_max_seconds=0.01,
        breaker_failures=1000,
        delivery_timeout_seconds=15.0,
    )
    admin = Principal("conveyor", admin=True, authenticated=False)
    with running_receiver() as receiver:
        with runtime.db.session() as session:
            for name, target, filter_text in (
                ("even", f"{receiver.url}/even", "$[?$.data.n == 0 || $.data.n == 2]"),
                ("all", f"{receiver.url}/all", "$"),
                ("one", f"{receiver.url}/one", "$[?$.data.n == 1]"),
                ("gone", f"http://127.0.0.1:{free_port()}/gone", "$[?$.data.n == 3]"),
            ):
                spec = subs.SubscriptionSpec(name=name, target=target, filter=filter_text)
                subs.create(session, admin, spec, runtime.sealer, runtime.target_policy)
        with runtime.db.session() as session:
            for number in range(40):
                record_event(session, Event(type="org.t", source="/t", data={"n": number % 4}))
        first, second = Dispatcher(runtime), Dispatcher(runtime)
        try:
            deadline = time.monotonic() + 60
            while True:
                with runtime.db.session() as session:
                    open_rows = session.scalar(
                        select(func.count())
                        .select_from(Delivery)
                        .where(Delivery.state.in_(("pending", "delivering")))
                    )
                    events_left = session.scalar(
                        select(func.count())
                        .select_from(OutboxEvent)
                        .where(OutboxEvent.published_at.is_(None))
                    )
                if open_rows == 0 and events_left == 0:
                    break
                assert time.monotonic() < deadline, "dispatch did not finish"
                threads = [threading.Thread(target=d.run_once) for d in (first, second)]
                for thread in threads:
                    thread.start()
                for thread in threads:
                    thread.join()
        finally:
            first.stop()
            second.stop()
        with runtime.db.session() as session:
            states_by_name = Counter(
                (name, state)
                for name, state in session.execute(
                    select(Subscription.name, Delivery.state).join(
                        Subscription, Subscription.id == Delivery.subscription_id
                    )
                )
            )
            letters = session.scalar(
                select(func.count())
                .select_from(OutboxEvent)
                .where(OutboxEvent.type == DEAD_LETTERED)
            )
    delivered = Counter(request.path for request in receiver.delivered)
    # 40 events: 20 to "even", 10 to "one", 10 to "gone" (nobody listens: each dead after
    # its two attempts, and a dead letter each); "all" gets the 40 and the 10 dead letters.
    assert states_by_name == {
        ("even", "delivered"): 20,
        ("one", "delivered"): 10,
        ("gone", "dead"): 10,
        ("all", "delivered"): 50,
    }
    assert letters == 10
    assert delivered == {"/even": 20, "/one": 10, "/all": 50}
    assert len(receiver.requests) == 80, "each delivery was sent once"
