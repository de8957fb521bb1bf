"""A lean webhook receiver for the events benchmark: records each delivery's arrival.

``POST /hook``: 204, noting the ``webhook-id``, the arrival time and the event's own time.
``GET /stats``: how many arrived and how many distinct ids; ``GET /latencies``: every
commit-to-arrival latency.
``DELETE /stats``: forget everything.
"""

from __future__ import annotations

import json
import time
from datetime import datetime
from typing import Any

Scope = dict[str, Any]
latencies: list[float] = []
seen: set[str] = set()


async def app(scope: Scope, receive: Any, send: Any) -> None:
    """The ASGI application."""
    if scope["type"] != "http":
        return
    body = bytearray()
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    method, path = scope["method"], scope["path"]
    if method == "POST":
        headers = dict(scope["headers"])
        event = json.loads(body)
        sent = datetime.fromisoformat(event["time"].replace("Z", "+00:00")).timestamp()
        seen.add(headers[b"webhook-id"].decode())
        latencies.append(time.time() - sent)
        await _answer(send, 204, b"")
    elif path == "/stats" and method == "GET":
        stats = {"count": len(latencies), "distinct": len(seen)}
        await _answer(send, 200, json.dumps(stats).encode())
    elif path == "/latencies" and method == "GET":
        await _answer(send, 200, json.dumps(latencies).encode())
    else:
        latencies.clear()
        seen.clear()
        await _answer(send, 204, b"")


async def _answer(send: Any, status: int, body: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})
