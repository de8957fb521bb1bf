"""HTTP and HTTPS: folders from index pages, files with GET and Range (also ``direct*``)."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from contextlib import closing
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from urllib.parse import quote, urlencode

import httpx

from conveyor.http_headers import retry_after_seconds
from conveyor.mirror.entries import RemoteEntry
from conveyor.mirror.errors import SourceError
from conveyor.mirror.integrity import CorruptFile
from conveyor.mirror.listings import parse_index
from conveyor.mirror.sources.base import Source, register
from conveyor.mirror.sources.tls import keepalive_options, ssl_context
from conveyor.mirror.spec import SourceSpec

PERMANENT_STATUSES = {400, 401, 403, 404, 405, 410, 451}
THROTTLE_STATUSES = {421, 429, 503}


@register
class HttpSource(Source):
    """One keep-alive ``httpx.Client`` per source."""

    protocols = ("http", "https", "directhttp", "directhttps")

    def __init__(self, spec: SourceSpec) -> None:
        super().__init__(spec)
        scheme = "https" if spec.protocol.endswith("https") else "http"
        self.base = f"{scheme}://{spec.server}"
        self._client: httpx.Client | None = None

    @property
    def client(self) -> httpx.Client:
        """The keep-alive client, opened on first use and again after :meth:`close`."""
        if self._client is None:
            spec = self.spec
            self._client = httpx.Client(
                auth=_basic_auth(spec),
                follow_redirects=spec.options.allow_redirections,
                timeout=httpx.Timeout(spec.stall_timeout, connect=spec.connect_timeout),
                proxy=_proxy_url(spec),
                transport=httpx.HTTPTransport(
                    # Also for http://: a redirect may lead to https.
                    verify=ssl_context(spec.options),
                    socket_options=keepalive_options(spec.options.tcp_keepalive),
                ),
            )
        return self._client

    def url(self, path: str, folder: bool = False) -> str:
        """The URL of ``path`` under ``remote_dir``; folders end with ``/``."""
        remote = self.remote_path(path)
        if folder and not remote.endswith("/"):
            remote += "/"
        return self.base + quote(remote)

    def list(self, folder: str = "") -> Iterator[RemoteEntry]:
        """Parse the folder's index page as it arrives."""
        url = self.url(folder, folder=True)
        with closing(self._send("GET", url)) as response:
            _check(response, url)
            now = datetime.now(UTC)
            base_path = httpx.URL(str(response.url)).path
            yield from parse_index(
                response.iter_text(), rules=self.spec.http_parse, now=now, base_path=base_path
            )

    def read(self, path: str, offset: int = 0) -> Iterator[bytes]:
        """GET (or POST with the form parameters), from ``offset`` with a Range request."""
        url = self.url(path)
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        with closing(self._send(self.spec.method, url, headers=headers, params=True)) as response:
            if response.status_code == 416 and offset:
                _check_end(response, url, offset)
                return
            _check(response, url)
            # A server that ignores Range sends everything: skip what we already have.
            skip = offset if offset and response.status_code == 200 else 0
            try:
                # As the bytes arrive, not in fixed pieces: a cut loses nothing received.
                for chunk in response.iter_bytes():
                    if skip:
                        dropped = min(skip, len(chunk))
                        chunk, skip = chunk[dropped:], skip - dropped
                    if chunk:
                        yield chunk
            except httpx.TimeoutException:
                raise SourceError(
                    f"{url}: stalled, no data for {self.spec.stall_timeout:g} s"
                ) from None
            except httpx.TransportError as error:
                raise SourceError(f"{url}: connection cut ({error})") from None

    def stat(self, path: str) -> RemoteEntry:
        """HEAD: ``Content-Length``, ``Last-Modified`` and ``ETag`` (a 405 tells nothing).

        A file fetched by POST tells nothing either: a HEAD cannot carry the form.
        """
        url = self.url(path)
        name = path.rsplit("/", 1)[-1]
        if self.spec.method == "POST" and self.spec.params:
            return RemoteEntry(name)
        with closing(self._send("HEAD", url, params=True)) as response:
            if response.status_code == 405:
                return RemoteEntry(name)
            _check(response, url)
            return _entry_from_headers(name, response.headers)

    def close(self) -> None:
        """Close the client and its pooled connections (a later request opens new ones)."""
        if self._client is not None:
            self._client.close()
            self._client = None

    def _send(
        self, method: str, url: str, headers: dict[str, str] | None = None, params: bool = False
    ) -> httpx.Response:
        fields = self.spec.params if params else {}
        if method in ("GET", "HEAD") and fields:
            url = f"{url}?{urlencode(fields)}"
        request = self.client.build_request(
            method,
            url,
            headers=headers,
            data=fields if method == "POST" and fields else None,
        )
        try:
            return self.client.send(request, stream=True)
        except httpx.TimeoutException:
            raise SourceError(f"{url}: no answer within the time allowed") from None
        except httpx.TransportError as error:
            raise SourceError(f"{url}: {error}", permanent=_untrusted(error)) from None


def _untrusted(error: BaseException) -> bool:
    """Whether a failure comes from a certificate that cannot be trusted (no retry helps)."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _check(response: httpx.Response, url: str) -> None:
    status = response.status_code
    if status in (200, 206):
        return
    response.close()
    if 300 <= status < 400:
        location = response.headers.get("location", "?")
        raise SourceError(
            f"{url}: redirected ({status}) to {location}, and allow_redirections is off",
            permanent=True,
        )
    reason = f"{url}: HTTP {status} {response.reason_phrase}".rstrip()
    if status in THROTTLE_STATUSES:
        raise SourceError(
            reason,
            throttled=True,
            retry_after=retry_after_seconds(response.headers.get("retry-after")),
        )
    raise SourceError(reason, permanent=status in PERMANENT_STATUSES)


def _check_end(response: httpx.Response, url: str, offset: int) -> None:
    """A 416 to ``Range: bytes=offset-``: fine when the file is exactly ``offset`` long."""
    total = response.headers.get("content-range", "").rpartition("/")[2]
    if total.isdigit() and int(total) == offset:
        return
    raise CorruptFile(f"{url}: the file is now shorter than the {offset} bytes already fetched")


def _entry_from_headers(name: str, headers: httpx.Headers) -> RemoteEntry:
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


def _basic_auth(spec: SourceSpec) -> httpx.BasicAuth | None:
    if spec.credentials is None:
        return None
    return httpx.BasicAuth(spec.credentials.user, spec.credentials.secret())


def _proxy_url(spec: SourceSpec) -> str | None:
    if not spec.proxy:
        return None
    proxy = spec.proxy if "://" in spec.proxy else f"http://{spec.proxy}"
    if spec.proxy_auth is None:
        return proxy
    scheme, rest = proxy.split("://", 1)
    user = quote(spec.proxy_auth.user, safe="")
    password = quote(spec.proxy_auth.secret(), safe="")
    return f"{scheme}://{user}:{password}@{rest}"
