"""AMQP 0-9-1 (RabbitMQ): each event published to an exchange with publisher confirms.

Target: ``amqp://user@host:5672/vhost?exchange=NAME&routing_key=KEY``; the exchange
defaults to ``amq.topic`` and the routing key to the event type. The password is kept
sealed with the subscription's credentials, not in the URL. A send counts as delivered
only when the broker confirms it; the message is persistent and carries the event id as
``message_id`` (binary mode adds the ``ce-*`` headers of the RabbitMQ binding).
"""

from __future__ import annotations

from typing import Any, ClassVar
from urllib.parse import parse_qs, quote, unquote, urlsplit

from kombu import Connection

from conveyor.errors import BadRequest
from conveyor.events.sinks.base import EventSink, Outcome, Outgoing, describe, register
from conveyor.events.sinks.connections import ConnectionCache

DEFAULT_EXCHANGE = "amq.topic"


@register
class AmqpSink(EventSink):
    """Publishes to RabbitMQ exchanges over cached, confirmed channels."""

    schemes: ClassVar[tuple[str, ...]] = ("amqp", "amqps")

    def __init__(self, timeout: float) -> None:
        super().__init__(timeout)
        # A broken connection is collected (its sockets dropped), not closed politely: a
        # polite close waits for a broker that may be the thing that hangs.
        self._connections: ConnectionCache[Connection] = ConnectionCache(
            lambda connection: connection.collect()
        )

    @classmethod
    def check_target(cls, url: str) -> None:
        """The URL must name a host; the exchange and routing key are optional."""
        parts = urlsplit(url)
        if not parts.hostname:
            raise BadRequest(f"AMQP target {url!r} needs a host")
        if "/" in parts.path.strip("/"):
            raise BadRequest(f"AMQP target {url!r}: the path is the vhost, one segment")

    def send(self, outgoing: Outgoing) -> Outcome:
        """Publish and wait for the broker's confirm."""
        parts = urlsplit(outgoing.target_url)
        query = parse_qs(parts.query)
        exchange = query.get("exchange", [DEFAULT_EXCHANGE])[0]
        routing_key = query.get("routing_key", [outgoing.event_type])[0]
        broker = _broker_url(outgoing.target_url, outgoing.auth)
        try:
            with self._connections.use(broker, lambda: self._connect(broker)) as connection:
                producer = connection.Producer()
                producer.publish(
                    outgoing.message.body,
                    exchange=exchange,
                    routing_key=routing_key,
                    headers=dict(outgoing.message.headers),
                    content_type=outgoing.message.content_type,
                    content_encoding="utf-8",
                    delivery_mode=2,
                    message_id=outgoing.event_id,
                    retry=False,
                    timeout=self.timeout,
                    confirm_timeout=self.timeout,
                )
        except Exception as error:  # kombu and amqp raise many kinds; each is "not delivered"
            return Outcome(False, error=describe(error, self.timeout))
        return Outcome(True)

    def _connect(self, broker: str) -> Connection:
        connection = Connection(
            broker,
            connect_timeout=self.timeout,
            transport_options={
                "confirm_publish": True,
                "read_timeout": self.timeout,
                "write_timeout": self.timeout,
            },
        )
        connection.ensure_connection(max_retries=0)
        return connection

    def close(self) -> None:
        """Release every broker connection."""
        self._connections.close_all()


def _broker_url(target_url: str, auth: dict[str, Any] | None) -> str:
    """The broker's connection URL: the target without its query, with the password back."""
    parts = urlsplit(target_url)
    user = unquote(parts.username or "guest")
    password = (auth or {}).get("password", "guest" if parts.username is None else "")
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    port = f":{parts.port}" if parts.port else ""
    credentials = f"{quote(user, safe='')}:{quote(str(password), safe='')}@"
    return f"{parts.scheme}://{credentials}{host}{port}{parts.path or '/'}"
