"""Listeners of a test's own on RabbitMQ, Mosquitto and NATS, behind a target URL a sink
(or a subscription) sends to; each collects what arrives for the test to wait on."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import nats
import paho.mqtt.client as mqtt
from kombu import Connection, Exchange, Queue
from paho.mqtt.enums import CallbackAPIVersion

from tests.support.services import require_tcp

HOST = "127.0.0.1"
GUEST = {"type": "basic", "username": "guest", "password": "guest"}
# How long a test waits for what was sent, and for a late duplicate after that.
ARRIVAL_SECONDS = 10.0
SETTLE_SECONDS = 0.3


@dataclass(frozen=True)
class Got:
    """One message as the test's listener received it."""

    body: bytes
    # Header names lower-cased; empty where the transport has no headers (MQTT 3.1.1).
    headers: dict[str, str]
    # The transport's content type (HTTP/NATS header, AMQP property), if it carries one.
    content_type: str | None
    # Where the transport carries the event id (webhook-id, AMQP message_id, Nats-Msg-Id).
    message_id: str | None


class Inbox:
    """Messages collected by a listener thread, waited for by the test."""

    def __init__(self) -> None:
        self._arrived = threading.Condition()
        self._messages: list[Got] = []

    def add(self, got: Got) -> None:
        with self._arrived:
            self._messages.append(got)
            self._arrived.notify_all()

    def wait_for(self, count: int, timeout: float) -> list[Got]:
        """Every message so far, once at least ``count`` have arrived."""
        deadline = time.monotonic() + timeout
        with self._arrived:
            while len(self._messages) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"{len(self._messages)} message(s) arrived in {timeout} s, not {count}"
                    )
                self._arrived.wait(left)
            return list(self._messages)


@dataclass(frozen=True)
class Backend:
    """A transport with a listener of the test's own behind it."""

    name: str
    scheme: str
    # Where the real service listens; ``target_at(port)`` reaches the same destination
    # (queue, topic, subject, path) through another port: a proxy, or nothing at all.
    port: int
    target_at: Callable[[int], str]
    fetch: Callable[[int, float], list[Got]]
    auth: dict[str, Any] | None = None
    carries_content_type: bool = True
    carries_id: bool = True

    @property
    def target(self) -> str:
        """The live target URL."""
        return self.target_at(self.port)

    def wait_for(self, count: int, timeout: float = ARRIVAL_SECONDS) -> list[Got]:
        """Every message so far, once at least ``count`` have arrived."""
        return self.fetch(count, timeout)

    def settled(self, count: int) -> list[Got]:
        """Every message after ``count`` arrived and a pause for any late duplicate."""
        self.wait_for(count)
        time.sleep(SETTLE_SECONDS)
        return self.wait_for(count)


def lower_headers(headers: dict[str, Any] | None) -> dict[str, str]:
    """Header names lower-cased, values as text."""
    return {str(name).lower(): str(value) for name, value in (headers or {}).items()}


@contextmanager
def amqp_listener() -> Iterator[Backend]:
    require_tcp("RabbitMQ", HOST, 5672)
    name = f"conveyor-test-{uuid.uuid4().hex}"
    key = f"events.{uuid.uuid4().hex[:8]}"
    got: list[Got] = []
    with Connection(f"amqp://guest:guest@{HOST}:5672//", connect_timeout=5) as connection:
        channel = connection.channel()
        exchange = Exchange(name, type="direct", durable=False, auto_delete=False)(channel)
        queue = Queue(name, exchange, routing_key=key, durable=False, auto_delete=False)(channel)
        queue.declare()

        def fetch(count: int, timeout: float) -> list[Got]:
            deadline = time.monotonic() + timeout
            while True:
                message = queue.get(no_ack=True)
                if message is not None:
                    raw: Any = message.body
                    # py-amqp decodes the body by its content_encoding; undo that.
                    body = (
                        raw.encode(message.content_encoding or "utf-8")
                        if isinstance(raw, str)
                        else raw
                    )
                    got.append(
                        Got(
                            body,
                            lower_headers(message.headers),
                            message.content_type,
                            message.properties.get("message_id"),
                        )
                    )
                    continue
                if len(got) >= count:
                    return list(got)
                if time.monotonic() > deadline:
                    raise AssertionError(
                        f"{len(got)} message(s) arrived in {timeout} s, not {count}"
                    )
                time.sleep(0.02)

        try:
            yield Backend(
                "amqp",
                "amqp",
                5672,
                lambda port: f"amqp://guest@{HOST}:{port}/?exchange={name}&routing_key={key}",
                fetch,
                auth=GUEST,
            )
        finally:
            queue.delete()
            exchange.delete()


@contextmanager
def mqtt_listener() -> Iterator[Backend]:
    require_tcp("Mosquitto", HOST, 1883)
    topic = f"conveyor-test/{uuid.uuid4().hex}"
    inbox = Inbox()
    subscribed = threading.Event()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"test-{uuid.uuid4().hex[:16]}")
    granted: list[Any] = []

    def on_subscribe(_client: Any, _data: Any, _mid: int, codes: list[Any], _props: Any) -> None:
        granted.extend(codes)
        subscribed.set()

    client.on_subscribe = on_subscribe
    client.on_message = lambda _client, _data, message: inbox.add(
        Got(bytes(message.payload), {}, None, None)
    )
    client.connect(HOST, 1883)
    client.loop_start()
    try:
        result, _ = client.subscribe(topic, qos=1)
        assert result == mqtt.MQTT_ERR_SUCCESS, mqtt.error_string(result)
        assert subscribed.wait(5), f"Mosquitto did not acknowledge the subscription to {topic}"
        assert not any(code.is_failure for code in granted), granted
        yield Backend(
            "mqtt",
            "mqtt",
            1883,
            lambda port: f"mqtt://{HOST}:{port}/{topic}",
            inbox.wait_for,
            carries_content_type=False,
            carries_id=False,
        )
    finally:
        client.disconnect()
        client.loop_stop()


@contextmanager
def nats_listener() -> Iterator[Backend]:
    require_tcp("NATS", HOST, 4222)
    subject = f"conveyor.test.{uuid.uuid4().hex}"
    inbox = Inbox()
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="nats-listener", daemon=True)
    thread.start()

    def run(operation: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(operation, loop).result(10)

    async def on_message(message: Any) -> None:
        headers = lower_headers(message.headers)
        inbox.add(
            Got(message.data, headers, headers.get("content-type"), headers.get("nats-msg-id"))
        )

    try:
        client = run(
            nats.connect(
                f"nats://{HOST}:4222", connect_timeout=5, allow_reconnect=False, name="test"
            )
        )
        try:
            run(client.subscribe(subject, cb=on_message))
            run(client.flush())
            yield Backend(
                "nats", "nats", 4222, lambda port: f"nats://{HOST}:{port}/{subject}", inbox.wait_for
            )
        finally:
            run(client.close())
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()
