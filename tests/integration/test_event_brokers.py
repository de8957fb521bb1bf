"""Every kind of event, from its commit to RabbitMQ, NATS and a webhook, through the dispatcher.

Kinds: a new transaction (ingest), a job that succeeded and one that failed, a cart ready,
a mirror release published and one failed, and a dead-lettered delivery.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import nats
import pytest
from fastapi.testclient import TestClient
from kombu import Connection, Exchange, Queue

from conveyor.events.dispatch import DEAD_LETTERED, Dispatcher
from conveyor.runtime import Runtime
from conveyor.web.app import create_app
from tests.support.banks import add_bank, run_mirror
from tests.support.bundles import good_tar
from tests.support.receivers import Receiver, running_receiver
from tests.support.services import free_port, require_tcp

pytestmark = pytest.mark.integration

BROKER = "amqp://guest:guest@127.0.0.1:5672//"
KINDS = {
    "org.pacifica.metadata.ingest",
    "org.conveyor.job.succeeded",
    "org.conveyor.job.failed",
    "org.conveyor.cart.ready",
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


class AmqpQueue:
    """A queue of the test's own bound to an exchange of its own, read back with kombu."""

    def __init__(self) -> None:
        name = f"conveyor-test-{uuid.uuid4().hex[:10]}"
        self.exchange = Exchange(name, type="topic", durable=False, auto_delete=True)
        self.queue = Queue(name, self.exchange, routing_key="#", auto_delete=True)
        self.connection = Connection(BROKER)
        self.queue.bind(self.connection.default_channel).declare()

    @property
    def target(self) -> str:
        # The password in the URL is moved into the subscription's sealed credentials.
        return f"amqp://guest:guest@127.0.0.1:5672/?exchange={self.exchange.name}"

    def messages(self) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        """Every message waiting: its body (parsed) and its properties."""
        got = []
        bound = self.queue.bind(self.connection.default_channel)
        while (message := bound.get(no_ack=True)) is not None:
            got.append((json.loads(message.body), dict(message.properties)))
        return got

    def close(self) -> None:
        self.queue.bind(self.connection.default_channel).delete()
        self.connection.release()


class NatsSubject:
    """A subscription to a subject of the test's own, on a loop thread of its own."""

    def __init__(self) -> None:
        self.subject = f"conveyor.test.{uuid.uuid4().hex[:10]}"
        self.received: list[tuple[bytes, dict[str, str]]] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._client = self._run(nats.connect("nats://127.0.0.1:4222"))

        async def store(message: Any) -> None:
            self.received.append((message.data, dict(message.headers or {})))

        self._run(self._client.subscribe(self.subject, cb=store))
        self._run(self._client.flush())

    def _run(self, operation: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(operation, self._loop).result(10)

    @property
    def target(self) -> str:
        return f"nats://127.0.0.1:4222/{self.subject}"

    def close(self) -> None:
        self._run(self._client.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


@pytest.fixture
def amqp_queue() -> Iterator[AmqpQueue]:
    require_tcp("RabbitMQ", "127.0.0.1", 5672)
    made = AmqpQueue()
    yield made
    made.close()


@pytest.fixture
def nats_subject() -> Iterator[NatsSubject]:
    require_tcp("NATS", "127.0.0.1", 4222)
    made = NatsSubject()
    yield made
    made.close()


def make_every_kind(client: TestClient, tmp_path: Path, dead_target: str) -> None:
    """Cause one event of each kind."""
    good = client.post("/api/v1/ingest", content=good_tar(), headers={"Content-Type": "x-tar"})
    assert good.status_code in (200, 202), good.text
    job = client.get(f"/api/v1/jobs/{good.json()['id']}").json()
    assert job["state"] == "succeeded", job
    bad = client.post("/api/v1/ingest", content=b"not a tar", headers={"Content-Type": "x-tar"})
    assert bad.status_code in (200, 202), bad.text
    cart = client.post("/api/v1/carts", json={"transactions": [job["transaction_id"]]})
    assert cart.status_code == 201, cart.text
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
    amqp_queue: AmqpQueue,
    nats_subject: NatsSubject,
) -> None:
    runtime = make_runtime(
        delivery_max_attempts=1, delivery_timeout_seconds=2.0, breaker_failures=100
    )
    receiver: Receiver
    with running_receiver() as receiver, TestClient(create_app(runtime=runtime)) as client:
        for name, target in (
            ("amqp", amqp_queue.target),
            ("nats", nats_subject.target),
            ("webhook", f"{receiver.url}/hook"),
        ):
            body = {"name": name, "target": target, "content_mode": "binary"}
            answer = client.post("/api/v1/subscriptions", json=body)
            assert answer.status_code == 201, answer.text
            assert "guest:" not in answer.json()["target"]
        make_every_kind(client, tmp_path, f"http://127.0.0.1:{free_port()}/nobody")
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
    by_amqp = amqp_queue.messages()
    assert {properties["application_headers"]["ce-type"] for _, properties in by_amqp} == KINDS
    assert all(properties["delivery_mode"] == 2 for _, properties in by_amqp)
    assert {headers["ce-type"] for _, headers in nats_subject.received} == KINDS
    assert {headers["Nats-Msg-Id"] for _, headers in nats_subject.received} == {
        properties["message_id"] for _, properties in by_amqp
    }
    webhook_ids = [r.headers["webhook-id"] for r in receiver.delivered]
    assert len(webhook_ids) == len(set(webhook_ids)) == len(by_amqp)
