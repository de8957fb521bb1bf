"""A real forward HTTP proxy on loopback, to prove a client's traffic goes through a proxy.

:func:`forward_proxy` runs a threaded HTTP server (tests.support.tracked_server) in a thread of
the test process on 127.0.0.1 and yields a :class:`ProxyInfo`. It does what a client expects of
an ordinary forward proxy:

* absolute-form requests (``GET http://host:port/path HTTP/1.1``, any method, bodies included)
  are forwarded to the origin with :mod:`http.client`, both bodies streamed in pieces; status
  and end-to-end headers (``Content-Length``, ``Content-Range``, ``ETag``, ``Location``, ...)
  pass through, and the client connection is kept alive between requests;
* ``CONNECT host:port`` opens a tunnel (for ``https://`` origins): ``200`` then bytes relayed
  both ways until the peers close.

With ``login`` every request, CONNECT included, needs a matching ``Proxy-Authorization: Basic``
header, else ``407``. Every request is logged (method, target, status) so a test can check that
the traffic really went through the proxy. On exit every thread the proxy started is stopped,
idle keep-alive connections and open tunnels included.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import http.client
import http.server
import logging
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from tests.support.tracked_server import DispatchingHandler, TrackedHTTPServer, serving

logger = logging.getLogger(__name__)

UPSTREAM_TIMEOUT = 30.0  # seconds to connect to an origin or wait for its next bytes
CHUNK = 64 * 1024

# RFC 9110 section 7.6.1: these describe one connection, never the message, so a proxy must not
# forward them (Proxy-Authorization is ours; a Range or Content-Length is the origin's).
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)


@dataclass(frozen=True)
class SeenRequest:
    """One request the proxy received, and the status it answered with."""

    method: str
    target: str
    """As the client sent it: ``http://127.0.0.1:8080/a.txt`` or, for CONNECT, ``host:port``."""
    status: int
    """407 when refused for its login, 502/504 when the origin could not be reached."""


@dataclass
class ProxyLog:
    """The requests a proxy saw, oldest first; safe to read while the proxy runs."""

    _entries: list[SeenRequest] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def record(self, method: str, target: str, status: int) -> None:
        """Add one request (called by the proxy's threads)."""
        with self._lock:
            self._entries.append(SeenRequest(method, target, status))

    def entries(self) -> list[SeenRequest]:
        """A copy of the requests seen so far."""
        with self._lock:
            return list(self._entries)

    def count(self, method: str | None = None) -> int:
        """How many requests (of ``method``, when given) the proxy saw."""
        with self._lock:
            return sum(1 for seen in self._entries if method in (None, seen.method))

    def __len__(self) -> int:
        return self.count()


@dataclass(frozen=True)
class ProxyInfo:
    """Where the proxy listens, and what it saw."""

    url: str
    """``http://127.0.0.1:PORT``, the value for a client's proxy setting."""
    host: str
    port: int
    log: ProxyLog


class _ProxyHandler(DispatchingHandler):
    """Forwards absolute-form requests and tunnels CONNECT, after checking the login."""

    protocol_version = "HTTP/1.1"  # keep-alive with the client
    server_version = "ConveyorTestProxy/1.0"
    timeout = 60  # an idle client connection (or tunnel) is dropped after this
    disable_nagle_algorithm = True
    server: _ProxyServer

    log_name = "proxy"

    def do_CONNECT(self) -> None:  # noqa: N802 - http.server names
        if self._authorized():
            self._tunnel()

    def do_PUT(self) -> None:  # noqa: N802 - http.server names
        self.dispatch()

    def do_DELETE(self) -> None:  # noqa: N802 - http.server names
        self.dispatch()

    def dispatch(self) -> None:
        if self._authorized():
            self._forward()

    # --- replies of the proxy itself

    def _reply(self, status: int, text: str, headers: dict[str, str] | None = None) -> None:
        self.server.log.record(self.command, self.path, status)
        # A request body left unread: the connection cannot carry another request.
        unread = self._has_body() and self.command != "CONNECT"
        self.reply_text(status, text, headers, close=unread)

    def _has_body(self) -> bool:
        return bool(self.headers.get("Transfer-Encoding")) or (
            self.headers.get("Content-Length", "0").strip() not in ("", "0")
        )

    def _authorized(self) -> bool:
        expected = self.server.authorization
        if expected is None:
            return True
        scheme, _, token = self.headers.get("Proxy-Authorization", "").partition(" ")
        try:
            given = base64.b64decode(token.strip(), validate=True)
        except (binascii.Error, ValueError):
            given = b""
        # Constant-time, as a real proxy would compare a secret.
        if scheme.lower() == "basic" and hmac.compare_digest(given, expected):
            return True
        self._reply(
            407,
            "Proxy Authentication Required",
            {"Proxy-Authenticate": 'Basic realm="test"'},
        )
        if self.command == "CONNECT":
            self.close_connection = True  # clients give up on a refused tunnel anyway
        return False

    # --- plain HTTP

    def _forward(self) -> None:
        target = urlsplit(self.path)
        if target.scheme.lower() != "http" or not target.hostname:
            # Origin-form (a client that does not know it talks to a proxy) or https:// in
            # absolute form (clients tunnel those with CONNECT): not a forward proxy's job.
            return self._reply(400, f"not an absolute http:// URI: {self.path}")
        try:
            port = target.port or 80
        except ValueError:
            return self._reply(400, f"bad port in {self.path}")
        origin_path = target.path or "/"
        if target.query:
            origin_path += f"?{target.query}"

        upstream = http.client.HTTPConnection(target.hostname, port, timeout=UPSTREAM_TIMEOUT)
        try:
            try:
                upstream.connect()
                self.server.track(upstream.sock)
                chunked = self._send_request(upstream, origin_path, target.netloc)
                self._send_body(upstream, chunked)
                response = upstream.getresponse()
            except TimeoutError:
                return self._reply(504, f"{target.netloc} did not answer in time")
            except (OSError, http.client.HTTPException) as error:
                return self._reply(502, f"{target.netloc} cannot be reached: {error}")
            self._relay_response(response)
        finally:
            if upstream.sock is not None:
                self.server.untrack(upstream.sock)
            upstream.close()

    def _forwarded_headers(self) -> list[tuple[str, str]]:
        named = {
            name.strip().lower()
            for value in self.headers.get_all("Connection", [])
            for name in value.split(",")
        }
        skip = HOP_BY_HOP | named | {"expect"}  # 100-continue was answered by us already
        return [(k, v) for k, v in self.headers.items() if k.lower() not in skip]

    def _send_request(self, upstream: http.client.HTTPConnection, path: str, netloc: str) -> bool:
        """Send the request line and headers; True when the body goes chunked."""
        headers = self._forwarded_headers()
        upstream.putrequest(self.command, path, skip_host=True, skip_accept_encoding=True)
        if not any(name.lower() == "host" for name, _ in headers):
            upstream.putheader("Host", netloc)
        for name, value in headers:
            upstream.putheader(name, value)
        chunked = "chunked" in self.headers.get("Transfer-Encoding", "").lower()
        if chunked:
            upstream.putheader("Transfer-Encoding", "chunked")
        upstream.endheaders()
        return chunked

    def _send_body(self, upstream: http.client.HTTPConnection, chunked: bool) -> None:
        if chunked:
            for piece in self._read_chunked():
                upstream.send(b"%x\r\n%s\r\n" % (len(piece), piece))
            upstream.send(b"0\r\n\r\n")
            return
        left = int(self.headers.get("Content-Length") or 0)
        while left > 0:
            piece = self.rfile.read(min(CHUNK, left))
            if not piece:
                raise ConnectionError("the client's request body ended early")
            upstream.send(piece)
            left -= len(piece)

    def _read_chunked(self) -> Iterator[bytes]:
        """The pieces of a chunked request body (trailers are read and dropped)."""
        while True:
            line = self.rfile.readline(1024)
            size = int(line.split(b";", 1)[0].strip() or b"x", 16)
            if size == 0:
                while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                    pass
                return
            while size > 0:
                piece = self.rfile.read(min(CHUNK, size))
                if not piece:
                    raise ConnectionError("the client's chunked body ended early")
                size -= len(piece)
                yield piece
            self.rfile.readline(1024)  # the CRLF after the chunk

    def _relay_response(self, response: http.client.HTTPResponse) -> None:
        self.server.log.record(self.command, self.path, response.status)
        status = response.status
        no_body = self.command == "HEAD" or status in (204, 304) or 100 <= status < 200
        length = response.getheader("Content-Length")
        # Without a length (a chunked or close-delimited origin body) the client gets chunks,
        # so its connection can stay open; the framing is ours, hence Transfer-Encoding is
        # dropped with the other hop-by-hop headers.
        chunked = not no_body and length is None and self.request_version == "HTTP/1.1"
        self.send_response_only(status, response.reason)
        named = {
            name.strip().lower()
            for value in response.headers.get_all("Connection", [])
            for name in value.split(",")
        }
        for name, value in response.getheaders():
            if name.lower() not in HOP_BY_HOP | named:
                self.send_header(name, value)
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
        elif not no_body and length is None:
            self.send_header("Connection", "close")  # an HTTP/1.0 client: end marks the end
        self.end_headers()
        if no_body:
            return
        try:
            while True:
                # read1: whatever has arrived, so a slow origin is relayed as it trickles in.
                piece = response.read1(CHUNK)
                if not piece:
                    break
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
            complete = length is None or response.length in (None, 0)
        except (OSError, http.client.HTTPException) as error:
            logger.debug("proxy: origin body of %s cut: %r", self.path, error)
            complete = False
        if not complete:
            # The origin cut the body: cut the client too (no final chunk), so it sees a short
            # transfer rather than a complete one.
            self.close_connection = True
            with suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
            return
        if chunked:
            self.wfile.write(b"0\r\n\r\n")

    # --- CONNECT tunnel

    def _tunnel(self) -> None:
        self.close_connection = True  # the connection is the tunnel's from now on
        host, _, port_text = self.path.rpartition(":")
        host = host.strip("[]")
        if not host or not port_text.isdigit():
            return self._reply(400, f"CONNECT needs host:port, not {self.path}")
        try:
            upstream = socket.create_connection((host, int(port_text)), timeout=UPSTREAM_TIMEOUT)
        except TimeoutError:
            return self._reply(504, f"{self.path} did not answer in time")
        except OSError as error:
            return self._reply(502, f"{self.path} cannot be reached: {error}")
        self.server.track(upstream)
        try:
            upstream.settimeout(self.timeout)
            self.server.log.record(self.command, self.path, 200)
            self.send_response(200, "Connection Established")
            self.end_headers()
            backward = self.server.start_thread(
                self._pump_to_client, upstream, name=f"proxy-{self.server.port}-tunnel"
            )
            self._pump_to_origin(upstream)
            backward.join(timeout=self.timeout)
        finally:
            self.server.untrack(upstream)
            upstream.close()

    def _pump_to_origin(self, upstream: socket.socket) -> None:
        try:
            while True:
                # rfile, not the socket: bytes the client sent right after CONNECT may already
                # sit in rfile's buffer.
                piece = self.rfile.read1(CHUNK)
                if not piece:
                    break
                upstream.sendall(piece)
        except OSError:
            _close_both(self.connection, upstream)
            return
        # The client is done sending; the origin may still answer.
        with suppress(OSError):
            upstream.shutdown(socket.SHUT_WR)

    def _pump_to_client(self, upstream: socket.socket) -> None:
        try:
            while True:
                piece = upstream.recv(CHUNK)
                if not piece:
                    break
                self.connection.sendall(piece)
        except OSError:
            _close_both(self.connection, upstream)
            return
        with suppress(OSError):
            self.connection.shutdown(socket.SHUT_WR)


def _close_both(*sockets: socket.socket) -> None:
    """Wake both directions of a tunnel when one fails (each pump ends on its next read)."""
    for sock in sockets:
        with suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


class _ProxyServer(TrackedHTTPServer):
    """A thread per connection; tunnels add theirs, tracked the same way."""

    thread_prefix = "proxy"

    def __init__(self, authorization: bytes | None) -> None:
        self.authorization = authorization
        self.log = ProxyLog()
        super().__init__(_ProxyHandler)


@contextmanager
def forward_proxy(*, login: tuple[str, str] | None = None) -> Iterator[ProxyInfo]:
    """Run a forward HTTP proxy (plain forwarding and CONNECT) on 127.0.0.1 while in the block.

    The kernel picks the port (binding port 0 cannot race another test for a "free" one).
    ``login`` is the ``(user, password)`` every request must carry in ``Proxy-Authorization``;
    without it, or with another one, the answer is ``407`` with
    ``Proxy-Authenticate: Basic realm="test"``. On exit the proxy stops accepting, every open
    connection and tunnel is shut down, and each thread is joined (``RuntimeError`` when one
    does not stop in time).
    """
    authorization = f"{login[0]}:{login[1]}".encode() if login is not None else None
    with serving(_ProxyServer(authorization)) as server:
        yield ProxyInfo(
            url=f"http://127.0.0.1:{server.port}",
            host="127.0.0.1",
            port=server.port,
            log=server.log,
        )
