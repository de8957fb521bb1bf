"""A Pacifica archive interface reached over HTTP (the published ``ARCHIVE_INTERFACE_URL``).

Stage a file (``POST /<id>``), ask where it is (``HEAD /<id>``: size, mtime and storage
media), read it (``GET /<id>``). Ids are appended to the base URL, as the published clients
do, after quoting.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import quote

import httpx

READ_CHUNK = 1024 * 1024


class RemoteMissing(Exception):
    """The archive interface does not hold the file."""


class RemoteUnavailable(Exception):
    """The archive interface failed in a way worth trying again."""


@dataclass(frozen=True)
class RemoteStatus:
    """What ``HEAD`` says of a file."""

    size: int
    mtime: float
    media: str

    @property
    def on_disk(self) -> bool:
        """True once the file can be read at once (not on tape)."""
        return self.media == "disk"


class RemoteArchive:
    """One archive interface, spoken to through a caller's ``httpx.Client``."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/") + "/"

    def _url(self, remote_id: str) -> str:
        return self.url + quote(remote_id, safe="")

    def _check(self, answer: httpx.Response, remote_id: str) -> None:
        # The published service answers 500 (with "No such file" in its traceback) for a
        # file it does not hold; newer ones and Conveyor's own mount answer 404.
        if answer.status_code == 404 or (
            answer.status_code == 500 and "No such file" in answer.text
        ):
            raise RemoteMissing(f"file {remote_id} is not in the archive at {self.url}")
        if not answer.is_success:
            raise RemoteUnavailable(f"{answer.request.method} {remote_id}: {answer.status_code}")

    def stage(self, client: httpx.Client, remote_id: str) -> None:
        """Ask for the file to be brought to disk (a no-op for disk-only archives)."""
        self._check(client.post(self._url(remote_id)), remote_id)

    def status(self, client: httpx.Client, remote_id: str) -> RemoteStatus:
        """Size, modification time and storage media of the file."""
        answer = client.head(self._url(remote_id))
        self._check(answer, remote_id)
        headers = answer.headers
        try:
            size = int(headers["x-content-length"])
        except (KeyError, ValueError):
            raise RemoteUnavailable(f"HEAD {remote_id} gave no X-Content-Length") from None
        try:
            mtime = float(headers.get("last-modified", "0"))
        except ValueError:
            mtime = 0.0
        return RemoteStatus(size, mtime, headers.get("x-pacifica-file-storage-media", "disk"))

    def read(self, client: httpx.Client, remote_id: str) -> Iterator[bytes]:
        """The file's bytes, streamed."""
        with client.stream("GET", self._url(remote_id)) as answer:
            if not answer.is_success:
                answer.read()
                self._check(answer, remote_id)
            yield from answer.iter_bytes(READ_CHUNK)
