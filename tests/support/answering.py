"""A loopback HTTP server that answers every request with a scripted status, headers and body.

Where :mod:`tests.support.receivers` answers a bare status, this one answers what a test
sets in :attr:`AnsweringServer.answer` (a ``Retry-After``, a body to excerpt, a redirect's
``Location``) and records each request the same way.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from tests.support.receivers import Received


@dataclass(frozen=True)
class Answer:
    """What the server answers: a status, headers and a body."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


class AnsweringServer:
    """Records every request and answers :attr:`answer`."""

    def __init__(self, server: ThreadingHTTPServer, answer: Answer) -> None:
        self._server = server
        self._lock = threading.Lock()
        self._requests: list[Received] = []
        self.answer = answer

    @property
    def url(self) -> str:
        """The server's base URL (``http://127.0.0.1:PORT``)."""
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def requests(self) -> list[Received]:
        """Every request so far, in arrival order."""
        with self._lock:
            return list(self._requests)

    def _record(self, request: Received) -> None:
        with self._lock:
            self._requests.append(request)


def _handler_for(box: list[AnsweringServer]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            headers = {name.lower(): value for name, value in self.headers.items()}
            server = box[0]
            answer = server.answer
            server._record(Received(self.command, self.path, headers, body, answer.status))
            self.send_response(answer.status)
            for name, value in answer.headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(answer.body)))
            self.end_headers()
            self.wfile.write(answer.body)

        do_POST = _answer  # noqa: N815 - http.server's naming
        do_PUT = _answer  # noqa: N815
        do_GET = _answer  # noqa: N815

        def log_message(self, format: str, *args: object) -> None:
            """Stay quiet: the test asserts on the recorded requests instead."""

    return Handler


@contextmanager
def answering_server(answer: Answer) -> Iterator[AnsweringServer]:
    """An :class:`AnsweringServer` on a free loopback port, stopped afterwards."""
    box: list[AnsweringServer] = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(box))
    server.daemon_threads = True
    answering = AnsweringServer(server, answer)
    box.append(answering)
    # A short poll interval: shutdown() waits for one, and tests stop a server each.
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="answering", daemon=True
    )
    thread.start()
    try:
        yield answering
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
