"""The Pacifica archive interface mount, ``/pacifica/archive/`` (reference §1).

Runs in process on the embedded default (SQLite, a local folder, inline jobs). The cases follow
the published contract and the archive's post-deployment tests (write, status, stage, read,
rewrite refused, binary 5-byte file), with the deliberate differences Conveyor makes: a rewrite
is 409 (published 500), an unknown id is 404 (published 500), a malformed ``byte_range`` is 400
(published 500), ``Last-Modified`` on PUT is honoured, and no error body carries a traceback.
Archive ids share one namespace with Conveyor file ids, so an ingested file is readable under
its file id and ids a PUT took are never handed out again.
"""

from __future__ import annotations

import calendar
import time
from http import HTTPStatus
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from tests.support.bundles import GOOD_MEMBERS, good_tar

ARCHIVE = "/pacifica/archive"
FIRST = b"Writing content for first file"
BINARY = bytes([123, 3, 255, 0, 100])  # the published binary file
ERROR_FIELDS = {"status", "message", "traceback", "version"}


def url(archive_id: str | int) -> str:
    return f"{ARCHIVE}/{archive_id}"


def put(
    client: TestClient, archive_id: str | int, data: bytes, headers: dict[str, str] | None = None
) -> httpx.Response:
    response: httpx.Response = client.put(url(archive_id), content=data, headers=headers)
    return response


def put_ok(
    client: TestClient, archive_id: str | int, data: bytes, headers: dict[str, str] | None = None
) -> None:
    response = put(client, archive_id, data, headers)
    assert response.status_code == 201, response.text
    assert response.json() == {"message": "File added to archive", "total_bytes": len(data)}


def check_error(response: httpx.Response, code: int) -> dict[str, Any]:
    """A Pacifica error body with the given code and no traceback; the decoded body."""
    assert response.status_code == code, response.text
    assert "Traceback" not in response.text
    assert response.headers["content-type"].startswith("application/json")
    body: dict[str, Any] = response.json()
    assert set(body) == ERROR_FIELDS, body
    assert body["status"] == f"{code} {HTTPStatus(code).phrase}"
    assert body["traceback"] == ""
    assert isinstance(body["message"], str) and body["message"]
    assert isinstance(body["version"], str)
    return body


def check_missing(client: TestClient, archive_id: str | int) -> None:
    """Every verb on an id the archive does not hold answers 404."""
    check_error(client.get(url(archive_id)), 404)
    check_error(client.get(url(archive_id), params={"byte_range": "0-1"}), 404)
    check_error(client.post(url(archive_id)), 404)
    check_error(client.delete(url(archive_id)), 404)
    head = client.head(url(archive_id))
    assert head.status_code == 404
    assert b"Traceback" not in head.content


def ingest(client: TestClient) -> dict[str, Any]:
    """Ingest the published good bundle; the transaction with its files."""
    response = client.post(
        "/api/v1/ingest", content=good_tar(), headers={"Content-Type": "application/x-tar"}
    )
    assert response.status_code == 202, response.text
    job = response.json()
    assert job["state"] == "succeeded", job
    transaction: dict[str, Any] = client.get(f"/api/v1/transactions/{job['transaction_id']}").json()
    assert len(transaction["files"]) == 3
    return transaction


def member_bytes(record: dict[str, Any]) -> bytes:
    """The bytes the good bundle holds for a file record of its transaction."""
    return GOOD_MEMBERS[f"data/{record['subdir']}/{record['name']}"]


# --- the cases ------------------------------------------------------------------------------


def test_root_is_up(client: TestClient) -> None:
    response = client.get(f"{ARCHIVE}/")
    assert response.status_code == 200
    assert response.json() == {"message": "Pacifica Archive Interface Up and Running"}


def test_write_status_stage_read(client: TestClient) -> None:
    put_ok(client, "test_simple_write.txt", FIRST)
    head = client.head(url("test_simple_write.txt"))
    assert head.status_code == 204
    assert head.content == b""
    assert head.headers["X-Pacifica-Messsage"] == "File was found"
    assert head.headers["X-Pacifica-File"] == "test_simple_write.txt"
    assert head.headers["X-Content-Length"] == str(len(FIRST))
    assert head.headers["X-Pacifica-File-Storage-Media"] == "disk"
    assert head.headers["X-Pacifica-Bytes-Per-Level"] == f"({len(FIRST)},)"
    float(head.headers["X-Pacifica-Ctime"])
    assert float(head.headers["Last-Modified"]) == pytest.approx(time.time(), abs=120)
    staged = client.post(url("test_simple_write.txt"))
    assert staged.status_code == 200
    assert staged.json() == {"message": "File was staged", "file": "test_simple_write.txt"}
    read = client.get(url("test_simple_write.txt"))
    assert read.status_code == 200
    assert read.headers["content-type"].startswith("application/octet-stream")
    assert read.content == FIRST


def test_streamed_put_without_content_length_counts_bytes_written(client: TestClient) -> None:
    chunks = [b"Writing ", b"content ", b"in ", b"chunks"]  # 25 bytes
    response = client.put(url("chunked.txt"), content=iter(chunks))
    assert response.status_code == 201, response.text
    assert response.json() == {"message": "File added to archive", "total_bytes": 25}
    assert client.get(url("chunked.txt")).content == b"Writing content in chunks"
    assert client.head(url("chunked.txt")).headers["X-Content-Length"] == "25"


def test_rewrite_is_refused_and_keeps_the_first_bytes(client: TestClient) -> None:
    put_ok(client, "1234", FIRST)
    again = put(client, "1234", b"Something else entirely")
    body = check_error(again, 409)
    assert body["message"].startswith("Can't open"), body
    assert client.get(url("1234")).content == FIRST
    assert client.head(url("1234")).headers["X-Content-Length"] == str(len(FIRST))


def test_byte_range_slices_are_half_open(client: TestClient) -> None:
    put_ok(client, "foo.txt", FIRST)
    size = len(FIRST)
    for start, end in [(0, 7), (8, 15), (0, 1), (size - 4, size), (0, size), (29, 30)]:
        part = client.get(url("foo.txt"), params={"byte_range": f"{start}-{end}"})
        assert part.status_code == 200, (start, end, part.text)
        assert part.headers["content-type"].startswith("application/octet-stream")
        assert part.content == FIRST[start:end], (start, end)


@pytest.mark.parametrize("byte_range", ["abc", "12", "a-b", "-5", "5-", "1-2-3", "1.5-3"])
def test_malformed_byte_range_is_400(client: TestClient, byte_range: str) -> None:
    put_ok(client, "foo.txt", FIRST)
    response = client.get(url("foo.txt"), params={"byte_range": byte_range})
    body = check_error(response, 400)
    assert body["message"].startswith("Invalid byte range format"), body


def test_delete_then_everything_is_404(client: TestClient) -> None:
    put_ok(client, "gone.txt", FIRST)
    deleted = client.delete(url("gone.txt"))
    assert deleted.status_code == 200
    assert deleted.content == b""
    check_missing(client, "gone.txt")


@pytest.mark.parametrize("archive_id", ["nosuch.txt", "987654"])
def test_unknown_ids_are_404(client: TestClient, archive_id: str) -> None:
    check_missing(client, archive_id)


def test_binary_five_byte_file(client: TestClient) -> None:
    put_ok(client, "4321", BINARY)
    head = client.head(url("4321"))
    assert head.status_code == 204
    assert head.headers["X-Pacifica-Messsage"] == "File was found"
    assert head.headers["X-Content-Length"] == "5"
    assert head.headers["X-Pacifica-File-Storage-Media"] == "disk"
    staged = client.post(url("4321"))
    assert staged.json() == {"message": "File was staged", "file": "4321"}
    read = client.get(url("4321"))
    assert (read.status_code, read.content) == (200, BINARY)
    middle = client.get(url("4321"), params={"byte_range": "1-4"})
    assert middle.content == BINARY[1:4] == bytes([3, 255, 0])
    body = check_error(put(client, "4321", BINARY), 409)
    assert body["message"].startswith("Can't open")


def test_ingested_file_is_readable_under_its_file_id(client: TestClient) -> None:
    transaction = ingest(client)
    for record in transaction["files"]:
        data = member_bytes(record)
        file_id = record["id"]
        read = client.get(url(file_id))
        assert (read.status_code, read.content) == (200, data), record
        head = client.head(url(file_id))
        assert head.status_code == 204
        assert head.headers["X-Pacifica-File"] == str(file_id)
        assert head.headers["X-Content-Length"] == str(len(data))
        staged = client.post(url(file_id))
        assert staged.json() == {"message": "File was staged", "file": str(file_id)}
        # a file of an ingested transaction is immutable: no rewrite, no delete
        body = check_error(put(client, file_id, b"overwrite"), 409)
        assert body["message"].startswith("Can't open")
        check_error(client.delete(url(file_id)), 409)
        assert client.get(url(file_id)).content == data


def test_ids_taken_by_put_are_skipped_by_ingest(client: TestClient) -> None:
    put_ok(client, "2", b"two")
    put_ok(client, "1000", b"one thousand")
    first = ingest(client)
    second = ingest(client)
    ids = [record["id"] for t in (first, second) for record in t["files"]]
    assert len(set(ids)) == 6, ids
    assert not {2, 1000} & set(ids), ids
    for transaction in (first, second):
        for record in transaction["files"]:
            assert client.get(url(record["id"])).content == member_bytes(record)
            content = client.get(f"/api/v1/files/{record['id']}/content")
            assert content.content == member_bytes(record)
    assert client.get(url(2)).content == b"two"
    assert client.get(url(1000)).content == b"one thousand"
    # a name put after the ingests still gets its own file, and ingested ids stay taken
    put_ok(client, "after.txt", b"after")
    assert client.get(url("after.txt")).content == b"after"
    check_error(put(client, ids[0], b"clash"), 409)
    for transaction in (first, second):
        for record in transaction["files"]:
            assert client.get(url(record["id"])).content == member_bytes(record)


def test_last_modified_is_honoured(client: TestClient) -> None:
    stamp = calendar.timegm((2016, 11, 29, 22, 9, 5, 0, 0, 0))
    put_ok(client, "dated.txt", FIRST, {"Last-Modified": "Tue, 29 Nov 2016 22:09:05 GMT"})
    head = client.head(url("dated.txt"))
    assert head.status_code == 204
    assert float(head.headers["Last-Modified"]) == pytest.approx(stamp, abs=1e-3)
    put_ok(client, "epoch.txt", FIRST, {"Last-Modified": "1480457345.25"})
    head = client.head(url("epoch.txt"))
    assert float(head.headers["Last-Modified"]) == pytest.approx(1480457345.25, abs=1e-3)
    put_ok(client, "now.txt", FIRST)
    head = client.head(url("now.txt"))
    assert float(head.headers["Last-Modified"]) == pytest.approx(time.time(), abs=120)
