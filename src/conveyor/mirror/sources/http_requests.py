"""How the mirror's HTTP clients make requests and judge answers.

Shared by the threaded source (urllib3) and the event-loop reader (aiohttp), so that both
send the same requests and classify the same answers the same way.
"""

from __future__ import annotations

import ssl
from collections import deque
from collections.abc import Iterator, Mapping
from urllib.parse import quote, urlencode

import urllib3

from conveyor.http_headers import retry_after_seconds
from conveyor.mirror.errors import SourceError
from conveyor.mirror.integrity import CorruptFile
from conveyor.mirror.sources.base import join_remote
from conveyor.mirror.spec import SourceSpec

PERMANENT_STATUSES = {400, 401, 403, 404, 405, 407, 410, 451}
THROTTLE_STATUSES = {421, 429, 503}
MAX_REDIRECTS = 10


def url_of(spec: SourceSpec, path: str, folder: bool = False) -> str:
    """The URL of ``path`` under the spec's ``remote_dir``; folders end with ``/``."""
    remote = join_remote(spec.remote_dir, path)
    if folder and not remote.endswith("/"):
        remote += "/"
    scheme = "https" if spec.protocol.endswith("https") else "http"
    return f"{scheme}://{spec.server}{quote(remote)}"


def request_parts(
    spec: SourceSpec, method: str, url: str, headers: dict[str, str], params: bool
) -> tuple[str, str | None, dict[str, str]]:
    """The URL, body and headers of a request: the form's fields in the query of a GET or
    HEAD, or as the body of a POST; the login as Basic auth."""
    fields = spec.params if params else {}
    if method in ("GET", "HEAD") and fields:
        url = f"{url}?{urlencode(fields)}"
    sent = {**auth_headers(spec), **headers}
    body = None
    if method == "POST" and fields:
        body = urlencode(fields)
        sent["Content-Type"] = "application/x-www-form-urlencoded"
    return url, body, sent


class RangeSkip:
    """Drops what a resumed transfer already has when the server ignored its Range and
    sent the whole file (200 instead of 206)."""

    def __init__(self, offset: int, status: int) -> None:
        self.left = offset if status == 200 else 0

    def __call__(self, chunk: bytes) -> bytes:
        if self.left:
            dropped = min(self.left, len(chunk))
            chunk, self.left = chunk[dropped:], self.left - dropped
        return chunk


def auth_headers(spec: SourceSpec) -> dict[str, str]:
    if spec.credentials is None:
        return {}
    login = f"{spec.credentials.user}:{spec.credentials.secret()}"
    return dict(urllib3.make_headers(basic_auth=login))


def causes(error: BaseException) -> Iterator[BaseException]:
    """``error`` and what it wraps: urllib3 keeps a cause among its arguments, Python in
    ``__cause__`` or ``__context__``."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        wrapped = next((arg for arg in current.args if isinstance(arg, BaseException)), None)
        current = wrapped or current.__cause__ or current.__context__


def innermost(error: BaseException) -> BaseException:
    """The error at the bottom of the wrappers: what actually went wrong."""
    return deque(causes(error), maxlen=1)[0]


def untrusted(error: BaseException) -> bool:
    """Whether a failure comes from a certificate that cannot be trusted (no retry helps)."""
    return any(isinstance(cause, ssl.SSLCertVerificationError) for cause in causes(error))


def check_answer(status: int, reason: str | None, headers: Mapping[str, str], url: str) -> None:
    """Raise the classified error of an answer that is not a file's body."""
    if status in (200, 206):
        return
    if 300 <= status < 400:
        location = headers.get("location", "?")
        raise SourceError(
            f"{url}: redirected ({status}) to {location}, and allow_redirections is off",
            permanent=True,
        )
    message = f"{url}: HTTP {status} {reason or ''}".rstrip()
    if status in THROTTLE_STATUSES:
        raise SourceError(
            message,
            throttled=True,
            retry_after=retry_after_seconds(headers.get("retry-after")),
        )
    raise SourceError(message, permanent=status in PERMANENT_STATUSES)


def check_end(headers: Mapping[str, str], url: str, offset: int) -> None:
    """A 416 to ``Range: bytes=offset-``: fine when the file is exactly ``offset`` long."""
    total = headers.get("content-range", "").rpartition("/")[2]
    if total.isdigit() and int(total) == offset:
        return
    raise CorruptFile(f"{url}: the file is now shorter than the {offset} bytes already fetched")
