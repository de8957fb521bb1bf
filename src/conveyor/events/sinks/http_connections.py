"""Kept-alive HTTP connections for webhook sends: one per sending thread and origin.

Written on the standard library's ``http.client`` because the pooled clients cost two to
three times its CPU per request (urllib3 555 to 597 µs, http.client 210 to 243 µs here; see
bench/README.md) and webhook sends are most of a dispatcher's work. What this adds is
small: a connection per (thread, origin), a bounded read of each answer so the connection
can be reused, and one fresh try when a kept-alive connection turns out to have been closed
by the server before it answered.
"""

from __future__ import annotations

import http.client
import ssl
import threading
from dataclasses import dataclass
from urllib.parse import urlsplit

# How much of an answer is kept (for the excerpt), and how much more is read to reuse the
# connection; a longer answer closes the connection instead.
KEPT_BYTES = 4096
DRAIN_BYTES = 64 * 1024
# A kept-alive connection the server closed fails in one of these ways before any answer.
STALE = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)


@dataclass(frozen=True)
class Answer:
    """A target's answer: status, headers we care about, and the start of the body."""

    status: int
    retry_after: str | None
    start: bytes


class HttpConnections:
    """Per-thread kept-alive connections to any number of origins."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._local = threading.local()
        self._all: set[http.client.HTTPConnection] = set()
        self._lock = threading.Lock()
        self._tls = ssl.create_default_context()

    def post(self, url: str, body: bytes, headers: dict[str, str]) -> Answer:
        """POST ``body``; the answer, or an ``OSError``/``HTTPException`` saying why not."""
        parts = urlsplit(url)
        origin = (parts.scheme, parts.hostname or "", parts.port)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        for fresh in (False, True):
            connection, reused = self._connection(origin, fresh)
            try:
                connection.request("POST", target, body=body, headers=headers)
                response = connection.getresponse()
                return self._read(connection, response)
            except STALE:
                self._drop(connection)
                if not reused or fresh:
                    raise
            except BaseException:
                self._drop(connection)
                raise
        raise AssertionError("unreachable: the second try returns or raises")

    def _read(
        self, connection: http.client.HTTPConnection, response: http.client.HTTPResponse
    ) -> Answer:
        start = response.read(KEPT_BYTES)
        rest = response.read(DRAIN_BYTES)
        if len(rest) >= DRAIN_BYTES or response.will_close:
            self._drop(connection)
        return Answer(response.status, response.getheader("retry-after"), start)

    def _connection(
        self, origin: tuple[str, str, int | None], fresh: bool
    ) -> tuple[http.client.HTTPConnection, bool]:
        held: dict[tuple[str, str, int | None], http.client.HTTPConnection]
        held = self._local.__dict__.setdefault("held", {})
        connection = held.get(origin)
        if connection is not None and not fresh:
            return connection, True
        scheme, host, port = origin
        if scheme == "https":
            connection = http.client.HTTPSConnection(
                host, port, timeout=self.timeout, context=self._tls
            )
        else:
            connection = http.client.HTTPConnection(host, port, timeout=self.timeout)
        held[origin] = connection
        with self._lock:
            self._all.add(connection)
        return connection, False

    def _drop(self, connection: http.client.HTTPConnection) -> None:
        connection.close()
        held = self._local.__dict__.get("held", {})
        for origin, kept in list(held.items()):
            if kept is connection:
                del held[origin]
        with self._lock:
            self._all.discard(connection)

    def close(self) -> None:
        """Close every connection of every thread."""
        with self._lock:
            connections, self._all = self._all, set()
        for connection in connections:
            connection.close()
