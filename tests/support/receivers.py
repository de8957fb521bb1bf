"""A real HTTP receiver on loopback that records every request it gets (webhooks, notifiers).

It answers ``status`` (204 by default); :meth:`Receiver.fail_next` makes it answer an error
for the next requests first, as a receiver that is down for a while and then comes back.
:meth:`Receiver.hold` keeps requests waiting for their answer (each is recorded as it
arrives) until :meth:`Receiver.release`, to line up senders that run at the same time.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# The longest a held request waits for release (a test that forgot to release still ends).
HOLD_SECONDS = 20.0


@dataclass(frozen=True)
class Received:
    """One request as the receiver saw it, and the status it answered."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    status: int

    @property
    def succeeded(self) -> bool:
        """True when the receiver answered 2xx (the sender may count it as delivered)."""
        return 200 <= self.status < 300


class Receiver:
    """Records requests; answers ``status``, or an error for the next ``fail_next`` ones."""

    def __init__(self, server: ThreadingHTTPServer) -> None:
        self._server = server
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        self._requests: list[Received] = []
        self._failures_left = 0
        self._failure_status = 503
        self._gate = threading.Event()
        self._gate.set()
        self.status = 204
        # Sent with every answer (a Retry-After, a redirect's Location) and its body.
        self.answer_headers: dict[str, str] = {}
        self.answer_body = b""

    @property
    def url(self) -> str:
        """The receiver's base URL (``http://127.0.0.1:PORT``)."""
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def fail_next(self, count: int, status: int = 503) -> None:
        """Answer ``status`` to the next ``count`` requests, then ``self.status`` again."""
        with self._lock:
            self._failures_left = count
            self._failure_status = status

    def hold(self) -> None:
        """Keep every request from now on waiting for its answer until :meth:`release`."""
        self._gate.clear()

    def release(self) -> None:
        """Answer the held requests, and answer at once from now on."""
        self._gate.set()

    @property
    def requests(self) -> list[Received]:
        """Every request so far, in arrival order (failed ones included)."""
        with self._lock:
            return list(self._requests)

    @property
    def delivered(self) -> list[Received]:
        """The requests answered with 2xx."""
        return [request for request in self.requests if request.succeeded]

    def wait_for(self, count: int, timeout: float = 10.0) -> list[Received]:
        """Wait until at least ``count`` requests have arrived; all of them."""
        deadline = time.monotonic() + timeout
        with self._arrived:
            while len(self._requests) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"{len(self._requests)} request(s) arrived in {timeout} s, "
                        f"not {count}: {self._requests!r}"
                    )
                self._arrived.wait(left)
            return list(self._requests)

    def _record(self, method: str, path: str, headers: dict[str, str], body: bytes) -> int:
        with self._arrived:
            if self._failures_left > 0:
                self._failures_left -= 1
                status = self._failure_status
            else:
                status = self.status
            self._requests.append(Received(method, path, headers, body, status))
            self._arrived.notify_all()
            return status


def _handler_for(receiver_box: list[Receiver]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            headers = {name.lower(): value for name, value in self.headers.items()}
            receiver = receiver_box[0]
            status = receiver._record(self.command, self.path, headers, body)
            receiver._gate.wait(HOLD_SECONDS)
            self.send_response(status)
            for name, value in receiver.answer_headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(receiver.answer_body)))
            self.end_headers()
            self.wfile.write(receiver.answer_body)

        do_POST = _answer  # noqa: N815 - http.server's naming
        do_PUT = _answer  # noqa: N815
        do_GET = _answer  # noqa: N815

        def log_message(self, format: str, *args: object) -> None:
            """Stay quiet: the test asserts on the recorded requests instead."""

    return Handler


class _ReceiverServer(ThreadingHTTPServer):
    """A threading server whose listen backlog takes every sender of two dispatchers at
    once (the default of 5 drops connection attempts under load)."""

    request_queue_size = 128


@contextmanager
def running_receiver(port: int = 0) -> Iterator[Receiver]:
    """A receiver listening on loopback (``port``, or a free one), stopped afterwards."""
    box: list[Receiver] = []
    server = _ReceiverServer(("127.0.0.1", port), _handler_for(box))
    server.daemon_threads = True
    receiver = Receiver(server)
    box.append(receiver)
    thread = threading.Thread(target=server.serve_forever, name="receiver", daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        receiver.release()
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@contextmanager
def answering_receiver(
    status: int, headers: dict[str, str] | None = None, body: bytes = b""
) -> Iterator[Receiver]:
    """A receiver that answers every request with ``status``, ``headers`` and ``body``."""
    with running_receiver() as receiver:
        receiver.status = status
        receiver.answer_headers = dict(headers or {})
        receiver.answer_body = body
        yield receiver
