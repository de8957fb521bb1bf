"""Webhooks: an HTTP POST per event, signed with Standard Webhooks headers.

Every request carries ``webhook-id`` (the event id, the same on every retry, so a receiver
can drop duplicates), ``webhook-timestamp`` and ``webhook-signature`` (HMAC-SHA256 of
``id.timestamp.body`` with the subscription's secret). Redirects are not followed: a
target must answer 2xx itself, and a redirect cannot lead the server somewhere the target
policy would refuse.
"""

from __future__ import annotations

import base64
import http.client
import threading
from datetime import UTC, datetime
from typing import ClassVar
from urllib.parse import urlsplit

from standardwebhooks import Webhook

from conveyor.errors import BadRequest
from conveyor.events.sinks.base import EventSink, Outcome, Outgoing, describe, excerpt, register
from conveyor.events.sinks.http_connections import HttpConnections
from conveyor.http_headers import retry_after_seconds


@register
class WebhookSink(EventSink):
    """POSTs events over one pooled HTTP client."""

    schemes: ClassVar[tuple[str, ...]] = ("http", "https")

    def __init__(self, timeout: float) -> None:
        super().__init__(timeout)
        self._connections = HttpConnections(timeout)
        self._signers: dict[str, Webhook] = {}
        self._lock = threading.Lock()

    @classmethod
    def check_target(cls, url: str) -> None:
        """The URL must name a host."""
        if not urlsplit(url).hostname:
            raise BadRequest(f"webhook target {url!r} needs a host")

    def send(self, outgoing: Outgoing) -> Outcome:
        """POST the event; 2xx is delivered, anything else (or no answer) is not."""
        headers = {"content-type": outgoing.message.content_type, **outgoing.message.headers}
        headers.update(self._signature(outgoing))
        headers.update(_auth_headers(outgoing.auth))
        try:
            answer = self._connections.post(outgoing.target_url, outgoing.message.body, headers)
        except (OSError, http.client.HTTPException) as error:
            return Outcome(False, error=describe(error, self.timeout))
        except (ValueError, UnicodeError) as error:  # a header http.client will not send
            return Outcome(False, error=f"the request could not be made: {error}")
        text = answer.start.decode("utf-8", "replace")
        status = answer.status
        retry_after = retry_after_seconds(answer.retry_after)
        if 200 <= status < 300:
            return Outcome(True, status, excerpt=excerpt(text))
        return Outcome(
            False,
            status,
            error=f"the target answered {status}",
            excerpt=excerpt(text),
            retry_after=retry_after,
        )

    def _signature(self, outgoing: Outgoing) -> dict[str, str]:
        if not outgoing.secret:
            return {}
        with self._lock:
            signer = self._signers.get(outgoing.secret)
            if signer is None:
                signer = self._signers[outgoing.secret] = Webhook(outgoing.secret)
        now = datetime.now(UTC)
        body = outgoing.message.body.decode("utf-8")
        return {
            "webhook-id": outgoing.event_id,
            "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": signer.sign(outgoing.event_id, now, body),
        }

    def close(self) -> None:
        """Close the kept-alive connections."""
        self._connections.close()


def _auth_headers(auth: dict[str, str] | None) -> dict[str, str]:
    """The request headers that carry a subscription's credentials."""
    if not auth:
        return {}
    if auth["type"] == "basic":
        # UTF-8, as RFC 7617 recommends and browsers do (urllib3's helper uses Latin-1).
        pair = f"{auth['username']}:{auth['password']}".encode()
        return {"authorization": f"Basic {base64.b64encode(pair).decode()}"}
    if auth["type"] == "bearer":
        return {"authorization": f"Bearer {auth['token']}"}
    return {auth["name"]: auth["value"]}
