"""Webhooks: an HTTP POST per event, signed with Standard Webhooks headers.

Every request carries ``webhook-id`` (the event id, the same on every retry, so a receiver
can drop duplicates), ``webhook-timestamp`` and ``webhook-signature`` (HMAC-SHA256 of
``id.timestamp.body`` with the subscription's secret). Redirects are not followed: a
target must answer 2xx itself, and a redirect cannot lead the server somewhere the target
policy would refuse.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from typing import ClassVar

import httpx
from standardwebhooks import Webhook

from conveyor.events.sinks.base import EventSink, Outcome, Outgoing, excerpt, register
from conveyor.http_headers import retry_after_seconds

# How much of an answer is read: enough for an excerpt, never a whole large body.
ANSWER_BYTES = 4096


@register
class WebhookSink(EventSink):
    """POSTs events over one pooled HTTP client."""

    schemes: ClassVar[tuple[str, ...]] = ("http", "https")

    def __init__(self, timeout: float) -> None:
        super().__init__(timeout)
        self._client = httpx.Client(
            timeout=httpx.Timeout(timeout, connect=min(timeout, 5.0)),
            follow_redirects=False,
            limits=httpx.Limits(max_connections=256, max_keepalive_connections=64),
            trust_env=False,
        )
        self._signers: dict[str, Webhook] = {}
        self._lock = threading.Lock()

    def send(self, outgoing: Outgoing) -> Outcome:
        """POST the event; 2xx is delivered, anything else (or no answer) is not."""
        headers = {"content-type": outgoing.message.content_type, **outgoing.message.headers}
        headers.update(self._signature(outgoing))
        headers.update(_auth_headers(outgoing.auth))
        try:
            with self._client.stream(
                "POST", outgoing.target_url, content=outgoing.message.body, headers=headers
            ) as answer:
                text = _read_start(answer)
                status = answer.status_code
                retry_after = retry_after_seconds(answer.headers.get("retry-after"))
        except httpx.HTTPError as error:
            return Outcome(False, error=f"{type(error).__name__}: {error or 'no answer'}")
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
        """Close the pooled connections."""
        self._client.close()


def _auth_headers(auth: dict[str, str] | None) -> dict[str, str]:
    """The request headers that carry a subscription's credentials."""
    if not auth:
        return {}
    if auth["type"] == "basic":
        basic = httpx.BasicAuth(auth["username"], auth["password"])
        request = next(basic.auth_flow(httpx.Request("POST", "http://credentials.invalid")))
        return {"authorization": request.headers["authorization"]}
    if auth["type"] == "bearer":
        return {"authorization": f"Bearer {auth['token']}"}
    return {auth["name"]: auth["value"]}


def _read_start(answer: httpx.Response) -> str:
    """The first bytes of an answer, as text; the rest is left unread."""
    read = bytearray()
    for chunk in answer.iter_raw():
        read += chunk
        if len(read) >= ANSWER_BYTES:
            break
    return bytes(read[:ANSWER_BYTES]).decode("utf-8", "replace")
