"""HTTP and HTTPS: folders from index pages, files with GET and Range (also ``direct*``).

urllib3 rather than httpx here: a mirror moves bodies, and urllib3 hands them over as large
pieces read through http.client, where httpx parses 64 KiB events; on loopback a fetch of
1,000 small files took a third less CPU (bench/README.md, Mirror).
"""

from __future__ import annotations

import codecs
import logging
import ssl
import warnings
from collections import deque
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from email.message import Message
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

import urllib3
from urllib3.exceptions import (
    HTTPError,
    InsecureRequestWarning,
    MaxRetryError,
    ProtocolError,
    ProxyError,
)
from urllib3.exceptions import TimeoutError as HTTPTimeout

from conveyor.http_headers import retry_after_seconds
from conveyor.mirror.entries import RemoteEntry
from conveyor.mirror.errors import SourceError
from conveyor.mirror.integrity import CorruptFile
from conveyor.mirror.listings import parse_index
from conveyor.mirror.sources.base import Source, register
from conveyor.mirror.sources.tls import keepalive_options, ssl_context
from conveyor.mirror.spec import SourceOptions, SourceSpec

PERMANENT_STATUSES = {400, 401, 403, 404, 405, 407, 410, 451}
THROTTLE_STATUSES = {421, 429, 503}
# Up to this much per read: whatever the socket holds, so a cut loses nothing received.
READ_SIZE = 1024 * 1024
MAX_REDIRECTS = 10
# An answer's unread rest up to this size is read off, so the connection can be reused.
DRAIN_LIMIT = 64 * 1024

log = logging.getLogger(__name__)
# Checks are off only where a mirror's options say so, and that is logged once per source
# below; urllib3 would warn on every request.
warnings.filterwarnings("ignore", category=InsecureRequestWarning)


@register
class HttpSource(Source):
    """One keep-alive connection pool per source (one source per transfer thread)."""

    protocols = ("http", "https", "directhttp", "directhttps")

    def __init__(self, spec: SourceSpec) -> None:
        super().__init__(spec)
        scheme = "https" if spec.protocol.endswith("https") else "http"
        self.base = f"{scheme}://{spec.server}"
        self._pool: urllib3.PoolManager | None = None

    @property
    def pool(self) -> urllib3.PoolManager:
        """The connection pool, opened on first use and again after :meth:`close`."""
        if self._pool is None:
            self._pool = _pool_manager(self.spec)
        return self._pool

    def url(self, path: str, folder: bool = False) -> str:
        """The URL of ``path`` under ``remote_dir``; folders end with ``/``."""
        remote = self.remote_path(path)
        if folder and not remote.endswith("/"):
            remote += "/"
        return self.base + quote(remote)

    def list(self, folder: str = "") -> Iterator[RemoteEntry]:
        """Parse the folder's index page as it arrives."""
        url = self.url(folder, folder=True)
        with self._response("GET", url) as response:
            _check(response, url)
            now = datetime.now(UTC)
            base_path = urlsplit(response.url or url).path
            text = _text(response, url, self.spec.stall_timeout)
            yield from parse_index(text, rules=self.spec.http_parse, now=now, base_path=base_path)

    def read(self, path: str, offset: int = 0) -> Iterator[bytes]:
        """GET (or POST with the form parameters), from ``offset`` with a Range request."""
        url = self.url(path)
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        with self._response(self.spec.method, url, headers, params=True) as response:
            if response.status == 416 and offset:
                _check_end(response, url, offset)
                return
            _check(response, url)
            # A server that ignores Range sends everything: skip what we already have.
            skip = offset if offset and response.status == 200 else 0
            for chunk in _body(response, url, self.spec.stall_timeout):
                if skip:
                    dropped = min(skip, len(chunk))
                    chunk, skip = chunk[dropped:], skip - dropped
                if chunk:
                    yield chunk

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
            _check(response, url)
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
        fields = self.spec.params if params else {}
        if method in ("GET", "HEAD") and fields:
            url = f"{url}?{urlencode(fields)}"
        sent = {**_auth_headers(self.spec), **(headers or {})}
        body = None
        if method == "POST" and fields:
            body = urlencode(fields)
            sent["Content-Type"] = "application/x-www-form-urlencoded"
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
        "ssl_context": _cached_context(options),
        "cert_reqs": "CERT_REQUIRED" if options.ssl_verifypeer else "CERT_NONE",
        "socket_options": [
            *urllib3.connection.HTTPConnection.default_socket_options,
            *keepalive_options(options.tcp_keepalive),
        ],
    }
    if not options.ssl_verifypeer or not options.ssl_verifyhost:
        settings["assert_hostname"] = False
        log.warning("%s: TLS certificate checks are off (ssl_verify* options)", spec.server)
    if not spec.proxy:
        return urllib3.PoolManager(**settings)
    proxy = spec.proxy if "://" in spec.proxy else f"http://{spec.proxy}"
    headers = None
    if spec.proxy_auth is not None:
        login = f"{spec.proxy_auth.user}:{spec.proxy_auth.secret()}"
        headers = urllib3.make_headers(proxy_basic_auth=login)
    return urllib3.ProxyManager(proxy, proxy_headers=headers, **settings)


_contexts: dict[tuple[str | None, int, bool, bool], ssl.SSLContext] = {}


def _cached_context(options: SourceOptions) -> ssl.SSLContext:
    """One context per TLS setting (and CA file version): loading the CAs costs ~25 ms."""
    cafile = options.ssl_server_cert
    version = Path(cafile).stat().st_mtime_ns if cafile and Path(cafile).exists() else 0
    key = (cafile, version, options.ssl_verifyhost, options.ssl_verifypeer)
    context = _contexts.get(key)
    if context is None:
        context = _contexts[key] = ssl_context(options)
    return context


def _auth_headers(spec: SourceSpec) -> dict[str, str]:
    if spec.credentials is None:
        return {}
    login = f"{spec.credentials.user}:{spec.credentials.secret()}"
    return dict(urllib3.make_headers(basic_auth=login))


def _body(response: urllib3.BaseHTTPResponse, url: str, stall: float) -> Iterator[bytes]:
    """The body as it arrives, in pieces of up to :data:`READ_SIZE`."""
    try:
        while chunk := response.read1(READ_SIZE):
            yield chunk
    except HTTPError as error:
        raise _source_error(url, error, f"stalled, no data for {stall:g} s") from None


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
        return SourceError(f"{url}: connection cut ({_first_arg(cause)})")
    if isinstance(cause, ProxyError):
        return SourceError(f"{url}: the proxy failed: {_innermost(cause)}")
    if isinstance(error, MaxRetryError) and error.reason is None:
        return SourceError(f"{url}: more than {MAX_REDIRECTS} redirects", permanent=True)
    return SourceError(f"{url}: {_innermost(cause)}", permanent=_untrusted(cause))


def _first_arg(error: BaseException) -> object:
    return error.args[0] if error.args else error


def _causes(error: BaseException) -> Iterator[BaseException]:
    """``error`` and what it wraps: urllib3 keeps a cause among its arguments, Python in
    ``__cause__`` or ``__context__``."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        wrapped = next((arg for arg in current.args if isinstance(arg, BaseException)), None)
        current = wrapped or current.__cause__ or current.__context__


def _innermost(error: BaseException) -> BaseException:
    """The error at the bottom of the wrappers: what actually went wrong."""
    return deque(_causes(error), maxlen=1)[0]


def _untrusted(error: BaseException) -> bool:
    """Whether a failure comes from a certificate that cannot be trusted (no retry helps)."""
    return any(isinstance(cause, ssl.SSLCertVerificationError) for cause in _causes(error))


def _check(response: urllib3.BaseHTTPResponse, url: str) -> None:
    status = response.status
    if status in (200, 206):
        return
    if 300 <= status < 400:
        location = response.headers.get("location", "?")
        raise SourceError(
            f"{url}: redirected ({status}) to {location}, and allow_redirections is off",
            permanent=True,
        )
    reason = f"{url}: HTTP {status} {response.reason or ''}".rstrip()
    if status in THROTTLE_STATUSES:
        raise SourceError(
            reason,
            throttled=True,
            retry_after=retry_after_seconds(response.headers.get("retry-after")),
        )
    raise SourceError(reason, permanent=status in PERMANENT_STATUSES)


def _check_end(response: urllib3.BaseHTTPResponse, url: str, offset: int) -> None:
    """A 416 to ``Range: bytes=offset-``: fine when the file is exactly ``offset`` long."""
    total = response.headers.get("content-range", "").rpartition("/")[2]
    if total.isdigit() and int(total) == offset:
        return
    raise CorruptFile(f"{url}: the file is now shorter than the {offset} bytes already fetched")


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
