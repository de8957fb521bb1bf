"""HTTP and HTTPS: folders from index pages, files with GET and Range (also ``direct*``).

urllib3 rather than httpx here: a mirror moves bodies, and urllib3 hands them over as large
pieces read through http.client, where httpx parses 64 KiB events; on loopback a fetch of
1,000 small files took a third less CPU (bench/README.md, Mirror).
"""

from __future__ import annotations

import codecs
import http.client
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from email.message import Message
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import urllib3
from urllib3.exceptions import (
    HTTPError,
    InsecureRequestWarning,
    MaxRetryError,
    ProtocolError,
    ProxyError,
)
from urllib3.exceptions import TimeoutError as HTTPTimeout

from conveyor.mirror.entries import RemoteEntry
from conveyor.mirror.errors import SourceError, connection_cut, stall_words, stalled
from conveyor.mirror.listings import parse_index
from conveyor.mirror.sources.base import Source, register
from conveyor.mirror.sources.http_async import AsyncHttpReader
from conveyor.mirror.sources.http_requests import (
    MAX_REDIRECTS,
    RangeSkip,
    check_answer,
    check_end,
    innermost,
    request_parts,
    untrusted,
    url_of,
)
from conveyor.mirror.sources.parts import PartWriter
from conveyor.mirror.sources.tls import keepalive_options, tls_context
from conveyor.mirror.spec import SourceSpec

# Up to this much per read: whatever the socket holds, so a cut loses nothing received.
READ_SIZE = 1024 * 1024
# An answer's unread rest up to this size is read off, so the connection can be reused.
DRAIN_LIMIT = 64 * 1024

# Checks are off only where a mirror's options say so, and tls_context logs that once per
# source; urllib3 would warn on every request.
warnings.filterwarnings("ignore", category=InsecureRequestWarning)


@register
class HttpSource(Source):
    """One keep-alive connection pool per source (one source per transfer thread)."""

    protocols = ("http", "https", "directhttp", "directhttps")
    async_reader = AsyncHttpReader

    def __init__(self, spec: SourceSpec) -> None:
        super().__init__(spec)
        self._pool: urllib3.PoolManager | None = None

    @property
    def pool(self) -> urllib3.PoolManager:
        """The connection pool, opened on first use and again after :meth:`close`."""
        if self._pool is None:
            self._pool = _pool_manager(self.spec)
        return self._pool

    def url(self, path: str, folder: bool = False) -> str:
        """The URL of ``path`` under ``remote_dir``; folders end with ``/``."""
        return url_of(self.spec, path, folder)

    def list(self, folder: str = "") -> Iterator[RemoteEntry]:
        """Parse the folder's index page as it arrives."""
        url = self.url(folder, folder=True)
        with self._response("GET", url) as response:
            check_answer(response.status, response.reason, response.headers, url)
            now = datetime.now(UTC)
            base_path = urlsplit(response.url or url).path
            text = _text(response, url, self.spec.stall_timeout)
            yield from parse_index(text, rules=self.spec.http_parse, now=now, base_path=base_path)

    def read(self, path: str, offset: int = 0) -> Iterator[bytes]:
        """GET (or POST with the form parameters), from ``offset`` with a Range request."""
        url = self.url(path)
        with self._body_response(url, offset) as response:
            if response is not None:
                yield from _skipping(response, url, offset, self.spec.stall_timeout)

    def read_into(self, path: str, part: Path, offset: int) -> Iterator[bytes | memoryview]:
        """:meth:`read`, received straight into the part file's buffer where it can be."""
        url, stall = self.url(path), self.spec.stall_timeout
        with self._body_response(url, offset) as response:
            if response is None:
                return
            with PartWriter(part, offset) as out:
                raw = _raw(response)
                if raw is None or RangeSkip(offset, response.status).left:
                    for chunk in _skipping(response, url, offset, stall):
                        out.write(chunk)
                        yield chunk
                    return
                try:
                    while view := out.receive(raw.readinto):
                        yield view
                except (OSError, http.client.HTTPException) as error:
                    raise _read_error(url, error, stall) from None

    @contextmanager
    def _body_response(self, url: str, offset: int) -> Iterator[urllib3.BaseHTTPResponse | None]:
        """The checked answer to a GET from ``offset`` on; ``None``: nothing is left after
        ``offset`` (416 at the file's end)."""
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        with self._response(self.spec.method, url, headers, params=True) as response:
            if response.status == 416 and offset:
                check_end(response.headers, url, offset)
                yield None
                return
            check_answer(response.status, response.reason, response.headers, url)
            yield response

    def stat(self, path: str) -> RemoteEntry:
        """HEAD: ``Content-Length``, ``Last-Modified`` and ``ETag`` (a 405 tells nothing).

        A file fetched by POST tells nothing either: a HEAD cannot carry the form.
        """
        url = self.url(path)
        name = path.rsplit("/", 1)[-1]
        if self.spec.method == "POST" and self.spec.params:
            return RemoteEntry(name)
        with self._response("HEAD", url, params=True) as response:
            if response.status == 405:
                return RemoteEntry(name)
            check_answer(response.status, response.reason, response.headers, url)
            return _entry_from_headers(name, response.headers)

    def close(self) -> None:
        """Close the pool and its connections (a later request opens new ones)."""
        if self._pool is not None:
            self._pool.clear()
            self._pool = None

    @contextmanager
    def _response(
        self,
        method: str,
        url: str,
        headers: dict[str, str] | None = None,
        params: bool = False,
    ) -> Iterator[urllib3.BaseHTTPResponse]:
        """Send a request; its connection goes back to the pool only when the body was read."""
        url, body, sent = request_parts(self.spec, method, url, headers or {}, params)
        follow = self.spec.options.allow_redirections
        try:
            response = self.pool.request(
                method,
                url,
                body=body,
                headers=sent,
                preload_content=False,
                decode_content=False,
                redirect=follow,
                retries=_REDIRECTS if follow else False,
            )
        except HTTPError as error:
            raise _source_error(url, error, "no answer within the time allowed") from None
        try:
            yield response
        finally:
            _finish(response)


def _finish(response: urllib3.BaseHTTPResponse) -> None:
    """Give the connection back: a short unread rest is read off, a long one closes it
    (unread bytes would be taken for the next answer on a reused connection)."""
    if not response.closed:
        remaining = response.length_remaining
        if remaining is not None and remaining <= DRAIN_LIMIT:
            response.drain_conn()
        else:
            response.close()
    response.release_conn()


# Redirects only: every other failure is the mirror's retry policy's to handle.
_REDIRECTS = urllib3.Retry(total=None, connect=0, read=0, status=0, other=0, redirect=MAX_REDIRECTS)


def _pool_manager(spec: SourceSpec) -> urllib3.PoolManager:
    options = spec.options
    settings: dict[str, Any] = {
        "timeout": urllib3.Timeout(connect=spec.connect_timeout, read=spec.stall_timeout),
        "maxsize": 1,
        # Also for http://: a redirect may lead to https.
        "ssl_context": tls_context(spec),
        "cert_reqs": "CERT_REQUIRED" if options.ssl_verifypeer else "CERT_NONE",
        "socket_options": [
            *urllib3.connection.HTTPConnection.default_socket_options,
            *keepalive_options(options.tcp_keepalive),
        ],
    }
    if not options.ssl_verifypeer or not options.ssl_verifyhost:
        settings["assert_hostname"] = False
    if not spec.proxy:
        return urllib3.PoolManager(**settings)
    proxy = spec.proxy if "://" in spec.proxy else f"http://{spec.proxy}"
    headers = None
    if spec.proxy_auth is not None:
        login = f"{spec.proxy_auth.user}:{spec.proxy_auth.secret()}"
        headers = urllib3.make_headers(proxy_basic_auth=login)
    return urllib3.ProxyManager(proxy, proxy_headers=headers, **settings)


def _skipping(
    response: urllib3.BaseHTTPResponse, url: str, offset: int, stall: float
) -> Iterator[bytes]:
    """The body, less the ``offset`` bytes a server ignoring the Range sent again."""
    skip = RangeSkip(offset, response.status)
    for chunk in _body(response, url, stall):
        if chunk := skip(chunk):
            yield chunk


def _raw(response: urllib3.BaseHTTPResponse) -> http.client.HTTPResponse | None:
    """The ``http.client`` answer under urllib3's, which can read into a caller's buffer
    (urllib3 reads into a new ``bytes`` and copies, ``readinto`` included: 0.2-0.4 s of
    CPU a GiB here). Once its body is read to the end it closes itself, and urllib3 then
    hands the connection back to the pool as when it reads the body itself."""
    raw = getattr(response, "_fp", None)
    return raw if isinstance(raw, http.client.HTTPResponse) else None


def _read_error(url: str, error: OSError | http.client.HTTPException, stall: float) -> SourceError:
    """What a failed read of a raw body says, as urllib3 would have said it."""
    if isinstance(error, TimeoutError):
        return stalled(url, stall)
    return connection_cut(url, error)


def _body(response: urllib3.BaseHTTPResponse, url: str, stall: float) -> Iterator[bytes]:
    """The body as it arrives, in pieces of up to :data:`READ_SIZE`."""
    try:
        while chunk := response.read1(READ_SIZE):
            yield chunk
    except HTTPError as error:
        raise _source_error(url, error, stall_words(stall)) from None


def _text(response: urllib3.BaseHTTPResponse, url: str, stall: float) -> Iterator[str]:
    """The body decoded as it arrives, by the charset the server names (UTF-8 otherwise)."""
    decoder = codecs.getincrementaldecoder(_charset(response.headers))(errors="replace")
    for chunk in _body(response, url, stall):
        yield decoder.decode(chunk)
    yield decoder.decode(b"", final=True)


def _charset(headers: Mapping[str, str]) -> str:
    message = Message()
    message["content-type"] = headers.get("content-type", "")
    charset = message.get_content_charset() or "utf-8"
    try:
        return codecs.lookup(charset).name
    except LookupError:
        return "utf-8"


def _source_error(url: str, error: HTTPError, timed_out: str) -> SourceError:
    """A readable, classified error; the cause of a connection's failure, not its wrapper."""
    cause: BaseException = error
    if isinstance(error, MaxRetryError) and error.reason is not None:
        cause = error.reason
    if isinstance(cause, HTTPTimeout):
        return SourceError(f"{url}: {timed_out}")
    if isinstance(cause, ProtocolError):
        return connection_cut(url, _first_arg(cause))
    if isinstance(cause, ProxyError):
        return SourceError(f"{url}: the proxy failed: {innermost(cause)}")
    if isinstance(error, MaxRetryError) and error.reason is None:
        return SourceError(f"{url}: more than {MAX_REDIRECTS} redirects", permanent=True)
    return SourceError(f"{url}: {innermost(cause)}", permanent=untrusted(cause))


def _first_arg(error: BaseException) -> object:
    return error.args[0] if error.args else error


def _entry_from_headers(name: str, headers: Mapping[str, str]) -> RemoteEntry:
    length = headers.get("content-length")
    modified = headers.get("last-modified")
    mtime = None
    if modified:
        try:
            mtime = parsedate_to_datetime(modified).astimezone(UTC)
        except (TypeError, ValueError):
            mtime = None
    return RemoteEntry(
        name,
        size=int(length) if length and length.isdigit() else None,
        mtime=mtime,
        fingerprint=headers.get("etag") or modified,
    )
