"""One conformance suite for the event sinks, run against a real receiver for every transport.

Each test runs over: a webhook (a loopback HTTP receiver), AMQP (RabbitMQ, an exchange and
queue of the test's own), MQTT (Mosquitto, a topic of the test's own) and NATS (a subject of
the test's own). The test listens where the sink sends and checks what arrived: the exact
bytes, the headers and content type where the transport has them, each event once, and that
a dead, silent, severed or frozen target ends as ``Outcome(delivered=False)`` in bounded time
without harming the next send. What a transport cannot carry (MQTT 3.1.1 has no headers) is
declared per backend; binary-mode tests are skipped where the sink says it has no binary mode.
"""

from __future__ import annotations

import base64
import contextlib
import json
import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import pytest
import standardwebhooks

from conveyor.db.models import OutboxEvent
from conveyor.errors import BadRequest
from conveyor.events.shapes import cloudevent, encode, pacifica_event
from conveyor.events.sinks import EventSink, Outcome, Outgoing, open_sink, sink_class
from conveyor.events.sinks.base import EXCERPT_CHARS
from conveyor.events.subscriptions import new_secret
from tests.support.event_listeners import (
    ARRIVAL_SECONDS,
    HOST,
    Backend,
    Got,
    amqp_listener,
    mqtt_listener,
    nats_listener,
)
from tests.support.netfaults import silent_listener, tcp_proxy
from tests.support.receivers import Received, Receiver, answering_receiver, running_receiver
from tests.support.services import free_port

# The sink timeout of the ordinary tests, and of the fault tests (which wait it out).
TIMEOUT = 2.0
FAULT_TIMEOUT = 1.0
# The longest a failing send may take: a connect and one exchange, each within the timeout.
BOUND = 2 * TIMEOUT + 1.0
FAULT_BOUND = 2 * FAULT_TIMEOUT + 1.0
# How long a failed send is watched for a connect attempt it should not make any more
# (longer than nats-py's 2 s reconnect wait).
RETRY_WATCH_SECONDS = 2.1

SECRET = new_secret()
EVENT_TYPE = "org.pacifica.metadata.ingest"
SOURCE = "/conveyor/tests/sinks"
# What a Pacifica ingest event carries: a list of metadata rows, one with non-ASCII text.
PACIFICA_DATA: list[dict[str, Any]] = [
    {"destinationTable": "Transactions._id", "value": 1234},
    {"destinationTable": "Files", "_id": 1, "name": "Größe_測定.txt", "subdir": "raw/ü"},
    {"destinationTable": "TransactionKeyValue", "key": "Tag", "value": "naïve ✓"},
]
NON_ASCII_TEXT = "Grüße aus Köln: 東京 ✓ — naïve café"

# ---------------------------------------------------------------------------------------
# What arrived, and where each backend listens.


@dataclass(frozen=True)
class Hook:
    """A path of its own on the module's receiver, so tests share one server."""

    receiver: Receiver
    path: str

    @property
    def url(self) -> str:
        return f"{self.receiver.url}{self.path}"

    @property
    def requests(self) -> list[Received]:
        return [request for request in self.receiver.requests if request.path == self.path]

    def arrived(self, count: int, timeout: float = ARRIVAL_SECONDS) -> list[Received]:
        """Every request to this path so far, once at least ``count`` have arrived."""
        deadline = time.monotonic() + timeout
        while len(requests := self.requests) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(requests)} request(s) in {timeout} s, not {count}")
            time.sleep(0.01)
        return requests


@pytest.fixture(scope="module")
def shared_receiver() -> Iterator[Receiver]:
    """One loopback HTTP receiver for the module (each test posts to a path of its own)."""
    with running_receiver() as receiver:
        yield receiver


@pytest.fixture
def hook(shared_receiver: Receiver) -> Hook:
    """A fresh path on the shared receiver, answered with 204."""
    shared_receiver.status = 204
    return Hook(shared_receiver, f"/hooks/{uuid.uuid4().hex}")


def _webhook(hook: Hook) -> Backend:
    def fetch(count: int, timeout: float) -> list[Got]:
        return [
            Got(r.body, r.headers, r.headers.get("content-type"), r.headers.get("webhook-id"))
            for r in hook.arrived(count, timeout)
        ]

    port = int(hook.receiver.url.rsplit(":", 1)[1])
    return Backend("webhook", "http", port, lambda port: f"http://{HOST}:{port}{hook.path}", fetch)


OPENERS: dict[str, Callable[[], AbstractContextManager[Backend]]] = {
    "amqp": amqp_listener,
    "mqtt": mqtt_listener,
    "nats": nats_listener,
}
BACKENDS = [
    "webhook",
    pytest.param("amqp", marks=pytest.mark.integration),
    pytest.param("mqtt", marks=pytest.mark.integration),
    pytest.param("nats", marks=pytest.mark.integration),
]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    """A transport with a listener of this test's own behind a live target."""
    if request.param == "webhook":
        yield _webhook(request.getfixturevalue("hook"))
        return
    with OPENERS[request.param]() as opened:
        yield opened


@pytest.fixture
def sink(backend: Backend) -> Iterator[EventSink]:
    """A sink for the backend's scheme, closed after the test."""
    opened = open_sink(backend.scheme, TIMEOUT)
    yield opened
    opened.close()


@pytest.fixture
def fault_sink(backend: Backend) -> Iterator[EventSink]:
    """A sink with the short timeout the fault tests wait out."""
    opened = open_sink(backend.scheme, FAULT_TIMEOUT)
    yield opened
    opened.close()


# ---------------------------------------------------------------------------------------
# Events and sends.


def _row(data: Any, subject: str | None = None) -> OutboxEvent:
    return OutboxEvent(
        id=f"evt-{uuid.uuid4().hex}",
        type=EVENT_TYPE,
        source=SOURCE,
        subject=subject,
        time=datetime(2024, 5, 6, 7, 8, 9, 123000, tzinfo=UTC),
        data=data,
    )


def _outgoing(
    backend: Backend,
    doc: dict[str, Any],
    shape: str = "cloudevents",
    mode: str = "structured",
    target: str | None = None,
) -> Outgoing:
    """What the dispatcher hands a sink for ``doc`` (always with a signing secret)."""
    return Outgoing(
        event_id=doc.get("id") or doc["eventID"],
        event_type=doc.get("type") or doc["eventType"],
        target_url=target or backend.target,
        message=encode(doc, shape, mode),
        auth=backend.auth,
        secret=SECRET,
    )


def _json_bytes(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def _ids(got: list[Got]) -> Counter[str]:
    return Counter(json.loads(message.body)["id"] for message in got)


def _assert_failed(outcome: Outcome) -> None:
    """Not delivered, with an error that says what happened (not just an exception name)."""
    assert not outcome.delivered
    assert outcome.error, outcome
    kind, _, detail = outcome.error.partition(":")
    assert detail.strip(), f"the error names {kind!r} but says nothing more: {outcome.error!r}"


def _send_within(sink: EventSink, outgoing: Outgoing, seconds: float) -> Outcome | None:
    """The send's outcome, or None when it was still running after ``seconds``."""
    box: list[Outcome] = []
    thread = threading.Thread(target=lambda: box.append(sink.send(outgoing)), daemon=True)
    thread.start()
    thread.join(seconds)
    return box[0] if box else None


# ---------------------------------------------------------------------------------------
# Every backend.


def test_structured_cloudevent_arrives_as_the_document(backend: Backend, sink: EventSink) -> None:
    doc = cloudevent(_row(PACIFICA_DATA, subject="transactions/1234"))
    outgoing = _outgoing(backend, doc)

    outcome = sink.send(outgoing)

    assert outcome.delivered, outcome.error
    [got] = backend.wait_for(1)
    assert got.body == outgoing.message.body
    assert json.loads(got.body) == doc
    assert not [name for name in got.headers if name.startswith("ce-")]
    if backend.carries_content_type:
        assert got.content_type == "application/cloudevents+json"
    if backend.carries_id:
        assert got.message_id == doc["id"]


@pytest.mark.parametrize("data", [PACIFICA_DATA, NON_ASCII_TEXT], ids=["list", "non-ascii-text"])
def test_binary_mode_puts_attributes_in_headers_and_data_in_body(
    backend: Backend, sink: EventSink, data: Any
) -> None:
    if not sink_class(backend.scheme).binary_mode:
        pytest.skip(f"{backend.name} carries no headers, so no CloudEvents binary mode")
    doc = cloudevent(_row(data, subject="raw/Größe 測定.txt"))
    outgoing = _outgoing(backend, doc, mode="binary")

    outcome = sink.send(outgoing)

    assert outcome.delivered, outcome.error
    [got] = backend.wait_for(1)
    assert got.headers["ce-id"] == doc["id"]
    assert got.headers["ce-type"] == EVENT_TYPE
    assert got.headers["ce-source"] == SOURCE
    assert got.headers["ce-specversion"] == "1.0"
    # Every attribute header arrives as the encoder wrote it (non-ASCII percent-encoded).
    sent = {name.lower(): value for name, value in outgoing.message.headers.items()}
    assert {name: value for name, value in got.headers.items() if name.startswith("ce-")} == sent
    assert got.body == _json_bytes(data)
    assert json.loads(got.body) == data
    if backend.carries_content_type:
        assert got.content_type == "application/json"


def test_pacifica_shape_arrives_as_plain_json(backend: Backend, sink: EventSink) -> None:
    doc = pacifica_event(_row(PACIFICA_DATA), {"project": "conveyor-test"})
    outgoing = _outgoing(backend, doc, shape="pacifica")

    outcome = sink.send(outgoing)

    assert outcome.delivered, outcome.error
    [got] = backend.wait_for(1)
    assert got.body == outgoing.message.body
    assert json.loads(got.body) == doc
    assert doc["cloudEventsVersion"] == "0.1"
    assert not [name for name in got.headers if name.startswith("ce-")]
    if backend.carries_content_type:
        assert got.content_type == "application/json"


def test_concurrent_sends_over_one_sink_each_arrive_once(backend: Backend, sink: EventSink) -> None:
    threads, count = 8, 50
    docs = [cloudevent(_row([{"n": n}])) for n in range(count)]
    start = threading.Barrier(threads)

    def send_share(share: int) -> list[Outcome]:
        start.wait(10)  # every thread's first send races for the one connection
        return [sink.send(_outgoing(backend, doc)) for doc in docs[share::threads]]

    with ThreadPoolExecutor(threads) as pool:
        outcomes = [outcome for part in pool.map(send_share, range(threads)) for outcome in part]

    assert len(outcomes) == count
    assert [o.error for o in outcomes if not o.delivered] == []
    assert _ids(backend.settled(count)) == Counter(doc["id"] for doc in docs)


def test_dead_target_is_not_delivered_in_time(backend: Backend, sink: EventSink) -> None:
    port = free_port()
    started = time.monotonic()

    outcome = sink.send(_outgoing(backend, cloudevent(_row([1])), target=backend.target_at(port)))

    elapsed = time.monotonic() - started
    _assert_failed(outcome)
    assert outcome.status is None
    assert elapsed < BOUND, f"the send took {elapsed:.1f} s with a {TIMEOUT:g} s timeout"
    # The send is over: nothing of it may still be trying to reach the port.
    with socket.create_server((HOST, port)) as listener:
        listener.settimeout(RETRY_WATCH_SECONDS)
        with contextlib.suppress(TimeoutError):
            connection, _ = listener.accept()
            connection.close()
            pytest.fail(f"port {port} was connected to after the send had reported its failure")


def test_silent_target_is_not_delivered_in_time(backend: Backend, fault_sink: EventSink) -> None:
    with silent_listener() as port:
        started = time.monotonic()
        outcome = _send_within(
            fault_sink,
            _outgoing(backend, cloudevent(_row([1])), target=backend.target_at(port)),
            FAULT_BOUND + 1,
        )
        elapsed = time.monotonic() - started

    assert outcome is not None, f"the send was still running after {elapsed:.1f} s"
    _assert_failed(outcome)
    assert elapsed < FAULT_BOUND, f"took {elapsed:.1f} s with a {FAULT_TIMEOUT:g} s timeout"


def test_failed_send_does_not_poison_the_sink(backend: Backend, fault_sink: EventSink) -> None:
    first, second = cloudevent(_row([1])), cloudevent(_row([2]))
    dead = _outgoing(backend, cloudevent(_row([0])), target=backend.target_at(free_port()))

    assert fault_sink.send(_outgoing(backend, first)).delivered
    assert fault_sink.send(dead).delivered is False
    after = fault_sink.send(_outgoing(backend, second))

    assert after.delivered, after.error
    assert _ids(backend.settled(2)) == Counter([first["id"], second["id"]])


def test_severed_connection_is_replaced(backend: Backend, fault_sink: EventSink) -> None:
    docs = [cloudevent(_row([n])) for n in range(3)]
    with tcp_proxy(HOST, backend.port) as proxy:
        target = backend.target_at(proxy.port)
        assert fault_sink.send(_outgoing(backend, docs[0], target=target)).delivered

        proxy.sever()
        # The first send may still find the dead cached connection; the next must not.
        retried = fault_sink.send(_outgoing(backend, docs[1], target=target))
        if not retried.delivered:
            _assert_failed(retried)
            retried = fault_sink.send(_outgoing(backend, docs[1], target=target))
        assert retried.delivered, retried.error
        assert fault_sink.send(_outgoing(backend, docs[2], target=target)).delivered

    assert set(_ids(backend.settled(3))) == {doc["id"] for doc in docs}


def test_frozen_target_is_not_delivered_in_time(backend: Backend, fault_sink: EventSink) -> None:
    docs = [cloudevent(_row([n])) for n in range(3)]
    with tcp_proxy(HOST, backend.port) as proxy:
        target = backend.target_at(proxy.port)
        assert fault_sink.send(_outgoing(backend, docs[0], target=target)).delivered

        proxy.freeze()
        try:
            started = time.monotonic()
            frozen = _send_within(
                fault_sink, _outgoing(backend, docs[1], target=target), FAULT_BOUND + 1
            )
            elapsed = time.monotonic() - started
        finally:
            proxy.thaw()  # a hung send finishes now, before the sink is closed
        assert frozen is not None, "the send to a target that stopped answering never ended"
        _assert_failed(frozen)
        assert elapsed < FAULT_BOUND, f"took {elapsed:.1f} s with a {FAULT_TIMEOUT:g} s timeout"

        after = fault_sink.send(_outgoing(backend, docs[2], target=target))
        assert after.delivered, after.error

    # The frozen message may come through once thawed (at least once), the others must.
    expected = {docs[0]["id"], docs[2]["id"]}
    got = backend.wait_for(2)
    if not expected <= set(_ids(got)):
        got = backend.wait_for(3)  # the thawed one arrived before the last
    assert expected <= set(_ids(got))


def test_check_target_accepts_the_live_target(backend: Backend) -> None:
    sink_class(backend.scheme).check_target(backend.target)


HOSTLESS = {
    "webhook": "http:///hooks/x",
    "amqp": "amqp:///?exchange=conveyor&routing_key=x",
    "mqtt": "mqtt:///conveyor-test/x",
    "nats": "nats:///conveyor.test.x",
}


@pytest.mark.parametrize(
    "url",
    [
        pytest.param(
            HOSTLESS["webhook"],
            id="webhook",
        ),
        pytest.param(
            "https://",
            id="webhook-empty",
        ),
        pytest.param(HOSTLESS["amqp"], id="amqp"),
        pytest.param("amqp://:5672/", id="amqp-port-only"),
        pytest.param(HOSTLESS["mqtt"], id="mqtt"),
        pytest.param(HOSTLESS["nats"], id="nats"),
    ],
)
def test_check_target_refuses_url_without_host(url: str) -> None:
    with pytest.raises(BadRequest, match="host"):
        sink_class(url.split(":", 1)[0]).check_target(url)


@pytest.mark.parametrize(
    "url",
    [
        f"mqtt://{HOST}:1883/conveyor-test/+",
        f"mqtt://{HOST}:1883/conveyor-test/+/files",
        pytest.param(
            f"mqtt://{HOST}:1883/conveyor-test/#",
        ),
        pytest.param(
            f"mqtt://{HOST}:1883/conveyor-test/%23",
        ),
        pytest.param(
            f"mqtt://{HOST}:1883/conveyor-test/%2B/files",
        ),
        f"nats://{HOST}:4222/conveyor.test.*",
        f"nats://{HOST}:4222/conveyor.*.files",
        f"nats://{HOST}:4222/conveyor.test.>",
        f"nats://{HOST}:4222/>",
        pytest.param(
            f"nats://{HOST}:4222/conveyor.test.%2A",
        ),
        pytest.param(
            f"nats://{HOST}:4222/conveyor.test.%3E",
        ),
    ],
)
def test_check_target_refuses_wildcard_topics_and_subjects(url: str) -> None:
    with pytest.raises(BadRequest, match="wildcard"):
        sink_class(url.split(":", 1)[0]).check_target(url)


# ---------------------------------------------------------------------------------------
# Webhooks only.


@pytest.fixture
def webhook_sink() -> Iterator[EventSink]:
    """A webhook sink, closed after the test."""
    opened = open_sink("http", TIMEOUT)
    yield opened
    opened.close()


def _webhook_outgoing(
    url: str, auth: dict[str, Any] | None = None, secret: str = SECRET
) -> Outgoing:
    doc = cloudevent(_row(PACIFICA_DATA))
    return Outgoing(
        doc["id"], EVENT_TYPE, url, encode(doc, "cloudevents", "structured"), auth, secret
    )


def test_webhook_is_signed_with_standard_webhooks(hook: Hook, webhook_sink: EventSink) -> None:
    secret = new_secret()
    outgoing = _webhook_outgoing(hook.url, secret=secret)

    assert webhook_sink.send(outgoing).delivered
    [request] = hook.arrived(1)

    assert request.headers["webhook-id"] == outgoing.event_id
    assert abs(int(request.headers["webhook-timestamp"]) - time.time()) < 60
    verified = standardwebhooks.Webhook(secret).verify(request.body, request.headers)
    assert verified == json.loads(outgoing.message.body)
    with pytest.raises(standardwebhooks.WebhookVerificationError):
        standardwebhooks.Webhook(new_secret()).verify(request.body, request.headers)
    with pytest.raises(standardwebhooks.WebhookVerificationError):
        standardwebhooks.Webhook(secret).verify(request.body + b" ", request.headers)


def test_webhook_keeps_the_event_id_on_every_retry(hook: Hook, webhook_sink: EventSink) -> None:
    hook.receiver.fail_next(1)
    outgoing = _webhook_outgoing(hook.url)

    first, second = webhook_sink.send(outgoing), webhook_sink.send(outgoing)

    assert (first.delivered, first.status, second.delivered) == (False, 503, True)
    ids = [request.headers["webhook-id"] for request in hook.arrived(2)]
    assert ids == [outgoing.event_id, outgoing.event_id]


@pytest.mark.parametrize(
    ("retry_after", "seconds", "slack"),
    [("7", 7.0, 0.0), ("in 120 s", 120.0, 5.0), (None, None, 0.0)],
    ids=["seconds", "http-date", "absent"],
)
def test_webhook_503_reports_retry_after(
    webhook_sink: EventSink, retry_after: str | None, seconds: float | None, slack: float
) -> None:
    if retry_after == "in 120 s":  # an HTTP date, made when the test runs
        retry_after = format_datetime(datetime.now(UTC) + timedelta(seconds=120), usegmt=True)
    headers = {"Retry-After": retry_after} if retry_after else {}
    with answering_receiver(503, headers, b"busy, come back later") as server:
        outcome = webhook_sink.send(_webhook_outgoing(f"{server.url}/hook"))

    assert (outcome.delivered, outcome.status) == (False, 503)
    assert "503" in outcome.error
    assert outcome.excerpt == "busy, come back later"
    if seconds is None:
        assert outcome.retry_after is None
    else:
        assert outcome.retry_after == pytest.approx(seconds, abs=slack)


def test_webhook_records_an_excerpt_of_a_2xx_answer(webhook_sink: EventSink) -> None:
    with answering_receiver(202, {"Content-Type": "text/plain"}, b"queued as #42") as server:
        outcome = webhook_sink.send(_webhook_outgoing(f"{server.url}/hook"))

    assert (outcome.delivered, outcome.status, outcome.error) == (True, 202, "")
    assert outcome.excerpt == "queued as #42"


def test_webhook_excerpt_of_a_large_answer_is_short_and_the_sink_goes_on(
    webhook_sink: EventSink,
) -> None:
    large = ("ä" + "x" * 99) * 2000  # 200 kB of text with multi-byte characters
    with answering_receiver(200, {}, large.encode()) as server:
        url = f"{server.url}/hook"
        outcomes = [webhook_sink.send(_webhook_outgoing(url)) for _ in range(3)]
        assert len(server.requests) == 3

    assert [o.delivered for o in outcomes] == [True, True, True]
    assert outcomes[0].excerpt == large[:EXCERPT_CHARS]


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_webhook_does_not_follow_a_redirect(
    hook: Hook, webhook_sink: EventSink, status: int
) -> None:
    with answering_receiver(status, {"Location": hook.url}) as server:
        outcome = webhook_sink.send(_webhook_outgoing(f"{server.url}/hook"))
        assert len(server.requests) == 1

    assert (outcome.delivered, outcome.status) == (False, status)
    assert str(status) in outcome.error
    # A followed redirect would have reached the receiver before send() returned.
    assert hook.requests == []


@pytest.mark.parametrize(
    ("auth", "header", "value"),
    [
        (
            {"type": "basic", "username": "conveyor", "password": "pä ss:wörd"},
            "authorization",
            "Basic " + base64.b64encode("conveyor:pä ss:wörd".encode()).decode(),
        ),
        (
            {"type": "basic", "username": "конвейер", "password": "пароль 密码"},
            "authorization",
            "Basic " + base64.b64encode("конвейер:пароль 密码".encode()).decode(),
        ),
        ({"type": "bearer", "token": "tok-123.abc"}, "authorization", "Bearer tok-123.abc"),
        ({"type": "header", "name": "X-Api-Key", "value": "k-456"}, "x-api-key", "k-456"),
    ],
    ids=["basic", "basic-non-latin1", "bearer", "header"],
)
def test_webhook_sends_credentials(
    hook: Hook, webhook_sink: EventSink, auth: dict[str, str], header: str, value: str
) -> None:
    outcome = webhook_sink.send(_webhook_outgoing(hook.url, auth=auth))

    assert outcome.delivered, outcome.error
    [request] = hook.arrived(1)
    # RFC 7617: user and password as UTF-8 (the one charset it defines), then base64.
    assert request.headers[header] == value
    if header != "authorization":
        assert "authorization" not in request.headers


def test_webhook_without_credentials_sends_no_authorization(
    hook: Hook, webhook_sink: EventSink
) -> None:
    assert webhook_sink.send(_webhook_outgoing(hook.url)).delivered

    [request] = hook.arrived(1)
    assert "authorization" not in request.headers
    assert request.headers["content-type"] == "application/cloudevents+json"


@pytest.mark.parametrize(
    "auth",
    [
        pytest.param(
            {"type": "bearer", "token": "токен"},
            id="bearer-non-ascii",
        ),
        pytest.param(
            {"type": "header", "name": "X-Api-Key", "value": "значение"},
            id="header-non-ascii",
        ),
        pytest.param(
            {"type": "header", "name": "X-Api-Key", "value": "k\r\nX-Injected: 1"},
            id="header-crlf",
        ),
    ],
)
def test_webhook_unsendable_credentials_are_a_failed_send(
    hook: Hook, webhook_sink: EventSink, auth: dict[str, str]
) -> None:
    outcome = webhook_sink.send(_webhook_outgoing(hook.url, auth=auth))

    _assert_failed(outcome)
    assert not [request for request in hook.requests if "x-injected" in request.headers]
