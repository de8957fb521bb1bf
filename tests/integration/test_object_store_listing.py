"""Object-store listings come a page at a time, and every page is read (S3 and GCS).

The GCS emulator answers a listing whole whatever ``maxResults`` asks, so GCS runs through
a paging front on loopback: list requests get the emulator's listing cut into pages with
``nextPageToken`` as GCS does; every other request goes to the emulator unchanged.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import httpx
import pytest

from conveyor.mirror.sources import objects
from conveyor.mirror.sources.base import open_source
from conveyor.mirror.spec import Credentials, SourceSpec
from tests.support.object_stores import (
    S3_REGION,
    gcs_filesystem,
    s3_filesystem,
    unique_bucket_name,
)

FILES = 25
FOLDERS = 3
PAGE = 7

pytestmark = pytest.mark.integration


def _fill(fs: Any, bucket: str) -> None:
    fs.pipe({f"{bucket}/bank/f{index:03d}.dat": b"x" * index for index in range(FILES)})
    fs.pipe({f"{bucket}/bank/sub{index}/inner.dat": b"y" for index in range(FOLDERS)})


def _paging_handler(upstream: str) -> type[BaseHTTPRequestHandler]:
    class PagingFront(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            parts = urlsplit(self.path)
            query = dict(parse_qsl(parts.query))
            size = int(query.pop("maxResults", 0) or 0)
            start = int(query.pop("pageToken", 0) or 0)
            answer = httpx.get(f"{upstream}{parts.path}?{urlencode(query)}", timeout=30)
            body = answer.content
            if parts.path.endswith("/o") and answer.status_code == 200 and size:
                whole = answer.json()
                entries = [("prefixes", name) for name in whole.get("prefixes", [])]
                entries += [("items", item) for item in whole.get("items", [])]
                page: dict[str, Any] = {"kind": "storage#objects"}
                for kind, value in entries[start : start + size]:
                    page.setdefault(kind, []).append(value)
                if start + size < len(entries):
                    page["nextPageToken"] = str(start + size)
                body = json.dumps(page).encode()
            self.send_response(answer.status_code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            """Quiet."""

    return PagingFront


@pytest.fixture
def gs_spec(gcs_emulator: str) -> Iterator[SourceSpec]:
    fs = gcs_filesystem(gcs_emulator)
    bucket = unique_bucket_name("conveyor-listing")
    fs.mkdir(bucket)
    _fill(fs, bucket)
    front = ThreadingHTTPServer(("127.0.0.1", 0), _paging_handler(gcs_emulator.rstrip("/")))
    thread = threading.Thread(target=front.serve_forever, daemon=True)
    thread.start()
    try:
        yield SourceSpec(
            protocol="gs",
            server=bucket,
            remote_dir="/bank",
            storage_options={
                "endpoint_url": f"http://127.0.0.1:{front.server_address[1]}",
                "token": "anon",
            },
        )
    finally:
        front.shutdown()
        front.server_close()
        fs.rm(bucket, recursive=True)


@pytest.fixture
def s3_spec(moto_s3: str) -> Iterator[SourceSpec]:
    fs = s3_filesystem(moto_s3)
    bucket = unique_bucket_name("conveyor-listing")
    fs.mkdir(bucket, region_name=S3_REGION)
    _fill(fs, bucket)
    try:
        yield SourceSpec(
            protocol="s3",
            server=bucket,
            remote_dir="/bank",
            credentials=Credentials.parse("testing:testing"),
            storage_options={"endpoint_url": moto_s3, "region": S3_REGION},
        )
    finally:
        fs.rm(bucket, recursive=True)


def _expected() -> dict[str, tuple[bool, int | None]]:
    files = {f"f{index:03d}.dat": (False, index) for index in range(FILES)}
    return files | {f"sub{index}": (True, None) for index in range(FOLDERS)}


def test_a_gcs_folder_is_listed_page_by_page(
    gs_spec: SourceSpec, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(objects, "LIST_BATCH", PAGE)
    with open_source(gs_spec) as source:
        assert isinstance(source, objects.ObjectStoreSource)
        pages: list[dict[str, Any]] = []
        ask_for_page = source.fs._call_list_objects

        async def counted(*args: Any, **kwargs: Any) -> Any:
            pages.append(kwargs)
            return await ask_for_page(*args, **kwargs)

        monkeypatch.setattr(source.fs, "_call_list_objects", counted)
        listed = list(source.list())
    names = [entry.name for entry in listed]
    assert len(names) == len(set(names)), names
    got = {entry.name: (entry.is_dir, None if entry.is_dir else entry.size) for entry in listed}
    assert got == _expected()
    assert len(pages) == -(-(FILES + FOLDERS) // PAGE)
    assert all(page["maxResults"] == PAGE for page in pages)
    assert pages[0]["pageToken"] is None
    assert all(page["pageToken"] for page in pages[1:])


def test_an_s3_folder_is_listed_whole_in_batches(
    s3_spec: SourceSpec, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(objects, "LIST_BATCH", PAGE)
    with open_source(s3_spec) as source:
        listed = list(source.list())
    got = {entry.name: (entry.is_dir, None if entry.is_dir else entry.size) for entry in listed}
    assert len(listed) == len(got)
    assert got == _expected()
