"""A threaded HTTP server for tests whose every connection can be ended and joined.

Python's ``ThreadingHTTPServer`` leaves idle keep-alive connections (and anything a handler
starts, such as a proxy's tunnel) running after ``shutdown()``. Here each connection's
thread and sockets are tracked, so :func:`serving` can wake them all on exit and fail the
test when one does not stop.
"""

from __future__ import annotations

import http.server
import logging
import socket
import socketserver
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Any, TypeVar

logger = logging.getLogger(__name__)

JOIN_TIMEOUT = 10.0  # seconds a server thread may take to stop before the test fails

ServerT = TypeVar("ServerT", bound="TrackedHTTPServer")


class DispatchingHandler(http.server.BaseHTTPRequestHandler):
    """GET, HEAD and POST all go to :meth:`dispatch`; short answers are plain text."""

    log_name = "http"

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug(f"{self.log_name} %s: " + format, self.address_string(), *args)

    def do_GET(self) -> None:
        self.dispatch()

    def do_HEAD(self) -> None:
        self.dispatch()

    def do_POST(self) -> None:
        self.dispatch()

    def dispatch(self) -> None:
        """Answer the request (any method)."""
        raise NotImplementedError

    def reply_text(
        self, status: int, text: str, headers: dict[str, str] | None = None, close: bool = False
    ) -> None:
        """Answer ``status`` with ``text`` (its length only, to a HEAD)."""
        body = f"{text}\n".encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        if close:
            self.send_header("Connection", "close")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


class TrackedHTTPServer(http.server.HTTPServer):
    """A thread per connection on 127.0.0.1 (the kernel picks the port), all tracked."""

    daemon_threads = True
    request_queue_size = 64
    thread_prefix = "http"

    def __init__(self, handler: Callable[..., socketserver.BaseRequestHandler]) -> None:
        self._lock = threading.Lock()
        self._stopping = False
        self._threads: set[threading.Thread] = set()
        self._sockets: set[socket.socket] = set()
        super().__init__(("127.0.0.1", 0), handler)
        self.port = int(self.server_address[1])

    def server_bind(self) -> None:
        # HTTPServer.server_bind does a reverse DNS lookup of the host (getfqdn): skip it.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)

    def process_request(self, request: Any, client_address: Any) -> None:
        self.track(request)
        self.start_thread(
            self._serve_connection,
            request,
            client_address,
            name=f"{self.thread_prefix}-{self.port}-conn",
        )

    def open_connection(self, request: socket.socket) -> socket.socket:
        """The socket to serve ``request`` on; a TLS server wraps it here, in the
        connection's own thread, so a slow handshake blocks only that connection."""
        return request

    def _serve_connection(self, request: socket.socket, client_address: Any) -> None:
        connection = request
        try:
            connection = self.open_connection(request)
            self.track(connection)
            self.finish_request(connection, client_address)
        except (OSError, ValueError) as error:
            logger.debug("connection from %s ended: %r", client_address, error)
        except Exception:
            logger.exception("connection from %s failed", client_address)
        finally:
            self.untrack(request)
            self.untrack(connection)
            self.shutdown_request(connection)

    def start_thread(self, target: Any, *args: Any, name: str) -> threading.Thread:
        """Start a daemon thread that :meth:`stop_connections` hands back for joining."""
        thread = threading.Thread(target=self._run, args=(target, *args), name=name, daemon=True)
        with self._lock:
            self._threads.add(thread)
        thread.start()
        return thread

    def _run(self, target: Any, *args: Any) -> None:
        try:
            target(*args)
        finally:
            with self._lock:
                self._threads.discard(threading.current_thread())

    def track(self, sock: socket.socket) -> None:
        """Register a socket to be shut down when the server stops."""
        with self._lock:
            if not self._stopping:
                self._sockets.add(sock)
                return
        # Opened while stopping: the sweep would miss it, so end it now.
        _shut(sock)

    def untrack(self, sock: socket.socket) -> None:
        """Forget a socket about to be closed."""
        with self._lock:
            self._sockets.discard(sock)

    def stop_connections(self) -> list[threading.Thread]:
        """Wake every thread (idle keep-alives included); the threads to join."""
        with self._lock:
            self._stopping = True
            sockets = list(self._sockets)
            threads = list(self._threads)
        for sock in sockets:
            _shut(sock)
        return threads


def _shut(sock: socket.socket) -> None:
    # socket.socket.shutdown, not SSLSocket's: no TLS alert goes out first.
    with suppress(OSError):
        socket.socket.shutdown(sock, socket.SHUT_RDWR)


@contextmanager
def serving(server: ServerT, on_stop: Callable[[], None] = lambda: None) -> Iterator[ServerT]:
    """Run ``server`` while in the block; then stop it, call ``on_stop`` (to end what
    handlers wait for), and join every thread (``RuntimeError`` for one that hangs)."""
    name = f"{server.thread_prefix}-{server.port}"
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, name=name, daemon=True
    )
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        on_stop()
        thread.join(timeout=JOIN_TIMEOUT)
        deadline = time.monotonic() + JOIN_TIMEOUT
        stuck = [thread] if thread.is_alive() else []
        # Again until none is left: a handler may start another thread during the sweep.
        while workers := [w for w in server.stop_connections() if w not in stuck]:
            for worker in workers:
                worker.join(timeout=max(0.0, deadline - time.monotonic()))
                if worker.is_alive():
                    stuck.append(worker)
        server.server_close()
        if stuck:
            names = ", ".join(worker.name for worker in stuck)
            raise RuntimeError(f"{name} threads did not stop in {JOIN_TIMEOUT:.0f} s: {names}")
