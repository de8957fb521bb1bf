"""Publishing raw messages to a dead-lettered AMQP queue and counting what waits in it."""

from __future__ import annotations

from typing import Any

from kombu import Connection, Producer

from conveyor.queues import dead_lettered

BROKER = "amqp://guest:guest@127.0.0.1:5672//"


def publish(name: str, *bodies: bytes) -> None:
    """Declare ``name`` and its dead-letter queue, then publish each body as persistent bytes."""
    live, dead = dead_lettered(name)
    with Connection(BROKER) as connection:
        channel = connection.default_channel
        dead.bind(channel).declare()
        live.bind(channel).declare()
        producer = Producer(channel)
        for body in bodies:
            producer.publish(
                body,
                routing_key=name,
                delivery_mode=2,
                content_type="application/octet-stream",
                content_encoding="binary",
            )


def waiting(name: str) -> tuple[int, int]:
    """Messages ready in the live queue and in its dead-letter queue."""
    live, dead = dead_lettered(name)
    with Connection(BROKER) as connection:
        channel = connection.default_channel
        live_state: Any = live.bind(channel).queue_declare(passive=True)
        dead_state: Any = dead.bind(channel).queue_declare(passive=True)
        return live_state.message_count, dead_state.message_count
