"""MoTrPAC FileDownloadMessages from an AMQP queue.

A message is acknowledged once its request is committed to the database, never later: a
long zip build cannot outlive the broker's delivery deadline, and a consumer that dies
before the commit leaves the message to be delivered again. Messages that can never work
(not a FileDownloadMessage, nothing of it in the archive) are rejected to ``QUEUE.dead``.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from conveyor.auth.principal import Principal
from conveyor.carts.motrpac import request_zip
from conveyor.carts.motrpac_messages import BadMessage, decode_download
from conveyor.queues import serve_queue
from conveyor.runtime import Runtime

log = logging.getLogger(__name__)

PREFETCH = 8
# The queue consumer is configured by an operator, so it reads what the archive holds
# (narrowed by CONVEYOR_MOTRPAC_PROJECT when set).
QUEUE_PRINCIPAL = Principal(user="motrpac", admin=True, authenticated=True)


class RequestConsumer:
    """Records each message's request, then acknowledges it; submits the jobs it needs."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.handled = 0

    def __call__(self, message: Any) -> None:
        """Handle one raw message (``Consumer(on_message=…)`` gives the undecoded body)."""
        try:
            wanted = decode_download(bytes(message.body))
            project = self.runtime.settings.motrpac_project or None
            with self.runtime.db.session() as session:
                outcome = request_zip(
                    session, QUEUE_PRINCIPAL, self.runtime.bundles, wanted, project
                )
                cart_id = outcome.cart.id
        except BadMessage as exc:
            log.warning("rejected a MoTrPAC request to the dead-letter queue: %s", exc)
            message.reject(requeue=False)
            return
        except Exception:
            # The database is away: the message goes back and is delivered again later.
            log.exception("could not record a MoTrPAC request; it goes back to the queue")
            message.requeue()
            return
        message.ack()
        self.handled += 1
        log.info("MoTrPAC request %s recorded as cart %s", wanted.zipfile, cart_id)
        for job_id in outcome.jobs:
            self.runtime.submit(job_id)


def consume(
    runtime: Runtime,
    url: str,
    name: str,
    stop: threading.Event,
    limit: int | None = None,
) -> int:
    """Consume ``name`` on the broker at ``url`` until ``stop`` is set (or ``limit``
    messages are handled); how many were recorded."""
    handler = RequestConsumer(runtime)
    serve_queue(
        url,
        name,
        handler,
        stop,
        prefetch=PREFETCH,
        keep_going=lambda: limit is None or handler.handled < limit,
    )
    return handler.handled
