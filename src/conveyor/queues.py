"""AMQP queues that never drop a message: each has a dead-letter queue ``NAME.dead``."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from typing import Any

from kombu import Connection, Consumer, Exchange, Queue

POLL_SECONDS = 0.5


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


def serve_queue(
    url: str,
    name: str,
    on_message: Callable[[Any], None],
    stop: threading.Event,
    *,
    prefetch: int,
    keep_going: Callable[[], bool] = lambda: True,
    between: Callable[[], None] = lambda: None,
    finish: Callable[[], None] = lambda: None,
) -> None:
    """Hand each raw message of ``name`` to ``on_message`` until ``stop`` is set or
    ``keep_going`` says no; ``between`` runs after every wait (in this thread, which alone
    may acknowledge), ``finish`` once at the end while the connection is still open."""
    live, dead = dead_lettered(name)
    with Connection(url) as connection:
        channel = connection.default_channel
        dead.bind(channel).declare()
        live.bind(channel).declare()
        consumer = Consumer(channel, queues=[live], on_message=on_message, accept=None)
        consumer.qos(prefetch_count=prefetch)
        with consumer:
            while not stop.is_set() and keep_going():
                with contextlib.suppress(TimeoutError):
                    connection.drain_events(timeout=POLL_SECONDS)
                between()
            finish()
