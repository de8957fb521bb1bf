"""AMQP queues that never drop a message: each has a dead-letter queue ``NAME.dead``."""

from __future__ import annotations

from kombu import Exchange, Queue


def dead_lettered(name: str) -> tuple[Queue, Queue]:
    """The durable queue ``name``, dead-lettering into ``NAME.dead``, and that queue."""
    dead = Queue(f"{name}.dead", Exchange(""), routing_key=f"{name}.dead", durable=True)
    live = Queue(
        name,
        Exchange(""),
        routing_key=name,
        durable=True,
        queue_arguments={
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": f"{name}.dead",
        },
    )
    return live, dead
