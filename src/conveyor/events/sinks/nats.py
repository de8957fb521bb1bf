"""NATS: each event published to a subject, with CloudEvents binary headers when asked.

Target: ``nats://user@host:4222/subject.name`` (``tls://`` for TLS); the subject defaults
to the event type. A send counts once the server has answered a flush after it, so the
message reached the server; a JetStream stream bound to the subject keeps it from there.
The event id goes in ``Nats-Msg-Id``, which JetStream uses to drop duplicates.
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any, ClassVar
from urllib.parse import unquote, urlsplit

import nats
from nats.aio.client import Client as NatsClient

from conveyor.aioloop import run_on_loop
from conveyor.errors import BadRequest
from conveyor.events.sinks.base import EventSink, Outcome, Outgoing, describe, register
from conveyor.events.sinks.connections import ConnectionCache


@register
class NatsSink(EventSink):
    """Publishes over one connection per server, driven on the background loop."""

    schemes: ClassVar[tuple[str, ...]] = ("nats", "tls")

    def __init__(self, timeout: float) -> None:
        super().__init__(timeout)
        self._clients: ConnectionCache[NatsClient] = ConnectionCache(
            lambda client: run_on_loop(client.close(), self.timeout)
        )

    @classmethod
    def check_target(cls, url: str) -> None:
        """The URL must name a host; its subject may not hold wildcards."""
        parts = urlsplit(url)
        if not parts.hostname:
            raise BadRequest(f"NATS target {url!r} needs a host")
        subject = unquote(parts.path.strip("/"))
        if "*" in subject or ">" in subject or " " in subject or "#" in url:
            raise BadRequest(f"NATS target {url!r}: a subject to publish to has no wildcards")

    def send(self, outgoing: Outgoing) -> Outcome:
        """Publish, then flush so the server has it before this counts as delivered."""
        parts = urlsplit(outgoing.target_url)
        subject = unquote(parts.path.strip("/")) or outgoing.event_type
        server = f"{parts.scheme}://{parts.hostname}:{parts.port or 4222}"
        key = f"{parts.username or ''}@{server}"
        headers = {
            "Nats-Msg-Id": outgoing.event_id,
            "content-type": outgoing.message.content_type,
            **outgoing.message.headers,
        }
        try:
            connect = functools.partial(self._connect, server, parts.username, outgoing)
            with self._clients.use(key, connect) as client:
                run_on_loop(self._publish(client, subject, outgoing.message.body, headers))
        except Exception as error:  # nats-py raises many kinds; each is "not delivered"
            return Outcome(False, error=describe(error, self.timeout))
        return Outcome(True)

    async def _publish(
        self, client: NatsClient, subject: str, body: bytes, headers: dict[str, str]
    ) -> None:
        async with asyncio.timeout(self.timeout):
            await client.publish(subject, body, headers=headers)
            # nats-py writes a flush's PING straight to the socket, ahead of the publish still
            # queued for its flusher task, so the first PONG can come back for a message the
            # server has not seen (lost if the connection drops then). The second PING goes
            # out after the flusher has written the publish; its PONG is the confirmation.
            await client.flush(timeout=int(max(1.0, self.timeout)))
            await client.flush(timeout=int(max(1.0, self.timeout)))

    def _connect(self, server: str, username: str | None, outgoing: Outgoing) -> NatsClient:
        auth: dict[str, Any] = outgoing.auth or {}
        options: dict[str, Any] = {
            "servers": [server],
            "connect_timeout": self.timeout,
            "allow_reconnect": False,
            # One try: nats-py otherwise keeps trying for minutes after the send gave up.
            "max_reconnect_attempts": 1,
            "reconnect_time_wait": 0.1,
            "error_cb": _quiet,
            "name": "conveyor",
        }
        if username:
            options["user"] = unquote(username)
            options["password"] = auth.get("password", "")
        client: NatsClient = run_on_loop(_connect_within(options, self.timeout))
        return client

    def close(self) -> None:
        """Close every server connection."""
        self._clients.close_all()


async def _connect_within(options: dict[str, Any], timeout: float) -> NatsClient:
    """Connect, or give up (cancelling every retry) after ``timeout`` seconds."""
    async with asyncio.timeout(timeout):
        client: NatsClient = await nats.connect(**options)
        return client


async def _quiet(error: Exception) -> None:
    """nats-py reports connection errors here too; the send's outcome already says them."""
