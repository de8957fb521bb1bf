"""A Pacifica archive interface on loopback, as the published service answers, with tape.

Files live in memory. A file put "on tape" answers ``X-Pacifica-File-Storage-Media: tape``
to that many HEADs after it is staged, then ``disk``. A file can be made to break its next
download half way (the connection closes early). Every request is counted.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote


class FakeArchive:
    """The state behind the server: files, tape delays, broken downloads and counts."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.tape_heads: dict[str, int] = {}
        self.break_next: set[str] = set()
        self.calls: Counter[tuple[str, str]] = Counter()
        self.lock = threading.Lock()
        self.url = ""

    def put(self, remote_id: str, data: bytes, tape_heads: int = 0) -> None:
        """Hold ``data`` under ``remote_id``, on tape for ``tape_heads`` HEADs after staging."""
        with self.lock:
            self.files[remote_id] = data
            if tape_heads:
                self.tape_heads[remote_id] = tape_heads


def _handler(archive: FakeArchive) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _id(self, method: str) -> str:
            remote_id = unquote(self.path.lstrip("/"))
            with archive.lock:
                archive.calls[(method, remote_id)] += 1
            return remote_id

        def _missing(self, remote_id: str) -> None:
            # The published service answers 500 with the OS error in its traceback.
            body = (
                '{"status": "500 Internal Server Error", "message": "Error", '
                f'"traceback": "FileNotFoundError: No such file or directory: {remote_id}"}}'
            ).encode()
            self.send_response(500)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def do_POST(self) -> None:
            remote_id = self._id("POST")
            if remote_id not in archive.files:
                self._missing(remote_id)
                return
            body = f'{{"message": "File was staged", "file": "{remote_id}"}}'.encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_HEAD(self) -> None:
            remote_id = self._id("HEAD")
            data = archive.files.get(remote_id)
            if data is None:
                self._missing(remote_id)
                return
            with archive.lock:
                left = archive.tape_heads.get(remote_id, 0)
                if left:
                    archive.tape_heads[remote_id] = left - 1
            self.send_response(204)
            self.send_header("X-Pacifica-Messsage", "File was found")
            self.send_header("X-Content-Length", str(len(data)))
            self.send_header("Last-Modified", "1500000000.5")
            self.send_header("X-Pacifica-File-Storage-Media", "tape" if left else "disk")
            self.end_headers()

        def do_GET(self) -> None:
            remote_id = self._id("GET")
            data = archive.files.get(remote_id)
            if data is None:
                self._missing(remote_id)
                return
            with archive.lock:
                broken = remote_id in archive.break_next
                archive.break_next.discard(remote_id)
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if broken:
                self.wfile.write(data[: len(data) // 2])
                self.close_connection = True
                return
            self.wfile.write(data)

        def log_message(self, *_args: object) -> None:
            return

    return Handler


@contextmanager
def running_archive() -> Iterator[FakeArchive]:
    """A :class:`FakeArchive` served on a free loopback port (``archive.url``)."""
    archive = FakeArchive()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(archive))
    server.daemon_threads = True
    archive.url = f"http://127.0.0.1:{server.server_address[1]}/"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield archive
    finally:
        server.shutdown()
        server.server_close()
