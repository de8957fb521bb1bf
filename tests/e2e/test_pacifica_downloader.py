"""The published client library, ``pacifica-downloader`` 0.4.1, used unchanged against us.

A real ``conveyor serve`` process ingests the published good bundle; the library then asks
``/pacifica/cartd`` for its files the two ways it knows: from a transaction info document as
the published policy service shapes it (``{"files": {"<id>": {subdir, name, hashtype,
hashsum}}}``, built here from the native transaction view) and from the CloudEvent Conveyor
recorded for the ingest (read from the server's outbox). Either way it POSTs a cart, polls
HEAD until the cart is ready and extracts the tar it GETs with ``?filename=data``, so the
files land under ``<location>/data/<subdir>/<name>``. A file asked with a wrong hashsum
leaves the cart in error, which the library's ``wait_for_cart`` reports as an AssertionError.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any, NamedTuple

import httpx
import pytest
from pacifica.downloader import Downloader  # type: ignore[import-untyped]
from pacifica.downloader.cartapi import CartAPI  # type: ignore[import-untyped]

from tests.support.bundles import GOOD_MEMBERS, good_metadata, good_tar, make_tar, sha1
from tests.support.server import running_server, wait_job

pytestmark = pytest.mark.integration

CARTD = "/pacifica/cartd"
INGEST_EVENT_TYPE = "org.pacifica.metadata.ingest"
TOP = b"a file at the top of the bundle\n"


class Server(NamedTuple):
    """A running server and the data dir it keeps its database in."""

    url: str
    data_dir: Path


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """An open-policy server, shared by every test of the module."""
    data_dir = tmp_path_factory.mktemp("downloader-server")
    with running_server(data_dir) as url:
        yield Server(url, data_dir)


def ingest(url: str, body: bytes) -> int:
    """POST a bundle to the native API, wait for its job; the transaction id."""
    response = httpx.post(
        f"{url}/api/v1/ingest",
        content=body,
        headers={"Content-Type": "application/x-tar"},
        timeout=60,
    )
    assert response.status_code == 202, response.text
    job = wait_job(url, int(response.json()["id"]))
    assert job["state"] == "succeeded", job
    return int(job["transaction_id"])


@pytest.fixture(scope="module")
def good_transaction(server: Server) -> int:
    """The id of the transaction the published good bundle became."""
    return ingest(server.url, good_tar())


def transaction_info(url: str, transaction_id: int) -> dict[str, Any]:
    """The transaction as the published policy service hands it to the downloader."""
    response = httpx.get(f"{url}/api/v1/transactions/{transaction_id}", timeout=10)
    assert response.status_code == 200, response.text
    view = response.json()
    assert view["files_next_after"] is None  # every file is inline
    return {
        "files": {
            str(row["id"]): {
                "subdir": row["subdir"],
                "name": row["name"],
                "hashtype": row["hashtype"],
                "hashsum": row["hashsum"],
            }
            for row in view["files"]
        }
    }


def recorded_event(data_dir: Path, transaction_id: int) -> dict[str, Any]:
    """The ingest CloudEvent of the transaction, from the server's outbox, as ``{"data": ...}``."""
    with closing(sqlite3.connect(data_dir / "conveyor.db")) as db:
        rows = db.execute(
            "SELECT data FROM outbox_events WHERE type = ? AND subject = ?",
            (INGEST_EVENT_TYPE, f"transactions/{transaction_id}"),
        ).fetchall()
    assert len(rows) == 1, rows
    data = json.loads(rows[0][0])
    assert isinstance(data, list)
    return {"data": data}


def assert_extracted(location: Path, members: dict[str, bytes]) -> None:
    """Exactly the bundle's ``data/...`` files, with their bytes, are under ``location``."""
    found = {
        path.relative_to(location).as_posix(): path.read_bytes()
        for path in location.rglob("*")
        if path.is_file()
    }
    assert set(found) == set(members)
    for key, data in members.items():
        assert found[key] == data, key


def downloader(url: str) -> Downloader:
    """The library's Downloader, pointed at our cartd mount by its constructor argument."""
    return Downloader(cart_api_url=f"{url}{CARTD}")


def test_transaction_info_downloads_every_file(
    server: Server, good_transaction: int, tmp_path: Path
) -> None:
    transinfo = transaction_info(server.url, good_transaction)
    assert len(transinfo["files"]) == len(GOOD_MEMBERS)
    location = tmp_path / "transinfo"
    location.mkdir()
    downloader(server.url).transactioninfo(str(location), transinfo, timeout=60)
    assert_extracted(location, GOOD_MEMBERS)


def test_cloudevent_downloads_every_file(
    server: Server, good_transaction: int, tmp_path: Path
) -> None:
    event = recorded_event(server.data_dir, good_transaction)
    files = [obj for obj in event["data"] if obj.get("destinationTable") == "Files"]
    assert len(files) == len(GOOD_MEMBERS)
    assert all(isinstance(obj.get("_id"), int) for obj in files), files
    location = tmp_path / "cloudevent"
    location.mkdir()
    downloader(server.url).cloudevent(str(location), event, timeout=60)
    assert_extracted(location, GOOD_MEMBERS)


def test_file_with_empty_subdir_is_asked_with_a_leading_slash(
    server: Server, tmp_path: Path
) -> None:
    # The library asks for '{subdir}/{name}', so a top-level file comes as "/top.txt";
    # cartd strips that one leading "/" and the file lands at data/top.txt.
    top = {
        "destinationTable": "Files",
        "name": "top.txt",
        "subdir": "data/",
        "size": len(TOP),
        "hashtype": "sha1",
        "hashsum": sha1(TOP),
        "mimetype": "text/plain",
    }
    metadata = [*good_metadata()[:5], top]
    transaction_id = ingest(
        server.url, make_tar({"data/top.txt": TOP}, metadata, directories=("data",))
    )
    event = recorded_event(server.data_dir, transaction_id)
    files = [obj for obj in event["data"] if obj.get("destinationTable") == "Files"]
    assert [obj["subdir"] for obj in files] == [""]
    location = tmp_path / "top"
    location.mkdir()
    downloader(server.url).cloudevent(str(location), event, timeout=60)
    assert_extracted(location, {"data/top.txt": TOP})


def test_wrong_hashsum_leaves_the_cart_in_error(server: Server, good_transaction: int) -> None:
    transinfo = transaction_info(server.url, good_transaction)
    file_id, row = next(iter(transinfo["files"].items()))
    wrong = "0" * 40 if row["hashsum"] != "0" * 40 else "1" * 40
    cart = CartAPI(cart_api_url=f"{server.url}{CARTD}")
    cart_url = cart.setup_cart(
        lambda: iter(
            [
                {
                    "id": file_id,
                    "path": f"{row['subdir']}/{row['name']}",
                    "hashtype": row["hashtype"],
                    "hashsum": wrong,
                }
            ]
        )
    )
    with pytest.raises(AssertionError):
        cart.wait_for_cart(cart_url, timeout=60)
    head = httpx.head(cart_url, timeout=10)
    assert head.status_code == 500
    assert head.headers["X-Pacifica-Status"] == "error"
    assert head.headers["X-Pacifica-Message"]
