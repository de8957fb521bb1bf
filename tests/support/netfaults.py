"""Network faults on loopback: a proxy a test can break on purpose, and a silent listener.

:meth:`TcpProxy.sever` drops every open connection (as a broker restart or a network cut
would) while still accepting new ones; :meth:`TcpProxy.freeze` stops passing bytes on
while keeping every connection open (a broker that stopped answering, or a black-holed
route), until :meth:`TcpProxy.thaw`. :func:`silent_listener` accepts TCP connections and
never says a word, as a wrong port or a hung server does.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

CHUNK = 65536


class TcpProxy:
    """Forwards every connection to ``upstream``; see the module docstring for the faults."""

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self._upstream = (upstream_host, upstream_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._flowing = threading.Event()
        self._flowing.set()
        self._closed = False
        self._threads: list[threading.Thread] = []
        self._start(self._accept_loop, "proxy-accept")

    @property
    def port(self) -> int:
        """The loopback port the proxy listens on."""
        return int(self._listener.getsockname()[1])

    @property
    def connections(self) -> int:
        """How many client connections are open through the proxy right now."""
        with self._lock:
            return len(self._sockets) // 2

    def freeze(self) -> None:
        """Stop passing bytes on; connections stay open and new ones are still accepted."""
        self._flowing.clear()

    def thaw(self) -> None:
        """Pass bytes on again (what was held back is sent first)."""
        self._flowing.set()

    def sever(self) -> None:
        """Cut every open connection at once; the proxy keeps accepting new ones."""
        with self._lock:
            held = list(self._sockets)
            self._sockets.clear()
        # Shut down, never close, here: a pump thread may be about to read the socket, and
        # a closed descriptor can be reused at once by the next connection the proxy
        # accepts, whose bytes that thread would then swallow.
        for sock in held:
            _shut(sock)

    def close(self) -> None:
        """Stop listening and drop every connection."""
        self._closed = True
        self._flowing.set()
        _shut(self._listener)
        self.sever()
        for thread in list(self._threads):
            thread.join(timeout=5)
        self._listener.close()

    def _start(self, target: Callable[..., None], name: str, *args: object) -> None:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _accept_loop(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self._upstream, timeout=5)
            except OSError:
                _drop(client)
                continue
            upstream.settimeout(None)
            with self._lock:
                self._sockets.update((client, upstream))
            self._start(self._serve_pair, "proxy-pair", client, upstream)

    def _serve_pair(self, client: socket.socket, upstream: socket.socket) -> None:
        """Pump both ways; this thread alone closes the pair, once neither pump uses it."""
        down = threading.Thread(
            target=self._pump, args=(upstream, client), name="proxy-down", daemon=True
        )
        down.start()
        self._pump(client, upstream)
        down.join()
        with self._lock:
            self._sockets.discard(client)
            self._sockets.discard(upstream)
        client.close()
        upstream.close()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while True:
                data = source.recv(CHUNK)
                if not data:
                    break
                self._flowing.wait()
                if self._closed:
                    break
                sink.sendall(data)
        except OSError:
            pass
        finally:
            # Wakes the pump going the other way, which is blocked reading.
            _shut(source)
            _shut(sink)


def _shut(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


def _drop(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()


@contextmanager
def tcp_proxy(upstream_host: str, upstream_port: int) -> Iterator[TcpProxy]:
    """A :class:`TcpProxy` to ``upstream_host:upstream_port``, closed afterwards."""
    proxy = TcpProxy(upstream_host, upstream_port)
    try:
        yield proxy
    finally:
        proxy.close()


@contextmanager
def silent_listener() -> Iterator[int]:
    """A loopback port whose connections complete (in the backlog) but never get an answer."""
    listener = socket.create_server(("127.0.0.1", 0), backlog=64)
    try:
        yield int(listener.getsockname()[1])
    finally:
        _drop(listener)
