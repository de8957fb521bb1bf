"""The published client library, ``pacifica-uploader`` 0.3.1, used unchanged against us.

Metadata comes from an ``uploader.json`` as pacifica-cli ships it (UI keys and a
``NothingReally`` entry included), decoded with the library's ``metadata_decode``; the
library's ``Bundler`` streams the tar (``metadata.txt`` last) and its ``Uploader`` posts it
and reads the state. The library has no wait loop of its own, so the tests use the one
pacifica-cli wraps around ``Uploader.getstate`` (``wait_for_upload``).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest
from pacifica.uploader import Uploader  # type: ignore[import-untyped]
from pacifica.uploader.bundler import Bundler  # type: ignore[import-untyped]
from pacifica.uploader.metadata import MetaData, metadata_decode  # type: ignore[import-untyped]

from tests.support.bundles import UPLOADER_JSON
from tests.support.server import running_server

pytestmark = pytest.mark.integration

INGEST = "/pacifica/ingest"

VALUES: dict[str, Any] = {
    "logon": 10,
    "project": "1234a",
    "instrument": 54,
    "user-of-record": 10,
    "directory-project": "1234a",
}
UNICODE_NAME = "données/データ ファイル (1).txt"


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """An open-policy server: it records whoever the bundles name."""
    with running_server(tmp_path_factory.mktemp("open-server"), policy="open") as base:
        yield base


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """Real files on disk, by their path relative to the folder the upload is run from."""
    contents = {
        "plain.txt": b"hello from pacifica-uploader\n",
        UNICODE_NAME: "température 27 °C\n".encode(),
        "bin/blob.bin": random.Random(31).randbytes(300_000) + bytes(range(256)),
        "empty.dat": b"",
    }
    root = tmp_path_factory.mktemp("upload-files")
    for relative, data in contents.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        os.utime(path, (1_546_300_800, 1_546_300_800))  # 2019-01-01T00:00:00
    return {str(root / relative): data for relative, data in contents.items()}


def metadata() -> MetaData:
    """The configured MetaObjs with their values chosen, as the CLI leaves them."""
    md: MetaData = metadata_decode(json.dumps(UPLOADER_JSON))
    for meta_id, value in VALUES.items():
        md[meta_id] = md[meta_id]._replace(value=value)
    assert md.is_valid()
    return md


def file_data(files: dict[str, bytes], stack: ExitStack) -> list[dict[str, Any]]:
    """What pacifica-cli hands the Bundler: ``data/<path>``, size, mtime, an open file.

    ``stack`` closes the files (the Bundler pops ``fileobj`` out of each entry).
    """
    root = os.path.commonpath(list(files))
    entries = []
    for path in files:
        stat = Path(path).stat()
        handle = stack.enter_context(Path(path).open("rb"))  # noqa: SIM115 - closed by stack
        entries.append(
            {
                "name": "data/" + os.path.relpath(path, root).replace(os.sep, "/"),
                "size": stat.st_size,
                "mtime": stat.st_mtime,
                "fileobj": handle,
            }
        )
    return entries


def wait_for_upload(uploader: Uploader, job_id: int, timeout: float = 30.0) -> dict[str, Any]:
    """pacifica-cli's ``wait_for_upload`` (``check_okay`` and ``check``), with a deadline."""

    def check_okay(status: dict[str, Any]) -> bool:
        return bool(status["state"] == "OK")

    def check(status: dict[str, Any]) -> bool:
        chk = bool(status["state"] != "OK")
        chk |= bool(status["task"] != "ingest metadata")
        chk |= int(float(status["task_percent"])) != 100
        return chk

    deadline = time.monotonic() + timeout
    status: dict[str, Any] = uploader.getstate(job_id)
    while check_okay(status) and check(status):
        if time.monotonic() > deadline:
            pytest.fail(f"job {job_id} not done in {timeout} s: {status}")
        time.sleep(0.1)
        status = uploader.getstate(job_id)
    return status


def assert_archived(url: str, job_id: int, files: dict[str, bytes]) -> None:
    """The job's transaction holds every file, with the bytes and hashes it was sent with."""
    root = os.path.commonpath(list(files))
    job = httpx.get(f"{url}/api/v1/jobs/{job_id}", timeout=10).json()
    txn = httpx.get(f"{url}/api/v1/transactions/{job['transaction_id']}", timeout=10).json()
    assert (txn["submitter"], txn["project"], txn["instrument"]) == ("10", "1234a", "54")
    assert {"key": "User of Record", "value": "10"} in txn["key_values"]
    rows = {"/".join(p for p in (row["subdir"], row["name"]) if p): row for row in txn["files"]}
    expected = {
        os.path.relpath(path, root).replace(os.sep, "/"): data for path, data in files.items()
    }
    assert set(rows) == set(expected)
    for relative, data in expected.items():
        row = rows[relative]
        assert row["size"] == len(data)
        assert row["sha256"] == hashlib.sha256(data).hexdigest()
        assert (row["hashtype"], row["hashsum"]) == ("sha1", hashlib.sha1(data).hexdigest())
        content = httpx.get(f"{url}/api/v1/files/{row['id']}/content", timeout=10)
        assert content.status_code == 200
        assert content.content == data, relative


def test_bundle_written_to_a_file_and_uploaded_with_its_length(
    url: str, files: dict[str, bytes], tmp_path: Path
) -> None:
    bundle_path = tmp_path / "bundle.tar"
    with ExitStack() as stack, bundle_path.open("wb") as out:
        Bundler(metadata(), file_data(files, stack)).stream(out)
    # Constructor arguments name the endpoints (upload_url / status_url).
    uploader = Uploader(upload_url=f"{url}{INGEST}/upload", status_url=f"{url}{INGEST}/get_state")
    with bundle_path.open("rb") as body:
        job_id = uploader.upload(body, content_length=bundle_path.stat().st_size)
    assert_finished_and_archived(uploader, url, job_id, files)


def assert_finished_and_archived(
    uploader: Uploader, url: str, job_id: int, files: dict[str, bytes]
) -> None:
    """The published client sees OK / ingest metadata / 100, and the files are archived."""
    status = wait_for_upload(uploader, job_id)
    assert (status["state"], status["task"], int(float(status["task_percent"]))) == (
        "OK",
        "ingest metadata",
        100,
    ), status
    assert_archived(url, job_id, files)


def test_bundle_streamed_through_a_pipe_with_env_configuration(
    url: str, files: dict[str, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The environment names the endpoints, as pacifica-cli's configuration does
    # (INGEST_PROTO / INGEST_ADDR / INGEST_PORT / INGEST_UPLOAD_PATH / INGEST_STATUS_PATH).
    address = httpx.URL(url)
    monkeypatch.setenv("INGEST_PROTO", address.scheme)
    monkeypatch.setenv("INGEST_ADDR", str(address.host))
    monkeypatch.setenv("INGEST_PORT", str(address.port))
    monkeypatch.setenv("INGEST_UPLOAD_PATH", f"{INGEST}/upload")
    monkeypatch.setenv("INGEST_STATUS_PATH", f"{INGEST}/get_state")
    uploader = Uploader()

    failures: list[BaseException] = []
    with ExitStack() as stack:
        read_fd, write_fd = os.pipe()
        reader = stack.enter_context(os.fdopen(read_fd, "rb"))
        writer = os.fdopen(write_fd, "wb")
        entries = file_data(files, stack)

        def make_bundle() -> None:
            try:
                with writer:
                    Bundler(metadata(), entries).stream(writer)
            except BaseException as exc:
                failures.append(exc)

        thread = threading.Thread(target=make_bundle, daemon=True)
        thread.start()
        try:
            job_id = uploader.upload(reader)  # no length: requests sends it chunked
        finally:
            thread.join(timeout=30)
    assert not failures, failures
    assert_finished_and_archived(uploader, url, job_id, files)
