"""The Pacifica cartd mount, ``/pacifica/cartd/`` (reference §2.1 and the fourteen cases of §2.7).

Runs in process on the embedded default (SQLite, a local folder, inline jobs). Each test sets up
as the published tests do: ``foo.txt``, ``bar.csv`` and ``baz.ini`` are PUT into
``/pacifica/archive/<name>`` (their archive ids are their names) and carts name them with md5
hashsums. The published tests poll ``HEAD`` every 2-3 s until ``204`` and not ``staging``, or
``500``; here the same loop sleeps 0.05 s and gives up after 30 s. The cart that must still be
staging (case 13) is made deterministic by an executor that only records the jobs it is given;
they are run afterwards with ``run_job``. Tars are read with Python's tarfile and with GNU tar.

Beyond the published cases: a cart of missing files records its failure event, paths that
escape are 400, a non-JSON body is 415, schema errors and unknown hash types are 400 (published
500), Range on a ready cart gives the same bytes as the slice, and two uids naming the same files
are independent.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import subprocess
import tarfile
import tempfile
import time
import urllib.parse
from http import HTTPStatus
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY
from sqlalchemy import select

from conveyor.db.models import OutboxEvent
from conveyor.runtime import Runtime
from tests.support.executors import HeldExecutor
from tests.support.services import require_command

CARTD = "/pacifica/cartd"
ARCHIVE = "/pacifica/archive"
TEST_FILES = {
    "foo.txt": b"Writing content for first file",
    "bar.csv": b"Writing,content,for,second,file",
    "baz.ini": b"Writing content for the third and final file",
}
PATHS = {"foo.txt": "1/2/3/foo.txt", "bar.csv": "1/2/3/bar.csv", "baz.ini": "2/3/4/baz.ini"}
ERROR_FIELDS = {"status", "message", "traceback", "version"}
NOT_READY = "The cart is not ready for download."
NO_CART = "The cart does not exist or has already been deleted"
DEFAULT_NAME = re.compile(r"data_\d{4}_\d{2}_\d{2}_\d{2}_\d{2}_\d{2}\.tar")
POLL_SECONDS = 0.05
DEADLINE_SECONDS = 30.0


# --- helpers --------------------------------------------------------------------------------


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def cart_url(uid: str) -> str:
    return f"{CARTD}/{uid}"


def cart_json(bundle: bool | None = None) -> dict[str, Any]:
    """The published cart_json_helper: the three files, md5, their paths."""
    body: dict[str, Any] = {
        "fileids": [
            {"id": name, "path": PATHS[name], "hashtype": "md5", "hashsum": md5(data)}
            for name, data in TEST_FILES.items()
        ]
    }
    if bundle is not None:
        body["bundle"] = bundle
    return body


def expected(prefix: str) -> dict[str, bytes]:
    """The tar's files for the published cart under ``prefix``."""
    return {f"{prefix}/{PATHS[name]}": data for name, data in TEST_FILES.items()}


def post_cart(client: TestClient, uid: str, body: dict[str, Any]) -> None:
    response = client.post(cart_url(uid), json=body)
    assert response.status_code == 201, response.text
    assert response.json() == {"message": "Cart Processing has begun"}


def wait_for_cart(client: TestClient, uid: str) -> httpx.Response:
    """Poll HEAD as the published tests do: until 204 and not staging, or 500."""
    deadline = time.monotonic() + DEADLINE_SECONDS
    while True:
        head: httpx.Response = client.head(cart_url(uid))
        status = head.headers.get("X-Pacifica-Status")
        if (head.status_code == 204 and status != "staging") or head.status_code == 500:
            return head
        assert head.status_code == 204, (head.status_code, dict(head.headers))
        assert time.monotonic() < deadline, f"cart {uid} still {status} after {DEADLINE_SECONDS}s"
        time.sleep(POLL_SECONDS)


def check_ready(head: httpx.Response) -> None:
    assert head.status_code == 204, (head.status_code, dict(head.headers))
    assert head.headers["X-Pacifica-Status"] == "ready"
    assert head.headers["X-Pacifica-Message"] == ""


def check_error(response: httpx.Response, code: int) -> dict[str, Any]:
    """A Pacifica error body with the given code and no traceback; the decoded body."""
    assert response.status_code == code, response.text
    assert "Traceback" not in response.text
    body: dict[str, Any] = response.json()
    assert set(body) == ERROR_FIELDS, body
    assert body["status"] == f"{code} {HTTPStatus(code).phrase}"
    assert body["traceback"] == ""
    assert isinstance(body["message"], str) and body["message"]
    return body


def check_gone(client: TestClient, uid: str) -> None:
    """What the published tests see for a cart that does not exist (cases 2, 3, 4)."""
    head = client.head(cart_url(uid))
    assert head.status_code == 404
    assert head.headers["X-Pacifica-Status"] == "error"
    assert head.headers["X-Pacifica-Message"] == f"No cart with uid {uid} found"
    got = check_error(client.get(cart_url(uid)), 404)
    assert got["message"] == NO_CART


def download(client: TestClient, uid: str, filename: str | None = None) -> httpx.Response:
    """GET a ready cart: 200 and an exact Content-Length (the name is checked where it matters)."""
    params = {"filename": filename} if filename is not None else None
    response: httpx.Response = client.get(cart_url(uid), params=params)
    assert response.status_code == 200, response.text
    assert int(response.headers["content-length"]) == len(response.content)
    return response


def attachment_name(response: httpx.Response) -> str:
    """The file name of an ``attachment`` Content-Disposition (quoted, as RFC 6266 has it)."""
    disposition = response.headers["content-disposition"]
    match = re.match(r'attachment; filename="([^"]*)"(; filename\*=UTF-8\'\'(.*))?$', disposition)
    assert match is not None, disposition
    if match.group(3) is not None:
        assert urllib.parse.unquote(match.group(3)) == match.group(1), disposition
    return match.group(1)


def check_attachment(response: httpx.Response, filename: str) -> None:
    """The published header names the file: ``attachment; filename=<name>``."""
    assert attachment_name(response) == filename


def tar_files(data: bytes) -> dict[str, bytes]:
    """Regular files of a tar read by Python's tarfile; every other member is a folder."""
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        members = tar.getmembers()
        assert all(m.isfile() or m.isdir() for m in members), [m.name for m in members]
        files: dict[str, bytes] = {}
        for member in members:
            if member.isfile():
                extracted = tar.extractfile(member)
                assert extracted is not None
                files[member.name] = extracted.read()
    return files


def gnu_tar_files(data: bytes, tmp_path: Path) -> dict[str, bytes]:
    """Regular files of a tar extracted by GNU tar."""
    tar = require_command("tar")
    out = Path(tempfile.mkdtemp(dir=tmp_path))
    subprocess.run([tar, "-xf", "-", "-C", str(out)], input=data, check=True)
    return {
        path.relative_to(out).as_posix(): path.read_bytes()
        for path in out.rglob("*")
        if path.is_file()
    }


def check_tar(data: bytes, files: dict[str, bytes], tmp_path: Path) -> None:
    """Both tar readers find exactly ``files`` (no manifest or other extra member)."""
    assert tar_files(data) == files
    assert gnu_tar_files(data, tmp_path) == files


@pytest.fixture
def cartd(client: TestClient) -> TestClient:
    """The client, with the published three files PUT into the archive under their names."""
    for name, data in TEST_FILES.items():
        response = client.put(f"{ARCHIVE}/{name}", content=data)
        assert response.status_code == 201, response.text
        assert response.json() == {"message": "File added to archive", "total_bytes": len(data)}
    return client


# --- the fourteen published cases (reference §2.7) ------------------------------------------


def test_get_no_uid(cartd: TestClient) -> None:
    """Case 1."""
    response = cartd.get(f"{CARTD}/")
    assert response.status_code == 200
    assert response.json() == {"message": "Pacifica Cartd Interface Up and Running"}


def test_get_noncart(cartd: TestClient) -> None:
    """Case 2 (also rest ``test_invalid_cart_uid``)."""
    response = cartd.get(cart_url("86"))
    body = check_error(response, 404)
    assert body["message"] == NO_CART
    assert body["traceback"] == ""


def test_status_cart_notfound(cartd: TestClient) -> None:
    """Case 3."""
    head = cartd.head(cart_url("97"))
    assert head.status_code == 404
    assert head.headers["X-Pacifica-Status"] == "error"
    assert head.headers["X-Pacifica-Message"] == "No cart with uid 97 found"


def test_delete_invalid_cart(cartd: TestClient) -> None:
    """Case 4."""
    body = check_error(cartd.delete(cart_url("393")), 404)
    assert body["message"] == "Not Found"


def test_post_cart(cartd: TestClient) -> None:
    """Case 5."""
    response = cartd.post(
        cart_url("36"),
        content=json.dumps(cart_json()),
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 201, response.text
    assert response.json() == {"message": "Cart Processing has begun"}
    check_ready(wait_for_cart(cartd, "36"))


def test_status_cart(cartd: TestClient) -> None:
    """Case 6."""
    post_cart(cartd, "37", cart_json())
    check_ready(wait_for_cart(cartd, "37"))


def test_get_cart_twice(cartd: TestClient, tmp_path: Path) -> None:
    """Case 6, repeated: status twice, and the same bytes on two downloads."""
    post_cart(cartd, "39", cart_json())
    check_ready(wait_for_cart(cartd, "39"))
    check_ready(wait_for_cart(cartd, "39"))
    first = download(cartd, "39", "39").content
    second = download(cartd, "39", "39").content
    assert first == second
    check_tar(first, expected("39"), tmp_path)


def test_get_cart(cartd: TestClient, tmp_path: Path) -> None:
    """Case 7."""
    post_cart(cartd, "38", cart_json())
    check_ready(wait_for_cart(cartd, "38"))
    response = download(cartd, "38", "38")
    check_attachment(response, "38")
    data = response.content
    files = tar_files(data)
    assert files["38/1/2/3/foo.txt"] == b"Writing content for first file"
    check_tar(data, expected("38"), tmp_path)


def test_post_cart_bundle(cartd: TestClient, tmp_path: Path) -> None:
    """Case 8: in bundle mode the member prefix is the uid, whatever ``filename`` says."""
    post_cart(cartd, "36a", cart_json(bundle=True))
    check_ready(wait_for_cart(cartd, "36a"))
    data = download(cartd, "36a", "36a").content
    assert "36a/1/2/3/foo.txt" in tar_files(data)
    check_tar(data, expected("36a"), tmp_path)
    other = download(cartd, "36a", "other.tar")
    check_tar(other.content, expected("36a"), tmp_path)
    default = download(cartd, "36a")
    check_tar(default.content, expected("36a"), tmp_path)
    check_attachment(other, "other.tar")
    assert DEFAULT_NAME.fullmatch(attachment_name(default)), default.headers


def test_delete_cart(cartd: TestClient) -> None:
    """Case 9."""
    post_cart(cartd, "39", cart_json())
    check_ready(wait_for_cart(cartd, "39"))
    deleted = cartd.delete(cart_url("39"))
    assert deleted.status_code == 200, deleted.text
    assert deleted.json() == {"message": "Cart Deleted Successfully"}
    check_gone(cartd, "39")
    body = check_error(cartd.delete(cart_url("39")), 404)
    assert body["message"] == "Not Found"


def test_status_cart_error(cartd: TestClient) -> None:
    """Case 10: a file id the archive does not hold is accepted, then the cart fails."""
    bad = {
        "fileids": [
            {"id": "mytest.txt", "path": "1/2/3/mytest.txt", "hashtype": "md5", "hashsum": ""}
        ]
    }
    post_cart(cartd, "98", bad)
    head = wait_for_cart(cartd, "98")
    assert head.status_code == 500
    assert head.headers["X-Pacifica-Status"] == "error"
    message = head.headers["X-Pacifica-Message"]
    assert message and "Traceback" not in message
    got = cartd.get(cart_url("98"))
    assert got.status_code == 409, got.text
    assert "Traceback" not in got.text
    text = got.json()["message"] if "json" in got.headers["content-type"] else got.text
    assert message in text, (message, got.text)


def test_post_cart_bad_hash(cartd: TestClient) -> None:
    """Case 11: the published bad hashes (foo.txt's md5 is cut short)."""
    bad = cart_json()
    bad["fileids"][0]["hashsum"] = "ac59bb32"
    assert [f["hashsum"] for f in bad["fileids"][1:]] == [
        "ef39aa7f8df8bdc8b8d4d81f4e0ef566",
        "b0c21625a5ef364864191e5907d7afb4",
    ]
    post_cart(cartd, "1136", bad)
    head = wait_for_cart(cartd, "1136")
    assert head.status_code == 500
    assert head.headers["X-Pacifica-Status"] == "error"
    assert head.headers["X-Pacifica-Message"]
    assert cartd.get(cart_url("1136")).status_code == 409


def test_docker_cart_integer_ids_sha1(cartd: TestClient, tmp_path: Path) -> None:
    """Case 12 (docker_test): integer archive ids, sha1, ``?filename=foo.tar``."""
    readme = b"# README\n\nA file put under an integer id.\n"
    license_text = b"Some license text\n"
    for archive_id, data in (("1001", readme), ("1002", license_text)):
        response = cartd.put(f"{ARCHIVE}/{archive_id}", content=data)
        assert response.status_code == 201, response.text
    body = {
        "fileids": [
            {
                "id": 1001,
                "path": "a/b/README.md",
                "hashtype": "sha1",
                "hashsum": hashlib.sha1(readme).hexdigest(),
            },
            {
                "id": "1002",
                "path": "a/b/LICENSE",
                "hashtype": "sha1",
                "hashsum": hashlib.sha1(license_text).hexdigest(),
            },
        ]
    }
    post_cart(cartd, "test_cart", body)
    check_ready(wait_for_cart(cartd, "test_cart"))
    response = download(cartd, "test_cart", "foo.tar")
    files = {"foo/a/b/README.md": readme, "foo/a/b/LICENSE": license_text}
    check_tar(response.content, files, tmp_path)
    check_attachment(response, "foo.tar")


def test_not_ready_cart(cartd: TestClient, runtime: Runtime, tmp_path: Path) -> None:
    """Case 13: a cart whose jobs have not run answers 202 to GET, then becomes ready."""
    holding = HeldExecutor(runtime)
    runtime.executor = holding
    post_cart(cartd, "123", cart_json())
    assert holding.held, "the cart queued no job"
    head = cartd.head(cart_url("123"))
    assert head.status_code == 204
    assert head.headers["X-Pacifica-Status"] == "staging"
    assert head.headers["X-Pacifica-Message"] == ""
    for _ in range(2):
        got = cartd.get(cart_url("123"), params={"filename": "123"})
        assert got.status_code == 202, got.text
        assert got.text == NOT_READY
        assert got.headers["content-type"].startswith("text/plain")
    assert len(holding.run_held()) == 1
    assert not holding.held, "the job queued another"
    check_ready(wait_for_cart(cartd, "123"))
    check_tar(download(cartd, "123", "123").content, expected("123"), tmp_path)


def test_status_invalid_uid(cartd: TestClient) -> None:
    """Case 14: HEAD without a uid is 500 (published quirk kept)."""
    head = cartd.head(f"{CARTD}/")
    assert head.status_code == 500
    assert b"Traceback" not in head.content


# --- beyond the published cases -------------------------------------------------------------


def test_a_cart_of_missing_files_records_its_failure(cartd: TestClient, runtime: Runtime) -> None:
    """Made in ``error`` at once, it records ``org.conveyor.cart.failed`` and is counted as a
    failed build is."""
    before = {mode: _finished(mode) for mode in ("build", "stream")}
    missing = {"id": "mytest.txt", "path": "1/2/3/mytest.txt", "hashtype": "md5", "hashsum": ""}
    post_cart(cartd, "98", {"fileids": [missing]})
    assert wait_for_cart(cartd, "98").status_code == 500
    after = {mode: _finished(mode) for mode in ("build", "stream")}
    assert sum(after.values()) - sum(before.values()) == 1
    with runtime.db.session() as session:
        [event] = session.scalars(
            select(OutboxEvent).where(OutboxEvent.type == "org.conveyor.cart.failed")
        ).all()
    assert event.owner == "conveyor"
    assert (event.data["status"], event.data["requesters"]) == ("error", ["conveyor"])
    assert event.data["error"].startswith("1 of 1 files failed; first: 1/2/3/mytest.txt")
    assert event.data["item_errors"] == [
        {"item": "1/2/3/mytest.txt", "error": "file mytest.txt is not in the archive"}
    ]


def _finished(mode: str) -> float:
    """Carts of ``mode`` counted as ended in error by this process so far."""
    value = REGISTRY.get_sample_value(
        "conveyor_carts_finished_total", {"mode": mode, "status": "error"}
    )
    return value or 0.0


@pytest.mark.parametrize(
    "path", ["../escape.txt", "a/../../b.txt", "1/2/../../../x.txt", "..", "//etc/passwd"]
)
def test_paths_that_escape_are_refused(cartd: TestClient, path: str) -> None:
    body = cart_json()
    body["fileids"][0]["path"] = path
    check_error(cartd.post(cart_url("escape"), json=body), 400)
    check_gone(cartd, "escape")


def test_one_leading_slash_is_stripped(cartd: TestClient, tmp_path: Path) -> None:
    body = cart_json()
    for entry in body["fileids"]:
        entry["path"] = "/" + entry["path"]
    post_cart(cartd, "slash", body)
    check_ready(wait_for_cart(cartd, "slash"))
    check_tar(download(cartd, "slash", "s.tar").content, expected("s"), tmp_path)


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded"])
def test_non_json_content_type_is_415(cartd: TestClient, content_type: str) -> None:
    payload = json.dumps(cart_json())
    response = cartd.post(cart_url("form"), content=payload, headers={"Content-Type": content_type})
    check_error(response, 415)
    check_gone(cartd, "form")


FOO_ENTRY = {
    "id": "foo.txt",
    "path": "1/2/3/foo.txt",
    "hashtype": "md5",
    "hashsum": md5(TEST_FILES["foo.txt"]),
}


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"fileids": "foo.txt"},
        {"fileids": [{k: v for k, v in FOO_ENTRY.items() if k != "hashsum"}]},
        {"fileids": [{k: v for k, v in FOO_ENTRY.items() if k != "id"}]},
        {"fileids": [{k: v for k, v in FOO_ENTRY.items() if k != "path"}]},
        {"fileids": [{k: v for k, v in FOO_ENTRY.items() if k != "hashtype"}]},
        {"fileids": [{**FOO_ENTRY, "id": ["foo.txt"]}]},
        {"fileids": [{**FOO_ENTRY, "path": None}]},
        {"fileids": [FOO_ENTRY], "bundle": "yes"},
        [FOO_ENTRY],
    ],
    ids=[
        "empty",
        "not-a-list",
        "no-hashsum",
        "no-id",
        "no-path",
        "no-hashtype",
        "id-list",
        "path-null",
        "bundle-string",
        "top-level-list",
    ],
)
def test_schema_errors_are_400(cartd: TestClient, body: Any) -> None:
    check_error(cartd.post(cart_url("schema"), json=body), 400)
    check_gone(cartd, "schema")


def test_malformed_json_is_400(cartd: TestClient) -> None:
    response = cartd.post(
        cart_url("broken"), content=b'{"fileids": [', headers={"Content-Type": "application/json"}
    )
    check_error(response, 400)
    check_gone(cartd, "broken")


def test_unknown_hashtype_is_400(cartd: TestClient) -> None:
    check_error(
        cartd.post(cart_url("hash"), json={"fileids": [{**FOO_ENTRY, "hashtype": "nosuchhash"}]}),
        400,
    )
    check_gone(cartd, "hash")


@pytest.mark.parametrize("bundle", [False, True])
def test_range_on_a_ready_cart_gives_the_slice(cartd: TestClient, bundle: bool) -> None:
    post_cart(cartd, "ranged", cart_json(bundle=bundle))
    check_ready(wait_for_cart(cartd, "ranged"))
    whole = download(cartd, "ranged", "ranged.tar").content
    size = len(whole)
    assert size > 1024
    for start, end in [(0, 99), (10, 99), (511, 1024), (size - 1, size - 1)]:
        part = cartd.get(
            cart_url("ranged"),
            params={"filename": "ranged.tar"},
            headers={"Range": f"bytes={start}-{end}"},
        )
        assert part.status_code == 206, part.text
        assert part.headers["content-range"] == f"bytes {start}-{end}/{size}"
        assert part.content == whole[start : end + 1]
    for start in (1, 512, size // 2):
        tail = cartd.get(
            cart_url("ranged"),
            params={"filename": "ranged.tar"},
            headers={"Range": f"bytes={start}-"},
        )
        assert tail.status_code == 206
        assert whole[:start] + tail.content == whole


def test_default_filename_names_the_prefix(cartd: TestClient, tmp_path: Path) -> None:
    post_cart(cartd, "plain", cart_json())
    check_ready(wait_for_cart(cartd, "plain"))
    response = download(cartd, "plain")
    name = attachment_name(response)
    assert DEFAULT_NAME.fullmatch(name), response.headers
    check_tar(response.content, expected(name.removesuffix(".tar")), tmp_path)


def test_two_uids_with_the_same_files_are_independent(cartd: TestClient, tmp_path: Path) -> None:
    post_cart(cartd, "one", cart_json())
    post_cart(cartd, "two", cart_json())
    check_ready(wait_for_cart(cartd, "one"))
    check_ready(wait_for_cart(cartd, "two"))
    first = download(cartd, "one", "same.tar").content
    second = download(cartd, "two", "same.tar").content
    assert first == second
    check_tar(first, expected("same"), tmp_path)
    deleted = cartd.delete(cart_url("one"))
    assert deleted.json() == {"message": "Cart Deleted Successfully"}
    check_gone(cartd, "one")
    check_ready(cartd.head(cart_url("two")))
    assert download(cartd, "two", "same.tar").content == second


def test_repost_replaces_what_the_uid_names(cartd: TestClient, tmp_path: Path) -> None:
    post_cart(cartd, "again", cart_json())
    check_ready(wait_for_cart(cartd, "again"))
    only_bar = {"fileids": [e for e in cart_json()["fileids"] if e["id"] == "bar.csv"]}
    post_cart(cartd, "again", only_bar)
    check_ready(wait_for_cart(cartd, "again"))
    data = download(cartd, "again", "x").content
    check_tar(data, {"x/1/2/3/bar.csv": TEST_FILES["bar.csv"]}, tmp_path)
    assert cartd.delete(cart_url("again")).status_code == 200
    check_gone(cartd, "again")
