"""Every kind of event, from its commit to RabbitMQ, NATS and a webhook, through the dispatcher.

Kinds: a new transaction (ingest), a job that succeeded and one that failed, a cart ready and
one that failed, a mirror release published and one failed, and a dead-lettered delivery.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from conveyor.events.dispatch import DEAD_LETTERED, Dispatcher
from conveyor.runtime import Runtime
from conveyor.web.app import create_app
from tests.support.banks import add_bank, run_mirror
from tests.support.bundles import good_tar
from tests.support.event_listeners import Backend, amqp_listener, nats_listener
from tests.support.receivers import Receiver, running_receiver
from tests.support.services import free_port

pytestmark = pytest.mark.integration

KINDS = {
    "org.pacifica.metadata.ingest",
    "org.conveyor.job.succeeded",
    "org.conveyor.job.failed",
    "org.conveyor.cart.ready",
    "org.conveyor.cart.failed",
    "org.conveyor.mirror.release.published",
    "org.conveyor.mirror.release.failed",
    DEAD_LETTERED,
}
BANK = """[GENERAL]
db.name={name}
protocol=local
server=
remote.dir={root}/
remote.files=^.*\\.txt$
local.files=**/*
release.file=
release.regexp=
options.names=stop_condition,wait_policy
options.stop_condition=stop_after_attempt(1)
options.wait_policy=wait_none
"""


@pytest.fixture
def amqp() -> Iterator[Backend]:
    with amqp_listener() as listener:
        yield listener


@pytest.fixture
def nats_subject() -> Iterator[Backend]:
    with nats_listener() as listener:
        yield listener


def make_every_kind(client: TestClient, runtime: Runtime, tmp_path: Path, dead_target: str) -> None:
    """Cause one event of each kind."""
    good = client.post("/api/v1/ingest", content=good_tar(), headers={"Content-Type": "x-tar"})
    assert good.status_code in (200, 202), good.text
    job = client.get(f"/api/v1/jobs/{good.json()['id']}").json()
    assert job["state"] == "succeeded", job
    bad = client.post("/api/v1/ingest", content=b"not a tar", headers={"Content-Type": "x-tar"})
    assert bad.status_code in (200, 202), bad.text
    cart = client.post("/api/v1/carts", json={"transactions": [job["transaction_id"]]})
    assert cart.status_code == 201, cart.text
    # A built cart of the same transaction fails once a file's bytes are gone from the archive.
    transaction = client.get(f"/api/v1/transactions/{job['transaction_id']}").json()
    runtime.archive.delete(transaction["files"][0]["sha256"])
    built = {"transactions": [job["transaction_id"]], "mode": "build"}
    failed = client.post("/api/v1/carts", json=built)
    assert failed.status_code == 201, failed.text
    assert failed.json()["status"] == "error", failed.json()
    root = tmp_path / "bank"
    root.mkdir()
    (root / "a.txt").write_text("alpha\n")
    add_bank(client, BANK.format(name="good", root=root))
    assert run_mirror(client, "good")["state"] == "published"
    add_bank(client, BANK.format(name="gone", root=tmp_path / "missing"))
    assert run_mirror(client, "gone")["state"] == "failed"
    dead = {"name": "dead", "target": dead_target, "types": ["org.conveyor.job.failed"]}
    assert client.post("/api/v1/subscriptions", json=dead).status_code == 201


def test_every_kind_of_event_reaches_rabbitmq_nats_and_a_webhook(
    make_runtime: Callable[..., Runtime],
    tmp_path: Path,
    amqp: Backend,
    nats_subject: Backend,
) -> None:
    runtime = make_runtime(
        delivery_max_attempts=1, delivery_timeout_seconds=2.0, breaker_failures=100
    )
    receiver: Receiver
    with running_receiver() as receiver, TestClient(create_app(runtime=runtime)) as client:
        # The AMQP password is written in the URL: it moves into the sealed credentials.
        with_password = amqp.target.replace("guest@", "guest:guest@")
        for name, target in (
            ("amqp", with_password),
            ("nats", nats_subject.target),
            ("webhook", f"{receiver.url}/hook"),
        ):
            body = {"name": name, "target": target, "content_mode": "binary"}
            answer = client.post("/api/v1/subscriptions", json=body)
            assert answer.status_code == 201, answer.text
            assert "guest:" not in answer.json()["target"]
        make_every_kind(client, runtime, tmp_path, f"http://127.0.0.1:{free_port()}/nobody")
        dispatcher = Dispatcher(runtime)
        try:
            deadline = time.monotonic() + 30
            while {r.headers["ce-type"] for r in receiver.delivered} != KINDS:
                assert time.monotonic() < deadline, {
                    r.headers["ce-type"] for r in receiver.delivered
                }
                if not dispatcher.run_once():
                    time.sleep(0.05)
        finally:
            dispatcher.stop()
    webhook_ids = [r.headers["webhook-id"] for r in receiver.delivered]
    assert len(webhook_ids) == len(set(webhook_ids))
    by_amqp = amqp.settled(len(webhook_ids))
    by_nats = nats_subject.settled(len(webhook_ids))
    for arrived in (by_amqp, by_nats):
        assert {got.headers["ce-type"] for got in arrived} == KINDS
        assert sorted(got.message_id or "" for got in arrived) == sorted(webhook_ids)
