"""HTTP and HTTPS files read from an event loop (aiohttp): every transfer of a run shares
one pool of kept-alive connections.

The threaded source spends more of a small file's time handing the interpreter lock between
its transfer threads than moving bytes; one loop driving all transfers does not
(bench/README.md, Mirror). Requests and the judgement of answers are the threaded source's
(:mod:`conveyor.mirror.sources.http_requests`), so both behave alike.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncGenerator, Callable
from typing import Any

import aiohttp
from yarl import URL

from conveyor.mirror.errors import SourceError, connection_cut, stalled
from conveyor.mirror.sources.base import AsyncReader
from conveyor.mirror.sources.http_requests import (
    MAX_REDIRECTS,
    PERMANENT_STATUSES,
    RangeSkip,
    check_answer,
    check_end,
    innermost,
    request_parts,
    untrusted,
    url_of,
)
from conveyor.mirror.sources.tls import apply_keepalive, tls_context
from conveyor.mirror.spec import SourceSpec


class AsyncHttpReader(AsyncReader):
    """GET (or POST with the form) with Range, over at most ``connections`` connections."""

    def __init__(self, spec: SourceSpec, connections: int) -> None:
        super().__init__(spec, connections)
        self._session: aiohttp.ClientSession | None = None

    @classmethod
    def serves(cls, spec: SourceSpec) -> bool:
        """Not through a proxy that wants a login: aiohttp 3 sends one on plain requests,
        CONNECT tunnels and after redirects alike only through its deprecated
        ``proxy_auth``; the threaded source does all three."""
        return spec.proxy_auth is None

    async def read(self, path: str, offset: int = 0) -> AsyncGenerator[bytes, None]:
        """The body from ``offset`` on, as it arrives; a cut ends it with a transient error."""
        url = url_of(self.spec, path)
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        url, body, sent = request_parts(self.spec, self.spec.method, url, headers, True)
        try:
            async with self._client().request(
                self.spec.method, URL(url, encoded=True), data=body, headers=sent, **self._routing()
            ) as response:
                if response.status == 416 and offset:
                    check_end(response.headers, url, offset)
                    return
                check_answer(response.status, response.reason, response.headers, url)
                skip = RangeSkip(offset, response.status)
                async for chunk in response.content.iter_any():
                    if chunk := skip(chunk):
                        yield chunk
        except aiohttp.ClientError as error:
            raise _source_error(url, error, self.spec) from None

    async def close(self) -> None:
        """Close the session and its connections."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            spec = self.spec
            connector = aiohttp.TCPConnector(
                limit=self.connections,
                ssl=tls_context(spec),
                socket_factory=_keepalive_socket(spec.options.tcp_keepalive),
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(
                    total=None, sock_connect=spec.connect_timeout, sock_read=spec.stall_timeout
                ),
                auto_decompress=False,
            )
        return self._session

    def _routing(self) -> dict[str, Any]:
        """Redirects and the proxy, as the mirror's options say."""
        spec = self.spec
        routing: dict[str, Any] = {
            "allow_redirects": spec.options.allow_redirections,
            "max_redirects": MAX_REDIRECTS,
        }
        if spec.proxy:
            routing["proxy"] = spec.proxy if "://" in spec.proxy else f"http://{spec.proxy}"
        return routing


def _keepalive_socket(seconds: int) -> Callable[[Any], socket.socket] | None:
    """A socket maker turning on keepalive probes (``tcp_keepalive``), or aiohttp's own."""
    if seconds <= 0:
        return None

    def make(address: Any) -> socket.socket:
        family, kind, protocol = address[0], address[1], address[2]
        made = socket.socket(family, kind, protocol)
        apply_keepalive(made, seconds)
        return made

    return make


def _source_error(url: str, error: aiohttp.ClientError, spec: SourceSpec) -> SourceError:
    """A readable, classified error, worded as the threaded source words it."""
    if isinstance(error, aiohttp.TooManyRedirects):
        return SourceError(f"{url}: more than {MAX_REDIRECTS} redirects", permanent=True)
    if isinstance(error, aiohttp.ConnectionTimeoutError):
        return SourceError(f"{url}: no connection within {spec.connect_timeout:g} s")
    if isinstance(error, asyncio.TimeoutError):
        return stalled(url, spec.stall_timeout)
    if isinstance(error, aiohttp.ClientHttpProxyError):
        return SourceError(
            f"{url}: the proxy failed: {error.status} {error.message}",
            permanent=error.status in PERMANENT_STATUSES,
        )
    if isinstance(error, aiohttp.ClientProxyConnectionError):
        return SourceError(f"{url}: the proxy failed: {innermost(error)}")
    if isinstance(error, aiohttp.ClientPayloadError | aiohttp.ServerDisconnectedError):
        return connection_cut(url, innermost(error))
    return SourceError(f"{url}: {innermost(error)}", permanent=untrusted(error))
